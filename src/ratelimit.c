/*
 * ratelimit.c - bounded per-key event counters in fixed windows (see
 * ratelimit.h).
 *
 * Owns: the table (a hash of chained entries and a recency list for
 * eviction).  Never: does I/O, reads the clock, logs, or grows past
 * max_keys entries.
 *
 * Security: keys are client addresses, which a peer chooses in bulk; the
 * bound and least-recently-seen eviction keep memory fixed, and the hash
 * is seeded per table so colliding keys cannot be precomputed.
 */
#include "config.h"
#include "ratelimit.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define RL_KEY_MAX 32
#define RL_BUCKETS_PER_KEY 2            /* load factor 1/2 at most */
#define FNV_OFFSET 1469598103934665603ULL
#define FNV_PRIME 1099511628211ULL

struct rl_entry {
    struct rl_entry *hnext;             /* hash chain */
    struct rl_entry *older, *newer;     /* recency list */
    unsigned char key[RL_KEY_MAX + 1];  /* kind, then the key */
    size_t keylen;
    int64_t start;                      /* window start */
    uint64_t count;
};

struct ratelimit {
    struct rl_entry **buckets;
    size_t nbuckets;
    size_t n, max;
    uint64_t seed;
    struct rl_entry *oldest, *newest;
};

static uint64_t rl_hash(const struct ratelimit *rl, const unsigned char *k, size_t n)
{
    uint64_t h = FNV_OFFSET ^ rl->seed;
    for (size_t i = 0; i < n; i++) {
        h ^= k[i];
        h *= FNV_PRIME;
    }
    return h;
}

struct ratelimit *ratelimit_new(size_t max_keys)
{
    struct ratelimit *rl = calloc(1, sizeof *rl);
    if (rl == NULL)
        return NULL;
    rl->max = max_keys ? max_keys : 1;
    rl->nbuckets = rl->max * RL_BUCKETS_PER_KEY;
    rl->buckets = calloc(rl->nbuckets, sizeof *rl->buckets);
    if (rl->buckets == NULL) {
        free(rl);
        return NULL;
    }
    rl->seed = (uint64_t)(uintptr_t)rl ^ ((uint64_t)random() << 32) ^ (uint64_t)random();
    return rl;
}

void ratelimit_free(struct ratelimit *rl)
{
    if (rl == NULL)
        return;
    struct rl_entry *e = rl->oldest;
    while (e) {
        struct rl_entry *n = e->newer;
        free(e);
        e = n;
    }
    free(rl->buckets);
    free(rl);
}

size_t ratelimit_size(const struct ratelimit *rl)
{
    return rl ? rl->n : 0;
}

static void rl_unlink_recent(struct ratelimit *rl, struct rl_entry *e)
{
    if (e->older)
        e->older->newer = e->newer;
    else
        rl->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        rl->newest = e->older;
    e->older = e->newer = NULL;
}

static void rl_push_newest(struct ratelimit *rl, struct rl_entry *e)
{
    e->older = rl->newest;
    e->newer = NULL;
    if (rl->newest)
        rl->newest->newer = e;
    else
        rl->oldest = e;
    rl->newest = e;
}

static void rl_evict_oldest(struct ratelimit *rl)
{
    struct rl_entry *e = rl->oldest;
    if (e == NULL)
        return;
    size_t b = rl_hash(rl, e->key, e->keylen) % rl->nbuckets;
    for (struct rl_entry **pp = &rl->buckets[b]; *pp; pp = &(*pp)->hnext) {
        if (*pp == e) {
            *pp = e->hnext;
            break;
        }
    }
    rl_unlink_recent(rl, e);
    free(e);
    rl->n--;
}

uint64_t ratelimit_hit(struct ratelimit *rl, enum ratelimit_kind kind, const void *key,
                       size_t keylen, int64_t now, long window, long limit)
{
    unsigned char k[RL_KEY_MAX + 1];

    if (keylen > RL_KEY_MAX)
        keylen = RL_KEY_MAX;
    k[0] = (unsigned char)kind;
    memcpy(k + 1, key, keylen);
    keylen++;
    size_t b = rl_hash(rl, k, keylen) % rl->nbuckets;
    struct rl_entry *e;
    for (e = rl->buckets[b]; e; e = e->hnext)
        if (e->keylen == keylen && memcmp(e->key, k, keylen) == 0)
            break;
    if (e == NULL) {
        if (rl->n >= rl->max)
            rl_evict_oldest(rl);
        e = calloc(1, sizeof *e);
        if (e == NULL)
            return 1;           /* fail open: a limit is not worth refusing mail */
        memcpy(e->key, k, keylen);
        e->keylen = keylen;
        e->start = now;
        e->hnext = rl->buckets[b];
        rl->buckets[b] = e;
        rl->n++;
    } else {
        rl_unlink_recent(rl, e);
    }
    rl_push_newest(rl, e);
    if (now < e->start || now - e->start >= window) {
        e->start = now;
        e->count = 0;
    }
    if (limit > 0 && e->count >= (uint64_t)limit)
        return (uint64_t)limit + 1;
    return ++e->count;
}

void ratelimit_network(int family, const void *addr, int bits, unsigned char out[16])
{
    size_t len = family == AF_INET6 ? 16 : 4;
    memset(out, 0, 16);
    if (bits < 0)
        bits = 0;
    if ((size_t)bits > len * 8)
        bits = (int)(len * 8);
    memcpy(out, addr, len);
    size_t full = (size_t)bits / 8;
    if (full < len) {
        out[full] &= (unsigned char)(0xff << (8 - bits % 8));
        memset(out + full + 1, 0, len - full - 1);
    }
}
