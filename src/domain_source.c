/*
 * domain_source.c - served domains from PostgreSQL (see domain_source.h).
 *
 * What it does: reads every row of the entry's domain query (default
 * `SELECT * FROM domains`), keeps the rows as text, and composes the conf
 * the daemon runs with: the file's conf plus one domain per row
 * (conf_with_domains, the file's validation; the file wins on a name in
 * both).  It reads at start, on NOTIFY mxkeep_domains (doc/schema.sql's
 * trigger sends it on every change to `domains`), after every reconnect
 * (a NOTIFY may have been missed while down), and every `reread`.  An
 * unchanged answer (same digest) changes nothing; a changed one is handed
 * to the daemon's apply callback, the same swap as SIGHUP.
 *
 * Logging: one line per changed set; a domain in both the file and the
 * database, and a row skipped as invalid, are named once at start and at
 * each reload, and otherwise only when they first appear; the database not
 * answering at start is said once (pg.c says down/up).
 *
 * Owns: the rows (one allocation per value), the reread timer, its
 * LISTEN registration and its query.  Never: blocks on the database (a
 * start-up with the database down serves the file's domains and adds the
 * database's when it answers), or fails the daemon over a bad row.
 *
 * Security: the rows come from the administrator's database and pass the
 * same checks as the file's domains (host name, primary, durations,
 * recipient table names); nothing from them reaches SQL text.
 */
#include "config.h"
#include "domain_source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <event2/event.h>

#include "conf.h"
#include "log.h"
#include "pg.h"
#include "util.h"

#define DS_CHANNEL "mxkeep_domains"

struct ds_rows {
    size_t ncols, nrows;
    char **cols;                /* ncols names */
    char **vals;                /* nrows * ncols, NULL for SQL NULL */
};

struct domain_source {
    struct event_base *base;
    domain_source_apply_fn *apply;
    void *arg;
    const struct conf *conf;    /* the file's (base), our reference */
    char *pgname;               /* NAME of domains_from, NULL: off */
    struct pg_query *q;         /* the read in flight */
    int again;                  /* a change was announced during the read */
    struct event *ev_reread;
    struct ds_rows rows;
    int have_rows;
    uint64_t digest;
    int waiting_logged;
    char **reported;            /* "domain\treason" already logged */
    size_t nreported;
    /* compose's scratch: what this composition reported */
    char **now;
    size_t nnow, capnow;
    int loud;                   /* log everything (start, reload) */
};

static void ds_read(struct domain_source *ds);

static void ds_rows_clear(struct ds_rows *r)
{
    for (size_t i = 0; i < r->ncols; i++)
        free(r->cols[i]);
    for (size_t i = 0; i < r->ncols * r->nrows; i++)
        free(r->vals[i]);
    free(r->cols);
    free(r->vals);
    memset(r, 0, sizeof *r);
}

static void ds_reported_clear(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* One report line, logged when loud or new since the last composition. */
static void ds_report(struct domain_source *ds, const char *domain, const char *reason, int warn)
{
    size_t len = strlen(domain) + 1 + strlen(reason) + 1;
    char *k = malloc(len);
    int old = 0;
    if (!k)
        return;
    snprintf(k, len, "%s\t%s", domain, reason);
    for (size_t i = 0; i < ds->nreported && !old; i++)
        old = strcmp(ds->reported[i], k) == 0;
    if (ds->loud || !old) {
        if (warn)
            log_warn("domains_from pgsql:%s: row \"%s\" skipped: %s", ds->pgname, domain, reason);
        else
            log_info("domains_from pgsql:%s: domain %s is %s", ds->pgname, domain, reason);
    }
    if (ds->nnow == ds->capnow) {
        size_t cap = ds->capnow ? ds->capnow * 2 : 16;
        char **v = realloc(ds->now, cap * sizeof *v);
        if (!v) {
            free(k);
            return;
        }
        ds->now = v;
        ds->capnow = cap;
    }
    ds->now[ds->nnow++] = k;
}

static void ds_on_dup(void *arg, const char *domain, const char *reason)
{
    ds_report(arg, domain, reason, 0);
}

static void ds_on_bad(void *arg, const char *domain, const char *reason)
{
    ds_report(arg, domain, reason, 1);
}

static struct conf *ds_compose(struct domain_source *ds, int loud)
{
    struct conf *nc;
    ds->loud = loud;
    ds->now = NULL;
    ds->nnow = ds->capnow = 0;
    nc = conf_with_domains(ds->conf, (const char *const *)ds->rows.cols, ds->rows.ncols,
                           (const char *const *)ds->rows.vals, ds->rows.nrows, ds_on_dup,
                           ds_on_bad, ds);
    ds_reported_clear(ds->reported, ds->nreported);
    ds->reported = ds->now;
    ds->nreported = ds->nnow;
    ds->now = NULL;
    ds->nnow = ds->capnow = 0;
    return nc;
}

/* Rows as text; the digest tells an unchanged answer (a re-read, a NOTIFY
 * for a change that was undone) from a changed one. */
static int ds_rows_take(const PGresult *res, struct ds_rows *r, uint64_t *digest)
{
    size_t nc = (size_t)PQnfields(res), nr = (size_t)PQntuples(res);
    uint64_t h = UTIL_HASH_INIT;

    memset(r, 0, sizeof *r);
    r->cols = calloc(nc + 1, sizeof *r->cols);
    r->vals = calloc(nc * nr + 1, sizeof *r->vals);
    if (!r->cols || !r->vals) {
        free(r->cols);
        free(r->vals);
        return -1;
    }
    r->ncols = nc;
    r->nrows = nr;
    for (size_t j = 0; j < nc; j++) {
        const char *name = PQfname(res, (int)j);
        if (!(r->cols[j] = strdup(name ? name : "")))
            goto oom;
        h = util_hash(h, r->cols[j], strlen(r->cols[j]) + 1);
    }
    for (size_t i = 0; i < nr; i++)
        for (size_t j = 0; j < nc; j++) {
            char **v = &r->vals[i * nc + j];
            if (PQgetisnull(res, (int)i, (int)j)) {
                h = util_hash(h, "\1", 1);
                continue;
            }
            if (!(*v = strdup(PQgetvalue(res, (int)i, (int)j))))
                goto oom;
            h = util_hash(h, *v, strlen(*v) + 1);
        }
    *digest = h;
    return 0;
oom:
    ds_rows_clear(r);
    return -1;
}

static void ds_on_result(void *arg, const PGresult *res)
{
    struct domain_source *ds = arg;
    struct ds_rows rows;
    uint64_t digest;
    struct conf *nc;

    ds->q = NULL;
    if (!res) {
        if (!ds->have_rows && !ds->waiting_logged) {
            log_warn("domains_from pgsql:%s: no answer from the database; serving the "
                     "file's %zu domains until it answers (other domains get 451 4.3.0)",
                     ds->pgname, ds->conf->ndomains);
            ds->waiting_logged = 1;
        }
        ds->again = 0;                  /* the next connect reads again */
        return;
    }
    if (ds_rows_take(res, &rows, &digest) < 0) {
        log_warn("domains_from pgsql:%s: out of memory reading the domains; keeping the "
                 "current set", ds->pgname);
    } else if (ds->have_rows && digest == ds->digest) {
        ds_rows_clear(&rows);           /* nothing changed */
    } else {
        ds_rows_clear(&ds->rows);
        ds->rows = rows;
        ds->digest = digest;
        ds->have_rows = 1;
        ds->waiting_logged = 0;
        struct timespec t0, t1;
        size_t served;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        nc = ds_compose(ds, 0);
        if (!nc) {
            log_warn("domains_from pgsql:%s: out of memory; keeping the current set",
                     ds->pgname);
        } else {
            served = nc->ndomains;
            ds->apply(ds->arg, nc);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            log_info("domains_from pgsql:%s: %zu rows from the database; %zu domains served, "
                     "applied in %ld ms", ds->pgname, ds->rows.nrows, served,
                     (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000));
        }
    }
    if (ds->again) {
        ds->again = 0;
        ds_read(ds);
    }
}

static void ds_read(struct domain_source *ds)
{
    const struct conf_pgsql *e;
    struct pg *p;
    if (!ds->pgname)
        return;
    if (ds->q) {
        ds->again = 1;                  /* read once more when this one ends */
        return;
    }
    e = conf_pgsql_find(ds->conf, ds->pgname);
    p = pg_find(ds->pgname);
    if (!e || !p)
        return;
    ds->q = pg_query(p, e->domain_sql, 0, NULL, ds_on_result, ds);
}

static void ds_on_notify(void *arg, const char *channel, const char *payload)
{
    ds_read(arg);
}

static void ds_on_up(void *arg, struct pg *p)
{
    ds_read(arg);
}

static void ds_on_reread(evutil_socket_t fd, short what, void *arg)
{
    ds_read(arg);
}

struct domain_source *domain_source_new(struct event_base *base, domain_source_apply_fn *apply,
                                        void *arg)
{
    struct domain_source *ds = calloc(1, sizeof *ds);
    if (!ds)
        return NULL;
    ds->base = base;
    ds->apply = apply;
    ds->arg = arg;
    if (!(ds->ev_reread = event_new(base, -1, EV_PERSIST, ds_on_reread, ds))) {
        free(ds);
        return NULL;
    }
    return ds;
}

/* Leave the current database: no listener, no query, no rows. */
static void ds_stop(struct domain_source *ds)
{
    if (!ds->pgname)
        return;
    struct pg *p = pg_find(ds->pgname);
    if (ds->q) {
        pg_cancel(ds->q);
        ds->q = NULL;
    }
    if (p)
        pg_unlisten(p, DS_CHANNEL, ds);
    event_del(ds->ev_reread);
    ds_rows_clear(&ds->rows);
    ds->have_rows = 0;
    ds->again = 0;
    ds->waiting_logged = 0;
    free(ds->pgname);
    ds->pgname = NULL;
}

struct conf *domain_source_configure(struct domain_source *ds, const struct conf *base)
{
    const char *name = base->domains_from;
    const struct conf_pgsql *e = name ? conf_pgsql_find(base, name) : NULL;
    struct conf *nc;

    if (ds->pgname && (!name || strcmp(ds->pgname, name) != 0))
        ds_stop(ds);
    conf_ref(base);
    conf_free(ds->conf);
    ds->conf = base;
    if (!name || !e)
        return (struct conf *)conf_ref(base);
    if (!ds->pgname) {
        struct pg *p = pg_find(name);
        if (!(ds->pgname = strdup(name)))
            return NULL;
        if (!p || pg_listen(p, DS_CHANNEL, ds_on_notify, ds_on_up, ds) < 0)
            log_warn("domains_from pgsql:%s: cannot listen for changes; re-reading every %lds",
                     name, e->reread);
    }
    {
        struct timeval tv = { e->reread, 0 };
        event_del(ds->ev_reread);
        event_add(ds->ev_reread, &tv);
    }
    nc = ds_compose(ds, 1);
    /* Until the database has answered once, a domain missing from this
     * set may be one of its own: policy answers it 451, not 550. */
    if (nc)
        nc->domains_unknown = !ds->have_rows;
    /* Now, or when the connection comes up (queued meanwhile). */
    ds_read(ds);
    return nc;
}

size_t domain_source_count(const struct domain_source *ds)
{
    return ds ? ds->rows.nrows : 0;
}

void domain_source_free(struct domain_source *ds)
{
    if (!ds)
        return;
    ds_stop(ds);
    event_free(ds->ev_reread);
    ds_reported_clear(ds->reported, ds->nreported);
    conf_free(ds->conf);
    free(ds);
}
