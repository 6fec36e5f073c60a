/*
 * dkim.c - what is authenticated after the commit: DKIM (RFC 6376)
 * verification with libopendkim (OpenDKIM's library) in worker threads,
 * and the SPF result of a check still running when the message was
 * committed (spf.h: the 250 never waits for SPF).
 *
 * Flow per message (loop thread unless said): read the record and the
 * stored body (spool_body_read: inline octets or a file segment) into an
 * evbuffer that the job then owns alone; a worker feeds it to dkim_header/dkim_eoh/dkim_body
 * and evaluates every signature (worker thread); meanwhile the SPF check
 * handed over by the commit (if any) reports to the job.  When both are
 * in, the loop writes them into the record in one update
 * (spool_msg_auth_set) and, when that completes, calls the delivery hook,
 * so the Authentication-Results header sent to the primary carries both:
 * the message waits once, and dkim_busy() keeps delivery off it till then.
 *
 * DNS: libopendkim's resolver hooks (dkim_dns_set_query_*) answer from
 * authdns.c, i.e. from the configured `resolver`, synchronously inside
 * query_start (we are in a worker thread already).
 *
 * Owns: the DKIM_LIB (shared by the workers, as opendkim's milter shares
 * it), the holds smtpd takes on commits in flight (dkim_hold), the jobs
 * (the threads, queue and notify are a workpool), the SPF requests handed
 * over to them.
 * Must never: delay the 250 (the commit has completed before we start);
 * lose a message's scheduling (every path ends in `then`, or the message
 * is left to delivery's start-up scan when the daemon stops first);
 * touch an evbuffer from two threads (a job's body is the worker's while
 * it runs).
 * Security: a message is verified at most once and at most DKIM_SIGS_MAX
 * signatures are reported; DNS waits are bounded by dkim.timeout; the
 * queue is bounded (dkim.queue): beyond it a message goes on to delivery
 * unverified.
 */
#include "config.h"
#include "dkim.h"
#include "authdns.h"
#include "authres.h"
#include "conf.h"
#include "log.h"
#include "queue_db.h"
#include "spf.h"
#include "spool.h"
#include "workpool.h"

#include <arpa/nameser.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include <opendkim/dkim.h>

#define DKIM_SIGS_MAX  8                /* signatures evaluated per message */
#define DKIM_FEED      (64 * 1024)      /* octets per dkim_body call */

struct dkim_job {
    struct workpool_item item;          /* first: the pool hands this back */
    struct dkim_pool *p;                /* NULL once the pool is gone */
    struct dkim_job *aprev, *anext;     /* p->active: loop thread only */
    char qid[QID_SIZE];
    char sender_domain[256];
    struct evbuffer *body;
    uint32_t flags;                     /* QMSG_AUTH_* found */
    char text[AUTHRES_RESINFO_MAX];     /* resinfo found */
    /* loop thread only: */
    int verifying;                      /* DKIM with the workers */
    int verified;                       /* flags/text hold DKIM's result */
    int recording;                      /* the record update is with the spool */
    struct spf_req *spf;                /* SPF still running */
    int spf_have;                       /* spf_ans is to be recorded */
    struct spf_answer spf_ans;
    char sender[SMTP_PATH_MAX + 1];     /* the identities, for SPF's resinfo */
    char helo[256];
    dkim_then_fn then;
    void *arg;
};

/* A commit in flight whose results are still to come (dkim_hold). */
struct dkim_held {
    struct dkim_held *next;
    char qid[QID_SIZE];
};

struct dkim_pool {
    struct workpool *wp;
    struct dkim_job *active;            /* from dkim_check to `then` (loop) */
    struct dkim_held *held;             /* dkim_hold to dkim_unhold (loop) */
    struct spool *spool;
    DKIM_LIB *lib;
    char *resolver;
    long timeout;
};

/* ---- DNS through our resolver ------------------------------------------- */

struct dkimq {
    int n;                              /* answer length, or -1 */
};

static int dkimq_start(void *srv, int type, unsigned char *query, unsigned char *buf,
                          size_t buflen, void **qh)
{
    struct dkim_pool *p = srv;
    struct dkimq *q = malloc(sizeof *q);
    int herr;
    if (q == NULL)
        return DKIM_DNS_ERROR;
    q->n = authdns_query(p->resolver, p->timeout, (const char *)query, type, buf, (int)buflen,
                         &herr);
    if (q->n > (int)buflen)
        q->n = (int)buflen;
    *qh = q;
    return DKIM_DNS_SUCCESS;
}

static int dkimq_cancel(void *srv, void *qh)
{
    free(qh);
    return DKIM_DNS_SUCCESS;
}

static int dkimq_wait(void *srv, void *qh, struct timeval *to, size_t *bytes, int *error,
                         int *dnssec)
{
    struct dkimq *q = qh;
    if (dnssec)
        *dnssec = DKIM_DNSSEC_UNKNOWN;
    if (q->n < 0) {
        if (error)
            *error = 0;
        return DKIM_DNS_ERROR;
    }
    *bytes = (size_t)q->n;
    if (error)
        *error = 0;
    return DKIM_DNS_SUCCESS;
}

static int dkimq_init(void **srv) { return 0; }
static void dkimq_close(void *srv) { }

/* ---- verification (worker thread) --------------------------------------- */

/* Is d the sender's domain or a parent of it (the record's SENDER_PASS)? */
static int dkim_aligned(const char *sender_domain, const char *d)
{
    size_t sl = strlen(sender_domain), dl = strlen(d);
    if (dl == 0 || dl > sl)
        return 0;
    if (strcasecmp(sender_domain + sl - dl, d) != 0)
        return 0;
    return dl == sl || sender_domain[sl - dl - 1] == '.';
}

/* Give one header field (continuation lines included, no final CRLF). */
static DKIM_STAT dkim_feed_field(DKIM *d, struct evbuffer *field)
{
    size_t n = evbuffer_get_length(field);
    if (n == 0)
        return DKIM_STAT_OK;
    unsigned char *f = evbuffer_pullup(field, (ev_ssize_t)n);
    DKIM_STAT st = f ? dkim_header(d, f, n) : DKIM_STAT_NORESOURCE;
    evbuffer_drain(field, n);
    /* a field the library refuses (no colon...) is the message's problem:
     * the signatures it covers will not verify; go on with the rest */
    return st == DKIM_STAT_NORESOURCE ? st : DKIM_STAT_OK;
}

/*
 * The stored message to libopendkim field by field (dkim_header), then
 * dkim_eoh and the body in chunks: the interface opendkim's milter uses.
 * The header section is the stored one, bounded when it was received.
 */
static DKIM_STAT dkim_job_feed(DKIM *d, struct evbuffer *body, unsigned char *buf, size_t cap)
{
    struct evbuffer *field = evbuffer_new();
    DKIM_STAT st = DKIM_STAT_OK;
    char *line;
    size_t n;

    if (field == NULL)
        return DKIM_STAT_NORESOURCE;
    while ((line = evbuffer_readln(body, &n, EVBUFFER_EOL_CRLF)) != NULL) {
        if (n == 0) {                   /* the empty line: end of header */
            free(line);
            break;
        }
        if ((line[0] == ' ' || line[0] == '\t') && evbuffer_get_length(field) > 0) {
            evbuffer_add(field, "\r\n", 2);
        } else if ((st = dkim_feed_field(d, field)) != DKIM_STAT_OK) {
            free(line);
            break;
        }
        evbuffer_add(field, line, n);
        free(line);
    }
    if (st == DKIM_STAT_OK)
        st = dkim_feed_field(d, field);
    evbuffer_free(field);
    if (st != DKIM_STAT_OK)
        return st;
    if ((st = dkim_eoh(d)) != DKIM_STAT_OK)
        return st;                      /* DKIM_STAT_NOSIG: no signature */
    for (;;) {
        int got = evbuffer_remove(body, buf, cap);
        if (got <= 0)
            break;
        if ((st = dkim_body(d, buf, (size_t)got)) != DKIM_STAT_OK)
            return st;
    }
    return DKIM_STAT_OK;
}

static void dkim_job_run(struct dkim_pool *p, struct dkim_job *j)
{
    DKIM_STAT st;
    DKIM *d = dkim_verify(p->lib, (const unsigned char *)j->qid, NULL, &st);
    unsigned char buf[DKIM_FEED];

    j->flags = QMSG_AUTH_DKIM_DONE;
    j->text[0] = '\0';
    if (d == NULL) {
        authres_add(j->text, sizeof j->text, "dkim", "temperror", NULL, NULL);
        return;
    }
    st = dkim_job_feed(d, j->body, buf, sizeof buf);
    if (st == DKIM_STAT_OK)
        st = dkim_eom(d, NULL);

    DKIM_SIGINFO **sigs = NULL;
    int nsigs = 0;
    if (dkim_getsiglist(d, &sigs, &nsigs) != DKIM_STAT_OK || nsigs == 0) {
        /* no signature (or none we could parse) */
        authres_add(j->text, sizeof j->text, "dkim", st == DKIM_STAT_NOSIG ? "none" : "permerror",
                    NULL, NULL);
    }
    for (int i = 0; i < nsigs && i < DKIM_SIGS_MAX; i++) {
        DKIM_SIGINFO *s = sigs[i];
        const char *dom = (const char *)dkim_sig_getdomain(s);
        const char *sel = (const char *)dkim_sig_getselector(s);
        const char *res;
        int err = dkim_sig_geterror(s);
        if ((dkim_sig_getflags(s) & DKIM_SIGFLAG_IGNORE) != 0)
            continue;
        if (DKIM_SIG_CHECK(s)) {
            res = "pass";
            if (dom && dkim_aligned(j->sender_domain, dom))
                j->flags |= QMSG_AUTH_DKIM_SENDER_PASS;
        } else if (err == DKIM_SIGERROR_KEYFAIL || err == DKIM_SIGERROR_DNSSYNTAX) {
            res = "temperror";
        } else if ((dkim_sig_getflags(s) & DKIM_SIGFLAG_PROCESSED) == 0 &&
                   err != DKIM_SIGERROR_NOKEY) {
            res = "permerror";
        } else {
            res = "fail";
        }
        if (authres_add2(j->text, sizeof j->text, "dkim", res, "header.d", dom ? dom : "",
                         "header.s", sel ? sel : "") < 0)
            break;
    }
    dkim_free(d);
}

static void dkim_run(void *ctx, void *ts, struct workpool_item *it)
{
    (void)ts;
    dkim_job_run(ctx, (struct dkim_job *)it);
}

static void dkim_thread_end(void *ctx, void *ts)
{
    (void)ctx;
    (void)ts;
    authdns_thread_end();
}

/* ---- the loop side -------------------------------------------------------- */

static void dkim_job_free(struct dkim_job *j)
{
    if (j == NULL)
        return;
    if (j->p != NULL) {                 /* NULL: not listed, or the pool is gone */
        if (j->aprev)
            j->aprev->anext = j->anext;
        else if (j->p->active == j)
            j->p->active = j->anext;
        if (j->anext)
            j->anext->aprev = j->aprev;
    }
    spf_cancel(j->spf);
    if (j->body)
        evbuffer_free(j->body);
    free(j);
}

/* The job is over: off the active list first (dkim_busy no longer
 * names the message), then the delivery hook, which may look at once. */
static void dkim_job_end(struct dkim_job *j, int deliver)
{
    dkim_then_fn then = deliver ? j->then : NULL;
    void *arg = j->arg;
    char qid[QID_SIZE];
    memcpy(qid, j->qid, sizeof qid);
    dkim_job_free(j);
    if (then)
        then(arg, qid);
}

/* The record holds the results: the message goes on to delivery. */
static void dkim_on_recorded(void *arg, int err)
{
    struct dkim_job *j = arg;
    if (err != 0 && err != ENOENT)
        log_warn("%s: authentication results not recorded: %s", j->qid, strerror(err));
    dkim_job_end(j, err != ENOENT);     /* gone (ENOENT): nothing to deliver */
}

/* Both results in (or not coming): one record update, then delivery. */
static void dkim_job_settle(struct dkim_job *j)
{
    char text[QMSG_AUTH_RESULTS_MAX] = "";
    uint32_t flags = 0;

    if (j->verifying || j->spf != NULL || j->recording)
        return;
    if (j->spf_have) {
        if (j->sender[0]) {
            flags |= QMSG_AUTH_SPF_DONE;
            if (j->spf_ans.mailfrom == SPF_RES_PASS)
                flags |= QMSG_AUTH_SPF_PASS;
        }
        if (spf_answer_resinfo(&j->spf_ans, j->sender, j->helo, text, sizeof text) < 0)
            log_warn("%s: spf results do not fit the record", j->qid);
        log_info("%s: spf: mailfrom=%s helo=%s (after the commit)", j->qid,
                 j->sender[0] ? spf_result_name(j->spf_ans.mailfrom) : "-",
                 spf_result_name(j->spf_ans.helo));
    }
    if (j->verified) {
        flags |= j->flags;
        /* "; " between, cut at the record's bound as spool_msg_auth_set cuts */
        size_t n = strlen(text), k = strlen(j->text);
        if (k > 0 && n > 0 && n + 2 < sizeof text) {
            memcpy(text + n, "; ", 2);
            n += 2;
        }
        if (k > sizeof text - 1 - n)
            k = sizeof text - 1 - n;
        memcpy(text + n, j->text, k);
        text[n + k] = '\0';
    }
    if (flags == 0 && text[0] == '\0') {
        dkim_job_end(j, 1);
        return;
    }
    j->recording = 1;
    if (spool_msg_auth_set(j->p->spool, j->qid, flags, text, dkim_on_recorded, j) == NULL) {
        log_warn("%s: authentication results not recorded: %s", j->qid, strerror(errno));
        dkim_job_end(j, 1);
    }
}

/* Loop thread: DKIM is done. */
static void dkim_done(void *ctx, struct workpool_item *it)
{
    struct dkim_job *j = (struct dkim_job *)it;
    (void)ctx;
    log_info("%s: dkim: %s", j->qid, j->text[0] ? j->text : "none");
    j->verifying = 0;
    j->verified = 1;
    if (j->body) {
        evbuffer_free(j->body);
        j->body = NULL;
    }
    dkim_job_settle(j);
}

/* Loop thread: the SPF check handed over at the commit is done. */
static void dkim_on_spf(void *arg, const struct spf_answer *a)
{
    struct dkim_job *j = arg;
    j->spf = NULL;
    j->spf_have = 1;
    j->spf_ans = *a;
    dkim_job_settle(j);
}

static void dkim_drop(void *ctx, struct workpool_item *it)
{
    (void)ctx;
    dkim_job_free((struct dkim_job *)it);
}

static const struct workpool_ops dkim_ops = {
    NULL, dkim_thread_end, dkim_run, dkim_done, dkim_drop,
};

struct dkim_pool *dkim_pool_new(struct event_base *base, struct spool *sp, const struct conf *c,
                                char *err, size_t errlen)
{
    struct dkim_pool *p = calloc(1, sizeof *p);
    if (p == NULL) {
        snprintf(err, errlen, "dkim: out of memory");
        return NULL;
    }
    p->spool = sp;
    p->timeout = c->dkim.timeout;
    p->resolver = c->resolver ? strdup(c->resolver) : NULL;
    p->lib = dkim_init(NULL, NULL);
    if (p->lib == NULL || (c->resolver && p->resolver == NULL)) {
        snprintf(err, errlen, "dkim: cannot initialize libopendkim (out of memory)");
        dkim_pool_free(p);
        return NULL;
    }
    unsigned int to = (unsigned int)p->timeout;
    dkim_options(p->lib, DKIM_OP_SETOPT, DKIM_OPTS_TIMEOUT, &to, sizeof to);
    dkim_dns_set_query_service(p->lib, p);
    dkim_dns_set_init(p->lib, dkimq_init);
    dkim_dns_set_close(p->lib, dkimq_close);
    dkim_dns_set_query_start(p->lib, dkimq_start);
    dkim_dns_set_query_cancel(p->lib, dkimq_cancel);
    dkim_dns_set_query_waitreply(p->lib, dkimq_wait);
    p->wp = workpool_new(base, "dkim", (size_t)c->dkim.threads, (size_t)c->dkim.queue, &dkim_ops,
                         p, err, errlen);
    if (p->wp == NULL) {
        dkim_pool_free(p);
        return NULL;
    }
    return p;
}

void dkim_pool_free(struct dkim_pool *p)
{
    if (p == NULL)
        return;
    /* Jobs with the workers or finished: dropped (dkim_drop). */
    workpool_free(p->wp);
    /* What is left waits for SPF (dropped too: the message is in the
     * spool, delivery finds it at the next start) or for its record write,
     * which is still with the spool and outlives the pool (the spool drops
     * its completion at close): detached. */
    while (p->active) {
        struct dkim_job *j = p->active;
        p->active = j->anext;
        j->p = NULL;
        j->aprev = j->anext = NULL;
        spf_cancel(j->spf);
        j->spf = NULL;
        if (!j->recording)
            dkim_job_free(j);
    }
    while (p->held) {
        struct dkim_held *h = p->held;
        p->held = h->next;
        free(h);
    }
    if (p->lib)
        dkim_close(p->lib);
    free(p->resolver);
    free(p);
}

int dkim_check(struct dkim_pool *p, const char *qid, int verify, struct spf_req *spf,
               const struct spf_answer *spf_ans, dkim_then_fn then, void *arg)
{
    struct qmsg m;
    struct dkim_job *j;

    if (!verify && spf == NULL && spf_ans == NULL)
        return -1;                      /* nothing to do: the caller goes on */
    if (p == NULL || (j = calloc(1, sizeof *j)) == NULL) {
        spf_cancel(spf);
        return -1;
    }
    if (spool_msg_get(p->spool, qid, &m) != 0) {
        spf_cancel(spf);                /* gone, or unreadable: nothing to record */
        free(j);
        return -1;
    }
    snprintf(j->qid, sizeof j->qid, "%s", qid);
    const char *at = strrchr(m.sender, '@');
    snprintf(j->sender_domain, sizeof j->sender_domain, "%s", at ? at + 1 : "");
    snprintf(j->sender, sizeof j->sender, "%s", m.sender);
    snprintf(j->helo, sizeof j->helo, "%s", m.helo);
    j->then = then;
    j->arg = arg;
    if (spf != NULL) {
        j->spf = spf;
        spf_redirect(spf, dkim_on_spf, j);
    } else if (spf_ans != NULL) {
        j->spf_have = 1;
        j->spf_ans = *spf_ans;
    }
    if (!verify) {
        /* no signature: dkim=none is in the record already */
    } else if ((j->body = evbuffer_new()) != NULL && spool_body_read(p->spool, &m, j->body) == 0) {
        if (workpool_submit(p->wp, &j->item) == 0)
            j->verifying = 1;
        else
            log_warn("%s: dkim queue full (dkim.queue): delivered unverified", qid);
    } else {
        log_warn("%s: dkim: message text not readable: delivered unverified", qid);
    }
    if (!j->verifying && j->body) {
        evbuffer_free(j->body);
        j->body = NULL;
    }
    if (!j->verifying && j->spf == NULL && !j->spf_have) {
        free(j);                        /* nothing to wait for: the caller goes on */
        return -1;
    }
    j->p = p;
    j->anext = p->active;
    if (p->active)
        p->active->aprev = j;
    p->active = j;
    dkim_job_settle(j);                 /* SPF known, DKIM not started: record now */
    return 0;
}

int dkim_hold(struct dkim_pool *p, const char *qid)
{
    if (p == NULL)
        return 0;
    struct dkim_held *h = calloc(1, sizeof *h);
    if (h == NULL)
        return -1;
    snprintf(h->qid, sizeof h->qid, "%s", qid);
    h->next = p->held;
    p->held = h;
    return 0;
}

void dkim_unhold(struct dkim_pool *p, const char *qid)
{
    for (struct dkim_held **hp = p ? &p->held : NULL; hp && *hp; hp = &(*hp)->next)
        if (strcmp((*hp)->qid, qid) == 0) {
            struct dkim_held *h = *hp;
            *hp = h->next;
            free(h);
            return;
        }
}

int dkim_busy(void *arg, const char *qid)
{
    const struct dkim_pool *p = arg;
    for (const struct dkim_held *h = p ? p->held : NULL; h; h = h->next)
        if (strcmp(h->qid, qid) == 0)
            return 1;
    for (const struct dkim_job *j = p ? p->active : NULL; j; j = j->anext)
        if (strcmp(j->qid, qid) == 0)
            return 1;
    return 0;
}
