/*
 * table.c - the recipient table interface (table.h): the registry of
 * backends, spec parsing, reference counting, and the dispatch of lookups
 * and cancels to the backend that owns a table or request.
 *
 * Owns: nothing but the reference count of each table (struct table, the
 * base every backend's table embeds: table_int.h).  The backends own
 * their data.
 *
 * Never: interprets a key (the backend normalizes what it stores), holds
 * a lookup across calls, or frees a table that still has references.
 *
 * Specs (conf.c has already made paths absolute and checked them):
 *   "lmdb:PATH"   a map compiled by `mxkeepctl map compile` (table_lmdb.c)
 *   "pgsql:NAME"  the pgsql entry NAME of the config (table_pgsql.c)
 *   "file:PATH"   a list file (table_file.c); so is any other text
 */
#include "config.h"
#include "table.h"
#include "table_int.h"

#include <stdio.h>
#include <string.h>

#include "log.h"


static const struct table_backend *const table_backends[] = {
    &table_file_backend,
    &table_lmdb_backend,
    &table_pgsql_backend,
};

#define NBACKENDS (sizeof table_backends / sizeof table_backends[0])

/* The backend a spec names and the rest of the spec after "name:".  A
 * spec with no known prefix is a file path. */
static const struct table_backend *table_backend_of(const char *spec, const char **rest)
{
    for (size_t i = 0; i < NBACKENDS; i++) {
        size_t n = strlen(table_backends[i]->name);
        if (strncmp(spec, table_backends[i]->name, n) == 0 && spec[n] == ':') {
            *rest = spec + n + 1;
            return table_backends[i];
        }
    }
    *rest = spec;
    return strncmp(spec, "pgsql:", 6) == 0 ? NULL : &table_file_backend;
}

struct table *table_open(const char *spec, const struct conf *c, char *err, size_t errlen)
{
    const char *rest;
    const struct table_backend *be;
    struct table *t;

    if (spec == NULL || *spec == '\0') {
        snprintf(err, errlen, "empty table name");
        return NULL;
    }
    be = table_backend_of(spec, &rest);
    if (be == NULL) {
        snprintf(err, errlen, "%s: this build has no pgsql tables", spec);
        return NULL;
    }
    if (*rest == '\0') {
        snprintf(err, errlen, "%s: names no %s table", spec, be->name);
        return NULL;
    }
    if (errlen > 0)
        err[0] = '\0';
    t = be->open(rest, c, err, errlen);
    if (t == NULL) {
        if (errlen > 0 && err[0] == '\0')
            snprintf(err, errlen, "%s: cannot open", spec);
        return NULL;
    }
    t->be = be;
    t->refs = 1;
    return t;
}

struct table *table_ref(struct table *t)
{
    if (t != NULL) {
        if (t->refs == 0)
            log_panic("table: reference to a closed table");
        t->refs++;
    }
    return t;
}

void table_free(struct table *t)
{
    if (t == NULL)
        return;
    if (t->refs == 0)
        log_panic("table: table freed twice");
    if (--t->refs > 0)
        return;
    t->be->close(t);
}

enum table_result table_lookup(struct table *t, const char *key, table_cb *cb, void *arg,
                               struct table_req **req)
{
    struct table_req *scratch = NULL;

    if (req == NULL)
        req = &scratch;
    *req = NULL;
    enum table_result r = t->be->lookup(t, key, cb, arg, req);
    if (r == TABLE_PENDING && (*req == NULL || req == &scratch))
        log_panic("table %s: a pending lookup without a request to cancel", t->be->name);
    return r;
}

void table_cancel(struct table_req *req)
{
    if (req != NULL)
        req->be->cancel(req);
}

size_t table_count(const struct table *t)
{
    return t != NULL && t->be->count != NULL ? t->be->count(t) : 0;
}

const char *table_kind(const struct table *t)
{
    return t != NULL ? t->be->name : "none";
}

const char *table_key_domain(const char *key)
{
    const char *at = strrchr(key, '@');
    return at == NULL || at == key ? NULL : at;
}
