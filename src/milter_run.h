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

/* list: the milters in order (n >= 1).  NULL on allocation failure. */
struct milter_run *milter_run_start(struct event_base *base, const struct conf_milter *list,
                                    size_t n, const struct milter_run_txn *t, milter_run_fn done,
                                    void *arg);
void milter_run_cancel(struct milter_run *r);

#endif
