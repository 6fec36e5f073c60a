/*
 * verify_cache.h - the callout cache of verify.c: one LMDB environment of
 * its own (SPOOL/verify), so it never contends with the spool's writer.
 *
 * Records are versioned: byte 0 the record version, byte 1 the result
 * (VERIFY_VALID or VERIFY_INVALID), byte 2 where it was learned (probe,
 * delivery, shared store), bytes 3..10 the time learned (int64, little
 * endian), then the reply text (no NUL).  Keys: the lower-cased address
 * ("local@domain"); "@domain" holds the domain's catch-all record (VALID:
 * the primary accepts any local part; INVALID: it does not).
 *
 * Used by mxkeepd (read-write) and mxkeepctl (read-only, daemon down): no
 * libevent here, no logging of peer text.  Write transactions are short
 * and never held across a callback; a full map is grown and the write
 * retried once.  MDB_NOSYNC: it is a cache, a crash loses answers only.
 */
#ifndef MXKEEP_VERIFY_CACHE_H
#define MXKEEP_VERIFY_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "verify.h"

#define VERIFY_RECORD_V1   1

struct verify_cache;

/* Open (creating, unless readonly) dir as an LMDB environment.  NULL with
 * a reason in err. */
struct verify_cache *vcache_open(const char *dir, size_t map_size, int readonly, char *err,
                                 size_t errlen);
void vcache_close(struct verify_cache *vc);     /* accepts NULL */

/* 1 found (e filled), 0 not found, -1 error. */
int vcache_get(struct verify_cache *vc, const char *key, struct verify_entry *e);
/* 0 or -1. */
int vcache_put(struct verify_cache *vc, const struct verify_entry *e);
/* Delete key, or with a key without '@' every record of that domain (its
 * "@domain" record included).  Number of records deleted, -1 on error. */
long vcache_forget(struct verify_cache *vc, const char *key_or_domain);
/* Delete the records expired(arg, e) calls expired (nonzero), looking at
 * no more than `look` records per call so that a big cache is swept in
 * steps: pages read in read transactions, each page's expired keys
 * deleted in a short write transaction of its own.  after: where the walk
 * is (in: "" to start; out: the last key looked at); *done is set when it
 * reached the end.  Number deleted, -1 on error (those deleted before it
 * stay deleted).  Not in readonly mode. */
long vcache_sweep(struct verify_cache *vc, int (*expired)(void *arg, const struct verify_entry *e),
                  void *arg, char after[VERIFY_KEY_MAX], size_t look, int *done);
/* Every record, or those of domain (NULL: all), in key order, a page at a
 * time so no read transaction is held while fn runs.  fn returns nonzero to
 * stop.  0 or -1. */
int vcache_each(struct verify_cache *vc, const char *domain,
                int (*fn)(void *arg, const struct verify_entry *e), void *arg);

/* Pure: encode e into buf (len octets).  Octets used, or 0 when too small. */
size_t vcache_encode(const struct verify_entry *e, unsigned char *buf, size_t len);
/* Pure: decode a record for key.  0, or -1 (unknown version, malformed). */
int vcache_decode(const char *key, size_t keylen, const unsigned char *buf, size_t len,
                  struct verify_entry *e);
/* Pure: fold addr to its key (lower case, no trailing dot).  0 or -1. */
int vcache_key(const char *addr, char out[VERIFY_KEY_MAX]);

#endif
