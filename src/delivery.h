/*
 * delivery.h - the delivery scheduler: per-destination state (unknown, up,
 * down, held), probing with exponential back-off and jitter, flushing the
 * backlog oldest first over a bounded number of connections, per-recipient
 * outcomes, expiry and bounces.
 *
 * A destination is a domain mail is waiting for: a served domain (its
 * primary) or, for bounces, a sender's domain (MX lookup).  The spool's
 * per-destination index (by_dest) is the work list; sched never scans the
 * spool.
 *
 * Ownership: delivery_new() -> delivery_free() (accepts NULL; aborts open
 * connections).  conf is borrowed through delivery_configure() and replaced on
 * reload; spool and dns are borrowed for the sched's life.
 */
#ifndef MXKEEP_DELIVERY_H
#define MXKEEP_DELIVERY_H

#include <stddef.h>
#include "conf.h"

struct event_base;
struct spool;
struct dns;
struct delivery;

struct delivery *delivery_new(struct event_base *base, struct spool *sp, struct dns *dns,
                        char *err, size_t errlen);
/* Start, or reload: served domains, hold flags, limits.  0, or -1 with a
 * reason (bad TLS CA file). */
int delivery_configure(struct delivery *s, const struct conf *c, char *err, size_t errlen);
/* Load destination records and arm probes and expiry; call once. */
void delivery_start(struct delivery *s);
/* smtpd hooks (smtpd_etrn_fn / smtpd_queued_fn); arg is the sched. */
void delivery_etrn(void *arg, const char *node, const struct conf_domain **doms, size_t n,
                char *buf, size_t len);
void delivery_queued(void *arg, const char *qid);
/* Flush a destination now (ETRN without the reply).  Returns the number of
 * messages waiting, or -1 when the domain is held. */
long delivery_flush(struct delivery *s, const char *domain);
/* Stop starting work; abort connections (shutdown). */
void delivery_stop(struct delivery *s);
size_t delivery_active_connections(const struct delivery *s);
void delivery_free(struct delivery *s);

#endif
