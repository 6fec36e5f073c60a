/*
 * t_verify.c - verify.c without a primary: the client throttle (IPv4
 * exact, IPv6 by /64, IPv4-mapped IPv6 as IPv4, the window, eviction of
 * the least recently seen when the table is full) and the shared-store
 * hook (a miss asks it first; its answer is cached locally; a learned
 * answer is stored there too; forget reaches it).
 */
#include "config.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "conf.h"
#include "dns.h"
#include "tap.h"
#include "verify.h"

static char dir[] = "/tmp/t_verify.XXXXXX";

static struct conf *load(const char *extra)
{
    char path[256], err[512];
    FILE *f;

    snprintf(path, sizeof path, "%s/c.conf", dir);
    f = fopen(path, "w");
    if (f == NULL)
        return NULL;
    fprintf(f, "hostname = \"mx2.example.net\";\n"
               "listen = ( { address = \"127.0.0.1\"; port = 2525; } );\n"
               "spool = \"%s/spool\";\n"
               "domains = ( { name = \"example.org\"; primary = \"[127.0.0.1]:1\";"
               " verify = \"callout\"; } );\n%s\n", dir, extra);
    fclose(f);
    struct conf *c = conf_load(path, err, sizeof err);
    if (c == NULL)
        diag("conf: %s", err);
    return c;
}

static void note(int family, const char *text, int times)
{
    unsigned char a[16];
    inet_pton(family, text, a);
    for (int i = 0; i < times; i++)
        verify_note_unknown(family, a);
}

static int throttled(int family, const char *text)
{
    unsigned char a[16];
    inet_pton(family, text, a);
    return verify_client_throttled(family, a);
}

/* ---- a shared store double ---- */
static int lookups, stores, forgets, cancels;
static char stored_key[VERIFY_KEY_MAX];
static enum verify_result stored_r;
static struct event_base *base;
static int shared_found;

struct pending {
    void (*cb)(void *, int, enum verify_result, const char *, time_t);
    void *arg;
    struct event *ev;
};

static void shared_fire(evutil_socket_t fd, short what, void *p_)
{
    struct pending *p = p_;
    (void)fd;
    (void)what;
    event_free(p->ev);
    p->cb(p->arg, shared_found, VERIFY_INVALID, "550 5.1.1 from the fleet", time(NULL) - 60);
    free(p);
}

static void *s_lookup(void *ctx, const char *key,
                      void (*cb)(void *, int, enum verify_result, const char *, time_t), void *arg)
{
    struct pending *p = calloc(1, sizeof *p);
    struct timeval tv = { 0, 1000 };
    (void)ctx;
    (void)key;
    lookups++;
    p->cb = cb;
    p->arg = arg;
    p->ev = evtimer_new(base, shared_fire, p);
    evtimer_add(p->ev, &tv);
    return p;
}

static void s_cancel(void *ctx, void *h)
{
    struct pending *p = h;
    (void)ctx;
    cancels++;
    event_free(p->ev);
    free(p);
}

static void s_store(void *ctx, const char *key, enum verify_result r, const char *reply, time_t when)
{
    (void)ctx;
    (void)reply;
    (void)when;
    stores++;
    snprintf(stored_key, sizeof stored_key, "%s", key);
    stored_r = r;
}

static void s_forget(void *ctx, const char *key)
{
    (void)ctx;
    (void)key;
    forgets++;
}

static const struct verify_shared shared_ops = { s_lookup, s_cancel, s_store, s_forget };

static struct verify_answer got;
static int answered;

static void on_answer(void *arg, const struct verify_answer *a)
{
    (void)arg;
    got = *a;
    answered++;
    event_base_loopbreak(base);
}

int main(void)
{
    char err[256], cmd[128];

    if (mkdtemp(dir) == NULL)
        return 1;
    snprintf(cmd, sizeof cmd, "mkdir -p %s/spool", dir);
    if (system(cmd) != 0)
        return 1;

    struct conf *c = load("verify = { unknown_limit = 3; unknown_penalty = \"10m\"; clients = 16; };");
    ok(c != NULL, "config loads with a verify group");
    if (c == NULL)
        return done_testing();
    is_int(c->verify.positive_expire, 31 * 86400, "default positive_expire 31d");
    is_int(c->verify.negative_refresh, 3 * 3600, "default negative_refresh 3h");
    is_int(c->verify.sessions, 2, "default sessions 2");
    is_int(c->verify.rate, 10, "default rate 10");
    is_int(c->verify.reply_wait, 10, "default reply_wait 10s");

    base = event_base_new();
    struct dns *dns = dns_new(base, "127.0.0.1:1", err, sizeof err);
    is_int(verify_init(base, dns, c, err, sizeof err), 0, "verify_init (%s)", err);

    /* throttle */
    note(AF_INET, "192.0.2.1", 2);
    is_int(throttled(AF_INET, "192.0.2.1"), 0, "2 unknown of 3: not throttled");
    note(AF_INET, "192.0.2.1", 1);
    is_int(throttled(AF_INET, "192.0.2.1"), 1, "3 unknown: throttled");
    is_int(throttled(AF_INET, "192.0.2.2"), 0, "IPv4 is exact: the neighbour is not");
    is_int(throttled(AF_INET6, "::ffff:192.0.2.1"), 1, "IPv4-mapped IPv6 is the IPv4 client");
    note(AF_INET6, "2001:db8:1:2::1", 1);
    note(AF_INET6, "2001:db8:1:2:ffff::7", 1);
    note(AF_INET6, "2001:db8:1:2:1234:5678:9abc:def0", 1);
    is_int(throttled(AF_INET6, "2001:db8:1:2::99"), 1, "IPv6: three addresses of one /64 add up");
    is_int(throttled(AF_INET6, "2001:db8:1:3::1"), 0, "another /64 is another client");
    /* Fill the table (16) with new clients: the least recently seen goes. */
    for (int i = 0; i < 20; i++) {
        char a[32];
        snprintf(a, sizeof a, "198.51.100.%d", i);
        note(AF_INET, a, 1);
    }
    is_int(throttled(AF_INET, "192.0.2.1"), 0, "a full table forgets the least recently seen");
    is_int(throttled(AF_INET, "198.51.100.19"), 0, "one unknown is not a throttle");
    struct verify_answer now;
    unsigned char a4[4];
    note(AF_INET, "203.0.113.9", 3);
    inet_pton(AF_INET, "203.0.113.9", a4);
    ok(verify_rcpt(&c->domains[0], "x@example.org", AF_INET, a4, &now, on_answer, NULL) == NULL &&
           now.result == VERIFY_THROTTLED, "verify_rcpt of a throttled client: THROTTLED at once");

    /* shared store: found */
    verify_set_shared(&shared_ops, NULL);
    inet_pton(AF_INET, "192.0.2.200", a4);
    shared_found = 1;
    struct verify_req *r = verify_rcpt(&c->domains[0], "Fleet@example.org", AF_INET, a4, &now,
                                       on_answer, NULL);
    ok(r != NULL, "a miss asks the shared store (pending)");
    is_int(answered, 0, "no callback inside verify_rcpt");
    event_base_dispatch(base);
    is_int(lookups, 1, "one shared lookup");
    is_int(answered, 1, "answered once");
    is_int(got.result, VERIFY_INVALID, "the fleet's answer");
    is_str(got.reply, "550 5.1.1 from the fleet", "with its reply");
    struct verify_entry e;
    is_int(verify_show("fleet@example.org", &e), 1, "cached locally");
    is_int(e.source, VSRC_SHARED, "source: shared");
    ok(verify_rcpt(&c->domains[0], "fleet@example.org", AF_INET, a4, &now, on_answer, NULL) == NULL &&
           now.result == VERIFY_INVALID && now.from_cache, "then a local hit");

    /* cancel while the shared lookup is pending */
    r = verify_rcpt(&c->domains[0], "other@example.org", AF_INET, a4, &now, on_answer, NULL);
    ok(r != NULL, "another miss: pending");
    verify_cancel(r);
    is_int(cancels, 1, "cancel reaches the shared lookup");

    /* learn: stored in the shared store too */
    verify_learn("Learned@Example.org", 250, "2.0.0", "250 2.0.0 Ok");
    is_int(stores, 1, "a learned answer goes to the shared store");
    is_str(stored_key, "learned@example.org", "keyed by the lower-cased address");
    is_int(stored_r, VERIFY_VALID, "valid");
    verify_learn("mbox@example.org", 552, "5.2.2", "552 5.2.2 full");
    is_int(verify_show("mbox@example.org", &e), 0, "a 5.2.x is not learned");
    verify_learn("gone@example.org", 550, "5.1.1", "550 5.1.1 gone");
    is_int(verify_show("gone@example.org", &e), 1, "a 5.1.1 is learned");
    is_int(e.result, VERIFY_INVALID, "as invalid");
    verify_learn("x@not-served.test", 250, "2.0.0", "250 ok");
    is_int(verify_show("x@not-served.test", &e), 0, "a domain we do not serve is not learned");
    is_int(verify_forget("gone@example.org"), 1, "forget");
    is_int(forgets, 1, "forget reaches the shared store");

    verify_shutdown();
    dns_free(dns);
    event_base_free(base);
    conf_free(c);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        diag("could not remove %s", dir);
    return done_testing();
}
