/*
 * fake_verify.c - a test double of verify.h linked into a test daemon
 * (t/unit/mxkeepd_fakeverify: src/main.c + this + libmxkeep.a), so the
 * asynchronous RCPT path of smtpd.c can be driven by t/smtp tests with
 * answers of known timing, before and beside the real verifier.
 *
 * Answers by local part (the address's part before the last '@'):
 *   valid*            VALID at once (a cache hit)
 *   unknown*          INVALID at once, a Postfix-style 550 5.1.1 reply
 *   down*             UNKNOWN at once (primary unreachable, nothing cached)
 *   thr*              THROTTLED at once
 *   slowN-REST        the answer for REST after N milliseconds, through the
 *                     callback on the loop (a probe in flight)
 *   waitN-REST        PENDING after N milliseconds (reply_wait passed)
 * Each cancel is logged ("fake-verify: cancelled <addr>"), so a test can
 * see that a session which went away cancelled its probe.
 *
 * The calls recipient.c makes are redirected here with the linker's
 * --wrap (verify_rcpt, verify_cancel, verify_note_unknown); the real verify.c is linked all the same for
 * the rest of the daemon (start, reload, control), it just gets no RCPTs.
 * The event base is the daemon's own: event_base_new is wrapped too, to
 * remember it.  Never in src/: this is not the verifier.
 */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>

#include "log.h"
#include "verify.h"

#define FAKE_MS_PER_S 1000
#define FAKE_US_PER_MS 1000

static struct event_base *fake_base;
static unsigned long fake_notes;

struct event_base *__real_event_base_new(void);
struct event_base *__wrap_event_base_new(void);
struct verify_req *__wrap_verify_rcpt(const struct conf_domain *d, const char *addr, int family,
                                      const void *client, struct verify_answer *now,
                                      verify_cb *cb, void *arg);
void __wrap_verify_cancel(struct verify_req *r);
void __wrap_verify_note_unknown(int family, const void *client);

struct event_base *__wrap_event_base_new(void)
{
    fake_base = __real_event_base_new();
    return fake_base;
}

struct fake_req {
    struct event *ev;
    verify_cb *cb;
    void *arg;
    char addr[600];
    struct verify_answer a;
};

static void answer_for(const char *addr, const char *local, struct verify_answer *a)
{
    memset(a, 0, sizeof *a);
    a->from_cache = 1;
    if (strncmp(local, "valid", 5) == 0) {
        a->result = VERIFY_VALID;
    } else if (strncmp(local, "unknown", 7) == 0) {
        a->result = VERIFY_INVALID;
        snprintf(a->reply, sizeof a->reply,
                 "550 5.1.1 <%s>: Recipient address rejected: User unknown in local recipient table",
                 addr);
    } else if (strncmp(local, "thr", 3) == 0) {
        a->result = VERIFY_THROTTLED;
    } else {
        a->result = VERIFY_UNKNOWN;
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct fake_req *r = arg;
    (void)fd;
    (void)what;
    log_info("fake-verify: answered <%s>: %d", r->addr, (int)r->a.result);
    event_free(r->ev);
    verify_cb *cb = r->cb;
    void *cbarg = r->arg;
    struct verify_answer a = r->a;
    free(r);
    cb(cbarg, &a);
}

struct verify_req *__wrap_verify_rcpt(const struct conf_domain *d, const char *addr, int family,
                               const void *client, struct verify_answer *now,
                               verify_cb *cb, void *arg)
{
    (void)d;
    (void)family;
    (void)client;
    const char *at = strrchr(addr, '@');
    char local[600];
    snprintf(local, sizeof local, "%.*s", at ? (int)(at - addr) : (int)strlen(addr), addr);
    int slow = strncmp(local, "slow", 4) == 0, wait = strncmp(local, "wait", 4) == 0;
    if (!slow && !wait) {
        answer_for(addr, local, now);
        return NULL;
    }
    char *dash = strchr(local, '-');
    long ms = strtol(local + 4, NULL, 10);
    struct fake_req *r = calloc(1, sizeof *r);
    if (r == NULL || dash == NULL || fake_base == NULL)
        abort();
    snprintf(r->addr, sizeof r->addr, "%s", addr);
    answer_for(addr, dash + 1, &r->a);
    r->a.from_cache = 0;
    if (wait)
        r->a.result = VERIFY_PENDING;
    r->cb = cb;
    r->arg = arg;
    r->ev = evtimer_new(fake_base, on_timer, r);
    struct timeval tv = { ms / FAKE_MS_PER_S, (ms % FAKE_MS_PER_S) * FAKE_US_PER_MS };
    evtimer_add(r->ev, &tv);
    log_info("fake-verify: probing <%s> for %ld ms", addr, ms);
    return (struct verify_req *)r;
}

void __wrap_verify_cancel(struct verify_req *vr)
{
    struct fake_req *r = (struct fake_req *)vr;
    if (r == NULL)
        return;
    log_info("fake-verify: cancelled <%s>", r->addr);
    event_free(r->ev);
    free(r);
}

void __wrap_verify_note_unknown(int family, const void *client)
{
    (void)family;
    (void)client;
    fake_notes++;
    log_info("fake-verify: unknown recipients noted: %lu", fake_notes);
}
