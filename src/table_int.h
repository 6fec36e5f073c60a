/*
 * table_int.h - what a table backend (table_file.c, table_lmdb.c,
 * table_pgsql.c) shares with table.c; nobody else includes it.
 *
 * A backend's table embeds struct table as its FIRST member and returns a
 * pointer to it from open(); table.c fills `be` and `refs` afterwards, and
 * calls close() when the last reference goes.  A backend's pending request
 * (pgsql) embeds struct table_req as its first member with `be` set, so
 * table_cancel() finds the backend's cancel().
 *
 * Ownership: a backend that returns TABLE_PENDING takes table_ref() on its
 * table for the request and drops it (table_free) after the callback ran
 * or in cancel(); the table therefore outlives every pending request, and
 * close() never sees one.
 */
#ifndef MXKEEP_TABLE_INT_H
#define MXKEEP_TABLE_INT_H

#include "table.h"

struct table {
    const struct table_backend *be;     /* set by table_open() */
    unsigned long refs;                 /* table_ref / table_free, loop thread only */
};

struct table_req {
    const struct table_backend *be;     /* set by the backend */
};

/* The "@domain" catch-all key of key ("local@domain" -> "@domain"), or
 * NULL when key has no '@' or is already a catch-all. */
const char *table_key_domain(const char *key);

extern const struct table_backend table_file_backend;
extern const struct table_backend table_lmdb_backend;
extern const struct table_backend table_pgsql_backend;

#endif
