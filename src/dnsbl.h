/*
 * dnsbl.h - DNS block and allow lists for SMTP clients (issue 9,
 * section 5).
 *
 * For a client address, every zone of the `dnsbl` group is asked in
 * parallel (A record of the reversed address under the zone, RFC 5782);
 * a zone that lists it (an answer in 127.0.0.0/8) adds its weight, which
 * is negative for an allow-list (DNSWL).  A sum at or over `threshold`
 * blocks: the reply carries the listing zone's reason (its TXT record if
 * it has one, else the zone's `reply`, else "listed at ZONE").  The whole
 * check is bounded by `timeout`; a zone that fails or does not answer in
 * time counts as not listing (fail open: a resolver outage never refuses
 * mail), logged once until the resolver answers again.  Answers are
 * cached `cache_ttl`, for `cache_size` addresses (the oldest replaced).
 *
 * Ownership: dnsbl_new/dnsbl_free; a pending check holds a reference to
 * the conf it started with; its callback runs once, from the loop, unless
 * dnsbl_cancel() came first.  The loop thread only.
 */
#ifndef MXKEEP_DNSBL_H
#define MXKEEP_DNSBL_H

#include <stddef.h>
#include "conf.h"
#include "dns.h"

#define DNSBL_REASON_MAX 512

struct dnsbl_result {
    int blocked;
    long score;
    char zone[256];                     /* the listing zone with the highest weight */
    char reason[DNSBL_REASON_MAX];      /* its reason text (blocked) */
};

struct dnsbl;
struct dnsbl_req;
typedef void dnsbl_fn(void *arg, const struct dnsbl_result *r);

struct event_base;
struct dnsbl *dnsbl_new(struct event_base *base);
void dnsbl_free(struct dnsbl *b);

/*
 * Check a client (family, network-order address, IPv4-mapped already
 * unwrapped).  Returns NULL with *now filled when answered at once (no
 * zones, the cache, or out of memory: not blocked), else the pending
 * check: fn(arg, result) follows.
 */
struct dnsbl_req *dnsbl_check(struct dnsbl *b, struct dns *dns, const struct conf *c,
                              int family, const void *addr, dnsbl_fn *fn, void *arg,
                              struct dnsbl_result *now);
/* Accepts NULL; the callback never runs after it. */
void dnsbl_cancel(struct dnsbl_req *r);

/* The query name of addr under zone (RFC 5782 2.1, 2.4).  Pure.
 * 0, or -1 when it does not fit. */
int dnsbl_query_name(int family, const void *addr, const char *zone, char *buf, size_t len);

#endif
