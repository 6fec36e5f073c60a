/*
 * deliver_int.h - INTERNAL to the delivery module: included only by
 * delivery.c and deliver_*.c, never by another module (which uses
 * delivery.h).  The structs the module's files share and the calls they
 * make across files; everything else in those files is static.
 *
 * Two ownership rules are stated here, where the calls that carry them
 * are declared, not patched at call sites:
 *   - Commit completion owns "queued": delivery_queued() runs from the
 *     commit's completion (smtpd's spool_commit done callback, the
 *     notice's commit), never from the session; it schedules the message, enters
 *     its delay warning and arms the expiry whatever became of the
 *     session that asked.
 *   - A recipient's state has one owner at a time: msg_owner().
 */
#ifndef MXKEEP_DELIVER_INT_H
#define MXKEEP_DELIVER_INT_H

#include "delivery.h"
#include "bounce.h"
#include "dest_limits.h"
#include "dns.h"
#include "queue_db.h"
#include "smtpc.h"
#include "spool.h"
#include "tls.h"

#include <stddef.h>
#include <time.h>
#include <sys/time.h>
#include <event2/event.h>

/* How long a resolved route is reused before asking DNS again. */
#define DELIVERY_ROUTE_TTL 300
/* Hosts in a destination's last route (none before it was resolved). */
#define ROUTE_HOSTS(d) ((d)->route ? (d)->route->nhosts : 0)

struct delivery;
struct dest;

/* A primary host (name and port of a route entry) and what it allows:
 * declared (RFC 9422 LIMITS) and learned from its replies, kept for the
 * rest of the flush whichever destination taught it.  Never freed before
 * delivery_free (few: one per primary). */
struct dest_host {
    struct dest_host *next;
    char name[SMTP_DOMAIN_MAX + 1];
    int port;
    struct dl_host lim;
    int live;                   /* our sessions to it now, every destination */
    int flush_over;             /* a flush ended with nothing pending: the
                                   next one starts with nothing learned */
};

struct conn {
    struct conn *next;
    struct dest *d;
    struct dest_host *host;     /* where this session goes */
    unsigned completed;         /* transactions ended with a final reply */
    int got421;                 /* a transaction of it was ended by a 421 */
    int quitting;               /* ends because the window shrank */
    struct smtpc *c;
    int probe;          /* the one connection of a probe */
    int ready;          /* greeted */
    int waiting;        /* SMTPC_NEXT_WAIT (rate limit) */
    int sent_any;
    char peer[300];
};

struct dest {
    struct dest *next;          /* every destination, for walks */
    struct dest *hnext;         /* hash chain, for lookups by name */
    struct delivery *s;
    char name[SMTP_DOMAIN_MAX + 1];
    int served;                 /* a domain of ours (else a bounce destination) */
    int state;                  /* enum qdest_state */
    int held;
    int hold_override;          /* -1: config decides; 0/1: mxkeepctl said */
    uint32_t backoff_step;
    time_t next_probe;
    char last_error[512];
    struct event *timer;        /* probe / retry / rate timer */
    /* Route. */
    char host[SMTP_DOMAIN_MAX + 1];
    int port, fixed;
    enum tls_policy tls;
    char fingerprint[80];
    SSL_CTX *tls_ctx;           /* own context when tls_ca is set */
    int resolving;
    struct dns_route *route;    /* the last resolution (13 KiB): only for
                                   destinations that have been tried */
    time_t route_time;
    size_t try_host, try_addr;  /* next address to connect to */
    time_t tls_clear_until;
    /* Work. */
    struct conn *conns;
    int nconns;
    int conn_limit;             /* the window: dest_window_update() only */
    struct dl_aimd aimd;        /* adaptive concurrency (dest_limits.h) */
    struct dest_host *phost;    /* the primary host last connected to */
    int run_4xx;
    time_t conn_next;           /* no new connection before this (spacing) */
    int conn_refused;           /* refusals in a row with no session working */
    char (*redo)[QID_SIZE];     /* sent next, before the walk goes on:
                                   messages with recipients left by that
                                   limit (further transactions), and
                                   messages committed after the walk had
                                   passed their QID (delivery_queued) */
    size_t nredo, capredo;
    char cursor[QID_SIZE];      /* last QID handed out in this pass */
    int pass_end;               /* the walk found nothing more */
    int pass_deferred;          /* a message got a 4xx in this pass */
    int passed_expiring;        /* the walk skipped a message the expiry held */
    time_t pass_started;        /* first connection of this pass, 0 = none */
    char (*inflight)[QID_SIZE];
    size_t ninflight, capinflight;
    double tokens;
    struct timeval refill;
    int odmr;                   /* never connected to: mail waits for ATRN */
    struct odmr_run *odmr_run;  /* the ODMR session delivering it now, or NULL */
};

struct job {
    struct delivery *s;
    struct dest *d;
    struct smtpc_msg msg;
    struct qmsg m;
    struct qrcpt *rcpt;         /* copies, updated with the outcome */
    int *code;
    char (*text)[512];
    size_t nrcpt;
    struct evbuffer *body;
    char peer[300];
    int peer_dsn;
    int more;                   /* pending recipients left out (rcpt_limit) */
    int redo;                   /* send the rest again at once, not after a back-off */
    /* Notices to queue before the outcome is committed. */
    size_t nbounce;
    struct spool_ticket *ticket;
};

struct delivery {
    struct event_base *base;
    struct spool *spool;
    struct dns *dns;
    const struct conf *conf;
    SSL_CTX *tls_ctx;
    struct dest *dests;
    struct dest **bucket;       /* hash of dests by lower-cased name */
    size_t nbuckets, ndests;
    struct event *expire_timer;
    int expire_busy;            /* one expiry job at a time: the next must
                                   see the previous one's commit */
    char expiring[QID_SIZE];    /* the message that job owns, "" = none */
    int stopping;
    size_t nconns;
    struct dns_self *self;      /* who we are, for MX self-detection:
                                   every alias and listen address */
    delivery_fleet_fn fleet;    /* ETRN's fleet part (cluster.c), or NULL */
    void *fleet_arg;
    delivery_busy_fn busy;      /* a message not ready yet (dkim.c), or NULL */
    void *busy_arg;
    struct dest_host *hosts;    /* primary hosts and their limits */
};

/* ------------------------------------------------------------------ */
/* deliver_dest.c: destinations and scheduling                        */

/* A destination by name (case-insensitive), or NULL. */
struct dest *dest_find(struct delivery *s, const char *name);
/* ... creating it (config applied) when new; NULL when out of memory. */
struct dest *dest_get(struct delivery *s, const char *name);
/* Route and policy from the current config. */
void dest_apply_conf(struct dest *d);
/* Persist state, back-off and last error (through spool_write). */
void dest_save(struct dest *d);
/* The one transition function of a destination's state: logs old -> new. */
void dest_set_state(struct dest *d, int state, const char *why);
/* Down: one probe after the back-off interval, with jitter. */
void dest_down(struct dest *d, const char *why);
/* Run dest_kick from the destination's timer at `when`. */
void dest_arm(struct dest *d, time_t when);
/* Decide what d should do now: resolve, probe, open connections, wait. */
void dest_kick(struct dest *d);
/* Messages the index says wait for d. */
long dest_pending(struct dest *d);
/* The in-flight list: a QID is in it from job_next until its outcome is
 * committed (job_committed calls dest_inflight_del). */
int dest_inflight(const struct dest *d, const char *qid);
void dest_inflight_del(struct dest *d, const char *qid);
/* A message the primary's recipient limit left pending: sent next. */
int dest_redo_add(struct dest *d, const char *qid);
/* The primary host name:port (created when new; NULL out of memory). */
struct dest_host *dest_host_get(struct delivery *s, const char *name, int port);
/* The window from the controller and the host's learned ceiling: sets
 * d->conn_limit, the one place that does. */
void dest_window_update(struct dest *d);
/* Our sessions to d's primary host fill the ceiling learned for it. */
int dest_host_full(const struct dest *d);
/* The end of a pass (nothing in flight): the window starts low again. */
void dest_window_reset(struct dest *d);

/*
 * One owner of a message's recipient states at a time.  A delivery owns a
 * message from next() until its outcome is committed (the destination's
 * in-flight list); the expiry owns the one message it is expiring from its
 * scan until its commit (s->expiring), two writer rounds later.  Neither
 * takes a message the other holds, and both ask here: before, the expiry
 * marked recipients expired in memory while the scheduler could still hand
 * the message out, and a delivery in that window was followed by a 4.4.7
 * notice.  (Different destinations of one message deliver side by side:
 * each owns only its own recipients.)
 */
enum msg_owner { MSG_FREE = 0, MSG_DELIVERING, MSG_EXPIRING };

/* Who owns qid's recipient states now.  d: the destination asking (its
 * in-flight list), or NULL to ask only about the expiry.  A caller that
 * gets anything but MSG_FREE (or MSG_DELIVERING for its own job) must
 * leave the message alone. */
enum msg_owner msg_owner(const struct delivery *s, const struct dest *d, const char *qid);

/* The next message for d in a new job (its QID put in flight), or NULL
 * at the end of the pass. */
struct job *job_next(struct dest *d);
void job_free(struct job *j);
/* Every recipient of m in a new array sized by m->nrcpt; NULL on error. */
struct qrcpt *rcpts_load(struct delivery *s, const struct qmsg *m, size_t *n);

/* ------------------------------------------------------------------ */
/* deliver_conn.c: connections                                        */

/* Open one connection to d's route (probe: the destination's one probe).
 * 0, or -1 when none could be started. */
int dest_connect(struct dest *d, int probe);
/* dns_route completion for d. */
void dest_on_route(void *arg, const struct dns_route *r);

/* ------------------------------------------------------------------ */
/* deliver_outcome.c: outcome commits and notices                     */

/* Writer thread: record recipients' outcomes and drop the message when
 * none is pending any more, in one transaction.  Shared by deliveries,
 * expiry and mxkeepctl bounce: the only writer of recipient outcomes,
 * called only by the owner msg_owner() names. */
int outcome_write(struct qdb_txn *t, const char *qid, const struct qrcpt *r, size_t n);
/* Recipients an outcome set QRCPT_QUARANTINED (the failure notice withheld,
 * quarantine.h): outcome_held tells, outcome_hold (writer thread, after
 * outcome_write) marks the message with m's quarantine reason and times. */
int outcome_held(const struct qrcpt *r, size_t n);
int outcome_hold(struct qdb_txn *t, const struct qmsg *m, const struct qrcpt *r, size_t n);
/* Loop thread, after outcome_write committed. */
void outcome_written(struct delivery *s, const struct qmsg *m);
/* A notice (failure, expiry, relayed) about some recipients of m, queued
 * as a message of its own; once committed it is scheduled like any
 * other (commit completion owns "queued").  0 when queued (done will
 * run), 1 when no notice is due (done will not run), -1 on error. */
int delivery_notice(struct delivery *s, const struct qmsg *m, struct bounce_rcpt *br, size_t n,
                    spool_done_fn done, void *arg);
/* What the primary answered for each recipient of j (after the
 * connection learned its recipient limit lim and set j->redo): records
 * states, log lines and counters, queues the notices due, then commits
 * the outcome (job_save) and frees j once it is committed, whatever
 * becomes of the connection (the caller must not touch j after).
 * Returns 1 when a recipient got a 4xx that counts against the primary. */
int job_outcome(struct job *j, size_t lim);

/* ------------------------------------------------------------------ */
/* deliver_odmr.c: ODMR's reversed sessions (RFC 2645)                */

struct odmr_run;
/* dest_kick of an ODMR destination: never a connection; wakes the
 * session delivering it when it waits for outcomes to be committed. */
void odmr_run_kick(struct dest *d);
/* Shutdown: end the reversed session d is in (QUIT after the message). */
void odmr_run_abort(struct dest *d);

/* ------------------------------------------------------------------ */
/* deliver_expire.c: expiry and delay warnings                        */

/* The expiry timer's callback. */
void delivery_on_expire(evutil_socket_t fd, short what, void *arg);
/* (Re)arm the expiry timer for the first due entry. */
void delivery_expire_arm(struct delivery *s);
/* With delay_warning on, a due entry at arrival + delay_warning. */
void delivery_warn_schedule(struct delivery *s, const struct qmsg *m);

#endif
