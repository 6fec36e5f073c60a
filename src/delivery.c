/*
 * delivery.c - the delivery module's public face (see delivery.h): new,
 * configure, start, stop, free; ETRN, flush, the "queued" hook, hold and
 * the per-destination info every listing answers from.
 *
 * The module is split by job; each file states its own contract:
 *   deliver_dest.c     destinations and scheduling (state, probes,
 *                      back-off, picking the next message, in-flight
 *                      list, msg_owner)
 *   deliver_conn.c     outbound connections (smtpc callbacks, routes,
 *                      TLS clear-until, connection limits)
 *   deliver_outcome.c  outcome commits and the notices they queue
 *   deliver_expire.c   expiry (4.4.7) and delay warnings
 *   deliver_admin.c    admin actions (delete, bounce)
 * Their shared structs and cross-file calls are in deliver_int.h, private
 * to the module.
 *
 * Owns: struct delivery (through delivery_new/delivery_free) and every
 * struct dest it holds, freed here.
 *
 * Never: touches the index except through the spool's read API and
 * spool_write; reads one destination's or message's state for a reply
 * from anywhere but delivery_dest_info's source (the index's counters and
 * the scheduler's live state).
 */
#include "config.h"
#include "deliver_int.h"
#include "delivery.h"
#include "bounce.h"
#include "dns.h"
#include "log.h"
#include "maint.h"
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

/* Destinations probed per second at start-up before the first probes are
 * spread out. */
#define DELIVERY_START_PER_SECOND 200

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
        /* A reload hands hold back to the config, but for the holds and
         * windows maint.c keeps (persisted, they outlive a reload). */
        d->hold_override = maint_holds(d->name) ? 1 : -1;
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
    spool_dest_each(s->spool, delivery_load_fn, s);
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
 * In a fleet (delivery_set_fleet) both counts are the fleet's: ours plus
 * the other nodes' last reported backlog (each told to flush for 253).
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

    size_t odmr = 0;
    for (size_t i = 0; i < n; i++) {
        if (doms[i]->odmr) {
            /* Never connected to (RFC 2645): ETRN cannot start anything. */
            odmr++;
            continue;
        }
        if (delivery_flush(s, doms[i]->name, &info) < 0) {
            held++;
            waiting_held += info.nmsg;
            /* Held everywhere: the 458 counts the fleet's mail, as 253 does. */
            if (s->fleet != NULL)
                waiting_held += s->fleet(s->fleet_arg, doms[i]->name, 0);
        } else {
            started += info.nmsg;
            if (s->fleet != NULL)
                started += s->fleet(s->fleet_arg, doms[i]->name, 1);
        }
    }
    if (n > 0 && odmr == n) {
        /* RFC 1985's 459: this node is not flushed by ETRN at all. */
        snprintf(buf, len, "459 4.7.0 Node %s not allowed: its mail waits to be fetched with "
                 "ATRN (On-Demand Mail Relay, RFC 2645)", node);
        return;
    }
    if (n > 0 && held + odmr == n) {
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

void delivery_set_busy(struct delivery *s, delivery_busy_fn fn, void *arg)
{
    s->busy = fn;
    s->busy_arg = arg;
}

void delivery_set_fleet(struct delivery *s, delivery_fleet_fn fn, void *arg)
{
    s->fleet = fn;
    s->fleet_arg = arg;
}

void delivery_queued(void *arg, const char *qid)
{
    struct delivery *s = arg;
    struct qmsg m;
    struct qrcpt *r = NULL;
    size_t n = 0;
    if (spool_msg_get(s->spool, qid, &m) != 0) {
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
             * one is probed now; a down one waits for its probe.  The walk
             * goes on from where it stopped, without revisiting deferred
             * mail.  A QID is taken at MAIL, so with parallel senders a
             * message can commit after a later one was already walked
             * past: it sorts before the cursor, and the walk would never
             * see it in this pass.  Such a message joins the list sent
             * at once (the commit's completion schedules it, not the
             * order of arrival). */
            d->pass_end = 0;
            if (d->cursor[0] != '\0' && strcmp(qid, d->cursor) <= 0 &&
                dest_redo_add(d, qid) != 0)
                d->cursor[0] = '\0';   /* no memory: walk the whole list again */
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
    int was = d->held;
    d->hold_override = hold < 0 ? -1 : hold ? 1 : 0;
    if (hold < 0) {
        /* back to the config's word */
        const struct conf_domain *cd = conf_domain_find(s->conf, d->name);
        d->held = cd != NULL && cd->hold;
    } else {
        d->held = hold ? 1 : 0;
    }
    if (d->held == was)
        return 0;
    hold = d->held;
    log_info("destination %s: %s%s", d->name, hold ? "held" : "released",
             d->hold_override < 0 ? "" : " by the administrator");
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
    o->ceiling = (int)d->aimd.ceiling;
    o->adaptive = d->aimd.adaptive;
    o->rcpt_max_source = o->mail_max_source = o->conn_max_source = dl_source_name(DL_NONE);
    if (d->phost) {
        enum dl_source src;
        snprintf(o->limits_host, sizeof o->limits_host, "%s:%d", d->phost->name, d->phost->port);
        o->rcpt_max = dl_host_rcpt_max(&d->phost->lim, &src);
        o->rcpt_max_source = dl_source_name(src);
        o->mail_max = dl_host_mail_max(&d->phost->lim, &src);
        o->mail_max_source = dl_source_name(src);
        o->conn_max = dl_host_conn_max(&d->phost->lim, &src);
        o->conn_max_source = dl_source_name(src);
        o->rcptdomain_max = d->phost->lim.declared.rcptdomainmax;
    }
    snprintf(o->last_error, sizeof o->last_error, "%s", d->last_error);
    {
        /* The counts every listing shows: the index's record (a read
         * transaction of its own, not held across anything). */
        struct qdest q;
        if (spool_dest_get(d->s->spool, d->name, &q) == 0) {
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

void delivery_stop(struct delivery *s)
{
    s->stopping = 1;
    for (struct dest *d = s->dests; d; d = d->next) {
        evtimer_del(d->timer);
        for (struct conn *c = d->conns; c; c = c->next)
            smtpc_abort(c->c);
        if (d->odmr_run)
            odmr_run_abort(d);
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
    while (s->hosts) {
        struct dest_host *h = s->hosts;
        s->hosts = h->next;
        free(h);
    }
    if (s->expire_timer)
        event_free(s->expire_timer);
    SSL_CTX_free(s->tls_ctx);
    dns_self_free(s->self);
    conf_free(s->conf);
    free(s->bucket);
    free(s);
}
