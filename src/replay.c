/*
 * replay.c - kept copies of delivered mail (see replay.h): `mxkeepctl
 * replay` (queue them again) and the reserve watch that drops them first
 * when the spool runs short of space.
 *
 * Owns: the reserve watch timer, the replay and drop jobs until their
 * completion, a conf reference.  The records are queue_db.c's (QRCPT_KEPT,
 * the kept and kept_msg indexes); every write goes through the spool's
 * writer (spool_write), and every effect (log line, counters, the flush)
 * hangs off the write's completion, never off the request that asked.
 *
 * Must never: drop a message that still has mail in it (a pending or
 * quarantined recipient: qdb_kept_drop refuses it); drop anything while
 * free space is above disk_reserve + keep_reserve; replay a domain the
 * daemon does not serve; hold a transaction across a callback.
 *
 * Security: the control socket checked who asked (control.c); the domain
 * and address arrive validated, and are only keys of index lookups.
 */
#include "config.h"
#include "replay.h"

#include "conf.h"
#include "delivery.h"
#include "log.h"
#include "qid.h"
#include "queue_db.h"
#include "spool.h"
#include "stats.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

/* How often free space is measured against the kept copies' reserve: as
 * often as smtpd trusts its own measure, so copies go before MAIL sees
 * the disk short. */
#define REPLAY_WATCH_SECONDS 1
/* Kept-only messages dropped per write while the disk is short. */
#define REPLAY_DROP_BATCH    32
/* QIDs a replay names in its log lines (the count covers them all). */
#define REPLAY_LOG_QIDS      1024

static struct {
    struct event_base *base;
    struct spool *sp;
    struct delivery *dl;
    const struct conf *conf;
    struct event *watch;
    int dropping;                       /* a drop write in flight */
    int short_logged;                   /* "short of space" said for this episode */
} R;

/* ------------------------------------------------------------------ */
/* Dropping first when the disk is short                               */

struct drop_job {
    char qid[REPLAY_DROP_BATCH][QID_SIZE];
    long copies[REPLAY_DROP_BATCH];     /* per QID, -1: not dropped */
    long n;
};

static void watch_arm(int seconds)
{
    struct timeval tv = { seconds, 0 };
    if (R.watch)
        evtimer_add(R.watch, &tv);
}

/* Writer thread; idempotent (a retried batch starts over). */
static int drop_fn(struct qdb_txn *t, void *arg)
{
    struct drop_job *j = arg;
    for (long i = 0; i < j->n; i++) {
        j->copies[i] = -1;
        int rc = qdb_kept_drop(t, j->qid[i], &j->copies[i]);
        if (rc == QDB_NOTFOUND) {
            j->copies[i] = -1;          /* mail again, or gone: not ours */
            continue;
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

static void drop_done(void *arg, int err)
{
    struct drop_job *j = arg;
    R.dropping = 0;
    if (err) {
        log_warn("kept copies not dropped: %s; trying again", strerror(err));
        free(j);
        watch_arm(REPLAY_WATCH_SECONDS);
        return;
    }
    for (long i = 0; i < j->n; i++) {
        if (j->copies[i] < 0)
            continue;
        log_info("%s: kept cop%s dropped (%ld): spool short of space", j->qid[i],
                 j->copies[i] == 1 ? "y" : "ies", j->copies[i]);
        stats_add(STAT_KEPT_DROPPED, (uint64_t)j->copies[i]);
        if (R.sp)
            spool_body_unlink_if_gone(R.sp, j->qid[i]);
    }
    free(j);
    watch_arm(0);                       /* measure again at once */
}

static void on_watch(evutil_socket_t fd, short what, void *arg)
{
    unsigned long long avail;
    (void)fd;
    (void)what;
    (void)arg;
    if (R.dropping || R.sp == NULL || R.conf == NULL)
        return;
    unsigned long long need = (unsigned long long)(R.conf->limits.disk_reserve > 0
                                                   ? R.conf->limits.disk_reserve : 0) +
                              (unsigned long long)(R.conf->limits.keep_reserve > 0
                                                   ? R.conf->limits.keep_reserve : 0);
    if (spool_free_space(R.sp, &avail) != 0 || avail >= need) {
        R.short_logged = 0;
        watch_arm(REPLAY_WATCH_SECONDS);
        return;
    }
    struct drop_job *j = calloc(1, sizeof *j);
    uint64_t size[REPLAY_DROP_BATCH], got = 0;
    if (j == NULL || (j->n = spool_kept_oldest(R.sp, j->qid, size, REPLAY_DROP_BATCH)) <= 0) {
        free(j);                        /* nothing kept: mail is not ours to drop */
        watch_arm(REPLAY_WATCH_SECONDS);
        return;
    }
    /* As many as the shortfall asks, oldest first: the rest stay kept.
     * (A body inside the index frees pages for the index, not the disk:
     * the next measure tells, and asks for more.) */
    for (long i = 0; i < j->n; i++) {
        got += size[i];
        if (got >= need - avail) {
            j->n = i + 1;
            break;
        }
    }
    if (!R.short_logged)
        log_warn("spool %s: %llu octets free, below disk_reserve + keep_reserve (%llu): "
                 "dropping kept copies, oldest first", R.conf->spool, avail, need);
    R.short_logged = 1;
    R.dropping = 1;
    if (spool_write(R.sp, drop_fn, j, drop_done, j) == NULL) {
        R.dropping = 0;
        free(j);
        watch_arm(REPLAY_WATCH_SECONDS);
    }
}

/* ------------------------------------------------------------------ */
/* Replay                                                              */

struct replay_job {
    char domain[SMTP_DOMAIN_MAX + 1];
    char addr[SMTP_PATH_MAX + 1];
    int has_addr;
    int64_t since, until, expiry;
    long copies;
    char (*qids)[QID_SIZE];
    size_t nq;
    replay_done_fn done;
    void *arg;
};

static int replay_fn(struct qdb_txn *t, void *arg)
{
    struct replay_job *j = arg;
    return qdb_kept_replay(t, j->domain, j->since, j->until, j->has_addr ? j->addr : NULL,
                           j->expiry, &j->copies, j->qids, REPLAY_LOG_QIDS, &j->nq);
}

static void replay_done(void *arg, int err)
{
    struct replay_job *j = arg;
    if (err == 0) {
        for (size_t i = 0; i < j->nq; i++)
            log_info("%s: kept copies to %s queued again (replay)", j->qids[i], j->domain);
        log_info("replay %s: %ld kept cop%s of %zu%s message%s queued again", j->domain,
                 j->copies, j->copies == 1 ? "y" : "ies", j->nq,
                 j->nq == REPLAY_LOG_QIDS ? "+" : "", j->nq == 1 ? "" : "s");
        stats_add(STAT_KEPT_REPLAYED, (uint64_t)j->copies);
        if (j->copies > 0 && R.dl)
            delivery_flush(R.dl, j->domain, NULL);
    } else {
        log_warn("replay %s: not saved: %s", j->domain, strerror(err));
    }
    if (j->done)
        j->done(j->arg, err, err ? 0 : j->copies, err ? 0 : j->nq);
    free(j->qids);
    free(j);
}

int replay_run(const char *domain, int64_t since, int64_t until, const char *addr,
               replay_done_fn done, void *arg)
{
    const struct conf_domain *d;
    if (R.sp == NULL || R.conf == NULL)
        return EAGAIN;
    if ((d = conf_domain_find(R.conf, domain)) == NULL)
        return ENOENT;
    struct replay_job *j = calloc(1, sizeof *j);
    if (j == NULL || (j->qids = calloc(REPLAY_LOG_QIDS, sizeof *j->qids)) == NULL) {
        free(j);
        return ENOMEM;
    }
    snprintf(j->domain, sizeof j->domain, "%s", d->name);
    if (addr) {
        snprintf(j->addr, sizeof j->addr, "%s", addr);
        j->has_addr = 1;
    }
    j->since = since;
    j->until = until;
    /* A new attempt with the domain's full retention: the copy was
     * delivered once already, and must not expire at once. */
    j->expiry = (int64_t)time(NULL) + d->retention;
    j->done = done;
    j->arg = arg;
    if (spool_write(R.sp, replay_fn, j, replay_done, j) == NULL) {
        int e = errno ? errno : EIO;
        free(j->qids);
        free(j);
        return e;
    }
    return 0;
}

/* ------------------------------------------------------------------ */

int replay_init(struct event_base *base, struct spool *sp, struct delivery *dl,
                const struct conf *c, char *err, size_t errlen)
{
    R.base = base;
    R.sp = sp;
    R.dl = dl;
    R.watch = evtimer_new(base, on_watch, NULL);
    if (R.watch == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    replay_reload(c);
    watch_arm(0);
    return 0;
}

void replay_reload(const struct conf *c)
{
    const struct conf *old = R.conf;
    R.conf = c ? conf_ref(c) : NULL;
    conf_free(old);
}

void replay_shutdown(void)
{
    if (R.watch)
        event_free(R.watch);
    R.watch = NULL;
    R.sp = NULL;
    R.dl = NULL;
    conf_free(R.conf);
    R.conf = NULL;
}
