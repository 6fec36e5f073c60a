/*
 * stats.h - process-wide event counters for logs, mxkeepctl stats and the
 * Prometheus endpoint.
 *
 * Counters are plain uint64_t in one table indexed by enum stat_id; only the
 * loop thread changes or reads them (the spool writer never does), so no
 * locking.  Gauges that other modules own (open sessions, queue sizes) are
 * not here: the reader asks the owner.
 */
#ifndef MXKEEP_STATS_H
#define MXKEEP_STATS_H

#include <stdint.h>

enum stat_id {
    STAT_CONN_IN = 0,           /* inbound connections accepted */
    STAT_CONN_REFUSED,          /* refused at connect (limits) */
    STAT_ACCEPTED,              /* messages queued (250 after DATA/BDAT) */
    STAT_ACCEPTED_BYTES,
    STAT_REJ_RELAY,             /* RCPT refused: relay access denied */
    STAT_REJ_UNKNOWN_USER,      /* RCPT refused: not in the recipient list */
    STAT_REJ_SIZE,              /* message or SIZE over the limit */
    STAT_REJ_PROTOCOL,          /* syntax errors, pipelining abuse, bad sequence */
    STAT_REJ_CONTENT,           /* bare newline, header limits, loops */
    STAT_REJ_STORAGE,           /* 452/451: disk or map full, write errors */
    STAT_REJ_LIMIT,             /* too many recipients/errors, timeouts */
    STAT_DELIVERED,             /* recipients accepted by a primary */
    STAT_DEFERRED,              /* recipient attempts answered 4xx */
    STAT_BOUNCED,               /* recipients refused 5xx by a primary */
    STAT_EXPIRED,               /* recipients past their retention */
    STAT_DSN_QUEUED,            /* notices we queued */
    STAT_CONN_OUT,              /* outbound connections started */
    STAT_CONN_OUT_FAILED,       /* outbound connections that failed to greet */
    STAT_ETRN,                  /* ETRN requests answered 25x */
    STAT_ODMR_ATRN,             /* ODMR: ATRN answered 250 (role reversal) */
    STAT_ODMR_AUTH_FAILED,      /* ODMR: AUTH answered 535 (wrong secret) */
    STAT_FLUSHES,               /* flush passes completed */
    STAT_FLUSH_SECONDS,         /* total seconds spent in flush passes */
    STAT_SPOOL_INDEX_FAILURES,  /* LMDB environment failed (MDB_PANIC) */
    STAT_SPOOL_INDEX_REOPENS,   /* ... and was reopened */
    /* RCPT refusals of recipient.c (appended: the order above is the
     * mxkeepctl stats key order) */
    STAT_REJ_UNVERIFIED,        /* 450 4.1.1: callout gave no answer (yet) */
    STAT_REJ_LOOKUP,            /* 451 4.3.0: recipient table unreachable */
    STAT_REJ_THROTTLED,         /* 450 4.7.1/421: client made too many unknown recipients */
    STAT_REJ_GATED,             /* 450 4.7.0: gated domain, its primary is up */
    STAT_REJ_QUOTA,             /* 452 4.2.2: the domain's spool quota is full */
    STAT_REJ_RATE,              /* 421/450 4.7.1: a per-client rate limit */
    STAT_REJ_GREYLIST,          /* 450 4.2.0: greylisted */
    STAT_REJ_DNSBL,             /* 554 5.7.1: client listed in DNSBL zones */
    STAT_TARPIT,                /* RCPT replies delayed by the unknown-recipient tarpit */
    /* Messages put in quarantine (quarantine.h), by reason */
    STAT_QUARANTINED_EXPIRED,   /* expired, sender not authenticated: notice withheld */
    STAT_QUARANTINED_BOUNCED,   /* 5xx from the primary, sender not authenticated */
    STAT_QUARANTINED_MILTER,    /* a milter's quarantine action */
    /* Kept copies of delivered mail (keep_delivered, mxkeepctl replay) */
    STAT_KEPT,                  /* copies kept after delivery */
    STAT_KEPT_EXPIRED,          /* removed after keep_delivered */
    STAT_KEPT_DROPPED,          /* dropped first, the spool short of space */
    STAT_KEPT_REPLAYED,         /* queued again by mxkeepctl replay */
    STAT_SPF_BREAKER_OPENED,    /* SPF breaker opened: the resolver stopped answering */
    STAT_SPF_UNCHECKED_RESOLVER, /* SPF answered temperror without a query: breaker open */
    STAT_SPF_UNCHECKED_QUEUE,   /* SPF answered temperror without a query: queue full */
    STAT_COUNT_
};

void stats_add(enum stat_id s, uint64_t n);
static inline void stats_inc(enum stat_id s) { stats_add(s, 1); }
uint64_t stats_get(enum stat_id s);
/* The counter's flat key (mxkeepctl stats, the control socket's `stats`):
 * its family with the label value folded in, e.g. rejected_relay_total. */
const char *stats_name(enum stat_id s);
const char *stats_help(enum stat_id s);

/*
 * Prometheus exposition: each counter belongs to one metric family (name
 * without the mxkeep_ prefix, ending in _total) and is one series of it,
 * told apart by at most one label.  Several ids share a family when they
 * count the same thing for different reasons or outcomes, e.g.
 *   STAT_REJ_RELAY -> rejected_total{reason="relay"}
 * The family's HELP is the same for all its ids.  label_name and
 * label_value are NULL for a family of one unlabelled series.
 */
struct stats_series {
    const char *family;
    const char *family_help;
    const char *label_name;
    const char *label_value;
};
void stats_series(enum stat_id s, struct stats_series *out);
/* Process start, unix seconds. */
int64_t stats_started(void);

#endif
