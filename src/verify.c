/*
 * verify.c - recipient verification by callout to the primary (verify.h).
 *
 * What it does: answers "is this address real?" for a served domain, from
 * the cache (verify_cache.c) when it can, else by a probe of the primary:
 * connect, greeting, EHLO (HELO fallback), MAIL FROM:<>, RCPT TO:<addr>,
 * then RSET and the next queued probe on the same session, or QUIT.  Never
 * DATA.  The probe session is an explicit state machine (enum vs_state,
 * vs_set() logs every transition, one reply handler per state in
 * vs_table) on a libevent bufferevent; replies go through smtpc.c's pure
 * parser (multi-line, enhanced codes).  The primary is found as delivery
 * finds it (dns_route with the domain's primary, MX self-detection).
 *
 * Bounds: probe sessions per primary host (verify.sessions), probes per
 * primary per second (a token bucket, verify.rate), a queue per host
 * (verify.queue); every step has verify.probe_timeout.  A primary that
 * could not be reached answers UNKNOWN at once for verify.unreachable, so
 * an outage does not make every RCPT wait a connect timeout.  A request
 * waits verify.reply_wait, then gets PENDING while its probe goes on and
 * fills the cache.  Per client address (IPv4 exact, IPv6 /64), across its
 * sessions, unknown recipients are counted (verify_note_unknown); past
 * verify.unknown_limit within verify.unknown_penalty the client is
 * throttled for the penalty time and triggers no probes (a bounded table,
 * least recently seen evicted).
 *
 * Catch-all: a domain without a fresh "@domain" record gets a random local
 * part probed in the same transaction before the address; accepted, the
 * domain is recorded as catch-all and every address of it is VALID from
 * that one record, with no more per-address probes.
 *
 * Owns: the cache environment, the hosts, sessions, probes and requests,
 * the client table, its counters.  Borrows the event base, dns and a
 * reference on the conf.
 *
 * Must never: block the loop; hold an LMDB transaction across a callback;
 * send DATA; let a callback reach a cancelled request; cache a 4xx,
 * timeout or connection failure as an answer.
 *
 * Security: the address is ours to check (smtp_parse validated it) and is
 * bounded by VERIFY_KEY_MAX; the primary's text is bounded by the reply
 * parser, kept only as one line (no CR/LF) and handed to the client as
 * the primary's own reply.  The random local part comes from getrandom().
 */
#include "config.h"
#include "verify.h"
#include "verify_cache.h"

#include "conf.h"
#include "dns.h"
#include "log.h"
#include "smtpc.h"

#include <errno.h>
#include <inttypes.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#define VERIFY_DIR            "verify"
#define VERIFY_ROUTE_TTL      300           /* seconds a resolved route is reused, as delivery */
#define VERIFY_LINE_MAX       4096          /* longest reply line taken from a primary */
#define VERIFY_REPLY_MAX      480           /* reply octets handed to the client (RFC 5321: 512) */
#define VERIFY_RANDOM_OCTETS  8             /* random local part: 16 hex digits */
#define VERIFY_CLIENT_BUCKETS 4096
#define VERIFY_QUEUE_MAX      1000          /* probes waiting per primary host */
#define VERIFY_PATH_MAX       4096
#define USEC                  1000000.0
/* Expired cache records are deleted by a sweep (a dictionary attack
 * leaves a negative record per address tried, and only a sweep ever
 * removes it): the first one this long after start, then every
 * VERIFY_SWEEP_EVERY, each looking at VERIFY_SWEEP_STEP records per loop
 * pass so that a big cache never holds the loop up. */
#define VERIFY_SWEEP_FIRST    10            /* seconds after start */
#define VERIFY_SWEEP_EVERY    3600          /* seconds between sweeps */
#define VERIFY_SWEEP_STEP     4096          /* records looked at per pass */

/* ------------------------------------------------------------------ */
/* State                                                               */
/* ------------------------------------------------------------------ */

enum vs_state {
    VS_CONNECT = 0,     /* TCP connect in progress */
    VS_GREETING,        /* waiting for 220 */
    VS_EHLO,
    VS_HELO,
    VS_READY,           /* greeted, no transaction: take the next probe */
    VS_MAIL,            /* MAIL FROM:<> sent */
    VS_RCPT_RANDOM,     /* RCPT TO:<random@domain> sent (catch-all test) */
    VS_RCPT,            /* RCPT TO:<addr> sent */
    VS_RSET,
    VS_QUIT,
    VS_CLOSED,
    VS_COUNT_
};

static const char *const vs_names[VS_COUNT_] = {
    "connect", "greeting", "ehlo", "helo", "ready", "mail", "rcpt-random", "rcpt", "rset",
    "quit", "closed",
};

struct vhost;
struct probe;
struct vsess;

struct verify_req {
    struct probe *p;                /* NULL while asking the shared store */
    struct verify_req *next;        /* in p->waiters */
    struct verify_req *lprev, *lnext;   /* every live request (V.reqs) */
    struct event *wait_ev;          /* reply_wait; NULL for verify_probe */
    void *shared_handle;
    char key[VERIFY_KEY_MAX];
    verify_cb *cb;
    void *arg;
};

struct probe {
    struct vhost *h;
    char key[VERIFY_KEY_MAX];       /* lower-cased address */
    const char *domain;             /* inside key */
    struct verify_req *waiters;
    struct probe *qnext;            /* in h's queue */
    struct probe *anext, *aprev;    /* every probe in flight */
    struct timeval started;
};

struct vsess {
    struct vhost *h;
    struct vsess *next;
    struct bufferevent *bev;
    enum vs_state st;
    struct smtpc_reply rep;
    struct probe *cur;
    int random;                     /* this transaction tests a random local part */
    int random_code;
    long nprobes;                   /* probes begun on this session */
    size_t hi, ai;                  /* route host and address being tried */
    char peer[300];
};

struct vhost {
    struct vhost *next;
    char host[256];
    int port, fixed;
    struct dns_route *route;
    time_t route_time;
    int resolving;
    time_t down_until;
    double tokens;
    struct timeval refill;
    struct event *rate_ev;
    struct probe *qhead, *qtail;
    size_t qlen;
    struct vsess *sessions;
    size_t nsessions;
};

struct vclient {
    unsigned char key[17];          /* family, IPv4 address or IPv6 /64 */
    unsigned count;
    time_t window_start, throttled_until;
    struct vclient *hnext, *lprev, *lnext;
};

/* Probe latency buckets, seconds (Prometheus histogram). */
static const double hist_bounds[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 };
#define HIST_N (sizeof hist_bounds / sizeof hist_bounds[0])

static struct {
    struct event_base *base;
    struct dns *dns;
    struct dns_self *self;
    const struct conf *conf;
    struct verify_cache *cache;
    struct vhost *hosts;
    struct probe *probes;           /* in flight */
    struct verify_req *reqs;        /* live requests, answered at shutdown */
    const struct verify_shared *shared;
    void *shared_ctx;
    struct vclient *cbucket[VERIFY_CLIENT_BUCKETS];
    struct vclient *lru_head, *lru_tail;    /* head: most recently seen */
    size_t nclients;
    /* counters */
    uint64_t probes_n[3];           /* valid, invalid, unknown */
    uint64_t cache_hit, cache_miss, cache_stale, pending_n, throttled_n, learned_n;
    uint64_t hist[HIST_N + 1];
    double hist_sum;
    uint64_t hist_count;
    /* the sweep of expired records */
    struct event *sweep_ev;
    char sweep_after[VERIFY_KEY_MAX];       /* where the walk is */
    long sweep_deleted;                     /* by the sweep under way */
} V;

static void vhost_pump(struct vhost *h);
static void vs_next(struct vsess *s);
static void vs_close(struct vsess *s, int host_down, const char *why);
static void probe_finish(struct probe *p, enum verify_result r, const char *reply);

const char *verify_result_name(enum verify_result r)
{
    switch (r) {
    case VERIFY_VALID: return "valid";
    case VERIFY_INVALID: return "invalid";
    case VERIFY_UNKNOWN: return "unknown";
    case VERIFY_PENDING: return "pending";
    case VERIFY_THROTTLED: return "throttled";
    }
    return "unknown";
}

const char *verify_source_name(enum verify_source s)
{
    switch (s) {
    case VSRC_PROBE: return "probe";
    case VSRC_DELIVERY: return "delivery";
    case VSRC_SHARED: return "shared";
    }
    return "probe";
}

enum verify_age verify_entry_age(const struct conf *c, const struct verify_entry *e, time_t now)
{
    long expire = e->result == VERIFY_VALID || e->key[0] == '@' ? c->verify.positive_expire
                                                                 : c->verify.negative_expire;
    long refresh = e->result == VERIFY_VALID || e->key[0] == '@' ? c->verify.positive_refresh
                                                                  : c->verify.negative_refresh;
    int64_t age = (int64_t)now - e->learned;

    if (age >= expire)
        return VAGE_EXPIRED;
    return age >= refresh ? VAGE_STALE : VAGE_FRESH;
}

/* ------------------------------------------------------------------ */
/* Client throttle                                                     */
/* ------------------------------------------------------------------ */

/* The key: IPv4 exact, IPv6 its /64 (one host's many addresses). */
static int client_key(int family, const void *addr, unsigned char key[17])
{
    static const unsigned char v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

    memset(key, 0, 17);
    if (addr == NULL)
        return -1;
    if (family == AF_INET6 && memcmp(addr, v4mapped, sizeof v4mapped) == 0) {
        family = AF_INET;
        addr = (const unsigned char *)addr + sizeof v4mapped;
    }
    if (family == AF_INET) {
        key[0] = 4;
        memcpy(key + 1, addr, 4);
    } else if (family == AF_INET6) {
        key[0] = 6;
        memcpy(key + 1, addr, 8);
    } else {
        return -1;
    }
    return 0;
}

/* "192.0.2.1" or "2001:db8:1:2::/64", for the log. */
static void client_text(const unsigned char key[17], char *out, size_t len)
{
    unsigned char a6[16] = { 0 };

    if (key[0] == 4) {
        inet_ntop(AF_INET, key + 1, out, (socklen_t)len);
        return;
    }
    memcpy(a6, key + 1, 8);
    inet_ntop(AF_INET6, a6, out, (socklen_t)len);
    strncat(out, "/64", len - strlen(out) - 1);
}

static size_t client_hash(const unsigned char key[17])
{
    uint32_t h = 2166136261u;   /* FNV-1a */

    for (int i = 0; i < 17; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % VERIFY_CLIENT_BUCKETS;
}

static void lru_unlink(struct vclient *c)
{
    if (c->lprev)
        c->lprev->lnext = c->lnext;
    else
        V.lru_head = c->lnext;
    if (c->lnext)
        c->lnext->lprev = c->lprev;
    else
        V.lru_tail = c->lprev;
    c->lprev = c->lnext = NULL;
}

static void lru_front(struct vclient *c)
{
    c->lnext = V.lru_head;
    c->lprev = NULL;
    if (V.lru_head)
        V.lru_head->lprev = c;
    V.lru_head = c;
    if (V.lru_tail == NULL)
        V.lru_tail = c;
}

static void client_evict(struct vclient *c)
{
    struct vclient **pp = &V.cbucket[client_hash(c->key)];

    while (*pp && *pp != c)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = c->hnext;
    lru_unlink(c);
    free(c);
    V.nclients--;
}

static struct vclient *client_find(const unsigned char key[17], int create)
{
    size_t b = client_hash(key);
    struct vclient *c;

    for (c = V.cbucket[b]; c; c = c->hnext)
        if (memcmp(c->key, key, 17) == 0) {
            lru_unlink(c);
            lru_front(c);
            return c;
        }
    if (!create)
        return NULL;
    if (V.conf && V.nclients >= (size_t)V.conf->verify.clients && V.lru_tail)
        client_evict(V.lru_tail);
    if ((c = calloc(1, sizeof *c)) == NULL)
        return NULL;
    memcpy(c->key, key, 17);
    c->hnext = V.cbucket[b];
    V.cbucket[b] = c;
    lru_front(c);
    V.nclients++;
    return c;
}

void verify_note_unknown(int family, const void *client)
{
    unsigned char key[17];
    struct vclient *c;
    time_t now = time(NULL);

    if (V.conf == NULL || client_key(family, client, key) != 0 ||
        (c = client_find(key, 1)) == NULL)
        return;
    if (now - c->window_start >= V.conf->verify.unknown_penalty) {
        c->window_start = now;
        c->count = 0;
    }
    c->count++;
    if (c->count >= (unsigned)V.conf->verify.unknown_limit && c->throttled_until <= now) {
        char text[INET6_ADDRSTRLEN + 4];
        c->throttled_until = now + V.conf->verify.unknown_penalty;
        client_text(key, text, sizeof text);
        log_info("verify: client %s throttled for %ld s after %u unknown recipients", text,
                 V.conf->verify.unknown_penalty, c->count);
    }
}

int verify_client_throttled(int family, const void *client)
{
    unsigned char key[17];
    struct vclient *c;

    if (V.conf == NULL || client_key(family, client, key) != 0 ||
        (c = client_find(key, 0)) == NULL)
        return 0;
    return c->throttled_until > time(NULL);
}

static size_t clients_throttled(void)
{
    time_t now = time(NULL);
    size_t n = 0;

    for (struct vclient *c = V.lru_head; c; c = c->lnext)
        n += c->throttled_until > now;
    return n;
}

/* ------------------------------------------------------------------ */
/* Cache                                                               */
/* ------------------------------------------------------------------ */

static void cache_store(const char *key, enum verify_result r, enum verify_source src,
                        const char *reply, int64_t when, int share)
{
    struct verify_entry e;

    memset(&e, 0, sizeof e);
    snprintf(e.key, sizeof e.key, "%s", key);
    e.result = r;
    e.source = src;
    e.learned = when;
    snprintf(e.reply, sizeof e.reply, "%s", reply ? reply : "");
    if (vcache_put(V.cache, &e) != 0)
        log_warn("verify: cannot store the answer for %s in the cache", key);
    if (share && V.shared && V.shared->store)
        V.shared->store(V.shared_ctx, key, r, e.reply, (time_t)when);
}

/* Look key up: 1 usable (fresh or stale: *stale set), 0 none or expired. */
static int cache_answer(const char *key, struct verify_entry *e, int *stale)
{
    if (vcache_get(V.cache, key, e) != 1)
        return 0;
    enum verify_age a = verify_entry_age(V.conf, e, time(NULL));
    if (a == VAGE_EXPIRED)
        return 0;
    *stale = a == VAGE_STALE;
    return 1;
}

/* ------------------------------------------------------------------ */
/* Hosts                                                               */
/* ------------------------------------------------------------------ */

static struct vhost *vhost_get(const struct conf_domain *d)
{
    int port = d->primary ? d->primary_port : (int)V.conf->delivery.mx_port;
    struct vhost *h;

    for (h = V.hosts; h; h = h->next)
        if (h->port == port && h->fixed == d->primary_fixed &&
            strcasecmp(h->host, d->primary_host) == 0)
            return h;
    if ((h = calloc(1, sizeof *h)) == NULL)
        return NULL;
    snprintf(h->host, sizeof h->host, "%s", d->primary_host);
    h->port = port;
    h->fixed = d->primary_fixed;
    h->tokens = (double)V.conf->verify.rate;
    evutil_gettimeofday(&h->refill, NULL);
    h->next = V.hosts;
    V.hosts = h;
    return h;
}

static void vhost_on_rate(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    vhost_pump(arg);
}

/* Take one probe token: 1, or 0 with the rate timer armed. */
static int vhost_token(struct vhost *h)
{
    struct timeval now;
    double rate = (double)V.conf->verify.rate, el;

    evutil_gettimeofday(&now, NULL);
    el = (double)(now.tv_sec - h->refill.tv_sec) + (now.tv_usec - h->refill.tv_usec) / USEC;
    h->refill = now;
    if (el > 0)
        h->tokens += el * rate;
    if (h->tokens > rate)
        h->tokens = rate;
    if (h->tokens >= 1.0) {
        h->tokens -= 1.0;
        return 1;
    }
    if (h->rate_ev == NULL)
        h->rate_ev = evtimer_new(V.base, vhost_on_rate, h);
    if (h->rate_ev && !evtimer_pending(h->rate_ev, NULL)) {
        double wait = (1.0 - h->tokens) / rate;
        struct timeval tv = { (time_t)wait, (suseconds_t)((wait - (double)(time_t)wait) * USEC) + 1 };
        evtimer_add(h->rate_ev, &tv);
    }
    return 0;
}

static struct probe *vhost_dequeue(struct vhost *h)
{
    struct probe *p = h->qhead;

    if (p) {
        h->qhead = p->qnext;
        if (h->qhead == NULL)
            h->qtail = NULL;
        p->qnext = NULL;
        h->qlen--;
    }
    return p;
}

/* The primary is unreachable: every probe waiting for it is UNKNOWN, and
 * new ones are for verify.unreachable. */
static void vhost_down(struct vhost *h, const char *why)
{
    struct probe *p;

    h->down_until = time(NULL) + V.conf->verify.unreachable;
    log_info("verify: primary %s:%d unreachable (%s); unverified for %ld s", h->host, h->port,
             why, V.conf->verify.unreachable);
    while ((p = vhost_dequeue(h)) != NULL)
        probe_finish(p, VERIFY_UNKNOWN, NULL);
}

static void vhost_on_route(void *arg, const struct dns_route *r)
{
    struct vhost *h = arg;

    h->resolving = 0;
    if (r->status != DNS_OK) {
        vhost_down(h, r->why);
        return;
    }
    if (h->route == NULL && (h->route = malloc(sizeof *h->route)) == NULL) {
        vhost_down(h, "out of memory");
        return;
    }
    *h->route = *r;
    h->route_time = time(NULL);
    vhost_pump(h);
}

/* ------------------------------------------------------------------ */
/* Probe sessions: the state machine                                   */
/* ------------------------------------------------------------------ */

static void vs_set(struct vsess *s, enum vs_state st)
{
    if (st < VS_CONNECT || st >= VS_COUNT_)
        log_panic("verify: bad probe session state %d", (int)st);
    if (s->st != st)
        log_debug("verify %s: %s -> %s", s->peer, vs_names[s->st], vs_names[st]);
    s->st = st;
}

static void vs_send(struct vsess *s, enum vs_state st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void vs_send(struct vsess *s, enum vs_state st, const char *fmt, ...)
{
    va_list ap;
    struct evbuffer *out = bufferevent_get_output(s->bev);

    va_start(ap, fmt);
    evbuffer_add_vprintf(out, fmt, ap);
    va_end(ap);
    evbuffer_add(out, "\r\n", 2);
    smtpc_reply_init(&s->rep);
    vs_set(s, st);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

/* The reply line a client gets for an INVALID answer: the primary's code,
 * enhanced code (5.1.1 when it gave none) and text, on one line. */
static void invalid_reply(const struct smtpc_reply *r, char *out, size_t len)
{
    const char *text = r->len > 4 ? r->text + 4 : "";

    if (r->status[0] != '\0')
        snprintf(out, len, "%.*s", VERIFY_REPLY_MAX, r->text);
    else
        snprintf(out, len, "%d 5.1.1 %.*s", r->code, VERIFY_REPLY_MAX - 10, text);
}

static void random_local(char *out, size_t len)
{
    unsigned char b[VERIFY_RANDOM_OCTETS];
    size_t i, o = 0;

    if (getrandom(b, sizeof b, GRND_NONBLOCK) != (ssize_t)sizeof b)
        for (i = 0; i < sizeof b; i++)
            b[i] = (unsigned char)random();
    o = (size_t)snprintf(out, len, "mxkeep-verify-");
    for (i = 0; i < sizeof b && o + 2 < len; i++, o += 2)
        snprintf(out + o, len - o, "%02x", b[i]);
}

typedef void vs_reply_fn(struct vsess *s);

/*
 * Does the greeting name us?  A primary route that points back at this
 * node ([own address]:port, a NAT, a stale MX) would make every probe's
 * RCPT start another probe; Postfix's "mail for X loops back to myself"
 * check compares the same word.  The first word after "220 " or "220-".
 */
static int greets_as_us(const struct smtpc_reply *r)
{
    const char *w = r->text;
    size_t n;

    if (strlen(w) < 4)
        return 0;
    w += 4;
    n = strcspn(w, " \t\r\n");
    if (n == 0)
        return 0;
    if (strlen(V.conf->hostname) == n && strncasecmp(w, V.conf->hostname, n) == 0)
        return 1;
    for (size_t i = 0; i < V.conf->naliases; i++)
        if (strlen(V.conf->aliases[i]) == n && strncasecmp(w, V.conf->aliases[i], n) == 0)
            return 1;
    return 0;
}

static void on_greeting(struct vsess *s)
{
    if (s->rep.code != 220) {
        vs_close(s, 1, "greeting refused");
        return;
    }
    if (greets_as_us(&s->rep)) {
        /* host_down: the host is "unreachable" for a while and that line
         * carries the reason, once per `unreachable`, not once per RCPT. */
        vs_close(s, 1, "loops back to myself: the primary greets with our name");
        return;
    }
    vs_send(s, VS_EHLO, "EHLO %s", V.conf->hostname);
}

static void on_ehlo(struct vsess *s)
{
    if (s->rep.code == 250) {
        vs_set(s, VS_READY);
        vs_next(s);
    } else if (s->rep.code >= 500) {
        vs_send(s, VS_HELO, "HELO %s", V.conf->hostname);
    } else {
        vs_close(s, 1, "EHLO refused");
    }
}

static void on_helo(struct vsess *s)
{
    if (s->rep.code != 250) {
        vs_close(s, 1, "HELO refused");
        return;
    }
    vs_set(s, VS_READY);
    vs_next(s);
}

static void send_rcpt(struct vsess *s)
{
    vs_send(s, VS_RCPT, "RCPT TO:<%s>", s->cur->key);
}

static void on_mail(struct vsess *s)
{
    if (s->rep.code / 100 != 2) {
        /* A primary that refuses the null sender cannot be asked. */
        struct probe *p = s->cur;
        s->cur = NULL;
        probe_finish(p, VERIFY_UNKNOWN, NULL);
        vs_send(s, VS_RSET, "RSET");
        return;
    }
    if (s->random) {
        char local[64];
        random_local(local, sizeof local);
        vs_send(s, VS_RCPT_RANDOM, "RCPT TO:<%s@%s>", local, s->cur->domain);
        return;
    }
    send_rcpt(s);
}

static void on_rcpt_random(struct vsess *s)
{
    char dk[VERIFY_KEY_MAX];

    s->random_code = s->rep.code;
    snprintf(dk, sizeof dk, "@%s", s->cur->domain);
    if (s->rep.code / 100 == 2) {
        log_info("verify: %s accepts any local part of %s: catch-all", s->peer, s->cur->domain);
        cache_store(dk, VERIFY_VALID, VSRC_PROBE, "250 catch-all", time(NULL), 1);
    } else if (s->rep.code / 100 == 5) {
        char reply[512];
        invalid_reply(&s->rep, reply, sizeof reply);
        cache_store(dk, VERIFY_INVALID, VSRC_PROBE, reply, time(NULL), 1);
    }
    send_rcpt(s);
}

static void on_rcpt(struct vsess *s)
{
    struct probe *p = s->cur;
    char reply[512];

    s->cur = NULL;
    if (s->random && s->random_code / 100 == 2) {
        probe_finish(p, VERIFY_VALID, "250 catch-all");
    } else if (s->rep.code / 100 == 2) {
        snprintf(reply, sizeof reply, "%.*s", VERIFY_REPLY_MAX, s->rep.text);
        probe_finish(p, VERIFY_VALID, reply);
    } else if (s->rep.code / 100 == 5) {
        invalid_reply(&s->rep, reply, sizeof reply);
        probe_finish(p, VERIFY_INVALID, reply);
    } else {
        probe_finish(p, VERIFY_UNKNOWN, NULL);
    }
    vs_send(s, VS_RSET, "RSET");
}

static void on_rset(struct vsess *s)
{
    if (s->rep.code != 250) {
        vs_send(s, VS_QUIT, "QUIT");
        return;
    }
    vs_set(s, VS_READY);
    vs_next(s);
}

static void on_quit(struct vsess *s)
{
    vs_close(s, 0, NULL);
}

/* The command table: what a complete reply does in each state. */
static vs_reply_fn *const vs_table[VS_COUNT_] = {
    [VS_GREETING] = on_greeting,
    [VS_EHLO] = on_ehlo,
    [VS_HELO] = on_helo,
    [VS_MAIL] = on_mail,
    [VS_RCPT_RANDOM] = on_rcpt_random,
    [VS_RCPT] = on_rcpt,
    [VS_RSET] = on_rset,
    [VS_QUIT] = on_quit,
};

/* Ready: the next probe (token permitting), or QUIT when none waits. */
static void vs_next(struct vsess *s)
{
    struct vhost *h = s->h;

    while (s->st == VS_READY && h->qhead != NULL && s->nprobes < V.conf->verify.session_probes) {
        struct probe *p = h->qhead;
        struct verify_entry de;
        char dk[VERIFY_KEY_MAX];
        int stale = 0, known;

        snprintf(dk, sizeof dk, "@%s", p->domain);
        known = cache_answer(dk, &de, &stale);
        if (known && de.result == VERIFY_VALID && !stale) {
            /* Learned catch-all while this one waited: no probe needed. */
            vhost_dequeue(h);
            probe_finish(p, VERIFY_VALID, "250 catch-all");
            continue;
        }
        if (!vhost_token(h)) {
            /* Wait for a token without a read timeout (at most 1/rate s). */
            bufferevent_disable(s->bev, EV_READ);
            return;
        }
        s->cur = vhost_dequeue(h);
        s->nprobes++;
        s->random = !known || stale;
        s->random_code = 0;
        vs_send(s, VS_MAIL, "MAIL FROM:<>");
        return;
    }
    if (s->st == VS_READY)
        vs_send(s, VS_QUIT, "QUIT");
}

static void vs_free(struct vsess *s)
{
    struct vhost *h = s->h;
    struct vsess **pp = &h->sessions;

    while (*pp && *pp != s)
        pp = &(*pp)->next;
    if (*pp)
        *pp = s->next;
    h->nsessions--;
    if (s->bev)
        bufferevent_free(s->bev);
    free(s);
}

/* End the session.  host_down: the primary could not be talked to. */
static void vs_close(struct vsess *s, int host_down, const char *why)
{
    struct vhost *h = s->h;
    struct probe *p = s->cur;

    if (why)
        log_debug("verify %s: closed in %s: %s", s->peer, vs_names[s->st], why);
    vs_set(s, VS_CLOSED);
    s->cur = NULL;
    vs_free(s);
    if (p)
        probe_finish(p, VERIFY_UNKNOWN, NULL);
    if (host_down)
        vhost_down(h, why ? why : "no answer");
    else
        vhost_pump(h);
}

static void vs_on_read(struct bufferevent *bev, void *arg)
{
    struct vsess *s = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    for (;;) {
        size_t len;
        char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
        enum smtpc_reply_result rr;
        enum vs_state st = s->st;

        if (line == NULL) {
            if (evbuffer_get_length(in) > VERIFY_LINE_MAX)
                vs_close(s, 0, "reply line too long");
            return;
        }
        rr = smtpc_reply_line(&s->rep, line, len, NULL);
        free(line);
        if (rr == SMTPC_REPLY_MORE)
            continue;
        if (rr != SMTPC_REPLY_DONE || vs_table[st] == NULL) {
            vs_close(s, st <= VS_HELO, "malformed or unexpected reply");
            return;
        }
        if (s->rep.code == 421 && st != VS_QUIT) {
            vs_close(s, st <= VS_HELO, "421 from the primary");
            return;
        }
        /* The handler either sent the next command (one at a time: no
         * pipelining, so nothing more can be waiting) or closed and freed
         * s: either way, read no further here. */
        vs_table[st](s);
        return;
    }
}

static void vs_connect_next(struct vsess *s);

static void vs_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct vsess *s = arg;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        vs_set(s, VS_GREETING);
        smtpc_reply_init(&s->rep);
        bufferevent_enable(s->bev, EV_READ);
        return;
    }
    if (s->st == VS_CONNECT) {
        /* This address failed: try the next one of the route. */
        bufferevent_free(s->bev);
        s->bev = NULL;
        s->ai++;
        vs_connect_next(s);
        return;
    }
    if (s->st == VS_QUIT) {
        vs_close(s, 0, NULL);
        return;
    }
    vs_close(s, s->st == VS_GREETING,
             (what & BEV_EVENT_TIMEOUT) ? "timeout" : (what & BEV_EVENT_EOF) ? "connection closed"
                                                                            : "connection error");
}

static void vs_connect_next(struct vsess *s)
{
    const struct dns_route *r = s->h->route;
    struct timeval tv = { V.conf->verify.probe_timeout, 0 };

    while (r && s->hi < r->nhosts) {
        const struct dns_host *dh = &r->hosts[s->hi];
        if (s->ai >= dh->naddr) {
            s->hi++;
            s->ai = 0;
            continue;
        }
        s->bev = bufferevent_socket_new(V.base, -1, BEV_OPT_CLOSE_ON_FREE);
        if (s->bev == NULL)
            break;
        snprintf(s->peer, sizeof s->peer, "%s:%d", dh->name, s->h->port);
        bufferevent_setcb(s->bev, vs_on_read, NULL, vs_on_event, s);
        bufferevent_set_timeouts(s->bev, &tv, &tv);
        bufferevent_setwatermark(s->bev, EV_READ, 0, VERIFY_LINE_MAX * 2);
        if (bufferevent_socket_connect(s->bev, (const struct sockaddr *)&dh->addr[s->ai],
                                       (int)dh->addrlen[s->ai]) == 0)
            return;
        /* Refused at once: the event callback may not run; next address. */
        bufferevent_free(s->bev);
        s->bev = NULL;
        s->ai++;
    }
    vs_close(s, 1, "connection failed");
}

static void vs_start(struct vhost *h)
{
    struct vsess *s = calloc(1, sizeof *s);

    if (s == NULL)
        return;
    s->h = h;
    s->st = VS_CONNECT;
    snprintf(s->peer, sizeof s->peer, "%s:%d", h->host, h->port);
    s->next = h->sessions;
    h->sessions = s;
    h->nsessions++;
    vs_connect_next(s);
}

/* Give waiting probes to ready sessions, start sessions up to the bound. */
static void vhost_pump(struct vhost *h)
{
    size_t unready = 0;
    time_t now = time(NULL);
    struct vsess *s, *sn;

    if (h->qhead == NULL || V.conf == NULL)
        return;
    if (h->route == NULL || now - h->route_time > VERIFY_ROUTE_TTL) {
        if (h->nsessions == 0 && !h->resolving) {
            h->resolving = 1;
            if (dns_route(V.dns, h->host, h->port, h->fixed, V.self, vhost_on_route, h) != 0) {
                h->resolving = 0;
                vhost_down(h, "out of memory resolving");
            }
            return;
        }
        if (h->route == NULL)
            return;
    }
    for (s = h->sessions; s && h->qhead; s = sn) {
        sn = s->next;
        if (s->st == VS_READY && s->cur == NULL)
            vs_next(s);
        else if (s->st < VS_READY)
            unready++;
    }
    while (h->qhead && h->nsessions < (size_t)V.conf->verify.sessions && unready < h->qlen) {
        vs_start(h);
        unready++;
        if (h->down_until > now)
            break;
    }
}

/* ------------------------------------------------------------------ */
/* Probes and requests                                                 */
/* ------------------------------------------------------------------ */

static void req_free(struct verify_req *r)
{
    if (r == NULL)
        return;
    if (r->lprev)
        r->lprev->lnext = r->lnext;
    else if (V.reqs == r)
        V.reqs = r->lnext;
    if (r->lnext)
        r->lnext->lprev = r->lprev;
    if (r->wait_ev)
        event_free(r->wait_ev);
    free(r);
}

static void req_detach(struct verify_req *r)
{
    struct verify_req **pp;

    if (r->p == NULL)
        return;
    for (pp = &r->p->waiters; *pp && *pp != r; pp = &(*pp)->next)
        ;
    if (*pp)
        *pp = r->next;
    r->p = NULL;
}

static void req_answer(struct verify_req *r, enum verify_result res, const char *reply,
                       int from_cache)
{
    struct verify_answer a;

    memset(&a, 0, sizeof a);
    a.result = res;
    a.from_cache = from_cache;
    if (reply && res == VERIFY_INVALID)
        snprintf(a.reply, sizeof a.reply, "%s", reply);
    req_detach(r);
    if (r->shared_handle && V.shared && V.shared->lookup_cancel)
        V.shared->lookup_cancel(V.shared_ctx, r->shared_handle);
    r->shared_handle = NULL;
    verify_cb *cb = r->cb;
    void *arg = r->arg;
    req_free(r);
    cb(arg, &a);
}

static void probe_unlink(struct probe *p)
{
    if (p->aprev)
        p->aprev->anext = p->anext;
    else if (V.probes == p)
        V.probes = p->anext;
    if (p->anext)
        p->anext->aprev = p->aprev;
}

static void hist_observe(double secs)
{
    size_t i;

    for (i = 0; i < HIST_N && secs > hist_bounds[i]; i++)
        ;
    V.hist[i]++;
    V.hist_sum += secs;
    V.hist_count++;
}

/* The probe's answer: counted, cached (VALID/INVALID only), given to every
 * waiter; p is freed. */
static void probe_finish(struct probe *p, enum verify_result r, const char *reply)
{
    struct timeval now;

    evutil_gettimeofday(&now, NULL);
    V.probes_n[r == VERIFY_VALID ? 0 : r == VERIFY_INVALID ? 1 : 2]++;
    if (p->started.tv_sec != 0)
        hist_observe((double)(now.tv_sec - p->started.tv_sec) +
                     (now.tv_usec - p->started.tv_usec) / USEC);
    log_info("verify: %s: %s%s%s", p->key, verify_result_name(r), reply ? ": " : "",
             reply ? reply : "");
    if (r == VERIFY_VALID || r == VERIFY_INVALID)
        cache_store(p->key, r, VSRC_PROBE, reply, (int64_t)now.tv_sec, 1);
    probe_unlink(p);
    while (p->waiters)
        req_answer(p->waiters, r, reply, 0);
    free(p);
}

static void req_on_wait(evutil_socket_t fd, short what, void *arg)
{
    struct verify_req *r = arg;

    (void)fd;
    (void)what;
    V.pending_n++;
    req_answer(r, VERIFY_PENDING, NULL, 0);
}

/* Attach r (may be NULL) to the probe of key (one in flight per address),
 * queueing a new one on h.  0; -1 queue full or out of memory; -2 the
 * probe was answered at once (primary unreachable).  r is attached only
 * on 0, so no callback runs inside the caller's call. */
static int probe_attach(struct vhost *h, const char *key, struct verify_req *r)
{
    struct probe *p;

    for (p = V.probes; p; p = p->anext)
        if (strcmp(p->key, key) == 0)
            break;
    if (p == NULL) {
        if (h->qlen >= VERIFY_QUEUE_MAX || (p = calloc(1, sizeof *p)) == NULL)
            return -1;
        p->h = h;
        snprintf(p->key, sizeof p->key, "%s", key);
        p->domain = strchr(p->key, '@');
        p->domain = p->domain ? p->domain + 1 : p->key;
        evutil_gettimeofday(&p->started, NULL);
        p->anext = V.probes;
        if (V.probes)
            V.probes->aprev = p;
        V.probes = p;
        if (h->qtail)
            h->qtail->qnext = p;
        else
            h->qhead = p;
        h->qtail = p;
        h->qlen++;
        vhost_pump(h);
        /* The pump may have answered it at once (primary down). */
        for (struct probe *q = V.probes; q; q = q->anext)
            if (q == p)
                goto alive;
        return -2;
    }
alive:
    if (r) {
        r->p = p;
        r->next = p->waiters;
        p->waiters = r;
    }
    return 0;
}

/* A background refresh: a probe nobody waits for. */
static void probe_refresh(const struct conf_domain *d, const char *key)
{
    struct vhost *h;

    if (d == NULL || (h = vhost_get(d)) == NULL || h->down_until > time(NULL))
        return;
    probe_attach(h, key, NULL);
}

static struct verify_req *req_new(const char *key, verify_cb *cb, void *arg, long wait)
{
    struct verify_req *r = calloc(1, sizeof *r);

    if (r == NULL)
        return NULL;
    snprintf(r->key, sizeof r->key, "%s", key);
    r->cb = cb;
    r->arg = arg;
    r->lnext = V.reqs;
    if (V.reqs)
        V.reqs->lprev = r;
    V.reqs = r;
    if (wait > 0) {
        struct timeval tv = { wait, 0 };
        r->wait_ev = evtimer_new(V.base, req_on_wait, r);
        if (r->wait_ev == NULL) {
            req_free(r);
            return NULL;
        }
        evtimer_add(r->wait_ev, &tv);
    }
    return r;
}

/* Start the probe of r->key for domain d: probe_attach's answer. */
static int req_probe(struct verify_req *r, const struct conf_domain *d)
{
    struct vhost *h = vhost_get(d);

    return h ? probe_attach(h, r->key, r) : -1;
}

static void shared_on_lookup(void *arg, int found, enum verify_result res, const char *reply,
                             time_t when)
{
    struct verify_req *r = arg;
    time_t now = time(NULL);

    r->shared_handle = NULL;
    if (found && (res == VERIFY_VALID || res == VERIFY_INVALID)) {
        struct verify_entry e;
        memset(&e, 0, sizeof e);
        snprintf(e.key, sizeof e.key, "%s", r->key);
        e.result = res;
        e.learned = (int64_t)when;
        if (verify_entry_age(V.conf, &e, now) != VAGE_EXPIRED) {
            cache_store(r->key, res, VSRC_SHARED, reply, (int64_t)when, 0);
            req_answer(r, res, reply, 1);
            return;
        }
    }
    const struct conf_domain *d = conf_domain_find(V.conf, strchr(r->key, '@') + 1);
    if (d == NULL || req_probe(r, d) != 0)
        req_answer(r, VERIFY_UNKNOWN, NULL, 0);
}

struct verify_req *verify_rcpt(const struct conf_domain *d, const char *addr, int family,
                               const void *client, struct verify_answer *now,
                               verify_cb *cb, void *arg)
{
    char key[VERIFY_KEY_MAX], dk[VERIFY_KEY_MAX];
    struct verify_entry e;
    struct verify_req *r;
    struct vhost *h;
    int stale = 0;

    memset(now, 0, sizeof *now);
    now->result = VERIFY_UNKNOWN;
    if (V.conf == NULL || d == NULL || vcache_key(addr, key) != 0 || strchr(key, '@') == NULL)
        return NULL;
    if (verify_client_throttled(family, client)) {
        V.throttled_n++;
        now->result = VERIFY_THROTTLED;
        return NULL;
    }
    snprintf(dk, sizeof dk, "@%s", strchr(key, '@') + 1);
    if (cache_answer(dk, &e, &stale) && e.result == VERIFY_VALID) {
        /* Catch-all: one record answers for every address. */
        if (stale) {
            V.cache_stale++;
            probe_refresh(d, key);
        } else {
            V.cache_hit++;
        }
        now->result = VERIFY_VALID;
        now->from_cache = 1;
        return NULL;
    }
    if (cache_answer(key, &e, &stale)) {
        if (stale) {
            V.cache_stale++;
            probe_refresh(d, key);
        } else {
            V.cache_hit++;
        }
        now->result = e.result;
        now->from_cache = 1;
        if (e.result == VERIFY_INVALID)
            snprintf(now->reply, sizeof now->reply, "%s", e.reply);
        return NULL;
    }
    V.cache_miss++;
    if ((h = vhost_get(d)) == NULL || h->down_until > time(NULL))
        return NULL;        /* UNKNOWN at once: the primary was just unreachable */
    if ((r = req_new(key, cb, arg, V.conf->verify.reply_wait)) == NULL)
        return NULL;
    if (V.shared && V.shared->lookup) {
        r->shared_handle = V.shared->lookup(V.shared_ctx, key, shared_on_lookup, r);
        if (r->shared_handle != NULL)
            return r;
    }
    /* Not attached when the probe could not start (queue full) or was
     * answered at once (primary unreachable): r is still ours, UNKNOWN. */
    if (req_probe(r, d) == 0)
        return r;
    req_free(r);
    return NULL;
}

void verify_cancel(struct verify_req *r)
{
    if (r == NULL)
        return;
    req_detach(r);
    if (r->shared_handle && V.shared && V.shared->lookup_cancel)
        V.shared->lookup_cancel(V.shared_ctx, r->shared_handle);
    req_free(r);
}

struct verify_req *verify_probe(const char *addr, verify_cb *cb, void *arg, char *err,
                                size_t errlen)
{
    char key[VERIFY_KEY_MAX];
    const struct conf_domain *d;
    struct verify_req *r;
    struct vhost *h;
    int rc;

    if (V.conf == NULL) {
        snprintf(err, errlen, "verification is not running");
        return NULL;
    }
    if (vcache_key(addr, key) != 0 || strchr(key, '@') == NULL) {
        snprintf(err, errlen, "not an address");
        return NULL;
    }
    if ((d = conf_domain_find(V.conf, strchr(key, '@') + 1)) == NULL) {
        snprintf(err, errlen, "not a served domain");
        return NULL;
    }
    if ((h = vhost_get(d)) == NULL || (r = req_new(key, cb, arg, 0)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->down_until = 0;      /* asked to probe: try, whatever the last failure */
    rc = probe_attach(h, key, r);
    if (rc == 0)
        return r;
    req_free(r);
    snprintf(err, errlen, rc == -2 ? "primary unreachable" : "probe queue full");
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Delivery outcomes                                                   */
/* ------------------------------------------------------------------ */

void verify_learn(const char *addr, int code, const char *enhanced, const char *reply)
{
    char key[VERIFY_KEY_MAX];
    const struct conf_domain *d;
    const char *at;

    /* Only domains that verify: a flush of another domain's backlog
     * costs no cache writes. */
    if (V.cache == NULL || vcache_key(addr, key) != 0 || (at = strchr(key, '@')) == NULL ||
        (d = conf_domain_find(V.conf, at + 1)) == NULL || d->verify != VERIFY_CALLOUT)
        return;
    if (code / 100 == 2) {
        cache_store(key, VERIFY_VALID, VSRC_DELIVERY, reply, (int64_t)time(NULL), 1);
        V.learned_n++;
    } else if (code / 100 == 5 && enhanced && strncmp(enhanced, "5.1.", 4) == 0) {
        char line[512];
        if (reply && strncmp(reply, "5", 1) == 0)
            snprintf(line, sizeof line, "%.*s", VERIFY_REPLY_MAX, reply);
        else
            snprintf(line, sizeof line, "%d %s %.*s", code, enhanced, VERIFY_REPLY_MAX - 16,
                     reply ? reply : "");
        cache_store(key, VERIFY_INVALID, VSRC_DELIVERY, line, (int64_t)time(NULL), 1);
        V.learned_n++;
    }
}

/* ------------------------------------------------------------------ */
/* Administration                                                      */
/* ------------------------------------------------------------------ */

int verify_show(const char *addr, struct verify_entry *e)
{
    char key[VERIFY_KEY_MAX], dk[VERIFY_KEY_MAX];
    const char *at;
    int rc;

    if (V.cache == NULL || vcache_key(addr, key) != 0)
        return -1;
    if ((rc = vcache_get(V.cache, key, e)) != 0 || (at = strchr(key, '@')) == NULL || at == key)
        return rc;
    /* A domain's record answers for its addresses only when catch-all. */
    snprintf(dk, sizeof dk, "%s", at);
    if ((rc = vcache_get(V.cache, dk, e)) == 1 && e->result != VERIFY_VALID)
        return 0;
    return rc;
}

int verify_list(const char *domain, int (*fn)(void *arg, const struct verify_entry *e), void *arg)
{
    return V.cache ? vcache_each(V.cache, domain, fn, arg) : -1;
}

long verify_forget(const char *key_or_domain)
{
    char key[VERIFY_KEY_MAX];
    long n;

    if (V.cache == NULL || vcache_key(key_or_domain, key) != 0)
        return -1;
    n = vcache_forget(V.cache, key);
    if (n >= 0 && V.shared && V.shared->forget)
        V.shared->forget(V.shared_ctx, key);
    return n;
}

void verify_set_shared(const struct verify_shared *ops, void *ctx)
{
    V.shared = ops;
    V.shared_ctx = ctx;
}

void verify_metrics(struct evbuffer *b)
{
    static const char *const pr[3] = { "valid", "invalid", "unknown" };
    uint64_t cum = 0;
    size_t i;

    evbuffer_add_printf(b, "# HELP mxkeep_verify_probes_total Recipient callouts to primaries by result\n"
                           "# TYPE mxkeep_verify_probes_total counter\n");
    for (i = 0; i < 3; i++)
        evbuffer_add_printf(b, "mxkeep_verify_probes_total{result=\"%s\"} %" PRIu64 "\n", pr[i],
                            V.probes_n[i]);
    evbuffer_add_printf(b, "# HELP mxkeep_verify_cache_total Verification cache lookups\n"
                           "# TYPE mxkeep_verify_cache_total counter\n"
                           "mxkeep_verify_cache_total{result=\"hit\"} %" PRIu64 "\n"
                           "mxkeep_verify_cache_total{result=\"miss\"} %" PRIu64 "\n"
                           "mxkeep_verify_cache_total{result=\"stale\"} %" PRIu64 "\n",
                        V.cache_hit, V.cache_miss, V.cache_stale);
    evbuffer_add_printf(b, "# HELP mxkeep_verify_pending_total Answers of verification in progress (reply_wait passed)\n"
                           "# TYPE mxkeep_verify_pending_total counter\n"
                           "mxkeep_verify_pending_total %" PRIu64 "\n"
                           "# HELP mxkeep_verify_throttled_total Recipients refused unprobed to throttled clients\n"
                           "# TYPE mxkeep_verify_throttled_total counter\n"
                           "mxkeep_verify_throttled_total %" PRIu64 "\n"
                           "# HELP mxkeep_verify_learned_total Answers learned from delivery outcomes\n"
                           "# TYPE mxkeep_verify_learned_total counter\n"
                           "mxkeep_verify_learned_total %" PRIu64 "\n",
                        V.pending_n, V.throttled_n, V.learned_n);
    evbuffer_add_printf(b, "# HELP mxkeep_verify_probe_seconds Callout latency, queueing included\n"
                           "# TYPE mxkeep_verify_probe_seconds histogram\n");
    for (i = 0; i < HIST_N; i++) {
        cum += V.hist[i];
        evbuffer_add_printf(b, "mxkeep_verify_probe_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
                            hist_bounds[i], cum);
    }
    cum += V.hist[HIST_N];
    evbuffer_add_printf(b, "mxkeep_verify_probe_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n"
                           "mxkeep_verify_probe_seconds_sum %.6f\n"
                           "mxkeep_verify_probe_seconds_count %" PRIu64 "\n",
                        cum, V.hist_sum, V.hist_count);
    evbuffer_add_printf(b, "# HELP mxkeep_verify_throttled_clients Client addresses throttled now\n"
                           "# TYPE mxkeep_verify_throttled_clients gauge\n"
                           "mxkeep_verify_throttled_clients %zu\n",
                        clients_throttled());
}

/* ------------------------------------------------------------------ */
/* The sweep                                                           */
/* ------------------------------------------------------------------ */

static int sweep_expired(void *arg, const struct verify_entry *e)
{
    return verify_entry_age(V.conf, e, *(const time_t *)arg) == VAGE_EXPIRED;
}

/* One step of the sweep; the next step in the next loop pass, the next
 * sweep VERIFY_SWEEP_EVERY after the end of this one.  An error ends the
 * sweep early (logged); the next one starts over. */
static void sweep_step(evutil_socket_t fd, short what, void *arg)
{
    time_t now = time(NULL);
    int done = 0;
    struct timeval tv = { 0, 0 };
    (void)fd;
    (void)what;
    (void)arg;
    long n = vcache_sweep(V.cache, sweep_expired, &now, V.sweep_after, VERIFY_SWEEP_STEP, &done);
    if (n < 0) {
        log_warn("verify: sweeping the cache of expired answers failed; again in %d s",
                 VERIFY_SWEEP_EVERY);
        done = 1;
    } else {
        V.sweep_deleted += n;
    }
    if (done) {
        if (V.sweep_deleted > 0)
            log_info("verify: %ld expired cache record%s removed", V.sweep_deleted,
                     V.sweep_deleted == 1 ? "" : "s");
        V.sweep_deleted = 0;
        V.sweep_after[0] = '\0';
        tv.tv_sec = VERIFY_SWEEP_EVERY;
    }
    evtimer_add(V.sweep_ev, &tv);
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                          */
/* ------------------------------------------------------------------ */

int verify_init(struct event_base *base, struct dns *dns, const struct conf *c, char *err,
                size_t errlen)
{
    char dir[VERIFY_PATH_MAX];

    if ((size_t)snprintf(dir, sizeof dir, "%s/%s", c->spool, VERIFY_DIR) >= sizeof dir) {
        snprintf(err, errlen, "spool path too long");
        return -1;
    }
    V.cache = vcache_open(dir, (size_t)c->verify.map_size, 0, err, errlen);
    if (V.cache == NULL)
        return -1;
    V.base = base;
    V.dns = dns;
    if (verify_reload(c) != 0 || (V.sweep_ev = evtimer_new(base, sweep_step, NULL)) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct timeval first = { VERIFY_SWEEP_FIRST, 0 };
    evtimer_add(V.sweep_ev, &first);
    return 0;
}

int verify_reload(const struct conf *c)
{
    struct dns_self *self = dns_self_new(c);

    if (self == NULL)
        return -1;
    dns_self_free(V.self);
    V.self = self;
    conf_ref(c);
    conf_free(V.conf);
    V.conf = c;
    return 0;
}

void verify_shutdown(void)
{
    struct vhost *h, *hn;
    struct vclient *cl, *cn;

    /* Waiters are answered UNKNOWN: their owners are going away too, but
     * a callback is the only way to tell them their handle is gone. */
    for (h = V.hosts; h; h = hn) {
        struct probe *p;
        hn = h->next;
        while (h->sessions) {
            struct vsess *s = h->sessions;
            p = s->cur;
            s->cur = NULL;
            vs_free(s);
            if (p)
                probe_finish(p, VERIFY_UNKNOWN, NULL);
        }
        while ((p = vhost_dequeue(h)) != NULL)
            probe_finish(p, VERIFY_UNKNOWN, NULL);
        if (h->rate_ev)
            event_free(h->rate_ev);
        free(h->route);
        free(h);
    }
    V.hosts = NULL;
    while (V.reqs)          /* those still asking the shared store */
        req_answer(V.reqs, VERIFY_UNKNOWN, NULL, 0);
    for (cl = V.lru_head; cl; cl = cn) {
        cn = cl->lnext;
        free(cl);
    }
    memset(V.cbucket, 0, sizeof V.cbucket);
    V.lru_head = V.lru_tail = NULL;
    V.nclients = 0;
    if (V.sweep_ev != NULL)
        event_free(V.sweep_ev);
    V.sweep_ev = NULL;
    vcache_close(V.cache);
    V.cache = NULL;
    dns_self_free(V.self);
    V.self = NULL;
    conf_free(V.conf);
    V.conf = NULL;
}
