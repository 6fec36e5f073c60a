/*
 * t_maint_pause - the record side of a maintenance window's end
 * (qdb_msg_pause, queue_db.c): the expiry of the domain's pending
 * recipients moves out by the time the message spent in the window, and
 * so does a delay warning not sent yet whose time was in or after the
 * window (paused), with a due entry at its new time; a warning due before
 * the window (not sent: the daemon was down) keeps its time; one already
 * sent is left alone; an older record's (warned unknown) moves only when
 * it was due in the window.  paused and warned survive a stale copy
 * written back by qdb_rcpt_update (a delivery's).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue_db.h"
#include "tap.h"

#define QID1 "3B1K2A15VOF0"
#define QID2 "3B1K2A15VOF1"
#define ARRIVAL 1000000
#define RETENTION 36000
#define WARN 3600

static void make(struct qmsg *m, struct qrcpt *r, const char *qid, size_t n)
{
    static const char *const doms[] = { "example.org", "other.test", "example.org",
                                        "example.org" };
    memset(m, 0, sizeof *m);
    snprintf(m->qid, sizeof m->qid, "%s", qid);
    m->arrival = ARRIVAL;
    m->size = 10;
    m->nrcpt = (uint32_t)n;
    snprintf(m->sender, sizeof m->sender, "s@sender.test");
    for (size_t i = 0; i < n; i++) {
        memset(&r[i], 0, sizeof r[i]);
        r[i].index = (uint32_t)i;
        r[i].state = QRCPT_PENDING;
        r[i].expiry = ARRIVAL + RETENTION;
        snprintf(r[i].domain, sizeof r[i].domain, "%s", doms[i % 4]);
        snprintf(r[i].addr, sizeof r[i].addr, "%c@%s", 'a' + (int)i, doms[i % 4]);
    }
}

static int txn(struct qdb *db, int (*fn)(struct qdb_txn *t, void *arg), void *arg)
{
    struct qdb_txn *t;
    if (qdb_txn_begin(db, &t) != 0)
        return -1;
    int rc = fn(t, arg);
    if (rc != 0) {
        qdb_txn_abort(t);
        return rc;
    }
    return qdb_txn_commit(t);
}

struct put_arg {
    struct qmsg *m;
    struct qrcpt *r;
    size_t n;
};

static int put_fn(struct qdb_txn *t, void *arg)
{
    struct put_arg *p = arg;
    return qdb_msg_put(t, p->m, p->r, p->n, "0123456789", 10);
}

struct pause_arg {
    const char *qid;
    int64_t start, end;
};

static int pause_fn(struct qdb_txn *t, void *arg)
{
    struct pause_arg *p = arg;
    return qdb_msg_pause(t, p->qid, "Example.ORG", p->start, p->end, WARN);
}

static int stale_fn(struct qdb_txn *t, void *arg)
{
    struct qrcpt *r = arg;
    return qdb_rcpt_update(t, QID1, r);
}

static void rcpts(struct qdb *db, const char *qid, struct qrcpt *r, size_t *n)
{
    *n = 0;
    qdb_rcpt_list(db, qid, r, 4, n);
}

int main(void)
{
    char dir[] = "/tmp/t_maint_pause.XXXXXX", err[256];
    struct qmsg m;
    struct qrcpt r[4], got[4];
    size_t n;
    int64_t when;
    char qid[QID_SIZE];
    if (mkdtemp(dir) == NULL) {
        ok(0, "mkdtemp");
        return done_testing();
    }
    struct qdb *db = qdb_open(dir, 16 << 20, err, sizeof err);
    ok(db != NULL, "index opens");
    if (db == NULL)
        return done_testing();

    /* a: example.org, not warned; b: other.test; c: example.org, warned
     * already; d: example.org, an older record (warned unknown). */
    make(&m, r, QID1, 4);
    r[2].warned = ARRIVAL + WARN;
    r[3].warned = -1;
    struct put_arg pa = { &m, r, 4 };
    is_int(txn(db, put_fn, &pa), 0, "a message with 4 recipients");
    rcpts(db, QID1, got, &n);
    ok(n == 4 && got[0].warned == 0 && got[0].paused == 0 && got[3].warned == -1,
       "record version 3: warned and paused read back");

    /* A window from arrival + 500 to arrival + 8000: the warning (due at
     * arrival + 3600) falls in it. */
    struct pause_arg w1 = { QID1, ARRIVAL + 500, ARRIVAL + 8000 };
    is_int(txn(db, pause_fn, &w1), 0, "window 1 ends");
    rcpts(db, QID1, got, &n);
    is_int(got[0].expiry, ARRIVAL + RETENTION + 7500, "a: expiry moved out by 7500 s");
    is_int(got[0].paused, 7500, "a: its warning paused by the same 7500 s");
    is_int(got[0].warned, 0, "a: not warned yet");
    is_int(got[1].expiry, ARRIVAL + RETENTION, "b (another domain): expiry unchanged");
    is_int(got[1].paused, 0, "b: warning not moved");
    is_int(got[2].paused, 0, "c (warned already): warning not moved");
    is_int(got[2].expiry, ARRIVAL + RETENTION + 7500, "c: its expiry moved all the same");
    is_int(got[3].paused, 7500, "d (older record, due in the window): moved");
    is_int(got[3].warned, 0, "d: now known not sent");
    ok(qdb_due_first(db, &when, qid) == 0 && when == ARRIVAL + WARN + 7500 &&
       strcmp(qid, QID1) == 0, "a due entry at the warning's new time (arrival + 3600 + 7500)");

    /* A second window after the warning's new time: the warning is due
     * before it, not sent (the daemon was down): it keeps its time. */
    struct pause_arg w2 = { QID1, ARRIVAL + 20000, ARRIVAL + 21000 };
    is_int(txn(db, pause_fn, &w2), 0, "window 2 ends");
    rcpts(db, QID1, got, &n);
    is_int(got[0].expiry, ARRIVAL + RETENTION + 8500, "a: expiry moved out by 1000 s more");
    is_int(got[0].paused, 7500, "a: the warning, due before window 2, keeps its time");
    ok(qdb_due_first(db, &when, qid) == 0 && when == ARRIVAL + WARN + 7500,
       "... and its due entry (sent as soon as the window is over)");

    /* A delivery's stale copy written back does not undo them. */
    struct qrcpt stale = r[0];
    stale.expiry = got[0].expiry;
    is_int(txn(db, stale_fn, &stale), 0, "a stale copy (paused 0, warned 0) written back");
    rcpts(db, QID1, got, &n);
    is_int(got[0].paused, 7500, "a: paused kept");
    stale = got[2];
    stale.warned = 0;
    txn(db, stale_fn, &stale);
    rcpts(db, QID1, got, &n);
    is_int(got[2].warned, ARRIVAL + WARN, "c: warned kept");

    /* An older record whose warning was due before the window: unknown
     * whether it went, so left alone; mail that came in the window. */
    make(&m, r, QID2, 1);
    r[0].warned = -1;
    struct put_arg pb = { &m, r, 1 };
    txn(db, put_fn, &pb);
    struct pause_arg w3 = { QID2, ARRIVAL + 5000, ARRIVAL + 6000 };
    is_int(txn(db, pause_fn, &w3), 0, "window 3 ends");
    rcpts(db, QID2, got, &n);
    ok(got[0].warned == -1 && got[0].paused == 0,
       "older record, warning due before the window: left as it was");
    is_int(got[0].expiry, ARRIVAL + RETENTION + 1000, "... its expiry moved out by 1000 s");

    qdb_close(db);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        diag("could not remove %s", dir);
    return done_testing();
}
