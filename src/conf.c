/*
 * conf.c - load mxkeepd's libconfig file into one typed struct conf.
 *
 * What it does: one static table per group of settings gives each key its
 * kind (string, path, duration, size, ...), default, bounds and offset in
 * the struct it fills.  conf_load() applies every default from the tables
 * first (like memcached's settings_init), then walks the file: every key
 * found must be in the table of its group, so a misspelt key is an error,
 * never a silently ignored line.  Cross-field rules (tls needs both files,
 * probe_min <= probe_max, ...) run after their group is read.
 *
 * Owns: the struct conf it returns and every string and array in it; the
 * libconfig tree lives only for the duration of conf_load().
 *
 * Never: logs, exits or keeps global state.  A bad file yields NULL and
 * one line "file:line: what is wrong" for the caller (main exits 78, a
 * reload keeps the old conf).  The value parsers at the bottom are pure.
 *
 * Security: the file is trusted (root-owned) but every number is bounded,
 * so a typo cannot give a zero timeout or a size whose arithmetic wraps;
 * the parsers check for overflow before multiplying.  Relative paths are
 * made absolute at load time so the later chdir of a daemon changes
 * nothing.  Files named here (recipient lists, TLS material) are only
 * checked for readability (access R_OK, as root, before privileges are
 * dropped); reading them is policy.c's and tls.c's job.  Values echoed in
 * error messages are stripped of control characters so they stay one line.
 *
 * libconfig 1.5 note: a plain integer literal above 2^31-1 wraps silently
 * inside libconfig before we see it; large sizes must be written as size
 * strings ("4G") or with libconfig's L suffix.  The sample config says so.
 */
#include "config.h"
#include "conf.h"
#include "milter.h"
#include "util.h"
#include "maint.h"
#include "queue_db.h"
#include "timearg.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <libpq-fe.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- named constants ---------------------------------------------------- */

#define SECOND                  1L
#define MINUTE                  (60 * SECOND)
#define HOUR                    (60 * MINUTE)
#define DAY                     (24 * HOUR)
#define KIB                     1024L
#define MIB                     (1024 * KIB)
#define GIB                     (1024 * MIB)

#define SMTP_DEFAULT_PORT       25
#define PORT_MIN                1
#define PORT_MAX                65535
#define METRICS_DEFAULT_PORT    9125
#define RFC5321_LINE_MIN        512     /* RFC 5321 4.5.3.1.4 command line */
#define LINE_LENGTH_MAX         65536
#define TIMEOUT_MAX             DAY     /* longer than this is a typo */

#define HOSTNAME_MAX            253     /* RFC 1035 presentation form */
#define LABEL_MAX               63
#define SHA256_HEX_LEN          64
#define FINGERPRINT_PREFIX      "sha256:"
#define CIDR_TEXT_MAX           (INET6_ADDRSTRLEN + 4)  /* addr + "/128" */
#define V4_BITS                 32
#define V6_BITS                 128
#define V4MAPPED_OFFSET         12      /* ::ffff:a.b.c.d keeps a.b.c.d here */

/* ---- the loader --------------------------------------------------------- */

struct conf_loader {
    const char *path;           /* file name when libconfig gives none */
    char *err;
    size_t errlen;
    char *cwd;                  /* for relative paths, fetched on first use */
    struct conf *c;
};

enum conf_kind {
    CK_STRING,      /* any non-empty string */
    CK_PATH,        /* made absolute */
    CK_RFILE,       /* made absolute, must be readable now */
    CK_RFILE_ROOT,  /* made absolute, read by the daemon only at start, as
                       root: must exist; unreadable only when we are not
                       root (a reload after the drop, mxkeepctl), which
                       cannot tell and need not */
    CK_HOSTNAME,    /* validated, lower-cased, trailing dot dropped */
    CK_ADDRESS,     /* numeric IPv4 or IPv6 */
    CK_INT,         /* long, plain integer */
    CK_DURATION,    /* long seconds: integer or "30s" "5m" "2h" "7d" */
    CK_SIZE,        /* long octets: integer or "10k" "50M" "1G" */
    CK_PORT,        /* int */
    CK_BOOL,        /* int 0/1 */
    CK_ENUM,        /* int: index into names */
    CK_GROUP,       /* sub-table at base + off; hook, if any, checks after */
    CK_CUSTOM,      /* hook parses the setting itself */
};

#define CF_REQUIRED 1u

typedef int (*conf_hook)(struct conf_loader *L, const config_setting_t *s, void *base);

struct conf_setting {
    const char *name;
    enum conf_kind kind;
    size_t off;
    long def;
    long min, max;
    unsigned flags;
    const char *const *names;           /* CK_ENUM */
    const struct conf_setting *sub;     /* CK_GROUP */
    conf_hook hook;
};

_Static_assert(sizeof(enum bare_newline) == sizeof(int), "enum stored as int");
_Static_assert(sizeof(enum tls_policy) == sizeof(int), "enum stored as int");
_Static_assert(TLS_POLICY_NONE == 0 && TLS_POLICY_MAY == 1 && TLS_POLICY_ENCRYPT == 2 &&
               TLS_POLICY_VERIFY == 3, "tls_names follows enum tls_policy");
_Static_assert(BARE_NL_NORMALIZE == 0 && BARE_NL_REJECT == 1,
               "bare_newline_names follows enum bare_newline");

static const char *const bare_newline_names[] = { "normalize", "reject", NULL };
static const char *const tls_names[] = { "none", "may", "encrypt", "verify", NULL };
static const char *const verify_names[] = { "off", "callout", NULL };
static const char *const unverified_names[] = { "accept", "tempfail", NULL };
static const char *const accept_names[] = { "always", "when-primary-down", NULL };
_Static_assert(sizeof(enum accept_mode) == sizeof(int), "enum stored as int");
_Static_assert(ACCEPT_ALWAYS == 0 && ACCEPT_WHEN_PRIMARY_DOWN == 1,
               "accept_names follows enum accept_mode");
static const char *const bounce_names[] = { "always", "authenticated", NULL };
static const char *const odmr_tls_names[] = { "implicit", "starttls", NULL };
_Static_assert(sizeof(enum bounce_policy) == sizeof(int), "enum stored as int");
_Static_assert(BOUNCE_ALWAYS == 0 && BOUNCE_AUTHENTICATED == 1,
               "bounce_names follows enum bounce_policy");
_Static_assert(sizeof(enum verify_mode) == sizeof(int), "enum stored as int");
_Static_assert(sizeof(enum unverified_policy) == sizeof(int), "enum stored as int");
_Static_assert(VERIFY_OFF == 0 && VERIFY_CALLOUT == 1, "verify_names follows enum verify_mode");
_Static_assert(UNVERIFIED_ACCEPT == 0 && UNVERIFIED_TEMPFAIL == 1,
               "unverified_names follows enum unverified_policy");

static int conf_aliases_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_listen_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_resolver_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_etrn_allow_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_domains_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_fingerprint_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_maintenance_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_recipients_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_tls_check(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_limits_check(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_delivery_check(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_verify_check(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_control_check(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_pgsql_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_domains_from_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_cluster_check(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_milters_top(struct conf_loader *L, const config_setting_t *s, void *base);
static void conf_milters_release(struct conf_milters *m);
static int conf_milters_dom(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_allow_clients_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_dnsbl_zones_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_odmr_listen_parse(struct conf_loader *L, const config_setting_t *s, void *base);
static int conf_odmr_secret_parse(struct conf_loader *L, const config_setting_t *s, void *base);

#define LIM(f) offsetof(struct conf_limits, f)
static const struct conf_setting limits_table[] = {
    { "message_size",    CK_SIZE,     LIM(message_size),   50 * MIB, KIB, 2 * GIB, 0, 0, 0, 0 },
    { "recipients",      CK_INT,      LIM(recipients),     1000, 1, 100000, 0, 0, 0, 0 },
    { "connections",     CK_INT,      LIM(connections),    1000, 1, 1000000, 0, 0, 0, 0 },
    { "per_client",      CK_INT,      LIM(per_client),     50, 1, 1000000, 0, 0, 0, 0 },
    { "command_timeout", CK_DURATION, LIM(command_timeout), 5 * MINUTE, SECOND, TIMEOUT_MAX, 0, 0, 0, 0 },
    { "data_timeout",    CK_DURATION, LIM(data_timeout),   10 * MINUTE, SECOND, TIMEOUT_MAX, 0, 0, 0, 0 },
    { "line_length",     CK_INT,      LIM(line_length),    RFC5321_LINE_MIN, RFC5321_LINE_MIN, LINE_LENGTH_MAX, 0, 0, 0, 0 },
    { "header_size",     CK_SIZE,     LIM(header_size),    100 * KIB, KIB, 64 * MIB, 0, 0, 0, 0 },
    { "header_lines",    CK_INT,      LIM(header_lines),   1000, 1, 100000, 0, 0, 0, 0 },
    { "received_max",    CK_INT,      LIM(received_max),   100, 1, 1000, 0, 0, 0, 0 },
    { "bad_commands",    CK_INT,      LIM(bad_commands),   10, 1, 1000, 0, 0, 0, 0 },
    /* NOOP, RSET, VRFY, HELP and the like before 421 (Postfix: junk_command_limit). */
    { "junk_commands",   CK_INT,      LIM(junk_commands),  100, 1, 100000, 0, 0, 0, 0 },
    /* Free spool space kept beyond an announced SIZE, so commits in flight
     * and the index can still grow; below it MAIL gets 452 4.3.1. */
    { "disk_reserve",    CK_SIZE,     LIM(disk_reserve),   4 * MIB, 0, 1024 * GIB, 0, 0, 0, 0 },
    /* Kept copies (keep_delivered) are dropped, oldest first, while free
     * space is below disk_reserve + keep_reserve: they go before mail does. */
    { "keep_reserve",    CK_SIZE,     LIM(keep_reserve),   64 * MIB, 0, 1024 * GIB, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef LIM

#define DLV(f) offsetof(struct conf_delivery, f)
static const struct conf_setting delivery_table[] = {
    { "probe_min",        CK_DURATION, DLV(probe_min),        30 * SECOND, SECOND, DAY, 0, 0, 0, 0 },
    { "probe_max",        CK_DURATION, DLV(probe_max),        15 * MINUTE, SECOND, 7 * DAY, 0, 0, 0, 0 },
    /* The ceiling of the sessions per destination; with `adaptive` the
     * window starts at 2 and grows while the primary's reply latency stays
     * near its unloaded value (dest_limits.h), so the ceiling can sit
     * higher than a fixed count could (bench/drain). */
    { "max_connections",  CK_INT,      DLV(max_connections),  16, 1, 1000, 0, 0, 0, 0 },
    { "adaptive",         CK_BOOL,     DLV(adaptive),         1, 0, 1, 0, 0, 0, 0 },
    { "max_rate",         CK_INT,      DLV(max_rate),         0, 0, 1000000, 0, 0, 0, 0 },
    { "connect_timeout",  CK_DURATION, DLV(connect_timeout),  30 * SECOND, SECOND, TIMEOUT_MAX, 0, 0, 0, 0 },
    { "greeting_timeout", CK_DURATION, DLV(greeting_timeout), 5 * MINUTE, SECOND, TIMEOUT_MAX, 0, 0, 0, 0 },
    { "command_timeout",  CK_DURATION, DLV(command_timeout),  5 * MINUTE, SECOND, TIMEOUT_MAX, 0, 0, 0, 0 },
    { "data_timeout",     CK_DURATION, DLV(data_timeout),     10 * MINUTE, SECOND, TIMEOUT_MAX, 0, 0, 0, 0 },
    { "delay_warning",    CK_DURATION, DLV(delay_warning),    0, 0, 365 * DAY, 0, 0, 0, 0 },
    { "bounce_retention", CK_DURATION, DLV(bounce_retention), 5 * DAY, HOUR, 365 * DAY, 0, 0, 0, 0 },
    { "messages_per_connection", CK_INT, DLV(messages_per_connection), 1000, 1, 1000000, 0, 0, 0, 0 },
    /* Port for MX-routed destinations (bounces, domains without a
     * primary).  25 in production; tests point it at a loopback sink. */
    { "mx_port", CK_INT, DLV(mx_port), 25, 1, 65535, 0, 0, 0, 0 },
    /* Gated domains (accept = "when-primary-down", heartbeat.h): how often
     * their primaries are checked, how long each step of a check may take,
     * and how old the last answer may be before the gate opens (stale). */
    { "heartbeat",         CK_DURATION, DLV(heartbeat),         20 * SECOND, SECOND, HOUR, 0, 0, 0, 0 },
    { "heartbeat_timeout", CK_DURATION, DLV(heartbeat_timeout), 10 * SECOND, SECOND, 5 * MINUTE, 0, 0, 0, 0 },
    { "heartbeat_stale",   CK_DURATION, DLV(heartbeat_stale),   MINUTE, SECOND, DAY, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef DLV

/* cluster = { node = "mx2a"; pgsql = "main"; status_interval = "5s"; } */
#define CLU(f) offsetof(struct conf_cluster, f)
static const struct conf_setting cluster_table[] = {
    { "node",            CK_STRING,   CLU(node),            0, 0, 0, 0, 0, 0, 0 },
    { "pgsql",           CK_STRING,   CLU(pgsql),           0, 0, 0, CF_REQUIRED, 0, 0, 0 },
    /* How often each node upserts its node_status rows (and reads the
     * others' counts for ETRN): the fleet's view is this fresh. */
    { "status_interval", CK_DURATION, CLU(status_interval), 5 * SECOND, SECOND, HOUR, 0, 0, 0, 0 },
    /* A node with no status for this many intervals is shown stale and its
     * counts leave the fleet's ETRN total. */
    { "stale_intervals", CK_INT,      CLU(stale_intervals), 3, 2, 100, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef CLU

/* Per-client limits, off (0) by default: a real sender falling back to
 * the backup (Postfix at its default concurrency of 20, one message per
 * connection) delivers thousands of messages a minute from one address
 * (t/smtp/14-per-client: 10,000 in a few seconds), so any count that
 * never bites it stops no flood either.  Set them for the traffic a site
 * sees; allow_clients exempts the primary and partners.  The tarpit is on:
 * it only slows clients that guess recipients. */
#define RTL(f) offsetof(struct conf_ratelimit, f)
static const struct conf_setting ratelimit_table[] = {
    { "window",          CK_DURATION, RTL(window),          MINUTE, SECOND, DAY, 0, 0, 0, 0 },
    { "connections",     CK_INT,      RTL(connections),       0, 0, 100000000, 0, 0, 0, 0 },
    { "net_connections", CK_INT,      RTL(net_connections),   0, 0, 100000000, 0, 0, 0, 0 },
    { "messages",        CK_INT,      RTL(messages),          0, 0, 100000000, 0, 0, 0, 0 },
    { "net_messages",    CK_INT,      RTL(net_messages),      0, 0, 100000000, 0, 0, 0, 0 },
    { "recipients",      CK_INT,      RTL(recipients),        0, 0, 100000000, 0, 0, 0, 0 },
    { "net_recipients",  CK_INT,      RTL(net_recipients),    0, 0, 100000000, 0, 0, 0, 0 },
    { "ipv4_prefix",     CK_INT,      RTL(ipv4_prefix),     24, 8, 32, 0, 0, 0, 0 },
    { "ipv6_prefix",     CK_INT,      RTL(ipv6_prefix),     64, 16, 128, 0, 0, 0, 0 },
    { "clients",         CK_INT,      RTL(clients),         100000, 16, 10000000, 0, 0, 0, 0 },
    /* Unknown-recipient tarpit: after this many 5xx RCPT replies in a
     * session each further one waits tarpit_delay, doubling up to
     * tarpit_max (0 = no tarpit). */
    { "tarpit_after",    CK_INT,      RTL(tarpit_after),    3, 0, 100000, 0, 0, 0, 0 },
    { "tarpit_delay",    CK_DURATION, RTL(tarpit_delay),    SECOND, SECOND, MINUTE, 0, 0, 0, 0 },
    { "tarpit_max",      CK_DURATION, RTL(tarpit_max),      10 * SECOND, SECOND, 5 * MINUTE, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef RTL

/* Postgrey's defaults: 5 min delay, 36 h to retry (its --retry-window is
 * 2 d; 36 h per our issue), 36 d to remember a passed triplet (--max-age
 * 35 d). */
#define GRY(f) offsetof(struct conf_greylist, f)
static const struct conf_setting greylist_table[] = {
    { "delay",           CK_DURATION, GRY(delay),           5 * MINUTE, SECOND, DAY, 0, 0, 0, 0 },
    { "retry_window",    CK_DURATION, GRY(retry_window),    36 * HOUR, SECOND, 30 * DAY, 0, 0, 0, 0 },
    { "pass_expire",     CK_DURATION, GRY(pass_expire),     36 * DAY, SECOND, 365 * DAY, 0, 0, 0, 0 },
    { "sweep",           CK_DURATION, GRY(sweep),           HOUR, SECOND, DAY, 0, 0, 0, 0 },
    { "map_size",        CK_SIZE,     GRY(map_size),        64 * MIB, MIB, 1024 * GIB, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef GRY

/* dnsbl = { zones = ( { zone = "zen.example"; weight = 2; reply = "..."; } );
 *           threshold = 1; } */
#define DZN(f) offsetof(struct conf_dnsbl_zone, f)
static const struct conf_setting dnsbl_zone_table[] = {
    { "zone",   CK_HOSTNAME, DZN(zone),   0, 0, 0, CF_REQUIRED, 0, 0, 0 },
    { "weight", CK_INT,      DZN(weight), 1, -1000, 1000, 0, 0, 0, 0 },
    { "reply",  CK_STRING,   DZN(reply),  0, 0, 0, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef DZN
#define DBL(f) offsetof(struct conf_dnsbl, f)
static const struct conf_setting dnsbl_table[] = {
    { "zones",      CK_CUSTOM,   0,               0, 0, 0, 0, 0, 0, conf_dnsbl_zones_parse },
    { "threshold",  CK_INT,      DBL(threshold),  1, 1, 100000, 0, 0, 0, 0 },
    { "timeout",    CK_DURATION, DBL(timeout),    5 * SECOND, SECOND, MINUTE, 0, 0, 0, 0 },
    { "cache_ttl",  CK_DURATION, DBL(cache_ttl),  5 * MINUTE, 0, DAY, 0, 0, 0, 0 },
    { "cache_size", CK_INT,      DBL(cache_size), 10000, 16, 10000000, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef DBL
/* Postfix's address_verify_* defaults: positive 31d/7d, negative 3d/3h. */
#define VRF(f) offsetof(struct conf_verify, f)
static const struct conf_setting verify_table[] = {
    { "positive_expire",  CK_DURATION, VRF(positive_expire),  31 * DAY, MINUTE, 365 * DAY, 0, 0, 0, 0 },
    { "positive_refresh", CK_DURATION, VRF(positive_refresh), 7 * DAY, SECOND, 365 * DAY, 0, 0, 0, 0 },
    { "negative_expire",  CK_DURATION, VRF(negative_expire),  3 * DAY, MINUTE, 365 * DAY, 0, 0, 0, 0 },
    { "negative_refresh", CK_DURATION, VRF(negative_refresh), 3 * HOUR, SECOND, 365 * DAY, 0, 0, 0, 0 },
    { "reply_wait",       CK_DURATION, VRF(reply_wait),       10 * SECOND, SECOND, 10 * MINUTE, 0, 0, 0, 0 },
    { "probe_timeout",    CK_DURATION, VRF(probe_timeout),    30 * SECOND, SECOND, TIMEOUT_MAX, 0, 0, 0, 0 },
    { "sessions",         CK_INT,      VRF(sessions),         2, 1, 100, 0, 0, 0, 0 },
    /* Kept under Postfix's smtpd_soft_error_limit (10): a refused probe is
     * an error to the primary, and past that limit it slows every reply. */
    { "session_probes",   CK_INT,      VRF(session_probes),   8, 1, 10000, 0, 0, 0, 0 },
    { "rate",             CK_INT,      VRF(rate),             10, 1, 100000, 0, 0, 0, 0 },
    { "unknown_limit",    CK_INT,      VRF(unknown_limit),    10, 1, 100000, 0, 0, 0, 0 },
    { "unknown_penalty",  CK_DURATION, VRF(unknown_penalty),  10 * MINUTE, SECOND, DAY, 0, 0, 0, 0 },
    /* A primary that refused a connection answers UNKNOWN at once for this
     * long, so an outage does not make every RCPT wait a connect timeout. */
    { "unreachable",      CK_DURATION, VRF(unreachable),      30 * SECOND, SECOND, DAY, 0, 0, 0, 0 },
    /* Client addresses remembered for the throttle; the oldest is evicted. */
    { "clients",          CK_INT,      VRF(clients),          10000, 16, 10000000, 0, 0, 0, 0 },
    { "map_size",         CK_SIZE,     VRF(map_size),         64 * MIB, MIB, 1024 * GIB, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef VRF

#define LST(f) offsetof(struct conf_listen, f)
static const struct conf_setting listen_table[] = {
    { "address", CK_ADDRESS, LST(address), 0, 0, 0, CF_REQUIRED, 0, 0, 0 },
    { "port",    CK_PORT,    LST(port),    SMTP_DEFAULT_PORT, PORT_MIN, PORT_MAX, CF_REQUIRED, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef LST

#define DOM(f) offsetof(struct conf_domain, f)
static const struct conf_setting domain_table[] = {
    { "name",            CK_HOSTNAME, DOM(name),       0, 0, 0, CF_REQUIRED, 0, 0, 0 },
    { "primary",         CK_STRING,   DOM(primary),    0, 0, 0, 0, 0, 0, 0 },
    { "retention",       CK_DURATION, DOM(retention),  7 * DAY, HOUR, 365 * DAY, 0, 0, 0, 0 },
    { "recipients",      CK_CUSTOM,   0,               0, 0, 0, 0, 0, 0, conf_recipients_parse },
    { "verify",          CK_ENUM,     DOM(verify),     VERIFY_OFF, 0, 0, 0, verify_names, 0, 0 },
    { "unverified",      CK_ENUM,     DOM(unverified), UNVERIFIED_ACCEPT, 0, 0, 0, unverified_names, 0, 0 },
    { "accept",          CK_ENUM,     DOM(accept),     ACCEPT_ALWAYS, 0, 0, 0, accept_names, 0, 0 },
    { "tls",             CK_ENUM,     DOM(tls),        TLS_POLICY_MAY, 0, 0, 0, tls_names, 0, 0 },
    { "tls_ca",          CK_RFILE,    DOM(tls_ca),     0, 0, 0, 0, 0, 0, 0 },
    { "tls_fingerprint", CK_CUSTOM,   0,               0, 0, 0, 0, 0, 0, conf_fingerprint_parse },
    { "hold",            CK_BOOL,     DOM(hold),       0, 0, 1, 0, 0, 0, 0 },
    { "milters",         CK_CUSTOM,   0,               0, 0, 0, 0, 0, 0, conf_milters_dom },
    /* Quotas on what this domain may hold in the spool (0 = none). */
    { "max_messages",    CK_INT,      DOM(max_messages), 0, 0, 1000000000, 0, 0, 0, 0 },
    { "max_bytes",       CK_SIZE,     DOM(max_bytes),  0, 0, LONG_MAX, 0, 0, 0, 0 },
    { "greylist",        CK_BOOL,     DOM(greylist),   0, 0, 1, 0, 0, 0, 0 },
    { "bounce",          CK_ENUM,     DOM(bounce),     BOUNCE_ALWAYS, 0, 0, 0, bounce_names, 0, 0 },
    /* ODMR (RFC 2645): never connected to; the primary comes and ATRNs. */
    { "odmr",            CK_BOOL,     DOM(odmr),       0, 0, 1, 0, 0, 0, 0 },
    { "odmr_secret",     CK_CUSTOM,   0,               0, 0, 0, 0, 0, 0, conf_odmr_secret_parse },
    /* A copy of delivered mail kept this long for `mxkeepctl replay` (0: none). */
    { "keep_delivered",  CK_DURATION, DOM(keep_delivered), 0, 0, 365 * DAY, 0, 0, 0, 0 },
    /* Scheduled windows: ( { start = "ISO"; end = "ISO"; note = ".."; },
     * { weekly = "Sun 02:00-04:00"; note = ".."; } ) (maint.h) */
    { "maintenance",     CK_CUSTOM,   0,               0, 0, 0, 0, 0, 0, conf_maintenance_parse },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef DOM

/* The `odmr` group (odmr.h).  A listener is bound as root before the
 * privilege drop, like the SMTP ones; AUTH failures cost a delay that
 * doubles per failure of the client address (a tarpit). */
#define ODMR_DEFAULT_PORT 366       /* RFC 2645 */
#define ODL(f) offsetof(struct conf_odmr_listen, f)
static const struct conf_setting odmr_listen_table[] = {
    { "address", CK_ADDRESS, ODL(address), 0, 0, 0, CF_REQUIRED, 0, 0, 0 },
    { "port",    CK_PORT,    ODL(port),    ODMR_DEFAULT_PORT, PORT_MIN, PORT_MAX, 0, 0, 0, 0 },
    { "tls",     CK_ENUM,    ODL(tls),     ODMR_TLS_IMPLICIT, 0, 0, 0, odmr_tls_names, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef ODL
#define ODM(f) offsetof(struct conf_odmr, f)
static const struct conf_setting odmr_table[] = {
    { "listen",         CK_CUSTOM,   0,                   0, 0, 0, 0, 0, 0, conf_odmr_listen_parse },
    { "max_sessions",   CK_INT,      ODM(max_sessions),   16, 1, 10000, 0, 0, 0, 0 },
    { "auth_attempts",  CK_INT,      ODM(auth_attempts),  3, 1, 20, 0, 0, 0, 0 },
    { "auth_delay",     CK_DURATION, ODM(auth_delay),     2 * SECOND, 0, MINUTE, 0, 0, 0, 0 },
    { "auth_delay_max", CK_DURATION, ODM(auth_delay_max), MINUTE, 0, HOUR, 0, 0, 0, 0 },
    { "auth_window",    CK_DURATION, ODM(auth_window),    15 * MINUTE, SECOND, DAY, 0, 0, 0, 0 },
    { "clients",        CK_INT,      ODM(clients),        1024, 16, 1000000, 0, 0, 0, 0 },
    { "login_timeout",  CK_DURATION, ODM(login_timeout),  2 * MINUTE, SECOND, HOUR, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef ODM

/* One `pgsql` entry.  The cache keeps answers for cache_ttl (found) and
 * cache_negative_ttl (not found), so a database outage is ridden out on
 * what was looked up lately; query_timeout bounds how long an RCPT may
 * wait on a hung server before it is answered 451 4.3.0. */
#define PGS(f) offsetof(struct conf_pgsql, f)
static const struct conf_setting pgsql_table[] = {
    { "name",               CK_STRING,   PGS(name),               0, 0, 0, CF_REQUIRED, 0, 0, 0 },
    { "conninfo",           CK_STRING,   PGS(conninfo),           0, 0, 0, CF_REQUIRED, 0, 0, 0 },
    { "recipient_query",    CK_STRING,   PGS(recipient_query),    0, 0, 0, 0, 0, 0, 0 },
    { "domain_query",       CK_STRING,   PGS(domain_query),       0, 0, 0, 0, 0, 0, 0 },
    { "cache_ttl",          CK_DURATION, PGS(cache_ttl),          5 * MINUTE, 0, DAY, 0, 0, 0, 0 },
    { "cache_negative_ttl", CK_DURATION, PGS(cache_negative_ttl), MINUTE, 0, DAY, 0, 0, 0, 0 },
    { "cache_size",         CK_INT,      PGS(cache_size),         100000, 0, 10000000, 0, 0, 0, 0 },
    { "reread",             CK_DURATION, PGS(reread),             5 * MINUTE, SECOND, DAY, 0, 0, 0, 0 },
    { "connect_timeout",    CK_DURATION, PGS(connect_timeout),    5 * SECOND, SECOND, 5 * MINUTE, 0, 0, 0, 0 },
    { "query_timeout",      CK_DURATION, PGS(query_timeout),      5 * SECOND, SECOND, 5 * MINUTE, 0, 0, 0, 0 },
    { "retry_max",          CK_DURATION, PGS(retry_max),          30 * SECOND, SECOND, HOUR, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef PGS

/* The default schema (doc/schema.sql): addresses and catch-alls are stored
 * lower case; $1 is "local@domain", $2 "@domain" (args 's', 'c'). */
#define PGSQL_DEFAULT_RECIPIENT_SQL \
    "SELECT 1 FROM recipients WHERE address = $1 OR address = $2 LIMIT 1"
#define PGSQL_DEFAULT_RECIPIENT_ARGS "sc"
#define PGSQL_DEFAULT_DOMAIN_SQL "SELECT * FROM domains"
#define PGSQL_NAME_MAX 64

/* SPF and DKIM workers (spf.c, dkim.c).  Neither delays the 250: a check
 * not finished at the commit is recorded after it, and delivery waits.
 * timeout: DNS time per query try (0 counts as 1 s).  queue: checks
 * waiting for a worker, beyond which SPF answers temperror at once (a
 * DKIM job is delivered unverified): a flood cannot grow memory.
 * spf.breaker: SPF checks in a row that got no DNS answer at all before
 * SPF stops querying (temperror at once), with one trial check every
 * breaker_retry until the resolver answers. */
#define AUTH(f) offsetof(struct conf_auth, f)
static const struct conf_setting spf_table[] = {
    { "timeout", CK_DURATION, AUTH(timeout), 3 * SECOND, 0, MINUTE, 0, 0, 0, 0 },
    { "threads", CK_INT,      AUTH(threads), 4, 1, 64, 0, 0, 0, 0 },
    { "queue",   CK_INT,      AUTH(queue),   512, 1, 100000, 0, 0, 0, 0 },
    { "breaker", CK_INT,      AUTH(breaker), 5, 1, 1000, 0, 0, 0, 0 },
    { "breaker_retry", CK_DURATION, AUTH(breaker_retry), 10 * SECOND, SECOND, HOUR, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
static const struct conf_setting dkim_table[] = {
    { "timeout", CK_DURATION, AUTH(timeout), 5 * SECOND, SECOND, MINUTE, 0, 0, 0, 0 },
    { "threads", CK_INT,      AUTH(threads), 2, 1, 64, 0, 0, 0, 0 },
    { "queue",   CK_INT,      AUTH(queue),   4096, 1, 100000, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef AUTH

/* Sub-groups whose fields live directly in struct conf use base = conf. */
#define CNF(f) offsetof(struct conf, f)
static const struct conf_setting etrn_table[] = {
    { "allow", CK_CUSTOM, 0, 0, 0, 0, 0, 0, 0, conf_etrn_allow_parse },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};

static const struct conf_setting tls_table[] = {
    { "certificate", CK_RFILE_ROOT, CNF(tls_certificate), 0, 0, 0, 0, 0, 0, 0 },
    { "key",         CK_RFILE_ROOT, CNF(tls_key),         0, 0, 0, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};

static const struct conf_setting control_table[] = {
    { "socket", CK_PATH,   CNF(control_socket), 0, 0, 0, 0, 0, 0, 0 },
    { "group",  CK_STRING, CNF(control_group),  0, 0, 0, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};

static const struct conf_setting metrics_table[] = {
    { "address", CK_ADDRESS, CNF(metrics_address), 0, 0, 0, CF_REQUIRED, 0, 0, 0 },
    { "port",    CK_PORT,    CNF(metrics_port),    METRICS_DEFAULT_PORT, PORT_MIN, PORT_MAX, 0, 0, 0, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};

static const struct conf_setting top_table[] = {
    { "hostname",      CK_HOSTNAME, CNF(hostname),      0, 0, 0, 0, 0, 0, 0 },
    { "aliases",       CK_CUSTOM,   0,                  0, 0, 0, 0, 0, 0, conf_aliases_parse },
    { "bare_newline",  CK_ENUM,     CNF(bare_newline),  BARE_NL_NORMALIZE, 0, 0, 0, bare_newline_names, 0, 0 },
    { "listen",        CK_CUSTOM,   0,                  0, 0, 0, CF_REQUIRED, 0, 0, conf_listen_parse },
    { "spool",         CK_PATH,     CNF(spool),         0, 0, 0, CF_REQUIRED, 0, 0, 0 },
    { "user",          CK_STRING,   CNF(user),          0, 0, 0, 0, 0, 0, 0 },
    { "group",         CK_STRING,   CNF(group),         0, 0, 0, 0, 0, 0, 0 },
    { "resolver",      CK_CUSTOM,   0,                  0, 0, 0, 0, 0, 0, conf_resolver_parse },
    { "authserv_id",   CK_HOSTNAME, CNF(authserv_id),   0, 0, 0, 0, 0, 0, 0 },
    { "spf",           CK_GROUP,    CNF(spf),           0, 0, 0, 0, 0, spf_table, 0 },
    { "dkim",          CK_GROUP,    CNF(dkim),          0, 0, 0, 0, 0, dkim_table, 0 },
    { "etrn",          CK_GROUP,    0,                  0, 0, 0, 0, 0, etrn_table, 0 },
    { "tls",           CK_GROUP,    0,                  0, 0, 0, 0, 0, tls_table, conf_tls_check },
    { "limits",        CK_GROUP,    CNF(limits),        0, 0, 0, 0, 0, limits_table, conf_limits_check },
    { "delivery",      CK_GROUP,    CNF(delivery),      0, 0, 0, 0, 0, delivery_table, conf_delivery_check },
    { "verify",        CK_GROUP,    CNF(verify),        0, 0, 0, 0, 0, verify_table, conf_verify_check },
    { "domains",       CK_CUSTOM,   0,                  0, 0, 0, 0, 0, 0, conf_domains_parse },
    { "control",       CK_GROUP,    0,                  0, 0, 0, 0, 0, control_table, conf_control_check },
    { "metrics",       CK_GROUP,    0,                  0, 0, 0, 0, 0, metrics_table, 0 },
    { "pid_file",      CK_PATH,     CNF(pid_file),      0, 0, 0, 0, 0, 0, 0 },
    { "lmdb_map_size", CK_SIZE,     CNF(lmdb_map_size), GIB, MIB, 1024 * GIB, 0, 0, 0, 0 },
    { "commit_batch",  CK_INT,      CNF(commit_batch),  256, 1, 100000, 0, 0, 0, 0 },
    /* How long a quarantined message is kept before it is removed (quarantine.c). */
    { "quarantine_retention", CK_DURATION, CNF(quarantine_retention), 14 * DAY, HOUR, 365 * DAY, 0, 0, 0, 0 },
    { "pgsql",         CK_CUSTOM,   0,                  0, 0, 0, 0, 0, 0, conf_pgsql_parse },
    { "domains_from",  CK_CUSTOM,   0,                  0, 0, 0, 0, 0, 0, conf_domains_from_parse },
    { "cluster",       CK_GROUP,    CNF(cluster),       0, 0, 0, 0, 0, cluster_table, conf_cluster_check },
    { "milters",       CK_CUSTOM,   0,                  0, 0, 0, 0, 0, 0, conf_milters_top },
    { "ratelimit",     CK_GROUP,    CNF(ratelimit),     0, 0, 0, 0, 0, ratelimit_table, 0 },
    { "greylist",      CK_GROUP,    CNF(greylist),      0, 0, 0, 0, 0, greylist_table, 0 },
    { "dnsbl",         CK_GROUP,    CNF(dnsbl),         0, 0, 0, 0, 0, dnsbl_table, 0 },
    { "odmr",          CK_GROUP,    CNF(odmr),          0, 0, 0, 0, 0, odmr_table, 0 },
    { "allow_clients", CK_CUSTOM,   0,                  0, 0, 0, 0, 0, 0, conf_allow_clients_parse },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};
#undef CNF

/* ---- errors ------------------------------------------------------------- */

/* Keep the message one printable line whatever the file contained. */
static void conf_err_sanitize(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            *s = '?';
}

static void __attribute__((format(printf, 4, 0)))
conf_err_at(struct conf_loader *L, const char *file, unsigned line, const char *fmt, va_list ap)
{
    int n;
    if (L->errlen == 0)
        return;
    /* Line 0 (root, missing keys at top level) is reported as the file's
     * first line so every message keeps the file:line: shape. */
    n = snprintf(L->err, L->errlen, "%s:%u: ", file ? file : L->path, line ? line : 1);
    if (n >= 0 && (size_t)n < L->errlen)
        vsnprintf(L->err + n, L->errlen - (size_t)n, fmt, ap);
    conf_err_sanitize(L->err);
}

static int __attribute__((format(printf, 3, 4)))
conf_fail(struct conf_loader *L, const config_setting_t *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    conf_err_at(L, s ? config_setting_source_file(s) : NULL,
                s ? config_setting_source_line(s) : 0, fmt, ap);
    va_end(ap);
    return -1;
}

/* "limits.line_length" for messages; the top level has no prefix. */
static void conf_fullname(char *buf, size_t len, const char *where, const char *name)
{
    if (where)
        snprintf(buf, len, "%s.%s", where, name ? name : "?");
    else
        snprintf(buf, len, "%s", name ? name : "?");
}

/* ---- small pure helpers ------------------------------------------------- */

static int conf_digits(const char *s, size_t maxdigits, unsigned long long limit,
                       unsigned long long *out)
{
    unsigned long long v = 0;
    size_t n = 0;
    if (!isdigit((unsigned char)*s))
        return -1;
    for (; isdigit((unsigned char)*s); s++, n++) {
        unsigned d = (unsigned)(*s - '0');
        if (n >= maxdigits || v > (limit - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (*s)
        return -1;
    *out = v;
    return 0;
}

static int conf_parse_port(const char *s, int *port)
{
    unsigned long long v;
    if (conf_digits(s, 5, PORT_MAX, &v) < 0 || v < PORT_MIN)
        return -1;
    *port = (int)v;
    return 0;
}

/* RFC 1123 host name: letters, digits, hyphens; labels 1..63, no leading or
 * trailing hyphen; at most 253 octets. */
static int conf_hostname_ok(const char *s)
{
    size_t len = strlen(s), label = 0;
    if (len == 0 || len > HOSTNAME_MAX)
        return 0;
    for (size_t i = 0; i <= len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '.' || ch == '\0') {
            if (label == 0 || s[i - 1] == '-')
                return 0;
            label = 0;
        } else if (isalnum(ch) || ch == '-') {
            if (label == 0 && ch == '-')
                return 0;
            if (++label > LABEL_MAX)
                return 0;
        } else {
            return 0;
        }
    }
    return 1;
}

/* Lower-cased copy without one trailing dot, or NULL if not a host name. */
static char *conf_hostname_norm(const char *s, size_t len)
{
    char *h;
    if (len > 1 && s[len - 1] == '.')
        len--;
    h = strndup(s, len);
    if (!h)
        return NULL;
    util_lower_inplace(h);
    if (!conf_hostname_ok(h)) {
        free(h);
        return NULL;
    }
    return h;
}

static int conf_is_ip(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* Largest exact unit, so bounds in messages read like the file. */
static void conf_fmt_value(enum conf_kind kind, long v, char *buf, size_t len)
{
    static const struct { long mult; char unit; } durs[] = {
        { DAY, 'd' }, { HOUR, 'h' }, { MINUTE, 'm' } };
    static const struct { long mult; char unit; } sizes[] = {
        { GIB, 'G' }, { MIB, 'M' }, { KIB, 'k' } };
    if (v > 0 && kind == CK_DURATION) {
        for (size_t i = 0; i < sizeof durs / sizeof durs[0]; i++)
            if (v % durs[i].mult == 0) {
                snprintf(buf, len, "%ld%c", v / durs[i].mult, durs[i].unit);
                return;
            }
        snprintf(buf, len, "%lds", v);
        return;
    }
    if (v > 0 && kind == CK_SIZE) {
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
            if (v % sizes[i].mult == 0) {
                snprintf(buf, len, "%ld%c", v / sizes[i].mult, sizes[i].unit);
                return;
            }
    }
    snprintf(buf, len, "%ld", v);
}

/* ---- paths -------------------------------------------------------------- */

/* Where relative paths start: the directory mxkeepd was started in, even
 * after it has moved into its spool (a reload must read the same paths). */
static char *conf_basedir;

void conf_set_basedir(const char *dir)
{
    free(conf_basedir);
    conf_basedir = dir ? strdup(dir) : NULL;
}

static char *conf_abspath(struct conf_loader *L, const config_setting_t *s, const char *p)
{
    char *out;
    size_t n;
    if (p[0] == '/')
        return strdup(p);
    if (!L->cwd) {
        L->cwd = conf_basedir ? strdup(conf_basedir) : getcwd(NULL, 0);
        if (!L->cwd) {
            conf_fail(L, s, "cannot make \"%s\" absolute: getcwd: %s", p, strerror(errno));
            return NULL;
        }
    }
    n = strlen(L->cwd) + 1 + strlen(p) + 1;
    out = malloc(n);
    if (!out)
        return NULL;
    /* "/" as working directory must not give "//x". */
    snprintf(out, n, "%s%s%s", L->cwd, L->cwd[1] ? "/" : "", p);
    return out;
}

/* ---- the table walker --------------------------------------------------- */

static void conf_defaults(const struct conf_setting *t, void *base)
{
    for (; t->name; t++) {
        char *field = (char *)base + t->off;
        switch (t->kind) {
        case CK_INT:
        case CK_DURATION:
        case CK_SIZE:
            *(long *)(void *)field = t->def;
            break;
        case CK_PORT:
        case CK_BOOL:
        case CK_ENUM:
            *(int *)(void *)field = (int)t->def;
            break;
        case CK_GROUP:
            conf_defaults(t->sub, field);
            break;
        default:
            break;          /* strings and lists start NULL/empty (calloc) */
        }
    }
}

static const struct conf_setting *conf_table_find(const struct conf_setting *t, const char *name)
{
    for (; t->name; t++)
        if (strcmp(t->name, name) == 0)
            return t;
    return NULL;
}

static int conf_get_number(struct conf_loader *L, const config_setting_t *s,
                           const struct conf_setting *t, const char *full, long *out)
{
    int type = config_setting_type(s);
    if (type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64) {
        long long v = config_setting_get_int64(s);
        if (v > LONG_MAX || v < LONG_MIN)
            return conf_fail(L, s, "%s is out of range", full);
        *out = (long)v;
        return 0;
    }
    if (type == CONFIG_TYPE_STRING && t->kind == CK_DURATION) {
        const char *v = config_setting_get_string(s);
        if (conf_parse_duration(v, out) < 0)
            return conf_fail(L, s, "%s: bad duration \"%s\" (want seconds, or a number "
                             "with s, m, h or d)", full, v);
        return 0;
    }
    if (type == CONFIG_TYPE_STRING && t->kind == CK_SIZE) {
        const char *v = config_setting_get_string(s);
        if (conf_parse_size(v, out) < 0)
            return conf_fail(L, s, "%s: bad size \"%s\" (want octets, or a number "
                             "with k, M or G)", full, v);
        return 0;
    }
    if (t->kind == CK_DURATION)
        return conf_fail(L, s, "%s must be a duration such as 30 or \"5m\"", full);
    if (t->kind == CK_SIZE)
        return conf_fail(L, s, "%s must be a size such as 1048576 or \"50M\"", full);
    return conf_fail(L, s, "%s must be an integer", full);
}

static int conf_group_load(struct conf_loader *L, const config_setting_t *g,
                           const struct conf_setting *t, void *base, const char *where);

static int conf_value_load(struct conf_loader *L, const config_setting_t *s,
                           const struct conf_setting *t, void *base, const char *where)
{
    char full[128], lo[32], hi[32];
    char *field = (char *)base + t->off;
    char **sp = (char **)(void *)field;
    const char *str = NULL;
    long v;

    conf_fullname(full, sizeof full, where, t->name);
    switch (t->kind) {
    case CK_STRING:
    case CK_PATH:
    case CK_RFILE:
    case CK_RFILE_ROOT:
    case CK_HOSTNAME:
    case CK_ADDRESS:
    case CK_ENUM:
        if (config_setting_type(s) != CONFIG_TYPE_STRING)
            return conf_fail(L, s, "%s must be a string", full);
        str = config_setting_get_string(s);
        if (!str || !*str)
            return conf_fail(L, s, "%s must not be empty", full);
        break;
    default:
        break;
    }

    switch (t->kind) {
    case CK_STRING:
        *sp = strdup(str);
        break;
    case CK_PATH:
        if (!(*sp = conf_abspath(L, s, str)))
            return -1;
        return 0;
    case CK_RFILE:
        if (!(*sp = conf_abspath(L, s, str)))
            return -1;
        if (access(*sp, R_OK) < 0)
            return conf_fail(L, s, "%s: cannot read \"%s\": %s", full, *sp, strerror(errno));
        return 0;
    case CK_RFILE_ROOT:
        if (!(*sp = conf_abspath(L, s, str)))
            return -1;
        if (access(*sp, R_OK) < 0 && !(errno == EACCES && geteuid() != 0))
            return conf_fail(L, s, "%s: cannot read \"%s\": %s", full, *sp, strerror(errno));
        return 0;
    case CK_HOSTNAME:
        if (!(*sp = conf_hostname_norm(str, strlen(str))))
            return conf_fail(L, s, "%s: \"%s\" is not a valid host name", full, str);
        return 0;
    case CK_ADDRESS:
        if (!conf_is_ip(str))
            return conf_fail(L, s, "%s: \"%s\" is not a numeric IPv4 or IPv6 address",
                             full, str);
        *sp = strdup(str);
        break;
    case CK_ENUM:
        for (int i = 0; t->names[i]; i++)
            if (strcmp(t->names[i], str) == 0) {
                *(int *)(void *)field = i;
                return 0;
            }
        {
            char want[128] = "";
            for (int i = 0; t->names[i]; i++) {
                size_t n = strlen(want);
                snprintf(want + n, sizeof want - n, "%s\"%s\"", i ? ", " : "", t->names[i]);
            }
            return conf_fail(L, s, "%s: \"%s\" is not one of %s", full, str, want);
        }
    case CK_INT:
    case CK_DURATION:
    case CK_SIZE:
    case CK_PORT:
        if (conf_get_number(L, s, t, full, &v) < 0)
            return -1;
        if (v < t->min || v > t->max) {
            conf_fmt_value(t->kind, t->min, lo, sizeof lo);
            conf_fmt_value(t->kind, t->max, hi, sizeof hi);
            return conf_fail(L, s, "%s must be between %s and %s", full, lo, hi);
        }
        if (t->kind == CK_PORT)
            *(int *)(void *)field = (int)v;
        else
            *(long *)(void *)field = v;
        return 0;
    case CK_BOOL:
        if (config_setting_type(s) != CONFIG_TYPE_BOOL)
            return conf_fail(L, s, "%s must be true or false", full);
        *(int *)(void *)field = config_setting_get_bool(s) ? 1 : 0;
        return 0;
    case CK_GROUP:
        if (conf_group_load(L, s, t->sub, field, full) < 0)
            return -1;
        return t->hook ? t->hook(L, s, field) : 0;
    case CK_CUSTOM:
        return t->hook(L, s, base);
    }
    if (!*sp)
        return conf_fail(L, s, "out of memory");
    return 0;
}

static int conf_group_load(struct conf_loader *L, const config_setting_t *g,
                           const struct conf_setting *t, void *base, const char *where)
{
    int n;
    if (!config_setting_is_group(g))
        return conf_fail(L, g, "%s must be a group { ... }", where ? where : "configuration");
    n = config_setting_length(g);
    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        const struct conf_setting *def = name ? conf_table_find(t, name) : NULL;
        if (!def) {
            if (where)
                return conf_fail(L, s, "unknown setting \"%s\" in %s", name ? name : "?", where);
            return conf_fail(L, s, "unknown setting \"%s\"", name ? name : "?");
        }
        if (conf_value_load(L, s, def, base, where) < 0)
            return -1;
    }
    for (; t->name; t++)
        if ((t->flags & CF_REQUIRED) &&
            !config_setting_get_member((config_setting_t *)g, t->name)) {
            char full[128];
            conf_fullname(full, sizeof full, where, t->name);
            return conf_fail(L, g, "missing required setting \"%s\"", full);
        }
    return 0;
}

/* ---- custom settings ---------------------------------------------------- */

static int conf_is_sequence(const config_setting_t *s)
{
    return config_setting_is_list(s) || config_setting_is_array(s);
}

static int conf_aliases_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf *c = base;
    int n;
    if (!conf_is_sequence(s))
        return conf_fail(L, s, "aliases must be a list of host names ( \"a\", \"b\" )");
    n = config_setting_length(s);
    c->aliases = calloc((size_t)n + 1, sizeof *c->aliases);
    if (!c->aliases)
        return conf_fail(L, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v = config_setting_get_string(e);
        if (!v)
            return conf_fail(L, e, "aliases: every entry must be a string");
        if (!(c->aliases[i] = conf_hostname_norm(v, strlen(v))))
            return conf_fail(L, e, "aliases: \"%s\" is not a valid host name", v);
        c->naliases = (size_t)i + 1;
    }
    return 0;
}

static int conf_listen_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf *c = base;
    int n;
    if (!config_setting_is_list(s))
        return conf_fail(L, s, "listen must be a list ( { address = \"...\"; port = N; } )");
    n = config_setting_length(s);
    if (n == 0)
        return conf_fail(L, s, "listen must name at least one address");
    c->listen = calloc((size_t)n, sizeof *c->listen);
    if (!c->listen)
        return conf_fail(L, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        c->nlisten = (size_t)i + 1;
        conf_defaults(listen_table, &c->listen[i]);
        if (conf_group_load(L, e, listen_table, &c->listen[i], "listen") < 0)
            return -1;
    }
    return 0;
}

/* "ip", "ip:port", "[ipv6]:port", or a bare IPv6 literal. */
static int conf_resolver_ok(const char *v)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *port = NULL;
    size_t hl;
    int p;
    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        unsigned char a[sizeof(struct in6_addr)];
        if (!close || (hl = (size_t)(close - v - 1)) == 0 || hl >= sizeof host)
            return 0;
        memcpy(host, v + 1, hl);
        host[hl] = '\0';
        if (inet_pton(AF_INET6, host, a) != 1)
            return 0;
        if (close[1] == '\0')
            return 1;
        if (close[1] != ':')
            return 0;
        return conf_parse_port(close + 2, &p) == 0;
    }
    if (conf_is_ip(v))
        return 1;
    port = strchr(v, ':');
    if (!port || strchr(port + 1, ':'))
        return 0;
    hl = (size_t)(port - v);
    if (hl == 0 || hl >= sizeof host)
        return 0;
    memcpy(host, v, hl);
    host[hl] = '\0';
    {
        unsigned char a[sizeof(struct in_addr)];
        if (inet_pton(AF_INET, host, a) != 1)
            return 0;
    }
    return conf_parse_port(port + 1, &p) == 0;
}

static int conf_resolver_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf *c = base;
    const char *v = config_setting_get_string(s);
    if (!v)
        return conf_fail(L, s, "resolver must be a string");
    if (!conf_resolver_ok(v))
        return conf_fail(L, s, "resolver: \"%s\" is not \"ip\", \"ip:port\" or "
                         "\"[ipv6]:port\"", v);
    if (!(c->resolver = strdup(v)))
        return conf_fail(L, s, "out of memory");
    return 0;
}

static int conf_etrn_allow_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf *c = base;
    int n;
    if (!conf_is_sequence(s))
        return conf_fail(L, s, "etrn.allow must be a list of prefixes ( \"127.0.0.0/8\" )");
    n = config_setting_length(s);
    c->etrn_allow = calloc((size_t)n + 1, sizeof *c->etrn_allow);
    if (!c->etrn_allow)
        return conf_fail(L, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v = config_setting_get_string(e);
        if (!v)
            return conf_fail(L, e, "etrn.allow: every entry must be a string");
        if (conf_parse_cidr(v, &c->etrn_allow[i]) < 0)
            return conf_fail(L, e, "etrn.allow: \"%s\" is not an address or prefix "
                             "such as 192.0.2.0/24 or 2001:db8::/32", v);
        c->netrn_allow = (size_t)i + 1;
    }
    return 0;
}

/* allow_clients = ( "192.0.2.0/24", "2001:db8::/32" ): the primary and
 * partners, exempt from rate limits, greylisting and DNSBL. */
static int conf_allow_clients_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf *c = base;
    int n;
    if (!conf_is_sequence(s))
        return conf_fail(L, s, "allow_clients must be a list of prefixes ( \"192.0.2.0/24\" )");
    n = config_setting_length(s);
    c->allow_clients = calloc((size_t)n + 1, sizeof *c->allow_clients);
    if (!c->allow_clients)
        return conf_fail(L, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v = config_setting_get_string(e);
        if (!v)
            return conf_fail(L, e, "allow_clients: every entry must be a string");
        if (conf_parse_cidr(v, &c->allow_clients[i]) < 0)
            return conf_fail(L, e, "allow_clients: \"%s\" is not an address or prefix "
                             "such as 192.0.2.0/24 or 2001:db8::/32", v);
        c->nallow_clients = (size_t)i + 1;
    }
    return 0;
}

/* A reply text may hold one %s (the zone) and %% only: it is a format. */
static int conf_reply_format_ok(const char *r)
{
    int conv = 0;
    for (const char *p = r; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch < ' ' || ch >= 0x7f)
            return 0;
        if (*p != '%')
            continue;
        if (p[1] == '%') {
            p++;
            continue;
        }
        if (p[1] != 's' || conv++)
            return 0;
        p++;
    }
    return 1;
}

static int conf_dnsbl_zones_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf_dnsbl *b = base;
    int n;
    if (!config_setting_is_list(s))
        return conf_fail(L, s, "dnsbl.zones must be a list ( { zone = \"...\"; weight = 1; }, ... )");
    n = config_setting_length(s);
    b->zones = calloc((size_t)n + 1, sizeof *b->zones);
    if (!b->zones)
        return conf_fail(L, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        struct conf_dnsbl_zone *z = &b->zones[i];
        b->nzones = (size_t)i + 1;
        conf_defaults(dnsbl_zone_table, z);
        if (conf_group_load(L, e, dnsbl_zone_table, z, "dnsbl.zones") < 0)
            return -1;
        if (z->reply && !conf_reply_format_ok(z->reply))
            return conf_fail(L, config_setting_get_member((config_setting_t *)e, "reply"),
                             "dnsbl.zones.reply: printable text with at most one %%s (the zone)");
    }
    return 0;
}

/* "sha256:" + 64 hex digits, colons between octets allowed; stored as
 * "sha256:" + 64 lower-case hex digits so tls.c compares with strcmp. */
/* recipients = "PATH" | "lmdb:PATH" | "pgsql:NAME" (table.h).  Paths are
 * made absolute and must be readable now; a pgsql NAME is checked against
 * the pgsql entries once the whole file is read. */
/* Postfix's milter defaults: milter_connect_timeout, milter_command_timeout,
 * milter_content_timeout. */
#define MILTER_CONNECT_TIMEOUT_DEF (30 * SECOND)
#define MILTER_COMMAND_TIMEOUT_DEF (30 * SECOND)
#define MILTER_CONTENT_TIMEOUT_DEF (300 * SECOND)
#define MILTER_TIMEOUT_MAX         (3600 * SECOND)
#define MILTERS_MAX                16      /* entries in one list */

static int conf_milter_duration(struct conf_loader *L, const config_setting_t *g,
                                const char *name, long *out)
{
    const config_setting_t *t = config_setting_get_member(g, name);
    if (!t)
        return 0;
    long v;
    if (config_setting_type(t) == CONFIG_TYPE_INT)
        v = config_setting_get_int(t);
    else if (config_setting_type(t) != CONFIG_TYPE_STRING ||
             conf_parse_duration(config_setting_get_string(t), &v) < 0)
        return conf_fail(L, t, "milters: %s must be a duration such as \"30s\"", name);
    if (v < 1 || v > MILTER_TIMEOUT_MAX)
        return conf_fail(L, t, "milters: %s must be between 1s and 1h", name);
    *out = v;
    return 0;
}

/* `milters = ( "inet:127.0.0.1:11332", { socket = "unix:/run/x.sock";
 * default_action = "accept"; timeout = "30s"; content_timeout = "5m"; } );` */
static int conf_milters_parse(struct conf_loader *L, const config_setting_t *s,
                              struct conf_milters *out)
{
    if (config_setting_type(s) != CONFIG_TYPE_LIST && config_setting_type(s) != CONFIG_TYPE_ARRAY)
        return conf_fail(L, s, "milters must be a list: ( \"inet:host:port\", { socket = ...; } )");
    int n = config_setting_length(s);
    if (n > MILTERS_MAX)
        return conf_fail(L, s, "milters: at most %d entries", MILTERS_MAX);
    conf_milters_release(out);
    if (n == 0)
        return 0;
    if (!(out->v = calloc((size_t)n, sizeof *out->v)))
        return conf_fail(L, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        struct conf_milter *m = &out->v[out->n];
        const char *sock = NULL, *why;
        m->connect_timeout = MILTER_CONNECT_TIMEOUT_DEF;
        m->command_timeout = MILTER_COMMAND_TIMEOUT_DEF;
        m->content_timeout = MILTER_CONTENT_TIMEOUT_DEF;
        if (config_setting_type(e) == CONFIG_TYPE_STRING) {
            sock = config_setting_get_string(e);
        } else if (config_setting_type(e) == CONFIG_TYPE_GROUP) {
            for (int k = 0; k < config_setting_length(e); k++) {
                const char *key = config_setting_name(config_setting_get_elem(e, (unsigned)k));
                if (strcmp(key, "socket") && strcmp(key, "default_action") && strcmp(key, "timeout") &&
                    strcmp(key, "connect_timeout") && strcmp(key, "command_timeout") &&
                    strcmp(key, "content_timeout"))
                    return conf_fail(L, config_setting_get_elem(e, (unsigned)k),
                                     "milters: unknown setting \"%s\"", key);
            }
            if (!config_setting_lookup_string(e, "socket", &sock))
                return conf_fail(L, e, "milters: an entry needs socket = \"unix:/path\" or \"inet:host:port\"");
            const char *act = NULL;
            if (config_setting_lookup_string(e, "default_action", &act)) {
                if (!strcmp(act, "accept"))
                    m->fail_accept = 1;
                else if (strcmp(act, "tempfail"))
                    return conf_fail(L, config_setting_get_member(e, "default_action"),
                                     "milters: default_action must be \"tempfail\" or \"accept\"");
            }
            long all = 0;
            if (conf_milter_duration(L, e, "timeout", &all) < 0)
                return -1;
            if (all)
                m->connect_timeout = m->command_timeout = m->content_timeout = all;
            if (conf_milter_duration(L, e, "connect_timeout", &m->connect_timeout) < 0 ||
                conf_milter_duration(L, e, "command_timeout", &m->command_timeout) < 0 ||
                conf_milter_duration(L, e, "content_timeout", &m->content_timeout) < 0)
                return -1;
        } else {
            return conf_fail(L, e, "milters: each entry is a string or a group");
        }
        struct sockaddr_storage ss;
        socklen_t sl;
        if (!sock || strlen(sock) >= MILTER_SOCKET_MAX || milter_socket_parse(sock, &ss, &sl, &why) < 0)
            return conf_fail(L, e, "milters: \"%s\": %s", sock ? sock : "",
                             sock && strlen(sock) >= MILTER_SOCKET_MAX ? "too long" : why);
        if (!(m->socket = strdup(sock)))
            return conf_fail(L, e, "out of memory");
        out->n++;
    }
    return 0;
}

static int conf_odmr_listen_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf_odmr *o = base;
    int n;
    if (!config_setting_is_list(s))
        return conf_fail(L, s, "odmr.listen must be a list ( { address = \"...\"; port = N; "
                         "tls = \"implicit\"; } )");
    n = config_setting_length(s);
    o->listen = calloc((size_t)n + 1, sizeof *o->listen);
    if (!o->listen)
        return conf_fail(L, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        o->nlisten = (size_t)i + 1;
        conf_defaults(odmr_listen_table, &o->listen[i]);
        if (conf_group_load(L, e, odmr_listen_table, &o->listen[i], "odmr.listen") < 0)
            return -1;
    }
    return 0;
}

static int conf_milters_top(struct conf_loader *L, const config_setting_t *s, void *base)
{
    return conf_milters_parse(L, s, &((struct conf *)base)->milters);
}

static int conf_milters_dom(struct conf_loader *L, const config_setting_t *s, void *base)
{
    return conf_milters_parse(L, s, &((struct conf_domain *)base)->milters);
}

/* "{CRAM-MD5}" and 64 hex digits (odmr_auth.h): never a password in clear. */
static int conf_odmr_secret_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf_domain *d = base;
    const char *v = config_setting_get_string(s);
    static const char scheme[] = "{CRAM-MD5}";
    size_t n = sizeof scheme - 1, i;
    if (v == NULL)
        return conf_fail(L, s, "domains.odmr_secret must be a string");
    if (strncasecmp(v, scheme, n) != 0)
        goto bad;
    for (i = 0; v[n + i]; i++)
        if (!isxdigit((unsigned char)v[n + i]))
            goto bad;
    if (i != 64)
        goto bad;
    if (!(d->odmr_secret = strdup(v)))
        return conf_fail(L, s, "out of memory");
    return 0;
bad:
    return conf_fail(L, s, "domains.odmr_secret: not \"{CRAM-MD5}\" and 64 hex digits (make "
                     "it with mxkeepctl odmr-secret; a password is never written here)");
}

static int conf_recipients_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf_domain *d = base;
    const char *str, *path;
    char *abs;

    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return conf_fail(L, s, "recipients must be a string");
    str = config_setting_get_string(s);
    if (!str || !*str)
        return conf_fail(L, s, "recipients must not be empty");
    d->recipients_line = config_setting_source_line(s);
    if (strncmp(str, "pgsql:", 6) == 0) {
        if (str[6] == '\0')
            return conf_fail(L, s, "recipients: \"%s\" names no pgsql entry", str);
        if (!(d->recipients = strdup(str)))
            return conf_fail(L, s, "out of memory");
        return 0;
    }
    path = strncmp(str, "lmdb:", 5) == 0 ? str + 5 : strncmp(str, "file:", 5) == 0 ? str + 5 : str;
    if (*path == '\0')
        return conf_fail(L, s, "recipients: \"%s\" names no file", str);
    if (!(abs = conf_abspath(L, s, path)))
        return -1;
    if (access(abs, R_OK) < 0) {
        int e = errno;
        conf_fail(L, s, "recipients: cannot read \"%s\": %s", abs, strerror(e));
        free(abs);
        return -1;
    }
    if (path != str && strncmp(str, "lmdb:", 5) == 0) {
        size_t n = strlen(abs) + 6;
        if (!(d->recipients = malloc(n))) {
            free(abs);
            return conf_fail(L, s, "out of memory");
        }
        snprintf(d->recipients, n, "lmdb:%s", abs);
        free(abs);
    } else {
        d->recipients = abs;
    }
    return 0;
}

/* maintenance = ( { start = "2026-12-01T06:00:00Z"; end = "..."; note = "..."; },
 *                 { weekly = "Sun 02:00-04:00"; note = "..."; } ): the
 * forms are maint.h's (pure); times are UTC, never relative. */
static int conf_maintenance_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf_domain *d = base;
    if (!config_setting_is_list(s))
        return conf_fail(L, s, "maintenance must be a list ( { start = \"...\"; end = \"...\"; }, "
                               "{ weekly = \"Sun 02:00-04:00\"; } )");
    int n = config_setting_length(s);
    if (n > MAINT_WINDOWS_MAX)
        return conf_fail(L, s, "maintenance: at most %d windows per domain", MAINT_WINDOWS_MAX);
    d->maint = calloc((size_t)n + 1, sizeof *d->maint);
    if (!d->maint)
        return conf_fail(L, s, "out of memory");
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        struct conf_maint_window *w = &d->maint[i];
        const char *start = NULL, *end = NULL, *weekly = NULL, *note = NULL;
        char err[200];
        d->nmaint = (size_t)i + 1;
        if (!config_setting_is_group(e))
            return conf_fail(L, e, "maintenance: each window is a group { ... }");
        for (int j = 0; j < config_setting_length(e); j++) {
            config_setting_t *m = config_setting_get_elem(e, (unsigned)j);
            const char *name = config_setting_name(m), *v = config_setting_get_string(m);
            if (v == NULL)
                return conf_fail(L, m, "maintenance.%s must be a string", name ? name : "?");
            if (name && strcmp(name, "start") == 0)
                start = v;
            else if (name && strcmp(name, "end") == 0)
                end = v;
            else if (name && strcmp(name, "weekly") == 0)
                weekly = v;
            else if (name && strcmp(name, "note") == 0)
                note = v;
            else
                return conf_fail(L, m, "maintenance: unknown setting %s (start, end, weekly, note)",
                                 name ? name : "?");
        }
        if (note && (strlen(note) >= QMAINT_NOTE_MAX || !(w->note = strdup(note))))
            return conf_fail(L, e, "maintenance.note: at most %d characters", QMAINT_NOTE_MAX - 1);
        if (weekly) {
            if (start || end)
                return conf_fail(L, e, "maintenance: a window is either weekly or start/end, not both");
            if (maint_weekly_parse(weekly, w, err, sizeof err) != 0)
                return conf_fail(L, e, "maintenance.weekly: %s", err);
            w->text = strdup(weekly);
        } else {
            time_t a, b;
            if (!start || !end)
                return conf_fail(L, e, "maintenance: a window needs start and end (or weekly)");
            if (start[0] == '+' || start[0] == '-' || end[0] == '+' || end[0] == '-' ||
                strcmp(start, "now") == 0 || strcmp(end, "now") == 0)
                return conf_fail(L, e, "maintenance: start and end must be absolute UTC times");
            if (timearg_parse(start, 0, &a, err, sizeof err) != 0)
                return conf_fail(L, e, "maintenance.start: %s", err);
            if (timearg_parse(end, 0, &b, err, sizeof err) != 0)
                return conf_fail(L, e, "maintenance.end: %s", err);
            if (b <= a)
                return conf_fail(L, e, "maintenance: end %s is not after start %s", end, start);
            w->start = (int64_t)a;
            w->end = (int64_t)b;
            char text[2 * TIMEARG_ISO_SIZE + 2], x[TIMEARG_ISO_SIZE], y[TIMEARG_ISO_SIZE];
            snprintf(text, sizeof text, "%s/%s", timearg_format(a, x), timearg_format(b, y));
            w->text = strdup(text);
        }
        if (!w->text)
            return conf_fail(L, e, "out of memory");
    }
    return 0;
}

static int conf_fingerprint_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf_domain *d = base;
    const char *v = config_setting_get_string(s);
    const size_t plen = sizeof FINGERPRINT_PREFIX - 1;
    char out[sizeof FINGERPRINT_PREFIX + SHA256_HEX_LEN];
    size_t n = 0;
    const char *p;

    if (!v)
        return conf_fail(L, s, "domains.tls_fingerprint must be a string");
    if (strncasecmp(v, FINGERPRINT_PREFIX, plen) != 0)
        goto bad;
    memcpy(out, FINGERPRINT_PREFIX, plen);
    for (p = v + plen; *p; p++) {
        if (*p == ':') {
            /* only between whole octets: "ab:cd", never "a:b", "::" or trailing */
            if (n == 0 || n % 2 || p[-1] == ':' || p[1] == '\0')
                goto bad;
            continue;
        }
        if (!isxdigit((unsigned char)*p) || n >= SHA256_HEX_LEN)
            goto bad;
        out[plen + n++] = util_lower(*p);
    }
    if (n != SHA256_HEX_LEN)
        goto bad;
    out[plen + n] = '\0';
    if (!(d->tls_fingerprint = strdup(out)))
        return conf_fail(L, s, "out of memory");
    return 0;
bad:
    return conf_fail(L, s, "domains.tls_fingerprint: \"%s\" is not \"sha256:\" followed "
                     "by 64 hex digits", v);
}

static int conf_domain_finish(struct conf_loader *L, const config_setting_t *e,
                              struct conf_domain *d, size_t idx)
{
    if (d->primary) {
        const config_setting_t *ps = config_setting_get_member((config_setting_t *)e, "primary");
        if (conf_parse_primary(d->primary, &d->primary_host, &d->primary_port,
                               &d->primary_fixed) < 0)
            return conf_fail(L, ps, "domains.primary: \"%s\" is not \"[host]:port\", "
                             "\"[host]\", \"domain\" or \"domain:port\"", d->primary);
    } else {
        if (!(d->primary_host = strdup(d->name)))
            return conf_fail(L, e, "out of memory");
        d->primary_port = SMTP_DEFAULT_PORT;
        d->primary_fixed = 0;
    }
    if (d->tls == TLS_POLICY_NONE && (d->tls_ca || d->tls_fingerprint))
        return conf_fail(L, e, "domain \"%s\": tls = \"none\" contradicts tls_ca / "
                         "tls_fingerprint", d->name);
    if (d->odmr && !d->odmr_secret)
        return conf_fail(L, e, "domain \"%s\": odmr = true needs odmr_secret (mxkeepctl "
                         "odmr-secret)", d->name);
    return 0;
}

static int conf_domain_cmp(const void *a, const void *b)
{
    const struct conf_domain *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static int conf_domains_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf *c = base;
    int n;
    if (!config_setting_is_list(s))
        return conf_fail(L, s, "domains must be a list ( { name = \"...\"; }, ... )");
    n = config_setting_length(s);
    c->domains = calloc((size_t)n + 1, sizeof *c->domains);
    if (!c->domains)
        return conf_fail(L, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        struct conf_domain *d = &c->domains[i];
        c->ndomains = (size_t)i + 1;
        conf_defaults(domain_table, d);
        if (conf_group_load(L, e, domain_table, d, "domains") < 0 ||
            conf_domain_finish(L, e, d, (size_t)i) < 0)
            return -1;
    }
    /* A sorted index: conf_domain_find is a binary search, and a hosting
     * provider's 10,000 domains cost no quadratic work at start or reload. */
    c->domain_index = calloc((size_t)n + 1, sizeof *c->domain_index);
    if (!c->domain_index)
        return conf_fail(L, s, "out of memory");
    for (int i = 0; i < n; i++)
        c->domain_index[i] = &c->domains[i];
    if (n > 1)
        qsort(c->domain_index, (size_t)n, sizeof *c->domain_index, conf_domain_cmp);
    for (int i = 1; i < n; i++) {
        if (strcmp(c->domain_index[i - 1]->name, c->domain_index[i]->name) == 0) {
            /* Report the later of the two, as a reader scanning down would. */
            const struct conf_domain *a = c->domain_index[i - 1], *b = c->domain_index[i];
            const struct conf_domain *dup = a > b ? a : b;
            const config_setting_t *e = config_setting_get_elem(s, (unsigned)(dup - c->domains));
            const config_setting_t *nm = e ? config_setting_get_member(e, "name") : NULL;
            return conf_fail(L, nm ? nm : e, "domain \"%s\" is listed twice", dup->name);
        }
    }
    return 0;
}

int conf_pgsql_query(const char *q, char **out, char *args, char *why, size_t whylen)
{
    size_t len = strlen(q), n = 0, o = 0;
    /* "$n" is at most 2 digits plus '$'; a quoted '%s' shrinks. */
    char *sql = malloc(len * 2 + 1);

    if (sql == NULL) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    /* in_literal: inside an SQL string literal ('...', '' an escaped
     * quote).  An escape there cannot become a parameter: '%u@%d' would turn
     * into the text '$1@$2' and every lookup fail at run time.  Such a query,
     * and an unterminated literal, are refused here, at file:line. */
    int in_literal = 0;
    for (size_t i = 0; i < len; i++) {
        const char *p = q + i;
        int quoted = 0;
        char kind;
        if (in_literal) {
            if (p[0] == '%' && p[1] == '%') {
                sql[o++] = '%';
                i++;
                continue;
            }
            if (p[0] == '%') {
                snprintf(why, whylen, "\"%%%c\" inside a quoted string cannot be a parameter "
                         "(quote only a whole '%%s', '%%u' or '%%d')", p[1] ? p[1] : '?');
                free(sql);
                return -1;
            }
            if (p[0] == '\'' && p[1] == '\'') {
                sql[o++] = '\'';
                sql[o++] = '\'';
                i++;
                continue;
            }
            if (p[0] == '\'')
                in_literal = 0;
            sql[o++] = p[0];
            continue;
        }
        if (p[0] == '\'' && p[1] == '%' && p[2] != '\0' && strchr("sud", p[2]) && p[3] == '\'') {
            quoted = 1;
            p++;
        } else if (p[0] != '%') {
            if (p[0] == '\'')
                in_literal = 1;
            sql[o++] = p[0];
            continue;
        }
        kind = p[1];
        if (kind == '%' && !quoted) {
            sql[o++] = '%';
            i++;
            continue;
        }
        if (kind != 's' && kind != 'u' && kind != 'd') {
            snprintf(why, whylen, "\"%%%c\" is not %%s, %%u, %%d or %%%%", kind ? kind : '?');
            free(sql);
            return -1;
        }
        if (n >= CONF_PGSQL_PARAMS_MAX) {
            snprintf(why, whylen, "more than %d parameters", CONF_PGSQL_PARAMS_MAX);
            free(sql);
            return -1;
        }
        args[n++] = kind;
        o += (size_t)sprintf(sql + o, "$%zu", n);
        i += quoted ? 3 : 1;
    }
    if (in_literal) {
        snprintf(why, whylen, "a quoted string is not closed");
        free(sql);
        return -1;
    }
    sql[o] = '\0';
    args[n] = '\0';
    *out = sql;
    return 0;
}

/* A conninfo libpq cannot parse (an unknown keyword, a missing "=") would
 * otherwise only show at run time, as a database that is never up.  Parsing
 * is pure (no connection).  libpq's message may quote a fragment of the
 * string, which may be a password: only the unknown-keyword message, which
 * names a keyword and nothing else, is passed on. */
static int conf_pgsql_conninfo_check(const char *conninfo, char *why, size_t whylen)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    if (opts) {
        PQconninfoFree(opts);
        return 0;
    }
    if (err && strncmp(err, "invalid connection option ", 26) == 0) {
        size_t n = strcspn(err, "\n");
        snprintf(why, whylen, "%.*s", (int)n, err);
    } else {
        snprintf(why, whylen, "%s", err ? "not a libpq connection string (keyword=value ...)"
                                        : "out of memory");
    }
    PQfreemem(err);
    return -1;
}

static int conf_pgsql_finish(struct conf_loader *L, const config_setting_t *e,
                             struct conf_pgsql *p)
{
    char why[128];
    for (const char *q = p->name; *q; q++)
        if (!((*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') || *q == '_' || *q == '-'))
            return conf_fail(L, config_setting_get_member((config_setting_t *)e, "name"),
                             "pgsql.name: \"%s\" may hold only a-z, 0-9, _ and -", p->name);
    if (strlen(p->name) > PGSQL_NAME_MAX)
        return conf_fail(L, e, "pgsql.name: longer than %d", PGSQL_NAME_MAX);
    if (conf_pgsql_conninfo_check(p->conninfo, why, sizeof why) < 0)
        return conf_fail(L, config_setting_get_member((config_setting_t *)e, "conninfo"),
                         "pgsql.conninfo: %s", why);
    if (p->recipient_query) {
        if (conf_pgsql_query(p->recipient_query, &p->recipient_sql, p->recipient_args, why,
                             sizeof why) < 0)
            return conf_fail(L, config_setting_get_member((config_setting_t *)e,
                                                          "recipient_query"),
                             "pgsql.recipient_query: %s", why);
        if (p->recipient_args[0] == '\0')
            return conf_fail(L, config_setting_get_member((config_setting_t *)e,
                                                          "recipient_query"),
                             "pgsql.recipient_query uses none of %%s, %%u, %%d");
    } else {
        if (!(p->recipient_sql = strdup(PGSQL_DEFAULT_RECIPIENT_SQL)))
            return conf_fail(L, e, "out of memory");
        snprintf(p->recipient_args, sizeof p->recipient_args, "%s", PGSQL_DEFAULT_RECIPIENT_ARGS);
    }
    if (p->domain_query) {
        char args[CONF_PGSQL_PARAMS_MAX + 1];
        if (conf_pgsql_query(p->domain_query, &p->domain_sql, args, why, sizeof why) < 0)
            return conf_fail(L, config_setting_get_member((config_setting_t *)e, "domain_query"),
                             "pgsql.domain_query: %s", why);
        if (args[0] != '\0')
            return conf_fail(L, config_setting_get_member((config_setting_t *)e, "domain_query"),
                             "pgsql.domain_query reads every domain: it takes no %%s, %%u or %%d");
    } else if (!(p->domain_sql = strdup(PGSQL_DEFAULT_DOMAIN_SQL))) {
        return conf_fail(L, e, "out of memory");
    }
    return 0;
}

static int conf_pgsql_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf *c = base;
    int n;
    if (!config_setting_is_list(s))
        return conf_fail(L, s, "pgsql must be a list ( { name = \"...\"; conninfo = \"...\"; }, ... )");
    n = config_setting_length(s);
    c->pgsql = calloc((size_t)n + 1, sizeof *c->pgsql);
    if (!c->pgsql)
        return conf_fail(L, s, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        struct conf_pgsql *p = &c->pgsql[i];
        c->npgsql = (size_t)i + 1;
        conf_defaults(pgsql_table, p);
        if (conf_group_load(L, e, pgsql_table, p, "pgsql") < 0 || conf_pgsql_finish(L, e, p) < 0)
            return -1;
        for (int j = 0; j < i; j++)
            if (strcmp(c->pgsql[j].name, p->name) == 0)
                return conf_fail(L, config_setting_get_member((config_setting_t *)e, "name"),
                                 "pgsql entry \"%s\" is listed twice", p->name);
    }
    return 0;
}

static int conf_domains_from_parse(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf *c = base;
    const char *str;
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return conf_fail(L, s, "domains_from must be a string \"pgsql:NAME\"");
    str = config_setting_get_string(s);
    if (!str || strncmp(str, "pgsql:", 6) != 0 || str[6] == '\0')
        return conf_fail(L, s, "domains_from: \"%s\" is not \"pgsql:NAME\"", str ? str : "");
    if (!(c->domains_from = strdup(str + 6)))
        return conf_fail(L, s, "out of memory");
    return 0;
}

/* After the whole file: "pgsql:NAME" references may come before the
 * pgsql list they name. */
static int conf_pgsql_refs_check(struct conf_loader *L, config_t *cfg, struct conf *c)
{
    const config_setting_t *doms = config_lookup(cfg, "domains");
    if (c->domains_from && !conf_pgsql_find(c, c->domains_from))
        return conf_fail(L, config_lookup(cfg, "domains_from"),
                         "domains_from: no pgsql entry is called \"%s\"", c->domains_from);
    if (c->cluster.enabled && !conf_pgsql_find(c, c->cluster.pgsql)) {
        const config_setting_t *m = config_lookup(cfg, "cluster.pgsql");
        return conf_fail(L, m ? m : config_lookup(cfg, "cluster"),
                         "cluster.pgsql: no pgsql entry is called \"%s\"", c->cluster.pgsql);
    }
    for (size_t i = 0; i < c->ndomains; i++) {
        const char *r = c->domains[i].recipients;
        if (r && strncmp(r, "pgsql:", 6) == 0 && !conf_pgsql_find(c, r + 6)) {
            const config_setting_t *e = doms ? config_setting_get_elem(doms, (unsigned)i) : NULL;
            const config_setting_t *m = e ? config_setting_get_member(
                                                (config_setting_t *)e, "recipients") : NULL;
            return conf_fail(L, m ? m : e, "recipients: no pgsql entry is called \"%s\"", r + 6);
        }
    }
    return 0;
}

static int conf_tls_check(struct conf_loader *L, const config_setting_t *s, void *base)
{
    const struct conf *c = base;
    if (!c->tls_certificate != !c->tls_key)
        return conf_fail(L, s, "tls needs both certificate and key, or neither");
    return 0;
}

static int conf_limits_check(struct conf_loader *L, const config_setting_t *s, void *base)
{
    const struct conf_limits *l = base;
    if (l->header_size > l->message_size)
        return conf_fail(L, s, "limits.header_size (%llu octets%s) must not exceed "
                         "limits.message_size (%llu octets): lower both",
                         (unsigned long long)l->header_size,
                         config_setting_get_member(s, "header_size") ? "" : ", the default",
                         (unsigned long long)l->message_size);
    return 0;
}

/* A refresh after the expiry would never happen: the answer is gone
 * first, and the RCPT waits for a probe instead of a background refresh. */
static int conf_verify_check(struct conf_loader *L, const config_setting_t *s, void *base)
{
    const struct conf_verify *v = base;
    const char *field = NULL;
    if (v->positive_refresh > v->positive_expire)
        field = "positive";
    else if (v->negative_refresh > v->negative_expire)
        field = "negative";
    if (field) {
        char key[32];
        snprintf(key, sizeof key, "%s_refresh", field);
        const config_setting_t *m = config_setting_get_member((config_setting_t *)s, key);
        return conf_fail(L, m ? m : s, "verify.%s_refresh must not exceed verify.%s_expire",
                         field, field);
    }
    return 0;
}

static int conf_delivery_check(struct conf_loader *L, const config_setting_t *s, void *base)
{
    const struct conf_delivery *d = base;
    if (d->probe_min > d->probe_max) {
        const config_setting_t *m = config_setting_get_member((config_setting_t *)s, "probe_min");
        return conf_fail(L, m ? m : s, "delivery.probe_min must not exceed delivery.probe_max");
    }
    return 0;
}

static int conf_control_check(struct conf_loader *L, const config_setting_t *s, void *base)
{
    const struct conf *c = base;
    struct sockaddr_un sun;
    if (c->control_socket && strlen(c->control_socket) >= sizeof sun.sun_path) {
        const config_setting_t *m = config_setting_get_member((config_setting_t *)s, "socket");
        return conf_fail(L, m ? m : s, "control.socket: \"%s\" is longer than a unix socket "
                         "path may be (%zu)", c->control_socket, sizeof sun.sun_path - 1);
    }
    return 0;
}

/* A node name goes into the fleet's tables and NOTIFY payloads (fields
 * separated by spaces): one printable word of letters, digits, '.', '-',
 * '_'. */
#define CLUSTER_NODE_MAX 63

static int conf_cluster_check(struct conf_loader *L, const config_setting_t *s, void *base)
{
    struct conf_cluster *cl = base;
    cl->enabled = 1;
    if (cl->node) {
        size_t n = strlen(cl->node);
        int bad = n == 0 || n > CLUSTER_NODE_MAX;
        for (size_t i = 0; i < n && !bad; i++) {
            unsigned char ch = (unsigned char)cl->node[i];
            bad = !isalnum(ch) && ch != '.' && ch != '-' && ch != '_';
        }
        if (bad) {
            const config_setting_t *m = config_setting_get_member((config_setting_t *)s, "node");
            return conf_fail(L, m ? m : s, "cluster.node: \"%s\" is not a name of at most %d "
                             "letters, digits, '.', '-' or '_'", cl->node, CLUSTER_NODE_MAX);
        }
    }
    return 0;
}

/* No hostname in the file: take the system's name (no DNS at load time). */
static int conf_hostname_default(struct conf_loader *L, struct conf *c)
{
    char buf[HOST_NAME_MAX + 1];
    if (c->hostname)
        return 0;
    if (gethostname(buf, sizeof buf) < 0) {
        conf_fail(L, NULL, "hostname is not set and gethostname failed: %s", strerror(errno));
        return -1;
    }
    buf[sizeof buf - 1] = '\0';
    if (!(c->hostname = conf_hostname_norm(buf, strlen(buf))))
        return conf_fail(L, NULL, "hostname is not set and the system name \"%s\" is not "
                         "a valid host name", buf);
    return 0;
}

/* ---- public ------------------------------------------------------------- */

struct conf *conf_load(const char *path, char *err, size_t errlen)
{
    struct conf_loader L = { .path = path, .err = err, .errlen = errlen };
    config_t cfg;
    struct conf *c;
    int ok = 0;

    if (errlen)
        err[0] = '\0';
    c = calloc(1, sizeof *c);
    if (!c) {
        if (errlen)
            snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    c->refs = 1;
    L.c = c;
    conf_defaults(top_table, c);

    config_init(&cfg);
    if (!config_read_file(&cfg, path)) {
        if (config_error_type(&cfg) == CONFIG_ERR_FILE_IO) {
            /* no line to point at: the file itself could not be read */
            if (errlen)
                snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        } else if (errlen) {
            const char *f = config_error_file(&cfg);
            snprintf(err, errlen, "%s:%d: %s", f ? f : path, config_error_line(&cfg),
                     config_error_text(&cfg));
            conf_err_sanitize(err);
        }
        goto out;
    }
    if (!(c->path = strdup(path))) {
        conf_fail(&L, NULL, "out of memory");
        goto out;
    }
    if (conf_group_load(&L, config_root_setting(&cfg), top_table, c, NULL) < 0)
        goto out;
    if (conf_hostname_default(&L, c) < 0)
        goto out;
    /* Our Authentication-Results headers name this host unless told. */
    if (!c->authserv_id && !(c->authserv_id = strdup(c->hostname))) {
        conf_fail(&L, NULL, "out of memory");
        goto out;
    }
    if (conf_pgsql_refs_check(&L, &cfg, c) < 0)
        goto out;
    /* Both ODMR listener kinds speak TLS: the server's certificate. */
    if (c->odmr.nlisten > 0 && !c->tls_certificate) {
        conf_fail(&L, config_lookup(&cfg, "odmr"), "odmr.listen needs tls.certificate and "
                  "tls.key (implicit TLS or STARTTLS)");
        goto out;
    }
    /* An ODMR domain is only ever fetched: without a listener its mail
     * would wait, accepted, until it expires. */
    for (size_t i = 0; c->odmr.nlisten == 0 && i < c->ndomains; i++) {
        if (c->domains[i].odmr) {
            conf_fail(&L, config_lookup(&cfg, "domains"), "domain \"%s\": odmr = true needs an "
                      "odmr.listen listener (its primary fetches its mail with ATRN)",
                      c->domains[i].name);
            goto out;
        }
    }
    ok = 1;
out:
    config_destroy(&cfg);
    free(L.cwd);
    if (!ok) {
        conf_free(c);
        return NULL;
    }
    return c;
}

/* refs == 0 marks a conf that did not come from conf_load (the unit tests
 * build them by hand, on the stack): its owner frees it, so it is never
 * counted and never freed here. */
const struct conf *conf_ref(const struct conf *cc)
{
    /* The count is the one field a holder changes: the conf was allocated
     * writable by conf_load, so casting the const away is sound. */
    struct conf *c = (struct conf *)cc;
    if (c && c->refs > 0)
        c->refs++;
    return cc;
}

static void conf_milters_release(struct conf_milters *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->v[i].socket);
    free(m->v);
    m->v = NULL;
    m->n = 0;
}

static void conf_domain_release(struct conf_domain *d)
{
    conf_milters_release(&d->milters);
    free(d->name);
    free(d->primary);
    free(d->primary_host);
    free(d->recipients);
    free(d->tls_ca);
    free(d->tls_fingerprint);
    for (size_t i = 0; i < d->nmaint; i++) {
        free(d->maint[i].text);
        free(d->maint[i].note);
    }
    free(d->maint);
    free(d->odmr_secret);
}

void conf_free(const struct conf *cc)
{
    struct conf *c = (struct conf *)cc;
    if (!c || c->refs == 0)
        return;
    if (c->refs > 1) {
        c->refs--;
        return;
    }
    if (c->parent) {
        /* conf_with_domains: everything but the database's domains is
         * borrowed from the parent. */
        for (size_t i = 0; i < c->ndomains; i++)
            if (c->domains[i].from_db)
                conf_domain_release(&c->domains[i]);
        free(c->domains);
        free(c->domain_index);
        conf_free(c->parent);
        free(c);
        return;
    }
    free(c->domain_index);
    conf_milters_release(&c->milters);
    free(c->path);
    free(c->hostname);
    for (size_t i = 0; i < c->naliases; i++)
        free(c->aliases[i]);
    free(c->aliases);
    for (size_t i = 0; i < c->nlisten; i++)
        free(c->listen[i].address);
    free(c->listen);
    free(c->spool);
    free(c->user);
    free(c->group);
    free(c->resolver);
    free(c->authserv_id);
    free(c->etrn_allow);
    free(c->allow_clients);
    for (size_t i = 0; i < c->dnsbl.nzones; i++) {
        free(c->dnsbl.zones[i].zone);
        free(c->dnsbl.zones[i].reply);
    }
    free(c->dnsbl.zones);
    for (size_t i = 0; i < c->odmr.nlisten; i++)
        free(c->odmr.listen[i].address);
    free(c->odmr.listen);
    free(c->tls_certificate);
    free(c->tls_key);
    for (size_t i = 0; i < c->ndomains; i++)
        conf_domain_release(&c->domains[i]);
    free(c->domains);
    for (size_t i = 0; i < c->npgsql; i++) {
        struct conf_pgsql *p = &c->pgsql[i];
        free(p->name);
        free(p->conninfo);
        free(p->recipient_query);
        free(p->recipient_sql);
        free(p->domain_query);
        free(p->domain_sql);
    }
    free(c->pgsql);
    free(c->domains_from);
    free(c->control_socket);
    free(c->control_group);
    free(c->metrics_address);
    free(c->pid_file);
    free(c->cluster.node);
    free(c->cluster.pgsql);
    free(c);
}

const struct conf_domain *conf_domain_find(const struct conf *c, const char *domain)
{
    size_t len;
    if (!c || !domain)
        return NULL;
    char key[256];
    struct conf_domain kd;
    const struct conf_domain *kp = &kd, *const *hit;
    len = strlen(domain);
    if (len > 1 && domain[len - 1] == '.')
        len--;
    if (len >= sizeof key || c->ndomains == 0 || !c->domain_index)
        return NULL;
    /* Names are stored lower-cased: fold the key the same way. */
    for (size_t i = 0; i < len; i++)
        key[i] = util_lower(domain[i]);
    key[len] = '\0';
    memset(&kd, 0, sizeof kd);
    kd.name = key;
    hit = bsearch(&kp, c->domain_index, c->ndomains, sizeof *c->domain_index, conf_domain_cmp);
    return hit ? *hit : NULL;
}

const struct conf_pgsql *conf_pgsql_find(const struct conf *c, const char *name)
{
    if (!c || !name)
        return NULL;
    for (size_t i = 0; i < c->npgsql; i++)
        if (strcmp(c->pgsql[i].name, name) == 0)
            return &c->pgsql[i];
    return NULL;
}

/* ---- domains from rows (domains_from) ----------------------------------- */

static int conf_row_enum(const char *const *names, const char *v, int *out)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], v) == 0) {
            *out = i;
            return 0;
        }
    return -1;
}

/* One column of a database row into d, with the checks the file gets.
 * NULL on success, else the reason (why is scratch space). */
static const char *conf_row_column(const struct conf *base, struct conf_domain *d,
                                   const char *col, const char *v, char *why, size_t whylen)
{
    const struct conf_setting *t;
    if (v == NULL || *v == '\0')
        return NULL;                    /* SQL NULL or '': the default */
    if (strcmp(col, "primary_route") == 0 || strcmp(col, "primary") == 0) {
        free(d->primary);
        free(d->primary_host);
        d->primary_host = NULL;
        if (!(d->primary = strdup(v)))
            return "out of memory";
        if (conf_parse_primary(v, &d->primary_host, &d->primary_port, &d->primary_fixed) < 0) {
            snprintf(why, whylen, "primary_route \"%s\" is not \"[host]:port\", \"[host]\", "
                     "\"domain\" or \"domain:port\"", v);
            return why;
        }
        return NULL;
    }
    if (strcmp(col, "recipients") == 0) {
        const char *path = strncmp(v, "lmdb:", 5) == 0 ? v + 5 : v;
        if (strncmp(v, "pgsql:", 6) == 0) {
            if (!conf_pgsql_find(base, v + 6)) {
                snprintf(why, whylen, "recipients: no pgsql entry is called \"%s\"", v + 6);
                return why;
            }
        } else if (path[0] != '/' || access(path, R_OK) < 0) {
            snprintf(why, whylen, "recipients: \"%s\" is not a readable absolute path", v);
            return why;
        }
        free(d->recipients);
        return (d->recipients = strdup(v)) ? NULL : "out of memory";
    }
    if (!(t = conf_table_find(domain_table, col)))
        return NULL;                    /* a column we do not use */
    switch (t->kind) {
    case CK_DURATION: {
        long sec;
        if (conf_parse_duration(v, &sec) < 0 || sec < t->min || sec > t->max) {
            snprintf(why, whylen, "%s \"%s\" is not a duration between 1h and 365d", col, v);
            return why;
        }
        *(long *)(void *)((char *)d + t->off) = sec;
        return NULL;
    }
    case CK_ENUM:
        if (conf_row_enum(t->names, v, (int *)(void *)((char *)d + t->off)) < 0) {
            snprintf(why, whylen, "%s \"%s\" is not a known value", col, v);
            return why;
        }
        return NULL;
    case CK_BOOL:
        /* PostgreSQL's text form of boolean is t/f. */
        if (strcmp(v, "t") == 0 || strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
            *(int *)(void *)((char *)d + t->off) = 1;
        else if (strcmp(v, "f") == 0 || strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
            *(int *)(void *)((char *)d + t->off) = 0;
        else {
            snprintf(why, whylen, "%s \"%s\" is not a boolean", col, v);
            return why;
        }
        return NULL;
    default:
        return NULL;                    /* name is read first; tls_ca and pins stay in the file */
    }
}

struct conf *conf_with_domains(const struct conf *base, const char *const *cols, size_t ncols,
                               const char *const *values, size_t nrows,
                               conf_row_cb *dup_cb, conf_row_cb *bad_cb, void *arg)
{
    struct conf *c;
    size_t namecol = ncols, n = base->ndomains, kept;
    char why[256];

    for (size_t j = 0; j < ncols; j++)
        if (cols[j] && strcmp(cols[j], "name") == 0)
            namecol = j;
    if (!(c = malloc(sizeof *c)))
        return NULL;
    *c = *base;
    c->refs = 1;
    c->parent = NULL;
    c->domains = calloc(n + nrows + 1, sizeof *c->domains);
    c->domain_index = calloc(n + nrows + 1, sizeof *c->domain_index);
    if (!c->domains || !c->domain_index) {
        free(c->domains);
        free(c->domain_index);
        free(c);
        return NULL;
    }
    /* The file's domains: shallow copies; their strings stay the base's. */
    for (size_t i = 0; i < n; i++) {
        c->domains[i] = base->domains[i];
        c->domains[i].from_db = 0;
    }
    c->ndomains = n;
    c->parent = conf_ref(base);
    for (size_t r = 0; r < nrows; r++) {
        const char *const *row = values + r * ncols;
        const char *nm = namecol < ncols ? row[namecol] : NULL;
        struct conf_domain *d = &c->domains[c->ndomains];
        const char *bad = NULL;

        if (nm == NULL || *nm == '\0') {
            if (bad_cb)
                bad_cb(arg, "", namecol < ncols ? "no name" : "the query returns no \"name\" column");
            if (namecol >= ncols)
                break;
            continue;
        }
        if (conf_domain_find(base, nm)) {
            if (dup_cb)
                dup_cb(arg, nm, "in the configuration file too: the file's settings win");
            continue;
        }
        memset(d, 0, sizeof *d);
        conf_defaults(domain_table, d);
        d->from_db = 1;
        d->primary_port = SMTP_DEFAULT_PORT;
        if (!(d->name = conf_hostname_norm(nm, strlen(nm)))) {
            bad = "not a valid host name";
        } else {
            for (size_t j = 0; j < ncols && !bad; j++)
                if (j != namecol && cols[j])
                    bad = conf_row_column(base, d, cols[j], row[j], why, sizeof why);
        }
        if (!bad && !d->primary_host && !(d->primary_host = strdup(d->name)))
            bad = "out of memory";
        if (!bad && d->tls == TLS_POLICY_NONE && (d->tls_ca || d->tls_fingerprint))
            bad = "tls = \"none\" contradicts tls_ca / tls_fingerprint";
        if (bad) {
            if (bad_cb)
                bad_cb(arg, nm, bad);
            conf_domain_release(d);
            memset(d, 0, sizeof *d);
            continue;
        }
        c->ndomains++;
    }
    for (size_t i = 0; i < c->ndomains; i++)
        c->domain_index[i] = &c->domains[i];
    if (c->ndomains > 1)
        qsort(c->domain_index, c->ndomains, sizeof *c->domain_index, conf_domain_cmp);
    /* Two rows with one name (a case-insensitive duplicate in the table):
     * keep the first, drop the rest from the index. */
    kept = c->ndomains ? 1 : 0;
    for (size_t i = 1; i < c->ndomains; i++) {
        if (strcmp(c->domain_index[kept - 1]->name, c->domain_index[i]->name) == 0) {
            if (bad_cb)
                bad_cb(arg, c->domain_index[i]->name, "listed twice");
            continue;
        }
        c->domain_index[kept++] = c->domain_index[i];
    }
    if (kept != c->ndomains) {
        /* Rebuild the array from the index so ndomains, domains and the
         * index agree (everyone iterating domains sees each name once). */
        struct conf_domain *nd = calloc(kept + 1, sizeof *nd);
        char *keep = calloc(c->ndomains, 1);
        size_t k = 0;
        if (!nd || !keep) {
            free(nd);
            free(keep);
            conf_free(c);
            return NULL;
        }
        for (size_t i = 0; i < kept; i++)
            keep[c->domain_index[i] - c->domains] = 1;
        for (size_t i = 0; i < c->ndomains; i++) {
            if (keep[i])
                nd[k++] = c->domains[i];
            else if (c->domains[i].from_db)
                conf_domain_release(&c->domains[i]);
        }
        free(keep);
        free(c->domains);
        c->domains = nd;
        c->ndomains = kept;
        for (size_t i = 0; i < kept; i++)
            c->domain_index[i] = &c->domains[i];
        qsort(c->domain_index, kept, sizeof *c->domain_index, conf_domain_cmp);
    }
    return c;
}

/* ---- pure value parsers ------------------------------------------------- */

/* Digits then at most one unit letter; overflow of long is malformed. */
static int conf_parse_scaled(const char *s, long *out, long (*unit)(char))
{
    unsigned long long v = 0;
    long mult = 1;
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    for (; isdigit((unsigned char)*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > ((unsigned long long)LONG_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (*s) {
        if ((mult = unit(*s)) <= 0 || s[1] != '\0')
            return -1;
    }
    if (v > (unsigned long long)(LONG_MAX / mult))
        return -1;
    *out = (long)v * mult;
    return 0;
}

static long conf_duration_unit(char ch)
{
    switch (ch) {
    case 's': return SECOND;
    case 'm': return MINUTE;
    case 'h': return HOUR;
    case 'd': return DAY;
    default:  return -1;
    }
}

static long conf_size_unit(char ch)
{
    switch (ch) {
    case 'k': case 'K': return KIB;
    case 'm': case 'M': return MIB;
    case 'g': case 'G': return GIB;
    default:            return -1;
    }
}

int conf_parse_duration(const char *s, long *seconds)
{
    return conf_parse_scaled(s, seconds, conf_duration_unit);
}

int conf_parse_size(const char *s, long *octets)
{
    return conf_parse_scaled(s, octets, conf_size_unit);
}

int conf_parse_cidr(const char *s, struct conf_cidr *out)
{
    char buf[CIDR_TEXT_MAX + 1];
    char *slash;
    struct conf_cidr r;
    int maxbits;
    size_t len;

    if (!s || (len = strlen(s)) == 0 || len > CIDR_TEXT_MAX)
        return -1;
    memcpy(buf, s, len + 1);
    slash = strchr(buf, '/');
    if (slash)
        *slash = '\0';
    memset(&r, 0, sizeof r);
    if (inet_pton(AF_INET, buf, r.addr) == 1) {
        r.family = AF_INET;
        maxbits = V4_BITS;
    } else if (inet_pton(AF_INET6, buf, r.addr) == 1) {
        r.family = AF_INET6;
        maxbits = V6_BITS;
    } else {
        return -1;
    }
    r.bits = maxbits;
    if (slash) {
        unsigned long long b;
        if (conf_digits(slash + 1, 3, (unsigned long long)maxbits, &b) < 0)
            return -1;
        r.bits = (int)b;
    }
    /* Clear host bits so matching compares networks, whatever was written. */
    for (int i = 0; i < maxbits / 8; i++) {
        int keep = r.bits - i * 8;
        if (keep <= 0)
            r.addr[i] = 0;
        else if (keep < 8)
            r.addr[i] &= (unsigned char)(0xff << (8 - keep));
    }
    *out = r;
    return 0;
}

static int conf_prefix_eq(const unsigned char *net, const unsigned char *a, int bits)
{
    int whole = bits / 8, rest = bits % 8;
    if (memcmp(net, a, (size_t)whole) != 0)
        return 0;
    if (rest) {
        unsigned char m = (unsigned char)(0xff << (8 - rest));
        return (net[whole] & m) == (a[whole] & m);
    }
    return 1;
}

int conf_cidr_match(const struct conf_cidr *list, size_t n, int family, const void *addr)
{
    static const unsigned char v4mapped[V4MAPPED_OFFSET] = {
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    unsigned char v6[16];
    const unsigned char *v4 = NULL;

    if (!addr)
        return 0;
    if (family == AF_INET) {
        v4 = addr;
        /* also compare as ::ffff:a.b.c.d, for prefixes written in v6 form */
        memcpy(v6, v4mapped, sizeof v4mapped);
        memcpy(v6 + V4MAPPED_OFFSET, v4, 4);
    } else if (family == AF_INET6) {
        memcpy(v6, addr, sizeof v6);
        if (memcmp(v6, v4mapped, sizeof v4mapped) == 0)
            v4 = v6 + V4MAPPED_OFFSET;
    } else {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (list[i].family == AF_INET && v4 && conf_prefix_eq(list[i].addr, v4, list[i].bits))
            return 1;
        if (list[i].family == AF_INET6 && conf_prefix_eq(list[i].addr, v6, list[i].bits))
            return 1;
    }
    return 0;
}

int conf_parse_primary(const char *s, char **host, int *port, int *fixed)
{
    const char *hs, *he, *rest;
    int fx, p = SMTP_DEFAULT_PORT;
    char *h;

    if (!s || !*s)
        return -1;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close)
            return -1;
        hs = s + 1;
        he = close;
        rest = close + 1;
        fx = 1;
    } else {
        const char *colon = strchr(s, ':');
        /* an unbracketed IPv6 literal cannot be told from host:port */
        if (colon && strchr(colon + 1, ':'))
            return -1;
        hs = s;
        he = colon ? colon : s + strlen(s);
        rest = he;
        fx = 0;
    }
    if (he == hs)
        return -1;
    if (*rest) {
        if (*rest != ':' || conf_parse_port(rest + 1, &p) < 0)
            return -1;
    }
    if (!(h = strndup(hs, (size_t)(he - hs))))
        return -1;
    if (fx && conf_is_ip(h)) {
        /* address literal: kept as written */
    } else {
        char *norm = conf_hostname_norm(h, strlen(h));
        unsigned char a[sizeof(struct in_addr)];
        free(h);
        /* An MX lookup of an address makes no sense: addresses need [ ]. */
        if (!norm || (!fx && inet_pton(AF_INET, norm, a) == 1)) {
            free(norm);
            return -1;
        }
        h = norm;
    }
    *host = h;
    *port = p;
    *fixed = fx;
    return 0;
}
