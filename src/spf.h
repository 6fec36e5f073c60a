/*
 * spf.h - SPF (RFC 7208) checks of the HELO and MAIL FROM identities, in a
 * pool of worker threads so the loop never waits on DNS.
 *
 * The result is recorded, not enforced: the backup records, the primary
 * decides (from our Authentication-Results header, authres.h).
 *
 * Never delays a reply: a check not finished when its message is
 * committed is recorded after the commit (dkim_check takes it over), and
 * delivery waits for it.  A failing resolver opens a breaker: checks are
 * answered temperror at once (spf.c says how it closes again).
 *
 * Threads: spf_pool_new/spf_check/spf_cancel/spf_pool_free are called on
 * the loop thread, and callbacks run there (workpool.h).
 * Ownership: spf_pool_new() -> spf_pool_free() (accepts NULL; waits for
 * the workers to finish their current check).  A request handed out by
 * spf_check() is the pool's; the caller either gets its callback (after
 * which the request is gone) or calls spf_cancel() (no callback then).
 */
#ifndef MXKEEP_SPF_H
#define MXKEEP_SPF_H

#include <stddef.h>

struct event_base;
struct conf;
struct spf_pool;
struct spf_req;

/* RFC 7208 section 2.6 results, in RFC 8601's spelling. */
enum spf_result {
    SPF_RES_NONE = 0,
    SPF_RES_NEUTRAL,
    SPF_RES_PASS,
    SPF_RES_FAIL,
    SPF_RES_SOFTFAIL,
    SPF_RES_TEMPERROR,
    SPF_RES_PERMERROR,
};
const char *spf_result_name(enum spf_result r);

/* What a check found, for both identities. */
struct spf_answer {
    enum spf_result mailfrom;           /* SPF_RES_NONE for the null sender */
    enum spf_result helo;               /* SPF_RES_NONE for an address literal */
};

typedef void (*spf_done_fn)(void *arg, const struct spf_answer *a);

/* Start spf.threads workers, at most spf.queue checks waiting; DNS from
 * c->resolver with spf.timeout per query try.  NULL with a reason in err
 * on failure. */
struct spf_pool *spf_pool_new(struct event_base *base, const struct conf *c, char *err,
                              size_t errlen);
void spf_pool_free(struct spf_pool *p);

/*
 * Check the client at family/addr (AF_INET: 4 octets, AF_INET6: 16,
 * network order) for sender ("" = null sender: only HELO is checked) and
 * helo.  The callback always runs from the loop, never from inside
 * spf_check (a full queue or an open breaker answer temperror at once).
 * NULL when out of memory: no callback will run.
 */
struct spf_req *spf_check(struct spf_pool *p, int family, const unsigned char *addr,
                          const char *helo, const char *sender, spf_done_fn done, void *arg);
/* Loop thread: the answer goes to done(arg) instead (a check still
 * running when its message is committed passes from the session to the
 * commit, then to the post-commit job that records it: dkim.h). */
void spf_redirect(struct spf_req *r, spf_done_fn done, void *arg);

/* Forget a request: its callback never runs.  Accepts NULL. */
void spf_cancel(struct spf_req *r);

/* Synchronous check in the calling thread (the workers' job; the bench
 * and unit tests).  Blocks on DNS: never on the loop. */
void spf_check_sync(const char *resolver, long timeout, int family, const unsigned char *addr,
                    const char *helo, const char *sender, struct spf_answer *out);

/* Add this answer's resinfo entries to buf (authres_add): "spf=R
 * smtp.mailfrom=SENDER" (when there is a sender) and "spf=R
 * smtp.helo=HELO".  0, or -1 when it does not fit. */
int spf_answer_resinfo(const struct spf_answer *a, const char *sender, const char *helo,
                       char *buf, size_t cap);

#endif
