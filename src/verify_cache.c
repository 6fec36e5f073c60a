/*
 * verify_cache.c - the LMDB store of callout answers (verify_cache.h).
 *
 * What it does: keeps one record per address and one per domain
 * ("@domain", catch-all) in its own environment, SPOOL/verify, so the
 * spool's group-commit writer never waits for it and it never waits for
 * the spool.  Encodes and decodes versioned records (pure functions).
 *
 * Owns: the environment and its one database.
 *
 * Must never: hold a transaction across a callback (vcache_each copies a
 * page out, ends the read transaction, then calls fn); sync on commit
 * (MDB_NOSYNC: a cache may lose its last answers in a crash, nothing
 * else); interpret reply text.
 *
 * Security: keys and replies come from SMTP peers; they are bounded
 * (VERIFY_KEY_MAX, the reply buffer) and stored as opaque octets.
 */
#include "config.h"
#include "verify_cache.h"
#include "lmdb_env.h"

#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VCACHE_DIR_MODE   0700          /* as the rest of the spool */
#define VCACHE_FILE_MODE  0600
#define VCACHE_HEADER     11            /* version, result, source, int64 time */
#define VCACHE_PAGE       256           /* records copied per read transaction */

struct verify_cache {
    struct lmdb_env *db;
    int readonly;
};

int vcache_key(const char *addr, char out[VERIFY_KEY_MAX])
{
    size_t len = strlen(addr), i;

    while (len > 0 && addr[len - 1] == '.')
        len--;
    if (len == 0 || len >= VERIFY_KEY_MAX)
        return -1;
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)addr[i];
        if (ch < 0x21 || ch == 0x7f)
            return -1;
        out[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + ('a' - 'A') : ch);
    }
    out[len] = '\0';
    return 0;
}

size_t vcache_encode(const struct verify_entry *e, unsigned char *buf, size_t len)
{
    size_t rl = strnlen(e->reply, sizeof e->reply - 1);
    uint64_t t = (uint64_t)e->learned;

    if (len < VCACHE_HEADER + rl)
        return 0;
    buf[0] = VERIFY_RECORD_V1;
    buf[1] = (unsigned char)e->result;
    buf[2] = (unsigned char)e->source;
    for (int i = 0; i < 8; i++)
        buf[3 + i] = (unsigned char)(t >> (8 * i));
    memcpy(buf + VCACHE_HEADER, e->reply, rl);
    return VCACHE_HEADER + rl;
}

int vcache_decode(const char *key, size_t keylen, const unsigned char *buf, size_t len,
                  struct verify_entry *e)
{
    uint64_t t = 0;
    size_t rl;

    if (len < VCACHE_HEADER || buf[0] != VERIFY_RECORD_V1 || keylen == 0 ||
        keylen >= sizeof e->key)
        return -1;
    if (buf[1] != VERIFY_VALID && buf[1] != VERIFY_INVALID)
        return -1;
    if (buf[2] > VSRC_SHARED)
        return -1;
    memcpy(e->key, key, keylen);
    e->key[keylen] = '\0';
    e->result = (enum verify_result)buf[1];
    e->source = (enum verify_source)buf[2];
    for (int i = 0; i < 8; i++)
        t |= (uint64_t)buf[3 + i] << (8 * i);
    e->learned = (int64_t)t;
    rl = len - VCACHE_HEADER;
    if (rl >= sizeof e->reply)
        rl = sizeof e->reply - 1;
    memcpy(e->reply, buf + VCACHE_HEADER, rl);
    e->reply[rl] = '\0';
    return 0;
}

struct verify_cache *vcache_open(const char *dir, size_t map_size, int readonly, char *err,
                                 size_t errlen)
{
    struct verify_cache *vc = calloc(1, sizeof *vc);

    if (vc == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    vc->readonly = readonly;
    /* MDB_NOSYNC: a cache; MDB_NOTLS: transactions only on the loop. */
    vc->db = lmdb_env_open(dir, MDB_NOTLS | (readonly ? MDB_RDONLY : MDB_NOSYNC | MDB_NOMETASYNC),
                           VCACHE_DIR_MODE, VCACHE_FILE_MODE, map_size, err, errlen);
    if (vc->db == NULL) {
        free(vc);
        return NULL;
    }
    return vc;
}

void vcache_close(struct verify_cache *vc)
{
    if (vc == NULL)
        return;
    lmdb_env_close(vc->db, 0);
    free(vc);
}

int vcache_get(struct verify_cache *vc, const char *key, struct verify_entry *e)
{
    MDB_txn *txn;
    MDB_val k = { strlen(key), (void *)key }, v;
    int rc, found = 0;

    if (vc == NULL || mdb_txn_begin(lmdb_env_handle(vc->db), NULL, MDB_RDONLY, &txn) != 0)
        return -1;
    rc = mdb_get(txn, lmdb_env_dbi(vc->db), &k, &v);
    if (rc == 0)
        found = vcache_decode(key, k.mv_size, v.mv_data, v.mv_size, e) == 0 ? 1 : 0;
    else if (rc != MDB_NOTFOUND)
        found = -1;
    mdb_txn_abort(txn);
    return found;
}

static int vcache_put_fn(MDB_txn *txn, MDB_dbi dbi, void *arg)
{
    MDB_val *kv = arg;
    return mdb_put(txn, dbi, &kv[0], &kv[1], 0);
}

int vcache_put(struct verify_cache *vc, const struct verify_entry *e)
{
    unsigned char buf[VCACHE_HEADER + sizeof e->reply];
    size_t n = vcache_encode(e, buf, sizeof buf);
    MDB_val kv[2] = { { strlen(e->key), (void *)e->key }, { n, buf } };

    if (vc == NULL || vc->readonly || n == 0 || kv[0].mv_size == 0)
        return -1;
    return lmdb_env_write(vc->db, vcache_put_fn, kv) == 0 ? 0 : -1;
}

struct vcache_dels {
    char (*keys)[VERIFY_KEY_MAX];
    size_t n;
    long del;                           /* of the run that commits */
};

static int vcache_del_fn(MDB_txn *txn, MDB_dbi dbi, void *arg)
{
    struct vcache_dels *d = arg;
    d->del = 0;
    for (size_t i = 0; i < d->n; i++) {
        MDB_val k = { strlen(d->keys[i]), d->keys[i] };
        int rc = mdb_del(txn, dbi, &k, NULL);
        if (rc == 0)
            d->del++;
        else if (rc != MDB_NOTFOUND)
            return rc;
    }
    return 0;
}

/* Delete keys[0..n) in one short write transaction (grown and retried
 * when the map is full: copy-on-write needs pages even to delete).
 * Records deleted, or -1. */
static long vcache_del(struct verify_cache *vc, char (*keys)[VERIFY_KEY_MAX], size_t n)
{
    struct vcache_dels d = { keys, n, 0 };
    return lmdb_env_write(vc->db, vcache_del_fn, &d) == 0 ? d.del : -1;
}

struct forget_page {
    char (*keys)[VERIFY_KEY_MAX];
    size_t n;
};

static int forget_collect(void *arg, const struct verify_entry *e)
{
    struct forget_page *f = arg;

    snprintf(f->keys[f->n++], VERIFY_KEY_MAX, "%s", e->key);
    return f->n == VCACHE_PAGE;     /* a page at a time */
}

long vcache_forget(struct verify_cache *vc, const char *key_or_domain)
{
    struct forget_page f;
    long total = 0;

    if (vc == NULL || vc->readonly)
        return -1;
    if ((f.keys = malloc(VCACHE_PAGE * sizeof *f.keys)) == NULL)
        return -1;
    if (strchr(key_or_domain, '@') != NULL) {
        snprintf(f.keys[0], VERIFY_KEY_MAX, "%s", key_or_domain);
        total = vcache_del(vc, f.keys, 1);
        free(f.keys);
        return total;
    }
    /* A domain: "@domain" and every "x@domain", a page of keys read, then
     * deleted in their own short write transaction, until none is left. */
    for (;;) {
        long d;
        f.n = 0;
        if (vcache_each(vc, key_or_domain, forget_collect, &f) != 0) {
            total = -1;
            break;
        }
        if (f.n == 0)
            break;
        if ((d = vcache_del(vc, f.keys, f.n)) < 0) {
            total = -1;
            break;
        }
        total += d;
        if (d == 0)
            break;
    }
    free(f.keys);
    return total;
}

/* Put cur on the first key after `after` ("" : the first key of all);
 * the record in *k, *v.  An LMDB return code (MDB_NOTFOUND: none). */
static int cursor_after(MDB_cursor *cur, const char *after, MDB_val *k, MDB_val *v)
{
    if (after[0] == '\0')
        return mdb_cursor_get(cur, k, v, MDB_FIRST);
    k->mv_size = strlen(after);
    k->mv_data = (void *)after;
    int rc = mdb_cursor_get(cur, k, v, MDB_SET_RANGE);
    if (rc == 0 && k->mv_size == strlen(after) && memcmp(k->mv_data, after, k->mv_size) == 0)
        rc = mdb_cursor_get(cur, k, v, MDB_NEXT);
    return rc;
}

long vcache_sweep(struct verify_cache *vc, int (*expired)(void *arg, const struct verify_entry *e),
                  void *arg, char after[VERIFY_KEY_MAX], size_t look, int *done)
{
    char (*keys)[VERIFY_KEY_MAX] = malloc(VCACHE_PAGE * sizeof *keys);
    struct verify_entry *e = malloc(sizeof *e);
    size_t looked = 0;
    long total = 0;

    *done = 0;
    if (keys == NULL || e == NULL || vc == NULL || vc->readonly) {
        free(keys);
        free(e);
        return -1;
    }
    while (looked < look) {
        MDB_txn *txn;
        MDB_cursor *cur;
        MDB_val k, v;
        size_t n = 0;
        int rc;

        if (mdb_txn_begin(lmdb_env_handle(vc->db), NULL, MDB_RDONLY, &txn) != 0 ||
            mdb_cursor_open(txn, lmdb_env_dbi(vc->db), &cur) != 0) {
            total = -1;
            break;
        }
        rc = cursor_after(cur, after, &k, &v);
        /* A page of records at most (so at most a page of keys). */
        for (size_t seen = 0; rc == 0 && seen < VCACHE_PAGE && looked < look; seen++, looked++) {
            if (k.mv_size < VERIFY_KEY_MAX) {
                memcpy(after, k.mv_data, k.mv_size);
                after[k.mv_size] = '\0';
                if (vcache_decode(k.mv_data, k.mv_size, v.mv_data, v.mv_size, e) == 0 &&
                    expired(arg, e))
                    memcpy(keys[n++], after, VERIFY_KEY_MAX);
            }
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(cur);
        mdb_txn_abort(txn);
        if (n > 0) {
            long d = vcache_del(vc, keys, n);
            if (d < 0) {
                total = -1;
                break;
            }
            total += d;
        }
        if (rc != 0) {
            *done = 1;                  /* the end of the cache */
            after[0] = '\0';
            break;
        }
    }
    free(keys);
    free(e);
    return total;
}

int vcache_each(struct verify_cache *vc, const char *domain,
                int (*fn)(void *arg, const struct verify_entry *e), void *arg)
{
    struct verify_entry *page = malloc(VCACHE_PAGE * sizeof *page);
    char after[VERIFY_KEY_MAX] = "", dk[VERIFY_KEY_MAX] = "";
    size_t dl = 0;

    if (page == NULL || vc == NULL) {
        free(page);
        return -1;
    }
    if (domain != NULL) {
        snprintf(dk, sizeof dk, "@%s", domain);
        dl = strlen(dk);
    }
    for (;;) {
        MDB_txn *txn;
        MDB_cursor *cur;
        MDB_val k, v;
        size_t n = 0, i;
        int rc;

        if (mdb_txn_begin(lmdb_env_handle(vc->db), NULL, MDB_RDONLY, &txn) != 0 ||
            mdb_cursor_open(txn, lmdb_env_dbi(vc->db), &cur) != 0) {
            free(page);
            return -1;
        }
        rc = cursor_after(cur, after, &k, &v);
        while (rc == 0 && n < VCACHE_PAGE) {
            if (k.mv_size < sizeof after) {
                memcpy(after, k.mv_data, k.mv_size);
                after[k.mv_size] = '\0';
            }
            if ((dl == 0 || (k.mv_size >= dl &&
                             memcmp((char *)k.mv_data + k.mv_size - dl, dk, dl) == 0)) &&
                vcache_decode(k.mv_data, k.mv_size, v.mv_data, v.mv_size, &page[n]) == 0)
                n++;
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(cur);
        mdb_txn_abort(txn);
        for (i = 0; i < n; i++)
            if (fn(arg, &page[i]) != 0) {
                free(page);
                return 0;
            }
        if (rc != 0)
            break;
    }
    free(page);
    return 0;
}
