/*
 * listen.c - listeners and pre-session connection limits (see listen.h).
 *
 * Owns: the evconnlistener objects, the count of open connections, and a
 * table of sessions per client address (a session stops counting for its
 * client when it ends, before its connection is freed: see listen.h).
 * Never: parses SMTP, or keeps a connection it refused.
 * Security: the per-client table is bounded by the total connection limit,
 * so a flood of distinct addresses cannot grow it without bound.
 */
#include "config.h"
#include "listen.h"
#include "conf.h"
#include "log.h"
#include "stats.h"
#include "util.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <event2/event.h>
#include <event2/listener.h>

#define LISTEN_BACKLOG 511
#define LISTEN_BUCKETS 4096         /* power of two */
#define LISTEN_REFUSE_TOTAL "421 4.7.0 Error: too many connections, try again later\r\n"
#define LISTEN_REFUSE_CLIENT "421 4.7.0 Error: too many connections from your address\r\n"

struct client_count {
    struct client_count *next;
    int family;
    unsigned char addr[16];
    long n;
};

struct listener {
    struct evconnlistener **lev;
    size_t nlev;
    listen_accept_fn fn;
    void *arg;
    long max_total, max_per_client;
    size_t open;
    struct client_count *bucket[LISTEN_BUCKETS];
};

/* The address bytes that identify a client; IPv4-mapped IPv6 counts as v4
 * so a dual-stack listener cannot double a client's allowance. */
static int listen_key(const struct sockaddr *sa, unsigned char out[16])
{
    memset(out, 0, 16);
    if (sa->sa_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return AF_INET;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            memcpy(out, a6->s6_addr + 12, 4);
            return AF_INET;
        }
        memcpy(out, a6->s6_addr, 16);
        return AF_INET6;
    }
    return AF_UNSPEC;
}

static unsigned listen_hash(int family, const unsigned char *a)
{
    /* The family is hashed in as bytes: 10.0.0.1 and ::a00:1 differ. */
    uint64_t h = util_hash(UTIL_HASH_INIT, &family, sizeof family);
    h = util_hash(h, a, 16);
    return (unsigned)(h & (LISTEN_BUCKETS - 1));
}

static struct client_count **listen_find(struct listener *l, int family, const unsigned char *a)
{
    struct client_count **pp = &l->bucket[listen_hash(family, a)];
    while (*pp && !((*pp)->family == family && memcmp((*pp)->addr, a, 16) == 0))
        pp = &(*pp)->next;
    return pp;
}

static void listen_refuse(evutil_socket_t fd, const char *msg)
{
    stats_inc(STAT_CONN_REFUSED);
    /* A fresh socket's send buffer is empty: a short write cannot block and
     * a failure only means the client is already gone. */
    ssize_t r = write(fd, msg, strlen(msg));
    (void)r;
    evutil_closesocket(fd);
}

static void listen_on_accept(struct evconnlistener *lev, evutil_socket_t fd,
                             struct sockaddr *sa, int salen, void *arg)
{
    struct listener *l = arg;
    unsigned char key[16];
    char ip[INET6_ADDRSTRLEN] = "?";
    int family = listen_key(sa, key);

    inet_ntop(family, key, ip, sizeof ip);
    if ((long)l->open >= l->max_total) {
        log_warn("connect from [%s]: too many connections (%ld), refused", ip, l->max_total);
        listen_refuse(fd, LISTEN_REFUSE_TOTAL);
        return;
    }
    struct client_count **pp = listen_find(l, family, key);
    if (*pp && (*pp)->n >= l->max_per_client) {
        log_warn("connect from [%s]: too many connections from this client (%ld), refused", ip,
                 l->max_per_client);
        listen_refuse(fd, LISTEN_REFUSE_CLIENT);
        return;
    }
    if (*pp == NULL) {
        struct client_count *cc = calloc(1, sizeof *cc);
        if (cc == NULL) {
            log_warn("connect from [%s]: out of memory, refused", ip);
            listen_refuse(fd, LISTEN_REFUSE_TOTAL);
            return;
        }
        cc->family = family;
        memcpy(cc->addr, key, 16);
        *pp = cc;
    }
    (*pp)->n++;
    l->open++;
    l->fn(l->arg, fd, sa, salen);
}

static void listen_on_error(struct evconnlistener *lev, void *arg)
{
    int e = EVUTIL_SOCKET_ERROR();
    /* EMFILE/ENFILE/ENOBUFS are passing: keep listening; the pending
     * connection waits in the backlog until a descriptor frees up. */
    log_warn("accept failed: %s", evutil_socket_error_to_string(e));
}

struct listener *listen_new(struct event_base *base, const struct conf *c, char *err,
                            size_t errlen)
{
    struct listener *l = calloc(1, sizeof *l);
    if (l == NULL || (l->lev = calloc(c->nlisten, sizeof *l->lev)) == NULL) {
        snprintf(err, errlen, "out of memory");
        free(l);
        return NULL;
    }
    l->max_total = c->limits.connections;
    l->max_per_client = c->limits.per_client;
    for (size_t i = 0; i < c->nlisten; i++) {
        struct sockaddr_storage ss;
        int sslen = sizeof ss;
        char spec[128];
        const char *a = c->listen[i].address;
        snprintf(spec, sizeof spec, strchr(a, ':') ? "[%s]:%d" : "%s:%d", a, c->listen[i].port);
        if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &sslen) != 0) {
            snprintf(err, errlen, "%s: bad listen address", spec);
            listen_free(l);
            return NULL;
        }
        l->lev[i] = evconnlistener_new_bind(base, listen_on_accept, l,
                                            LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
                                                LEV_OPT_REUSEABLE | LEV_OPT_DISABLED,
                                            LISTEN_BACKLOG, (struct sockaddr *)&ss, sslen);
        if (l->lev[i] == NULL) {
            snprintf(err, errlen, "cannot listen on %s: %s", spec, strerror(errno));
            listen_free(l);
            return NULL;
        }
        evconnlistener_set_error_cb(l->lev[i], listen_on_error);
        l->nlev++;
        log_info("listening on %s", spec);
    }
    return l;
}

void listen_start(struct listener *l, listen_accept_fn fn, void *arg)
{
    l->fn = fn;
    l->arg = arg;
    for (size_t i = 0; i < l->nlev; i++)
        evconnlistener_enable(l->lev[i]);
}

void listen_stop(struct listener *l)
{
    for (size_t i = 0; l && i < l->nlev; i++)
        evconnlistener_disable(l->lev[i]);
}

void listen_set_limits(struct listener *l, long total, long per_client)
{
    l->max_total = total;
    l->max_per_client = per_client;
}

void listen_release_client(struct listener *l, const struct sockaddr *sa)
{
    unsigned char key[16];
    int family = listen_key(sa, key);
    struct client_count **pp = listen_find(l, family, key);
    if (*pp == NULL)
        log_panic("listen_release_client: client not counted");
    if (--(*pp)->n == 0) {
        struct client_count *cc = *pp;
        *pp = cc->next;
        free(cc);
    }
}

void listen_release(struct listener *l)
{
    if (l->open == 0)
        log_panic("listen_release: connection not counted");
    l->open--;
}

size_t listen_open_count(const struct listener *l) { return l->open; }

void listen_free(struct listener *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->nlev; i++)
        evconnlistener_free(l->lev[i]);
    for (size_t b = 0; b < LISTEN_BUCKETS; b++) {
        while (l->bucket[b]) {
            struct client_count *cc = l->bucket[b];
            l->bucket[b] = cc->next;
            free(cc);
        }
    }
    free(l->lev);
    free(l);
}
