/*
 * milter_set.c - the global milters of one SMTP session, live during the
 * dialogue (see milter_set.h): one milter.c session per configured
 * milter, opened at connect, each event sent to the milters still
 * involved one after the other (Postfix's order), the first refusal
 * answering it.
 *
 * Owns: the milter sessions, copies of their specs, the event in flight
 * (its packets, its answer).
 * Must never: block; call back from inside milter_set_event or after
 * cancel/free; let a failure be anything but the milter's default action
 * (tempfail: 451 4.7.1; accept: the milter is left out for the rest of
 * the connection).
 * Security: the milter's reply text was checked by milter.c (a valid
 * 4xx/5xx with an enhanced code of the same class); a milter can only
 * refuse or discard here, never add anything.
 */
#include "config.h"
#include "milter_set.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MILTER_SET_FAIL "451 4.7.1 Service unavailable - try again later"
#define MILTER_SET_REJ  "550 5.7.1 Command rejected"

struct member {
    struct conf_milter spec;            /* socket: our copy */
    struct milter *m;
    int off_conn;                       /* accepted at connect/HELO, or failed open */
    int off_txn;                        /* accepted during this transaction */
    int in_txn;                         /* saw this transaction's MAIL */
    int eom_seen;                       /* answered this transaction's EOM */
};

struct milter_set {
    struct member *v;
    size_t n;
    char log_id[64];
    int discard;
    /* the event in flight */
    int pending;
    enum milter_step step;
    size_t cur;
    struct milter_buf pkts;
    milter_set_fn done;
    void *arg;
    struct milter_set_answer ans;
};

static const char *const step_name[MILTER_STEP_COUNT_] = {
    "connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom", "abort", "quit",
};

struct milter_set *milter_set_new(struct event_base *base, const struct conf_milters *ms,
                                  const char *log_id)
{
    if (ms == NULL || ms->n == 0)
        return NULL;
    struct milter_set *set = calloc(1, sizeof *set);
    if (!set || !(set->v = calloc(ms->n, sizeof *set->v))) {
        free(set);
        return NULL;
    }
    snprintf(set->log_id, sizeof set->log_id, "%s", log_id);
    for (size_t i = 0; i < ms->n; i++) {
        struct member *mb = &set->v[set->n];
        struct milter_spec spec;
        mb->spec = ms->v[i];
        if (!(mb->spec.socket = strdup(ms->v[i].socket)))
            break;
        memset(&spec, 0, sizeof spec);
        snprintf(spec.socket, sizeof spec.socket, "%s", mb->spec.socket);
        spec.fail_accept = mb->spec.fail_accept;
        spec.connect_ms = mb->spec.connect_timeout * 1000;
        spec.command_ms = mb->spec.command_timeout * 1000;
        spec.content_ms = mb->spec.content_timeout * 1000;
        if (!(mb->m = milter_new(base, &spec, log_id))) {
            free(mb->spec.socket);
            break;
        }
        set->n++;
    }
    if (set->n < ms->n) {
        milter_set_free(set);
        return NULL;
    }
    return set;
}

void milter_set_free(struct milter_set *set)
{
    if (!set)
        return;
    milter_set_cancel(set);
    for (size_t i = 0; i < set->n; i++) {
        milter_quit_free(set->v[i].m);
        free(set->v[i].spec.socket);
    }
    free(set->v);
    milter_buf_free(&set->pkts);
    free(set);
}

static int member_asked(const struct milter_set *set, const struct member *mb, enum milter_step st)
{
    if (mb->off_conn)
        return 0;
    if (st == MILTER_STEP_CONNECT || st == MILTER_STEP_HELO)
        return 1;
    return !mb->off_txn && !set->discard;
}

static void set_next(struct milter_set *set);

static void set_answer(struct milter_set *set)
{
    milter_set_fn done = set->done;
    void *arg = set->arg;
    set->pending = 0;
    set->done = NULL;
    if (done)
        done(arg, &set->ans);
}

static void on_member(void *arg, const struct milter_result *r)
{
    struct milter_set *set = arg;
    struct member *mb = &set->v[set->cur];
    enum milter_step st = set->step;
    int conn_phase = st == MILTER_STEP_CONNECT || st == MILTER_STEP_HELO;

    if (st == MILTER_STEP_MAIL)
        mb->in_txn = 1;
    if (r->failed) {
        set->ans.failed = mb->spec.socket;
        if (mb->spec.fail_accept) {
            log_warn("%s: milter %s failed at %s: default action accept, it is left out of "
                     "this connection", set->log_id, mb->spec.socket, step_name[st]);
            mb->off_conn = 1;
            set->cur++;
            set_next(set);
            return;
        }
        log_warn("%s: milter %s failed at %s: default action tempfail", set->log_id,
                 mb->spec.socket, step_name[st]);
        set->ans.verdict = MILTER_TEMPFAIL;
        snprintf(set->ans.text, sizeof set->ans.text, "%s", MILTER_SET_FAIL);
        set_answer(set);
        return;
    }
    switch (r->verdict) {
    case MILTER_REJECT:
    case MILTER_TEMPFAIL:
        set->ans.verdict = r->verdict;
        snprintf(set->ans.text, sizeof set->ans.text, "%s",
                 r->text ? r->text : r->verdict == MILTER_REJECT ? MILTER_SET_REJ : MILTER_SET_FAIL);
        log_info("%s: milter %s: %s at %s", set->log_id, mb->spec.socket, set->ans.text,
                 step_name[st]);
        set_answer(set);
        return;
    case MILTER_ACCEPT:
        if (conn_phase)
            mb->off_conn = 1;
        else
            mb->off_txn = 1;
        break;
    case MILTER_DISCARD:
        if (conn_phase) {
            /* discard needs a message: at connect/HELO it is accept */
            mb->off_conn = 1;
        } else {
            log_info("%s: milter %s: discard at %s", set->log_id, mb->spec.socket,
                     step_name[st]);
            set->discard = 1;
        }
        break;
    default:
        break;
    }
    set->cur++;
    set_next(set);
}

static void set_next(struct milter_set *set)
{
    while (set->cur < set->n && !member_asked(set, &set->v[set->cur], set->step))
        set->cur++;
    if (set->cur >= set->n) {
        set_answer(set);
        return;
    }
    milter_step(set->v[set->cur].m, set->step, &set->pkts, on_member, set);
}

int milter_set_event(struct milter_set *set, enum milter_step st, const struct milter_run_txn *t,
                     const char *rcpt, milter_set_fn done, void *arg)
{
    if (set->pending)
        log_panic("%s: milter event %s while another is pending", set->log_id, step_name[st]);
    size_t i;
    for (i = 0; i < set->n && !member_asked(set, &set->v[i], st); i++)
        ;
    if (i >= set->n)
        return 0;
    set->pkts.len = 0;
    milter_run_packets(&set->pkts, st, t, rcpt);
    memset(&set->ans, 0, sizeof set->ans);
    set->ans.verdict = MILTER_CONTINUE;
    set->step = st;
    set->cur = i;
    set->done = done;
    set->arg = arg;
    set->pending = 1;
    /* milter_step answers from the loop, never from inside */
    milter_step(set->v[i].m, st, &set->pkts, on_member, set);
    return 1;
}

void milter_set_cancel(struct milter_set *set)
{
    if (!set || !set->pending)
        return;
    set->pending = 0;
    set->done = NULL;
    if (set->cur < set->n)
        milter_abandon(set->v[set->cur].m);
}

static void set_txn_reset(struct milter_set *set)
{
    set->discard = 0;
    for (size_t i = 0; i < set->n; i++) {
        set->v[i].off_txn = 0;
        set->v[i].in_txn = 0;
        set->v[i].eom_seen = 0;
    }
}

void milter_set_abort(struct milter_set *set)
{
    if (!set)
        return;
    struct milter_buf b = { 0 };
    for (size_t i = 0; i < set->n; i++) {
        struct member *mb = &set->v[i];
        if (!mb->in_txn || mb->eom_seen || mb->off_conn || milter_is_dead(mb->m))
            continue;
        if (b.len == 0)
            milter_run_packets(&b, MILTER_STEP_ABORT, NULL, NULL);
        milter_notify(mb->m, &b);
    }
    milter_buf_free(&b);
    set_txn_reset(set);
}

size_t milter_set_count(const struct milter_set *set) { return set ? set->n : 0; }

int milter_set_discarded(const struct milter_set *set) { return set && set->discard; }

size_t milter_set_live(struct milter_set *set, struct milter_run_live *out, size_t cap)
{
    size_t k = 0;
    if (!set || set->discard)
        return 0;
    for (size_t i = 0; i < set->n && k < cap; i++) {
        struct member *mb = &set->v[i];
        if (mb->off_conn || mb->off_txn)
            continue;
        out[k].m = mb->m;
        out[k].spec = mb->spec;
        out[k].eom_seen = &mb->eom_seen;
        k++;
    }
    return k;
}

int milter_set_has(const struct milter_set *set, const char *socket)
{
    for (size_t i = 0; set && i < set->n; i++)
        if (strcmp(set->v[i].spec.socket, socket) == 0)
            return 1;
    return 0;
}
