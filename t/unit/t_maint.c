/*
 * t_maint.c - the pure part of maint.c: weekly window parsing, "is now in
 * a window" for one-off and weekly windows (past midnight too), the time
 * of windows missed while stopped, and the entries a listing shows.
 */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "maint.h"
#include "timearg.h"
#include "tap.h"

static int64_t at(const char *iso)
{
    time_t t = 0;
    char err[128];
    if (timearg_parse(iso, 0, &t, err, sizeof err) != 0)
        diag("bad test time %s: %s", iso, err);
    return (int64_t)t;
}

struct collect {
    int n, active, scheduled, holds;
    char last_origin[16];
};

static int collect_fn(void *arg, const struct maint_entry *e)
{
    struct collect *c = arg;
    c->n++;
    c->active += e->active;
    c->scheduled += e->schedule != NULL;
    c->holds += e->q.kind == QMAINT_HOLD;
    snprintf(c->last_origin, sizeof c->last_origin, "%s", maint_origin_name(e->q.origin));
    return 0;
}

int main(void)
{
    struct conf_maint_window w;
    char err[200];
    int64_t s, e, last;

    /* parsing */
    memset(&w, 0, sizeof w);
    is_int(maint_weekly_parse("Sun 02:00-04:00", &w, err, sizeof err), 0, "Sun 02:00-04:00 parses");
    is_int(w.days, 1, "... Sunday");
    is_int(w.from_min, 120, "... from 02:00");
    is_int(w.dur_min, 120, "... for two hours");
    is_int(maint_weekly_parse("sat,SUN 23:30-01:00", &w, err, sizeof err), 0, "a day list, past midnight");
    is_int(w.days, (1 << 6) | 1, "... Saturday and Sunday");
    is_int(w.dur_min, 90, "... 90 minutes, ending the next day");
    is_int(maint_weekly_parse("Mon 00:00-24:00", &w, err, sizeof err), 0, "a whole day");
    is_int(w.dur_min, 1440, "... 24 hours");
    is_int(maint_weekly_parse("Mon 05:00-05:00", &w, err, sizeof err), 0, "equal ends: a whole day");
    is_int(w.dur_min, 1440, "... 24 hours");
    ok(maint_weekly_parse("Sunday 02:00-04:00", &w, err, sizeof err) != 0, "Sunday (long name) refused");
    ok(maint_weekly_parse("Sun 2:00-04:00", &w, err, sizeof err) != 0 && strstr(err, "HH:MM"),
       "2:00 refused: %s", err);
    ok(maint_weekly_parse("Sun 02:00-25:00", &w, err, sizeof err) != 0, "25:00 refused");
    ok(maint_weekly_parse("Sun 02:60-03:00", &w, err, sizeof err) != 0, "02:60 refused");
    ok(maint_weekly_parse("Sun 02:00-04:00x", &w, err, sizeof err) != 0, "trailing junk refused");
    ok(maint_weekly_parse("Xyz 02:00-04:00", &w, err, sizeof err) != 0 && strstr(err, "a day"),
       "unknown day refused: %s", err);
    ok(maint_weekly_parse("", &w, err, sizeof err) != 0, "empty refused");

    /* one-off */
    struct conf_maint_window o = { .start = at("2026-12-01T06:00:00Z"), .end = at("2026-12-01T08:00:00Z") };
    is_int(maint_window_at(&o, at("2026-12-01T05:59:59Z"), &s, &e), 0, "one-off: not yet");
    is_int(s, o.start, "... next start given");
    is_int(maint_window_at(&o, at("2026-12-01T06:00:00Z"), &s, &e), 1, "one-off: in at its start");
    is_int(e, o.end, "... its end");
    is_int(maint_window_at(&o, at("2026-12-01T07:59:59Z"), &s, &e), 1, "one-off: in a second before the end");
    is_int(maint_window_at(&o, at("2026-12-01T08:00:00Z"), &s, &e), 0, "one-off: out at its end");
    is_int(s + e, 0, "... and none left");

    /* weekly: 2026-11-29 is a Sunday */
    maint_weekly_parse("Sun 02:00-04:00", &w, err, sizeof err);
    is_int(maint_window_at(&w, at("2026-11-29T03:00:00Z"), &s, &e), 1, "weekly: Sunday 03:00 is in");
    is_int(s, at("2026-11-29T02:00:00Z"), "... started 02:00");
    is_int(e, at("2026-11-29T04:00:00Z"), "... ends 04:00");
    is_int(maint_window_at(&w, at("2026-11-29T04:00:00Z"), &s, &e), 0, "weekly: 04:00 is out");
    is_int(s, at("2026-12-06T02:00:00Z"), "... next one a week later");
    is_int(maint_window_at(&w, at("2026-11-30T03:00:00Z"), &s, &e), 0, "weekly: Monday 03:00 is out");
    maint_weekly_parse("Sat 23:30-01:00", &w, err, sizeof err);
    is_int(maint_window_at(&w, at("2026-11-29T00:30:00Z"), &s, &e), 1,
           "past midnight: Sunday 00:30 is in Saturday's window");
    is_int(s, at("2026-11-28T23:30:00Z"), "... which began Saturday 23:30");

    /* missed while stopped */
    maint_weekly_parse("Sun 02:00-04:00", &w, err, sizeof err);
    is_int(maint_window_missed(&w, at("2026-11-28T00:00:00Z"), at("2026-12-07T00:00:00Z"), &last),
           4 * 3600, "two Sundays missed: 4 hours");
    is_int(last, at("2026-12-06T04:00:00Z"), "... the last ended Dec 6 04:00");
    is_int(maint_window_missed(&w, at("2026-11-29T03:00:00Z"), at("2026-11-30T00:00:00Z"), &last), 0,
           "one running when the daemon was last seen is not missed (it was seen)");
    is_int(maint_window_missed(&w, at("2026-11-28T00:00:00Z"), at("2026-11-29T03:00:00Z"), &last), 0,
           "one still running at start-up is not missed (it starts as usual)");
    is_int(maint_window_missed(&o, at("2026-11-30T00:00:00Z"), at("2026-12-02T00:00:00Z"), &last),
           7200, "a one-off window missed: its 2 hours");
    is_int(maint_window_missed(&o, at("2026-12-02T00:00:00Z"), at("2026-12-01T00:00:00Z"), &last), 0,
           "an empty span: nothing");
    /* bounded: from 1970 to 2026 still ends (MAINT_CATCHUP_WEEKS) */
    ok(maint_window_missed(&w, 1, at("2026-12-01T00:00:00Z"), &last) <=
       (int64_t)MAINT_CATCHUP_WEEKS * 2 * 3600, "a long span is bounded");

    /* several windows of one domain: their union, each second once */
    struct conf_maint_window u[3];
    memset(u, 0, sizeof u);
    maint_weekly_parse("Sun 02:00-04:00", &u[0], err, sizeof err);
    maint_weekly_parse("Sun 03:00-05:00", &u[1], err, sizeof err);
    is_int(maint_windows_span(u, 2, at("2026-11-29T02:30:00Z"), &s, &e), 1,
           "overlapping weekly windows: Sunday 02:30 is in");
    is_int(s, at("2026-11-29T02:00:00Z"), "... the stretch begins at the first's start");
    is_int(e, at("2026-11-29T05:00:00Z"), "... and ends at the second's end");
    is_int(maint_windows_span(u, 2, at("2026-11-29T04:30:00Z"), &s, &e), 1,
           "in the second only: the same stretch");
    is_int(s, at("2026-11-29T02:00:00Z"), "... from the first's start");
    is_int(maint_windows_span(u, 2, at("2026-11-29T05:00:00Z"), &s, &e), 0, "05:00 is out");
    is_int(maint_windows_missed(u, 2, at("2026-11-28T00:00:00Z"), at("2026-12-07T00:00:00Z"),
                                &last), 2 * 3 * 3600,
           "two Sundays missed: their union, 6 hours (the sum would be 8)");
    is_int(last, at("2026-12-06T05:00:00Z"), "... the last ended Dec 6 05:00");
    is_int(maint_windows_missed(u, 2, at("2026-11-29T02:30:00Z"), at("2026-11-30T00:00:00Z"),
                                &last), 0, "a stretch running when last seen is not missed");
    is_int(maint_windows_missed(u, 2, at("2026-11-28T00:00:00Z"), at("2026-11-29T04:30:00Z"),
                                &last), 0, "a stretch still running at start-up is not missed");
    maint_weekly_parse("Sun 04:00-06:00", &u[1], err, sizeof err);
    is_int(maint_windows_span(u, 2, at("2026-11-29T03:00:00Z"), &s, &e), 1,
           "back to back windows ...");
    is_int(e, at("2026-11-29T06:00:00Z"), "... are one stretch, without a gap");
    u[2].start = at("2026-11-29T05:30:00Z");
    u[2].end = at("2026-11-29T09:00:00Z");
    is_int(maint_windows_span(u, 3, at("2026-11-29T02:00:00Z"), &s, &e), 1,
           "a one-off window overlapping a weekly stretch ...");
    is_int(e, at("2026-11-29T09:00:00Z"), "... makes it longer");
    is_int(maint_windows_missed(u, 3, at("2026-11-28T00:00:00Z"), at("2026-11-30T00:00:00Z"),
                                &last), 7 * 3600, "... missed: 02:00 to 09:00, 7 hours");
    maint_weekly_parse("Sun,Mon,Tue,Wed,Thu,Fri,Sat 00:00-24:00", &u[0], err, sizeof err);
    is_int(maint_windows_span(u, 1, at("2026-11-29T12:00:00Z"), &s, &e), 1,
           "every day, all day: in ...");
    ok(e - s <= (int64_t)(2 * MAINT_SPAN_ROUNDS + 1) * 86400, "... and the stretch is bounded");
    ok(maint_windows_missed(u, 1, 1, at("2026-12-01T00:00:00Z"), &last) >= 0,
       "... and so is the time missed");

    /* entries: records, a config hold, a config window without a record */
    struct conf_domain doms[2];
    struct conf c;
    memset(doms, 0, sizeof doms);
    memset(&c, 0, sizeof c);
    doms[0].name = (char *)"example.org";
    doms[0].hold = 1;
    doms[1].name = (char *)"b.test";
    doms[1].maint = &o;
    doms[1].nmaint = 1;
    o.text = (char *)"2026-12-01T06:00:00Z/2026-12-01T08:00:00Z";
    c.domains = doms;
    c.ndomains = 2;
    struct qmaint recs[2];
    memset(recs, 0, sizeof recs);
    snprintf(recs[0].domain, sizeof recs[0].domain, "c.test");
    recs[0].kind = QMAINT_HOLD;
    recs[0].origin = QMAINT_RUNTIME;
    recs[0].uid = 1000;
    snprintf(recs[1].domain, sizeof recs[1].domain, "d.test");
    recs[1].kind = QMAINT_WINDOW;
    recs[1].origin = QMAINT_RUNTIME;
    recs[1].start = at("2026-11-30T00:00:00Z");
    recs[1].until = at("2026-11-30T10:00:00Z");
    struct collect col = { 0 };
    maint_entries(recs, 2, &c, at("2026-11-30T05:00:00Z"), collect_fn, &col);
    is_int(col.n, 4, "entries: 2 records, the config hold, the scheduled window");
    is_int(col.active, 3, "... 3 active (the window of b.test is ahead)");
    is_int(col.scheduled, 1, "... 1 scheduled from the config");
    is_int(col.holds, 2, "... 2 holds (runtime and config)");
    memset(&col, 0, sizeof col);
    maint_entries(recs, 2, &c, at("2026-11-30T11:00:00Z"), collect_fn, &col);
    is_int(col.active, 2, "after its until the runtime window is no longer active");
    /* a config window with its record is listed once */
    struct qmaint r3[1];
    memset(r3, 0, sizeof r3);
    snprintf(r3[0].domain, sizeof r3[0].domain, "b.test");
    r3[0].kind = QMAINT_WINDOW;
    r3[0].origin = QMAINT_CONFIG;
    r3[0].start = o.start;
    r3[0].until = o.end;
    r3[0].uid = QMAINT_UID_NONE;
    memset(&col, 0, sizeof col);
    maint_entries(r3, 1, &c, at("2026-12-01T07:00:00Z"), collect_fn, &col);
    is_int(col.n, 2, "a running config window with its record: listed once (+ the config hold)");
    is_int(col.scheduled, 0, "... from the record");
    return done_testing();
}
