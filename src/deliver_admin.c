/*
 * deliver_admin.c - admin actions on one message (mxkeepctl delete and
 * bounce; delivery module, see deliver_int.h and delivery.h).
 *
 * Owns: struct admin_job from the request to its completion callback.
 *
 * Never: touches a message that a delivery or the expiry owns (answers
 * EBUSY instead); completes before the change is committed.
 */
#include "config.h"
#include "deliver_int.h"
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

/* A job for an admin action on qid; NULL when out of memory. */
static struct admin_job *admin_job_new(struct delivery *s, const char *qid, delivery_done_fn done,
                                       void *arg)
{
    struct admin_job *a = calloc(1, sizeof *a);
    if (a == NULL)
        return NULL;
    a->s = s;
    snprintf(a->qid, sizeof a->qid, "%s", qid);
    a->done = done;
    a->arg = arg;
    return a;
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
    if (!qid_valid(qid) || spool_msg_get(s->spool, qid, &m) != 0)
        return ENOENT;
    if (delivery_busy(s, qid))
        return EBUSY;
    if ((a = admin_job_new(s, qid, done, arg)) == NULL)
        return ENOMEM;
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
    if ((a = admin_job_new(s, qid, done, arg)) == NULL)
        return ENOMEM;
    if (spool_msg_get(s->spool, qid, &a->m) != 0 || (a->rcpt = rcpts_load(s, &a->m, &a->nrcpt)) == NULL) {
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
