/*
 * t_spool.c - the durable spool and its LMDB index: group commit, records,
 * counters, walks, deletes, completions, recovery, map growth, and the
 * record decoder's refusal of unknown versions.
 */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "conf.h"
#include "qid.h"
#include "queue_db.h"
#include "spool.h"
#include "tap.h"

#define NMSG          500
#define INLINE_LIMIT  65536
#define FILE_BASE     (INLINE_LIMIT + 4000)
#define CHUNK         4096
#define RETENTION     (7 * 86400)
#define WATCHDOG_SEC  60
#define GROW_MSGS     200
#define GROW_BODY     30000
#define MAXR          8

static struct event_base *base;
static char root[PATH_MAX];

struct done_rec {
    int fired;
    int err;
};

static int outstanding;
static int watchdog_fired;

static void on_done(void *arg, int err)
{
    struct done_rec *d = arg;
    d->fired++;
    d->err = err;
    if (--outstanding == 0)
        event_base_loopbreak(base);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    watchdog_fired = 1;
    event_base_loopbreak(base);
}

/* Run the loop until every expected completion arrived (or the watchdog). */
static void run_loop(void)
{
    struct timeval tv = { WATCHDOG_SEC, 0 };
    struct event *w = evtimer_new(base, on_watchdog, NULL);
    evtimer_add(w, &tv);
    if (outstanding > 0)
        event_base_dispatch(base);
    event_free(w);
}

static unsigned char body_byte(int seed, size_t off)
{
    return (unsigned char)('a' + (off * 7 + (size_t)seed) % 26);
}

static size_t body_len_of(int i)
{
    return i % 5 == 0 ? FILE_BASE + (size_t)i * 37 : 100 + (size_t)i * 13;
}

static struct spool_body *make_body(struct spool *s, const char *qid, int seed, size_t len)
{
    unsigned char buf[CHUNK];
    struct spool_body *b = spool_body_new(s, qid);
    if (!b)
        return NULL;
    for (size_t off = 0; off < len; off += CHUNK) {
        size_t n = len - off < CHUNK ? len - off : CHUNK;
        for (size_t j = 0; j < n; j++)
            buf[j] = body_byte(seed, off + j);
        if (spool_body_write(b, buf, n) < 0) {
            spool_body_free(b);
            return NULL;
        }
    }
    return b;
}

static void make_msg(struct qmsg *m, const char *qid, int64_t now)
{
    memset(m, 0, sizeof *m);
    snprintf(m->qid, sizeof m->qid, "%.*s", QID_LEN, qid);
    m->arrival = now;
    m->size = 1;        /* the spool must replace this with the real size */
    snprintf(m->sender, sizeof m->sender, "sender@example.net");
    snprintf(m->client_addr, sizeof m->client_addr, "192.0.2.1");
    snprintf(m->client_name, sizeof m->client_name, "client.example.net");
    snprintf(m->helo, sizeof m->helo, "client.example.net");
    snprintf(m->envid, sizeof m->envid, "env-%.*s", QID_LEN, qid);
    m->body = 1;
    m->ret = 2;
}

static void make_rcpt(struct qrcpt *r, const char *local, const char *domain, int64_t expiry)
{
    memset(r, 0, sizeof *r);
    snprintf(r->addr, sizeof r->addr, "%s@%s", local, domain);
    snprintf(r->domain, sizeof r->domain, "%s", domain);
    snprintf(r->orcpt, sizeof r->orcpt, "rfc822;%s@%s", local, domain);
    r->expiry = expiry;
    r->notify = 6;
}

/* Message i: 3 recipients over 2 domains, except every 7th (example.org
 * only). */
static size_t make_rcpts(struct qrcpt *r, int i, int64_t now)
{
    int64_t exp = now + RETENTION + i;
    make_rcpt(&r[0], "a", "example.org", exp);
    make_rcpt(&r[1], "c", "example.org", exp);
    if (i % 7 == 0)
        return 2;
    make_rcpt(&r[2], "b", "example.com", exp);
    return 3;
}

static int body_matches(struct spool *s, const struct qmsg *m, int seed, size_t len)
{
    struct evbuffer *eb = evbuffer_new();
    int good = spool_body_read(s, m, eb) == 0 && evbuffer_get_length(eb) == len;
    if (good) {
        const unsigned char *p = evbuffer_pullup(eb, -1);
        for (size_t j = 0; j < len && good; j++)
            good = p[j] == body_byte(seed, j);
    }
    evbuffer_free(eb);
    return good;
}

static int file_exists(const char *rel)
{
    char p[PATH_MAX + 64];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", root, rel);
    return stat(p, &st) == 0;
}

static void body_rel(char *out, size_t n, const char *qid)
{
    snprintf(out, n, "spool/msg/%c%c/%.*s", qid[10], qid[11], QID_LEN, qid);
}

struct walk {
    char last[QID_SIZE];
    long n;
    int ordered;
    const char *find;
    int found;
};

static int walk_cb(void *arg, const char *qid)
{
    struct walk *w = arg;
    if (w->n && strcmp(w->last, qid) >= 0)
        w->ordered = 0;
    snprintf(w->last, sizeof w->last, "%.*s", QID_LEN, qid);
    if (w->find && strcmp(w->find, qid) == 0)
        w->found = 1;
    w->n++;
    return 0;
}

static long walk(struct qdb *db, const char *dom, const char *after, long max, struct walk *w,
                 const char *find)
{
    memset(w, 0, sizeof *w);
    w->ordered = 1;
    w->find = find;
    return qdb_dest_walk(db, dom, after, max, walk_cb, w);
}

struct upd {
    char qid[QID_SIZE];
    struct qrcpt r;
};

static int upd_fn(struct qdb_txn *t, void *arg)
{
    struct upd *u = arg;
    return qdb_rcpt_update(t, u->qid, &u->r);
}

static int fail_fn(struct qdb_txn *t, void *arg)
{
    return QDB_ERR;
}

static int rcpt_set(struct spool *s, const char *qid, uint32_t index, int state)
{
    struct qrcpt r[MAXR];
    size_t n;
    struct done_rec d = { 0, 0 };
    struct upd u;
    if (qdb_rcpt_list(spool_db(s), qid, r, MAXR, &n) != 0 || index >= n)
        return -1;
    snprintf(u.qid, sizeof u.qid, "%.*s", QID_LEN, qid);
    u.r = r[index];
    u.r.state = state;
    u.r.attempts++;
    snprintf(u.r.last_reply, sizeof u.r.last_reply, "250 2.0.0 ok");
    outstanding = 1;
    spool_write(s, upd_fn, &u, on_done, &d);
    run_loop();
    return d.fired == 1 ? d.err : -1;
}

static int do_delete(struct spool *s, const char *qid)
{
    struct done_rec d = { 0, 0 };
    outstanding = 1;
    spool_delete(s, qid, on_done, &d);
    run_loop();
    return d.fired == 1 ? d.err : -1;
}

/* Overwrite the first byte of a record, as a newer (or damaged) writer
 * might have left it. */
static int poke_version(const char *qid, unsigned char version)
{
    char dir[PATH_MAX + 16];
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k = { QID_LEN, (void *)qid }, v;
    int rc;
    snprintf(dir, sizeof dir, "%s/spool/index", root);
    if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 8) || mdb_env_open(env, dir, 0, 0600))
        return -1;
    rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (!rc)
        rc = mdb_dbi_open(txn, "msg", 0, &dbi);
    if (!rc)
        rc = mdb_get(txn, dbi, &k, &v);
    if (!rc) {
        unsigned char *copy = malloc(v.mv_size);
        memcpy(copy, v.mv_data, v.mv_size);
        copy[0] = version;
        v.mv_data = copy;
        rc = mdb_put(txn, dbi, &k, &v, 0);
        free(copy);
    }
    if (!rc)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    mdb_env_close(env);
    return rc ? -1 : 0;
}

int main(void)
{
    char err[256], spooldir[PATH_MAX + 16];
    static char qids[NMSG][QID_SIZE];
    static struct done_rec done[NMSG];
    int64_t now = time(NULL);

    evthread_use_pthreads();
    base = event_base_new();
    snprintf(root, sizeof root, "/tmp/t_spool.XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(spooldir, sizeof spooldir, "%s/spool", root);
    struct conf c;
    memset(&c, 0, sizeof c);
    c.spool = spooldir;
    c.lmdb_map_size = 16L << 20;
    c.commit_batch = 64;

    struct spool *s = spool_open(&c, base, err, sizeof err);
    ok(s != NULL, "spool_open: %s", s ? "ok" : err);
    if (!s)
        return done_testing();
    ok(file_exists("spool/index") && file_exists("spool/msg/00") && file_exists("spool/msg/VV") &&
       file_exists("spool/quarantine"), "directory tree created");

    /* --- 500 commits queued at once --- */
    uint64_t org_bytes = 0, com_bytes = 0;
    long com_msgs = 0;
    int nticket = 0;
    int spilled_before_commit = 0, nbody_fail = 0;
    outstanding = NMSG;
    for (int i = 0; i < NMSG; i++) {
        struct qmsg m;
        struct qrcpt r[MAXR];
        qid_next(qids[i]);
        struct spool_body *b = make_body(s, qids[i], i, body_len_of(i));
        if (!b) {
            nbody_fail++;
            continue;
        }
        if (i == 5) {
            char rel[64];
            body_rel(rel, sizeof rel, qids[i]);
            spilled_before_commit = file_exists(rel) && spool_body_size(b) == body_len_of(i);
        }
        make_msg(&m, qids[i], now);
        size_t n = make_rcpts(r, i, now);
        org_bytes += body_len_of(i);
        if (n == 3) {
            com_bytes += body_len_of(i);
            com_msgs++;
        }
        nticket += spool_commit(s, b, &m, r, n, on_done, &done[i]) != NULL;
    }
    is_int(nbody_fail, 0, "all bodies written");
    ok(spilled_before_commit, "a body over the inline limit spilled to msg/XX/QID");
    is_int(nticket, NMSG, "a ticket returned for every commit");
    run_loop();
    ok(!watchdog_fired, "all completions arrived");
    int nfired = 0, nerr = 0;
    for (int i = 0; i < NMSG; i++) {
        nfired += done[i].fired;
        nerr += done[i].err != 0;
    }
    /* A commit's completion owns its effects: it cannot be cancelled. */
    is_int(nfired, NMSG, "every done callback fired exactly once");
    is_int(nerr, 0, "all commits reported 0");

    struct spool_stats st;
    spool_stats_get(s, &st);
    is_int(st.commits, NMSG, "stats: commits");
    ok(st.batches < st.commits, "group commit: %llu batches for %llu messages",
       (unsigned long long)st.batches, (unsigned long long)st.commits);
    is_int(st.failures, 0, "stats: no failures");

    /* --- records --- */
    struct qdb *db = spool_db(s);
    is_int(qdb_msg_count(db), NMSG, "msg count");
    int bad_msg = 0, bad_rcpt = 0, bad_body = 0, bad_inline = 0;
    for (int i = 0; i < NMSG; i++) {
        struct qmsg m;
        struct qrcpt r[MAXR];
        size_t n = 0;
        if (qdb_msg_get(db, qids[i], &m) != 0 || m.size != body_len_of(i) ||
            strcmp(m.qid, qids[i]) != 0 || strcmp(m.sender, "sender@example.net") != 0 ||
            m.arrival != now || m.body != 1 || m.ret != 2 || strncmp(m.envid, "env-", 4) != 0) {
            bad_msg++;
            continue;
        }
        if (!!(m.flags & QMSG_F_INLINE) != (body_len_of(i) <= INLINE_LIMIT))
            bad_inline++;
        size_t want = i % 7 == 0 ? 2 : 3;
        if (qdb_rcpt_list(db, qids[i], r, MAXR, &n) != 0 || n != want ||
            strcmp(r[0].addr, "a@example.org") != 0 || r[1].index != 1 ||
            r[0].state != QRCPT_PENDING || r[0].notify != 6 ||
            strcmp(r[0].orcpt, "rfc822;a@example.org") != 0 ||
            (n == 3 && strcmp(r[2].domain, "example.com") != 0))
            bad_rcpt++;
        if (!body_matches(s, &m, i, body_len_of(i)))
            bad_body++;
    }
    is_int(bad_msg, 0, "msg records read back");
    is_int(bad_inline, 0, "INLINE flag set exactly for small bodies");
    is_int(bad_rcpt, 0, "rcpt records read back");
    is_int(bad_body, 0, "bodies read back byte for byte (inline and file)");

    struct qdest d;
    int dg = qdb_dest_get(db, "example.org", &d);
    ok(dg == 0 && d.nmsg == NMSG && d.nbytes == org_bytes,
       "example.org counters: %llu msgs %llu bytes", (unsigned long long)d.nmsg,
       (unsigned long long)d.nbytes);
    is_int(d.state, QDEST_UNKNOWN, "dest created in state UNKNOWN");
    ok(qdb_dest_get(db, "EXAMPLE.COM", &d) == 0 && (long)d.nmsg == com_msgs && d.nbytes == com_bytes,
       "example.com counters (case-insensitive lookup)");
    is_int(qdb_dest_get(db, "example.net", &d), QDB_NOTFOUND, "no dest for an unused domain");

    struct walk w;
    is_int(walk(db, "example.com", "", 100000, &w, NULL), com_msgs, "walk example.com: count");
    ok(w.ordered, "walk example.com: oldest first");
    is_int(walk(db, "example.org", "", 10, &w, NULL), 10, "walk honours max");
    is_int(walk(db, "example.org", qids[NMSG - 11], 100000, &w, NULL), 10,
           "walk after a QID: only the newer ones");
    is_str(w.last, qids[NMSG - 1], "walk ends at the newest");

    /* The pager: pages of 7 over all messages and over one domain resume
     * after the last QID and together list each exactly once, in order. */
    {
        char pg[7][QID_SIZE], after[QID_SIZE] = "";
        long got, seen = 0, inorder = 1;
        while ((got = spool_page(s, NULL, after, pg, 7)) > 0) {
            for (long k = 0; k < got; k++)
                inorder &= seen + k < NMSG && strcmp(pg[k], qids[seen + k]) == 0;
            seen += got;
        }
        ok(got == 0 && seen == NMSG && inorder, "pager: all messages in pages, in order (%ld)",
           seen);
        after[0] = '\0';
        seen = 0;
        while ((got = spool_page(s, "EXAMPLE.com", after, pg, 7)) > 0)
            seen += got;
        is_int(seen, com_msgs, "pager: one domain's messages");
        is_int(spool_page(s, "example.net", after, pg, 7), 0, "pager: unused domain, empty page");
    }

    int64_t when;
    char dq[QID_SIZE];
    ok(qdb_due_first(db, &when, dq) == 0 && when == now + RETENTION && strcmp(dq, qids[0]) == 0,
       "due: earliest expiry first");
    ok(qdb_newest_qid(db, dq) == 0 && strcmp(dq, qids[NMSG - 1]) == 0, "newest QID");

    /* --- recipient updates move counters --- */
    int x = 1;  /* has example.com; file body? 1 % 5 != 0: inline */
    ok(walk(db, "example.com", "", 100000, &w, qids[x]) >= 0 && w.found, "msg 1 listed for example.com");
    is_int(rcpt_set(s, qids[x], 2, QRCPT_SENT), 0, "rcpt b@example.com -> SENT");
    qdb_dest_get(db, "example.com", &d);
    ok((long)d.nmsg == com_msgs - 1 && d.nbytes == com_bytes - body_len_of(x),
       "example.com counters dropped by one message");
    walk(db, "example.com", "", 100000, &w, qids[x]);
    ok(!w.found, "by_dest entry for example.com dropped");
    is_int(rcpt_set(s, qids[x], 0, QRCPT_SENT), 0, "rcpt a@example.org -> SENT");
    qdb_dest_get(db, "example.org", &d);
    ok(d.nmsg == NMSG, "example.org still counts it: c@example.org is pending");
    is_int(rcpt_set(s, qids[x], 1, QRCPT_BOUNCED), 0, "rcpt c@example.org -> BOUNCED");
    qdb_dest_get(db, "example.org", &d);
    ok(d.nmsg == NMSG - 1 && d.nbytes == org_bytes - body_len_of(x),
       "last pending for example.org gone: counters dropped");
    walk(db, "example.org", "", 100000, &w, qids[x]);
    ok(!w.found, "by_dest entry for example.org dropped");
    {
        struct qrcpt r[MAXR];
        size_t n;
        qdb_rcpt_list(db, qids[x], r, MAXR, &n);
        ok(n == 3 && r[1].state == QRCPT_BOUNCED && r[1].attempts == 1 &&
           strcmp(r[1].last_reply, "250 2.0.0 ok") == 0, "rcpt update stored");
    }
    is_int(rcpt_set(s, qids[x], 1, QRCPT_PENDING), 0, "rcpt back to PENDING");
    qdb_dest_get(db, "example.org", &d);
    ok(d.nmsg == NMSG, "back to pending: counted again");

    /* --- delete --- */
    int del = 10;   /* file body */
    char rel[64];
    body_rel(rel, sizeof rel, qids[del]);
    ok(file_exists(rel), "file body exists before delete");
    is_int(do_delete(s, qids[del]), 0, "spool_delete");
    struct qmsg m;
    is_int(qdb_msg_get(db, qids[del], &m), QDB_NOTFOUND, "deleted: msg record gone");
    {
        struct qrcpt r[MAXR];
        size_t n = 99;
        qdb_rcpt_list(db, qids[del], r, MAXR, &n);
        is_int(n, 0, "deleted: rcpt records gone");
    }
    ok(!file_exists(rel), "deleted: body file unlinked");
    qdb_dest_get(db, "example.org", &d);
    ok(d.nmsg == NMSG - 1 && d.nbytes == org_bytes - body_len_of(del), "delete: example.org counters");
    qdb_dest_get(db, "example.com", &d);
    ok((long)d.nmsg == com_msgs - 2 && d.nbytes == com_bytes - body_len_of(del) - body_len_of(x),
       "delete: example.com counters");
    org_bytes -= body_len_of(del);
    com_bytes -= body_len_of(del) + body_len_of(x);
    com_msgs -= 2;
    is_int(do_delete(s, "000000000000"), ENOENT, "delete of an unknown QID: ENOENT");
    is_int(qdb_msg_count(db), NMSG - 1, "msg count after delete");

    /* --- a failing request fails alone; its body file is removed --- */
    {
        struct done_rec d1 = { 0, 0 }, d2 = { 0, 0 }, d3 = { 0, 0 };
        struct qrcpt r[MAXR];
        char nq[QID_SIZE];
        /* Same QID as an inline message, but with a file body: the record
         * exists, so the put fails. */
        struct spool_body *b = make_body(s, qids[1], 1, FILE_BASE);
        make_msg(&m, qids[1], now);
        size_t n = make_rcpts(r, 1, now);
        body_rel(rel, sizeof rel, qids[1]);
        ok(file_exists(rel), "duplicate's body file written");
        outstanding = 3;
        spool_commit(s, b, &m, r, n, on_done, &d1);
        spool_write(s, fail_fn, NULL, on_done, &d2);
        qid_next(nq);
        b = make_body(s, nq, 9, 10);
        make_msg(&m, nq, now);
        n = make_rcpts(r, 9, now);
        spool_commit(s, b, &m, r, n, on_done, &d3);
        run_loop();
        is_int(d1.err, EIO, "duplicate QID: EIO");
        ok(!file_exists(rel), "failed commit: body file unlinked");
        is_int(d2.err, EIO, "failing write fn: EIO");
        is_int(d3.err, 0, "the good request beside them committed");
        ok(qdb_msg_get(db, qids[1], &m) == 0 && (m.flags & QMSG_F_INLINE) &&
           body_matches(s, &m, 1, body_len_of(1)), "original message untouched");
        is_int(do_delete(s, nq), 0, "cleanup");
    }

    /* --- spool_body_free removes the partial file --- */
    {
        char nq[QID_SIZE];
        qid_next(nq);
        struct spool_body *b = make_body(s, nq, 1, FILE_BASE);
        body_rel(rel, sizeof rel, nq);
        ok(b && file_exists(rel), "partial body on disk");
        spool_body_free(b);
        ok(!file_exists(rel), "spool_body_free unlinked it");
        spool_body_free(NULL);
    }

    /* --- close, plant an orphan and remove a body, reopen --- */
    spool_close(s);
    char orphan[QID_SIZE], orel[64], qrel[64], mrel[64];
    qid_next(orphan);
    body_rel(orel, sizeof orel, orphan);
    {
        char p[PATH_MAX + 64];
        snprintf(p, sizeof p, "%s/%s", root, orel);
        FILE *f = fopen(p, "w");
        fputs("orphan\r\n", f);
        fclose(f);
    }
    int missing = 20;   /* file body */
    body_rel(mrel, sizeof mrel, qids[missing]);
    {
        char p[PATH_MAX + 64];
        snprintf(p, sizeof p, "%s/%s", root, mrel);
        ok(unlink(p) == 0, "removed the body of a committed message behind its back");
    }
    s = spool_open(&c, base, err, sizeof err);
    ok(s != NULL, "reopen: %s", s ? "ok" : err);
    if (!s)
        return done_testing();
    db = spool_db(s);
    ok(!file_exists(orel), "orphan body removed at open");
    snprintf(qrel, sizeof qrel, "spool/quarantine/%.*s", QID_LEN, qids[missing]);
    ok(file_exists(qrel), "missing body: quarantine marker written");
    ok(qdb_msg_get(db, qids[missing], &m) == 0, "missing body: record kept");
    {
        struct evbuffer *eb = evbuffer_new();
        errno = 0;
        ok(spool_body_read(s, &m, eb) == -1 && errno == ENOENT, "missing body: read says ENOENT");
        evbuffer_free(eb);
    }
    is_int(qdb_msg_count(db), NMSG - 1, "reopen: message count");
    qdb_dest_get(db, "example.org", &d);
    ok(d.nmsg == NMSG - 1 && d.nbytes == org_bytes, "reopen: example.org counters");
    qdb_dest_get(db, "example.com", &d);
    ok((long)d.nmsg == com_msgs && d.nbytes == com_bytes, "reopen: example.com counters");
    {
        int bad = 0;
        for (int i = 0; i < NMSG; i++) {
            if (i == del || i == missing)
                continue;
            if (qdb_msg_get(db, qids[i], &m) != 0 || !body_matches(s, &m, i, body_len_of(i)))
                bad++;
        }
        is_int(bad, 0, "reopen: every body intact");
    }
    char fresh[QID_SIZE];
    qid_next(fresh);
    ok(strcmp(fresh, qids[NMSG - 1]) > 0, "IDs after reopen sort after the stored ones");

    /* --- unknown record version --- */
    spool_close(s);
    int vq = 15;    /* file body: recovery must keep it */
    ok(poke_version(qids[vq], 99) == 0, "record version byte overwritten");
    s = spool_open(&c, base, err, sizeof err);
    ok(s != NULL, "reopen with a bad record");
    if (!s)
        return done_testing();
    db = spool_db(s);
    is_int(qdb_msg_get(db, qids[vq], &m), QDB_ERR, "unknown version rejected by the decoder");
    body_rel(rel, sizeof rel, qids[vq]);
    ok(file_exists(rel), "body of an unreadable record is not treated as an orphan");
    is_int(do_delete(s, qids[vq]), EIO, "delete of an unreadable record fails, nothing lost");
    spool_close(s);

    /* --- map growth from a tiny map --- */
    {
        char gdir[PATH_MAX + 16];
        static char gq[GROW_MSGS][QID_SIZE];
        static struct done_rec gd[GROW_MSGS];
        snprintf(gdir, sizeof gdir, "%s/grow", root);
        struct conf g = c;
        g.spool = gdir;
        g.lmdb_map_size = 64 * 1024;
        g.commit_batch = 32;
        struct spool *gs = spool_open(&g, base, err, sizeof err);
        ok(gs != NULL, "tiny map spool: %s", gs ? "ok" : err);
        if (!gs)
            return done_testing();
        outstanding = GROW_MSGS;
        for (int i = 0; i < GROW_MSGS; i++) {
            struct qrcpt r[MAXR];
            qid_next(gq[i]);
            struct spool_body *b = make_body(gs, gq[i], i, GROW_BODY);
            make_msg(&m, gq[i], now);
            size_t n = make_rcpts(r, i, now);
            spool_commit(gs, b, &m, r, n, on_done, &gd[i]);
        }
        run_loop();
        int bad = 0;
        for (int i = 0; i < GROW_MSGS; i++)
            bad += gd[i].fired != 1 || gd[i].err != 0;
        is_int(bad, 0, "every commit durable despite map full");
        spool_stats_get(gs, &st);
        ok(st.map_grows >= 3, "map grew %llu times", (unsigned long long)st.map_grows);
        is_int(qdb_msg_count(spool_db(gs)), GROW_MSGS, "all messages stored");
        bad = 0;
        for (int i = 0; i < GROW_MSGS; i++)
            if (qdb_msg_get(spool_db(gs), gq[i], &m) != 0 || !body_matches(gs, &m, i, GROW_BODY))
                bad++;
        is_int(bad, 0, "all bodies intact after growth");
        spool_close(gs);
        gs = spool_open(&g, base, err, sizeof err);
        ok(gs && qdb_msg_count(spool_db(gs)) == GROW_MSGS, "grown spool reopens with everything");
        spool_close(gs);
    }

    spool_close(NULL);
    event_base_free(base);
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd) != 0)
        diag("could not remove %s", root);
    return done_testing();
}
