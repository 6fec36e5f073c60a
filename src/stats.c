/*
 * stats.c - the counter table (see stats.h).
 *
 * Owns: one static array of counters, their flat names (mxkeepctl stats
 * keys) and the map from each counter to its Prometheus family and label.
 * Never: locks, or is touched from the spool writer thread.
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
    [STAT_ODMR_ATRN] = { "odmr_atrn_total", "ODMR: ATRN requests answered 250 (mail delivered on the primary's connection)" },
    [STAT_ODMR_AUTH_FAILED] = { "odmr_auth_failures_total", "ODMR: AUTH attempts refused 535 (wrong secret)" },
    [STAT_FLUSHES] = { "flushes_total", "Flush passes completed" },
    [STAT_FLUSH_SECONDS] = { "flush_seconds_total", "Seconds spent in flush passes" },
    [STAT_SPOOL_INDEX_FAILURES] = { "spool_index_failures_total", "Times the spool index (LMDB) failed and refused all work" },
    [STAT_SPOOL_INDEX_REOPENS] = { "spool_index_reopens_total", "Times the spool index was reopened after a failure" },
    [STAT_REJ_UNVERIFIED] = { "rejected_unverified_total", "Recipients refused 4xx: verification by callout failed or still running" },
    [STAT_REJ_LOOKUP] = { "rejected_lookup_total", "Recipients refused 4xx: recipient table lookup failed" },
    [STAT_REJ_THROTTLED] = { "rejected_throttled_total", "Recipients refused 4xx: client made too many unknown recipients" },
    [STAT_REJ_GATED] = { "rejected_gated_total", "Recipients refused 4xx: accept = \"when-primary-down\" and the primary is up" },
    [STAT_REJ_QUOTA] = { "rejected_quota_total", "Recipients or messages refused 452 4.2.2: the domain's spool quota is full" },
    [STAT_REJ_RATE] = { "rejected_rate_total", "Connections, messages or recipients refused 4.7.1: a per-client rate limit" },
    [STAT_REJ_GREYLIST] = { "rejected_greylist_total", "Recipients refused 450 4.2.0: greylisted" },
    [STAT_REJ_DNSBL] = { "rejected_dnsbl_total", "Messages refused 554 5.7.1: the client is listed in DNSBL zones" },
    [STAT_TARPIT] = { "tarpit_delays_total", "RCPT replies delayed by the unknown-recipient tarpit" },
    [STAT_QUARANTINED_EXPIRED] = { "quarantined_expired_total", "Messages quarantined: expired, failure notice withheld" },
    [STAT_QUARANTINED_BOUNCED] = { "quarantined_bounced_total", "Messages quarantined: refused by the primary, failure notice withheld" },
    [STAT_QUARANTINED_MILTER] = { "quarantined_milter_total", "Messages quarantined by a milter" },
    [STAT_KEPT] = { "kept_copies_kept_total", "Copies of delivered mail kept (keep_delivered)" },
    [STAT_KEPT_EXPIRED] = { "kept_copies_expired_total", "Kept copies removed after keep_delivered" },
    [STAT_KEPT_DROPPED] = { "kept_copies_dropped_total", "Kept copies dropped because the spool ran short of space" },
    [STAT_KEPT_REPLAYED] = { "kept_copies_replayed_total", "Kept copies queued again by mxkeepctl replay" },
    [STAT_SPF_BREAKER_OPENED] = { "spf_breaker_opened_total", "Times SPF stopped querying a resolver that gave no answers" },
    [STAT_SPF_UNCHECKED_RESOLVER] = { "spf_unchecked_resolver_total", "SPF checks answered temperror without a query: the resolver is failing" },
    [STAT_SPF_UNCHECKED_QUEUE] = { "spf_unchecked_queue_total", "SPF checks answered temperror without a query: too many checks waiting" },
};

/*
 * Family and label of each counter, for /metrics (Prometheus naming:
 * a counter ends in _total, units in the name, one family per thing
 * counted with a label for the reason or outcome).  The enum order and the
 * flat names above stay as they are (mxkeepctl stats keys); an id without
 * an entry here is a family of its own, named by its flat name.
 */
#define REJ_HELP "Recipients, messages or commands refused, by reason"
#define RCPT_HELP "Recipient outcomes of delivery attempts (deferred counts attempts)"
#define QUAR_HELP "Messages put in quarantine, by reason"
#define KEPT_HELP "Copies of delivered mail (keep_delivered): kept, expired, dropped, replayed"
#define SPFU_HELP "SPF checks answered temperror without a DNS query, by reason"
#define CONN_IN_HELP "Inbound SMTP connections, accepted or refused at connect (limits)"

static const struct stats_series stats_family_map[STAT_COUNT_] = {
    [STAT_CONN_IN] = { "smtpd_connections_total", CONN_IN_HELP, "result", "accepted" },
    [STAT_CONN_REFUSED] = { "smtpd_connections_total", CONN_IN_HELP, "result", "refused" },
    [STAT_REJ_RELAY] = { "rejected_total", REJ_HELP, "reason", "relay" },
    [STAT_REJ_UNKNOWN_USER] = { "rejected_total", REJ_HELP, "reason", "unknown_user" },
    [STAT_REJ_SIZE] = { "rejected_total", REJ_HELP, "reason", "size" },
    [STAT_REJ_PROTOCOL] = { "rejected_total", REJ_HELP, "reason", "protocol" },
    [STAT_REJ_CONTENT] = { "rejected_total", REJ_HELP, "reason", "content" },
    [STAT_REJ_STORAGE] = { "rejected_total", REJ_HELP, "reason", "storage" },
    [STAT_REJ_LIMIT] = { "rejected_total", REJ_HELP, "reason", "limit" },
    [STAT_REJ_UNVERIFIED] = { "rejected_total", REJ_HELP, "reason", "unverified" },
    [STAT_REJ_LOOKUP] = { "rejected_total", REJ_HELP, "reason", "lookup" },
    [STAT_REJ_THROTTLED] = { "rejected_total", REJ_HELP, "reason", "throttled" },
    [STAT_REJ_GATED] = { "rejected_total", REJ_HELP, "reason", "gated" },
    [STAT_REJ_QUOTA] = { "rejected_total", REJ_HELP, "reason", "quota" },
    [STAT_REJ_RATE] = { "rejected_total", REJ_HELP, "reason", "rate" },
    [STAT_REJ_GREYLIST] = { "rejected_total", REJ_HELP, "reason", "greylist" },
    [STAT_REJ_DNSBL] = { "rejected_total", REJ_HELP, "reason", "dnsbl" },
    [STAT_TARPIT] = { "tarpit_delays_total", "RCPT replies delayed by the unknown-recipient tarpit", NULL, NULL },
    [STAT_DELIVERED] = { "recipients_total", RCPT_HELP, "outcome", "delivered" },
    [STAT_DEFERRED] = { "recipients_total", RCPT_HELP, "outcome", "deferred" },
    [STAT_BOUNCED] = { "recipients_total", RCPT_HELP, "outcome", "bounced" },
    [STAT_EXPIRED] = { "recipients_total", RCPT_HELP, "outcome", "expired" },
    [STAT_QUARANTINED_EXPIRED] = { "quarantined_total", QUAR_HELP, "reason", "expired" },
    [STAT_QUARANTINED_BOUNCED] = { "quarantined_total", QUAR_HELP, "reason", "bounced" },
    [STAT_QUARANTINED_MILTER] = { "quarantined_total", QUAR_HELP, "reason", "milter" },
    [STAT_KEPT] = { "kept_copies_total", KEPT_HELP, "event", "kept" },
    [STAT_KEPT_EXPIRED] = { "kept_copies_total", KEPT_HELP, "event", "expired" },
    [STAT_KEPT_DROPPED] = { "kept_copies_total", KEPT_HELP, "event", "dropped" },
    [STAT_KEPT_REPLAYED] = { "kept_copies_total", KEPT_HELP, "event", "replayed" },
    [STAT_SPF_UNCHECKED_RESOLVER] = { "spf_unchecked_total", SPFU_HELP, "reason", "resolver" },
    [STAT_SPF_UNCHECKED_QUEUE] = { "spf_unchecked_total", SPFU_HELP, "reason", "queue" },
    [STAT_CONN_OUT_FAILED] = { "smtp_connection_failures_total",
                               "Outbound connections that failed before the greeting", NULL,
                               NULL },
    [STAT_ETRN] = { "etrn_started_total", "ETRN requests answered 25x (a flush started)", NULL,
                    NULL },
};

void stats_series(enum stat_id s, struct stats_series *out)
{
    if ((unsigned)s < STAT_COUNT_ && stats_family_map[s].family != NULL) {
        *out = stats_family_map[s];
        return;
    }
    out->family = stats_name(s);
    out->family_help = stats_help(s);
    out->label_name = NULL;
    out->label_value = NULL;
}

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
