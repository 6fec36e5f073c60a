/*
 * milter.h - an asynchronous milter client session: one connection to one
 * milter for one SMTP session, on a libevent bufferevent, speaking the
 * protocol of milter_proto.h.  The caller (smtpd) builds each step's
 * packets with milter_proto and hands them to milter_step(); the answer
 * comes back through a callback, always from the loop (never from inside
 * milter_step), with the milter's verdict and, at end of message, the
 * modifications it asked for.
 *
 * Failure: a milter that cannot be reached, times out (per phase: connect,
 * command, content) or breaks the protocol gives its configured default
 * action (MILTER_TEMPFAIL or MILTER_ACCEPT) once, and the session is dead
 * from then on: every later step answers that same default at once.
 *
 * Ownership: milter_new() -> milter_free() (accepts NULL; sends nothing,
 * closes the socket; no callback runs after it).  The spec is copied.
 */
#ifndef MXKEEP_MILTER_H
#define MXKEEP_MILTER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "milter_proto.h"

struct event_base;

#define MILTER_SOCKET_MAX 256

/* What one configured milter is (parsed from the settings). */
struct milter_spec {
    char socket[MILTER_SOCKET_MAX];     /* "unix:/path" or "inet:host:port" */
    int fail_accept;                    /* default_action = "accept" (else tempfail) */
    long connect_ms, command_ms, content_ms;
};

/* Parse "unix:/path", "inet:IP:PORT" or "inet:[IPv6]:PORT" (Postfix's
 * forms; "local:" is the same as "unix:").  0 on success; -1 with *why. */
int milter_socket_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len,
                        const char **why);

/* The steps of a transaction, each with its SMFIP_NO* / SMFIP_NR* flags. */
enum milter_step {
    MILTER_STEP_CONNECT = 0, MILTER_STEP_HELO, MILTER_STEP_MAIL, MILTER_STEP_RCPT,
    MILTER_STEP_DATA, MILTER_STEP_HEADER, MILTER_STEP_EOH, MILTER_STEP_BODY,
    MILTER_STEP_EOM, MILTER_STEP_ABORT, MILTER_STEP_QUIT, MILTER_STEP_COUNT_
};

enum milter_verdict {
    MILTER_CONTINUE = 0,    /* go on */
    MILTER_ACCEPT,          /* accept: no more calls to this milter this transaction */
    MILTER_REJECT,          /* text: the reply (validated) or NULL for the default */
    MILTER_TEMPFAIL,        /* text as above */
    MILTER_DISCARD,         /* 250 to the client, keep nothing */
    MILTER_SKIP             /* body step only: send no more body */
};

/* One modification at end of message, in the order the milter sent it. */
struct milter_mod {
    char cmd;                           /* SMFIR_ADDHEADER, _INSHEADER, ... */
    uint32_t index;
    char *name, *value, *addr, *args;   /* NUL-terminated copies ("" if none) */
    unsigned char *body;                /* SMFIR_REPLBODY chunk */
    size_t body_len;
};

struct milter_result {
    enum milter_verdict verdict;
    int failed;                         /* the default action, after a failure */
    const char *text;                   /* reject/tempfail reply, or NULL */
    const char *quarantine;             /* reason, or NULL */
    const struct milter_mod *mods;      /* EOM only */
    size_t nmods;
};

/* The result and everything it points to live until the callback returns. */
typedef void (*milter_done_fn)(void *arg, const struct milter_result *r);

struct milter;

/* Connect and negotiate in the background.  NULL only on allocation
 * failure.  qid_hint names the session in logs. */
struct milter *milter_new(struct event_base *base, const struct milter_spec *spec,
                          const char *log_id);
void milter_free(struct milter *m);

/*
 * Send one step: pkts holds the step's packets (macros first, then the
 * command) as milter_proto built them.  done runs once, from the loop.
 * A step the milter negotiated away (SMFIP_NO*) is not sent and answers
 * MILTER_CONTINUE; one it will not reply to (SMFIP_NR*) is sent and
 * answers MILTER_CONTINUE.  Steps wait for the connection and negotiation
 * first.  One step at a time: the caller waits for done before the next.
 */
void milter_step(struct milter *m, enum milter_step step, const struct milter_buf *pkts,
                 milter_done_fn done, void *arg);
/* Cancel the pending callback (the caller goes away); the milter stays. */
void milter_cancel(struct milter *m);
/* Send packets the milter never answers (SMFIC_ABORT) now, when it is
 * idle and negotiated; otherwise nothing (it has seen no transaction). */
void milter_notify(struct milter *m, const struct milter_buf *pkts);
/* The caller cannot wait for the pending step any more: no callback, and
 * the session is closed (dead) since its replies would be out of step. */
void milter_abandon(struct milter *m);
/* SMFIC_QUIT (best effort, never blocks), then milter_free. */
void milter_quit_free(struct milter *m);
/* 1 if the milter failed and answers its default action from now on. */
int milter_is_dead(const struct milter *m);
/* Negotiated protocol flags (after the first step's answer). */
uint32_t milter_protocol(const struct milter *m);

#endif
