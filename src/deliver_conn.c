/*
 * deliver_conn.c - outbound connections of the delivery module (see
 * deliver_int.h).
 *
 * Owns: struct conn (one per smtpc session, linked on its destination),
 * the smtpc callbacks (ready, next, done, closed), opening connections to
 * a destination's route (dest_connect, dest_on_route), the rate limit, the
 * TLS clear-until after a failed opportunistic STARTTLS, and the
 * "fewer connections" reaction to refusals (dest_refused).
 *
 * While up, a refusal at connect or greeting with other sessions working
 * means "fewer connections", not "down"; failures are classified by the
 * stage smtpc reports, never by their wording.  A primary's limits,
 * declared (RFC 9422 LIMITS in its EHLO) or learned (452/552 to RCPT
 * after N recipients, 421 after N transactions, 421 at the greeting while
 * K sessions live), are kept per primary host (struct dest_host) for the
 * rest of the flush; what a recipient limit left goes out at once in
 * further transactions.  The number of sessions is the window of the
 * destination's AIMD controller (dest_limits.h), fed here with every
 * transaction's end-of-data latency, its 4xx, and the 421s.
 *
 * Never: records a recipient's outcome itself (job_outcome in
 * deliver_outcome.c does, and commits it whatever becomes of the
 * connection); picks a message itself (job_next does).
 *
 * Security: everything here comes from the primary; smtpc bounds it.
 */
#include "config.h"
#include "deliver_int.h"
#include "delivery.h"
#include "bounce.h"
#include "dns.h"
#include "heartbeat.h"
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

/* Latency samples only from messages up to this size: past it the time
 * to send the body, not the primary's load, is what gets measured. */
#define DELIVERY_LATENCY_SIZE_MAX (64 * 1024)
/* After the last connection of a pass ends with deferred messages, the
 * next pass waits this many times probe_min. */
#define DELIVERY_RETRY_FACTOR 2
/* A TLS failure under "may" makes the next connections go in clear for. */
#define DELIVERY_TLS_CLEAR_SECONDS 3600
/* After a refusal at connect or greeting while the primary works (a
 * connection limit: "421 4.3.2 too many connections"), no new connection
 * for this many seconds, doubled per refusal in a row. */
#define DELIVERY_CONN_SPACING 1
/* Refusals in a row with no session working before the destination is
 * taken as down after all. */
#define DELIVERY_REFUSED_MAX 3

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
    if (cn->host)
        cn->host->live--;
}

/* The controller moved: apply it, say so, and open what it allows. */
static void conn_window(struct dest *d, enum dl_event ev, const char *why)
{
    int before = d->conn_limit;

    dest_window_update(d);
    if (ev == DL_HOLD || d->conn_limit == before)
        return;
    if (ev == DL_SHRINK)
        log_info("destination %s: %s: concurrency down to %d", d->name, why, d->conn_limit);
    else    /* the steps of one session are routine */
        log_debug("destination %s: %s: concurrency %s to %d", d->name, why,
                  ev == DL_GROW ? "up" : "down", d->conn_limit);
    if (ev == DL_GROW)
        dest_kick(d);
}

static void conn_on_ready(void *arg, struct smtpc *c)
{
    struct conn *cn = arg;
    struct dest *d = cn->d;
    cn->ready = 1;
    d->conn_refused = 0;
    snprintf(cn->peer, sizeof cn->peer, "%s", smtpc_peer(c));
    if (cn->host) {
        /* RFC 9422 LIMITS: what this EHLO declares replaces the last. */
        struct dl_declared dl;
        smtpc_limits(c, &dl);
        if (memcmp(&dl, &cn->host->lim.declared, sizeof dl) != 0) {
            log_info("destination %s: %s declares LIMITS RCPTMAX=%u MAILMAX=%u RCPTDOMAINMAX=%u "
                     "(0: none)", d->name, cn->peer, dl.rcptmax, dl.mailmax, dl.rcptdomainmax);
            dl_host_declare(&cn->host->lim, &dl);
        }
    }
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
    /* The window shrank below the sessions open: this one ends (the
     * others that already chose to end are not counted twice). */
    if (!cn->probe && !cn->quitting) {
        int active = 0;
        for (const struct conn *o = d->conns; o; o = o->next)
            active += !o->quitting;
        if (active > d->conn_limit) {
            cn->quitting = 1;
            return SMTPC_NEXT_NONE;
        }
    }
    /* Transactions per session the primary declared (smtpc holds to that
     * too) or taught us with a 421. */
    unsigned mail_max = cn->host ? dl_host_mail_max(&cn->host->lim, NULL) : 0;
    if (mail_max > 0 && smtpc_transactions(c) >= mail_max)
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
    size_t lim = msg->rcpt_limit;
    int progress = 0, left = 0, said421 = 0;
    struct dl_declared decl;

    /* The primary's recipient limit: learn it for the rest of the flush,
     * and when this transaction got somewhere, send what is left at once. */
    for (size_t i = 0; i < j->nrcpt; i++) {
        if (j->code[i] >= 200 && j->code[i] < 300)
            progress = 1;
        else if (j->code[i] < 500)
            left = 1;
        if (j->code[i] == 421)
            said421 = 1;
    }
    if (said421)
        cn->got421 = 1;
    else
        cn->completed++;
    smtpc_limits(c, &decl);
    /* Held to the declared RCPTMAX is no lesson; a refusal below it is. */
    if (lim > 0 && cn->host && !(decl.rcptmax > 0 && lim >= decl.rcptmax) &&
        dl_host_rcpt_refused(&cn->host->lim, (unsigned)lim))
        log_info("destination %s: %s takes %zu recipient%s per transaction (learned)", d->name,
                 j->peer, lim, lim == 1 ? "" : "s");
    j->redo = (lim > 0 || j->more) && progress && (left || j->more);
    /* The primary's unloaded and current latency: a message it took
     * whole, small enough that sending it is not what was timed. */
    if (progress && !left && msg->latency_us >= 0 && j->m.size <= DELIVERY_LATENCY_SIZE_MAX)
        conn_window(d, dl_aimd_latency(&d->aimd, (double)msg->latency_us / 1000.0,
                                       (unsigned)d->nconns), "reply latency");

    /* The outcome is committed from here on whatever becomes of this
     * connection; j is not ours any more. */
    int any4 = job_outcome(j, lim);
    if (any4) {
        d->pass_deferred = 1;
        d->run_4xx++;
    } else {
        d->run_4xx = 0;
    }
    /* d outlives the connection and the job: the window may still move. */
    conn_window(d, dl_aimd_reply(&d->aimd, any4), "a run of deferrals");
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
static int dest_refused(struct dest *d, struct dest_host *host, int said421, const char *why)
{
    int working = dest_working(d);
    time_t now = time(NULL);

    /* A 421 at the greeting while K other sessions of ours to that host
     * live: its connection ceiling is K, for every destination it serves. */
    if (said421 && host && host->live > 0 && dl_host_greeting_421(&host->lim, (unsigned)host->live))
        log_info("destination %s: %s refused a session while %d others were open: at most %d "
                 "(learned)", d->name, host->name, host->live, host->live);
    if (d->state != QDEST_UP)
        return 0;
    if (working == 0 && d->conn_refused >= DELIVERY_REFUSED_MAX)
        return 0;
    int step = working > 0 ? 0 : d->conn_refused++;
    int limit = working > 0 ? working : 1;
    /* A ceiling learned from the primary's own refusal is the better
     * number: the sessions still connecting count in it, not only those
     * already greeted. */
    unsigned learned = host ? dl_host_conn_max(&host->lim, NULL) : 0;
    if (said421 && learned > (unsigned)limit)
        limit = (int)learned;
    if (dl_aimd_cap(&d->aimd, (unsigned)limit) == DL_SHRINK || d->conn_limit > limit) {
        dest_window_update(d);
        log_info("destination %s: %s while %d session%s work%s: concurrency down to %d", d->name,
                 why, working, working == 1 ? "" : "s", working == 1 ? "s" : "", d->conn_limit);
    }
    d->conn_next = now + ((time_t)DELIVERY_CONN_SPACING << step);
    return 1;
}

static void conn_on_closed(void *arg, struct smtpc *c, enum smtpc_end how, enum smtpc_stage stage,
                           const char *why)
{
    struct conn *cn = arg;
    struct dest *d = cn->d;
    struct dest_host *host = cn->host;
    int was_ready = cn->ready, refused = 0, learned = 0;
    int said421 = smtpc_last_code(c) == 421;

    /* 421 after N whole transactions of this session: its MAILMAX. */
    if (how == SMTPC_END_421 && cn->got421 && cn->completed > 0 && host &&
        (learned = dl_host_mail_421(&host->lim, cn->completed)) != 0)
        log_info("destination %s: %s ended a session with 421 after %u messages: at most %u "
                 "per session (learned)", d->name, cn->peer, cn->completed, cn->completed);
    conn_unlink(cn);
    free(cn);
    if (d->s->stopping)
        return;
    switch (how) {
    case SMTPC_END_OK:
        /* A session that ended well is a heartbeat answer "up". */
        heartbeat_note(d->name, 1);
        break;
    case SMTPC_END_TLS_RETRY:
        log_info("destination %s: TLS failed (%s); next connections in clear", d->name, why);
        d->tls_clear_until = time(NULL) + DELIVERY_TLS_CLEAR_SECONDS;
        break;
    case SMTPC_END_421:
        /* A limit just learned is no overload: the next sessions keep to it. */
        if (learned)
            break;
        if (d->conn_limit > 1) {
            conn_window(d, dl_aimd_421(&d->aimd), why);
        } else if (d->nconns == 0) {
            dest_down(d, why);
            return;
        }
        break;
    case SMTPC_END_LOST:
        if (d->conn_limit > 1)
            conn_window(d, dl_aimd_421(&d->aimd), why);
        if (!was_ready && d->nconns == 0) {
            dest_down(d, why);
            return;
        }
        break;
    case SMTPC_END_CONNECT:
    case SMTPC_END_GREETING:
    case SMTPC_END_TLS:
        stats_inc(STAT_CONN_OUT_FAILED);
        if (how == SMTPC_END_CONNECT)
            heartbeat_note(d->name, 0);     /* a failed heartbeat */
        /* Refused before the greeting while the primary works: fewer,
         * spaced connections rather than "down" (dest_refused). */
        refused = stage <= SMTPC_STAGE_GREETING &&
                  dest_refused(d, host, said421 && stage == SMTPC_STAGE_GREETING, why);
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
        dest_window_reset(d);
        d->conn_next = 0;
        /* The flush is over when nothing waits: what was learned is shown
         * until the next one starts, which learns afresh. */
        if (host && d->nredo == 0 && d->ninflight == 0 && dest_pending(d) == 0)
            host->flush_over = 1;
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

int dest_connect(struct dest *d, int probe)
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
    cn->host = dest_host_get(d->s, h->name, d->port);
    if (cn->host) {
        if (cn->host->flush_over && cn->host->live == 0) {
            dl_host_forget(&cn->host->lim);
            cn->host->flush_over = 0;
        }
        cn->host->live++;
        if (d->phost != cn->host) {
            d->phost = cn->host;
            dest_window_update(d);
        }
    }
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

void dest_on_route(void *arg, const struct dns_route *r)
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
