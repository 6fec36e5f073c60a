/*
 * queue_db.c - the LMDB index of the spool (see queue_db.h).
 *
 * Owns: the LMDB environment, its named databases and the record encoding.
 * Every record starts with a version byte; integers are fixed-width
 * big-endian, strings are a be16 length and the octets.  Decoders check
 * every length and refuse unknown versions, so a damaged or newer record
 * is reported (QDB_ERR, logged with its QID) instead of misread.
 *
 * Invariants kept inside each write transaction:
 *   - by_dest holds (domain, QID) exactly when the message has a PENDING
 *     recipient for that domain, and dest.nmsg / dest.nbytes count exactly
 *     those pairs, so ETRN answers in O(1).
 *   - a recipient's index is its position in the array given to
 *     qdb_msg_put (the rcpt key), whatever r[i].index held.
 * Domain keys (dest, by_dest) are folded to lower case.
 *
 * Never: opens the environment with MDB_NOSYNC, MDB_NOMETASYNC,
 * MDB_MAPASYNC or MDB_WRITEMAP (a commit must be durable when it returns,
 * and a stray write must not reach the map); holds a transaction across
 * calls.
 *
 * Threads: reads run on any thread in their own read transaction, under a
 * read lock; qdb_grow() remaps under the write lock of that same rwlock,
 * because LMDB forbids resizing while any transaction of the process is
 * open and readers on the loop thread cannot know when the writer grows.
 * qdb_reopen() replaces the environment under that same write lock, so a
 * struct qdb borrowed by readers elsewhere stays valid across a reopen:
 * only the MDB_env inside it changes, and never while a read is open.
 *
 * A failed meta-page write leaves LMDB in MDB_PANIC: every later
 * transaction of the process fails until the environment is closed and
 * opened again.  Such a failure is remembered (qdb_failed()) and reads and
 * writes then fail at once, quietly: the spool logs the outage once and
 * reopens (spool.c).
 */
#include "config.h"
#include "queue_db.h"

#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "log.h"

#define QDB_VERSION        1
/* msg records: version 2 adds the auth and quarantine fields; version 1
 * records still read (those fields zero). */
#define QDB_MSG_VERSION    3           /* v3: kept_until (keep_delivered) */
/* rcpt records: version 2 adds delivered and kept_until (QRCPT_KEPT);
 * version 1 records still read (those fields zero), and both share the
 * fixed offsets rcpt_peek() reads. */
#define QDB_RCPT_VERSION   3
#define QDB_MAXDBS         16          /* named databases, room to grow */
#define QDB_FILE_MODE      0600
#define QDB_DIR_MODE       0700
/* Growth stops here: past this the disk is the limit anyway. */
#define QDB_MAP_CEILING    ((size_t)1 << 40)
#define QDB_REC_MAX        8192            /* largest encoded record */
#define QDB_STR_MAX        0xffffu         /* be16 length */
#define QDB_RCPT_KEY_LEN   (QID_LEN + 1 + 4)
#define QDB_DUE_KEY_LEN    (8 + QID_LEN)
#define QDB_KEPT_KEY_MAX   (SMTP_DOMAIN_MAX + 1 + 8 + QID_LEN + 4)
/* Fixed offsets in a v1 rcpt record, read without a full decode when only
 * state and domain matter (the pending scans). */
#define QDB_RCPT_OFF_STATE  (1 + 4)
#define QDB_RCPT_OFF_EXPIRY (1 + 4 + 4 + 4 + 4)
#define QDB_RCPT_OFF_DOMAIN (QDB_RCPT_OFF_EXPIRY + 8 + 8)

struct qdb {
    MDB_env *env;               /* NULL while a reopen has not succeeded */
    MDB_dbi msg, rcpt, body, dest, by_dest, due;
    MDB_dbi held;                       /* QID -> "": messages in quarantine */
    int has_held;                       /* 0: read-only on a spool made before it */
    MDB_dbi kept, kept_msg;             /* kept copies (keep_delivered) */
    int has_kept;                       /* as has_held */
    MDB_dbi maint;                      /* holds and maintenance windows (maint.c) */
    int has_maint;                      /* 0: read-only on a spool made before it */
    pthread_rwlock_t maplock;
    char *dir;                  /* for qdb_reopen() */
    size_t map_size;
    int readonly;               /* qdb_open_readonly(): mxkeepctl */
    int failed;                 /* atomic: the environment is unusable */
};

struct qdb_txn {
    struct qdb *db;
    MDB_txn *txn;
    int child;                  /* qdb_txn_child(): commits to its parent */
};

/* ---------- encoding ---------- */

struct enc {
    unsigned char *p;
    size_t len, cap;
    int bad;
};

static void enc_bytes(struct enc *e, const void *b, size_t n)
{
    if (e->bad || n > e->cap - e->len) {
        e->bad = 1;
        return;
    }
    memcpy(e->p + e->len, b, n);
    e->len += n;
}

static void enc_u8(struct enc *e, unsigned v)
{
    unsigned char b = (unsigned char)v;
    enc_bytes(e, &b, 1);
}

static void put_be32(unsigned char *b, uint32_t v)
{
    b[0] = (unsigned char)(v >> 24);
    b[1] = (unsigned char)(v >> 16);
    b[2] = (unsigned char)(v >> 8);
    b[3] = (unsigned char)v;
}

static void put_be64(unsigned char *b, uint64_t v)
{
    put_be32(b, (uint32_t)(v >> 32));
    put_be32(b + 4, (uint32_t)v);
}

static uint32_t get_be32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static uint64_t get_be64(const unsigned char *b)
{
    return (uint64_t)get_be32(b) << 32 | get_be32(b + 4);
}

static void enc_u32(struct enc *e, uint32_t v)
{
    unsigned char b[4];
    put_be32(b, v);
    enc_bytes(e, b, sizeof b);
}

static void enc_u64(struct enc *e, uint64_t v)
{
    unsigned char b[8];
    put_be64(b, v);
    enc_bytes(e, b, sizeof b);
}

/* field is a char array: never read past it even when unterminated. */
static void enc_str(struct enc *e, const char *s, size_t fieldsize)
{
    size_t n = strnlen(s, fieldsize);
    if (n >= fieldsize || n > QDB_STR_MAX) {
        e->bad = 1;
        return;
    }
    unsigned char b[2] = { (unsigned char)(n >> 8), (unsigned char)n };
    enc_bytes(e, b, sizeof b);
    enc_bytes(e, s, n);
}

struct dec {
    const unsigned char *p;
    size_t left;
    int bad;
};

static const unsigned char *dec_take(struct dec *d, size_t n)
{
    if (d->bad || n > d->left) {
        d->bad = 1;
        return NULL;
    }
    const unsigned char *r = d->p;
    d->p += n;
    d->left -= n;
    return r;
}

static unsigned dec_u8(struct dec *d)
{
    const unsigned char *b = dec_take(d, 1);
    return b ? b[0] : 0;
}

static uint32_t dec_u32(struct dec *d)
{
    const unsigned char *b = dec_take(d, 4);
    return b ? get_be32(b) : 0;
}

static uint64_t dec_u64(struct dec *d)
{
    const unsigned char *b = dec_take(d, 8);
    return b ? get_be64(b) : 0;
}

static void dec_str(struct dec *d, char *out, size_t outsize)
{
    out[0] = '\0';
    const unsigned char *lb = dec_take(d, 2);
    if (!lb)
        return;
    size_t n = (size_t)lb[0] << 8 | lb[1];
    if (n >= outsize) {
        d->bad = 1;
        return;
    }
    const unsigned char *s = dec_take(d, n);
    if (!s)
        return;
    memcpy(out, s, n);
    out[n] = '\0';
}

/* Version check plus "all consumed, nothing left over". */
static int dec_start(struct dec *d, const MDB_val *v)
{
    d->p = v->mv_data;
    d->left = v->mv_size;
    d->bad = 0;
    return dec_u8(d) == QDB_VERSION && !d->bad ? 0 : -1;
}

static int dec_finish(const struct dec *d)
{
    return d->bad || d->left != 0 ? -1 : 0;
}

static int msg_encode(const struct qmsg *m, struct enc *e)
{
    enc_u8(e, QDB_MSG_VERSION);
    enc_u64(e, (uint64_t)m->arrival);
    enc_u64(e, m->size);
    enc_u32(e, m->flags);
    enc_u32(e, m->nrcpt);
    enc_u32(e, (uint32_t)m->body);
    enc_u32(e, (uint32_t)m->ret);
    enc_str(e, m->envid, sizeof m->envid);
    enc_str(e, m->sender, sizeof m->sender);
    enc_str(e, m->client_addr, sizeof m->client_addr);
    enc_str(e, m->client_name, sizeof m->client_name);
    enc_str(e, m->helo, sizeof m->helo);
    enc_u32(e, m->auth_flags);
    enc_str(e, m->auth_results, sizeof m->auth_results);
    enc_u64(e, (uint64_t)m->quarantined);
    enc_u64(e, (uint64_t)m->quarantine_until);
    enc_str(e, m->quarantine_reason, sizeof m->quarantine_reason);
    enc_u64(e, (uint64_t)m->kept_until);
    return e->bad ? -1 : 0;
}

static int msg_decode(const char *qid, const MDB_val *v, struct qmsg *m)
{
    struct dec d = { v->mv_data, v->mv_size, 0 };
    memset(m, 0, sizeof *m);
    unsigned ver = dec_u8(&d);
    if (d.bad || ver < 1 || ver > QDB_MSG_VERSION) {
        log_warn("%.*s: msg record: unknown version or empty", QID_LEN, qid);
        return QDB_ERR;
    }
    m->arrival = (int64_t)dec_u64(&d);
    m->size = dec_u64(&d);
    m->flags = dec_u32(&d);
    m->nrcpt = dec_u32(&d);
    m->body = (int)dec_u32(&d);
    m->ret = (int)dec_u32(&d);
    dec_str(&d, m->envid, sizeof m->envid);
    dec_str(&d, m->sender, sizeof m->sender);
    dec_str(&d, m->client_addr, sizeof m->client_addr);
    dec_str(&d, m->client_name, sizeof m->client_name);
    dec_str(&d, m->helo, sizeof m->helo);
    if (ver >= 2) {
        m->auth_flags = dec_u32(&d);
        dec_str(&d, m->auth_results, sizeof m->auth_results);
        m->quarantined = (int64_t)dec_u64(&d);
        m->quarantine_until = (int64_t)dec_u64(&d);
        dec_str(&d, m->quarantine_reason, sizeof m->quarantine_reason);
    }
    if (ver >= 3)
        m->kept_until = (int64_t)dec_u64(&d);
    if (dec_finish(&d) < 0) {
        log_warn("%.*s: msg record: malformed", QID_LEN, qid);
        return QDB_ERR;
    }
    memcpy(m->qid, qid, QID_LEN);
    m->qid[QID_LEN] = '\0';
    return 0;
}

/* Field order matters: state and domain sit at fixed offsets (see
 * QDB_RCPT_OFF_*) for rcpt_peek(). */
static int rcpt_encode(const struct qrcpt *r, uint32_t index, struct enc *e)
{
    enc_u8(e, QDB_RCPT_VERSION);
    enc_u32(e, index);
    enc_u32(e, (uint32_t)r->state);
    enc_u32(e, (uint32_t)r->notify);
    enc_u32(e, r->attempts);
    enc_u64(e, (uint64_t)r->expiry);
    enc_u64(e, (uint64_t)r->last_try);
    enc_str(e, r->domain, sizeof r->domain);
    enc_str(e, r->addr, sizeof r->addr);
    enc_str(e, r->orcpt, sizeof r->orcpt);
    enc_str(e, r->last_reply, sizeof r->last_reply);
    enc_u64(e, (uint64_t)r->delivered);
    enc_u64(e, (uint64_t)r->kept_until);
    enc_u64(e, (uint64_t)r->paused);
    enc_u64(e, (uint64_t)r->warned);
    return e->bad ? -1 : 0;
}

static int rcpt_decode(const char *qid, const MDB_val *v, struct qrcpt *r)
{
    struct dec d = { v->mv_data, v->mv_size, 0 };
    memset(r, 0, sizeof *r);
    unsigned ver = dec_u8(&d);
    if (d.bad || ver < 1 || ver > QDB_RCPT_VERSION) {
        log_warn("%.*s: rcpt record: unknown version or empty", QID_LEN, qid);
        return QDB_ERR;
    }
    r->index = dec_u32(&d);
    r->state = (int)dec_u32(&d);
    r->notify = (int)dec_u32(&d);
    r->attempts = dec_u32(&d);
    r->expiry = (int64_t)dec_u64(&d);
    r->last_try = (int64_t)dec_u64(&d);
    dec_str(&d, r->domain, sizeof r->domain);
    dec_str(&d, r->addr, sizeof r->addr);
    dec_str(&d, r->orcpt, sizeof r->orcpt);
    dec_str(&d, r->last_reply, sizeof r->last_reply);
    if (ver >= 2) {
        r->delivered = (int64_t)dec_u64(&d);
        r->kept_until = (int64_t)dec_u64(&d);
    }
    if (ver >= 3) {
        r->paused = (int64_t)dec_u64(&d);
        r->warned = (int64_t)dec_u64(&d);
    } else {
        r->warned = -1;         /* sent or not: not recorded before version 3 */
    }
    if (dec_finish(&d) < 0) {
        log_warn("%.*s: rcpt record: malformed", QID_LEN, qid);
        return QDB_ERR;
    }
    return 0;
}

/* State and domain of an rcpt record without decoding the rest. */
static int rcpt_peek(const char *qid, const MDB_val *v, int *state, const char **dom,
                     size_t *domlen)
{
    const unsigned char *p = v->mv_data;
    if (v->mv_size < QDB_RCPT_OFF_DOMAIN + 2 || p[0] < 1 || p[0] > QDB_RCPT_VERSION)
        goto bad;
    *state = (int)get_be32(p + QDB_RCPT_OFF_STATE);
    *domlen = (size_t)p[QDB_RCPT_OFF_DOMAIN] << 8 | p[QDB_RCPT_OFF_DOMAIN + 1];
    if (*domlen > v->mv_size - QDB_RCPT_OFF_DOMAIN - 2)
        goto bad;
    *dom = (const char *)p + QDB_RCPT_OFF_DOMAIN + 2;
    return 0;
bad:
    log_warn("%.*s: rcpt record: unknown version or malformed", QID_LEN, qid);
    return QDB_ERR;
}

static int dest_encode(const struct qdest *x, struct enc *e)
{
    enc_u8(e, QDB_VERSION);
    enc_u32(e, (uint32_t)x->state);
    enc_u64(e, (uint64_t)x->state_since);
    enc_u64(e, (uint64_t)x->next_probe);
    enc_u32(e, x->backoff_step);
    enc_u64(e, x->nmsg);
    enc_u64(e, x->nbytes);
    enc_str(e, x->last_error, sizeof x->last_error);
    return e->bad ? -1 : 0;
}

static int dest_decode(const MDB_val *k, const MDB_val *v, struct qdest *x)
{
    struct dec d;
    memset(x, 0, sizeof *x);
    size_t kl = k->mv_size < sizeof x->domain ? k->mv_size : sizeof x->domain - 1;
    memcpy(x->domain, k->mv_data, kl);
    x->domain[kl] = '\0';
    if (dec_start(&d, v) < 0) {
        log_warn("dest %s: record: unknown version or empty", x->domain);
        return QDB_ERR;
    }
    x->state = (int)dec_u32(&d);
    x->state_since = (int64_t)dec_u64(&d);
    x->next_probe = (int64_t)dec_u64(&d);
    x->backoff_step = dec_u32(&d);
    x->nmsg = dec_u64(&d);
    x->nbytes = dec_u64(&d);
    dec_str(&d, x->last_error, sizeof x->last_error);
    if (dec_finish(&d) < 0) {
        log_warn("dest %s: record: malformed", x->domain);
        return QDB_ERR;
    }
    return 0;
}

/* ---------- keys ---------- */

static MDB_val val_of(const void *p, size_t n)
{
    MDB_val v = { .mv_size = n, .mv_data = (void *)p };
    return v;
}

static void rcpt_key(unsigned char k[QDB_RCPT_KEY_LEN], const char *qid, uint32_t index)
{
    memcpy(k, qid, QID_LEN);
    k[QID_LEN] = '\0';
    put_be32(k + QID_LEN + 1, index);
}

static void due_key(unsigned char k[QDB_DUE_KEY_LEN], int64_t when, const char *qid)
{
    put_be64(k, (uint64_t)when);
    memcpy(k + 8, qid, QID_LEN);
}

/* Lower-cased copy of a domain for use as a key; 0 on an empty or
 * over-long domain. */
static size_t domain_key(char out[SMTP_DOMAIN_MAX + 1], const char *dom, size_t n)
{
    if (n == 0 || n > SMTP_DOMAIN_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = dom[i];
        out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    out[n] = '\0';
    return n;
}

/* kept key: domain '\0' be64(delivered) QID be32(index); only the domain
 * and time when qid is NULL (the start of a range).  Its length, 0 on a
 * bad domain. */
static size_t kept_key(unsigned char k[QDB_KEPT_KEY_MAX], const char *dom, int64_t delivered,
                       const char *qid, uint32_t index)
{
    char key[SMTP_DOMAIN_MAX + 1];
    size_t kl = domain_key(key, dom, strnlen(dom, SMTP_DOMAIN_MAX + 1));
    if (!kl)
        return 0;
    memcpy(k, key, kl + 1);
    put_be64(k + kl + 1, (uint64_t)(delivered < 0 ? 0 : delivered));
    if (!qid)
        return kl + 1 + 8;
    memcpy(k + kl + 1 + 8, qid, QID_LEN);
    put_be32(k + kl + 1 + 8 + QID_LEN, index);
    return kl + 1 + 8 + QID_LEN + 4;
}

static int rc_map(int rc)
{
    switch (rc) {
    case MDB_SUCCESS: return 0;
    case MDB_NOTFOUND: return QDB_NOTFOUND;
    case MDB_MAP_FULL: return QDB_MAPFULL;
    default: return QDB_ERR;
    }
}

/* Map an LMDB failure for the caller, logging the ones that are faults. */
static int rc_fail(int rc, const char *what, const char *qid)
{
    int r = rc_map(rc);
    if (r == QDB_ERR)
        log_warn("%s: %s: %s", qid ? qid : "queue", what, mdb_strerror(rc));
    return r;
}

/* ---------- environment ---------- */

static int open_dbis(struct qdb *db, char *err, size_t errlen)
{
    MDB_txn *txn;
    /* Read-only (mxkeepctl): the databases must be there already. */
    unsigned txnflags = db->readonly ? MDB_RDONLY : 0, create = db->readonly ? 0 : MDB_CREATE;
    int rc = mdb_txn_begin(db->env, NULL, txnflags, &txn);
    if (rc) {
        snprintf(err, errlen, "lmdb txn: %s", mdb_strerror(rc));
        return -1;
    }
    struct { const char *name; unsigned flags; MDB_dbi *dbi; } t[] = {
        { "msg", 0, &db->msg },         { "rcpt", 0, &db->rcpt },
        { "body", 0, &db->body },       { "dest", 0, &db->dest },
        { "by_dest", MDB_DUPSORT, &db->by_dest }, { "due", 0, &db->due },
        { "kept", 0, &db->kept },       { "kept_msg", 0, &db->kept_msg },
        { "held", 0, &db->held },       { "maint", 0, &db->maint },
    };
    db->has_kept = 1;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        rc = mdb_dbi_open(txn, t[i].name, t[i].flags | create, t[i].dbi);
        if (rc == MDB_NOTFOUND && db->readonly && t[i].dbi == &db->held) {
            db->has_held = 0;           /* no quarantine yet: an empty one */
            continue;
        }
        if (rc == MDB_NOTFOUND && db->readonly &&
            (t[i].dbi == &db->kept || t[i].dbi == &db->kept_msg)) {
            db->has_kept = 0;           /* made before keep_delivered: none kept */
            continue;
        }
        if (rc == MDB_NOTFOUND && db->readonly && t[i].dbi == &db->maint) {
            db->has_maint = 0;          /* no holds stored yet */
            continue;
        }
        if (t[i].dbi == &db->maint)
            db->has_maint = 1;
        if (t[i].dbi == &db->held)
            db->has_held = 1;

        if (rc) {
            snprintf(err, errlen, "lmdb database %s: %s", t[i].name, mdb_strerror(rc));
            mdb_txn_abort(txn);
            return -1;
        }
    }
    rc = mdb_txn_commit(txn);
    if (rc) {
        snprintf(err, errlen, "lmdb commit: %s", mdb_strerror(rc));
        return -1;
    }
    return 0;
}

/* Create and open db->env from db->dir and db->map_size.  On failure
 * db->env is NULL and err says why. */
static int env_open(struct qdb *db, char *err, size_t errlen)
{
    int rc = mdb_env_create(&db->env);
    if (rc) {
        db->env = NULL;
        snprintf(err, errlen, "lmdb: %s", mdb_strerror(rc));
        return -1;
    }
    mdb_env_set_maxdbs(db->env, QDB_MAXDBS);
    /* No mapsize before open: LMDB then keeps the size the file was last
     * grown to, and we only raise it to the configured size below. */
    rc = mdb_env_open(db->env, db->dir, MDB_NOTLS | (db->readonly ? MDB_RDONLY : 0),
                      QDB_FILE_MODE);
    if (rc) {
        snprintf(err, errlen, "%s: %s", db->dir, mdb_strerror(rc));
        goto fail;
    }
    MDB_envinfo info;
    mdb_env_info(db->env, &info);
    if (db->map_size > info.me_mapsize) {
        rc = mdb_env_set_mapsize(db->env, db->map_size);
        if (rc) {
            snprintf(err, errlen, "lmdb map size %zu: %s", db->map_size, mdb_strerror(rc));
            goto fail;
        }
    }
    if (open_dbis(db, err, errlen) < 0)
        goto fail;
    return 0;
fail:
    mdb_env_close(db->env);
    db->env = NULL;
    return -1;
}

static struct qdb *qdb_open_mode(const char *dir, size_t map_size, int readonly, char *err,
                                 size_t errlen)
{
    struct qdb *db = calloc(1, sizeof *db);
    if (!db || !(db->dir = strdup(dir))) {
        free(db);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    db->map_size = map_size;
    db->readonly = readonly;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    /* Readers may nest (a walk callback reading a record): a waiting
     * grow must not block the inner read lock. */
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_READER_NP);
    pthread_rwlock_init(&db->maplock, &ra);
    pthread_rwlockattr_destroy(&ra);

    if (!readonly && mkdir(dir, QDB_DIR_MODE) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        goto fail;
    }
    if (env_open(db, err, errlen) < 0)
        goto fail;
    return db;
fail:
    qdb_close(db);
    return NULL;
}

struct qdb *qdb_open(const char *dir, size_t map_size, char *err, size_t errlen)
{
    return qdb_open_mode(dir, map_size, 0, err, errlen);
}

struct qdb *qdb_open_readonly(const char *dir, char *err, size_t errlen)
{
    return qdb_open_mode(dir, 0, 1, err, errlen);
}

void qdb_close(struct qdb *db)
{
    if (!db)
        return;
    if (db->env)
        mdb_env_close(db->env);
    pthread_rwlock_destroy(&db->maplock);
    free(db->dir);
    free(db);
}

/* An LMDB result that means the environment is unusable: remember it, so
 * the owner reopens and nobody retries against it meanwhile. */
static void note_fatal(struct qdb *db, int rc)
{
    if (rc == MDB_PANIC)
        __atomic_store_n(&db->failed, 1, __ATOMIC_RELEASE);
}

int qdb_failed(struct qdb *db)
{
    return __atomic_load_n(&db->failed, __ATOMIC_ACQUIRE);
}

int qdb_reopen(struct qdb *db, char *err, size_t errlen)
{
    pthread_rwlock_wrlock(&db->maplock);
    if (db->env)
        mdb_env_close(db->env);
    db->env = NULL;
    int r = env_open(db, err, errlen);
    if (r == 0)
        __atomic_store_n(&db->failed, 0, __ATOMIC_RELEASE);
    pthread_rwlock_unlock(&db->maplock);
    return r == 0 ? 0 : QDB_ERR;
}

/* Begin a read transaction under the read lock.  Another process (mxkeepctl
 * never writes, but a second daemon instance could) may have grown the map:
 * adopt its size and retry. */
static int rd_begin(struct qdb *db, MDB_txn **txn)
{
    for (;;) {
        pthread_rwlock_rdlock(&db->maplock);
        /* A failed environment: fail quietly, the spool logged it. */
        if (!db->env || qdb_failed(db)) {
            pthread_rwlock_unlock(&db->maplock);
            return QDB_ERR;
        }
        int rc = mdb_txn_begin(db->env, NULL, MDB_RDONLY, txn);
        if (rc == 0)
            return 0;
        pthread_rwlock_unlock(&db->maplock);
        note_fatal(db, rc);
        if (rc == MDB_PANIC)
            return QDB_ERR;
        if (rc != MDB_MAP_RESIZED) {
            log_warn("queue: read transaction: %s", mdb_strerror(rc));
            return QDB_ERR;
        }
        pthread_rwlock_wrlock(&db->maplock);
        rc = mdb_env_set_mapsize(db->env, 0);
        pthread_rwlock_unlock(&db->maplock);
        if (rc) {
            log_warn("queue: adopt map size: %s", mdb_strerror(rc));
            return QDB_ERR;
        }
    }
}

static void rd_end(struct qdb *db, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&db->maplock);
}

/* ---------- reads (any transaction) ---------- */

static int msg_get_txn(struct qdb *db, MDB_txn *txn, const char *qid, struct qmsg *out)
{
    MDB_val k = val_of(qid, QID_LEN), v;
    int rc = mdb_get(txn, db->msg, &k, &v);
    if (rc)
        return rc_fail(rc, "msg get", qid);
    return msg_decode(qid, &v, out);
}

static int dest_get_txn(struct qdb *db, MDB_txn *txn, const char *key, size_t klen,
                        struct qdest *out)
{
    MDB_val k = val_of(key, klen), v;
    int rc = mdb_get(txn, db->dest, &k, &v);
    if (rc)
        return rc_fail(rc, "dest get", key);
    return dest_decode(&k, &v, out);
}

int qdb_msg_get(struct qdb *db, const char *qid, struct qmsg *out)
{
    MDB_txn *txn;
    if (!qid_valid(qid))
        return QDB_NOTFOUND;
    if (rd_begin(db, &txn))
        return QDB_ERR;
    int r = msg_get_txn(db, txn, qid, out);
    rd_end(db, txn);
    return r;
}

int qdb_rcpt_list(struct qdb *db, const char *qid, struct qrcpt *out, size_t max, size_t *n)
{
    MDB_txn *txn;
    MDB_cursor *c;
    unsigned char kb[QDB_RCPT_KEY_LEN];
    *n = 0;
    if (!qid_valid(qid))
        return QDB_NOTFOUND;
    if (rd_begin(db, &txn))
        return QDB_ERR;
    int r = 0, rc = mdb_cursor_open(txn, db->rcpt, &c);
    if (rc) {
        r = rc_fail(rc, "rcpt cursor", qid);
        goto out;
    }
    rcpt_key(kb, qid, 0);
    MDB_val k = val_of(kb, sizeof kb), v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0 && *n < max;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != QDB_RCPT_KEY_LEN || memcmp(k.mv_data, kb, QID_LEN + 1) != 0)
            break;
        if ((r = rcpt_decode(qid, &v, &out[*n])) != 0)
            break;
        (*n)++;
    }
    if (r == 0 && rc != 0 && rc != MDB_NOTFOUND)
        r = rc_fail(rc, "rcpt list", qid);
    mdb_cursor_close(c);
out:
    rd_end(db, txn);
    return r;
}

int qdb_dest_get(struct qdb *db, const char *domain, struct qdest *out)
{
    char key[SMTP_DOMAIN_MAX + 1];
    MDB_txn *txn;
    size_t kl = domain_key(key, domain, strlen(domain));
    if (!kl)
        return QDB_NOTFOUND;
    if (rd_begin(db, &txn))
        return QDB_ERR;
    int r = dest_get_txn(db, txn, key, kl, out);
    rd_end(db, txn);
    return r;
}

int qdb_body_get(struct qdb *db, const char *qid, void *buf, size_t *len)
{
    MDB_txn *txn;
    if (!qid_valid(qid))
        return QDB_NOTFOUND;
    if (rd_begin(db, &txn))
        return QDB_ERR;
    MDB_val k = val_of(qid, QID_LEN), v;
    int r, rc = mdb_get(txn, db->body, &k, &v);
    if (rc) {
        r = rc_fail(rc, "body get", qid);
    } else if (v.mv_size > *len) {
        *len = v.mv_size;
        r = QDB_ERR;
    } else {
        if (v.mv_size)
            memcpy(buf, v.mv_data, v.mv_size);
        *len = v.mv_size;
        r = 0;
    }
    rd_end(db, txn);
    return r;
}

long qdb_dest_walk(struct qdb *db, const char *domain, const char *after, long max,
                   int (*fn)(void *arg, const char *qid), void *arg)
{
    char key[SMTP_DOMAIN_MAX + 1], qid[QID_SIZE];
    MDB_txn *txn;
    MDB_cursor *c;
    size_t kl = domain_key(key, domain, strlen(domain));
    if (!kl || max <= 0)
        return 0;
    if (rd_begin(db, &txn))
        return -1;
    long count = 0;
    int rc = mdb_cursor_open(txn, db->by_dest, &c);
    if (rc) {
        rc_fail(rc, "by_dest cursor", domain);
        count = -1;
        goto out;
    }
    MDB_val k = val_of(key, kl), v;
    if (after && *after) {
        v = val_of(after, strnlen(after, QID_LEN));
        rc = mdb_cursor_get(c, &k, &v, MDB_GET_BOTH_RANGE);
        if (rc == 0 && v.mv_size == strnlen(after, QID_LEN) &&
            memcmp(v.mv_data, after, v.mv_size) == 0)
            rc = mdb_cursor_get(c, &k, &v, MDB_NEXT_DUP);
    } else {
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_KEY);
    }
    for (; rc == 0 && count < max; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT_DUP)) {
        if (v.mv_size != QID_LEN)
            continue;
        memcpy(qid, v.mv_data, QID_LEN);
        qid[QID_LEN] = '\0';
        count++;
        if (fn(arg, qid))
            break;
    }
    mdb_cursor_close(c);
out:
    rd_end(db, txn);
    return count;
}

long qdb_dest_each(struct qdb *db, int (*fn)(void *arg, const struct qdest *d), void *arg)
{
    MDB_txn *txn;
    MDB_cursor *c;
    struct qdest d;
    if (rd_begin(db, &txn))
        return -1;
    long count = 0;
    int rc = mdb_cursor_open(txn, db->dest, &c);
    if (rc) {
        rc_fail(rc, "dest cursor", NULL);
        count = -1;
        goto out;
    }
    MDB_val k, v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (dest_decode(&k, &v, &d) != 0)
            continue;
        count++;
        if (fn(arg, &d))
            break;
    }
    mdb_cursor_close(c);
out:
    rd_end(db, txn);
    return count;
}

long qdb_msg_each(struct qdb *db, const char *after, long max,
                  int (*fn)(void *arg, const struct qmsg *m), void *arg)
{
    MDB_txn *txn;
    MDB_cursor *c;
    struct qmsg *m = malloc(sizeof *m);
    char qid[QID_SIZE];
    if (!m)
        return -1;
    if (rd_begin(db, &txn)) {
        free(m);
        return -1;
    }
    long count = 0;
    int rc = mdb_cursor_open(txn, db->msg, &c);
    if (rc) {
        rc_fail(rc, "msg cursor", NULL);
        count = -1;
        goto out;
    }
    MDB_val k, v;
    if (after && *after) {
        k = val_of(after, strnlen(after, QID_LEN));
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        if (rc == 0 && k.mv_size == strnlen(after, QID_LEN) &&
            memcmp(k.mv_data, after, k.mv_size) == 0)
            rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    } else {
        rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    }
    for (; rc == 0 && count < max; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != QID_LEN)
            continue;
        memcpy(qid, k.mv_data, QID_LEN);
        qid[QID_LEN] = '\0';
        /* A record we cannot read is skipped here (and logged by the
         * decoder); it stays in the index for a newer version or a human. */
        if (msg_decode(qid, &v, m) != 0)
            continue;
        count++;
        if (fn(arg, m))
            break;
    }
    mdb_cursor_close(c);
out:
    rd_end(db, txn);
    free(m);
    return count;
}

struct page_fill {
    char (*out)[QID_SIZE];
    long n, max;
};

static int page_add(void *arg, const char *qid)
{
    struct page_fill *p = arg;
    snprintf(p->out[p->n++], QID_SIZE, "%s", qid);
    return p->n >= p->max;
}

long qdb_page(struct qdb *db, const char *domain, char after[QID_SIZE], char (*out)[QID_SIZE],
              long max)
{
    struct page_fill p = { out, 0, max };
    if (max <= 0)
        return 0;
    if (domain) {
        if (qdb_dest_walk(db, domain, after, max, page_add, &p) < 0)
            return -1;
    } else {
        MDB_txn *txn;
        MDB_cursor *c;
        if (rd_begin(db, &txn))
            return -1;
        int rc = mdb_cursor_open(txn, db->msg, &c);
        if (rc) {
            rc_fail(rc, "msg cursor", NULL);
            rd_end(db, txn);
            return -1;
        }
        MDB_val k, v;
        size_t al = strnlen(after, QID_LEN);
        if (al) {
            k = val_of(after, al);
            rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
            if (rc == 0 && k.mv_size == al && memcmp(k.mv_data, after, al) == 0)
                rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
        } else {
            rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
        }
        for (; rc == 0 && p.n < max; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            if (k.mv_size != QID_LEN)
                continue;
            memcpy(out[p.n], k.mv_data, QID_LEN);
            out[p.n++][QID_LEN] = '\0';
        }
        mdb_cursor_close(c);
        rd_end(db, txn);
    }
    if (p.n > 0)
        snprintf(after, QID_SIZE, "%s", out[p.n - 1]);
    return p.n;
}

int qdb_due_first(struct qdb *db, int64_t *when, char qid[QID_SIZE])
{
    MDB_txn *txn;
    MDB_cursor *c;
    if (rd_begin(db, &txn))
        return QDB_ERR;
    int r, rc = mdb_cursor_open(txn, db->due, &c);
    if (rc) {
        r = rc_fail(rc, "due cursor", NULL);
        goto out;
    }
    MDB_val k, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    if (rc == 0 && k.mv_size == QDB_DUE_KEY_LEN) {
        *when = (int64_t)get_be64(k.mv_data);
        memcpy(qid, (const char *)k.mv_data + 8, QID_LEN);
        qid[QID_LEN] = '\0';
        r = 0;
    } else if (rc == 0) {
        log_warn("queue: due entry with a bad key length %zu", k.mv_size);
        r = QDB_ERR;
    } else {
        r = rc_fail(rc, "due first", NULL);
    }
    mdb_cursor_close(c);
out:
    rd_end(db, txn);
    return r;
}

int qdb_newest_qid(struct qdb *db, char qid[QID_SIZE])
{
    MDB_txn *txn;
    MDB_cursor *c;
    qid[0] = '\0';
    if (rd_begin(db, &txn))
        return QDB_ERR;
    int r = 0, rc = mdb_cursor_open(txn, db->msg, &c);
    if (rc) {
        r = rc_fail(rc, "msg cursor", NULL);
        goto out;
    }
    MDB_val k, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    if (rc == 0 && k.mv_size == QID_LEN) {
        memcpy(qid, k.mv_data, QID_LEN);
        qid[QID_LEN] = '\0';
    } else if (rc != 0 && rc != MDB_NOTFOUND) {
        r = rc_fail(rc, "msg last", NULL);
    }
    mdb_cursor_close(c);
out:
    rd_end(db, txn);
    return r;
}

long qdb_held_count(struct qdb *db)
{
    MDB_txn *txn;
    MDB_stat st;
    if (!db->has_held)
        return 0;
    if (rd_begin(db, &txn))
        return -1;
    int rc = mdb_stat(txn, db->held, &st);
    rd_end(db, txn);
    return rc ? -1 : (long)st.ms_entries;
}

long qdb_held_each(struct qdb *db, int (*fn)(void *arg, const char *qid), void *arg)
{
    MDB_txn *txn;
    MDB_cursor *c;
    long n = 0;
    if (!db->has_held)
        return 0;
    if (rd_begin(db, &txn))
        return -1;
    if (mdb_cursor_open(txn, db->held, &c)) {
        rd_end(db, txn);
        return -1;
    }
    MDB_val k, v;
    char qid[QID_SIZE];
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != QID_LEN)
            continue;
        memcpy(qid, k.mv_data, QID_LEN);
        qid[QID_LEN] = '\0';
        n++;
        if (fn(arg, qid))
            break;
    }
    mdb_cursor_close(c);
    rd_end(db, txn);
    return n;
}

long qdb_msg_count(struct qdb *db)
{
    MDB_txn *txn;
    MDB_stat st, ks = { 0 };
    if (rd_begin(db, &txn))
        return -1;
    int rc = mdb_stat(txn, db->msg, &st);
    if (rc == 0 && db->has_kept)
        rc = mdb_stat(txn, db->kept_msg, &ks);
    rd_end(db, txn);
    /* Kept-only messages are not mail waiting: counted apart. */
    return rc ? -1 : (long)(st.ms_entries - (ks.ms_entries < st.ms_entries ? ks.ms_entries
                                                                             : st.ms_entries));
}

/* ---------- kept copies: reads ---------- */

int qdb_kept_stats(struct qdb *db, struct qdb_kept_stats *out)
{
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_stat st;
    memset(out, 0, sizeof *out);
    if (!db->has_kept)
        return 0;
    if (rd_begin(db, &txn))
        return QDB_ERR;
    int rc = mdb_stat(txn, db->kept, &st);
    if (rc == 0) {
        out->copies = (long)st.ms_entries;
        rc = mdb_stat(txn, db->kept_msg, &st);
    }
    if (rc == 0) {
        out->messages = (long)st.ms_entries;
        rc = mdb_cursor_open(txn, db->kept_msg, &c);
    }
    if (rc == 0) {
        MDB_val k, v;
        for (int r = mdb_cursor_get(c, &k, &v, MDB_FIRST); r == 0;
             r = mdb_cursor_get(c, &k, &v, MDB_NEXT))
            if (v.mv_size == 8)
                out->bytes += get_be64(v.mv_data);
        mdb_cursor_close(c);
    }
    rd_end(db, txn);
    return rc ? rc_fail(rc, "kept stats", NULL) : 0;
}

/* Walk the kept copies of domain delivered in [since, until] (until 0:
 * no end), to addr only when addr is non-NULL; fn gets each copy's QID and
 * index.  Returns how many matched, or -1. */
static long kept_walk(struct qdb *db, MDB_txn *txn, const char *domain, int64_t since,
                      int64_t until, const char *addr,
                      int (*fn)(void *arg, const char *qid, uint32_t index), void *arg)
{
    unsigned char kb[QDB_KEPT_KEY_MAX];
    MDB_cursor *c;
    long n = 0;
    size_t pl = kept_key(kb, domain, since, NULL, 0);
    if (!pl)
        return 0;
    size_t dl = pl - 8;                 /* domain and its '\0' */
    int rc = mdb_cursor_open(txn, db->kept, &c);
    if (rc) {
        rc_fail(rc, "kept cursor", domain);
        return -1;
    }
    MDB_val k = val_of(kb, pl), v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        const unsigned char *p = k.mv_data;
        if (k.mv_size != dl + 8 + QID_LEN + 4 || memcmp(p, kb, dl) != 0)
            break;
        int64_t when = (int64_t)get_be64(p + dl);
        if (until && when > until)
            break;
        char qid[QID_SIZE];
        memcpy(qid, p + dl + 8, QID_LEN);
        qid[QID_LEN] = '\0';
        uint32_t index = get_be32(p + dl + 8 + QID_LEN);
        if (addr) {
            unsigned char rk[QDB_RCPT_KEY_LEN];
            struct qrcpt r;
            rcpt_key(rk, qid, index);
            MDB_val k2 = val_of(rk, sizeof rk), v2;
            if (mdb_get(txn, db->rcpt, &k2, &v2) != 0 || rcpt_decode(qid, &v2, &r) != 0 ||
                strcasecmp(r.addr, addr) != 0)
                continue;
        }
        n++;
        if (fn && fn(arg, qid, index) != 0) {
            n = -1;
            break;
        }
    }
    mdb_cursor_close(c);
    return n;
}

/* The QIDs of the copies kept_walk visits, to count distinct messages
 * (the kept index is ordered by delivery time, so one message's copies
 * need not be adjacent). */
struct kept_qids {
    char (*qid)[QID_SIZE];
    size_t n, cap;
};

static int kept_qid_add(void *arg, const char *qid, uint32_t index)
{
    struct kept_qids *q = arg;
    (void)index;
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        void *p = realloc(q->qid, cap * sizeof *q->qid);
        if (p == NULL)
            return -1;
        q->qid = p;
        q->cap = cap;
    }
    memcpy(q->qid[q->n++], qid, QID_SIZE);
    return 0;
}

static int kept_qid_cmp(const void *a, const void *b)
{
    return memcmp(a, b, QID_SIZE);
}

long qdb_kept_count(struct qdb *db, const char *domain, int64_t since, int64_t until,
                    const char *addr, long *messages)
{
    MDB_txn *txn;
    struct kept_qids q = { NULL, 0, 0 };
    if (messages)
        *messages = 0;
    if (!db->has_kept)
        return 0;
    if (rd_begin(db, &txn))
        return -1;
    long n = kept_walk(db, txn, domain, since, until, addr, messages ? kept_qid_add : NULL, &q);
    rd_end(db, txn);
    if (messages && n > 0) {
        long m = 0;
        qsort(q.qid, q.n, sizeof *q.qid, kept_qid_cmp);
        for (size_t i = 0; i < q.n; i++)
            m += i == 0 || memcmp(q.qid[i], q.qid[i - 1], QID_SIZE) != 0;
        *messages = m;
    }
    free(q.qid);
    return n;
}

long qdb_kept_oldest(struct qdb *db, char (*out)[QID_SIZE], uint64_t *size, long max)
{
    MDB_txn *txn;
    MDB_cursor *c;
    long n = 0;
    if (!db->has_kept || max <= 0)
        return 0;
    if (rd_begin(db, &txn))
        return -1;
    if (mdb_cursor_open(txn, db->kept_msg, &c) != 0) {
        rd_end(db, txn);
        return -1;
    }
    MDB_val k, v;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && n < max;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != QID_LEN)
            continue;
        memcpy(out[n], k.mv_data, QID_LEN);
        out[n][QID_LEN] = '\0';
        if (size)
            size[n] = v.mv_size == 8 ? get_be64(v.mv_data) : 0;
        n++;
    }
    mdb_cursor_close(c);
    rd_end(db, txn);
    return n;
}

/* ---------- writes ---------- */

static int dest_put_raw(struct qdb *db, MDB_txn *txn, const char *key, size_t kl,
                        const struct qdest *d)
{
    unsigned char buf[QDB_REC_MAX];
    struct enc e = { buf, 0, sizeof buf, 0 };
    if (dest_encode(d, &e) < 0) {
        log_warn("dest %s: record does not encode", key);
        return QDB_ERR;
    }
    MDB_val k = val_of(key, kl), v = val_of(buf, e.len);
    int rc = mdb_put(txn, db->dest, &k, &v, 0);
    return rc ? rc_fail(rc, "dest put", key) : 0;
}

/* The message starts counting for domain: by_dest entry and counters.
 * An entry already there means it was counted already. */
static int dest_attach(struct qdb *db, MDB_txn *txn, const char *dom, size_t dlen,
                       const char *qid, uint64_t size, int64_t now)
{
    char key[SMTP_DOMAIN_MAX + 1];
    struct qdest d;
    size_t kl = domain_key(key, dom, dlen);
    if (!kl) {
        log_warn("%s: recipient without a valid destination domain", qid);
        return QDB_ERR;
    }
    MDB_val k = val_of(key, kl), v = val_of(qid, QID_LEN);
    int rc = mdb_put(txn, db->by_dest, &k, &v, MDB_NODUPDATA);
    if (rc == MDB_KEYEXIST)
        return 0;
    if (rc)
        return rc_fail(rc, "by_dest put", qid);
    int r = dest_get_txn(db, txn, key, kl, &d);
    if (r == QDB_NOTFOUND) {
        memset(&d, 0, sizeof d);
        d.state = QDEST_UNKNOWN;
        d.state_since = now;
    } else if (r != 0) {
        return r;
    }
    d.nmsg++;
    d.nbytes += size;
    return dest_put_raw(db, txn, key, kl, &d);
}

static int dest_detach(struct qdb *db, MDB_txn *txn, const char *dom, size_t dlen,
                       const char *qid, uint64_t size)
{
    char key[SMTP_DOMAIN_MAX + 1];
    struct qdest d;
    size_t kl = domain_key(key, dom, dlen);
    if (!kl)
        return 0;
    MDB_val k = val_of(key, kl), v = val_of(qid, QID_LEN);
    int rc = mdb_del(txn, db->by_dest, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc_fail(rc, "by_dest del", qid);
    int r = dest_get_txn(db, txn, key, kl, &d);
    if (r == QDB_NOTFOUND) {
        log_warn("%s: dest %s: counters missing", qid, key);
        return 0;
    }
    if (r)
        return r;
    if (d.nmsg == 0 || d.nbytes < size)
        log_warn("%s: dest %s: counters below zero, clamped", qid, key);
    d.nmsg = d.nmsg ? d.nmsg - 1 : 0;
    d.nbytes = d.nbytes >= size ? d.nbytes - size : 0;
    return dest_put_raw(db, txn, key, kl, &d);
}

/* Does qid still have a PENDING recipient for domain? */
static int domain_pending(struct qdb *db, MDB_txn *txn, const char *qid, const char *dom,
                          size_t dlen, int *pending)
{
    MDB_cursor *c;
    unsigned char kb[QDB_RCPT_KEY_LEN];
    *pending = 0;
    int r = 0, rc = mdb_cursor_open(txn, db->rcpt, &c);
    if (rc)
        return rc_fail(rc, "rcpt cursor", qid);
    rcpt_key(kb, qid, 0);
    MDB_val k = val_of(kb, sizeof kb), v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        int st;
        const char *d;
        size_t dl;
        if (k.mv_size != QDB_RCPT_KEY_LEN || memcmp(k.mv_data, kb, QID_LEN + 1) != 0)
            break;
        if ((r = rcpt_peek(qid, &v, &st, &d, &dl)) != 0)
            break;
        if (st == QRCPT_PENDING && dl == dlen && strncasecmp(d, dom, dl) == 0) {
            *pending = 1;
            break;
        }
    }
    if (r == 0 && rc != 0 && rc != MDB_NOTFOUND)
        r = rc_fail(rc, "rcpt scan", qid);
    mdb_cursor_close(c);
    return r;
}

static int64_t earliest_expiry(const struct qrcpt *r, size_t n)
{
    int64_t e = 0;
    for (size_t i = 0; i < n; i++)
        if (r[i].expiry > 0 && (e == 0 || r[i].expiry < e))
            e = r[i].expiry;
    return e;
}

/* The quarantine index entry of qid: put, or delete (a missing one is fine). */
static int held_op(struct qdb *db, MDB_txn *txn, const char *qid, int del)
{
    MDB_val k = val_of(qid, QID_LEN), v = val_of("", 0);
    int rc = del ? mdb_del(txn, db->held, &k, NULL) : mdb_put(txn, db->held, &k, &v, 0);
    if (del && rc == MDB_NOTFOUND)
        return 0;
    return rc ? rc_fail(rc, del ? "held del" : "held put", qid) : 0;
}

static int due_op(struct qdb *db, MDB_txn *txn, int64_t when, const char *qid, int del)
{
    unsigned char kb[QDB_DUE_KEY_LEN];
    if (!qid_valid(qid))
        return QDB_ERR;
    due_key(kb, when, qid);
    MDB_val k = val_of(kb, sizeof kb), v = val_of("", 0);
    int rc = del ? mdb_del(txn, db->due, &k, NULL) : mdb_put(txn, db->due, &k, &v, 0);
    return rc ? rc_fail(rc, del ? "due del" : "due put", qid) : 0;
}

int qdb_msg_put(struct qdb_txn *t, const struct qmsg *m, const struct qrcpt *r, size_t n,
                const void *body, size_t body_len)
{
    struct qdb *db = t->db;
    unsigned char buf[QDB_REC_MAX], kb[QDB_RCPT_KEY_LEN];
    struct enc e = { buf, 0, sizeof buf, 0 };
    if (!qid_valid(m->qid) || n > UINT32_MAX) {
        log_warn("queue: msg put with a malformed QID or recipient count");
        return QDB_ERR;
    }
    if (msg_encode(m, &e) < 0) {
        log_warn("%s: msg record does not encode", m->qid);
        return QDB_ERR;
    }
    MDB_val k = val_of(m->qid, QID_LEN), v = val_of(buf, e.len);
    int rc = mdb_put(t->txn, db->msg, &k, &v, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST) {
        log_warn("%s: msg put: QID already in the queue", m->qid);
        return QDB_ERR;
    }
    if (rc)
        return rc_fail(rc, "msg put", m->qid);
    int quar = (m->flags & QMSG_F_QUARANTINE) != 0;
    for (size_t i = 0; i < n; i++) {
        e.len = 0;
        struct qrcpt held;
        const struct qrcpt *ri = &r[i];
        if (quar && r[i].state == QRCPT_PENDING) {
            held = r[i];
            held.state = QRCPT_QUARANTINED;
            ri = &held;
        }
        if (rcpt_encode(ri, (uint32_t)i, &e) < 0) {
            log_warn("%s: rcpt %zu does not encode", m->qid, i);
            return QDB_ERR;
        }
        rcpt_key(kb, m->qid, (uint32_t)i);
        k = val_of(kb, sizeof kb);
        v = val_of(buf, e.len);
        if ((rc = mdb_put(t->txn, db->rcpt, &k, &v, 0)) != 0)
            return rc_fail(rc, "rcpt put", m->qid);
        if (ri->state != QRCPT_PENDING)
            continue;
        /* dest_attach ignores a domain already attached, so repeats of
         * a domain among the recipients count once. */
        int x = dest_attach(db, t->txn, r[i].domain, strnlen(r[i].domain, sizeof r[i].domain),
                            m->qid, m->size, m->arrival);
        if (x)
            return x;
    }
    if (body) {
        k = val_of(m->qid, QID_LEN);
        v = val_of(body, body_len);
        if ((rc = mdb_put(t->txn, db->body, &k, &v, 0)) != 0)
            return rc_fail(rc, "body put", m->qid);
    }
    if (quar && (rc = held_op(db, t->txn, m->qid, 0)) != 0)
        return rc;
    int64_t exp = quar ? m->quarantine_until : earliest_expiry(r, n);
    return exp ? due_op(db, t->txn, exp, m->qid, 0) : 0;
}

int qdb_msg_get_txn(struct qdb_txn *t, const char *qid, struct qmsg *out)
{
    if (!qid_valid(qid))
        return QDB_NOTFOUND;
    return msg_get_txn(t->db, t->txn, qid, out);
}

int qdb_msg_update(struct qdb_txn *t, const struct qmsg *m)
{
    unsigned char buf[QDB_REC_MAX];
    struct enc e = { buf, 0, sizeof buf, 0 };
    if (!qid_valid(m->qid))
        return QDB_NOTFOUND;
    MDB_val k = val_of(m->qid, QID_LEN), v;
    int rc = mdb_get(t->txn, t->db->msg, &k, &v);
    if (rc)
        return rc_fail(rc, "msg get", m->qid);
    if (msg_encode(m, &e) < 0) {
        log_warn("%s: msg record does not encode", m->qid);
        return QDB_ERR;
    }
    v = val_of(buf, e.len);
    rc = mdb_put(t->txn, t->db->msg, &k, &v, 0);
    return rc ? rc_fail(rc, "msg put", m->qid) : 0;
}

/* Re-balance by_dest and counters for one domain after a change. */
static int dest_rebalance(struct qdb *db, MDB_txn *txn, const char *qid, const char *dom,
                          int before, uint64_t *size, int *have_size)
{
    int after, r;
    size_t dl = strlen(dom);
    if ((r = domain_pending(db, txn, qid, dom, dl, &after)) != 0)
        return r;
    if (before == after)
        return 0;
    if (!*have_size) {
        struct qmsg *m = malloc(sizeof *m);
        if (!m)
            return QDB_ERR;
        r = msg_get_txn(db, txn, qid, m);
        *size = m->size;
        free(m);
        if (r)
            return r;
        *have_size = 1;
    }
    return after ? dest_attach(db, txn, dom, dl, qid, *size, 0)
                 : dest_detach(db, txn, dom, dl, qid, *size);
}

/* The kept index follows a recipient entering or leaving QRCPT_KEPT;
 * entering also marks the message QMSG_F_KEPT with a due entry at the
 * earliest kept_until.  A missing entry on the way out is fine. */
static int kept_track(struct qdb_txn *t, const char *qid, const struct qrcpt *old,
                      const struct qrcpt *r)
{
    struct qdb *db = t->db;
    unsigned char kb[QDB_KEPT_KEY_MAX];
    size_t kl;
    int rc;
    if (old && old->state == QRCPT_KEPT &&
        (kl = kept_key(kb, old->domain, old->delivered, qid, old->index)) != 0) {
        MDB_val k = val_of(kb, kl);
        rc = mdb_del(t->txn, db->kept, &k, NULL);
        if (rc && rc != MDB_NOTFOUND)
            return rc_fail(rc, "kept del", qid);
    }
    if (r->state != QRCPT_KEPT)
        return 0;
    if ((kl = kept_key(kb, r->domain, r->delivered, qid, r->index)) == 0) {
        log_warn("%s: kept copy without a valid domain", qid);
        return QDB_ERR;
    }
    MDB_val k = val_of(kb, kl), v = val_of("", 0);
    if ((rc = mdb_put(t->txn, db->kept, &k, &v, 0)) != 0)
        return rc_fail(rc, "kept put", qid);
    struct qmsg *m = malloc(sizeof *m);
    if (!m)
        return QDB_ERR;
    int x = msg_get_txn(db, t->txn, qid, m);
    if (x == 0 && (!(m->flags & QMSG_F_KEPT) || !m->kept_until ||
                   (r->kept_until && r->kept_until < m->kept_until))) {
        /* An earlier due entry, if any, stays: it finds nothing due and
         * moves on (qdb_kept_expire). */
        m->flags |= QMSG_F_KEPT;
        m->kept_until = r->kept_until;
        x = qdb_msg_update(t, m);
        if (x == 0 && r->kept_until)
            x = due_op(db, t->txn, r->kept_until, qid, 0);
    }
    free(m);
    return x;
}

int qdb_rcpt_get(struct qdb_txn *t, const char *qid, uint32_t index, struct qrcpt *out)
{
    unsigned char kb[QDB_RCPT_KEY_LEN];
    if (!qid_valid(qid))
        return QDB_NOTFOUND;
    rcpt_key(kb, qid, index);
    MDB_val k = val_of(kb, sizeof kb), v;
    int rc = mdb_get(t->txn, t->db->rcpt, &k, &v);
    if (rc)
        return rc_fail(rc, "rcpt get", qid);
    return rcpt_decode(qid, &v, out);
}

int qdb_rcpt_update(struct qdb_txn *t, const char *qid, const struct qrcpt *r)
{
    struct qdb *db = t->db;
    unsigned char kb[QDB_RCPT_KEY_LEN], buf[QDB_REC_MAX];
    struct enc e = { buf, 0, sizeof buf, 0 };
    struct qrcpt *old = malloc(2 * sizeof *old);
    int rv;
    if (!old)
        return QDB_ERR;
    if (!qid_valid(qid)) {
        rv = QDB_NOTFOUND;
        goto out;
    }
    rcpt_key(kb, qid, r->index);
    MDB_val k = val_of(kb, sizeof kb), v;
    int rc = mdb_get(t->txn, db->rcpt, &k, &v);
    if (rc) {
        rv = rc_fail(rc, "rcpt get", qid);
        goto out;
    }
    if ((rv = rcpt_decode(qid, &v, old)) != 0)
        goto out;
    /* paused (a maintenance end) and warned (the delay warning) only grow:
     * a copy read before they changed (a delivery's) does not undo them. */
    old[1] = *r;
    if (old->paused > old[1].paused)
        old[1].paused = old->paused;
    if (old->warned > old[1].warned)
        old[1].warned = old->warned;
    r = &old[1];
    int same_dom = strcasecmp(old->domain, r->domain) == 0;
    if (old->state == r->state && same_dom) {
        /* No change in pending-ness: just the record. */
        if (rcpt_encode(r, r->index, &e) < 0) {
            rv = QDB_ERR;
            goto out;
        }
        v = val_of(buf, e.len);
        rc = mdb_put(t->txn, db->rcpt, &k, &v, 0);
        rv = rc ? rc_fail(rc, "rcpt put", qid) : 0;
        if (rv == 0 && r->state == QRCPT_KEPT &&
            (old->delivered != r->delivered || old->kept_until != r->kept_until))
            rv = kept_track(t, qid, old, r);
        goto out;
    }
    int before_old, before_new = 0;
    if ((rv = domain_pending(db, t->txn, qid, old->domain, strlen(old->domain), &before_old)))
        goto out;
    if (!same_dom && (rv = domain_pending(db, t->txn, qid, r->domain,
                                          strnlen(r->domain, sizeof r->domain), &before_new)))
        goto out;
    if (rcpt_encode(r, r->index, &e) < 0) {
        log_warn("%s: rcpt %u does not encode", qid, r->index);
        rv = QDB_ERR;
        goto out;
    }
    v = val_of(buf, e.len);
    if ((rc = mdb_put(t->txn, db->rcpt, &k, &v, 0)) != 0) {
        rv = rc_fail(rc, "rcpt put", qid);
        goto out;
    }
    uint64_t size = 0;
    int have_size = 0;
    rv = dest_rebalance(db, t->txn, qid, old->domain, before_old, &size, &have_size);
    if (rv == 0 && !same_dom)
        rv = dest_rebalance(db, t->txn, qid, r->domain, before_new, &size, &have_size);
    if (rv == 0 && (old->state == QRCPT_KEPT || r->state == QRCPT_KEPT))
        rv = kept_track(t, qid, old, r);
out:
    free(old);
    return rv;
}

int qdb_msg_delete(struct qdb_txn *t, const char *qid)
{
    struct qdb *db = t->db;
    struct qmsg *m = malloc(sizeof *m);
    MDB_cursor *c = NULL;
    unsigned char kb[QDB_RCPT_KEY_LEN];
    /* Pending domains, collected before their rcpt records go. */
    char (*doms)[SMTP_DOMAIN_MAX + 1] = NULL;
    size_t ndoms = 0, capdoms = 0;
    int64_t exp = 0;
    int r;
    if (!m)
        return QDB_ERR;
    if (!qid_valid(qid)) {
        r = QDB_NOTFOUND;
        goto out;
    }
    if ((r = msg_get_txn(db, t->txn, qid, m)) != 0)
        goto out;
    int rc = mdb_cursor_open(t->txn, db->rcpt, &c);
    if (rc) {
        r = rc_fail(rc, "rcpt cursor", qid);
        goto out;
    }
    rcpt_key(kb, qid, 0);
    MDB_val k = val_of(kb, sizeof kb), v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != QDB_RCPT_KEY_LEN || memcmp(k.mv_data, kb, QID_LEN + 1) != 0)
            break;
        int st;
        const char *dom;
        size_t dl;
        if ((r = rcpt_peek(qid, &v, &st, &dom, &dl)) != 0)
            goto out;
        if (st == QRCPT_KEPT) {
            struct qrcpt kr;
            if ((r = rcpt_decode(qid, &v, &kr)) != 0 || (r = kept_track(t, qid, &kr, &(struct qrcpt){
                                                            .state = QRCPT_SENT })) != 0)
                goto out;
        }
        /* The expiry (for the due entry qdb_msg_put made) sits just before
         * the domain; rcpt_peek checked the record is long enough. */
        int64_t x = (int64_t)get_be64((const unsigned char *)v.mv_data + QDB_RCPT_OFF_EXPIRY);
        if (x > 0 && (exp == 0 || x < exp))
            exp = x;
        if (st == QRCPT_PENDING && dl > 0 && dl <= SMTP_DOMAIN_MAX) {
            size_t j;
            for (j = 0; j < ndoms; j++)
                if (strlen(doms[j]) == dl && strncasecmp(doms[j], dom, dl) == 0)
                    break;
            if (j == ndoms) {
                if (ndoms == capdoms) {
                    size_t nc = capdoms ? capdoms * 2 : 4;
                    void *p = realloc(doms, nc * sizeof *doms);
                    if (!p) {
                        r = QDB_ERR;
                        goto out;
                    }
                    doms = p;
                    capdoms = nc;
                }
                memcpy(doms[ndoms], dom, dl);
                doms[ndoms][dl] = '\0';
                ndoms++;
            }
        }
        if ((rc = mdb_cursor_del(c, 0)) != 0) {
            r = rc_fail(rc, "rcpt del", qid);
            goto out;
        }
    }
    if (rc != 0 && rc != MDB_NOTFOUND) {
        r = rc_fail(rc, "rcpt scan", qid);
        goto out;
    }
    for (size_t j = 0; j < ndoms; j++)
        if ((r = dest_detach(db, t->txn, doms[j], strlen(doms[j]), qid, m->size)) != 0)
            goto out;
    if (exp && (r = due_op(db, t->txn, exp, qid, 1)) != 0 && r != QDB_NOTFOUND)
        goto out;
    if (m->quarantine_until && m->quarantine_until != exp &&
        (r = due_op(db, t->txn, m->quarantine_until, qid, 1)) != 0 && r != QDB_NOTFOUND)
        goto out;
    if ((m->flags & QMSG_F_QUARANTINE) && (r = held_op(db, t->txn, qid, 1)) != 0)
        goto out;
    if (m->kept_until && m->kept_until != exp && m->kept_until != m->quarantine_until &&
        (r = due_op(db, t->txn, m->kept_until, qid, 1)) != 0 && r != QDB_NOTFOUND)
        goto out;
    k = val_of(qid, QID_LEN);
    {
        /* Whatever the flag says now (qdb_kept_expire clears it first). */
        rc = mdb_del(t->txn, db->kept_msg, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) {
            r = rc_fail(rc, "kept_msg del", qid);
            goto out;
        }
    }
    rc = mdb_del(t->txn, db->body, &k, NULL);
    if (rc && rc != MDB_NOTFOUND) {
        r = rc_fail(rc, "body del", qid);
        goto out;
    }
    rc = mdb_del(t->txn, db->msg, &k, NULL);
    r = rc ? rc_fail(rc, "msg del", qid) : 0;
out:
    if (c)
        mdb_cursor_close(c);
    free(doms);
    free(m);
    return r;
}

int qdb_msg_hold(struct qdb_txn *t, const char *qid, const char *reason, int64_t now,
                 int64_t until, int all)
{
    struct qmsg *m = malloc(sizeof *m);
    struct qrcpt *r = malloc(sizeof *r);
    int rv, held = 0;
    if (!m || !r) {
        rv = QDB_ERR;
        goto out;
    }
    if ((rv = qdb_msg_get_txn(t, qid, m)) != 0)
        goto out;
    for (uint32_t i = 0; i < m->nrcpt; i++) {
        if ((rv = qdb_rcpt_get(t, qid, i, r)) == QDB_NOTFOUND)
            continue;
        if (rv != 0)
            goto out;
        if (all && r->state == QRCPT_PENDING) {
            r->state = QRCPT_QUARANTINED;
            if ((rv = qdb_rcpt_update(t, qid, r)) != 0)
                goto out;
        }
        if (r->state == QRCPT_QUARANTINED)
            held = 1;
    }
    rv = 0;
    if (m->flags & QMSG_F_QUARANTINE)
        goto out;
    if (!held) {
        rv = QDB_NOTFOUND;
        goto out;
    }
    m->flags |= QMSG_F_QUARANTINE;
    m->quarantined = now;
    m->quarantine_until = until;
    snprintf(m->quarantine_reason, sizeof m->quarantine_reason, "%s", reason ? reason : "");
    if ((rv = qdb_msg_update(t, m)) == 0)
        rv = held_op(t->db, t->txn, qid, 0);
    if (rv == 0 && until)
        rv = due_op(t->db, t->txn, until, qid, 0);
out:
    free(m);
    free(r);
    return rv;
}

int qdb_msg_unhold_delete(struct qdb_txn *t, const char *qid)
{
    struct qmsg *m = malloc(sizeof *m);
    struct qrcpt *r = malloc(sizeof *r);
    int rv;
    if (!m || !r) {
        rv = QDB_ERR;
        goto out;
    }
    if ((rv = qdb_msg_get_txn(t, qid, m)) != 0)
        goto out;
    if (!(m->flags & QMSG_F_QUARANTINE)) {
        rv = QDB_NOTFOUND;
        goto out;
    }
    for (uint32_t i = 0; i < m->nrcpt; i++) {
        if ((rv = qdb_rcpt_get(t, qid, i, r)) == QDB_NOTFOUND)
            continue;
        if (rv != 0)
            goto out;
        if (r->state != QRCPT_QUARANTINED)
            continue;
        r->state = QRCPT_DELETED;
        if ((rv = qdb_rcpt_update(t, qid, r)) != 0)
            goto out;
    }
    if (m->quarantine_until &&
        (rv = due_op(t->db, t->txn, m->quarantine_until, qid, 1)) != 0 && rv != QDB_NOTFOUND)
        goto out;
    m->flags &= ~QMSG_F_QUARANTINE;
    m->quarantine_until = 0;
    if ((rv = qdb_msg_update(t, m)) == 0 && (rv = held_op(t->db, t->txn, qid, 1)) == 0)
        rv = qdb_msg_settle(t, qid);
out:
    free(m);
    free(r);
    return rv;
}

int qdb_msg_release(struct qdb_txn *t, const char *qid, int64_t expiry)
{
    struct qmsg *m = malloc(sizeof *m);
    struct qrcpt *r = malloc(sizeof *r);
    int64_t due = 0;
    int rv;
    if (!m || !r) {
        rv = QDB_ERR;
        goto out;
    }
    if ((rv = qdb_msg_get_txn(t, qid, m)) != 0)
        goto out;
    if (!(m->flags & QMSG_F_QUARANTINE)) {
        rv = QDB_NOTFOUND;
        goto out;
    }
    for (uint32_t i = 0; i < m->nrcpt; i++) {
        if ((rv = qdb_rcpt_get(t, qid, i, r)) == QDB_NOTFOUND)
            continue;
        if (rv != 0)
            goto out;
        if (r->state != QRCPT_QUARANTINED)
            continue;
        r->state = QRCPT_PENDING;
        r->attempts = 0;
        if (expiry)
            r->expiry = expiry;
        if (r->expiry && (due == 0 || r->expiry < due))
            due = r->expiry;
        if ((rv = qdb_rcpt_update(t, qid, r)) != 0)
            goto out;
    }
    if (m->quarantine_until &&
        (rv = due_op(t->db, t->txn, m->quarantine_until, qid, 1)) != 0 && rv != QDB_NOTFOUND)
        goto out;
    m->flags &= ~QMSG_F_QUARANTINE;
    m->quarantined = 0;
    m->quarantine_until = 0;
    m->quarantine_reason[0] = '\0';
    if ((rv = qdb_msg_update(t, m)) == 0)
        rv = held_op(t->db, t->txn, qid, 1);
    if (rv == 0 && due)
        rv = due_op(t->db, t->txn, due, qid, 0);
out:
    free(m);
    free(r);
    return rv;
}

int qdb_dest_put(struct qdb_txn *t, const struct qdest *d)
{
    char key[SMTP_DOMAIN_MAX + 1];
    struct qdest cur;
    size_t kl = domain_key(key, d->domain, strnlen(d->domain, sizeof d->domain));
    if (!kl) {
        log_warn("queue: dest put with an empty domain");
        return QDB_ERR;
    }
    int r = dest_get_txn(t->db, t->txn, key, kl, &cur);
    if (r != 0 && r != QDB_NOTFOUND)
        return r;
    uint64_t nmsg = r == 0 ? cur.nmsg : 0, nbytes = r == 0 ? cur.nbytes : 0;
    cur = *d;
    cur.nmsg = nmsg;
    cur.nbytes = nbytes;
    return dest_put_raw(t->db, t->txn, key, kl, &cur);
}

int qdb_due_put(struct qdb_txn *t, int64_t when, const char *qid)
{
    return due_op(t->db, t->txn, when, qid, 0);
}

int qdb_due_del(struct qdb_txn *t, int64_t when, const char *qid)
{
    return due_op(t->db, t->txn, when, qid, 1);
}

/* ---------- holds and maintenance windows (maint.c) ---------- */

/* Key: folded domain, NUL, kind, origin (the clock record: "", NUL, kind). */
#define QDB_MAINT_VERSION 1
#define QDB_MAINT_KEY_MAX (SMTP_DOMAIN_MAX + 4)

static size_t maint_key(unsigned char *kb, const char *domain, int kind, int origin)
{
    char dom[SMTP_DOMAIN_MAX + 1];
    size_t n = domain_key(dom, domain, strnlen(domain, SMTP_DOMAIN_MAX));
    memcpy(kb, dom, n);
    kb[n] = '\0';
    kb[n + 1] = (unsigned char)kind;
    kb[n + 2] = (unsigned char)origin;
    return n + 3;
}

int qdb_maint_put(struct qdb_txn *t, const struct qmaint *m)
{
    unsigned char kb[QDB_MAINT_KEY_MAX], buf[QDB_REC_MAX];
    struct enc e = { buf, 0, sizeof buf, 0 };
    enc_u8(&e, QDB_MAINT_VERSION);
    enc_u32(&e, (uint32_t)m->kind);
    enc_u32(&e, (uint32_t)m->origin);
    enc_u64(&e, (uint64_t)m->start);
    enc_u64(&e, (uint64_t)m->until);
    enc_u64(&e, (uint64_t)m->created);
    enc_u32(&e, m->uid);
    enc_str(&e, m->domain, sizeof m->domain);
    enc_str(&e, m->note, sizeof m->note);
    enc_u32(&e, (uint32_t)m->phase);
    enc_u64(&e, (uint64_t)m->ended);
    enc_str(&e, m->cursor, sizeof m->cursor);
    if (e.bad)
        return QDB_ERR;
    MDB_val k = val_of(kb, maint_key(kb, m->domain, m->kind, m->origin)), v = val_of(buf, e.len);
    int rc = mdb_put(t->txn, t->db->maint, &k, &v, 0);
    return rc ? rc_fail(rc, "maint put", m->domain) : 0;
}

int qdb_maint_del(struct qdb_txn *t, const char *domain, int kind, int origin)
{
    unsigned char kb[QDB_MAINT_KEY_MAX];
    MDB_val k = val_of(kb, maint_key(kb, domain, kind, origin));
    int rc = mdb_del(t->txn, t->db->maint, &k, NULL);
    return rc ? rc_fail(rc, "maint del", domain) : 0;
}

static int maint_decode(const MDB_val *v, struct qmaint *m)
{
    struct dec d = { v->mv_data, v->mv_size, 0 };
    memset(m, 0, sizeof *m);
    if (dec_u8(&d) != QDB_MAINT_VERSION || d.bad)
        return QDB_ERR;
    m->kind = (int)dec_u32(&d);
    m->origin = (int)dec_u32(&d);
    m->start = (int64_t)dec_u64(&d);
    m->until = (int64_t)dec_u64(&d);
    m->created = (int64_t)dec_u64(&d);
    m->uid = dec_u32(&d);
    dec_str(&d, m->domain, sizeof m->domain);
    dec_str(&d, m->note, sizeof m->note);
    m->phase = (int)dec_u32(&d);
    m->ended = (int64_t)dec_u64(&d);
    dec_str(&d, m->cursor, sizeof m->cursor);
    return dec_finish(&d) < 0 ? QDB_ERR : 0;
}

long qdb_maint_each(struct qdb *db, int (*fn)(void *arg, const struct qmaint *m), void *arg)
{
    MDB_txn *txn;
    MDB_cursor *c;
    long n = 0;
    struct qmaint m;
    if (!db->has_maint)
        return 0;
    if (rd_begin(db, &txn))
        return -1;
    if (mdb_cursor_open(txn, db->maint, &c)) {
        rd_end(db, txn);
        return -1;
    }
    MDB_val k, v;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (maint_decode(&v, &m) != 0) {
            log_warn("maint: a record of an unknown version or damaged; skipped");
            continue;
        }
        n++;
        if (fn(arg, &m))
            break;
    }
    mdb_cursor_close(c);
    rd_end(db, txn);
    return n;
}

int qdb_msg_pause(struct qdb_txn *t, const char *qid, const char *domain, int64_t start,
                  int64_t end, int64_t warn_after)
{
    struct qmsg *m = malloc(sizeof *m);
    struct qrcpt *r = malloc(sizeof *r);
    int rv = QDB_ERR;
    if (m == NULL || r == NULL)
        goto out;
    if ((rv = qdb_msg_get_txn(t, qid, m)) != 0)
        goto out;
    /* Mail that came during the window lost only the part after it came. */
    int64_t from = m->arrival > start ? m->arrival : start;
    int64_t shift = end - from;
    int64_t old_min = 0, new_min = 0;
    if (shift <= 0) {
        rv = 0;
        goto out;
    }
    for (uint32_t i = 0; i < m->nrcpt; i++) {
        if ((rv = qdb_rcpt_get(t, qid, i, r)) == QDB_NOTFOUND)
            continue;
        if (rv != 0)
            goto out;
        if (r->state != QRCPT_PENDING)
            continue;
        if (old_min == 0 || r->expiry < old_min)
            old_min = r->expiry;
        if (strcasecmp(r->domain, domain) == 0) {
            r->expiry += shift;
            if (warn_after > 0 && r->warned <= 0) {
                int64_t warn = m->arrival + warn_after + r->paused;
                /* Due in the window or after it: paused like the expiry.
                 * An older record's warning due there was not sent. */
                if (warn >= from) {
                    r->paused += shift;
                    r->warned = 0;
                }
                if (r->warned == 0 &&
                    (rv = qdb_due_put(t, m->arrival + warn_after + r->paused, qid)) != 0)
                    goto out;
            }
            if ((rv = qdb_rcpt_update(t, qid, r)) != 0)
                goto out;
        }
        if (new_min == 0 || r->expiry < new_min)
            new_min = r->expiry;
    }
    rv = 0;
    if (new_min != old_min) {
        /* The due entry qdb_msg_put made sits at the earliest expiry. */
        if ((rv = qdb_due_del(t, old_min, qid)) != 0 && rv != QDB_NOTFOUND)
            goto out;
        rv = qdb_due_put(t, new_min, qid);
    }
out:
    free(m);
    free(r);
    return rv;
}

/* ---------- transactions (writer thread) ---------- */

int qdb_txn_begin(struct qdb *db, struct qdb_txn **out)
{
    struct qdb_txn *t = malloc(sizeof *t);
    if (!t)
        return QDB_ERR;
    t->db = db;
    t->child = 0;
    if (!db->env || qdb_failed(db)) {
        free(t);
        errno = EIO;
        return QDB_ERR;
    }
    for (;;) {
        int rc = mdb_txn_begin(db->env, NULL, 0, &t->txn);
        if (rc == 0)
            break;
        note_fatal(db, rc);
        if (rc == MDB_PANIC) {
            free(t);
            errno = EIO;
            return QDB_ERR;
        }
        if (rc == MDB_MAP_RESIZED) {
            pthread_rwlock_wrlock(&db->maplock);
            rc = mdb_env_set_mapsize(db->env, 0);
            pthread_rwlock_unlock(&db->maplock);
            if (rc == 0)
                continue;
        }
        log_warn("queue: write transaction: %s", mdb_strerror(rc));
        free(t);
        return QDB_ERR;
    }
    *out = t;
    return 0;
}

int qdb_txn_child(struct qdb_txn *parent, struct qdb_txn **child)
{
    struct qdb_txn *t = malloc(sizeof *t);
    if (!t)
        return QDB_ERR;
    t->db = parent->db;
    t->child = 1;
    int rc = mdb_txn_begin(parent->db->env, parent->txn, 0, &t->txn);
    if (rc) {
        note_fatal(parent->db, rc);
        free(t);
        return rc_fail(rc, "child transaction", NULL);
    }
    *child = t;
    return 0;
}

/* After a failed top-level commit: did it leave the environment in
 * MDB_PANIC (a meta-page write failed)?  LMDB says so only to the next
 * transaction, so ask one. */
static void probe_fatal(struct qdb *db)
{
    MDB_txn *txn;
    pthread_rwlock_rdlock(&db->maplock);
    int rc = mdb_txn_begin(db->env, NULL, MDB_RDONLY, &txn);
    if (rc == 0)
        mdb_txn_abort(txn);
    pthread_rwlock_unlock(&db->maplock);
    note_fatal(db, rc);
}

int qdb_txn_commit(struct qdb_txn *t)
{
    struct qdb *db = t->db;
    int child = t->child;
    int rc = mdb_txn_commit(t->txn);
    free(t);
    if (rc == 0)
        return 0;
    note_fatal(db, rc);
    if (!child && rc != MDB_MAP_FULL)
        probe_fatal(db);
    int r = rc_fail(rc, "commit", NULL);
    /* errno tells the writer what to report: ENOSPC/EDQUOT from the disk
     * becomes 452, anything else 451. */
    errno = (rc == MDB_MAP_FULL || rc == ENOSPC || rc == EDQUOT) ? ENOSPC : EIO;
    return r;
}

void qdb_txn_abort(struct qdb_txn *t)
{
    if (!t)
        return;
    mdb_txn_abort(t->txn);
    free(t);
}

int qdb_grow(struct qdb *db)
{
    MDB_envinfo info;
    mdb_env_info(db->env, &info);
    size_t cur = info.me_mapsize;
    if (cur >= QDB_MAP_CEILING) {
        log_warn("queue: LMDB map at its ceiling (%zu octets); not growing", cur);
        return QDB_ERR;
    }
    size_t next = cur > QDB_MAP_CEILING / 2 ? QDB_MAP_CEILING : cur * 2;
    pthread_rwlock_wrlock(&db->maplock);
    int rc = mdb_env_set_mapsize(db->env, next);
    pthread_rwlock_unlock(&db->maplock);
    if (rc) {
        log_err("queue: LMDB map grow to %zu octets: %s", next, mdb_strerror(rc));
        return QDB_ERR;
    }
    log_info("queue: LMDB map grown to %zu octets", next);
    return 0;
}

/* The kept_msg entry of qid: there (with the message's size) or not. */
static int kept_msg_op(struct qdb_txn *t, const char *qid, int put)
{
    struct qdb *db = t->db;
    MDB_val k = val_of(qid, QID_LEN), v;
    int rc = mdb_get(t->txn, db->kept_msg, &k, &v);
    if (rc && rc != MDB_NOTFOUND)
        return rc_fail(rc, "kept_msg get", qid);
    if (!put)
        return rc == MDB_NOTFOUND ? 0 : (rc = mdb_del(t->txn, db->kept_msg, &k, NULL)) != 0
                                            ? rc_fail(rc, "kept_msg del", qid) : 0;
    if (rc == 0)
        return 0;
    struct qmsg *m = malloc(sizeof *m);
    if (!m)
        return QDB_ERR;
    unsigned char sb[8];
    int x = msg_get_txn(db, t->txn, qid, m);
    if (x == 0) {
        put_be64(sb, m->size);
        v = val_of(sb, sizeof sb);
        rc = mdb_put(t->txn, db->kept_msg, &k, &v, 0);
        x = rc ? rc_fail(rc, "kept_msg put", qid) : 0;
    }
    free(m);
    return x;
}

int qdb_msg_settle(struct qdb_txn *t, const char *qid)
{
    struct qdb *db = t->db;
    MDB_cursor *c;
    unsigned char kb[QDB_RCPT_KEY_LEN];
    int pending = 0, kept = 0, r = 0;

    if (!qid_valid(qid))
        return QDB_NOTFOUND;
    int rc = mdb_cursor_open(t->txn, db->rcpt, &c);
    if (rc)
        return rc_fail(rc, "rcpt cursor", qid);
    rcpt_key(kb, qid, 0);
    MDB_val k = val_of(kb, sizeof kb), v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0 && !pending;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != QDB_RCPT_KEY_LEN || memcmp(k.mv_data, kb, QID_LEN + 1) != 0)
            break;
        int st;
        const char *dom;
        size_t dl;
        if ((r = rcpt_peek(qid, &v, &st, &dom, &dl)) != 0)
            break;
        /* A quarantined recipient keeps the message too: quarantine.c
         * releases or removes it. */
        pending = st == QRCPT_PENDING || st == QRCPT_QUARANTINED;
        kept |= st == QRCPT_KEPT;
    }
    mdb_cursor_close(c);
    if (r != 0)
        return r;
    /* Kept copies keep the message too, but as kept-only (kept_msg) once
     * nothing else does: the copies count apart and go first. */
    if (pending || kept)
        return kept_msg_op(t, qid, !pending);
    r = qdb_msg_delete(t, qid);
    return r == QDB_NOTFOUND ? 0 : r;
}

/* ---------- kept copies: writes ---------- */

/* Each recipient of qid in this transaction (m: the message record, read
 * first): fn's non-zero result stops the walk and is returned. */
static int msg_rcpt_walk(struct qdb_txn *t, const char *qid, struct qmsg *m,
                         int (*fn)(struct qdb_txn *t, const char *qid, struct qrcpt *r,
                                   void *arg),
                         void *arg)
{
    struct qrcpt *r = malloc(sizeof *r);
    int rv;
    if (!r)
        return QDB_ERR;
    if ((rv = qdb_msg_get_txn(t, qid, m)) != 0)
        goto out;
    for (uint32_t i = 0; i < m->nrcpt && rv == 0; i++) {
        if ((rv = qdb_rcpt_get(t, qid, i, r)) == QDB_NOTFOUND)
            rv = 0;
        else if (rv == 0)
            rv = fn(t, qid, r, arg);
    }
out:
    free(r);
    return rv;
}

struct kept_exp {
    int64_t now, next, pend;
    long n;
};

static int kept_expire_one(struct qdb_txn *t, const char *qid, struct qrcpt *r, void *arg)
{
    struct kept_exp *x = arg;
    if (r->state == QRCPT_PENDING && r->expiry && (x->pend == 0 || r->expiry < x->pend))
        x->pend = r->expiry;
    if (r->state != QRCPT_KEPT)
        return 0;
    if (r->kept_until > x->now) {
        if (x->next == 0 || r->kept_until < x->next)
            x->next = r->kept_until;
        return 0;
    }
    r->state = QRCPT_SENT;              /* delivered, and now no copy */
    r->kept_until = 0;
    x->n++;
    return qdb_rcpt_update(t, qid, r);
}

int qdb_kept_expire(struct qdb_txn *t, const char *qid, int64_t now, long *n)
{
    struct qmsg *m = malloc(sizeof *m);
    struct kept_exp x = { .now = now };
    int rv;
    *n = 0;
    if (!m)
        return QDB_ERR;
    if ((rv = msg_rcpt_walk(t, qid, m, kept_expire_one, &x)) != 0)
        goto out;
    *n = x.n;
    if (x.next) {
        m->kept_until = x.next;
        rv = due_op(t->db, t->txn, x.next, qid, 0);
    } else {
        m->flags &= ~QMSG_F_KEPT;
        m->kept_until = 0;
    }
    /* The caller drops the due entry that fired, which may have been the
     * pending recipients' expiry too: theirs again. */
    if (rv == 0 && x.pend)
        rv = due_op(t->db, t->txn, x.pend, qid, 0);
    if (rv == 0 && (rv = qdb_msg_update(t, m)) == 0)
        rv = qdb_msg_settle(t, qid);
out:
    free(m);
    return rv;
}

static int kept_drop_one(struct qdb_txn *t, const char *qid, struct qrcpt *r, void *arg)
{
    (void)t;
    (void)qid;
    if (r->state == QRCPT_PENDING || r->state == QRCPT_QUARANTINED)
        return QDB_NOTFOUND;            /* not kept-only after all: mail */
    if (r->state == QRCPT_KEPT)
        (*(long *)arg)++;
    return 0;
}

int qdb_kept_drop(struct qdb_txn *t, const char *qid, long *n)
{
    struct qmsg *m = malloc(sizeof *m);
    int rv;
    *n = 0;
    if (!m)
        return QDB_ERR;
    MDB_val k = val_of(qid, QID_LEN), v;
    int rc = qid_valid(qid) ? mdb_get(t->txn, t->db->kept_msg, &k, &v) : MDB_NOTFOUND;
    if (rc)
        rv = rc_fail(rc, "kept_msg get", qid);
    else if ((rv = msg_rcpt_walk(t, qid, m, kept_drop_one, n)) == 0)
        rv = qdb_msg_delete(t, qid);
    free(m);
    return rv;
}

struct kept_sel {
    struct { char qid[QID_SIZE]; uint32_t index; } *v;
    size_t n, cap;
};

static int kept_sel_add(void *arg, const char *qid, uint32_t index)
{
    struct kept_sel *s = arg;
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        void *p = realloc(s->v, nc * sizeof *s->v);
        if (!p)
            return -1;
        s->v = p;
        s->cap = nc;
    }
    memcpy(s->v[s->n].qid, qid, QID_SIZE);
    s->v[s->n++].index = index;
    return 0;
}

int qdb_kept_replay(struct qdb_txn *t, const char *domain, int64_t since, int64_t until,
                    const char *addr, int64_t expiry, long *n, char (*qids)[QID_SIZE],
                    size_t max, size_t *nq)
{
    struct kept_sel sel = { 0 };
    struct qrcpt *r = malloc(sizeof *r);
    int rv = 0;
    *n = 0;
    *nq = 0;
    if (!r)
        return QDB_ERR;
    /* The selection first: the updates below change the index walked. */
    if (kept_walk(t->db, t->txn, domain, since, until, addr, kept_sel_add, &sel) < 0) {
        rv = QDB_ERR;
        goto out;
    }
    for (size_t i = 0; i < sel.n; i++) {
        const char *qid = sel.v[i].qid;
        if ((rv = qdb_rcpt_get(t, qid, sel.v[i].index, r)) == QDB_NOTFOUND)
            continue;
        if (rv != 0)
            goto out;
        if (r->state != QRCPT_KEPT)
            continue;
        r->state = QRCPT_PENDING;       /* a new attempt: at-least-once */
        r->attempts = 0;
        r->expiry = expiry;
        r->delivered = 0;
        r->kept_until = 0;
        if ((rv = qdb_rcpt_update(t, qid, r)) != 0 || (rv = qdb_msg_settle(t, qid)) != 0 ||
            (expiry && (rv = due_op(t->db, t->txn, expiry, qid, 0)) != 0))
            goto out;
        (*n)++;
        size_t j;
        for (j = 0; j < *nq; j++)
            if (strcmp(qids[j], qid) == 0)
                break;
        if (j == *nq && *nq < max)
            memcpy(qids[(*nq)++], qid, QID_SIZE);
    }
out:
    free(sel.v);
    free(r);
    return rv;
}
