/*
 * dkim.c - DKIM (RFC 6376) verification with libopendkim (OpenDKIM's
 * library), in worker threads, after the message is committed.
 *
 * Flow per message (loop thread unless said): read the record and the
 * stored body (spool_body_read: inline octets or a file segment) into an
 * evbuffer that the job then owns alone; a worker feeds it to dkim_header/dkim_eoh/dkim_body
 * and evaluates every signature (worker thread); the loop writes the
 * result into the record (spool_msg_auth_set) and, when that completes,
 * calls the delivery hook, so the Authentication-Results header sent to
 * the primary includes DKIM.
 *
 * DNS: libopendkim's resolver hooks (dkim_dns_set_query_*) answer from
 * authdns.c, i.e. from the configured `resolver`, synchronously inside
 * query_start (we are in a worker thread already).
 *
 * Owns: the DKIM_LIB (shared by the workers, as opendkim's milter shares
 * it), the worker threads, the job queue and done list.
 * Must never: delay the 250 (the commit has completed before we start);
 * lose a message's scheduling (every path ends in `then`, or the message
 * is left to delivery's start-up scan when the daemon stops first);
 * touch an evbuffer from two threads (a job's body is the worker's while
 * it runs).
 * Security: a message is verified at most once and at most DKIM_SIGS_MAX
 * signatures are reported; DNS waits are bounded by dkim.timeout; the queue is bounded (DKIM_QUEUE_MAX): beyond
 * it a message goes on to delivery unverified.
 */
#include "config.h"
#include "dkim.h"
#include "authdns.h"
#include "authres.h"
#include "conf.h"
#include "log.h"
#include "queue_db.h"
#include "spool.h"

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

#define DKIM_QUEUE_MAX 4096
#define DKIM_SIGS_MAX  8                /* signatures evaluated per message */
#define DKIM_FEED      (64 * 1024)      /* octets per dkim_body call */

struct dkim_job {
    struct dkim_pool *p;
    struct dkim_job *next;
    struct dkim_job *aprev, *anext;     /* p->active: loop thread only */
    char qid[QID_SIZE];
    char sender_domain[256];
    struct evbuffer *body;
    uint32_t flags;                     /* QMSG_AUTH_* found */
    char text[AUTHRES_RESINFO_MAX];     /* resinfo found */
    dkim_then_fn then;
    void *arg;
};

struct dkim_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct dkim_job *head, *tail, *done;
    size_t queued;
    int stopping;
    pthread_t *threads;
    size_t nthreads;
    struct event *notify;
    struct dkim_job *active;            /* from dkim_check to `then` (loop) */
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

static void *dkim_worker(void *arg)
{
    struct dkim_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->head == NULL && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->stopping)
            break;
        struct dkim_job *j = p->head;
        p->head = j->next;
        if (p->head == NULL)
            p->tail = NULL;
        p->queued--;
        pthread_mutex_unlock(&p->mu);

        dkim_job_run(p, j);

        pthread_mutex_lock(&p->mu);
        j->next = p->done;
        p->done = j;
        event_active(p->notify, EV_READ, 0);
    }
    pthread_mutex_unlock(&p->mu);
    authdns_thread_end();
    return NULL;
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
    if (j->body)
        evbuffer_free(j->body);
    free(j);
}

/* The record holds the result: the message goes on to delivery. */
static void dkim_on_recorded(void *arg, int err)
{
    struct dkim_job *j = arg;
    if (err != 0 && err != ENOENT)
        log_warn("%s: dkim result not recorded: %s", j->qid, strerror(err));
    if (err != ENOENT && j->then)
        j->then(j->arg, j->qid);        /* gone (ENOENT): nothing to deliver */
    dkim_job_free(j);
}

static void dkim_on_notify(evutil_socket_t fd, short what, void *arg)
{
    struct dkim_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    struct dkim_job *list = p->done;
    p->done = NULL;
    pthread_mutex_unlock(&p->mu);
    while (list) {
        struct dkim_job *j = list;
        list = j->next;
        log_info("%s: dkim: %s", j->qid, j->text[0] ? j->text : "none");
        if (spool_msg_auth_set(p->spool, j->qid, j->flags, j->text, dkim_on_recorded, j) == NULL) {
            log_warn("%s: dkim result not recorded: %s", j->qid, strerror(errno));
            if (j->then)
                j->then(j->arg, j->qid);
            dkim_job_free(j);
        }
    }
}

struct dkim_pool *dkim_pool_new(struct event_base *base, struct spool *sp, const struct conf *c,
                                char *err, size_t errlen)
{
    struct dkim_pool *p = calloc(1, sizeof *p);
    if (p == NULL) {
        snprintf(err, errlen, "dkim: out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->spool = sp;
    p->timeout = c->dkim.timeout;
    p->resolver = c->resolver ? strdup(c->resolver) : NULL;
    p->notify = event_new(base, -1, 0, dkim_on_notify, p);
    p->threads = calloc((size_t)c->dkim.threads, sizeof *p->threads);
    p->lib = dkim_init(NULL, NULL);
    if (p->notify == NULL || p->threads == NULL || p->lib == NULL ||
        (c->resolver && p->resolver == NULL)) {
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
    for (long i = 0; i < c->dkim.threads; i++) {
        int e = pthread_create(&p->threads[i], NULL, dkim_worker, p);
        if (e != 0) {
            snprintf(err, errlen, "dkim: cannot start a worker thread: %s", strerror(e));
            dkim_pool_free(p);
            return NULL;
        }
        p->nthreads++;
    }
    return p;
}

void dkim_pool_free(struct dkim_pool *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    /* Jobs whose record write is still with the spool outlive the pool
     * (the spool drops their completion at close): detach them all. */
    for (struct dkim_job *j = p->active; j; j = j->anext)
        j->p = NULL;
    while (p->head) {
        struct dkim_job *j = p->head;
        p->head = j->next;
        dkim_job_free(j);
    }
    while (p->done) {
        struct dkim_job *j = p->done;
        p->done = j->next;
        dkim_job_free(j);
    }
    if (p->notify)
        event_free(p->notify);
    if (p->lib)
        dkim_close(p->lib);
    free(p->threads);
    free(p->resolver);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int dkim_check(struct dkim_pool *p, const char *qid, dkim_then_fn then, void *arg)
{
    struct qmsg m;
    struct dkim_job *j;

    if (p == NULL)
        return -1;
    j = calloc(1, sizeof *j);
    if (j == NULL)
        return -1;
    if (spool_msg_get(p->spool, qid, &m) != 0 || (j->body = evbuffer_new()) == NULL ||
        spool_body_read(p->spool, &m, j->body) != 0) {
        dkim_job_free(j);
        return -1;
    }
    j->p = p;
    snprintf(j->qid, sizeof j->qid, "%s", qid);
    const char *at = strrchr(m.sender, '@');
    snprintf(j->sender_domain, sizeof j->sender_domain, "%s", at ? at + 1 : "");
    j->then = then;
    j->arg = arg;
    pthread_mutex_lock(&p->mu);
    if (p->queued >= DKIM_QUEUE_MAX) {
        pthread_mutex_unlock(&p->mu);
        log_warn("%s: dkim queue full: delivered unverified", qid);
        dkim_job_free(j);
        return -1;
    }
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    p->queued++;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    j->anext = p->active;
    if (p->active)
        p->active->aprev = j;
    p->active = j;
    return 0;
}

int dkim_busy(void *arg, const char *qid)
{
    const struct dkim_pool *p = arg;
    for (const struct dkim_job *j = p ? p->active : NULL; j; j = j->anext)
        if (strcmp(j->qid, qid) == 0)
            return 1;
    return 0;
}
