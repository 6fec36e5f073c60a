/*
 * table_lmdb.c - the "lmdb" table backend (a recipient map compiled by
 * `mxkeepctl map compile`, format in table_lmdb.h) and the compiler.
 *
 * Owns: per open map, one read-only LMDB environment (MDB_RDONLY |
 * MDB_NOLOCK | MDB_NOSUBDIR: nobody ever writes a compiled map in place,
 * so no lock file is needed, and the daemon never needs write access to
 * the map's directory) and one read transaction handle that is renewed for
 * each lookup and reset before the lookup returns: no transaction is ever
 * held across a callback or between lookups.
 *
 * A map is replaced by renaming a new file over it.  The open environment
 * keeps reading the old inode (a reload opens the new one); besides, a
 * lookup checks at most once a second (TABLE_LMDB_RECHECK) whether the
 * path now names another file and, if so, opens and validates it and
 * switches to it; a new map that fails to open is logged once and the old
 * one keeps serving.
 *
 * Never: writes to an open map, blocks (a lookup is a B-tree walk in
 * memory-mapped pages; a stat once a second), or answers PENDING.
 *
 * Security: lookup keys come from peers; they are length-checked before
 * they are copied into fixed buffers.  The map file is the
 * administrator's; its header is checked (version, sizes) before use, and
 * LMDB validates its own pages' meta data at open.
 */
#include "config.h"
#include "table_lmdb.h"
#include "table_file.h"
#include "table_int.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "log.h"
#include "smtp_parse.h"
#include "util.h"

/* Seconds between two checks whether the map's path names a new file. */
#define TABLE_LMDB_RECHECK      1
/* Header: version, entries, compile time, then the source path. */
#define HDR_VERSION_OFF         0
#define HDR_ENTRIES_OFF         1
#define HDR_TIME_OFF            9
#define HDR_PATH_OFF            17
#define HDR_PATH_MAX            4096
/* Longest key: local part, "@", domain. */
#define KEY_MAX                 (TABLE_LOCAL_MAX + 1 + SMTP_DOMAIN_MAX)
/* Map size of the compiler's temp environment: twice what the keys and
 * LMDB's per-node overhead need, plus room for branch pages and meta. */
#define COMPILE_NODE_OVERHEAD   16
#define COMPILE_SLACK           (16u << 20)
#define KEYS_MIN                65536

struct lmdb_map {
    MDB_env *env;
    MDB_dbi dbi;
    MDB_txn *txn;               /* reset between lookups */
    dev_t dev;
    ino_t ino;
    struct timespec mtime;
    off_t size;
    size_t entries;
};

struct lmdb_table {
    struct table base;          /* first: table.c's view */
    char *path;
    struct lmdb_map map;
    time_t checked;             /* last stat of path (monotonic seconds) */
    dev_t bad_dev;              /* a replacement that failed: not retried */
    ino_t bad_ino;
    struct timespec bad_mtime;
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (unsigned char)(v & 0xff);
}

static time_t mono_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

/* ---- reading ---- */

static void map_close(struct lmdb_map *m)
{
    if (m->txn != NULL)
        mdb_txn_abort(m->txn);
    if (m->env != NULL)
        mdb_env_close(m->env);
    memset(m, 0, sizeof *m);
}

static int map_open(struct lmdb_map *m, const char *path, char *err, size_t errlen)
{
    struct stat st;
    MDB_val k, v;
    int rc;

    memset(m, 0, sizeof *m);
    if (stat(path, &st) != 0) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        seterr(err, errlen, "%s: not a regular file", path);
        return -1;
    }
    if ((rc = mdb_env_create(&m->env)) != 0)
        goto fail;
    /* Map size 0: LMDB takes the size recorded in the map's meta page. */
    if ((rc = mdb_env_open(m->env, path, MDB_RDONLY | MDB_NOLOCK | MDB_NOSUBDIR | MDB_NOTLS,
                           0)) != 0)
        goto fail;
    if ((rc = mdb_txn_begin(m->env, NULL, MDB_RDONLY, &m->txn)) != 0)
        goto fail;
    if ((rc = mdb_dbi_open(m->txn, NULL, 0, &m->dbi)) != 0)
        goto fail;
    k.mv_data = (void *)(uintptr_t)TABLE_LMDB_HEADER_KEY;
    k.mv_size = TABLE_LMDB_HEADER_KEYLEN;
    rc = mdb_get(m->txn, m->dbi, &k, &v);
    if (rc == MDB_NOTFOUND || (rc == 0 && v.mv_size < HDR_PATH_OFF)) {
        seterr(err, errlen, "%s: not a recipient map (no mxkeep header; "
               "make one with mxkeepctl map compile)", path);
        map_close(m);
        return -1;
    }
    if (rc != 0)
        goto fail;
    const unsigned char *h = v.mv_data;
    if (h[HDR_VERSION_OFF] != TABLE_LMDB_VERSION) {
        seterr(err, errlen, "%s: map format version %u, this mxkeep reads %u: compile it again",
               path, h[HDR_VERSION_OFF], TABLE_LMDB_VERSION);
        map_close(m);
        return -1;
    }
    m->entries = (size_t)get_le64(h + HDR_ENTRIES_OFF);
    mdb_txn_reset(m->txn);
    m->dev = st.st_dev;
    m->ino = st.st_ino;
    m->mtime = st.st_mtim;
    m->size = st.st_size;
    return 0;
fail:
    seterr(err, errlen, "%s: %s", path, rc == MDB_INVALID ? "not an LMDB file (corrupt map?)"
                                                          : mdb_strerror(rc));
    map_close(m);
    return -1;
}

static struct lmdb_table *lt_of(const struct table *t)
{
    return (struct lmdb_table *)(uintptr_t)t;
}

static void lmdb_close(struct table *t)
{
    struct lmdb_table *lt = lt_of(t);

    if (lt == NULL)
        return;
    map_close(&lt->map);
    free(lt->path);
    free(lt);
}

static struct table *lmdb_open(const char *spec, const struct conf *c, char *err, size_t errlen)
{
    struct lmdb_table *lt = calloc(1, sizeof *lt);

    (void)c;
    if (lt == NULL || (lt->path = strdup(spec)) == NULL) {
        seterr(err, errlen, "%s: out of memory", spec);
        free(lt);
        return NULL;
    }
    if (map_open(&lt->map, spec, err, errlen) < 0) {
        free(lt->path);
        free(lt);
        return NULL;
    }
    lt->checked = mono_seconds();
    return &lt->base;
}

/* Has the path been replaced (map compile renamed a new file over it)?
 * Then switch to the new map if it opens; keep the old one otherwise. */
static void lmdb_recheck(struct lmdb_table *lt)
{
    struct stat st;
    struct lmdb_map nm;
    char err[512];
    time_t now = mono_seconds();

    if (now - lt->checked < TABLE_LMDB_RECHECK)
        return;
    lt->checked = now;
    if (stat(lt->path, &st) != 0)
        return;                 /* gone for now: keep serving what we have */
    if (st.st_dev == lt->map.dev && st.st_ino == lt->map.ino &&
        st.st_mtim.tv_sec == lt->map.mtime.tv_sec &&
        st.st_mtim.tv_nsec == lt->map.mtime.tv_nsec && st.st_size == lt->map.size)
        return;
    if (st.st_dev == lt->bad_dev && st.st_ino == lt->bad_ino &&
        st.st_mtim.tv_sec == lt->bad_mtime.tv_sec && st.st_mtim.tv_nsec == lt->bad_mtime.tv_nsec)
        return;
    if (map_open(&nm, lt->path, err, sizeof err) < 0) {
        log_warn("recipients: %s; still serving the map opened before", err);
        lt->bad_dev = st.st_dev;
        lt->bad_ino = st.st_ino;
        lt->bad_mtime = st.st_mtim;
        return;
    }
    log_info("recipients: %s replaced: %zu entries (was %zu)", lt->path, nm.entries,
             lt->map.entries);
    map_close(&lt->map);
    lt->map = nm;
}

/* 1 when key (n octets) is in the map, 0 when not, -1 on a read error. */
static int map_has(struct lmdb_map *m, const char *key, size_t n)
{
    MDB_val k = { .mv_size = n, .mv_data = (void *)(uintptr_t)key }, v;
    int rc = mdb_get(m->txn, m->dbi, &k, &v);

    if (rc == 0)
        return 1;
    return rc == MDB_NOTFOUND ? 0 : -1;
}

static enum table_result lmdb_lookup(struct table *t, const char *key, table_cb *cb, void *arg,
                                     struct table_req **req)
{
    struct lmdb_table *lt = lt_of(t);
    char buf[KEY_MAX];
    const char *at = strrchr(key, '@');
    int rc, hit;

    (void)cb;
    (void)arg;
    if (req != NULL)
        *req = NULL;
    if (at == NULL)
        return TABLE_NOTFOUND;
    size_t n = (size_t)(at - key), dn = strlen(at + 1);
    if (dn > 0 && at[dn] == '.')
        dn--;
    if (dn == 0 || dn > SMTP_DOMAIN_MAX)
        return TABLE_NOTFOUND;
    /* A local part longer than any entry can only match "@domain". */
    size_t ln = n > 0 && n <= TABLE_LOCAL_MAX ? table_file_local_normalize(key, n, buf) : 0;
    buf[ln] = '@';
    for (size_t i = 0; i < dn; i++)
        buf[ln + 1 + i] = util_lower(at[1 + i]);

    lmdb_recheck(lt);
    if ((rc = mdb_txn_renew(lt->map.txn)) != 0) {
        log_warn("recipients: %s: %s", lt->path, mdb_strerror(rc));
        return TABLE_TEMPFAIL;
    }
    hit = ln > 0 ? map_has(&lt->map, buf, ln + 1 + dn) : 0;
    if (hit == 0)
        hit = map_has(&lt->map, buf + ln, 1 + dn);     /* "@domain" */
    mdb_txn_reset(lt->map.txn);
    if (hit < 0) {
        log_warn("recipients: %s: read error", lt->path);
        return TABLE_TEMPFAIL;
    }
    return hit ? TABLE_FOUND : TABLE_NOTFOUND;
}

static void lmdb_cancel(struct table_req *req)
{
    if (req != NULL)
        log_panic("table_lmdb: cancel of a request it never made");
}

static size_t lmdb_count(const struct table *t)
{
    return lt_of(t)->map.entries;
}

const struct table_backend table_lmdb_backend = {
    .name = "lmdb",
    .open = lmdb_open,
    .lookup = lmdb_lookup,
    .cancel = lmdb_cancel,
    .count = lmdb_count,
    .close = lmdb_close,
};

/* ---- compiling ---- */

struct keys {
    char *arena;                /* "key\0" after "key\0" */
    size_t len, cap;
    size_t *off;                /* offsets of the keys */
    size_t n, ncap;
};

static int keys_add(void *arg, const char *local, size_t ln, const char *domain, size_t dn,
                    size_t line, const char **why)
{
    struct keys *k = arg;
    size_t need = ln + 1 + dn + 1;

    (void)line;
    *why = "out of memory";
    if (k->len + need > k->cap) {
        size_t cap = k->cap ? k->cap : KEYS_MIN;
        while (cap < k->len + need)
            cap *= 2;
        char *na = realloc(k->arena, cap);
        if (na == NULL)
            return -1;
        k->arena = na;
        k->cap = cap;
    }
    if (k->n == k->ncap) {
        size_t cap = k->ncap ? k->ncap * 2 : KEYS_MIN;
        size_t *no = realloc(k->off, cap * sizeof *no);
        if (no == NULL)
            return -1;
        k->off = no;
        k->ncap = cap;
    }
    char *p = k->arena + k->len;
    memcpy(p, local, ln);
    p[ln] = '@';
    memcpy(p + ln + 1, domain, dn);
    p[ln + 1 + dn] = '\0';
    k->off[k->n++] = k->len;
    k->len += need;
    return 0;
}

static const char *sort_arena;

static int key_cmp(const void *a, const void *b)
{
    /* LMDB's default order: memcmp, shorter first on a tie; keys hold no
     * NUL, so strcmp is that order. */
    return strcmp(sort_arena + *(const size_t *)a, sort_arena + *(const size_t *)b);
}

static int fsync_path(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    int rc;

    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

/* Write keys (sorted, unique) and the header into the new map tmp. */
static int compile_write(const char *tmp, const char *src, const struct keys *k, size_t n,
                         char *err, size_t errlen)
{
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    unsigned char hdr[HDR_PATH_OFF + HDR_PATH_MAX];
    size_t plen = strnlen(src, HDR_PATH_MAX);
    int rc;

    if ((rc = mdb_env_create(&env)) != 0)
        goto fail;
    if ((rc = mdb_env_set_mapsize(env, 2 * (k->len + n * COMPILE_NODE_OVERHEAD) +
                                  COMPILE_SLACK)) != 0)
        goto fail;
    /* Nobody else knows the temp name: no lock file needed. */
    if ((rc = mdb_env_open(env, tmp, MDB_NOSUBDIR | MDB_NOLOCK | MDB_NOTLS, 0644)) != 0)
        goto fail;
    if ((rc = mdb_txn_begin(env, NULL, 0, &txn)) != 0)
        goto fail;
    if ((rc = mdb_dbi_open(txn, NULL, 0, &dbi)) != 0)
        goto fail;
    hdr[HDR_VERSION_OFF] = TABLE_LMDB_VERSION;
    put_le64(hdr + HDR_ENTRIES_OFF, n);
    put_le64(hdr + HDR_TIME_OFF, (uint64_t)time(NULL));
    memcpy(hdr + HDR_PATH_OFF, src, plen);
    MDB_val hk = { TABLE_LMDB_HEADER_KEYLEN, (void *)(uintptr_t)TABLE_LMDB_HEADER_KEY };
    MDB_val hv = { HDR_PATH_OFF + plen, hdr };
    /* The header key starts with NUL: it sorts first, so MDB_APPEND (full
     * pages, no search) holds for it and every key after it. */
    if ((rc = mdb_put(txn, dbi, &hk, &hv, MDB_APPEND)) != 0)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        const char *key = k->arena + k->off[i];
        MDB_val kv = { strlen(key), (void *)(uintptr_t)key }, vv = { 0, (void *)"" };
        if ((rc = mdb_put(txn, dbi, &kv, &vv, MDB_APPEND)) != 0)
            goto fail;
    }
    rc = mdb_txn_commit(txn);   /* synced by LMDB */
    txn = NULL;
    if (rc != 0)
        goto fail;
    mdb_env_close(env);
    return 0;
fail:
    seterr(err, errlen, "%s: %s", tmp, rc == MDB_MAP_FULL ? "map full (internal size estimate)"
                                                          : mdb_strerror(rc));
    if (txn != NULL)
        mdb_txn_abort(txn);
    if (env != NULL)
        mdb_env_close(env);
    return -1;
}

int table_lmdb_compile(const char *src, const char *out, size_t *entries, char *err,
                       size_t errlen)
{
    struct keys k = { 0 };
    struct stat st;
    size_t len, n = 0;
    char *text, *tmp = NULL, *dircopy = NULL;
    int fd = -1, rc = -1;

    text = table_file_slurp(src, &len, err, errlen);
    if (text == NULL)
        return -1;
    if (table_file_parse(text, len, src, keys_add, &k, err, errlen) < 0)
        goto done;
    free(text);
    text = NULL;
    sort_arena = k.arena;
    qsort(k.off, k.n, sizeof *k.off, key_cmp);
    for (size_t i = 0; i < k.n; i++)
        if (n == 0 || strcmp(k.arena + k.off[n - 1], k.arena + k.off[i]) != 0)
            k.off[n++] = k.off[i];

    size_t tl = strlen(out) + sizeof ".tmp.XXXXXX";
    if ((tmp = malloc(tl)) == NULL || (dircopy = strdup(out)) == NULL) {
        seterr(err, errlen, "%s: out of memory", out);
        goto done;
    }
    snprintf(tmp, tl, "%s.tmp.XXXXXX", out);
    if ((fd = mkstemp(tmp)) < 0) {
        seterr(err, errlen, "%s: %s", tmp, strerror(errno));
        goto done;
    }
    /* The map is as readable as its list: a 0640 root:mxkeep list gives a
     * 0640 root:mxkeep map the unprivileged daemon can still read. */
    if (stat(src, &st) == 0) {
        if (fchmod(fd, st.st_mode & 0666) != 0 ||
            (geteuid() == 0 && fchown(fd, (uid_t)-1, st.st_gid) != 0)) {
            seterr(err, errlen, "%s: %s", tmp, strerror(errno));
            goto done;
        }
    }
    close(fd);
    fd = -1;
    if (compile_write(tmp, src, &k, n, err, errlen) < 0)
        goto done;
    if (fsync_path(tmp, O_RDONLY) != 0 || rename(tmp, out) != 0) {
        seterr(err, errlen, "%s: %s", out, strerror(errno));
        goto done;
    }
    free(tmp);
    tmp = NULL;
    /* The rename is durable once the directory is. */
    if (fsync_path(dirname(dircopy), O_RDONLY | O_DIRECTORY) != 0) {
        seterr(err, errlen, "%s: directory sync: %s", out, strerror(errno));
        goto done;
    }
    if (entries != NULL)
        *entries = n;
    rc = 0;
done:
    if (fd >= 0)
        close(fd);
    if (tmp != NULL)
        unlink(tmp);
    free(tmp);
    free(dircopy);
    free(text);
    free(k.arena);
    free(k.off);
    return rc;
}
