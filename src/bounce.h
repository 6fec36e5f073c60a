/*
 * bounce.h - delivery status notifications (RFC 3464 multipart/report,
 * RFC 3461 DSN semantics): failure, delay and "relayed" notices.
 *
 * Pure: builds the text of the notice into an evbuffer from the original
 * envelope, the recipients it concerns and the original message; no I/O,
 * no spool access.  The scheduler queues the result as a message of its
 * own (null sender, one recipient: the original sender).
 *
 * Rules it enforces (the caller also checks them): never a notice to the
 * null sender; NOTIFY=NEVER recipients are left out; NOTIFY without
 * FAILURE/DELAY/SUCCESS suppresses that kind; RET=HDRS (or none) returns
 * the header only, RET=FULL the whole message up to full_max octets, then
 * the header only with a note.
 */
#ifndef MXKEEP_BOUNCE_H
#define MXKEEP_BOUNCE_H

#include <stddef.h>
#include <time.h>
#include "queue_db.h"

struct evbuffer;

enum bounce_action { BOUNCE_FAILED = 0, BOUNCE_DELAYED, BOUNCE_RELAYED };

struct bounce_rcpt {
    const struct qrcpt *r;
    enum bounce_action action;
    const char *status;             /* "5.1.1", "4.4.7", "2.0.0" */
    const char *remote_mta;         /* host that answered, or NULL */
    const char *diagnostic;         /* "smtp; 550 5.1.1 unknown user", or NULL */
};

struct bounce_info {
    const char *hostname;           /* ours: Reporting-MTA, From: MAILER-DAEMON@ */
    const char *new_qid;            /* the notice's own QID, for Message-ID */
    const struct qmsg *m;           /* the original envelope */
    const struct bounce_rcpt *rcpts;
    size_t nrcpt;
    /* The stored original message, or NULL when the body is gone (the
     * notice then says so and has two parts).  Not modified: non-const only
     * because evbuffer_peek()/evbuffer_search() take a non-const buffer. */
    struct evbuffer *original;
    size_t full_max;                /* cap for RET=FULL, octets; 0: header only */
    time_t now;
};

/* Should recipient r get a notice of this kind at all (NOTIFY rules and
 * the null sender)? */
int bounce_wanted(const struct qmsg *m, const struct qrcpt *r, enum bounce_action a);

/* build returned without touching out: no recipient qualified (null
 * sender, the original is itself a notice, NOTIFY rules), so there is
 * nothing to queue. */
#define BOUNCE_NONE 1

/* Append the whole notice (header and body, CRLF line ends, no dot
 * stuffing) to out.  Recipients bounce_wanted() rejects are left out.
 * Returns 0, BOUNCE_NONE (out untouched), or -1 on out of memory (out
 * untouched).  The notice may carry 8-bit octets only when the original
 * had m->flags & (QMSG_F_8BIT | QMSG_F_SMTPUTF8): queue it with those
 * flags (and its BODY=8BITMIME / SMTPUTF8) copied, plus QMSG_F_DSN. */
int bounce_build(struct evbuffer *out, const struct bounce_info *bi);

#endif
