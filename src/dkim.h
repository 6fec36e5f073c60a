/*
 * dkim.h - DKIM (RFC 6376) verification of committed messages with
 * libopendkim, in worker threads, after the 250: it never delays a reply;
 * and the recording of an SPF check that was still running at the commit.
 *
 * For each message the result goes into its record (spool_msg_auth_set:
 * QMSG_AUTH_DKIM_DONE, QMSG_AUTH_DKIM_SENDER_PASS, and "dkim=R header.d=D
 * header.s=S" per signature in auth_results), and only then is the message
 * handed to delivery, so the Authentication-Results header the primary
 * gets carries it.  The wait is bounded by dkim.timeout per DNS query.
 * An SPF result that was not in the record at the commit joins the same
 * update ("spf=R smtp.mailfrom=S; spf=R smtp.helo=H; dkim=..."): the
 * message waits for both, once.
 *
 * Threads: every function here is called on the loop thread; results come
 * back through a notify event, as the spool's writer does.
 * Ownership: dkim_pool_new() -> dkim_pool_free() (accepts NULL; checks not
 * finished are dropped: their messages are in the spool and delivery
 * finds them at the next start).
 */
#ifndef MXKEEP_DKIM_H
#define MXKEEP_DKIM_H

#include <stddef.h>

struct event_base;
struct conf;
struct spool;
struct dkim_pool;
struct spf_req;
struct spf_answer;

/* What runs once the message's result is recorded (the delivery hook). */
typedef void (*dkim_then_fn)(void *arg, const char *qid);

struct dkim_pool *dkim_pool_new(struct event_base *base, struct spool *sp, const struct conf *c,
                                char *err, size_t errlen);
void dkim_pool_free(struct dkim_pool *p);

/*
 * Verify committed message qid (when verify is set: a message without a
 * DKIM-Signature field was recorded dkim=none at its commit, by smtpd)
 * and record the result with SPF's, then call then(arg, qid) exactly once.  spf: the message's SPF check still
 * running (the job takes it over: spf_redirect), or NULL; spf_ans: its
 * answer when it finished after the record was written, or NULL.  -1
 * when there is nothing to do or it could not start (spf is cancelled;
 * the caller calls then itself).
 */
int dkim_check(struct dkim_pool *p, const char *qid, int verify, struct spf_req *spf,
               const struct spf_answer *spf_ans, dkim_then_fn then, void *arg);
/*
 * Keep delivery off qid from before its commit is handed to the spool
 * until dkim_check() has taken it (or the commit failed): delivery's walk
 * of the index sees a record as soon as the spool's writer has committed
 * it, before the commit's completion reaches the loop, and a message whose
 * SPF or DKIM result is still to be recorded must not leave without it.
 * dkim_hold: 0, or -1 on out of memory (errno ENOMEM; the message is then
 * delivered as soon as it is found, possibly without its results).
 * dkim_unhold: drops one hold on qid (none: no-op).  Loop thread only;
 * the pool frees holds left at dkim_pool_free.
 */
int dkim_hold(struct dkim_pool *p, const char *qid);
void dkim_unhold(struct dkim_pool *p, const char *qid);
/* Nonzero while qid is held or being verified (delivery_busy_fn; arg: the
 * pool): delivery leaves it alone until `then` runs, or, for a hold that
 * no job followed, until smtpd's queued hook does.  Linear in the
 * messages being verified (bounded by dkim.queue) and the commits in
 * flight (at most one per SMTP session). */
int dkim_busy(void *arg, const char *qid);

#endif
