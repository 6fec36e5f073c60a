/*
 * conf.h - the typed settings of mxkeepd, loaded from a libconfig file.
 *
 * Every setting, its default and its bounds live in one table in conf.c
 * (house style: settings_init holds every default).  conf_load() validates
 * every key; unknown keys are errors.  Relative paths in the file are made
 * absolute against the working directory at load time, so a later chdir
 * (daemon mode) changes nothing.
 *
 * Ownership: conf_load() returns a struct conf with one reference, the
 * caller's.  It is reference-counted because a reload replaces it while
 * modules, connections and timers may still hold it: whoever keeps a conf
 * (or a pointer into it: strings, conf_domain entries) beyond the call that
 * handed it over takes conf_ref() and drops it with conf_free(), which
 * releases everything when the last reference goes (accepts NULL).  Other
 * modules read a struct conf but never change it; reload builds a new one.
 * References are taken and dropped on the loop thread only.
 */
#ifndef MXKEEP_CONF_H
#define MXKEEP_CONF_H

#include <stddef.h>
#include <stdint.h>

enum bare_newline { BARE_NL_NORMALIZE = 0, BARE_NL_REJECT = 1 };

/* Recipient verification by callout to the primary (verify.h). */
enum verify_mode { VERIFY_OFF = 0, VERIFY_CALLOUT = 1 };
/* What a verified domain does with an address no probe could answer. */
enum unverified_policy { UNVERIFIED_ACCEPT = 0, UNVERIFIED_TEMPFAIL = 1 };
/* When a domain takes mail (heartbeat.h): always, or only while its
 * primary is not known to be up. */
enum accept_mode { ACCEPT_ALWAYS = 0, ACCEPT_WHEN_PRIMARY_DOWN = 1 };

/* Outbound TLS policy for one destination. */
enum tls_policy { TLS_POLICY_NONE = 0, TLS_POLICY_MAY, TLS_POLICY_ENCRYPT, TLS_POLICY_VERIFY };

struct conf_listen {
    char *address;              /* numeric IPv4 or IPv6 address */
    int port;
};

/* One `milters` entry (global or per domain): a string "unix:/path" /
 * "inet:host:port", or a group with the action on failure and timeouts. */
struct conf_milter {
    char *socket;
    int fail_accept;            /* default_action = "accept"; else tempfail */
    long connect_timeout, command_timeout, content_timeout;    /* seconds */
};
struct conf_milters {
    struct conf_milter *v;
    size_t n;
};

/* A network prefix for ETRN access (and later, other ACLs). */
struct conf_cidr {
    int family;                 /* AF_INET or AF_INET6 */
    unsigned char addr[16];     /* network order; first 4 bytes for IPv4 */
    int bits;
};

/* Failure notices for a domain's mail (quarantine.h decides): always, or
 * only to senders that authenticated (SPF pass or a sender DKIM pass);
 * the rest go to quarantine, so a forged sender gets no backscatter. */
enum bounce_policy { BOUNCE_ALWAYS = 0, BOUNCE_AUTHENTICATED };

/* One scheduled maintenance window of a domain (maint.h): either one-off
 * [start, end) or weekly (days: bit 0 Sunday .. bit 6 Saturday) from
 * from_min minutes after midnight UTC for dur_min minutes. */
struct conf_maint_window {
    int64_t start, end;         /* one-off, unix seconds; 0 for weekly */
    unsigned days;              /* weekly: day mask; 0 for one-off */
    int from_min, dur_min;
    char *text;                 /* as written, for listings */
    char *note;                 /* or NULL */
};

struct conf_domain {
    char *name;                 /* lower case, no trailing dot */
    char *primary;              /* as written, or NULL: MX lookup of name */
    int primary_fixed;          /* 1 for "[host]:port": no MX lookup */
    char *primary_host;         /* host (fixed) or domain to look up; never NULL */
    int primary_port;           /* default 25 */
    long retention;             /* seconds; default 7d, at most 365d */
    char *recipients;           /* table spec (table.h): an absolute path (file),
                                   "lmdb:/abs/path" or "pgsql:NAME"; NULL: any local part */
    int recipients_line;        /* its line in the config file, for errors */
    enum verify_mode verify;    /* default off */
    enum unverified_policy unverified;  /* default accept */
    enum accept_mode accept;    /* default always */
    enum tls_policy tls;        /* default may */
    char *tls_ca;               /* CA file for verify, or NULL (system store) */
    char *tls_fingerprint;      /* "sha256:hex" pin, or NULL */
    int hold;                   /* 1: deliver nothing until released */
    enum bounce_policy bounce;  /* default always */
    int from_db;                /* 1: added by domains_from, not the file */
    struct conf_milters milters;    /* run after the global ones (smtpd.c) */
    long max_messages;          /* queued messages before RCPT gets 452 4.2.2; 0 = no quota */
    long max_bytes;             /* queued body octets before 452 4.2.2; 0 = no quota */
    int greylist;               /* 1: greylist.h decides after the recipient is valid */
    long keep_delivered;        /* seconds a delivered copy is kept (replay); 0 = none */
    struct conf_maint_window *maint;    /* maintenance = ( ... ) (maint.h) */
    size_t nmaint;
    int odmr;                   /* 1: never connected to; the primary fetches its
                                   mail with ATRN (odmr.h, RFC 2645) */
    char *odmr_secret;          /* "{CRAM-MD5}<64 hex>" (mxkeepctl odmr-secret), or NULL */
};

/* On-Demand Mail Relay (odmr.h): the `odmr` group.  TLS per listener:
 * from the first octet (fetchmail's `ssl`), or offered with STARTTLS. */
enum odmr_tls { ODMR_TLS_IMPLICIT = 0, ODMR_TLS_STARTTLS = 1 };
struct conf_odmr_listen {
    char *address;              /* numeric IPv4 or IPv6 address */
    int port;                   /* default 366 (RFC 2645) */
    int tls;                    /* enum odmr_tls */
};
struct conf_odmr {
    struct conf_odmr_listen *listen;
    size_t nlisten;             /* 0: no ODMR listener */
    long max_sessions;          /* open ODMR sessions at most */
    long auth_attempts;         /* AUTH failures before the session is closed */
    long auth_delay;            /* first 535 delay, seconds; doubles per failure */
    long auth_delay_max;        /* bound of one delay */
    long auth_window;           /* a client's failures are forgotten after this */
    long clients;               /* client addresses whose failures are kept */
    long login_timeout;         /* connect to ATRN at most, seconds */
};

/* Most bound parameters a custom query may use (%s, %u, %d occurrences). */
#define CONF_PGSQL_PARAMS_MAX 8

/* One `pgsql = ( { ... } )` entry: a PostgreSQL connection and how tables
 * and domain sources use it (pg.h, table_pgsql.c, domain_source.c). */
struct conf_pgsql {
    char *name;                 /* [a-z0-9_-]+, unique */
    char *conninfo;             /* libpq connection string, as written */
    char *recipient_query;      /* as written, or NULL: default schema */
    char *recipient_sql;        /* recipient_query with $1..$n, or the default query */
    char recipient_args[CONF_PGSQL_PARAMS_MAX + 1];  /* per $n: 's' address,
                                   'u' local part, 'd' domain; "" none */
    char *domain_query;         /* as written, or NULL: default schema */
    char *domain_sql;           /* what domains_from runs (no parameters) */
    long cache_ttl;             /* seconds a found/not-found answer is served */
    long cache_negative_ttl;
    long cache_size;            /* entries */
    long reread;                /* domains_from safety-net period, seconds */
    long connect_timeout;       /* seconds */
    long query_timeout;         /* seconds a query may wait, queued or running */
    long retry_max;             /* reconnect back-off ceiling, seconds */
};

struct conf_limits {
    long message_size;          /* octets */
    long recipients;            /* per transaction */
    long connections;           /* total inbound */
    long per_client;            /* inbound per client address */
    long command_timeout;       /* seconds */
    long data_timeout;          /* seconds */
    long line_length;           /* command line octets incl. CRLF (RFC 5321: 512) */
    long header_size;           /* total header octets */
    long header_lines;          /* header lines */
    long received_max;          /* Received headers before we call it a loop */
    long bad_commands;          /* errors before 421 */
    long junk_commands;         /* NOOP/RSET/VRFY/HELP/unknown before 421 */
    long disk_reserve;          /* free spool octets kept beyond SIZE */
    long keep_reserve;          /* kept copies go while free < disk_reserve + this */
};

struct conf_delivery {
    long probe_min;             /* seconds */
    long probe_max;             /* seconds */
    long max_connections;       /* per destination */
    long max_rate;              /* messages a second per destination, 0 = no cap */
    int adaptive;               /* AIMD window up to max_connections (dest_limits.h) */
    long connect_timeout;       /* seconds */
    long greeting_timeout;      /* RFC 5321 4.5.3.2: 5m */
    long command_timeout;       /* MAIL/RCPT: 5m */
    long data_timeout;          /* DATA block: 3m; end of data: 10m */
    long delay_warning;         /* seconds; 0 = off */
    long bounce_retention;      /* seconds; default 5d */
    long messages_per_connection;
    long mx_port;               /* port for MX-routed destinations (25) */
    long heartbeat;             /* seconds between checks of a gated primary */
    long heartbeat_timeout;     /* seconds each heartbeat step may take */
    long heartbeat_stale;       /* no answer this long: the gate state is stale */
};

/* The fleet (cluster.h): present when the file has a `cluster` group. */
struct conf_cluster {
    int enabled;                /* 1: a cluster group was given */
    char *node;                 /* this node's name; NULL: the hostname */
    char *pgsql;                /* the pgsql entry holding the fleet's tables */
    long status_interval;       /* seconds between node_status upserts */
    long stale_intervals;       /* a node silent this many intervals is stale */
};

/* Recipient verification by callout (verify.h): the `verify` group. */
struct conf_verify {
    long positive_expire;       /* seconds a 2xx answer is kept */
    long positive_refresh;      /* after this, used and refreshed in the background */
    long negative_expire;       /* seconds a 5xx answer is kept */
    long negative_refresh;
    long reply_wait;            /* RCPT waits this long for a probe, then 450 4.1.1 */
    long probe_timeout;         /* each probe step (connect, each reply) */
    long sessions;              /* probe sessions per primary host */
    long session_probes;        /* probes per session before QUIT and a new one */
    long rate;                  /* probes per primary host per second */
    long unknown_limit;         /* unknown recipients per client before the throttle */
    long unknown_penalty;       /* counting window and throttle time, seconds */
    long unreachable;           /* after a connect failure: UNKNOWN at once this long */
    long clients;               /* client addresses tracked for the throttle */
    long map_size;              /* initial LMDB map of the cache, octets */
};
/* Per-client limits (ratelimit.h) and the unknown-recipient tarpit: the
 * `ratelimit` group.  Every count is per `window`; 0 turns a limit off. */
struct conf_ratelimit {
    long window;                /* seconds */
    long connections;           /* per client address */
    long net_connections;       /* per client network (ipv4_prefix, ipv6_prefix) */
    long messages;              /* MAIL commands */
    long net_messages;
    long recipients;            /* RCPT commands */
    long net_recipients;
    long ipv4_prefix;           /* bits of a client network */
    long ipv6_prefix;
    long clients;               /* table entries; the least recently seen is evicted */
    long tarpit_after;          /* 5xx RCPT replies in a session before the tarpit */
    long tarpit_delay;          /* first delay, seconds; doubles each time */
    long tarpit_max;            /* bound of one delay, seconds */
};

/* Greylisting (greylist.h): the `greylist` group. */
struct conf_greylist {
    long delay;                 /* a new triplet is refused this long */
    long retry_window;          /* ... and forgotten if not retried within it */
    long pass_expire;           /* a passed triplet is remembered this long */
    long sweep;                 /* expiry sweep period, seconds */
    long map_size;              /* initial LMDB map, octets */
};

/* DNSBL/DNSWL (dnsbl.h): the `dnsbl` group.  A zone with a negative
 * weight is an allow-list (DNSWL). */
struct conf_dnsbl_zone {
    char *zone;                 /* lower case, no trailing dot */
    long weight;
    char *reply;                /* with at most one %s (the zone), or NULL */
};
struct conf_dnsbl {
    struct conf_dnsbl_zone *zones;
    size_t nzones;
    long threshold;             /* sum of weights that blocks */
    long timeout;               /* seconds the queries may take */
    long cache_ttl;             /* seconds an answer is reused */
    long cache_size;            /* client addresses kept */
};

/* SPF at MAIL (spf.h) and DKIM after the commit (dkim.h). */
struct conf_auth {
    long timeout;               /* DNS time per query try */
    long threads;               /* worker threads */
    long queue;                 /* checks waiting for a worker, at most */
    long breaker;               /* spf: checks in a row with no DNS answer
                                   that open the breaker */
    long breaker_retry;         /* spf: seconds between trial checks while open */
};

struct conf {
    char *path;                 /* the file this was read from */
    char *hostname;
    char **aliases;
    size_t naliases;
    enum bare_newline bare_newline;
    struct conf_listen *listen;
    size_t nlisten;
    char *spool;                /* absolute */
    char *user;                 /* NULL: do not change user */
    char *group;                /* NULL: user's primary group */
    char *resolver;             /* "ip" or "ip:port", NULL: system */
    char *authserv_id;          /* RFC 8601 authserv-id; default: hostname */
    struct conf_auth spf;
    struct conf_auth dkim;
    struct conf_cidr *etrn_allow;
    size_t netrn_allow;
    char *tls_certificate;      /* absolute, or NULL: no STARTTLS */
    char *tls_key;
    struct conf_limits limits;
    struct conf_delivery delivery;
    struct conf_verify verify;
    struct conf_domain *domains;
    size_t ndomains;
    const struct conf_domain **domain_index;   /* sorted by name; conf.c's own */
    char *control_socket;       /* absolute, or NULL */
    char *control_group;        /* group of the socket, or NULL */
    char *metrics_address;      /* NULL: no metrics listener */
    int metrics_port;
    char *pid_file;             /* absolute, or NULL */
    long lmdb_map_size;         /* initial map size, octets */
    long commit_batch;          /* most messages in one group commit */
    long quarantine_retention;  /* seconds a quarantined message is kept (14d) */
    struct conf_pgsql *pgsql;
    size_t npgsql;
    char *domains_from;         /* NAME of "pgsql:NAME", or NULL */
    int domains_unknown;        /* 1: domains_from has not answered since start: a
                                 * domain not in the file may be the database's */
    struct conf_cluster cluster;
    struct conf_milters milters;    /* global: every transaction */
    struct conf_ratelimit ratelimit;
    struct conf_greylist greylist;
    struct conf_dnsbl dnsbl;
    struct conf_odmr odmr;
    struct conf_cidr *allow_clients;    /* exempt from rate limits, greylisting, DNSBL */
    size_t nallow_clients;
    unsigned long refs;         /* conf.c's own: conf_ref / conf_free */
    const struct conf *parent;  /* conf.c's own: conf_with_domains' base */
};

/*
 * Load and validate path.  On success returns the new conf.  On failure
 * returns NULL and writes one line "file:line: what is wrong" (no newline)
 * into err (errlen octets, always NUL-terminated).
 */
struct conf *conf_load(const char *path, char *err, size_t errlen);

/* Make later conf_load() calls resolve relative paths against dir instead
 * of the working directory (mxkeepd calls it before entering its spool, so
 * a reload means what the first load meant).  NULL: back to getcwd(). */
void conf_set_basedir(const char *dir);

/* One more reference to c (returns c; NULL gives NULL).  A struct conf
 * not made by conf_load (refs 0: built by hand in tests) is not counted. */
const struct conf *conf_ref(const struct conf *c);
/* Drop one reference to a conf from conf_load() or conf_ref(); the last one
 * frees it.  Accepts NULL. */
void conf_free(const struct conf *c);

/* The pgsql entry called name, or NULL. */
const struct conf_pgsql *conf_pgsql_find(const struct conf *c, const char *name);

/*
 * A new conf (one reference) that is base plus the domains in rows, for
 * domains_from: nrows rows of ncols columns (cols[j] names column j; a
 * row's value may be NULL), columns as in doc/schema.sql's `domains`
 * (name, primary_route, retention, recipients, verify, unverified, accept,
 * tls, hold; unknown columns are ignored).  A domain already in base keeps
 * base's settings and is reported through dup_cb (the file wins); a row
 * that fails the file's validation is reported through bad_cb with the
 * reason and skipped.  NULL only when out of memory.
 */
typedef void conf_row_cb(void *arg, const char *domain, const char *reason);
struct conf *conf_with_domains(const struct conf *base, const char *const *cols, size_t ncols,
                               const char *const *values, size_t nrows,
                               conf_row_cb *dup_cb, conf_row_cb *bad_cb, void *arg);

/* Rewrite a pgsql_table(5)-style query: each %s, %u, %d (or the same in
 * single quotes, '%s') becomes $1, $2, ... and args gets one letter per
 * parameter; %% is a literal %.  0, or -1 with a reason (another %
 * escape, more than CONF_PGSQL_PARAMS_MAX).  *out is malloc'd.  Pure. */
int conf_pgsql_query(const char *q, char **out, char *args, char *why, size_t whylen);

/* Find a served domain, case-insensitively, ignoring one trailing dot.
 * Returns NULL when the domain is not served.  Pure. */
const struct conf_domain *conf_domain_find(const struct conf *c, const char *domain);

/* Pure value parsers, exposed for unit tests and the fuzzers.  Each returns
 * 0 on success, -1 on a malformed value. */
int conf_parse_duration(const char *s, long *seconds);      /* "30", "30s", "5m", "2h", "7d" */
int conf_parse_size(const char *s, long *octets);           /* "1000", "10k", "50M", "1G" */
int conf_parse_cidr(const char *s, struct conf_cidr *out);  /* "127.0.0.0/8", "::1", "10.1.2.3" */
/* "[host]:port", "[host]", "domain", "domain:port" */
int conf_parse_primary(const char *s, char **host, int *port, int *fixed);

/* Does the address (family, network-order bytes) fall inside any prefix? */
int conf_cidr_match(const struct conf_cidr *list, size_t n, int family, const void *addr);

#endif
