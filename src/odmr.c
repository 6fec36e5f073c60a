/*
 * odmr.c - On-Demand Mail Relay, the server side of RFC 2645 (see odmr.h):
 * listeners, one explicit state machine per session (EHLO, STARTTLS,
 * AUTH CRAM-MD5 / PLAIN / LOGIN per RFC 4954, ATRN), then the role
 * reversal: the connection goes to the scheduler (delivery_odmr_run),
 * where mxkeep is the SMTP client with the ordinary client state machine.
 *
 * Owns: the ODMR listeners, every session until it reverses or ends, the
 * table of recent AUTH failures per client address (the tarpit), a
 * reference to the conf and to the server TLS context.
 *
 * Identity: the user name is the domain.  A session that proved the
 * secret of domain D may ATRN D and any other ODMR domain configured with
 * the same secret; any other domain refuses the whole ATRN (450).  The
 * secret is only ever the stored HMAC-MD5 contexts (odmr_auth.h).
 *
 * Never: reads a command before the previous reply is queued (no
 * PIPELINING is offered); takes octets that came in clear after
 * STARTTLS's 220 (command injection: the session is closed); offers or
 * takes PLAIN or LOGIN without TLS (538 5.7.11); delivers a domain the
 * session did not authenticate for.
 *
 * Security: bounds on all the peer controls: line length
 * (limits.line_length, and ODMR_AUTH_LINE_MAX for AUTH responses),
 * commands in error (limits.bad_commands), AUTH failures per session
 * (odmr.auth_attempts), time from connect to ATRN (odmr.login_timeout)
 * and per command (limits.command_timeout), sessions (odmr.max_sessions).
 * A wrong secret gets 535 5.7.8 after a delay that doubles with each
 * recent failure of the client's address (odmr.auth_delay .. auth_delay_max,
 * forgotten after odmr.auth_window), counted and logged.
 */
#include "config.h"
#include "odmr.h"
#include "odmr_auth.h"
#include "conf.h"
#include "delivery.h"
#include "log.h"
#include "stats.h"
#include "tls.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/rand.h>

#define ODMR_BACKLOG        64
/* An AUTH response line: base64 of the longest PLAIN we take (three fields). */
#define ODMR_AUTH_LINE_MAX  (4 * ((3 * ODMR_AUTH_FIELD_MAX + 2) / 3) + 4)
#define ODMR_CHALLENGE_MAX  320         /* "<hex.time@hostname>" */
#define ODMR_PEER_MAX       64
/* One TLS record at most per write to the reversed link (see line_filter). */
#define ODMR_RECORD_MAX     16384
/* The reversed link's output waits for the socket beyond this (octets). */
#define ODMR_OUT_HIGH       (256 * 1024)

enum sess_state {
    S_NEW = 0,          /* accepted */
    S_HANDSHAKE,        /* TLS handshake (implicit, or after STARTTLS) */
    S_GREETED,          /* 220 sent (or TLS just began): EHLO expected */
    S_READY,            /* EHLO done, not authenticated */
    S_AUTH_CRAM,        /* 334 challenge sent */
    S_AUTH_PLAIN,       /* 334 sent, PLAIN response expected */
    S_AUTH_USER,        /* LOGIN: 334 Username: sent */
    S_AUTH_PASS,        /* LOGIN: 334 Password: sent */
    S_TARPIT,           /* a wrong secret: the 535 waits */
    S_AUTHED,           /* authenticated: ATRN expected */
    S_REVERSED,         /* the scheduler has the connection */
    S_CLOSING           /* last reply queued; freed once written */
};

static const char *const state_name[] = {
    "new", "handshake", "greeted", "ready", "auth-cram", "auth-plain", "auth-user",
    "auth-pass", "tarpit", "authed", "reversed", "closing"
};
_Static_assert(sizeof state_name / sizeof state_name[0] == S_CLOSING + 1,
               "state_name[] must name every state");

#define B(s) (1u << (s))
/* Allowed moves: the one place the session's protocol is written down. */
static const unsigned state_next[] = {
    [S_NEW] = B(S_HANDSHAKE) | B(S_GREETED) | B(S_CLOSING),
    [S_HANDSHAKE] = B(S_GREETED) | B(S_CLOSING),
    [S_GREETED] = B(S_READY) | B(S_CLOSING),
    [S_READY] = B(S_READY) | B(S_HANDSHAKE) | B(S_AUTH_CRAM) | B(S_AUTH_PLAIN) |
                B(S_AUTH_USER) | B(S_AUTHED) | B(S_TARPIT) | B(S_CLOSING),
    [S_AUTH_CRAM] = B(S_READY) | B(S_AUTHED) | B(S_TARPIT) | B(S_CLOSING),
    [S_AUTH_PLAIN] = B(S_READY) | B(S_AUTHED) | B(S_TARPIT) | B(S_CLOSING),
    [S_AUTH_USER] = B(S_READY) | B(S_AUTH_PASS) | B(S_CLOSING),
    [S_AUTH_PASS] = B(S_READY) | B(S_AUTHED) | B(S_TARPIT) | B(S_CLOSING),
    [S_TARPIT] = B(S_READY) | B(S_CLOSING),
    [S_AUTHED] = B(S_AUTHED) | B(S_REVERSED) | B(S_CLOSING),
    [S_REVERSED] = 0,
    [S_CLOSING] = 0,
};
#undef B

struct client_fail {
    int family;
    unsigned char addr[16];
    unsigned fails;
    time_t last;
};

struct odmr {
    struct event_base *base;
    const struct conf *conf;
    SSL_CTX *tls;
    struct delivery *dl;
    struct evconnlistener **lev;
    int *lev_tls;                       /* enum odmr_tls per listener */
    size_t nlev;
    struct sess *sessions;              /* not reversed yet */
    size_t nsessions;                   /* all, reversed ones included */
    struct client_fail *fails;          /* hashed by client address, overwritten */
    size_t nfails;
    int stopping;
};

struct sess {
    struct sess *next, *prev;
    struct odmr *o;
    struct bufferevent *bev;
    struct event *timer;
    enum sess_state st;
    int listener_tls;                   /* enum odmr_tls */
    int is_tls;
    struct sockaddr_storage peer_sa;
    socklen_t peer_len;
    char peer[ODMR_PEER_MAX];
    time_t login_deadline;
    long bad;                           /* commands in error */
    unsigned auth_fails;                /* in this session */
    char challenge[ODMR_CHALLENGE_MAX];
    char user[ODMR_AUTH_FIELD_MAX];     /* LOGIN: the user name so far */
    char domain[SMTP_DOMAIN_MAX + 1];   /* authenticated as */
    char secret[ODMR_SECRET_LEN + 1];   /* the stored secret it proved */
    int close_after_tarpit;
    int tls_pending;                    /* STARTTLS: 220 queued, handshake next */
};

static void sess_read(struct bufferevent *bev, void *arg);
static void sess_write(struct bufferevent *bev, void *arg);
static void sess_event(struct bufferevent *bev, short what, void *arg);
static void sess_free(struct sess *s);

/* ---- state -------------------------------------------------------------- */

/* The one transition function: an illegal move is a bug (panic). */
static void set_state(struct sess *s, enum sess_state st)
{
    if (s->st == st)
        return;
    if (!(state_next[s->st] & (1u << st)))
        log_panic("odmr %s: illegal transition %s -> %s", s->peer, state_name[s->st],
                  state_name[st]);
    log_debug("odmr %s: %s -> %s", s->peer, state_name[s->st], state_name[st]);
    s->st = st;
}

static void __attribute__((format(printf, 2, 0))) vreply(struct sess *s, const char *fmt,
                                                           va_list ap)
{
    struct evbuffer *out = bufferevent_get_output(s->bev);

    evbuffer_add_vprintf(out, fmt, ap);
    evbuffer_add(out, "\r\n", 2);
}

static void __attribute__((format(printf, 2, 3))) reply(struct sess *s, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreply(s, fmt, ap);
    va_end(ap);
}

/* Time left: the shorter of the command time-out and the login bound. */
static void arm(struct sess *s)
{
    time_t now = time(NULL);
    long left = (long)(s->login_deadline - now);
    long t = s->o->conf->limits.command_timeout;
    struct timeval tv;

    if (left < t)
        t = left > 0 ? left : 1;
    tv.tv_sec = t;
    tv.tv_usec = 0;
    event_add(s->timer, &tv);
}

/* Last reply queued: free once it is written. */
static void sess_close(struct sess *s)
{
    set_state(s, S_CLOSING);
    event_del(s->timer);
    bufferevent_disable(s->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
        sess_free(s);
}

/* A command in error: after limits.bad_commands of them the session ends. */
static int bad(struct sess *s)
{
    if (++s->bad >= s->o->conf->limits.bad_commands) {
        reply(s, "421 4.7.0 %s Error: too many errors", s->o->conf->hostname);
        log_info("odmr %s: too many errors; closing", s->peer);
        sess_close(s);
        return 1;
    }
    return 0;
}

/* A reply to a command in error, counted (bad). */
static void __attribute__((format(printf, 2, 3))) refuse(struct sess *s, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreply(s, fmt, ap);
    va_end(ap);
    bad(s);
}

/* ---- the tarpit ----------------------------------------------------------- */

static struct client_fail *fail_slot(struct odmr *o, const struct sess *s, int create)
{
    unsigned char key[16] = { 0 };
    int fam = s->peer_sa.ss_family;

    if (fam == AF_INET)
        memcpy(key, &((const struct sockaddr_in *)&s->peer_sa)->sin_addr, 4);
    else if (fam == AF_INET6)
        memcpy(key, &((const struct sockaddr_in6 *)&s->peer_sa)->sin6_addr, 16);
    uint64_t h = util_hash(UTIL_HASH_INIT, &fam, sizeof fam);
    h = util_hash(h, key, sizeof key);
    struct client_fail *f = &o->fails[h % o->nfails];
    int mine = f->family == fam && memcmp(f->addr, key, sizeof key) == 0;
    if (mine && time(NULL) - f->last > o->conf->odmr.auth_window) {
        f->fails = 0;           /* forgotten */
    }
    if (!mine) {
        if (!create)
            return NULL;
        /* Bounded: a collision overwrites the older address. */
        memset(f, 0, sizeof *f);
        f->family = fam;
        memcpy(f->addr, key, sizeof key);
    }
    return f;
}

static void auth_ok(struct sess *s, const char *domain, const char *secret)
{
    struct client_fail *f = fail_slot(s->o, s, 0);

    if (f != NULL)
        f->fails = 0;
    snprintf(s->domain, sizeof s->domain, "%s", domain);
    snprintf(s->secret, sizeof s->secret, "%s", secret);
    set_state(s, S_AUTHED);
    log_info("odmr %s: authenticated as %s", s->peer, domain);
    reply(s, "235 2.7.0 Authentication successful");
}

/* A wrong secret: counted, logged, and answered after a delay. */
static void auth_failed(struct sess *s, const char *mech, const char *user)
{
    const struct conf_odmr *oc = &s->o->conf->odmr;
    struct client_fail *f = fail_slot(s->o, s, 1);
    unsigned n;
    long delay = oc->auth_delay;

    f->fails++;
    f->last = time(NULL);
    s->auth_fails++;
    n = f->fails > s->auth_fails ? f->fails : s->auth_fails;
    for (unsigned i = 1; i < n && delay < oc->auth_delay_max; i++)
        delay *= 2;
    if (delay > oc->auth_delay_max)
        delay = oc->auth_delay_max;
    stats_inc(STAT_ODMR_AUTH_FAILED);
    log_warn("odmr %s: AUTH %s failed for user \"%.64s\" (%u recent failure%s from this "
             "address); answering in %lds", s->peer, mech, user, n, n == 1 ? "" : "s", delay);
    s->close_after_tarpit = (long)s->auth_fails >= oc->auth_attempts;
    set_state(s, S_TARPIT);
    bufferevent_disable(s->bev, EV_READ);
    struct timeval tv = { delay, 0 };
    event_add(s->timer, &tv);
}

static void tarpit_end(struct sess *s)
{
    reply(s, "535 5.7.8 Authentication credentials invalid");
    if (s->close_after_tarpit) {
        reply(s, "421 4.7.0 %s Error: too many authentication failures",
              s->o->conf->hostname);
        sess_close(s);
        return;
    }
    set_state(s, S_READY);
    bufferevent_enable(s->bev, EV_READ);
    arm(s);
    sess_read(s->bev, s);       /* anything the client sent meanwhile */
}

/* ---- AUTH ------------------------------------------------------------------ */

/* The ODMR domain named user, with its secret parsed; NULL when there is
 * none (the caller still spends the same work, see check_password). */
static const struct conf_domain *auth_domain(const struct sess *s, const char *user,
                                             struct odmr_ctx *ctx)
{
    const struct conf_domain *cd = conf_domain_find(s->o->conf, user);

    if (cd == NULL || !cd->odmr || cd->odmr_secret == NULL ||
        odmr_secret_parse(cd->odmr_secret, ctx) != 0)
        return NULL;
    return cd;
}

static void check_password(struct sess *s, const char *mech, const char *user, const char *pw,
                           size_t pwlen)
{
    struct odmr_ctx ctx;
    const struct conf_domain *cd = auth_domain(s, user, &ctx);

    if (cd == NULL) {
        /* Same work for an unknown user: no timing oracle for names. */
        memset(&ctx, 0, sizeof ctx);
        odmr_password_verify(&ctx, pw, pwlen);
        auth_failed(s, mech, user);
        return;
    }
    if (!odmr_password_verify(&ctx, pw, pwlen)) {
        auth_failed(s, mech, user);
        return;
    }
    auth_ok(s, cd->name, cd->odmr_secret);
}

static void auth_plain_response(struct sess *s, const char *b64)
{
    unsigned char buf[3 * ODMR_AUTH_FIELD_MAX + 2];
    char user[ODMR_AUTH_FIELD_MAX], pw[ODMR_AUTH_FIELD_MAX];
    size_t n = 0, pwlen = 0;

    if (odmr_b64_decode(b64, strlen(b64), buf, sizeof buf, &n) != 0 ||
        odmr_plain_parse(buf, n, user, sizeof user, pw, sizeof pw, &pwlen) != 0) {
        OPENSSL_cleanse(buf, sizeof buf);
        set_state(s, S_READY);
        refuse(s, "501 5.5.2 Malformed AUTH PLAIN response");
        return;
    }
    check_password(s, "PLAIN", user, pw, pwlen);
    OPENSSL_cleanse(buf, sizeof buf);
    OPENSSL_cleanse(pw, sizeof pw);
}

static void auth_cram_response(struct sess *s, const char *b64)
{
    unsigned char buf[ODMR_AUTH_FIELD_MAX + ODMR_DIGEST_HEX + 2];
    char user[ODMR_AUTH_FIELD_MAX], digest[ODMR_DIGEST_HEX + 1];
    struct odmr_ctx ctx;
    size_t n = 0;

    if (odmr_b64_decode(b64, strlen(b64), buf, sizeof buf, &n) != 0 ||
        odmr_cram_response_parse(buf, n, user, sizeof user, digest, sizeof digest) != 0) {
        set_state(s, S_READY);
        refuse(s, "501 5.5.2 Malformed AUTH CRAM-MD5 response");
        return;
    }
    const struct conf_domain *cd = auth_domain(s, user, &ctx);
    if (cd == NULL) {
        memset(&ctx, 0, sizeof ctx);
        odmr_cram_verify(&ctx, s->challenge, strlen(s->challenge), digest, strlen(digest));
        auth_failed(s, "CRAM-MD5", user);
        return;
    }
    if (!odmr_cram_verify(&ctx, s->challenge, strlen(s->challenge), digest, strlen(digest))) {
        auth_failed(s, "CRAM-MD5", user);
        return;
    }
    auth_ok(s, cd->name, cd->odmr_secret);
}

static void auth_login_user(struct sess *s, const char *b64)
{
    unsigned char buf[ODMR_AUTH_FIELD_MAX];
    size_t n = 0;

    if (odmr_b64_decode(b64, strlen(b64), buf, sizeof buf - 1, &n) != 0 || n == 0 ||
        memchr(buf, '\0', n) != NULL) {
        set_state(s, S_READY);
        refuse(s, "501 5.5.2 Malformed AUTH LOGIN response");
        return;
    }
    memcpy(s->user, buf, n);
    s->user[n] = '\0';
    set_state(s, S_AUTH_PASS);
    reply(s, "334 UGFzc3dvcmQ6");      /* "Password:" */
}

static void auth_login_pass(struct sess *s, const char *b64)
{
    unsigned char buf[ODMR_AUTH_FIELD_MAX];
    size_t n = 0;

    if (odmr_b64_decode(b64, strlen(b64), buf, sizeof buf, &n) != 0 || n == 0) {
        set_state(s, S_READY);
        refuse(s, "501 5.5.2 Malformed AUTH LOGIN response");
        return;
    }
    check_password(s, "LOGIN", s->user, (const char *)buf, n);
    OPENSSL_cleanse(buf, sizeof buf);
}

/* A line in an AUTH exchange (RFC 4954 4: "*" cancels). */
static void auth_line(struct sess *s, const char *line)
{
    if (strcmp(line, "*") == 0) {
        set_state(s, S_READY);
        reply(s, "501 5.0.0 Authentication cancelled");
        return;
    }
    switch (s->st) {
    case S_AUTH_CRAM:
        auth_cram_response(s, line);
        return;
    case S_AUTH_PLAIN:
        auth_plain_response(s, line);
        return;
    case S_AUTH_USER:
        auth_login_user(s, line);
        return;
    case S_AUTH_PASS:
        auth_login_pass(s, line);
        return;
    default:
        log_panic("odmr %s: auth_line in state %s", s->peer, state_name[s->st]);
    }
}

/* ---- commands ------------------------------------------------------------- */

static void cmd_ehlo(struct sess *s, const char *arg)
{
    const struct conf *c = s->o->conf;

    if (*arg == '\0') {
        refuse(s, "501 5.5.4 Syntax: EHLO hostname");
        return;
    }
    if (s->st == S_GREETED)
        set_state(s, S_READY);
    /* RFC 2645 requires CRAM-MD5; PLAIN and LOGIN show a password, so
     * only under TLS (RFC 4954 4). */
    reply(s, "250-%s", c->hostname);
    reply(s, "250-AUTH CRAM-MD5%s", s->is_tls ? " PLAIN LOGIN" : "");
    reply(s, "250-ATRN");
    if (s->listener_tls == ODMR_TLS_STARTTLS && !s->is_tls)
        reply(s, "250-STARTTLS");
    reply(s, "250 ENHANCEDSTATUSCODES");
}

static void cmd_helo(struct sess *s, const char *arg)
{
    if (*arg == '\0') {
        refuse(s, "501 5.5.4 Syntax: HELO hostname");
        return;
    }
    if (s->st == S_GREETED)
        set_state(s, S_READY);
    reply(s, "250 %s", s->o->conf->hostname);
}

static void tls_begin(struct sess *s);

static void cmd_starttls(struct sess *s, const char *arg)
{
    if (s->listener_tls != ODMR_TLS_STARTTLS || s->is_tls) {
        refuse(s, "502 5.5.1 STARTTLS not offered here");
        return;
    }
    if (*arg) {
        refuse(s, "501 5.5.4 Syntax: STARTTLS");
        return;
    }
    if (s->st != S_READY) {
        refuse(s, "503 5.5.1 EHLO first");
        return;
    }
    if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0) {
        /* Octets after STARTTLS in clear: an injection attempt. */
        log_warn("odmr %s: data after STARTTLS; closing", s->peer);
        reply(s, "554 5.5.1 Error: data after STARTTLS");
        sess_close(s);
        return;
    }
    reply(s, "220 2.0.0 Ready to start TLS");
    /* The handshake starts once the 220 is written (sess_write); nothing
     * more is read in clear. */
    s->tls_pending = 1;
    bufferevent_disable(s->bev, EV_READ);
}

static void cmd_auth(struct sess *s, const char *arg)
{
    char mech[32], *sp;
    const char *initial = NULL;

    if (s->st == S_AUTHED) {
        refuse(s, "503 5.5.1 Already authenticated");
        return;
    }
    if (s->st != S_READY) {
        refuse(s, "503 5.5.1 EHLO first");
        return;
    }
    snprintf(mech, sizeof mech, "%s", arg);
    if ((sp = strchr(mech, ' ')) != NULL) {
        *sp = '\0';
        initial = arg + (sp - mech) + 1;
        while (*initial == ' ')
            initial++;
    }
    if (strcasecmp(mech, "CRAM-MD5") == 0) {
        unsigned char rnd[8];
        char b64[2 * ODMR_CHALLENGE_MAX];
        if (initial && *initial) {
            refuse(s, "501 5.5.2 CRAM-MD5 takes no initial response");
            return;
        }
        if (RAND_bytes(rnd, sizeof rnd) != 1)
            memset(rnd, 0, sizeof rnd);
        snprintf(s->challenge, sizeof s->challenge, "<%02x%02x%02x%02x%02x%02x%02x%02x.%lld@%s>",
                 rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7],
                 (long long)time(NULL), s->o->conf->hostname);
        odmr_b64_encode(s->challenge, strlen(s->challenge), b64, sizeof b64);
        set_state(s, S_AUTH_CRAM);
        reply(s, "334 %s", b64);
        return;
    }
    if (strcasecmp(mech, "PLAIN") != 0 && strcasecmp(mech, "LOGIN") != 0) {
        refuse(s, "504 5.5.4 Unrecognized authentication type");
        return;
    }
    if (!s->is_tls) {
        /* RFC 4954 4: the password would cross in clear. */
        reply(s, "538 5.7.11 Encryption required for requested authentication mechanism");
        log_info("odmr %s: AUTH %s refused without TLS", s->peer, mech);
        bad(s);
        return;
    }
    if (strcasecmp(mech, "PLAIN") == 0) {
        set_state(s, S_AUTH_PLAIN);
        if (initial && *initial) {
            auth_line(s, strcmp(initial, "=") == 0 ? "" : initial);
            return;
        }
        reply(s, "334 ");
        return;
    }
    set_state(s, S_AUTH_USER);
    if (initial && *initial) {
        auth_line(s, initial);
        return;
    }
    reply(s, "334 VXNlcm5hbWU6");      /* "Username:" */
}

static void reversed_end(void *arg, size_t sent, size_t deferred, const char *why);

static void line_ref_free(const void *data, size_t len, void *arg)
{
    (void)len;
    (void)arg;
    free((void *)data);
}

/*
 * The reversed link's output under TLS, one line per TLS record.  The
 * peer is often a relay that reads a line, passes it on and waits for the
 * socket to be readable again (fetchmail's ODMR mode: select(2), then one
 * SSL_read up to the newline).  Lines that arrive in one record wait in
 * its TLS buffer, where select(2) does not see them: a pipelined MAIL,
 * RCPT, DATA group or the body's last lines would stall the session
 * until a time-out.  A record per line keeps the rest in the socket,
 * where select(2) sees it.  Each line becomes a chain of its own
 * (evbuffer_add_reference), and bufferevent_openssl writes each chain
 * with its own SSL_write; a line longer than a record goes in
 * record-sized pieces.
 */
static enum bufferevent_filter_result line_filter_out(struct evbuffer *src, struct evbuffer *dst,
                                                      ev_ssize_t limit,
                                                      enum bufferevent_flush_mode mode, void *ctx)
{
    size_t moved = 0;

    (void)ctx;
    for (;;) {
        size_t len = evbuffer_get_length(src), n;
        struct evbuffer_ptr p;
        char *b;

        if (len == 0 || (limit >= 0 && (ev_ssize_t)moved >= limit))
            break;
        p = evbuffer_search(src, "\n", 1, NULL);
        if (p.pos >= 0)
            n = (size_t)p.pos + 1;
        else if (len >= ODMR_RECORD_MAX || mode != BEV_NORMAL)
            n = len;
        else
            break;              /* the rest of the line comes with the next write */
        if (n > ODMR_RECORD_MAX)
            n = ODMR_RECORD_MAX;
        if ((b = malloc(n)) == NULL)
            return BEV_ERROR;
        evbuffer_remove(src, b, n);
        if (evbuffer_add_reference(dst, b, n, line_ref_free, NULL) != 0) {
            free(b);
            return BEV_ERROR;
        }
        moved += n;
    }
    return moved > 0 ? BEV_OK : BEV_NEED_MORE;
}

/* ATRN [domain *("," domain)] (RFC 2645 4.3). */
static void cmd_atrn(struct sess *s, const char *arg)
{
    const struct conf *c = s->o->conf;
    char list[1024], *save = NULL;
    const char **doms;
    size_t n = 0, cap = 1;
    long total = 0;

    if (s->st != S_AUTHED) {
        refuse(s, "530 5.7.0 Authentication required");
        return;
    }
    if (strlen(arg) >= sizeof list) {
        refuse(s, "501 5.5.2 Domain list too long");
        return;
    }
    snprintf(list, sizeof list, "%s", *arg ? arg : s->domain);
    for (const char *p = list; *p; p++)
        cap += *p == ',';
    doms = calloc(cap, sizeof *doms);
    if (doms == NULL) {
        reply(s, "451 4.3.0 Unable to process ATRN request now");
        return;
    }
    for (char *t = strtok_r(list, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        const struct conf_domain *cd = conf_domain_find(c, t);
        int dup = 0;
        /* Only ODMR domains this session proved the secret of. */
        if (cd == NULL || !cd->odmr || cd->odmr_secret == NULL ||
            strcasecmp(cd->odmr_secret, s->secret) != 0) {
            log_warn("odmr %s: %s asked for %.255s: not authorized", s->peer, s->domain, t);
            reply(s, "450 4.7.1 ATRN request refused: %.255s is not yours to fetch", t);
            free(doms);
            return;
        }
        for (size_t i = 0; i < n; i++)
            dup |= strcmp(doms[i], cd->name) == 0;
        if (!dup)
            doms[n++] = cd->name;
    }
    if (n == 0) {
        reply(s, "501 5.5.4 Syntax: ATRN [domain[,domain...]]");
        free(doms);
        bad(s);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        long w = delivery_odmr_waiting(s->o->dl, doms[i]);
        if (w == DELIVERY_ODMR_BUSY) {
            reply(s, "451 4.3.0 Unable to process ATRN request now: %s is being delivered "
                  "by another session", doms[i]);
            free(doms);
            return;
        }
        if (w > 0)
            total += w;
    }
    if (total == 0) {
        log_info("odmr %s: ATRN %s: nothing queued", s->peer, arg);
        reply(s, "453 4.2.0 You have no mail");
        free(doms);
        return;
    }
    /* RFC 2645 4.3: 250, then the roles reverse on this connection. */
    reply(s, "250 2.0.0 OK now reversing the connection (%ld message%s)", total,
          total == 1 ? "" : "s");
    if (s->is_tls) {
        /* See line_filter_out: one line per TLS record on the reversed link. */
        struct bufferevent *f;
        bufferevent_setwatermark(s->bev, EV_WRITE, 0, ODMR_OUT_HIGH);
        f = bufferevent_filter_new(s->bev, NULL, line_filter_out,
                                   BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS, NULL, NULL);
        if (f == NULL) {
            reply(s, "421 4.3.0 out of memory");
            free(doms);
            sess_close(s);
            return;
        }
        s->bev = f;
    }
    event_del(s->timer);
    if (delivery_odmr_run(s->o->dl, doms, n, s->bev, s->is_tls,
                          (const struct sockaddr *)&s->peer_sa, s->peer_len, reversed_end,
                          s) != 0) {
        /* The 250 is out: the peer serves now, so no reply; just close. */
        log_warn("odmr %s: cannot start the reversed session; closing", s->peer);
        bufferevent_setcb(s->bev, sess_read, sess_write, sess_event, s);
        sess_close(s);
        free(doms);
        return;
    }
    /* The scheduler has the connection (and frees it); reversed_end frees
     * the session.  Unlinked from the sessions odmr_stop closes. */
    s->bev = NULL;
    set_state(s, S_REVERSED);
    if (s->prev)
        s->prev->next = s->next;
    else
        s->o->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->next = s->prev = NULL;
    stats_inc(STAT_ODMR_ATRN);
    log_info("odmr %s: ATRN as %s: %ld message%s; reversing the connection", s->peer,
             s->domain, total, total == 1 ? "" : "s");
    free(doms);
}

static void cmd_noop(struct sess *s, const char *arg)
{
    (void)arg;
    reply(s, "250 2.0.0 OK");
}

static void cmd_rset(struct sess *s, const char *arg)
{
    (void)arg;
    reply(s, "250 2.0.0 OK");
}

static void cmd_quit(struct sess *s, const char *arg)
{
    (void)arg;
    reply(s, "221 2.0.0 %s closing connection", s->o->conf->hostname);
    sess_close(s);
}

/* EHLO-less commands need a greeting first; the rest follow RFC 2645. */
#define C_ANY    0u
#define C_HELLO  1u                     /* only after EHLO/HELO */

static const struct command {
    const char *name;
    void (*fn)(struct sess *s, const char *arg);
    unsigned flags;
} commands[] = {
    { "EHLO", cmd_ehlo, C_ANY },
    { "HELO", cmd_helo, C_ANY },
    { "STARTTLS", cmd_starttls, C_ANY },
    { "AUTH", cmd_auth, C_HELLO },
    { "ATRN", cmd_atrn, C_HELLO },
    { "NOOP", cmd_noop, C_ANY },
    { "RSET", cmd_rset, C_ANY },
    { "QUIT", cmd_quit, C_ANY },
};

static void command(struct sess *s, char *line)
{
    size_t n = strcspn(line, " ");
    const char *arg = line + n;

    while (*arg == ' ')
        arg++;
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const struct command *c = &commands[i];
        if (strlen(c->name) != n || strncasecmp(line, c->name, n) != 0)
            continue;
        if ((c->flags & C_HELLO) && s->st == S_GREETED) {
            refuse(s, "503 5.5.1 EHLO first");
            return;
        }
        c->fn(s, arg);
        return;
    }
    /* RFC 2645 4.3's 502 for what this service does not do (MAIL, ETRN...). */
    refuse(s, "502 5.5.1 Command not implemented");
}

/* ---- I/O ---------------------------------------------------------------- */

static void sess_read(struct bufferevent *bev, void *arg)
{
    struct sess *s = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    long max = s->o->conf->limits.line_length;

    if (max < ODMR_AUTH_LINE_MAX)
        max = ODMR_AUTH_LINE_MAX;
    while (s->bev == bev && (s->st == S_GREETED || s->st == S_READY || s->st == S_AUTHED ||
                             s->st == S_AUTH_CRAM || s->st == S_AUTH_PLAIN ||
                             s->st == S_AUTH_USER || s->st == S_AUTH_PASS)) {
        size_t eol = 0;
        struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol, EVBUFFER_EOL_CRLF);
        char *line;

        if (p.pos < 0) {
            if ((long)evbuffer_get_length(in) > max) {
                reply(s, "500 5.5.2 Line too long");
                log_info("odmr %s: line longer than %ld octets; closing", s->peer, max);
                sess_close(s);
            }
            return;
        }
        if (p.pos > max) {
            reply(s, "500 5.5.2 Line too long");
            log_info("odmr %s: line longer than %ld octets; closing", s->peer, max);
            sess_close(s);
            return;
        }
        line = malloc((size_t)p.pos + 1);
        if (line == NULL) {
            reply(s, "421 4.3.0 out of memory");
            sess_close(s);
            return;
        }
        evbuffer_remove(in, line, (size_t)p.pos);
        line[p.pos] = '\0';
        evbuffer_drain(in, eol);
        arm(s);
        if (s->st == S_AUTH_CRAM || s->st == S_AUTH_PLAIN || s->st == S_AUTH_USER ||
            s->st == S_AUTH_PASS)
            auth_line(s, line);
        else
            command(s, line);
        OPENSSL_cleanse(line, (size_t)p.pos);
        free(line);
    }
}

static void sess_write(struct bufferevent *bev, void *arg)
{
    struct sess *s = arg;

    (void)bev;
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) != 0)
        return;
    if (s->st == S_CLOSING) {
        sess_free(s);
        return;
    }
    if (s->tls_pending) {
        s->tls_pending = 0;
        tls_begin(s);
    }
}

static void greet(struct sess *s)
{
    set_state(s, S_GREETED);
    reply(s, "220 %s ESMTP mxkeep On-Demand Mail Relay (RFC 2645)", s->o->conf->hostname);
}

static void sess_event(struct bufferevent *bev, short what, void *arg)
{
    struct sess *s = arg;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        if (s->st == S_HANDSHAKE) {
            char desc[256];
            s->is_tls = 1;
            log_debug("odmr %s: TLS: %s", s->peer,
                      tls_describe(bufferevent_openssl_get_ssl(s->bev), desc, sizeof desc));
            if (s->listener_tls == ODMR_TLS_IMPLICIT)
                greet(s);
            else
                set_state(s, S_GREETED);        /* RFC 3207: EHLO again, no greeting */
            arm(s);
            sess_read(s->bev, s);
        }
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (s->st == S_HANDSHAKE) {
            unsigned long e = bufferevent_get_openssl_error(s->bev);
            char buf[256] = "connection closed";
            if (e)
                ERR_error_string_n(e, buf, sizeof buf);
            while (bufferevent_get_openssl_error(s->bev))
                ;
            log_info("odmr %s: TLS handshake failed: %s", s->peer, buf);
        } else if (s->st != S_CLOSING) {
            log_info("odmr %s: connection lost in state %s", s->peer, state_name[s->st]);
        }
        sess_free(s);
    }
}

static void sess_timer(evutil_socket_t fd, short what, void *arg)
{
    struct sess *s = arg;

    (void)fd;
    (void)what;
    if (s->st == S_TARPIT) {
        tarpit_end(s);
        return;
    }
    if (s->st == S_CLOSING) {
        sess_free(s);
        return;
    }
    log_info("odmr %s: timed out in state %s", s->peer, state_name[s->st]);
    if (s->st != S_HANDSHAKE) {
        reply(s, "421 4.4.2 %s Error: timeout exceeded", s->o->conf->hostname);
        sess_close(s);
        struct timeval tv = { 1, 0 };
        if (s->bev != NULL)
            event_add(s->timer, &tv);       /* a peer that does not read */
        return;
    }
    sess_free(s);
}

/* After STARTTLS's 220 was written: the same socket, now in TLS. */
static void tls_begin(struct sess *s)
{
    struct bufferevent *old = s->bev, *nb;
    evutil_socket_t fd = bufferevent_getfd(old);
    SSL *ssl = SSL_new(s->o->tls);

    if (ssl == NULL) {
        log_warn("odmr %s: TLS set-up failed", s->peer);
        sess_free(s);
        return;
    }
    if (evbuffer_get_length(bufferevent_get_input(old)) > 0) {
        log_warn("odmr %s: data after STARTTLS; closing", s->peer);
        SSL_free(ssl);
        sess_free(s);
        return;
    }
    bufferevent_setcb(old, NULL, NULL, NULL, NULL);
    bufferevent_setfd(old, -1);
    nb = bufferevent_openssl_socket_new(s->o->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                        BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    bufferevent_free(old);
    if (nb == NULL) {
        SSL_free(ssl);
        evutil_closesocket(fd);
        s->bev = NULL;
        sess_free(s);
        return;
    }
    s->bev = nb;
    bufferevent_openssl_set_allow_dirty_shutdown(nb, 1);
    bufferevent_setcb(nb, sess_read, sess_write, sess_event, s);
    bufferevent_enable(nb, EV_READ | EV_WRITE);
    set_state(s, S_HANDSHAKE);
    arm(s);
}

static void sess_free(struct sess *s)
{
    if (s == NULL)
        return;
    if (s->st != S_REVERSED) {
        if (s->prev)
            s->prev->next = s->next;
        else if (s->o->sessions == s)
            s->o->sessions = s->next;
        if (s->next)
            s->next->prev = s->prev;
    }
    if (s->bev)
        bufferevent_free(s->bev);
    if (s->timer)
        event_free(s->timer);
    s->o->nsessions--;
    OPENSSL_cleanse(s, sizeof *s);
    free(s);
}

static void reversed_end(void *arg, size_t sent, size_t deferred, const char *why)
{
    struct sess *s = arg;

    log_info("odmr %s: reversed session for %s ended: %zu recipient%s delivered, %zu left "
             "queued (%s)", s->peer, s->domain, sent, sent == 1 ? "" : "s", deferred, why);
    sess_free(s);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    struct odmr *o = arg;
    struct sess *s;
    int one = 1, tlsmode = ODMR_TLS_IMPLICIT;
    char ip[INET6_ADDRSTRLEN] = "?";

    for (size_t i = 0; i < o->nlev; i++)
        if (o->lev[i] == l)
            tlsmode = o->lev_tls[i];
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
    if (o->stopping || (long)o->nsessions >= o->conf->odmr.max_sessions || o->dl == NULL ||
        o->tls == NULL) {
        log_warn("odmr [%s]: refused: %zu sessions open (odmr.max_sessions)", ip, o->nsessions);
        evutil_closesocket(fd);
        return;
    }
    s = calloc(1, sizeof *s);
    if (s == NULL) {
        evutil_closesocket(fd);
        return;
    }
    s->o = o;
    s->listener_tls = tlsmode;
    memcpy(&s->peer_sa, sa, (size_t)salen < sizeof s->peer_sa ? (size_t)salen : sizeof s->peer_sa);
    s->peer_len = (socklen_t)salen;
    snprintf(s->peer, sizeof s->peer, "[%s]", ip);
    s->login_deadline = time(NULL) + o->conf->odmr.login_timeout;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->timer = evtimer_new(o->base, sess_timer, s);
    if (tlsmode == ODMR_TLS_IMPLICIT) {
        SSL *ssl = SSL_new(o->tls);
        if (ssl)
            s->bev = bufferevent_openssl_socket_new(o->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                    BEV_OPT_CLOSE_ON_FREE |
                                                    BEV_OPT_DEFER_CALLBACKS);
        if (s->bev == NULL && ssl)
            SSL_free(ssl);
    } else {
        s->bev = bufferevent_socket_new(o->base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    }
    if (s->bev == NULL || s->timer == NULL) {
        if (s->bev == NULL)
            evutil_closesocket(fd);
        if (s->bev)
            bufferevent_free(s->bev);
        if (s->timer)
            event_free(s->timer);
        free(s);
        return;
    }
    o->nsessions++;
    s->next = o->sessions;
    if (o->sessions)
        o->sessions->prev = s;
    o->sessions = s;
    log_info("odmr %s: connect (%s)", s->peer, tlsmode == ODMR_TLS_IMPLICIT ? "TLS" : "plain");
    if (tlsmode == ODMR_TLS_IMPLICIT)
        bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
    bufferevent_setcb(s->bev, sess_read, sess_write, sess_event, s);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
    if (tlsmode == ODMR_TLS_IMPLICIT)
        set_state(s, S_HANDSHAKE);
    else
        greet(s);
    arm(s);
}

/* ---- public ---------------------------------------------------------------- */

struct odmr *odmr_new(struct event_base *base, const struct conf *c, char *err, size_t errlen)
{
    struct odmr *o;

    err[0] = '\0';
    if (c->odmr.nlisten == 0)
        return NULL;
    o = calloc(1, sizeof *o);
    if (o == NULL) {
        snprintf(err, errlen, "odmr: out of memory");
        return NULL;
    }
    o->base = base;
    o->conf = conf_ref(c);
    o->nfails = (size_t)c->odmr.clients;
    o->fails = calloc(o->nfails, sizeof *o->fails);
    o->lev = calloc(c->odmr.nlisten, sizeof *o->lev);
    o->lev_tls = calloc(c->odmr.nlisten, sizeof *o->lev_tls);
    if (o->fails == NULL || o->lev == NULL || o->lev_tls == NULL) {
        snprintf(err, errlen, "odmr: out of memory");
        odmr_free(o);
        return NULL;
    }
    for (size_t i = 0; i < c->odmr.nlisten; i++) {
        const struct conf_odmr_listen *l = &c->odmr.listen[i];
        struct sockaddr_storage ss;
        socklen_t len;
        memset(&ss, 0, sizeof ss);
        if (strchr(l->address, ':')) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            a->sin6_family = AF_INET6;
            a->sin6_port = htons((uint16_t)l->port);
            inet_pton(AF_INET6, l->address, &a->sin6_addr);
            len = sizeof *a;
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            a->sin_family = AF_INET;
            a->sin_port = htons((uint16_t)l->port);
            inet_pton(AF_INET, l->address, &a->sin_addr);
            len = sizeof *a;
        }
        o->lev[i] = evconnlistener_new_bind(base, on_accept, o,
                                            LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                            LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_DISABLED,
                                            ODMR_BACKLOG, (struct sockaddr *)&ss, (int)len);
        if (o->lev[i] == NULL) {
            snprintf(err, errlen, "odmr: cannot listen on %s port %d: %s", l->address, l->port,
                     strerror(errno));
            odmr_free(o);
            return NULL;
        }
        o->lev_tls[i] = l->tls;
        o->nlev = i + 1;
    }
    return o;
}

void odmr_start(struct odmr *o, SSL_CTX *tls, struct delivery *dl)
{
    if (o == NULL)
        return;
    if (tls)
        SSL_CTX_up_ref(tls);
    o->tls = tls;
    o->dl = dl;
    for (size_t i = 0; i < o->nlev; i++)
        evconnlistener_enable(o->lev[i]);
    for (size_t i = 0; i < o->conf->odmr.nlisten; i++)
        log_info("odmr: listening on %s port %d (%s)", o->conf->odmr.listen[i].address,
                 o->conf->odmr.listen[i].port,
                 o->conf->odmr.listen[i].tls == ODMR_TLS_IMPLICIT ? "implicit TLS" : "STARTTLS");
}

void odmr_set_conf(struct odmr *o, const struct conf *c)
{
    if (o == NULL)
        return;
    conf_ref(c);
    conf_free(o->conf);
    o->conf = c;
}

void odmr_stop(struct odmr *o)
{
    if (o == NULL)
        return;
    o->stopping = 1;
    for (size_t i = 0; i < o->nlev; i++)
        evconnlistener_disable(o->lev[i]);
    while (o->sessions) {
        struct sess *s = o->sessions;
        if (s->st != S_HANDSHAKE && s->st != S_CLOSING && s->bev) {
            struct evbuffer *out = bufferevent_get_output(s->bev);
            evbuffer_add_printf(out, "421 4.3.2 %s shutting down\r\n", o->conf->hostname);
            bufferevent_flush(s->bev, EV_WRITE, BEV_FLUSH);
        }
        sess_free(s);
    }
}

size_t odmr_session_count(const struct odmr *o)
{
    size_t n = 0;
    if (o == NULL)
        return 0;
    for (const struct sess *s = o->sessions; s; s = s->next)
        n++;
    return n;
}

void odmr_free(struct odmr *o)
{
    if (o == NULL)
        return;
    while (o->sessions)
        sess_free(o->sessions);
    for (size_t i = 0; i < o->nlev; i++)
        if (o->lev[i])
            evconnlistener_free(o->lev[i]);
    free(o->lev);
    free(o->lev_tls);
    free(o->fails);
    SSL_CTX_free(o->tls);
    conf_free(o->conf);
    free(o);
}
