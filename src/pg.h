/*
 * pg.h - PostgreSQL connections on the libevent loop, through libpq's
 * asynchronous API only (PQconnectStart/PQconnectPoll, PQsendQueryParams,
 * PQconsumeInput, PQnotifies): never a blocking libpq call on the loop.
 *
 * One connection per `pgsql = ( { name; conninfo; ... } )` entry, kept
 * across reloads while its conninfo is unchanged.  Queries queue while the
 * connection is down or busy; a lost connection fails the queued queries
 * (callback with res NULL), reconnects with back-off, is logged once per
 * change of state (not per query), and is a gauge in /metrics.
 *
 * Security: values always travel as bound parameters (PQsendQueryParams),
 * never inside SQL text, escaped or not.
 *
 * Ownership: a struct pg belongs to this module; callers borrow it by name
 * for the life of one callback chain and never free it.  A PGresult handed
 * to a callback is freed by pg.c after the callback returns.
 */
#ifndef MXKEEP_PG_H
#define MXKEEP_PG_H

#include <libpq-fe.h>

struct event_base;
struct conf;
struct pg;
struct pg_query;

/* res: the result (PGRES_TUPLES_OK / PGRES_COMMAND_OK checked by the
 * caller), or NULL when the database could not answer (down, lost, query
 * error already logged). */
typedef void pg_result_cb(void *arg, const PGresult *res);
/* A NOTIFY on a channel we LISTEN to; payload may be "". */
typedef void pg_notify_cb(void *arg, const char *channel, const char *payload);
/* The connection came up (again): LISTENs are re-issued by pg.c; callers
 * re-read what they may have missed. */
typedef void pg_up_cb(void *arg, struct pg *p);

/* Start (or after a reload, reconcile) the connections of c->pgsql.
 * 0, or -1 with a reason in err. */
int pg_configure(struct event_base *base, const struct conf *c, char *err, size_t errlen);
void pg_shutdown(void);

struct pg *pg_find(const char *name);        /* NULL: no such entry */
int pg_is_up(const struct pg *p);
const char *pg_name(const struct pg *p);
/* Every configured connection, for the mxkeep_pgsql_up gauge. */
void pg_each(void (*fn)(void *arg, const char *name, int up), void *arg);

/* Queue a query with nparams text parameters ($1..$n).  The callback runs
 * exactly once on the loop thread unless pg_cancel() comes first.  NULL
 * only when out of memory. */
struct pg_query *pg_query(struct pg *p, const char *sql, int nparams,
                          const char *const *params, pg_result_cb *cb, void *arg);
void pg_cancel(struct pg_query *q);          /* accepts NULL */

/* LISTEN channel (an identifier we choose: [a-z_]+).  Kept across
 * reconnects.  on_up (may be NULL) runs after each (re)connect. */
int pg_listen(struct pg *p, const char *channel, pg_notify_cb *cb, pg_up_cb *on_up, void *arg);
void pg_unlisten(struct pg *p, const char *channel, void *arg);

#endif
