/*
 * spfbench.c - SPF checks per second through mxkeep's worker pool (spf.c),
 * for bench/spf.  Submits N checks (MAIL FROM and HELO) to a pool of T
 * workers at once, runs the loop until every answer is back, and prints
 * "checks=N threads=T seconds=S per_second=R pass=P".
 *   spfbench RESOLVER N T DOMAIN...   (senders cycle over the domains)
 */
#include "config.h"
#include "conf.h"
#include "spf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <event2/event.h>
#include <event2/thread.h>

static long done, passed, want, sent, byres[8];
static struct spf_pool *pool;
static const char *const *doms;
static int ndoms;
/* Checks in flight: below the pool's queue bound (SPF_QUEUE_MAX, beyond
 * which a check is answered temperror at once, as an overload guard). */
#define WINDOW 1024
static void submit(void);
static struct event_base *base;

static void on_done(void *arg, const struct spf_answer *a)
{
    done++;
    passed += a->mailfrom == SPF_RES_PASS;
    byres[a->mailfrom & 7]++;
    if (done == want)
        event_base_loopbreak(base);
    else if (sent < want)
        submit();
}

static void submit(void)
{
    static const unsigned char lo[4] = { 127, 0, 0, 1 };
    char sender[300];
    const char *dom = doms[sent % ndoms];
    snprintf(sender, sizeof sender, "user%ld@%s", sent, dom);
    if (spf_check(pool, AF_INET, lo, dom, sender, on_done, NULL) == NULL)
        exit(1);
    sent++;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: spfbench RESOLVER N THREADS DOMAIN...\n");
        return 2;
    }
    evthread_use_pthreads();
    base = event_base_new();
    struct conf c;
    memset(&c, 0, sizeof c);
    c.resolver = argv[1];
    want = atol(argv[2]);
    c.spf.threads = atol(argv[3]);
    c.spf.timeout = 3;
    char err[256];
    struct spf_pool *p = spf_pool_new(base, &c, err, sizeof err);
    if (p == NULL) {
        fprintf(stderr, "spfbench: %s\n", err);
        return 1;
    }
    /* the pool's notify is activated, never added: keep the loop alive */
    struct event *keep = evtimer_new(base, (event_callback_fn)event_base_loopbreak, base);
    struct timeval far = { 3600, 0 };
    evtimer_add(keep, &far);
    struct timespec t0, t1;
    pool = p;
    doms = (const char *const *)argv + 4;
    ndoms = argc - 4;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (sent < want && sent < WINDOW)
        submit();
    event_base_dispatch(base);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("checks=%ld threads=%ld seconds=%.3f per_second=%.0f pass=%ld\n", done,
           c.spf.threads, s, (double)done / s, passed);
    for (int r = 0; r < 7; r++)
        if (byres[r] && r != SPF_RES_PASS)
            printf("  not pass: %s=%ld\n", spf_result_name((enum spf_result)r), byres[r]);
    spf_pool_free(p);
    event_free(keep);
    event_base_free(base);
    return 0;
}
