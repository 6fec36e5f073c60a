/*
 * verify.h - recipient verification by callout to the primary (as
 * Postfix's reject_unverified_recipient and Exim's callouts), with its
 * cache and its abuse bounds.
 *
 * A probe: connect, greeting, EHLO (HELO fallback), MAIL FROM:<>,
 * RCPT TO:<address>, then RSET and the next probe on the same session, or
 * QUIT.  Never DATA.  Probe sessions per primary host are bounded, probes
 * per primary per second are bounded, every step has a timeout.  A 2xx is
 * VALID, a 5xx INVALID (the primary's reply kept), anything else UNKNOWN.
 *
 * Cache: LMDB beside the spool index (versioned records), answers kept and
 * refreshed in the background per the `verify` settings; delivery outcomes
 * feed it (verify_learn).  A catch-all primary (accepts a random local
 * part) is cached once per domain.
 */
#ifndef MXKEEP_VERIFY_H
#define MXKEEP_VERIFY_H

#include <stddef.h>
#include <time.h>

struct event_base;
struct conf;
struct conf_domain;
struct dns;
struct verify_req;

enum verify_result {
    VERIFY_VALID = 0,
    VERIFY_INVALID,             /* reply holds the primary's 5xx line */
    VERIFY_UNKNOWN,             /* no definitive answer (down, 4xx, timeout) */
    VERIFY_PENDING,             /* reply_wait passed; the probe goes on */
    VERIFY_THROTTLED,           /* the client made too many unknown recipients */
};

struct verify_answer {
    enum verify_result result;
    int from_cache;             /* 1: answered from the cache */
    char reply[512];            /* INVALID: the reply line to give (code, enhanced code, text) */
};

typedef void verify_cb(void *arg, const struct verify_answer *a);

int verify_init(struct event_base *base, struct dns *dns, const struct conf *c,
                char *err, size_t errlen);
int verify_reload(const struct conf *c);
void verify_shutdown(void);

/*
 * Verify addr ("local@domain") of served domain d for a client (family,
 * network-order address).  Returns NULL and fills *now when answered at
 * once (cache hit, throttled client); else a request whose cb runs once
 * (VALID/INVALID/UNKNOWN, or PENDING after reply_wait) unless cancelled.
 */
struct verify_req *verify_rcpt(const struct conf_domain *d, const char *addr, int family,
                               const void *client, struct verify_answer *now,
                               verify_cb *cb, void *arg);
void verify_cancel(struct verify_req *r);     /* accepts NULL */

/* The client gave a recipient we refused as unknown (from any source):
 * counts towards its throttle. */
void verify_note_unknown(int family, const void *client);
/* Is the client throttled now?  1 yes. */
int verify_client_throttled(int family, const void *client);

/* A delivery outcome for addr: 2xx → valid; 5.1.x → invalid (reply kept). */
void verify_learn(const char *addr, int code, const char *enhanced, const char *reply);

/* A shared store (the fleet's PostgreSQL table), set by cluster.c: a probe
 * on one node answers for all.  lookup: cb(arg, found, result, reply, when);
 * store: fire and forget. */
struct verify_shared {
    void *(*lookup)(void *ctx, const char *key,
                    void (*cb)(void *arg, int found, enum verify_result r, const char *reply,
                               time_t when),
                    void *arg);
    void (*lookup_cancel)(void *ctx, void *handle);
    void (*store)(void *ctx, const char *key, enum verify_result r, const char *reply,
                  time_t when);
    void (*forget)(void *ctx, const char *key_or_domain);
};
void verify_set_shared(const struct verify_shared *ops, void *ctx);

#endif
