/*
 * milter_run.h - run a transaction's milters, one after the other, over a
 * finished message that is not yet committed: each milter sees connect,
 * HELO, MAIL, every RCPT, DATA, the headers, EOH, the body in chunks and
 * EOM, then QUIT (milter.c carries each session).  The result is one
 * verdict for the message and, when it is kept, every modification the
 * milters asked for, in order.
 *
 * Ownership: milter_run_start() -> done runs once from the loop (never
 * from inside start) -> then the run frees itself; milter_run_cancel()
 * instead: no callback, everything freed.  The message octets and the
 * transaction's strings are borrowed until done or cancel.
 */
#ifndef MXKEEP_MILTER_RUN_H
#define MXKEEP_MILTER_RUN_H

#include <stddef.h>

#include "conf.h"
#include "milter.h"

struct event_base;

struct milter_run_txn {
    const char *qid, *hostname;
    const char *client_name, *client_addr;  /* "unknown", "192.0.2.1" */
    int family;                             /* '4', '6' or 'U' */
    unsigned port;
    const char *helo, *sender;              /* sender without <> ("" null sender) */
    const char *const *rcpts;
    size_t nrcpt;
    const char *tls_version;                /* NULL without TLS */
    const unsigned char *msg;               /* the stored message: headers CRLF CRLF body */
    size_t len;
};

struct milter_run_result {
    enum milter_verdict verdict;    /* CONTINUE (keep), REJECT, TEMPFAIL, DISCARD */
    char text[512];                 /* the SMTP reply for REJECT/TEMPFAIL */
    const char *failed;             /* a milter failed: its socket, else NULL */
    const char *quarantine;         /* reason, or NULL */
    const struct milter_mod *mods;  /* in order, every milter's */
    size_t nmods;
};

typedef void (*milter_run_fn)(void *arg, const struct milter_run_result *r);

struct milter_run;

/* A milter session that already saw this transaction's connect, HELO,
 * MAIL and RCPT live (milter_set.h): the run borrows it and goes on from
 * DATA, and leaves it open.  Cancelled mid-step, it is abandoned (dead). */
struct milter_run_live {
    struct milter *m;
    struct conf_milter spec;        /* socket borrowed from the owner */
    int *eom_seen;                  /* set to 1 once it answered EOM (or failed) */
};

/* live: sessions that saw the dialogue (first, from DATA on); list: the
 * milters replayed from connect (each connected for this message).
 * nlive + n >= 1.  NULL on allocation failure. */
struct milter_run *milter_run_start(struct event_base *base, const struct milter_run_live *live,
                                    size_t nlive, const struct conf_milter *list, size_t n,
                                    const struct milter_run_txn *t, milter_run_fn done, void *arg);
/* One step's packets (macros, then the command) for the dialogue's steps:
 * CONNECT, HELO, MAIL, RCPT (rcpt), ABORT; anything else is QUIT. */
void milter_run_packets(struct milter_buf *b, enum milter_step st, const struct milter_run_txn *t,
                        const char *rcpt);
void milter_run_cancel(struct milter_run *r);

#endif
