/*
 * domain_source.h - served domains from PostgreSQL (`domains_from =
 * "pgsql:NAME"`), added to the file's domains.
 *
 * The file's conf is the base; the database's rows (doc/schema.sql's
 * `domains`, or the entry's domain_query) are appended through
 * conf_with_domains(), the file winning for a name in both.  The set is
 * read at start, on every NOTIFY mxkeep_domains, after every reconnect,
 * and every `reread` as a safety net; a changed set is handed to the
 * apply callback as a new conf, which goes through the daemon's reload
 * path (policy, delivery, control, metrics).
 *
 * Start-up never waits for the database: domain_source_configure()
 * answers at once with the base plus the last rows read (none at first),
 * and the database's domains follow through apply when it answers.
 *
 * Ownership: the source keeps a reference to the base it was given; a conf
 * handed to apply or returned by configure carries one reference that
 * becomes the caller's.
 */
#ifndef MXKEEP_DOMAIN_SOURCE_H
#define MXKEEP_DOMAIN_SOURCE_H

#include <stddef.h>

struct conf;
struct event_base;
struct domain_source;

/* nc: the new conf (base + database domains), one reference, the
 * callee's. */
typedef void domain_source_apply_fn(void *arg, struct conf *nc);

struct domain_source *domain_source_new(struct event_base *base, domain_source_apply_fn *apply,
                                        void *arg);
/* A new base (start, reload).  Returns the conf to use now (one
 * reference, the caller's): base itself (referenced again) when base has
 * no domains_from, else base plus the database rows last read.  NULL only
 * when out of memory. */
struct conf *domain_source_configure(struct domain_source *ds, const struct conf *base);
/* Domains the database gave at its last answer. */
size_t domain_source_count(const struct domain_source *ds);
void domain_source_free(struct domain_source *ds);   /* accepts NULL */

#endif
