/*
 * t_kept - the record side of kept copies (keep_delivered, queue_db.c):
 * a recipient going QRCPT_KEPT (kept index, message kept-only once no mail
 * remains, counted apart from the queue, not in the domain's counters),
 * the range count by delivery time and recipient, replay back to pending,
 * the removal after keep_delivered, the drop of kept-only messages oldest
 * first; and records of the previous versions (msg v2, rcpt v1) still
 * read and take the new state.
 */
#include "config.h"

#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue_db.h"
#include "tap.h"

#define QID1 "3B1K2A15VOE0"
#define QID2 "3B1K2A15VOE1"
#define QID3 "3B1K2A15VOE2"
#define QIDOLD "3B1K2A15VOE3"

static void make(struct qmsg *m, struct qrcpt *r, const char *qid, size_t n)
{
    memset(m, 0, sizeof *m);
    snprintf(m->qid, sizeof m->qid, "%s", qid);
    m->arrival = 1700000000;
    m->size = 10;
    m->nrcpt = (uint32_t)n;
    snprintf(m->sender, sizeof m->sender, "s@sender.test");
    for (size_t i = 0; i < n; i++) {
        memset(&r[i], 0, sizeof r[i]);
        r[i].index = (uint32_t)i;
        r[i].state = QRCPT_PENDING;
        r[i].expiry = 1700600000;
        snprintf(r[i].addr, sizeof r[i].addr, "%c@example.org", 'a' + (int)i);
        snprintf(r[i].domain, sizeof r[i].domain, "example.org");
    }
}

static int put(struct qdb *db, const struct qmsg *m, const struct qrcpt *r, size_t n)
{
    struct qdb_txn *t;
    if (qdb_txn_begin(db, &t) != 0)
        return -1;
    int rc = qdb_msg_put(t, m, r, n, "0123456789", 10);
    if (rc != 0) {
        qdb_txn_abort(t);
        return rc;
    }
    return qdb_txn_commit(t);
}

/* A delivery's outcome: recipient i of qid kept, delivered at `when`. */
static int keep(struct qdb *db, const char *qid, uint32_t i, int64_t when, int64_t until)
{
    struct qdb_txn *t;
    struct qrcpt r;
    if (qdb_txn_begin(db, &t) != 0)
        return -1;
    int rc = qdb_rcpt_get(t, qid, i, &r);
    if (rc == 0) {
        r.state = QRCPT_KEPT;
        r.delivered = when;
        r.kept_until = until;
        rc = qdb_rcpt_update(t, qid, &r);
    }
    if (rc == 0)
        rc = qdb_msg_settle(t, qid);
    if (rc != 0) {
        qdb_txn_abort(t);
        return rc;
    }
    return qdb_txn_commit(t);
}

static long pending_for(struct qdb *db)
{
    struct qdest d;
    return qdb_dest_get(db, "example.org", &d) == 0 ? (long)d.nmsg : 0;
}

static void state_is(struct qdb *db, const char *qid, uint32_t i, int want, const char *what)
{
    struct qrcpt r[4];
    size_t n = 0;
    qdb_rcpt_list(db, qid, r, 4, &n);
    is_int(i < n ? r[i].state : -1, want, "%s", what);
}

static void kept(const char *dir)
{
    char err[256];
    struct qdb *db = qdb_open(dir, 16 << 20, err, sizeof err);
    struct qmsg m, got;
    struct qrcpt r[3];
    struct qdb_kept_stats ks;
    struct qdb_txn *t;
    int64_t when;
    char qid[QID_SIZE], olds[4][QID_SIZE];
    long n;

    ok(db != NULL, "index opens");
    if (!db)
        return;
    make(&m, r, QID1, 2);
    is_int(put(db, &m, r, 2), 0, "two recipients stored");
    is_int(keep(db, QID1, 0, 1000, 2000), 0, "first delivered and kept");
    state_is(db, QID1, 0, QRCPT_KEPT, "its state is kept");
    is_int(qdb_kept_count(db, "example.org", 0, 0, NULL, NULL), 1, "one kept copy");
    is_int(qdb_msg_count(db), 1, "the message is still mail (b pending)");
    is_int(pending_for(db), 1, "still waiting for its domain");
    is_int(qdb_kept_stats(db, &ks), 0, "kept stats read");
    is_int(ks.messages, 0, "not kept-only yet");
    is_int(keep(db, QID1, 1, 1500, 2500), 0, "second delivered and kept");
    is_int(qdb_msg_count(db), 0, "kept-only: not counted as queued");
    is_int(pending_for(db), 0, "nor in the domain's counters (quotas)");
    qdb_kept_stats(db, &ks);
    ok(ks.copies == 2 && ks.messages == 1 && ks.bytes == 10, "counted apart: 2 copies, 1 msg, 10 octets");
    ok(qdb_msg_get(db, QID1, &got) == 0 && (got.flags & QMSG_F_KEPT) && got.kept_until == 2000,
       "message marked kept, due at the earliest kept_until");
    ok(qdb_due_first(db, &when, qid) == 0 && when == 2000 && strcmp(qid, QID1) == 0,
       "its due entry is the first");
    is_int(qdb_kept_count(db, "EXAMPLE.org", 1200, 0, NULL, NULL), 1, "--since counts by delivery time");
    is_int(qdb_kept_count(db, "example.org", 0, 1200, NULL, NULL), 1, "--until too");
    is_int(qdb_kept_count(db, "example.org", 0, 0, "B@Example.org", NULL), 1, "--recipient filters");
    is_int(qdb_kept_count(db, "example.org", 0, 0, "c@example.org", NULL), 0, "no such recipient");
    {
        long msgs = -1;
        is_int(qdb_kept_count(db, "example.org", 0, 0, NULL, &msgs), 2, "both copies counted");
        is_int(msgs, 1, "as copies of one message (replay's dry run says so)");
    }
    is_int(qdb_kept_count(db, "example.com", 0, 0, NULL, NULL), 0, "another domain has none");

    /* Replay the second copy only. */
    char qids[4][QID_SIZE];
    size_t nq = 0;
    ok(qdb_txn_begin(db, &t) == 0, "write txn");
    is_int(qdb_kept_replay(t, "example.org", 1200, 0, NULL, 1800000000, &n, qids, 4, &nq), 0,
           "replay --since 1200");
    is_int(qdb_txn_commit(t), 0, "committed");
    ok(n == 1 && nq == 1 && strcmp(qids[0], QID1) == 0, "one copy of one message");
    state_is(db, QID1, 1, QRCPT_PENDING, "pending again");
    state_is(db, QID1, 0, QRCPT_KEPT, "the other copy still kept");
    is_int(pending_for(db), 1, "waiting for its domain again");
    is_int(qdb_msg_count(db), 1, "mail again");
    qdb_kept_stats(db, &ks);
    ok(ks.copies == 1 && ks.messages == 0, "one copy left, no kept-only message");

    /* keep_delivered over for the first copy. */
    ok(qdb_txn_begin(db, &t) == 0, "write txn");
    is_int(qdb_kept_expire(t, QID1, 2000, &n), 0, "kept expiry at 2000");
    is_int(qdb_txn_commit(t), 0, "committed");
    is_int(n, 1, "one copy removed");
    state_is(db, QID1, 0, QRCPT_SENT, "delivered, no copy");
    ok(qdb_msg_get(db, QID1, &got) == 0 && !(got.flags & QMSG_F_KEPT), "message no longer kept");
    is_int(qdb_kept_count(db, "example.org", 0, 0, NULL, NULL), 0, "kept index empty");

    /* Two kept-only messages: the oldest goes first; mail is never dropped. */
    make(&m, r, QID2, 1);
    put(db, &m, r, 1);
    keep(db, QID2, 0, 3000, 9000);
    make(&m, r, QID3, 1);
    put(db, &m, r, 1);
    keep(db, QID3, 0, 3100, 9100);
    is_int(qdb_kept_oldest(db, olds, NULL, 4), 2, "two kept-only messages");
    ok(strcmp(olds[0], QID2) == 0 && strcmp(olds[1], QID3) == 0, "oldest first");
    ok(qdb_txn_begin(db, &t) == 0, "write txn");
    is_int(qdb_kept_drop(t, QID1, &n), QDB_NOTFOUND, "a message with mail is not dropped");
    is_int(qdb_kept_drop(t, QID2, &n), 0, "the oldest kept-only message dropped");
    is_int(qdb_txn_commit(t), 0, "committed");
    is_int(n, 1, "its one copy");
    ok(qdb_msg_get(db, QID2, &got) == QDB_NOTFOUND, "gone with its records");
    is_int(qdb_kept_oldest(db, olds, NULL, 4), 1, "one kept-only message left");
    is_int(qdb_kept_count(db, "example.org", 0, 0, NULL, NULL), 1, "its copy is the one counted");
    ok(qdb_msg_get(db, QID1, &got) == 0, "the mail is still there");
    /* An admin delete of a kept message leaves no index entry behind. */
    ok(qdb_txn_begin(db, &t) == 0, "write txn");
    is_int(qdb_msg_delete(t, QID3), 0, "delete a kept-only message");
    is_int(qdb_txn_commit(t), 0, "committed");
    qdb_kept_stats(db, &ks);
    ok(ks.copies == 0 && ks.messages == 0, "nothing kept any more");
    qdb_close(db);
}

/* Encoding of the previous record versions, written raw. */
struct raw {
    unsigned char b[512];
    size_t n;
};

static void raw_u8(struct raw *r, unsigned v) { r->b[r->n++] = (unsigned char)v; }
static void raw_u32(struct raw *r, uint32_t v)
{
    for (int i = 3; i >= 0; i--)
        raw_u8(r, (v >> (8 * i)) & 0xff);
}
static void raw_u64(struct raw *r, uint64_t v)
{
    raw_u32(r, (uint32_t)(v >> 32));
    raw_u32(r, (uint32_t)v);
}
static void raw_str(struct raw *r, const char *s)
{
    size_t l = strlen(s);
    raw_u8(r, (unsigned)(l >> 8));
    raw_u8(r, (unsigned)(l & 0xff));
    memcpy(r->b + r->n, s, l);
    r->n += l;
}

static void old_versions(const char *dir)
{
    struct raw msg = { .n = 0 }, rc = { .n = 0 };
    char err[256];
    MDB_env *env;
    MDB_txn *t = NULL;
    MDB_dbi dmsg = 0, drcpt = 0;

    /* msg version 2: the fields before kept_until. */
    raw_u8(&msg, 2);
    raw_u64(&msg, 1700000000);
    raw_u64(&msg, 10);
    raw_u32(&msg, 0x04);                /* flags: inline */
    raw_u32(&msg, 1);                   /* nrcpt */
    raw_u32(&msg, 0);
    raw_u32(&msg, 0);
    raw_str(&msg, "");
    raw_str(&msg, "old@sender.test");
    raw_str(&msg, "192.0.2.1");
    raw_str(&msg, "c.test");
    raw_str(&msg, "helo.test");
    raw_u32(&msg, 0x03);                /* auth flags: SPF done + pass */
    raw_str(&msg, "spf=pass smtp.mailfrom=sender.test");
    raw_u64(&msg, 0);
    raw_u64(&msg, 0);
    raw_str(&msg, "");
    /* rcpt version 1: no delivered, no kept_until. */
    raw_u8(&rc, 1);
    raw_u32(&rc, 0);
    raw_u32(&rc, QRCPT_PENDING);
    raw_u32(&rc, 0);
    raw_u32(&rc, 2);                    /* attempts */
    raw_u64(&rc, 1700600000);
    raw_u64(&rc, 0);
    raw_str(&rc, "example.org");
    raw_str(&rc, "old@example.org");
    raw_str(&rc, "");
    raw_str(&rc, "421 try later");

    unsigned char rk[QID_LEN + 5];
    memcpy(rk, QIDOLD, QID_LEN);
    memset(rk + QID_LEN, 0, 5);
    ok(mdb_env_create(&env) == 0 && mdb_env_set_maxdbs(env, 16) == 0 &&
       mdb_env_open(env, dir, 0, 0600) == 0, "raw lmdb opens");
    ok(mdb_txn_begin(env, NULL, 0, &t) == 0 && mdb_dbi_open(t, "msg", 0, &dmsg) == 0 &&
       mdb_dbi_open(t, "rcpt", 0, &drcpt) == 0, "msg and rcpt dbs");
    MDB_val k = { QID_LEN, (void *)QIDOLD }, v = { msg.n, msg.b };
    MDB_val k2 = { sizeof rk, rk }, v2 = { rc.n, rc.b };
    ok(mdb_put(t, dmsg, &k, &v, 0) == 0 && mdb_put(t, drcpt, &k2, &v2, 0) == 0 &&
       mdb_txn_commit(t) == 0, "msg v2 and rcpt v1 records written");
    mdb_env_close(env);

    struct qdb *db = qdb_open(dir, 16 << 20, err, sizeof err);
    struct qmsg got;
    struct qrcpt r;
    size_t n = 0;
    ok(db != NULL && qdb_msg_get(db, QIDOLD, &got) == 0, "msg version 2 record reads");
    if (!db)
        return;
    is_str(got.sender, "old@sender.test", "its sender");
    is_str(got.auth_results, "spf=pass smtp.mailfrom=sender.test", "its auth results");
    ok(got.kept_until == 0 && !(got.flags & QMSG_F_KEPT), "not kept");
    ok(qdb_rcpt_list(db, QIDOLD, &r, 1, &n) == 0 && n == 1, "rcpt version 1 record reads");
    is_str(r.addr, "old@example.org", "its address");
    is_str(r.last_reply, "421 try later", "its last field");
    ok(r.delivered == 0 && r.kept_until == 0 && r.attempts == 2, "new fields zero, old kept");
    is_int(keep(db, QIDOLD, 0, 5000, 6000), 0, "an old recipient delivered and kept");
    state_is(db, QIDOLD, 0, QRCPT_KEPT, "kept (rewritten in the new version)");
    is_int(qdb_kept_count(db, "example.org", 4000, 0, "old@example.org", NULL), 1, "and counted");
    qdb_close(db);
}

int main(void)
{
    char dir[] = "/tmp/t_kept.XXXXXX", dir2[] = "/tmp/t_kept2.XXXXXX";
    if (mkdtemp(dir) == NULL || mkdtemp(dir2) == NULL) {
        ok(0, "mkdtemp");
        return done_testing();
    }
    kept(dir);
    /* The old records go into an index the current code made first. */
    char err[256];
    struct qdb *db = qdb_open(dir2, 16 << 20, err, sizeof err);
    qdb_close(db);
    old_versions(dir2);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", dir, dir2);
    if (system(cmd) != 0)
        diag("could not remove %s", dir);
    return done_testing();
}
