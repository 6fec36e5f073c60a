/*
 * policy.h - who may send us what: served domains, per-domain recipient
 * lists, relay-trick refusal, and ETRN access.
 *
 * A policy is built from a struct conf and the recipient list files it
 * names, and is immutable afterwards; reload (SIGHUP) builds a new one and
 * swaps it in, so a bad list file keeps the old policy running.
 *
 * Recipient list file: one entry per line, "local@domain" or "@domain"
 * (every local part of that domain), '#' starts a comment, blank lines
 * ignored, surrounding white space trimmed; matching is case-insensitive.
 * A domain with no `recipients` key accepts every local part.
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

/* Build a policy.  On failure (unreadable list, bad line) returns NULL and
 * writes "file:line: what is wrong" into err. */
struct policy *policy_new(const struct conf *c, char *err, size_t errlen);
/* One more reference (returns p; NULL gives NULL). */
const struct policy *policy_ref(const struct policy *p);
/* Drop one reference; the last frees the policy.  Accepts NULL. */
void policy_free(const struct policy *p);

/*
 * May we accept this recipient?  Returns NULL and sets *dom to the served
 * domain, or a complete reply line (no CRLF):
 *   "550 5.7.1 <addr>: Relay access denied"            not a served domain / literal
 *   "550 5.7.1 <addr>: Source routing not supported"    %, !, quoted @
 *   "550 5.1.1 <addr>: Recipient address rejected: User unknown"
 * The <addr> part is written into buf (len octets), which the returned
 * pointer then points to.  why (may be NULL) gets the reject class,
 * decided here: STAT_REJ_RELAY or STAT_REJ_UNKNOWN_USER.
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
 * The recipient table (table.h) of served domain d, as policy_check_rcpt
 * handed it out: borrowed for as long as the policy (a holder across a
 * callback keeps the policy, or takes table_ref).  NULL: the domain has no
 * table and accepts every local part.  (Until the table backends land,
 * always NULL: the lists are still checked inside policy_check_rcpt.)
 */
struct table;
struct table *policy_domain_table(const struct policy *p, const struct conf_domain *d);

/* Number of entries loaded across all lists (for the start-up log line). */
size_t policy_entry_count(const struct policy *p);

#endif
