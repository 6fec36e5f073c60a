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
#include <stdint.h>
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

/* A delivery outcome for addr of a domain with verify = "callout":
 * 2xx → valid; 5.1.x → invalid (reply kept); anything else ignored. */
void verify_learn(const char *addr, int code, const char *enhanced, const char *reply);

/* A shared store (the fleet's PostgreSQL table), set by cluster.c: a probe
 * on one node answers for all.  lookup: cb(arg, found, result, reply, when);
 * store: fire and forget.  lookup's cb runs later, from the loop, never
 * inside lookup(); after lookup_cancel it never runs. */
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

/* ---- administration (control.c, metrics.c, mxkeepctl) ------------------ */

#define VERIFY_KEY_MAX 512          /* address octets (RFC 5321 path 256, with room) */

enum verify_source { VSRC_PROBE = 0, VSRC_DELIVERY = 1, VSRC_SHARED = 2 };
enum verify_age { VAGE_FRESH = 0, VAGE_STALE, VAGE_EXPIRED };

/* One cached answer: key is the lower-cased address, or "@domain" for a
 * domain's catch-all record (VALID: any local part is accepted). */
struct verify_entry {
    char key[VERIFY_KEY_MAX];
    enum verify_result result;          /* VALID or INVALID */
    enum verify_source source;
    int64_t learned;                    /* unix seconds */
    char reply[512];
};

/* The cached answer for addr (its own record, else its domain's catch-all
 * record).  1 found, 0 none, -1 error or not initialised. */
int verify_show(const char *addr, struct verify_entry *e);
/* Probe addr now, whatever the cache says (sessions and rate still bound
 * it); cb gets VALID, INVALID or UNKNOWN, never PENDING.  NULL with a
 * reason in err (not a served domain, not initialised, out of memory). */
struct verify_req *verify_probe(const char *addr, verify_cb *cb, void *arg, char *err,
                                size_t errlen);
/* Every cached answer (of domain; NULL: all), without holding a
 * transaction while fn runs; fn returns nonzero to stop.  0 or -1. */
int verify_list(const char *domain, int (*fn)(void *arg, const struct verify_entry *e),
                void *arg);
/* Forget an address, or a domain's every answer.  Records removed, -1. */
long verify_forget(const char *key_or_domain);
/* Where an answer stands at now under c's `verify` settings. */
enum verify_age verify_entry_age(const struct conf *c, const struct verify_entry *e, time_t now);
const char *verify_result_name(enum verify_result r);
const char *verify_source_name(enum verify_source s);
/* Prometheus text for /metrics (counters, probe latency histogram,
 * throttled clients). */
struct evbuffer;
void verify_metrics(struct evbuffer *b);

#endif
