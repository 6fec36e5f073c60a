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
 *   553 5.6.7  SMTPUTF8 needed, peer lacks it
 *   451 4.4.2  connection lost or timed out mid-transaction
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
#include "queue_db.h"

struct event_base;
struct evbuffer;
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
    char (*text)[512];                  /* out: [nrcpt] reply text per recipient */
    struct evbuffer *body;              /* the stored message; smtpc drains it */
    void *owner;                        /* the scheduler's */
};

enum smtpc_next { SMTPC_NEXT_MSG = 0, SMTPC_NEXT_NONE, SMTPC_NEXT_WAIT };

enum smtpc_end {
    SMTPC_END_OK = 0,       /* QUIT after the work was done */
    SMTPC_END_CONNECT,      /* could not connect (refused, unreachable, timeout) */
    SMTPC_END_GREETING,     /* 421 or 5xx greeting, or EHLO and HELO refused */
    SMTPC_END_TLS,          /* TLS required by policy and not offered, or failed */
    SMTPC_END_TLS_RETRY,    /* TLS failed under "may": try again in clear */
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
    /* The end.  why: one line for logs / last_error.  c is freed after. */
    void (*closed)(void *arg, struct smtpc *c, enum smtpc_end how, const char *why);
};

/* Start connecting.  NULL on out of memory (no callback runs). */
struct smtpc *smtpc_new(struct event_base *base, const struct smtpc_config *cfg,
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

#endif
