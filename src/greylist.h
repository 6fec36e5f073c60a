/*
 * greylist.h - greylisting of (client network, sender, recipient)
 * triplets (issue 9, section 5), as postgrey does it.
 *
 * A triplet seen for the first time is refused (450 4.2.0) for `delay`;
 * a retry after the delay and within `retry_window` of the first attempt
 * passes, and the passed triplet is remembered for `pass_expire` after it
 * was last seen (each pass renews it).  A triplet not retried within the
 * window starts over.  The client is its network (ratelimit.ipv4_prefix,
 * ipv6_prefix), so a sender with a pool of outbound addresses in one
 * network passes once its first retry did.
 *
 * The decision is a pure function (greylist_decide, unit-tested); the
 * store is an LMDB environment of its own, SPOOL/greylist, kept across
 * restarts.  Records are versioned.  Short transactions on the loop
 * thread, none held across calls; a full map doubles.
 *
 * Ownership: greylist_open/greylist_close; the loop thread only.
 */
#ifndef MXKEEP_GREYLIST_H
#define MXKEEP_GREYLIST_H

#include <stddef.h>
#include <stdint.h>
#include "conf.h"

#define GREYLIST_RECORD_VERSION 1

struct greylist_rec {
    int64_t first;          /* first attempt of this round, unix seconds */
    int64_t last;           /* last attempt */
    int64_t passed;         /* when it passed, 0: not yet */
    uint32_t count;         /* attempts */
};

enum greylist_result { GREYLIST_PASS = 0, GREYLIST_DEFER };

/*
 * Decide for a triplet whose stored record is *r (found 0: none) at now,
 * and update *r to what must be stored.  *wait: seconds until a retry may
 * pass (DEFER).  Pure.
 */
enum greylist_result greylist_decide(struct greylist_rec *r, int found, int64_t now,
                                     const struct conf_greylist *c, long *wait);
/* Is a stored record past its use (the sweep deletes it)?  Pure. */
int greylist_expired(const struct greylist_rec *r, int64_t now, const struct conf_greylist *c);
/* Record encoding with its version byte; decode returns -1 on an unknown
 * version or size (the record is then treated as absent).  Pure. */
size_t greylist_encode(const struct greylist_rec *r, unsigned char *buf, size_t len);
int greylist_decode(const unsigned char *buf, size_t len, struct greylist_rec *r);

struct greylist;

/* Open (create) the environment in dir.  NULL with a reason in err. */
struct greylist *greylist_open(const char *dir, size_t map_size, char *err, size_t errlen);
void greylist_close(struct greylist *g);

/*
 * Check and record one attempt: network (family, network-order octets,
 * already cut to its prefix), sender and recipient (compared without
 * case).  A store failure passes (fail open: greylisting is a filter,
 * never a reason to lose mail) and returns -1 with the result PASS.
 */
int greylist_check(struct greylist *g, const struct conf_greylist *c, int family,
                   const void *net, const char *sender, const char *rcpt, int64_t now,
                   enum greylist_result *res, long *wait);

/* Delete expired records.  Returns how many, or -1. */
long greylist_sweep(struct greylist *g, const struct conf_greylist *c, int64_t now);

#endif
