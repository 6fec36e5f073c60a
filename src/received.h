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

#endif
