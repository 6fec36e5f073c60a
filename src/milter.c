/*
 * milter.c - one asynchronous milter client session (see milter.h): a
 * bufferevent to unix:/path or inet:host:port, the OPTNEG negotiation,
 * then one step at a time, each bounded by its phase's timeout, with the
 * milter's answer decoded by milter_proto and handed back from the loop.
 *
 * Owns: its bufferevent, a zero-delay event for answers that need no
 * round trip, the pending step's packets and the modifications collected
 * at end of message.
 * Must never: block, call back from inside milter_step or milter_free,
 * or let a milter failure be anything but its configured default action
 * (the caller decides what that means for the message: nothing accepted
 * is lost).
 * Security: the milter is a peer on a socket.  Its packets are bounded
 * (MILTER_MAX_PACKET); a packet over it, an unknown reply, a reply out of
 * place or a reply text that is not a valid 4xx/5xx is a protocol error.
 * The number of modifications per message is bounded too.
 */
#include "config.h"
#include "milter.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>

#define MILTER_MAX_PACKET  (1024 * 1024 + 64)  /* a body chunk plus header */
#define MILTER_MAX_MODS    1000                /* modifications per message */
#define MILTER_ACTIONS     SMFIF_ALL
#define MILTER_PROTOCOL    (SMFIP_CLIENT_ALL & ~SMFIP_HDR_LEADSPC)

enum mstate { MS_CONNECTING, MS_OPTNEG, MS_READY, MS_WAIT, MS_DEAD };
static const char *const mstate_name[] = { "connecting", "optneg", "ready", "wait", "dead" };

struct milter {
    struct event_base *base;
    struct milter_spec spec;
    char log_id[64];
    struct bufferevent *bev;
    struct event *soon;                 /* answers without a round trip */
    enum mstate state;
    uint32_t actions, protocol;
    /* the pending step */
    int have_step;
    enum milter_step step;
    struct milter_buf pkts;
    milter_done_fn done;
    void *arg;
    /* the answer being built */
    struct milter_result res;
    char *text, *quarantine;
    struct milter_mod *mods;
    size_t nmods;
};

/* per step: the flag that removes it, the flag that makes it unanswered */
static const struct {
    uint32_t no, nr;
    const char *name;
} step_flags[MILTER_STEP_COUNT_] = {
    [MILTER_STEP_CONNECT] = { SMFIP_NOCONNECT, SMFIP_NR_CONN, "connect" },
    [MILTER_STEP_HELO] = { SMFIP_NOHELO, SMFIP_NR_HELO, "helo" },
    [MILTER_STEP_MAIL] = { SMFIP_NOMAIL, SMFIP_NR_MAIL, "envfrom" },
    [MILTER_STEP_RCPT] = { SMFIP_NORCPT, SMFIP_NR_RCPT, "envrcpt" },
    [MILTER_STEP_DATA] = { SMFIP_NODATA, SMFIP_NR_DATA, "data" },
    [MILTER_STEP_HEADER] = { SMFIP_NOHDRS, SMFIP_NR_HDR, "header" },
    [MILTER_STEP_EOH] = { SMFIP_NOEOH, SMFIP_NR_EOH, "eoh" },
    [MILTER_STEP_BODY] = { SMFIP_NOBODY, SMFIP_NR_BODY, "body" },
    [MILTER_STEP_EOM] = { 0, 0, "eom" },
    [MILTER_STEP_ABORT] = { 0, 0, "abort" },    /* never answered */
    [MILTER_STEP_QUIT] = { 0, 0, "quit" },      /* never answered */
};

static void milter_on_read(struct bufferevent *bev, void *arg);
static void milter_on_event(struct bufferevent *bev, short what, void *arg);
static void milter_send_pending(struct milter *m);

static void milter_set_state(struct milter *m, enum mstate next)
{
    if (m->state == next)
        return;
    log_debug("milter %s %s: %s -> %s", m->spec.socket, m->log_id, mstate_name[m->state],
              mstate_name[next]);
    m->state = next;
}

int milter_socket_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len,
                        const char **why)
{
    memset(ss, 0, sizeof *ss);
    const char *path = NULL;
    if (!strncmp(s, "unix:", 5))
        path = s + 5;
    else if (!strncmp(s, "local:", 6))
        path = s + 6;
    if (path) {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        if (!*path || strlen(path) >= sizeof un->sun_path) {
            *why = "unix socket path empty or too long";
            return -1;
        }
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, path, strlen(path) + 1);
        *len = (socklen_t)sizeof *un;
        return 0;
    }
    if (!strncmp(s, "inet:", 5) || !strncmp(s, "inet6:", 6)) {
        const char *hp = strchr(s, ':') + 1;
        int l = (int)sizeof *ss;
        if (evutil_parse_sockaddr_port(hp, (struct sockaddr *)ss, &l) != 0 ||
            (ss->ss_family == AF_INET && ((struct sockaddr_in *)ss)->sin_port == 0) ||
            (ss->ss_family == AF_INET6 && ((struct sockaddr_in6 *)ss)->sin6_port == 0)) {
            *why = "inet: wants a numeric address and a port (inet:127.0.0.1:11332)";
            return -1;
        }
        *len = (socklen_t)l;
        return 0;
    }
    *why = "milter socket must start with unix: or inet:";
    return -1;
}

static void mods_free(struct milter_mod *mods, size_t n);

static void result_clear(struct milter *m)
{
    mods_free(m->mods, m->nmods);
    m->mods = NULL;
    m->nmods = 0;
    free(m->text);
    free(m->quarantine);
    m->text = m->quarantine = NULL;
    memset(&m->res, 0, sizeof m->res);
}

static void mods_free(struct milter_mod *mods, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(mods[i].name);
        free(mods[i].value);
        free(mods[i].addr);
        free(mods[i].args);
        free(mods[i].body);
    }
    free(mods);
}

/* Hand the answer to the caller; the step is over.  The answer is taken
 * out of m first: the callback may step m again or free it. */
static void milter_answer(struct milter *m)
{
    milter_done_fn done = m->done;
    void *arg = m->arg;
    m->have_step = 0;
    m->done = NULL;
    m->pkts.len = 0;
    if (m->state == MS_WAIT)
        milter_set_state(m, MS_READY);
    if (m->bev)
        bufferevent_set_timeouts(m->bev, NULL, NULL);
    struct milter_result res = m->res;
    char *text = m->text, *quarantine = m->quarantine;
    struct milter_mod *mods = m->mods;
    size_t nmods = m->nmods;
    res.text = text;
    res.quarantine = quarantine;
    res.mods = mods;
    res.nmods = nmods;
    m->text = m->quarantine = NULL;
    m->mods = NULL;
    m->nmods = 0;
    memset(&m->res, 0, sizeof m->res);
    if (done)
        done(arg, &res);
    mods_free(mods, nmods);
    free(text);
    free(quarantine);
}

static void milter_fail(struct milter *m, const char *why)
{
    if (m->state != MS_DEAD)
        log_warn("milter %s %s: %s; default action %s from now on", m->spec.socket, m->log_id,
                 why, m->spec.fail_accept ? "accept" : "tempfail");
    milter_set_state(m, MS_DEAD);
    if (m->bev) {
        bufferevent_free(m->bev);
        m->bev = NULL;
    }
    if (m->have_step)
        event_active(m->soon, 0, 0);
}

/* Answer from the loop: a dead milter's default, a step that needs no
 * round trip, or a failure just noticed. */
static void milter_on_soon(evutil_socket_t fd, short what, void *arg)
{
    struct milter *m = arg;
    (void)fd;
    (void)what;
    if (!m->have_step)
        return;
    result_clear(m);
    if (m->state == MS_DEAD) {
        m->res.failed = 1;
        m->res.verdict = m->spec.fail_accept ? MILTER_ACCEPT : MILTER_TEMPFAIL;
    } else {
        m->res.verdict = MILTER_CONTINUE;
    }
    milter_answer(m);
}

static void set_timeout(struct milter *m, long ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    bufferevent_set_timeouts(m->bev, &tv, &tv);
}

struct milter *milter_new(struct event_base *base, const struct milter_spec *spec,
                          const char *log_id)
{
    struct milter *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->base = base;
    m->spec = *spec;
    snprintf(m->log_id, sizeof m->log_id, "%s", log_id ? log_id : "-");
    m->soon = event_new(base, -1, 0, milter_on_soon, m);
    if (!m->soon) {
        free(m);
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t len;
    const char *why;
    if (milter_socket_parse(spec->socket, &ss, &len, &why) < 0) {
        m->state = MS_CONNECTING;
        milter_fail(m, why);
        return m;
    }
    m->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!m->bev) {
        milter_fail(m, "cannot create a socket");
        return m;
    }
    bufferevent_setcb(m->bev, milter_on_read, NULL, milter_on_event, m);
    set_timeout(m, spec->connect_ms);
    m->state = MS_CONNECTING;
    if (bufferevent_socket_connect(m->bev, (struct sockaddr *)&ss, (int)len) < 0)
        milter_fail(m, "connect failed");
    return m;
}

void milter_free(struct milter *m)
{
    if (!m)
        return;
    if (m->bev)
        bufferevent_free(m->bev);
    if (m->soon)
        event_free(m->soon);
    milter_buf_free(&m->pkts);
    result_clear(m);
    free(m);
}

/* QUIT, written straight to the socket when nothing else is waiting to
 * go out (a best effort: closing the socket ends the session for the
 * milter just the same), then everything freed. */
void milter_quit_free(struct milter *m)
{
    if (!m)
        return;
    if (m->state == MS_READY && !m->have_step && m->bev &&
        evbuffer_get_length(bufferevent_get_output(m->bev)) == 0) {
        struct milter_buf b = { 0 };
        if (milter_proto_simple(&b, SMFIC_QUIT) == 0)
            (void)send(bufferevent_getfd(m->bev), b.data, b.len, MSG_DONTWAIT | MSG_NOSIGNAL);
        milter_buf_free(&b);
    }
    milter_free(m);
}

void milter_notify(struct milter *m, const struct milter_buf *pkts)
{
    if (m->state != MS_READY || m->have_step || !pkts->len)
        return;
    if (bufferevent_write(m->bev, pkts->data, pkts->len) < 0)
        milter_fail(m, "write failed");
}

void milter_abandon(struct milter *m)
{
    if (!m->have_step)
        return;
    m->done = NULL;
    m->arg = NULL;
    m->have_step = 0;
    if (m->state != MS_DEAD)
        log_info("milter %s %s: step %s abandoned; the session with it ends", m->spec.socket,
                 m->log_id, step_flags[m->step].name);
    milter_set_state(m, MS_DEAD);
    if (m->bev) {
        bufferevent_free(m->bev);
        m->bev = NULL;
    }
}

int milter_is_dead(const struct milter *m) { return m->state == MS_DEAD; }
uint32_t milter_protocol(const struct milter *m) { return m->protocol; }

void milter_cancel(struct milter *m)
{
    m->done = NULL;
    m->arg = NULL;
}

void milter_step(struct milter *m, enum milter_step step, const struct milter_buf *pkts,
                 milter_done_fn done, void *arg)
{
    if (m->have_step)
        log_panic("milter %s: step %s while %s is pending", m->spec.socket,
                  step_flags[step].name, step_flags[m->step].name);
    m->have_step = 1;
    m->step = step;
    m->done = done;
    m->arg = arg;
    m->pkts.len = 0;
    if (m->state == MS_DEAD) {
        event_active(m->soon, 0, 0);
        return;
    }
    if (pkts && pkts->len) {
        if (m->pkts.cap < pkts->len) {
            unsigned char *p = realloc(m->pkts.data, pkts->len);
            if (!p) {
                milter_fail(m, "out of memory");
                return;
            }
            m->pkts.data = p;
            m->pkts.cap = pkts->len;
        }
        memcpy(m->pkts.data, pkts->data, pkts->len);
        m->pkts.len = pkts->len;
    }
    if (m->state == MS_READY)
        milter_send_pending(m);
    /* else: sent when the negotiation is done */
}

static void milter_send_pending(struct milter *m)
{
    uint32_t no = step_flags[m->step].no, nr = step_flags[m->step].nr;
    int answered = m->step != MILTER_STEP_ABORT && m->step != MILTER_STEP_QUIT;
    if (no && (m->protocol & no)) {
        event_active(m->soon, 0, 0);
        return;
    }
    if (m->pkts.len && bufferevent_write(m->bev, m->pkts.data, m->pkts.len) < 0) {
        milter_fail(m, "write failed");
        return;
    }
    if (!answered || (nr && (m->protocol & nr))) {
        event_active(m->soon, 0, 0);
        return;
    }
    milter_set_state(m, MS_WAIT);
    long ms = m->step >= MILTER_STEP_DATA && m->step <= MILTER_STEP_EOM ? m->spec.content_ms
                                                                         : m->spec.command_ms;
    set_timeout(m, ms);
}

static char *dup_str(const char *s)
{
    return strdup(s ? s : "");
}

static int add_mod(struct milter *m, const struct milter_reply *r)
{
    if (m->nmods >= MILTER_MAX_MODS)
        return -1;
    struct milter_mod *n = realloc(m->mods, (m->nmods + 1) * sizeof *n);
    if (!n)
        return -1;
    m->mods = n;
    struct milter_mod *d = &m->mods[m->nmods];
    memset(d, 0, sizeof *d);
    d->cmd = r->cmd;
    d->index = r->index;
    d->name = dup_str(r->name);
    d->value = dup_str(r->value);
    d->addr = dup_str(r->addr);
    d->args = dup_str(r->args);
    if (r->body_len) {
        d->body = malloc(r->body_len);
        if (d->body)
            memcpy(d->body, r->body, r->body_len);
        d->body_len = r->body_len;
    }
    m->nmods++;
    if (!d->name || !d->value || !d->addr || !d->args || (r->body_len && !d->body))
        return -1;
    return 0;
}

/* The action a reply needs before it may be used (0: always allowed). */
static uint32_t mod_action(char cmd)
{
    switch (cmd) {
    case SMFIR_ADDHEADER: case SMFIR_INSHEADER: return SMFIF_ADDHDRS;
    case SMFIR_CHGHEADER: return SMFIF_CHGHDRS;
    case SMFIR_CHGFROM: return SMFIF_CHGFROM;
    case SMFIR_ADDRCPT: return SMFIF_ADDRCPT;
    case SMFIR_ADDRCPT_PAR: return SMFIF_ADDRCPT_PAR;
    case SMFIR_DELRCPT: return SMFIF_DELRCPT;
    case SMFIR_REPLBODY: return SMFIF_CHGBODY;
    case SMFIR_QUARANTINE: return SMFIF_QUARANTINE;
    default: return 0;
    }
}

/* One decoded reply while a step waits.  Returns 1 when the step is
 * answered, 0 to read on, -1 on a protocol error (why set). */
static int milter_reply(struct milter *m, const struct milter_reply *r, const char **why)
{
    switch (r->cmd) {
    case SMFIR_CONTINUE:
        m->res.verdict = MILTER_CONTINUE;
        return 1;
    case SMFIR_ACCEPT:
        m->res.verdict = MILTER_ACCEPT;
        return 1;
    case SMFIR_REJECT:
        m->res.verdict = MILTER_REJECT;
        return 1;
    case SMFIR_TEMPFAIL:
        m->res.verdict = MILTER_TEMPFAIL;
        return 1;
    case SMFIR_DISCARD:
        m->res.verdict = MILTER_DISCARD;
        return 1;
    case SMFIR_SHUTDOWN:
    case SMFIR_CONN_FAIL:
        /* the milter ends the connection: its default, as Postfix does */
        *why = "milter ended the session";
        return -1;
    case SMFIR_SKIP:
        if (m->step != MILTER_STEP_BODY) {
            *why = "skip outside the body";
            return -1;
        }
        m->res.verdict = MILTER_SKIP;
        return 1;
    case SMFIR_REPLYCODE:
        if (!milter_proto_reply_valid(r->text)) {
            *why = "invalid reply code text";
            return -1;
        }
        free(m->text);
        m->text = strdup(r->text);
        m->res.verdict = r->text[0] == '4' ? MILTER_TEMPFAIL : MILTER_REJECT;
        return 1;
    case SMFIR_PROGRESS:
        /* the milter is alive: a fresh content timeout */
        set_timeout(m, m->spec.content_ms);
        return 0;
    default:
        break;
    }
    /* modifications: only at end of message, and only what we allowed */
    if (m->step != MILTER_STEP_EOM) {
        *why = "modification before end of message";
        return -1;
    }
    uint32_t need = mod_action(r->cmd);
    if (!need || !(m->actions & need)) {
        *why = "modification not negotiated";
        return -1;
    }
    if (r->cmd == SMFIR_QUARANTINE) {
        free(m->quarantine);
        m->quarantine = strdup(r->text);
        return 0;
    }
    if (add_mod(m, r) < 0) {
        *why = "too many modifications";
        return -1;
    }
    return 0;
}

static void milter_on_read(struct bufferevent *bev, void *arg)
{
    struct milter *m = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        size_t len = evbuffer_get_length(in);
        if (len < 4)
            return;
        unsigned char hdr[4];
        evbuffer_copyout(in, hdr, 4);
        size_t plen = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
        struct milter_reply r;
        size_t used;
        const char *why = NULL;
        if (plen > MILTER_MAX_PACKET || plen == 0) {
            milter_fail(m, plen ? "packet too long" : "empty packet");
            return;
        }
        if (len < plen + 4)
            return;
        const unsigned char *p = evbuffer_pullup(in, (ev_ssize_t)(plen + 4));
        if (!p || milter_proto_parse(p, plen + 4, MILTER_MAX_PACKET, &r, &used, &why) !=
                      MILTER_PARSE_OK) {
            milter_fail(m, why ? why : "malformed packet");
            return;
        }
        int st;
        if (m->state == MS_OPTNEG) {
            if (!milter_proto_optneg_ok(&r, MILTER_ACTIONS, MILTER_PROTOCOL)) {
                milter_fail(m, "negotiation refused (version, actions or protocol)");
                return;
            }
            m->actions = r.actions;
            m->protocol = r.protocol;
            evbuffer_drain(in, used);
            milter_set_state(m, MS_READY);
            bufferevent_set_timeouts(m->bev, NULL, NULL);
            if (m->have_step)
                milter_send_pending(m);
            continue;
        }
        if (m->state != MS_WAIT) {
            milter_fail(m, "reply when none was asked for");
            return;
        }
        st = milter_reply(m, &r, &why);
        evbuffer_drain(in, used);
        if (st < 0) {
            milter_fail(m, why);
            return;
        }
        if (st > 0) {
            milter_answer(m);
            return;     /* the callback may have freed or stepped us */
        }
    }
}

static void milter_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct milter *m = arg;
    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        struct milter_buf b = { 0 };
        if (milter_proto_optneg(&b, MILTER_PROTO_VERSION, MILTER_ACTIONS, MILTER_PROTOCOL) < 0 ||
            bufferevent_write(m->bev, b.data, b.len) < 0) {
            milter_buf_free(&b);
            milter_fail(m, "cannot send OPTNEG");
            return;
        }
        milter_buf_free(&b);
        milter_set_state(m, MS_OPTNEG);
        set_timeout(m, m->spec.command_ms);
        bufferevent_enable(m->bev, EV_READ);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        milter_fail(m, m->state == MS_CONNECTING ? "connect timed out"
                       : m->step >= MILTER_STEP_DATA && m->step <= MILTER_STEP_EOM
                           ? "content timed out" : "command timed out");
        return;
    }
    if (what & BEV_EVENT_EOF) {
        milter_fail(m, "connection closed by the milter");
        return;
    }
    if (what & BEV_EVENT_ERROR) {
        char why[160];
        snprintf(why, sizeof why, "connection error: %s",
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        milter_fail(m, why);
    }
}
