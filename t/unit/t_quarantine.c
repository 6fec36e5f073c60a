/*
 * t_quarantine - the failure-notice decision (quarantine.c), the reason
 * text, and the record side of quarantine (queue_db.c): msg record
 * version 2 round trip, version 1 records still read, a commit straight
 * into quarantine, hold / release / unhold and the held index.
 */
#include "config.h"

#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "queue_db.h"
#include "quarantine.h"
#include "tap.h"

#define QID1 "3B1K2A15VOE0"
#define QID2 "3B1K2A15VOE1"

static void decision(void)
{
    struct conf_domain always = { 0 }, auth = { 0 };
    struct qmsg m;
    char why[200];

    always.bounce = BOUNCE_ALWAYS;
    auth.bounce = BOUNCE_AUTHENTICATED;
    memset(&m, 0, sizeof m);
    ok(quarantine_notice_allowed(&always, &m, why, sizeof why) == 1, "always: notice");
    ok(quarantine_notice_allowed(NULL, &m, why, sizeof why) == 1, "unserved domain: notice");
    ok(quarantine_notice_allowed(&auth, &m, why, sizeof why) == 0, "authenticated, nothing: withheld");
    is_str(why, "sender not authenticated (spf=none, dkim=none)", "why, nothing known");
    m.auth_flags = QMSG_AUTH_SPF_DONE | QMSG_AUTH_DKIM_DONE;
    snprintf(m.auth_results, sizeof m.auth_results,
             "spf=softfail smtp.mailfrom=forged.test; dkim=fail header.d=forged.test");
    ok(quarantine_notice_allowed(&auth, &m, why, sizeof why) == 0, "spf softfail: withheld");
    is_str(why, "sender not authenticated (spf=softfail, dkim=fail)", "why names the results");
    m.auth_flags |= QMSG_AUTH_SPF_PASS;
    ok(quarantine_notice_allowed(&auth, &m, why, sizeof why) == 1, "SPF pass: notice");
    m.auth_flags = QMSG_AUTH_DKIM_DONE | QMSG_AUTH_DKIM_SENDER_PASS;
    ok(quarantine_notice_allowed(&auth, &m, why, sizeof why) == 1, "sender DKIM pass: notice");

    char r[40];
    quarantine_reason(r, sizeof r, "sender not authenticated", "primary said 550 5.1.1 unknown");
    is_int(strlen(r), sizeof r - 1, "reason cut at its bound");
    ok(strncmp(r, "failure notice withheld: sender", 31) == 0, "reason starts with what was withheld");
    quarantine_span(r, sizeof r, 14 * 86400);
    is_str(r, "14d", "span in days");
    quarantine_span(r, sizeof r, 7200);
    is_str(r, "2h", "span in hours");
}

static void make(struct qmsg *m, struct qrcpt *r, const char *qid)
{
    memset(m, 0, sizeof *m);
    memset(r, 0, sizeof *r);
    snprintf(m->qid, sizeof m->qid, "%s", qid);
    m->arrival = 1700000000;
    m->size = 10;
    m->nrcpt = 1;                       /* the spool sets it at commit */
    snprintf(m->sender, sizeof m->sender, "a@forged.test");
    r->state = QRCPT_PENDING;
    r->expiry = 1700600000;
    snprintf(r->addr, sizeof r->addr, "u@example.org");
    snprintf(r->domain, sizeof r->domain, "example.org");
}

static int put(struct qdb *db, const struct qmsg *m, const struct qrcpt *r)
{
    struct qdb_txn *t;
    if (qdb_txn_begin(db, &t) != 0)
        return -1;
    int rc = qdb_msg_put(t, m, r, 1, "0123456789", 10);
    if (rc) {
        qdb_txn_abort(t);
        return rc;
    }
    return qdb_txn_commit(t);
}

static int txn(struct qdb *db, int kind, const char *qid)
{
    struct qdb_txn *t;
    int rc;
    if (qdb_txn_begin(db, &t) != 0)
        return -1;
    if (kind == 0)
        rc = qdb_msg_hold(t, qid, "held by test", 1700000100, 1701209700, 1);
    else if (kind == 1)
        rc = qdb_msg_release(t, qid, 1709999999);
    else
        rc = qdb_msg_unhold_delete(t, qid);
    if (rc) {
        qdb_txn_abort(t);
        return rc;
    }
    return qdb_txn_commit(t);
}

static void records(const char *dir)
{
    char err[256];
    struct qdb *db = qdb_open(dir, 16 << 20, err, sizeof err);
    struct qmsg m, got;
    struct qrcpt r, gr;
    struct qdest d;
    size_t n;

    ok(db != NULL, "index opens");
    if (!db)
        return;
    /* v2 round trip, straight into quarantine at commit */
    make(&m, &r, QID1);
    m.auth_flags = QMSG_AUTH_SPF_DONE;
    snprintf(m.auth_results, sizeof m.auth_results, "spf=fail smtp.mailfrom=forged.test");
    m.flags |= QMSG_F_QUARANTINE;
    m.quarantined = 1700000050;
    m.quarantine_until = 1701209650;
    snprintf(m.quarantine_reason, sizeof m.quarantine_reason, "milter said so");
    is_int(put(db, &m, &r), 0, "quarantined commit stored");
    is_int(qdb_msg_get(db, QID1, &got), 0, "read back");
    is_int(got.auth_flags, QMSG_AUTH_SPF_DONE, "auth_flags kept");
    is_str(got.auth_results, "spf=fail smtp.mailfrom=forged.test", "auth_results kept");
    is_int(got.quarantine_until, 1701209650, "quarantine_until kept");
    is_str(got.quarantine_reason, "milter said so", "reason kept");
    qdb_rcpt_list(db, QID1, &gr, 1, &n);
    is_int(gr.state, QRCPT_QUARANTINED, "its recipient is held");
    is_int(qdb_dest_get(db, "example.org", &d) == 0 ? (long)d.nmsg : 0, 0, "not counted as waiting");
    is_int(qdb_held_count(db), 1, "held index has it");
    is_int(txn(db, 1, QID1), 0, "release");
    qdb_rcpt_list(db, QID1, &gr, 1, &n);
    is_int(gr.state, QRCPT_PENDING, "released recipient pending");
    is_int(gr.expiry, 1709999999, "with the new expiry");
    is_int(qdb_dest_get(db, "example.org", &d) == 0 ? (long)d.nmsg : -1, 1, "now waiting for its domain");
    is_int(qdb_held_count(db), 0, "held index empty");
    is_int(txn(db, 1, QID1), QDB_NOTFOUND, "release of a message not held: not found");
    /* later hold, then unhold-delete removes it */
    is_int(txn(db, 0, QID1), 0, "hold a committed message");
    is_int(qdb_held_count(db), 1, "held again");
    is_int(qdb_dest_get(db, "example.org", &d) == 0 ? (long)d.nmsg : 0, 0, "not waiting while held");
    is_int(txn(db, 2, QID1), 0, "removal from quarantine");
    ok(qdb_msg_get(db, QID1, &got) == QDB_NOTFOUND, "message gone");
    is_int(qdb_held_count(db), 0, "held index empty again");
    qdb_close(db);

    /* A version 1 record (before auth and quarantine) still reads. */
    MDB_env *env;
    MDB_txn *t = NULL;
    MDB_dbi dbi = 0;
    unsigned char v1[200];
    size_t len = 0;
    v1[len++] = 1;
    for (int i = 0; i < 8; i++)                  /* arrival */
        v1[len++] = (unsigned char)(((uint64_t)1700000000 >> (56 - 8 * i)) & 0xff);
    for (int i = 0; i < 8; i++)                  /* size */
        v1[len++] = i == 7 ? 10 : 0;
    memset(v1 + len, 0, 16);                     /* flags, nrcpt, body, ret */
    len += 16;
    const char *strs[] = { "", "old@sender.test", "192.0.2.1", "c.test", "helo.test" };
    for (size_t k = 0; k < 5; k++) {
        size_t sl = strlen(strs[k]);
        v1[len++] = 0;
        v1[len++] = (unsigned char)sl;
        memcpy(v1 + len, strs[k], sl);
        len += sl;
    }
    ok(mdb_env_create(&env) == 0 && mdb_env_set_maxdbs(env, 16) == 0 &&
       mdb_env_open(env, dir, 0, 0600) == 0, "raw lmdb opens");
    ok(mdb_txn_begin(env, NULL, 0, &t) == 0 && mdb_dbi_open(t, "msg", 0, &dbi) == 0, "msg db");
    MDB_val k = { QID_LEN, (void *)QID2 }, v = { len, v1 };
    ok(mdb_put(t, dbi, &k, &v, 0) == 0 && mdb_txn_commit(t) == 0, "version 1 record written");
    mdb_env_close(env);
    db = qdb_open(dir, 16 << 20, err, sizeof err);
    ok(db != NULL && qdb_msg_get(db, QID2, &got) == 0, "version 1 record reads");
    is_str(got.sender, "old@sender.test", "its sender");
    is_str(got.helo, "helo.test", "its last field");
    is_int(got.auth_flags, 0, "no auth flags");
    ok(!(got.flags & QMSG_F_QUARANTINE) && got.quarantine_reason[0] == '\0', "not quarantined");
    qdb_close(db);
}

int main(void)
{
    char dir[] = "/tmp/t_quarantine.XXXXXX";
    decision();
    if (mkdtemp(dir) == NULL) {
        ok(0, "mkdtemp");
        return done_testing();
    }
    records(dir);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        diag("could not remove %s", dir);
    return done_testing();
}
