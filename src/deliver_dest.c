/*
 * deliver_dest.c - destinations and scheduling (delivery module; see
 * deliver_int.h).
 *
 * Owns: the destination table (hash by lower-cased name), each
 * destination's state, back-off, probe timer and in-flight list; picking
 * the next message for a connection (job_load/job_next) and the one owner
 * of a message's recipient states (msg_owner).
 *
 * How a destination moves (dest_set_state logs every change):
 *   unknown --probe ok--> up --connect/greeting/TLS failure--> down
 *   down --probe timer (back-off probe_min..probe_max, jitter)--> probe
 *   any --ETRN / flush--> unknown (probe now); held <--> config / control
 * While down, messages are not tried one by one: one probe per interval,
 * and the probe is the delivery of the oldest waiting message.
 *
 * Never: hands out a message another owner holds (in flight elsewhere for
 * this destination, or being expired); sends a message twice at once (the
 * in-flight list holds a QID from next() until its outcome is committed);
 * writes a destination record except through spool_write (dest_save);
 * bounces mail because the primary is down or DNS failed for a served
 * domain.
 */
#include "config.h"
#include "deliver_int.h"
#include "delivery.h"
#include "authres.h"
#include "bounce.h"
#include "dns.h"
#include "log.h"
#include "qid.h"
#include "queue_db.h"
#include "smtpc.h"
#include "stats.h"
#include "spool.h"
#include "tls.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/time.h>
#include <event2/buffer.h>
#include <event2/event.h>

/* Jitter: +-1/JITTER_DIV of the back-off interval. */
#define DELIVERY_JITTER_DIV 5
/* QIDs read per page when picking the next message of a destination. */
#define DELIVERY_PICK_PAGE 64
/* First size of the destination hash (a power of two). */
#define DELIVERY_HASH_INITIAL 64

/* ------------------------------------------------------------------ */
/* Destinations                                                       */

static const char *const dest_state_names[] = { "unknown", "up", "down", "held" };
_Static_assert(sizeof dest_state_names / sizeof dest_state_names[0] == QDEST_HELD + 1,
               "dest_state_names[] must name every enum qdest_state");

/* Names compare case-insensitively (ASCII): hash them folded. */
static size_t dest_hash(const char *name)
{
    return (size_t)util_hash_lower(UTIL_HASH_INIT, name, strlen(name));
}

struct dest *dest_find(struct delivery *s, const char *name)
{
    if (s->nbuckets == 0)
        return NULL;
    for (struct dest *d = s->bucket[dest_hash(name) & (s->nbuckets - 1)]; d; d = d->hnext)
        if (strcasecmp(d->name, name) == 0)
            return d;
    return NULL;
}

/* Keep chains short: double the table when it is as full as it is wide. */
static int dest_index(struct delivery *s, struct dest *d)
{
    if (s->ndests + 1 > s->nbuckets) {
        size_t nb = s->nbuckets ? s->nbuckets * 2 : DELIVERY_HASH_INITIAL;
        struct dest **b = calloc(nb, sizeof *b);
        if (b == NULL)
            return -1;
        for (struct dest *x = s->dests; x; x = x->next) {
            size_t i = dest_hash(x->name) & (nb - 1);
            x->hnext = b[i];
            b[i] = x;
        }
        free(s->bucket);
        s->bucket = b;
        s->nbuckets = nb;
    }
    size_t i = dest_hash(d->name) & (s->nbuckets - 1);
    d->hnext = s->bucket[i];
    s->bucket[i] = d;
    s->ndests++;
    return 0;
}

static void dest_on_timer(evutil_socket_t fd, short what, void *arg);

/* Route and policy from the config: a served domain's primary, or MX
 * lookup with defaults for a bounce destination. */
void dest_apply_conf(struct dest *d)
{
    const struct conf *c = d->s->conf;
    const struct conf_domain *cd = conf_domain_find(c, d->name);
    SSL_CTX_free(d->tls_ctx);
    d->tls_ctx = NULL;
    d->served = cd != NULL;
    d->fingerprint[0] = '\0';
    if (cd) {
        snprintf(d->host, sizeof d->host, "%s", cd->primary_host);
        /* No primary given: MX lookup on the MX port, like a bounce. */
        d->port = cd->primary ? cd->primary_port : (int)c->delivery.mx_port;
        d->fixed = cd->primary_fixed;
        d->tls = cd->tls;
        d->held = d->hold_override >= 0 ? d->hold_override : cd->hold;
        if (cd->tls_fingerprint)
            snprintf(d->fingerprint, sizeof d->fingerprint, "%s", cd->tls_fingerprint);
        if (cd->tls_ca) {
            char err[256];
            d->tls_ctx = tls_client_ctx_new(cd->tls_ca, err, sizeof err);
            if (d->tls_ctx == NULL)
                log_warn("destination %s: %s; using the system CA store", d->name, err);
        }
    } else {
        snprintf(d->host, sizeof d->host, "%s", d->name);
        d->port = c->delivery.mx_port;
        d->fixed = 0;
        d->tls = TLS_POLICY_MAY;
        d->held = d->hold_override > 0;
    }
    d->odmr = cd != NULL && cd->odmr;
    d->route_time = 0;      /* the route may have changed */
    if (d->aimd.ceiling == 0)
        dl_aimd_init(&d->aimd, (unsigned)c->delivery.max_connections, c->delivery.adaptive);
    else
        dl_aimd_configure(&d->aimd, (unsigned)c->delivery.max_connections, c->delivery.adaptive);
    dest_window_update(d);
}

struct dest_host *dest_host_get(struct delivery *s, const char *name, int port)
{
    for (struct dest_host *h = s->hosts; h; h = h->next)
        if (h->port == port && strcasecmp(h->name, name) == 0)
            return h;
    struct dest_host *h = calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    snprintf(h->name, sizeof h->name, "%s", name);
    h->port = port;
    h->next = s->hosts;
    s->hosts = h;
    return h;
}

void dest_window_update(struct dest *d)
{
    unsigned w = dl_aimd_window(&d->aimd);
    unsigned cap = d->phost ? dl_host_conn_max(&d->phost->lim, NULL) : 0;

    if (cap > 0 && w > cap)
        w = cap;
    d->conn_limit = (int)w;
}

int dest_host_full(const struct dest *d)
{
    unsigned cap = d->phost ? dl_host_conn_max(&d->phost->lim, NULL) : 0;

    return cap > 0 && d->phost->live > 0 && (unsigned)d->phost->live >= cap;
}

void dest_window_reset(struct dest *d)
{
    const struct conf_delivery *dl = &d->s->conf->delivery;

    dl_aimd_init(&d->aimd, (unsigned)dl->max_connections, dl->adaptive);
    dest_window_update(d);
}

struct dest *dest_get(struct delivery *s, const char *name)
{
    struct dest *d = dest_find(s, name);
    if (d)
        return d;
    d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->s = s;
    snprintf(d->name, sizeof d->name, "%s", name);
    d->timer = evtimer_new(s->base, dest_on_timer, d);
    if (d->timer == NULL) {
        free(d);
        return NULL;
    }
    d->state = QDEST_UNKNOWN;
    d->hold_override = -1;
    dest_apply_conf(d);
    gettimeofday(&d->refill, NULL);
    d->tokens = 1;
    if (dest_index(s, d) != 0) {
        event_free(d->timer);
        free(d);
        return NULL;
    }
    d->next = s->dests;
    s->dests = d;
    return d;
}

static int dest_save_fn(struct qdb_txn *t, void *arg)
{
    return qdb_dest_put(t, (const struct qdest *)arg);
}

static void dest_save_done(void *arg, int err)
{
    if (err)
        log_warn("destination state not saved: %s", strerror(err));
    free(arg);
}

/* Persist state, back-off and last error (the counters are the spool's). */
void dest_save(struct dest *d)
{
    struct qdest *q = calloc(1, sizeof *q);
    if (q == NULL)
        return;
    snprintf(q->domain, sizeof q->domain, "%s", d->name);
    q->state = d->held ? QDEST_HELD : d->state;
    q->state_since = time(NULL);
    q->next_probe = d->next_probe;
    q->backoff_step = d->backoff_step;
    snprintf(q->last_error, sizeof q->last_error, "%s", d->last_error);
    if (spool_write(d->s->spool, dest_save_fn, q, dest_save_done, q) == NULL)
        free(q);
}

void dest_set_state(struct dest *d, int state, const char *why)
{
    if (d->state != state)
        log_info("destination %s: %s -> %s%s%s", d->name, dest_state_names[d->state],
                 dest_state_names[state], why ? ": " : "", why ? why : "");
    d->state = state;
    if (state == QDEST_UP) {
        d->backoff_step = 0;
        d->next_probe = 0;
        d->last_error[0] = '\0';
    }
    dest_save(d);
}

/* Down: one probe after the back-off interval, with jitter so thousands
 * of destinations that failed together do not probe together. */
void dest_down(struct dest *d, const char *why)
{
    const struct conf_delivery *dl = &d->s->conf->delivery;
    long iv = dl->probe_min;
    for (uint32_t i = 0; i < d->backoff_step && iv < dl->probe_max; i++)
        iv *= 2;
    if (iv > dl->probe_max)
        iv = dl->probe_max;
    long jit = iv / DELIVERY_JITTER_DIV;
    if (jit > 0)
        iv += (long)(random() % (2 * jit + 1)) - jit;
    if (iv < 1)
        iv = 1;
    d->backoff_step++;
    d->next_probe = time(NULL) + iv;
    snprintf(d->last_error, sizeof d->last_error, "%s", why);
    if (d->state != QDEST_DOWN)
        log_info("destination %s: %s -> down: %s; next probe in %lds", d->name,
                 dest_state_names[d->state], why, iv);
    else
        log_info("destination %s: still down: %s; next probe in %lds", d->name, why, iv);
    d->state = QDEST_DOWN;
    d->pass_end = 0;
    d->cursor[0] = '\0';
    dest_save(d);
    dest_arm(d, d->next_probe);
}

void dest_arm(struct dest *d, time_t when)
{
    time_t now = time(NULL);
    struct timeval tv = { when > now ? when - now : 0, 0 };
    evtimer_add(d->timer, &tv);
}

static void dest_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct dest *d = arg;
    /* A retry or probe: start the walk from the oldest message again. */
    if (d->nconns == 0) {
        d->cursor[0] = '\0';
        d->pass_end = 0;
        d->pass_deferred = 0;
    }
    for (struct conn *c = d->conns; c; c = c->next) {
        if (c->waiting) {
            c->waiting = 0;
            smtpc_resume(c->c);
        }
    }
    dest_kick(d);
}

long dest_pending(struct dest *d)
{
    struct qdest q;
    if (spool_dest_get(d->s->spool, d->name, &q) != 0)
        return 0;
    return (long)q.nmsg;
}

int dest_inflight(const struct dest *d, const char *qid)
{
    for (size_t i = 0; i < d->ninflight; i++)
        if (strcmp(d->inflight[i], qid) == 0)
            return 1;
    return 0;
}

static int dest_inflight_add(struct dest *d, const char *qid)
{
    if (d->ninflight == d->capinflight) {
        size_t cap = d->capinflight ? d->capinflight * 2 : 8;
        void *p = realloc(d->inflight, cap * sizeof *d->inflight);
        if (p == NULL)
            return -1;
        d->inflight = p;
        d->capinflight = cap;
    }
    snprintf(d->inflight[d->ninflight++], QID_SIZE, "%s", qid);
    return 0;
}

void dest_inflight_del(struct dest *d, const char *qid)
{
    for (size_t i = 0; i < d->ninflight; i++) {
        if (strcmp(d->inflight[i], qid) == 0) {
            memmove(d->inflight[i], d->inflight[d->ninflight - 1], QID_SIZE);
            d->ninflight--;
            return;
        }
    }
}

enum msg_owner msg_owner(const struct delivery *s, const struct dest *d, const char *qid)
{
    /* In flight first: the expiry asks this about the message it has
     * just claimed. */
    if (d != NULL && dest_inflight(d, qid))
        return MSG_DELIVERING;
    if (s->expiring[0] != '\0' && strcmp(s->expiring, qid) == 0)
        return MSG_EXPIRING;
    return MSG_FREE;
}

/* ------------------------------------------------------------------ */
/* Jobs: one message on its way                                       */

void job_free(struct job *j)
{
    if (j == NULL)
        return;
    if (j->body)
        evbuffer_free(j->body);
    free(j->rcpt);
    free(j->code);
    free(j->text);
    free(j);
}

/* Every recipient of m, in a new array sized by m->nrcpt (the caller
 * frees it).  NULL when unreadable (logged by queue_db) or out of memory.
 * Sizing by the record matters: a fixed worst-case array here cost a
 * megabyte of memset per message. */
struct qrcpt *rcpts_load(struct delivery *s, const struct qmsg *m, size_t *n)
{
    size_t cap = m->nrcpt ? m->nrcpt : 1;
    struct qrcpt *r = calloc(cap, sizeof *r);
    if (r == NULL)
        return NULL;
    if (spool_rcpt_list(s->spool, m->qid, r, cap, n) != 0) {
        free(r);
        return NULL;
    }
    return r;
}

/* The index of the first message of a page that d may take (msg_owner),
 * or -1.  A
 * message the expiry holds is passed over and noted: expire_end sends
 * the walk back to it. */
static long pick_free(struct dest *d, char (*page)[QID_SIZE], long n)
{
    for (long i = 0; i < n; i++) {
        switch (msg_owner(d->s, d, page[i])) {
        case MSG_FREE:
            return i;
        case MSG_EXPIRING:
            d->passed_expiring = 1;
            break;
        case MSG_DELIVERING:
            break;
        }
    }
    return -1;
}

/* A message left with pending recipients by the primary's recipient
 * limit goes first in line (the walk's cursor is past it). */
int dest_redo_add(struct dest *d, const char *qid)
{
    for (size_t i = 0; i < d->nredo; i++)
        if (strcmp(d->redo[i], qid) == 0)
            return 0;
    if (d->nredo == d->capredo) {
        size_t cap = d->capredo ? d->capredo * 2 : 8;
        void *p = realloc(d->redo, cap * sizeof *d->redo);
        if (p == NULL)
            return -1;
        d->redo = p;
        d->capredo = cap;
    }
    snprintf(d->redo[d->nredo++], QID_SIZE, "%s", qid);
    return 0;
}

/* Room past limits.header_size for the header section of a stored
 * message: our own Received header, and what normalizing added. */
#define DELIVER_HEADER_SLACK (64 * 1024)

/*
 * The message as the primary gets it: our one Authentication-Results
 * header (RFC 8601) on top, with the SPF/DKIM results of the record, and
 * every earlier one claiming our authserv-id removed (RFC 8601 section 5:
 * a forgery, or a copy from a loop; the primary trusts our id).  Works on
 * the header section only (the stored body is never touched), so both the
 * BDAT and the DATA writer of smtpc.c send it.  0, or -1 out of memory.
 */
static int job_authres(const struct delivery *s, struct job *j)
{
    const struct conf *c = s->conf;
    struct evbuffer *b = j->body;
    size_t len = evbuffer_get_length(b), bound = (size_t)c->limits.header_size + DELIVER_HEADER_SLACK;
    size_t hlen = len < bound ? len : bound;
    struct evbuffer_ptr end;
    char ar[AUTHRES_HEADER_MAX];
    int arlen, removed = 0;

    evbuffer_ptr_set(b, &end, hlen, EVBUFFER_PTR_SET);
    struct evbuffer_ptr hit = evbuffer_search_range(b, "\r\n\r\n", 4, NULL, &end);
    if (hit.pos >= 0)
        hlen = (size_t)hit.pos + 2;     /* the blank line stays with the body */
    char *in = malloc(hlen + 1), *out = malloc(hlen + 1);
    if (in == NULL || out == NULL) {
        free(in);
        free(out);
        return -1;
    }
    if (evbuffer_copyout(b, in, hlen) != (ev_ssize_t)hlen) {
        free(in);
        free(out);
        return -1;
    }
    if (hit.pos < 0 && hlen < len) {
        /* no end of header within the bound (data.c refuses such headers):
         * filter whole lines only */
        while (hlen > 0 && in[hlen - 1] != '\n')
            hlen--;
    }
    size_t n = authres_filter(in, hlen, c->authserv_id, out, &removed);
    if (removed > 0)
        log_info("%s: removed %d earlier Authentication-Results header%s claiming %s",
                 j->m.qid, removed, removed == 1 ? "" : "s", c->authserv_id);
    arlen = authres_format(c->authserv_id, j->m.auth_results, ar, sizeof ar);
    int rc = 0;
    if (evbuffer_drain(b, hlen) != 0 || evbuffer_prepend(b, out, n) != 0 ||
        (arlen > 0 && evbuffer_prepend(b, ar, (size_t)arlen) != 0))
        rc = -1;
    free(in);
    free(out);
    return rc;
}

/* Load qid into a new job for d: its pending recipients here, at most
 * rcpt_limit of them.  NULL with *fatal 0 when there is nothing to send
 * (skip it), with *fatal 1 on out of memory. */
static struct job *job_load(struct dest *d, const char *qid, int *fatal)
{
    struct delivery *s = d->s;
    struct job *j = calloc(1, sizeof *j);
    struct qrcpt *all = NULL;
    size_t nall = 0;

    *fatal = 0;
    if (j == NULL) {
        *fatal = 1;
        return NULL;
    }
    /* Still being verified (DKIM, or SPF after the commit), or its commit
     * still on its way to the loop (dkim_hold): whoever ends that
     * schedules it (the verifier once the results are in the record, so
     * the primary's A-R header carries them, or commit_done). */
    if (s->busy && s->busy(s->busy_arg, qid)) {
        free(j);
        return NULL;
    }
    j->s = s;
    j->d = d;
    if (spool_msg_get(s->spool, qid, &j->m) != 0 || (all = rcpts_load(s, &j->m, &nall)) == NULL) {
        log_warn("%s: listed for %s but unreadable; skipped", qid, d->name);
        job_free(j);
        return NULL;
    }
    /* Only this destination's pending recipients travel here. */
    size_t k = 0;
    for (size_t i = 0; i < nall; i++)
        if (all[i].state == QRCPT_PENDING && strcasecmp(all[i].domain, d->name) == 0)
            all[k++] = all[i];
    if (k == 0) {
        free(all);
        job_free(j);
        return NULL;
    }
    /* No more RCPTs per transaction than the primary declared or took
     * (smtpc holds to the declared RCPTMAX of its own session too). */
    size_t rmax = d->phost ? dl_host_rcpt_max(&d->phost->lim, NULL) : 0;
    if (rmax > 0 && k > rmax) {
        k = rmax;
        j->more = 1;
    }
    j->rcpt = all;
    j->nrcpt = k;
    j->code = calloc(k, sizeof *j->code);
    j->text = calloc(k, sizeof *j->text);
    j->body = evbuffer_new();
    if (j->code == NULL || j->text == NULL || j->body == NULL) {
        job_free(j);
        *fatal = 1;
        return NULL;
    }
    if (spool_body_read(s->spool, &j->m, j->body) != 0) {
        log_warn("%s: body unreadable (%s); skipped", qid, strerror(errno));
        job_free(j);
        return NULL;
    }
    if (job_authres(s, j) != 0) {
        job_free(j);
        *fatal = 1;
        return NULL;
    }
    if (dest_inflight_add(d, qid) != 0) {
        job_free(j);
        *fatal = 1;
        return NULL;
    }
    j->msg.m = &j->m;
    j->msg.rcpt = j->rcpt;
    j->msg.nrcpt = j->nrcpt;
    j->msg.code = j->code;
    j->msg.text = j->text;
    j->msg.body = j->body;
    j->msg.owner = j;
    return j;
}

/* Load the next message for d into a new job, or NULL at the end: first
 * what the recipient limit left over, then the walk. */
struct job *job_next(struct dest *d)
{
    struct delivery *s = d->s;
    int fatal = 0;

    while (d->nredo > 0) {
        char qid[QID_SIZE];
        snprintf(qid, sizeof qid, "%s", d->redo[0]);
        if (dest_inflight(d, qid))
            break;
        memmove(d->redo[0], d->redo[1], (d->nredo - 1) * sizeof *d->redo);
        d->nredo--;
        struct job *j = job_load(d, qid, &fatal);
        if (j || fatal)
            return j;
    }
    for (;;) {
        char page[DELIVERY_PICK_PAGE][QID_SIZE], after[QID_SIZE];
        snprintf(after, sizeof after, "%s", d->cursor);
        long n = spool_page(s->spool, d->name, after, page, DELIVERY_PICK_PAGE);
        long i = n > 0 ? pick_free(d, page, n) : -1;
        if (i < 0) {
            if (n > 0)
                snprintf(d->cursor, sizeof d->cursor, "%s", after);
            if (n == DELIVERY_PICK_PAGE)
                continue;   /* a page of in-flight messages: look further */
            return NULL;
        }
        memcpy(d->cursor, page[i], QID_SIZE);
        struct job *j = job_load(d, page[i], &fatal);
        if (j || fatal)
            return j;
    }
}

/* ------------------------------------------------------------------ */
/* Driving a destination                                              */

/* Decide what d should do now: resolve, probe, open connections, wait. */
void dest_kick(struct dest *d)
{
    struct delivery *s = d->s;
    time_t now = time(NULL);

    if (s->stopping || d->held || d->resolving)
        return;
    if (d->odmr) {
        odmr_run_kick(d);       /* never probed or connected to: RFC 2645 */
        return;
    }
    if (d->state == QDEST_DOWN && now < d->next_probe) {
        dest_arm(d, d->next_probe);
        return;
    }
    if (d->nconns == 0 && dest_pending(d) == 0)
        return;
    if (ROUTE_HOSTS(d) == 0 || now - d->route_time > DELIVERY_ROUTE_TTL) {
        if (d->nconns == 0) {
            d->resolving = 1;
            if (dns_route(s->dns, d->host, d->port, d->fixed, s->self, dest_on_route, d) != 0) {
                d->resolving = 0;
                dest_down(d, "4.3.0 out of memory resolving");
            }
            return;
        }
    }
    if (d->state != QDEST_UP) {
        /* Unknown or down and due: one probe, which delivers the oldest;
         * not while our other destinations fill the host's learned
         * ceiling (it would only be refused): look again in a second. */
        if (d->nconns == 0 && dest_host_full(d)) {
            dest_arm(d, now + 1);
            return;
        }
        if (d->nconns == 0) {
            d->pass_end = 0;
            d->cursor[0] = '\0';
            if (dest_connect(d, 1) != 0)
                dest_down(d, "4.3.0 cannot start a connection");
        }
        return;
    }
    if (d->pass_end)
        return;
    if (d->nconns < d->conn_limit && now < d->conn_next) {
        dest_arm(d, d->conn_next);      /* spaced after a refusal */
        return;
    }
    while (d->nconns < d->conn_limit) {
        long pending = dest_pending(d) - (long)d->ninflight;
        if (pending <= d->nconns - 1 + 0 && d->nconns > 0)
            break;
        if (pending <= 0 && d->nconns == 0)
            break;
        /* A ceiling learned for the host counts every destination's
         * sessions to it. */
        if (dest_host_full(d))
            break;
        if (dest_connect(d, 0) != 0)
            break;
    }
}
