/*
 * heartbeat.h - the gate of `accept = "when-primary-down"` domains: is
 * their primary up right now?
 *
 * For every primary host of a gated domain (keyed as delivery and verify
 * key it: host or domain to look up, port, fixed), a light check every
 * delivery.heartbeat: connect, greeting, EHLO (HELO fallback), QUIT.  One
 * check per primary host however many domains share it.  The answers feed
 * one state machine per host (enum gate_state, gate_set() logs old -> new):
 *   UNKNOWN  no answer yet                               accepts
 *   UP       last answer a success                       refuses (450 4.7.0)
 *   DOWN     delivery.heartbeat_down failures in a row (3) accepts
 *   STALE    no answer for delivery.heartbeat_stale      accepts
 * Up after one success; down after three failures in a row (hysteresis).
 * Delivery's own sessions are answers too (heartbeat_note): a session that
 * greeted is "up", a failed connect a failed heartbeat.
 *
 * The lookup at RCPT (heartbeat_gate) is a synchronous in-memory read;
 * a domain that is not gated is never refused.
 *
 * Ownership: one module-wide instance, heartbeat_init() ... heartbeat_
 * shutdown(), on the loop thread; it holds a reference on the conf of the
 * last heartbeat_reload().
 */
#ifndef MXKEEP_HEARTBEAT_H
#define MXKEEP_HEARTBEAT_H

#include <stddef.h>
#include <time.h>

#include "conf.h"

struct event_base;
struct evbuffer;
struct dns;

enum gate_state { GATE_UNKNOWN = 0, GATE_UP, GATE_DOWN, GATE_STALE, GATE_COUNT_ };

/* Failed heartbeats in a row before a primary is DOWN. */
#define HEARTBEAT_DOWN_AFTER 3

const char *gate_state_name(enum gate_state s);

int heartbeat_init(struct event_base *base, struct dns *dns, const struct conf *c, char *err,
                   size_t errlen);
/* New conf: the set of gated primaries is recomputed; a host still gated
 * keeps its state.  0, or -1 (out of memory: the previous set stays). */
int heartbeat_reload(const struct conf *c);
void heartbeat_shutdown(void);

/* The gate of a served domain: its state (GATE_UNKNOWN for a domain that
 * is not gated) and, when since is not NULL, when it entered it (0 for
 * none).  Returns 1 when RCPT must be refused: gated and its primary UP. */
int heartbeat_gate(const struct conf_domain *d, enum gate_state *state, time_t *since);
/* Same by domain name: -1 when not a gated domain of the current conf. */
int heartbeat_gate_name(const char *domain, enum gate_state *state, time_t *since);
/* Delivery's knowledge: a session to domain's primary ended well (up = 1)
 * or failed to connect (up = 0).  Feeds the gate of that primary host when
 * a gated domain uses it (the domain itself gated or not); else ignored. */
void heartbeat_note(const char *domain, int up);

/* Prometheus: mxkeep_gate_state per primary and the heartbeat counters. */
void heartbeat_metrics(struct evbuffer *b);

#endif
