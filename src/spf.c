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
 * Owns: the worker threads, each with its own SPF_server_t; the queue of
 * requests (mutex + condition) and the list of finished ones, handed to
 * the loop by event_active() on a notify event.
 * Must never: run a check on the loop thread; call back into a cancelled
 * request; let a peer's value (HELO, sender) reach libspf2 unbounded
 * (smtp_parse bounds both; libspf2 copies them).
 * Security: checks are bounded by libspf2's DNS lookup limits and by the
 * resolver timeout per query; the queue is bounded (SPF_QUEUE_MAX): beyond
 * it a check is answered temperror at once rather than growing memory.
 */
#include "config.h"
#include "spf.h"
#include "authdns.h"
#include "authres.h"
#include "conf.h"
#include "log.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>

#include <spf2/spf.h>

/* Requests waiting for a worker beyond this are answered temperror: a
 * flood of MAILs cannot grow the queue without bound. */
#define SPF_QUEUE_MAX 4096
/* Largest DNS answer read (TCP fallback allows 64 KiB). */
#define SPF_ANSWER_MAX 65536

enum spf_req_state { SPFQ_QUEUED = 0, SPFQ_RUNNING, SPFQ_DONE };

struct spf_req {
    struct spf_pool *p;
    struct spf_req *next;               /* queue or done list */
    enum spf_req_state state;
    int cancelled;                      /* loop thread only */
    int family;
    unsigned char addr[16];
    char *helo, *sender;
    struct spf_answer answer;
    spf_done_fn done;
    void *arg;
    struct timeval started;             /* loop clock at spf_check */
    int overload;                       /* answered at once: queue full */
};

struct spf_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct spf_req *head, *tail;        /* queued */
    struct spf_req *done;               /* finished, for the loop */
    size_t queued;
    int stopping;
    pthread_t *threads;
    size_t nthreads;
    struct event *notify;
    char *resolver;
    long timeout;
    struct event_base *base;
    int late;                           /* loop thread: spf_pool_late */
    time_t last_late;                   /* loop thread: when a check was last late */
};

/*
 * Seconds "late" holds after the last late check.  With a dead or slow
 * resolver most checks are late but some answer at once (no DNS needed);
 * without a hold each prompt one switched waiting back on and the next
 * messages waited spf.timeout each (bench/accept: 6 msg/s).  A hold of a
 * minute lets at most a few messages a minute wait while DNS is sick.
 */
#define SPF_LATE_HOLD 60

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
};

static __thread unsigned char *spf_answer_buf;

static SPF_dns_rr_t *spf_dns_lookup(SPF_dns_server_t *ds, const char *domain, ns_type type,
                                    int should_cache)
{
    const struct spf_dns_hook *h = ds->hook;
    int herr, n, cnt = 0;
    ns_msg msg;
    ns_rr rr;
    char name[NS_MAXDNAME];

    if (spf_answer_buf == NULL && (spf_answer_buf = malloc(SPF_ANSWER_MAX)) == NULL)
        return SPF_dns_rr_new_init(ds, domain, type, 0, TRY_AGAIN);
    n = authdns_query(h->resolver, h->timeout, domain, type, spf_answer_buf, SPF_ANSWER_MAX, &herr);
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

static void spf_check_with(SPF_server_t *srv, int family, const unsigned char *addr,
                           const char *helo, const char *sender, struct spf_answer *out)
{
    out->mailfrom = SPF_RES_NONE;
    out->helo = SPF_RES_NONE;
    if (srv == NULL) {
        out->mailfrom = out->helo = SPF_RES_TEMPERROR;
        return;
    }
    /* HELO identity: a domain name only (an address literal has no record). */
    if (helo != NULL && helo[0] && helo[0] != '[' && strchr(helo, '.') != NULL)
        out->helo = spf_eval(srv, family, addr, helo, NULL);
    if (sender != NULL && sender[0] && strchr(sender, '@') != NULL)
        out->mailfrom = spf_eval(srv, family, addr, helo, sender);
}

void spf_check_sync(const char *resolver, long timeout, int family, const unsigned char *addr,
                    const char *helo, const char *sender, struct spf_answer *out)
{
    struct spf_dns_hook h = { resolver, timeout };
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

/* ---- the pool ------------------------------------------------------------ */

static void spf_req_free(struct spf_req *r)
{
    if (r == NULL)
        return;
    free(r->helo);
    free(r->sender);
    free(r);
}

static void *spf_worker(void *arg)
{
    struct spf_pool *p = arg;
    struct spf_dns_hook h = { p->resolver, p->timeout };
    SPF_server_t *srv = spf_server_make(&h);

    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->head == NULL && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->stopping)
            break;
        struct spf_req *r = p->head;
        p->head = r->next;
        if (p->head == NULL)
            p->tail = NULL;
        p->queued--;
        r->state = SPFQ_RUNNING;
        pthread_mutex_unlock(&p->mu);

        /* r's inputs are read-only while it runs; cancel only flags it. */
        spf_check_with(srv, r->family, r->addr, r->helo, r->sender, &r->answer);

        pthread_mutex_lock(&p->mu);
        r->state = SPFQ_DONE;
        r->next = p->done;
        p->done = r;
        event_active(p->notify, EV_READ, 0);
    }
    pthread_mutex_unlock(&p->mu);
    spf_server_drop(srv);
    free(spf_answer_buf);
    spf_answer_buf = NULL;
    authdns_thread_end();
    return NULL;
}

/* Loop thread: hand finished checks to their requesters. */
static void spf_on_notify(evutil_socket_t fd, short what, void *arg)
{
    struct spf_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    struct spf_req *list = p->done;
    p->done = NULL;
    pthread_mutex_unlock(&p->mu);
    /* oldest first */
    struct spf_req *rev = NULL;
    while (list) {
        struct spf_req *n = list->next;
        list->next = rev;
        rev = list;
        list = n;
    }
    struct timeval now;
    event_base_gettimeofday_cached(p->base, &now);
    while (rev) {
        struct spf_req *r = rev;
        rev = r->next;
        long ms = (long)(now.tv_sec - r->started.tv_sec) * 1000 +
                  (long)(now.tv_usec - r->started.tv_usec) / 1000;
        int late = ms > p->timeout * 1000;
        if (late && !r->overload)
            p->last_late = now.tv_sec;
        if (!late && p->late && now.tv_sec - p->last_late < SPF_LATE_HOLD)
            late = 1;                   /* still within the hold: stay late */
        if (!r->overload && late != p->late) {
            if (late)
                log_warn("spf: a check took %ld ms, more than spf.timeout: end of data "
                         "stops waiting for SPF until checks are prompt again", ms);
            else
                log_info("spf: checks are prompt again: end of data waits for SPF");
            p->late = late;
        }
        if (!r->cancelled && r->done)
            r->done(r->arg, &r->answer);
        spf_req_free(r);
    }
}

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
    pthread_cond_init(&p->cv, NULL);
    p->timeout = c->spf.timeout;
    p->base = base;
    p->resolver = c->resolver ? strdup(c->resolver) : NULL;
    p->notify = event_new(base, -1, 0, spf_on_notify, p);
    p->threads = calloc((size_t)c->spf.threads, sizeof *p->threads);
    if (p->notify == NULL || p->threads == NULL || (c->resolver && p->resolver == NULL)) {
        snprintf(err, errlen, "spf: out of memory");
        spf_pool_free(p);
        return NULL;
    }
    for (long i = 0; i < c->spf.threads; i++) {
        int e = pthread_create(&p->threads[i], NULL, spf_worker, p);
        if (e != 0) {
            snprintf(err, errlen, "spf: cannot start a worker thread: %s", strerror(e));
            spf_pool_free(p);
            return NULL;
        }
        p->nthreads++;
    }
    return p;
}

void spf_pool_free(struct spf_pool *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    /* Requests never run or never delivered: their requesters are gone
     * (sessions are freed before the pool). */
    while (p->head) {
        struct spf_req *r = p->head;
        p->head = r->next;
        spf_req_free(r);
    }
    while (p->done) {
        struct spf_req *r = p->done;
        p->done = r->next;
        spf_req_free(r);
    }
    if (p->notify)
        event_free(p->notify);
    free(p->threads);
    free(p->resolver);
    pthread_cond_destroy(&p->cv);
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
    event_base_gettimeofday_cached(p->base, &r->started);
    if (r->helo == NULL || r->sender == NULL) {
        spf_req_free(r);
        return NULL;
    }
    pthread_mutex_lock(&p->mu);
    if (p->queued >= SPF_QUEUE_MAX) {
        /* Overloaded: answer at once rather than queue without bound. */
        r->answer.mailfrom = r->sender[0] ? SPF_RES_TEMPERROR : SPF_RES_NONE;
        r->answer.helo = SPF_RES_TEMPERROR;
        r->overload = 1;                /* says nothing of DNS: not timed */
        r->state = SPFQ_DONE;
        r->next = p->done;
        p->done = r;
        event_active(p->notify, EV_READ, 0);
    } else {
        r->state = SPFQ_QUEUED;
        if (p->tail)
            p->tail->next = r;
        else
            p->head = r;
        p->tail = r;
        p->queued++;
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return r;
}

int spf_pool_late(const struct spf_pool *p) { return p != NULL && p->late; }

void spf_pool_note_late(struct spf_pool *p)
{
    if (p != NULL && !p->late) {
        log_warn("spf: end of data gave up waiting: it stops waiting for SPF until "
                 "checks are prompt again");
        p->late = 1;
    }
    if (p != NULL)
        p->last_late = time(NULL);
}

void spf_cancel(struct spf_req *r)
{
    if (r == NULL)
        return;
    struct spf_pool *p = r->p;
    pthread_mutex_lock(&p->mu);
    if (r->state == SPFQ_QUEUED) {
        /* Still waiting: take it out of the queue and free it now. */
        struct spf_req **pp = &p->head, *prev = NULL;
        while (*pp && *pp != r) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        if (*pp == r) {
            *pp = r->next;
            if (p->tail == r)
                p->tail = prev;
            p->queued--;
            pthread_mutex_unlock(&p->mu);
            spf_req_free(r);
            return;
        }
    }
    /* Running or done: the notify frees it without calling back. */
    r->cancelled = 1;
    pthread_mutex_unlock(&p->mu);
}
