/*
 * milter_run.c - a transaction's milters over its finished, uncommitted
 * message (see milter_run.h): one milter session at a time, every step in
 * the order a milter expects, with the macros Postfix sends.
 *
 * Owns: the current milter session, copies of every modification asked
 * for so far, the quarantine reason, the reply text.
 * Must never: call back from inside milter_run_start or after cancel;
 * answer anything but the failed milter's default action when a milter
 * fails (tempfail: 451 4.7.1, nothing kept; accept: that milter is
 * skipped and the message goes on unchanged by it).
 * Security: the modifications are the milter's word and are only
 * collected here; smtpd applies them under its own checks (recipients
 * through the RCPT policy, header and size bounds).
 */
#include "config.h"
#include "milter_run.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#define MILTER_RUN_CHUNK   65535    /* body octets per SMFIC_BODY (libmilter's MILTER_CHUNK_SIZE) */
#define MILTER_RUN_DAEMON  "mxkeepd"
#define MILTER_REPLY_FAIL  "451 4.7.1 Service unavailable - try again later"
#define MILTER_REPLY_REJ   "550 5.7.1 Command rejected"

enum run_phase { RP_CONNECT, RP_HELO, RP_MAIL, RP_RCPT, RP_DATA, RP_HEADER, RP_EOH, RP_BODY,
                 RP_EOM, RP_QUIT, RP_NEXT };

struct milter_run {
    struct event_base *base;
    const struct conf_milter *list;
    struct milter_run_live *live;   /* borrowed sessions, first, from DATA on */
    size_t nlive;
    size_t n, cur;                  /* cur counts the live ones, then list's */
    struct milter_run_txn t;
    milter_run_fn done;
    void *arg;
    struct milter *m;
    enum run_phase phase;
    size_t idx;                 /* rcpt index, header offset, body offset */
    size_t body_start;          /* offset of the body in t.msg */
    int finished;               /* a final verdict was reached */
    int stepping;               /* inside milter_step's answer chain */
    struct milter_run_result res;
    struct milter_mod *mods;
    size_t nmods;
    char *quarantine;
    char failed[MILTER_SOCKET_MAX];
    struct event *soon;
};

static void run_next(struct milter_run *r);

static void run_mods_free(struct milter_run *r)
{
    for (size_t i = 0; i < r->nmods; i++) {
        free(r->mods[i].name);
        free(r->mods[i].value);
        free(r->mods[i].addr);
        free(r->mods[i].args);
        free(r->mods[i].body);
    }
    free(r->mods);
    r->mods = NULL;
    r->nmods = 0;
}

static int run_is_live(const struct milter_run *r) { return r->cur < r->nlive; }

static const struct conf_milter *run_spec(const struct milter_run *r)
{
    return run_is_live(r) ? &r->live[r->cur].spec : &r->list[r->cur - r->nlive];
}

static void run_free(struct milter_run *r)
{
    if (r->m && run_is_live(r))
        milter_abandon(r->m);   /* cancelled mid-step: the session's owner sees it dead */
    else
        milter_free(r->m);
    free(r->live);
    run_mods_free(r);
    free(r->quarantine);
    if (r->soon)
        event_free(r->soon);
    free(r);
}

void milter_run_cancel(struct milter_run *r)
{
    if (r)
        run_free(r);
}

/* Everything is decided: answer from the loop, then go. */
static void run_finish(evutil_socket_t fd, short what, void *arg)
{
    struct milter_run *r = arg;
    (void)fd;
    (void)what;
    r->res.mods = r->mods;
    r->res.nmods = r->nmods;
    r->res.quarantine = r->quarantine;
    r->res.failed = r->failed[0] ? r->failed : NULL;
    r->done(r->arg, &r->res);
    run_free(r);
}

static int copy_mod(struct milter_run *r, const struct milter_mod *s)
{
    struct milter_mod *n = realloc(r->mods, (r->nmods + 1) * sizeof *n);
    if (!n)
        return -1;
    r->mods = n;
    struct milter_mod *d = &r->mods[r->nmods];
    memset(d, 0, sizeof *d);
    d->cmd = s->cmd;
    d->index = s->index;
    d->name = strdup(s->name);
    d->value = strdup(s->value);
    d->addr = strdup(s->addr);
    d->args = strdup(s->args);
    if (s->body_len && (d->body = malloc(s->body_len)) != NULL) {
        memcpy(d->body, s->body, s->body_len);
        d->body_len = s->body_len;
    }
    r->nmods++;
    if (!d->name || !d->value || !d->addr || !d->args || (s->body_len && !d->body))
        return -1;
    return 0;
}

/* The current milter is done with this message (accepted, failed open,
 * or reached its end): quit it and go to the next. */
static void run_milter_done(struct milter_run *r)
{
    r->phase = RP_QUIT;
}

/* The next milter: a live one stays with its owner (no QUIT), a replayed
 * one is quit and freed. */
static void run_advance(struct milter_run *r)
{
    if (run_is_live(r)) {
        r->m = NULL;
    } else {
        milter_free(r->m);
        r->m = NULL;
    }
    r->cur++;
    r->phase = run_is_live(r) ? RP_DATA : RP_CONNECT;
    r->idx = 0;
}

static void on_answer(void *arg, const struct milter_result *mr)
{
    struct milter_run *r = arg;
    const struct conf_milter *cm = run_spec(r);
    enum run_phase ph = r->phase;

    if (run_is_live(r) && (ph == RP_EOM || mr->failed) && r->live[r->cur].eom_seen)
        *r->live[r->cur].eom_seen = 1;     /* its message is over: no ABORT for it */
    if (ph == RP_QUIT) {
        run_advance(r);
        if (r->finished || r->cur >= r->nlive + r->n) {
            event_active(r->soon, 0, 0);
            return;
        }
        run_next(r);
        return;
    }
    if (mr->failed) {
        snprintf(r->failed, sizeof r->failed, "%s", cm->socket);
        if (cm->fail_accept) {
            log_warn("%s: milter %s failed: default action accept, message goes on without it",
                     r->t.qid, cm->socket);
            run_milter_done(r);
        } else {
            log_warn("%s: milter %s failed: default action tempfail", r->t.qid, cm->socket);
            r->res.verdict = MILTER_TEMPFAIL;
            snprintf(r->res.text, sizeof r->res.text, "%s", MILTER_REPLY_FAIL);
            r->finished = 1;
            run_milter_done(r);
        }
        run_next(r);
        return;
    }
    switch (mr->verdict) {
    case MILTER_CONTINUE:
        break;
    case MILTER_SKIP:
        if (ph == RP_BODY)
            r->idx = r->t.len;          /* no more body: on to EOM */
        break;
    case MILTER_ACCEPT:
        /* this milter wants no more of this message (and at EOM its
         * modifications still count) */
        if (ph == RP_EOM)
            goto collect;
        run_milter_done(r);
        run_next(r);
        return;
    case MILTER_REJECT:
    case MILTER_TEMPFAIL:
        r->res.verdict = mr->verdict;
        snprintf(r->res.text, sizeof r->res.text, "%s",
                 mr->text ? mr->text : mr->verdict == MILTER_REJECT ? MILTER_REPLY_REJ
                                                                    : MILTER_REPLY_FAIL);
        log_info("%s: milter %s: %s at %s", r->t.qid, cm->socket, r->res.text,
                 (const char *[]){ "connect", "helo", "mail", "rcpt", "data", "header", "eoh",
                                   "body", "eom", "quit", "" }[ph]);
        r->finished = 1;
        run_milter_done(r);
        run_next(r);
        return;
    case MILTER_DISCARD:
        r->res.verdict = MILTER_DISCARD;
        log_info("%s: milter %s: discard", r->t.qid, cm->socket);
        r->finished = 1;
        run_milter_done(r);
        run_next(r);
        return;
    }
    if (ph != RP_EOM) {
        run_next(r);
        return;
    }
collect:
    for (size_t i = 0; i < mr->nmods; i++)
        if (copy_mod(r, &mr->mods[i]) < 0) {
            snprintf(r->failed, sizeof r->failed, "%s", cm->socket);
            r->res.verdict = MILTER_TEMPFAIL;
            snprintf(r->res.text, sizeof r->res.text, "%s", MILTER_REPLY_FAIL);
            r->finished = 1;
            break;
        }
    if (mr->quarantine && !r->quarantine)
        r->quarantine = strdup(mr->quarantine);
    run_milter_done(r);
    run_next(r);
}

/* The header field starting at off (a line not starting with space/tab):
 * its name and its value (without the one space after the colon, folded
 * lines joined with "\n" as Postfix sends them).  Returns the offset after
 * it, or 0 at the end of the header. */
static size_t next_header(const struct milter_run *r, size_t off, char **name, char **value)
{
    const unsigned char *m = r->t.msg;
    size_t end = r->body_start ? r->body_start - 2 : r->t.len;
    if (off >= end)
        return 0;
    size_t e = off;
    for (;;) {
        while (e < end && m[e] != '\n')
            e++;
        if (e < end)
            e++;
        if (e >= end || (m[e] != ' ' && m[e] != '\t'))
            break;
    }
    size_t colon = off;
    while (colon < e && m[colon] != ':')
        colon++;
    *name = strndup((const char *)m + off, colon - off);
    size_t v = colon < e ? colon + 1 : e;
    if (v < e && m[v] == ' ')
        v++;
    char *val = malloc(e - v + 1);
    size_t k = 0;
    for (size_t i = v; val && i < e; i++)
        if (m[i] != '\r')
            val[k++] = (char)m[i];
    while (val && k > 0 && val[k - 1] == '\n')
        k--;
    if (val)
        val[k] = '\0';
    *value = val;
    return e;
}

void milter_run_packets(struct milter_buf *b, enum milter_step st, const struct milter_run_txn *t,
                        const char *rcpt)
{
    char addr[1100];
    switch (st) {
    case MILTER_STEP_CONNECT: {
        char port[16];
        snprintf(port, sizeof port, "%u", t->port);
        const char *n[] = { "j", "{daemon_name}", "{client_addr}", "{client_name}",
                            "{client_port}", "_" };
        char underscore[600];
        snprintf(underscore, sizeof underscore, "%s [%s]", t->client_name, t->client_addr);
        const char *v[] = { t->hostname, MILTER_RUN_DAEMON, t->client_addr, t->client_name, port,
                            underscore };
        milter_proto_macro(b, SMFIC_CONNECT, n, v, 6);
        milter_proto_connect(b, t->client_name, (char)t->family, (uint16_t)t->port, t->client_addr);
        break;
    }
    case MILTER_STEP_HELO: {
        const char *n[] = { "{tls_version}", "{cipher}" };
        const char *v[] = { t->tls_version ? t->tls_version : "", "" };
        if (t->tls_version)
            milter_proto_macro(b, SMFIC_HELO, n, v, 1);
        milter_proto_helo(b, t->helo);
        break;
    }
    case MILTER_STEP_MAIL: {
        const char *n[] = { "i", "{mail_addr}", "{auth_type}", "{auth_authen}", "{mail_mailer}" };
        const char *v[] = { t->qid, t->sender, "", "", "smtp" };
        milter_proto_macro(b, SMFIC_MAIL, n, v, 5);
        snprintf(addr, sizeof addr, "<%s>", t->sender);
        const char *argv[] = { addr };
        milter_proto_args(b, SMFIC_MAIL, argv, 1);
        break;
    }
    case MILTER_STEP_RCPT: {
        const char *n[] = { "{rcpt_addr}", "{rcpt_mailer}" };
        const char *v[] = { rcpt, "smtp" };
        milter_proto_macro(b, SMFIC_RCPT, n, v, 2);
        snprintf(addr, sizeof addr, "<%s>", rcpt);
        const char *argv[] = { addr };
        milter_proto_args(b, SMFIC_RCPT, argv, 1);
        break;
    }
    case MILTER_STEP_ABORT:
        milter_proto_simple(b, SMFIC_ABORT);
        break;
    default:
        milter_proto_simple(b, SMFIC_QUIT);
        break;
    }
}

static void run_next(struct milter_run *r)
{
    struct milter_buf b = { 0 };
    const struct milter_run_txn *t = &r->t;
    enum milter_step st;

    if (r->phase == RP_QUIT && run_is_live(r) && r->m) {
        /* a live session stays open for the next transaction */
        run_advance(r);
        if (r->finished) {
            event_active(r->soon, 0, 0);
            return;
        }
    }
    if (r->cur >= r->nlive + r->n) {
        event_active(r->soon, 0, 0);
        return;
    }
    if (r->m == NULL && run_is_live(r)) {
        r->m = r->live[r->cur].m;
        r->phase = RP_DATA;
    }
    if (r->m == NULL) {
        const struct conf_milter *cm = run_spec(r);
        struct milter_spec spec;
        memset(&spec, 0, sizeof spec);
        snprintf(spec.socket, sizeof spec.socket, "%s", cm->socket);
        spec.fail_accept = cm->fail_accept;
        spec.connect_ms = cm->connect_timeout * 1000;
        spec.command_ms = cm->command_timeout * 1000;
        spec.content_ms = cm->content_timeout * 1000;
        r->m = milter_new(r->base, &spec, t->qid);
        if (!r->m) {
            r->res.verdict = MILTER_TEMPFAIL;
            snprintf(r->res.text, sizeof r->res.text, "%s", MILTER_REPLY_FAIL);
            r->finished = 1;
            event_active(r->soon, 0, 0);
            return;
        }
        r->phase = RP_CONNECT;
    }
    enum run_phase ph = r->phase;
    switch (ph) {
    case RP_CONNECT:
        st = MILTER_STEP_CONNECT;
        milter_run_packets(&b, st, t, NULL);
        r->phase = RP_HELO;
        break;
    case RP_HELO:
        st = MILTER_STEP_HELO;
        milter_run_packets(&b, st, t, NULL);
        r->phase = RP_MAIL;
        break;
    case RP_MAIL:
        st = MILTER_STEP_MAIL;
        milter_run_packets(&b, st, t, NULL);
        r->phase = t->nrcpt ? RP_RCPT : RP_DATA;
        r->idx = 0;
        break;
    case RP_RCPT:
        st = MILTER_STEP_RCPT;
        milter_run_packets(&b, st, t, t->rcpts[r->idx]);
        if (++r->idx >= t->nrcpt)
            r->phase = RP_DATA;
        break;
    case RP_DATA:
        milter_proto_simple(&b, SMFIC_DATA);
        st = MILTER_STEP_DATA;
        r->phase = RP_HEADER;
        r->idx = 0;
        break;
    case RP_HEADER: {
        char *name = NULL, *value = NULL;
        size_t next = next_header(r, r->idx, &name, &value);
        if (next == 0) {
            r->phase = RP_EOH;
            run_next(r);
            return;
        }
        r->idx = next;
        milter_proto_header(&b, name ? name : "", value ? value : "");
        free(name);
        free(value);
        st = MILTER_STEP_HEADER;
        break;
    }
    case RP_EOH:
        milter_proto_simple(&b, SMFIC_EOH);
        st = MILTER_STEP_EOH;
        r->phase = RP_BODY;
        r->idx = r->body_start ? r->body_start : t->len;     /* no body without a header end */
        break;
    case RP_BODY:
        if (r->idx >= t->len) {
            r->phase = RP_EOM;
            run_next(r);
            return;
        }
        {
            size_t k = t->len - r->idx < MILTER_RUN_CHUNK ? t->len - r->idx : MILTER_RUN_CHUNK;
            milter_proto_body(&b, t->msg + r->idx, k);
            r->idx += k;
        }
        st = MILTER_STEP_BODY;
        break;
    case RP_EOM: {
        const char *n[] = { "i" };
        const char *v[] = { t->qid };
        milter_proto_macro(&b, SMFIC_BODYEOB, n, v, 1);
        milter_proto_simple(&b, SMFIC_BODYEOB);
        st = MILTER_STEP_EOM;
        break;
    }
    case RP_QUIT:
    default:
        milter_proto_simple(&b, SMFIC_QUIT);
        st = MILTER_STEP_QUIT;
        break;
    }
    milter_step(r->m, st, &b, on_answer, r);
    milter_buf_free(&b);
}

struct milter_run *milter_run_start(struct event_base *base, const struct milter_run_live *live,
                                    size_t nlive, const struct conf_milter *list, size_t n,
                                    const struct milter_run_txn *t, milter_run_fn done, void *arg)
{
    struct milter_run *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    if (nlive && !(r->live = calloc(nlive, sizeof *r->live))) {
        free(r);
        return NULL;
    }
    for (size_t i = 0; i < nlive; i++)
        r->live[i] = live[i];
    r->nlive = nlive;
    r->base = base;
    r->list = list;
    r->n = n;
    r->t = *t;
    r->done = done;
    r->arg = arg;
    r->res.verdict = MILTER_CONTINUE;
    r->soon = event_new(base, -1, 0, run_finish, r);
    if (!r->soon) {
        free(r->live);
        free(r);
        return NULL;
    }
    /* the header ends at the first empty line */
    const unsigned char *m = t->msg;
    for (size_t i = 0; i + 3 < t->len; i++)
        if (m[i] == '\r' && m[i + 1] == '\n' && m[i + 2] == '\r' && m[i + 3] == '\n') {
            r->body_start = i + 4;
            break;
        }
    run_next(r);
    return r;
}
