/*
 * ratelimit.h - per-client counting for connection, message and recipient
 * rate limits (issue 9, section 5).
 *
 * A pure counting core: no I/O, no clock of its own (the caller passes
 * now), no logging.  Each key (what is counted, the client address or its
 * network) has a fixed window that starts at its first event; the count
 * restarts when the window has passed.  The table is bounded: when full,
 * the least recently seen key is evicted (a flood of new addresses forgets
 * old ones, it never grows memory).
 *
 * Ownership: ratelimit_new/ratelimit_free; the loop thread only.
 */
#ifndef MXKEEP_RATELIMIT_H
#define MXKEEP_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

enum ratelimit_kind { RL_CONNECT = 0, RL_MAIL, RL_RCPT, RL_KIND_COUNT_ };

struct ratelimit;

struct ratelimit *ratelimit_new(size_t max_keys);
void ratelimit_free(struct ratelimit *rl);
size_t ratelimit_size(const struct ratelimit *rl);

/*
 * One event of kind for a key of keylen octets (at most 32) at time now,
 * counted in a window of window seconds.  Returns the count in the
 * current window, this event included.  When limit > 0 and the key is
 * already at limit, the event is not counted (a refused attempt does not
 * lengthen the penalty) and limit + 1 is returned.
 */
uint64_t ratelimit_hit(struct ratelimit *rl, enum ratelimit_kind kind, const void *key,
                       size_t keylen, int64_t now, long window, long limit);

/* The network of a client address: the first bits bits kept, the rest
 * zeroed (out has 16 octets; family AF_INET uses the first 4). */
void ratelimit_network(int family, const void *addr, int bits, unsigned char out[16]);

#endif
