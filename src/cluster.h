/*
 * cluster.h - many mxkeepd nodes, one truth: what a fleet of nodes at
 * equal MX preference must agree on, kept in the PostgreSQL entry named by
 * `cluster = { node; pgsql; status_interval; }` (doc/scaling.md).
 *
 * Each node keeps its own spool.  Shared, in the database's tables (made
 * if missing; doc/schema-cluster.sql):
 *   holds         a domain held on one node is held on every node
 *                 (NOTIFY mxkeep_hold; the table is read again at start
 *                 and on every reconnect);
 *   node_status   each node's per-destination backlog, oldest message and
 *                 state, upserted every status_interval in one statement
 *                 (mxkeepctl cluster summary reads the fleet in one query);
 *   verify_cache  the callout answers (struct verify_shared of verify.h);
 * and flushes: ETRN or `mxkeepctl flush D` on one node makes every node
 * flush D (NOTIFY mxkeep_flush).  The ETRN 253 count is the fleet's: this
 * node's live count plus the others' last status rows (as fresh as those
 * rows: at most status_interval old, stale nodes left out).
 *
 * A node that loses the database keeps serving: holds stay as last known,
 * and holds, releases and flushes made meanwhile are applied locally at
 * once and published when the database is back.
 *
 * Ownership: cluster_new() -> cluster_free() (accepts NULL).  The
 * delivery scheduler and spool are borrowed for the cluster's life; the
 * conf is referenced (conf_ref) and replaced by cluster_reload().
 */
#ifndef MXKEEP_CLUSTER_H
#define MXKEEP_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evbuffer;
struct conf;
struct delivery;
struct spool;
struct cluster;
struct verify_shared;

/* NULL with err[0] == '\0' when the config has no cluster group; NULL with
 * a reason when it names no usable pgsql entry.  Call after pg_configure
 * and before delivery_start and the loop: it reads the fleet's holds
 * (bounded, blocking: the loop is not running yet) so no held mail leaves
 * in the first moments of a restart. */
struct cluster *cluster_new(struct event_base *base, const struct conf *c, struct delivery *dl,
                            struct spool *sp, char *err, size_t errlen);
/* After a reload's delivery_configure (which hands holds back to the
 * config): apply the fleet's holds again.  c must keep the same node and
 * pgsql entry (a change needs a restart; logged). */
void cluster_reload(struct cluster *cl, const struct conf *c);
void cluster_free(struct cluster *cl);

/* This node held or released domain (mxkeepctl): tell the fleet. */
void cluster_hold(struct cluster *cl, const char *domain, int hold);
/* This node flushed domain (mxkeepctl flush): tell the fleet.  Returns
 * the other nodes' last known backlog for it (0 when the database is down:
 * they flush when the request reaches them). */
uint64_t cluster_flush(struct cluster *cl, const char *domain);
/* delivery_etrn's fleet hook (delivery_set_fleet): the others' last known
 * count of domain (0 while the database is down); with flush 1 publish
 * the flush first (a domain that is not held).  arg: the cluster. */
uint64_t cluster_etrn_count(void *arg, const char *domain, int flush);

/* mxkeepctl cluster summary: one query over the fleet's status; cb runs
 * once on the loop with payload (one JSON object per line and per node
 * and destination) or NULL and a reason.  0, or -1 (database down: cb
 * not called). */
typedef void cluster_summary_cb(void *arg, struct evbuffer *payload, const char *err);
int cluster_summary(struct cluster *cl, cluster_summary_cb *cb, void *arg);

/* The verify cache over the fleet's verify_cache table, for
 * verify_set_shared(cluster_verify_ops(), cl). */
const struct verify_shared *cluster_verify_ops(void);

#endif
