/*
 * quarantine.h - messages held instead of delivered or bounced: the
 * failure-notice policy (bounce = "always" | "authenticated"), the
 * reasons, and quarantine's expiry.
 *
 * A quarantined message stays in the spool (queue_db.h: QMSG_F_QUARANTINE,
 * its recipients QRCPT_QUARANTINED): it is not scheduled, it is listed,
 * shown, released (back to the queue, or its withheld notice sent) or
 * deleted by the admin, and removed after quarantine_retention.
 */
#ifndef MXKEEP_QUARANTINE_H
#define MXKEEP_QUARANTINE_H

#include <stddef.h>
#include <stdint.h>
#include "queue_db.h"

struct conf;
struct conf_domain;

/*
 * The one place that decides whether a failure notice (expiry, a 5xx from
 * the primary, an admin bounce) may go to m's sender, for a recipient of
 * domain d (NULL: a domain no longer served, the "always" default).
 * Returns 1 when it may; 0 when it must be withheld, with why set to
 * "sender not authenticated (spf=..., dkim=...)".  The null sender never
 * gets a notice anyway (bounce.c).  Pure.
 */
int quarantine_notice_allowed(const struct conf_domain *d, const struct qmsg *m, char *why,
                              size_t whylen);

/* "failure notice withheld: WHY; DETAIL" into out, cut at outlen. */
void quarantine_reason(char *out, size_t outlen, const char *why, const char *detail);
/* "14d", "36h", "90s": a quarantine's length for its removal line. */
void quarantine_span(char *out, size_t outlen, int64_t seconds);

/* Mark m (not yet committed) to be committed straight into quarantine
 * (a milter's quarantine action), kept for c->quarantine_retention from
 * now. */
void quarantine_prepare(struct qmsg *m, const struct conf *c, const char *reason, int64_t now);

/* The completion of a commit made with quarantine_prepare (loop thread,
 * err 0): its log line "QID: quarantined: reason" and its counter. */
void quarantine_committed(const struct qmsg *m);

#endif
