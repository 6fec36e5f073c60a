/*
 * smtpc.c - one outbound SMTP connection (see smtpc.h): a single explicit
 * state machine driven by libevent bufferevents.
 *
 * Owns: its socket / bufferevent (plain, then TLS on the same descriptor
 * after STARTTLS), one timer, two deferred events, copies of the config
 * strings.  It borrows the scheduler's struct smtpc_msg from next() until
 * done() and moves body octets out of msg->body into the socket (no copy of
 * whole bodies; dot-stuffing works chunk by chunk as the socket drains).
 *
 * Never: calls ops->closed() synchronously from smtpc_new() / smtpc_abort();
 * touches the struct after closed() returns (it frees itself right after);
 * reads past the STARTTLS 220 in clear (anything buffered after it is a
 * command-injection attempt, CVE-2011-0411 class: the session is dropped,
 * as a failure of the TLS step, which under "may" means "again in clear");
 * follows a peer reply line longer than REPLY_LINE_MAX; decides on what was
 * declared about a message (BODY=, SMTPUTF8) instead of what it holds.
 *
 * Also holds the pure reply parser (smtpc_reply_line, smtpc_reply_status:
 * no I/O, unit-tested in t/unit/t_smtpc.c) for every client that reads SMTP
 * replies.  Every failure reaches closed() with its stage, so the scheduler
 * classifies by where it happened, never by the error's wording.
 *
 * Security: TLS policy "verify" accepts a peer only by pin (sha256 of the
 * certificate DER) or by chain + host name (SSL_set1_host); "encrypt" and
 * "may" do not authenticate the peer.  Peer text is copied bounded and only
 * ever logged / stored, never interpreted beyond the reply code and EHLO
 * keywords.
 */
#include "config.h"
#include "smtpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
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
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "smtp_parse.h"
#include "tls.h"

#define REPLY_LINE_MAX   4096          /* longest reply line we accept */
#define REPLY_TEXT_MAX   SMTPC_REPLY_TEXT_MAX  /* stored reply text (smtpc_msg.text) */
#define PEER_MAX         320
#define WHY_MAX          768
#define FP_MAX           80            /* "sha256:" + 64 hex + NUL, with room */
#define PUMP_CHUNK       (64 * 1024)   /* body octets stuffed per pump */
#define PUMP_LOWAT       (PUMP_CHUNK / 2)  /* refill when output drains below */
#define QUIT_TIMEOUT_MAX 10L           /* seconds we wait for 221 at most */
#define XTEXT_BUF        (SMTP_ORCPT_MAX * 3 + 64)

#define EXT_PIPELINING  0x01u
#define EXT_SIZE        0x02u
#define EXT_8BITMIME    0x04u
#define EXT_SMTPUTF8    0x08u
#define EXT_DSN         0x10u
#define EXT_CHUNKING    0x20u
#define EXT_STARTTLS    0x40u

enum state {
    S_CONNECT = 0,      /* TCP connect in progress */
    S_GREETING,         /* waiting for 220 */
    S_EHLO,
    S_HELO,
    S_STARTTLS,         /* waiting for 220 to STARTTLS */
    S_HANDSHAKE,        /* TLS handshake on the same socket */
    S_NEXT,             /* inside ops->ready / ops->next */
    S_IDLE,             /* SMTPC_NEXT_WAIT: until smtpc_resume() */
    S_RSET,
    S_MAIL,
    S_RCPT,
    S_DATA,             /* waiting for 354 */
    S_BODY,             /* streaming the dot-stuffed body */
    S_DOT,              /* waiting for the end-of-data reply */
    S_BDAT,             /* waiting for the BDAT LAST reply */
    S_DOT_DISCARD,      /* 354 with no recipient accepted: sent "." alone */
    S_QUIT,
    S_DEAD              /* closed() is scheduled */
};

static const char *const state_name[] = {
    "connect", "greeting", "ehlo", "helo", "starttls", "handshake", "next",
    "idle", "rset", "mail", "rcpt", "data", "body", "dot", "bdat",
    "dot-discard", "quit", "dead"
};

/* "... while <what>" in lost-connection texts, Postfix's wording. */
static const char *const state_while[] = {
    "connecting", "receiving the initial server greeting",
    "performing the EHLO handshake", "performing the HELO handshake",
    "sending STARTTLS", "performing the TLS handshake", "idle", "idle",
    "sending RSET", "sending MAIL FROM", "sending RCPT TO",
    "sending DATA command", "sending message body",
    "sending end of data -- message may be sent more than once",
    "sending end of data -- message may be sent more than once",
    "sending end of data", "sending QUIT", "closing"
};
_Static_assert(sizeof state_name / sizeof state_name[0] == S_DEAD + 1,
               "state_name[] must name every enum state");
_Static_assert(sizeof state_while / sizeof state_while[0] == S_DEAD + 1,
               "state_while[] must cover every enum state");

struct smtpc {
    struct event_base *base;
    struct bufferevent *bev;
    struct event *ev_timer;             /* the one time-out of the state */
    struct event *ev_finish;            /* closed() from the loop */
    struct event *ev_resume;            /* next() from the loop */
    const struct smtpc_ops *ops;
    void *arg;
    enum state st;

    char *helo, *peer_name;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    enum tls_policy tls;
    SSL_CTX *tls_ctx;
    char fingerprint[FP_MAX];
    long t_connect, t_greeting, t_command, t_data;
    char peer[PEER_MAX];

    unsigned ext;                       /* EXT_* of the current EHLO */
    uint64_t size_max;                  /* 0: no limit announced */
    struct dl_declared limits;          /* RFC 9422 LIMITS of the current EHLO */
    unsigned ntxn;                      /* MAIL commands sent in this session */
    int is_tls;
    int tls_step;                       /* STARTTLS sent, session not ready yet */

    /* reply being read */
    struct smtpc_reply rep;
    char line[REPLY_LINE_MAX + 1];

    /* transaction */
    struct smtpc_msg *msg;
    size_t ri;                          /* next RCPT reply expected */
    size_t nsend;                       /* RCPTs sent in this transaction (RCPTMAX) */
    struct timespec t_eod;              /* end-of-data command queued */
    size_t naccepted;
    int mail_failed;
    int need_rset;                      /* a transaction failed midway */
    int pipelined;                      /* this transaction's commands went together */
    int at_bol;                         /* body pump: next octet starts a line */
    int need_crlf;                      /* body does not end in CRLF */
    int abort_pending;                  /* smtpc_abort() inside a callback */
    int resume_pending;                 /* smtpc_resume() inside next() */

    /* the end */
    enum smtpc_end end_how;
    enum smtpc_stage end_stage;
    int fail_code;                      /* for undecided recipients */
    char fail_text[REPLY_TEXT_MAX];
    char end_why[WHY_MAX];
};

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void pull_next(struct smtpc *c);

/* ---- reply parser (pure: no I/O, unit-tested) ---------------------------- */

/* Length of an enhanced status code at s (RFC 3463: class "." 1*3digit "."
 * 1*3digit, then a space or the end), 0 when there is none. */
static size_t status_len(const char *s, size_t len)
{
    size_t i = 0;

    if (len < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
        return 0;
    i = 2;
    for (int part = 0; part < 2; part++) {
        size_t d = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9' && d < 4) {
            i++;
            d++;
        }
        if (d == 0 || d > 3)
            return 0;
        if (part == 0) {
            if (i >= len || s[i] != '.')
                return 0;
            i++;
        }
    }
    if (i < len && s[i] != ' ')
        return 0;
    return i;
}

static void reply_append(struct smtpc_reply *r, const char *p, size_t n)
{
    size_t room = sizeof r->text - 1 - r->len;

    if (n > room)
        n = room;
    memcpy(r->text + r->len, p, n);
    r->len += n;
    r->text[r->len] = '\0';
}

void smtpc_reply_init(struct smtpc_reply *r)
{
    r->code = 0;
    r->status[0] = '\0';
    r->lines = 0;
    r->more = 0;
    r->len = 0;
    r->text[0] = '\0';
}

enum smtpc_reply_result smtpc_reply_line(struct smtpc_reply *r, const char *line, size_t len,
                                         const char **line_text)
{
    const char *text;
    size_t tlen, sl;
    int code;

    if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
        line[2] < '0' || line[2] > '9' || (len > 3 && line[3] != ' ' && line[3] != '-')) {
        r->more = 0;
        return SMTPC_REPLY_BAD;
    }
    code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    text = len > 4 ? line + 4 : "";
    tlen = len > 4 ? len - 4 : 0;
    if (line_text)
        *line_text = text;
    if (r->lines > 0 && code != r->code) {
        r->more = 0;
        return SMTPC_REPLY_MIXED;
    }
    sl = status_len(text, tlen);
    if (r->lines == 0) {
        r->code = code;
        reply_append(r, line, 3);
        if (sl > 0 && sl < sizeof r->status) {
            memcpy(r->status, text, sl);
            r->status[sl] = '\0';
            /* RFC 3463 2: the class must match the reply; the code wins. */
            r->status[0] = line[0];
            reply_append(r, " ", 1);
            reply_append(r, r->status, sl);
        }
    }
    /* Each line's text once, without its repeated code and status. */
    if (sl > 0) {
        text += sl;
        tlen -= sl;
    }
    while (tlen > 0 && *text == ' ') {
        text++;
        tlen--;
    }
    if (tlen > 0) {
        reply_append(r, " ", 1);
        reply_append(r, text, tlen);
    }
    r->lines++;
    r->more = len > 3 && line[3] == '-';
    return r->more ? SMTPC_REPLY_MORE : SMTPC_REPLY_DONE;
}

void smtpc_reply_status(int code, const char *text, char *out, size_t len)
{
    size_t tl = strlen(text), sl;

    /* "NNN x.y.z ...", as smtpc_reply_line stores it. */
    if (tl > 4 && text[3] == ' ' && (sl = status_len(text + 4, tl - 4)) > 0 &&
        sl < SMTPC_STATUS_MAX && code >= 200 && code < 600) {
        snprintf(out, len, "%c%.*s", '0' + code / 100, (int)sl - 1, text + 5);
        return;
    }
    snprintf(out, len, "%d.0.0", code / 100);
}

/* ---- small helpers ------------------------------------------------------ */

static void set_state(struct smtpc *c, enum state st)
{
    if (c->st != st)
        log_debug("smtpc %s: %s -> %s", c->peer, state_name[c->st], state_name[st]);
    c->st = st;
}

static void arm(struct smtpc *c, long secs)
{
    struct timeval tv = { secs > 0 ? secs : 1, 0 };
    event_add(c->ev_timer, &tv);
}

static struct evbuffer *out(struct smtpc *c)
{
    return bufferevent_get_output(c->bev);
}

static int is_ip_literal(const char *s)
{
    unsigned char b[sizeof(struct in6_addr)];
    return s[0] == '[' || inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

static void set_text(char *dst, const char *src)
{
    snprintf(dst, REPLY_TEXT_MAX, "%s", src);
}

static enum smtpc_end tls_fail_how(const struct smtpc *c)
{
    return c->tls == TLS_POLICY_MAY ? SMTPC_END_TLS_RETRY : SMTPC_END_TLS;
}

static enum smtpc_stage stage_of(const struct smtpc *c)
{
    switch (c->st) {
    case S_CONNECT:
        return SMTPC_STAGE_CONNECT;
    case S_GREETING:
        return SMTPC_STAGE_GREETING;
    case S_QUIT:
    case S_DEAD:
        return SMTPC_STAGE_QUIT;
    default:
        break;
    }
    if (c->tls_step)
        return SMTPC_STAGE_TLS;
    if (c->st == S_EHLO || c->st == S_HELO)
        return SMTPC_STAGE_HELLO;
    return SMTPC_STAGE_SESSION;
}

/*
 * End the session: remember how, stop all I/O now, and let the loop run
 * done() for a message in flight and then closed().  Idempotent: the first
 * reason wins.  The bufferevent stays allocated (callbacks cleared) until
 * the finish event, so a caller up the stack may still hold its pointer.
 */
static void __attribute__((format(printf, 5, 6)))
finish(struct smtpc *c, enum smtpc_end how, int code, const char *text, const char *fmt, ...)
{
    va_list ap;

    if (c->st == S_DEAD)
        return;
    c->end_stage = stage_of(c);
    /* Classified by where it happened: under "may" any failure of the TLS
     * step (refusal after 220, stray data, handshake, lost) means "go on in
     * clear"; under encrypt/verify it is a TLS failure with its reason. */
    if (c->end_stage == SMTPC_STAGE_TLS && how != SMTPC_END_OK)
        how = tls_fail_how(c);
    c->end_how = how;
    c->fail_code = code;
    set_text(c->fail_text, text ? text : "");
    va_start(ap, fmt);
    vsnprintf(c->end_why, sizeof c->end_why, fmt, ap);
    va_end(ap);
    set_state(c, S_DEAD);
    event_del(c->ev_timer);
    event_del(c->ev_resume);
    if (c->bev) {
        bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    }
    event_active(c->ev_finish, EV_TIMEOUT, 0);
}

/* Connection lost / timed out / garbled mid-session. */
static void lost(struct smtpc *c, const char *what)
{
    char text[REPLY_TEXT_MAX];
    enum smtpc_end how = SMTPC_END_LOST;

    snprintf(text, sizeof text, "451 4.4.2 %s with %s while %s", what, c->peer,
             state_while[c->st]);
    if (c->st == S_CONNECT)
        how = SMTPC_END_CONNECT;
    else if (c->st == S_GREETING)
        how = SMTPC_END_GREETING;
    else if (c->st == S_QUIT)
        how = SMTPC_END_OK;
    finish(c, how, 451, text, "%s", text + 10);
}

static void __attribute__((format(printf, 2, 3))) protocol_error(struct smtpc *c, const char *fmt, ...)
{
    char why[WHY_MAX], what[WHY_MAX + 32];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    log_warn("smtpc %s: protocol error: %s", c->peer, why);
    snprintf(what, sizeof what, "protocol error (%s)", why);
    lost(c, what);
}

static void msg_fill(struct smtpc_msg *m, int code, const char *text, int only_undecided)
{
    for (size_t i = 0; i < m->nrcpt; i++) {
        if (only_undecided && m->code[i] != 0 && m->code[i] / 100 != 2)
            continue;
        m->code[i] = code;
        set_text(m->text[i], text);
    }
}

/* The reply decides every recipient RCPT accepted. */
static void msg_fill_accepted(struct smtpc_msg *m, int code, const char *text)
{
    for (size_t i = 0; i < m->nrcpt; i++)
        if (m->code[i] / 100 == 2) {
            m->code[i] = code;
            set_text(m->text[i], text);
        }
}

static void msg_done(struct smtpc *c)
{
    struct smtpc_msg *m = c->msg;
    c->msg = NULL;
    set_state(c, S_NEXT);
    c->ops->done(c->arg, c, m);
}

/* ---- commands ----------------------------------------------------------- */

static void send_ehlo(struct smtpc *c)
{
    c->ext = 0;
    c->size_max = 0;
    memset(&c->limits, 0, sizeof c->limits);
    evbuffer_add_printf(out(c), "EHLO %s\r\n", c->helo);
    set_state(c, S_EHLO);
    arm(c, c->t_command);
}

/* Decide on what the message holds, not on what was declared about it:
 * QMSG_F_8BIT is what the receiving side saw in the octets. */
static int msg_is_8bit(const struct qmsg *m)
{
    return (m->flags & QMSG_F_8BIT) != 0;
}

/* BODY=8BITMIME goes out when the peer takes it and the message is 8-bit
 * or was declared so; to a peer without 8BITMIME a 7-bit message goes
 * without BODY= (precheck refuses a real 8-bit one). */
static int want_body_8bit(const struct smtpc *c, const struct qmsg *m)
{
    return (c->ext & EXT_8BITMIME) && (msg_is_8bit(m) || m->body != SMTP_BODY_7BIT);
}

static int has_non_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 1;
    return 0;
}

/* Does the header section of the stored message (up to the first empty
 * line) hold an octet >= 0x80?  Looked at only when it matters (SMTPUTF8
 * declared, peer without it), so the common path reads nothing. */
static int header_non_ascii(struct evbuffer *body)
{
    struct evbuffer_ptr end = evbuffer_search(body, "\r\n\r\n", 4, NULL);
    size_t hlen = end.pos >= 0 ? (size_t)end.pos : evbuffer_get_length(body);
    struct evbuffer_ptr at;
    struct evbuffer_iovec v[8];

    if (hlen == 0 || evbuffer_ptr_set(body, &at, 0, EVBUFFER_PTR_SET) != 0)
        return 0;
    while (hlen > 0) {
        int n = evbuffer_peek(body, (ev_ssize_t)hlen, &at, v, 8);
        size_t seen = 0;
        if (n <= 0)
            return 0;
        for (int i = 0; i < n && i < 8 && seen < hlen; i++) {
            const unsigned char *p = v[i].iov_base;
            size_t k = v[i].iov_len < hlen - seen ? v[i].iov_len : hlen - seen;
            for (size_t x = 0; x < k; x++)
                if (p[x] >= 0x80)
                    return 1;
            seen += k;
        }
        if (seen == 0)
            return 0;
        hlen -= seen;
        if (evbuffer_ptr_set(body, &at, seen, EVBUFFER_PTR_ADD) != 0)
            return 0;
    }
    return 0;
}

/* SMTPUTF8 is needed when an address of this transaction or a header
 * really holds non-ASCII (RFC 6531 3.4), whatever MAIL declared. */
static int msg_needs_utf8(const struct smtpc_msg *sm)
{
    if (has_non_ascii(sm->m->sender))
        return 1;
    for (size_t i = 0; i < sm->nrcpt; i++)
        if (has_non_ascii(sm->rcpt[i].addr))
            return 1;
    return header_non_ascii(sm->body);
}

static void write_mail(struct smtpc *c)
{
    const struct qmsg *m = c->msg->m;
    struct evbuffer *o = out(c);

    evbuffer_add_printf(o, "MAIL FROM:<%s>", m->sender);
    if (c->ext & EXT_SIZE) {
        /* What goes out (RFC 1870 section 4): the stored text with the
         * Authentication-Results header the scheduler put in front. */
        size_t len = c->msg->body ? evbuffer_get_length(c->msg->body) : 0;
        unsigned long long size = len > m->size ? (unsigned long long)len : m->size;
        evbuffer_add_printf(o, " SIZE=%llu", size);
    }
    if (want_body_8bit(c, m))
        evbuffer_add(o, " BODY=8BITMIME", 14);
    /* Declared and the peer takes it: passed on.  Declared but the peer
     * lacks it: precheck let it through only when nothing needs it. */
    if ((m->flags & QMSG_F_SMTPUTF8) && (c->ext & EXT_SMTPUTF8))
        evbuffer_add(o, " SMTPUTF8", 9);
    if (c->ext & EXT_DSN) {
        char x[XTEXT_BUF];
        if (m->ret == SMTP_RET_FULL)
            evbuffer_add(o, " RET=FULL", 9);
        else if (m->ret == SMTP_RET_HDRS)
            evbuffer_add(o, " RET=HDRS", 9);
        if (m->envid[0] && smtp_xtext_encode(m->envid, x, sizeof x) >= 0)
            evbuffer_add_printf(o, " ENVID=%s", x);
    }
    evbuffer_add(o, "\r\n", 2);
}

static void write_rcpt(struct smtpc *c, size_t i)
{
    const struct qrcpt *r = &c->msg->rcpt[i];
    struct evbuffer *o = out(c);

    evbuffer_add_printf(o, "RCPT TO:<%s>", r->addr);
    if (c->ext & EXT_DSN) {
        if (r->notify & SMTP_NOTIFY_NEVER) {
            evbuffer_add(o, " NOTIFY=NEVER", 13);
        } else if (r->notify) {
            const char *sep = " NOTIFY=";
            static const struct { int bit; const char *name; } kw[] = {
                { SMTP_NOTIFY_SUCCESS, "SUCCESS" }, { SMTP_NOTIFY_FAILURE, "FAILURE" },
                { SMTP_NOTIFY_DELAY, "DELAY" } };
            for (size_t k = 0; k < sizeof kw / sizeof kw[0]; k++)
                if (r->notify & kw[k].bit) {
                    evbuffer_add_printf(o, "%s%s", sep, kw[k].name);
                    sep = ",";
                }
        }
        const char *semi = strchr(r->orcpt, ';');
        if (semi && semi != r->orcpt) {
            char x[XTEXT_BUF];
            if (smtp_xtext_encode(semi + 1, x, sizeof x) >= 0)
                evbuffer_add_printf(o, " ORCPT=%.*s;%s", (int)(semi - r->orcpt), r->orcpt, x);
        }
    }
    evbuffer_add(o, "\r\n", 2);
}

static void send_bdat(struct smtpc *c)
{
    struct evbuffer *o = out(c);
    evbuffer_add_printf(o, "BDAT %zu LAST\r\n", evbuffer_get_length(c->msg->body));
    /* Moves the chains (file segments included); nothing is copied. */
    evbuffer_add_buffer(o, c->msg->body);
    clock_gettime(CLOCK_MONOTONIC, &c->t_eod);
    set_state(c, S_BDAT);
    arm(c, c->t_data);
}

static void send_data(struct smtpc *c)
{
    evbuffer_add(out(c), "DATA\r\n", 6);
    set_state(c, S_DATA);
    arm(c, c->t_data);
}

/* ---- body streaming (DATA) ---------------------------------------------- */

/*
 * Move up to PUMP_CHUNK body octets into the output, adding a '.' before
 * every line that starts with one.  Whole lines are moved with
 * evbuffer_remove_buffer, so body chains go over without a copy.
 */
static void pump(struct smtpc *c)
{
    struct evbuffer *body = c->msg->body, *o = out(c);
    size_t budget = PUMP_CHUNK;

    while (budget > 0) {
        size_t len = evbuffer_get_length(body), n, take;
        struct evbuffer_ptr end, hit;
        char ch;

        if (len == 0) {
            if (c->need_crlf)
                evbuffer_add(o, "\r\n", 2);
            evbuffer_add(o, ".\r\n", 3);
            clock_gettime(CLOCK_MONOTONIC, &c->t_eod);
            set_state(c, S_DOT);
            arm(c, c->t_data);
            return;
        }
        if (c->at_bol && evbuffer_copyout(body, &ch, 1) == 1 && ch == '.')
            evbuffer_add(o, ".", 1);
        n = len < budget ? len : budget;
        if (n == len) {
            hit = evbuffer_search(body, "\n.", 2, NULL);
        } else {
            evbuffer_ptr_set(body, &end, n, EVBUFFER_PTR_SET);
            hit = evbuffer_search_range(body, "\n.", 2, NULL, &end);
        }
        if (hit.pos >= 0) {
            take = (size_t)hit.pos + 1;
            c->at_bol = 1;
        } else {
            struct evbuffer_ptr last;
            take = n;
            evbuffer_ptr_set(body, &last, n - 1, EVBUFFER_PTR_SET);
            c->at_bol = evbuffer_copyout_from(body, &last, &ch, 1) == 1 && ch == '\n';
        }
        evbuffer_remove_buffer(body, o, take);
        budget = take < budget ? budget - take : 0;
    }
    arm(c, c->t_data);
}

static void start_body(struct smtpc *c)
{
    struct evbuffer *body = c->msg->body;
    size_t len = evbuffer_get_length(body);
    char tail[2] = { 0, 0 };

    c->at_bol = 1;
    c->need_crlf = 0;
    if (len > 0) {
        struct evbuffer_ptr p;
        if (len == 1) {
            c->need_crlf = 1;
        } else {
            evbuffer_ptr_set(body, &p, len - 2, EVBUFFER_PTR_SET);
            evbuffer_copyout_from(body, &p, tail, 2);
            c->need_crlf = !(tail[0] == '\r' && tail[1] == '\n');
        }
    }
    set_state(c, S_BODY);
    pump(c);
}

/* ---- transactions -------------------------------------------------------- */

/* A 452 / 552 to RCPT: the peer's per-transaction recipient limit, when it
 * accepted at least one RCPT of this transaction first (servers count
 * accepted recipients, as Postfix's smtpd_recipient_limit does).  The reply
 * becomes a 452 with a 4.x.y status (Postfix's client does the same). */
static void rcpt_limited(struct smtpc *c)
{
    if (c->rep.code == 552) {
        c->rep.code = 452;
        c->rep.text[0] = '4';
        if (c->rep.status[0]) {
            c->rep.status[0] = '4';
            if (c->rep.len > 4)
                c->rep.text[4] = '4';
        }
    }
    /* Learn a limit only from a reply that says so: status X.5.3 ("too
     * many recipients", RFC 3463), or a bare 452 / 552 without status. */
    if ((c->msg->rcpt_limit == 0 || c->naccepted < c->msg->rcpt_limit) && c->naccepted > 0 &&
        (c->rep.status[0] == '\0' || strncmp(c->rep.status + 1, ".5.3", 5) == 0))
        c->msg->rcpt_limit = c->naccepted;
}

/* Local refusals the peer's EHLO makes certain; 1 when the message is decided. */
static int precheck(struct smtpc *c, struct smtpc_msg *sm)
{
    const struct qmsg *m = sm->m;
    char text[REPLY_TEXT_MAX];

    if ((c->ext & EXT_SIZE) && c->size_max > 0 && m->size > c->size_max) {
        snprintf(text, sizeof text, "552 5.3.4 message size %llu exceeds size limit %llu of %s",
                 (unsigned long long)m->size, (unsigned long long)c->size_max, c->peer);
        msg_fill(sm, 552, text, 0);
        return 1;
    }
    if (msg_is_8bit(m) && !(c->ext & EXT_8BITMIME)) {
        snprintf(text, sizeof text, "554 5.6.3 8-bit message and %s does not support 8BITMIME",
                 c->peer);
        msg_fill(sm, 554, text, 0);
        return 1;
    }
    if ((m->flags & QMSG_F_SMTPUTF8) && !(c->ext & EXT_SMTPUTF8) && msg_needs_utf8(sm)) {
        snprintf(text, sizeof text, "553 5.6.7 SMTPUTF8 is required and %s does not support it",
                 c->peer);
        msg_fill(sm, 553, text, 0);
        return 1;
    }
    return 0;
}

static void start_txn(struct smtpc *c, struct smtpc_msg *m)
{
    struct evbuffer *o = out(c);

    c->msg = m;
    m->rcpt_limit = 0;
    m->latency_us = -1;
    for (size_t i = 0; i < m->nrcpt; i++) {
        m->code[i] = 0;
        m->text[i][0] = '\0';
    }
    /* RFC 9422 RCPTMAX: the recipients past it are not sent; they wait
     * for the next transaction (452 4.5.3, as if the peer had said it). */
    c->nsend = m->nrcpt;
    if (c->limits.rcptmax > 0 && m->nrcpt > c->limits.rcptmax) {
        char text[REPLY_TEXT_MAX];
        c->nsend = c->limits.rcptmax;
        m->rcpt_limit = c->nsend;
        snprintf(text, sizeof text, "452 4.5.3 not sent in this transaction: %s declares "
                 "LIMITS RCPTMAX=%u", c->peer, c->limits.rcptmax);
        for (size_t i = c->nsend; i < m->nrcpt; i++) {
            m->code[i] = 452;
            set_text(m->text[i], text);
        }
    }
    c->ntxn++;
    c->ri = 0;
    c->naccepted = 0;
    c->mail_failed = 0;
    c->pipelined = (c->ext & EXT_PIPELINING) != 0;
    if (c->need_rset) {
        evbuffer_add(o, "RSET\r\n", 6);
        c->need_rset = 0;
        set_state(c, S_RSET);
        if (!c->pipelined) {
            arm(c, c->t_command);
            return;
        }
    }
    write_mail(c);
    if (c->pipelined) {
        for (size_t i = 0; i < c->nsend; i++)
            write_rcpt(c, i);
        if (!(c->ext & EXT_CHUNKING))
            evbuffer_add(o, "DATA\r\n", 6);
    }
    if (c->st != S_RSET)
        set_state(c, S_MAIL);
    arm(c, c->t_command);
}

static void send_quit(struct smtpc *c)
{
    evbuffer_add(out(c), "QUIT\r\n", 6);
    set_state(c, S_QUIT);
    arm(c, c->t_command < QUIT_TIMEOUT_MAX ? c->t_command : QUIT_TIMEOUT_MAX);
}

/* Between messages: ask the scheduler for work until a transaction starts,
 * the session idles or QUITs.  Every callback may call smtpc_abort() or
 * smtpc_resume(); those only set flags here (S_NEXT), looked at below. */
static void pull_next(struct smtpc *c)
{
    for (;;) {
        struct smtpc_msg *m = NULL;
        enum smtpc_next r;

        /* RFC 9422 MAILMAX: no more transactions in this session. */
        if (c->abort_pending || (c->limits.mailmax > 0 && c->ntxn >= c->limits.mailmax)) {
            send_quit(c);
            return;
        }
        set_state(c, S_NEXT);
        c->resume_pending = 0;
        r = c->ops->next(c->arg, c, &m);
        if (c->st == S_DEAD) {
            if (r == SMTPC_NEXT_MSG && m)
                c->msg = m;     /* goes back through done() from on_finish */
            return;
        }
        if (c->abort_pending && r == SMTPC_NEXT_MSG && m) {
            msg_fill(m, 451, "451 4.4.2 delivery aborted by mxkeep", 0);
            c->ops->done(c->arg, c, m);
            if (c->st == S_DEAD)
                return;
            continue;
        }
        if (r == SMTPC_NEXT_WAIT && !c->abort_pending) {
            set_state(c, S_IDLE);
            event_del(c->ev_timer);
            if (c->resume_pending)
                event_active(c->ev_resume, EV_TIMEOUT, 0);
            return;
        }
        if (r != SMTPC_NEXT_MSG || m == NULL) {
            send_quit(c);
            return;
        }
        if (m->nrcpt == 0) {
            c->ops->done(c->arg, c, m);
            if (c->st == S_DEAD)
                return;
            continue;
        }
        if (!precheck(c, m)) {
            start_txn(c, m);
            return;
        }
        c->ops->done(c->arg, c, m);
        if (c->st == S_DEAD)
            return;
    }
}

static void session_ready(struct smtpc *c)
{
    c->tls_step = 0;
    set_state(c, S_NEXT);
    event_del(c->ev_timer);
    if (c->ops->ready)
        c->ops->ready(c->arg, c);
    if (c->st == S_DEAD)
        return;
    pull_next(c);
}

/* A decided message, then the next one. */
static void txn_end(struct smtpc *c)
{
    msg_done(c);
    if (c->st == S_DEAD)
        return;
    pull_next(c);
}

/* ---- TLS ---------------------------------------------------------------- */

static void start_tls(struct smtpc *c)
{
    struct bufferevent *old = c->bev, *nb;
    evutil_socket_t fd = bufferevent_getfd(old);
    SSL *ssl;

    if (evbuffer_get_length(bufferevent_get_input(old)) > 0) {
        protocol_error(c, "data after the STARTTLS reply (command injection?)");
        return;
    }
    ssl = SSL_new(c->tls_ctx);
    if (ssl == NULL) {
        char e[256];
        finish(c, tls_fail_how(c), 451, "451 4.7.5 TLS set-up failed", "TLS set-up failed: %s",
               tls_last_error(e, sizeof e));
        return;
    }
    if (c->peer_name[0] && !is_ip_literal(c->peer_name))
        SSL_set_tlsext_host_name(ssl, c->peer_name);
    if (c->tls == TLS_POLICY_VERIFY && !c->fingerprint[0]) {
        /* The result is checked after the handshake for a clear reason. */
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (c->peer_name[0] && !is_ip_literal(c->peer_name))
            SSL_set1_host(ssl, c->peer_name);
    }
    SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
    /* Same socket: detach it from the clear bufferevent first, so freeing
     * that one does not close it. */
    bufferevent_setcb(old, NULL, NULL, NULL, NULL);
    bufferevent_setfd(old, -1);
    nb = bufferevent_openssl_socket_new(c->base, fd, ssl, BUFFEREVENT_SSL_CONNECTING,
                                        BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (nb == NULL) {
        SSL_free(ssl);
        evutil_closesocket(fd);
        finish(c, tls_fail_how(c), 451, "451 4.7.5 TLS set-up failed",
               "TLS set-up failed: out of memory");
        return;
    }
    bufferevent_free(old);
    c->bev = nb;
    bufferevent_openssl_set_allow_dirty_shutdown(nb, 1);
    bufferevent_setcb(nb, on_read, on_write, on_event, c);
    bufferevent_setwatermark(nb, EV_WRITE, PUMP_LOWAT, 0);
    bufferevent_enable(nb, EV_READ | EV_WRITE);
    set_state(c, S_HANDSHAKE);
    arm(c, c->t_command);
}

static void tls_established(struct smtpc *c)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    char fp[FP_MAX], desc[256];

    if (c->tls == TLS_POLICY_VERIFY) {
        if (c->fingerprint[0]) {
            if (tls_peer_fingerprint(ssl, fp, sizeof fp) < 0) {
                finish(c, SMTPC_END_TLS, 0, NULL, "TLS: %s presented no certificate", c->peer);
                return;
            }
            if (strcasecmp(fp, c->fingerprint) != 0) {
                finish(c, SMTPC_END_TLS, 0, NULL,
                       "TLS: certificate of %s has fingerprint %s, not the pinned %s", c->peer,
                       fp, c->fingerprint);
                return;
            }
        } else {
            long v = SSL_get_verify_result(ssl);
            if (SSL_get0_peer_certificate(ssl) == NULL) {
                finish(c, SMTPC_END_TLS, 0, NULL, "TLS: %s presented no certificate", c->peer);
                return;
            }
            if (is_ip_literal(c->peer_name) || !c->peer_name[0]) {
                finish(c, SMTPC_END_TLS, 0, NULL,
                       "TLS: cannot verify %s: no host name to match the certificate", c->peer);
                return;
            }
            if (v != X509_V_OK) {
                finish(c, SMTPC_END_TLS, 0, NULL, "TLS: certificate verification failed for %s: %s",
                       c->peer, X509_verify_cert_error_string(v));
                return;
            }
        }
    }
    c->is_tls = 1;
    log_debug("smtpc %s: TLS established: %s", c->peer, tls_describe(ssl, desc, sizeof desc));
    send_ehlo(c);
}

static void tls_handshake_failed(struct smtpc *c)
{
    char e[256] = "handshake failed";
    unsigned long err = bufferevent_get_openssl_error(c->bev);

    if (err)
        ERR_error_string_n(err, e, sizeof e);
    while (bufferevent_get_openssl_error(c->bev))
        ;
    ERR_clear_error();
    log_warn("smtpc %s: TLS handshake failed: %s", c->peer, e);
    finish(c, tls_fail_how(c), 0, NULL, "TLS handshake with %s failed: %s", c->peer, e);
}

/* After a successful EHLO or HELO: TLS per policy, else ready. */
static void after_hello(struct smtpc *c)
{
    if (!c->is_tls && c->tls != TLS_POLICY_NONE) {
        if ((c->ext & EXT_STARTTLS) && c->tls_ctx) {
            evbuffer_add(out(c), "STARTTLS\r\n", 10);
            c->tls_step = 1;
            set_state(c, S_STARTTLS);
            arm(c, c->t_command);
            return;
        }
        if (c->tls != TLS_POLICY_MAY) {
            finish(c, SMTPC_END_TLS, 0, NULL, "TLS is required, but %s", !(c->ext & EXT_STARTTLS)
                   ? "the peer does not offer STARTTLS" : "there is no TLS client context");
            return;
        }
    }
    session_ready(c);
}

/* ---- replies ------------------------------------------------------------ */

static void ehlo_keyword(struct smtpc *c, const char *kw)
{
    size_t n = strcspn(kw, " =");
    const char *arg = kw[n] ? kw + n + 1 : "";

#define KW(s) (n == sizeof(s) - 1 && strncasecmp(kw, s, n) == 0)
    if (KW("PIPELINING"))
        c->ext |= EXT_PIPELINING;
    else if (KW("SIZE")) {
        c->ext |= EXT_SIZE;
        c->size_max = strtoull(arg, NULL, 10);
    } else if (KW("8BITMIME"))
        c->ext |= EXT_8BITMIME;
    else if (KW("SMTPUTF8"))
        c->ext |= EXT_SMTPUTF8;
    else if (KW("DSN"))
        c->ext |= EXT_DSN;
    else if (KW("CHUNKING"))
        c->ext |= EXT_CHUNKING;
    else if (KW("STARTTLS"))
        c->ext |= EXT_STARTTLS;
    else if (KW("LIMITS"))
        dl_limits_parse(arg, &c->limits);   /* RFC 9422, bounded there */
#undef KW
}

static void on_421(struct smtpc *c)
{
    if (c->msg)
        msg_fill(c->msg, 421, c->rep.text, 1);
    finish(c, SMTPC_END_421, 421, c->rep.text, "host %s said: %s (in %s)", c->peer, c->rep.text,
           state_while[c->st]);
}

static void on_reply(struct smtpc *c)
{
    int code = c->rep.code, cls = code / 100;

    event_del(c->ev_timer);
    if (code == 421 && c->st != S_GREETING && c->st != S_QUIT) {
        on_421(c);
        return;
    }
    switch (c->st) {
    case S_GREETING:
        if (cls != 2) {
            finish(c, SMTPC_END_GREETING, 0, NULL, "host %s said: %s", c->peer, c->rep.text);
            return;
        }
        send_ehlo(c);
        return;
    case S_EHLO:
        if (cls == 2) {
            after_hello(c);
        } else if (cls == 5) {
            c->ext = 0;
            c->size_max = 0;
            memset(&c->limits, 0, sizeof c->limits);
            evbuffer_add_printf(out(c), "HELO %s\r\n", c->helo);
            set_state(c, S_HELO);
            arm(c, c->t_command);
        } else {
            finish(c, SMTPC_END_GREETING, 0, NULL, "host %s refused EHLO: %s", c->peer, c->rep.text);
        }
        return;
    case S_HELO:
        if (cls != 2) {
            finish(c, SMTPC_END_GREETING, 0, NULL, "host %s refused HELO: %s", c->peer, c->rep.text);
            return;
        }
        after_hello(c);
        return;
    case S_STARTTLS:
        if (code == 220) {
            start_tls(c);
        } else if (c->tls == TLS_POLICY_MAY) {
            log_info("smtpc %s: STARTTLS refused (%s), going on in clear", c->peer, c->rep.text);
            session_ready(c);
        } else {
            finish(c, SMTPC_END_TLS, 0, NULL, "host %s refused STARTTLS: %s", c->peer, c->rep.text);
        }
        return;
    case S_RSET:
        if (cls != 2) {
            protocol_error(c, "RSET refused: %s", c->rep.text);
            return;
        }
        if (!c->pipelined)
            write_mail(c);
        set_state(c, S_MAIL);
        arm(c, c->t_command);
        return;
    case S_MAIL:
        set_state(c, S_RCPT);
        if (cls != 2) {
            msg_fill(c->msg, code, c->rep.text, 0);
            c->mail_failed = 1;
            c->need_rset = 1;
            if (!c->pipelined) {
                txn_end(c);
                return;
            }
        } else if (!c->pipelined) {
            write_rcpt(c, 0);
        }
        arm(c, c->t_command);
        return;
    case S_RCPT:
        if (!c->mail_failed) {
            if (code == 552 || code == 452) {
                /* RFC 5321 4.5.3.1.10: too many recipients is 452, and a
                 * client takes 552 to RCPT the same way: this recipient
                 * waits for another transaction, it is not refused. */
                rcpt_limited(c);
                code = 452;
            }
            c->msg->code[c->ri] = code;
            set_text(c->msg->text[c->ri], c->rep.text);
            if (cls == 2)
                c->naccepted++;
        }
        if (++c->ri < c->nsend) {
            if (!c->pipelined)
                write_rcpt(c, c->ri);
            arm(c, c->t_command);
            return;
        }
        if (c->pipelined && !(c->ext & EXT_CHUNKING)) {
            set_state(c, S_DATA);       /* DATA went with the group */
            arm(c, c->t_data);
            return;
        }
        if (c->naccepted == 0) {
            c->need_rset = 1;
            txn_end(c);
            return;
        }
        if (c->ext & EXT_CHUNKING)
            send_bdat(c);
        else
            send_data(c);
        return;
    case S_DATA:
        if (code == 354) {
            if (c->mail_failed || c->naccepted == 0) {
                /* RFC 2920 3.1: the server took DATA though nothing was
                 * accepted; an empty message ends it. */
                evbuffer_add(out(c), ".\r\n", 3);
                set_state(c, S_DOT_DISCARD);
                arm(c, c->t_data);
                return;
            }
            start_body(c);
            return;
        }
        if (!c->mail_failed)
            msg_fill_accepted(c->msg, code, c->rep.text);
        c->need_rset = 1;
        txn_end(c);
        return;
    case S_DOT:
    case S_BDAT: {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        c->msg->latency_us = (long)(now.tv_sec - c->t_eod.tv_sec) * 1000000L +
                             (now.tv_nsec - c->t_eod.tv_nsec) / 1000;
        msg_fill_accepted(c->msg, code, c->rep.text);
        txn_end(c);
        return;
    }
    case S_DOT_DISCARD:
        txn_end(c);
        return;
    case S_QUIT:
        finish(c, SMTPC_END_OK, 0, NULL, "QUIT: %s", c->rep.text);
        return;
    case S_BODY:
        /* A reply in mid-body: the peer gave up on the message. */
        if (cls != 2) {
            msg_fill_accepted(c->msg, code, c->rep.text);
            finish(c, SMTPC_END_LOST, 451, c->rep.text, "host %s said in mid-body: %s", c->peer,
                   c->rep.text);
            return;
        }
        protocol_error(c, "unexpected reply during the message body: %s", c->rep.text);
        return;
    default:
        protocol_error(c, "unexpected reply while %s: %s", state_while[c->st], c->rep.text);
        return;
    }
}

/* One reply line (CRLF removed); the state machine sees whole replies. */
static void on_line(struct smtpc *c, const char *line, size_t len)
{
    const char *text = "";

    if (!c->rep.more)
        smtpc_reply_init(&c->rep);
    switch (smtpc_reply_line(&c->rep, line, len, &text)) {
    case SMTPC_REPLY_BAD:
        protocol_error(c, "malformed reply line \"%.80s\"", line);
        return;
    case SMTPC_REPLY_MIXED:
        protocol_error(c, "reply code changed inside a multi-line reply (%d, %.3s)", c->rep.code,
                       line);
        return;
    case SMTPC_REPLY_MORE:
        if (c->st == S_EHLO && c->rep.lines > 1 && c->rep.code / 100 == 2)
            ehlo_keyword(c, text);
        return;
    case SMTPC_REPLY_DONE:
        if (c->st == S_EHLO && c->rep.lines > 1 && c->rep.code / 100 == 2)
            ehlo_keyword(c, text);
        on_reply(c);
        return;
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct smtpc *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    /* on_line may switch to TLS (new bufferevent) or end the session. */
    while (c->st != S_DEAD && c->bev == bev) {
        size_t eol_len = 0;
        struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);

        if (p.pos < 0) {
            if (evbuffer_get_length(in) > REPLY_LINE_MAX)
                protocol_error(c, "reply line longer than %d octets", REPLY_LINE_MAX);
            return;
        }
        if ((size_t)p.pos > REPLY_LINE_MAX) {
            protocol_error(c, "reply line longer than %d octets", REPLY_LINE_MAX);
            return;
        }
        evbuffer_remove(in, c->line, (size_t)p.pos);
        c->line[p.pos] = '\0';
        evbuffer_drain(in, eol_len);
        if (c->st == S_IDLE || c->st == S_NEXT) {
            /* Nothing asked: only a 421 (idle time-out) makes sense. */
            if (p.pos >= 3 && strncmp(c->line, "421", 3) == 0) {
                on_line(c, c->line, (size_t)p.pos);
                if (c->st == S_DEAD)
                    return;
                /* multi-line 421: keep reading */
                continue;
            }
            protocol_error(c, "unexpected reply while idle: %.80s", c->line);
            return;
        }
        on_line(c, c->line, (size_t)p.pos);
    }
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct smtpc *c = arg;

    if (c->st == S_BODY)
        pump(c);
    else if (c->st == S_BDAT && evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        arm(c, c->t_data);      /* still making progress */
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct smtpc *c = arg;
    char why[WHY_MAX];

    if (what & BEV_EVENT_CONNECTED) {
        if (c->st == S_CONNECT) {
            set_state(c, S_GREETING);
            arm(c, c->t_greeting);
        } else if (c->st == S_HANDSHAKE) {
            event_del(c->ev_timer);
            tls_established(c);
        }
        return;
    }
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    switch (c->st) {
    case S_CONNECT:
        finish(c, SMTPC_END_CONNECT, 0, NULL, "connect to %s: %s", c->peer,
               evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        return;
    case S_HANDSHAKE:
        tls_handshake_failed(c);
        return;
    case S_QUIT:
        finish(c, SMTPC_END_OK, 0, NULL, "connection closed after QUIT");
        return;
    default:
        if (what & BEV_EVENT_ERROR)
            snprintf(why, sizeof why, "lost connection (%s)",
                     evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        else
            snprintf(why, sizeof why, "lost connection");
        lost(c, why);
        return;
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct smtpc *c = arg;

    switch (c->st) {
    case S_CONNECT:
        finish(c, SMTPC_END_CONNECT, 0, NULL, "connect to %s: timed out", c->peer);
        return;
    case S_HANDSHAKE:
        finish(c, tls_fail_how(c), 0, NULL, "TLS handshake with %s timed out", c->peer);
        return;
    case S_QUIT:
        finish(c, SMTPC_END_OK, 0, NULL, "no reply to QUIT");
        return;
    default:
        lost(c, "conversation timed out");
        return;
    }
}

static void smtpc_free(struct smtpc *c)
{
    if (c == NULL)
        return;
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->ev_timer)
        event_free(c->ev_timer);
    if (c->ev_finish)
        event_free(c->ev_finish);
    if (c->ev_resume)
        event_free(c->ev_resume);
    SSL_CTX_free(c->tls_ctx);
    free(c->helo);
    free(c->peer_name);
    free(c);
}

static void on_finish(evutil_socket_t fd, short what, void *arg)
{
    struct smtpc *c = arg;

    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (c->msg) {
        struct smtpc_msg *m = c->msg;
        msg_fill(m, c->fail_code ? c->fail_code : 451,
                 c->fail_text[0] ? c->fail_text : "451 4.4.2 connection closed", 1);
        c->msg = NULL;
        c->ops->done(c->arg, c, m);
    }
    log_debug("smtpc %s: closed: %s", c->peer, c->end_why);
    c->ops->closed(c->arg, c, c->end_how, c->end_stage, c->end_why);
    smtpc_free(c);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    struct smtpc *c = arg;

    if (c->st == S_IDLE)
        pull_next(c);
}

/* ---- public ------------------------------------------------------------- */

static void format_peer(struct smtpc *c)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;

    if (c->addr.ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&c->addr;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof ip);
        port = ntohs(s->sin_port);
    } else if (c->addr.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&c->addr;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof ip);
        port = ntohs(s->sin6_port);
    }
    snprintf(c->peer, sizeof c->peer, "%.255s[%s]:%u", c->peer_name[0] ? c->peer_name : ip, ip,
             port);
}

/* A new session's struct, events and config copies, in state st; NULL on
 * out of memory.  Shared by smtpc_new and smtpc_new_connected. */
static struct smtpc *smtpc_alloc(struct event_base *base, const struct smtpc_config *cfg,
                                 const struct smtpc_ops *ops, void *arg, enum state st)
{
    struct smtpc *c;

    if (cfg->addrlen > sizeof c->addr || cfg->addr == NULL)
        log_panic("smtpc_new: bad address length %u", (unsigned)cfg->addrlen);
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->base = base;
    c->ops = ops;
    c->arg = arg;
    c->st = st;
    c->helo = strdup(cfg->helo ? cfg->helo : "localhost");
    c->peer_name = strdup(cfg->peer_name ? cfg->peer_name : "");
    memcpy(&c->addr, cfg->addr, cfg->addrlen);
    c->addrlen = cfg->addrlen;
    c->tls = cfg->tls;
    /* Our own reference: a reload may replace the destination's context
     * while this connection waits for the greeting or EHLO reply. */
    if ((c->tls_ctx = cfg->tls_ctx) != NULL)
        SSL_CTX_up_ref(c->tls_ctx);
    if (cfg->tls_fingerprint)
        snprintf(c->fingerprint, sizeof c->fingerprint, "%s", cfg->tls_fingerprint);
    c->t_connect = cfg->connect_timeout;
    c->t_greeting = cfg->greeting_timeout;
    c->t_command = cfg->command_timeout;
    c->t_data = cfg->data_timeout;
    c->ev_timer = evtimer_new(base, on_timer, c);
    c->ev_finish = event_new(base, -1, 0, on_finish, c);
    c->ev_resume = event_new(base, -1, 0, on_resume, c);
    if (!c->helo || !c->peer_name || !c->ev_timer || !c->ev_finish || !c->ev_resume) {
        smtpc_free(c);
        return NULL;
    }
    format_peer(c);
    return c;
}

struct smtpc *smtpc_new(struct event_base *base, const struct smtpc_config *cfg,
                        const struct smtpc_ops *ops, void *arg)
{
    struct smtpc *c;
    evutil_socket_t fd;
    int one = 1;

    c = smtpc_alloc(base, cfg, ops, arg, S_CONNECT);
    if (c == NULL)
        return NULL;

    fd = socket(c->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        /* Out of descriptors and the like: a connect failure, from the loop. */
        finish(c, SMTPC_END_CONNECT, 0, NULL, "connect to %s: socket: %s", c->peer,
               strerror(errno));
        return c;
    }
    /* Pipelined commands and the final "." are small writes waiting for a
     * reply: Nagle plus delayed ACK would stall every message. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (c->bev == NULL) {
        evutil_closesocket(fd);
        smtpc_free(c);
        return NULL;
    }
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, PUMP_LOWAT, 0);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    arm(c, c->t_connect);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&c->addr, (int)c->addrlen) < 0)
        finish(c, SMTPC_END_CONNECT, 0, NULL, "connect to %s: %s", c->peer,
               evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    return c;
}

struct smtpc *smtpc_new_connected(struct event_base *base, const struct smtpc_config *cfg,
                                  struct bufferevent *bev, int is_tls,
                                  const struct smtpc_ops *ops, void *arg)
{
    struct smtpc_config own = *cfg;
    struct smtpc *c;

    own.tls = TLS_POLICY_NONE;          /* the link is what it is: no STARTTLS on it */
    own.tls_ctx = NULL;
    c = smtpc_alloc(base, &own, ops, arg, S_GREETING);
    if (c == NULL)
        return NULL;
    c->is_tls = is_tls;
    c->bev = bev;
    bufferevent_setcb(bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(bev, EV_WRITE, PUMP_LOWAT, 0);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    arm(c, c->t_greeting);
    /* The greeting may be in the input already. */
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
        on_read(bev, c);
    return c;
}

void smtpc_resume(struct smtpc *c)
{
    if (c->st == S_IDLE)
        event_active(c->ev_resume, EV_TIMEOUT, 0);
    else if (c->st == S_NEXT)
        c->resume_pending = 1;
}

void smtpc_abort(struct smtpc *c)
{
    switch (c->st) {
    case S_DEAD:
    case S_QUIT:
        return;
    case S_IDLE:
        send_quit(c);
        return;
    case S_NEXT:
        /* Inside one of our callbacks: pull_next() QUITs on its way out. */
        if (c->msg == NULL) {
            c->abort_pending = 1;
            return;
        }
        /* fall through */
    default:
        c->tls_step = 0;        /* our own abort is no failure of the TLS step */
        finish(c, SMTPC_END_LOST, 451, "451 4.4.2 delivery aborted by mxkeep (shutdown)",
               "aborted by us while %s", state_while[c->st]);
        return;
    }
}

const char *smtpc_peer(const struct smtpc *c)
{
    return c->peer;
}

int smtpc_has_dsn(const struct smtpc *c)
{
    return (c->ext & EXT_DSN) != 0;
}

int smtpc_is_tls(const struct smtpc *c)
{
    return c->is_tls;
}

void smtpc_limits(const struct smtpc *c, struct dl_declared *out)
{
    *out = c->limits;
}

unsigned smtpc_transactions(const struct smtpc *c)
{
    return c->ntxn;
}

int smtpc_last_code(const struct smtpc *c)
{
    return c->rep.code;
}
