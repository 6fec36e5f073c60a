/*
 * table.h - recipient lookup tables behind one interface (as OpenSMTPD's
 * table backends): "file" (a list file), "lmdb" (a map compiled by
 * `mxkeepctl map compile`), "pgsql" (PostgreSQL through pg.h).
 *
 * A domain's `recipients` value names its table: a plain path is a file,
 * "lmdb:PATH" a compiled map, "pgsql:NAME" the pgsql entry NAME of the
 * config (default schema or its own recipient_query).
 *
 * Lookup key: the recipient address as "local@domain", the domain lower
 * case, the local part as given (the backend folds case where its data is
 * folded).  A table answers FOUND when it holds "local@domain" or
 * "@domain" (the catch-all entry).  file and lmdb answer at once; pgsql
 * answers at once from its bounded, expiring lookup cache and otherwise
 * returns TABLE_PENDING and calls cb later, exactly once, on the loop
 * thread, unless table_cancel() was called first.
 *
 * Ownership: table_open() returns a table with one reference; whoever
 * keeps it across a reload (a policy, a pending request) takes table_ref()
 * and drops it with table_free() (accepts NULL).  A pending request holds
 * its own reference until its callback ran or it was cancelled.
 */
#ifndef MXKEEP_TABLE_H
#define MXKEEP_TABLE_H

#include <stddef.h>

struct conf;
struct table;
struct table_req;

enum table_result {
    TABLE_NOTFOUND = 0,         /* definitive: not in the table */
    TABLE_FOUND = 1,            /* definitive: in the table */
    TABLE_PENDING = 2,          /* the answer comes through the callback */
    TABLE_TEMPFAIL = -1,        /* no answer now (database down): 451 4.3.0 */
};

/* r is NOTFOUND, FOUND or TEMPFAIL, never PENDING. */
typedef void table_cb(void *arg, enum table_result r);

struct table_backend {
    const char *name;           /* "file", "lmdb", "pgsql" */
    /* spec without the "name:" prefix.  NULL and "file:line: reason"-free
     * text in err ("cannot open ...: reason") on failure. */
    struct table *(*open)(const char *spec, const struct conf *c, char *err, size_t errlen);
    enum table_result (*lookup)(struct table *t, const char *key, table_cb *cb, void *arg,
                                struct table_req **req);
    void (*cancel)(struct table_req *req);
    size_t (*count)(const struct table *t);    /* entries, 0 when unknown */
    void (*close)(struct table *t);
};

/* Open the table a `recipients` value names.  NULL and a reason on error. */
struct table *table_open(const char *spec, const struct conf *c, char *err, size_t errlen);
struct table *table_ref(struct table *t);
void table_free(struct table *t);           /* drop one reference; accepts NULL */

/*
 * Look key up.  Returns FOUND, NOTFOUND or TEMPFAIL at once (cb not
 * called), or PENDING with *req set: cb(arg, result) follows once.
 */
enum table_result table_lookup(struct table *t, const char *key, table_cb *cb, void *arg,
                               struct table_req **req);
/* Forget a pending request: its callback never runs.  Accepts NULL. */
void table_cancel(struct table_req *req);
size_t table_count(const struct table *t);
const char *table_kind(const struct table *t);   /* backend name */

#endif
