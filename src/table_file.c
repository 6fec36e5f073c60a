/*
 * table_file.c - the "file" table backend: a recipient list file held in
 * memory (table_file.h has the format), and the list parser that
 * `mxkeepctl map compile` shares.
 *
 * Owns: one immutable snapshot of one list file: a hash of the distinct
 * domains it names, and one hash set of (domain index, local part) whose
 * records live in one arena of strings.  A hosting provider may list a
 * million recipients over ten thousand domains, so a lookup is O(1) (two
 * open-addressing probes, no allocation) and an entry costs its local part
 * plus about 13 octets (5 in the arena, 8 in the index at 70% load): no
 * malloc per entry.  The file is read whole once at open; the snapshot is
 * never changed afterwards (reload opens a new one).
 *
 * Never: does I/O after open, blocks in lookup, or answers PENDING.
 *
 * Security: list files are the administrator's and trusted for content,
 * but are still parsed with bounds on every line (entry, local part and
 * domain lengths); a lookup key from a peer is only copied into fixed
 * buffers after its length was checked.
 */
#include "config.h"
#include "table_file.h"
#include "table_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "log.h"
#include "smtp_parse.h"
#include "util.h"

/* Longest entry (after trimming and comment removal) a list line may hold:
 * the longest local part, "@", the longest domain; this catches a file
 * that is not a recipient list at all. */
#define LIST_ENTRY_MAX      (TABLE_LOCAL_MAX + 1 + SMTP_DOMAIN_MAX)

/* Entry set: open addressing, linear probing, at most LOAD_NUM/LOAD_DEN
 * full.  Linear probing over 8-octet slots keeps a miss inside one or two
 * cache lines at this load.  The set is sized from the file's line count
 * up front, so a big list never rehashes while loading. */
#define SET_MIN_SLOTS       1024
#define SET_LOAD_NUM        7
#define SET_LOAD_DEN        10
#define ARENA_MIN           65536
/* Arena record: 4-octet domain index, 1-octet length, then the local part. */
#define REC_DOM_SIZE        4
#define REC_HDR_SIZE        (REC_DOM_SIZE + 1)
/* Offset 0 of the arena is never a record, so a zero slot means empty. */
#define ARENA_RESERVED      1

/* Domain table: at most half full. */
#define DOM_LOAD_FACTOR     2
#define DOM_MIN_SLOTS       16
#define DOM_MIN_CAP         16

struct set_slot {
    uint32_t off;               /* arena offset of the record; 0: empty */
    uint32_t hash;              /* cached, so growth and misses skip the arena */
};

struct file_dom {
    uint32_t name_off;          /* arena offset of the NUL-terminated name */
    uint32_t line;              /* first line naming it */
    uint32_t hash;
    unsigned char len;
    unsigned char wildcard;     /* "@domain": every local part */
};

struct file_table {
    struct table base;          /* first: table.c's view */
    char *path;
    struct file_dom *doms;
    size_t ndoms, doms_cap;
    uint32_t *dom_slots;        /* domain index + 1; 0: empty */
    size_t dom_mask;
    struct set_slot *slots;
    size_t set_mask, set_used;
    char *arena;
    size_t arena_len, arena_cap;
    size_t entries;             /* entries, catch-alls included, duplicates once */
    long last_dom;              /* while loading: the previous line's domain, or -1 */
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

static uint32_t fold(uint64_t h)
{
    return (uint32_t)(h ^ (h >> 32));
}

/* ---- the list format (pure) ---- */

static int is_space(unsigned char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f';
}

static int is_atext(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return 1;
    if (ch >= 0x80)             /* RFC 6531 UTF8-non-ascii */
        return 1;
    return ch != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", ch) != NULL;
}

static int dot_atom_valid(const char *s, size_t n)
{
    if (n == 0 || s[0] == '.' || s[n - 1] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '.') {
            if (s[i - 1] == '.')
                return 0;
        } else if (!is_atext(ch)) {
            return 0;
        }
    }
    return 1;
}

static int quoted_valid(const char *s, size_t n)
{
    if (n < 2 || s[0] != '"' || s[n - 1] != '"')
        return 0;
    for (size_t i = 1; i < n - 1; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < ' ' || ch == 0x7f)
            return 0;
        if (ch == '"')
            return 0;
        if (ch == '\\') {
            if (i + 1 >= n - 1)
                return 0;
            i++;
        }
    }
    return 1;
}

size_t table_file_local_normalize(const char *s, size_t n, char *out)
{
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"' && dot_atom_valid(s + 1, n - 2)) {
        s++;
        n -= 2;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = util_lower(s[i]);     /* ASCII only: SMTPUTF8 octets as given */
    return n;
}

/* Domain length with one trailing dot ignored. */
static size_t domain_len(const char *d, size_t n)
{
    return (n > 0 && d[n - 1] == '.') ? n - 1 : n;
}

/* A host name as a list names it: labels of letters, digits, '-', or
 * UTF-8 (U-labels as given).  Address literals are never served. */
static int domain_valid(const char *d, size_t n)
{
    if (n == 0 || d[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)d[i];
        if (ch == '.') {
            if (d[i - 1] == '.')
                return 0;
        } else if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                     (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch >= 0x80)) {
            return 0;
        }
    }
    return 1;
}

/* Parse one trimmed, comment-free entry.  Returns NULL or what is wrong. */
static const char *entry_parse(const char *s, size_t n, size_t line, table_file_entry_fn *fn,
                               void *arg)
{
    char local[TABLE_LOCAL_MAX], dom[SMTP_DOMAIN_MAX];
    const char *why = NULL;
    size_t at;

    if (n > LIST_ENTRY_MAX)
        return "entry too long";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (is_space(ch) || ch == '\n')
            return "white space inside an address";
        if (ch < ' ' || ch == 0x7f)
            return "control character inside an address";
    }
    for (at = n; at > 0 && s[at - 1] != '@'; at--)
        ;
    if (at == 0)
        return "no @ in entry (want local@domain or @domain)";
    at--;
    const char *d = s + at + 1;
    size_t dn = domain_len(d, n - at - 1);
    if (dn == 0)
        return "no domain after @";
    if (dn > SMTP_DOMAIN_MAX)
        return "domain longer than 255 octets";
    if (!domain_valid(d, dn))
        return "bad domain";
    for (size_t i = 0; i < dn; i++)
        dom[i] = util_lower(d[i]);
    size_t ln = 0;
    if (at > 0) {
        if (at > TABLE_LOCAL_MAX)
            return "local part longer than 255 octets";
        if (!dot_atom_valid(s, at) && !quoted_valid(s, at))
            return "bad local part";
        ln = table_file_local_normalize(s, at, local);
    }
    if (fn(arg, local, ln, dom, dn, line, &why) < 0)
        return why ? why : "cannot add entry";
    return NULL;
}

int table_file_parse(const char *text, size_t len, const char *path, table_file_entry_fn *fn,
                     void *arg, char *err, size_t errlen)
{
    size_t lineno = 0;

    for (const char *s = text, *end = text + len; s < end;) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *e = nl ? nl : end;
        const char *next = nl ? nl + 1 : end;

        lineno++;
        /* '#' opens a comment at line start or after white space only:
         * '#' is a legal atext character ("a#b@example.org"). */
        for (const char *q = memchr(s, '#', (size_t)(e - s)); q != NULL;
             q = memchr(q + 1, '#', (size_t)(e - q - 1))) {
            if (q == s || is_space((unsigned char)q[-1])) {
                e = q;
                break;
            }
            if (q + 1 >= e)
                break;
        }
        while (s < e && is_space((unsigned char)*s))
            s++;
        while (e > s && is_space((unsigned char)e[-1]))
            e--;
        if (s < e) {
            const char *why = entry_parse(s, (size_t)(e - s), lineno, fn, arg);
            if (why != NULL) {
                seterr(err, errlen, "%s:%zu: %s", path, lineno, why);
                return -1;
            }
        }
        s = next;
    }
    return 0;
}

char *table_file_slurp(const char *path, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf = NULL;
    size_t have = 0;

    if (fd < 0) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) < 0) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        seterr(err, errlen, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size + 1);
    if (buf == NULL) {
        seterr(err, errlen, "%s: out of memory", path);
        close(fd);
        return NULL;
    }
    /* A file growing under us is read as far as its stat size: the list
     * is replaced atomically (rename) by any sane provisioning tool. */
    while (have < size) {
        ssize_t r = read(fd, buf + have, size - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            seterr(err, errlen, "%s: %s", path, strerror(errno));
            free(buf);
            close(fd);
            return NULL;
        }
        if (r == 0)
            break;
        have += (size_t)r;
    }
    close(fd);
    buf[have] = '\0';
    *len = have;
    return buf;
}

/* ---- the in-memory table ---- */

/* Map the list read-only for the parse: no second copy of a 20 MB list on
 * the heap at start and reload.  An empty file maps to "".  NULL and
 * "path: reason" in err on failure. */
static const char *list_map(const char *path, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    void *m;

    if (fd < 0 || fstat(fd, &st) < 0) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        seterr(err, errlen, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    *len = (size_t)st.st_size;
    if (*len == 0) {
        close(fd);
        return "";
    }
    /* The list is replaced by rename, never rewritten in place by a sane
     * provisioning tool; a file truncated under us would SIGBUS, as it
     * would for any reader of a mapped file. */
    m = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    madvise(m, *len, MADV_SEQUENTIAL);
    return m;
}

static void list_unmap(const char *text, size_t len)
{
    if (len > 0)
        munmap((void *)(uintptr_t)text, len);
}

static struct file_table *ft_of(const struct table *t)
{
    return (struct file_table *)(uintptr_t)t;
}

/* Append n octets (plus a NUL when nul) to the arena; its offset or 0. */
static uint32_t arena_put(struct file_table *ft, const void *p, size_t n, int nul)
{
    size_t need = n + (nul ? 1 : 0);

    if (ft->arena_len + need > UINT32_MAX)
        return 0;
    if (ft->arena_len + need > ft->arena_cap) {
        size_t cap = ft->arena_cap * 2;
        while (cap < ft->arena_len + need)
            cap *= 2;
        char *na = realloc(ft->arena, cap);
        if (na == NULL)
            return 0;
        ft->arena = na;
        ft->arena_cap = cap;
    }
    uint32_t off = (uint32_t)ft->arena_len;
    memcpy(ft->arena + off, p, n);
    if (nul)
        ft->arena[off + n] = '\0';
    ft->arena_len += need;
    return off;
}

/* Index of domain d (n octets, normalized), or -1. */
static long dom_find(const struct file_table *ft, const char *d, size_t n, uint32_t hash)
{
    for (size_t i = hash & ft->dom_mask;; i = (i + 1) & ft->dom_mask) {
        uint32_t v = ft->dom_slots[i];
        if (v == 0)
            return -1;
        const struct file_dom *fd = &ft->doms[v - 1];
        if (fd->hash == hash && fd->len == n && memcmp(ft->arena + fd->name_off, d, n) == 0)
            return (long)(v - 1);
    }
}

static int dom_grow(struct file_table *ft)
{
    size_t nslots = (ft->dom_mask + 1) * 2;
    uint32_t *ns = calloc(nslots, sizeof *ns);

    if (ns == NULL)
        return -1;
    for (size_t k = 0; k < ft->ndoms; k++) {
        size_t i = ft->doms[k].hash & (nslots - 1);
        while (ns[i] != 0)
            i = (i + 1) & (nslots - 1);
        ns[i] = (uint32_t)(k + 1);
    }
    free(ft->dom_slots);
    ft->dom_slots = ns;
    ft->dom_mask = nslots - 1;
    return 0;
}

/* The index of domain d, added when new.  -1: out of memory. */
static long dom_add(struct file_table *ft, const char *d, size_t n, size_t line)
{
    uint32_t hash = fold(util_hash(UTIL_HASH_INIT, d, n));
    long k = dom_find(ft, d, n, hash);

    if (k >= 0)
        return k;
    if (ft->ndoms >= UINT32_MAX - 1)
        return -1;
    if (ft->ndoms == ft->doms_cap) {
        size_t cap = ft->doms_cap ? ft->doms_cap * 2 : DOM_MIN_CAP;
        struct file_dom *nd = realloc(ft->doms, cap * sizeof *nd);
        if (nd == NULL)
            return -1;
        ft->doms = nd;
        ft->doms_cap = cap;
    }
    uint32_t off = arena_put(ft, d, n, 1);
    if (off == 0)
        return -1;
    struct file_dom *fd = &ft->doms[ft->ndoms];
    fd->name_off = off;
    fd->line = line > UINT32_MAX ? UINT32_MAX : (uint32_t)line;
    fd->hash = hash;
    fd->len = (unsigned char)n;
    fd->wildcard = 0;
    k = (long)ft->ndoms++;
    size_t i = hash & ft->dom_mask;
    while (ft->dom_slots[i] != 0)
        i = (i + 1) & ft->dom_mask;
    ft->dom_slots[i] = (uint32_t)(k + 1);
    if (ft->ndoms * DOM_LOAD_FACTOR > ft->dom_mask + 1 && dom_grow(ft) < 0)
        return -1;
    return k;
}

static uint32_t entry_hash(uint32_t dom, const char *local, size_t n)
{
    unsigned char d[REC_DOM_SIZE];

    memcpy(d, &dom, sizeof d);
    return fold(util_hash(util_hash(UTIL_HASH_INIT, d, sizeof d), local, n));
}

static int rec_equal(const struct file_table *ft, uint32_t off, uint32_t dom, const char *local,
                     size_t n)
{
    const char *r = ft->arena + off;
    uint32_t rdom;

    memcpy(&rdom, r, sizeof rdom);
    return rdom == dom && (unsigned char)r[REC_DOM_SIZE] == n &&
           memcmp(r + REC_HDR_SIZE, local, n) == 0;
}

/* Slot holding (dom, local), or the empty slot where it would go. */
static size_t set_probe(const struct file_table *ft, uint32_t hash, uint32_t dom,
                        const char *local, size_t n)
{
    for (size_t i = hash & ft->set_mask;; i = (i + 1) & ft->set_mask) {
        const struct set_slot *s = &ft->slots[i];
        if (s->off == 0)
            return i;
        if (s->hash == hash && rec_equal(ft, s->off, dom, local, n))
            return i;
    }
}

static int set_grow(struct file_table *ft)
{
    size_t nslots = (ft->set_mask + 1) * 2;
    struct set_slot *ns = calloc(nslots, sizeof *ns);

    if (ns == NULL)
        return -1;
    for (size_t k = 0; k <= ft->set_mask; k++) {
        struct set_slot s = ft->slots[k];
        if (s.off == 0)
            continue;
        size_t i = s.hash & (nslots - 1);
        while (ns[i].off != 0)
            i = (i + 1) & (nslots - 1);
        ns[i] = s;
    }
    free(ft->slots);
    ft->slots = ns;
    ft->set_mask = nslots - 1;
    return 0;
}

/* Add (dom, local); 1 added, 0 already there, -1 out of memory/space. */
static int set_add(struct file_table *ft, uint32_t dom, const char *local, size_t n)
{
    uint32_t hash = entry_hash(dom, local, n);
    size_t i = set_probe(ft, hash, dom, local, n);
    unsigned char hdr[REC_HDR_SIZE];

    if (ft->slots[i].off != 0)
        return 0;
    memcpy(hdr, &dom, REC_DOM_SIZE);
    hdr[REC_DOM_SIZE] = (unsigned char)n;
    uint32_t off = arena_put(ft, hdr, sizeof hdr, 0);
    if (off == 0 || arena_put(ft, local, n, 0) == 0)
        return -1;
    ft->slots[i].off = off;
    ft->slots[i].hash = hash;
    ft->set_used++;
    if (ft->set_used * SET_LOAD_DEN > (ft->set_mask + 1) * SET_LOAD_NUM && set_grow(ft) < 0)
        return -1;
    return 1;
}

static int file_entry(void *arg, const char *local, size_t ln, const char *domain, size_t dn,
                      size_t line, const char **why)
{
    struct file_table *ft = arg;
    long k = ft->last_dom;

    /* Lists are usually grouped by domain: the previous line's domain
     * saves a hash and a probe per line. */
    if (k < 0 || ft->doms[k].len != dn || memcmp(ft->arena + ft->doms[k].name_off, domain, dn) != 0)
        k = ft->last_dom = dom_add(ft, domain, dn, line);

    *why = "out of memory";
    if (k < 0)
        return -1;
    if (ln == 0) {
        if (!ft->doms[k].wildcard) {
            ft->doms[k].wildcard = 1;
            ft->entries++;
        }
        return 0;
    }
    int r = set_add(ft, (uint32_t)k, local, ln);
    if (r < 0)
        return -1;
    ft->entries += (size_t)r;
    return 0;
}

static void file_close(struct table *t)
{
    struct file_table *ft = ft_of(t);

    if (ft == NULL)
        return;
    free(ft->path);
    free(ft->doms);
    free(ft->dom_slots);
    free(ft->slots);
    free(ft->arena);
    free(ft);
}

static struct table *file_open(const char *spec, const struct conf *c, char *err, size_t errlen)
{
    struct file_table *ft = calloc(1, sizeof *ft);
    size_t len, lines = 0, slots = SET_MIN_SLOTS;
    const char *text;

    (void)c;
    if (ft == NULL || (ft->path = strdup(spec)) == NULL) {
        seterr(err, errlen, "%s: out of memory", spec);
        free(ft);
        return NULL;
    }
    text = list_map(spec, &len, err, errlen);
    if (text == NULL) {
        file_close(&ft->base);
        return NULL;
    }
    /* Size the set for every line being an entry: no rehash while loading
     * a million lines, and the arena for the file's own size. */
    for (const char *p = text; (p = memchr(p, '\n', (size_t)(text + len - p))) != NULL; p++)
        lines++;
    while (slots * SET_LOAD_NUM < (lines + 1) * SET_LOAD_DEN)
        slots *= 2;
    ft->slots = calloc(slots, sizeof *ft->slots);
    ft->set_mask = slots - 1;
    ft->arena_cap = len + ARENA_MIN;
    ft->arena = malloc(ft->arena_cap);
    ft->arena_len = ARENA_RESERVED;
    ft->dom_slots = calloc(DOM_MIN_SLOTS, sizeof *ft->dom_slots);
    ft->dom_mask = DOM_MIN_SLOTS - 1;
    ft->last_dom = -1;
    if (ft->slots == NULL || ft->arena == NULL || ft->dom_slots == NULL) {
        seterr(err, errlen, "%s: out of memory", spec);
        list_unmap(text, len);
        file_close(&ft->base);
        return NULL;
    }
    if (table_file_parse(text, len, spec, file_entry, ft, err, errlen) < 0) {
        list_unmap(text, len);
        file_close(&ft->base);
        return NULL;
    }
    list_unmap(text, len);
    /* Give back what the line-count guess over-reserved. */
    if (ft->arena_cap > ft->arena_len + ARENA_MIN) {
        char *na = realloc(ft->arena, ft->arena_len);
        if (na != NULL) {
            ft->arena = na;
            ft->arena_cap = ft->arena_len;
        }
    }
    return &ft->base;
}

static enum table_result file_lookup(struct table *t, const char *key, table_cb *cb, void *arg,
                                     struct table_req **req)
{
    const struct file_table *ft = ft_of(t);
    char dom[SMTP_DOMAIN_MAX], local[TABLE_LOCAL_MAX];
    const char *at = strrchr(key, '@');

    (void)cb;
    (void)arg;
    if (req != NULL)
        *req = NULL;
    if (at == NULL)
        return TABLE_NOTFOUND;
    size_t dn = domain_len(at + 1, strlen(at + 1));
    if (dn == 0 || dn > SMTP_DOMAIN_MAX)
        return TABLE_NOTFOUND;
    for (size_t i = 0; i < dn; i++)
        dom[i] = util_lower(at[1 + i]);
    long k = dom_find(ft, dom, dn, fold(util_hash(UTIL_HASH_INIT, dom, dn)));
    if (k < 0)
        return TABLE_NOTFOUND;
    if (ft->doms[k].wildcard)
        return TABLE_FOUND;
    size_t n = (size_t)(at - key);
    if (n == 0 || n > TABLE_LOCAL_MAX)
        return TABLE_NOTFOUND;
    size_t ln = table_file_local_normalize(key, n, local);
    uint32_t hash = entry_hash((uint32_t)k, local, ln);
    return ft->slots[set_probe(ft, hash, (uint32_t)k, local, ln)].off != 0 ? TABLE_FOUND
                                                                           : TABLE_NOTFOUND;
}

static void file_cancel(struct table_req *req)
{
    /* file lookups never pend: nothing can be cancelled */
    if (req != NULL)
        log_panic("table_file: cancel of a request it never made");
}

static size_t file_count(const struct table *t)
{
    return ft_of(t)->entries;
}

int table_file_foreign(const struct table *t, int (*served)(void *arg, const char *domain),
                       void *arg, const char **domain, size_t *line)
{
    if (t == NULL || t->be != &table_file_backend)
        return 0;
    const struct file_table *ft = ft_of(t);
    for (size_t k = 0; k < ft->ndoms; k++) {
        const char *name = ft->arena + ft->doms[k].name_off;
        if (!served(arg, name)) {
            *domain = name;
            *line = ft->doms[k].line;
            return 1;
        }
    }
    return 0;
}

const char *table_file_path(const struct table *t)
{
    return t != NULL && t->be == &table_file_backend ? ft_of(t)->path : NULL;
}

const struct table_backend table_file_backend = {
    .name = "file",
    .open = file_open,
    .lookup = file_lookup,
    .cancel = file_cancel,
    .count = file_count,
    .close = file_close,
};
