/*
 * workpool.c - a pool of worker threads for blocking jobs (libspf2's and
 * libopendkim's synchronous DNS), with a bounded queue and results handed
 * back to the loop through one notify event.
 *
 * Owns: the threads, the queue of jobs waiting for a worker and the list
 * of finished ones (both under one mutex), the notify event (made active
 * by a worker with event_active(): libevent is built with thread support,
 * as the spool's writer relies on too).
 * Must never: run ops->done anywhere but on the loop thread; call ops->done
 * for a job taken back by workpool_cancel; let the queue grow beyond
 * queue_max (a caller whose job does not fit answers it another way).
 * Security: the bound on the queue is what keeps a flood of requests from
 * growing memory; a job's run time is bounded by the job itself (DNS
 * timeouts).
 */
#include "config.h"
#include "workpool.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>

struct workpool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct workpool_item *head, *tail;  /* queued, oldest first */
    struct workpool_item *dhead, *dtail; /* finished, for the loop, oldest first */
    size_t queued, queue_max;
    int stopping;
    pthread_t *threads;
    size_t nthreads;
    struct event *notify;
    const struct workpool_ops *ops;
    void *ctx;
};

/* Under wp->mu: append it to the list head..tail. */
static void workpool_append(struct workpool_item **head, struct workpool_item **tail,
                            struct workpool_item *it)
{
    it->next = NULL;
    it->prev = *tail;
    if (*tail)
        (*tail)->next = it;
    else
        *head = it;
    *tail = it;
}

/* Under wp->mu: append to the finished list and wake the loop. */
static void workpool_finish_locked(struct workpool *wp, struct workpool_item *it)
{
    it->state = WP_DONE;
    workpool_append(&wp->dhead, &wp->dtail, it);
    event_active(wp->notify, EV_READ, 0);
}

static void *workpool_worker(void *arg)
{
    struct workpool *wp = arg;
    void *ts = wp->ops->thread_start ? wp->ops->thread_start(wp->ctx) : NULL;

    pthread_mutex_lock(&wp->mu);
    for (;;) {
        while (wp->head == NULL && !wp->stopping)
            pthread_cond_wait(&wp->cv, &wp->mu);
        if (wp->stopping)
            break;
        struct workpool_item *it = wp->head;
        wp->head = it->next;
        if (wp->head)
            wp->head->prev = NULL;
        else
            wp->tail = NULL;
        wp->queued--;
        it->state = WP_RUNNING;
        pthread_mutex_unlock(&wp->mu);

        wp->ops->run(wp->ctx, ts, it);

        pthread_mutex_lock(&wp->mu);
        workpool_finish_locked(wp, it);
    }
    pthread_mutex_unlock(&wp->mu);
    if (wp->ops->thread_end)
        wp->ops->thread_end(wp->ctx, ts);
    return NULL;
}

/* Loop thread: hand finished jobs to ops->done, oldest first. */
static void workpool_on_notify(evutil_socket_t fd, short what, void *arg)
{
    struct workpool *wp = arg;
    (void)fd;
    (void)what;
    pthread_mutex_lock(&wp->mu);
    struct workpool_item *list = wp->dhead;
    wp->dhead = wp->dtail = NULL;
    pthread_mutex_unlock(&wp->mu);
    while (list) {
        struct workpool_item *it = list;
        list = it->next;
        it->next = it->prev = NULL;
        it->state = WP_IDLE;
        wp->ops->done(wp->ctx, it);
    }
}

struct workpool *workpool_new(struct event_base *base, const char *name, size_t nthreads,
                              size_t queue_max, const struct workpool_ops *ops, void *ctx,
                              char *err, size_t errlen)
{
    struct workpool *wp = calloc(1, sizeof *wp);
    if (wp == NULL) {
        snprintf(err, errlen, "%s: out of memory", name);
        return NULL;
    }
    pthread_mutex_init(&wp->mu, NULL);
    pthread_cond_init(&wp->cv, NULL);
    wp->ops = ops;
    wp->ctx = ctx;
    wp->queue_max = queue_max;
    wp->notify = event_new(base, -1, 0, workpool_on_notify, wp);
    wp->threads = calloc(nthreads ? nthreads : 1, sizeof *wp->threads);
    if (wp->notify == NULL || wp->threads == NULL) {
        snprintf(err, errlen, "%s: out of memory", name);
        workpool_free(wp);
        return NULL;
    }
    for (size_t i = 0; i < nthreads; i++) {
        int e = pthread_create(&wp->threads[i], NULL, workpool_worker, wp);
        if (e != 0) {
            snprintf(err, errlen, "%s: cannot start a worker thread: %s", name, strerror(e));
            workpool_free(wp);
            return NULL;
        }
        wp->nthreads++;
        char tname[16];                 /* the kernel's bound, with the NUL */
        snprintf(tname, sizeof tname, "mxkeep-%s", name);
        pthread_setname_np(wp->threads[i], tname);
    }
    return wp;
}

void workpool_free(struct workpool *wp)
{
    if (wp == NULL)
        return;
    pthread_mutex_lock(&wp->mu);
    wp->stopping = 1;
    pthread_cond_broadcast(&wp->cv);
    pthread_mutex_unlock(&wp->mu);
    for (size_t i = 0; i < wp->nthreads; i++)
        pthread_join(wp->threads[i], NULL);
    /* The workers are gone: what is left is the loop's alone. */
    struct workpool_item *lists[2] = { wp->head, wp->dhead };
    for (int i = 0; i < 2; i++)
        for (struct workpool_item *l = lists[i]; l;) {
            struct workpool_item *it = l;
            l = it->next;
            it->state = WP_IDLE;
            if (wp->ops && wp->ops->drop)
                wp->ops->drop(wp->ctx, it);
        }
    if (wp->notify)
        event_free(wp->notify);
    free(wp->threads);
    pthread_cond_destroy(&wp->cv);
    pthread_mutex_destroy(&wp->mu);
    free(wp);
}

int workpool_submit(struct workpool *wp, struct workpool_item *it)
{
    pthread_mutex_lock(&wp->mu);
    if (wp->queued >= wp->queue_max) {
        pthread_mutex_unlock(&wp->mu);
        return -1;
    }
    it->state = WP_QUEUED;
    workpool_append(&wp->head, &wp->tail, it);
    wp->queued++;
    pthread_cond_signal(&wp->cv);
    pthread_mutex_unlock(&wp->mu);
    return 0;
}

void workpool_post(struct workpool *wp, struct workpool_item *it)
{
    pthread_mutex_lock(&wp->mu);
    workpool_finish_locked(wp, it);
    pthread_mutex_unlock(&wp->mu);
}

int workpool_cancel(struct workpool *wp, struct workpool_item *it)
{
    int taken = 0;
    pthread_mutex_lock(&wp->mu);
    if (it->state == WP_QUEUED) {
        if (it->prev)
            it->prev->next = it->next;
        else
            wp->head = it->next;
        if (it->next)
            it->next->prev = it->prev;
        else
            wp->tail = it->prev;
        it->next = it->prev = NULL;
        it->state = WP_IDLE;
        wp->queued--;
        taken = 1;
    }
    pthread_mutex_unlock(&wp->mu);
    return taken;
}

size_t workpool_queued(const struct workpool *wp)
{
    struct workpool *w = (struct workpool *)wp;  /* the mutex, not the pool, changes */
    pthread_mutex_lock(&w->mu);
    size_t n = w->queued;
    pthread_mutex_unlock(&w->mu);
    return n;
}
