/*
 * delivery.c - the delivery scheduler (see delivery.h).
 *
 * Owns: one struct dest per destination with mail or config, its timers,
 * its connections (struct conn wrapping a struct smtpc), its in-flight
 * list, and the jobs (struct job) that carry a message from the spool to a
 * connection and its outcome back into the spool.
 *
 * How a destination moves (dest_set_state logs every change):
 *   unknown --probe ok--> up --connect/greeting/TLS failure--> down
 *   down --probe timer (back-off probe_min..probe_max, jitter)--> probe
 *   any --ETRN / flush--> unknown (probe now); held <--> config / control
 * While down, messages are not tried one by one: one probe per interval,
 * and the probe is the delivery of the oldest waiting message.  While up,
 * a refusal at connect or greeting with other sessions working means
 * "fewer connections" (dest_refused), not "down"; failures are classified
 * by the stage smtpc reports, never by their wording.  A primary's
 * per-transaction recipient limit (452/552 to RCPT) is learned for the
 * pass and what it left goes out at once in further transactions.
 *
 * Never: sends a message twice at once (the in-flight list holds a QID
 * from next() until its outcome is committed); marks a recipient done
 * before the primary's 2xx; bounces mail because the primary is down or
 * DNS failed for a served domain (only a 5xx or the retention ends it);
 * sends a notice to the null sender or about a notice.
 *
 * At-least-once: outcomes are committed after the primary answered; a
 * crash in between sends that message again after restart.
 */
#include "config.h"
#include "delivery.h"
#include "bounce.h"
#include "dns.h"
#include "log.h"
#include "qid.h"
#include "queue_db.h"
#include "smtpc.h"
#include "stats.h"
#include "spool.h"
#include "tls.h"

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

/* How long a resolved route is reused before asking DNS again. */
#define DELIVERY_ROUTE_TTL 300
/* Consecutive 4xx replies (to MAIL/RCPT/data) that count as "the primary
 * is struggling" and halve the concurrency. */
#define DELIVERY_4XX_RUN 5
/* After the last connection of a pass ends with deferred messages, the
 * next pass waits this many times probe_min. */
#define DELIVERY_RETRY_FACTOR 2
/* Jitter: +-1/JITTER_DIV of the back-off interval. */
#define DELIVERY_JITTER_DIV 5
/* A TLS failure under "may" makes the next connections go in clear for. */
#define DELIVERY_TLS_CLEAR_SECONDS 3600
/* After a refusal at connect or greeting while the primary works (a
 * connection limit: "421 4.3.2 too many connections"), no new connection
 * for this many seconds, doubled per refusal in a row. */
#define DELIVERY_CONN_SPACING 1
/* Refusals in a row with no session working before the destination is
 * taken as down after all. */
#define DELIVERY_REFUSED_MAX 3
/* Cap for returning the whole original in a RET=FULL bounce. */
#define DELIVERY_BOUNCE_FULL_MAX (1024 * 1024)
/* Hosts in a destination's last route (none before it was resolved). */
#define ROUTE_HOSTS(d) ((d)->route ? (d)->route->nhosts : 0)
/* First size of the destination hash (a power of two). */
#define DELIVERY_HASH_INITIAL 64
/* Destinations probed per second at start-up before the first probes are
 * spread out. */
#define DELIVERY_START_PER_SECOND 200

struct delivery;
struct dest;

struct conn {
    struct conn *next;
    struct dest *d;
    struct smtpc *c;
    int probe;          /* the one connection of a probe */
    int ready;          /* greeted */
    int waiting;        /* SMTPC_NEXT_WAIT (rate limit) */
    int sent_any;
    char peer[300];
};

struct dest {
    struct dest *next;          /* every destination, for walks */
    struct dest *hnext;         /* hash chain, for lookups by name */
    struct delivery *s;
    char name[SMTP_DOMAIN_MAX + 1];
    int served;                 /* a domain of ours (else a bounce destination) */
    int state;                  /* enum qdest_state */
    int held;
    int hold_override;          /* -1: config decides; 0/1: mxkeepctl said */
    uint32_t backoff_step;
    time_t next_probe;
    char last_error[512];
    struct event *timer;        /* probe / retry / rate timer */
    /* Route. */
    char host[SMTP_DOMAIN_MAX + 1];
    int port, fixed;
    enum tls_policy tls;
    char fingerprint[80];
    SSL_CTX *tls_ctx;           /* own context when tls_ca is set */
    int resolving;
    struct dns_route *route;    /* the last resolution (13 KiB): only for
                                   destinations that have been tried */
    time_t route_time;
    size_t try_host, try_addr;  /* next address to connect to */
    time_t tls_clear_until;
    /* Work. */
    struct conn *conns;
    int nconns;
    int conn_limit;
    int run_4xx;
    time_t conn_next;           /* no new connection before this (spacing) */
    int conn_refused;           /* refusals in a row with no session working */
    size_t rcpt_limit;          /* the primary's recipients per transaction,
                                   learned in this pass; 0 = none seen */
    char (*redo)[QID_SIZE];     /* messages with recipients left by that
                                   limit: sent next, in further transactions */
    size_t nredo, capredo;
    char cursor[QID_SIZE];      /* last QID handed out in this pass */
    int pass_end;               /* the walk found nothing more */
    int pass_deferred;          /* a message got a 4xx in this pass */
    int passed_expiring;        /* the walk skipped a message the expiry held */
    time_t pass_started;        /* first connection of this pass, 0 = none */
    char (*inflight)[QID_SIZE];
    size_t ninflight, capinflight;
    double tokens;
    struct timeval refill;
};

struct job {
    struct delivery *s;
    struct dest *d;
    struct smtpc_msg msg;
    struct qmsg m;
    struct qrcpt *rcpt;         /* copies, updated with the outcome */
    int *code;
    char (*text)[512];
    size_t nrcpt;
    struct evbuffer *body;
    char peer[300];
    int peer_dsn;
    int more;                   /* pending recipients left out (rcpt_limit) */
    int redo;                   /* send the rest again at once, not after a back-off */
    /* Notices to queue before the outcome is committed. */
    size_t nbounce;
    struct spool_ticket *ticket;
};

struct delivery {
    struct event_base *base;
    struct spool *spool;
    struct qdb *db;
    struct dns *dns;
    const struct conf *conf;
    SSL_CTX *tls_ctx;
    struct dest *dests;
    struct dest **bucket;       /* hash of dests by lower-cased name */
    size_t nbuckets, ndests;
    struct event *expire_timer;
    int expire_busy;            /* one expiry job at a time: the next must
                                   see the previous one's commit */
    char expiring[QID_SIZE];    /* the message that job owns, "" = none */
    int stopping;
    size_t nconns;
    struct dns_self *self;      /* who we are, for MX self-detection:
                                   every alias and listen address */
};

static void dest_kick(struct dest *d);
static void dest_arm(struct dest *d, time_t when);
static void delivery_expire_arm(struct delivery *s);

/* ------------------------------------------------------------------ */
/* Destinations                                                       */

static const char *const dest_state_names[] = { "unknown", "up", "down", "held" };
_Static_assert(sizeof dest_state_names / sizeof dest_state_names[0] == QDEST_HELD + 1,
               "dest_state_names[] must name every enum qdest_state");

static size_t dest_hash(const char *name)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        unsigned char c = *p >= 'A' && *p <= 'Z' ? (unsigned char)(*p - 'A' + 'a') : *p;
        h = (h ^ c) * 16777619u;
    }
    return h;
}

static struct dest *dest_find(struct delivery *s, const char *name)
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
static void dest_apply_conf(struct dest *d)
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
    d->route_time = 0;      /* the route may have changed */
    if (d->conn_limit <= 0 || d->conn_limit > c->delivery.max_connections)
        d->conn_limit = (int)c->delivery.max_connections;
}

static struct dest *dest_get(struct delivery *s, const char *name)
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
static void dest_save(struct dest *d)
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

static void dest_set_state(struct dest *d, int state, const char *why)
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
static void dest_down(struct dest *d, const char *why)
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

static void dest_arm(struct dest *d, time_t when)
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

static long dest_pending(struct dest *d)
{
    struct qdest q;
    if (qdb_dest_get(d->s->db, d->name, &q) != 0)
        return 0;
    return (long)q.nmsg;
}

static int dest_inflight(const struct dest *d, const char *qid)
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

static void dest_inflight_del(struct dest *d, const char *qid)
{
    for (size_t i = 0; i < d->ninflight; i++) {
        if (strcmp(d->inflight[i], qid) == 0) {
            memmove(d->inflight[i], d->inflight[d->ninflight - 1], QID_SIZE);
            d->ninflight--;
            return;
        }
    }
}

/*
 * One owner of a message's recipient states at a time.  A delivery owns a
 * message from next() until its outcome is committed (the destination's
 * in-flight list); the expiry owns the one message it is expiring from its
 * scan until its commit (s->expiring), two writer rounds later.  Neither
 * takes a message the other holds, and both ask here: before, the expiry
 * marked recipients expired in memory while the scheduler could still hand
 * the message out, and a delivery in that window was followed by a 4.4.7
 * notice.  (Different destinations of one message deliver side by side:
 * each owns only its own recipients.)
 */
enum msg_owner { MSG_FREE = 0, MSG_DELIVERING, MSG_EXPIRING };

static enum msg_owner msg_owner(const struct delivery *s, const struct dest *d, const char *qid)
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

static void job_free(struct job *j)
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
static struct qrcpt *rcpts_load(struct delivery *s, const struct qmsg *m, size_t *n)
{
    size_t cap = m->nrcpt ? m->nrcpt : 1;
    struct qrcpt *r = calloc(cap, sizeof *r);
    if (r == NULL)
        return NULL;
    if (qdb_rcpt_list(s->db, m->qid, r, cap, n) != 0) {
        free(r);
        return NULL;
    }
    return r;
}

struct pick {
    struct dest *d;
    char qid[QID_SIZE];
    char last[QID_SIZE];
};

static int pick_fn(void *arg, const char *qid)
{
    struct pick *p = arg;
    snprintf(p->last, sizeof p->last, "%s", qid);
    switch (msg_owner(p->d->s, p->d, qid)) {
    case MSG_FREE:
        break;
    case MSG_EXPIRING:
        p->d->passed_expiring = 1;  /* expire_end sends the walk back */
        return 0;
    case MSG_DELIVERING:
        return 0;
    }
    snprintf(p->qid, sizeof p->qid, "%s", qid);
    return 1;
}

/* A message left with pending recipients by the primary's recipient
 * limit goes first in line (the walk's cursor is past it). */
static int dest_redo_add(struct dest *d, const char *qid)
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
    j->s = s;
    j->d = d;
    if (qdb_msg_get(s->db, qid, &j->m) != 0 || (all = rcpts_load(s, &j->m, &nall)) == NULL) {
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
    /* No more RCPTs per transaction than the primary took. */
    if (d->rcpt_limit > 0 && k > d->rcpt_limit) {
        k = d->rcpt_limit;
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
static struct job *job_next(struct dest *d)
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
        struct pick p = { .d = d };
        long n = qdb_dest_walk(s->db, d->name, d->cursor, 64, pick_fn, &p);
        if (n <= 0 || p.qid[0] == '\0') {
            if (n > 0 && p.last[0])
                snprintf(d->cursor, sizeof d->cursor, "%s", p.last);
            if (n > 0 && p.qid[0] == '\0' && n == 64)
                continue;   /* a page of in-flight messages: look further */
            return NULL;
        }
        snprintf(d->cursor, sizeof d->cursor, "%s", p.qid);
        struct job *j = job_load(d, p.qid, &fatal);
        if (j || fatal)
            return j;
    }
}

/* The enhanced status code of a reply smtpc stored (multi-line replies
 * included), or one made from the code. */
static void job_dsn_code(int code, const char *text, char *out, size_t len)
{
    smtpc_reply_status(code, text, out, len);
}

struct job_update {
    struct job *j;
};

/* Writer thread: record recipients' outcomes and drop the message when
 * none is pending any more, in one transaction.  Shared by deliveries,
 * expiry and mxkeepctl bounce. */
static int outcome_write(struct qdb_txn *t, const char *qid, const struct qrcpt *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = qdb_rcpt_update(t, qid, &r[i]);
        if (rc != 0)
            return rc;
    }
    return qdb_msg_settle(t, qid);
}

/* Loop thread, after outcome_write committed: a settled message's body
 * file goes too. */
static void outcome_written(struct delivery *s, const struct qmsg *m)
{
    if (!(m->flags & QMSG_F_INLINE))
        spool_body_unlink_if_gone(s->spool, m->qid);
}

static int job_commit_fn(struct qdb_txn *t, void *arg)
{
    struct job *j = arg;
    return outcome_write(t, j->m.qid, j->rcpt, j->nrcpt);
}

static void job_committed(void *arg, int err)
{
    struct job *j = arg;
    struct dest *d = j->d;
    if (err)
        log_warn("%s: outcome not saved (%s): it will be sent again", j->m.qid, strerror(err));
    else
        outcome_written(j->s, &j->m);
    dest_inflight_del(d, j->m.qid);
    if (err == 0 && j->redo && dest_redo_add(d, j->m.qid) == 0) {
        /* Recipients the primary's limit left over go out now, in a
         * further transaction (RFC 5321 4.5.3.1.10), not after a retry. */
        d->pass_end = 0;
        job_free(j);
        dest_kick(d);
        return;
    }
    job_free(j);
    if (d->nconns == 0)
        dest_kick(d);
}

static void job_save(struct job *j)
{
    if (spool_write(j->s->spool, job_commit_fn, j, job_committed, j) == NULL) {
        log_warn("%s: cannot save the outcome: it will be sent again", j->m.qid);
        dest_inflight_del(j->d, j->m.qid);
        job_free(j);
    }
}

struct notice {
    struct delivery *s;
    char qid[QID_SIZE];
    spool_done_fn done;
    void *arg;
};

/* A notice is mail like any other: once durable, it is scheduled. */
static void notice_committed(void *arg, int err)
{
    struct notice *nt = arg;
    if (err == 0)
        delivery_queued(nt->s, nt->qid);
    if (nt->done)
        nt->done(nt->arg, err);
    free(nt);
}

/* A notice (failure, expiry, relayed) about some recipients of a message.
 * Queued as a message of its own: null sender, to the original sender.
 * Returns 0 when queued (done will run), 1 when no notice is due (done
 * will not run), -1 on failure (done will not run). */
static int delivery_notice(struct delivery *s, const struct qmsg *m, struct bounce_rcpt *br, size_t n,
                        spool_done_fn done, void *arg)
{
    const struct conf *c = s->conf;
    struct evbuffer *orig = evbuffer_new(), *out = evbuffer_new();
    struct qmsg nm;
    struct qrcpt nr;
    struct bounce_info bi;
    char qid[QID_SIZE];
    const char *at = strrchr(m->sender, '@');
    int rc = -1;

    if (orig == NULL || out == NULL || at == NULL || at[1] == '\0')
        goto out;
    if (spool_body_read(s->spool, m, orig) != 0)
        log_warn("%s: original unreadable for the notice; sending it without", m->qid);
    qid_next(qid);
    memset(&bi, 0, sizeof bi);
    bi.hostname = c->hostname;
    bi.new_qid = qid;
    bi.m = m;
    bi.rcpts = br;
    bi.nrcpt = n;
    bi.original = orig;
    bi.full_max = DELIVERY_BOUNCE_FULL_MAX;
    bi.now = time(NULL);
    int built = bounce_build(out, &bi);
    if (built == BOUNCE_NONE) {
        rc = 1;
        goto out;
    }
    if (built != 0)
        goto out;

    memset(&nm, 0, sizeof nm);
    snprintf(nm.qid, sizeof nm.qid, "%s", qid);
    nm.arrival = (int64_t)time(NULL);
    /* The notice carries the original's header (or whole text): it needs
     * what the original needed of the next hop. */
    nm.flags = QMSG_F_DSN | (m->flags & (QMSG_F_8BIT | QMSG_F_SMTPUTF8));
    nm.body = m->body;
    nm.nrcpt = 1;
    snprintf(nm.client_addr, sizeof nm.client_addr, "local");
    snprintf(nm.client_name, sizeof nm.client_name, "localhost");
    snprintf(nm.helo, sizeof nm.helo, "%s", c->hostname);
    memset(&nr, 0, sizeof nr);
    nr.state = QRCPT_PENDING;
    nr.notify = SMTP_NOTIFY_NEVER;
    nr.expiry = (int64_t)time(NULL) + c->delivery.bounce_retention;
    snprintf(nr.addr, sizeof nr.addr, "%s", m->sender);
    snprintf(nr.domain, sizeof nr.domain, "%s", at + 1);
    for (char *p = nr.domain; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');

    struct spool_body *b = spool_body_new(s->spool, qid);
    if (b == NULL)
        goto out;
    size_t len = evbuffer_get_length(out);
    unsigned char *p = evbuffer_pullup(out, -1);
    if (spool_body_write(b, p, len) != 0) {
        spool_body_free(b);
        goto out;
    }
    nm.size = len;
    struct notice *nt = calloc(1, sizeof *nt);
    if (nt == NULL) {
        spool_body_free(b);
        goto out;
    }
    nt->s = s;
    snprintf(nt->qid, sizeof nt->qid, "%s", qid);
    nt->done = done;
    nt->arg = arg;
    if (spool_commit(s->spool, b, &nm, &nr, 1, notice_committed, nt) == NULL) {
        free(nt);
        goto out;
    }
    log_info("%s: sender non-delivery notification: %s", m->qid, qid);
    stats_inc(STAT_DSN_QUEUED);
    rc = 0;
out:
    if (orig)
        evbuffer_free(orig);
    if (out)
        evbuffer_free(out);
    return rc;
}

static void job_notice_done(void *arg, int err)
{
    struct job *j = arg;
    if (err) {
        /* The notice is not safe: keep the recipients pending, so the
         * failure is reported on a later attempt rather than lost. */
        log_warn("%s: notice not queued (%s); recipients stay queued", j->m.qid, strerror(err));
        for (size_t i = 0; i < j->nrcpt; i++)
            if (j->rcpt[i].state == QRCPT_BOUNCED)
                j->rcpt[i].state = QRCPT_PENDING;
    }
    if (--j->nbounce == 0)
        job_save(j);
}

static void job_relayed_done(void *arg, int err)
{
    if (err)
        log_warn("relayed notice not queued: %s", strerror(err));
}

/* ------------------------------------------------------------------ */
/* Connections                                                        */

static void conn_unlink(struct conn *cn)
{
    struct dest *d = cn->d;
    for (struct conn **pp = &d->conns; *pp; pp = &(*pp)->next) {
        if (*pp == cn) {
            *pp = cn->next;
            break;
        }
    }
    d->nconns--;
    d->s->nconns--;
}

static void conn_on_ready(void *arg, struct smtpc *c)
{
    struct conn *cn = arg;
    struct dest *d = cn->d;
    cn->ready = 1;
    d->conn_refused = 0;
    snprintf(cn->peer, sizeof cn->peer, "%s", smtpc_peer(c));
    if (d->state != QDEST_UP) {
        char why[400];
        snprintf(why, sizeof why, "%s answers", cn->peer);
        dest_set_state(d, QDEST_UP, why);
        dest_kick(d);           /* open the rest of the connections */
    }
}

static int dest_rate_ok(struct dest *d)
{
    long rate = d->s->conf->delivery.max_rate;
    struct timeval now;
    if (rate <= 0)
        return 1;
    gettimeofday(&now, NULL);
    double dt = (double)(now.tv_sec - d->refill.tv_sec) +
                (double)(now.tv_usec - d->refill.tv_usec) / 1e6;
    d->refill = now;
    d->tokens += dt * (double)rate;
    if (d->tokens > (double)rate)
        d->tokens = (double)rate;
    if (d->tokens >= 1.0) {
        d->tokens -= 1.0;
        return 1;
    }
    return 0;
}

static enum smtpc_next conn_on_next(void *arg, struct smtpc *c, struct smtpc_msg **msg)
{
    struct conn *cn = arg;
    struct dest *d = cn->d;
    const struct conf *conf = d->s->conf;

    if (d->s->stopping || d->held || d->pass_end)
        return SMTPC_NEXT_NONE;
    if (cn->probe && cn->sent_any && d->run_4xx > 0)
        return SMTPC_NEXT_NONE;     /* a probe whose message was deferred ends */
    if ((long)cn->sent_any >= conf->delivery.messages_per_connection)
        return SMTPC_NEXT_NONE;
    if (!dest_rate_ok(d)) {
        struct timeval tv = { 0, 1000000 / (conf->delivery.max_rate > 0 ? conf->delivery.max_rate : 1) };
        cn->waiting = 1;
        evtimer_add(d->timer, &tv);
        return SMTPC_NEXT_WAIT;
    }
    struct job *j = job_next(d);
    if (j == NULL) {
        d->pass_end = 1;
        return SMTPC_NEXT_NONE;
    }
    snprintf(j->peer, sizeof j->peer, "%s", smtpc_peer(c));
    j->peer_dsn = smtpc_has_dsn(c);
    cn->sent_any++;
    *msg = &j->msg;
    return SMTPC_NEXT_MSG;
}

static void conn_on_done(void *arg, struct smtpc *c, struct smtpc_msg *msg)
{
    struct conn *cn = arg;
    struct dest *d = cn->d;
    struct job *j = msg->owner;
    time_t now = time(NULL);
    /* Sized by this message: every failed or relayed recipient is named. */
    struct bounce_rcpt *br = calloc(j->nrcpt, sizeof *br);
    struct bounce_rcpt *rel = calloc(j->nrcpt, sizeof *rel);
    char (*diag)[600] = calloc(j->nrcpt, sizeof *diag);
    char (*dsns)[16] = calloc(j->nrcpt, sizeof *dsns);
    size_t nb = 0, nrel = 0, lim = msg->rcpt_limit;
    int any4 = 0, oom = br == NULL || rel == NULL || diag == NULL || dsns == NULL;
    int progress = 0, left = 0;

    /* The primary's recipient limit: learn it for the rest of the pass,
     * and when this transaction got somewhere, send what is left at once. */
    for (size_t i = 0; i < j->nrcpt; i++) {
        if (j->code[i] >= 200 && j->code[i] < 300)
            progress = 1;
        else if (j->code[i] < 500)
            left = 1;
    }
    if (lim > 0 && (d->rcpt_limit == 0 || lim < d->rcpt_limit)) {
        d->rcpt_limit = lim;
        log_info("destination %s: %s takes %zu recipient%s per transaction", d->name, j->peer,
                 lim, lim == 1 ? "" : "s");
    }
    j->redo = (lim > 0 || j->more) && progress && (left || j->more);

    for (size_t i = 0; i < j->nrcpt; i++) {
        struct qrcpt *r = &j->rcpt[i];
        int code = j->code[i];
        char dsn[16];
        const char *status;
        job_dsn_code(code, j->text[i], dsn, sizeof dsn);
        r->attempts++;
        r->last_try = (int64_t)now;
        snprintf(r->last_reply, sizeof r->last_reply, "%s", j->text[i]);
        if (code >= 200 && code < 300) {
            r->state = QRCPT_SENT;
            status = "sent";
            stats_inc(STAT_DELIVERED);
            if (!oom && (r->notify & SMTP_NOTIFY_SUCCESS) && !j->peer_dsn &&
                bounce_wanted(&j->m, r, BOUNCE_RELAYED)) {
                rel[nrel].r = r;
                rel[nrel].action = BOUNCE_RELAYED;
                rel[nrel].status = "2.0.0";
                rel[nrel].remote_mta = j->peer;
                rel[nrel].diagnostic = NULL;
                nrel++;
            }
        } else if (code >= 500 && !oom) {
            r->state = QRCPT_BOUNCED;
            status = "bounced";
            stats_inc(STAT_BOUNCED);
        } else if (code >= 500) {
            /* No memory for the notice: keep it; the next attempt bounces. */
            status = "deferred";
            stats_inc(STAT_DEFERRED);
        } else {
            status = "deferred";
            /* Left over by the recipient limit and sent again at once:
             * not a sign of a struggling primary. */
            if (!(j->redo && lim > 0 && i >= lim && code == 452))
                any4 = 1;
            stats_inc(STAT_DEFERRED);
        }
        log_info("%s: to=<%s>, relay=%s, delay=%lld, dsn=%s, status=%s (%s)", j->m.qid, r->addr,
                 j->peer, (long long)(now - j->m.arrival), dsn, status, j->text[i]);
    }
    /* Notices need stable strings: a second pass now that states are set. */
    for (size_t i = 0; !oom && i < j->nrcpt; i++) {
        struct qrcpt *r = &j->rcpt[i];
        if (r->state != QRCPT_BOUNCED || !bounce_wanted(&j->m, r, BOUNCE_FAILED))
            continue;
        job_dsn_code(j->code[i], j->text[i], dsns[nb], sizeof dsns[nb]);
        snprintf(diag[nb], sizeof diag[nb], "smtp; %s", j->text[i]);
        br[nb].r = r;
        br[nb].action = BOUNCE_FAILED;
        br[nb].status = dsns[nb];
        br[nb].remote_mta = j->peer;
        br[nb].diagnostic = diag[nb];
        nb++;
    }
    if (any4) {
        d->pass_deferred = 1;
        if (++d->run_4xx >= DELIVERY_4XX_RUN && d->conn_limit > 1) {
            d->conn_limit /= 2;
            d->run_4xx = 0;
            log_info("destination %s: %d deferrals in a row: concurrency down to %d", d->name,
                     DELIVERY_4XX_RUN, d->conn_limit);
        }
    } else {
        d->run_4xx = 0;
    }
    j->nbounce = 1;     /* held until the notices are queued */
    int nr = nb ? delivery_notice(d->s, &j->m, br, nb, job_notice_done, j) : 1;
    if (nr == 0)
        j->nbounce++;
    else if (nr < 0) {
        for (size_t i = 0; i < nb; i++)
            ((struct qrcpt *)br[i].r)->state = QRCPT_PENDING;
        log_warn("%s: notice could not be built; recipients stay queued", j->m.qid);
    }
    if (nrel && delivery_notice(d->s, &j->m, rel, nrel, job_relayed_done, NULL) < 0)
        log_warn("%s: relayed notice could not be queued", j->m.qid);
    /* bounce_build copied what it needed: the arrays can go. */
    free(br);
    free(rel);
    free(diag);
    free(dsns);
    job_notice_done(j, 0);
}

/* Sessions of d that are greeted and working. */
static int dest_working(const struct dest *d)
{
    int n = 0;
    for (const struct conn *c = d->conns; c; c = c->next)
        n += c->ready;
    return n;
}

/*
 * A connection refused at connect or greeting ("421 4.3.2 too many
 * connections") while the primary works: it wants fewer connections, not
 * a retry storm.  Keep to the sessions that work and space new attempts;
 * with none working (ours just ended), a few spaced attempts before the
 * destination counts as down.  1 when handled.
 */
static int dest_refused(struct dest *d, const char *why)
{
    int working = dest_working(d);
    time_t now = time(NULL);

    if (d->state != QDEST_UP)
        return 0;
    if (working == 0 && d->conn_refused >= DELIVERY_REFUSED_MAX)
        return 0;
    int step = working > 0 ? 0 : d->conn_refused++;
    int limit = working > 0 ? working : 1;
    if (d->conn_limit > limit) {
        d->conn_limit = limit;
        log_info("destination %s: %s while %d session%s work%s: concurrency down to %d", d->name,
                 why, working, working == 1 ? "" : "s", working == 1 ? "s" : "", limit);
    }
    d->conn_next = now + ((time_t)DELIVERY_CONN_SPACING << step);
    return 1;
}

static void conn_on_closed(void *arg, struct smtpc *c, enum smtpc_end how, enum smtpc_stage stage,
                           const char *why)
{
    struct conn *cn = arg;
    struct dest *d = cn->d;
    int was_ready = cn->ready, refused = 0;

    conn_unlink(cn);
    free(cn);
    if (d->s->stopping)
        return;
    switch (how) {
    case SMTPC_END_OK:
        break;
    case SMTPC_END_TLS_RETRY:
        log_info("destination %s: TLS failed (%s); next connections in clear", d->name, why);
        d->tls_clear_until = time(NULL) + DELIVERY_TLS_CLEAR_SECONDS;
        break;
    case SMTPC_END_421:
        if (d->conn_limit > 1) {
            d->conn_limit /= 2;
            log_info("destination %s: %s; concurrency down to %d", d->name, why, d->conn_limit);
        } else if (d->nconns == 0) {
            dest_down(d, why);
            return;
        }
        break;
    case SMTPC_END_LOST:
        if (d->conn_limit > 1)
            d->conn_limit /= 2;
        if (!was_ready && d->nconns == 0) {
            dest_down(d, why);
            return;
        }
        break;
    case SMTPC_END_CONNECT:
    case SMTPC_END_GREETING:
    case SMTPC_END_TLS:
        stats_inc(STAT_CONN_OUT_FAILED);
        /* Refused before the greeting while the primary works: fewer,
         * spaced connections rather than "down" (dest_refused). */
        refused = stage <= SMTPC_STAGE_GREETING && dest_refused(d, why);
        /* Another address of the route may answer; when every address
         * failed and nothing else is open, the destination is down. */
        d->try_addr++;
        if (d->try_host < ROUTE_HOSTS(d) && d->try_addr >= d->route->hosts[d->try_host].naddr) {
            d->try_host++;
            d->try_addr = 0;
        }
        if (d->try_host >= ROUTE_HOSTS(d)) {
            d->try_host = d->try_addr = 0;
            if (d->nconns == 0 && !refused) {
                dest_down(d, why);
                return;
            }
        }
        break;
    }
    if (d->nconns == 0 && d->pass_end) {
        if (d->pass_started) {
            stats_inc(STAT_FLUSHES);
            stats_add(STAT_FLUSH_SECONDS, (uint64_t)(time(NULL) - d->pass_started));
            d->pass_started = 0;
        }
        /* The pass is over.  pass_end stays set until something new
         * arrives (delivery_queued), ETRN, or the retry timer, which walks
         * from the oldest message again: a 4xx'd message waits for that
         * timer instead of being retried in a tight loop. */
        if (d->pass_deferred) {
            long wait = d->s->conf->delivery.probe_min * DELIVERY_RETRY_FACTOR;
            d->pass_deferred = 0;
            dest_arm(d, time(NULL) + wait);
        }
        d->conn_limit = (int)d->s->conf->delivery.max_connections;
        d->conn_next = 0;
        if (d->nredo == 0 && d->ninflight == 0)
            d->rcpt_limit = 0;      /* learned again in the next pass */
        return;
    }
    dest_kick(d);
}

static const struct smtpc_ops conn_ops = {
    .ready = conn_on_ready,
    .next = conn_on_next,
    .done = conn_on_done,
    .closed = conn_on_closed,
};

static int dest_connect(struct dest *d, int probe)
{
    const struct conf *c = d->s->conf;
    struct smtpc_config cfg;
    struct conn *cn;
    struct dns_host *h;

    if (ROUTE_HOSTS(d) == 0)
        return -1;
    if (d->try_host >= ROUTE_HOSTS(d))
        d->try_host = d->try_addr = 0;
    h = &d->route->hosts[d->try_host];
    if (d->try_addr >= h->naddr)
        d->try_addr = 0;
    cn = calloc(1, sizeof *cn);
    if (cn == NULL)
        return -1;
    cn->d = d;
    cn->probe = probe;
    memset(&cfg, 0, sizeof cfg);
    cfg.helo = c->hostname;
    cfg.peer_name = h->name;
    cfg.addr = (const struct sockaddr *)&h->addr[d->try_addr];
    cfg.addrlen = h->addrlen[d->try_addr];
    cfg.tls = d->tls;
    if (d->tls == TLS_POLICY_MAY && time(NULL) < d->tls_clear_until)
        cfg.tls = TLS_POLICY_NONE;
    cfg.tls_ctx = d->tls_ctx ? d->tls_ctx : d->s->tls_ctx;
    cfg.tls_fingerprint = d->fingerprint[0] ? d->fingerprint : NULL;
    cfg.connect_timeout = c->delivery.connect_timeout;
    cfg.greeting_timeout = c->delivery.greeting_timeout;
    cfg.command_timeout = c->delivery.command_timeout;
    cfg.data_timeout = c->delivery.data_timeout;
    if (d->nconns == 0 && d->pass_started == 0)
        d->pass_started = time(NULL);
    cn->next = d->conns;
    d->conns = cn;
    d->nconns++;
    d->s->nconns++;
    stats_inc(STAT_CONN_OUT);
    cn->c = smtpc_new(d->s->base, &cfg, &conn_ops, cn);
    if (cn->c == NULL) {
        conn_unlink(cn);
        free(cn);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Driving a destination                                              */

static void dest_on_route(void *arg, const struct dns_route *r)
{
    struct dest *d = arg;
    d->resolving = 0;
    if (d->s->stopping)
        return;
    if (r->status != DNS_OK) {
        char why[400];
        snprintf(why, sizeof why, "%s%s", r->status == DNS_LOOP ? "4.4.6 " : "", r->why);
        if (r->status == DNS_PERM && !d->served) {
            /* A bounce to a domain that cannot receive mail: nothing more
             * can be done for it; retention ends it without a notice. */
            log_warn("destination %s: %s; notices wait for their retention", d->name, r->why);
        }
        dest_down(d, why);
        return;
    }
    if (d->route == NULL && (d->route = malloc(sizeof *d->route)) == NULL) {
        dest_down(d, "4.3.0 out of memory");
        return;
    }
    *d->route = *r;
    d->route_time = time(NULL);
    d->try_host = d->try_addr = 0;
    dest_kick(d);
}

/* Decide what d should do now: resolve, probe, open connections, wait. */
static void dest_kick(struct dest *d)
{
    struct delivery *s = d->s;
    time_t now = time(NULL);

    if (s->stopping || d->held || d->resolving)
        return;
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
        /* Unknown or down and due: one probe, which delivers the oldest. */
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
        if (dest_connect(d, 0) != 0)
            break;
    }
}

/* ------------------------------------------------------------------ */
/* Expiry                                                             */

struct expire_job {
    struct delivery *s;
    struct qmsg m;
    struct qrcpt *rcpt;
    size_t nrcpt;
    int64_t due;
    int64_t next_due;
    int nbounce;
    size_t nlate;               /* expired here but settled in the spool */
};

/* Writer thread.  Only the recipients this job expired are written, and
 * only those the spool still has pending, read inside this transaction:
 * the copy taken at the scan is two writer rounds old, and writing it back
 * whole would undo an outcome committed meanwhile. */
static int expire_commit_fn(struct qdb_txn *t, void *arg)
{
    struct expire_job *e = arg;
    int r = qdb_due_del(t, e->due, e->m.qid);
    if (r != 0 && r != QDB_NOTFOUND)
        return r;
    if (e->next_due && (r = qdb_due_put(t, e->next_due, e->m.qid)) != 0)
        return r;
    e->nlate = 0;
    for (size_t i = 0; i < e->nrcpt; i++) {
        struct qrcpt cur;
        if (e->rcpt[i].state != QRCPT_EXPIRED)
            continue;
        r = qdb_rcpt_get(t, e->m.qid, e->rcpt[i].index, &cur);
        if (r == QDB_NOTFOUND || (r == 0 && cur.state != QRCPT_PENDING)) {
            e->nlate++;     /* settled by someone else: not ours to expire */
            continue;
        }
        if (r != 0 || (r = qdb_rcpt_update(t, e->m.qid, &e->rcpt[i])) != 0)
            return r;
    }
    return qdb_msg_settle(t, e->m.qid);
}

/* The end of an expiry job, whatever became of it: the message has no
 * owner on the expiry side any more; look for the next due entry. */
static void expire_end(struct expire_job *e)
{
    struct delivery *s = e->s;
    /* Recipients still pending (not due yet, or the notice failed) whose
     * destination walked past the message while we held it: without a new
     * walk they would wait for new mail or their retention. */
    for (size_t i = 0; i < e->nrcpt; i++) {
        struct dest *d;
        if (e->rcpt[i].state != QRCPT_PENDING || (d = dest_find(s, e->rcpt[i].domain)) == NULL ||
            !d->passed_expiring)
            continue;
        d->passed_expiring = 0;
        if (d->nconns == 0)
            dest_arm(d, time(NULL));    /* dest_on_timer walks from the oldest */
        else
            d->pass_deferred = 1;       /* the retry at the end of this pass does */
    }
    free(e->rcpt);
    free(e);
    s->expire_busy = 0;
    s->expiring[0] = '\0';
    delivery_expire_arm(s);
}

static void expire_committed(void *arg, int err)
{
    struct expire_job *e = arg;
    if (err)
        log_warn("%s: expiry not saved: %s", e->m.qid, strerror(err));
    else
        outcome_written(e->s, &e->m);
    /* msg_owner makes this impossible; if it happens anyway, the spool
     * kept the other outcome and this says so once. */
    if (err == 0 && e->nlate)
        log_warn("%s: %zu recipient%s settled while the expiry owned the message; "
                 "not expired", e->m.qid, e->nlate, e->nlate == 1 ? "" : "s");
    expire_end(e);
}

static void expire_notice_done(void *arg, int err)
{
    struct expire_job *e = arg;
    if (err) {
        /* Without its notice an expiry would be a silent loss: keep the
         * recipients and try again a little later. */
        log_warn("%s: expiry notice not queued (%s); trying again later", e->m.qid,
                 strerror(err));
        for (size_t i = 0; i < e->nrcpt; i++)
            if (e->rcpt[i].state == QRCPT_EXPIRED)
                e->rcpt[i].state = QRCPT_PENDING;
        e->next_due = (int64_t)time(NULL) + e->s->conf->delivery.probe_min;
    }
    if (--e->nbounce == 0 &&
        spool_write(e->s->spool, expire_commit_fn, e, expire_committed, e) == NULL)
        expire_end(e);
}

/* Expire what is due: recipients past their retention fail with 4.4.7. */
static void delivery_on_expire(evutil_socket_t fd, short what, void *arg)
{
    struct delivery *s = arg;
    int64_t when;
    char qid[QID_SIZE];
    time_t now = time(NULL);

    if (s->stopping || s->expire_busy)
        return;
    if (qdb_due_first(s->db, &when, qid) != 0 || when > (int64_t)now) {
        delivery_expire_arm(s);
        return;
    }
    struct expire_job *e = calloc(1, sizeof *e);
    if (e == NULL) {
        delivery_expire_arm(s);
        return;
    }
    e->s = s;
    e->due = when;
    s->expire_busy = 1;
    /* From here to expire_end the message is the expiry's: the scheduler
     * will not hand it out (msg_owner). */
    snprintf(s->expiring, sizeof s->expiring, "%s", qid);
    snprintf(e->m.qid, sizeof e->m.qid, "%s", qid);
    if (qdb_msg_get(s->db, qid, &e->m) != 0 || (e->rcpt = rcpts_load(s, &e->m, &e->nrcpt)) == NULL) {
        /* A due entry for a message that is gone: just drop the entry. */
        e->nrcpt = 0;
        e->nbounce = 1;
        expire_notice_done(e, 0);
        return;
    }
    struct bounce_rcpt *br = calloc(e->nrcpt ? e->nrcpt : 1, sizeof *br);
    char (*diag)[600] = calloc(e->nrcpt ? e->nrcpt : 1, sizeof *diag);
    size_t nb = 0;
    if (br == NULL || diag == NULL) {
        /* Out of memory: leave the entry due and look again shortly. */
        free(br);
        free(diag);
        free(e->rcpt);
        free(e);
        s->expire_busy = 0;
        s->expiring[0] = '\0';
        struct timeval tv = { 1, 0 };
        evtimer_add(s->expire_timer, &tv);
        return;
    }
    for (size_t i = 0; i < e->nrcpt; i++) {
        struct qrcpt *r = &e->rcpt[i];
        if (r->state != QRCPT_PENDING)
            continue;
        if (r->expiry > (int64_t)now) {
            if (e->next_due == 0 || r->expiry < e->next_due)
                e->next_due = r->expiry;
            continue;
        }
        if (msg_owner(s, dest_find(s, r->domain), qid) == MSG_DELIVERING) {
            /* Being delivered right now: look again shortly. */
            e->next_due = (int64_t)now + 1;
            continue;
        }
        r->state = QRCPT_EXPIRED;
        stats_inc(STAT_EXPIRED);
        log_info("%s: to=<%s>, relay=none, delay=%lld, dsn=4.4.7, status=expired (%s)", qid,
                 r->addr, (long long)(now - e->m.arrival),
                 r->last_reply[0] ? r->last_reply : "retention period ran out");
        if (bounce_wanted(&e->m, r, BOUNCE_FAILED)) {
            snprintf(diag[nb], sizeof diag[nb], "X-mxkeep; message kept too long: %s",
                     r->last_reply[0] ? r->last_reply : "primary unreachable");
            br[nb].r = r;
            br[nb].action = BOUNCE_FAILED;
            br[nb].status = "4.4.7";
            br[nb].remote_mta = NULL;
            br[nb].diagnostic = diag[nb];
            nb++;
        }
    }
    /* The delay warning's own due entry (delivery_queued): tell the sender
     * the message is still waiting, and until when we keep trying. */
    long dw = s->conf->delivery.delay_warning;
    int warning = nb == 0 && dw > 0 && when == e->m.arrival + dw;
    for (size_t i = 0; warning && i < e->nrcpt; i++) {
        struct qrcpt *r = &e->rcpt[i];
        if (r->state != QRCPT_PENDING || !bounce_wanted(&e->m, r, BOUNCE_DELAYED))
            continue;
        snprintf(diag[nb], sizeof diag[nb], "X-mxkeep; %s",
                 r->last_reply[0] ? r->last_reply : "primary unreachable; still trying");
        br[nb].r = r;
        br[nb].action = BOUNCE_DELAYED;
        br[nb].status = "4.4.1";
        br[nb].remote_mta = NULL;
        br[nb].diagnostic = diag[nb];
        nb++;
    }
    if (warning && nb)
        log_info("%s: delay warning to <%s> for %zu recipient%s", qid, e->m.sender, nb,
                 nb == 1 ? "" : "s");
    e->nbounce = 1;
    int nr = nb ? delivery_notice(s, &e->m, br, nb, expire_notice_done, e) : 1;
    free(br);
    free(diag);
    if (nr == 0)
        e->nbounce++;
    expire_notice_done(e, nr < 0 ? EIO : 0);
}

struct warn_due {
    int64_t when;
    char qid[QID_SIZE];
};

static int warn_due_fn(struct qdb_txn *t, void *arg)
{
    const struct warn_due *w = arg;
    return qdb_due_put(t, w->when, w->qid);
}

static void warn_due_done(void *arg, int err)
{
    if (err)
        log_warn("%s: delay warning not scheduled: %s", ((struct warn_due *)arg)->qid,
                 strerror(err));
    free(arg);
}

/* With delay_warning on, a due entry at arrival + delay_warning. */
static void delivery_warn_schedule(struct delivery *s, const struct qmsg *m)
{
    struct warn_due *w;
    long dw = s->conf->delivery.delay_warning;
    if (dw <= 0 || m->sender[0] == '\0' || (m->flags & QMSG_F_DSN))
        return;
    if ((w = calloc(1, sizeof *w)) == NULL)
        return;
    w->when = m->arrival + dw;
    snprintf(w->qid, sizeof w->qid, "%s", m->qid);
    if (spool_write(s->spool, warn_due_fn, w, warn_due_done, w) == NULL)
        free(w);
}

static void delivery_expire_arm(struct delivery *s)
{
    int64_t when;
    char qid[QID_SIZE];
    struct timeval tv = { 0, 0 };
    time_t now = time(NULL);
    if (s->stopping || s->expire_busy)
        return;
    if (qdb_due_first(s->db, &when, qid) != 0)
        tv.tv_sec = 3600;       /* nothing due: look again now and then */
    else if (when > (int64_t)now)
        tv.tv_sec = (time_t)(when - (int64_t)now);
    evtimer_add(s->expire_timer, &tv);
}

/* ------------------------------------------------------------------ */
/* Public                                                             */

struct delivery *delivery_new(struct event_base *base, struct spool *sp, struct dns *dns, char *err,
                        size_t errlen)
{
    struct delivery *s = calloc(1, sizeof *s);
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->base = base;
    s->spool = sp;
    s->db = spool_db(sp);
    s->dns = dns;
    s->tls_ctx = tls_client_ctx_new(NULL, err, errlen);
    s->expire_timer = evtimer_new(base, delivery_on_expire, s);
    if (s->tls_ctx == NULL || s->expire_timer == NULL) {
        delivery_free(s);
        return NULL;
    }
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());
    return s;
}

int delivery_configure(struct delivery *s, const struct conf *c, char *err, size_t errlen)
{
    /* Who we are, sized by the config: a cut list misses an alias an MX
     * may name, and the mail loops. */
    struct dns_self *self = dns_self_new(c);
    if (self == NULL) {
        snprintf(err, errlen, "out of memory; keeping the previous configuration");
        return -1;
    }
    dns_self_free(s->self);
    s->self = self;
    /* Our own reference: the conf (its strings, its domains) stays valid
     * for us whatever order the reload drops the old one in. */
    conf_ref(c);
    conf_free(s->conf);
    s->conf = c;
    for (size_t i = 0; i < c->ndomains; i++)
        dest_get(s, c->domains[i].name);
    for (struct dest *d = s->dests; d; d = d->next) {
        int was_held = d->held;
        d->hold_override = -1;      /* a reload hands hold back to the config */
        dest_apply_conf(d);
        if (was_held != d->held) {
            log_info("destination %s: %s", d->name, d->held ? "held" : "released");
            dest_save(d);
            if (!d->held)
                dest_kick(d);
        }
    }
    return 0;
}

static int delivery_load_fn(void *arg, const struct qdest *q)
{
    struct delivery *s = arg;
    if (q->nmsg == 0 && conf_domain_find(s->conf, q->domain) == NULL)
        return 0;
    struct dest *d = dest_get(s, q->domain);
    if (d == NULL)
        return 0;
    d->backoff_step = q->backoff_step;
    snprintf(d->last_error, sizeof d->last_error, "%s", q->last_error);
    if (q->state == QDEST_DOWN && q->next_probe > 0) {
        d->state = QDEST_DOWN;
        d->next_probe = (time_t)q->next_probe;
    } else {
        d->state = QDEST_UNKNOWN;
    }
    return 0;
}

void delivery_start(struct delivery *s)
{
    size_t n = 0;
    qdb_dest_each(s->db, delivery_load_fn, s);
    for (struct dest *d = s->dests; d; d = d->next)
        n++;
    /* After a restart with thousands of destinations waiting, probing them
     * all in the same second is a thundering herd (and a burst of DNS):
     * spread the first probes over up to probe_min, more the more there
     * are.  A handful of destinations still go at once. */
    long spread = (long)(n / DELIVERY_START_PER_SECOND);
    if (spread > s->conf->delivery.probe_min)
        spread = s->conf->delivery.probe_min;
    for (struct dest *d = s->dests; d; d = d->next) {
        if (spread > 0 && d->state == QDEST_UNKNOWN)
            dest_arm(d, time(NULL) + random() % (spread + 1));
        else
            dest_kick(d);
    }
    delivery_expire_arm(s);
}

static void dest_info_fill(const struct dest *d, struct delivery_dest_info *o);

long delivery_flush(struct delivery *s, const char *domain, struct delivery_dest_info *out)
{
    struct dest *d = dest_get(s, domain);
    if (d == NULL) {
        if (out != NULL) {
            memset(out, 0, sizeof *out);
            snprintf(out->domain, sizeof out->domain, "%s", domain);
        }
        return 0;
    }
    if (d->held) {
        if (out != NULL)
            dest_info_fill(d, out);
        return -1;
    }
    long n = dest_pending(d);
    if (d->state != QDEST_UP) {
        d->state = QDEST_UNKNOWN;
        d->next_probe = 0;
        d->backoff_step = 0;
        evtimer_del(d->timer);
    }
    if (d->nconns == 0) {
        d->cursor[0] = '\0';
        d->pass_end = 0;
        d->pass_deferred = 0;
    }
    d->route_time = 0;          /* ask DNS again: the primary may have moved */
    if (d->nconns == 0) {
        free(d->route);
        d->route = NULL;
    }
    dest_kick(d);
    if (out != NULL)
        dest_info_fill(d, out);
    return n;
}

/*
 * The ETRN reply (RFC 1985) from the same per-destination record every
 * listing shows: 253 with the count started, 251 when nothing waits, and
 * 458 when every node covered is held, saying so and how many messages
 * wait.  Held nodes among others are named in the 25x text by count.
 * doms may include held domains: whether a domain is held is the
 * scheduler's to say (config hold or mxkeepctl hold), not the policy's.
 */
#define ETRN_HELD_NOTE_SIZE 128    /* " (N held domains: M messages waiting)" */

void delivery_etrn(void *arg, const char *node, const struct conf_domain **doms, size_t n,
                char *buf, size_t len)
{
    struct delivery *s = arg;
    struct delivery_dest_info info;
    unsigned long long started = 0, waiting_held = 0;
    size_t held = 0;
    char extra[ETRN_HELD_NOTE_SIZE] = "";

    for (size_t i = 0; i < n; i++) {
        if (delivery_flush(s, doms[i]->name, &info) < 0) {
            held++;
            waiting_held += info.nmsg;
        } else {
            started += info.nmsg;
        }
    }
    if (n > 0 && held == n) {
        snprintf(buf, len, "458 4.3.0 Unable to queue messages for node %s: held by the "
                 "administrator, %llu message%s waiting", node, waiting_held,
                 waiting_held == 1 ? "" : "s");
        return;
    }
    stats_inc(STAT_ETRN);
    if (held > 0)
        snprintf(extra, sizeof extra, " (%zu held domain%s: %llu message%s waiting)",
                 held, held == 1 ? "" : "s", waiting_held, waiting_held == 1 ? "" : "s");
    if (started > 0)
        snprintf(buf, len, "253 2.0.0 OK, %llu pending message%s for node %s started%s",
                 started, started == 1 ? "" : "s", node, extra);
    else
        snprintf(buf, len, "251 2.0.0 OK, no messages waiting for node %s%s", node, extra);
}

void delivery_queued(void *arg, const char *qid)
{
    struct delivery *s = arg;
    struct qmsg m;
    struct qrcpt *r = NULL;
    size_t n = 0;
    if (qdb_msg_get(s->db, qid, &m) != 0) {
        log_warn("%s: queued but unreadable; the scheduler will find it on its next pass", qid);
        delivery_expire_arm(s);
        return;
    }
    if ((r = rcpts_load(s, &m, &n)) != NULL) {
        for (size_t i = 0; i < n; i++) {
            if (i > 0 && strcasecmp(r[i].domain, r[i - 1].domain) == 0)
                continue;
            struct dest *d = dest_get(s, r[i].domain);
            if (d == NULL)
                continue;
            /* New mail goes out at once to an up destination; an unknown
             * one is probed now; a down one waits for its probe.  New QIDs
             * sort after the cursor: the walk goes on from where it
             * stopped, without revisiting deferred mail. */
            d->pass_end = 0;
            if (d->state != QDEST_DOWN)
                dest_kick(d);
        }
    }
    free(r);
    delivery_warn_schedule(s, &m);
    delivery_expire_arm(s);
}

int delivery_hold(struct delivery *s, const char *domain, int hold)
{
    struct dest *d = dest_find(s, domain);
    if (d == NULL) {
        if (conf_domain_find(s->conf, domain) == NULL)
            return -1;
        if ((d = dest_get(s, domain)) == NULL)
            return -1;
    }
    d->hold_override = hold ? 1 : 0;
    if (d->held == (hold ? 1 : 0))
        return 0;
    d->held = hold ? 1 : 0;
    log_info("destination %s: %s by the administrator", d->name, hold ? "held" : "released");
    dest_save(d);
    if (hold) {
        for (struct conn *c = d->conns; c; c = c->next)
            smtpc_abort(c->c);      /* finishes the message in hand, then QUIT */
    } else {
        d->state = QDEST_UNKNOWN;
        d->next_probe = 0;
        d->cursor[0] = '\0';
        d->pass_end = 0;
        dest_kick(d);
    }
    return 0;
}

static void dest_info_fill(const struct dest *d, struct delivery_dest_info *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->domain, sizeof o->domain, "%s", d->name);
    o->served = d->served;
    o->state = d->held ? QDEST_HELD : d->state;
    o->held = d->held;
    o->next_probe = d->state == QDEST_DOWN ? (int64_t)d->next_probe : 0;
    o->connections = d->nconns;
    o->concurrency = d->conn_limit;
    snprintf(o->last_error, sizeof o->last_error, "%s", d->last_error);
    {
        /* The counts every listing shows: the index's record (a read
         * transaction of its own, not held across anything). */
        struct qdest q;
        if (qdb_dest_get(d->s->db, d->name, &q) == 0) {
            o->nmsg = q.nmsg;
            o->nbytes = q.nbytes;
        }
    }
}

int delivery_dest_info(struct delivery *s, const char *domain, struct delivery_dest_info *out)
{
    struct dest *d = dest_find(s, domain);
    if (d == NULL)
        return -1;
    dest_info_fill(d, out);
    return 0;
}

void delivery_dest_each(struct delivery *s,
                        int (*fn)(void *arg, const struct delivery_dest_info *i), void *arg)
{
    struct delivery_dest_info info;
    for (struct dest *d = s->dests; d; d = d->next) {
        dest_info_fill(d, &info);
        if (fn(arg, &info))
            return;
    }
}

/* Is qid in some destination's hands right now? */
static int delivery_busy(struct delivery *s, const char *qid)
{
    if (msg_owner(s, NULL, qid) == MSG_EXPIRING)
        return 1;
    for (struct dest *d = s->dests; d; d = d->next)
        if (dest_inflight(d, qid))
            return 1;
    return 0;
}

struct admin_job {
    struct delivery *s;
    char qid[QID_SIZE];
    struct qmsg m;
    struct qrcpt *rcpt;
    size_t nrcpt;
    int nbounce;
    delivery_done_fn done;
    void *arg;
};

static void admin_job_free(struct admin_job *a)
{
    free(a->rcpt);
    free(a);
}

static void admin_deleted(void *arg, int err)
{
    struct admin_job *a = arg;
    if (err == 0)
        log_info("%s: removed by the administrator", a->qid);
    a->done(a->arg, err);
    admin_job_free(a);
}

int delivery_delete(struct delivery *s, const char *qid, delivery_done_fn done, void *arg)
{
    struct admin_job *a;
    struct qmsg m;
    if (!qid_valid(qid) || qdb_msg_get(s->db, qid, &m) != 0)
        return ENOENT;
    if (delivery_busy(s, qid))
        return EBUSY;
    if ((a = calloc(1, sizeof *a)) == NULL)
        return ENOMEM;
    a->s = s;
    snprintf(a->qid, sizeof a->qid, "%s", qid);
    a->done = done;
    a->arg = arg;
    if (spool_delete(s->spool, qid, admin_deleted, a) == NULL) {
        admin_job_free(a);
        return EIO;
    }
    return 0;
}

static int admin_bounce_fn(struct qdb_txn *t, void *arg)
{
    struct admin_job *a = arg;
    return outcome_write(t, a->qid, a->rcpt, a->nrcpt);
}

static void admin_bounced(void *arg, int err)
{
    struct admin_job *a = arg;
    if (err == 0)
        outcome_written(a->s, &a->m);
    a->done(a->arg, err);
    admin_job_free(a);
}

static void admin_notice_done(void *arg, int err)
{
    struct admin_job *a = arg;
    if (err) {
        a->done(a->arg, err);
        admin_job_free(a);
        return;
    }
    if (--a->nbounce > 0)
        return;
    if (spool_write(a->s->spool, admin_bounce_fn, a, admin_bounced, a) == NULL) {
        a->done(a->arg, EIO);
        admin_job_free(a);
    }
}

int delivery_bounce(struct delivery *s, const char *qid, delivery_done_fn done, void *arg)
{
    struct admin_job *a;
    struct bounce_rcpt *br;
    size_t nb = 0, npend = 0;
    if (!qid_valid(qid))
        return ENOENT;
    if (delivery_busy(s, qid))
        return EBUSY;
    if ((a = calloc(1, sizeof *a)) == NULL)
        return ENOMEM;
    a->s = s;
    snprintf(a->qid, sizeof a->qid, "%s", qid);
    a->done = done;
    a->arg = arg;
    if (qdb_msg_get(s->db, qid, &a->m) != 0 || (a->rcpt = rcpts_load(s, &a->m, &a->nrcpt)) == NULL) {
        admin_job_free(a);
        return ENOENT;
    }
    br = calloc(a->nrcpt, sizeof *br);
    if (br == NULL) {
        admin_job_free(a);
        return ENOMEM;
    }
    for (size_t i = 0; i < a->nrcpt; i++) {
        struct qrcpt *r = &a->rcpt[i];
        if (r->state != QRCPT_PENDING)
            continue;
        npend++;
        r->state = QRCPT_BOUNCED;
        snprintf(r->last_reply, sizeof r->last_reply, "5.0.0 message returned by the administrator");
        stats_inc(STAT_BOUNCED);
        log_info("%s: to=<%s>, relay=none, delay=%lld, dsn=5.0.0, status=bounced (returned by "
                 "the administrator)", qid, r->addr, (long long)(time(NULL) - a->m.arrival));
        if (bounce_wanted(&a->m, r, BOUNCE_FAILED)) {
            br[nb].r = r;
            br[nb].action = BOUNCE_FAILED;
            br[nb].status = "5.0.0";
            br[nb].remote_mta = NULL;
            br[nb].diagnostic = "X-mxkeep; message returned by the administrator";
            nb++;
        }
    }
    if (npend == 0) {
        free(br);
        admin_job_free(a);
        return ENOENT;
    }
    a->nbounce = 1;
    int nr = nb ? delivery_notice(s, &a->m, br, nb, admin_notice_done, a) : 1;
    free(br);
    if (nr == 0)
        a->nbounce++;
    else if (nr < 0) {
        admin_job_free(a);
        return EIO;
    }
    admin_notice_done(a, 0);
    return 0;
}

void delivery_stop(struct delivery *s)
{
    s->stopping = 1;
    for (struct dest *d = s->dests; d; d = d->next) {
        evtimer_del(d->timer);
        for (struct conn *c = d->conns; c; c = c->next)
            smtpc_abort(c->c);
    }
    if (s->expire_timer)
        evtimer_del(s->expire_timer);
}

size_t delivery_active_connections(const struct delivery *s) { return s->nconns; }

void delivery_free(struct delivery *s)
{
    if (s == NULL)
        return;
    while (s->dests) {
        struct dest *d = s->dests;
        s->dests = d->next;
        if (d->timer)
            event_free(d->timer);
        SSL_CTX_free(d->tls_ctx);
        free(d->inflight);
        free(d->redo);
        free(d->route);
        free(d);
    }
    if (s->expire_timer)
        event_free(s->expire_timer);
    SSL_CTX_free(s->tls_ctx);
    dns_self_free(s->self);
    conf_free(s->conf);
    free(s->bucket);
    free(s);
}
