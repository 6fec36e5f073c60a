/*
 * maint.c - holds and maintenance windows (see maint.h).
 *
 * Owns: the daemon's copy of the index's hold/window records (recs), the
 * set of domains it holds through delivery_hold, the ring of past windows
 * for the /status chart, the one-second timer that starts and ends
 * windows, and the one "expiry move" job at a time (a window's end).
 *
 * A window's life (phase in struct qmaint, every change persisted):
 *   running --until/scheduled end/stop--> ending (expiry moved out, batch
 *   by batch, the cursor saved with each batch) --> gone (runtime) or
 *   done (a scheduled window, kept until its end so it does not start
 *   again) --> gone.  The domain stays held and paused until the last
 *   batch is committed, then it is released and flushed.
 *
 * Never: holds a write transaction across more than MAINT_SHIFT_BATCH
 * messages; moves a recipient's expiry twice for one window (the cursor
 * is committed with the batch it ends); releases a hold the config or the
 * fleet made (it hands the domain back to them: delivery_hold -1); writes
 * except through spool_write.
 * Security: notes come from an operator (control socket, config) and are
 * bounded by QMAINT_NOTE_MAX; listings escape them (JSON) or print them
 * through the caller's escaping.
 */
#include "config.h"
#include "maint.h"
#include "delivery.h"
#include "json.h"
#include "log.h"
#include "qid.h"
#include "spool.h"
#include "timearg.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <event2/event.h>

#define MAINT_DAY          86400
#define MAINT_MIN          60
/* Messages whose expiry one write transaction moves. */
#define MAINT_SHIFT_BATCH  256
/* How often the clock record (last seen alive) is written. */
#define MAINT_CLOCK_EVERY  60
/* Ended windows remembered for the /status chart (its 24 hours). */
#define MAINT_BANDS_MAX    256
#define MAINT_BANDS_KEEP   MAINT_DAY
/* An open-ended pause: the expiry looks again this much later. */
#define MAINT_RECHECK      3600

/* ------------------------------------------------------------------ */
/* Runtime                                                            */

struct maint_band {
    char domain[SMTP_DOMAIN_MAX + 1];
    int64_t start, end;
};

/* The one "expiry move" job: a window of `domain` ended. */
struct maint_shift {
    char domain[SMTP_DOMAIN_MAX + 1];
    int kind, origin;
    struct qmaint rec;                  /* the record, with the cursor to save */
    char (*page)[QID_SIZE];
    long npage;
    long moved;
    int last;                           /* this batch is the last */
    int64_t warn_after;                 /* delay_warning when the job began */
};

static struct {
    struct event_base *base;
    struct spool *sp;
    struct delivery *dl;
    const struct conf *conf;
    struct event *timer;
    struct maint_recs recs;             /* every record but the clock */
    int64_t last_seen;                  /* the clock record before this run */
    int64_t clock_written;
    struct name_set {
        char (*name)[SMTP_DOMAIN_MAX + 1];
        size_t n, cap;
    } applied;                          /* domains we hold through delivery_hold */
    struct maint_band bands[MAINT_BANDS_MAX];
    size_t nbands, band_next;
    struct maint_shift *shift;          /* running, or NULL */
    int ready;
} M;

static struct qmaint *maint_find(const char *domain, int kind, int origin)
{
    return (struct qmaint *)maint_rec_find(M.recs.r, M.recs.n, domain, kind, origin);
}

static void maint_forget(const char *domain, int kind, int origin)
{
    struct qmaint *q = maint_find(domain, kind, origin);
    if (q) {
        size_t i = (size_t)(q - M.recs.r);
        memmove(&M.recs.r[i], &M.recs.r[i + 1], (M.recs.n - i - 1) * sizeof *q);
        M.recs.n--;
    }
}

/* --- persistence --- */

struct maint_write {
    struct qmaint q;
    int del;
    maint_done_fn done;
    void *arg;
    char msg[300];
};

static int maint_write_fn(struct qdb_txn *t, void *arg)
{
    struct maint_write *w = arg;
    if (!w->del)
        return qdb_maint_put(t, &w->q);
    int r = qdb_maint_del(t, w->q.domain, w->q.kind, w->q.origin);
    return r == QDB_NOTFOUND ? 0 : r;
}

static void maint_write_done(void *arg, int err)
{
    struct maint_write *w = arg;
    if (err)
        log_warn("maint: %s %s of %s not saved: %s", w->del ? "removal of the" : "the",
                 maint_kind_name(w->q.kind), w->q.domain[0] ? w->q.domain : "(clock)",
                 strerror(err));
    if (w->done)
        w->done(w->arg, err, w->msg);
    free(w);
}

/* Persist q (or its removal); done runs once committed.  0 or ENOMEM/EIO. */
static int maint_save(const struct qmaint *q, int del, maint_done_fn done, void *arg,
                      const char *msg)
{
    struct maint_write *w = calloc(1, sizeof *w);
    if (w == NULL)
        return ENOMEM;
    w->q = *q;
    w->del = del;
    w->done = done;
    w->arg = arg;
    snprintf(w->msg, sizeof w->msg, "%s", msg ? msg : "");
    if (spool_write(M.sp, maint_write_fn, w, maint_write_done, w) == NULL) {
        free(w);
        return EIO;
    }
    return 0;
}

/* --- holding --- */

static int maint_in_window(const char *domain, int64_t now)
{
    for (size_t i = 0; i < M.recs.n; i++)
        if (M.recs.r[i].kind == QMAINT_WINDOW && maint_rec_active(&M.recs.r[i], now) &&
            strcasecmp(M.recs.r[i].domain, domain) == 0)
            return 1;
    return 0;
}

int maint_holds(const char *domain)
{
    if (!M.ready)
        return 0;
    return maint_find(domain, QMAINT_HOLD, QMAINT_RUNTIME) != NULL ||
           maint_in_window(domain, (int64_t)time(NULL));
}

int64_t maint_paused_until(const char *domain, int64_t now)
{
    int64_t until = 0;
    if (!M.ready)
        return 0;
    for (size_t i = 0; i < M.recs.n; i++) {
        const struct qmaint *q = &M.recs.r[i];
        if (q->kind != QMAINT_WINDOW || !maint_rec_active(q, now) ||
            strcasecmp(q->domain, domain) != 0)
            continue;
        /* Look again after its end (and the move), or now and then. */
        int64_t t = q->phase == 0 && q->until > now ? q->until + 1 : now + MAINT_RECHECK;
        if (q->phase == 1)
            t = now + MAINT_MIN;
        if (t > until)
            until = t;
    }
    return until;
}

static int maint_applied_idx(const char *domain)
{
    for (size_t i = 0; i < M.applied.n; i++)
        if (strcasecmp(M.applied.name[i], domain) == 0)
            return (int)i;
    return -1;
}

/* Make delivery's hold match ours for domain: held while we want it;
 * handed back to the config (and the fleet) when we stop wanting it. */
static void maint_apply(const char *domain)
{
    int want = maint_holds(domain), i = maint_applied_idx(domain);
    if (M.dl == NULL)
        return;
    if (want && i < 0) {
        if (M.applied.n == M.applied.cap) {
            size_t cap = M.applied.cap ? M.applied.cap * 2 : 16;
            void *p = realloc(M.applied.name, cap * sizeof *M.applied.name);
            if (p == NULL) {
                log_warn("maint: out of memory; %s held until restart", domain);
                delivery_hold(M.dl, domain, 1);
                return;
            }
            M.applied.name = p;
            M.applied.cap = cap;
        }
        snprintf(M.applied.name[M.applied.n++], sizeof M.applied.name[0], "%s", domain);
        delivery_hold(M.dl, domain, 1);
    } else if (want) {
        delivery_hold(M.dl, domain, 1);
    } else if (i >= 0) {
        M.applied.n--;
        if ((size_t)i != M.applied.n)
            memcpy(M.applied.name[i], M.applied.name[M.applied.n], sizeof M.applied.name[0]);
        delivery_hold(M.dl, domain, -1);
    }
}

static void maint_band_add(const char *domain, int64_t start, int64_t end)
{
    struct maint_band *b = &M.bands[M.band_next];
    snprintf(b->domain, sizeof b->domain, "%s", domain);
    b->start = start;
    b->end = end;
    M.band_next = (M.band_next + 1) % MAINT_BANDS_MAX;
    if (M.nbands < MAINT_BANDS_MAX)
        M.nbands++;
}

/* --- a window's end: expiry moved out, batch by batch --- */

static void maint_shift_next(void);
static void maint_tick(void);

static int maint_shift_fn(struct qdb_txn *t, void *arg)
{
    struct maint_shift *j = arg;
    int r;
    for (long i = 0; i < j->npage; i++) {
        r = qdb_msg_pause(t, j->page[i], j->domain, j->rec.start, j->rec.ended, j->warn_after);
        if (r == QDB_NOTFOUND)
            continue;           /* delivered or gone meanwhile */
        if (r != 0)
            return r;
    }
    if (j->npage > 0)
        snprintf(j->rec.cursor, sizeof j->rec.cursor, "%s", j->page[j->npage - 1]);
    if (!j->last)
        return qdb_maint_put(t, &j->rec);
    if (j->rec.origin == QMAINT_CONFIG && j->rec.until > j->rec.ended) {
        /* Stopped before its scheduled end: kept, done, so it does not
         * start again until its next occurrence. */
        j->rec.phase = 2;
        return qdb_maint_put(t, &j->rec);
    }
    r = qdb_maint_del(t, j->rec.domain, j->rec.kind, j->rec.origin);
    return r == QDB_NOTFOUND ? 0 : r;
}

static void maint_shift_done(void *arg, int err)
{
    struct maint_shift *j = arg;
    if (!M.ready) {             /* the daemon is stopping: the cursor is saved */
        free(j->page);
        free(j);
        return;
    }
    if (err) {
        /* The cursor was not saved: this batch runs again later (its
         * messages were not moved either: the transaction failed). */
        log_warn("maint: %s: expiry not moved (%s); trying again in a minute", j->domain,
                 strerror(err));
        M.shift = NULL;
        free(j->page);
        free(j);
        return;
    }
    j->moved += j->npage;
    struct qmaint *q = maint_find(j->domain, j->kind, j->origin);
    if (q)
        snprintf(q->cursor, sizeof q->cursor, "%s", j->rec.cursor);
    if (!j->last) {
        maint_shift_next();
        return;
    }
    char span[32];
    int64_t d = j->rec.ended - j->rec.start;
    snprintf(span, sizeof span, "%lldh%02lldm%02llds", (long long)(d / 3600),
             (long long)(d / 60 % 60), (long long)(d % 60));
    log_info("maintenance of %s (%s) ended after %s: expiry of %ld message%s moved out; "
             "delivering", j->domain, maint_origin_name(j->origin), span, j->moved,
             j->moved == 1 ? "" : "s");
    maint_band_add(j->domain, j->rec.start, j->rec.ended);
    if (q) {
        if (j->rec.phase == 2)
            *q = j->rec;
        else
            maint_forget(j->domain, j->kind, j->origin);
    }
    M.shift = NULL;
    maint_apply(j->domain);
    if (M.dl && !maint_holds(j->domain))
        delivery_flush(M.dl, j->domain, NULL);
    free(j->page);
    free(j);
    maint_tick();               /* the next window that ended, if any */
}

/* Next batch of the running job: QIDs after the cursor, then one write. */
static void maint_shift_next(void)
{
    struct maint_shift *j = M.shift;
    char after[QID_SIZE];
    snprintf(after, sizeof after, "%s", j->rec.cursor);
    j->npage = spool_page(M.sp, j->domain, after, j->page, MAINT_SHIFT_BATCH);
    if (j->npage < 0) {
        log_warn("maint: %s: cannot read the index; expiry move tried again in a minute",
                 j->domain);
        M.shift = NULL;
        free(j->page);
        free(j);
        return;
    }
    j->last = j->npage < MAINT_SHIFT_BATCH;
    if (spool_write(M.sp, maint_shift_fn, j, maint_shift_done, j) == NULL)
        maint_shift_done(j, EIO);
}

/* Start moving expiry for q (phase 1), unless a job runs already. */
static void maint_shift_start(struct qmaint *q)
{
    if (M.shift != NULL || M.sp == NULL)
        return;
    struct maint_shift *j = calloc(1, sizeof *j);
    if (j == NULL || (j->page = calloc(MAINT_SHIFT_BATCH, sizeof *j->page)) == NULL) {
        free(j);
        return;
    }
    snprintf(j->domain, sizeof j->domain, "%s", q->domain);
    j->kind = q->kind;
    j->origin = q->origin;
    j->rec = *q;
    j->warn_after = M.conf ? M.conf->delivery.delay_warning : 0;
    M.shift = j;
    maint_shift_next();
}

/* End window q at `when` (phase 0 -> 1).  Another window of the domain
 * still running at `when` (it began by then and ends then or later, even
 * if that is already past: ended in the same tick, or while stopped) takes
 * this one's start, and this one goes without moving anything: the
 * expiry moves once, by their union, each second counted once. */
static void maint_end(struct qmaint *q, int64_t when)
{
    for (size_t i = 0; i < M.recs.n; i++) {
        struct qmaint *o = &M.recs.r[i];
        if (o == q || o->kind != QMAINT_WINDOW || o->phase != 0 ||
            strcasecmp(o->domain, q->domain) != 0 || o->start > when ||
            (o->until != 0 && o->until < when))
            continue;
        if (q->start < o->start) {
            o->start = q->start;
            maint_save(o, 0, NULL, NULL, NULL);
        }
        maint_band_add(q->domain, q->start, when);
        if (q->origin == QMAINT_CONFIG && q->until > when) {
            q->phase = 2;
            q->ended = when;
            maint_save(q, 0, NULL, NULL, NULL);
        } else {
            maint_save(q, 1, NULL, NULL, NULL);
            maint_forget(q->domain, q->kind, q->origin);
        }
        return;
    }
    q->phase = 1;
    q->ended = when;
    q->cursor[0] = '\0';
    maint_save(q, 0, NULL, NULL, NULL);
    log_info("maintenance of %s (%s) ends: moving expiry out, then delivering", q->domain,
             maint_origin_name(q->origin));
}

static int maint_new_window(const char *domain, int origin, int64_t start, int64_t until,
                            const char *note, uint32_t uid, struct qmaint **out)
{
    struct qmaint q;
    memset(&q, 0, sizeof q);
    snprintf(q.domain, sizeof q.domain, "%s", domain);
    q.kind = QMAINT_WINDOW;
    q.origin = origin;
    q.start = start;
    q.until = until;
    q.created = (int64_t)time(NULL);
    q.uid = uid;
    snprintf(q.note, sizeof q.note, "%s", note ? note : "");
    if (maint_recs_add(&M.recs, &q) != 0 || M.recs.oom) {
        M.recs.oom = 0;
        return ENOMEM;
    }
    *out = &M.recs.r[M.recs.n - 1];
    return 0;
}

/* Scheduled windows now running get their record (and hold): one
 * record for the stretch of overlapping or back to back occurrences
 * (maint_windows_span), so that the domain stays held between them and
 * its expiry moves once, by their union. */
static void maint_schedule(int64_t now)
{
    for (size_t i = 0; M.conf && i < M.conf->ndomains; i++) {
        const struct conf_domain *d = &M.conf->domains[i];
        int64_t s, e;
        char iso[TIMEARG_ISO_SIZE];
        if (!maint_windows_span(d->maint, d->nmaint, now, &s, &e))
            continue;
        struct qmaint *q = maint_find(d->name, QMAINT_WINDOW, QMAINT_CONFIG);
        if (q && q->phase == 2 && q->until <= s) {
            maint_save(q, 1, NULL, NULL, NULL);     /* an older occurrence's */
            maint_forget(d->name, QMAINT_WINDOW, QMAINT_CONFIG);
            q = NULL;
        }
        if (q) {
            /* Running: a reload may have made its stretch longer. */
            if (q->phase == 0 && q->until != 0 && e > q->until) {
                q->until = e;
                maint_save(q, 0, NULL, NULL, NULL);
                log_info("maintenance of %s (config): an overlapping window holds it until %s",
                         d->name, timearg_format((time_t)e, iso));
            }
            continue;           /* running, ending, or stopped early */
        }
        const struct conf_maint_window *w = NULL;
        for (size_t k = 0; k < d->nmaint && w == NULL; k++) {
            int64_t a, b;
            if (maint_window_at(&d->maint[k], now, &a, &b))
                w = &d->maint[k];
        }
        if (maint_new_window(d->name, QMAINT_CONFIG, s, e, w ? w->note : NULL, QMAINT_UID_NONE,
                             &q) != 0)
            continue;
        maint_save(q, 0, NULL, NULL, NULL);
        /* The clock moves past its start now: a restart must not take
         * this window for one missed while stopped. */
        M.clock_written = 0;
        log_info("maintenance of %s (config %s) started: held until %s%s%s", d->name,
                 w ? w->text : "", timearg_format((time_t)e, iso), q->note[0] ? ": " : "",
                 q->note);
        maint_apply(d->name);
    }
}

/* A running window from the config whose entry is no longer there (a
 * reload removed or moved it) ends now, as `stop` would: mail must not
 * stay held for a window nobody asks for any more. */
static void maint_unschedule(int64_t now)
{
    for (size_t i = 0; M.conf && i < M.recs.n; i++) {
        struct qmaint *q = &M.recs.r[i];
        if (q->kind != QMAINT_WINDOW || q->origin != QMAINT_CONFIG || q->phase != 0 ||
            (q->until != 0 && q->until <= now))
            continue;           /* not running, or ending at its own time */
        const struct conf_domain *d = conf_domain_find(M.conf, q->domain);
        int64_t s, e;
        if (d && maint_windows_span(d->maint, d->nmaint, now, &s, &e)) {
            if (q->until != 0 && e < q->until) {
                q->until = e;   /* a window of its stretch was removed */
                maint_save(q, 0, NULL, NULL, NULL);
            }
            continue;
        }
        log_info("maintenance of %s (config) is no longer in the configuration: it ends now",
                 q->domain);
        maint_end(q, now);
        i = (size_t)-1;         /* maint_end may have removed records */
    }
}

static void maint_tick(void)
{
    int64_t now = (int64_t)time(NULL);
    maint_unschedule(now);
    maint_schedule(now);
    /* Windows whose end has passed end in the order of their ends, so
     * that one still running at another's end takes it over (maint_end). */
    for (size_t n = M.recs.n + 1; n > 0; n--) {
        struct qmaint *first = NULL;
        for (size_t i = 0; i < M.recs.n; i++) {
            struct qmaint *q = &M.recs.r[i];
            if (q->kind == QMAINT_WINDOW && q->phase == 0 && q->until != 0 && q->until <= now &&
                (first == NULL || q->until < first->until))
                first = q;
        }
        if (first == NULL)
            break;
        maint_end(first, first->until);
    }
    for (size_t i = 0; i < M.recs.n; i++) {
        struct qmaint *q = &M.recs.r[i];
        if (q->kind != QMAINT_WINDOW)
            continue;
        if (q->phase == 2 && q->until <= now) {
            maint_save(q, 1, NULL, NULL, NULL);
            maint_forget(q->domain, q->kind, q->origin);
            i = (size_t)-1;
        }
    }
    for (size_t i = 0; M.shift == NULL && i < M.recs.n; i++)
        if (M.recs.r[i].kind == QMAINT_WINDOW && M.recs.r[i].phase == 1)
            maint_shift_start(&M.recs.r[i]);
    if (now - M.clock_written >= MAINT_CLOCK_EVERY) {
        struct qmaint c;
        memset(&c, 0, sizeof c);
        c.kind = QMAINT_CLOCK;
        c.origin = QMAINT_RUNTIME;
        c.start = now;
        c.uid = QMAINT_UID_NONE;
        if (maint_save(&c, 0, NULL, NULL, NULL) == 0)
            M.clock_written = now;
    }
}

static void maint_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    maint_tick();
}

static int maint_load_one(void *arg, const struct qmaint *q)
{
    (void)arg;
    if (q->kind == QMAINT_CLOCK) {
        M.last_seen = q->start;
        return 0;
    }
    return maint_recs_add(&M.recs, q);
}

/* Scheduled windows that began and ended while the daemon was down: one
 * record per domain covering their total, ended at once (its expiry is
 * moved by maint_start's tick). */
static void maint_catch_up(int64_t now)
{
    if (M.last_seen == 0)
        return;                 /* first run: nothing known about the past */
    for (size_t i = 0; M.conf && i < M.conf->ndomains; i++) {
        const struct conf_domain *d = &M.conf->domains[i];
        int64_t last = 0;
        int64_t total = maint_windows_missed(d->maint, d->nmaint, M.last_seen, now, &last);
        if (total == 0)
            continue;
        struct qmaint *q = maint_find(d->name, QMAINT_WINDOW, QMAINT_CONFIG);
        if (q && q->phase == 0 && q->until != 0 && q->until <= last - total) {
            /* The window seen running when the daemon stopped ended while
             * it was down, and later ones passed too: its end moves by
             * their time.  Exact, since no mail came while stopped (every
             * message arrived before its end): the move is its own part
             * plus theirs. */
            log_info("maintenance of %s: scheduled maintenance of %llds in all passed while "
                     "stopped after the window running then", d->name, (long long)total);
            q->until += total;
            maint_save(q, 0, NULL, NULL, NULL);
            continue;
        }
        if (q && q->phase == 2 && q->until <= now) {
            maint_save(q, 1, NULL, NULL, NULL);         /* a stopped one's marker, over */
            maint_forget(d->name, QMAINT_WINDOW, QMAINT_CONFIG);
            q = NULL;
        }
        if (q != NULL)
            continue;           /* ending when stopped: its move runs first */
        if (maint_new_window(d->name, QMAINT_CONFIG, last - total, last, "missed while stopped",
                             QMAINT_UID_NONE, &q) != 0)
            continue;
        log_info("maintenance of %s: scheduled window%s of %llds in all passed while stopped",
                 d->name, total > (int64_t)d->maint[0].dur_min * MAINT_MIN ? "s" : "",
                 (long long)total);
        maint_save(q, 0, NULL, NULL, NULL);
    }
}

int maint_init(struct event_base *base, struct spool *sp, const struct conf *c, char *err,
               size_t errlen)
{
    memset(&M, 0, sizeof M);
    M.base = base;
    M.sp = sp;
    M.conf = c;
    M.timer = event_new(base, -1, EV_PERSIST, maint_on_timer, NULL);
    if (M.timer == NULL) {
        snprintf(err, errlen, "maint: out of memory");
        return -1;
    }
    if (spool_maint_each(sp, maint_load_one, NULL) < 0 || M.recs.oom) {
        snprintf(err, errlen, "maint: cannot read the holds from the spool index");
        return -1;
    }
    int64_t now = (int64_t)time(NULL);
    maint_catch_up(now);
    M.ready = 1;
    maint_schedule(now);
    for (size_t i = 0; i < M.recs.n; i++) {
        const struct qmaint *q = &M.recs.r[i];
        char iso[TIMEARG_ISO_SIZE], who[32];
        if (q->kind == QMAINT_CLOCK || (q->kind == QMAINT_WINDOW && q->phase == 2))
            continue;           /* a stopped window is only a marker */
        if (q->uid == QMAINT_UID_NONE)
            snprintf(who, sizeof who, "the configuration");
        else
            snprintf(who, sizeof who, "uid %lu", (unsigned long)q->uid);
        log_info("%s of %s (%s, since %s, by %s) restored from the spool",
                 maint_kind_name(q->kind), q->domain, maint_origin_name(q->origin),
                 timearg_format((time_t)q->start, iso), who);
    }
    return 0;
}

void maint_start(struct delivery *dl)
{
    struct timeval tv = { 1, 0 };
    M.dl = dl;
    for (size_t i = 0; i < M.recs.n; i++)
        maint_apply(M.recs.r[i].domain);
    maint_tick();
    event_add(M.timer, &tv);
}

void maint_configure(const struct conf *c)
{
    M.conf = c;
    /* The reload handed every hold back to the config: ours again. */
    for (size_t i = 0; i < M.applied.n; i++)
        if (M.dl)
            delivery_hold(M.dl, M.applied.name[i], 1);
    maint_tick();
}

void maint_shutdown(void)
{
    if (M.timer)
        event_free(M.timer);
    /* A job in flight completes on the spool's writer as the spool closes:
     * its memory is the job's, and its cursor is saved with each batch. */
    free(M.recs.r);
    free(M.applied.name);
    memset(&M, 0, sizeof M);
}

/* --- requests --- */

int maint_hold(const char *domain, uint32_t uid, int hold, maint_done_fn done, void *arg)
{
    struct qmaint q, *have = maint_find(domain, QMAINT_HOLD, QMAINT_RUNTIME);
    struct delivery_dest_info info;
    char msg[300];
    /* A served domain, or a destination with mail (bounces), as before. */
    if (M.dl == NULL || (conf_domain_find(M.conf, domain) == NULL &&
                         delivery_dest_info(M.dl, domain, &info) != 0))
        return ENOENT;
    if (hold) {
        if (have == NULL) {
            memset(&q, 0, sizeof q);
            snprintf(q.domain, sizeof q.domain, "%s", domain);
            q.kind = QMAINT_HOLD;
            q.origin = QMAINT_RUNTIME;
            q.start = q.created = (int64_t)time(NULL);
            q.uid = uid;
            if (maint_recs_add(&M.recs, &q) != 0) {
                M.recs.oom = 0;
                return ENOMEM;
            }
            have = &M.recs.r[M.recs.n - 1];
            log_info("destination %s: held by uid %" PRIu32 " (kept across restarts until "
                     "released)", domain, uid);
        }
        maint_apply(domain);
        snprintf(msg, sizeof msg, "held %s", domain);
        return maint_save(have, 0, done, arg, msg);
    }
    if (have != NULL) {
        q = *have;
        maint_forget(domain, QMAINT_HOLD, QMAINT_RUNTIME);
    } else {
        memset(&q, 0, sizeof q);
        snprintf(q.domain, sizeof q.domain, "%s", domain);
        q.kind = QMAINT_HOLD;
        q.origin = QMAINT_RUNTIME;
    }
    log_info("destination %s: released by uid %" PRIu32, domain, uid);
    if (maint_in_window(domain, (int64_t)time(NULL))) {
        snprintf(msg, sizeof msg, "released %s, but it stays held: in maintenance "
                 "(mxkeepctl maintenance %s stop)", domain, domain);
    } else {
        int i = maint_applied_idx(domain);
        if (i >= 0) {
            M.applied.n--;
            if ((size_t)i != M.applied.n)
                memcpy(M.applied.name[i], M.applied.name[M.applied.n], sizeof M.applied.name[0]);
        }
        /* As before: release overrides a config hold until the next reload. */
        delivery_hold(M.dl, domain, 0);
        snprintf(msg, sizeof msg, "released %s", domain);
    }
    return maint_save(&q, 1, done, arg, msg);
}

int maint_window_start(const char *domain, int64_t until, const char *note, uint32_t uid,
                       maint_done_fn done, void *arg)
{
    int64_t now = (int64_t)time(NULL);
    struct qmaint *q = maint_find(domain, QMAINT_WINDOW, QMAINT_RUNTIME);
    char msg[300], iso[TIMEARG_ISO_SIZE];
    if (M.dl == NULL || conf_domain_find(M.conf, domain) == NULL)
        return ENOENT;
    if (until != 0 && until <= now)
        return EINVAL;
    if (q != NULL && q->phase != 0)
        return EBUSY;           /* its end is being applied: start again in a moment */
    if (q == NULL) {
        int r = maint_new_window(domain, QMAINT_RUNTIME, now, until, note, uid, &q);
        if (r != 0)
            return r;
    } else {
        /* Already in maintenance: a new end or note, same start. */
        q->until = until;
        q->uid = uid;
        if (note)
            snprintf(q->note, sizeof q->note, "%s", note);
    }
    log_info("maintenance of %s started by uid %" PRIu32 ": held until %s%s%s", domain, uid,
             until ? timearg_format((time_t)until, iso) : "stopped", q->note[0] ? ": " : "",
             q->note);
    maint_apply(domain);
    int len = snprintf(msg, sizeof msg, "maintenance of %s until %s", domain,
                       until ? timearg_format((time_t)until, iso) : "stopped");
    /* Already in a config window: the runtime window is added (it holds
     * the domain until its own end should the config's end first), and
     * the reply says so, with what holds the domain until when; `stop`
     * ends both. */
    const struct qmaint *c = maint_find(domain, QMAINT_WINDOW, QMAINT_CONFIG);
    if (c && c->phase == 0 && maint_rec_active(c, now) && len > 0 && (size_t)len < sizeof msg) {
        char ciso[TIMEARG_ISO_SIZE];
        const char *cend = c->until ? timearg_format((time_t)c->until, ciso) : "stopped";
        int64_t held = until == 0 || c->until == 0 ? 0 : until > c->until ? until : c->until;
        snprintf(msg + len, sizeof msg - (size_t)len,
                 "; already in the config window until %s: held until %s (stop ends both)",
                 cend, held ? timearg_format((time_t)held, iso) : "stopped");
        log_info("maintenance of %s: the runtime window of uid %" PRIu32 " overlaps the config "
                 "window until %s", domain, uid, cend);
    }
    return maint_save(q, 0, done, arg, msg);
}

int maint_window_stop(const char *domain, uint32_t uid, maint_done_fn done, void *arg)
{
    int64_t now = (int64_t)time(NULL);
    int n = 0;
    char msg[300];
    if (M.dl == NULL || conf_domain_find(M.conf, domain) == NULL)
        return ENOENT;
    for (size_t i = 0; i < M.recs.n; i++) {
        struct qmaint *q = &M.recs.r[i];
        if (q->kind != QMAINT_WINDOW || q->phase != 0 || strcasecmp(q->domain, domain) != 0 ||
            !maint_rec_active(q, now))
            continue;
        log_info("maintenance of %s (%s) stopped by uid %" PRIu32, domain,
                 maint_origin_name(q->origin), uid);
        maint_end(q, now);
        n++;
        i = (size_t)-1;
    }
    if (n == 0)
        return ESRCH;
    maint_tick();               /* starts the expiry move */
    snprintf(msg, sizeof msg, "maintenance of %s stopped; delivering once expiry is moved",
             domain);
    if (done)
        done(arg, 0, msg);
    return 0;
}

/* --- for /metrics and /status --- */

void maint_each(int (*fn)(void *arg, const struct maint_entry *e), void *arg)
{
    maint_entries(M.recs.r, M.recs.n, M.conf, (int64_t)time(NULL), fn, arg);
}

void maint_bands(int64_t from, int64_t to,
                 void (*fn)(void *arg, const char *domain, int64_t start, int64_t end), void *arg)
{
    int64_t now = (int64_t)time(NULL);
    for (size_t i = 0; i < M.nbands; i++) {
        const struct maint_band *b = &M.bands[i];
        if (b->end > from && b->start < to && b->end > now - MAINT_BANDS_KEEP)
            fn(arg, b->domain, b->start, b->end);
    }
    for (size_t i = 0; i < M.recs.n; i++) {
        const struct qmaint *q = &M.recs.r[i];
        if (q->kind == QMAINT_WINDOW && maint_rec_active(q, now) && q->start <= to)
            fn(arg, q->domain, q->start, q->phase == 1 ? q->ended : now);
    }
}
