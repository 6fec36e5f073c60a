/*
 * dns.c - next-hop resolution for the delivery side: c-ares driven by the
 * libevent loop, MX lookup with self-detection, then A and AAAA.
 *
 * Contract (see dns.h):
 *   - owns one c-ares channel, one libevent event per socket c-ares has
 *     open (re-armed whenever c-ares changes what it waits for), one timer
 *     set from ares_timeout(), and every request in flight.
 *   - a request is resolved in two phases: MX (skipped for fixed next
 *     hops), then A and AAAA of every candidate host in parallel.  Results
 *     are assembled into a struct dns_route and handed to the caller from
 *     its own loop event, so the caller's function never runs inside
 *     dns_route() nor inside a c-ares callback.
 *   - dns_free() destroys the channel first (c-ares then calls our query
 *     callbacks with ARES_EDESTRUCTION; they touch nothing but the request
 *     memory, which is still alive), then frees every request without
 *     calling the caller.
 *
 *   - dns_ptr() names a client (FCrDNS): PTR, then A or AAAA of each
 *     well-formed PTR target (at most DNS_PTR_MAX_NAMES) in parallel; the
 *     first target, in answer order, whose addresses hold the client's
 *     wins.  A cancelled request stays alive, silent, until c-ares has
 *     answered each of its queries (a single query cannot be withdrawn).
 *
 * Must never: block (no getaddrinfo, no /etc/hosts reads per query: only
 * DNS via ares_query), bounce on a temporary fault (every doubtful case is
 * DNS_TEMP: the mail stays and is retried), or choose an MX at or worse
 * than our own preference (that is how backup MXs build mail loops).
 *
 * Security: all answers come from the network.  c-ares parses the packets;
 * we bound what we keep (DNS_MX_MAX candidates, DNS_MAX_ADDRS addresses per
 * family, names that fit struct dns_host.name) and copy nothing unbounded.
 * Self-detection is never cut by those bounds: every MX name is compared
 * before the candidates are cut (a cut through a group gives the group
 * back) and every address of an answer before the addresses are.
 * Equal MX preferences are shuffled with arc4random so that an attacker
 * cannot predict which of them we try first.  PTR answers are the
 * client's own claim: a name is kept only if it is hostname characters
 * and its forward lookup leads back to the client's address.
 */
#include "config.h"
#include <arpa/inet.h>
#include <ares.h>
#include <ctype.h>
#include <errno.h>
#include <ifaddrs.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#include "conf.h"
#include "dns.h"
#include "log.h"

#ifndef C_IN
#define C_IN 1
#endif
#ifndef T_A
#define T_A 1
#endif
#ifndef T_MX
#define T_MX 15
#endif
#ifndef T_AAAA
#define T_AAAA 28
#endif
#ifndef T_PTR
#define T_PTR 12
#endif

/* Per try; c-ares doubles it on later tries.  Two tries keep a dead
 * resolver from stalling a destination for long: the scheduler retries. */
#define DNS_TIMEOUT_MS 2000
#define DNS_TRIES 2
#define DNS_DEFAULT_PORT 53
#define DNS_PORT_MAX 65535
/* MX candidates resolved per route: room beyond DNS_MAX_HOSTS for hosts
 * that turn out to be us or to have no address. */
#define DNS_MX_MAX (2 * DNS_MAX_HOSTS)
#define DNS_NAME_MAX sizeof(((struct dns_host *)0)->name)
#define DNS_NO_PREF INT_MAX
#define DNS_IP_MAX 16             /* bytes of an IPv6 address */
#define DNS_IPV4_LEN 4
#define DNS_LABEL_MAX 63          /* RFC 1035 2.3.4 */
#define DNS_HOSTNAME_MAX 253      /* presentation form, no trailing dot */
/* "f.f.(x32)ip6.arpa" with room to spare */
#define DNS_REV_NAME_MAX 80
#define DNS_NIBBLE_MASK 0x0f
#define DNS_NIBBLE_BITS 4

struct dns_sock {
    struct dns *d;
    ares_socket_t fd;
    struct event *ev;
    struct dns_sock *next;
};

struct dns_req;

struct dns_mx {
    struct dns_req *r;
    char name[DNS_NAME_MAX];
    int pref;
    int st4, st6;                 /* ares status of the A / AAAA query */
    int self_addr;                /* one of its addresses, kept or not, is ours */
    size_t n4, n6;
    struct in_addr a4[DNS_MAX_ADDRS];
    struct in6_addr a6[DNS_MAX_ADDRS];
};

/* An address reduced to what self-detection compares: IPv4-mapped IPv6
 * becomes IPv4, the port is gone. */
struct dns_ip {
    int family;
    unsigned char b[DNS_IP_MAX];
};

struct dns_req {
    struct dns *d;
    struct dns_req *prev, *next;
    char domain[DNS_NAME_MAX];
    int port;
    int fixed;
    char **self_names;
    size_t nself_names;
    struct dns_ip *self_ips;
    size_t nself_ips;
    dns_route_fn fn;
    void *arg;
    int pending;                  /* c-ares queries not yet answered */
    struct event *done_ev;
    int self_pref;                /* lowest preference that is us */
    size_t nmx;
    struct dns_mx mx[DNS_MX_MAX];
    struct dns_route route;
};

/* One PTR target being forward-confirmed. */
struct dns_ptr_name {
    struct dns_ptr_req *r;
    char name[DNS_NAME_MAX];
    int confirmed;
};

/* Lifetime: linked in d->ptrs from dns_ptr() until freed.  A cancelled
 * request whose queries are still out stays linked (fn cleared) until the
 * last answer: c-ares cannot withdraw one query, and its callbacks point
 * into this memory. */
struct dns_ptr_req {
    struct dns *d;
    struct dns_ptr_req *prev, *next;
    struct dns_ip ip;
    dns_ptr_fn fn;                /* NULL once cancelled */
    void *arg;
    int pending;                  /* c-ares queries not yet answered */
    int in_cb;                    /* fn is running: cancel is a no-op */
    struct event *done_ev;
    size_t nnames;
    struct dns_ptr_name names[DNS_PTR_MAX_NAMES];
};

/* A dns_lookup() question; same lifetime as dns_ptr_req: linked in
 * d->lookups until freed, kept (fn cleared) while c-ares still holds it. */
struct dns_lookup_req {
    struct dns *d;
    struct dns_lookup_req *prev, *next;
    dns_lookup_fn fn;             /* NULL once cancelled */
    void *arg;
    int pending;
    int in_cb;
    enum dns_qtype type;
    struct event *done_ev;
    struct dns_lookup_answer ans;
};

struct dns {
    struct event_base *base;
    ares_channel ch;
    int ch_ok;
    int lib_ok;
    int dying;
    struct event *timer;
    struct dns_sock *socks;
    struct dns_req *reqs;
    struct dns_ptr_req *ptrs;
    struct dns_lookup_req *lookups;
};

static void dns_req_resolve(struct dns_req *r);

/* ---------- c-ares <-> libevent glue ---------- */

static void dns_timer_update(struct dns *d)
{
    struct timeval tv, *tvp;
    if (!d->ch_ok)
        return;
    tvp = ares_timeout(d->ch, NULL, &tv);
    if (tvp)
        evtimer_add(d->timer, tvp);
    else
        evtimer_del(d->timer);
}

static void dns_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns *d = arg;
    ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    dns_timer_update(d);
}

static void dns_sock_cb(evutil_socket_t fd, short what, void *arg)
{
    /* s may be freed inside ares_process_fd (socket closed): copy first */
    struct dns *d = ((struct dns_sock *)arg)->d;
    ares_process_fd(d->ch, (what & EV_READ) ? (ares_socket_t)fd : ARES_SOCKET_BAD,
                    (what & EV_WRITE) ? (ares_socket_t)fd : ARES_SOCKET_BAD);
    dns_timer_update(d);
}

static void dns_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct dns *d = data;
    struct dns_sock **pp = &d->socks, *s;
    short what = (short)((readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));

    while (*pp && (*pp)->fd != fd)
        pp = &(*pp)->next;
    s = *pp;
    if (!what) {
        if (s) {
            *pp = s->next;
            event_free(s->ev);
            free(s);
        }
        return;
    }
    if (!s) {
        if (!(s = calloc(1, sizeof *s)) ||
            !(s->ev = event_new(d->base, fd, (short)(what | EV_PERSIST), dns_sock_cb, s))) {
            /* the query then ends by its time-out: a temporary failure */
            log_warn("dns: out of memory watching a resolver socket");
            free(s);
            return;
        }
        s->d = d;
        s->fd = fd;
        s->next = d->socks;
        d->socks = s;
    } else {
        event_del(s->ev);
        event_assign(s->ev, d->base, fd, (short)(what | EV_PERSIST), dns_sock_cb, s);
    }
    if (event_add(s->ev, NULL) < 0)
        log_warn("dns: cannot watch resolver socket %d", (int)fd);
}

/* ---------- small pure helpers ---------- */

/* Length of name without one trailing dot. */
static size_t dns_name_len(const char *s)
{
    size_t n = strlen(s);
    if (n > 0 && s[n - 1] == '.')
        n--;
    return n;
}

static int dns_name_eq(const char *a, const char *b)
{
    size_t na = dns_name_len(a), nb = dns_name_len(b);
    return na == nb && strncasecmp(a, b, na) == 0;
}

static int dns_is_root(const char *s)
{
    return s[0] == '\0' || (s[0] == '.' && s[1] == '\0');
}

static void dns_ip_from_sa(const struct sockaddr_storage *ss, struct dns_ip *ip)
{
    memset(ip, 0, sizeof *ip);
    if (ss->ss_family == AF_INET) {
        ip->family = AF_INET;
        memcpy(ip->b, &((const struct sockaddr_in *)ss)->sin_addr, DNS_IPV4_LEN);
    } else if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            ip->family = AF_INET;
            memcpy(ip->b, a->s6_addr + DNS_IP_MAX - DNS_IPV4_LEN, DNS_IPV4_LEN);
        } else {
            ip->family = AF_INET6;
            memcpy(ip->b, a->s6_addr, DNS_IP_MAX);
        }
    }
}

static int dns_ip_is_any(const struct dns_ip *ip)
{
    static const unsigned char zero[DNS_IP_MAX];
    return ip->family == AF_INET ? memcmp(ip->b, zero, DNS_IPV4_LEN) == 0
                                 : memcmp(ip->b, zero, DNS_IP_MAX) == 0;
}

static int dns_ip_eq(const struct dns_ip *a, const struct dns_ip *b)
{
    return a->family == b->family &&
           memcmp(a->b, b->b, a->family == AF_INET ? DNS_IPV4_LEN : DNS_IP_MAX) == 0;
}

/* "ip", "ip:port", "[ip]:port", "[ip]" or a bare IPv6 address. */
static int dns_parse_resolver(const char *s, struct ares_addr_port_node *n)
{
    char host[INET6_ADDRSTRLEN];
    const char *hs = s, *he, *rest;
    long port = DNS_DEFAULT_PORT;

    memset(n, 0, sizeof *n);
    if (s[0] == '[') {
        hs = s + 1;
        if (!(he = strchr(hs, ']')))
            return -1;
        rest = he + 1;
    } else {
        const char *colon = strchr(s, ':');
        if (colon && strchr(colon + 1, ':'))
            he = rest = s + strlen(s);      /* bare IPv6 */
        else
            he = rest = colon ? colon : s + strlen(s);
    }
    if (he == hs || (size_t)(he - hs) >= sizeof host)
        return -1;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    if (*rest) {
        char *end;
        if (rest[0] != ':' || !isdigit((unsigned char)rest[1]))
            return -1;
        errno = 0;
        port = strtol(rest + 1, &end, 10);
        if (errno || *end || port < 1 || port > DNS_PORT_MAX)
            return -1;
    }
    if (inet_pton(AF_INET, host, &n->addr.addr4) == 1)
        n->family = AF_INET;
    else if (inet_pton(AF_INET6, host, &n->addr.addr6) == 1)
        n->family = AF_INET6;
    else
        return -1;
    n->udp_port = n->tcp_port = (int)port;
    return 0;
}

/* ---------- requests ---------- */

static void dns_req_free(struct dns_req *r)
{
    if (!r)
        return;
    if (r->done_ev)
        event_free(r->done_ev);
    for (size_t i = 0; i < r->nself_names; i++)
        free(r->self_names[i]);
    free(r->self_names);
    free(r->self_ips);
    free(r);
}

static void dns_req_unlink(struct dns_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else if (r->d->reqs == r)
        r->d->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void dns_req_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns_req *r = arg;
    /* unlinked first: fn may call dns_free(), which must not see r */
    dns_req_unlink(r);
    r->fn(r->arg, &r->route);
    dns_req_free(r);
}

static void __attribute__((format(printf, 3, 4)))
dns_req_finish(struct dns_req *r, enum dns_status st, const char *fmt, ...)
{
    va_list ap;
    r->route.status = st;
    va_start(ap, fmt);
    vsnprintf(r->route.why, sizeof r->route.why, fmt, ap);
    va_end(ap);
    if (st != DNS_OK)
        r->route.nhosts = 0;
    event_active(r->done_ev, EV_TIMEOUT, 1);
}

/* A query answer we must ignore: the channel is going away. */
static int dns_req_gone(struct dns_req *r, int status)
{
    return status == ARES_EDESTRUCTION || status == ARES_ECANCELLED || r->d->dying;
}

static int dns_is_self_name(const struct dns_req *r, const char *name)
{
    for (size_t i = 0; i < r->nself_names; i++)
        if (dns_name_eq(r->self_names[i], name))
            return 1;
    return 0;
}

static int dns_is_self_ip(const struct dns_req *r, const struct dns_ip *ip)
{
    for (size_t i = 0; i < r->nself_ips; i++)
        if (dns_ip_eq(&r->self_ips[i], ip))
            return 1;
    return 0;
}

static int dns_mx_is_self_addr(const struct dns_req *r, const struct dns_mx *m)
{
    struct dns_ip ip;
    if (m->self_addr)
        return 1;
    for (size_t i = 0; i < m->n4; i++) {
        memset(&ip, 0, sizeof ip);
        ip.family = AF_INET;
        memcpy(ip.b, &m->a4[i], DNS_IPV4_LEN);
        if (dns_is_self_ip(r, &ip))
            return 1;
    }
    for (size_t i = 0; i < m->n6; i++) {
        struct sockaddr_storage ss;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        memset(&ss, 0, sizeof ss);
        s6->sin6_family = AF_INET6;
        s6->sin6_addr = m->a6[i];
        dns_ip_from_sa(&ss, &ip);
        if (dns_is_self_ip(r, &ip))
            return 1;
    }
    return 0;
}

static int dns_mx_definitely_nx(const struct dns_mx *m)
{
    return m->st4 == ARES_ENOTFOUND && m->st6 == ARES_ENOTFOUND;
}

/* Fill a host from a candidate, alternating families so both get a slot
 * when the list is capped. */
static void dns_host_fill(struct dns_host *h, const struct dns_mx *m, int port)
{
    size_t i4 = 0, i6 = 0;
    snprintf(h->name, sizeof h->name, "%s", m->name);
    h->pref = m->pref;
    h->naddr = 0;
    while (h->naddr < DNS_MAX_ADDRS && (i4 < m->n4 || i6 < m->n6)) {
        struct sockaddr_storage *ss = &h->addr[h->naddr];
        memset(ss, 0, sizeof *ss);
        if (i4 < m->n4 && (i4 <= i6 || i6 >= m->n6)) {
            struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
            s4->sin_family = AF_INET;
            s4->sin_port = htons((uint16_t)port);
            s4->sin_addr = m->a4[i4++];
            h->addrlen[h->naddr] = sizeof *s4;
        } else {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
            s6->sin6_family = AF_INET6;
            s6->sin6_port = htons((uint16_t)port);
            s6->sin6_addr = m->a6[i6++];
            h->addrlen[h->naddr] = sizeof *s6;
        }
        h->naddr++;
    }
}

/* Every A/AAAA answer is in: drop self and worse, build the route. */
static void dns_req_assemble(struct dns_req *r)
{
    size_t usable = 0, nx = 0;
    const char *first_err = NULL;

    if (!r->fixed)
        for (size_t i = 0; i < r->nmx; i++)
            if (r->mx[i].pref < r->self_pref && dns_mx_is_self_addr(r, &r->mx[i]))
                r->self_pref = r->mx[i].pref;

    r->route.nhosts = 0;
    for (size_t i = 0; i < r->nmx; i++) {
        const struct dns_mx *m = &r->mx[i];
        if (!r->fixed && m->pref >= r->self_pref)
            continue;
        usable++;
        if (m->n4 + m->n6 == 0) {
            if (dns_mx_definitely_nx(m))
                nx++;
            else if (!first_err) {
                int st = m->st4 != ARES_SUCCESS && m->st4 != ARES_ENODATA ? m->st4 : m->st6;
                first_err = st == ARES_SUCCESS || st == ARES_ENODATA ? "no A or AAAA record"
                                                                     : ares_strerror(st);
            }
            continue;
        }
        if (r->route.nhosts < DNS_MAX_HOSTS)
            dns_host_fill(&r->route.hosts[r->route.nhosts++], m, r->port);
    }

    if (r->route.nhosts > 0) {
        dns_req_finish(r, DNS_OK, "%zu host%s", r->route.nhosts,
                       r->route.nhosts == 1 ? "" : "s");
    } else if (usable == 0) {
        dns_req_finish(r, DNS_LOOP, "mail for %s loops back to myself", r->domain);
    } else if (nx == usable && !r->fixed) {
        /* a fixed next hop is the operator's word: a typo there must not
         * bounce mail, so only MX targets earn DNS_PERM */
        dns_req_finish(r, DNS_PERM, "no address for MX hosts of %s (NXDOMAIN)", r->domain);
    } else {
        dns_req_finish(r, DNS_TEMP, "no address for %s%s: %s", r->fixed ? "" : "MX hosts of ",
                       r->fixed ? r->mx[0].name : r->domain, first_err ? first_err : "NXDOMAIN");
    }
}

static void dns_req_settle(struct dns_req *r)
{
    if (--r->pending == 0)
        dns_req_assemble(r);
}

/* Self-detection looks at every address in the answer, not only the
 * DNS_MAX_ADDRS kept for connecting: an address of ours beyond that cut
 * would otherwise go unseen and the mail would loop. */
static void dns_mx_check_all(struct dns_mx *m, const struct hostent *he)
{
    if (!he || !he->h_addr_list)
        return;
    for (char **a = he->h_addr_list; *a && !m->self_addr; a++) {
        struct sockaddr_storage ss;
        struct dns_ip ip;
        memset(&ss, 0, sizeof ss);
        if (he->h_addrtype == AF_INET && he->h_length == DNS_IPV4_LEN) {
            ss.ss_family = AF_INET;
            memcpy(&((struct sockaddr_in *)&ss)->sin_addr, *a, DNS_IPV4_LEN);
        } else if (he->h_addrtype == AF_INET6 && he->h_length == DNS_IP_MAX) {
            ss.ss_family = AF_INET6;
            memcpy(&((struct sockaddr_in6 *)&ss)->sin6_addr, *a, DNS_IP_MAX);
        } else {
            continue;
        }
        dns_ip_from_sa(&ss, &ip);
        if (ip.family && dns_is_self_ip(m->r, &ip))
            m->self_addr = 1;
    }
}

static void dns_on_addr(struct dns_mx *m, int family, int status, unsigned char *abuf, int alen)
{
    struct dns_req *r = m->r;
    struct hostent *he = NULL;
    if (dns_req_gone(r, status))
        return;
    if (family == AF_INET) {
        struct ares_addrttl t[DNS_MAX_ADDRS];
        int n = DNS_MAX_ADDRS;
        if (status == ARES_SUCCESS && (status = ares_parse_a_reply(abuf, alen, &he, t, &n)) ==
                                          ARES_SUCCESS)
            for (int i = 0; i < n; i++)
                m->a4[m->n4++] = t[i].ipaddr;
        m->st4 = status;
    } else {
        struct ares_addr6ttl t[DNS_MAX_ADDRS];
        int n = DNS_MAX_ADDRS;
        if (status == ARES_SUCCESS && (status = ares_parse_aaaa_reply(abuf, alen, &he, t, &n)) ==
                                          ARES_SUCCESS)
            for (int i = 0; i < n; i++)
                memcpy(&m->a6[m->n6++], &t[i].ip6addr, sizeof m->a6[0]);
        m->st6 = status;
    }
    dns_mx_check_all(m, he);
    if (he)
        ares_free_hostent(he);
    dns_req_settle(r);
}

static void dns_on_a(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    dns_on_addr(arg, AF_INET, status, abuf, alen);
}

static void dns_on_aaaa(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    dns_on_addr(arg, AF_INET6, status, abuf, alen);
}

/* Start A and AAAA for every candidate; IP literals need no lookup. */
static void dns_req_resolve(struct dns_req *r)
{
    /* held while queries start: c-ares may answer some synchronously */
    r->pending++;
    for (size_t i = 0; i < r->nmx; i++) {
        struct dns_mx *m = &r->mx[i];
        m->r = r;
        m->n4 = m->n6 = 0;
        if (inet_pton(AF_INET, m->name, &m->a4[0]) == 1) {
            m->n4 = 1;
            m->st4 = ARES_SUCCESS;
            m->st6 = ARES_ENODATA;
        } else if (inet_pton(AF_INET6, m->name, &m->a6[0]) == 1) {
            m->n6 = 1;
            m->st6 = ARES_SUCCESS;
            m->st4 = ARES_ENODATA;
        } else {
            r->pending += 2;
            ares_query(r->d->ch, m->name, C_IN, T_A, dns_on_a, m);
            ares_query(r->d->ch, m->name, C_IN, T_AAAA, dns_on_aaaa, m);
        }
    }
    dns_req_settle(r);
}

static int dns_mx_cmp(const void *a, const void *b)
{
    const struct ares_mx_reply *x = *(const struct ares_mx_reply *const *)a;
    const struct ares_mx_reply *y = *(const struct ares_mx_reply *const *)b;
    return (x->priority > y->priority) - (x->priority < y->priority);
}

/* Sort by preference, shuffle equal preferences (RFC 5321 5.1), drop
 * names that are ours and everything at or above our preference, keep at
 * most DNS_MX_MAX.  Returns the number kept in r->mx. */
static size_t dns_mx_select(struct dns_req *r, struct ares_mx_reply **v, size_t n)
{
    size_t kept = 0;

    if (n > 1)      /* qsort of an empty (NULL) array is undefined */
        qsort(v, n, sizeof *v, dns_mx_cmp);
    for (size_t lo = 0; lo < n;) {
        size_t hi = lo + 1;
        while (hi < n && v[hi]->priority == v[lo]->priority)
            hi++;
        for (size_t i = hi - 1; i > lo; i--) {
            size_t j = lo + arc4random_uniform((uint32_t)(i - lo + 1));
            struct ares_mx_reply *t = v[i];
            v[i] = v[j];
            v[j] = t;
        }
        lo = hi;
    }
    for (size_t i = 0; i < n; i++)
        if (v[i]->priority < r->self_pref && dns_is_self_name(r, v[i]->host))
            r->self_pref = v[i]->priority;
    for (size_t i = 0; i < n && v[i]->priority < r->self_pref; i++) {
        struct dns_mx *m;
        if (kept == DNS_MX_MAX) {
            /* the cut runs through a preference group that might hold us
             * unseen: give back the whole group rather than risk a loop */
            if (v[i]->priority == r->mx[kept - 1].pref) {
                size_t g = kept;
                while (g > 0 && r->mx[g - 1].pref == v[i]->priority)
                    g--;
                if (g > 0)
                    kept = g;
            }
            break;
        }
        m = &r->mx[kept];
        if (strlen(v[i]->host) >= sizeof m->name) {
            log_warn("dns: MX host of %s longer than %zu bytes ignored", r->domain,
                     sizeof m->name - 1);
            continue;
        }
        memcpy(m->name, v[i]->host, dns_name_len(v[i]->host));
        m->name[dns_name_len(v[i]->host)] = '\0';
        m->pref = v[i]->priority;
        kept++;
    }
    return kept;
}

static void dns_req_implicit_mx(struct dns_req *r)
{
    r->nmx = 1;
    snprintf(r->mx[0].name, sizeof r->mx[0].name, "%s", r->domain);
    r->mx[0].pref = 0;
    if (dns_is_self_name(r, r->domain))
        r->self_pref = 0;
    if (r->self_pref == 0)
        dns_req_finish(r, DNS_LOOP, "mail for %s loops back to myself", r->domain);
    else
        dns_req_resolve(r);
}

static void dns_on_mx(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct dns_req *r = arg;
    struct ares_mx_reply *list = NULL, **v = NULL;
    size_t n = 0, nroot = 0;

    if (dns_req_gone(r, status))
        return;
    r->pending--;
    if (status == ARES_SUCCESS)
        status = ares_parse_mx_reply(abuf, alen, &list);
    switch (status) {
    case ARES_SUCCESS:
        break;
    case ARES_ENODATA:
        dns_req_implicit_mx(r);
        return;
    case ARES_ENOTFOUND:
        dns_req_finish(r, DNS_PERM, "domain %s does not exist (NXDOMAIN)", r->domain);
        return;
    default:
        dns_req_finish(r, DNS_TEMP, "MX lookup for %s failed: %s", r->domain,
                       ares_strerror(status));
        return;
    }

    for (struct ares_mx_reply *p = list; p; p = p->next) {
        n++;
        nroot += dns_is_root(p->host);
    }
    if (n == 0) {
        ares_free_data(list);
        dns_req_implicit_mx(r);
        return;
    }
    /* RFC 7505: a lone "." says no mail; "." beside real hosts is
     * nonsense we skip rather than connect to */
    if (nroot == n) {
        ares_free_data(list);
        dns_req_finish(r, DNS_PERM, "domain %s accepts no mail (null MX)", r->domain);
        return;
    }
    if (!(v = calloc(n - nroot, sizeof *v))) {
        ares_free_data(list);
        dns_req_finish(r, DNS_TEMP, "MX lookup for %s: out of memory", r->domain);
        return;
    }
    n = 0;
    for (struct ares_mx_reply *p = list; p; p = p->next)
        if (!dns_is_root(p->host))
            v[n++] = p;
    r->nmx = dns_mx_select(r, v, n);
    free(v);
    ares_free_data(list);
    if (r->nmx == 0) {
        if (r->self_pref != DNS_NO_PREF)
            dns_req_finish(r, DNS_LOOP, "mail for %s loops back to myself", r->domain);
        else
            dns_req_finish(r, DNS_TEMP, "no usable MX host for %s", r->domain);
        return;
    }
    dns_req_resolve(r);
}

/* Copy who we are; a wildcard listen address stands for every address of
 * every interface. */
static int dns_req_copy_self(struct dns_req *r, const struct dns_self *self)
{
    size_t nwild = 0, cap;
    struct ifaddrs *ifa = NULL;

    if (!self)
        return 0;
    if (self->nnames) {
        if (!(r->self_names = calloc(self->nnames, sizeof *r->self_names)))
            return -1;
        for (size_t i = 0; i < self->nnames; i++) {
            if (!self->names[i])
                continue;
            if (!(r->self_names[r->nself_names] = strdup(self->names[i])))
                return -1;
            r->nself_names++;
        }
    }
    cap = self->naddrs;
    for (size_t i = 0; i < self->naddrs; i++) {
        struct dns_ip ip;
        dns_ip_from_sa(&self->addrs[i], &ip);
        nwild += ip.family && dns_ip_is_any(&ip);
    }
    if (nwild) {
        if (getifaddrs(&ifa) < 0) {
            log_warn("dns: getifaddrs: %s; wildcard listen addresses not matched",
                     strerror(errno));
            ifa = NULL;
        }
        for (struct ifaddrs *p = ifa; p; p = p->ifa_next)
            cap++;
    }
    if (cap && !(r->self_ips = calloc(cap, sizeof *r->self_ips))) {
        freeifaddrs(ifa);
        return -1;
    }
    for (size_t i = 0; i < self->naddrs; i++) {
        struct dns_ip ip;
        dns_ip_from_sa(&self->addrs[i], &ip);
        if (!ip.family)
            continue;
        if (!dns_ip_is_any(&ip)) {
            r->self_ips[r->nself_ips++] = ip;
            continue;
        }
        /* "::" is dual-stack on Linux by default: it covers IPv4 too */
        for (struct ifaddrs *p = ifa; p; p = p->ifa_next) {
            struct sockaddr_storage ss;
            struct dns_ip iip;
            if (!p->ifa_addr || (p->ifa_addr->sa_family != AF_INET &&
                                 p->ifa_addr->sa_family != AF_INET6))
                continue;
            if (ip.family == AF_INET && p->ifa_addr->sa_family != AF_INET)
                continue;
            memset(&ss, 0, sizeof ss);
            memcpy(&ss, p->ifa_addr, p->ifa_addr->sa_family == AF_INET
                                         ? sizeof(struct sockaddr_in)
                                         : sizeof(struct sockaddr_in6));
            dns_ip_from_sa(&ss, &iip);
            if (r->nself_ips < cap && !dns_is_self_ip(r, &iip))
                r->self_ips[r->nself_ips++] = iip;
        }
    }
    freeifaddrs(ifa);
    return 0;
}

struct dns_self *dns_self_new(const struct conf *c)
{
    struct dns_self *s = calloc(1, sizeof *s);
    char **names = calloc(1 + c->naliases, sizeof *names);
    struct sockaddr_storage *addrs = calloc(c->nlisten ? c->nlisten : 1, sizeof *addrs);

    if (!s || !names || !addrs) {
        free(s);
        free(names);
        free(addrs);
        return NULL;
    }
    s->names = (const char *const *)names;
    s->addrs = addrs;
    for (size_t i = 0; i <= c->naliases; i++) {
        const char *n = i == 0 ? c->hostname : c->aliases[i - 1];
        if (!n)
            continue;
        if (!(names[s->nnames] = strdup(n))) {
            dns_self_free(s);
            return NULL;
        }
        s->nnames++;
    }
    /* conf_load vetted every listen address: one that does not parse
     * here is skipped rather than guessed at */
    for (size_t i = 0; i < c->nlisten; i++) {
        struct sockaddr_storage *ss = &addrs[s->naddrs];
        memset(ss, 0, sizeof *ss);
        if (inet_pton(AF_INET, c->listen[i].address, &((struct sockaddr_in *)ss)->sin_addr) == 1) {
            ss->ss_family = AF_INET;
            s->naddrs++;
        } else if (inet_pton(AF_INET6, c->listen[i].address,
                             &((struct sockaddr_in6 *)ss)->sin6_addr) == 1) {
            ss->ss_family = AF_INET6;
            s->naddrs++;
        }
    }
    return s;
}

void dns_self_free(struct dns_self *s)
{
    if (!s)
        return;
    /* dns_self_new allocated the names writable */
    for (size_t i = 0; i < s->nnames; i++)
        free((char *)s->names[i]);
    free((void *)s->names);
    free((void *)s->addrs);
    free(s);
}

int dns_route(struct dns *d, const char *host, int port, int fixed, const struct dns_self *self,
              dns_route_fn fn, void *arg)
{
    struct dns_req *r;
    size_t hl;

    if (!d || !host || !fn)
        log_panic("dns_route: called without resolver, host or callback");
    if (!(r = calloc(1, sizeof *r)))
        return -1;
    r->d = d;
    r->fn = fn;
    r->arg = arg;
    r->port = port;
    r->fixed = fixed;
    r->self_pref = DNS_NO_PREF;
    if (!(r->done_ev = event_new(d->base, -1, 0, dns_req_done_cb, r)) ||
        dns_req_copy_self(r, self) < 0) {
        dns_req_free(r);
        return -1;
    }
    r->next = d->reqs;
    if (d->reqs)
        d->reqs->prev = r;
    d->reqs = r;

    hl = dns_name_len(host);
    if (hl == 0 || hl >= sizeof r->domain) {
        snprintf(r->domain, sizeof r->domain, "%.*s", (int)(sizeof r->domain - 1), host);
        dns_req_finish(r, DNS_PERM, "invalid destination host name \"%s\"", r->domain);
        return 0;
    }
    memcpy(r->domain, host, hl);
    r->domain[hl] = '\0';
    if (port < 1 || port > DNS_PORT_MAX) {
        dns_req_finish(r, DNS_TEMP, "invalid port %d for %s", port, r->domain);
        return 0;
    }

    if (fixed) {
        r->nmx = 1;
        memcpy(r->mx[0].name, r->domain, hl + 1);
        r->mx[0].pref = 0;
        dns_req_resolve(r);
    } else {
        r->pending++;
        ares_query(d->ch, r->domain, C_IN, T_MX, dns_on_mx, r);
    }
    dns_timer_update(d);
    return 0;
}

/* ---------- client names: forward-confirmed reverse DNS ---------- */

/* What Postfix's valid_hostname() takes: letters, digits, hyphens
 * (underscores tolerated, common in the wild), no empty label nor one over
 * 63 bytes.  Anything else in a PTR answer is attacker-chosen text that
 * must not reach logs or headers. */
static int dns_hostname_ok(const char *s, size_t n)
{
    size_t label = 0;
    if (n == 0 || n > DNS_HOSTNAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
            continue;
        }
        if (!isalnum(c) && c != '-' && c != '_')
            return 0;
        if (++label > DNS_LABEL_MAX)
            return 0;
    }
    return label > 0;
}

static void dns_ptr_free(struct dns_ptr_req *r)
{
    if (!r)
        return;
    if (r->done_ev)
        event_free(r->done_ev);
    free(r);
}

static void dns_ptr_unlink(struct dns_ptr_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else if (r->d->ptrs == r)
        r->d->ptrs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void dns_ptr_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns_ptr_req *r = arg;
    const char *name = NULL;

    for (size_t i = 0; i < r->nnames && !name; i++)
        if (r->names[i].confirmed)
            name = r->names[i].name;
    /* unlinked first: fn may call dns_free(), which must not see r */
    dns_ptr_unlink(r);
    r->in_cb = 1;
    r->fn(r->arg, name);
    dns_ptr_free(r);
}

/* Every answer is in: hand the result over from the loop, or, when the
 * caller has gone, just drop the request. */
static void dns_ptr_settle(struct dns_ptr_req *r)
{
    if (--r->pending > 0)
        return;
    if (!r->fn) {
        dns_ptr_unlink(r);
        dns_ptr_free(r);
        return;
    }
    event_active(r->done_ev, EV_TIMEOUT, 1);
}

static int dns_ptr_gone(const struct dns_ptr_req *r, int status)
{
    return status == ARES_EDESTRUCTION || status == ARES_ECANCELLED || r->d->dying;
}

static void dns_on_fwd(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct dns_ptr_name *pn = arg;
    struct dns_ptr_req *r = pn->r;
    struct hostent *he = NULL;
    size_t len = r->ip.family == AF_INET ? DNS_IPV4_LEN : DNS_IP_MAX;

    if (dns_ptr_gone(r, status))
        return;
    if (r->fn && status == ARES_SUCCESS) {
        /* the hostent form keeps every address: a cap could hide the
         * client's among many */
        int rc = r->ip.family == AF_INET ? ares_parse_a_reply(abuf, alen, &he, NULL, NULL)
                                         : ares_parse_aaaa_reply(abuf, alen, &he, NULL, NULL);
        if (rc == ARES_SUCCESS && he && he->h_addrtype == r->ip.family &&
            (size_t)he->h_length == len)
            for (char **a = he->h_addr_list; a && *a && !pn->confirmed; a++)
                pn->confirmed = memcmp(*a, r->ip.b, len) == 0;
        if (he)
            ares_free_hostent(he);
    }
    dns_ptr_settle(r);
}

/* Keep a PTR target worth confirming: well-formed, not seen yet. */
static void dns_ptr_add_name(struct dns_ptr_req *r, const char *name)
{
    size_t n = dns_name_len(name);
    struct dns_ptr_name *pn;

    if (r->nnames == DNS_PTR_MAX_NAMES || n >= DNS_NAME_MAX || !dns_hostname_ok(name, n))
        return;
    for (size_t i = 0; i < r->nnames; i++)
        if (dns_name_eq(r->names[i].name, name))
            return;
    pn = &r->names[r->nnames++];
    pn->r = r;
    memcpy(pn->name, name, n);
    pn->name[n] = '\0';
}

static void dns_on_ptr(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct dns_ptr_req *r = arg;
    struct hostent *he = NULL;

    if (dns_ptr_gone(r, status))
        return;
    if (r->fn && status == ARES_SUCCESS &&
        ares_parse_ptr_reply(abuf, alen, r->ip.b,
                             r->ip.family == AF_INET ? DNS_IPV4_LEN : DNS_IP_MAX, r->ip.family,
                             &he) == ARES_SUCCESS && he) {
        if (he->h_name)
            dns_ptr_add_name(r, he->h_name);
        for (char **p = he->h_aliases; p && *p; p++)
            dns_ptr_add_name(r, *p);
    }
    if (he)
        ares_free_hostent(he);
    /* the PTR query is still counted while the forward ones start:
     * c-ares may answer some of them synchronously */
    for (size_t i = 0; i < r->nnames; i++) {
        r->pending++;
        ares_query(r->d->ch, r->names[i].name, C_IN, r->ip.family == AF_INET ? T_A : T_AAAA,
                   dns_on_fwd, &r->names[i]);
    }
    dns_ptr_settle(r);
}

/* in-addr.arpa / ip6.arpa name of ip (RFC 1035 3.5, RFC 3596 2.5). */
static void dns_ptr_rev_name(const struct dns_ip *ip, char *buf, size_t len)
{
    size_t off = 0;
    if (ip->family == AF_INET) {
        snprintf(buf, len, "%u.%u.%u.%u.in-addr.arpa", ip->b[3], ip->b[2], ip->b[1], ip->b[0]);
        return;
    }
    for (int i = DNS_IP_MAX - 1; i >= 0 && off < len; i--) {
        int w = snprintf(buf + off, len - off, "%x.%x.", ip->b[i] & DNS_NIBBLE_MASK,
                         ip->b[i] >> DNS_NIBBLE_BITS);
        if (w < 0)
            break;
        off += (size_t)w;
    }
    if (off < len)
        snprintf(buf + off, len - off, "ip6.arpa");
}

struct dns_ptr_req *dns_ptr(struct dns *d, const struct sockaddr *sa, dns_ptr_fn fn, void *arg)
{
    struct sockaddr_storage ss;
    struct dns_ptr_req *r;
    char rev[DNS_REV_NAME_MAX];

    if (!d || !sa || !fn)
        log_panic("dns_ptr: called without resolver, address or callback");
    memset(&ss, 0, sizeof ss);
    if (sa->sa_family == AF_INET)
        memcpy(&ss, sa, sizeof(struct sockaddr_in));
    else if (sa->sa_family == AF_INET6)
        memcpy(&ss, sa, sizeof(struct sockaddr_in6));
    else
        return NULL;
    if (!(r = calloc(1, sizeof *r)))
        return NULL;
    r->d = d;
    r->fn = fn;
    r->arg = arg;
    dns_ip_from_sa(&ss, &r->ip);
    if (!(r->done_ev = event_new(d->base, -1, 0, dns_ptr_done_cb, r))) {
        dns_ptr_free(r);
        return NULL;
    }
    r->next = d->ptrs;
    if (d->ptrs)
        d->ptrs->prev = r;
    d->ptrs = r;

    dns_ptr_rev_name(&r->ip, rev, sizeof rev);
    r->pending++;
    ares_query(d->ch, rev, C_IN, T_PTR, dns_on_ptr, r);
    dns_timer_update(d);
    return r;
}

void dns_ptr_cancel(struct dns_ptr_req *r)
{
    /* inside its own callback the request is already on its way out */
    if (!r || r->in_cb)
        return;
    r->fn = NULL;
    if (r->pending == 0) {
        /* finished, callback due: event_free() withdraws it */
        dns_ptr_unlink(r);
        dns_ptr_free(r);
    }
}

/* ---------- dns_lookup: one A or TXT question ---------- */

static void dns_lookup_unlink(struct dns_lookup_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else if (r->d->lookups == r)
        r->d->lookups = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void dns_lookup_free(struct dns_lookup_req *r)
{
    if (!r)
        return;
    if (r->done_ev)
        event_free(r->done_ev);
    free(r);
}

static void dns_lookup_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns_lookup_req *r = arg;
    (void)fd;
    (void)what;
    dns_lookup_unlink(r);
    r->in_cb = 1;
    r->fn(r->arg, &r->ans);
    dns_lookup_free(r);
}

static void dns_on_lookup(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct dns_lookup_req *r = arg;
    (void)timeouts;

    if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED || r->d->dying)
        return;
    r->pending = 0;
    if (!r->fn) {
        dns_lookup_unlink(r);
        dns_lookup_free(r);
        return;
    }
    r->ans.status = DNS_TEMP;
    if (status == ARES_ENOTFOUND || status == ARES_ENODATA) {
        r->ans.status = DNS_PERM;
    } else if (status == ARES_SUCCESS && r->ans.na == 0 && r->ans.txt[0] == '\0') {
        struct ares_addrttl at[DNS_LOOKUP_MAX_A];
        int nat = DNS_LOOKUP_MAX_A;
        struct ares_txt_ext *txt = NULL;
        if (r->type == DNS_QTYPE_A && abuf != NULL &&
            ares_parse_a_reply(abuf, alen, NULL, at, &nat) == ARES_SUCCESS) {
            for (int i = 0; i < nat && r->ans.na < DNS_LOOKUP_MAX_A; i++)
                memcpy(r->ans.a[r->ans.na++], &at[i].ipaddr, 4);
            r->ans.status = r->ans.na ? DNS_OK : DNS_PERM;
        } else if (r->type == DNS_QTYPE_TXT && abuf != NULL &&
                   ares_parse_txt_reply_ext(abuf, alen, &txt) == ARES_SUCCESS) {
            size_t off = 0;
            /* the first record only: its strings joined (RFC 7208 3.3) */
            for (struct ares_txt_ext *t = txt; t; t = t->next) {
                if (t != txt && t->record_start)
                    break;
                for (size_t i = 0; i < t->length && off + 1 < sizeof r->ans.txt; i++) {
                    unsigned char ch = t->txt[i];
                    r->ans.txt[off++] = (ch < ' ' || ch >= 0x7f) ? '?' : (char)ch;
                }
            }
            r->ans.txt[off] = '\0';
            ares_free_data(txt);
            r->ans.status = DNS_OK;
        } else {
            r->ans.status = DNS_PERM;   /* an answer, but not of the type asked */
        }
    }
    event_active(r->done_ev, EV_TIMEOUT, 1);
}

struct dns_lookup_req *dns_lookup(struct dns *d, const char *name, enum dns_qtype type,
                                  dns_lookup_fn fn, void *arg)
{
    struct dns_lookup_req *r;

    if (!d || !name || !fn)
        log_panic("dns_lookup: called without resolver, name or callback");
    if (!(r = calloc(1, sizeof *r)))
        return NULL;
    r->d = d;
    r->fn = fn;
    r->arg = arg;
    if (!(r->done_ev = event_new(d->base, -1, 0, dns_lookup_done_cb, r))) {
        dns_lookup_free(r);
        return NULL;
    }
    r->next = d->lookups;
    if (d->lookups)
        d->lookups->prev = r;
    d->lookups = r;
    r->pending = 1;
    r->type = type;
    ares_query(d->ch, name, C_IN, (int)type, dns_on_lookup, r);
    dns_timer_update(d);
    return r;
}

void dns_lookup_cancel(struct dns_lookup_req *r)
{
    if (!r || r->in_cb)
        return;
    r->fn = NULL;
    if (r->pending == 0) {
        dns_lookup_unlink(r);
        dns_lookup_free(r);
    }
}

/* ---------- lifetime ---------- */

struct dns *dns_new(struct event_base *base, const char *resolver, char *err, size_t errlen)
{
    struct dns *d;
    struct ares_options opts;
    int rc;

    if (!(d = calloc(1, sizeof *d))) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->base = base;
    if ((rc = ares_library_init(ARES_LIB_INIT_ALL)) != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
        free(d);
        return NULL;
    }
    d->lib_ok = 1;
    if (!(d->timer = evtimer_new(base, dns_timer_cb, d))) {
        snprintf(err, errlen, "out of memory");
        dns_free(d);
        return NULL;
    }
    memset(&opts, 0, sizeof opts);
    opts.sock_state_cb = dns_sock_state;
    opts.sock_state_cb_data = d;
    opts.timeout = DNS_TIMEOUT_MS;
    opts.tries = DNS_TRIES;
    /* With one server there is none to fall back to, and c-ares 1.18
     * would report its SERVFAIL or REFUSED as "could not contact": take
     * the answer as it is, so the log says what the server said. */
    opts.flags = resolver ? ARES_FLAG_NOCHECKRESP : 0;
    rc = ares_init_options(&d->ch, &opts, ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS |
                                              ARES_OPT_TRIES | ARES_OPT_FLAGS);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
        dns_free(d);
        return NULL;
    }
    d->ch_ok = 1;
    if (resolver) {
        struct ares_addr_port_node n;
        if (dns_parse_resolver(resolver, &n) < 0) {
            snprintf(err, errlen, "resolver \"%s\" is not \"ip\", \"ip:port\" or \"[ip]:port\"",
                     resolver);
            dns_free(d);
            return NULL;
        }
        if ((rc = ares_set_servers_ports(d->ch, &n)) != ARES_SUCCESS) {
            snprintf(err, errlen, "resolver \"%s\": %s", resolver, ares_strerror(rc));
            dns_free(d);
            return NULL;
        }
    }
    return d;
}

void dns_free(struct dns *d)
{
    if (!d)
        return;
    d->dying = 1;
    if (d->ch_ok)
        ares_destroy(d->ch);   /* our callbacks see ARES_EDESTRUCTION and return */
    d->ch_ok = 0;
    while (d->socks) {
        struct dns_sock *s = d->socks;
        d->socks = s->next;
        event_free(s->ev);
        free(s);
    }
    while (d->reqs) {
        struct dns_req *r = d->reqs;
        dns_req_unlink(r);
        dns_req_free(r);
    }
    while (d->ptrs) {
        struct dns_ptr_req *r = d->ptrs;
        dns_ptr_unlink(r);
        dns_ptr_free(r);
    }
    while (d->lookups) {
        struct dns_lookup_req *r = d->lookups;
        dns_lookup_unlink(r);
        dns_lookup_free(r);
    }
    if (d->timer)
        event_free(d->timer);
    if (d->lib_ok)
        ares_library_cleanup();
    free(d);
}
