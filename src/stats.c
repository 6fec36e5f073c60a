/*
 * stats.c - the counter table (see stats.h).
 *
 * Owns: one static array of counters and their names.  Never: locks, or
 * is touched from the spool writer thread.
 */
#include "config.h"
#include "stats.h"

#include <time.h>

static uint64_t stats_v[STAT_COUNT_];
static int64_t stats_t0;

static const struct {
    const char *name;
    const char *help;
} stats_meta[STAT_COUNT_] = {
    [STAT_CONN_IN] = { "smtpd_connections_total", "Inbound SMTP connections accepted" },
    [STAT_CONN_REFUSED] = { "smtpd_connections_refused_total", "Inbound connections refused at connect (limits)" },
    [STAT_ACCEPTED] = { "messages_accepted_total", "Messages queued (250 after end of data)" },
    [STAT_ACCEPTED_BYTES] = { "messages_accepted_bytes_total", "Octets of messages queued" },
    [STAT_REJ_RELAY] = { "rejected_relay_total", "Recipients refused: relay access denied" },
    [STAT_REJ_UNKNOWN_USER] = { "rejected_unknown_user_total", "Recipients refused: user unknown" },
    [STAT_REJ_SIZE] = { "rejected_size_total", "Messages refused for size" },
    [STAT_REJ_PROTOCOL] = { "rejected_protocol_total", "Commands refused: syntax, sequence, pipelining abuse" },
    [STAT_REJ_CONTENT] = { "rejected_content_total", "Messages refused: bare newlines, header limits, loops" },
    [STAT_REJ_STORAGE] = { "rejected_storage_total", "Refused for lack of storage or write errors (4xx)" },
    [STAT_REJ_LIMIT] = { "rejected_limit_total", "Refused by limits: recipients, errors, timeouts" },
    [STAT_DELIVERED] = { "recipients_delivered_total", "Recipients accepted by a primary" },
    [STAT_DEFERRED] = { "recipients_deferred_total", "Recipient attempts answered 4xx" },
    [STAT_BOUNCED] = { "recipients_bounced_total", "Recipients refused 5xx by a primary" },
    [STAT_EXPIRED] = { "recipients_expired_total", "Recipients past their retention" },
    [STAT_DSN_QUEUED] = { "dsn_queued_total", "Delivery status notifications queued" },
    [STAT_CONN_OUT] = { "smtp_connections_total", "Outbound SMTP connections started" },
    [STAT_CONN_OUT_FAILED] = { "smtp_connections_failed_total", "Outbound connections that failed before the greeting" },
    [STAT_ETRN] = { "etrn_total", "ETRN requests answered 25x" },
    [STAT_FLUSHES] = { "flushes_total", "Flush passes completed" },
    [STAT_FLUSH_SECONDS] = { "flush_seconds_total", "Seconds spent in flush passes" },
    [STAT_SPOOL_INDEX_FAILURES] = { "spool_index_failures_total", "Times the spool index (LMDB) failed and refused all work" },
    [STAT_SPOOL_INDEX_REOPENS] = { "spool_index_reopens_total", "Times the spool index was reopened after a failure" },
};

void stats_add(enum stat_id s, uint64_t n)
{
    if (stats_t0 == 0)
        stats_t0 = (int64_t)time(NULL);
    if ((unsigned)s < STAT_COUNT_)
        stats_v[s] += n;
}

uint64_t stats_get(enum stat_id s) { return (unsigned)s < STAT_COUNT_ ? stats_v[s] : 0; }
const char *stats_name(enum stat_id s) { return (unsigned)s < STAT_COUNT_ ? stats_meta[s].name : "?"; }
const char *stats_help(enum stat_id s) { return (unsigned)s < STAT_COUNT_ ? stats_meta[s].help : "?"; }

int64_t stats_started(void)
{
    if (stats_t0 == 0)
        stats_t0 = (int64_t)time(NULL);
    return stats_t0;
}
