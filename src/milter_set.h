/*
 * milter_set.h - the global milters of one SMTP session, live during the
 * dialogue: opened when the client connects, asked at connect, HELO,
 * MAIL and each RCPT, one after the other, with one verdict per event;
 * told ABORT when a transaction ends without its end of message; quit
 * when the session ends.  The end of data goes through milter_run.c,
 * which borrows the sessions (milter_set_live()).
 *
 * Ownership: milter_set_new() -> milter_set_free() (accepts NULL; QUIT
 * to each, no callback after it).  One event at a time; its callback runs
 * once, from the loop, unless milter_set_cancel() came first.
 */
#ifndef MXKEEP_MILTER_SET_H
#define MXKEEP_MILTER_SET_H

#include <stddef.h>

#include "conf.h"
#include "milter.h"
#include "milter_run.h"

struct event_base;
struct milter_set;

struct milter_set_answer {
    enum milter_verdict verdict;    /* CONTINUE, REJECT or TEMPFAIL */
    char text[512];                 /* the reply for REJECT/TEMPFAIL */
    const char *failed;             /* the socket of a milter that failed, or NULL */
};

typedef void (*milter_set_fn)(void *arg, const struct milter_set_answer *a);

/* Connect to every milter of ms (in the background).  NULL when ms is
 * empty or on allocation failure (the caller then has no live milters). */
struct milter_set *milter_set_new(struct event_base *base, const struct conf_milters *ms,
                                  const char *log_id);
void milter_set_free(struct milter_set *set);

/*
 * Ask every milter still involved about one event of the dialogue: st is
 * MILTER_STEP_CONNECT, _HELO, _MAIL or _RCPT (rcpt: the address), with
 * t's fields for its macros.  Returns 0 when no milter is involved (the
 * answer is CONTINUE, no callback), 1 when done will run from the loop.
 * accept ends a milter's involvement for the connection (connect, HELO)
 * or the transaction (MAIL, RCPT); discard marks the transaction
 * discarded (milter_set_discarded) and answers CONTINUE; a failure gives
 * the milter's default action.
 */
int milter_set_event(struct milter_set *set, enum milter_step st, const struct milter_run_txn *t,
                     const char *rcpt, milter_set_fn done, void *arg);
/* The caller goes away from a pending event: no callback; the milter
 * being asked is closed (its replies would be out of step). */
void milter_set_cancel(struct milter_set *set);
/* The transaction is over (committed, RSET, a new HELO, a refusal):
 * SMFIC_ABORT to each milter that saw its MAIL and did not answer its
 * end of message (Postfix's milter_abort at every reset), and a fresh
 * transaction. */
void milter_set_abort(struct milter_set *set);
/* How many milters the set has. */
size_t milter_set_count(const struct milter_set *set);
/* A milter discarded this transaction at MAIL or RCPT. */
int milter_set_discarded(const struct milter_set *set);
/* The sessions still involved in this transaction, for milter_run_start
 * (at most cap).  Sockets are borrowed until milter_set_free. */
size_t milter_set_live(struct milter_set *set, struct milter_run_live *out, size_t cap);
/* 1 when socket is one of the set's milters (a per-domain list naming
 * it again does not run it twice). */
int milter_set_has(const struct milter_set *set, const char *socket);

#endif
