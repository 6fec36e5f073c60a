/*
 * heartbeat.c - the gate of `accept = "when-primary-down"` domains
 * (heartbeat.h): a light check of each gated primary host, and the gate
 * state it feeds.
 *
 * What it does: for each distinct primary host of a gated domain, every
 * delivery.heartbeat, resolves the primary as delivery does (dns_route:
 * fixed route or MX lookup with self-detection) and runs one check
 * session: connect, 220 greeting, EHLO (HELO after a 5xx), QUIT.  The
 * session is an explicit state machine (enum hb_state, hs_set() logs every
 * transition, one reply handler per state in hs_table); replies go through
 * smtpc.c's pure parser.  Its outcome, and delivery's own (heartbeat_note),
 * drive the host's gate (enum gate_state), changed only by gate_set(),
 * which logs old -> new.
 *
 * Owns: the hosts, their timers, the check sessions, the counters.
 * Borrows the event base and dns; holds a reference on the conf.
 *
 * Must never: block the loop (the RCPT lookup is an in-memory read); send
 * anything but EHLO/HELO and QUIT; run more than one check per host at a
 * time; refuse a domain that is not gated, or one whose state is unknown,
 * down or stale.
 *
 * Security: the primary's replies are bounded (HEARTBEAT_LINE_MAX per line,
 * the parser's own bound on a reply) and only their codes are used.
 */
#include "config.h"
#include "heartbeat.h"

#include "dns.h"
#include "log.h"
#include "smtpc.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#define HEARTBEAT_ROUTE_TTL 300         /* seconds a resolved route is reused, as delivery */
#define HEARTBEAT_LINE_MAX  4096        /* longest reply line taken from a primary */

static const char *const gate_names[GATE_COUNT_] = { "unknown", "up", "down", "stale" };

const char *gate_state_name(enum gate_state s)
{
    return (s >= GATE_UNKNOWN && s < GATE_COUNT_) ? gate_names[s] : "invalid";
}

/* One check session. */
enum hb_state {
    HS_IDLE = 0,        /* no check running */
    HS_RESOLVING,       /* dns_route pending */
    HS_CONNECT,         /* TCP connect in progress */
    HS_GREETING,        /* waiting for 220 */
    HS_EHLO,
    HS_HELO,
    HS_QUIT,            /* answered: QUIT sent, waiting for 221 or close */
    HS_COUNT_
};

static const char *const hs_names[HS_COUNT_] = {
    "idle", "resolving", "connect", "greeting", "ehlo", "helo", "quit",
};

struct hbhost {
    struct hbhost *next;
    char host[256];
    int port, fixed;
    int used;                       /* still gated after a reload */
    enum gate_state gate;
    time_t since;                   /* when gate was entered */
    time_t last_answer;             /* last heartbeat or delivery answer, 0 none */
    int fails;                      /* failed answers in a row */
    uint64_t checks_ok, checks_failed;
    struct event *tick;
    /* the check session */
    enum hb_state st;
    struct bufferevent *bev;
    struct smtpc_reply rep;
    struct dns_route *route;
    time_t route_time;
    size_t hi, ai;                  /* route host and address being tried */
    char peer[300];
};

static struct {
    struct event_base *base;
    struct dns *dns;
    struct dns_self *self;
    const struct conf *conf;
    struct hbhost *hosts;
} H;

static void hs_start(struct hbhost *h);
static void hs_end(struct hbhost *h, int up, const char *why);

/* ------------------------------------------------------------------ */
/* The gate                                                            */
/* ------------------------------------------------------------------ */

/* The one place a gate changes. */
static void gate_set(struct hbhost *h, enum gate_state to, const char *why)
{
    if (to < GATE_UNKNOWN || to >= GATE_COUNT_)
        log_panic("heartbeat: bad gate state %d", (int)to);
    if (h->gate == to)
        return;
    log_info("gate %s:%d: %s -> %s (%s)", h->host, h->port, gate_names[h->gate], gate_names[to],
             why);
    h->gate = to;
    h->since = time(NULL);
}

/* An answer: up after one success, down after HEARTBEAT_DOWN_AFTER
 * failures in a row; a failure short of that keeps the state. */
static void gate_answer(struct hbhost *h, int up, const char *why)
{
    h->last_answer = time(NULL);
    if (up) {
        h->fails = 0;
        gate_set(h, GATE_UP, why);
        return;
    }
    if (++h->fails >= HEARTBEAT_DOWN_AFTER)
        gate_set(h, GATE_DOWN, why);
}

/* Stale: no answer at all (success or failure) for heartbeat_stale, e.g.
 * a check that hangs.  An UNKNOWN host stays UNKNOWN: both accept. */
static void gate_check_stale(struct hbhost *h, time_t now)
{
    if (H.conf == NULL || h->gate == GATE_UNKNOWN || h->gate == GATE_STALE)
        return;
    if (h->last_answer != 0 && now - h->last_answer > H.conf->delivery.heartbeat_stale)
        gate_set(h, GATE_STALE, "no heartbeat answer");
}

static int domain_port(const struct conf_domain *d)
{
    return d->primary ? d->primary_port : (int)H.conf->delivery.mx_port;
}

static struct hbhost *host_find(const struct conf_domain *d)
{
    int port = domain_port(d);

    for (struct hbhost *h = H.hosts; h; h = h->next)
        if (h->port == port && h->fixed == d->primary_fixed &&
            strcasecmp(h->host, d->primary_host) == 0)
            return h;
    return NULL;
}

int heartbeat_gate(const struct conf_domain *d, enum gate_state *state, time_t *since)
{
    struct hbhost *h = NULL;

    if (d != NULL && d->accept == ACCEPT_WHEN_PRIMARY_DOWN && H.conf != NULL)
        h = host_find(d);
    if (h == NULL) {
        if (state)
            *state = GATE_UNKNOWN;
        if (since)
            *since = 0;
        return 0;
    }
    gate_check_stale(h, time(NULL));
    if (state)
        *state = h->gate;
    if (since)
        *since = h->since;
    return h->gate == GATE_UP;
}

int heartbeat_gate_name(const char *domain, enum gate_state *state, time_t *since)
{
    const struct conf_domain *d;

    if (H.conf == NULL || (d = conf_domain_find(H.conf, domain)) == NULL ||
        d->accept != ACCEPT_WHEN_PRIMARY_DOWN)
        return -1;
    heartbeat_gate(d, state, since);
    return 0;
}

void heartbeat_note(const char *domain, int up)
{
    const struct conf_domain *d;
    struct hbhost *h;

    /* Any served domain routed to a gated primary host tells about that
     * host, gated itself or not. */
    if (H.conf == NULL || (d = conf_domain_find(H.conf, domain)) == NULL ||
        (h = host_find(d)) == NULL || !h->used)
        return;
    gate_answer(h, up, up ? "delivery session" : "delivery connect failed");
}

/* ------------------------------------------------------------------ */
/* The check session: the state machine                                */
/* ------------------------------------------------------------------ */

static void hs_set(struct hbhost *h, enum hb_state st)
{
    if (st < HS_IDLE || st >= HS_COUNT_)
        log_panic("heartbeat: bad check state %d", (int)st);
    if (h->st != st)
        log_debug("heartbeat %s: %s -> %s", h->peer, hs_names[h->st], hs_names[st]);
    h->st = st;
}

static void hs_send(struct hbhost *h, enum hb_state st, const char *cmd)
{
    struct evbuffer *out = bufferevent_get_output(h->bev);

    evbuffer_add_printf(out, "%s\r\n", cmd);
    smtpc_reply_init(&h->rep);
    hs_set(h, st);
    bufferevent_enable(h->bev, EV_READ | EV_WRITE);
}

static void hs_send_hello(struct hbhost *h, enum hb_state st, const char *verb)
{
    char cmd[300];

    snprintf(cmd, sizeof cmd, "%s %s", verb, H.conf->hostname);
    hs_send(h, st, cmd);
}

typedef void hs_reply_fn(struct hbhost *h);

static void on_greeting(struct hbhost *h)
{
    if (h->rep.code != 220) {
        hs_end(h, 0, "greeting refused");
        return;
    }
    hs_send_hello(h, HS_EHLO, "EHLO");
}

/* The primary greeted and answered hello: it is up.  The answer is taken
 * now; QUIT is only politeness. */
static void hs_answered(struct hbhost *h)
{
    h->checks_ok++;
    gate_answer(h, 1, "heartbeat answered");
    hs_send(h, HS_QUIT, "QUIT");
}

static void on_ehlo(struct hbhost *h)
{
    if (h->rep.code == 250)
        hs_answered(h);
    else if (h->rep.code >= 500)
        hs_send_hello(h, HS_HELO, "HELO");
    else
        hs_end(h, 0, "EHLO refused");
}

static void on_helo(struct hbhost *h)
{
    if (h->rep.code != 250) {
        hs_end(h, 0, "HELO refused");
        return;
    }
    hs_answered(h);
}

static void on_quit(struct hbhost *h)
{
    hs_end(h, -1, NULL);
}

/* The command table: what a complete reply does in each state. */
static hs_reply_fn *const hs_table[HS_COUNT_] = {
    [HS_GREETING] = on_greeting,
    [HS_EHLO] = on_ehlo,
    [HS_HELO] = on_helo,
    [HS_QUIT] = on_quit,
};

/* The check is over.  up: 1 success (already counted), 0 failure, -1 the
 * answer was taken before (QUIT). */
static void hs_end(struct hbhost *h, int up, const char *why)
{
    if (h->bev) {
        bufferevent_free(h->bev);
        h->bev = NULL;
    }
    if (up == 0) {
        log_debug("heartbeat %s: failed in %s: %s", h->peer, hs_names[h->st], why);
        h->checks_failed++;
        gate_answer(h, 0, why);
    }
    hs_set(h, HS_IDLE);
}

static void hs_on_read(struct bufferevent *bev, void *arg)
{
    struct hbhost *h = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    for (;;) {
        size_t len;
        char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
        enum smtpc_reply_result rr;
        enum hb_state st = h->st;

        if (line == NULL) {
            if (evbuffer_get_length(in) > HEARTBEAT_LINE_MAX)
                hs_end(h, st == HS_QUIT ? -1 : 0, "reply line too long");
            return;
        }
        rr = smtpc_reply_line(&h->rep, line, len, NULL);
        free(line);
        if (rr == SMTPC_REPLY_MORE)
            continue;
        if (rr != SMTPC_REPLY_DONE || hs_table[st] == NULL) {
            hs_end(h, st == HS_QUIT ? -1 : 0, "malformed or unexpected reply");
            return;
        }
        if (h->rep.code == 421 && st != HS_QUIT) {
            hs_end(h, 0, "421 from the primary");
            return;
        }
        /* One command at a time: the handler sent the next or ended. */
        hs_table[st](h);
        return;
    }
}

static void hs_connect_next(struct hbhost *h);

static void hs_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct hbhost *h = arg;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        hs_set(h, HS_GREETING);
        smtpc_reply_init(&h->rep);
        bufferevent_enable(h->bev, EV_READ);
        return;
    }
    if (h->st == HS_CONNECT) {
        bufferevent_free(h->bev);
        h->bev = NULL;
        h->ai++;
        hs_connect_next(h);
        return;
    }
    if (h->st == HS_QUIT) {
        hs_end(h, -1, NULL);
        return;
    }
    hs_end(h, 0, (what & BEV_EVENT_TIMEOUT) ? "timeout"
                 : (what & BEV_EVENT_EOF) ? "connection closed" : "connection error");
}

static void hs_connect_next(struct hbhost *h)
{
    const struct dns_route *r = h->route;
    struct timeval tv = { H.conf->delivery.heartbeat_timeout, 0 };

    hs_set(h, HS_CONNECT);
    while (r && h->hi < r->nhosts) {
        const struct dns_host *dh = &r->hosts[h->hi];
        if (h->ai >= dh->naddr) {
            h->hi++;
            h->ai = 0;
            continue;
        }
        h->bev = bufferevent_socket_new(H.base, -1, BEV_OPT_CLOSE_ON_FREE);
        if (h->bev == NULL)
            break;
        snprintf(h->peer, sizeof h->peer, "%s:%d", dh->name, h->port);
        bufferevent_setcb(h->bev, hs_on_read, NULL, hs_on_event, h);
        bufferevent_set_timeouts(h->bev, &tv, &tv);
        bufferevent_setwatermark(h->bev, EV_READ, 0, HEARTBEAT_LINE_MAX * 2);
        if (bufferevent_socket_connect(h->bev, (const struct sockaddr *)&dh->addr[h->ai],
                                       (int)dh->addrlen[h->ai]) == 0)
            return;
        bufferevent_free(h->bev);
        h->bev = NULL;
        h->ai++;
    }
    snprintf(h->peer, sizeof h->peer, "%s:%d", h->host, h->port);
    hs_end(h, 0, "connection failed");
}

static void hs_on_route(void *arg, const struct dns_route *r)
{
    struct hbhost *h = arg;

    if (h->st != HS_RESOLVING)
        log_panic("heartbeat: route answer in state %s", hs_names[h->st]);
    if (r->status != DNS_OK) {
        hs_end(h, 0, r->why);
        return;
    }
    if (h->route == NULL && (h->route = malloc(sizeof *h->route)) == NULL) {
        hs_end(h, 0, "out of memory");
        return;
    }
    *h->route = *r;
    h->route_time = time(NULL);
    h->hi = h->ai = 0;
    hs_connect_next(h);
}

static void hs_start(struct hbhost *h)
{
    time_t now = time(NULL);

    if (h->st != HS_IDLE || H.conf == NULL)
        return;             /* one check per host at a time */
    snprintf(h->peer, sizeof h->peer, "%s:%d", h->host, h->port);
    if (h->route == NULL || now - h->route_time > HEARTBEAT_ROUTE_TTL) {
        hs_set(h, HS_RESOLVING);
        if (dns_route(H.dns, h->host, h->port, h->fixed, H.self, hs_on_route, h) != 0)
            hs_end(h, 0, "out of memory resolving");
        return;
    }
    h->hi = h->ai = 0;
    hs_connect_next(h);
}

static void host_on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct hbhost *h = arg;

    (void)fd;
    (void)what;
    gate_check_stale(h, time(NULL));
    hs_start(h);
}

/* ------------------------------------------------------------------ */
/* Hosts and life cycle                                                */
/* ------------------------------------------------------------------ */

static void host_free(struct hbhost *h)
{
    if (h->bev)
        bufferevent_free(h->bev);
    if (h->tick)
        event_free(h->tick);
    free(h->route);
    free(h);
}

static void host_arm(struct hbhost *h)
{
    struct timeval tv = { H.conf->delivery.heartbeat, 0 };

    if (h->tick == NULL && (h->tick = event_new(H.base, -1, EV_PERSIST, host_on_tick, h)) == NULL)
        return;
    evtimer_add(h->tick, &tv);
}

int heartbeat_reload(const struct conf *c)
{
    struct dns_self *self = dns_self_new(c);
    struct hbhost *h, **pp;

    if (self == NULL)
        return -1;
    dns_self_free(H.self);
    H.self = self;
    conf_ref(c);
    conf_free(H.conf);
    H.conf = c;
    for (h = H.hosts; h; h = h->next)
        h->used = 0;
    for (size_t i = 0; i < c->ndomains; i++) {
        const struct conf_domain *d = &c->domains[i];
        if (d->accept != ACCEPT_WHEN_PRIMARY_DOWN)
            continue;
        if ((h = host_find(d)) == NULL) {
            if ((h = calloc(1, sizeof *h)) == NULL)
                return -1;
            snprintf(h->host, sizeof h->host, "%s", d->primary_host);
            h->port = domain_port(d);
            h->fixed = d->primary_fixed;
            snprintf(h->peer, sizeof h->peer, "%s:%d", h->host, h->port);
            h->next = H.hosts;
            H.hosts = h;
            log_info("gate %s:%d: heartbeat every %ld s", h->host, h->port,
                     c->delivery.heartbeat);
        }
        h->used = 1;
    }
    for (pp = &H.hosts; (h = *pp) != NULL;) {
        if (h->used) {
            host_arm(h);
            pp = &h->next;
            continue;
        }
        /* No gated domain uses it any more.  A pending dns_route would
         * call back into it: keep it, unarmed, until that answer. */
        if (h->st == HS_RESOLVING) {
            if (h->tick)
                evtimer_del(h->tick);
            pp = &h->next;
            continue;
        }
        *pp = h->next;
        host_free(h);
    }
    /* A first check at once for new hosts, so the gate is known early. */
    for (h = H.hosts; h; h = h->next)
        if (h->used && h->st == HS_IDLE && h->last_answer == 0)
            hs_start(h);
    return 0;
}

int heartbeat_init(struct event_base *base, struct dns *dns, const struct conf *c, char *err,
                   size_t errlen)
{
    H.base = base;
    H.dns = dns;
    if (heartbeat_reload(c) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

void heartbeat_shutdown(void)
{
    /* dns_free (after this) cancels pending routes without callbacks. */
    while (H.hosts) {
        struct hbhost *h = H.hosts;
        H.hosts = h->next;
        host_free(h);
    }
    dns_self_free(H.self);
    H.self = NULL;
    conf_free(H.conf);
    H.conf = NULL;
}

/* "host:port" as a Prometheus label value: \\, \" and \\n escaped (the
 * host is the administrator's text, not a peer's, but a quote in it must
 * not break the exposition). */
static const char *label(const struct hbhost *h, char *out, size_t len)
{
    char raw[sizeof h->host + 16];
    size_t o = 0;

    snprintf(raw, sizeof raw, "%s:%d", h->host, h->port);
    for (const char *p = raw; *p != '\0' && o + 3 < len; p++) {
        if (*p == '\\' || *p == '"' || *p == '\n') {
            out[o++] = '\\';
            out[o++] = *p == '\n' ? 'n' : *p;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
    return out;
}

void heartbeat_metrics(struct evbuffer *b)
{
    struct hbhost *h;
    time_t now = time(NULL);

    if (H.hosts == NULL)
        return;
    evbuffer_add_printf(b, "# HELP mxkeep_gate_state Gate of accept = \"when-primary-down\" "
                        "domains per primary: 1 for the current state\n"
                        "# TYPE mxkeep_gate_state gauge\n");
    for (h = H.hosts; h; h = h->next) {
        gate_check_stale(h, now);
        char lb[2 * sizeof h->host + 32];
        label(h, lb, sizeof lb);
        for (int s = 0; s < GATE_COUNT_; s++)
            evbuffer_add_printf(b, "mxkeep_gate_state{primary=\"%s\",state=\"%s\"} %d\n", lb,
                                gate_names[s], (int)h->gate == s);
    }
    evbuffer_add_printf(b, "# HELP mxkeep_heartbeats_total Heartbeat checks of gated "
                        "primaries, by result\n# TYPE mxkeep_heartbeats_total counter\n");
    for (h = H.hosts; h; h = h->next) {
        char lb[2 * sizeof h->host + 32];
        label(h, lb, sizeof lb);
        evbuffer_add_printf(b, "mxkeep_heartbeats_total{primary=\"%s\",result=\"ok\"} %" PRIu64
                            "\n", lb, h->checks_ok);
        evbuffer_add_printf(b, "mxkeep_heartbeats_total{primary=\"%s\",result=\"failed\"} %"
                            PRIu64 "\n", lb, h->checks_failed);
    }
}
