/*
 * delivery.h - the delivery scheduler: per-destination state (unknown, up,
 * down, held), probing with exponential back-off and jitter, flushing the
 * backlog oldest first over a bounded number of connections, per-recipient
 * outcomes, expiry and bounces.
 *
 * A destination is a domain mail is waiting for: a served domain (its
 * primary) or, for bounces, a sender's domain (MX lookup).  The spool's
 * per-destination index (by_dest) is the work list, read through the
 * spool's read API (spool_page and friends); the module never scans the
 * spool.  The module is delivery.c (this interface) and deliver_*.c, one
 * job per file (see delivery.c); deliver_int.h is private to it.
 *
 * Ownership: delivery_new() -> delivery_free() (accepts NULL; aborts open
 * connections).  conf is borrowed through delivery_configure() and replaced on
 * reload; spool and dns are borrowed for the sched's life.
 */
#ifndef MXKEEP_DELIVERY_H
#define MXKEEP_DELIVERY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include "conf.h"
#include "queue_db.h"

struct event_base;
struct bufferevent;
struct spool;
struct dns;
struct delivery;
struct delivery_dest_info;

struct delivery *delivery_new(struct event_base *base, struct spool *sp, struct dns *dns,
                        char *err, size_t errlen);
/* Start, or reload: served domains, hold flags, limits.  0, or -1 with a
 * reason (bad TLS CA file). */
int delivery_configure(struct delivery *s, const struct conf *c, char *err, size_t errlen);
/* Load destination records and arm probes and expiry; call once. */
void delivery_start(struct delivery *s);
/* smtpd hooks (smtpd_etrn_fn / smtpd_queued_fn); arg is the sched. */
void delivery_etrn(void *arg, const char *node, const struct conf_domain **doms, size_t n,
                char *buf, size_t len);
/* The fleet's part of an ETRN (cluster.c): fn returns the other nodes'
 * last known backlog of domain, which the 253 (and 458) count includes;
 * with flush 1 (a covered domain that is not held) it first publishes the
 * flush to them.  NULL: no fleet. */
typedef uint64_t (*delivery_fleet_fn)(void *arg, const char *domain, int flush);
void delivery_set_fleet(struct delivery *s, delivery_fleet_fn fn, void *arg);
/* A message whose results are still being recorded (DKIM after the
 * commit): not picked until then; its owner calls delivery_queued() when
 * it is ready.  fn(arg, qid) returns nonzero for such a message. */
typedef int (*delivery_busy_fn)(void *arg, const char *qid);
void delivery_set_busy(struct delivery *s, delivery_busy_fn fn, void *arg);
/* A message is durable: schedule it (every destination it waits for),
 * enter its delay warning, arm the expiry.  Commit completion owns
 * "queued": this is called from the completion of the commit that made
 * qid durable (the spool_commit done callback, a notice's commit), never
 * from the session or request that asked for it, so it runs whatever
 * became of that session. */
void delivery_queued(void *arg, const char *qid);
/* Flush a destination now (ETRN without the reply).  Returns the number of
 * messages waiting, or -1 when the domain is held (nothing is started).
 * With out non-NULL, fills it as delivery_dest_info does (after the flush
 * started), so the caller's reply tells the count and state every listing
 * shows. */
long delivery_flush(struct delivery *s, const char *domain, struct delivery_dest_info *out);
/* Hold (1) or release (0) a destination at run time, or hand it back to
 * the config's `hold` (-1).  Persistence is maint.c's (mxkeepctl
 * hold/release, maintenance windows): a reload keeps what maint_holds()
 * says, the rest goes back to the config.  0, or -1 when the domain is
 * unknown here. */
int delivery_hold(struct delivery *s, const char *domain, int hold);

/*
 * What the scheduler knows of a destination right now: the one source of a
 * destination's count and state for every reply and listing of the daemon
 * (ETRN, control flush/hold/status, /metrics, /status).  nmsg and nbytes
 * are the index's per-destination counters (what mxkeepctl summary reads
 * when the daemon is down), state is the scheduler's live one, held
 * folded in.
 */
struct delivery_dest_info {
    char domain[SMTP_DOMAIN_MAX + 1];
    int served;                 /* a configured domain (else bounces) */
    int state;                  /* enum qdest_state */
    int held;
    int64_t next_probe;         /* unix seconds, 0 = none */
    int connections;            /* open outbound connections */
    int concurrency;            /* current cap: the window */
    int ceiling;                /* delivery.max_connections */
    int adaptive;               /* the window adapts (delivery.adaptive) */
    /* The primary host last connected to and its limits (0 = none; the
     * sources are "declared" (RFC 9422 LIMITS), "learned" or "none"). */
    char limits_host[SMTP_DOMAIN_MAX + 8];
    unsigned rcpt_max, mail_max, conn_max, rcptdomain_max;
    const char *rcpt_max_source, *mail_max_source, *conn_max_source;
    uint64_t nmsg;              /* messages with a pending recipient here */
    uint64_t nbytes;            /* their body octets */
    char last_error[512];
};
/* 0, or -1 when the scheduler has no such destination. */
int delivery_dest_info(struct delivery *s, const char *domain, struct delivery_dest_info *out);
/* Every destination the scheduler knows; stops when fn returns non-zero. */
void delivery_dest_each(struct delivery *s,
                        int (*fn)(void *arg, const struct delivery_dest_info *i), void *arg);

/* Completion of an admin action, on the loop thread: err 0, ENOENT (no
 * such message), EBUSY (being delivered or expired right now: try again),
 * or the spool's error.  A recipient's state has one owner at a time (a
 * delivery, the expiry, or an admin action): an admin action never
 * changes a message another owner holds. */
typedef void (*delivery_done_fn)(void *arg, int err);
/* Remove a message without notice (mxkeepctl delete). */
int delivery_delete(struct delivery *s, const char *qid, delivery_done_fn done, void *arg);
/* Fail every pending recipient now, with a notice to the sender
 * (mxkeepctl bounce): status 5.0.0 "returned by the administrator". */
int delivery_bounce(struct delivery *s, const char *qid, delivery_done_fn done, void *arg);

/*
 * On-Demand Mail Relay (odmr.c, RFC 2645).  A domain with `odmr = true`
 * is never probed or connected to; its primary connects, authenticates
 * and sends ATRN, and its mail goes out over that connection.
 * delivery_odmr_waiting: the messages waiting for domain (>= 0), or
 * DELIVERY_ODMR_BUSY (another ODMR session delivers it right now) or
 * DELIVERY_ODMR_HELD (held).
 */
#define DELIVERY_ODMR_BUSY (-1)
#define DELIVERY_ODMR_HELD (-2)
long delivery_odmr_waiting(struct delivery *s, const char *domain);
/* The end of a reversed session: recipients the peer took (sent) and
 * those left queued (deferred: a 4xx, or the link dropped before the
 * peer's answer), and one line on how it ended. */
typedef void (*delivery_odmr_end_fn)(void *arg, size_t sent, size_t deferred, const char *why);
/*
 * Role reversal: be the SMTP client over bev, an open connection whose
 * peer is about to greet us, and deliver every queued message of the n
 * domains, with per-recipient outcomes recorded as for any delivery
 * (undecided recipients stay queued: at-least-once), then QUIT.  bev
 * becomes the module's (freed when the session ends; end() runs once,
 * from the loop).  0, or -1 (out of memory, stopping): bev is still the
 * caller's.
 */
int delivery_odmr_run(struct delivery *s, const char *const *domains, size_t n,
                      struct bufferevent *bev, int is_tls, const struct sockaddr *peer,
                      socklen_t peerlen, delivery_odmr_end_fn end, void *arg);

/* Stop starting work; abort connections (shutdown). */
void delivery_stop(struct delivery *s);
size_t delivery_active_connections(const struct delivery *s);
void delivery_free(struct delivery *s);

#endif
