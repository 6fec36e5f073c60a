/*
 * policy.c - served domains, recipient lists, relay-trick refusal and ETRN
 * access (see policy.h).
 *
 * Owns: an immutable snapshot built from a struct conf: a hash of the
 * served domain names, and one hash set holding every entry of every
 * recipient list, whose strings live in one arena.  A hosting provider may
 * list a million recipients over ten thousand domains, so both lookups are
 * O(1) and an entry costs its local part plus about 15 octets.
 *
 * Never: changes the conf, touches its fields beyond reading, does I/O
 * after policy_new(), or accepts a recipient it cannot tie to a served
 * domain.
 *
 * Security: policy_check_rcpt() is the open-relay gate.  Routing local
 * parts (%, !, quoted @) and address literals are refused before any
 * lookup, so "user%other@served" can never be relayed onwards.  List files
 * are the administrator's and trusted for content, but are still parsed
 * with bounds on every line; peer addresses are only ever copied into
 * fixed buffers sized from smtp_parse.h.
 */
#include "config.h"
#include "policy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "log.h"
#include "util.h"

/* Longest local part a list entry may hold: its record keeps the length
 * in one octet.  Real long local parts (SRS, VERP, list confirmations) run
 * to a hundred octets or so; a longer entry is refused at load with its
 * file:line, never cut. */
#define POLICY_LOCAL_MAX    UINT8_MAX
/* Longest entry (after trimming and comment removal) a list line may hold:
 * the longest local part, "@", the longest domain; this catches a file
 * that is not a recipient list at all. */
#define LIST_ENTRY_MAX      (POLICY_LOCAL_MAX + 1 + SMTP_DOMAIN_MAX)

/* Entry set: open addressing, linear probing, grown when the load passes
 * LOAD_NUM/LOAD_DEN.  Linear probing over 8-octet slots keeps a miss
 * inside one or two cache lines at this load. */
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

/* "local@domain" as smtp_addr_format writes it, quotes included. */
#define ADDR_TEXT_MAX       (SMTP_PATH_MAX + 1)
/* ETRN argument as echoed: kind prefix, domain, NUL. */
#define ETRN_TEXT_MAX       (1 + SMTP_DOMAIN_MAX + 1)

/* ::ffff:a.b.c.d - a dual-stack listener reports IPv4 clients this way. */
#define V4MAPPED_PREFIX_LEN 12
#define V4_ADDR_LEN         4

struct set_slot {
    uint32_t off;               /* arena offset of the record; 0: empty */
    uint32_t hash;              /* cached, so growth and misses skip the arena */
};

struct dom_info {
    unsigned char listed;       /* has a recipients file */
    unsigned char wildcard;     /* the file has "@domain": every local part */
};

struct policy {
    const struct conf *c;
    uint32_t *dom_slots;        /* domain index + 1; 0: empty */
    size_t dom_mask;
    struct dom_info *dinfo;     /* one per c->domains[] */
    struct set_slot *slots;
    size_t set_mask;
    size_t set_used;
    char *arena;
    size_t arena_len, arena_cap;
    size_t entries;             /* list entries loaded, wildcards included */
    unsigned long refs;         /* policy_ref / policy_free */
};

static const char *reply(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static const char *reply(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;

    if (buf == NULL || len == 0)
        log_panic("policy: no reply buffer");
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    return buf;
}

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

static int ci_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    return alen == blen && strncasecmp(a, b, alen) == 0;
}

/* Domain length with one trailing dot ignored. */
static size_t domain_len(const char *d, size_t n)
{
    return (n > 0 && d[n - 1] == '.') ? n - 1 : n;
}

/* ---- local parts ---- */

static int is_atext(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return 1;
    if (ch >= 0x80)             /* RFC 6531 UTF8-non-ascii */
        return 1;
    return strchr("!#$%&'*+-/=?^_`{|}~", ch) != NULL && ch != '\0';
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

/*
 * The form a local part is stored and looked up in: lower case, and a
 * quoted string whose content needs no quoting ("john") the same as the
 * bare atom (john).  out holds at least n octets; returns the length.
 */
static size_t local_normalize(const char *s, size_t n, char *out)
{
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"' && dot_atom_valid(s + 1, n - 2)) {
        s++;
        n -= 2;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = util_lower(s[i]);     /* ASCII only: SMTPUTF8 octets as given */
    return n;
}

/* ---- served domains ---- */

static uint32_t domain_hash(const char *d, size_t n)
{
    return fold(util_hash_lower(UTIL_HASH_INIT, d, n));
}

/* Index of the served domain d (n octets, no trailing dot), or -1. */
static long dom_find(const struct policy *p, const char *d, size_t n)
{
    for (size_t i = domain_hash(d, n) & p->dom_mask;; i = (i + 1) & p->dom_mask) {
        uint32_t v = p->dom_slots[i];
        if (v == 0)
            return -1;
        const char *name = p->c->domains[v - 1].name;
        if (ci_equal(name, domain_len(name, strlen(name)), d, n))
            return (long)(v - 1);
    }
}

static int dom_build(struct policy *p, char *err, size_t errlen)
{
    const struct conf *c = p->c;
    size_t slots = DOM_MIN_SLOTS;

    if (c->ndomains >= UINT32_MAX / DOM_LOAD_FACTOR) {
        seterr(err, errlen, "%s: too many domains", c->path ? c->path : "config");
        return -1;
    }
    while (slots < c->ndomains * DOM_LOAD_FACTOR)
        slots *= 2;
    p->dom_slots = calloc(slots, sizeof *p->dom_slots);
    p->dinfo = calloc(c->ndomains ? c->ndomains : 1, sizeof *p->dinfo);
    if (p->dom_slots == NULL || p->dinfo == NULL) {
        seterr(err, errlen, "policy: out of memory");
        return -1;
    }
    p->dom_mask = slots - 1;
    for (size_t k = 0; k < c->ndomains; k++) {
        const char *name = c->domains[k].name;
        if (name == NULL)
            log_panic("policy: domain %zu has no name", k);
        size_t n = domain_len(name, strlen(name));
        if (dom_find(p, name, n) >= 0) {
            seterr(err, errlen, "%s: domain %s is listed twice",
                   c->path ? c->path : "config", name);
            return -1;
        }
        size_t i = domain_hash(name, n) & p->dom_mask;
        while (p->dom_slots[i] != 0)
            i = (i + 1) & p->dom_mask;
        p->dom_slots[i] = (uint32_t)(k + 1);
    }
    return 0;
}

/* ---- the entry set ---- */

static uint32_t entry_hash(uint32_t dom, const char *local, size_t n)
{
    unsigned char d[REC_DOM_SIZE];
    uint64_t h;

    memcpy(d, &dom, sizeof d);
    h = util_hash(UTIL_HASH_INIT, d, sizeof d);
    /* local is already normalized, lower-casing again is a no-op */
    return fold(util_hash_lower(h, local, n));
}

static int rec_equal(const struct policy *p, uint32_t off, uint32_t dom,
                     const char *local, size_t n)
{
    const char *r = p->arena + off;
    uint32_t rdom;

    memcpy(&rdom, r, sizeof rdom);
    return rdom == dom && (unsigned char)r[REC_DOM_SIZE] == n &&
           memcmp(r + REC_HDR_SIZE, local, n) == 0;
}

/* Slot holding (dom, local), or the empty slot where it would go. */
static size_t set_probe(const struct policy *p, uint32_t hash, uint32_t dom,
                        const char *local, size_t n)
{
    for (size_t i = hash & p->set_mask;; i = (i + 1) & p->set_mask) {
        const struct set_slot *s = &p->slots[i];
        if (s->off == 0)
            return i;
        if (s->hash == hash && rec_equal(p, s->off, dom, local, n))
            return i;
    }
}

static int set_grow(struct policy *p)
{
    size_t nslots = (p->set_mask + 1) * 2;
    struct set_slot *ns = calloc(nslots, sizeof *ns);

    if (ns == NULL)
        return -1;
    for (size_t k = 0; k <= p->set_mask; k++) {
        struct set_slot s = p->slots[k];
        if (s.off == 0)
            continue;
        size_t i = s.hash & (nslots - 1);
        while (ns[i].off != 0)
            i = (i + 1) & (nslots - 1);
        ns[i] = s;
    }
    free(p->slots);
    p->slots = ns;
    p->set_mask = nslots - 1;
    return 0;
}

/* Add (dom, local); local is normalized, n <= POLICY_LOCAL_MAX.
 * Returns 1 when added, 0 when already there, -1 out of memory/space. */
static int set_add(struct policy *p, uint32_t dom, const char *local, size_t n)
{
    uint32_t hash = entry_hash(dom, local, n);
    size_t i = set_probe(p, hash, dom, local, n);

    if (p->slots[i].off != 0)
        return 0;
    size_t need = REC_HDR_SIZE + n;
    if (p->arena_len + need > UINT32_MAX)
        return -1;
    if (p->arena_len + need > p->arena_cap) {
        size_t cap = p->arena_cap * 2;
        while (cap < p->arena_len + need)
            cap *= 2;
        char *na = realloc(p->arena, cap);
        if (na == NULL)
            return -1;
        p->arena = na;
        p->arena_cap = cap;
    }
    char *r = p->arena + p->arena_len;
    memcpy(r, &dom, REC_DOM_SIZE);
    r[REC_DOM_SIZE] = (char)(unsigned char)n;
    memcpy(r + REC_HDR_SIZE, local, n);
    p->slots[i].off = (uint32_t)p->arena_len;
    p->slots[i].hash = hash;
    p->arena_len += need;
    p->set_used++;
    if (p->set_used * SET_LOAD_DEN > (p->set_mask + 1) * SET_LOAD_NUM && set_grow(p) < 0)
        return -1;
    return 1;
}

static int set_has(const struct policy *p, uint32_t dom, const char *local, size_t n)
{
    uint32_t hash = entry_hash(dom, local, n);
    return p->slots[set_probe(p, hash, dom, local, n)].off != 0;
}

/* ---- list files ---- */

static int is_space(unsigned char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f';
}

static char *file_slurp(const char *path, size_t *len, char *err, size_t errlen)
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

/* Parse one trimmed, comment-free entry of the list of domain k.
 * Returns NULL or what is wrong with it. */
static const char *list_entry(struct policy *p, uint32_t k, const char *s, size_t n)
{
    const char *dname = p->c->domains[k].name;
    char norm[POLICY_LOCAL_MAX];
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
    if (!ci_equal(d, dn, dname, domain_len(dname, strlen(dname))))
        return "address not in domain";    /* caller appends the name */
    if (at == 0) {
        if (!p->dinfo[k].wildcard) {
            p->dinfo[k].wildcard = 1;
            p->entries++;
        }
        return NULL;
    }
    if (at > POLICY_LOCAL_MAX)
        return "local part longer than 255 octets";
    if (!dot_atom_valid(s, at) && !quoted_valid(s, at))
        return "bad local part";
    size_t ln = local_normalize(s, at, norm);
    int r = set_add(p, k, norm, ln);
    if (r < 0)
        return "out of memory";
    p->entries += (size_t)r;
    return NULL;
}

static int list_load(struct policy *p, uint32_t k, char *err, size_t errlen)
{
    const char *path = p->c->domains[k].recipients;
    size_t len, lineno = 0;
    char *text = file_slurp(path, &len, err, errlen);

    if (text == NULL)
        return -1;
    for (const char *s = text, *end = text + len; s < end;) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *e = nl ? nl : end;
        const char *next = nl ? nl + 1 : end;

        lineno++;
        /* '#' opens a comment at line start or after white space only:
         * '#' is a legal atext character ("a#b@example.org"). */
        for (const char *q = s; q < e; q++) {
            if (*q == '#' && (q == s || is_space((unsigned char)q[-1]))) {
                e = q;
                break;
            }
        }
        while (s < e && is_space((unsigned char)*s))
            s++;
        while (e > s && is_space((unsigned char)e[-1]))
            e--;
        if (s < e) {
            const char *why = list_entry(p, k, s, (size_t)(e - s));
            if (why != NULL) {
                if (strcmp(why, "address not in domain") == 0)
                    seterr(err, errlen, "%s:%zu: %s %s", path, lineno, why,
                           p->c->domains[k].name);
                else
                    seterr(err, errlen, "%s:%zu: %s", path, lineno, why);
                free(text);
                return -1;
            }
        }
        s = next;
    }
    free(text);
    return 0;
}

/* ---- public ---- */

struct policy *policy_new(const struct conf *c, char *err, size_t errlen)
{
    struct policy *p = calloc(1, sizeof *p);

    seterr(err, errlen, "%s", "");
    if (p == NULL) {
        seterr(err, errlen, "policy: out of memory");
        return NULL;
    }
    p->refs = 1;
    p->c = conf_ref(c);
    p->slots = calloc(SET_MIN_SLOTS, sizeof *p->slots);
    p->arena = malloc(ARENA_MIN);
    if (p->slots == NULL || p->arena == NULL) {
        seterr(err, errlen, "policy: out of memory");
        policy_free(p);
        return NULL;
    }
    p->set_mask = SET_MIN_SLOTS - 1;
    p->arena_cap = ARENA_MIN;
    p->arena_len = ARENA_RESERVED;
    if (dom_build(p, err, errlen) < 0) {
        policy_free(p);
        return NULL;
    }
    for (size_t k = 0; k < c->ndomains; k++) {
        if (c->domains[k].recipients == NULL)
            continue;
        p->dinfo[k].listed = 1;
        if (list_load(p, (uint32_t)k, err, errlen) < 0) {
            policy_free(p);
            return NULL;
        }
    }
    return p;
}

const struct policy *policy_ref(const struct policy *cp)
{
    /* Only the count changes: the policy is immutable otherwise, and was
     * allocated writable by policy_new. */
    struct policy *p = (struct policy *)cp;
    if (p != NULL) {
        if (p->refs == 0)
            log_panic("policy: reference to a freed policy");
        p->refs++;
    }
    return cp;
}

void policy_free(const struct policy *cp)
{
    struct policy *p = (struct policy *)cp;
    if (p == NULL)
        return;
    if (p->refs > 1) {
        p->refs--;
        return;
    }
    p->refs = 0;
    conf_free(p->c);
    free(p->dom_slots);
    free(p->dinfo);
    free(p->slots);
    free(p->arena);
    free(p);
}

struct table *policy_domain_table(const struct policy *p, const struct conf_domain *d)
{
    /* The lists still live in this module (list_load); fix/tables moves
     * them behind table.h and answers here with the domain's table. */
    (void)p;
    (void)d;
    return NULL;
}

size_t policy_entry_count(const struct policy *p)
{
    return p ? p->entries : 0;
}

const char *policy_check_rcpt(const struct policy *p, const struct smtp_addr *a,
                              const struct conf_domain **dom, enum stat_id *why, char *buf,
                              size_t len)
{
    enum stat_id scratch;
    char text[ADDR_TEXT_MAX];
    char norm[sizeof a->local];

    if (dom != NULL)
        *dom = NULL;
    if (why == NULL)
        why = &scratch;
    *why = STAT_REJ_RELAY;
    if (a->null)
        return reply(buf, len, "550 5.7.1 <>: Relay access denied");
    size_t ln = strnlen(a->local, sizeof a->local);
    if (ln == sizeof a->local)
        log_panic("policy: local part not terminated");
    if (a->domain[0] == '\0') {
        /* RFC 5321 4.5.1 "<Postmaster>": a backup MX cannot tell whose
         * postmaster is meant, and must not guess. */
        if (strcasecmp(a->local, "postmaster") == 0) {
            *why = STAT_REJ_UNKNOWN_USER;
            return reply(buf, len, "550 5.1.1 <%s>: we are a backup MX: name a domain",
                         a->local);
        }
        return reply(buf, len, "550 5.7.1 <%s>: Relay access denied", a->local);
    }
    if (smtp_addr_format(a, text, sizeof text) < 0)
        snprintf(text, sizeof text, "%s@%s", a->local, a->domain);
    if (smtp_local_is_route(a->local))
        return reply(buf, len, "550 5.7.1 <%s>: Source routing not supported", text);
    if (a->domain_literal || a->domain[0] == '[')
        return reply(buf, len, "550 5.7.1 <%s>: Relay access denied", text);
    size_t dn = domain_len(a->domain, strnlen(a->domain, sizeof a->domain));
    long k = dom_find(p, a->domain, dn);
    if (k < 0)
        return reply(buf, len, "550 5.7.1 <%s>: Relay access denied", text);
    if (p->dinfo[k].listed && !p->dinfo[k].wildcard) {
        size_t nn = local_normalize(a->local, ln, norm);
        *why = STAT_REJ_UNKNOWN_USER;
        if (nn > POLICY_LOCAL_MAX || !set_has(p, (uint32_t)k, norm, nn))
            return reply(buf, len, "550 5.1.1 <%s>: Recipient address rejected: User unknown",
                         text);
    }
    if (dom != NULL)
        *dom = &p->c->domains[k];
    return NULL;
}

/* Is name the domain d itself or a subdomain of it?  Both without a
 * trailing dot. */
static int covers(const char *name, size_t nn, const char *d, size_t dn)
{
    if (ci_equal(name, nn, d, dn))
        return 1;
    return dn > 0 && nn > dn + 1 && name[nn - dn - 1] == '.' &&
           strncasecmp(name + nn - dn, d, dn) == 0;
}

const char *policy_check_etrn(const struct policy *p, int family, const void *addr,
                              int kind, const char *domain,
                              const struct conf_domain **doms, size_t max, size_t *n,
                              char *buf, size_t len)
{
    const struct conf *c = p->c;
    char shown[ETRN_TEXT_MAX];
    size_t covered = 0, stored = 0;

    *n = 0;
    if (domain == NULL)
        domain = "";
    snprintf(shown, sizeof shown, "%s%s", kind == '@' ? "@" : kind == '#' ? "#" : "", domain);

    const unsigned char *ab = addr;
    static const unsigned char v4mapped[V4MAPPED_PREFIX_LEN] =
        { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (family == AF_INET6 && memcmp(ab, v4mapped, sizeof v4mapped) == 0) {
        family = AF_INET;
        ab += V4MAPPED_PREFIX_LEN;
    }
    if (!conf_cidr_match(c->etrn_allow, c->netrn_allow, family, ab))
        return reply(buf, len, "459 4.7.1 <%s>: client not allowed to run ETRN", shown);
    if (kind == '#')
        return reply(buf, len, "501 5.5.4 <%s>: named queues are not supported", shown);
    if (kind != 0 && kind != '@')
        log_panic("policy: ETRN kind %d", kind);

    size_t dn = domain_len(domain, strlen(domain));
    if (kind == 0) {
        long k = dom_find(p, domain, dn);
        if (k >= 0) {
            covered = 1;
            if (max > 0)
                doms[stored++] = &c->domains[k];
        }
    } else {
        /* A linear walk: ETRN is rare and access-controlled, and 10,000
         * domains take microseconds. */
        for (size_t k = 0; k < c->ndomains; k++) {
            const char *name = c->domains[k].name;
            if (!covers(name, domain_len(name, strlen(name)), domain, dn))
                continue;
            covered++;
            /* Held ones too: hold is the scheduler's state (config or
             * mxkeepctl hold), and its ETRN reply says so with the count. */
            if (stored < max)
                doms[stored++] = &c->domains[k];
        }
    }
    if (covered == 0)
        return reply(buf, len, "459 4.7.1 <%s>: not a domain we serve", shown);
    *n = stored;
    return NULL;
}
