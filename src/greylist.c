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

#include <ctype.h>
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <openssl/evp.h>

#define GREYLIST_DIR_MODE  0700
#define GREYLIST_FILE_MODE 0600
#define GREYLIST_KEY_LEN   32           /* SHA-256 */
#define GREYLIST_REC_LEN   (1 + 8 + 8 + 8 + 4)
#define GREYLIST_GROW_TRIES 4
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
    MDB_env *env;
    MDB_dbi dbi;
    size_t map_size;
};

struct greylist *greylist_open(const char *dir, size_t map_size, char *err, size_t errlen)
{
    struct greylist *g = calloc(1, sizeof *g);
    MDB_txn *txn = NULL;
    MDB_envinfo info;
    int rc;

    if (g == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (mkdir(dir, GREYLIST_DIR_MODE) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        free(g);
        return NULL;
    }
    if ((rc = mdb_env_create(&g->env)) != 0)
        goto fail;
    rc = mdb_env_open(g->env, dir, MDB_NOTLS | MDB_NOSYNC | MDB_NOMETASYNC, GREYLIST_FILE_MODE);
    if (rc != 0)
        goto fail;
    mdb_env_info(g->env, &info);
    g->map_size = info.me_mapsize;
    if (map_size > g->map_size) {
        if ((rc = mdb_env_set_mapsize(g->env, map_size)) != 0)
            goto fail;
        g->map_size = map_size;
    }
    if ((rc = mdb_txn_begin(g->env, NULL, 0, &txn)) != 0)
        goto fail;
    if ((rc = mdb_dbi_open(txn, NULL, 0, &g->dbi)) != 0) {
        mdb_txn_abort(txn);
        goto fail;
    }
    if ((rc = mdb_txn_commit(txn)) != 0)
        goto fail;
    return g;
fail:
    snprintf(err, errlen, "%s: %s", dir, mdb_strerror(rc));
    if (g->env)
        mdb_env_close(g->env);
    free(g);
    return NULL;
}

void greylist_close(struct greylist *g)
{
    if (g == NULL)
        return;
    mdb_env_sync(g->env, 1);
    mdb_env_close(g->env);
    free(g);
}

/* A full map doubles (no transaction is open between our calls). */
static int greylist_grow(struct greylist *g)
{
    size_t ns = g->map_size * 2;
    if (mdb_env_set_mapsize(g->env, ns) != 0)
        return -1;
    g->map_size = ns;
    return 0;
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

int greylist_check(struct greylist *g, const struct conf_greylist *c, int family,
                   const void *net, const char *sender, const char *rcpt, int64_t now,
                   enum greylist_result *res, long *wait)
{
    unsigned char key[GREYLIST_KEY_LEN], buf[GREYLIST_REC_LEN];

    *res = GREYLIST_PASS;
    *wait = 0;
    if (g == NULL || greylist_key(family, net, sender, rcpt, key) != 0)
        return -1;
    for (int tries = 0; tries < GREYLIST_GROW_TRIES; tries++) {
        MDB_txn *txn;
        MDB_val k = { sizeof key, key }, v;
        struct greylist_rec r;
        int found = 0;
        int rc = mdb_txn_begin(g->env, NULL, 0, &txn);

        if (rc == MDB_MAP_RESIZED) {
            mdb_env_set_mapsize(g->env, 0);
            continue;
        }
        if (rc != 0)
            return -1;
        memset(&r, 0, sizeof r);
        rc = mdb_get(txn, g->dbi, &k, &v);
        if (rc == 0)
            found = greylist_decode(v.mv_data, v.mv_size, &r) == 0;
        else if (rc != MDB_NOTFOUND) {
            mdb_txn_abort(txn);
            return -1;
        }
        enum greylist_result d = greylist_decide(&r, found, now, c, wait);
        MDB_val nv = { greylist_encode(&r, buf, sizeof buf), buf };
        rc = mdb_put(txn, g->dbi, &k, &nv, 0);
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc == 0) {
            *res = d;
            return 0;
        }
        *wait = 0;
        if (rc != MDB_MAP_FULL || greylist_grow(g) != 0)
            return -1;
    }
    return -1;
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

        if (mdb_txn_begin(g->env, NULL, MDB_RDONLY, &txn) != 0)
            return -1;
        if (mdb_cursor_open(txn, g->dbi, &cur) != 0) {
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
        int done = 0;
        for (int tries = 0; tries < GREYLIST_GROW_TRIES && !done; tries++) {
            if ((rc = mdb_txn_begin(g->env, NULL, 0, &txn)) != 0)
                return -1;
            for (size_t i = 0; i < n && rc == 0; i++) {
                MDB_val dk = { GREYLIST_KEY_LEN, keys[i] };
                rc = mdb_del(txn, g->dbi, &dk, NULL);
                if (rc == MDB_NOTFOUND)
                    rc = 0;
            }
            if (rc == 0)
                rc = mdb_txn_commit(txn);
            else
                mdb_txn_abort(txn);
            if (rc == 0)
                done = 1;
            else if (rc != MDB_MAP_FULL || greylist_grow(g) != 0)
                return -1;
        }
        if (!done)
            return -1;
        total += (long)n;
        if (n < GREYLIST_SWEEP_PAGE)
            break;
    }
    mdb_env_sync(g->env, 1);
    return total;
}
