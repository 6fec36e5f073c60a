/*
 * policy.h - who may send us what: served domains, per-domain recipient
 * lists, relay-trick refusal, and ETRN access.
 *
 * A policy is built from a struct conf and opens the recipient table
 * (table.h) each domain names in `recipients` (a list file, an lmdb map, a
 * pgsql entry), and is immutable afterwards; reload (SIGHUP) builds a new
 * one and swaps it in, so a bad list file or map keeps the old policy
 * running.  The list file format is in table_file.h.  A domain with no
 * `recipients` key accepts every local part.
 *
 * Security: this is where "never an open relay" is enforced.  A recipient
 * is accepted only when its domain is served (exact match, case-insensitive,
 * one trailing dot ignored; IDNA A-labels compared as given), it is not an
 * address literal, and its local part carries no routing (%, !, or an @
 * inside a quoted local part), and, with a list, the list has it.
 *
 * Ownership: policy_new() returns a policy with one reference; a holder
 * that keeps it across a reload (a session, a request) takes policy_ref()
 * and drops it with policy_free(); the last reference frees it (accepts
 * NULL).  The policy holds a reference to its conf (conf_ref), so the
 * conf_domain pointers it hands out live as long as the policy.
 * References are taken and dropped on the loop thread only.
 */
#ifndef MXKEEP_POLICY_H
#define MXKEEP_POLICY_H

#include <stddef.h>
#include "conf.h"
#include "smtp_parse.h"
#include "stats.h"

struct policy;
struct table;

/* Build a policy.  On failure (unreadable list, bad line, bad map) returns
 * NULL and writes "file:line: what is wrong" into err (the list's line, or
 * the config's `recipients` line for a map or a database table). */
struct policy *policy_new(const struct conf *c, char *err, size_t errlen);
/* One more reference (returns p; NULL gives NULL). */
const struct policy *policy_ref(const struct policy *p);
/* Drop one reference; the last frees the policy.  Accepts NULL. */
void policy_free(const struct policy *p);

/*
 * May we accept this recipient?  A table that answers at once (file,
 * lmdb) is consulted here; one that may answer later (pgsql) is not (the
 * caller asks it through policy_domain_table()).  Returns NULL and sets *dom to the served
 * domain, or a complete reply line (no CRLF):
 *   "550 5.7.1 <addr>: Relay access denied"            not a served domain / literal
 *   "550 5.7.1 <addr>: Source routing not supported"    %, !, quoted @
 *   "550 5.1.1 <addr>: Recipient address rejected: User unknown"
 *   "451 4.3.0 <addr>: Recipient table unavailable, try again later"  (map read error)
 * The <addr> part is written into buf (len octets), which the returned
 * pointer then points to.  why (may be NULL) gets the reject class,
 * decided here: STAT_REJ_RELAY, STAT_REJ_UNKNOWN_USER or STAT_REJ_LOOKUP.
 */
const char *policy_check_rcpt(const struct policy *p, const struct smtp_addr *a,
                              const struct conf_domain **dom, enum stat_id *why, char *buf,
                              size_t len);

/*
 * May this client run ETRN for (kind, domain) (see smtp_parse_etrn)?
 * family/addr: the client address (network order).  Returns NULL when
 * allowed and fills doms with the served domains covered (up to max; *n
 * gets the count: one for "domain", the domain and its served subdomains
 * for "@domain"; held domains included: the scheduler answers 458 for
 * them with the count waiting); or a reply line:
 *   "459 4.7.1 <domain>: client not allowed to run ETRN"
 *   "459 4.7.1 <domain>: not a domain we serve"
 *   "501 5.5.4 ..." for "#queue" names (we keep no named queues)
 */
const char *policy_check_etrn(const struct policy *p, int family, const void *addr,
                              int kind, const char *domain,
                              const struct conf_domain **doms, size_t max, size_t *n,
                              char *buf, size_t len);

/*
 * The recipient table of domain d (a domain of this policy's conf, as
 * policy_check_rcpt hands out; another conf's domain is found by name), or
 * NULL: no table, any local part.  Borrowed: valid while the policy is;
 * table_ref() it to keep it longer.
 */
struct table *policy_domain_table(const struct policy *p, const struct conf_domain *d);
/*
 * The table of d that policy_check_rcpt did NOT consult because it may
 * answer later (pgsql), or NULL (no table, or one already consulted: its
 * FOUND is in policy_check_rcpt's acceptance).  recipient.c asks this one.
 */
struct table *policy_domain_async_table(const struct policy *p, const struct conf_domain *d);

/* Number of entries loaded across all tables (for the start-up log line). */
size_t policy_entry_count(const struct policy *p);

#endif
