/*
 * tlsload.c - a STARTTLS load generator for bench/accept-tls.
 *
 * Runs S parallel SMTP sessions against 127.0.0.1:PORT, each one: the 220
 * greeting, EHLO, STARTTLS, the TLS handshake, EHLO again, then MAIL,
 * RCPT, DATA with a message of LEN octets, and QUIT (or RSET and the next
 * message when -k asks for several messages per connection), until M
 * messages were accepted or -d seconds passed.  With -r, every session
 * slot keeps the SSL_SESSION (TLS 1.3 ticket or TLS 1.2 session) of its
 * last handshake and offers it on its next connection; the share of
 * handshakes that the server resumed is printed.  Prints msg/s,
 * handshakes/s, and p50/p99 of the message latency (connect, or MAIL when
 * a connection carries several messages, to the 250 after the data) and of
 * the handshake (STARTTLS 220 to handshake done).
 *
 * With -i (idle mode) it opens S sessions (at most -o, default 100, being
 * set up at a time), takes each through the
 * handshake and the second EHLO, prints "ready N" and holds them idle
 * until SIGUSR1 (or -w seconds); then it sends NOOP on each, counts the
 * 250s ("alive N of S"), sends one message on each with -I, and quits.
 *
 * Owns: its sockets and SSL objects; nothing outside this process.
 * Never: connects anywhere but the address given (loopback in the bench);
 * verifies no certificate (a benchmark of the server, not of PKI).
 * Not part of mxkeep: built by bench/accept-tls with cc -I TOP ... -lssl
 * -lcrypto (TOP: the configured tree, for config.h).
 */
#include "config.h"     /* the system extensions (AC_USE_SYSTEM_EXTENSIONS) */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

/* One SMTP reply line is at most 512 octets (RFC 5321 4.5.3.1.5); an EHLO
 * reply has a few dozen lines. */
#define INBUF_SIZE 8192
#define EVENTS_MAX 256
#define LINE_MAX_OCTETS 76

enum cstate {
    C_FREE,         /* slot idle, nothing open */
    C_CONNECT,      /* TCP connect in progress */
    C_GREETING,     /* waiting for 220 */
    C_EHLO1,
    C_STARTTLS,
    C_HANDSHAKE,
    C_EHLO2,
    C_IDLE,         /* idle mode: holding after EHLO */
    C_NOOP,
    C_MAIL,
    C_RCPT,
    C_DATA,
    C_BODY,
    C_RSET,
    C_QUIT,
};

struct conn {
    int slot;
    int fd;
    enum cstate state;
    SSL *ssl;
    SSL_SESSION *sess;          /* the slot's last session (-r) */
    char in[INBUF_SIZE];
    size_t inlen;
    const char *out;            /* pending output (not owned) */
    size_t outlen, outoff;
    char cmd[512];
    int msgs_here;              /* messages sent on this connection */
    double t_conn, t_msg, t_tls;
    int want;                   /* epoll events wanted */
    int registered;
};

static struct {
    const char *host;
    int port;
    int sessions;
    long messages;
    double duration;
    long length;
    int resume;
    int per_conn;
    int idle;
    double hold;
    int idle_send;
    int opening;
    const char *helo, *from, *to;
} opt = { "127.0.0.1", 25, 20, 1000, 0, 4096, 0, 1, 0, 3600, 0, 100,
          "tlsload.bench.example.net", "sender@example.net", "rcpt@example.org" };

static SSL_CTX *ctx;
static int ep;
static struct conn *conns;
static char *body;
static size_t bodylen;
static long started_msgs, done_msgs, failed, handshakes, resumed;
static long ready, alive;
static double *lat_msg, *lat_tls;
static long nlat_msg, nlat_tls, cap_lat_msg, cap_lat_tls;
static volatile sig_atomic_t got_usr1;
static double t_start, t_end_limit;
static int phase_release;       /* idle mode: sessions released */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tlsload: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void lat_add(double **v, long *n, long *cap, double x)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 4096;
        *v = realloc(*v, (size_t)*cap * sizeof **v);
        if (*v == NULL)
            die("out of memory");
    }
    (*v)[(*n)++] = x;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, long n, double p)
{
    if (n == 0)
        return 0;
    long i = (long)(p * (n - 1) + 0.5);
    return v[i];
}

/* The slot keeps the newest session the server gave it (a TLS 1.3 ticket
 * arrives after the handshake, so this runs while reading the EHLO). */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct conn *c = SSL_get_app_data(ssl);
    if (c == NULL || !opt.resume)
        return 0;
    if (c->sess)
        SSL_SESSION_free(c->sess);
    c->sess = sess;
    return 1;                   /* we keep the reference */
}

static void set_want(struct conn *c, int ev)
{
    struct epoll_event e = { .events = (uint32_t)ev, .data.ptr = c };
    if (c->registered && c->want == ev)
        return;
    if (epoll_ctl(ep, c->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &e) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->registered = 1;
    c->want = ev;
}

/* clean: a session that ended well; its close_notify keeps the session
 * resumable (OpenSSL marks the session of an SSL freed without a shutdown
 * as not resumable). */
static void conn_close(struct conn *c, int clean)
{
    if (c->ssl) {
        if (clean)
            SSL_shutdown(c->ssl);
        SSL_set_app_data(c->ssl, NULL);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->registered = 0;
    c->state = C_FREE;
    c->inlen = 0;
    c->outlen = c->outoff = 0;
}

static void conn_fail(struct conn *c, const char *why)
{
    static int shown;
    failed++;
    if (shown++ < 5)
        fprintf(stderr, "tlsload: slot %d: %s\n", c->slot, why);
    conn_close(c, 0);
}

static void send_cmd(struct conn *c, enum cstate next, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->cmd, sizeof c->cmd - 2, fmt, ap);
    va_end(ap);
    memcpy(c->cmd + n, "\r\n", 2);
    c->out = c->cmd;
    c->outlen = (size_t)n + 2;
    c->outoff = 0;
    c->state = next;
}

static int may_start_message(void)
{
    if (opt.idle)
        return 1;
    if (opt.duration > 0)
        return now() < t_end_limit;
    return started_msgs < opt.messages;
}

/* Every message was counted (started_msgs) when it was decided on: the
 * first of a connection when it was opened, a next one before its RSET. */
static void start_message(struct conn *c)
{
    c->t_msg = !opt.idle && c->msgs_here == 0 && opt.per_conn == 1 ? c->t_conn : now();
    send_cmd(c, C_MAIL, "MAIL FROM:<%s>", opt.from);
}

/* A complete reply is in c->in: act on it.  Returns 0 to go on. */
static int on_reply(struct conn *c, int code)
{
    char why[96];
    switch (c->state) {
    case C_GREETING:
        if (code != 220)
            goto bad;
        send_cmd(c, C_EHLO1, "EHLO %s", opt.helo);
        return 0;
    case C_EHLO1:
        if (code != 250)
            goto bad;
        send_cmd(c, C_STARTTLS, "STARTTLS");
        return 0;
    case C_STARTTLS:
        if (code != 220)
            goto bad;
        c->ssl = SSL_new(ctx);
        if (c->ssl == NULL)
            die("SSL_new failed");
        SSL_set_app_data(c->ssl, c);
        SSL_set_fd(c->ssl, c->fd);
        if (opt.resume && c->sess)
            SSL_set_session(c->ssl, c->sess);
        c->t_tls = now();
        c->state = C_HANDSHAKE;
        return 0;
    case C_EHLO2:
        if (code != 250)
            goto bad;
        if (opt.idle) {
            c->state = C_IDLE;
            ready++;
            return 0;
        }
        start_message(c);
        return 0;
    case C_NOOP:
        if (code != 250)
            goto bad;
        alive++;
        if (opt.idle_send) {
            start_message(c);
            return 0;
        }
        send_cmd(c, C_QUIT, "QUIT");
        return 0;
    case C_MAIL:
        if (code != 250)
            goto bad;
        send_cmd(c, C_RCPT, "RCPT TO:<%s>", opt.to);
        return 0;
    case C_RCPT:
        if (code != 250)
            goto bad;
        send_cmd(c, C_DATA, "DATA");
        return 0;
    case C_DATA:
        if (code != 354)
            goto bad;
        c->out = body;
        c->outlen = bodylen;
        c->outoff = 0;
        c->state = C_BODY;
        return 0;
    case C_BODY:
        if (code != 250)
            goto bad;
        done_msgs++;
        lat_add(&lat_msg, &nlat_msg, &cap_lat_msg, now() - c->t_msg);
        c->msgs_here++;
        if (!opt.idle && c->msgs_here < opt.per_conn && may_start_message()) {
            started_msgs++;
            send_cmd(c, C_RSET, "RSET");
            return 0;
        }
        send_cmd(c, C_QUIT, "QUIT");
        return 0;
    case C_RSET:
        if (code != 250)
            goto bad;
        start_message(c);
        return 0;
    case C_QUIT:
        conn_close(c, 1);
        return 1;
    default:
        break;
    }
bad:
    snprintf(why, sizeof why, "unexpected reply %d in state %d", code, c->state);
    conn_fail(c, why);
    return 1;
}

/* One complete reply at the front of c->in?  Returns its code and drops it,
 * 0 when incomplete, -1 when malformed. */
static int take_reply(struct conn *c)
{
    size_t pos = 0;
    while (pos < c->inlen) {
        char *nl = memchr(c->in + pos, '\n', c->inlen - pos);
        if (nl == NULL)
            return 0;
        size_t end = (size_t)(nl - c->in) + 1;
        if (end - pos < 4)
            return -1;
        if (c->in[pos + 3] != '-') {
            int code = atoi(c->in + pos);
            memmove(c->in, c->in + end, c->inlen - end);
            c->inlen -= end;
            return code > 0 ? code : -1;
        }
        pos = end;
    }
    return 0;
}

static void conn_start(struct conn *c)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port) };
    inet_pton(AF_INET, opt.host, &sa.sin_addr);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->t_conn = now();
    c->msgs_here = 0;
    if (!opt.idle)
        started_msgs++;
    c->inlen = 0;
    c->outlen = c->outoff = 0;
    c->registered = 0;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        conn_fail(c, strerror(errno));
        return;
    }
    c->state = C_CONNECT;
    set_want(c, EPOLLOUT);
}

/* Run the connection as far as it goes without blocking. */
static void drive(struct conn *c)
{
    char why[160];
    for (;;) {
        if (c->state == C_FREE)
            return;
        if (c->state == C_CONNECT) {
            int err = 0;
            socklen_t l = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
            if (err == EINPROGRESS)
                return;
            if (err) {
                conn_fail(c, strerror(err));
                return;
            }
            c->state = C_GREETING;
            continue;
        }
        if (c->state == C_HANDSHAKE) {
            int r = SSL_connect(c->ssl);
            if (r == 1) {
                handshakes++;
                if (SSL_session_reused(c->ssl))
                    resumed++;
                lat_add(&lat_tls, &nlat_tls, &cap_lat_tls, now() - c->t_tls);
                send_cmd(c, C_EHLO2, "EHLO %s", opt.helo);
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) {
                set_want(c, EPOLLIN);
                return;
            }
            if (e == SSL_ERROR_WANT_WRITE) {
                set_want(c, EPOLLOUT);
                return;
            }
            snprintf(why, sizeof why, "handshake failed: %s",
                     ERR_error_string(ERR_get_error(), NULL));
            conn_fail(c, why);
            return;
        }
        if (c->outoff < c->outlen) {
            size_t n = 0;
            if (c->ssl) {
                int r = SSL_write_ex(c->ssl, c->out + c->outoff, c->outlen - c->outoff, &n);
                if (r <= 0) {
                    int e = SSL_get_error(c->ssl, r);
                    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                        set_want(c, e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN);
                        return;
                    }
                    conn_fail(c, "TLS write failed");
                    return;
                }
            } else {
                ssize_t w = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EAGAIN || errno == EINTR) {
                        set_want(c, EPOLLOUT);
                        return;
                    }
                    conn_fail(c, strerror(errno));
                    return;
                }
                n = (size_t)w;
            }
            c->outoff += n;
            continue;
        }
        if (c->state == C_IDLE) {
            set_want(c, EPOLLIN);   /* a close or a 421 from the server shows */
            return;
        }
        int code = take_reply(c);
        if (code < 0) {
            conn_fail(c, "malformed reply");
            return;
        }
        if (code > 0) {
            if (on_reply(c, code))
                return;
            continue;
        }
        if (c->inlen >= sizeof c->in - 1) {
            conn_fail(c, "reply too long");
            return;
        }
        size_t n = 0;
        if (c->ssl) {
            int r = SSL_read_ex(c->ssl, c->in + c->inlen, sizeof c->in - 1 - c->inlen, &n);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    set_want(c, e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN);
                    return;
                }
                if (c->state == C_QUIT) {   /* closed after 221: fine */
                    conn_close(c, 1);
                    return;
                }
                conn_fail(c, "TLS read failed or connection closed");
                return;
            }
        } else {
            ssize_t r = recv(c->fd, c->in + c->inlen, sizeof c->in - 1 - c->inlen, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
                set_want(c, EPOLLIN);
                return;
            }
            if (r <= 0) {
                conn_fail(c, r == 0 ? "connection closed" : strerror(errno));
                return;
            }
            n = (size_t)r;
        }
        c->inlen += n;
    }
}

static void on_usr1(int sig)
{
    (void)sig;
    got_usr1 = 1;
}

static void make_body(void)
{
    static const char head[] = "From: <sender@example.net>\r\nTo: <rcpt@example.org>\r\n"
                               "Subject: tlsload\r\n\r\n";
    long len = opt.length;
    body = malloc((size_t)len + sizeof head + LINE_MAX_OCTETS + 8);
    if (body == NULL)
        die("out of memory");
    size_t n = sizeof head - 1;
    memcpy(body, head, n);
    while ((long)n < len) {
        size_t line = (size_t)(len - (long)n);
        if (line > LINE_MAX_OCTETS + 2)
            line = LINE_MAX_OCTETS + 2;
        if (line < 3)
            line = 3;
        memset(body + n, 'x', line - 2);
        memcpy(body + n + line - 2, "\r\n", 2);
        n += line;
    }
    memcpy(body + n, ".\r\n", 3);
    bodylen = n + 3;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: tlsload [-p PORT] [-H HOST] [-s SESSIONS] [-m MESSAGES | -d SECONDS]\n"
            "               [-l LENGTH] [-k MESSAGES_PER_CONNECTION] [-r]\n"
            "               [-i [-w HOLD_SECONDS] [-o OPENING] [-I]]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int ch;
    while ((ch = getopt(argc, argv, "p:H:s:m:d:l:k:riw:Io:")) != -1) {
        switch (ch) {
        case 'p': opt.port = atoi(optarg); break;
        case 'H': opt.host = optarg; break;
        case 's': opt.sessions = atoi(optarg); break;
        case 'm': opt.messages = atol(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'l': opt.length = atol(optarg); break;
        case 'k': opt.per_conn = atoi(optarg); break;
        case 'r': opt.resume = 1; break;
        case 'i': opt.idle = 1; break;
        case 'w': opt.hold = atof(optarg); break;
        case 'I': opt.idle_send = 1; break;
        case 'o': opt.opening = atoi(optarg); break;
        default: usage();
        }
    }
    if (opt.sessions < 1 || opt.port < 1 || opt.per_conn < 1 || opt.length < 0 || opt.opening < 1)
        usage();

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.sessions + 64) {
        rl.rlim_cur = (rlim_t)opt.sessions + 64;
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max)
            die("need %d descriptors, hard limit is %ld", opt.sessions + 64, (long)rl.rlim_max);
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR1, on_usr1);

    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        die("SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    make_body();

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));
    conns = calloc((size_t)opt.sessions, sizeof *conns);
    if (conns == NULL)
        die("out of memory");
    t_start = now();
    t_end_limit = t_start + opt.duration;
    int next_idle = 0;          /* idle mode: the next slot to open */
    for (int i = 0; i < opt.sessions; i++) {
        conns[i].slot = i;
        conns[i].fd = -1;
        conns[i].state = C_FREE;
        if (!opt.idle && may_start_message())
            conn_start(&conns[i]);
    }

    struct epoll_event evs[EVENTS_MAX];
    int announced = 0;
    double hold_until = 0;
    for (;;) {
        int active = 0;
        /* Idle mode opens at most -o sessions at a time: 10,000 SYNs at
         * once overflow the listen queue and measure SYN retries. */
        while (opt.idle && next_idle < opt.sessions &&
               next_idle - ready - failed < opt.opening)
            conn_start(&conns[next_idle++]);
        for (int i = 0; i < opt.sessions; i++) {
            struct conn *c = &conns[i];
            if (c->state == C_FREE && !opt.idle && may_start_message())
                conn_start(c);
            if (c->state != C_FREE)
                active++;
        }
        if (opt.idle && !announced && ready + failed >= opt.sessions) {
            printf("ready %ld of %d (%ld failed) in %.2f s\n", ready, opt.sessions, failed,
                   now() - t_start);
            fflush(stdout);
            announced = 1;
            hold_until = now() + opt.hold;
        }
        if (opt.idle && announced && !phase_release && (got_usr1 || now() >= hold_until)) {
            phase_release = 1;
            for (int i = 0; i < opt.sessions; i++) {
                struct conn *c = &conns[i];
                if (c->state == C_IDLE) {
                    send_cmd(c, C_NOOP, "NOOP");
                    drive(c);
                }
            }
            continue;
        }
        if (active == 0)
            break;
        int n = epoll_wait(ep, evs, EVENTS_MAX, 100);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->state == C_IDLE) {
                /* the server spoke or closed while we held the session */
                conn_fail(c, "idle session closed or spoken to by the server");
                continue;
            }
            drive(c);
        }
    }
    double el = now() - t_start;

    qsort(lat_msg, (size_t)nlat_msg, sizeof *lat_msg, cmp_double);
    qsort(lat_tls, (size_t)nlat_tls, sizeof *lat_tls, cmp_double);
    if (opt.idle)
        printf("alive %ld of %d\n", alive, opt.sessions);
    printf("messages %ld failed %ld seconds %.3f msg/s %.1f handshakes %ld hs/s %.1f "
           "resumed %ld resumed%% %.1f msg_p50_ms %.2f msg_p99_ms %.2f hs_p50_ms %.2f "
           "hs_p99_ms %.2f\n",
           done_msgs, failed, el, el > 0 ? done_msgs / el : 0, handshakes,
           el > 0 ? handshakes / el : 0, resumed, handshakes ? 100.0 * resumed / handshakes : 0,
           pct(lat_msg, nlat_msg, 0.5) * 1000, pct(lat_msg, nlat_msg, 0.99) * 1000,
           pct(lat_tls, nlat_tls, 0.5) * 1000, pct(lat_tls, nlat_tls, 0.99) * 1000);
    return failed ? 1 : 0;
}
