/*
 * spool.h - the durable spool: message bodies plus the LMDB index, and the
 * writer thread that makes them durable in groups.
 *
 * Layout under the spool directory (created 0700 on open):
 *   index/        LMDB environment (queue_db.h)
 *   msg/XX/QID    bodies larger than the inline limit; XX = last 2 QID chars
 * Bodies up to `inline_max` octets are kept in memory while they arrive and
 * stored in the LMDB body database in the commit transaction, so a small
 * message costs no file, no fsync and no directory entry of its own.
 *
 * Durability contract (DEVELOPERS.md "Durable means durable"): the done
 * callback of spool_commit() reports 0 only after (1) a file body has been
 * written, fdatasync'ed, and its directory fsync'ed, and (2) the LMDB
 * transaction holding its records has committed (LMDB syncs on commit).
 * The record is the commit point: after a crash, a body file with no msg
 * record is an orphan and is removed at open; a msg record whose file is
 * missing is logged and moved to quarantine, never silently dropped.
 *
 * Threads: every function here is called on the loop thread.  The writer
 * thread runs batches and hands completions back to the loop through an
 * event made active with event_active(), never touching sessions itself.
 * The loop never waits on the disk except in spool_open/spool_close.
 *
 * Ownership: spool_open() -> spool_close() (accepts NULL; drains pending
 * work first).  spool_body_new() -> either spool_commit() (which takes the
 * body) or spool_body_free() (which discards the partial file).
 */
#ifndef MXKEEP_SPOOL_H
#define MXKEEP_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "queue_db.h"

struct event_base;
struct evbuffer;
struct conf;

struct spool;
struct spool_body;
struct spool_ticket;

/* Completion of a commit or write, on the loop thread.  err: 0 durable,
 * ENOSPC (disk or map full: 452 4.3.1), or another errno (451 4.3.0). */
typedef void (*spool_done_fn)(void *arg, int err);

/*
 * The spool lock (Postfix's master.lock): one daemon per spool, because a
 * second one's recovery would remove body files the first is writing and
 * both would deliver the same mail.  The lock is flock() on the file
 * "lock" in the spool, holding the owner's pid in decimal.  mxkeepd takes
 * it as root, before it binds, forks or drops privileges (the file is then
 * given to uid/gid); flock, not fcntl, because a flock lock belongs to the
 * open file description, which the child of daemonize's fork shares, so it
 * stays held when the parent exits (an fcntl lock belongs to the process
 * and would not pass to the child).  Held until the process exits.
 * Returns 0, SPOOL_LOCK_BUSY with "spool DIR is in use by mxkeepd pid N"
 * in err, or -1 with another one-line reason.
 * Readers (mxkeepctl's listings) never take it: LMDB serves them beside
 * the daemon.  spool_open() takes it itself when the process does not
 * hold it yet (tests, tools).
 */
#define SPOOL_LOCK_BUSY 1
int spool_lock(const char *spool, uid_t uid, gid_t gid, char *err, size_t errlen);
/* Write our pid into the lock file again (after daemonize's fork). */
void spool_lock_update_pid(void);

/* Open or create the spool at c->spool, run recovery, start the writer.
 * Fatal problems return NULL with a one-line reason in err. */
struct spool *spool_open(const struct conf *c, struct event_base *base, char *err, size_t errlen);
void spool_close(struct spool *s);
/* The process's working directory is the spool (mxkeepd chdirs there as
 * root before dropping privileges): spool_open then uses relative paths,
 * which need no search permission on the spool's parent directories. */
void spool_open_from_cwd(void);
/*
 * Reads and iteration of the index, for the modules that schedule, list
 * and count: they go through the spool, which owns the index and may
 * reopen it under them (index failures, below).  Each is one short read
 * transaction with the result of the queue_db.h read of the same name;
 * spool_page is the pager for every "collect a page, resume after the
 * last QID" loop (qdb_page).
 */
int spool_msg_get(struct spool *s, const char *qid, struct qmsg *out);
int spool_rcpt_list(struct spool *s, const char *qid, struct qrcpt *out, size_t max, size_t *n);
int spool_dest_get(struct spool *s, const char *domain, struct qdest *out);
long spool_dest_each(struct spool *s, int (*fn)(void *arg, const struct qdest *d), void *arg);
int spool_due_first(struct spool *s, int64_t *when, char qid[QID_SIZE]);
long spool_msg_count(struct spool *s);
long spool_held_count(struct spool *s);         /* messages in quarantine */
/* Kept copies (keep_delivered; replay.c): totals, a domain's copies in a
 * range of delivery times, the oldest kept-only messages. */
int spool_kept_stats(struct spool *s, struct qdb_kept_stats *out);
long spool_kept_count(struct spool *s, const char *domain, int64_t since, int64_t until,
                      const char *addr);
long spool_kept_oldest(struct spool *s, char (*out)[QID_SIZE], uint64_t *size, long max);
long spool_page(struct spool *s, const char *domain, char after[QID_SIZE],
                char (*out)[QID_SIZE], long max);
/* The index itself, for the unit tests (t_spool) only: the daemon's
 * modules read through the API above.  The object stays valid across a
 * reopen. */
struct qdb *spool_db(struct spool *s);

/* A body being received for qid.  Returns NULL with errno on failure. */
struct spool_body *spool_body_new(struct spool *s, const char *qid);
/* Append octets.  0, or -1 with errno (ENOSPC, EIO...). */
int spool_body_write(struct spool_body *b, const void *buf, size_t n);
uint64_t spool_body_size(const struct spool_body *b);
/* Discard an uncommitted body (unlinks its file).  Accepts NULL. */
void spool_body_free(struct spool_body *b);

/*
 * Make a message durable: body b (taken over, whatever the outcome), the
 * message record m and its n recipients.  done(arg, err) runs later on the
 * loop thread, exactly once, and cannot be cancelled: it is the commit's
 * completion, where every effect of the stored message hangs (its log
 * line, counters, scheduling), whatever became of the connection or
 * request that asked for it; arg is owned by the request until then.  A
 * requester that goes away detaches itself from arg, never from the
 * spool.  The returned ticket is valid until done runs.
 * NULL (errno ENOMEM, or ESHUTDOWN while closing) means nothing was queued
 * and done will not run; b has been discarded.  The spool sets the stored
 * m->size, m->nrcpt and QMSG_F_INLINE itself from b and n.
 * Do not call spool_close() from a done callback.
 */
struct spool_ticket *spool_commit(struct spool *s, struct spool_body *b,
                                  const struct qmsg *m, const struct qrcpt *r, size_t n,
                                  spool_done_fn done, void *arg);

/* A generic write in the next batch: fn runs on the WRITER thread inside a
 * child transaction and must only call qdb_* write functions on t and read
 * what arg holds (owned by the caller until done runs).  fn may run more
 * than once (map growth retries the batch): it must be idempotent. */
typedef int (*spool_txn_fn)(struct qdb_txn *t, void *arg);
struct spool_ticket *spool_write(struct spool *s, spool_txn_fn fn, void *arg,
                                 spool_done_fn done, void *done_arg);

/* spool_write/spool_delete return NULL (errno set) when nothing was
 * queued; done then never runs.  A delete of an unknown QID completes with
 * ENOENT; a generic fn returning QDB_NOTFOUND likewise, QDB_ERR with EIO. */
/* Remove a message (records and body) in the next batch. */
struct spool_ticket *spool_delete(struct spool *s, const char *qid,
                                  spool_done_fn done, void *arg);

/*
 * Post-commit updates of a message record, in the next batch (done as for
 * spool_write: ENOENT when the message is gone or, for release, not held).
 * spool_msg_auth_set: OR flags (QMSG_AUTH_*) into auth_flags and append
 * text (RFC 8601 resinfo, may be NULL) to auth_results with "; " between
 * (DKIM finishes after the 250; the text is cut at the field's bound).
 * spool_quarantine: hold every pending recipient of a committed message
 * in quarantine (qdb_msg_hold) with reason, until a removal at `until`.
 * spool_release: back from quarantine to the queue, recipients expiring
 * at `expiry` (qdb_msg_release).
 * To quarantine at commit instead, set QMSG_F_QUARANTINE, quarantined,
 * quarantine_until and quarantine_reason in the qmsg given to
 * spool_commit (quarantine_prepare() in quarantine.h does).
 */
struct spool_ticket *spool_msg_auth_set(struct spool *s, const char *qid, uint32_t flags,
                                        const char *text, spool_done_fn done, void *arg);
struct spool_ticket *spool_quarantine(struct spool *s, const char *qid, const char *reason,
                                      int64_t until, spool_done_fn done, void *arg);
struct spool_ticket *spool_release(struct spool *s, const char *qid, int64_t expiry,
                                   spool_done_fn done, void *arg);
/* Remove what quarantine holds of a message (qdb_msg_unhold_delete); the
 * body file goes when the message is gone. */
struct spool_ticket *spool_quarantine_delete(struct spool *s, const char *qid,
                                             spool_done_fn done, void *arg);

/* After a spool_write() that may have removed a message (qdb_msg_settle):
 * if its record is gone, unlink its body file.  Loop thread. */
void spool_body_unlink_if_gone(struct spool *s, const char *qid);

/* Read a stored body for delivery: an inline body is appended to out; a
 * file body is appended with evbuffer_add_file (no copy in memory).
 * 0, or -1 with errno (ENOENT: body missing). */
int spool_body_read(struct spool *s, const struct qmsg *m, struct evbuffer *out);

/*
 * Index failures.  When LMDB fails for good (MDB_PANIC after a failed
 * meta-page write) the writer answers the commits of the moment (451),
 * keeps the writes and deletes to run again after the reopen (spool_txn_fn
 * is idempotent), closes the environment and opens it again, retrying
 * with back-off while that fails (new requests then fail at once); the outage is logged once, and counted on the loop thread
 * (STAT_SPOOL_INDEX_FAILURES / _REOPENS).  fn runs on the loop thread after
 * each successful reopen, so the owner of deliveries can resume the work
 * that failed meanwhile.  Readers keep their struct qdb: it survives.
 */
typedef void (*spool_reopened_fn)(void *arg);
void spool_set_reopen_hook(struct spool *s, spool_reopened_fn fn, void *arg);

/* Requests queued whose completion has not run yet (shutdown waits for
 * them so no outcome is dropped; spool_close drops those still left, the
 * loop being gone).  Loop thread. */
size_t spool_outstanding(const struct spool *s);

/* Free octets for unprivileged use on the spool's file system.  0, or -1
 * with errno. */
int spool_free_space(const struct spool *s, unsigned long long *octets);

/* Figures for logs and metrics. */
struct spool_stats {
    uint64_t commits;         /* messages committed */
    uint64_t batches;         /* LMDB write transactions */
    uint64_t map_grows;
    uint64_t failures;
    uint64_t index_failures;  /* times the LMDB environment failed */
    uint64_t index_reopens;   /* times it was reopened after a failure */
};
void spool_stats_get(const struct spool *s, struct spool_stats *out);

#endif
