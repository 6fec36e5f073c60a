/*
 * workpool.h - N worker threads, a bounded job queue, and results handed
 * back to the libevent loop through one notify event.
 *
 * For the jobs that must block (libspf2 and libopendkim resolve
 * synchronously) and so never run on the loop: spf.c and dkim.c.
 *
 * Jobs are the caller's structs with a struct workpool_item inside
 * (intrusive: no allocation per job here).  ops->run runs on a worker
 * thread with that thread's state (ops->thread_start); ops->done runs on
 * the loop thread, oldest first, once per job that ran or was posted.
 *
 * Threads: workpool_new/_free/_submit/_post/_cancel are called on the
 * loop thread only.
 * Ownership: workpool_new() -> workpool_free() (accepts NULL; waits for
 * each worker's current job; jobs queued or finished but not yet handed
 * back go to ops->drop, never to ops->done).  A submitted item belongs to
 * the pool until ops->done (or ops->drop) gets it, or workpool_cancel()
 * took it back.
 */
#ifndef MXKEEP_WORKPOOL_H
#define MXKEEP_WORKPOOL_H

#include <stddef.h>

struct event_base;
struct workpool;

enum workpool_state { WP_IDLE = 0, WP_QUEUED, WP_RUNNING, WP_DONE };

/* Embedded in a job; the pool's fields (zero it before the first submit). */
struct workpool_item {
    struct workpool_item *next, *prev;
    enum workpool_state state;
};

struct workpool_ops {
    /* Worker thread, at its start: its own state for run (may be NULL). */
    void *(*thread_start)(void *ctx);
    /* Worker thread, at its end: free what thread_start made. */
    void (*thread_end)(void *ctx, void *tstate);
    /* Worker thread: do the job.  The item is the worker's alone. */
    void (*run)(void *ctx, void *tstate, struct workpool_item *it);
    /* Loop thread: the job ran (or was posted); the item is the caller's again. */
    void (*done)(void *ctx, struct workpool_item *it);
    /* Loop thread, at workpool_free: a job that will never reach done. */
    void (*drop)(void *ctx, struct workpool_item *it);
};

/* Start nthreads workers; at most queue_max jobs wait for one.  NULL with
 * a reason in err on failure. */
struct workpool *workpool_new(struct event_base *base, const char *name, size_t nthreads,
                              size_t queue_max, const struct workpool_ops *ops, void *ctx,
                              char *err, size_t errlen);
void workpool_free(struct workpool *wp);

/* Queue a job.  0, or -1 when queue_max jobs are waiting already (the
 * item is still the caller's: answer it some other way). */
int workpool_submit(struct workpool *wp, struct workpool_item *it);
/* Hand a job that needs no worker (answered at once) to ops->done, from
 * the loop like every other result (never from inside the caller). */
void workpool_post(struct workpool *wp, struct workpool_item *it);
/* Take a job back: 1 when it was still queued (it never runs; no done),
 * 0 when it is running or finished (ops->done will get it). */
int workpool_cancel(struct workpool *wp, struct workpool_item *it);
/* Jobs waiting for a worker now. */
size_t workpool_queued(const struct workpool *wp);

#endif
