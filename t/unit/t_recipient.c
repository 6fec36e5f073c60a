/*
 * t_recipient.c - unit test of src/recipient.c: the RCPT verdict over
 * policy, table and callout, synchronous and pending, in order, cancelled.
 *
 * recipient.c is linked alone with test doubles defined here for what it
 * consumes (policy_check_rcpt, policy_domain_table/_async_table, policy_ref/free,
 * table_lookup/cancel, verify_rcpt/cancel/note_unknown/client_throttled):
 * strong definitions in this object, so libmxkeep.a's real policy.o (and
 * table.o, verify.o once merged) are never pulled into this program.  The
 * doubles answer by local part and keep pending requests in a list the
 * test completes in any order it likes, as a slow database or primary
 * would.  Run under ASan it also shows that a cancelled or freed request
 * is never called back.
 */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "recipient.h"
#include "table.h"
#include "verify.h"
#include "tap.h"

#define FAKE_PENDING_MAX 16
#define REPLY_MAX RECIPIENT_REPLY_MAX

/* ---- the policy double ---- */

struct policy {
    unsigned long refs;
};

static struct conf_domain dom_plain = { .name = "plain.test" };
static struct conf_domain dom_tbl = { .name = "tbl.test" };
static struct conf_domain dom_tblv = { .name = "tblv.test", .verify = VERIFY_CALLOUT };
static struct conf_domain dom_co = { .name = "co.test", .verify = VERIFY_CALLOUT,
                                     .unverified = UNVERIFIED_ACCEPT };
static struct conf_domain dom_cotf = { .name = "cotf.test", .verify = VERIFY_CALLOUT,
                                       .unverified = UNVERIFIED_TEMPFAIL };
/* a file/lmdb table beside callout: policy_check_rcpt asked it already */
static struct conf_domain dom_stbl = { .name = "stbl.test", .verify = VERIFY_CALLOUT };
static struct conf_domain *const doms[] = { &dom_plain, &dom_tbl, &dom_tblv, &dom_co, &dom_cotf,
                                            &dom_stbl };

struct table {
    int dummy;
};
static struct table fake_tbl;

const char *policy_check_rcpt(const struct policy *p, const struct smtp_addr *a,
                              const struct conf_domain **dom, enum stat_id *why, char *buf,
                              size_t len)
{
    (void)p;
    for (size_t i = 0; i < sizeof doms / sizeof doms[0]; i++) {
        if (strcmp(a->domain, doms[i]->name) != 0)
            continue;
        if (strcmp(a->local, "listed-unknown") == 0) {
            *why = STAT_REJ_UNKNOWN_USER;
            snprintf(buf, len, "550 5.1.1 <%s@%s>: Recipient address rejected: User unknown",
                     a->local, a->domain);
            return buf;
        }
        *dom = doms[i];
        return NULL;
    }
    *why = STAT_REJ_RELAY;
    snprintf(buf, len, "550 5.7.1 <%s@%s>: Relay access denied", a->local, a->domain);
    return buf;
}

static struct table fake_sync_tbl;

struct table *policy_domain_table(const struct policy *p, const struct conf_domain *d)
{
    (void)p;
    if (d == &dom_stbl)
        return &fake_sync_tbl;
    return (d == &dom_tbl || d == &dom_tblv) ? &fake_tbl : NULL;
}

/* tbl and tblv stand for pgsql tables (may answer later) */
struct table *policy_domain_async_table(const struct policy *p, const struct conf_domain *d)
{
    (void)p;
    return (d == &dom_tbl || d == &dom_tblv) ? &fake_tbl : NULL;
}

const struct policy *policy_ref(const struct policy *cp)
{
    struct policy *p = (struct policy *)cp;
    if (p)
        p->refs++;
    return cp;
}

void policy_free(const struct policy *cp)
{
    struct policy *p = (struct policy *)cp;
    if (p)
        p->refs--;
}

/* ---- pending requests of both doubles ---- */

struct fake_req {
    int used, cancelled, kind;          /* kind 't' table, 'v' verify */
    char key[SMTP_PATH_MAX + 1];
    table_cb *tcb;
    verify_cb *vcb;
    void *arg;
};
static struct fake_req fakes[FAKE_PENDING_MAX];
static int n_lookups, n_probes, n_notes, n_cancels, throttled_now;

static struct fake_req *fake_new(int kind, const char *key, void *arg)
{
    for (int i = 0; i < FAKE_PENDING_MAX; i++) {
        if (!fakes[i].used) {
            memset(&fakes[i], 0, sizeof fakes[i]);
            fakes[i].used = 1;
            fakes[i].kind = kind;
            snprintf(fakes[i].key, sizeof fakes[i].key, "%s", key);
            fakes[i].arg = arg;
            return &fakes[i];
        }
    }
    abort();
}

static struct fake_req *fake_find(const char *key)
{
    for (int i = 0; i < FAKE_PENDING_MAX; i++)
        if (fakes[i].used && strcmp(fakes[i].key, key) == 0)
            return &fakes[i];
    return NULL;
}

static int starts(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

enum table_result table_lookup(struct table *t, const char *key, table_cb *cb, void *arg,
                               struct table_req **req)
{
    (void)t;
    n_lookups++;
    if (starts(key, "found@"))
        return TABLE_FOUND;
    if (starts(key, "down@"))
        return TABLE_TEMPFAIL;
    if (starts(key, "slow")) {
        struct fake_req *f = fake_new('t', key, arg);
        f->tcb = cb;
        *req = (struct table_req *)f;
        return TABLE_PENDING;
    }
    return TABLE_NOTFOUND;
}

void table_cancel(struct table_req *req)
{
    struct fake_req *f = (struct fake_req *)req;
    if (f) {
        f->used = 0;
        n_cancels++;
    }
}

struct verify_req *verify_rcpt(const struct conf_domain *d, const char *addr, int family,
                               const void *client, struct verify_answer *now,
                               verify_cb *cb, void *arg)
{
    (void)d;
    if (verify_client_throttled(family, client)) {
        /* as verify.c: a throttled client is answered before any probe */
        memset(now, 0, sizeof *now);
        now->result = VERIFY_THROTTLED;
        return NULL;
    }
    n_probes++;
    if (starts(addr, "slow")) {
        struct fake_req *f = fake_new('v', addr, arg);
        f->vcb = cb;
        return (struct verify_req *)f;
    }
    memset(now, 0, sizeof *now);
    now->from_cache = 1;
    if (starts(addr, "valid@"))
        now->result = VERIFY_VALID;
    else if (starts(addr, "down@"))
        now->result = VERIFY_UNKNOWN;
    else if (starts(addr, "wait@"))
        now->result = VERIFY_PENDING;
    else if (starts(addr, "thr@"))
        now->result = VERIFY_THROTTLED;
    else if (starts(addr, "badreply@")) {
        now->result = VERIFY_INVALID;
        snprintf(now->reply, sizeof now->reply, "550 Mailbox unavailable");
    } else if (starts(addr, "tempreply@")) {
        now->result = VERIFY_INVALID;
        snprintf(now->reply, sizeof now->reply, "450 4.1.1 try later");
    } else if (starts(addr, "crlf@")) {
        now->result = VERIFY_INVALID;
        snprintf(now->reply, sizeof now->reply,
                 "550-5.1.1 <crlf@co.test>: no such user\r\n250 2.0.0 injected");
    } else {
        now->result = VERIFY_INVALID;
        snprintf(now->reply, sizeof now->reply,
                 "550 5.1.1 <%s>: Recipient address rejected: User unknown in local "
                 "recipient table", addr);
    }
    return NULL;
}

void verify_cancel(struct verify_req *r)
{
    table_cancel((struct table_req *)r);
}

void verify_note_unknown(int family, const void *client)
{
    (void)family;
    (void)client;
    n_notes++;
}

int verify_client_throttled(int family, const void *client)
{
    (void)family;
    (void)client;
    return throttled_now;
}

/* Complete the pending request for key with a table result or a verify
 * answer.  Returns 0 when none is pending (cancelled). */
static int fire_table(const char *key, enum table_result r)
{
    struct fake_req *f = fake_find(key);
    if (f == NULL || f->kind != 't')
        return 0;
    f->used = 0;
    f->tcb(f->arg, r);
    return 1;
}

static int fire_verify(const char *key, enum verify_result r, const char *reply)
{
    struct fake_req *f = fake_find(key);
    struct verify_answer a;
    if (f == NULL || f->kind != 'v')
        return 0;
    f->used = 0;
    memset(&a, 0, sizeof a);
    a.result = r;
    if (reply)
        snprintf(a.reply, sizeof a.reply, "%s", reply);
    f->vcb(f->arg, &a);
    return 1;
}

/* ---- a session double: pipelined RCPTs answered in order ---- */

struct sess {
    const struct policy *p;
    struct recipient_req *r;
    const char *queue[8];               /* pipelined addresses */
    int nq, next;
    char replies[8][REPLY_MAX];
    int nreplies;
    int waiting;
    int free_in_cb;                     /* free the request from inside the callback */
};

static void sess_run(struct sess *s);

static void sess_record(struct sess *s, const struct recipient_answer *a)
{
    if (a->verdict == RECIPIENT_ACCEPT)
        snprintf(s->replies[s->nreplies++], REPLY_MAX, "250 %s%s", a->dom->name,
                 a->unverified ? " unverified" : "");
    else
        snprintf(s->replies[s->nreplies++], REPLY_MAX, "%s", a->reply);
}

static void sess_cb(void *arg, const struct recipient_answer *a)
{
    struct sess *s = arg;
    s->waiting = 0;
    sess_record(s, a);
    if (s->free_in_cb) {
        recipient_req_free(s->r);
        s->r = NULL;
        return;
    }
    sess_run(s);                        /* resume the buffered commands */
}

static int parse(const char *text, struct smtp_addr *a)
{
    const char *at = strrchr(text, '@');
    memset(a, 0, sizeof *a);
    snprintf(a->local, sizeof a->local, "%.*s", (int)(at - text), text);
    snprintf(a->domain, sizeof a->domain, "%s", at + 1);
    return 0;
}

static void sess_run(struct sess *s)
{
    static const unsigned char client[4] = { 192, 0, 2, 1 };
    while (!s->waiting && s->next < s->nq) {
        struct smtp_addr a;
        struct recipient_answer now;
        parse(s->queue[s->next++], &a);
        memset(&now, 0, sizeof now);
        if (recipient_check(&s->r, s->p, &a, AF_INET, client, sess_cb, s, &now) == 1)
            s->waiting = 1;
        else
            sess_record(s, &now);
    }
}

/* One synchronous verdict. */
static struct recipient_answer one(struct policy *p, struct recipient_req **r, const char *addr,
                                   int *pending)
{
    static const unsigned char client[16] = { 0x20, 0x01, 0x0d, 0xb8 };
    struct smtp_addr a;
    struct recipient_answer now;
    parse(addr, &a);
    memset(&now, 0, sizeof now);
    *pending = recipient_check(r, p, &a, AF_INET6, client, sess_cb, NULL, &now);
    return now;
}

int main(void)
{
    struct policy pol = { .refs = 1 };
    struct recipient_req *r = NULL;
    struct recipient_answer a;
    int pend;

    /* 1. The fast path: no table, verify off: at once, nothing allocated. */
    a = one(&pol, &r, "anyone@plain.test", &pend);
    ok(!pend && a.verdict == RECIPIENT_ACCEPT && a.dom == &dom_plain, "no table, no verify: accepted at once");
    ok(r == NULL, "fast path allocates no request");
    is_int(n_lookups + n_probes, 0, "fast path: no lookup, no probe");

    /* 2. Policy refusals pass through with their class. */
    a = one(&pol, &r, "x@elsewhere.test", &pend);
    ok(!pend && a.verdict == RECIPIENT_REFUSE && a.why == STAT_REJ_RELAY, "relay refused by policy");
    is_str(a.reply, "550 5.7.1 <x@elsewhere.test>: Relay access denied", "policy's reply kept");
    is_int(n_notes, 0, "relay is not an unknown recipient");
    a = one(&pol, &r, "listed-unknown@plain.test", &pend);
    ok(a.why == STAT_REJ_UNKNOWN_USER && n_notes == 1, "policy 5.1.1 counts toward the client's throttle");

    /* 3. Table answers at once. */
    a = one(&pol, &r, "found@tbl.test", &pend);
    ok(!pend && a.verdict == RECIPIENT_ACCEPT && a.dom == &dom_tbl, "table FOUND: accepted");
    ok(r != NULL, "a table domain makes the session's request");
    a = one(&pol, &r, "nobody@tbl.test", &pend);
    is_str(a.reply, "550 5.1.1 <nobody@tbl.test>: Recipient address rejected: User unknown",
           "table NOTFOUND: 550 5.1.1");
    ok(a.why == STAT_REJ_UNKNOWN_USER && n_notes == 2, "table NOTFOUND: unknown_user, counted for the client");
    a = one(&pol, &r, "down@tbl.test", &pend);
    is_str(a.reply, "451 4.3.0 <down@tbl.test>: Temporary lookup failure", "table TEMPFAIL: 451 4.3.0");
    ok(a.why == STAT_REJ_LOOKUP && n_notes == 2, "TEMPFAIL: reason lookup, not counted as unknown");

    /* 4. Table beside verify = callout: FOUND is the admin's word (no
     * probe); NOTFOUND is 550 at once (no probe). */
    n_probes = 0;
    a = one(&pol, &r, "found@tblv.test", &pend);
    ok(a.verdict == RECIPIENT_ACCEPT && n_probes == 0, "table FOUND + callout: accepted without a probe");
    a = one(&pol, &r, "nobody@tblv.test", &pend);
    ok(a.verdict == RECIPIENT_REFUSE && a.reply[0] == '5' && n_probes == 0,
       "table NOTFOUND + callout: 550 without a probe");
    a = one(&pol, &r, "someone@stbl.test", &pend);
    ok(a.verdict == RECIPIENT_ACCEPT && n_probes == 0 && n_lookups == 5,
       "file/lmdb table (FOUND inside the policy) + callout: accepted, no second lookup, no probe");

    /* 5. Callout answers at once (cache). */
    a = one(&pol, &r, "valid@co.test", &pend);
    ok(!pend && a.verdict == RECIPIENT_ACCEPT && n_probes == 1, "callout VALID: accepted");
    n_notes = 0;
    a = one(&pol, &r, "gone@co.test", &pend);
    is_str(a.reply, "550 5.1.1 <gone@co.test>: Recipient address rejected: User unknown in local recipient table",
           "callout INVALID: the primary's reply with its enhanced code");
    ok(a.why == STAT_REJ_UNKNOWN_USER && n_notes == 1, "callout INVALID counts toward the throttle");
    a = one(&pol, &r, "badreply@co.test", &pend);
    is_str(a.reply, "550 5.1.1 <badreply@co.test>: Recipient address rejected: User unknown",
           "primary's reply without an enhanced code: our 550 5.1.1");
    a = one(&pol, &r, "tempreply@co.test", &pend);
    is_str(a.reply, "550 5.1.1 <tempreply@co.test>: Recipient address rejected: User unknown",
           "INVALID with a 4xx line: our 550 5.1.1, never a 4xx as a refusal");
    a = one(&pol, &r, "crlf@co.test", &pend);
    is_str(a.reply, "550 5.1.1 <crlf@co.test>: no such user",
           "primary's multi-line reply: one line, separator a space, nothing after CRLF");
    a = one(&pol, &r, "down@co.test", &pend);
    ok(a.verdict == RECIPIENT_ACCEPT && a.unverified, "UNKNOWN with unverified=accept: accepted, marked");
    a = one(&pol, &r, "down@cotf.test", &pend);
    is_str(a.reply, "450 4.1.1 <down@cotf.test>: Recipient address verification failed, try again later",
           "UNKNOWN with unverified=tempfail: 450 4.1.1");
    ok(a.why == STAT_REJ_UNVERIFIED, "... reason unverified");
    a = one(&pol, &r, "wait@co.test", &pend);
    is_str(a.reply, "450 4.1.1 <wait@co.test>: verification in progress, try again later",
           "PENDING after reply_wait: 450 4.1.1 in progress");
    a = one(&pol, &r, "thr@co.test", &pend);
    ok(a.verdict == RECIPIENT_THROTTLED && a.why == STAT_REJ_THROTTLED &&
       strncmp(a.reply, "450 4.7.1 ", 10) == 0, "verify THROTTLED: 450 4.7.1, verdict throttled");
    throttled_now = 1;
    n_probes = 0;
    a = one(&pol, &r, "valid@co.test", &pend);
    ok(a.verdict == RECIPIENT_THROTTLED && n_probes == 0, "a throttled client: THROTTLED, no probe");
    a = one(&pol, &r, "anyone@plain.test", &pend);
    ok(a.verdict == RECIPIENT_ACCEPT, "... and its mail for a domain without callout still flows");
    throttled_now = 0;
    recipient_req_free(r);
    r = NULL;
    is_int(pol.refs, 1, "no policy reference left by synchronous verdicts");

    /* 6. Pipelined RCPTs with slow answers: replies in command order, and
     * the policy is held while one waits. */
    struct sess s;
    memset(&s, 0, sizeof s);
    s.p = &pol;
    const char *q[] = { "found@tbl.test", "slow1@tbl.test", "x@elsewhere.test",
                        "slow2@co.test", "valid@co.test", "slow3@tbl.test" };
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++)
        s.queue[s.nq++] = q[i];
    sess_run(&s);
    is_int(s.nreplies, 1, "first reply at once, the second waits");
    ok(recipient_pending(s.r) && pol.refs == 2, "pending request holds the policy");
    ok(fake_find("slow2@co.test") == NULL, "later RCPTs not started while one waits (serialized)");
    ok(fire_table("slow1@tbl.test", TABLE_FOUND), "table answers later");
    is_int(s.nreplies, 3, "its reply, then the buffered relay refusal; then the probe waits");
    ok(fire_verify("slow2@co.test", VERIFY_INVALID, "550 5.1.1 <slow2@co.test>: unknown"), "probe answers later");
    is_int(s.nreplies, 5, "probe's reply and the cached one after it");
    ok(fire_table("slow3@tbl.test", TABLE_TEMPFAIL), "last lookup answers later");
    is_int(s.nreplies, 6, "all six answered");
    is_str(s.replies[0], "250 tbl.test", "reply 1: found");
    is_str(s.replies[1], "250 tbl.test", "reply 2: slow found");
    is_str(s.replies[2], "550 5.7.1 <x@elsewhere.test>: Relay access denied", "reply 3: relay");
    is_str(s.replies[3], "550 5.1.1 <slow2@co.test>: unknown", "reply 4: slow probe's refusal");
    is_str(s.replies[4], "250 co.test", "reply 5: valid");
    is_str(s.replies[5], "451 4.3.0 <slow3@tbl.test>: Temporary lookup failure", "reply 6: lookup failure");
    ok(!recipient_pending(s.r) && pol.refs == 1, "policy reference dropped after the last verdict");

    /* 7. A session that closes while waiting cancels: no callback. */
    s.nq = s.next = s.nreplies = 0;
    s.queue[s.nq++] = "slow4@co.test";
    n_cancels = 0;
    sess_run(&s);
    ok(s.waiting && recipient_pending(s.r), "probe pending");
    recipient_cancel(s.r);
    ok(n_cancels == 1 && !recipient_pending(s.r) && pol.refs == 1, "cancel: verify_cancel called, policy dropped");
    ok(!fire_verify("slow4@co.test", VERIFY_VALID, NULL), "cancelled probe never calls back");
    is_int(s.nreplies, 0, "no reply for a cancelled verdict");
    s.waiting = 0;
    s.queue[s.nq++] = "slow5@tbl.test";
    sess_run(&s);
    ok(recipient_pending(s.r), "request reused after a cancel");
    recipient_req_free(s.r);            /* session freed while pending */
    s.r = NULL;
    ok(n_cancels == 2 && pol.refs == 1, "free while pending cancels the lookup and drops the policy");
    ok(!fire_table("slow5@tbl.test", TABLE_FOUND), "freed request never called back");

    /* 8. The callback may free the request (the session died answering). */
    memset(&s, 0, sizeof s);
    s.p = &pol;
    s.free_in_cb = 1;
    s.queue[s.nq++] = "slow6@tbl.test";
    sess_run(&s);
    ok(fire_table("slow6@tbl.test", TABLE_NOTFOUND) && s.r == NULL && s.nreplies == 1,
       "callback frees its request: fine");
    is_int(pol.refs, 1, "and the policy reference is dropped after it");

    return done_testing();
}
