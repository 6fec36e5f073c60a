/*
 * metrics.h - the optional HTTP listener (conf->metrics_address:port) on
 * libevent's evhttp: /metrics in the Prometheus text format and /status,
 * one self-contained HTML page for people.
 *
 * Bound at start-up while still root (before the privilege drop); serves
 * GET and HEAD only, small bounded requests, loopback by default.  Keeps
 * an in-memory history of the backlog (total and per destination, one
 * sample a minute, 24 hours) for the /status chart.
 *
 * Ownership: metrics_new() -> metrics_free() (accepts NULL).
 */
#ifndef MXKEEP_METRICS_H
#define MXKEEP_METRICS_H

#include <stddef.h>

struct event_base;
struct conf;
struct delivery;
struct spool;
struct metrics;

typedef void (*metrics_gauges_fn)(void *arg, size_t *in_sessions, size_t *out_connections);

/* NULL with a reason in err (cannot bind).  Returns NULL without error
 * (err = "") when conf has no metrics listener. */
struct metrics *metrics_new(struct event_base *base, const struct conf *c, char *err,
                            size_t errlen);
void metrics_start(struct metrics *m, struct spool *sp, struct delivery *dl,
                   metrics_gauges_fn gauges, void *arg);
void metrics_set_conf(struct metrics *m, const struct conf *c);
void metrics_free(struct metrics *m);

#endif
