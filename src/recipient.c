/*
 * recipient.c - the RCPT verdict: policy, then the domain's table, then a
 * callout (see recipient.h).
 *
 * Owns: the recipient requests (one per session at most, reused), the
 * pending table or verify request each may carry, and the reference to
 * the policy a pending one holds.  Decides the reply and its reject class
 * for every refusal after the policy's: 451 4.3.0 (table down), 550 5.1.1
 * (table or primary says unknown), 450 4.1.1 (unverifiable, probe still
 * running), 450 4.7.1 (client throttled), 450 4.7.0 (gated domain, its
 * primary is up: heartbeat.h).
 *
 * Never: blocks (tables and probes answer through callbacks); calls back
 * after recipient_cancel(); touches a request after handing it to the
 * callback (the callback may free it); passes a primary's reply through
 * unless it is one clean line of 5xx with a 5.x.x enhanced code.
 *
 * Security: the primary's reply text is a peer's: it is copied only into
 * a fixed buffer, control octets and non-ASCII replaced, and used only
 * when its codes say "permanent failure"; else our own 550 5.1.1.  A
 * throttled client is never probed (verify_rcpt answers it THROTTLED at
 * once), so a dictionary attack costs the primary at most the
 * throttle's worth of probes per client.
 */
#include "config.h"
#include "recipient.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "heartbeat.h"
#include "log.h"
#include "table.h"
#include "util.h"
#include "verify.h"


/* Client address: up to an IPv6 address in network order. */
#define CLIENT_ADDR_MAX 16
/* "5xx 5.x.x": three digits, a separator, "5.", a digit... */
#define REPLY_CODE_LEN 3
#define REPLY_CLASS_LEN 5           /* shortest enhanced code: "5.1.1" */
#define CODE_PART_MAX 3             /* RFC 3463: subject and detail 1-3 digits */

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

struct recipient_req {
    const struct policy *p;             /* held while pending */
    const struct conf_domain *dom;
    struct table_req *treq;
    struct verify_req *vreq;
    recipient_cb *cb;
    void *arg;
    int pending;
    int family;
    unsigned char client[CLIENT_ADDR_MAX];
    char key[SMTP_PATH_MAX + 1];        /* local@domain, the domain lower case */
    char text[SMTP_PATH_MAX + 1];       /* as the client wrote it, for replies */
};

static void answer(struct recipient_answer *a, enum recipient_verdict v, enum stat_id why,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void answer(struct recipient_answer *a, enum recipient_verdict v, enum stat_id why,
                   const char *fmt, ...)
{
    va_list ap;

    a->verdict = v;
    a->why = why;
    va_start(ap, fmt);
    vsnprintf(a->reply, sizeof a->reply, fmt, ap);
    va_end(ap);
}

static void accept_rcpt(struct recipient_answer *a, const struct conf_domain *dom)
{
    a->verdict = RECIPIENT_ACCEPT;
    a->dom = dom;
    a->reply[0] = '\0';
}

static void note_unknown(const struct recipient_req *r)
{
    verify_note_unknown(r->family, r->client);
}

static void refuse_unknown(struct recipient_req *r, struct recipient_answer *a)
{
    note_unknown(r);
    answer(a, RECIPIENT_REFUSE, STAT_REJ_UNKNOWN_USER,
           "550 5.1.1 <%s>: Recipient address rejected: User unknown", r->text);
}

/*
 * The primary's refusal, if it is a clean permanent "user unknown" class
 * reply: "5yz 5.x.y text" (a continuation dash taken as a space).  Copies
 * it into out with non-printable octets replaced.  Returns 1 when used.
 */
static int primary_reply(const char *in, size_t inlen, char *out, size_t len)
{
    size_t n = strnlen(in, inlen);
    size_t i;

    if (n < REPLY_CODE_LEN + 1 + REPLY_CLASS_LEN || in[0] != '5' || !is_digit(in[1]) ||
        !is_digit(in[2]) || (in[3] != ' ' && in[3] != '-'))
        return 0;
    /* enhanced code: 5.d{1,3}.d{1,3}, then a space or the end */
    const char *e = in + REPLY_CODE_LEN + 1;
    if (e[0] != '5' || e[1] != '.')
        return 0;
    i = 2;
    for (int part = 0; part < 2; part++) {
        size_t digits = 0;
        while (is_digit(e[i]) && digits < CODE_PART_MAX) {
            i++;
            digits++;
        }
        if (digits == 0)
            return 0;
        if (part == 0) {
            if (e[i] != '.')
                return 0;
            i++;
        }
    }
    if (e[i] != ' ' && e[i] != '\0')
        return 0;
    if (len == 0)
        return 0;
    for (i = 0; i < n && i + 1 < len; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch == '\r' || ch == '\n')
            break;
        out[i] = (ch < ' ' || ch >= 0x7f) ? '?' : (char)ch;
    }
    out[i] = '\0';
    out[REPLY_CODE_LEN] = ' ';
    return 1;
}

/* Turn a verify answer into ours. */
static void verify_verdict(struct recipient_req *r, const struct verify_answer *va,
                           struct recipient_answer *a)
{
    switch (va->result) {
    case VERIFY_VALID:
        accept_rcpt(a, r->dom);
        return;
    case VERIFY_INVALID:
        note_unknown(r);
        if (primary_reply(va->reply, sizeof va->reply, a->reply, sizeof a->reply)) {
            a->verdict = RECIPIENT_REFUSE;
            a->why = STAT_REJ_UNKNOWN_USER;
        } else {
            answer(a, RECIPIENT_REFUSE, STAT_REJ_UNKNOWN_USER,
                   "550 5.1.1 <%s>: Recipient address rejected: User unknown", r->text);
        }
        return;
    case VERIFY_UNKNOWN:
        if (r->dom->unverified == UNVERIFIED_ACCEPT) {
            accept_rcpt(a, r->dom);
            a->unverified = 1;
            return;
        }
        answer(a, RECIPIENT_REFUSE, STAT_REJ_UNVERIFIED,
               "450 4.1.1 <%s>: Recipient address verification failed, try again later",
               r->text);
        return;
    case VERIFY_PENDING:
        answer(a, RECIPIENT_REFUSE, STAT_REJ_UNVERIFIED,
               "450 4.1.1 <%s>: verification in progress, try again later", r->text);
        return;
    case VERIFY_THROTTLED:
        answer(a, RECIPIENT_THROTTLED, STAT_REJ_THROTTLED,
               "450 4.7.1 <%s>: too many unknown recipients, try again later", r->text);
        return;
    }
    log_panic("recipient: verify result %d", (int)va->result);
}

static void table_verdict(struct recipient_req *r, enum table_result res,
                          struct recipient_answer *a)
{
    switch (res) {
    case TABLE_FOUND:
        /* The table is the administrator's word: no probe (recipient.h). */
        accept_rcpt(a, r->dom);
        return;
    case TABLE_NOTFOUND:
        refuse_unknown(r, a);
        return;
    case TABLE_TEMPFAIL:
        answer(a, RECIPIENT_REFUSE, STAT_REJ_LOOKUP,
               "451 4.3.0 <%s>: Temporary lookup failure", r->text);
        return;
    case TABLE_PENDING:
        break;
    }
    log_panic("recipient: table result %d in a verdict", (int)res);
}

/* The pending step is over: hand the answer out, then drop the policy the
 * request held.  r is not touched after cb: cb may reuse or free it. */
static void finish(struct recipient_req *r, struct recipient_answer *a)
{
    const struct policy *held = r->p;
    recipient_cb *cb = r->cb;
    void *arg = r->arg;

    r->p = NULL;
    r->pending = 0;
    cb(arg, a);
    policy_free(held);
}

static void on_verify(void *arg, const struct verify_answer *va)
{
    struct recipient_req *r = arg;
    struct recipient_answer a;

    if (!r->pending || r->vreq == NULL)
        log_panic("recipient: verify answer for no pending request");
    r->vreq = NULL;
    memset(&a, 0, sizeof a);
    verify_verdict(r, va, &a);
    finish(r, &a);
}

/* Probe step.  Returns 0 with *a filled, 1 when the probe answers later. */
static int verify_step(struct recipient_req *r, struct recipient_answer *a)
{
    struct verify_answer va;

    memset(&va, 0, sizeof va);
    /* verify_rcpt answers a throttled client THROTTLED at once, before
     * its cache or a probe (and counts it in its own metrics). */
    r->vreq = verify_rcpt(r->dom, r->key, r->family, r->client, &va, on_verify, r);
    if (r->vreq != NULL)
        return 1;
    verify_verdict(r, &va, a);
    return 0;
}

static void on_table(void *arg, enum table_result res)
{
    struct recipient_req *r = arg;
    struct recipient_answer a;

    if (!r->pending || r->treq == NULL)
        log_panic("recipient: table answer for no pending request");
    r->treq = NULL;
    memset(&a, 0, sizeof a);
    table_verdict(r, res, &a);
    finish(r, &a);
}

/* "local@domain" with the served domain's own (lower case) name. */
static int make_key(struct recipient_req *r, const struct smtp_addr *a,
                    const struct conf_domain *dom)
{
    if (smtp_addr_format(a, r->text, sizeof r->text) < 0)
        return -1;
    int n = snprintf(r->key, sizeof r->key, "%s@%s", a->local, dom->name);
    return (n < 0 || (size_t)n >= sizeof r->key) ? -1 : 0;
}

int recipient_check(struct recipient_req **rp, const struct policy *p,
                    const struct smtp_addr *a, int family, const void *client,
                    recipient_cb *cb, void *arg, struct recipient_answer *now)
{
    const struct conf_domain *dom = NULL;
    enum stat_id why = STAT_REJ_RELAY;
    const char *err;

    now->verdict = RECIPIENT_ACCEPT;
    now->unverified = 0;
    now->dom = NULL;
    err = policy_check_rcpt(p, a, &dom, &why, now->reply, sizeof now->reply);
    if (err != NULL) {
        now->verdict = RECIPIENT_REFUSE;
        now->why = why;
        if (why == STAT_REJ_UNKNOWN_USER)
            verify_note_unknown(family, client);
        return 0;
    }
    /* accept = "when-primary-down": while the primary is known up, the
     * sender is sent there (an in-memory read of the heartbeat's gate).
     * Before the table and the probe: neither is needed for a refusal. */
    if (heartbeat_gate(dom, NULL, NULL)) {
        char text[SMTP_PATH_MAX + 1];
        if (smtp_addr_format(a, text, sizeof text) < 0)
            snprintf(text, sizeof text, "recipient");
        answer(now, RECIPIENT_REFUSE, STAT_REJ_GATED,
               "450 4.7.0 <%s>: primary MX is up, deliver there", text);
        return 0;
    }
    /* A table that answers at once (file, lmdb) was asked inside
     * policy_check_rcpt: its FOUND is this acceptance, and it is the
     * administrator's word, so no probe follows it (recipient.h). */
    struct table *t = policy_domain_async_table(p, dom);
    if (t == NULL && (dom->verify != VERIFY_CALLOUT || policy_domain_table(p, dom) != NULL)) {
        accept_rcpt(now, dom);             /* the fast path */
        return 0;
    }

    struct recipient_req *r = *rp;
    if (r == NULL && (r = *rp = calloc(1, sizeof *r)) == NULL) {
        log_warn("recipient: out of memory for a lookup");
        answer(now, RECIPIENT_REFUSE, STAT_REJ_STORAGE,
               "451 4.3.0 Error: insufficient resources");
        return 0;
    }
    if (r->pending)
        log_panic("recipient: a check started while one is pending");
    r->dom = dom;
    r->cb = cb;
    r->arg = arg;
    r->family = family;
    memset(r->client, 0, sizeof r->client);
    memcpy(r->client, client, family == AF_INET6 ? CLIENT_ADDR_MAX : 4);
    if (make_key(r, a, dom) < 0) {
        answer(now, RECIPIENT_REFUSE, STAT_REJ_PROTOCOL,
               "501 5.1.3 Error: recipient address too long");
        return 0;
    }

    if (t != NULL) {
        enum table_result res = table_lookup(t, r->key, on_table, r, &r->treq);
        if (res == TABLE_PENDING) {
            r->pending = 1;
            r->p = policy_ref(p);
            return 1;
        }
        table_verdict(r, res, now);
        return 0;
    }
    if (verify_step(r, now) == 0)
        return 0;
    r->pending = 1;
    r->p = policy_ref(p);
    return 1;
}

void recipient_cancel(struct recipient_req *r)
{
    if (r == NULL || !r->pending)
        return;
    if (r->treq != NULL)
        table_cancel(r->treq);
    if (r->vreq != NULL)
        verify_cancel(r->vreq);
    r->treq = NULL;
    r->vreq = NULL;
    r->pending = 0;
    policy_free(r->p);
    r->p = NULL;
}

int recipient_pending(const struct recipient_req *r)
{
    return r != NULL && r->pending;
}

void recipient_req_free(struct recipient_req *r)
{
    if (r == NULL)
        return;
    recipient_cancel(r);
    free(r);
}
