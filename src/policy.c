/*
 * policy.c - served domains, recipient lists, relay-trick refusal and ETRN
 * access (see policy.h).
 *
 * Owns: an immutable snapshot built from a struct conf: a hash of the
 * served domain names, and one reference to the recipient table (table.h)
 * of each domain with `recipients`; domains that name the same table share
 * it, so it is opened once.  The tables hold the entries (table_file.c,
 * table_lmdb.c); a lookup costs O(1) whatever their size.
 *
 * Never: changes the conf, touches its fields beyond reading, does I/O
 * after policy_new() other than what a table does on lookup (an lmdb map
 * reads its mapped pages), waits for a table that answers later (pgsql:
 * the caller asks it through policy_domain_table()), or accepts a
 * recipient it cannot tie to a served domain.
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
#include "table.h"
#include "table_file.h"
#include "util.h"

/* Domain table: at most half full. */
#define DOM_LOAD_FACTOR     2
#define DOM_MIN_SLOTS       16

/* "local@domain" as smtp_addr_format writes it, quotes included. */
#define ADDR_TEXT_MAX       (SMTP_PATH_MAX + 1)
/* A table lookup key: the local part as given, "@", the domain. */
#define KEY_MAX             (SMTP_PATH_MAX + 1 + SMTP_DOMAIN_MAX + 1)
/* ETRN argument as echoed: kind prefix, domain, NUL. */
#define ETRN_TEXT_MAX       (1 + SMTP_DOMAIN_MAX + 1)
/* Room for a table's open error before the config's file:line is added. */
#define TABLE_ERR_MAX       1024

/* ::ffff:a.b.c.d - a dual-stack listener reports IPv4 clients this way. */
#define V4MAPPED_PREFIX_LEN 12
#define V4_ADDR_LEN         4

struct policy {
    const struct conf *c;
    uint32_t *dom_slots;        /* domain index + 1; 0: empty */
    size_t dom_mask;
    /* One per c->domains[]: the domain's recipient table, or NULL (any
     * local part).  Domains naming the same table share one (a reference
     * each), so 10,000 domains over one map open it once. */
    struct table **tables;
    size_t entries;             /* entries over the distinct tables */
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
    if (p->dom_slots == NULL) {
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

/* ---- recipient tables ---- */

struct names_arg {
    const struct policy *p;
    const char *spec;
};

/* Is domain (named in a list file) served, and does it name that list? */
static int names_list(void *arg, const char *domain)
{
    const struct names_arg *na = arg;
    long k = dom_find(na->p, domain, strlen(domain));

    return k >= 0 && na->p->c->domains[k].recipients != NULL &&
           strcmp(na->p->c->domains[k].recipients, na->spec) == 0;
}

/* A list file must not name a domain that does not use it: that is a
 * typo or a list put in the wrong place, and its entries would never be
 * consulted. */
static int tables_check_file(const struct policy *p, size_t k, size_t users, char *err,
                             size_t errlen)
{
    const struct conf *c = p->c;
    struct names_arg na = { p, c->domains[k].recipients };
    const char *dname;
    size_t line;

    if (!table_file_foreign(p->tables[k], names_list, &na, &dname, &line))
        return 0;
    if (users == 1)
        seterr(err, errlen, "%s:%zu: address not in domain %s",
               table_file_path(p->tables[k]), line, c->domains[k].name);
    else
        seterr(err, errlen, "%s:%zu: domain %s does not name this list as its recipients",
               table_file_path(p->tables[k]), line, dname);
    return -1;
}

/* Open the table of every domain with `recipients`, each distinct spec
 * once. */
static int tables_open(struct policy *p, char *err, size_t errlen)
{
    const struct conf *c = p->c;
    size_t nslots = DOM_MIN_SLOTS, nd = c->ndomains ? c->ndomains : 1;
    uint32_t *first;            /* by spec hash: index + 1 of the first domain naming it */
    size_t *users;              /* by first domain: how many domains share its table */
    char terr[TABLE_ERR_MAX];
    int rc = -1;

    while (nslots < c->ndomains * DOM_LOAD_FACTOR)
        nslots *= 2;
    p->tables = calloc(nd, sizeof *p->tables);
    first = calloc(nslots, sizeof *first);
    users = calloc(nd, sizeof *users);
    if (p->tables == NULL || first == NULL || users == NULL) {
        seterr(err, errlen, "policy: out of memory");
        goto done;
    }
    for (size_t k = 0; k < c->ndomains; k++) {
        const char *spec = c->domains[k].recipients;
        if (spec == NULL)
            continue;
        size_t i = fold(util_hash(UTIL_HASH_INIT, spec, strlen(spec))) & (nslots - 1);
        while (first[i] != 0 && strcmp(c->domains[first[i] - 1].recipients, spec) != 0)
            i = (i + 1) & (nslots - 1);
        if (first[i] != 0) {
            size_t j = first[i] - 1;
            p->tables[k] = table_ref(p->tables[j]);
            users[j]++;
            continue;
        }
        p->tables[k] = table_open(spec, c, terr, sizeof terr);
        if (p->tables[k] == NULL) {
            /* A list file's own errors carry its file:line already;
             * otherwise name the config line that named the table. */
            if (strncmp(spec, "lmdb:", 5) == 0 || strncmp(spec, "pgsql:", 6) == 0)
                seterr(err, errlen, "%s:%d: recipients: %s", c->path ? c->path : "config",
                       c->domains[k].recipients_line, terr);
            else
                seterr(err, errlen, "%s", terr);
            goto done;
        }
        first[i] = (uint32_t)(k + 1);
        users[k] = 1;
        p->entries += table_count(p->tables[k]);
    }
    for (size_t k = 0; k < c->ndomains; k++)
        if (users[k] > 0 && tables_check_file(p, k, users[k], err, errlen) < 0)
            goto done;
    rc = 0;
done:
    free(first);
    free(users);
    return rc;
}

/* A table that answers at once (file, lmdb); pgsql may answer later and
 * is consulted by the caller through policy_domain_table(). */
static int table_is_sync(const struct table *t)
{
    return strcmp(table_kind(t), "pgsql") != 0;
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
    if (dom_build(p, err, errlen) < 0 || tables_open(p, err, errlen) < 0) {
        policy_free(p);
        return NULL;
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
    if (p->tables != NULL)
        for (size_t k = 0; k < p->c->ndomains; k++)
            table_free(p->tables[k]);
    free(p->tables);
    conf_free(p->c);
    free(p->dom_slots);
    free(p);
}

struct table *policy_domain_table(const struct policy *p, const struct conf_domain *d)
{
    if (p == NULL || d == NULL || p->tables == NULL)
        return NULL;
    /* Usually a pointer the policy handed out (policy_check_rcpt): its
     * index; otherwise find the domain by name. */
    if (d >= p->c->domains && d < p->c->domains + p->c->ndomains)
        return p->tables[d - p->c->domains];
    long k = dom_find(p, d->name, domain_len(d->name, strlen(d->name)));
    return k >= 0 ? p->tables[k] : NULL;
}

struct table *policy_domain_async_table(const struct policy *p, const struct conf_domain *d)
{
    struct table *t = policy_domain_table(p, d);
    return (t != NULL && !table_is_sync(t)) ? t : NULL;
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
    if (k < 0 && p->c->domains_unknown) {
        /* domains_from has not answered since start: the domain may be
         * the database's, and a 550 would bounce its mail for good. */
        *why = STAT_REJ_LOOKUP;
        return reply(buf, len, "451 4.3.0 <%s>: Temporary lookup failure: served domains "
                     "not yet read", text);
    }
    if (k < 0)
        return reply(buf, len, "550 5.7.1 <%s>: Relay access denied", text);
    struct table *t = p->tables[k];
    if (t != NULL && table_is_sync(t)) {
        char key[KEY_MAX];
        /* The local part as given, quotes included: the table folds
         * case and quoting the way it stored its entries. */
        snprintf(key, sizeof key, "%s@%.*s", a->local, (int)dn, a->domain);
        enum table_result r = table_lookup(t, key, NULL, NULL, NULL);
        if (r == TABLE_TEMPFAIL) {
            *why = STAT_REJ_LOOKUP;     /* as recipient.c counts a pgsql TEMPFAIL */
            return reply(buf, len, "451 4.3.0 <%s>: Recipient table unavailable, try again later",
                         text);
        }
        if (r != TABLE_FOUND) {
            *why = STAT_REJ_UNKNOWN_USER;
            return reply(buf, len, "550 5.1.1 <%s>: Recipient address rejected: User unknown",
                         text);
        }
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
