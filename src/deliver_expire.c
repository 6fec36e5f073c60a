/*
 * deliver_expire.c - expiry and delay warnings (delivery module; see
 * deliver_int.h).
 *
 * Owns: the expiry timer, the one expiry job at a time (s->expiring is
 * the message it owns from its scan until its commit) and the due
 * entries of delay warnings.  Recipients past their retention fail with
 * 4.4.7 and a notice to the sender.
 *
 * Never: expires a message a delivery holds (asks msg_owner first); marks
 * a recipient expired except in the write that commits it; runs two
 * expiry jobs at once (the next must see the previous one's commit).
 */
#include "config.h"
#include "deliver_int.h"
#include "delivery.h"
#include "bounce.h"
#include "dns.h"
#include "log.h"
#include "maint.h"
#include "qid.h"
#include "quarantine.h"
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
    int purge;                  /* a quarantine whose retention ran out */
    int64_t unkeep;             /* keep_delivered over for kept copies: now */
    long nkept;                 /* kept copies it removed */
    int64_t warned;             /* recipients with this warned time were warned here */
    int rewarn;                 /* an older record's recipient now warned = 0 */
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
    if (e->purge)
        return qdb_msg_unhold_delete(t, e->m.qid);
    if (e->unkeep)
        return qdb_kept_expire(t, e->m.qid, e->unkeep, &e->nkept);
    if (e->next_due && (r = qdb_due_put(t, e->next_due, e->m.qid)) != 0)
        return r;
    e->nlate = 0;
    for (size_t i = 0; i < e->nrcpt; i++) {
        struct qrcpt cur;
        if (e->rcpt[i].state == QRCPT_PENDING &&
            (e->rcpt[i].warned == 0 ? e->rewarn : e->rcpt[i].warned == e->warned)) {
            /* Its delay warning went (or is known not sent): only that
             * field, on the spool's current record. */
            r = qdb_rcpt_get(t, e->m.qid, e->rcpt[i].index, &cur);
            if (r == QDB_NOTFOUND || (r == 0 && cur.state != QRCPT_PENDING))
                continue;
            if (r == 0 && cur.warned != e->rcpt[i].warned) {
                cur.warned = e->rcpt[i].warned;
                r = qdb_rcpt_update(t, e->m.qid, &cur);
            }
            if (r != 0)
                return r;
            continue;
        }
        if (e->rcpt[i].state != QRCPT_EXPIRED && e->rcpt[i].state != QRCPT_QUARANTINED)
            continue;
        r = qdb_rcpt_get(t, e->m.qid, e->rcpt[i].index, &cur);
        if (r == QDB_NOTFOUND || (r == 0 && cur.state != QRCPT_PENDING)) {
            e->nlate++;     /* settled by someone else: not ours to expire */
            continue;
        }
        if (r != 0 || (r = qdb_rcpt_update(t, e->m.qid, &e->rcpt[i])) != 0)
            return r;
    }
    if ((r = outcome_hold(t, &e->m, e->rcpt, e->nrcpt)) != 0)
        return r;
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
    if (err && !((e->purge || e->unkeep) && err == ENOENT))
        log_warn("%s: expiry not saved: %s", e->m.qid, strerror(err));
    else if (e->unkeep) {
        if (err == 0 && e->nkept > 0) {
            log_info("%s: %ld kept cop%s removed: keep_delivered over", e->m.qid, e->nkept,
                     e->nkept == 1 ? "y" : "ies");
            stats_add(STAT_KEPT_EXPIRED, (uint64_t)e->nkept);
        }
        outcome_written(e->s, &e->m);
    } else if (e->purge) {
        char span[32];
        quarantine_span(span, sizeof span, e->m.quarantine_until - e->m.quarantined);
        if (err == 0)
            log_info("%s: removed from quarantine after %s: %s", e->m.qid, span,
                     e->m.quarantine_reason);
        outcome_written(e->s, &e->m);
    } else {
        outcome_written(e->s, &e->m);
        if (outcome_held(e->rcpt, e->nrcpt)) {
            log_info("%s: quarantined: %s", e->m.qid, e->m.quarantine_reason);
            stats_inc(STAT_QUARANTINED_EXPIRED);
        }
    }
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
        for (size_t i = 0; i < e->nrcpt; i++) {
            if (e->rcpt[i].state == QRCPT_EXPIRED || e->rcpt[i].state == QRCPT_QUARANTINED) {
                e->rcpt[i].state = QRCPT_PENDING;
            } else if (e->rcpt[i].state == QRCPT_PENDING && e->warned &&
                       e->rcpt[i].warned == e->warned) {
                e->rcpt[i].warned = 0;  /* its delay warning is tried again too */
                e->rewarn = 1;
            }
        }
        e->next_due = (int64_t)time(NULL) + e->s->conf->delivery.probe_min;
    }
    if (--e->nbounce == 0 &&
        spool_write(e->s->spool, expire_commit_fn, e, expire_committed, e) == NULL)
        expire_end(e);
}

/* Expire what is due: recipients past their retention fail with 4.4.7. */
void delivery_on_expire(evutil_socket_t fd, short what, void *arg)
{
    struct delivery *s = arg;
    int64_t when;
    char qid[QID_SIZE];
    time_t now = time(NULL);

    if (s->stopping || s->expire_busy)
        return;
    if (spool_due_first(s->spool, &when, qid) != 0 || when > (int64_t)now) {
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
    if (spool_msg_get(s->spool, qid, &e->m) != 0 || (e->rcpt = rcpts_load(s, &e->m, &e->nrcpt)) == NULL) {
        /* A due entry for a message that is gone: just drop the entry. */
        e->nrcpt = 0;
        e->nbounce = 1;
        expire_notice_done(e, 0);
        return;
    }
    if ((e->m.flags & QMSG_F_QUARANTINE) && e->m.quarantine_until &&
        e->m.quarantine_until <= (int64_t)now) {
        /* Its time in quarantine is over: quarantine.h's retention. */
        e->purge = 1;
        e->nbounce = 1;
        expire_notice_done(e, 0);
        return;
    }
    if ((e->m.flags & QMSG_F_KEPT) && e->m.kept_until && e->m.kept_until <= (int64_t)now) {
        /* keep_delivered is over for kept copies: they go, the message
         * with them unless mail remains (qdb_kept_expire). */
        e->unkeep = (int64_t)now;
        e->nbounce = 1;
        expire_notice_done(e, 0);
        return;
    }
    struct bounce_rcpt *br = calloc(e->nrcpt ? e->nrcpt : 1, sizeof *br);
    char (*diag)[600] = calloc(e->nrcpt ? e->nrcpt : 1, sizeof *diag);
    char why[200];
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
        /* In maintenance its retention clock is paused (maint.h): the
         * window's end moves the expiry out; look again after it. */
        int64_t paused = maint_paused_until(r->domain, (int64_t)now);
        if (paused) {
            if (e->next_due == 0 || paused < e->next_due)
                e->next_due = paused;
            continue;
        }
        if (msg_owner(s, dest_find(s, r->domain), qid) == MSG_DELIVERING) {
            /* Being delivered right now: look again shortly. */
            e->next_due = (int64_t)now + 1;
            continue;
        }
        r->state = QRCPT_EXPIRED;
        stats_inc(STAT_EXPIRED);
        int wanted = bounce_wanted(&e->m, r, BOUNCE_FAILED);
        if (wanted && !quarantine_notice_allowed(conf_domain_find(s->conf, r->domain), &e->m,
                                                 why, sizeof why)) {
            /* No backscatter: hold it instead of telling a forged sender. */
            r->state = QRCPT_QUARANTINED;
            wanted = 0;
            if (!e->m.quarantine_reason[0]) {
                char last[600];
                snprintf(last, sizeof last, "message kept too long: %s",
                         r->last_reply[0] ? r->last_reply : "primary unreachable");
                quarantine_reason(e->m.quarantine_reason, sizeof e->m.quarantine_reason, why,
                                  last);
                e->m.quarantined = (int64_t)now;
                e->m.quarantine_until = (int64_t)now + s->conf->quarantine_retention;
            }
        }
        log_info("%s: to=<%s>, relay=none, delay=%lld, dsn=4.4.7, status=%s (%s)", qid,
                 r->addr, (long long)(now - e->m.arrival),
                 r->state == QRCPT_QUARANTINED ? "quarantined" : "expired",
                 r->last_reply[0] ? r->last_reply : "retention period ran out");
        if (wanted) {
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
    /* Delay warnings (delivery_warn_schedule made the first due entry):
     * a recipient not warned yet whose warning time, arrival +
     * delay_warning + the time maintenance moved it out (paused), has
     * come is told the message is still waiting; in maintenance its
     * warning waits with its retention clock (maint.h), never sent while
     * the window runs.  Not in the same notice as an expiry. */
    long dw = s->conf->delivery.delay_warning;
    size_t nexp = nb;
    e->warned = (int64_t)now;
    for (size_t i = 0; dw > 0 && e->m.sender[0] && !(e->m.flags & QMSG_F_DSN) && i < e->nrcpt;
         i++) {
        struct qrcpt *r = &e->rcpt[i];
        int64_t at = e->m.arrival + dw + r->paused;
        if (r->state != QRCPT_PENDING || r->warned > 0 || !bounce_wanted(&e->m, r, BOUNCE_DELAYED))
            continue;
        if (r->warned < 0 && when != e->m.arrival + dw)
            continue;           /* an older record: only its first due entry warns */
        if (at > (int64_t)now) {
            if (e->next_due == 0 || at < e->next_due)
                e->next_due = at;
            continue;
        }
        int64_t paused = maint_paused_until(r->domain, (int64_t)now);
        if (paused || nexp) {
            /* In maintenance: the window's end moves it out (qdb_msg_pause);
             * with an expiry in this notice: in a second. */
            int64_t again = paused ? paused : (int64_t)now + 1;
            if (e->next_due == 0 || again < e->next_due)
                e->next_due = again;
            if (r->warned < 0) {
                r->warned = 0;  /* an older record's, known not sent: kept */
                e->rewarn = 1;
            }
            continue;
        }
        r->warned = e->warned;
        snprintf(diag[nb], sizeof diag[nb], "X-mxkeep; %s",
                 r->last_reply[0] ? r->last_reply : "primary unreachable; still trying");
        br[nb].r = r;
        br[nb].action = BOUNCE_DELAYED;
        br[nb].status = "4.4.1";
        br[nb].remote_mta = NULL;
        br[nb].diagnostic = diag[nb];
        nb++;
    }
    if (nb > nexp)
        log_info("%s: delay warning to <%s> for %zu recipient%s", qid, e->m.sender, nb - nexp,
                 nb - nexp == 1 ? "" : "s");
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
void delivery_warn_schedule(struct delivery *s, const struct qmsg *m)
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

void delivery_expire_arm(struct delivery *s)
{
    int64_t when;
    char qid[QID_SIZE];
    struct timeval tv = { 0, 0 };
    time_t now = time(NULL);
    if (s->stopping || s->expire_busy)
        return;
    if (spool_due_first(s->spool, &when, qid) != 0)
        tv.tv_sec = 3600;       /* nothing due: look again now and then */
    else if (when > (int64_t)now)
        tv.tv_sec = (time_t)(when - (int64_t)now);
    evtimer_add(s->expire_timer, &tv);
}
