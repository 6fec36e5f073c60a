/*
 * dnsbl.c - weighted DNSBL/DNSWL checks of SMTP clients (dnsbl.h).
 *
 * Owns: the answer cache and the pending checks (each with its zone
 * queries and its timeout).  Decides a client's score and the reason
 * text; smtpd.c decides where it is enforced (554 5.7.1 at MAIL).
 *
 * Never: blocks on DNS (c-ares through dns_lookup, answers on the loop);
 * refuses a client because a lookup failed (fail open); calls back after
 * dnsbl_cancel(); passes a TXT record through unbounded or with control
 * octets (dns_lookup already replaced them; the reason is cut to
 * DNSBL_REASON_MAX).
 *
 * Security: the TXT text is a third party's; it only ever fills a
 * bounded buffer of printable ASCII used as reply text, never a format.
 * A zone's configured reply is a format with at most one %s (conf.c
 * checks it).
 */
#include "config.h"
#include "dnsbl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <event2/event.h>

#include "log.h"

#define DNSBL_LISTED_NET 127            /* RFC 5782 2.3: answers in 127.0.0.0/8 */
#define DNSBL_NAME_MAX 320
#define DNSBL_ZONES_MAX 32              /* zones asked per check */

struct dnsbl_cache_entry {
    int family;
    unsigned char addr[16];
    time_t expires;
    struct dnsbl_result r;
};

struct dnsbl {
    struct event_base *base;
    struct dnsbl_cache_entry *cache;
    size_t ncache, cache_cap, cache_next;
    int failing;                        /* a query failed; logged once */
};

struct dnsbl_zone_q {
    struct dnsbl_req *req;
    size_t zi;                          /* index into conf->dnsbl.zones */
    struct dns_lookup_req *a, *txt;
    int listed;
    char name[DNSBL_NAME_MAX];
    char txt_text[DNS_LOOKUP_TXT_MAX];
};

struct dnsbl_req {
    struct dnsbl *b;
    struct dns *dns;
    const struct conf *c;               /* held (conf_ref) while pending */
    int family;
    unsigned char addr[16];
    dnsbl_fn *fn;
    void *arg;
    int pending;                        /* queries out */
    int timed_out;
    struct event *timer;
    size_t nq;
    struct dnsbl_zone_q q[DNSBL_ZONES_MAX];
};

int dnsbl_query_name(int family, const void *addr, const char *zone, char *buf, size_t len)
{
    const unsigned char *a = addr;
    size_t off = 0;
    int n;

    if (family == AF_INET) {
        n = snprintf(buf, len, "%u.%u.%u.%u.%s", a[3], a[2], a[1], a[0], zone);
        return (n < 0 || (size_t)n >= len) ? -1 : 0;
    }
    for (int i = 15; i >= 0; i--) {
        n = snprintf(buf + off, len - off, "%x.%x.", a[i] & 0xf, a[i] >> 4);
        if (n < 0 || (size_t)n >= len - off)
            return -1;
        off += (size_t)n;
    }
    n = snprintf(buf + off, len - off, "%s", zone);
    return (n < 0 || (size_t)n >= len - off) ? -1 : 0;
}

struct dnsbl *dnsbl_new(struct event_base *base)
{
    struct dnsbl *b = calloc(1, sizeof *b);
    if (b != NULL)
        b->base = base;
    return b;
}

void dnsbl_free(struct dnsbl *b)
{
    if (b == NULL)
        return;
    free(b->cache);
    free(b);
}

static const struct dnsbl_cache_entry *cache_find(struct dnsbl *b, int family,
                                                  const unsigned char *addr, time_t now)
{
    size_t len = family == AF_INET6 ? 16 : 4;
    for (size_t i = 0; i < b->ncache; i++) {
        const struct dnsbl_cache_entry *e = &b->cache[i];
        if (e->family == family && memcmp(e->addr, addr, len) == 0 && e->expires > now)
            return e;
    }
    return NULL;
}

static void cache_put(struct dnsbl *b, const struct conf *c, int family,
                      const unsigned char *addr, const struct dnsbl_result *r)
{
    size_t cap = (size_t)c->dnsbl.cache_size;
    if (c->dnsbl.cache_ttl <= 0)
        return;
    if (b->cache == NULL || b->cache_cap != cap) {
        free(b->cache);
        b->cache = calloc(cap, sizeof *b->cache);
        b->ncache = b->cache_next = 0;
        b->cache_cap = b->cache ? cap : 0;
        if (b->cache == NULL)
            return;
    }
    /* the same address again replaces its entry; else the oldest goes */
    size_t len = family == AF_INET6 ? 16 : 4, slot = b->cache_next;
    int found = 0;
    for (size_t i = 0; i < b->ncache && !found; i++)
        if (b->cache[i].family == family && memcmp(b->cache[i].addr, addr, len) == 0) {
            slot = i;
            found = 1;
        }
    if (!found) {
        b->cache_next = (b->cache_next + 1) % b->cache_cap;
        if (b->ncache < b->cache_cap)
            b->ncache++;
    }
    struct dnsbl_cache_entry *e = &b->cache[slot];
    e->family = family;
    memset(e->addr, 0, sizeof e->addr);
    memcpy(e->addr, addr, len);
    e->expires = time(NULL) + c->dnsbl.cache_ttl;
    e->r = *r;
}

static void dnsbl_note_failure(struct dnsbl *b, const char *name)
{
    if (!b->failing)
        log_warn("dnsbl: no answer for %s; treated as not listed (fail open) until the "
                 "resolver answers again", name);
    b->failing = 1;
}

/* Every answer is in (or the time is up): score, reason, cache, answer. */
static void dnsbl_finish(struct dnsbl_req *r)
{
    const struct conf_dnsbl *cd = &r->c->dnsbl;
    struct dnsbl_result res;
    long best = 0;

    memset(&res, 0, sizeof res);
    for (size_t i = 0; i < r->nq; i++) {
        struct dnsbl_zone_q *q = &r->q[i];
        if (q->a)
            dns_lookup_cancel(q->a);
        if (q->txt)
            dns_lookup_cancel(q->txt);
        q->a = q->txt = NULL;
        if (!q->listed)
            continue;
        const struct conf_dnsbl_zone *z = &cd->zones[q->zi];
        res.score += z->weight;
        if (z->weight > best) {
            best = z->weight;
            snprintf(res.zone, sizeof res.zone, "%s", z->zone);
            if (q->txt_text[0])
                snprintf(res.reason, sizeof res.reason, "%s", q->txt_text);
            else if (z->reply) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
                /* checked by conf.c: printable, at most one %s */
                snprintf(res.reason, sizeof res.reason, z->reply, z->zone);
#pragma GCC diagnostic pop
            } else
                snprintf(res.reason, sizeof res.reason, "listed at %s", z->zone);
        }
    }
    res.blocked = best > 0 && res.score >= cd->threshold;
    if (!r->timed_out)
        cache_put(r->b, r->c, r->family, r->addr, &res);
    dnsbl_fn *fn = r->fn;
    void *arg = r->arg;
    const struct conf *c = r->c;
    event_free(r->timer);
    free(r);
    fn(arg, &res);
    conf_free(c);
}

static void dnsbl_settle(struct dnsbl_req *r)
{
    if (--r->pending == 0)
        dnsbl_finish(r);
}

static void on_txt(void *arg, const struct dns_lookup_answer *ans)
{
    struct dnsbl_zone_q *q = arg;
    q->txt = NULL;
    if (ans->status == DNS_OK)
        snprintf(q->txt_text, sizeof q->txt_text, "%s", ans->txt);
    dnsbl_settle(q->req);
}

static void on_a(void *arg, const struct dns_lookup_answer *ans)
{
    struct dnsbl_zone_q *q = arg;
    struct dnsbl_req *r = q->req;

    q->a = NULL;
    if (ans->status == DNS_TEMP) {
        dnsbl_note_failure(r->b, q->name);
    } else {
        r->b->failing = 0;
        for (size_t i = 0; i < ans->na; i++)
            if (ans->a[i][0] == DNSBL_LISTED_NET)
                q->listed = 1;
        /* the reason of a listing that may block: its TXT record */
        if (q->listed && r->c->dnsbl.zones[q->zi].weight > 0) {
            r->pending++;
            if ((q->txt = dns_lookup(r->dns, q->name, DNS_QTYPE_TXT, on_txt, q)) == NULL)
                r->pending--;
        }
    }
    dnsbl_settle(r);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct dnsbl_req *r = arg;
    (void)fd;
    (void)what;
    r->timed_out = 1;
    for (size_t i = 0; i < r->nq; i++)
        if (r->q[i].a != NULL)
            dnsbl_note_failure(r->b, r->q[i].name);
    dnsbl_finish(r);                    /* cancels what is still out */
}

struct dnsbl_req *dnsbl_check(struct dnsbl *b, struct dns *dns, const struct conf *c,
                              int family, const void *addr, dnsbl_fn *fn, void *arg,
                              struct dnsbl_result *now)
{
    const struct conf_dnsbl *cd = &c->dnsbl;

    memset(now, 0, sizeof *now);
    if (b == NULL || dns == NULL || cd->nzones == 0)
        return NULL;
    const struct dnsbl_cache_entry *e = cache_find(b, family, addr, time(NULL));
    if (e != NULL) {
        *now = e->r;
        return NULL;
    }
    struct dnsbl_req *r = calloc(1, sizeof *r);
    if (r == NULL || (r->timer = evtimer_new(b->base, on_timeout, r)) == NULL) {
        free(r);
        log_warn("dnsbl: out of memory for a check; not listed");
        return NULL;
    }
    r->b = b;
    r->dns = dns;
    r->c = conf_ref(c);
    r->family = family;
    memcpy(r->addr, addr, family == AF_INET6 ? 16 : 4);
    r->fn = fn;
    r->arg = arg;
    r->pending = 1;                     /* held until every query is out */
    for (size_t i = 0; i < cd->nzones && r->nq < DNSBL_ZONES_MAX; i++) {
        struct dnsbl_zone_q *q = &r->q[r->nq];
        q->req = r;
        q->zi = i;
        if (dnsbl_query_name(family, addr, cd->zones[i].zone, q->name, sizeof q->name) < 0)
            continue;
        r->nq++;
        r->pending++;
        if ((q->a = dns_lookup(dns, q->name, DNS_QTYPE_A, on_a, q)) == NULL)
            r->pending--;
    }
    struct timeval tv = { cd->timeout, 0 };
    evtimer_add(r->timer, &tv);
    if (--r->pending == 0) {            /* nothing went out */
        event_free(r->timer);
        conf_free(r->c);
        free(r);
        return NULL;
    }
    return r;
}

void dnsbl_cancel(struct dnsbl_req *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nq; i++) {
        dns_lookup_cancel(r->q[i].a);
        dns_lookup_cancel(r->q[i].txt);
    }
    event_free(r->timer);
    conf_free(r->c);
    free(r);
}
