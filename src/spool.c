/*
 * spool.c - the durable spool (see spool.h): message bodies on disk or
 * inline, the LMDB index, and the writer thread that makes both durable in
 * groups ("group commit").
 *
 * Owns: the spool directory tree, every body file descriptor, the writer
 * thread and its request queue, and the completion event on the loop.
 *
 * The commit point is the LMDB record.  A done callback reports 0 only when
 * the body file was fdatasync'ed, its directory fsync'ed, and the LMDB
 * transaction holding the records committed, in that order; so after a
 * crash at any instant a body without a record is an orphan (removed at
 * open) and an acknowledged message always has its body.
 *
 * Batching: sessions' commits made in one loop pass are handed to the
 * writer together (kick event), and the writer starts its next batch only
 * after the loop has run the previous batch's callbacks, so under steady
 * load every waiting message rides in one transaction.
 *
 * Index failure: LMDB refuses every transaction after a failed meta-page
 * write (MDB_PANIC).  The writer notices (qdb_failed), answers the
 * commits of the batch in hand (451: the sender retries) and keeps its
 * writes and deletes to run again first, closes the environment and opens
 * it again under the reader lock
 * (the struct qdb survives, so readers elsewhere keep their pointer), runs
 * the read-only part of recovery and goes on; while the reopen fails it
 * retries with back-off and fails new requests at once (451) instead of
 * letting sessions wait.  Logged once per outage, counted on the loop.
 * The orphan sweep is not repeated then: bodies of sessions still
 * receiving are not orphans, and the failed batch removed its own files.
 *
 * Storage errors are classified where they are seen: an EIO (LMDB reports
 * a write cut short by a full disk that way, and so do some file systems)
 * while free space is below the reserve plus what was being written is a
 * lack of space, ENOSPC, so the sender hears 452 4.3.1.
 *
 * Never: calls a done callback on the writer thread; lets the loop wait on
 * an fsync; unlinks a body whose record may still exist (deletes unlink
 * only after their transaction committed; failed commits unlink because
 * their record was never written).
 *
 * Security: every path is built from a QID checked with qid_valid(), under
 * a directory descriptor opened once, so no peer data reaches a path.
 * Files and directories are created 0600/0700.
 */
#include "config.h"
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "conf.h"
#include "log.h"
#include "stats.h"

/* Bodies up to this size live in memory while they arrive and go into the
 * LMDB body database: no file, no fsync, no directory entry. */
#define SPOOL_INLINE_MAX      65536
#define SPOOL_DIR_MODE        0700
#define SPOOL_FILE_MODE       0600
#define SPOOL_ALPHABET        "0123456789ABCDEFGHIJKLMNOPQRSTUV"
#define SPOOL_RADIX           32
#define SPOOL_BUCKETS         (SPOOL_RADIX * SPOOL_RADIX)
#define SPOOL_DEFAULT_BATCH   256
#define SPOOL_DEFAULT_MAP     ((size_t)64 << 20)
#define SPOOL_BUF_MIN         4096
#define SPOOL_RELPATH_MAX     (sizeof "quarantine/" + QID_LEN + 8)
#define SPOOL_INDEX_DIR       "index"
#define SPOOL_MSG_DIR         "msg"
#define SPOOL_QUARANTINE_DIR  "quarantine"
#define SPOOL_LOCK_FILE       "lock"
#define SPOOL_PID_MAX         32          /* "pid\n" in the lock file */
/* Reopening a failed index: first try at once, then back off. */
#define SPOOL_REOPEN_MIN_SEC  1
#define SPOOL_REOPEN_MAX_SEC  60

enum spool_req_kind { REQ_COMMIT, REQ_WRITE, REQ_DELETE };

struct spool_body {
    struct spool *s;
    char qid[QID_SIZE];
    unsigned char *buf;         /* inline body while fd < 0 */
    size_t len, cap;
    int fd;                     /* spilled to msg/XX/QID */
    uint64_t size;
    int err;                    /* sticky: a failed write spoils the body */
};

struct spool_ticket {
    struct spool_ticket *next;
    enum spool_req_kind kind;
    spool_done_fn done;         /* runs once on the loop; never cancelled */
    void *done_arg;
    int err;                    /* writer thread until handed back */
    struct spool_body *body;    /* REQ_COMMIT */
    struct qmsg msg;
    struct qrcpt *rcpts;
    size_t nrcpt;
    spool_txn_fn fn;            /* REQ_WRITE */
    void *fn_arg;
    char qid[QID_SIZE];         /* REQ_DELETE */
};

struct spool {
    int rootfd;
    int lockfd;                 /* our own spool lock (not mxkeepd's) */
    unsigned long long reserve; /* limits.disk_reserve at open */
    struct qdb *db;
    struct event *index_ev;     /* writer -> loop: index failed/reopened */
    spool_reopened_fn reopened;
    void *reopened_arg;
    struct spool_stats seen;    /* loop thread: index figures counted */
    /* Writer thread only: */
    int index_down;             /* failed, not reopened yet */
    int index_logged;           /* this outage was logged */
    unsigned reopen_step;
    time_t index_since;
    struct timespec next_reopen;    /* CLOCK_MONOTONIC */
    struct event *done_ev;      /* writer -> loop: completions ready */
    struct event *kick_ev;      /* loop -> writer, once per loop pass */
    int kick_armed;             /* loop thread only */
    size_t batch_max;
    pthread_t writer;
    int writer_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* Under mu: */
    struct spool_ticket *q_head, **q_tail;      /* waiting for the writer */
    struct spool_ticket *d_head, **d_tail;      /* done, for the loop */
    size_t outstanding;     /* enqueued, callback not yet run (loop thread) */
    int stopping;
    /* Completions handed to the loop and not yet run.  The writer waits
     * for them before its next batch: their callbacks are what submit the
     * next messages, and taking those in the same batch as the ones that
     * piled up meanwhile doubles the batch size under steady load (with
     * two alternating half-groups the disk would sync twice as often). */
    int awaiting_loop;
    /* Written by the writer, read with relaxed atomics anywhere. */
    struct spool_stats stats;
};

/* ---------- paths ---------- */

static int bucket_of(const char *qid)
{
    const char *a = strchr(SPOOL_ALPHABET, qid[QID_LEN - 2]);
    const char *b = strchr(SPOOL_ALPHABET, qid[QID_LEN - 1]);
    return (int)(a - SPOOL_ALPHABET) * SPOOL_RADIX + (int)(b - SPOOL_ALPHABET);
}

static void bucket_path(char *out, size_t n, int bucket)
{
    snprintf(out, n, SPOOL_MSG_DIR "/%c%c", SPOOL_ALPHABET[bucket / SPOOL_RADIX],
             SPOOL_ALPHABET[bucket % SPOOL_RADIX]);
}

static void body_path(char *out, size_t n, const char *qid)
{
    snprintf(out, n, SPOOL_MSG_DIR "/%c%c/%s", qid[QID_LEN - 2], qid[QID_LEN - 1], qid);
}

static int write_full(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void stat_add(uint64_t *field, uint64_t n)
{
    __atomic_fetch_add(field, n, __ATOMIC_RELAXED);
}

/* An EIO that came with the disk (nearly) full was a lack of space:
 * LMDB reports a write cut short by a full disk as EIO, and so do some
 * file systems for write and fsync.  need: octets being written. */
static int spool_classify(const struct spool *s, int err, unsigned long long need)
{
    unsigned long long avail;
    if (err != EIO || spool_free_space(s, &avail) != 0)
        return err;
    return avail < s->reserve + need ? ENOSPC : err;
}

/* ---------- bodies (loop thread) ---------- */

struct spool_body *spool_body_new(struct spool *s, const char *qid)
{
    if (!qid_valid(qid)) {
        errno = EINVAL;
        return NULL;
    }
    struct spool_body *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->s = s;
    memcpy(b->qid, qid, QID_SIZE);
    b->fd = -1;
    return b;
}

/* The body outgrew memory: move it to its file and keep writing there. */
static int body_spill(struct spool_body *b)
{
    char path[SPOOL_RELPATH_MAX];
    body_path(path, sizeof path, b->qid);
    int fd = openat(b->s->rootfd, path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, SPOOL_FILE_MODE);
    if (fd < 0)
        return -1;
    if (b->len && write_full(fd, b->buf, b->len) < 0) {
        int e = errno;
        close(fd);
        unlinkat(b->s->rootfd, path, 0);
        errno = e;
        return -1;
    }
    b->fd = fd;
    free(b->buf);
    b->buf = NULL;
    b->len = b->cap = 0;
    return 0;
}

int spool_body_write(struct spool_body *b, const void *buf, size_t n)
{
    if (b->err) {
        errno = b->err;
        return -1;
    }
    if (n == 0)
        return 0;
    if (b->fd < 0 && b->len + n <= SPOOL_INLINE_MAX) {
        if (b->len + n > b->cap) {
            size_t nc = b->cap ? b->cap : SPOOL_BUF_MIN;
            while (nc < b->len + n)
                nc *= 2;
            if (nc > SPOOL_INLINE_MAX)
                nc = SPOOL_INLINE_MAX;
            unsigned char *p = realloc(b->buf, nc);
            if (!p) {
                b->err = ENOMEM;
                errno = ENOMEM;
                return -1;
            }
            b->buf = p;
            b->cap = nc;
        }
        memcpy(b->buf + b->len, buf, n);
        b->len += n;
        b->size += n;
        return 0;
    }
    if ((b->fd < 0 && body_spill(b) < 0) || write_full(b->fd, buf, n) < 0) {
        b->err = spool_classify(b->s, errno, n);
        errno = b->err;
        return -1;
    }
    b->size += n;
    return 0;
}

uint64_t spool_body_size(const struct spool_body *b)
{
    return b->size;
}

/* Close and forget; unlink the file too when unlink_file (never-committed
 * or failed bodies).  Safe on either thread: the body belongs to whoever
 * holds it. */
static void body_discard(struct spool_body *b, int unlink_file)
{
    if (!b)
        return;
    if (b->fd >= 0) {
        close(b->fd);
        if (unlink_file) {
            char path[SPOOL_RELPATH_MAX];
            body_path(path, sizeof path, b->qid);
            if (unlinkat(b->s->rootfd, path, 0) < 0 && errno != ENOENT)
                log_warn("%s: unlink body: %s", b->qid, strerror(errno));
        }
    }
    free(b->buf);
    free(b);
}

void spool_body_free(struct spool_body *b)
{
    body_discard(b, 1);
}

/* ---------- requests ---------- */

static void ticket_free(struct spool_ticket *t)
{
    if (!t)
        return;
    free(t->rcpts);
    free(t);
}

static struct spool_ticket *ticket_enqueue(struct spool *s, struct spool_ticket *t)
{
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->mu);
        errno = ESHUTDOWN;
        return NULL;
    }
    t->next = NULL;
    *s->q_tail = t;
    s->q_tail = &t->next;
    pthread_mutex_unlock(&s->mu);
    s->outstanding++;
    /* Wake the writer when this loop pass is over, not now: every commit
     * made in this pass (sessions finishing DATA together) then goes into
     * one batch instead of the first going alone. */
    if (!s->kick_armed) {
        s->kick_armed = 1;
        event_active(s->kick_ev, EV_READ, 0);
    }
    return t;
}

struct spool_ticket *spool_commit(struct spool *s, struct spool_body *b,
                                  const struct qmsg *m, const struct qrcpt *r, size_t n,
                                  spool_done_fn done, void *arg)
{
    if (strcmp(m->qid, b->qid) != 0)
        log_panic("%s: spool_commit with the body of %s", m->qid, b->qid);
    struct spool_ticket *t = calloc(1, sizeof *t);
    if (!t || (n && !(t->rcpts = malloc(n * sizeof *r)))) {
        free(t);
        body_discard(b, 1);
        errno = ENOMEM;
        return NULL;
    }
    t->kind = REQ_COMMIT;
    t->done = done;
    t->done_arg = arg;
    t->body = b;
    t->msg = *m;
    /* The spool knows the stored size and where the body lives. */
    t->msg.size = b->size;
    if (b->fd < 0)
        t->msg.flags |= QMSG_F_INLINE;
    else
        t->msg.flags &= ~QMSG_F_INLINE;
    if (n)
        memcpy(t->rcpts, r, n * sizeof *r);
    t->nrcpt = n;
    t->msg.nrcpt = (uint32_t)n;
    /* A body that failed to write is still handed to the writer, which
     * fails it in order with the rest and cleans up. */
    t->err = b->err;
    if (!ticket_enqueue(s, t)) {
        body_discard(b, 1);
        ticket_free(t);
        return NULL;
    }
    return t;
}

struct spool_ticket *spool_write(struct spool *s, spool_txn_fn fn, void *arg,
                                 spool_done_fn done, void *done_arg)
{
    struct spool_ticket *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->kind = REQ_WRITE;
    t->fn = fn;
    t->fn_arg = arg;
    t->done = done;
    t->done_arg = done_arg;
    if (!ticket_enqueue(s, t)) {
        free(t);
        return NULL;
    }
    return t;
}

struct spool_ticket *spool_delete(struct spool *s, const char *qid,
                                  spool_done_fn done, void *arg)
{
    if (!qid_valid(qid)) {
        errno = EINVAL;
        return NULL;
    }
    struct spool_ticket *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->kind = REQ_DELETE;
    memcpy(t->qid, qid, QID_SIZE);
    t->done = done;
    t->done_arg = arg;
    if (!ticket_enqueue(s, t)) {
        free(t);
        return NULL;
    }
    return t;
}

/* ---------- post-commit updates of a message record ---------- */

enum msg_upd_kind { UPD_AUTH, UPD_HOLD, UPD_RELEASE, UPD_UNHOLD };

struct msg_upd {
    enum msg_upd_kind kind;
    char qid[QID_SIZE];
    uint32_t flags;
    int64_t now, when;
    char text[QMSG_AUTH_RESULTS_MAX];
    spool_done_fn done;
    void *arg;
    struct spool *spool;
};

/* Writer thread; reads the record inside the transaction, so a retried
 * batch computes the same result (idempotent). */
static int msg_upd_fn(struct qdb_txn *t, void *arg)
{
    struct msg_upd *u = arg;
    if (u->kind == UPD_HOLD)
        return qdb_msg_hold(t, u->qid, u->text, u->now, u->when, 1);
    if (u->kind == UPD_RELEASE)
        return qdb_msg_release(t, u->qid, u->when);
    if (u->kind == UPD_UNHOLD)
        return qdb_msg_unhold_delete(t, u->qid);
    struct qmsg *m = malloc(sizeof *m);
    if (!m)
        return QDB_ERR;
    int r = qdb_msg_get_txn(t, u->qid, m);
    if (r == 0) {
        m->auth_flags |= u->flags;
        /* Appended and cut at the field's bound (a resinfo cut short is
         * still readable; a longer one has no room in the record). */
        size_t len = strlen(m->auth_results), cap = sizeof m->auth_results - 1;
        if (u->text[0] && len > 0 && len + 2 < cap) {
            memcpy(m->auth_results + len, "; ", 2);
            len += 2;
        }
        if (u->text[0] && len < cap) {
            size_t n = strlen(u->text);
            if (n > cap - len)
                n = cap - len;
            memcpy(m->auth_results + len, u->text, n);
            m->auth_results[len + n] = '\0';
        }
        r = qdb_msg_update(t, m);
    }
    free(m);
    return r;
}

static void msg_upd_done(void *arg, int err)
{
    struct msg_upd *u = arg;
    if (u->kind == UPD_UNHOLD && err == 0)
        spool_body_unlink_if_gone(u->spool, u->qid);
    if (u->done)
        u->done(u->arg, err);
    free(u);
}

static struct spool_ticket *msg_upd_queue(struct spool *s, struct msg_upd *u)
{
    u->spool = s;
    struct spool_ticket *t = spool_write(s, msg_upd_fn, u, msg_upd_done, u);
    if (!t)
        free(u);
    return t;
}

static struct msg_upd *msg_upd_new(enum msg_upd_kind kind, const char *qid, const char *text,
                                   spool_done_fn done, void *arg)
{
    if (!qid_valid(qid)) {
        errno = EINVAL;
        return NULL;
    }
    struct msg_upd *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->kind = kind;
    memcpy(u->qid, qid, QID_SIZE);
    snprintf(u->text, sizeof u->text, "%s", text ? text : "");
    u->done = done;
    u->arg = arg;
    return u;
}

struct spool_ticket *spool_msg_auth_set(struct spool *s, const char *qid, uint32_t flags,
                                        const char *text, spool_done_fn done, void *arg)
{
    struct msg_upd *u = msg_upd_new(UPD_AUTH, qid, text, done, arg);
    if (!u)
        return NULL;
    u->flags = flags;
    return msg_upd_queue(s, u);
}

struct spool_ticket *spool_quarantine(struct spool *s, const char *qid, const char *reason,
                                      int64_t until, spool_done_fn done, void *arg)
{
    struct msg_upd *u = msg_upd_new(UPD_HOLD, qid, reason, done, arg);
    if (!u)
        return NULL;
    u->now = (int64_t)time(NULL);
    u->when = until;
    return msg_upd_queue(s, u);
}

struct spool_ticket *spool_release(struct spool *s, const char *qid, int64_t expiry,
                                   spool_done_fn done, void *arg)
{
    struct msg_upd *u = msg_upd_new(UPD_RELEASE, qid, NULL, done, arg);
    if (!u)
        return NULL;
    u->when = expiry;
    return msg_upd_queue(s, u);
}

struct spool_ticket *spool_quarantine_delete(struct spool *s, const char *qid,
                                             spool_done_fn done, void *arg)
{
    struct msg_upd *u = msg_upd_new(UPD_UNHOLD, qid, NULL, done, arg);
    return u ? msg_upd_queue(s, u) : NULL;
}

/* ---------- the writer thread ---------- */

static void fail_all(struct spool_ticket **req, size_t n, int err)
{
    for (size_t i = 0; i < n; i++)
        if (!req[i]->err)
            req[i]->err = err;
}

/* Phase 1: file bodies and their directory entries reach the disk. */
static void batch_sync_files(struct spool *s, struct spool_ticket **req, size_t n)
{
    unsigned char dirty[SPOOL_BUCKETS] = { 0 };
    int any = 0;
    /* Start writeback of every body first, so the fdatasyncs below wait on
     * I/O that is already in flight instead of issuing it one by one. */
    for (size_t i = 0; i < n; i++)
        if (req[i]->kind == REQ_COMMIT && !req[i]->err && req[i]->body->fd >= 0)
            sync_file_range(req[i]->body->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    for (size_t i = 0; i < n; i++) {
        struct spool_ticket *t = req[i];
        if (t->kind != REQ_COMMIT || t->err || t->body->fd < 0)
            continue;
        if (fdatasync(t->body->fd) < 0) {
            t->err = spool_classify(s, errno, t->body->size);
            log_warn("%s: fdatasync body: %s", t->msg.qid, strerror(errno));
            continue;
        }
        dirty[bucket_of(t->msg.qid)] = 1;
        any = 1;
    }
    if (!any)
        return;
    for (int bkt = 0; bkt < SPOOL_BUCKETS; bkt++) {
        if (!dirty[bkt])
            continue;
        char path[SPOOL_RELPATH_MAX];
        bucket_path(path, sizeof path, bkt);
        int fd = openat(s->rootfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int err = 0;
        if (fd < 0 || fsync(fd) < 0)
            err = spool_classify(s, errno, 0);
        if (fd >= 0)
            close(fd);
        if (!err)
            continue;
        log_warn("spool: fsync %s: %s", path, strerror(err));
        for (size_t i = 0; i < n; i++)
            if (req[i]->kind == REQ_COMMIT && !req[i]->err && req[i]->body->fd >= 0 &&
                bucket_of(req[i]->msg.qid) == bkt)
                req[i]->err = err;
    }
}

static int req_run(struct qdb_txn *c, struct spool_ticket *t)
{
    switch (t->kind) {
    case REQ_COMMIT: {
        struct spool_body *b = t->body;
        const void *inl = b->fd < 0 ? (b->buf ? (const void *)b->buf : "") : NULL;
        return qdb_msg_put(c, &t->msg, t->rcpts, t->nrcpt, inl, b->fd < 0 ? b->len : 0);
    }
    case REQ_WRITE:
        return t->fn(c, t->fn_arg);
    case REQ_DELETE:
        return qdb_msg_delete(c, t->qid);
    }
    return QDB_ERR;
}

/* What a batch writes, for spool_classify(). */
static unsigned long long batch_octets(struct spool_ticket **req, size_t n)
{
    unsigned long long sum = 0;
    for (size_t i = 0; i < n; i++)
        if (req[i]->kind == REQ_COMMIT)
            sum += req[i]->msg.size;
    return sum;
}

/* Phase 2: one LMDB transaction for the batch, a child per request so a
 * bad request fails alone.  A full map grows and reruns the batch. */
static void batch_txn(struct spool *s, struct spool_ticket **req, size_t n)
{
    for (;;) {
        struct qdb_txn *t;
        int mapfull = 0, live = 0;
        for (size_t i = 0; i < n; i++)
            live += !req[i]->err;
        if (!live)
            return;
        if (qdb_txn_begin(s->db, &t) != 0) {
            /* A failed index: writer_main sorts the batch out. */
            if (!qdb_failed(s->db))
                fail_all(req, n, spool_classify(s, EIO, batch_octets(req, n)));
            return;
        }
        for (size_t i = 0; i < n && !mapfull; i++) {
            struct qdb_txn *c;
            if (req[i]->err)
                continue;
            int r = qdb_txn_child(t, &c);
            if (r == 0) {
                r = req_run(c, req[i]);
                if (r == 0)
                    r = qdb_txn_commit(c);
                else
                    qdb_txn_abort(c);
            }
            if (r == QDB_MAPFULL)
                mapfull = 1;
            else if (r == QDB_NOTFOUND)
                req[i]->err = ENOENT;
            else if (r != 0)
                req[i]->err = EIO;
        }
        if (!mapfull) {
            int r = qdb_txn_commit(t);
            if (r == 0) {
                stat_add(&s->stats.batches, 1);
                /* The index works again: a later failure is a new outage. */
                s->reopen_step = 0;
                s->index_logged = 0;
                return;
            }
            if (r != QDB_MAPFULL) {
                int e = errno;
                if (!qdb_failed(s->db))
                    fail_all(req, n, e == ENOSPC ? ENOSPC
                                                 : spool_classify(s, EIO, batch_octets(req, n)));
                return;
            }
        } else {
            qdb_txn_abort(t);
        }
        if (qdb_grow(s->db) != 0) {
            fail_all(req, n, ENOSPC);
            return;
        }
        stat_add(&s->stats.map_grows, 1);
    }
}

/* Phase 3: after the commit, files follow the records. */
static void batch_finish(struct spool *s, struct spool_ticket **req, size_t n)
{
    uint64_t ok = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        struct spool_ticket *t = req[i];
        if (t->kind == REQ_COMMIT) {
            body_discard(t->body, t->err != 0);
            t->body = NULL;
            if (t->err)
                log_warn("%s: commit failed: %s", t->msg.qid, strerror(t->err));
            else
                ok++;
        } else if (t->kind == REQ_DELETE && !t->err) {
            char path[SPOOL_RELPATH_MAX];
            body_path(path, sizeof path, t->qid);
            /* Inline bodies have no file: ENOENT is the common case. */
            if (unlinkat(s->rootfd, path, 0) < 0 && errno != ENOENT)
                log_warn("%s: unlink body: %s", t->qid, strerror(errno));
        }
        bad += t->err != 0;
    }
    stat_add(&s->stats.commits, ok);
    stat_add(&s->stats.failures, bad);
}

static void recover_missing(struct spool *s);

static void timespec_in(struct timespec *ts, unsigned seconds)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += seconds;
}

static int timespec_due(const struct timespec *ts)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > ts->tv_sec || (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}

/* Back-off before reopen attempt number step + 1. */
static unsigned reopen_wait(unsigned step)
{
    unsigned wait = SPOOL_REOPEN_MIN_SEC << (step < 6 ? step : 6);
    return wait < SPOOL_REOPEN_MAX_SEC ? wait : SPOOL_REOPEN_MAX_SEC;
}

/* Writer: the index has failed.  Log it once per outage, tell the loop,
 * and reopen: at once the first time, with back-off when it fails again
 * before anything committed since the last reopen. */
static void index_failed(struct spool *s)
{
    s->index_down = 1;
    s->index_since = time(NULL);
    stat_add(&s->stats.index_failures, 1);
    if (!s->index_logged) {
        log_err("spool: the LMDB index failed (MDB_PANIC after a failed write); mail is "
                "refused (4xx) while it is closed and reopened");
        s->index_logged = 1;
    }
    timespec_in(&s->next_reopen, s->reopen_step ? reopen_wait(s->reopen_step - 1) : 0);
    event_active(s->index_ev, EV_READ, 0);
}

/* Writer, no transaction open: close and open the environment again, run
 * the read-only part of recovery.  On failure try again later, backing
 * off. */
static void index_reopen(struct spool *s)
{
    char err[256];
    if (qdb_reopen(s->db, err, sizeof err) != 0) {
        timespec_in(&s->next_reopen, reopen_wait(s->reopen_step));
        s->reopen_step++;
        if (s->reopen_step == 1)
            log_warn("spool: reopening the index: %s; retrying with back-off", err);
        return;
    }
    /* Back off on the next failure too, should the disk still be bad: the
     * step resets at the first batch that commits. */
    if (s->reopen_step < 6)
        s->reopen_step++;
    s->index_down = 0;
    recover_missing(s);
    stat_add(&s->stats.index_reopens, 1);
    log_info("spool: index reopened after %lld s; accepting mail again",
             (long long)(time(NULL) - s->index_since));
    event_active(s->index_ev, EV_READ, 0);
}

/* The index failed under this batch (nothing of it committed).  Commits
 * are answered now (451, or 452 on a full disk: the sender retries), but
 * writes and deletes - delivery outcomes, expiry, admin actions - go again
 * after the reopen, first in line: their functions are idempotent by
 * contract, and failing them would leave delivered mail to be sent again.
 * The ones to retry end up after the others; returns how many are
 * done. */
static size_t index_sort_out(struct spool *s, struct spool_ticket **req, size_t n)
{
    int full = spool_classify(s, EIO, batch_octets(req, n));
    size_t done = 0;
    /* A stable partition: both groups keep their order. */
    for (size_t i = 0; i < n; i++) {
        struct spool_ticket *t = req[i];
        if (t->err == 0 && t->kind != REQ_COMMIT)
            continue;
        if (t->err == 0)
            t->err = full;
        memmove(&req[done + 1], &req[done], (i - done) * sizeof *req);
        req[done++] = t;
    }
    return done;
}

static void *writer_main(void *arg)
{
    struct spool *s = arg;
    struct spool_ticket **req = calloc(s->batch_max, sizeof *req);
    if (!req)
        log_panic("spool: writer: out of memory");
    pthread_mutex_lock(&s->mu);
    for (;;) {
        int reopen = 0;
        while (!s->stopping) {
            if (s->index_down && timespec_due(&s->next_reopen)) {
                reopen = 1;
                break;
            }
            if (s->q_head && !s->awaiting_loop)
                break;
            if (s->index_down)
                pthread_cond_timedwait(&s->cv, &s->mu, &s->next_reopen);
            else
                pthread_cond_wait(&s->cv, &s->mu);
        }
        if (reopen) {
            pthread_mutex_unlock(&s->mu);
            index_reopen(s);
            pthread_mutex_lock(&s->mu);
            continue;
        }
        if (!s->q_head)
            break;
        /* Everything that piled up while the last batch ran goes in this
         * one: that is the group commit. */
        size_t n = 0;
        while (s->q_head && n < s->batch_max) {
            req[n++] = s->q_head;
            s->q_head = s->q_head->next;
        }
        if (!s->q_head)
            s->q_tail = &s->q_head;
        pthread_mutex_unlock(&s->mu);

        size_t ndone = n;
        if (s->index_down) {
            /* Nothing can be made durable now: answer at once. */
            fail_all(req, n, spool_classify(s, EIO, batch_octets(req, n)));
        } else {
            batch_sync_files(s, req, n);
            batch_txn(s, req, n);
            if (qdb_failed(s->db)) {
                index_failed(s);
                ndone = index_sort_out(s, req, n);
            }
        }
        batch_finish(s, req, ndone);

        pthread_mutex_lock(&s->mu);
        for (size_t i = n; i > ndone; i--) {
            /* Back to the head of the queue, in their order. */
            req[i - 1]->next = s->q_head;
            if (!s->q_head)
                s->q_tail = &req[i - 1]->next;
            s->q_head = req[i - 1];
        }
        for (size_t i = 0; i < ndone; i++) {
            req[i]->next = NULL;
            *s->d_tail = req[i];
            s->d_tail = &req[i]->next;
        }
        s->awaiting_loop = 1;
        event_active(s->done_ev, EV_READ, 0);
    }
    pthread_mutex_unlock(&s->mu);
    free(req);
    return NULL;
}

static struct spool_ticket *take_done(struct spool *s)
{
    pthread_mutex_lock(&s->mu);
    struct spool_ticket *list = s->d_head;
    s->d_head = NULL;
    s->d_tail = &s->d_head;
    pthread_mutex_unlock(&s->mu);
    return list;
}

/* Loop thread: run the callbacks, each exactly once. */
static void spool_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct spool *s0 = arg;
    struct spool_ticket *t = take_done(arg);
    while (t) {
        struct spool_ticket *next = t->next;
        s0->outstanding--;
        if (t->done)
            t->done(t->done_arg, t->err);
        ticket_free(t);
        t = next;
    }
    struct spool *s = arg;
    pthread_mutex_lock(&s->mu);
    s->awaiting_loop = 0;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void spool_kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct spool *s = arg;
    s->kick_armed = 0;
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Loop thread: the writer saw the index fail or come back.  Counters are
 * the loop's (stats.h); the reopen hook resumes delivery. */
static void spool_index_cb(evutil_socket_t fd, short what, void *arg)
{
    struct spool *s = arg;
    struct spool_stats now;
    spool_stats_get(s, &now);
    stats_add(STAT_SPOOL_INDEX_FAILURES, now.index_failures - s->seen.index_failures);
    uint64_t reopened = now.index_reopens - s->seen.index_reopens;
    stats_add(STAT_SPOOL_INDEX_REOPENS, reopened);
    s->seen = now;
    if (reopened && s->reopened)
        s->reopened(s->reopened_arg);
}

void spool_set_reopen_hook(struct spool *s, spool_reopened_fn fn, void *arg)
{
    s->reopened = fn;
    s->reopened_arg = arg;
}

/* ---------- open, recovery, close ---------- */

static int mkdir_at(int dirfd, const char *path, int *created)
{
    if (mkdirat(dirfd, path, SPOOL_DIR_MODE) == 0) {
        *created = 1;
        return 0;
    }
    return errno == EEXIST ? 0 : -1;
}

static int fsync_at(int dirfd, const char *path)
{
    int fd = openat(dirfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return r;
}

/* Make the tree; new directory entries are made durable here, once, so
 * the writer only has to sync the bucket of each new body. */
static int spool_mkdirs(struct spool *s, char *err, size_t errlen)
{
    int root_new = 0, msg_new = 0;
    char path[SPOOL_RELPATH_MAX];
    if (mkdir_at(s->rootfd, SPOOL_INDEX_DIR, &root_new) < 0 ||
        mkdir_at(s->rootfd, SPOOL_MSG_DIR, &root_new) < 0 ||
        mkdir_at(s->rootfd, SPOOL_QUARANTINE_DIR, &root_new) < 0) {
        snprintf(err, errlen, "spool: mkdir: %s", strerror(errno));
        return -1;
    }
    for (int bkt = 0; bkt < SPOOL_BUCKETS; bkt++) {
        bucket_path(path, sizeof path, bkt);
        if (mkdir_at(s->rootfd, path, &msg_new) < 0) {
            snprintf(err, errlen, "spool: mkdir %s: %s", path, strerror(errno));
            return -1;
        }
    }
    if ((msg_new && fsync_at(s->rootfd, SPOOL_MSG_DIR) < 0) ||
        ((root_new || msg_new) && fsync(s->rootfd) < 0)) {
        snprintf(err, errlen, "spool: fsync directories: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* Bodies with no record: the crash came between file and commit. */
static void recover_orphans(struct spool *s)
{
    char path[SPOOL_RELPATH_MAX];
    struct qmsg *m = malloc(sizeof *m);
    if (!m)
        return;
    for (int bkt = 0; bkt < SPOOL_BUCKETS; bkt++) {
        bucket_path(path, sizeof path, bkt);
        int fd = openat(s->rootfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
        if (!d) {
            log_warn("spool: %s: %s", path, strerror(errno));
            if (fd >= 0)
                close(fd);
            continue;
        }
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            if (!qid_valid(de->d_name) || bucket_of(de->d_name) != bkt) {
                log_warn("spool: %s/%s: not a body file, left alone", path, de->d_name);
                continue;
            }
            int r = qdb_msg_get(s->db, de->d_name, m);
            if (r == QDB_ERR)
                continue;       /* unreadable record: keep its body */
            if (r == 0 && !(m->flags & QMSG_F_INLINE))
                continue;
            if (unlinkat(dirfd(d), de->d_name, 0) == 0)
                log_info("%s: removed orphan body", de->d_name);
            else
                log_warn("%s: remove orphan body: %s", de->d_name, strerror(errno));
        }
        closedir(d);
    }
    free(m);
}

/* A record whose body is gone: keep the record, tell a human, and leave a
 * readable dump in quarantine/QID. */
static void quarantine_note(struct spool *s, const struct qmsg *m)
{
    char path[SPOOL_RELPATH_MAX];
    log_warn("%s: body missing, quarantined", m->qid);
    snprintf(path, sizeof path, SPOOL_QUARANTINE_DIR "/%s", m->qid);
    int fd = openat(s->rootfd, path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, SPOOL_FILE_MODE);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        log_warn("%s: quarantine note: %s", m->qid, strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    fprintf(f, "qid: %s\nproblem: body file missing\narrival: %lld\nsize: %llu\n"
               "flags: %#x\nsender: <%s>\nclient: %s [%s]\nhelo: %s\nenvid: %s\n",
            m->qid, (long long)m->arrival, (unsigned long long)m->size, m->flags,
            m->sender, m->client_name, m->client_addr, m->helo, m->envid);
    size_t n = 0;
    struct qrcpt *r = m->nrcpt ? calloc(m->nrcpt, sizeof *r) : NULL;
    if (r && qdb_rcpt_list(s->db, m->qid, r, m->nrcpt, &n) == 0)
        for (size_t i = 0; i < n; i++)
            fprintf(f, "rcpt %u: <%s> domain %s state %d attempts %u\n", r[i].index,
                    r[i].addr, r[i].domain, r[i].state, r[i].attempts);
    free(r);
    if (fclose(f) != 0)
        log_warn("%s: quarantine note: %s", m->qid, strerror(errno));
}

static int recover_missing_cb(void *arg, const struct qmsg *m)
{
    struct spool *s = arg;
    char path[SPOOL_RELPATH_MAX];
    struct stat st;
    if (m->flags & QMSG_F_INLINE)
        return 0;
    body_path(path, sizeof path, m->qid);
    if (fstatat(s->rootfd, path, &st, 0) < 0 && errno == ENOENT)
        quarantine_note(s, m);
    return 0;
}

/* Records whose body file is gone go to quarantine (read-only: safe while
 * sessions are receiving). */
static void recover_missing(struct spool *s)
{
    if (qdb_msg_each(s->db, "", LONG_MAX, recover_missing_cb, s) < 0)
        log_warn("spool: recovery: cannot read the index");
}

static int spool_from_cwd;

void spool_open_from_cwd(void)
{
    spool_from_cwd = 1;
}

/* ---------- the spool lock ---------- */

/* The process's lock, taken by spool_lock() (mxkeepd). */
static int spool_lock_fd = -1;

static void lock_write_pid(int fd)
{
    char buf[SPOOL_PID_MAX];
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n)
        log_warn("spool: writing the pid into the lock file: %s", strerror(errno));
}

/* Open and lock path (relative to dirfd).  0 with *fdp set, SPOOL_LOCK_BUSY
 * or -1 with a reason in err.  spool names the spool in messages. */
static int lock_take(int dirfd, const char *path, const char *spool, uid_t uid, gid_t gid,
                     int *fdp, char *err, size_t errlen)
{
    struct stat st;
    /* Root opens a file in a directory the mail user owns: no symlink,
     * nothing but a plain file with one name, ours or the mail user's. */
    int fd = openat(dirfd, path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, SPOOL_FILE_MODE);
    if (fd < 0) {
        snprintf(err, errlen, "spool %s: lock file: %s", spool, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 ||
        (st.st_uid != uid && st.st_uid != geteuid())) {
        snprintf(err, errlen, "spool %s: lock file %s is not a plain file of ours", spool, path);
        close(fd);
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (e != EWOULDBLOCK) {
            snprintf(err, errlen, "spool %s: lock: %s", spool, strerror(e));
            close(fd);
            return -1;
        }
        char buf[SPOOL_PID_MAX];
        ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
        long pid = 0;
        buf[n > 0 ? n : 0] = '\0';
        if (sscanf(buf, "%ld", &pid) == 1 && pid > 0)
            snprintf(err, errlen, "spool %s is in use by mxkeepd pid %ld", spool, pid);
        else
            snprintf(err, errlen, "spool %s is in use by another mxkeepd", spool);
        close(fd);
        return SPOOL_LOCK_BUSY;
    }
    if (geteuid() == 0 && (st.st_uid != uid || st.st_gid != gid) && fchown(fd, uid, gid) != 0) {
        snprintf(err, errlen, "spool %s: chown lock file: %s", spool, strerror(errno));
        close(fd);
        return -1;
    }
    lock_write_pid(fd);
    *fdp = fd;
    return 0;
}

/* The index files a root-run tool may have created while no daemon ran
 * (mxkeepctl's read-only listings, mdb_stat or mdb_copy as root create
 * lock.mdb owned by root, 0600), which the unprivileged daemon could then
 * not open.  Under the spool lock, as root, give them back to the mail
 * user.  Only a plain file with one name, owned by root, opened without
 * following a symlink: the mail user owns the directory and must not be
 * able to steer root's chown to another file. */
static const char *const index_files[] = { "index/lock.mdb", "index/data.mdb" };

static void index_files_reclaim(const char *spool, uid_t uid, gid_t gid)
{
    if (geteuid() != 0)
        return;
    for (size_t i = 0; i < sizeof index_files / sizeof index_files[0]; i++) {
        char path[PATH_MAX];
        struct stat st;
        if (spool_from_cwd)
            snprintf(path, sizeof path, "%s", index_files[i]);
        else if ((size_t)snprintf(path, sizeof path, "%s/%s", spool, index_files[i]) >= sizeof path)
            continue;
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
            continue;   /* absent (a new spool) or a symlink: left alone */
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1 && st.st_uid == 0 &&
            uid != 0) {
            if (fchown(fd, uid, gid) == 0)
                log_info("spool %s: %s was root's (a tool run as root?): given to the mail user",
                         spool, index_files[i]);
            else
                log_warn("spool %s: cannot give %s to the mail user: %s", spool, index_files[i],
                         strerror(errno));
        }
        close(fd);
    }
}

int spool_lock(const char *spool, uid_t uid, gid_t gid, char *err, size_t errlen)
{
    char path[PATH_MAX];
    if (spool_lock_fd >= 0)
        return 0;
    if (spool_from_cwd)
        snprintf(path, sizeof path, "%s", SPOOL_LOCK_FILE);
    else if ((size_t)snprintf(path, sizeof path, "%s/" SPOOL_LOCK_FILE, spool) >= sizeof path) {
        snprintf(err, errlen, "spool %s: path too long", spool);
        return -1;
    }
    int r = lock_take(AT_FDCWD, path, spool, uid, gid, &spool_lock_fd, err, errlen);
    if (r == 0)
        index_files_reclaim(spool, uid, gid);
    return r;
}

void spool_lock_update_pid(void)
{
    if (spool_lock_fd >= 0)
        lock_write_pid(spool_lock_fd);
}

struct qdb *spool_db(struct spool *s)
{
    return s->db;
}

int spool_msg_get(struct spool *s, const char *qid, struct qmsg *out)
{
    return qdb_msg_get(s->db, qid, out);
}

int spool_rcpt_list(struct spool *s, const char *qid, struct qrcpt *out, size_t max, size_t *n)
{
    return qdb_rcpt_list(s->db, qid, out, max, n);
}

int spool_dest_get(struct spool *s, const char *domain, struct qdest *out)
{
    return qdb_dest_get(s->db, domain, out);
}

long spool_dest_each(struct spool *s, int (*fn)(void *arg, const struct qdest *d), void *arg)
{
    return qdb_dest_each(s->db, fn, arg);
}

int spool_due_first(struct spool *s, int64_t *when, char qid[QID_SIZE])
{
    return qdb_due_first(s->db, when, qid);
}

long spool_msg_count(struct spool *s)
{
    return qdb_msg_count(s->db);
}

long spool_held_count(struct spool *s)
{
    return qdb_held_count(s->db);
}

int spool_kept_stats(struct spool *s, struct qdb_kept_stats *out)
{
    return qdb_kept_stats(s->db, out);
}

long spool_kept_count(struct spool *s, const char *domain, int64_t since, int64_t until,
                      const char *addr)
{
    return qdb_kept_count(s->db, domain, since, until, addr, NULL);
}

long spool_kept_oldest(struct spool *s, char (*out)[QID_SIZE], uint64_t *size, long max)
{
    return qdb_kept_oldest(s->db, out, size, max);
}

long spool_maint_each(struct spool *s, int (*fn)(void *arg, const struct qmaint *m), void *arg)
{
    return qdb_maint_each(s->db, fn, arg);
}

long spool_page(struct spool *s, const char *domain, char after[QID_SIZE],
                char (*out)[QID_SIZE], long max)
{
    return qdb_page(s->db, domain, after, out, max);
}

struct spool *spool_open(const struct conf *c, struct event_base *base, char *err, size_t errlen)
{
    char path[PATH_MAX];
    struct spool *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "spool: out of memory");
        return NULL;
    }
    s->rootfd = -1;
    s->lockfd = -1;
    s->q_tail = &s->q_head;
    s->d_tail = &s->d_head;
    s->batch_max = c->commit_batch > 0 ? (size_t)c->commit_batch : SPOOL_DEFAULT_BATCH;
    s->reserve = c->limits.disk_reserve > 0 ? (unsigned long long)c->limits.disk_reserve : 0;
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    /* The reopen back-off waits on the monotonic clock. */
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);

    /* mxkeepd enters its spool while still root (spool_open_from_cwd):
     * relative paths then reach it after the privilege drop whatever the
     * modes of its parent directories. */
    const char *root = spool_from_cwd ? "." : c->spool;
    if (mkdir(root, SPOOL_DIR_MODE) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "spool %s: %s", c->spool, strerror(errno));
        goto fail;
    }
    s->rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->rootfd < 0) {
        snprintf(err, errlen, "spool %s: %s", c->spool, strerror(errno));
        goto fail;
    }
    /* Recovery below removes files: only with the spool to ourselves. */
    if (spool_lock_fd < 0) {
        int r = lock_take(s->rootfd, SPOOL_LOCK_FILE, c->spool, geteuid(), getegid(), &s->lockfd,
                          err, errlen);
        if (r != 0)
            goto fail;
    }
    if (spool_mkdirs(s, err, errlen) < 0)
        goto fail;
    if ((size_t)snprintf(path, sizeof path, "%s/" SPOOL_INDEX_DIR, root) >= sizeof path) {
        snprintf(err, errlen, "spool: path too long");
        goto fail;
    }
    size_t map = c->lmdb_map_size > 0 ? (size_t)c->lmdb_map_size : SPOOL_DEFAULT_MAP;
    if (!(s->db = qdb_open(path, map, err, errlen)))
        goto fail;
    /* LMDB syncs its files but not the directory holding them: make the
     * entries of a new environment durable before anything is promised. */
    if (fsync_at(s->rootfd, SPOOL_INDEX_DIR) < 0) {
        snprintf(err, errlen, "spool: fsync index: %s", strerror(errno));
        goto fail;
    }

    recover_orphans(s);
    if (qdb_msg_each(s->db, "", LONG_MAX, recover_missing_cb, s) < 0) {
        snprintf(err, errlen, "spool: cannot read the index");
        goto fail;
    }
    char newest[QID_SIZE];
    if (qdb_newest_qid(s->db, newest) == 0 && newest[0])
        qid_seed(newest);

    s->done_ev = event_new(base, -1, 0, spool_done_cb, s);
    s->kick_ev = event_new(base, -1, 0, spool_kick_cb, s);
    s->index_ev = event_new(base, -1, 0, spool_index_cb, s);
    if (!s->done_ev || !s->kick_ev || !s->index_ev) {
        snprintf(err, errlen, "spool: event_new failed");
        goto fail;
    }
    int e = pthread_create(&s->writer, NULL, writer_main, s);
    if (e) {
        snprintf(err, errlen, "spool: writer thread: %s", strerror(e));
        goto fail;
    }
    s->writer_started = 1;
    /* Named for admins (top -H, ps -L) and for tests that single it out. */
    pthread_setname_np(s->writer, "mxkeep-spool");
    return s;
fail:
    spool_close(s);
    return NULL;
}

void spool_close(struct spool *s)
{
    if (!s)
        return;
    if (s->writer_started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->writer, NULL);
        struct spool_stats st;
        spool_stats_get(s, &st);
        log_info("spool: %llu messages committed in %llu transactions, %llu map grows, "
                 "%llu failures", (unsigned long long)st.commits, (unsigned long long)st.batches,
                 (unsigned long long)st.map_grows, (unsigned long long)st.failures);
    }
    /* Completions nobody will hear: the callers are going away with us. */
    struct spool_ticket *t = take_done(s);
    while (t) {
        struct spool_ticket *next = t->next;
        ticket_free(t);
        t = next;
    }
    if (s->done_ev)
        event_free(s->done_ev);
    if (s->kick_ev)
        event_free(s->kick_ev);
    if (s->index_ev)
        event_free(s->index_ev);
    qdb_close(s->db);
    if (s->rootfd >= 0)
        close(s->rootfd);
    if (s->lockfd >= 0)
        close(s->lockfd);       /* releases the lock: the index is closed */
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* ---------- reads ---------- */

int spool_body_read(struct spool *s, const struct qmsg *m, struct evbuffer *out)
{
    if (!qid_valid(m->qid)) {
        errno = EINVAL;
        return -1;
    }
    if (m->flags & QMSG_F_INLINE) {
        size_t cap = m->size ? (size_t)m->size : 1, len = cap;
        void *buf = malloc(cap);
        if (!buf)
            return -1;
        int r = qdb_body_get(s->db, m->qid, buf, &len);
        if (r == QDB_ERR && len > cap) {
            /* The record says a size the body does not have: trust the body. */
            void *p = realloc(buf, len);
            if (!p) {
                free(buf);
                return -1;
            }
            buf = p;
            r = qdb_body_get(s->db, m->qid, buf, &len);
        }
        if (r == 0 && evbuffer_add(out, buf, len) < 0) {
            r = QDB_ERR;
            errno = ENOMEM;
        } else if (r == QDB_NOTFOUND) {
            errno = ENOENT;
        } else if (r != 0) {
            errno = EIO;
        }
        free(buf);
        return r == 0 ? 0 : -1;
    }
    char path[SPOOL_RELPATH_MAX];
    struct stat st;
    body_path(path, sizeof path, m->qid);
    int fd = openat(s->rootfd, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (st.st_size == 0) {
        close(fd);
        return 0;
    }
    /* Our own segment, because evbuffer_add_file leaves it unclear who
     * closes fd on failure; the segment closes it when the last reference
     * (ours, or the buffer's) goes. */
    struct evbuffer_file_segment *seg =
        evbuffer_file_segment_new(fd, 0, st.st_size, EVBUF_FS_CLOSE_ON_FREE);
    if (!seg) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    int r = evbuffer_add_file_segment(out, seg, 0, st.st_size);
    evbuffer_file_segment_free(seg);
    if (r < 0) {
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

void spool_stats_get(const struct spool *s, struct spool_stats *out)
{
    out->commits = __atomic_load_n(&s->stats.commits, __ATOMIC_RELAXED);
    out->batches = __atomic_load_n(&s->stats.batches, __ATOMIC_RELAXED);
    out->map_grows = __atomic_load_n(&s->stats.map_grows, __ATOMIC_RELAXED);
    out->failures = __atomic_load_n(&s->stats.failures, __ATOMIC_RELAXED);
    out->index_failures = __atomic_load_n(&s->stats.index_failures, __ATOMIC_RELAXED);
    out->index_reopens = __atomic_load_n(&s->stats.index_reopens, __ATOMIC_RELAXED);
}

void spool_body_unlink_if_gone(struct spool *s, const char *qid)
{
    struct qmsg m;
    char path[64];
    if (!qid_valid(qid) || qdb_msg_get(s->db, qid, &m) != QDB_NOTFOUND)
        return;
    body_path(path, sizeof path, qid);
    /* The record is gone and committed: the file is now an orphan.  An
     * unlink is a metadata change, not a sync; a crash before it only
     * leaves an orphan that the next open removes. */
    if (unlinkat(s->rootfd, path, 0) < 0 && errno != ENOENT)
        log_warn("%s: unlink body: %s", qid, strerror(errno));
}

size_t spool_outstanding(const struct spool *s)
{
    return s->outstanding;
}

int spool_free_space(const struct spool *s, unsigned long long *octets)
{
    struct statvfs sv;
    /* Through the open directory: the path may be out of the mail user's
     * reach after the privilege drop. */
    if (fstatvfs(s->rootfd, &sv) != 0)
        return -1;
    *octets = (unsigned long long)sv.f_bavail * sv.f_frsize;
    return 0;
}
