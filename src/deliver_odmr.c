/*
 * deliver_odmr.c - ODMR's reversed sessions (delivery module; see
 * delivery.h and deliver_int.h): after ATRN (RFC 2645) the connection the
 * primary opened to us carries its domains' mail, mxkeep being the SMTP
 * client, with the same client state machine (smtpc) and the same
 * per-recipient outcomes (job_next, job_outcome) as any delivery.
 *
 * Owns: struct odmr_run (one per reversed session), linked from each of
 * its destinations (dest.odmr_run) while it runs; the smtpc over the
 * handed-over connection.
 *
 * A destination with `odmr = true` is never probed or connected to
 * (dest_kick sends it here: odmr_run_kick).  One reversed session per
 * domain at a time (a second ATRN gets DELIVERY_ODMR_BUSY).  The walk is
 * the destination's own (cursor, redo list), from the oldest message;
 * what the primary's recipient limit leaves pending goes out in further
 * transactions of the same session (the session waits for those
 * outcomes' commits before it QUITs).  A link that drops mid-flight
 * leaves every undecided recipient pending (smtpc's 451 4.4.2): it goes
 * on the next ATRN.  Expiry and notices are the scheduler's, as for any
 * domain.
 *
 * Never: opens a connection; picks a message itself (job_next does) or
 * records an outcome itself (job_outcome does).
 *
 * Security: everything here comes from the peer; smtpc bounds it (line
 * length, every step's time-out).  Only the domains the session
 * authenticated for (odmr.c decides) are delivered.
 */
#include "config.h"
#include "deliver_int.h"
#include "delivery.h"
#include "log.h"
#include "smtpc.h"
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/bufferevent.h>

struct odmr_run {
    struct delivery *s;
    struct smtpc *c;
    struct dest **d;
    size_t nd;
    int waiting;                /* SMTPC_NEXT_WAIT: outcomes being committed */
    size_t sent, deferred;
    delivery_odmr_end_fn end;
    void *arg;
};

long delivery_odmr_waiting(struct delivery *s, const char *domain)
{
    struct dest *d = dest_get(s, domain);
    if (d == NULL)
        return 0;
    if (d->held)
        return DELIVERY_ODMR_HELD;
    if (d->odmr_run != NULL)
        return DELIVERY_ODMR_BUSY;
    return dest_pending(d);
}

void odmr_run_kick(struct dest *d)
{
    struct odmr_run *r = d->odmr_run;
    if (r != NULL && r->waiting) {
        r->waiting = 0;
        smtpc_resume(r->c);
    }
}

void odmr_run_abort(struct dest *d)
{
    if (d->odmr_run != NULL)
        smtpc_abort(d->odmr_run->c);
}

static enum smtpc_next odmr_on_next(void *arg, struct smtpc *c, struct smtpc_msg **msg)
{
    struct odmr_run *r = arg;

    if (r->s->stopping)
        return SMTPC_NEXT_NONE;
    for (size_t i = 0; i < r->nd; i++) {
        struct dest *d = r->d[i];
        if (d->held)
            continue;
        struct job *j = job_next(d);
        if (j != NULL) {
            snprintf(j->peer, sizeof j->peer, "%s", smtpc_peer(c));
            j->peer_dsn = smtpc_has_dsn(c);
            *msg = &j->msg;
            return SMTPC_NEXT_MSG;
        }
    }
    /* Nothing now; an outcome still being committed may leave recipients
     * for a further transaction (the recipient limit): wait for it
     * (job_committed kicks the destination, odmr_run_kick resumes). */
    for (size_t i = 0; i < r->nd; i++) {
        if (r->d[i]->ninflight > 0 || r->d[i]->nredo > 0) {
            r->waiting = 1;
            return SMTPC_NEXT_WAIT;
        }
    }
    return SMTPC_NEXT_NONE;
}

static void odmr_on_done(void *arg, struct smtpc *c, struct smtpc_msg *msg)
{
    struct odmr_run *r = arg;
    struct job *j = msg->owner;
    struct dest *d = j->d;
    size_t lim = msg->rcpt_limit;
    int progress = 0, left = 0;

    for (size_t i = 0; i < j->nrcpt; i++) {
        if (j->code[i] >= 200 && j->code[i] < 300) {
            progress = 1;
            r->sent++;
        } else if (j->code[i] < 500) {
            left = 1;
            r->deferred++;
        }
    }
    /* The primary took fewer recipients than were sent: what it left is
     * sent at once in the next transaction of this session (there is no
     * primary host to remember it for: the link is the primary's). */
    if (lim > 0)
        log_info("destination %s: %s takes %zu recipient%s per transaction", d->name, j->peer,
                 lim, lim == 1 ? "" : "s");
    j->redo = (lim > 0 || j->more) && progress && (left || j->more);
    /* Committed from here on whatever becomes of the link; j is not ours. */
    job_outcome(j, lim);
}

static void odmr_on_closed(void *arg, struct smtpc *c, enum smtpc_end how, enum smtpc_stage stage,
                           const char *why)
{
    struct odmr_run *r = arg;

    (void)c;
    (void)how;
    (void)stage;
    for (size_t i = 0; i < r->nd; i++) {
        struct dest *d = r->d[i];
        d->odmr_run = NULL;
    }
    r->s->nconns--;
    if (r->end)
        r->end(r->arg, r->sent, r->deferred, why);
    free(r->d);
    free(r);
}

static const struct smtpc_ops odmr_ops = {
    .ready = NULL,
    .next = odmr_on_next,
    .done = odmr_on_done,
    .closed = odmr_on_closed,
};

int delivery_odmr_run(struct delivery *s, const char *const *domains, size_t n,
                      struct bufferevent *bev, int is_tls, const struct sockaddr *peer,
                      socklen_t peerlen, delivery_odmr_end_fn end, void *arg)
{
    const struct conf *c = s->conf;
    struct smtpc_config cfg;
    struct odmr_run *r;

    if (s->stopping || n == 0)
        return -1;
    r = calloc(1, sizeof *r);
    if (r == NULL || (r->d = calloc(n, sizeof *r->d)) == NULL) {
        free(r);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        struct dest *d = dest_get(s, domains[i]);
        if (d == NULL || d->odmr_run != NULL) {
            free(r->d);
            free(r);
            return -1;
        }
        r->d[r->nd++] = d;
    }
    r->s = s;
    r->end = end;
    r->arg = arg;
    memset(&cfg, 0, sizeof cfg);
    cfg.helo = c->hostname;
    cfg.peer_name = domains[0];
    cfg.addr = peer;
    cfg.addrlen = peerlen;
    cfg.connect_timeout = c->delivery.connect_timeout;
    cfg.greeting_timeout = c->delivery.greeting_timeout;
    cfg.command_timeout = c->delivery.command_timeout;
    cfg.data_timeout = c->delivery.data_timeout;
    r->c = smtpc_new_connected(s->base, &cfg, bev, is_tls, &odmr_ops, r);
    if (r->c == NULL) {
        free(r->d);
        free(r);
        return -1;
    }
    for (size_t i = 0; i < r->nd; i++) {
        struct dest *d = r->d[i];
        /* A session walks from the oldest message, as a new pass does. */
        d->odmr_run = r;
        d->cursor[0] = '\0';
        d->pass_end = 0;
        d->pass_deferred = 0;
    }
    s->nconns++;
    stats_inc(STAT_CONN_OUT);
    return 0;
}
