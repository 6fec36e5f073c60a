/*
 * maint_window.c - the pure part of maint.h: weekly window parsing, "is
 * now in a window", windows missed while stopped, and the listings
 * (mxkeepctl holds, maintenance list, summary).  Apart from maint.c so
 * that conf.c and mxkeepctl link it without the daemon's runtime.
 *
 * Owns: nothing; no state.
 * Never: reads the clock (now is the caller's) or writes the index; the
 * listing only reads it (qdb_maint_each, its own read transaction).
 * Security: notes and domains come from the config or an operator; text
 * output replaces control characters, JSON escapes them.
 */
#include "config.h"
#include "maint.h"
#include "json.h"
#include "timearg.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MAINT_DAY          86400
#define MAINT_MIN          60
/* 1970-01-01 was a Thursday: day of week = (days + 4) % 7, Sunday 0. */
#define MAINT_EPOCH_WDAY   4

/* ------------------------------------------------------------------ */
/* Pure                                                               */

static const char *const maint_day_names[7] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };

static int maint_hhmm(const char *p, int *min)
{
    if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9' || p[2] != ':' || p[3] < '0' ||
        p[3] > '9' || p[4] < '0' || p[4] > '9')
        return -1;
    int h = (p[0] - '0') * 10 + p[1] - '0', m = (p[3] - '0') * 10 + p[4] - '0';
    if (h > 24 || m > 59 || (h == 24 && m != 0))
        return -1;
    *min = h * 60 + m;
    return 0;
}

int maint_weekly_parse(const char *s, struct conf_maint_window *w, char *err, size_t errlen)
{
    const char *p = s;
    unsigned days = 0;
    int from, to;
    for (;;) {
        int d;
        for (d = 0; d < 7; d++)
            if (strncasecmp(p, maint_day_names[d], 3) == 0)
                break;
        if (d == 7) {
            snprintf(err, errlen, "\"%s\": expected a day (Sun, Mon, ... Sat) at \"%s\"", s, p);
            return -1;
        }
        days |= 1u << d;
        p += 3;
        if (*p != ',')
            break;
        p++;
    }
    if (*p != ' ') {
        snprintf(err, errlen, "\"%s\": expected \"DAY HH:MM-HH:MM\"", s);
        return -1;
    }
    while (*p == ' ')
        p++;
    if (maint_hhmm(p, &from) != 0 || p[5] != '-' || maint_hhmm(p + 6, &to) != 0 || p[11] != '\0' ||
        from == 24 * 60) {
        snprintf(err, errlen, "\"%s\": expected \"DAY HH:MM-HH:MM\" (UTC)", s);
        return -1;
    }
    w->start = w->end = 0;
    w->days = days;
    w->from_min = from;
    /* An end at or before the start runs past midnight. */
    w->dur_min = to > from ? to - from : to + 24 * 60 - from;
    return 0;
}

int maint_window_at(const struct conf_maint_window *w, int64_t now, int64_t *start, int64_t *end)
{
    *start = *end = 0;
    if (w->days == 0) {
        if (now >= w->end)
            return 0;
        *start = w->start;
        *end = w->end;
        return now >= w->start;
    }
    /* Occurrences begin on a listed day at from_min; one may still run
     * from yesterday (past midnight), so look from yesterday on. */
    int64_t today = now >= 0 ? now / MAINT_DAY : (now - MAINT_DAY + 1) / MAINT_DAY;
    for (int64_t day = today - 1; day <= today + 7; day++) {
        int wday = (int)(((day + MAINT_EPOCH_WDAY) % 7 + 7) % 7);
        if (!(w->days & (1u << wday)))
            continue;
        int64_t s = day * MAINT_DAY + (int64_t)w->from_min * MAINT_MIN;
        int64_t e = s + (int64_t)w->dur_min * MAINT_MIN;
        if (now >= e)
            continue;
        *start = s;
        *end = e;
        return now >= s;
    }
    return 0;
}

int64_t maint_window_missed(const struct conf_maint_window *w, int64_t from, int64_t to,
                            int64_t *last)
{
    int64_t total = 0, s, e, t = from;
    *last = 0;
    if (to <= from)
        return 0;
    /* Bounded: only the last MAINT_CATCHUP_WEEKS weeks are looked at. */
    if (to - from > (int64_t)MAINT_CATCHUP_WEEKS * 7 * MAINT_DAY)
        t = from = to - (int64_t)MAINT_CATCHUP_WEEKS * 7 * MAINT_DAY;
    for (int i = 0; i < MAINT_CATCHUP_WEEKS * 7 + 2; i++) {
        maint_window_at(w, t, &s, &e);
        if (s == 0 && e == 0)
            break;
        if (s <= from) {        /* running at `from`: not missed, it was seen */
            t = e;
            continue;
        }
        if (e > to)
            break;
        total += e - s;
        *last = e;
        t = e;
    }
    return total;
}

/* The first occurrence of w that starts at or after t: 1 with its
 * bounds, or 0 when none is left. */
static int maint_next_occurrence(const struct conf_maint_window *w, int64_t t, int64_t *start,
                                 int64_t *end)
{
    maint_window_at(w, t, start, end);
    if (*start != 0 && *start < t)          /* running at t: the one after it */
        maint_window_at(w, *end, start, end);
    return !(*start == 0 && *end == 0) && *start >= t;
}

/* Stretch [*start, *end) over every occurrence of w[0..n) that overlaps
 * or touches it: back to back windows are one stretch in maintenance. */
static void maint_stretch(const struct conf_maint_window *w, size_t n, int64_t *start,
                          int64_t *end)
{
    for (int round = 0, grew = 1; grew && round < MAINT_SPAN_ROUNDS; round++) {
        grew = 0;
        for (size_t k = 0; k < n; k++) {
            int64_t s, e;
            if (maint_window_at(&w[k], *end, &s, &e) && e > *end) {
                *end = e;
                grew = 1;
            }
            if (maint_window_at(&w[k], *start - 1, &s, &e) && s < *start) {
                *start = s;
                grew = 1;
            }
        }
    }
}

int maint_windows_span(const struct conf_maint_window *w, size_t n, int64_t now,
                       int64_t *start, int64_t *end)
{
    int in = 0;
    *start = *end = 0;
    for (size_t k = 0; k < n; k++) {
        int64_t s, e;
        if (!maint_window_at(&w[k], now, &s, &e))
            continue;
        if (!in || s < *start)
            *start = s;
        if (!in || e > *end)
            *end = e;
        in = 1;
    }
    if (in)
        maint_stretch(w, n, start, end);
    return in;
}

int64_t maint_windows_missed(const struct conf_maint_window *w, size_t n, int64_t from,
                             int64_t to, int64_t *last)
{
    int64_t total = 0, t;
    *last = 0;
    if (to <= from)
        return 0;
    /* Bounded: only the last MAINT_CATCHUP_WEEKS weeks are looked at. */
    if (to - from > (int64_t)MAINT_CATCHUP_WEEKS * 7 * MAINT_DAY)
        from = to - (int64_t)MAINT_CATCHUP_WEEKS * 7 * MAINT_DAY;
    /* Occurrences running at `from` were seen: the first missed one starts
     * after it, and so does what it stretches to (the union, each second
     * counted once however many windows cover it). */
    int64_t seen = from, s0, e0;
    if (maint_windows_span(w, n, from, &s0, &e0) && e0 > seen)
        seen = e0;              /* running at `from`: its record's, as maint_schedule made it */
    t = seen == from ? from + 1 : seen;
    for (long i = 0; i < (long)MAINT_CATCHUP_WEEKS * 7 * 2 + 2; i++) {
        int64_t s = 0, e = 0, a, b;
        for (size_t k = 0; k < n; k++)
            if (maint_next_occurrence(&w[k], t, &a, &b) && (s == 0 || a < s)) {
                s = a;
                e = b;
            }
        if (s == 0)
            break;
        maint_stretch(w, n, &s, &e);
        if (s < seen)
            s = seen;           /* stretched back over what was seen */
        if (e > to)
            break;              /* running now: maint_schedule's */
        total += e - s;
        *last = e;
        t = seen = e;
    }
    return total;
}

/* ------------------------------------------------------------------ */
/* Listings                                                           */

const char *maint_kind_name(int kind)
{
    return kind == QMAINT_HOLD ? "hold" : kind == QMAINT_WINDOW ? "maintenance" : "clock";
}

const char *maint_origin_name(int origin)
{
    return origin == QMAINT_CONFIG ? "config" : "runtime";
}

int maint_rec_active(const struct qmaint *q, int64_t now)
{
    if (q->kind == QMAINT_HOLD)
        return 1;
    if (q->kind != QMAINT_WINDOW || q->phase == 2)
        return 0;
    return q->phase == 1 || (q->start <= now && (q->until == 0 || q->until > now));
}

const struct qmaint *maint_rec_find(const struct qmaint *recs, size_t n, const char *domain,
                                           int kind, int origin)
{
    for (size_t i = 0; i < n; i++)
        if (recs[i].kind == kind && recs[i].origin == origin &&
            strcasecmp(recs[i].domain, domain) == 0)
            return &recs[i];
    return NULL;
}

void maint_entries(const struct qmaint *recs, size_t n, const struct conf *c, int64_t now,
                   int (*fn)(void *arg, const struct maint_entry *e), void *arg)
{
    struct maint_entry e;
    for (size_t i = 0; i < n; i++) {
        if (recs[i].kind == QMAINT_CLOCK || (recs[i].kind == QMAINT_WINDOW && recs[i].phase == 2))
            continue;
        memset(&e, 0, sizeof e);
        e.q = recs[i];
        e.active = maint_rec_active(&recs[i], now);
        if (fn(arg, &e))
            return;
    }
    for (size_t i = 0; c && i < c->ndomains; i++) {
        const struct conf_domain *d = &c->domains[i];
        if (d->hold) {
            memset(&e, 0, sizeof e);
            snprintf(e.q.domain, sizeof e.q.domain, "%s", d->name);
            e.q.kind = QMAINT_HOLD;
            e.q.origin = QMAINT_CONFIG;
            e.q.uid = QMAINT_UID_NONE;
            e.active = 1;
            if (fn(arg, &e))
                return;
        }
        /* A scheduled window with a record is listed from the record. */
        const struct qmaint *r = maint_rec_find(recs, n, d->name, QMAINT_WINDOW, QMAINT_CONFIG);
        for (size_t j = 0; j < d->nmaint; j++) {
            int64_t s, en;
            int on = maint_window_at(&d->maint[j], now, &s, &en);
            if (s == 0 && en == 0)
                continue;
            if (r && r->start <= s && (r->until == 0 || en <= r->until) && (on || r->phase != 2))
                continue;
            memset(&e, 0, sizeof e);
            snprintf(e.q.domain, sizeof e.q.domain, "%s", d->name);
            e.q.kind = QMAINT_WINDOW;
            e.q.origin = QMAINT_CONFIG;
            e.q.uid = QMAINT_UID_NONE;
            e.q.start = s;
            e.q.until = en;
            snprintf(e.q.note, sizeof e.q.note, "%s", d->maint[j].note ? d->maint[j].note : "");
            /* No record yet: it starts at its time (a running daemon makes
             * the record within a second; a stopped one at its start). */
            e.active = on;
            e.schedule = d->maint[j].text;
            if (fn(arg, &e))
                return;
        }
    }
}

/* What an entry is doing, the same words online and offline: a window
 * whose end has passed but that no daemon has ended yet (it was stopped)
 * is "ended": its end is applied, expiry moved, when mxkeepd next starts. */
static const char *maint_entry_state(const struct maint_entry *e, int64_t now)
{
    if (e->q.kind == QMAINT_HOLD)
        return "held";
    if (e->q.phase == 1)
        return "ending";
    if (e->q.until != 0 && e->q.until <= now)
        return "ended";
    return e->active ? "running" : "scheduled";
}

struct maint_list {
    FILE *f;
    int json, kind, n;
    int64_t now;
};

static void maint_emit(void *arg, const char *p, size_t len)
{
    fwrite(p, 1, len, arg);
}

static void maint_json_time(FILE *f, int64_t t)
{
    char iso[TIMEARG_ISO_SIZE];
    if (t == 0)
        fputs("null", f);
    else
        fprintf(f, "\"%s\"", timearg_format((time_t)t, iso));
}

static void maint_text_field(FILE *f, const char *s)
{
    for (; *s; s++)
        fputc((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f ? '?' : *s, f);
}

static int maint_list_one(void *arg, const struct maint_entry *e)
{
    struct maint_list *l = arg;
    FILE *f = l->f;
    char a[TIMEARG_ISO_SIZE], b[TIMEARG_ISO_SIZE], c[TIMEARG_ISO_SIZE];
    if (l->kind && e->q.kind != l->kind)
        return 0;
    if (l->json) {
        fputs(l->n ? ",\n {\"domain\":" : "\n {\"domain\":", f);
        json_escape(e->q.domain, strlen(e->q.domain), maint_emit, f);
        fprintf(f, ",\"kind\":\"%s\",\"origin\":\"%s\",\"active\":%s,\"start\":",
                maint_kind_name(e->q.kind), maint_origin_name(e->q.origin),
                e->active ? "true" : "false");
        maint_json_time(f, e->q.start);
        fputs(",\"until\":", f);
        maint_json_time(f, e->q.until);
        fputs(",\"created\":", f);
        maint_json_time(f, e->q.created);
        fputs(",\"uid\":", f);
        if (e->q.uid == QMAINT_UID_NONE)
            fputs("null", f);
        else
            fprintf(f, "%" PRIu32, e->q.uid);
        fprintf(f, ",\"phase\":\"%s\",\"note\":", maint_entry_state(e, l->now));
        json_escape(e->q.note, strlen(e->q.note), maint_emit, f);
        fputs(",\"schedule\":", f);
        if (e->schedule)
            json_escape(e->schedule, strlen(e->schedule), maint_emit, f);
        else
            fputs("null", f);
        fputs("}", f);
    } else {
        if (l->n == 0)
            fprintf(f, "%-30s %-11s %-7s %-9s %-20s %-20s %-8s %s\n", "DOMAIN", "KIND", "ORIGIN",
                    "STATE", "START", "UNTIL", "UID", "NOTE");
        maint_text_field(f, e->q.domain);
        fprintf(f, "%*s", strlen(e->q.domain) < 30 ? (int)(30 - strlen(e->q.domain)) : 0, "");
        char uid[16] = "-";
        if (e->q.uid != QMAINT_UID_NONE)
            snprintf(uid, sizeof uid, "%" PRIu32, e->q.uid);
        fprintf(f, " %-11s %-7s %-9s %-20s %-20s %-8s ", maint_kind_name(e->q.kind),
                maint_origin_name(e->q.origin), maint_entry_state(e, l->now),
                e->q.start ? timearg_format((time_t)e->q.start, a) : "-",
                e->q.until ? timearg_format((time_t)e->q.until, b) : "-", uid);
        maint_text_field(f, e->q.note[0] ? e->q.note : e->schedule ? e->schedule : "-");
        if (e->q.created)
            fprintf(f, " (set %s)", timearg_format((time_t)e->q.created, c));
        if (strcmp(maint_entry_state(e, l->now), "ended") == 0)
            fputs(" (over; ends when mxkeepd runs)", f);
        fputc('\n', f);
    }
    l->n++;
    return 0;
}

int maint_recs_add(void *arg, const struct qmaint *q)
{
    struct maint_recs *v = arg;
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        struct qmaint *p = realloc(v->r, cap * sizeof *p);
        if (p == NULL) {
            v->oom = 1;
            return 1;
        }
        v->r = p;
        v->cap = cap;
    }
    v->r[v->n++] = *q;
    return 0;
}

/* summary: one line per active hold or window, after the table. */
static int maint_summary_one(void *arg, const struct maint_entry *e)
{
    struct maint_list *l = arg;
    char a[TIMEARG_ISO_SIZE], b[TIMEARG_ISO_SIZE];
    if (!e->active)
        return 0;
    fputs("held ", l->f);
    maint_text_field(l->f, e->q.domain);
    fprintf(l->f, ": %s (%s", e->q.kind == QMAINT_HOLD ? "hold" : "maintenance",
            maint_origin_name(e->q.origin));
    if (e->q.uid != QMAINT_UID_NONE)
        fprintf(l->f, ", uid %" PRIu32, e->q.uid);
    if (e->q.start)
        fprintf(l->f, ", since %s", timearg_format((time_t)e->q.start, a));
    if (e->q.until)
        fprintf(l->f, ", until %s", timearg_format((time_t)e->q.until, b));
    fputs(")", l->f);
    if (e->q.note[0]) {
        fputs(": ", l->f);
        maint_text_field(l->f, e->q.note);
    }
    fputc('\n', l->f);
    l->n++;
    return 0;
}

int maint_listing(FILE *f, int how, struct qdb *db, const struct conf *c, int64_t now, int kind)
{
    struct maint_recs v = { 0 };
    struct maint_list l = { f, how != MAINT_LIST_TEXT, kind, 0, now };
    if (db && (qdb_maint_each(db, maint_recs_add, &v) < 0 || v.oom)) {
        free(v.r);
        return -1;
    }
    if (how == MAINT_LIST_SUMMARY) {
        maint_entries(v.r, v.n, c, now, maint_summary_one, &l);
        free(v.r);
        return 0;
    }
    if (how == MAINT_LIST_JSON)
        fputs("{\"holds\":", f);
    if (how != MAINT_LIST_TEXT)
        fputs("[", f);
    maint_entries(v.r, v.n, c, now, maint_list_one, &l);
    if (how != MAINT_LIST_TEXT)
        fprintf(f, "%s]", l.n ? "\n" : "");
    if (how == MAINT_LIST_JSON)
        fputs("}\n", f);
    else if (how == MAINT_LIST_TEXT && l.n == 0)
        fputs(kind == QMAINT_WINDOW ? "no maintenance windows\n" : "no holds\n", f);
    free(v.r);
    return 0;
}

