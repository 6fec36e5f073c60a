/*
 * dest_limits.h - what a primary allows, declared and learned, and how
 * many sessions we open to it (pure: no I/O, no clock, no allocation;
 * unit-tested in t/unit/t_dest_limits.c).
 *
 *   - RFC 9422 LIMITS from the EHLO reply: RCPTMAX (recipients per
 *     transaction), MAILMAX (transactions per session), RCPTDOMAINMAX
 *     (recipient domains per transaction).  Names are case-insensitive,
 *     unknown limits and malformed values are ignored (liberal), values
 *     are bounded by DL_VALUE_MAX.
 *   - Limits learned from replies, per primary host: a 452 4.5.3 / 452 /
 *     552 5.5.3 to RCPT after N accepted recipients (rcpt max N), a 421
 *     after N transactions of a session (mail max N), a 421 at the
 *     greeting while K other sessions live (connection ceiling K).  Each
 *     learned value only ever goes down; dl_host_forget drops them at the
 *     end of the flush.
 *   - An AIMD concurrency controller per destination: starts at
 *     DL_START_WINDOW and decides once per round (as many latency samples
 *     as the window, about one reply per session) on the round's
 *     smallest latency, which scheduling noise cannot inflate: grows by
 *     one while it stays near the unloaded value (the floor: the smallest
 *     seen, ageing slowly), steps back by one past DL_LATENCY_STEP x the
 *     floor (the knee: Vegas's "too many queued"), shrinks
 *     multiplicatively past DL_LATENCY_FACTOR x the floor for
 *     DL_LOADED_ROUNDS rounds in a row, on a 421, or on a run of 4xx; never above its ceiling (delivery.max_connections) and
 *     never below 1.  With adaptation off it sits at the ceiling and only
 *     421s and 4xx runs bring it down (the behaviour before adaptation).
 *
 * Owns nothing: the caller embeds the structs.  Never: reads the clock
 * (latencies are passed in), does I/O.
 */
#ifndef MXKEEP_DEST_LIMITS_H
#define MXKEEP_DEST_LIMITS_H

#include <stddef.h>

/* Largest value a LIMITS keyword or a learned limit may hold (RFC 9422
 * limit values are at most 9 digits; anything this large means "none"
 * for our purposes). */
#define DL_VALUE_MAX 100000u

/* RFC 9422 LIMITS, as declared by one EHLO reply; 0 = not declared. */
struct dl_declared {
    unsigned rcptmax;
    unsigned mailmax;
    unsigned rcptdomainmax;
};

/* Parse the parameters of a LIMITS keyword ("RCPTMAX=20 MAILMAX=100"),
 * adding what it declares to *out (a limit declared twice: the smaller).
 * Returns the number of known limits taken. */
int dl_limits_parse(const char *params, struct dl_declared *out);

/* Where an effective limit comes from. */
enum dl_source { DL_NONE = 0, DL_DECLARED, DL_LEARNED };

/* What we know of one primary host (the caller keys it by host and port). */
struct dl_host {
    struct dl_declared declared;    /* the last EHLO's LIMITS */
    unsigned rcpt_learned;          /* 0 = none */
    unsigned mail_learned;
    unsigned conn_learned;
};

/* A new EHLO reply's LIMITS (replaces what an earlier EHLO declared). */
void dl_host_declare(struct dl_host *h, const struct dl_declared *d);
/* 452 4.5.3 (or 552 5.5.3, or a bare 452/552) to RCPT after n accepted
 * recipients of one transaction.  1 when the learned limit went down. */
int dl_host_rcpt_refused(struct dl_host *h, unsigned n);
/* 421 in a session after n completed transactions.  1 when learned. */
int dl_host_mail_421(struct dl_host *h, unsigned n);
/* 421 (or any refusal) at the greeting while k other sessions of ours to
 * the host were open.  1 when learned. */
int dl_host_greeting_421(struct dl_host *h, unsigned k);
/* Effective limits (0 = none): the smaller of declared and learned. */
unsigned dl_host_rcpt_max(const struct dl_host *h, enum dl_source *src);
unsigned dl_host_mail_max(const struct dl_host *h, enum dl_source *src);
unsigned dl_host_conn_max(const struct dl_host *h, enum dl_source *src);
/* The end of the flush: forget what was learned (declared stays until
 * the next EHLO says otherwise). */
void dl_host_forget(struct dl_host *h);
const char *dl_source_name(enum dl_source s);

/* ---- AIMD concurrency controller --------------------------------------- */

#define DL_START_WINDOW     2       /* sessions to start with ("start low") */
#define DL_LATENCY_FACTOR   2.0     /* round's latency over floor x this: x DL_DECREASE_SLOW */
#define DL_LATENCY_STEP     1.3     /* ... over floor x this: one session less */
#define DL_LATENCY_GROW     1.1     /* ... up to floor x this: one session more */
#define DL_LATENCY_SLACK_MS 1.0     /* added to both thresholds: loopback jitter
                                       on a sub-millisecond floor is no load */
#define DL_FLOOR_AGE        64      /* floor drifts up by 1/64 of the gap a round */
#define DL_DECREASE_421     0.5     /* window x this on a 421 or a 4xx run */
#define DL_DECREASE_SLOW    0.7     /* window x this when the latency climbs */
#define DL_LOADED_ROUNDS    2       /* ... for this many rounds in a row */
#define DL_4XX_RUN          5       /* 4xx replies in a row that count as a run */

enum dl_event {
    DL_HOLD = 0,                    /* the window did not change */
    DL_GROW,                        /* grew (by a whole session, when rounded) */
    DL_SHRINK,                      /* shrank (multiplicatively) */
    DL_STEP                         /* one session less (past the knee) */
};

struct dl_aimd {
    int adaptive;
    unsigned ceiling;               /* delivery.max_connections */
    double window;                  /* current, 1..ceiling */
    double floor_ms;                /* unloaded latency estimate; 0 = no sample yet */
    double round_min_ms;            /* smallest latency of the round so far */
    unsigned round_n;               /* samples in the round so far */
    unsigned loaded;                /* rounds in a row past DL_LATENCY_FACTOR */
    unsigned hold;                  /* samples before a 421 may decrease again */
    unsigned run_4xx;
    unsigned long samples;
};

/* Start (or restart after the end of a pass): the window at its start. */
void dl_aimd_init(struct dl_aimd *a, unsigned ceiling, int adaptive);
/* A reload changed the ceiling or the mode. */
void dl_aimd_configure(struct dl_aimd *a, unsigned ceiling, int adaptive);
/* The window as a number of sessions, 1..ceiling. */
unsigned dl_aimd_window(const struct dl_aimd *a);
/* One reply latency sample (milliseconds, from the end-of-data command to
 * its reply) of a transaction that succeeded; busy: sessions open now
 * (the window grows only while it is used). */
enum dl_event dl_aimd_latency(struct dl_aimd *a, double ms, unsigned busy);
/* Every transaction's class: a 4xx (deferral) or not.  A run of
 * DL_4XX_RUN shrinks the window. */
enum dl_event dl_aimd_reply(struct dl_aimd *a, int deferred);
/* A 421 (at the greeting or in a session). */
enum dl_event dl_aimd_421(struct dl_aimd *a);
/* Clamp to a learned connection ceiling (0 = none). */
enum dl_event dl_aimd_cap(struct dl_aimd *a, unsigned cap);

#endif
