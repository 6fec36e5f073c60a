/*
 * greylist.c - the greylisting decision and its LMDB store (greylist.h).
 *
 * What it does: decides PASS or DEFER for a triplet from its record
 * (pure), keeps the records in SPOOL/greylist, sweeps expired ones.
 *
 * Owns: the environment and its one database.
 *
 * Must never: hold a transaction across a call or callback; sync on
 * commit (MDB_NOSYNC: a crash may forget the last triplets, which then
 * are greylisted once more; no mail depends on it); refuse mail because
 * the store failed (fail open).
 *
 * Security: sender and recipient are a peer's; they enter the store only
 * through a SHA-256 of the triplet (a fixed 32-octet key, so no length
 * a peer chooses reaches LMDB's key limit and the file holds no
 * addresses).
 */
#include "config.h"
#include "greylist.h"
#include "lmdb_env.h"

#include <ctype.h>
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <openssl/evp.h>

#define GREYLIST_DIR_MODE  0700
#define GREYLIST_FILE_MODE 0600
#define GREYLIST_KEY_LEN   32           /* SHA-256 */
#define GREYLIST_REC_LEN   (1 + 8 + 8 + 8 + 4)
#define GREYLIST_SWEEP_PAGE 256         /* keys deleted per write transaction */

/* ---- the decision (pure) ---------------------------------------------- */

int greylist_expired(const struct greylist_rec *r, int64_t now, const struct conf_greylist *c)
{
    if (r->passed != 0)
        return now - r->last > c->pass_expire;
    return now - r->first > c->retry_window;
}

enum greylist_result greylist_decide(struct greylist_rec *r, int found, int64_t now,
                                     const struct conf_greylist *c, long *wait)
{
    *wait = 0;
    if (found && now < r->first)
        found = 0;                      /* the clock went back: start over */
    if (!found || greylist_expired(r, now, c)) {
        r->first = r->last = now;
        r->passed = 0;
        r->count = 1;
        *wait = c->delay;
        return GREYLIST_DEFER;
    }
    r->last = now;
    r->count++;
    if (r->passed != 0)
        return GREYLIST_PASS;
    if (now - r->first < c->delay) {
        *wait = (long)(c->delay - (now - r->first));
        return GREYLIST_DEFER;
    }
    r->passed = now;
    return GREYLIST_PASS;
}

static void put64(unsigned char *p, int64_t v)
{
    uint64_t u = (uint64_t)v;
    for (int i = 7; i >= 0; i--, u >>= 8)
        p[i] = (unsigned char)u;
}

static int64_t get64(const unsigned char *p)
{
    uint64_t u = 0;
    for (int i = 0; i < 8; i++)
        u = (u << 8) | p[i];
    return (int64_t)u;
}

size_t greylist_encode(const struct greylist_rec *r, unsigned char *buf, size_t len)
{
    if (len < GREYLIST_REC_LEN)
        return 0;
    buf[0] = GREYLIST_RECORD_VERSION;
    put64(buf + 1, r->first);
    put64(buf + 9, r->last);
    put64(buf + 17, r->passed);
    for (int i = 0; i < 4; i++)
        buf[25 + i] = (unsigned char)(r->count >> (24 - 8 * i));
    return GREYLIST_REC_LEN;
}

int greylist_decode(const unsigned char *buf, size_t len, struct greylist_rec *r)
{
    if (len != GREYLIST_REC_LEN || buf[0] != GREYLIST_RECORD_VERSION)
        return -1;
    r->first = get64(buf + 1);
    r->last = get64(buf + 9);
    r->passed = get64(buf + 17);
    r->count = 0;
    for (int i = 0; i < 4; i++)
        r->count = (r->count << 8) | buf[25 + i];
    return 0;
}

/* ---- the store ---------------------------------------------------------- */

struct greylist {
    struct lmdb_env *db;
};

struct greylist *greylist_open(const char *dir, size_t map_size, char *err, size_t errlen)
{
    struct greylist *g = calloc(1, sizeof *g);
    if (g == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->db = lmdb_env_open(dir, MDB_NOTLS | MDB_NOSYNC | MDB_NOMETASYNC, GREYLIST_DIR_MODE,
                          GREYLIST_FILE_MODE, map_size, err, errlen);
    if (g->db == NULL) {
        free(g);
        return NULL;
    }
    return g;
}

void greylist_close(struct greylist *g)
{
    if (g == NULL)
        return;
    lmdb_env_close(g->db, 1);
    free(g);
}

static void hash_lower(EVP_MD_CTX *ctx, const char *s)
{
    unsigned char buf[64];
    size_t n = 0;
    for (; *s; s++) {
        buf[n++] = (unsigned char)tolower((unsigned char)*s);
        if (n == sizeof buf) {
            EVP_DigestUpdate(ctx, buf, n);
            n = 0;
        }
    }
    buf[n++] = '\0';                    /* separates sender from recipient */
    EVP_DigestUpdate(ctx, buf, n);
}

static int greylist_key(int family, const void *net, const char *sender, const char *rcpt,
                        unsigned char key[GREYLIST_KEY_LEN])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char fam = family == AF_INET6 ? 6 : 4;
    unsigned int len = 0;
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;

    if (ok) {
        EVP_DigestUpdate(ctx, &fam, 1);
        EVP_DigestUpdate(ctx, net, family == AF_INET6 ? 16 : 4);
        hash_lower(ctx, sender);
        hash_lower(ctx, rcpt);
        ok = EVP_DigestFinal_ex(ctx, key, &len) == 1 && len == GREYLIST_KEY_LEN;
    }
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -1;
}

struct greylist_upd {
    const unsigned char *key;
    const struct conf_greylist *c;
    int64_t now;
    enum greylist_result res;
    long wait;
};

/* One triplet: read, decide, write back (lmdb_env_write may run it again). */
static int greylist_upd_fn(MDB_txn *txn, MDB_dbi dbi, void *arg)
{
    struct greylist_upd *u = arg;
    unsigned char buf[GREYLIST_REC_LEN];
    MDB_val k = { GREYLIST_KEY_LEN, (void *)u->key }, v;
    struct greylist_rec r;
    int found = 0;

    memset(&r, 0, sizeof r);
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == 0)
        found = greylist_decode(v.mv_data, v.mv_size, &r) == 0;
    else if (rc != MDB_NOTFOUND)
        return rc;
    u->res = greylist_decide(&r, found, u->now, u->c, &u->wait);
    MDB_val nv = { greylist_encode(&r, buf, sizeof buf), buf };
    return mdb_put(txn, dbi, &k, &nv, 0);
}

int greylist_check(struct greylist *g, const struct conf_greylist *c, int family,
                   const void *net, const char *sender, const char *rcpt, int64_t now,
                   enum greylist_result *res, long *wait)
{
    unsigned char key[GREYLIST_KEY_LEN];

    *res = GREYLIST_PASS;
    *wait = 0;
    if (g == NULL || greylist_key(family, net, sender, rcpt, key) != 0)
        return -1;
    struct greylist_upd u = { key, c, now, GREYLIST_PASS, 0 };
    if (lmdb_env_write(g->db, greylist_upd_fn, &u) != 0)
        return -1;
    *res = u.res;
    *wait = u.wait;
    return 0;
}

struct greylist_del {
    unsigned char (*keys)[GREYLIST_KEY_LEN];
    size_t n;
};

static int greylist_del_fn(MDB_txn *txn, MDB_dbi dbi, void *arg)
{
    struct greylist_del *d = arg;
    for (size_t i = 0; i < d->n; i++) {
        MDB_val dk = { GREYLIST_KEY_LEN, d->keys[i] };
        int rc = mdb_del(txn, dbi, &dk, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND)
            return rc;
    }
    return 0;
}

long greylist_sweep(struct greylist *g, const struct conf_greylist *c, int64_t now)
{
    long total = 0;

    if (g == NULL)
        return -1;
    /* Pages of expired keys: each page is collected in a read transaction
     * and deleted in a short write transaction of its own. */
    for (;;) {
        unsigned char keys[GREYLIST_SWEEP_PAGE][GREYLIST_KEY_LEN];
        size_t n = 0;
        MDB_txn *txn;
        MDB_cursor *cur;
        MDB_val k, v;
        int rc;

        if (mdb_txn_begin(lmdb_env_handle(g->db), NULL, MDB_RDONLY, &txn) != 0)
            return -1;
        if (mdb_cursor_open(txn, lmdb_env_dbi(g->db), &cur) != 0) {
            mdb_txn_abort(txn);
            return -1;
        }
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && n < GREYLIST_SWEEP_PAGE;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            struct greylist_rec r;
            if (k.mv_size != GREYLIST_KEY_LEN)
                continue;
            if (greylist_decode(v.mv_data, v.mv_size, &r) != 0 || greylist_expired(&r, now, c))
                memcpy(keys[n++], k.mv_data, GREYLIST_KEY_LEN);
        }
        mdb_cursor_close(cur);
        mdb_txn_abort(txn);
        if (n == 0)
            break;
        /* grown and retried when the map is full: copy-on-write needs
         * pages even to delete */
        struct greylist_del d = { keys, n };
        if (lmdb_env_write(g->db, greylist_del_fn, &d) != 0)
            return -1;
        total += (long)n;
        if (n < GREYLIST_SWEEP_PAGE)
            break;
    }
    mdb_env_sync(lmdb_env_handle(g->db), 1);
    return total;
}
