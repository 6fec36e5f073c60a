/*
 * received.h - pure formatting of our Received: trace header (RFC 5321
 * 4.4, RFC 3848 protocol names).  No I/O.
 */
#ifndef MXKEEP_RECEIVED_H
#define MXKEEP_RECEIVED_H

#include <stddef.h>
#include <time.h>

struct received_info {
    const char *helo;          /* as the client gave it, or NULL */
    const char *client_name;   /* verified reverse name, or NULL */
    const char *client_addr;   /* numeric address text, e.g. "127.0.0.1" or "IPv6:::1" */
    const char *hostname;      /* ours */
    const char *protocol;      /* "SMTP", "ESMTP", "ESMTPS", "UTF8SMTP", "UTF8SMTPS" */
    const char *tls;           /* e.g. "TLSv1.3 cipher TLS_AES_256_GCM_SHA384", or NULL */
    const char *qid;
    const char *rcpt;          /* the one recipient, or NULL when several */
    time_t when;
};

/*
 * Write the header, folded at 78 columns, each line ending in CRLF, into
 * buf.  Peer-supplied strings (helo) are sanitized: anything but printable
 * ASCII becomes '?', and parentheses are dropped so they cannot unbalance
 * the comment.  Returns the length, or -1 when it does not fit.
 */
int received_format(char *buf, size_t len, const struct received_info *ri);

/* Pick the RFC 3848 protocol name. */
const char *received_protocol(int esmtp, int tls, int utf8);

/*
 * Our Received field goes in front of the message.  A message may have no
 * header section at all (RFC 5322 3.5: the body alone); its first line,
 * glued under our field, would then read as a malformed header field and
 * the body would vanish, so an empty line must go between.  Given the
 * message's first n octets (n may be all of it so far), says whether it
 * begins with a header field name and its colon (RFC 5322 3.6.8: printable
 * ASCII but ':', then ':') or with the empty line:
 *   1   yes: our field can go straight in front;
 *   0   no: put an empty line between;
 *   -1  cannot tell yet: every octet so far could be part of a field name
 *       (ask again with more; at RECEIVED_NAME_PEEK octets, or at the end
 *       of the message, the answer is 0).
 */
#define RECEIVED_NAME_PEEK 998          /* RFC 5322 2.1.1: a line's bound */
int received_header_start(const char *b, size_t n);

#endif
