/*
 * maint.h - holds and maintenance windows: runtime holds that survive a
 * restart, maintenance windows started by mxkeepctl or scheduled in the
 * config, with where each came from (config or runtime), since when and
 * by which uid.
 *
 * A domain in a maintenance window is held (no delivery, ETRN answers 458
 * as for a hold) and its retention clock and delay warnings are paused:
 * when the window ends (its --until, its scheduled end, or `mxkeepctl
 * maintenance D stop`) every pending recipient of the domain has its
 * expiry, and its delay warning while not sent, moved out by the
 * wall-clock time the message spent in the window (whether or not the
 * daemon ran), in bounded batches of short transactions, and then the
 * domain flushes by itself.  Windows of one domain that overlap count
 * their union: config windows that overlap or touch are one record (their
 * stretch), and a window still running at another's end takes it over.
 *
 * Records live in the spool index (queue_db.h, DBI "maint", struct
 * qmaint), one per (domain, kind, origin); a scheduled window gets its
 * record when it starts, so its end is known after a restart.  A clock
 * record (last seen alive) lets a start-up find scheduled windows that
 * began and ended while the daemon was down.
 *
 * Config (per domain, conf.c parses with the pure functions below):
 *   maintenance = ( { start = "2026-12-01T06:00:00Z"; end = "2026-12-01T08:00:00Z";
 *                     note = "disk swap"; },
 *                   { weekly = "Sun 02:00-04:00"; note = "patches"; } );
 * Weekly: one day or a comma list (Mon,Wed), HH:MM-HH:MM in UTC; an end at
 * or before the start runs past midnight.
 *
 * Threads: loop thread only (the runtime part); the pure functions and the
 * listing run anywhere.  The runtime state is the daemon's one instance
 * (maint_init .. maint_shutdown), like heartbeat.h's gate.
 */
#ifndef MXKEEP_MAINT_H
#define MXKEEP_MAINT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "conf.h"
#include "queue_db.h"

/* Most windows in one domain's `maintenance` list. */
#define MAINT_WINDOWS_MAX 64

/* ---- pure ---- */

/* "Sun 02:00-04:00", "Sat,Sun 23:30-01:00" into w->days/from_min/dur_min.
 * 0, or -1 with a reason. */
int maint_weekly_parse(const char *s, struct conf_maint_window *w, char *err, size_t errlen);
/* Is now inside an occurrence of w?  1 with its [*start, *end); else 0
 * with the next occurrence's bounds, or both 0 when none is left. */
int maint_window_at(const struct conf_maint_window *w, int64_t now, int64_t *start, int64_t *end);
/* The time occurrences of w that began after `from` and ended at or
 * before `to` add up to (seconds), and the end of the last one in *last
 * (0 when none).  Bounded: a weekly window is looked at for at most
 * MAINT_CATCHUP_WEEKS weeks. */
#define MAINT_CATCHUP_WEEKS 520
int64_t maint_window_missed(const struct conf_maint_window *w, int64_t from, int64_t to,
                            int64_t *last);
/* Windows of one domain, w[0..n), may overlap or touch: they hold it for
 * their union.  Is now inside one?  1 with the stretch [*start, *end) of
 * back to back or overlapping occurrences around now; else 0. */
#define MAINT_SPAN_ROUNDS 64
int maint_windows_span(const struct conf_maint_window *w, size_t n, int64_t now,
                       int64_t *start, int64_t *end);
/* maint_window_missed for all of w[0..n): the union of the stretches
 * that began after `from` and ended at or before `to`, each second once. */
int64_t maint_windows_missed(const struct conf_maint_window *w, size_t n, int64_t from,
                             int64_t to, int64_t *last);

/* ---- listings (daemon and mxkeepctl) ---- */

struct maint_entry {
    struct qmaint q;                    /* as stored (or made up for the config) */
    int active;                         /* holding the domain now */
    const char *schedule;               /* config window as written, or NULL */
};
/* Every hold and window: the stored records recs[0..n), the config's
 * holds, and each config window that has no record (its current or next
 * occurrence).  fn returns non-zero to stop. */
void maint_entries(const struct qmaint *recs, size_t n, const struct conf *c, int64_t now,
                   int (*fn)(void *arg, const struct maint_entry *e), void *arg);
/* mxkeepctl holds / maintenance list / summary (kind: 0 all, else
 * QMAINT_*): the index's records and the config's.  how: a table, one
 * JSON object {"holds":[...]}, the bare JSON array, or summary lines
 * ("held D: ...") for the active ones.  0, or -1 (index unreadable). */
enum { MAINT_LIST_TEXT, MAINT_LIST_JSON, MAINT_LIST_ARRAY, MAINT_LIST_SUMMARY };
int maint_listing(FILE *f, int how, struct qdb *db, const struct conf *c, int64_t now,
                  int kind);
const char *maint_kind_name(int kind);
/* Shared by maint.c and maint_window.c (the record list and its tests). */
struct maint_recs {
    struct qmaint *r;
    size_t n, cap;
    int oom;
};
int maint_recs_add(void *arg, const struct qmaint *q);     /* qdb_maint_each callback */
int maint_rec_active(const struct qmaint *q, int64_t now);
const struct qmaint *maint_rec_find(const struct qmaint *recs, size_t n, const char *domain,
                                    int kind, int origin);
const char *maint_origin_name(int origin);

/* ---- the daemon's runtime part ---- */
struct event_base;
struct spool;
struct delivery;

/* Read the records (before delivery_configure, which asks maint_holds),
 * start scheduled windows now due, find those missed while down.  0, or
 * -1 with a reason. */
int maint_init(struct event_base *base, struct spool *sp, const struct conf *c, char *err,
               size_t errlen);
/* After delivery_start: hold what must be held, end windows whose end
 * has passed (moving expiry), arm the timer. */
void maint_start(struct delivery *dl);
void maint_configure(const struct conf *c);     /* reload */
void maint_shutdown(void);

/* Held by a runtime hold or a maintenance window (delivery.c asks). */
int maint_holds(const char *domain);
/* Its retention clock is paused (a window running or ending): 0 when
 * not, else when to look again (deliver_expire.c). */
int64_t maint_paused_until(const char *domain, int64_t now);

/* Completion of a request, on the loop: err 0 or an errno; msg a line
 * for the reply. */
typedef void (*maint_done_fn)(void *arg, int err, const char *msg);
/* mxkeepctl hold / release: persisted, with the uid.  ENOENT: unknown
 * domain; otherwise done runs once the record is committed. */
int maint_hold(const char *domain, uint32_t uid, int hold, maint_done_fn done, void *arg);
/* mxkeepctl maintenance DOMAIN start [--until T] [--note N] / stop. */
int maint_window_start(const char *domain, int64_t until, const char *note, uint32_t uid,
                       maint_done_fn done, void *arg);
int maint_window_stop(const char *domain, uint32_t uid, maint_done_fn done, void *arg);

/* For /metrics and /status: every entry as maint_entries gives it. */
void maint_each(int (*fn)(void *arg, const struct maint_entry *e), void *arg);
/* Past and present maintenance of each domain for the /status chart:
 * calls fn for each window overlapping [from, to). */
void maint_bands(int64_t from, int64_t to,
                 void (*fn)(void *arg, const char *domain, int64_t start, int64_t end), void *arg);

#endif
