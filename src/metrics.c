/*
 * metrics.c - the optional HTTP listener: /metrics (Prometheus text
 * exposition format 0.0.4) and /status (one self-contained HTML page).
 *
 * What it does: binds conf->metrics_address:metrics_port with libevent's
 * evhttp while still root, answers GET and HEAD (405 for anything else),
 * and builds every answer from a fresh snapshot through the spool's read
 * API: one spool_dest_each pass for the per-destination counts, one
 * spool_page (one QID) per destination
 * with mail for the oldest age, one delivery_dest_each pass for the live
 * state, plus the stats counters.  A timer samples the backlog once a
 * minute into a 24-hour ring (the total and a few tracked destinations)
 * for the /status chart; another polls the destinations' last errors and
 * keeps the latest changes in a small ring.
 *
 * What it owns: the evhttp server and its listening socket, the two
 * timers, the history rings.  It borrows conf (replaced on reload), the
 * spool and the delivery scheduler.
 *
 * What it must never do: write to the spool or change delivery state;
 * block the loop longer than one snapshot; load anything from outside the
 * page (no external assets: the page must work on an air-gapped console).
 *
 * Security notes: loopback by default, no authentication, read only.
 * Requests are bounded (header and body size, a timeout).  Everything that
 * came from peers or the config (domains, last errors, the hostname) is
 * escaped for its context: HTML/SVG text and attributes, Prometheus label
 * values; invalid UTF-8 and control characters are replaced so that
 * neither a browser nor a Prometheus parser can be confused.  The page is
 * sent with a Content-Security-Policy that forbids scripts and fetches.
 */
#include "config.h"
#include "metrics.h"

#include "conf.h"
#include "delivery.h"
#include "log.h"
#include "pg.h"
#include "qid.h"
#include "queue_db.h"
#include "spool.h"
#include "stats.h"
#include "verify.h"
#include "heartbeat.h"
#include "utf8.h"
#include "util.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

/* Request bounds: our answers need nothing from a request but its line. */
#define METRICS_MAX_HEADERS 8192
#define METRICS_MAX_BODY 1024
#define METRICS_TIMEOUT_SECONDS 10

/* History for the chart: one sample a minute, 24 hours. */
#define SAMPLE_SECONDS 60
#define HISTORY_SECONDS (24 * 3600)
#define HISTORY_SAMPLES (HISTORY_SECONDS / SAMPLE_SECONDS)
/* Destinations with their own line: the CHART_TOP biggest by peak over
 * the window, chosen among at most SERIES_MAX tracked ones (a domain is
 * tracked once it is among the CHART_TOP biggest at a sample). */
#define CHART_TOP 5
#define SERIES_MAX 16
#define NO_SAMPLE UINT32_MAX

/* Recent errors: how often the last errors are compared, how many kept. */
#define ERROR_POLL_SECONDS 5
#define ERRORS_KEEP 20
#define ERROR_TEXT_MAX 512

/* The page reloads itself this often (seconds). */
#define STATUS_REFRESH_SECONDS 30

/* Chart geometry (SVG user units). */
#define CHART_W 960
#define CHART_H 260
#define PLOT_X0 64
#define PLOT_X1 730
#define PLOT_Y0 16
#define PLOT_Y1 222
#define LEGEND_X 750
#define LEGEND_DY 20
#define CHART_YTICKS 4
#define CHART_XTICK_HOURS 6

#define SECONDS_PER_HOUR 3600

/* Append a string literal (its length known at compile time). */
#define ADD(b, lit) evbuffer_add((b), (lit), sizeof(lit) - 1)
#define HOST_NAME_SIZE 256

struct series {
    int used;
    char domain[SMTP_DOMAIN_MAX + 1];
    uint32_t v[HISTORY_SAMPLES];        /* NO_SAMPLE before it was tracked */
};

struct history {
    size_t head;                        /* next slot to write */
    size_t n;                           /* samples held */
    int64_t t[HISTORY_SAMPLES];
    uint64_t total[HISTORY_SAMPLES];
    struct series s[SERIES_MAX];
};

struct seen_error {
    char *domain;
    uint64_t hash;                      /* of its last error, 0 = none */
    unsigned gen;
};

struct error_event {
    int64_t t;
    char domain[SMTP_DOMAIN_MAX + 1];
    char text[ERROR_TEXT_MAX];
};

struct metrics {
    struct event_base *base;
    const struct conf *conf;
    char *bound_address;
    int bound_port;
    struct evhttp *http;
    struct spool *sp;
    struct delivery *dl;
    metrics_gauges_fn gauges;
    void *gauges_arg;
    struct event *ev_sample;
    struct event *ev_errors;
    struct history *hist;
    struct seen_error *seen;            /* sorted by domain */
    size_t nseen, capseen;
    unsigned gen;
    struct error_event errs[ERRORS_KEEP];
    size_t errs_head, errs_n;
};

/* ------------------------------------------------------------------ */
/* snapshot of every destination                                       */
/* ------------------------------------------------------------------ */

struct row {
    char domain[SMTP_DOMAIN_MAX + 1];
    uint64_t nmsg, nbytes;
    int64_t oldest;                     /* arrival of the first waiting, 0 = none */
    int state;                          /* enum qdest_state */
    int live;                           /* the scheduler knows it */
    int configured;
    int64_t next_probe;
    int connections;
    char *last_error;                   /* owned, or NULL */
};

struct snapshot {
    struct row *row;
    size_t n, cap;
    int oom;
    int errors;                         /* copy last errors too */
    int64_t now;
};

static struct row *snap_push(struct snapshot *s, const char *domain)
{
    struct row *r;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        r = realloc(s->row, cap * sizeof *r);
        if (r == NULL) {
            s->oom = 1;
            return NULL;
        }
        s->row = r;
        s->cap = cap;
    }
    r = &s->row[s->n++];
    memset(r, 0, sizeof *r);
    util_lower_copy(r->domain, sizeof r->domain, domain);
    return r;
}

static int row_cmp_domain(const void *a, const void *b)
{
    return strcmp(((const struct row *)a)->domain, ((const struct row *)b)->domain);
}

/* Find domain among the first n rows (sorted). */
static struct row *snap_find(struct snapshot *s, size_t n, const char *domain)
{
    struct row key;
    util_lower_copy(key.domain, sizeof key.domain, domain);
    return n ? bsearch(&key, s->row, n, sizeof *s->row, row_cmp_domain) : NULL;
}

static void row_set_error(struct snapshot *s, struct row *r, const char *err)
{
    if (!s->errors)
        return;
    free(r->last_error);
    r->last_error = NULL;
    if (err[0] != '\0' && (r->last_error = strdup(err)) == NULL)
        s->oom = 1;
}

static int snap_add_qdest(void *arg, const struct qdest *d)
{
    struct snapshot *s = arg;
    struct row *r = snap_push(s, d->domain);
    if (r == NULL)
        return 1;
    r->nmsg = d->nmsg;
    r->nbytes = d->nbytes;
    r->state = d->state;
    r->next_probe = d->state == QDEST_DOWN ? d->next_probe : 0;
    row_set_error(s, r, d->last_error);
    return 0;
}

struct live_pass {
    struct snapshot *s;
    size_t sorted;                      /* rows [0, sorted) are searchable */
};

static int snap_add_live(void *arg, const struct delivery_dest_info *i)
{
    struct live_pass *p = arg;
    struct row *r = snap_find(p->s, p->sorted, i->domain);
    if (r == NULL && (r = snap_push(p->s, i->domain)) == NULL)
        return 1;
    /* The scheduler's view is live; the index's is as of the last write. */
    r->live = 1;
    /* Count and state from the one source the daemon's replies use
     * (ETRN, control flush/hold/status): delivery_dest_info. */
    r->nmsg = i->nmsg;
    r->nbytes = i->nbytes;
    r->state = i->state;
    r->next_probe = i->next_probe;
    r->connections = i->connections;
    row_set_error(p->s, r, i->last_error);
    return 0;
}

static void snap_free(struct snapshot *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->row[i].last_error);
    free(s->row);
    memset(s, 0, sizeof *s);
}

/* Every destination with mail, known to the scheduler, or configured,
 * sorted by domain.  0, or -1 (out of memory, index unreadable). */
static int snap_take(struct metrics *m, struct snapshot *s, int errors)
{
    struct live_pass lp;
    size_t i, n;

    memset(s, 0, sizeof *s);
    s->errors = errors;
    s->now = (int64_t)time(NULL);
    if (spool_dest_each(m->sp, snap_add_qdest, s) < 0 || s->oom)
        goto fail;
    if (s->n > 1)
        qsort(s->row, s->n, sizeof *s->row, row_cmp_domain);
    lp.s = s;
    lp.sorted = s->n;
    if (m->dl)
        delivery_dest_each(m->dl, snap_add_live, &lp);
    if (s->oom)
        goto fail;
    if (s->n > 1)
        qsort(s->row, s->n, sizeof *s->row, row_cmp_domain);
    n = s->n;
    for (i = 0; m->conf && i < m->conf->ndomains; i++) {
        struct row *r = snap_find(s, n, m->conf->domains[i].name);
        if (r == NULL && (r = snap_push(s, m->conf->domains[i].name)) == NULL)
            goto fail;
        r->configured = 1;
    }
    if (s->n > 1)
        qsort(s->row, s->n, sizeof *s->row, row_cmp_domain);
    for (i = 0; i < s->n; i++) {
        char after[QID_SIZE] = "", qid[1][QID_SIZE];
        if (s->row[i].nmsg == 0)
            continue;
        long got = spool_page(m->sp, s->row[i].domain, after, qid, 1);
        if (got < 0)
            goto fail;
        if (got > 0)
            s->row[i].oldest = (int64_t)qid_time(qid[0]);
    }
    return 0;
fail:
    snap_free(s);
    return -1;
}

static const char *state_name(int state)
{
    switch (state) {
    case QDEST_UP: return "up";
    case QDEST_DOWN: return "down";
    case QDEST_HELD: return "held";
    default: return "unknown";
    }
}

static const int state_all[] = { QDEST_UP, QDEST_DOWN, QDEST_HELD, QDEST_UNKNOWN };

static int64_t row_age(const struct snapshot *s, const struct row *r)
{
    return r->oldest != 0 && s->now > r->oldest ? s->now - r->oldest : 0;
}

/* ------------------------------------------------------------------ */
/* escaping                                                            */
/* ------------------------------------------------------------------ */

/* Text for HTML/SVG content and quoted attributes. */
static void out_html(struct evbuffer *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s);
    while (p < end) {
        size_t n = utf8_decode(p, (size_t)(end - p), NULL);
        if (n == 0 || *p < 0x20 || *p == 0x7f) {
            ADD(b, "&#xfffd;");
            p += n ? n : 1;
            continue;
        }
        switch (*p) {
        case '&': ADD(b, "&amp;"); break;
        case '<': ADD(b, "&lt;"); break;
        case '>': ADD(b, "&gt;"); break;
        case '"': ADD(b, "&quot;"); break;
        case '\'': ADD(b, "&#39;"); break;
        default: evbuffer_add(b, p, n); break;
        }
        p += n;
    }
}

/* A Prometheus label value (between the quotes). */
static void out_label(struct evbuffer *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s);
    while (p < end) {
        size_t n = utf8_decode(p, (size_t)(end - p), NULL);
        if (n == 0 || (*p < 0x20 && *p != '\n') || *p == 0x7f) {
            ADD(b, "?");
            p += n ? n : 1;
            continue;
        }
        if (*p == '\\')
            ADD(b, "\\\\");
        else if (*p == '"')
            ADD(b, "\\\"");
        else if (*p == '\n')
            ADD(b, "\\n");
        else
            evbuffer_add(b, p, n);
        p += n;
    }
}

/* ------------------------------------------------------------------ */
/* /metrics                                                            */
/* ------------------------------------------------------------------ */

static void prom_head(struct evbuffer *b, const char *name, const char *type, const char *help)
{
    /* HELP text escapes only backslash and newline; ours has neither. */
    evbuffer_add_printf(b, "# HELP mxkeep_%s %s\n# TYPE mxkeep_%s %s\n", name, help, name, type);
}

static void prom_u64(struct evbuffer *b, const char *name, const char *type, const char *help,
                     uint64_t v)
{
    prom_head(b, name, type, help);
    evbuffer_add_printf(b, "mxkeep_%s %" PRIu64 "\n", name, v);
}

/*
 * The stats counters, one family at a time: HELP and TYPE once, then one
 * line per member (stats_series maps each id to its family and label), in
 * the order of the first member's id.
 */
static void prom_counters(struct evbuffer *b)
{
    struct stats_series si, sj;
    size_t i, j;

    for (i = 0; i < STAT_COUNT_; i++) {
        int seen = 0;
        stats_series((enum stat_id)i, &si);
        for (j = 0; j < i && !seen; j++) {
            stats_series((enum stat_id)j, &sj);
            seen = strcmp(si.family, sj.family) == 0;
        }
        if (seen)
            continue;
        prom_head(b, si.family, "counter", si.family_help);
        for (j = i; j < STAT_COUNT_; j++) {
            stats_series((enum stat_id)j, &sj);
            if (strcmp(si.family, sj.family) != 0)
                continue;
            if (sj.label_name != NULL)
                evbuffer_add_printf(b, "mxkeep_%s{%s=\"%s\"} %" PRIu64 "\n", sj.family,
                                    sj.label_name, sj.label_value, stats_get((enum stat_id)j));
            else
                evbuffer_add_printf(b, "mxkeep_%s %" PRIu64 "\n", sj.family,
                                    stats_get((enum stat_id)j));
        }
    }
}

enum dom_field { DF_MESSAGES, DF_BYTES, DF_OLDEST, DF_CONNECTIONS, DF_NEXT_PROBE };

static void prom_domains(struct evbuffer *b, const struct snapshot *s, const char *name,
                         const char *help, enum dom_field f)
{
    prom_head(b, name, "gauge", help);
    for (size_t i = 0; i < s->n; i++) {
        const struct row *r = &s->row[i];
        uint64_t v = 0;
        switch (f) {
        case DF_MESSAGES: v = r->nmsg; break;
        case DF_BYTES: v = r->nbytes; break;
        case DF_OLDEST: v = (uint64_t)row_age(s, r); break;
        case DF_CONNECTIONS: v = r->connections > 0 ? (uint64_t)r->connections : 0; break;
        case DF_NEXT_PROBE:
            if (r->next_probe <= 0)
                continue;
            v = (uint64_t)r->next_probe;
            break;
        }
        evbuffer_add_printf(b, "mxkeep_%s{domain=\"", name);
        out_label(b, r->domain);
        evbuffer_add_printf(b, "\"} %" PRIu64 "\n", v);
    }
}

static void prom_pgsql_up(void *arg, const char *name, int up)
{
    struct evbuffer *b = arg;
    ADD(b, "mxkeep_pgsql_up{name=\"");
    out_label(b, name);
    evbuffer_add_printf(b, "\"} %d\n", up ? 1 : 0);
}

static void render_metrics(struct metrics *m, const struct snapshot *s, struct evbuffer *b)
{
    size_t in = 0, out = 0, i, k;
    struct spool_stats ss;

    prom_counters(b);
    spool_stats_get(m->sp, &ss);
    prom_u64(b, "spool_commits_total", "counter", "Messages committed to the spool", ss.commits);
    prom_u64(b, "spool_batches_total", "counter", "Spool group-commit write transactions",
             ss.batches);
    prom_u64(b, "spool_map_grows_total", "counter", "Times the LMDB map was grown", ss.map_grows);
    prom_u64(b, "spool_failures_total", "counter", "Spool batches that failed", ss.failures);

    if (m->gauges)
        m->gauges(m->gauges_arg, &in, &out);
    prom_u64(b, "inbound_sessions", "gauge", "Open inbound SMTP sessions", in);
    prom_u64(b, "outbound_connections", "gauge", "Open outbound SMTP connections", out);
    {
        /* Each message once; sum(mxkeep_queue_messages) counts a message
         * once per destination it waits for. */
        long nq = spool_msg_count(m->sp);
        prom_u64(b, "spool_messages", "gauge", "Messages in the spool, each counted once (kept copies apart)",
                 nq > 0 ? (uint64_t)nq : 0);
        long nh = spool_held_count(m->sp);
        prom_u64(b, "quarantine_messages", "gauge",
                 "Messages in quarantine (kept instead of bounced; mxkeepctl quarantine)",
                 nh > 0 ? (uint64_t)nh : 0);
        /* Kept copies of delivered mail (keep_delivered): not queued mail,
         * apart from spool_messages; the first thing dropped for space. */
        struct qdb_kept_stats ks;
        if (spool_kept_stats(m->sp, &ks) != 0)
            memset(&ks, 0, sizeof ks);
        prom_u64(b, "kept_copies", "gauge", "Copies of delivered mail kept for replay",
                 ks.copies > 0 ? (uint64_t)ks.copies : 0);
        prom_u64(b, "kept_messages", "gauge",
                 "Messages in the spool only for their kept copies",
                 ks.messages > 0 ? (uint64_t)ks.messages : 0);
        prom_u64(b, "kept_bytes", "gauge", "Body octets of those messages", ks.bytes);
    }
    prom_u64(b, "destinations", "gauge", "Destinations with mail, known or configured", s->n);
    prom_u64(b, "start_time_seconds", "gauge", "Process start, unix seconds",
             (uint64_t)stats_started());
    prom_u64(b, "uptime_seconds", "gauge", "Seconds since the process started",
             s->now > stats_started() ? (uint64_t)(s->now - stats_started()) : 0);

    prom_head(b, "pgsql_up", "gauge",
              "1 while the connection to the PostgreSQL entry is up, 0 while it is down");
    pg_each(prom_pgsql_up, b);

    prom_domains(b, s, "queue_messages", "Messages waiting per destination", DF_MESSAGES);
    prom_domains(b, s, "queue_bytes", "Octets of the messages waiting per destination", DF_BYTES);
    prom_domains(b, s, "queue_oldest_seconds",
                 "Age of the oldest message waiting per destination (0 when none)", DF_OLDEST);
    prom_head(b, "destination_state", "gauge",
              "Destination state: 1 for the current one of up, down, held, unknown");
    for (i = 0; i < s->n; i++) {
        for (k = 0; k < sizeof state_all / sizeof state_all[0]; k++) {
            ADD(b, "mxkeep_destination_state{domain=\"");
            out_label(b, s->row[i].domain);
            evbuffer_add_printf(b, "\",state=\"%s\"} %d\n", state_name(state_all[k]),
                                s->row[i].state == state_all[k] ||
                                    (state_all[k] == QDEST_UNKNOWN &&
                                     (s->row[i].state < QDEST_UNKNOWN ||
                                      s->row[i].state > QDEST_HELD)));
        }
    }
    prom_domains(b, s, "destination_connections", "Open outbound connections per destination",
                 DF_CONNECTIONS);
    prom_domains(b, s, "destination_next_probe_timestamp_seconds",
                 "When a down destination is probed next, unix seconds", DF_NEXT_PROBE);
    verify_metrics(b);
    heartbeat_metrics(b);
}

/* ------------------------------------------------------------------ */
/* human formats                                                       */
/* ------------------------------------------------------------------ */

#define HUMAN_SIZE 32

static const char *human_age(int64_t s, char out[HUMAN_SIZE])
{
    const int64_t day = 24 * SECONDS_PER_HOUR, hour = SECONDS_PER_HOUR, min = 60;
    if (s < 0)
        s = 0;
    if (s >= day)
        snprintf(out, HUMAN_SIZE, "%" PRId64 "d %" PRId64 "h", s / day, s % day / hour);
    else if (s >= hour)
        snprintf(out, HUMAN_SIZE, "%" PRId64 "h %" PRId64 "m", s / hour, s % hour / min);
    else if (s >= min)
        snprintf(out, HUMAN_SIZE, "%" PRId64 "m %" PRId64 "s", s / min, s % min);
    else
        snprintf(out, HUMAN_SIZE, "%" PRId64 "s", s);
    return out;
}

static const char *human_bytes(uint64_t n, char out[HUMAN_SIZE])
{
    static const char *unit[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
    const double step = 1024.0;
    double v = (double)n;
    size_t u = 0;
    while (v >= step && u + 1 < sizeof unit / sizeof unit[0]) {
        v /= step;
        u++;
    }
    if (u == 0)
        snprintf(out, HUMAN_SIZE, "%" PRIu64 " B", n);
    else
        snprintf(out, HUMAN_SIZE, "%.1f %s", v, unit[u]);
    return out;
}

static const char *utc_time(int64_t t, char out[HUMAN_SIZE])
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (gmtime_r(&tt, &tm) == NULL || strftime(out, HUMAN_SIZE, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(out, HUMAN_SIZE, "%" PRId64, t);
    return out;
}

/* ------------------------------------------------------------------ */
/* history: samples and the chart                                      */
/* ------------------------------------------------------------------ */

static size_t hist_index(const struct history *h, size_t k)
{
    /* k-th oldest sample held */
    return (h->head + HISTORY_SAMPLES - h->n + k) % HISTORY_SAMPLES;
}

static uint32_t series_peak(const struct history *h, const struct series *se)
{
    uint32_t peak = 0;
    for (size_t k = 0; k < h->n; k++) {
        uint32_t v = se->v[hist_index(h, k)];
        if (v != NO_SAMPLE && v > peak)
            peak = v;
    }
    return peak;
}

struct sample_pass {
    struct history *h;
    size_t slot;
    const struct qdest *top[CHART_TOP];
    struct qdest topv[CHART_TOP];
    size_t ntop;
};

static uint32_t clamp32(uint64_t v)
{
    return v >= NO_SAMPLE ? NO_SAMPLE - 1 : (uint32_t)v;
}

static int sample_dest(void *arg, const struct qdest *d)
{
    struct sample_pass *p = arg;
    size_t i, j;

    for (i = 0; i < SERIES_MAX; i++)
        if (p->h->s[i].used && strcmp(p->h->s[i].domain, d->domain) == 0)
            p->h->s[i].v[p->slot] = clamp32(d->nmsg);
    if (d->nmsg == 0)
        return 0;
    /* Keep the CHART_TOP biggest, biggest first. */
    for (i = 0; i < p->ntop && p->topv[i].nmsg >= d->nmsg; i++)
        ;
    if (i >= CHART_TOP)
        return 0;
    j = p->ntop < CHART_TOP ? p->ntop++ : CHART_TOP - 1;
    for (; j > i; j--)
        p->topv[j] = p->topv[j - 1];
    p->topv[i] = *d;
    return 0;
}

/* Make room for a new tracked series: a free slot, else the one with the
 * smallest peak that is not among this sample's biggest. */
static struct series *hist_slot(struct sample_pass *p)
{
    struct series *best = NULL;
    uint32_t best_peak = NO_SAMPLE;
    size_t i, t;

    for (i = 0; i < SERIES_MAX; i++)
        if (!p->h->s[i].used)
            return &p->h->s[i];
    for (i = 0; i < SERIES_MAX; i++) {
        struct series *se = &p->h->s[i];
        uint32_t peak;
        for (t = 0; t < p->ntop; t++)
            if (strcmp(se->domain, p->topv[t].domain) == 0)
                break;
        if (t < p->ntop)
            continue;
        peak = series_peak(p->h, se);
        if (peak < best_peak) {
            best = se;
            best_peak = peak;
        }
    }
    return best;
}

static void metrics_sample(struct metrics *m)
{
    struct history *h = m->hist;
    struct sample_pass p;
    long nq;
    size_t i, t;

    if (m->sp == NULL)
        return;
    memset(&p, 0, sizeof p);
    p.h = h;
    p.slot = h->head;
    nq = spool_msg_count(m->sp);
    h->t[p.slot] = (int64_t)time(NULL);
    h->total[p.slot] = nq > 0 ? (uint64_t)nq : 0;
    for (i = 0; i < SERIES_MAX; i++)
        h->s[i].v[p.slot] = 0;              /* no record: nothing waiting */
    if (spool_dest_each(m->sp, sample_dest, &p) < 0)
        log_warn("metrics: cannot read the destination index for the history");
    h->head = (h->head + 1) % HISTORY_SAMPLES;
    if (h->n < HISTORY_SAMPLES)
        h->n++;
    for (t = 0; t < p.ntop; t++) {
        struct series *se;
        for (i = 0; i < SERIES_MAX; i++)
            if (h->s[i].used && strcmp(h->s[i].domain, p.topv[t].domain) == 0)
                break;
        if (i < SERIES_MAX || (se = hist_slot(&p)) == NULL)
            continue;
        se->used = 1;
        snprintf(se->domain, sizeof se->domain, "%s", p.topv[t].domain);
        for (i = 0; i < HISTORY_SAMPLES; i++)
            se->v[i] = NO_SAMPLE;
        se->v[p.slot] = clamp32(p.topv[t].nmsg);
    }
}

/* A round axis step >= v: 1, 2 or 5 times a power of ten. */
static uint64_t nice_step(uint64_t v)
{
    uint64_t p = 1;
    for (;;) {
        if (v <= p)
            return p;
        if (v <= 2 * p)
            return 2 * p;
        if (v <= 5 * p)
            return 5 * p;
        if (p > UINT64_MAX / 10 / 5)
            return v;
        p *= 10;
    }
}

/* The axis maximum: CHART_YTICKS round steps, at least 1 each. */
static uint64_t axis_max(uint64_t peak)
{
    return nice_step((peak + CHART_YTICKS - 1) / CHART_YTICKS) * CHART_YTICKS;
}

static const char *chart_colour[CHART_TOP + 1] = {
    "#1f3a93", "#d35400", "#16a085", "#8e44ad", "#c0392b", "#7f8c8d",
};

static double chart_x(int64_t t, int64_t now)
{
    double f = (double)(t - (now - HISTORY_SECONDS)) / HISTORY_SECONDS;
    if (f < 0)
        f = 0;
    if (f > 1)
        f = 1;
    return PLOT_X0 + f * (PLOT_X1 - PLOT_X0);
}

static double chart_y(uint64_t v, uint64_t ymax)
{
    return PLOT_Y1 - (double)v / (double)ymax * (PLOT_Y1 - PLOT_Y0);
}

/* One line: the total (se == NULL) or a tracked destination. */
static void chart_line(struct evbuffer *b, const struct history *h, const struct series *se,
                       uint64_t ymax, int64_t now, const char *colour, double width)
{
    double lx = 0, ly = 0;
    int any = 0;

    evbuffer_add_printf(b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%.1f\" "
                           "stroke-linejoin=\"round\" points=\"", colour, width);
    for (size_t k = 0; k < h->n; k++) {
        size_t i = hist_index(h, k);
        uint64_t v = se ? se->v[i] : h->total[i];
        if (se && se->v[i] == NO_SAMPLE)
            continue;
        lx = chart_x(h->t[i], now);
        ly = chart_y(v, ymax);
        evbuffer_add_printf(b, "%s%.1f,%.1f", any ? " " : "", lx, ly);
        any = 1;
    }
    ADD(b, "\"/>\n");
    if (any)
        evbuffer_add_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", lx, ly,
                            colour);
}

static void render_chart(struct metrics *m, struct evbuffer *b, int64_t now)
{
    const struct history *h = m->hist;
    const struct series *pick[CHART_TOP];
    uint32_t pick_peak[CHART_TOP];
    size_t npick = 0, i, j, k;
    uint64_t peak = 0, ymax;
    char lab[HUMAN_SIZE];

    for (k = 0; k < h->n; k++)
        if (h->total[hist_index(h, k)] > peak)
            peak = h->total[hist_index(h, k)];
    /* The biggest tracked destinations by peak over the window. */
    for (i = 0; i < SERIES_MAX; i++) {
        uint32_t p;
        if (!h->s[i].used || (p = series_peak(h, &h->s[i])) == 0)
            continue;
        if (p > peak)
            peak = p;
        for (j = 0; j < npick && pick_peak[j] >= p; j++)
            ;
        if (j >= CHART_TOP)
            continue;
        if (npick < CHART_TOP)
            npick++;
        for (k = npick - 1; k > j; k--) {
            pick[k] = pick[k - 1];
            pick_peak[k] = pick_peak[k - 1];
        }
        pick[j] = &h->s[i];
        pick_peak[j] = p;
    }
    ymax = axis_max(peak);

    evbuffer_add_printf(b, "<svg id=\"backlog-chart\" xmlns=\"http://www.w3.org/2000/svg\" "
                           "viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" role=\"img\" "
                           "aria-label=\"Backlog over the last 24 hours\">\n",
                        CHART_W, CHART_H, CHART_W, CHART_H);
    evbuffer_add_printf(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#fbfbfd\" "
                           "stroke=\"#c8ccd4\"/>\n",
                        PLOT_X0, PLOT_Y0, PLOT_X1 - PLOT_X0, PLOT_Y1 - PLOT_Y0);
    for (i = 0; i <= CHART_YTICKS; i++) {
        uint64_t v = ymax * i / CHART_YTICKS;
        double y = chart_y(v, ymax);
        evbuffer_add_printf(b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" "
                               "stroke=\"#e3e6eb\"/><text x=\"%d\" y=\"%.1f\" "
                               "text-anchor=\"end\" class=\"ax\">%" PRIu64 "</text>\n",
                            PLOT_X0, y, PLOT_X1, y, PLOT_X0 - 6, y + 4, v);
    }
    for (i = 0; i <= HISTORY_SECONDS / SECONDS_PER_HOUR; i += CHART_XTICK_HOURS) {
        int64_t t = now - HISTORY_SECONDS + (int64_t)i * SECONDS_PER_HOUR;
        double x = chart_x(t, now);
        int hours_ago = (int)(HISTORY_SECONDS / SECONDS_PER_HOUR - i);
        evbuffer_add_printf(b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" "
                               "stroke=\"#e3e6eb\"/>",
                            x, PLOT_Y0, x, PLOT_Y1);
        if (hours_ago == 0)
            evbuffer_add_printf(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" "
                                   "class=\"ax\">now</text>\n", x, PLOT_Y1 + 16);
        else
            evbuffer_add_printf(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" "
                                   "class=\"ax\">-%dh</text>\n", x, PLOT_Y1 + 16, hours_ago);
    }
    if (h->n == 0)
        evbuffer_add_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" class=\"ax\">"
                               "no samples yet</text>\n",
                            (PLOT_X0 + PLOT_X1) / 2, (PLOT_Y0 + PLOT_Y1) / 2);
    for (i = npick; i-- > 0;)
        chart_line(b, h, pick[i], ymax, now, chart_colour[1 + i], 1.5);
    chart_line(b, h, NULL, ymax, now, chart_colour[0], 2.5);

    /* Legend */
    evbuffer_add_printf(b, "<g class=\"legend\"><rect x=\"%d\" y=\"%d\" width=\"14\" "
                           "height=\"4\" fill=\"%s\"/><text x=\"%d\" y=\"%d\">total queued "
                           "(%" PRIu64 ")</text>\n",
                        LEGEND_X, PLOT_Y0 + 6, chart_colour[0], LEGEND_X + 20, PLOT_Y0 + 11,
                        h->n ? h->total[hist_index(h, h->n - 1)] : 0);
    for (i = 0; i < npick; i++) {
        int y = PLOT_Y0 + (int)(i + 1) * LEGEND_DY;
        uint32_t last = h->n ? pick[i]->v[hist_index(h, h->n - 1)] : 0;
        evbuffer_add_printf(b, "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"4\" "
                               "fill=\"%s\"/><text x=\"%d\" y=\"%d\">",
                            LEGEND_X, y + 6, chart_colour[1 + i], LEGEND_X + 20, y + 11);
        out_html(b, pick[i]->domain);
        evbuffer_add_printf(b, " (%" PRIu32 ")</text>\n", last == NO_SAMPLE ? 0 : last);
    }
    evbuffer_add_printf(b, "<text x=\"%d\" y=\"%d\" class=\"ax\">peak %" PRIu64 "; %zu "
                           "sample%s, one every %s</text>\n</g>\n</svg>\n",
                        LEGEND_X, PLOT_Y0 + (int)(npick + 1) * LEGEND_DY + 12, peak, h->n,
                        h->n == 1 ? "" : "s", human_age(SAMPLE_SECONDS, lab));
}

/* ------------------------------------------------------------------ */
/* recent errors                                                       */
/* ------------------------------------------------------------------ */

static uint64_t text_hash(const char *s)
{
    /* FNV-1a; 0 is kept for "no error" */
    if (*s == '\0')
        return 0;
    uint64_t h = util_hash(UTIL_HASH_INIT, s, strlen(s));
    return h ? h : 1;
}

static int seen_cmp(const void *a, const void *b)
{
    return strcmp(((const struct seen_error *)a)->domain, ((const struct seen_error *)b)->domain);
}

static void errors_note(struct metrics *m, const char *domain, const char *text, int64_t now)
{
    struct error_event *e = &m->errs[m->errs_head];
    e->t = now;
    snprintf(e->domain, sizeof e->domain, "%s", domain);
    snprintf(e->text, sizeof e->text, "%s", text);
    m->errs_head = (m->errs_head + 1) % ERRORS_KEEP;
    if (m->errs_n < ERRORS_KEEP)
        m->errs_n++;
}

struct error_pass {
    struct metrics *m;
    size_t sorted;
    int64_t now;
    int oom;
};

static int errors_dest(void *arg, const struct delivery_dest_info *i)
{
    struct error_pass *p = arg;
    struct metrics *m = p->m;
    struct seen_error key, *e;
    uint64_t h = text_hash(i->last_error);

    key.domain = (char *)i->domain;
    e = p->sorted ? bsearch(&key, m->seen, p->sorted, sizeof *m->seen, seen_cmp) : NULL;
    if (e == NULL) {
        if (m->nseen == m->capseen) {
            size_t cap = m->capseen ? m->capseen * 2 : 64;
            struct seen_error *n = realloc(m->seen, cap * sizeof *n);
            if (n == NULL) {
                p->oom = 1;
                return 1;
            }
            m->seen = n;
            m->capseen = cap;
        }
        e = &m->seen[m->nseen];
        if ((e->domain = strdup(i->domain)) == NULL) {
            p->oom = 1;
            return 1;
        }
        e->hash = 0;
        m->nseen++;
    }
    if (h != e->hash && h != 0)
        errors_note(m, i->domain, i->last_error, p->now);
    e->hash = h;
    e->gen = m->gen;
    return 0;
}

/* Compare every destination's last error with the one seen before;
 * remember destinations the scheduler no longer has no longer. */
static void errors_poll(struct metrics *m)
{
    struct error_pass p = { m, m->nseen, (int64_t)time(NULL), 0 };
    size_t i, j;

    if (m->dl == NULL)
        return;
    m->gen++;
    delivery_dest_each(m->dl, errors_dest, &p);
    if (p.oom) {
        log_warn("metrics: out of memory tracking destination errors");
        return;
    }
    for (i = j = 0; i < m->nseen; i++) {
        if (m->seen[i].gen != m->gen) {
            free(m->seen[i].domain);
            continue;
        }
        m->seen[j++] = m->seen[i];
    }
    m->nseen = j;
    if (m->nseen > 1)
        qsort(m->seen, m->nseen, sizeof *m->seen, seen_cmp);
}

/* ------------------------------------------------------------------ */
/* /status                                                             */
/* ------------------------------------------------------------------ */

static const char status_css[] =
    "body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;"
    "color:#1d2330;background:#f4f5f7}"
    "header{background:#1d2330;color:#fff;padding:14px 24px}"
    "header h1{margin:0;font-size:20px;font-weight:600}"
    "header .sub{color:#b8c0cc;font-size:13px}"
    "main{padding:16px 24px}"
    ".totals{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:16px}"
    ".tot{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 14px;"
    "min-width:110px}"
    ".tot .n{font-size:22px;font-weight:600}.tot .l{color:#5b6474;font-size:12px;"
    "text-transform:uppercase;letter-spacing:.04em}"
    "section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 16px;"
    "margin-bottom:16px}"
    "h2{font-size:15px;margin:0 0 8px}"
    "table{border-collapse:collapse;width:100%}"
    "th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef2;vertical-align:top}"
    "th{font-size:12px;color:#5b6474;text-transform:uppercase;letter-spacing:.04em}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "td.err{color:#8a1c1c;max-width:420px;word-break:break-word}"
    ".badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;"
    "font-size:12px;font-weight:600}"
    ".b-up{background:#1a7f37}.b-down{background:#cf222e}.b-held{background:#bf8700}"
    ".b-unknown{background:#6e7781}"
    "svg text{font:12px system-ui,sans-serif;fill:#1d2330}svg .ax{fill:#5b6474;font-size:11px}"
    ".muted{color:#5b6474}";

static int row_cmp_age(const void *a, const void *b)
{
    const struct row *x = a, *y = b;
    if ((x->oldest != 0) != (y->oldest != 0))
        return x->oldest != 0 ? -1 : 1;
    if (x->oldest != y->oldest)
        return x->oldest < y->oldest ? -1 : 1;
    return strcmp(x->domain, y->domain);
}

static void render_total(struct evbuffer *b, const char *label, uint64_t v)
{
    evbuffer_add_printf(b, "<div class=\"tot\"><div class=\"n\">%" PRIu64 "</div>"
                           "<div class=\"l\">%s</div></div>\n", v, label);
}

static void render_status(struct metrics *m, struct snapshot *s, struct evbuffer *b)
{
    char host[HOST_NAME_SIZE], t1[HUMAN_SIZE], t2[HUMAN_SIZE];
    const char *hostname = m->conf && m->conf->hostname ? m->conf->hostname : NULL;
    long nq = spool_msg_count(m->sp);
    size_t in = 0, out = 0, i;

    if (hostname == NULL) {
        if (gethostname(host, sizeof host) != 0)
            snprintf(host, sizeof host, "?");
        host[sizeof host - 1] = '\0';
        hostname = host;
    }
    if (m->gauges)
        m->gauges(m->gauges_arg, &in, &out);
    if (s->n > 1)
        qsort(s->row, s->n, sizeof *s->row, row_cmp_age);

    evbuffer_add_printf(b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
                           "<meta http-equiv=\"refresh\" content=\"%d\">\n"
                           "<meta name=\"viewport\" content=\"width=device-width\">\n<title>mxkeep ",
                        STATUS_REFRESH_SECONDS);
    out_html(b, hostname);
    evbuffer_add_printf(b, "</title>\n<style>%s</style></head>\n<body>\n<header><h1>mxkeep on ",
                        status_css);
    out_html(b, hostname);
    evbuffer_add_printf(b, "</h1><div class=\"sub\">up %s &middot; %s UTC &middot; "
                           "%zu inbound sessions &middot; %zu outbound connections</div>"
                           "</header>\n<main>\n<div class=\"totals\">\n",
                        human_age(s->now - stats_started(), t1), utc_time(s->now, t2), in, out);
    render_total(b, "queued", nq > 0 ? (uint64_t)nq : 0);
    render_total(b, "accepted", stats_get(STAT_ACCEPTED));
    render_total(b, "delivered", stats_get(STAT_DELIVERED));
    render_total(b, "bounced", stats_get(STAT_BOUNCED));
    render_total(b, "deferred", stats_get(STAT_DEFERRED));
    render_total(b, "expired", stats_get(STAT_EXPIRED));
    {
        long nh = spool_held_count(m->sp);
        render_total(b, "quarantined", nh > 0 ? (uint64_t)nh : 0);
        struct qdb_kept_stats ks;
        if (spool_kept_stats(m->sp, &ks) != 0)
            memset(&ks, 0, sizeof ks);
        render_total(b, "kept copies", ks.copies > 0 ? (uint64_t)ks.copies : 0);
    }
    ADD(b, "</div>\n");

    ADD(b, "<section><h2>Backlog, last 24 hours</h2>\n");
    render_chart(m, b, s->now);
    ADD(b, "</section>\n");

    evbuffer_add_printf(b, "<section><h2>Destinations (%zu)</h2>\n<table id=\"destinations\">"
                           "<thead><tr><th>Domain</th><th>Messages</th><th>Size</th>"
                           "<th>Oldest</th><th>State</th><th>Next probe</th>"
                           "<th>Connections</th><th>Last error</th></tr></thead>\n<tbody>\n",
                        s->n);
    for (i = 0; i < s->n; i++) {
        const struct row *r = &s->row[i];
        const char *st = state_name(r->state);
        ADD(b, "<tr data-domain=\"");
        out_html(b, r->domain);
        evbuffer_add_printf(b, "\" data-state=\"%s\"><td>", st);
        out_html(b, r->domain);
        if (!r->configured)
            ADD(b, " <span class=\"muted\">(bounces)</span>");
        evbuffer_add_printf(b, "</td><td class=\"num\">%" PRIu64 "</td><td class=\"num\">%s</td>"
                               "<td class=\"num\">%s</td>",
                            r->nmsg, human_bytes(r->nbytes, t1),
                            r->oldest ? human_age(row_age(s, r), t2) : "&ndash;");
        evbuffer_add_printf(b, "<td><span class=\"badge b-%s\">%s</span>", st, st);
        /* accept = "when-primary-down": the gate and since when. */
        enum gate_state gs;
        time_t gsince;
        if (r->configured && heartbeat_gate_name(r->domain, &gs, &gsince) == 0)
            evbuffer_add_printf(b, " <span class=\"gate\" data-gate=\"%s\">gate %s%s%s</span>",
                                gate_state_name(gs), gate_state_name(gs),
                                gsince ? " since " : "", gsince ? utc_time(gsince, t1) : "");
        ADD(b, "</td>");
        if (r->next_probe > 0)
            evbuffer_add_printf(b, "<td>in %s</td>",
                                human_age(r->next_probe > s->now ? r->next_probe - s->now : 0, t1));
        else
            ADD(b, "<td>&ndash;</td>");
        evbuffer_add_printf(b, "<td class=\"num\">%d</td><td class=\"err\">", r->connections);
        if (r->last_error)
            out_html(b, r->last_error);
        ADD(b, "</td></tr>\n");
    }
    ADD(b, "</tbody></table></section>\n");

    ADD(b, "<section><h2>Recent errors</h2>\n");
    if (m->errs_n == 0)
        ADD(b, "<p class=\"muted\">none</p>\n");
    else
        ADD(b, "<table id=\"errors\"><thead><tr><th>Time (UTC)</th><th>Domain</th>"
                        "<th>Error</th></tr></thead><tbody>\n");
    for (i = 0; i < m->errs_n; i++) {
        const struct error_event *e = &m->errs[(m->errs_head + ERRORS_KEEP - 1 - i) % ERRORS_KEEP];
        evbuffer_add_printf(b, "<tr><td>%s</td><td>", utc_time(e->t, t1));
        out_html(b, e->domain);
        ADD(b, "</td><td class=\"err\">");
        out_html(b, e->text);
        ADD(b, "</td></tr>\n");
    }
    if (m->errs_n)
        ADD(b, "</tbody></table>\n");
    evbuffer_add_printf(b, "</section>\n<p class=\"muted\">Refreshes every %d s. "
                           "Machine-readable: <a href=\"/metrics\">/metrics</a>.</p>\n"
                           "</main>\n</body></html>\n",
                        STATUS_REFRESH_SECONDS);
}

/* ------------------------------------------------------------------ */
/* HTTP                                                                */
/* ------------------------------------------------------------------ */

static void http_reply(struct evhttp_request *req, int code, const char *reason,
                       const char *type, struct evbuffer *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char len[HUMAN_SIZE];

    evhttp_add_header(h, "Content-Type", type);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
        /* Same headers as GET, no body. */
        snprintf(len, sizeof len, "%zu", evbuffer_get_length(body));
        evhttp_add_header(h, "Content-Length", len);
        evbuffer_drain(body, evbuffer_get_length(body));
    }
    evhttp_send_reply(req, code, reason, body);
}

static void http_simple(struct evhttp_request *req, int code, const char *reason)
{
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    evbuffer_add_printf(b, "%d %s\n", code, reason);
    http_reply(req, code, reason, "text/plain; charset=utf-8", b);
    evbuffer_free(b);
}

static void metrics_on_request(struct evhttp_request *req, void *arg)
{
    struct metrics *m = arg;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    int is_metrics, is_status;
    struct snapshot snap;
    struct evbuffer *b;

    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        http_simple(req, 405, "Method Not Allowed");
        return;
    }
    if (path == NULL || path[0] == '\0' || strcmp(path, "/") == 0) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Location", "/status");
        http_simple(req, 302, "Found");
        return;
    }
    is_metrics = strcmp(path, "/metrics") == 0;
    is_status = strcmp(path, "/status") == 0;
    if (!is_metrics && !is_status) {
        http_simple(req, HTTP_NOTFOUND, "Not Found");
        return;
    }
    if (m->sp == NULL) {
        http_simple(req, 503, "Service Unavailable");
        return;
    }
    if (is_status)
        errors_poll(m);                 /* the page shows what is true now */
    if (snap_take(m, &snap, is_status) != 0) {
        log_warn("metrics: cannot read the queue index for %s", path);
        http_simple(req, HTTP_INTERNAL, "Internal Server Error");
        return;
    }
    b = evbuffer_new();
    if (b == NULL) {
        snap_free(&snap);
        http_simple(req, HTTP_INTERNAL, "Internal Server Error");
        return;
    }
    if (is_metrics) {
        render_metrics(m, &snap, b);
        http_reply(req, HTTP_OK, "OK", "text/plain; version=0.0.4; charset=utf-8", b);
    } else {
        render_status(m, &snap, b);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Security-Policy",
                          "default-src 'none'; style-src 'unsafe-inline'; img-src data:");
        http_reply(req, HTTP_OK, "OK", "text/html; charset=utf-8", b);
    }
    evbuffer_free(b);
    snap_free(&snap);
}

static void metrics_on_sample(evutil_socket_t fd, short what, void *arg)
{
    metrics_sample(arg);
}

static void metrics_on_errors(evutil_socket_t fd, short what, void *arg)
{
    errors_poll(arg);
}

/* ------------------------------------------------------------------ */
/* life cycle                                                          */
/* ------------------------------------------------------------------ */

struct metrics *metrics_new(struct event_base *base, const struct conf *c, char *err,
                            size_t errlen)
{
    struct metrics *m;

    err[0] = '\0';
    if (c->metrics_address == NULL)
        return NULL;
    m = calloc(1, sizeof *m);
    if (m == NULL || (m->hist = calloc(1, sizeof *m->hist)) == NULL ||
        (m->bound_address = strdup(c->metrics_address)) == NULL ||
        (m->http = evhttp_new(base)) == NULL) {
        snprintf(err, errlen, "metrics: out of memory");
        metrics_free(m);
        return NULL;
    }
    m->base = base;
    m->conf = c;
    m->bound_port = c->metrics_port;
    evhttp_set_max_headers_size(m->http, METRICS_MAX_HEADERS);
    evhttp_set_max_body_size(m->http, METRICS_MAX_BODY);
    evhttp_set_timeout(m->http, METRICS_TIMEOUT_SECONDS);
    /* Let every method reach us, so that the answer is 405, not 501. */
    evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(m->http, metrics_on_request, m);
    if (evhttp_bind_socket_with_handle(m->http, c->metrics_address,
                                       (ev_uint16_t)c->metrics_port) == NULL) {
        snprintf(err, errlen, "metrics: cannot listen on %s port %d", c->metrics_address,
                 c->metrics_port);
        metrics_free(m);
        return NULL;
    }
    log_info("metrics: listening on %s port %d", c->metrics_address, c->metrics_port);
    return m;
}

void metrics_start(struct metrics *m, struct spool *sp, struct delivery *dl,
                   metrics_gauges_fn gauges, void *arg)
{
    struct timeval sample = { SAMPLE_SECONDS, 0 };
    struct timeval poll = { ERROR_POLL_SECONDS, 0 };

    if (m == NULL)
        return;
    m->sp = sp;
    m->dl = dl;
    m->gauges = gauges;
    m->gauges_arg = arg;
    m->ev_sample = event_new(m->base, -1, EV_PERSIST, metrics_on_sample, m);
    m->ev_errors = event_new(m->base, -1, EV_PERSIST, metrics_on_errors, m);
    if (m->ev_sample == NULL || m->ev_errors == NULL ||
        event_add(m->ev_sample, &sample) != 0 || event_add(m->ev_errors, &poll) != 0)
        log_warn("metrics: cannot arm the history timers; the chart will not move");
    /* A first point right away, and the errors known at start. */
    metrics_sample(m);
    errors_poll(m);
}

void metrics_set_conf(struct metrics *m, const struct conf *c)
{
    if (m == NULL)
        return;
    m->conf = c;
    if (c->metrics_address == NULL || strcmp(c->metrics_address, m->bound_address) != 0 ||
        c->metrics_port != m->bound_port)
        log_warn("metrics: listener changes take a restart; still on %s port %d",
                 m->bound_address, m->bound_port);
}

void metrics_free(struct metrics *m)
{
    if (m == NULL)
        return;
    if (m->ev_sample)
        event_free(m->ev_sample);
    if (m->ev_errors)
        event_free(m->ev_errors);
    if (m->http)
        evhttp_free(m->http);
    for (size_t i = 0; i < m->nseen; i++)
        free(m->seen[i].domain);
    free(m->seen);
    free(m->hist);
    free(m->bound_address);
    free(m);
}
