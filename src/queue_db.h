/*
 * queue_db.h - the LMDB index of the spool: versioned records for messages,
 * recipients and destinations, plus the indexes that let every question
 * ("all mail for D", "how many for D", "what is due next") be answered
 * without a scan.
 *
 * Named databases (each record starts with a version byte; fields are
 * encoded explicitly, never as raw structs):
 *   msg      QID                         -> struct qmsg
 *   rcpt     QID '\0' be32(index)        -> struct qrcpt
 *   body     QID                         -> message octets (small bodies)
 *   dest     domain                      -> struct qdest (state + counters)
 *   by_dest  domain -> QID  (DUPSORT: oldest first, one entry per message
 *                            and destination with a pending recipient)
 *   due      be64(time) QID              -> "" (expiry / retry timers)
 *   held     QID                         -> "" (messages in quarantine)
 *   kept     domain '\0' be64(delivered) QID be32(index) -> ""  (one per kept
 *            copy: a recipient QRCPT_KEPT, by domain then delivery time)
 *   kept_msg QID -> be64(size)  (messages that stay only for kept copies:
 *            no pending or quarantined recipient; QID order is oldest first)
 *   maint    domain '\0' kind origin     -> struct qmaint (holds, windows)
 *
 * Threads: reads may run on any thread (each call opens and closes its own
 * short read transaction; MDB_NOTLS).  Writes happen only inside a write
 * transaction handed out by spool.c's writer thread (struct qdb_txn);
 * nothing here holds a transaction across calls.  The environment never
 * uses MDB_NOSYNC, MDB_NOMETASYNC or MDB_MAPASYNC: a commit is durable
 * when mdb_txn_commit returns.
 *
 * Details of the implementation callers may rely on:
 *   - a recipient's index (rcpt key, qrcpt.index) is its position in the
 *     array given to qdb_msg_put; qdb_rcpt_update finds it by r->index;
 *   - dest and by_dest keys are the domain folded to ASCII lower case, and
 *     every domain argument is folded the same way;
 *   - qdb_msg_delete removes the due entry qdb_msg_put made (at the
 *     earliest recipient expiry); other due entries are their owner's to
 *     delete, and a due entry whose message is gone is stale (drop it);
 *   - on a failed qdb_txn_commit errno is ENOSPC (disk or map full) or EIO.
 *
 * Errors: functions return 0 on success, QDB_NOTFOUND, QDB_MAPFULL (the
 * writer grows the map and runs the batch again), or QDB_ERR (logged once
 * by the function that saw it).
 */
#ifndef MXKEEP_QUEUE_DB_H
#define MXKEEP_QUEUE_DB_H

#include <stddef.h>
#include <stdint.h>
#include "qid.h"
#include "smtp_parse.h"

#define QDB_NOTFOUND 1
#define QDB_MAPFULL  2
#define QDB_ERR     (-1)

#define QMSG_F_8BIT      0x01u   /* body has octets >= 0x80 */
#define QMSG_F_SMTPUTF8  0x02u   /* SMTPUTF8 given at MAIL */
#define QMSG_F_INLINE    0x04u   /* body stored in the body database */
#define QMSG_F_DSN       0x08u   /* a bounce or delay notice we made */
#define QMSG_F_QUARANTINE 0x10u  /* held in quarantine (quarantine.c): its
                                    recipients are QRCPT_QUARANTINED */
#define QMSG_F_KEPT      0x20u   /* has (or had) kept copies: kept_until is
                                    their due entry (keep_delivered) */

/* What the backup learned about the sender (spf.c, dkim.c); recorded, not
 * enforced: the primary decides, bounce = "authenticated" consults it. */
#define QMSG_AUTH_SPF_DONE         0x01u  /* SPF of MAIL FROM evaluated */
#define QMSG_AUTH_SPF_PASS         0x02u  /* ... and the MAIL FROM identity passed */
#define QMSG_AUTH_DKIM_DONE        0x04u  /* DKIM verification finished */
#define QMSG_AUTH_DKIM_SENDER_PASS 0x08u  /* a valid signature whose d= is the
                                             sender's domain or a parent of it */
#define QMSG_AUTH_RESULTS_MAX 1024        /* RFC 8601 resinfo text, NUL incl. */
#define QMSG_QREASON_MAX      512         /* quarantine reason, NUL incl. */

struct qmsg {
    char qid[QID_SIZE];
    int64_t arrival;                    /* unix seconds */
    uint64_t size;                      /* stored body octets, Received incl. */
    uint32_t flags;                     /* QMSG_F_* */
    uint32_t nrcpt;
    int body;                           /* enum smtp_body */
    int ret;                            /* enum smtp_ret */
    char envid[SMTP_ENVID_MAX + 1];
    char sender[SMTP_PATH_MAX + 1];     /* "" is the null sender */
    char client_addr[64];
    char client_name[256];
    char helo[256];
    /* Record version 2 (version 1 records read with these zero). */
    uint32_t auth_flags;                /* QMSG_AUTH_* */
    char auth_results[QMSG_AUTH_RESULTS_MAX]; /* "spf=pass smtp.mailfrom=a.example; ..."
                                           (RFC 8601 resinfo, no authserv-id) */
    int64_t quarantined;                /* unix seconds it went to quarantine, 0 never */
    int64_t quarantine_until;           /* its due entry: removed from quarantine then */
    char quarantine_reason[QMSG_QREASON_MAX];
    /* Record version 3 (older records read with it zero). */
    int64_t kept_until;                 /* due entry of the earliest kept copy's
                                           removal (QMSG_F_KEPT), 0 none */
};

enum qrcpt_state {
    QRCPT_PENDING = 0,
    QRCPT_SENT,        /* final: primary accepted */
    QRCPT_BOUNCED,     /* final: primary refused for good, DSN queued */
    QRCPT_EXPIRED,     /* final: retention over, DSN queued */
    QRCPT_DELETED,     /* final: admin removed it */
    QRCPT_QUARANTINED, /* held: not scheduled, keeps the message (quarantine.c) */
    QRCPT_KEPT         /* delivered (primary's 2xx) and its copy kept until
                          kept_until (keep_delivered): never scheduled, keeps
                          the message, back to PENDING only by a replay */
};

struct qrcpt {
    uint32_t index;
    int state;                          /* enum qrcpt_state */
    int notify;                         /* SMTP_NOTIFY_* mask, 0 = default */
    uint32_t attempts;
    int64_t expiry;                     /* unix seconds: arrival + retention */
    int64_t last_try;                   /* unix seconds, 0 = never */
    char addr[SMTP_PATH_MAX + 1];       /* local@domain */
    char domain[SMTP_DOMAIN_MAX + 1];   /* destination: the served domain */
    char orcpt[SMTP_ORCPT_MAX + 40];    /* "rfc822;addr", "" when not given */
    char last_reply[512];               /* last reply from the primary */
    /* Record version 2 (version 1 records read with these zero). */
    int64_t delivered;                  /* unix seconds of the 2xx, while QRCPT_KEPT */
    int64_t kept_until;                 /* the copy goes then (QRCPT_KEPT) */
    /* Record version 3 (older records read with paused 0, warned -1). */
    int64_t paused;                     /* seconds its delay warning was moved out
                                           by maintenance (qdb_msg_pause) */
    int64_t warned;                     /* unix seconds its delay warning went,
                                           0 not yet, -1 unknown (an older record:
                                           only its first due entry warns) */
};

enum qdest_state { QDEST_UNKNOWN = 0, QDEST_UP, QDEST_DOWN, QDEST_HELD };

struct qdest {
    char domain[SMTP_DOMAIN_MAX + 1];
    int state;                          /* enum qdest_state */
    int64_t state_since;
    int64_t next_probe;                 /* unix seconds, 0 = none planned */
    uint32_t backoff_step;
    uint64_t nmsg;                      /* messages with a pending recipient here */
    uint64_t nbytes;                    /* their body octets */
    char last_error[512];
};

/* Holds and maintenance windows (maint.c): who asked, when, until when. */
enum qmaint_kind { QMAINT_HOLD = 1, QMAINT_WINDOW = 2, QMAINT_CLOCK = 3 };
enum qmaint_origin { QMAINT_RUNTIME = 1, QMAINT_CONFIG = 2 };
#define QMAINT_NOTE_MAX 256
#define QMAINT_UID_NONE 0xffffffffu
struct qmaint {
    char domain[SMTP_DOMAIN_MAX + 1];   /* "" for the clock record */
    int kind;                           /* enum qmaint_kind */
    int origin;                         /* enum qmaint_origin */
    int64_t start;                      /* unix seconds: since when (clock: last seen) */
    int64_t until;                      /* unix seconds, 0 = until stopped */
    int64_t created;                    /* when the record was made */
    uint32_t uid;                       /* who asked, QMAINT_UID_NONE = the config */
    char note[QMAINT_NOTE_MAX];
    /* A window's end (maint.c): 0 running; 1 ended at `ended`, expiry
     * being moved out (cursor: the last QID done); 2 done (a scheduled
     * window kept until its end so it does not start again). */
    int phase;
    int64_t ended;
    char cursor[QID_SIZE];
};

struct qdb;
struct qdb_txn;                         /* a write transaction (writer thread) */

/* Open (create) the environment in dir with the initial map size.  On
 * failure returns NULL and a one-line reason in err. */
struct qdb *qdb_open(const char *dir, size_t map_size, char *err, size_t errlen);
/* Open an existing environment read-only (mxkeepctl's listings beside a
 * running daemon): creates nothing, never writes. */
struct qdb *qdb_open_readonly(const char *dir, char *err, size_t errlen);
void qdb_close(struct qdb *db);                 /* accepts NULL */
/* Has the environment failed for good (LMDB's MDB_PANIC after a failed
 * meta-page write)?  Then every read and write fails quietly until
 * qdb_reopen() succeeds.  Any thread. */
int qdb_failed(struct qdb *db);
/* Close and open the environment again (writer thread, no write
 * transaction open; waits for readers).  The struct qdb stays the same
 * object, so borrowed pointers remain valid.  0, or QDB_ERR with a one-line
 * reason in err (the environment then stays closed: call again later). */
int qdb_reopen(struct qdb *db, char *err, size_t errlen);

/* --- Reads: own short read transaction each, any thread. --- */
int qdb_msg_get(struct qdb *db, const char *qid, struct qmsg *out);
/* Up to max recipients of qid into out; *n gets how many. */
int qdb_rcpt_list(struct qdb *db, const char *qid, struct qrcpt *out, size_t max, size_t *n);
int qdb_dest_get(struct qdb *db, const char *domain, struct qdest *out);
/* Copy an inline body; *len is in: buffer size, out: body length.
 * QDB_ERR with *len set to the needed size when buf is too small. */
int qdb_body_get(struct qdb *db, const char *qid, void *buf, size_t *len);
/* QIDs waiting for domain, oldest first, starting after `after` ("" for
 * the start); calls fn for each until fn returns non-zero or max reached.
 * Returns the count visited. */
long qdb_dest_walk(struct qdb *db, const char *domain, const char *after, long max,
                   int (*fn)(void *arg, const char *qid), void *arg);
/* Every destination record, in domain order. */
long qdb_dest_each(struct qdb *db, int (*fn)(void *arg, const struct qdest *d), void *arg);
/* Every message, QID order (arrival order), starting after `after`. */
long qdb_msg_each(struct qdb *db, const char *after, long max,
                  int (*fn)(void *arg, const struct qmsg *m), void *arg);
/* The pager: up to max QIDs in queue order (oldest first) into out, every
 * message when domain is NULL, else those waiting for domain; starting
 * after `after` ("" for the start), which is then set to the last QID
 * returned, so the next call resumes there.  Returns how many, or -1. */
long qdb_page(struct qdb *db, const char *domain, char after[QID_SIZE], char (*out)[QID_SIZE],
              long max);
/* First due entry at or before `now`: 0 and fills *when and qid, or QDB_NOTFOUND. */
int qdb_due_first(struct qdb *db, int64_t *when, char qid[QID_SIZE]);
/* The newest QID in msg ("" when empty), to seed qid_seed(). */
int qdb_newest_qid(struct qdb *db, char qid[QID_SIZE]);
/* Messages in quarantine (the held index, O(1)), and each of their QIDs
 * in QID order until fn returns non-zero; the count visited or -1. */
long qdb_held_count(struct qdb *db);
long qdb_held_each(struct qdb *db, int (*fn)(void *arg, const char *qid), void *arg);
/* Every hold/window record, in key order (domain, kind, origin). */
long qdb_maint_each(struct qdb *db, int (*fn)(void *arg, const struct qmaint *m), void *arg);
/* Messages in msg that are mail (waiting or in quarantine): kept-only
 * messages (kept_msg) are not counted (O(1) from LMDB's stats). */
long qdb_msg_count(struct qdb *db);

/* Kept copies (keep_delivered).  Totals: copies (kept recipients), the
 * messages that stay only for them and their octets (what dropping them
 * would give back).  O(1) but for bytes, a walk of kept_msg. */
struct qdb_kept_stats {
    long copies;
    long messages;
    uint64_t bytes;
};
int qdb_kept_stats(struct qdb *db, struct qdb_kept_stats *out);
/* Kept copies of domain delivered in [since, until] (until 0: no end),
 * only those to addr when addr is non-NULL (case-insensitive); -1 on a
 * read failure (or no memory for messages).  messages, when not NULL,
 * gets how many distinct messages those copies belong to.  A range of the
 * kept index: no scan of other domains. */
long qdb_kept_count(struct qdb *db, const char *domain, int64_t since, int64_t until,
                    const char *addr, long *messages);
/* Up to max kept-only messages, oldest first, into out (and their body
 * octets into size, when not NULL); how many or -1. */
long qdb_kept_oldest(struct qdb *db, char (*out)[QID_SIZE], uint64_t *size, long max);

/* --- Writes: only with a qdb_txn from the writer (spool.c). --- */
/* Store a new message: msg record, its recipients, by_dest entries and the
 * dest counters (one per distinct recipient domain), an inline body when
 * body != NULL, and a due entry at the earliest recipient expiry.  A
 * message with QMSG_F_QUARANTINE goes straight into quarantine: its
 * pending recipients are stored QRCPT_QUARANTINED (no by_dest, no dest
 * counters) and the due entry is at m->quarantine_until instead. */
int qdb_msg_put(struct qdb_txn *t, const struct qmsg *m, const struct qrcpt *r, size_t n,
                const void *body, size_t body_len);
/* The message record as this write transaction sees it. */
int qdb_msg_get_txn(struct qdb_txn *t, const char *qid, struct qmsg *out);
/* Rewrite the message record's own fields (auth, quarantine, flags);
 * size, nrcpt and the recipients are not touched by this. */
int qdb_msg_update(struct qdb_txn *t, const struct qmsg *m);
/* Quarantine (the record side; policy is quarantine.c's).  qdb_msg_hold
 * marks the message QMSG_F_QUARANTINE with reason, since = now and a due
 * entry at until; with all, it turns every recipient still PENDING into
 * QRCPT_QUARANTINED too (by_dest and dest counters follow); recipients the
 * caller already set QRCPT_QUARANTINED in this transaction stay so.  A
 * message already held keeps its first reason and times.  QDB_NOTFOUND
 * when the message is gone or has nothing to hold.
 * qdb_msg_release puts every QRCPT_QUARANTINED recipient back to PENDING
 * with the given expiry (0: keep each one's own) and no attempts, moves
 * the due entry there and clears the mark; QDB_NOTFOUND unless held. */
int qdb_msg_hold(struct qdb_txn *t, const char *qid, const char *reason, int64_t now,
                 int64_t until, int all);
/* The end of a quarantine (its retention ran out, or the admin deleted
 * it): QRCPT_QUARANTINED recipients become QRCPT_DELETED, the mark and
 * its due entry go, and the message is settled (removed unless a
 * recipient is still pending).  QDB_NOTFOUND unless held. */
int qdb_msg_unhold_delete(struct qdb_txn *t, const char *qid);
int qdb_msg_release(struct qdb_txn *t, const char *qid, int64_t expiry);
/* Update one recipient; when it goes final and it was the last pending one
 * for its domain, drops the by_dest entry and the dest counters.  A
 * recipient entering QRCPT_KEPT (delivered set, kept_until its removal)
 * gets its kept index entry, and the message QMSG_F_KEPT with a due entry
 * at the earliest kept_until; leaving QRCPT_KEPT drops the index entry
 * (the due entry stays: qdb_kept_expire finds nothing then). */
int qdb_rcpt_update(struct qdb_txn *t, const char *qid, const struct qrcpt *r);
/* One recipient as this write transaction sees it (a writer that must
 * decide on the current state, not on a copy read earlier). */
int qdb_rcpt_get(struct qdb_txn *t, const char *qid, uint32_t index, struct qrcpt *out);
/* Remove the message when no recipient is pending or quarantined any more (the outcome
 * of its last delivery or expiry); a message already gone is fine.  Run
 * it in the same transaction as the recipient updates, so two
 * destinations finishing one message at once cannot both miss it. */
int qdb_msg_settle(struct qdb_txn *t, const char *qid);
/* Kept copies, the writes (keep_delivered; replay.c, deliver_expire.c).
 * qdb_kept_expire: every QRCPT_KEPT recipient whose kept_until <= now
 * becomes QRCPT_SENT (*n of them), the message's kept due entry moves to
 * the next kept copy's kept_until (or goes), and the message is settled.
 * qdb_kept_drop: every kept copy of a kept-only message goes (the disk
 * is short), and with them the message; *n copies.  QDB_NOTFOUND when it
 * is not kept-only.
 * qdb_kept_replay: the kept copies qdb_kept_count would count become
 * PENDING again (attempts 0, expiry as given, a new attempt: at-least-
 * once), by_dest and counters follow, due entries at expiry; *n copies,
 * and up to max of their QIDs (each once) into qids, *nq of them. */
int qdb_kept_expire(struct qdb_txn *t, const char *qid, int64_t now, long *n);
int qdb_kept_drop(struct qdb_txn *t, const char *qid, long *n);
int qdb_kept_replay(struct qdb_txn *t, const char *domain, int64_t since, int64_t until,
                    const char *addr, int64_t expiry, long *n, char (*qids)[QID_SIZE],
                    size_t max, size_t *nq);
/* Remove a message and everything that points to it (counters adjusted). */
int qdb_msg_delete(struct qdb_txn *t, const char *qid);
int qdb_dest_put(struct qdb_txn *t, const struct qdest *d);   /* state fields; counters kept */
int qdb_due_put(struct qdb_txn *t, int64_t when, const char *qid);
int qdb_due_del(struct qdb_txn *t, int64_t when, const char *qid);

/* Holds and windows: one record per (domain, kind, origin), replaced. */
int qdb_maint_put(struct qdb_txn *t, const struct qmaint *m);
int qdb_maint_del(struct qdb_txn *t, const char *domain, int kind, int origin);
/* The end of a maintenance window [start, end) of domain: every PENDING
 * recipient of qid for domain has its expiry moved out by the time the
 * message spent in the window (end - max(start, arrival)); the message's
 * due entry moves to the new earliest expiry.  With warn_after (the delay
 * warning's delay, 0 = off) a recipient not warned yet whose warning was
 * due at or after the window's start has it moved out by the same time
 * (paused), and every recipient not warned yet gets a due entry at its
 * warning's time (sent then, or at once if that time has passed). */
int qdb_msg_pause(struct qdb_txn *t, const char *qid, const char *domain, int64_t start,
                  int64_t end, int64_t warn_after);

/* --- For spool.c's writer only. --- */
int qdb_txn_begin(struct qdb *db, struct qdb_txn **t);
int qdb_txn_commit(struct qdb_txn *t);          /* frees t */
void qdb_txn_abort(struct qdb_txn *t);          /* frees t, accepts NULL */
/* Nested transaction so one failing operation does not sink the batch. */
int qdb_txn_child(struct qdb_txn *parent, struct qdb_txn **child);
/* Double the map (no transaction may be open).  0 or QDB_ERR (at the
 * configured ceiling or out of address space: the caller then fails the
 * batch with 452 4.3.1). */
int qdb_grow(struct qdb *db);

#endif
