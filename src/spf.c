/*
 * spf.c - SPF (RFC 7208) of the HELO and MAIL FROM identities with libspf2,
 * in a pool of worker threads.
 *
 * Why the record-level API: libspf2's request-level query
 * (SPF_request_query_mailfrom) answers "pass" for any loopback client
 * without reading the record, a shortcut of its own that RFC 7208 does not
 * have.  We fetch the record (SPF_server_get_record) and evaluate it for
 * the client (SPF_record_interpret) ourselves, so the result is always the
 * record's; the mapping of lookup failures (none / temperror / permerror)
 * is RFC 7208 4.4-4.5's.
 *
 * DNS: a libspf2 DNS layer of our own (spf_dns_lookup) that queries the
 * configured `resolver` through authdns.c, so tests serve records from
 * dnsmasq and operators choose the resolver as for every other lookup.
 * libspf2's limits (10 DNS-querying mechanisms, RFC 7208 4.6.4) stand.
 *
 * Owns: the requests and the breaker; the threads, queue and notify are
 * a workpool (workpool.h), each worker with its own SPF_server_t.
 * Must never: run a check on the loop thread; call back into a cancelled
 * request; let a peer's value (HELO, sender) reach libspf2 unbounded
 * (smtp_parse bounds both; libspf2 copies them); make the 250 wait (the
 * session commits without the answer and it is recorded after: dkim.c).
 * Security: checks are bounded by libspf2's DNS lookup limits and by the
 * resolver timeout per query; the queue is bounded (spf.queue): beyond it
 * a check is answered temperror at once rather than growing memory.
 * A resolver that stops answering costs each check its timeouts: after
 * spf.breaker checks in a row found no answer at all, the breaker opens
 * and checks are answered temperror at once without a query, while one
 * trial check at a time (every spf.breaker_retry) asks for real; the
 * first answer closes it.  Both switches are logged once; counted in
 * /metrics (spf_breaker_opened_total, spf_unchecked_total).
 */
#include "config.h"
#include "spf.h"
#include "authdns.h"
#include "authres.h"
#include "conf.h"
#include "log.h"
#include "stats.h"
#include "workpool.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <resolv.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <event2/event.h>

#include <spf2/spf.h>

/* Largest DNS answer read (TCP fallback allows 64 KiB). */
#define SPF_ANSWER_MAX 65536

struct spf_req {
    struct workpool_item item;          /* first: the pool hands this back */
    struct spf_pool *p;
    int cancelled;                      /* loop thread only */
    int family;
    unsigned char addr[16];
    char *helo, *sender;
    struct spf_answer answer;
    spf_done_fn done;                   /* loop thread only (spf_redirect) */
    void *arg;
    int trial;                          /* the breaker's probe */
    int unchecked;                      /* answered without a query (breaker) */
    int opened, closed;                 /* this check switched the breaker */
};

struct spf_pool {
    struct workpool *wp;
    struct event_base *base;
    char *resolver;
    long timeout;
    /* The breaker: `open` is read without the lock by the DNS layer of
     * every worker; the rest changes under mu. */
    atomic_int open;
    pthread_mutex_t mu;
    long fails;                         /* checks in a row with no answer */
    long fail_max, retry;               /* spf.breaker, spf.breaker_retry */
    int trial_inflight;
    time_t next_trial;
    int overflowing;                    /* loop thread: queue full, logged */
};

const char *spf_result_name(enum spf_result r)
{
    static const char *const names[] = {
        "none", "neutral", "pass", "fail", "softfail", "temperror", "permerror",
    };
    return (unsigned)r < sizeof names / sizeof names[0] ? names[r] : "permerror";
}

/* ---- the DNS layer ------------------------------------------------------- */

struct spf_dns_hook {
    const char *resolver;
    long timeout;
    struct spf_pool *p;                 /* NULL: no breaker (spf_check_sync) */
};

static __thread unsigned char *spf_answer_buf;
/* The check this worker runs: its queries' outcomes, for the breaker. */
static __thread int spf_tl_answered, spf_tl_failed, spf_tl_trial;

static SPF_dns_rr_t *spf_dns_lookup(SPF_dns_server_t *ds, const char *domain, ns_type type,
                                    int should_cache)
{
    const struct spf_dns_hook *h = ds->hook;
    int herr, n, cnt = 0;
    ns_msg msg;
    ns_rr rr;
    char name[NS_MAXDNAME];

    /* The breaker opened while this check ran: no more queries (a trial asks). */
    if (h->p != NULL && atomic_load(&h->p->open) && !spf_tl_trial)
        return SPF_dns_rr_new_init(ds, domain, type, 0, TRY_AGAIN);
    if (spf_answer_buf == NULL && (spf_answer_buf = malloc(SPF_ANSWER_MAX)) == NULL)
        return SPF_dns_rr_new_init(ds, domain, type, 0, TRY_AGAIN);
    n = authdns_query(h->resolver, h->timeout, domain, type, spf_answer_buf, SPF_ANSWER_MAX, &herr);
    /* TRY_AGAIN: no answer in time, or SERVFAIL: the resolver failed us.
     * Anything else (even NXDOMAIN) is an answer. */
    if (n < 0 && herr == TRY_AGAIN)
        spf_tl_failed++;
    else
        spf_tl_answered++;
    if (n < 0)
        return SPF_dns_rr_new_init(ds, domain, type, 0, herr);
    if (n > SPF_ANSWER_MAX)
        n = SPF_ANSWER_MAX;
    SPF_dns_rr_t *out = SPF_dns_rr_new_init(ds, domain, type, 0, NETDB_SUCCESS);
    if (out == NULL)
        return NULL;
    if (ns_initparse(spf_answer_buf, n, &msg) < 0) {
        out->herrno = TRY_AGAIN;
        return out;
    }
    int count = ns_msg_count(msg, ns_s_an);
    for (int i = 0; i < count; i++) {
        if (ns_parserr(&msg, ns_s_an, i, &rr) < 0)
            break;
        if (ns_rr_type(rr) != type)
            continue;           /* a CNAME on the way: the target's records follow */
        const unsigned char *rd = ns_rr_rdata(rr);
        size_t len = ns_rr_rdlen(rr);
        switch (type) {
        case ns_t_a:
            if (len != 4 || SPF_dns_rr_buf_realloc(out, cnt, sizeof(struct in_addr)) != SPF_E_SUCCESS)
                continue;
            memcpy(&out->rr[cnt]->a, rd, 4);
            break;
        case ns_t_aaaa:
            if (len != 16 || SPF_dns_rr_buf_realloc(out, cnt, sizeof(struct in6_addr)) != SPF_E_SUCCESS)
                continue;
            memcpy(&out->rr[cnt]->aaaa, rd, 16);
            break;
        case ns_t_mx:
        case ns_t_ptr: {
            const unsigned char *p = rd + (type == ns_t_mx ? NS_INT16SZ : 0);
            if ((type == ns_t_mx && len < NS_INT16SZ) ||
                ns_name_uncompress(spf_answer_buf, spf_answer_buf + n, p, name, sizeof name) < 0 ||
                SPF_dns_rr_buf_realloc(out, cnt, strlen(name) + 1) != SPF_E_SUCCESS)
                continue;
            strcpy(type == ns_t_mx ? out->rr[cnt]->mx : out->rr[cnt]->ptr, name);
            break;
        }
        case ns_t_txt: {
            /* The character-strings of one TXT record, joined (RFC 7208 3.3). */
            if (SPF_dns_rr_buf_realloc(out, cnt, len + 1) != SPF_E_SUCCESS)
                continue;
            char *dst = out->rr[cnt]->txt;
            size_t o = 0;
            for (size_t k = 0; k < len;) {
                size_t sl = rd[k++];
                if (sl > len - k)
                    sl = len - k;
                memcpy(dst + o, rd + k, sl);
                o += sl;
                k += sl;
            }
            dst[o] = '\0';
            break;
        }
        default:
            continue;
        }
        cnt++;
    }
    out->num_rr = cnt;
    if (cnt == 0)
        out->herrno = NO_DATA;
    return out;
}

static SPF_server_t *spf_server_make(struct spf_dns_hook *h)
{
    SPF_dns_server_t *ds = calloc(1, sizeof *ds);
    if (ds == NULL)
        return NULL;
    ds->destroy = NULL;                 /* ours to free: spf_server_drop */
    ds->lookup = spf_dns_lookup;
    ds->name = "mxkeep";
    ds->hook = h;
    SPF_server_t *srv = SPF_server_new_dns(ds, 0);
    if (srv == NULL)
        free(ds);
    return srv;
}

/* A server made by SPF_server_new_dns does not own its DNS layer
 * (libspf2 frees only the layers it made itself): free both. */
static void spf_server_drop(SPF_server_t *srv)
{
    if (srv == NULL)
        return;
    SPF_dns_server_t *ds = srv->resolver;
    SPF_server_free(srv);
    free(ds);
}

/* ---- evaluation ---------------------------------------------------------- */

static enum spf_result spf_map(SPF_result_t r)
{
    switch (r) {
    case SPF_RESULT_NEUTRAL: return SPF_RES_NEUTRAL;
    case SPF_RESULT_PASS: return SPF_RES_PASS;
    case SPF_RESULT_FAIL: return SPF_RES_FAIL;
    case SPF_RESULT_SOFTFAIL: return SPF_RES_SOFTFAIL;
    case SPF_RESULT_NONE: return SPF_RES_NONE;
    case SPF_RESULT_TEMPERROR: return SPF_RES_TEMPERROR;
    default: return SPF_RES_PERMERROR;
    }
}

/* One identity: sender "local@domain" (MAIL FROM), or NULL for HELO. */
static enum spf_result spf_eval(SPF_server_t *srv, int family, const unsigned char *addr,
                                const char *helo, const char *sender)
{
    enum spf_result res = SPF_RES_PERMERROR;
    SPF_request_t *req = SPF_request_new(srv);
    SPF_response_t *resp = NULL;
    SPF_record_t *rec = NULL;

    if (req == NULL)
        return SPF_RES_TEMPERROR;
    if (family == AF_INET) {
        struct in_addr a;
        memcpy(&a, addr, 4);
        SPF_request_set_ipv4(req, a);
    } else {
        struct in6_addr a;
        memcpy(&a, addr, 16);
        SPF_request_set_ipv6(req, a);
    }
    /* env_from first: set_helo_dom fills env_from only when it is unset. */
    if (sender != NULL && SPF_request_set_env_from(req, sender) != 0)
        goto out;
    if (helo != NULL && helo[0] && SPF_request_set_helo_dom(req, helo) != SPF_E_SUCCESS)
        goto out;
    /* What libspf2's SPF_request_prepare does, without the query's
     * loopback shortcut that follows it. */
    req->use_helo = sender == NULL;
    req->cur_dom = sender == NULL ? req->helo_dom : req->env_from_dp;
    if (req->cur_dom == NULL)
        goto out;
    if ((resp = SPF_response_new(req)) == NULL) {
        res = SPF_RES_TEMPERROR;
        goto out;
    }
    SPF_errcode_t err = SPF_server_get_record(srv, req, resp, &rec);
    if (err == SPF_E_DNS_ERROR) {
        res = SPF_RES_TEMPERROR;
    } else if (err == SPF_E_NOT_SPF && SPF_response_result(resp) == SPF_RESULT_NONE) {
        res = SPF_RES_NONE;             /* no name, no TXT, no v=spf1 record */
    } else if (err != SPF_E_SUCCESS || rec == NULL) {
        /* several records, or one that does not compile (libspf2 says
         * SPF_E_NOT_SPF for that too, without setting a result) */
        res = SPF_RES_PERMERROR;
    } else {
        /* the record whose exp= modifier explains a fail (libspf2's
         * request-level query sets it the same way) */
        resp->spf_record_exp = rec;
        SPF_record_interpret(rec, req, resp, 0);
        resp->spf_record_exp = NULL;
        res = spf_map(SPF_response_result(resp));
    }
out:
    /* libspf2's free functions do not accept NULL */
    if (rec)
        SPF_record_free(rec);
    if (resp)
        SPF_response_free(resp);
    SPF_request_free(req);
    return res;
}

/* HELO identity: a domain name only (an address literal has no record). */
static int spf_helo_checked(const char *helo)
{
    return helo != NULL && helo[0] && helo[0] != '[' && strchr(helo, '.') != NULL;
}

static int spf_sender_checked(const char *sender)
{
    return sender != NULL && sender[0] && strchr(sender, '@') != NULL;
}

/* What a check that could not ask DNS says: temperror for each identity
 * that would have been checked. */
static void spf_answer_unchecked(const char *helo, const char *sender, struct spf_answer *out)
{
    out->helo = spf_helo_checked(helo) ? SPF_RES_TEMPERROR : SPF_RES_NONE;
    out->mailfrom = spf_sender_checked(sender) ? SPF_RES_TEMPERROR : SPF_RES_NONE;
}

static void spf_check_with(SPF_server_t *srv, int family, const unsigned char *addr,
                           const char *helo, const char *sender, struct spf_answer *out)
{
    out->mailfrom = SPF_RES_NONE;
    out->helo = SPF_RES_NONE;
    if (srv == NULL) {
        spf_answer_unchecked(helo, sender, out);
        return;
    }
    if (spf_helo_checked(helo))
        out->helo = spf_eval(srv, family, addr, helo, NULL);
    if (spf_sender_checked(sender))
        out->mailfrom = spf_eval(srv, family, addr, helo, sender);
}

void spf_check_sync(const char *resolver, long timeout, int family, const unsigned char *addr,
                    const char *helo, const char *sender, struct spf_answer *out)
{
    struct spf_dns_hook h = { resolver, timeout, NULL };
    SPF_server_t *srv = spf_server_make(&h);
    spf_check_with(srv, family, addr, helo, sender, out);
    spf_server_drop(srv);
}

int spf_answer_resinfo(const struct spf_answer *a, const char *sender, const char *helo,
                       char *buf, size_t cap)
{
    if (sender != NULL && sender[0] &&
        authres_add(buf, cap, "spf", spf_result_name(a->mailfrom), "smtp.mailfrom", sender) < 0)
        return -1;
    if (helo != NULL && helo[0] &&
        authres_add(buf, cap, "spf", spf_result_name(a->helo), "smtp.helo", helo) < 0)
        return -1;
    return 0;
}


/* ---- the breaker ---------------------------------------------------------- */

/* Worker thread: what the check just run says of the resolver. */
static void spf_breaker_note(struct spf_pool *p, struct spf_req *r, int answered, int failed)
{
    pthread_mutex_lock(&p->mu);
    if (r->trial)
        p->trial_inflight = 0;
    if (answered > 0) {
        p->fails = 0;
        if (atomic_load(&p->open)) {
            atomic_store(&p->open, 0);
            r->closed = 1;
        }
    } else if (failed > 0) {
        p->fails++;
        if (!atomic_load(&p->open) && p->fails >= p->fail_max) {
            atomic_store(&p->open, 1);
            r->opened = 1;
        }
        if (atomic_load(&p->open))
            p->next_trial = time(NULL) + p->retry;
    }
    pthread_mutex_unlock(&p->mu);
}

/* Loop thread, at spf_check while the breaker is open: 1 when this check
 * is the trial that asks DNS for real. */
static int spf_breaker_trial(struct spf_pool *p)
{
    int trial = 0;
    pthread_mutex_lock(&p->mu);
    if (!p->trial_inflight && time(NULL) >= p->next_trial) {
        p->trial_inflight = 1;
        trial = 1;
    }
    pthread_mutex_unlock(&p->mu);
    return trial;
}

static void spf_breaker_trial_gone(struct spf_pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->trial_inflight = 0;
    pthread_mutex_unlock(&p->mu);
}

/* ---- the pool ------------------------------------------------------------ */

struct spf_thread {
    struct spf_dns_hook h;
    SPF_server_t *srv;
};

static void spf_req_free(struct spf_req *r)
{
    if (r == NULL)
        return;
    free(r->helo);
    free(r->sender);
    free(r);
}

static void *spf_thread_start(void *ctx)
{
    struct spf_pool *p = ctx;
    struct spf_thread *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->h.resolver = p->resolver;
    t->h.timeout = p->timeout;
    t->h.p = p;
    t->srv = spf_server_make(&t->h);
    return t;
}

static void spf_thread_end(void *ctx, void *ts)
{
    struct spf_thread *t = ts;
    (void)ctx;
    if (t != NULL) {
        spf_server_drop(t->srv);
        free(t);
    }
    free(spf_answer_buf);
    spf_answer_buf = NULL;
    authdns_thread_end();
}

/* Worker thread: one check.  r's inputs are read-only while it runs;
 * cancel only flags it. */
static void spf_run(void *ctx, void *ts, struct workpool_item *it)
{
    struct spf_pool *p = ctx;
    struct spf_thread *t = ts;
    struct spf_req *r = (struct spf_req *)it;

    if (atomic_load(&p->open) && !r->trial) {
        /* queued before the breaker opened: no query now */
        spf_answer_unchecked(r->helo, r->sender, &r->answer);
        r->unchecked = 1;
        return;
    }
    spf_tl_answered = spf_tl_failed = 0;
    spf_tl_trial = r->trial;
    spf_check_with(t ? t->srv : NULL, r->family, r->addr, r->helo, r->sender, &r->answer);
    spf_breaker_note(p, r, spf_tl_answered, spf_tl_failed);
}

/* Loop thread: hand a finished check to its requester. */
static void spf_done(void *ctx, struct workpool_item *it)
{
    struct spf_pool *p = ctx;
    struct spf_req *r = (struct spf_req *)it;
    if (r->opened) {
        stats_inc(STAT_SPF_BREAKER_OPENED);
        log_warn("spf: the resolver gave no answer to %ld checks in a row: checks are answered "
                 "temperror without a query, one trial check every %lds until it answers",
                 p->fail_max, p->retry);
    }
    if (r->closed)
        log_info("spf: the resolver answers again: checks query it again");
    if (r->unchecked)
        stats_inc(STAT_SPF_UNCHECKED_RESOLVER);
    if (!r->cancelled && r->done)
        r->done(r->arg, &r->answer);
    spf_req_free(r);
}

static void spf_drop(void *ctx, struct workpool_item *it)
{
    (void)ctx;
    spf_req_free((struct spf_req *)it);
}

static const struct workpool_ops spf_ops = {
    spf_thread_start, spf_thread_end, spf_run, spf_done, spf_drop,
};

struct spf_pool *spf_pool_new(struct event_base *base, const struct conf *c, char *err,
                              size_t errlen)
{
    struct spf_pool *p = calloc(1, sizeof *p);
    if (p == NULL) {
        snprintf(err, errlen, "spf: out of memory");
        return NULL;
    }
    /* libspf2 writes warnings to stderr by default: the daemon logs its own
     * lines, and libspf2's go nowhere. */
    SPF_warning_handler = NULL;
    SPF_info_handler = NULL;
    SPF_debug_handler = NULL;
    pthread_mutex_init(&p->mu, NULL);
    atomic_init(&p->open, 0);
    p->timeout = c->spf.timeout;
    p->fail_max = c->spf.breaker;
    p->retry = c->spf.breaker_retry;
    p->base = base;
    p->resolver = c->resolver ? strdup(c->resolver) : NULL;
    if (c->resolver && p->resolver == NULL) {
        snprintf(err, errlen, "spf: out of memory");
        spf_pool_free(p);
        return NULL;
    }
    p->wp = workpool_new(base, "spf", (size_t)c->spf.threads, (size_t)c->spf.queue, &spf_ops, p,
                         err, errlen);
    if (p->wp == NULL) {
        spf_pool_free(p);
        return NULL;
    }
    return p;
}

void spf_pool_free(struct spf_pool *p)
{
    if (p == NULL)
        return;
    /* Requests never run or never delivered: their requesters are gone
     * (sessions, commits and post-commit jobs are freed before the pool). */
    workpool_free(p->wp);
    free(p->resolver);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

struct spf_req *spf_check(struct spf_pool *p, int family, const unsigned char *addr,
                          const char *helo, const char *sender, spf_done_fn done, void *arg)
{
    struct spf_req *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->p = p;
    r->family = family;
    memcpy(r->addr, addr, family == AF_INET ? 4 : 16);
    r->helo = strdup(helo ? helo : "");
    r->sender = strdup(sender ? sender : "");
    r->done = done;
    r->arg = arg;
    if (r->helo == NULL || r->sender == NULL) {
        spf_req_free(r);
        return NULL;
    }
    if (!spf_helo_checked(r->helo) && !spf_sender_checked(r->sender)) {
        workpool_post(p->wp, &r->item);   /* nothing to look up: none, none */
        return r;
    }
    if (atomic_load(&p->open) && !(r->trial = spf_breaker_trial(p))) {
        /* The resolver is failing: temperror now, not after its timeouts. */
        spf_answer_unchecked(r->helo, r->sender, &r->answer);
        stats_inc(STAT_SPF_UNCHECKED_RESOLVER);
        workpool_post(p->wp, &r->item);
        return r;
    }
    if (workpool_submit(p->wp, &r->item) != 0) {
        /* Overloaded: answer at once rather than queue without bound. */
        if (r->trial) {
            r->trial = 0;
            spf_breaker_trial_gone(p);
        }
        if (!p->overflowing)
            log_warn("spf: %zu checks waiting (spf.queue): new checks are answered temperror "
                     "until the queue has room", workpool_queued(p->wp));
        p->overflowing = 1;
        spf_answer_unchecked(r->helo, r->sender, &r->answer);
        stats_inc(STAT_SPF_UNCHECKED_QUEUE);
        workpool_post(p->wp, &r->item);
        return r;
    }
    if (p->overflowing) {
        p->overflowing = 0;
        log_info("spf: the check queue has room again");
    }
    return r;
}

void spf_redirect(struct spf_req *r, spf_done_fn done, void *arg)
{
    if (r == NULL)
        return;
    r->done = done;
    r->arg = arg;
}

void spf_cancel(struct spf_req *r)
{
    if (r == NULL)
        return;
    if (workpool_cancel(r->p->wp, &r->item)) {
        /* Still waiting: out of the queue, freed now. */
        if (r->trial)
            spf_breaker_trial_gone(r->p);
        spf_req_free(r);
        return;
    }
    /* Running or done: spf_done frees it without calling back. */
    r->cancelled = 1;
}
