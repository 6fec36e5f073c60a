/*
 * smtpc.h - one outbound SMTP connection to a primary: EHLO (HELO
 * fallback), STARTTLS per policy, PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
 * DSN, CHUNKING, and many messages per connection (RSET between them).
 *
 * The scheduler owns what is sent and what the outcome means; smtpc owns
 * only the protocol.  It pulls work with ops->next() and reports each
 * message with ops->done(); when the connection ends, ops->closed() runs
 * once and the connection frees itself right after.  A probe is simply a
 * connection whose first next() answers SMTPC_NEXT_NONE: connect, greeting,
 * EHLO, STARTTLS when offered, QUIT.
 *
 * Per-recipient outcome (struct smtpc_msg.code[i] and text[i]): the reply
 * that decided it (RCPT's, or MAIL's / DATA's / the end-of-data reply for
 * every recipient the earlier stage accepted).  Codes the peer never sent:
 *   552 5.3.4  message larger than the peer's SIZE (never sent)
 *   554 5.6.3  8-bit message, peer lacks 8BITMIME (no downgrade: bounced)
 *   553 5.6.7  SMTPUTF8 needed (an address or a header holds non-ASCII), peer lacks it
 *   451 4.4.2  connection lost or timed out mid-transaction
 * and one it rewrote: a 552 to RCPT becomes 452 4.x.y (RFC 5321 4.5.3.1.10).
 * A declared SMTPUTF8 or BODY=8BITMIME whose content does not need it is
 * not sent to a peer without the extension (the message goes without it).
 *
 * Body: the stored message (CRLF line ends, not dot-stuffed).  With
 * CHUNKING it goes as one BDAT LAST (file bodies via sendfile); without,
 * DATA with dot-stuffing, streamed so memory stays bounded.
 *
 * Ownership: smtpc_new() starts the connection; the smtpc frees itself
 * after ops->closed() returns (never call anything on it afterwards).
 * smtpc_abort() ends it early; closed() still runs, from the loop.
 * Every struct smtpc_msg handed out by next() stays the caller's; smtpc
 * gives it back through done() (also when the connection dies: codes 451).
 */
#ifndef MXKEEP_SMTPC_H
#define MXKEEP_SMTPC_H

#include <stddef.h>
#include <sys/socket.h>
#include <openssl/ssl.h>
#include "conf.h"
#include "dest_limits.h"
#include "queue_db.h"

struct event_base;
struct evbuffer;
struct bufferevent;
struct smtpc;

struct smtpc_config {
    const char *helo;                   /* our hostname */
    const char *peer_name;              /* host name for logs, SNI and verify */
    const struct sockaddr *addr;        /* copied */
    socklen_t addrlen;
    enum tls_policy tls;
    SSL_CTX *tls_ctx;                   /* client context (tls_client_ctx_new); smtpc
                                           takes its own reference (SSL_CTX_up_ref) */
    const char *tls_fingerprint;        /* "sha256:<64 hex>" or NULL; copied */
    long connect_timeout, greeting_timeout, command_timeout, data_timeout;   /* seconds */
};

struct smtpc_msg {
    const struct qmsg *m;               /* envelope */
    struct qrcpt *rcpt;                 /* recipients to send to here */
    size_t nrcpt;
    int *code;                          /* out: [nrcpt] reply code per recipient */
    char (*text)[512];                  /* out: [nrcpt] reply text per recipient,
                                           "NNN x.y.z text" (smtpc_reply_line) */
    size_t rcpt_limit;                  /* out: >0 when the peer refused RCPTs for
                                           too many recipients (452, or 552 taken
                                           as 452: RFC 5321 4.5.3.1.10) after
                                           accepting this many; those got 452;
                                           also set when the peer's LIMITS
                                           RCPTMAX made us send only this many:
                                           the rest got 452 4.5.3, never sent */
    long latency_us;                    /* out: end-of-data command to its reply
                                           (microseconds), -1 when not measured */
    struct evbuffer *body;              /* the stored message; smtpc drains it */
    void *owner;                        /* the scheduler's */
};

enum smtpc_next { SMTPC_NEXT_MSG = 0, SMTPC_NEXT_NONE, SMTPC_NEXT_WAIT };

/*
 * Peer replies (RFC 5321 4.2, RFC 2034/3463 enhanced status codes), a pure
 * parser fed one line at a time (CRLF removed), for every client of ours
 * that reads SMTP replies (outbound delivery, callouts).  A multi-line
 * reply becomes one text: "NNN x.y.z first line text second line text"
 * with the code and the enhanced status once, at the front, so a stored
 * reply always tells its status; status is "" when the peer gave none.
 * An enhanced code whose class disagrees with the reply code's first digit
 * takes the reply code's class (RFC 3463 2: the class must match).
 */
#define SMTPC_REPLY_TEXT_MAX 512
#define SMTPC_STATUS_MAX     16         /* "5.123.123" and NUL, with room */

struct smtpc_reply {
    int code;                           /* 200..599, 0 before the first line */
    char status[SMTPC_STATUS_MAX];      /* enhanced status code, "" when none */
    int lines;                          /* lines read so far */
    int more;                           /* the last line was a continuation */
    size_t len;
    char text[SMTPC_REPLY_TEXT_MAX];
};

enum smtpc_reply_result {
    SMTPC_REPLY_MORE = 0,               /* a continuation line: feed the next */
    SMTPC_REPLY_DONE,                   /* the last line: r holds the reply */
    SMTPC_REPLY_BAD,                    /* not a reply line */
    SMTPC_REPLY_MIXED                   /* a different code inside one reply */
};

/* Start a new reply. */
void smtpc_reply_init(struct smtpc_reply *r);
/* Feed one line (without CRLF).  *line_text, when not NULL, is set to the
 * line's text after "NNN-" / "NNN " (EHLO keywords).  After DONE, BAD or
 * MIXED, call smtpc_reply_init before the next reply. */
enum smtpc_reply_result smtpc_reply_line(struct smtpc_reply *r, const char *line, size_t len,
                                         const char **line_text);
/* The enhanced status code of a stored reply text ("NNN x.y.z ..."), or
 * "C.0.0" from the reply code when it has none.  out gets
 * SMTPC_STATUS_MAX octets at most. */
void smtpc_reply_status(int code, const char *text, char *out, size_t len);

/* Where a session ended: which step of the conversation failed.  The
 * scheduler decides on this, never on the wording of an error. */
enum smtpc_stage {
    SMTPC_STAGE_CONNECT = 0,            /* TCP connect */
    SMTPC_STAGE_GREETING,               /* waiting for the 220 greeting */
    SMTPC_STAGE_HELLO,                  /* EHLO / HELO */
    SMTPC_STAGE_TLS,                    /* STARTTLS, handshake, verification,
                                           the EHLO after it */
    SMTPC_STAGE_SESSION,                /* greeted: idle or in a transaction */
    SMTPC_STAGE_QUIT
};

enum smtpc_end {
    SMTPC_END_OK = 0,       /* QUIT after the work was done */
    SMTPC_END_CONNECT,      /* could not connect (refused, unreachable, timeout) */
    SMTPC_END_GREETING,     /* 421 or 5xx greeting, or EHLO and HELO refused */
    SMTPC_END_TLS,          /* TLS required by policy and not offered, or failed */
    SMTPC_END_TLS_RETRY,    /* the TLS step failed under "may" (refused
                               after 220, stray data after the 220, handshake,
                               lost during it): try again in clear */
    SMTPC_END_LOST,         /* connection lost or timed out after the greeting */
    SMTPC_END_421           /* 421 in mid-session: the peer is struggling */
};

struct smtpc_ops {
    /* Greeted, EHLO (and TLS) done: the peer is up. */
    void (*ready)(void *arg, struct smtpc *c);
    /* The next message for this connection: fill *msg and return
     * SMTPC_NEXT_MSG, or SMTPC_NEXT_NONE to QUIT, or SMTPC_NEXT_WAIT to
     * idle until smtpc_resume() (rate limiting). */
    enum smtpc_next (*next)(void *arg, struct smtpc *c, struct smtpc_msg **msg);
    /* A message's outcome is in msg->code/text. */
    void (*done)(void *arg, struct smtpc *c, struct smtpc_msg *msg);
    /* The end.  stage: the step that ended it.  why: one line for logs /
     * last_error.  c is freed after. */
    void (*closed)(void *arg, struct smtpc *c, enum smtpc_end how, enum smtpc_stage stage,
                   const char *why);
};

/* Start connecting.  NULL on out of memory (no callback runs). */
struct smtpc *smtpc_new(struct event_base *base, const struct smtpc_config *cfg,
                        const struct smtpc_ops *ops, void *arg);
/* The same session over a connection that is already open (ODMR's role
 * reversal, RFC 2645: the peer connected to us, and now serves).  bev
 * becomes the smtpc's (freed with it; its callbacks are replaced); the
 * session starts by waiting for the peer's 220.  cfg->addr is the peer's
 * address, for logs; cfg->tls is ignored: no STARTTLS on this connection,
 * is_tls says whether it is encrypted already.  NULL on out of memory
 * (bev is then still the caller's). */
struct smtpc *smtpc_new_connected(struct event_base *base, const struct smtpc_config *cfg,
                                  struct bufferevent *bev, int is_tls,
                                  const struct smtpc_ops *ops, void *arg);
/* After SMTPC_NEXT_WAIT: ask next() again. */
void smtpc_resume(struct smtpc *c);
/* Close now (QUIT if idle); closed() follows from the loop. */
void smtpc_abort(struct smtpc *c);
/* "host[ip]:port" for log lines. */
const char *smtpc_peer(const struct smtpc *c);
/* Did the peer advertise these?  (valid after ready) */
int smtpc_has_dsn(const struct smtpc *c);
int smtpc_is_tls(const struct smtpc *c);
/* RFC 9422 LIMITS of the current EHLO reply (valid after ready); smtpc
 * itself never sends more RCPTs per transaction (RCPTMAX) or transactions
 * per session (MAILMAX: QUIT instead of asking next()) than declared. */
void smtpc_limits(const struct smtpc *c, struct dl_declared *out);
/* Transactions started in this session (MAIL commands sent). */
unsigned smtpc_transactions(const struct smtpc *c);
/* The code of the last reply read (e.g. the 421 of a refused greeting), 0 none. */
int smtpc_last_code(const struct smtpc *c);

#endif
