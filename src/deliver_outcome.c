/*
 * deliver_outcome.c - outcome commits and notices (delivery module; see
 * deliver_int.h).
 *
 * Owns: a delivery's per-recipient outcomes from the primary's replies
 * (job_outcome: states, log lines, counters), their commit (job_save ->
 * outcome_write on the writer thread -> job_committed on the loop) and
 * the notices (failure, expiry, relayed DSN) queued as mail of their own
 * (delivery_notice).  A job is freed here, once its outcome is committed,
 * whatever became of the connection that carried it.
 *
 * At-least-once: outcomes are committed after the primary answered; a
 * crash in between sends that message again after restart.  Notices are
 * committed before the outcome that caused them.
 *
 * Never: marks a recipient done before the primary's 2xx; sends a notice
 * to the null sender or about a notice; holds a write transaction across
 * a callback; changes a destination's connection state (deliver_conn.c
 * does, from what job_outcome returns).
 */
#include "config.h"
#include "deliver_int.h"
#include "delivery.h"
#include "bounce.h"
#include "dns.h"
#include "log.h"
#include "qid.h"
#include "quarantine.h"
#include "queue_db.h"
#include "smtpc.h"
#include "stats.h"
#include "verify.h"
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

/* Cap for returning the whole original in a RET=FULL bounce. */
#define DELIVERY_BOUNCE_FULL_MAX (1024 * 1024)

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
int outcome_write(struct qdb_txn *t, const char *qid, const struct qrcpt *r, size_t n)
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
void outcome_written(struct delivery *s, const struct qmsg *m)
{
    if (!(m->flags & QMSG_F_INLINE))
        spool_body_unlink_if_gone(s->spool, m->qid);
}

/* Did the outcome put a recipient in quarantine (the notice withheld)? */
int outcome_held(const struct qrcpt *r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (r[i].state == QRCPT_QUARANTINED)
            return 1;
    return 0;
}

/* Writer thread: the quarantine mark for recipients an outcome held
 * (m carries the reason and times the loop decided). */
int outcome_hold(struct qdb_txn *t, const struct qmsg *m, const struct qrcpt *r, size_t n)
{
    if (!outcome_held(r, n))
        return 0;
    return qdb_msg_hold(t, m->qid, m->quarantine_reason, m->quarantined, m->quarantine_until, 0);
}

static int job_commit_fn(struct qdb_txn *t, void *arg)
{
    struct job *j = arg;
    int rc = outcome_write(t, j->m.qid, j->rcpt, j->nrcpt);
    return rc ? rc : outcome_hold(t, &j->m, j->rcpt, j->nrcpt);
}

static void job_committed(void *arg, int err)
{
    struct job *j = arg;
    struct dest *d = j->d;
    if (err) {
        log_warn("%s: outcome not saved (%s): it will be sent again", j->m.qid, strerror(err));
        /* "Again" needs a pass to come: the end of this one arms the retry
         * timer, as for a 4xx, instead of leaving the message to wait for
         * new mail or an ETRN. */
        d->pass_deferred = 1;
    } else {
        outcome_written(j->s, &j->m);
        if (outcome_held(j->rcpt, j->nrcpt)) {
            log_info("%s: quarantined: %s", j->m.qid, j->m.quarantine_reason);
            stats_inc(STAT_QUARANTINED_BOUNCED);
        }
        /* A kept copy's removal (kept_until) may come before anything
         * the expiry timer waits for. */
        for (size_t i = 0; i < j->nrcpt; i++)
            if (j->rcpt[i].state == QRCPT_KEPT) {
                delivery_expire_arm(j->s);
                break;
            }
    }
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
        j->d->pass_deferred = 1;        /* see job_committed */
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
int delivery_notice(struct delivery *s, const struct qmsg *m, struct bounce_rcpt *br, size_t n,
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

/*
 * What the primary answered for each recipient of j: states, log lines,
 * counters; then the notices that are due (failed, and relayed under
 * NOTIFY=SUCCESS) and the commit of the outcome once they are queued.
 * lim: the recipient limit this transaction met (0 = none); j->redo is
 * set.  Returns 1 when a recipient got a 4xx that counts against the
 * primary.
 */
int job_outcome(struct job *j, size_t lim)
{
    time_t now = time(NULL);
    /* Sized by this message: every failed or relayed recipient is named. */
    struct bounce_rcpt *br = calloc(j->nrcpt, sizeof *br);
    struct bounce_rcpt *rel = calloc(j->nrcpt, sizeof *rel);
    char (*diag)[600] = calloc(j->nrcpt, sizeof *diag);
    char (*dsns)[16] = calloc(j->nrcpt, sizeof *dsns);
    size_t nb = 0, nrel = 0;
    char why[200];
    int any4 = 0, oom = br == NULL || rel == NULL || diag == NULL || dsns == NULL;

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
            /* keep_delivered: the copy stays, marked delivered, for a
             * replay (the primary restored from a backup); the index
             * counts it apart and the expiry removes it at kept_until. */
            const struct conf_domain *kd = conf_domain_find(j->s->conf, r->domain);
            if (kd && kd->keep_delivered > 0 && !(j->m.flags & QMSG_F_DSN)) {
                r->state = QRCPT_KEPT;
                r->delivered = (int64_t)now;
                r->kept_until = (int64_t)now + kd->keep_delivered;
                stats_inc(STAT_KEPT);
            }
            if (!oom && (r->notify & SMTP_NOTIFY_SUCCESS) && !j->peer_dsn &&
                bounce_wanted(&j->m, r, BOUNCE_RELAYED)) {
                rel[nrel].r = r;
                rel[nrel].action = BOUNCE_RELAYED;
                rel[nrel].status = "2.0.0";
                rel[nrel].remote_mta = j->peer;
                rel[nrel].diagnostic = NULL;
                nrel++;
            }
        } else if (code >= 500 && !oom && bounce_wanted(&j->m, r, BOUNCE_FAILED) &&
                   !quarantine_notice_allowed(conf_domain_find(j->s->conf, r->domain), &j->m,
                                              why, sizeof why)) {
            /* No backscatter: the notice would go to a sender nobody
             * vouched for; the message waits in quarantine instead. */
            r->state = QRCPT_QUARANTINED;
            status = "quarantined";
            stats_inc(STAT_BOUNCED);
            if (!j->m.quarantine_reason[0]) {
                char said[600];
                snprintf(said, sizeof said, "primary said %s", j->text[i]);
                quarantine_reason(j->m.quarantine_reason, sizeof j->m.quarantine_reason, why, said);
                j->m.quarantined = (int64_t)now;
                j->m.quarantine_until = (int64_t)now + j->s->conf->quarantine_retention;
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
        /* The primary's word is the best verification there is. */
        verify_learn(r->addr, code, dsn, j->text[i]);
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
    j->nbounce = 1;     /* held until the notices are queued */
    int nr = nb ? delivery_notice(j->s, &j->m, br, nb, job_notice_done, j) : 1;
    if (nr == 0)
        j->nbounce++;
    else if (nr < 0) {
        for (size_t i = 0; i < nb; i++)
            ((struct qrcpt *)br[i].r)->state = QRCPT_PENDING;
        log_warn("%s: notice could not be built; recipients stay queued", j->m.qid);
    }
    if (nrel && delivery_notice(j->s, &j->m, rel, nrel, job_relayed_done, NULL) < 0)
        log_warn("%s: relayed notice could not be queued", j->m.qid);
    /* bounce_build copied what it needed: the arrays can go. */
    free(br);
    free(rel);
    free(diag);
    free(dsns);
    job_notice_done(j, 0);
    return any4;
}
