/*
 * dns.h - asynchronous next-hop resolution with c-ares inside the libevent
 * loop: MX lookup (RFC 5321 5.1) with self-detection, then A and AAAA.
 *
 * For a destination domain, dns_route() produces the ordered list of hosts
 * to try, each with its addresses:
 *   - fixed ("[host]:port"): host is an IP literal (no DNS) or a name
 *     resolved with A/AAAA only; no MX lookup.
 *   - otherwise: MX lookup of the domain; sort by preference and shuffle
 *     equal preferences; find our own preference: the lowest preference of
 *     any MX whose name is ours (hostname or alias, case-insensitive, no
 *     trailing dot) or that resolves to an address we listen on; drop
 *     every MX at or above it.  No MX records at all (NODATA): the domain
 *     itself as the only host (RFC 5321 5.1 implicit MX).
 * Outcomes (struct dns_route.status):
 *   DNS_OK      hosts[] holds at least one host with at least one address
 *   DNS_TEMP    SERVFAIL, timeout, refused, or no MX host resolved: retry
 *   DNS_PERM    NXDOMAIN, or null MX (RFC 7505: one MX "." pref 0)
 *   DNS_LOOP    every usable MX is us or worse: "mail for D loops back to
 *               myself" (4.4.6); the mail stays, never bounced early
 * why holds a one-line reason for logs and last_error.
 *
 * Ownership: dns_new() -> dns_free() (accepts NULL); dns_free() cancels
 * pending lookups WITHOUT calling their callbacks.  The route passed to a
 * callback is valid only during the call.  Callbacks always run from the
 * event loop, never from inside dns_route().
 *
 * dns_ptr() names an SMTP client: forward-confirmed reverse DNS (FCrDNS).
 * PTR lookup of the address, then A (IPv4) or AAAA (IPv6) of at most
 * DNS_PTR_MAX_NAMES of the names; the first name, in answer order, whose
 * addresses include the client's is the result.  No PTR, no confirmation,
 * a malformed name or any failure: NULL.  The handle stays valid until the
 * callback has returned or dns_ptr_cancel() was called, whichever is first;
 * after dns_ptr_cancel() the callback never runs.
 */
#ifndef MXKEEP_DNS_H
#define MXKEEP_DNS_H

#include <stddef.h>
#include <sys/socket.h>

struct event_base;
struct dns;

#define DNS_MAX_HOSTS 10
#define DNS_MAX_ADDRS 8

enum dns_status { DNS_OK = 0, DNS_TEMP, DNS_PERM, DNS_LOOP };

struct dns_host {
    char name[256];
    int pref;                       /* MX preference; 0 for fixed/implicit */
    size_t naddr;
    struct sockaddr_storage addr[DNS_MAX_ADDRS];   /* port already set */
    socklen_t addrlen[DNS_MAX_ADDRS];
};

struct dns_route {
    enum dns_status status;
    char why[256];
    size_t nhosts;
    struct dns_host hosts[DNS_MAX_HOSTS];
};

/* Who we are, for MX self-detection. */
struct dns_self {
    const char *const *names;       /* hostname and aliases */
    size_t nnames;
    const struct sockaddr_storage *addrs;   /* addresses we listen on (port ignored) */
    size_t naddrs;
};

struct conf;
/* Who we are, from the config: its hostname, every alias and every listen
 * address, sized by the config so that nothing is cut (a name or address
 * left out is a mail loop waiting to happen).  Strings are copied: the
 * result outlives a reload of c.  Pure (no I/O); NULL on out of memory. */
struct dns_self *dns_self_new(const struct conf *c);
void dns_self_free(struct dns_self *s);     /* accepts NULL */

typedef void (*dns_route_fn)(void *arg, const struct dns_route *r);

/* resolver: NULL for the system's (/etc/resolv.conf), or "ip", "ip:port",
 * "[ipv6]:port".  NULL with a reason in err on failure. */
struct dns *dns_new(struct event_base *base, const char *resolver, char *err, size_t errlen);
void dns_free(struct dns *d);

/* Resolve the next hops of domain.  host/port/fixed come from
 * conf_parse_primary (or host = domain, port = 25, fixed = 0).  self is
 * copied.  Returns 0, or -1 (out of memory: fn is not called). */
int dns_route(struct dns *d, const char *host, int port, int fixed, const struct dns_self *self,
              dns_route_fn fn, void *arg);

#define DNS_PTR_MAX_NAMES 4

struct dns_ptr_req;
/* name: the confirmed host name (no trailing dot, hostname characters
 * only) valid only during the call, or NULL. */
typedef void (*dns_ptr_fn)(void *arg, const char *name);

/* sa: AF_INET or AF_INET6 (IPv4-mapped counts as IPv4); port ignored.
 * Returns the handle, or NULL (out of memory or bad family: fn is not
 * called). */
struct dns_ptr_req *dns_ptr(struct dns *d, const struct sockaddr *sa, dns_ptr_fn fn, void *arg);
/* Accepts NULL. */
void dns_ptr_cancel(struct dns_ptr_req *h);

/*
 * dns_lookup() asks one question (DNS_QTYPE_A or DNS_QTYPE_TXT) for the
 * DNSBL checks (dnsbl.h).  The answer: status DNS_OK with up to
 * DNS_LOOKUP_MAX_A IPv4 addresses (network order) or the first TXT
 * record's text (its strings joined, control octets replaced, cut to
 * DNS_LOOKUP_TXT_MAX - 1), DNS_PERM for NXDOMAIN or no such record,
 * DNS_TEMP for every failure (timeout, SERVFAIL, refused).  Same lifetime
 * rules as dns_ptr: the callback runs from the loop, never from inside
 * dns_lookup(), and never after dns_lookup_cancel().
 */
#define DNS_LOOKUP_MAX_A 8
#define DNS_LOOKUP_TXT_MAX 256
enum dns_qtype { DNS_QTYPE_A = 1, DNS_QTYPE_TXT = 16 };     /* RFC 1035 3.2.2 TYPE values */
struct dns_lookup_answer {
    enum dns_status status;
    size_t na;
    unsigned char a[DNS_LOOKUP_MAX_A][4];
    char txt[DNS_LOOKUP_TXT_MAX];
};
struct dns_lookup_req;
typedef void (*dns_lookup_fn)(void *arg, const struct dns_lookup_answer *ans);
/* NULL when out of memory (fn is not called). */
struct dns_lookup_req *dns_lookup(struct dns *d, const char *name, enum dns_qtype type,
                                  dns_lookup_fn fn, void *arg);
/* Accepts NULL. */
void dns_lookup_cancel(struct dns_lookup_req *r);

#endif
