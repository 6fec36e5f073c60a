/*
 * recipient.h - the RCPT verdict: may this session hand us mail for this
 * recipient?
 *
 * One decision in three steps, each only when the one before accepted:
 *   1. policy_check_rcpt (policy.h): served domain, relay tricks, and a
 *      table that answers at once (file, lmdb), all at once; then, for a
 *      domain with accept = "when-primary-down", its gate (heartbeat.h,
 *      an in-memory read): 450 4.7.0 while its primary is known up;
 *   2. a table that may answer later (policy_domain_async_table: pgsql):
 *      FOUND, NOTFOUND or TEMPFAIL at once (its cache), or later through
 *      a callback;
 *   3. with verify = "callout" and no table: verify_rcpt (verify.h), from
 *      its cache at once or after a probe of the primary.
 * A table FOUND is accepted without a probe: the table is the
 * administrator's word for who is real (a stale table is fixed by fixing
 * the table); a domain whose every address should be probed has no
 * `recipients` table.  NOTFOUND is 550 5.1.1 at once, no probe.
 *
 * A domain with no table and verify off is the fast path: answered at once,
 * no allocation.  Otherwise the caller's request object (*rp, allocated on
 * first need and reused for every later recipient of the session) carries
 * the pending step; one recipient at a time per request.
 *
 * Abuse bound: every 5.1.1 "user unknown" verdict is reported to
 * verify_note_unknown() for the client, and a throttled client gets
 * RECIPIENT_THROTTLED instead of a probe (verify_rcpt checks
 * verify_client_throttled first).
 *
 * Ownership: a pending request holds a reference to the policy it started
 * with (policy_ref), so a reload while it waits does not free the domain
 * it decides for; dropped after the callback returned.  The callback runs
 * once, on the loop thread, unless recipient_cancel() (or
 * recipient_req_free()) came first; it may start the next check on the
 * same request, or free it.
 */
#ifndef MXKEEP_RECIPIENT_H
#define MXKEEP_RECIPIENT_H

#include <stddef.h>
#include "conf.h"
#include "policy.h"
#include "smtp_parse.h"
#include "stats.h"

struct recipient_req;

/* A reply line with the address (SMTP_PATH_MAX) and a primary's text. */
#define RECIPIENT_REPLY_MAX (SMTP_PATH_MAX + 512)

enum recipient_verdict {
    RECIPIENT_ACCEPT = 0,       /* 250: dom says where it goes */
    RECIPIENT_REFUSE,           /* reply (4xx or 5xx); the session goes on */
    RECIPIENT_THROTTLED,        /* reply is 450 4.7.1: the client made too
                                   many unknown recipients; the session
                                   counts these and ends after too many */
};

struct recipient_answer {
    enum recipient_verdict verdict;
    enum stat_id why;           /* REFUSE/THROTTLED: the reject class */
    int unverified;             /* ACCEPT by `unverified = "accept"` */
    const struct conf_domain *dom;  /* ACCEPT: the served domain; valid
                                       during the callback (sync: as long
                                       as the policy) */
    char reply[RECIPIENT_REPLY_MAX];    /* REFUSE/THROTTLED: one line, no CRLF */
};

typedef void recipient_cb(void *arg, const struct recipient_answer *a);

/*
 * Decide on recipient a for a client (family AF_INET/AF_INET6, network
 * order address, IPv4-mapped already unwrapped).  Returns 0 with *now
 * filled, or 1: pending, cb(arg, answer) follows.  *rp is the caller's
 * request slot (NULL at first); it is allocated here when needed.
 */
int recipient_check(struct recipient_req **rp, const struct policy *p,
                    const struct smtp_addr *a, int family, const void *client,
                    recipient_cb *cb, void *arg, struct recipient_answer *now);
/* Forget the pending step, if any: its callback never runs.  NULL ok. */
void recipient_cancel(struct recipient_req *r);
/* 1 while a verdict is pending on r. */
int recipient_pending(const struct recipient_req *r);
/* Cancel and free.  Accepts NULL. */
void recipient_req_free(struct recipient_req *r);

#endif
