/*
 * table_pgsql.c - the "pgsql:NAME" recipient table (table.h): lookups in
 * PostgreSQL through pg.h, behind a bounded, expiring cache.
 *
 * What it does: answers a lookup from the cache when it holds a fresh
 * answer (found: cache_ttl, not found: cache_negative_ttl); otherwise
 * sends one query (the default schema's
 *   SELECT 1 FROM recipients WHERE address = $1 OR address = $2 LIMIT 1
 * with 'local@domain' and '@domain', or the entry's recipient_query with
 * its %s/%u/%d as $n) and answers TABLE_PENDING; the callback follows when
 * the row count is known.  Concurrent lookups of one key share one query
 * (a dictionary of waiters per in-flight key).  The key is folded to lower
 * case: the default schema stores addresses lower case, and a custom
 * query is handed the same folded values.
 *
 * The database unreachable (connection down, query failed or timed out):
 * a cached answer is served even when it has expired (stale, but the
 * database's last word, better than a refusal during an outage); with no
 * cached answer the lookup is TABLE_TEMPFAIL (451 4.3.0), never a guess.
 *
 * Owns: one cache per pgsql entry NAME, shared by every table opened on
 * that name and kept across reloads while a table holds it (a reload opens
 * the new tables before it closes the old ones, so the cache survives);
 * the cache is emptied when the entry's query or TTLs change.  Eviction is
 * least recently used, at cache_size entries; cache_size 0 caches nothing.
 *
 * Never: blocks (pg.h is asynchronous), puts a value into SQL text, or
 * calls a waiter's callback after table_cancel().  A pending request
 * holds a table reference (table_int.h) until its callback ran or it was
 * cancelled.
 *
 * Security: addresses reach the database only as bound parameters; a key
 * is bounded (TPG_KEY_MAX) before it is copied anywhere.
 */
#include "config.h"
#include "table_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conf.h"
#include "log.h"
#include "pg.h"
#include "util.h"

#define TPG_KEY_MAX         512     /* "local@domain": RFC 5321 path is 256 */
#define TPG_BUCKETS_MIN     64

struct tpg_entry {
    char *key;
    uint64_t hash;
    int found;
    time_t expires;
    struct tpg_entry *hnext;            /* hash chain */
    struct tpg_entry *prev, *next;      /* LRU list, most recent first */
};

struct tpg_waiter {
    struct table_req req;               /* first: table_cancel finds cancel() */
    struct tpg_inflight *inf;
    struct table *t;                    /* our reference, until done */
    table_cb *cb;
    void *arg;
    struct tpg_waiter *next;
};

struct tpg_inflight {
    struct tpg_cache *cache;
    char *key;
    struct pg_query *q;
    struct tpg_waiter *waiters;
    struct tpg_inflight *next;
};

struct tpg_cache {
    char *name;
    unsigned long refs;                 /* tables open on this name */
    char *sql;
    char args[CONF_PGSQL_PARAMS_MAX + 1];
    long ttl, negative_ttl;
    size_t cap;
    struct tpg_entry **buckets;
    size_t nbuckets, n;
    struct tpg_entry *lru_head, *lru_tail;
    struct tpg_inflight *inflight;
    struct tpg_cache *next;
};

struct tpg_table {
    struct table base;                  /* first (table_int.h) */
    struct tpg_cache *cache;
};

static struct tpg_cache *tpg_caches;

/* ---- the cache ---------------------------------------------------------- */

static void tpg_lru_unlink(struct tpg_cache *c, struct tpg_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->lru_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->lru_tail = e->prev;
    e->prev = e->next = NULL;
}

static void tpg_lru_front(struct tpg_cache *c, struct tpg_entry *e)
{
    e->next = c->lru_head;
    e->prev = NULL;
    if (c->lru_head)
        c->lru_head->prev = e;
    c->lru_head = e;
    if (!c->lru_tail)
        c->lru_tail = e;
}

static struct tpg_entry *tpg_find(struct tpg_cache *c, const char *key, uint64_t h)
{
    if (!c->nbuckets)
        return NULL;
    for (struct tpg_entry *e = c->buckets[h & (c->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static void tpg_remove(struct tpg_cache *c, struct tpg_entry *e)
{
    struct tpg_entry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    tpg_lru_unlink(c, e);
    c->n--;
    free(e->key);
    free(e);
}

static void tpg_clear(struct tpg_cache *c)
{
    while (c->lru_head)
        tpg_remove(c, c->lru_head);
}

static void tpg_store(struct tpg_cache *c, const char *key, int found)
{
    uint64_t h = util_hash(UTIL_HASH_INIT, key, strlen(key));
    struct tpg_entry *e;
    long ttl = found ? c->ttl : c->negative_ttl;

    if (c->cap == 0 || ttl == 0 || !c->nbuckets)
        return;
    if ((e = tpg_find(c, key, h))) {
        tpg_lru_unlink(c, e);
    } else {
        while (c->n >= c->cap && c->lru_tail)
            tpg_remove(c, c->lru_tail);
        if (!(e = calloc(1, sizeof *e)) || !(e->key = strdup(key))) {
            free(e);
            return;                     /* not cached: the next lookup asks again */
        }
        e->hash = h;
        e->hnext = c->buckets[h & (c->nbuckets - 1)];
        c->buckets[h & (c->nbuckets - 1)] = e;
        c->n++;
    }
    e->found = found;
    e->expires = time(NULL) + ttl;
    tpg_lru_front(c, e);
}

/* Fit the cache to the entry's settings; a changed query or TTL makes
 * what was cached meaningless. */
static int tpg_cache_set(struct tpg_cache *c, const struct conf_pgsql *e)
{
    size_t want = TPG_BUCKETS_MIN;
    int changed = !c->sql || strcmp(c->sql, e->recipient_sql) != 0 ||
                  strcmp(c->args, e->recipient_args) != 0 || c->ttl != e->cache_ttl ||
                  c->negative_ttl != e->cache_negative_ttl ||
                  c->cap != (size_t)e->cache_size;
    if (!changed)
        return 0;
    char *sql = strdup(e->recipient_sql);
    while (want < (size_t)e->cache_size && want < ((size_t)1 << 30))
        want <<= 1;
    struct tpg_entry **b = calloc(want, sizeof *b);
    if (!sql || !b) {
        free(sql);
        free(b);
        return -1;
    }
    tpg_clear(c);
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = want;
    free(c->sql);
    c->sql = sql;
    snprintf(c->args, sizeof c->args, "%s", e->recipient_args);
    c->ttl = e->cache_ttl;
    c->negative_ttl = e->cache_negative_ttl;
    c->cap = (size_t)e->cache_size;
    return 0;
}

/* ---- queries ------------------------------------------------------------ */

static void tpg_waiter_done(struct tpg_waiter *w, enum table_result r)
{
    struct table *t = w->t;
    table_cb *cb = w->cb;
    void *arg = w->arg;
    free(w);
    cb(arg, r);
    table_free(t);
}

static void tpg_on_result(void *arg, const PGresult *res)
{
    struct tpg_inflight *inf = arg, **pp;
    struct tpg_cache *c = inf->cache;
    enum table_result r;

    for (pp = &c->inflight; *pp != inf; pp = &(*pp)->next)
        ;
    *pp = inf->next;
    if (res) {
        r = PQntuples(res) > 0 ? TABLE_FOUND : TABLE_NOTFOUND;
        tpg_store(c, inf->key, r == TABLE_FOUND);
    } else {
        /* No answer: the database's last word, even expired, or 451. */
        uint64_t h = util_hash(UTIL_HASH_INIT, inf->key, strlen(inf->key));
        struct tpg_entry *e = tpg_find(c, inf->key, h);
        r = e ? (e->found ? TABLE_FOUND : TABLE_NOTFOUND) : TABLE_TEMPFAIL;
    }
    /* Each waiter's callback may start another lookup (a pipelined RCPT)
     * or cancel others: take the list first, cancellation no longer sees
     * these waiters. */
    struct tpg_waiter *w = inf->waiters;
    inf->waiters = NULL;
    while (w) {
        struct tpg_waiter *next = w->next;
        w->inf = NULL;
        tpg_waiter_done(w, r);
        w = next;
    }
    free(inf->key);
    free(inf);
}

/* Parameters by the letters of the query: s address, u local part,
 * d domain, c "@domain". */
static int tpg_params(const char *args, const char *key, char bufs[][TPG_KEY_MAX + 1],
                      const char **params)
{
    const char *at = strrchr(key, '@');
    int n = 0;
    for (; *args; args++, n++) {
        char *b = bufs[n];
        switch (*args) {
        case 's': snprintf(b, TPG_KEY_MAX + 1, "%s", key); break;
        case 'u': snprintf(b, TPG_KEY_MAX + 1, "%.*s", at ? (int)(at - key) : (int)strlen(key), key); break;
        case 'd': snprintf(b, TPG_KEY_MAX + 1, "%s", at ? at + 1 : ""); break;
        case 'c': snprintf(b, TPG_KEY_MAX + 1, "%s", at ? at : ""); break;
        default: b[0] = '\0'; break;
        }
        params[n] = b;
    }
    return n;
}

/* ---- the backend -------------------------------------------------------- */

static struct table *tpg_open(const char *spec, const struct conf *conf, char *err,
                              size_t errlen)
{
    const struct conf_pgsql *e = conf_pgsql_find(conf, spec);
    struct tpg_cache *c;
    struct tpg_table *t;

    if (!e) {
        snprintf(err, errlen, "no pgsql entry is called \"%s\"", spec);
        return NULL;
    }
    for (c = tpg_caches; c; c = c->next)
        if (strcmp(c->name, spec) == 0)
            break;
    if (!c) {
        if (!(c = calloc(1, sizeof *c)) || !(c->name = strdup(spec))) {
            free(c);
            snprintf(err, errlen, "pgsql %s: out of memory", spec);
            return NULL;
        }
        c->next = tpg_caches;
        tpg_caches = c;
    }
    if (tpg_cache_set(c, e) < 0 || !(t = calloc(1, sizeof *t))) {
        snprintf(err, errlen, "pgsql %s: out of memory", spec);
        if (c->refs == 0) {
            tpg_caches = c->next;       /* just added at the head */
            free(c->buckets);
            free(c->sql);
            free(c->name);
            free(c);
        }
        return NULL;
    }
    c->refs++;
    t->cache = c;
    return &t->base;
}

static void tpg_close(struct table *tt)
{
    struct tpg_table *t = (struct tpg_table *)tt;
    struct tpg_cache *c = t->cache, **pp;

    free(t);
    if (--c->refs > 0)
        return;
    /* No table on this name any more (the entry went away in a reload).
     * Pending requests hold table references, so none is in flight. */
    for (pp = &tpg_caches; *pp != c; pp = &(*pp)->next)
        ;
    *pp = c->next;
    while (c->inflight) {
        struct tpg_inflight *inf = c->inflight;
        c->inflight = inf->next;
        pg_cancel(inf->q);
        free(inf->key);
        free(inf);
    }
    tpg_clear(c);
    free(c->buckets);
    free(c->sql);
    free(c->name);
    free(c);
}

static void tpg_cancel(struct table_req *req);

static enum table_result tpg_lookup(struct table *tt, const char *key, table_cb *cb, void *arg,
                                    struct table_req **req)
{
    struct tpg_table *t = (struct tpg_table *)tt;
    struct tpg_cache *c = t->cache;
    char k[TPG_KEY_MAX + 1];
    char bufs[CONF_PGSQL_PARAMS_MAX][TPG_KEY_MAX + 1];
    const char *params[CONF_PGSQL_PARAMS_MAX];
    struct tpg_entry *e;
    struct tpg_inflight *inf;
    struct tpg_waiter *w;
    struct pg *p;
    uint64_t h;
    int n;

    *req = NULL;
    if (strlen(key) > TPG_KEY_MAX)
        return TABLE_NOTFOUND;          /* longer than any path SMTP allows */
    util_lower_copy(k, sizeof k, key);
    h = util_hash(UTIL_HASH_INIT, k, strlen(k));
    e = tpg_find(c, k, h);
    p = pg_find(c->name);
    if (e && (e->expires > time(NULL) || !pg_is_up(p))) {
        tpg_lru_unlink(c, e);
        tpg_lru_front(c, e);
        return e->found ? TABLE_FOUND : TABLE_NOTFOUND;
    }
    if (!pg_is_up(p))
        return TABLE_TEMPFAIL;
    for (inf = c->inflight; inf; inf = inf->next)
        if (strcmp(inf->key, k) == 0)
            break;
    if (!(w = calloc(1, sizeof *w)))
        return TABLE_TEMPFAIL;
    if (!inf) {
        if (!(inf = calloc(1, sizeof *inf)) || !(inf->key = strdup(k))) {
            free(inf);
            free(w);
            return TABLE_TEMPFAIL;
        }
        inf->cache = c;
        n = tpg_params(c->args, k, bufs, params);
        if (!(inf->q = pg_query(p, c->sql, n, params, tpg_on_result, inf))) {
            free(inf->key);
            free(inf);
            free(w);
            return TABLE_TEMPFAIL;
        }
        inf->next = c->inflight;
        c->inflight = inf;
    }
    w->req.be = &table_pgsql_backend;
    w->inf = inf;
    w->t = table_ref(tt);
    w->cb = cb;
    w->arg = arg;
    {
        /* In arrival order: the first to ask hears first. */
        struct tpg_waiter **wp = &inf->waiters;
        while (*wp)
            wp = &(*wp)->next;
        *wp = w;
    }
    *req = &w->req;
    return TABLE_PENDING;
}

static void tpg_cancel(struct table_req *req)
{
    struct tpg_waiter *w = (struct tpg_waiter *)req, **pp;
    struct table *t;
    if (!w)
        return;
    /* The query goes on and fills the cache for the next asker. */
    if (w->inf) {
        for (pp = &w->inf->waiters; *pp && *pp != w; pp = &(*pp)->next)
            ;
        if (*pp)
            *pp = w->next;
    }
    t = w->t;
    free(w);
    table_free(t);
}

static size_t tpg_count(const struct table *t)
{
    return 0;                           /* the database's size is not ours to know */
}

const struct table_backend table_pgsql_backend = {
    .name = "pgsql",
    .open = tpg_open,
    .lookup = tpg_lookup,
    .cancel = tpg_cancel,
    .count = tpg_count,
    .close = tpg_close,
};
