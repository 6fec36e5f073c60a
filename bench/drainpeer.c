/*
 * drainpeer.c - the scripted primary of bench/drain: an SMTP server on
 * 127.0.0.1 whose service time per message grows with its load and that
 * refuses sessions over its own limit.  C with libevent, so that the peer
 * is never what limits the benchmark (a Python asyncio server topped out
 * near 650 msg/s on the reference box with nothing else to do).
 *
 *   drainpeer PORT STATSFILE LIMIT KNEE BASE_MS RCPTMAX MAILMAX
 *
 *   - load n = sessions open now (greeted); the end-of-data reply waits
 *     BASE_MS while n <= KNEE and BASE_MS * (n/KNEE)^3 beyond (a primary
 *     past its knee spends its time queueing);
 *   - a session over LIMIT gets "421 4.3.2" at the greeting (refused);
 *   - EHLO declares RFC 9422 "LIMITS RCPTMAX=R MAILMAX=M"; a RCPT past R
 *     (452 4.5.3) or a MAIL past M (421) is counted as a violation;
 *   - STATSFILE gets {"messages","refused","max_sessions","violations",...}
 *     as JSON every 100 ms and at SIGTERM.
 *
 * Owns its sessions.  Never: listens beyond loopback, keeps bodies.  A
 * benchmark peer, not part of mxkeepd.
 */
#include "config.h"     /* the system extensions (AC_USE_SYSTEM_EXTENSIONS) */

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

static struct event_base *base;
static const char *stats_path;
static long limit_, knee, rcptmax, mailmax;
static double base_ms;
static long sessions, max_sessions, nsessions, messages, refused, rcpt_viol, mail_viol;

enum st { CMD, DATA, WAIT, CLOSING };

struct sess {
    struct bufferevent *bev;
    struct event *timer;
    enum st st;
    long nrcpt, ntxn;
    int in_txn, counted;
};

static void sess_free(struct sess *s)
{
    if (s->counted)
        sessions--;
    bufferevent_free(s->bev);
    if (s->timer)
        event_free(s->timer);
    free(s);
}

static void reply(struct sess *s, const char *line)
{
    evbuffer_add(bufferevent_get_output(s->bev), line, strlen(line));
}

/* Close once what was written has gone. */
static void on_write(struct bufferevent *bev, void *arg)
{
    struct sess *s = arg;
    (void)bev;
    if (s->st == CLOSING)
        sess_free(s);
}

static void closing(struct sess *s)
{
    s->st = CLOSING;
    bufferevent_disable(s->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
        sess_free(s);
}

static double service_ms(void)
{
    double x = (double)sessions / (double)knee;
    return sessions <= knee ? base_ms : base_ms * x * x * x;
}

static void on_read(struct bufferevent *bev, void *arg);

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct sess *s = arg;
    (void)fd;
    (void)what;
    messages++;
    s->in_txn = 0;
    s->st = CMD;
    reply(s, "250 2.0.0 ok: queued\r\n");
    on_read(s->bev, s);
}

static void command(struct sess *s, char *ln)
{
    if (strncasecmp(ln, "EHLO", 4) == 0) {
        evbuffer_add_printf(bufferevent_get_output(s->bev),
                            "250-drain.primary\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                            "250-ENHANCEDSTATUSCODES\r\n250-LIMITS RCPTMAX=%ld MAILMAX=%ld\r\n"
                            "250 SIZE 52428800\r\n", rcptmax, mailmax);
    } else if (strncasecmp(ln, "HELO", 4) == 0) {
        reply(s, "250 drain.primary\r\n");
    } else if (strncasecmp(ln, "MAIL", 4) == 0) {
        s->nrcpt = 0;
        if (++s->ntxn > mailmax) {
            mail_viol++;
            reply(s, "421 4.7.0 too many transactions in this session\r\n");
            closing(s);
            return;
        }
        s->in_txn = 1;
        reply(s, "250 2.1.0 ok\r\n");
    } else if (strncasecmp(ln, "RCPT", 4) == 0) {
        if (++s->nrcpt > rcptmax) {
            rcpt_viol++;
            reply(s, "452 4.5.3 too many recipients\r\n");
        } else {
            reply(s, "250 2.1.5 ok\r\n");
        }
    } else if (strncasecmp(ln, "DATA", 4) == 0) {
        if (!s->in_txn || s->nrcpt == 0) {
            reply(s, "554 5.5.1 no valid recipients\r\n");
        } else {
            reply(s, "354 go ahead\r\n");
            s->st = DATA;
        }
    } else if (strncasecmp(ln, "RSET", 4) == 0) {
        s->in_txn = 0;
        s->nrcpt = 0;
        reply(s, "250 2.0.0 ok\r\n");
    } else if (strncasecmp(ln, "NOOP", 4) == 0) {
        reply(s, "250 2.0.0 ok\r\n");
    } else if (strncasecmp(ln, "QUIT", 4) == 0) {
        reply(s, "221 2.0.0 bye\r\n");
        closing(s);
    } else {
        reply(s, "502 5.5.2 not implemented\r\n");
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct sess *s = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    while (s->st == CMD || s->st == DATA) {
        if (s->st == DATA) {
            struct evbuffer_ptr p = evbuffer_search(in, "\r\n.\r\n", 5, NULL);
            if (p.pos < 0) {
                /* keep the tail that may hold the start of the end mark */
                size_t len = evbuffer_get_length(in);
                if (len > 8)
                    evbuffer_drain(in, len - 8);
                return;
            }
            evbuffer_drain(in, (size_t)p.pos + 5);
            s->st = WAIT;
            double ms = service_ms();
            struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((long)(ms * 1000) % 1000000) };
            evtimer_add(s->timer, &tv);
            return;
        }
        char *ln = evbuffer_readln(in, NULL, EVBUFFER_EOL_CRLF);
        if (ln == NULL)
            return;
        command(s, ln);
        free(ln);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        sess_free(arg);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    (void)l;
    (void)sa;
    (void)len;
    (void)arg;
    struct sess *s = calloc(1, sizeof *s);
    int one = 1;
    /* Replies are small writes waiting for the client: no Nagle delay. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (s == NULL) {
        evutil_closesocket(fd);
        return;
    }
    s->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    s->timer = evtimer_new(base, on_timer, s);
    bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
    if (sessions >= limit_) {
        refused++;
        reply(s, "421 4.3.2 drain.primary too many connections, try later\r\n");
        closing(s);
        return;
    }
    s->counted = 1;
    sessions++;
    nsessions++;
    if (sessions > max_sessions)
        max_sessions = sessions;
    reply(s, "220 drain.primary ESMTP\r\n");
}

static void write_stats(void)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", stats_path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return;
    fprintf(f, "{\"messages\": %ld, \"refused\": %ld, \"max_sessions\": %ld, \"sessions\": %ld, "
            "\"violations\": %ld, \"rcpt_violations\": %ld, \"mail_violations\": %ld}\n",
            messages, refused, max_sessions, nsessions, rcpt_viol + mail_viol, rcpt_viol,
            mail_viol);
    fclose(f);
    rename(tmp, stats_path);
}

static void on_stats(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    write_stats();
}

static void on_term(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    write_stats();
    event_base_loopexit(base, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: drainpeer PORT STATSFILE LIMIT KNEE BASE_MS RCPTMAX MAILMAX\n");
        return 64;
    }
    int port = atoi(argv[1]);
    stats_path = argv[2];
    limit_ = atol(argv[3]);
    knee = atol(argv[4]);
    base_ms = atof(argv[5]);
    rcptmax = atol(argv[6]);
    mailmax = atol(argv[7]);
    if (port <= 0 || limit_ <= 0 || knee <= 0 || rcptmax <= 0 || mailmax <= 0) {
        fprintf(stderr, "drainpeer: bad numbers\n");
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((unsigned short)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct evconnlistener *l = evconnlistener_new_bind(
        base, on_accept, NULL, LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE, 1024,
        (struct sockaddr *)&sin, sizeof sin);
    if (l == NULL) {
        perror("drainpeer: listen");
        return 1;
    }
    struct event *st = event_new(base, -1, EV_PERSIST, on_stats, NULL);
    struct timeval tv = { 0, 100000 };
    event_add(st, &tv);
    struct event *term = evsignal_new(base, SIGTERM, on_term, NULL);
    struct event *intr = evsignal_new(base, SIGINT, on_term, NULL);
    event_add(term, NULL);
    event_add(intr, NULL);
    write_stats();
    event_base_dispatch(base);
    evconnlistener_free(l);
    event_free(st);
    event_free(term);
    event_free(intr);
    event_base_free(base);
    return 0;
}
