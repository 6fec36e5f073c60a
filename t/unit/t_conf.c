/*
 * t_conf.c - unit tests for conf.c: loading, defaults, every error class
 * with its file:line, the pure value parsers against hostile input, CIDR
 * matching and domain lookup.
 *
 * Writes its config files into a fresh mkdtemp() directory under /tmp,
 * works from inside it (so relative paths have a known base), and removes
 * it at the end.
 */
#include "config.h"
#include "conf.h"
#include "tap.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define ERRLEN 512

static char dir[] = "/tmp/t_conf.XXXXXX";
static char cwd[PATH_MAX];
static char errbuf[ERRLEN];

static void write_file(const char *name, const char *text)
{
    FILE *f = fopen(name, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        printf("Bail out! cannot write %s\n", name);
        exit(1);
    }
}

static struct conf *load_text(const char *text)
{
    write_file("c.conf", text);
    return conf_load("c.conf", errbuf, sizeof errbuf);
}

static char *abs_of(const char *rel)
{
    static char buf[PATH_MAX + 64];
    snprintf(buf, sizeof buf, "%s/%s", cwd, rel);
    return buf;
}

/* Two lines that make any file valid: lines 1 and 2. */
#define BASE "listen = ( { address = \"127.0.0.1\"; port = 2525; } );\n" \
             "spool = \"spool\";\n"

/* The load must fail with "c.conf:LINE: ...WHAT...". */
static void expect_err(const char *text, int line, const char *what, const char *name)
{
    char prefix[64];
    struct conf *c = load_text(text);
    snprintf(prefix, sizeof prefix, "c.conf:%d: ", line);
    if (!ok(c == NULL && strncmp(errbuf, prefix, strlen(prefix)) == 0 &&
            strstr(errbuf, what) != NULL && strchr(errbuf, '\n') == NULL,
            "error: %s", name))
        diag("  got \"%s\", want prefix \"%s\" containing \"%s\"", c ? "(loaded)" : errbuf,
             prefix, what);
    conf_free(c);
}

static void test_sample(void)
{
    struct conf *c;
    const struct conf_domain *d;
    char hex[65];

    memset(hex, 'A', 64);
    hex[64] = '\0';
    {
        char text[PATH_MAX + 2048];
        snprintf(text, sizeof text,
            "hostname = \"MX2.Example.NET.\";\n"
            "aliases = ( \"backup.example.net\", \"Other.Example.NET\" );\n"
            "bare_newline = \"reject\";\n"
            "listen = ( { address = \"127.0.0.1\"; port = 2525; },\n"
            "           { address = \"::1\"; port = 2526; } );\n"
            "spool = \"var/spool\";\n"
            "user = \"mxkeep\";\n"
            "resolver = \"127.0.0.1:5353\";\n"
            "etrn = { allow = ( \"127.0.0.0/8\", \"::1/128\" ); };\n"
            "tls = { certificate = \"cert.pem\"; key = \"%s/key.pem\"; };\n"
            "limits = { message_size = \"10M\"; recipients = 50; command_timeout = \"2m\";\n"
            "           line_length = 1000; };\n"
            "delivery = { probe_min = 10; probe_max = \"1h\"; max_connections = 2; };\n"
            "domains = (\n"
            "  { name = \"Example.ORG.\"; primary = \"[127.0.0.1]:2526\"; retention = \"30d\";\n"
            "    recipients = \"example.org.rcpts\"; tls = \"verify\";\n"
            "    tls_fingerprint = \"sha256:%s\"; hold = true; },\n"
            "  { name = \"example.com\"; }\n"
            ");\n"
            "control = { socket = \"var/run/mxkeep.sock\"; group = \"adm\"; };\n"
            "metrics = { address = \"127.0.0.1\"; };\n"
            "pid_file = \"/run/mxkeepd.pid\";\n"
            "lmdb_map_size = \"2G\";\n"
            "commit_batch = 64;\n", cwd, hex);
        c = load_text(text);
    }
    if (!ok(c != NULL, "sample-like config loads"))
        diag("  %s", errbuf);
    if (!c)
        return;
    is_str(c->path, "c.conf", "path kept");
    is_str(c->hostname, "mx2.example.net", "hostname lower-cased, dot dropped");
    is_int(c->naliases, 2, "two aliases");
    is_str(c->aliases[1], "other.example.net", "alias normalized");
    is_int(c->bare_newline, BARE_NL_REJECT, "bare_newline reject");
    is_int(c->nlisten, 2, "two listeners");
    is_str(c->listen[1].address, "::1", "v6 listener");
    is_int(c->listen[1].port, 2526, "listener port");
    is_str(c->spool, abs_of("var/spool"), "spool made absolute");
    is_str(c->user, "mxkeep", "user");
    ok(c->group == NULL, "group default NULL");
    is_str(c->resolver, "127.0.0.1:5353", "resolver");
    is_int(c->netrn_allow, 2, "two etrn prefixes");
    is_int(c->etrn_allow[1].family, AF_INET6, "second prefix v6");
    is_str(c->tls_certificate, abs_of("cert.pem"), "certificate made absolute");
    is_str(c->tls_key, abs_of("key.pem"), "absolute key kept");
    is_int(c->limits.message_size, 10L * 1024 * 1024, "message_size from size string");
    is_int(c->limits.recipients, 50, "recipients set");
    is_int(c->limits.command_timeout, 120, "command_timeout 2m");
    is_int(c->limits.line_length, 1000, "line_length set");
    is_int(c->limits.connections, 1000, "connections default");
    is_int(c->limits.per_client, 50, "per_client default (Postfix's client connection count limit)");
    is_int(c->limits.data_timeout, 600, "data_timeout default");
    is_int(c->limits.header_size, 100 * 1024, "header_size default");
    is_int(c->limits.header_lines, 1000, "header_lines default");
    is_int(c->limits.received_max, 100, "received_max default");
    is_int(c->limits.bad_commands, 10, "bad_commands default");
    is_int(c->delivery.probe_min, 10, "probe_min plain integer");
    is_int(c->delivery.probe_max, 3600, "probe_max 1h");
    is_int(c->delivery.max_connections, 2, "max_connections");
    is_int(c->delivery.max_rate, 0, "max_rate default");
    is_int(c->delivery.connect_timeout, 30, "connect_timeout default");
    is_int(c->delivery.greeting_timeout, 300, "greeting_timeout default");
    is_int(c->delivery.command_timeout, 300, "delivery command_timeout default");
    is_int(c->delivery.data_timeout, 600, "delivery data_timeout default");
    is_int(c->delivery.delay_warning, 0, "delay_warning default off");
    is_int(c->delivery.bounce_retention, 5 * 86400, "bounce_retention default");
    is_int(c->delivery.messages_per_connection, 1000, "messages_per_connection default");
    is_int(c->ndomains, 2, "two domains");
    d = &c->domains[0];
    is_str(d->name, "example.org", "domain name normalized");
    is_str(d->primary, "[127.0.0.1]:2526", "primary as written");
    is_str(d->primary_host, "127.0.0.1", "primary host");
    is_int(d->primary_port, 2526, "primary port");
    is_int(d->primary_fixed, 1, "primary fixed");
    is_int(d->retention, 30 * 86400, "retention 30d");
    is_str(d->recipients, abs_of("example.org.rcpts"), "recipients absolute");
    is_int(d->tls, TLS_POLICY_VERIFY, "tls verify");
    ok(d->tls_ca == NULL, "verify without tls_ca is allowed");
    ok(d->tls_fingerprint && strncmp(d->tls_fingerprint, "sha256:aaaa", 11) == 0 &&
       strlen(d->tls_fingerprint) == 7 + 64, "fingerprint normalized to lower case");
    is_int(d->hold, 1, "hold true");
    d = &c->domains[1];
    is_str(d->name, "example.com", "second domain");
    ok(d->primary == NULL, "no primary");
    is_str(d->primary_host, "example.com", "primary_host defaults to the name");
    is_int(d->primary_port, 25, "primary port default 25");
    is_int(d->primary_fixed, 0, "MX lookup");
    is_int(d->retention, 7 * 86400, "retention default 7d");
    is_int(d->tls, TLS_POLICY_MAY, "tls default may");
    is_int(d->hold, 0, "hold default false");
    ok(d->recipients == NULL, "no recipient list");
    is_str(c->control_socket, abs_of("var/run/mxkeep.sock"), "control socket absolute");
    is_str(c->control_group, "adm", "control group");
    is_str(c->metrics_address, "127.0.0.1", "metrics address");
    is_int(c->metrics_port, 9125, "metrics port default");
    is_str(c->pid_file, "/run/mxkeepd.pid", "pid_file");
    is_int(c->lmdb_map_size, 2L * 1024 * 1024 * 1024, "lmdb_map_size 2G");
    is_int(c->commit_batch, 64, "commit_batch");

    ok(conf_domain_find(c, "example.org") == &c->domains[0], "find exact");
    ok(conf_domain_find(c, "EXAMPLE.Org") == &c->domains[0], "find case-insensitive");
    ok(conf_domain_find(c, "example.org.") == &c->domains[0], "find with trailing dot");
    ok(conf_domain_find(c, "example.org..") == NULL, "only one trailing dot ignored");
    ok(conf_domain_find(c, "sub.example.org") == NULL, "subdomain not served");
    ok(conf_domain_find(c, "example.or") == NULL, "prefix not served");
    ok(conf_domain_find(c, "xexample.com") == NULL, "suffix trick not served");
    ok(conf_domain_find(c, "") == NULL, "empty not served");
    conf_free(c);
}

static void test_defaults(void)
{
    char host[256];
    struct conf *c = load_text(BASE);
    if (!ok(c != NULL, "minimal config loads"))
        diag("  %s", errbuf);
    if (!c)
        return;
    is_int(c->bare_newline, BARE_NL_NORMALIZE, "bare_newline default normalize");
    is_int(c->limits.message_size, 52428800, "message_size default 50 MiB");
    is_int(c->limits.recipients, 1000, "recipients default");
    is_int(c->limits.command_timeout, 300, "command_timeout default");
    is_int(c->limits.line_length, 512, "line_length default 512");
    is_int(c->delivery.probe_min, 30, "probe_min default");
    is_int(c->delivery.probe_max, 900, "probe_max default");
    is_int(c->delivery.max_connections, 16, "max_connections default");
    is_int(c->delivery.adaptive, 1, "adaptive default");
    is_int(c->lmdb_map_size, 1L << 30, "lmdb_map_size default 1 GiB");
    is_int(c->commit_batch, 256, "commit_batch default");
    is_int(c->ndomains, 0, "no domains");
    is_int(c->netrn_allow, 0, "nobody may ETRN");
    ok(c->tls_certificate == NULL && c->tls_key == NULL, "no TLS");
    ok(c->user == NULL && c->resolver == NULL && c->control_socket == NULL &&
       c->metrics_address == NULL && c->pid_file == NULL, "optional strings NULL");
    if (gethostname(host, sizeof host) == 0) {
        host[sizeof host - 1] = '\0';
        ok(c->hostname && strcasecmp(c->hostname, host) == 0, "hostname from gethostname");
    }
    ok(conf_domain_find(c, "example.org") == NULL, "find in an empty list");
    conf_free(c);
}

/* A reload drops its reference while a holder keeps its own: the conf
 * lives until the last one goes (ASan would see a use after free). */
static void test_refcount(void)
{
    struct conf *c = load_text(BASE "hostname = \"mx.example.net\";\n"
                                    "aliases = ( \"a.example.net\" );\n");
    if (!ok(c != NULL, "refcount: config loads"))
        return;
    const struct conf *held = conf_ref(c);
    ok(held == c, "conf_ref returns the conf");
    conf_free(c);                   /* the loader's reference */
    is_str(held->hostname, "mx.example.net", "still readable through the other reference");
    is_str(held->aliases[0], "a.example.net", "its strings too");
    conf_free(held);                /* the last one frees it */
    ok(conf_ref(NULL) == NULL, "conf_ref(NULL) is NULL");
    conf_free(NULL);
}

/* A long alias list and many listen addresses load whole: nothing is
 * cut to a fixed size on the way in. */
static void test_long_lists(void)
{
    char text[8192];
    size_t n = 0;
    n += (size_t)snprintf(text + n, sizeof text - n, "spool = \"spool\";\nlisten = (");
    for (int i = 1; i <= 20; i++)
        n += (size_t)snprintf(text + n, sizeof text - n,
                              "%s{ address = \"127.0.1.%d\"; port = 2525; }", i > 1 ? ", " : " ", i);
    n += (size_t)snprintf(text + n, sizeof text - n, " );\naliases = (");
    for (int i = 1; i <= 40; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "%s\"alias%02d.example.net\"",
                              i > 1 ? ", " : " ", i);
    snprintf(text + n, sizeof text - n, " );\n");
    struct conf *c = load_text(text);
    if (!ok(c != NULL, "40 aliases and 20 listen addresses load"))
        diag("  %s", errbuf);
    if (!c)
        return;
    is_int(c->naliases, 40, "40 aliases kept");
    is_str(c->aliases[39], "alias40.example.net", "the 40th alias");
    is_int(c->nlisten, 20, "20 listen addresses kept");
    is_str(c->listen[19].address, "127.0.1.20", "the 20th listen address");
    conf_free(c);
}

static void test_errors(void)
{
    char text[1024];

    expect_err(BASE "spool2 = 1;\n", 3, "unknown setting \"spool2\"", "unknown top-level key");
    expect_err(BASE "limits = {\n  recipients = 10;\n  = 5; };\n", 5, "syntax error",
               "syntax error at libconfig's line");
    expect_err(BASE "limits = {\n  recipients = 10;\n  recipient = 5;\n};\n", 5,
               "unknown setting \"recipient\" in limits", "unknown key in limits");
    expect_err(BASE "delivery = { probe_mn = 1; };\n", 3, "in delivery",
               "unknown key in delivery");
    expect_err(BASE "domains = (\n { name = \"a.example\"; },\n { name = \"b.example\";\n"
               "   retension = \"1d\"; }\n);\n", 6, "unknown setting \"retension\" in domains",
               "unknown key in a domain");
    expect_err(BASE "listen2 = 1;\n", 3, "listen2", "unknown key near a known one");
    expect_err("listen = ( { address = \"127.0.0.1\"; port = 2525; prot = 1; } );\n"
               "spool = \"x\";\n", 1, "unknown setting \"prot\" in listen",
               "unknown key in a listen element");
    expect_err(BASE "tls = { certificate = \"cert.pem\"; key = \"key.pem\"; ca = \"x\"; };\n",
               3, "unknown setting \"ca\" in tls", "unknown key in tls");
    expect_err(BASE "limits = { command_timeout = \"5x\"; };\n", 3, "bad duration \"5x\"",
               "bad duration suffix");
    expect_err(BASE "limits = { command_timeout = \"\"; };\n", 3, "bad duration \"\"",
               "empty duration");
    expect_err(BASE "limits = { data_timeout = 1.5; };\n", 3, "must be a duration",
               "float duration");
    expect_err(BASE "limits = { message_size = \"50MB\"; };\n", 3, "bad size",
               "bad size suffix");
    expect_err(BASE "limits = { line_length = 100; };\n", 3,
               "limits.line_length must be between 512 and 65536", "line_length below RFC minimum");
    expect_err(BASE "limits = { recipients = 0; };\n", 3, "between", "recipients 0");
    expect_err(BASE "limits = { recipients = -5; };\n", 3, "between", "negative count");
    expect_err(BASE "limits = { message_size = \"3G\"; };\n", 3, "between 1k and 2G",
               "message_size above 2G");
    expect_err(BASE "limits = { command_timeout = 0; };\n", 3, "between 1s and 1d",
               "zero timeout");
    expect_err(BASE "limits = { recipients = \"10\"; };\n", 3, "must be an integer",
               "string for an integer");
    expect_err(BASE "domains = ( { name = \"a.example\"; retention = \"400d\"; } );\n", 3,
               "between 1h and 365d", "retention over a year");
    expect_err(BASE "delivery = { probe_min = \"1h\";\n probe_max = \"5m\"; };\n", 3,
               "probe_min must not exceed", "probe_min above probe_max");
    expect_err(BASE "bare_newline = \"strip\";\n", 3, "\"strip\" is not one of",
               "bad bare_newline");
    expect_err(BASE "bare_newline = 1;\n", 3, "must be a string", "bare_newline not a string");
    expect_err(BASE "etrn = { allow = ( \"127.0.0.0/8\",\n \"10.0.0.0/33\" ); };\n", 4,
               "\"10.0.0.0/33\"", "bad cidr on its own line");
    expect_err(BASE "etrn = { allow = ( \"localhost\" ); };\n", 3, "not an address or prefix",
               "cidr by name");
    expect_err("listen = ( { address = \"127.0.0.1\"; port = 2525; } );\nuser = \"x\";\n",
               1, "missing required setting \"spool\"", "missing spool");
    expect_err("spool = \"x\";\n", 1, "missing required setting \"listen\"", "missing listen");
    expect_err("spool = \"x\";\nlisten = ( );\n", 2, "at least one", "empty listen");
    expect_err("spool = \"x\";\nlisten = ( { address = \"localhost\"; port = 25; } );\n", 2,
               "not a numeric", "listen address by name");
    expect_err("spool = \"x\";\nlisten = ( { address = \"127.0.0.1\"; port = 0; } );\n", 2,
               "between 1 and 65535", "listen port 0");
    expect_err("spool = \"x\";\nlisten = ( { address = \"127.0.0.1\"; port = 65536; } );\n", 2,
               "between 1 and 65535", "listen port 65536");
    expect_err("spool = \"x\";\nlisten = ( { address = \"127.0.0.1\"; } );\n", 2,
               "missing required setting \"listen.port\"", "listen without port");
    expect_err(BASE "spool = \"y\";\n", 3, "duplicate setting", "duplicate key (libconfig)");
    expect_err(BASE "domains = (\n { name = \"example.org\"; },\n { name = \"Example.ORG.\"; }\n);\n",
               5, "listed twice", "duplicate domain");
    expect_err(BASE "domains = ( { name = \"bad_name.example\"; } );\n", 3,
               "not a valid host name", "bad domain name");
    expect_err(BASE "domains = ( { retention = \"1d\"; } );\n", 3,
               "missing required setting \"domains.name\"", "domain without name");
    expect_err(BASE "domains = (\n { name = \"a.example\";\n   primary = \"[127.0.0.1]:99999\"; }\n);\n",
               5, "domains.primary", "bad primary port");
    expect_err(BASE "domains = ( { name = \"a.example\"; primary = \"[127.0.0.1\"; } );\n", 3,
               "is not \"[host]:port\"", "unclosed bracket in primary");
    expect_err(BASE "tls = { certificate = \"cert.pem\"; };\n", 3, "both certificate and key",
               "tls certificate without key");
    expect_err(BASE "tls = { certificate = \"cert.pem\";\n key = \"nokey.pem\"; };\n", 4,
               "cannot read", "tls key missing on disk");
    expect_err(BASE "domains = (\n { name = \"a.example\";\n   recipients = \"missing.rcpts\"; }\n);\n",
               5, "cannot read", "missing recipients file");
    expect_err(BASE "domains = ( { name = \"a.example\"; tls = \"required\"; } );\n", 3,
               "\"required\" is not one of", "bad tls policy");
    expect_err(BASE "domains = ( { name = \"a.example\"; tls_fingerprint = \"sha256:abcd\"; } );\n",
               3, "tls_fingerprint", "short fingerprint");
    snprintf(text, sizeof text, BASE "domains = ( { name = \"a.example\";\n"
             "  tls_fingerprint = \"md5:%064d\"; } );\n", 0);
    expect_err(text, 4, "tls_fingerprint", "fingerprint with the wrong hash");
    snprintf(text, sizeof text, BASE "domains = ( { name = \"a.example\";\n"
             "  tls_fingerprint = \"sha256:%063dg\"; } );\n", 0);
    expect_err(text, 4, "tls_fingerprint", "fingerprint with a non-hex digit");
    expect_err(BASE "domains = ( { name = \"a.example\"; hold = 1; } );\n", 3,
               "true or false", "hold not a bool");
    expect_err(BASE "resolver = \"dns.example:53\";\n", 3, "resolver", "resolver by name");
    expect_err(BASE "resolver = \"127.0.0.1:0\";\n", 3, "resolver", "resolver port 0");
    expect_err(BASE "limits = 5;\n", 3, "must be a group", "limits not a group");
    expect_err(BASE "domains = ( \"example.org\" );\n", 3, "must be a group",
               "domain entry not a group");
    expect_err(BASE "aliases = ( \"ok.example\", \"-bad.example\" );\n", 3,
               "not a valid host name", "bad alias");
    expect_err(BASE "hostname = \"mx..example\";\n", 3, "not a valid host name", "bad hostname");
    expect_err(BASE "metrics = { port = 9125; };\n", 3, "metrics.address", "metrics without address");
    expect_err(BASE "user = \"a\\nb\";\nuser2 = 1;\n", 4, "user2", "unknown after a string with newline");
    expect_err(BASE "limits = { header_size = \"60M\"; message_size = \"10M\"; };\n", 3,
               "must not exceed limits.message_size", "header_size above message_size");

    {
        struct conf *c = conf_load("does-not-exist.conf", errbuf, sizeof errbuf);
        ok(c == NULL && strncmp(errbuf, "does-not-exist.conf: cannot read", 32) == 0,
           "missing file reported");
    }
    {
        char small[8];
        struct conf *c = load_text(BASE "bogus = 1;\n");
        conf_free(c);
        c = conf_load("c.conf", small, sizeof small);
        ok(c == NULL && strlen(small) == sizeof small - 1, "error truncated to errlen");
    }
}

static void test_duration(void)
{
    long v = -1;
    is_int(conf_parse_duration("30", &v), 0, "duration plain");
    is_int(v, 30, "duration plain value");
    conf_parse_duration("30s", &v);
    is_int(v, 30, "30s");
    conf_parse_duration("5m", &v);
    is_int(v, 300, "5m");
    conf_parse_duration("2h", &v);
    is_int(v, 7200, "2h");
    conf_parse_duration("7d", &v);
    is_int(v, 604800, "7d");
    is_int(conf_parse_duration("0", &v), 0, "zero parses");
    is_int(v, 0, "zero value");
    v = 42;
    is_int(conf_parse_duration("", &v), -1, "empty duration");
    is_int(conf_parse_duration(NULL, &v), -1, "NULL duration");
    is_int(conf_parse_duration("-5", &v), -1, "negative duration");
    is_int(conf_parse_duration("+5", &v), -1, "signed duration");
    is_int(conf_parse_duration(" 5", &v), -1, "leading space");
    is_int(conf_parse_duration("5 m", &v), -1, "inner space");
    is_int(conf_parse_duration("5M", &v), -1, "upper-case M is not minutes");
    is_int(conf_parse_duration("5w", &v), -1, "unknown unit");
    is_int(conf_parse_duration("5mm", &v), -1, "two units");
    is_int(conf_parse_duration("m", &v), -1, "unit without number");
    is_int(conf_parse_duration("99999999999999999999", &v), -1, "overflow digits");
    is_int(conf_parse_duration("9223372036854775807", &v), 0, "LONG_MAX seconds");
    is_int(conf_parse_duration("9223372036854775808", &v), -1, "LONG_MAX + 1");
    is_int(conf_parse_duration("106751991167301d", &v), -1, "overflow by unit");
    is_int(v, LONG_MAX, "failed parses leave the output alone");
}

static void test_size(void)
{
    long v = -1;
    conf_parse_size("1000", &v);
    is_int(v, 1000, "size plain");
    conf_parse_size("10k", &v);
    is_int(v, 10240, "10k");
    conf_parse_size("10K", &v);
    is_int(v, 10240, "10K");
    conf_parse_size("50M", &v);
    is_int(v, 52428800, "50M");
    conf_parse_size("1G", &v);
    is_int(v, 1073741824, "1G");
    is_int(conf_parse_size("", &v), -1, "empty size");
    is_int(conf_parse_size("-1", &v), -1, "negative size");
    is_int(conf_parse_size("1T", &v), -1, "unknown unit");
    is_int(conf_parse_size("1KB", &v), -1, "junk after unit");
    is_int(conf_parse_size("1.5M", &v), -1, "fraction");
    is_int(conf_parse_size("0x10", &v), -1, "hex");
    is_int(conf_parse_size("8589934592G", &v), -1, "overflow by unit");
    is_int(conf_parse_size("8589934591G", &v), 0, "largest G");
}

static void test_cidr(void)
{
    struct conf_cidr c, list[3];
    unsigned char a4[4], a6[16];

    is_int(conf_parse_cidr("127.0.0.0/8", &c), 0, "v4 prefix");
    is_int(c.family, AF_INET, "v4 family");
    is_int(c.bits, 8, "v4 bits");
    is_int(conf_parse_cidr("10.1.2.3", &c), 0, "bare v4");
    is_int(c.bits, 32, "bare v4 is /32");
    is_int(conf_parse_cidr("::1", &c), 0, "bare v6");
    is_int(c.bits, 128, "bare v6 is /128");
    is_int(conf_parse_cidr("2001:db8::/32", &c), 0, "v6 prefix");
    is_int(c.family, AF_INET6, "v6 family");
    is_int(conf_parse_cidr("10.1.2.3/8", &c), 0, "host bits allowed");
    is_int(c.addr[1], 0, "host bits cleared");
    is_int(conf_parse_cidr("0.0.0.0/0", &c), 0, "everything");
    is_int(conf_parse_cidr("10.0.0.0/33", &c), -1, "v4 /33");
    is_int(conf_parse_cidr("::/129", &c), -1, "v6 /129");
    is_int(conf_parse_cidr("10.0.0.0/", &c), -1, "empty bits");
    is_int(conf_parse_cidr("10.0.0.0/-1", &c), -1, "negative bits");
    is_int(conf_parse_cidr("10.0.0.0/8x", &c), -1, "junk after bits");
    is_int(conf_parse_cidr("10.0.0.0/0008", &c), -1, "too many digits");
    is_int(conf_parse_cidr("10.0.0/8", &c), -1, "short v4");
    is_int(conf_parse_cidr("", &c), -1, "empty cidr");
    is_int(conf_parse_cidr("example.org/8", &c), -1, "name");
    is_int(conf_parse_cidr("1111:2222:3333:4444:5555:6666:7777:8888:9999/64", &c), -1,
           "overlong text");

    conf_parse_cidr("192.0.2.0/24", &list[0]);
    conf_parse_cidr("2001:db8::/32", &list[1]);
    conf_parse_cidr("10.0.0.0/9", &list[2]);
    inet_pton(AF_INET, "192.0.2.77", a4);
    ok(conf_cidr_match(list, 3, AF_INET, a4), "v4 in /24");
    inet_pton(AF_INET, "192.0.3.1", a4);
    ok(!conf_cidr_match(list, 3, AF_INET, a4), "v4 outside /24");
    inet_pton(AF_INET, "10.127.255.255", a4);
    ok(conf_cidr_match(list, 3, AF_INET, a4), "v4 in odd /9");
    inet_pton(AF_INET, "10.128.0.0", a4);
    ok(!conf_cidr_match(list, 3, AF_INET, a4), "v4 just outside /9");
    inet_pton(AF_INET6, "2001:db8:ffff::1", a6);
    ok(conf_cidr_match(list, 3, AF_INET6, a6), "v6 in /32");
    inet_pton(AF_INET6, "2001:db9::1", a6);
    ok(!conf_cidr_match(list, 3, AF_INET6, a6), "v6 outside /32");
    inet_pton(AF_INET6, "::ffff:192.0.2.5", a6);
    ok(conf_cidr_match(list, 3, AF_INET6, a6), "v4-mapped matches v4 prefix");
    inet_pton(AF_INET6, "::ffff:192.0.9.5", a6);
    ok(!conf_cidr_match(list, 3, AF_INET6, a6), "v4-mapped outside v4 prefix");
    inet_pton(AF_INET6, "::192.0.2.5", a6);
    ok(!conf_cidr_match(list, 3, AF_INET6, a6), "v4-compatible is not mapped");
    ok(!conf_cidr_match(list, 0, AF_INET, a4), "empty list matches nothing");
    ok(!conf_cidr_match(list, 3, AF_UNIX, a4), "unknown family matches nothing");
    conf_parse_cidr("::ffff:0:0/96", &list[0]);
    inet_pton(AF_INET, "203.0.113.9", a4);
    ok(conf_cidr_match(list, 1, AF_INET, a4), "v4 address against mapped v6 prefix");
    conf_parse_cidr("0.0.0.0/0", &list[0]);
    ok(conf_cidr_match(list, 1, AF_INET, a4), "/0 matches any v4");
}

static void test_primary(void)
{
    char *h = NULL;
    int port = 0, fixed = -1;

    is_int(conf_parse_primary("[127.0.0.1]:2526", &h, &port, &fixed), 0, "[ip]:port");
    is_str(h, "127.0.0.1", "[ip]:port host");
    is_int(port, 2526, "[ip]:port port");
    is_int(fixed, 1, "[ip]:port fixed");
    free(h);
    h = NULL;
    is_int(conf_parse_primary("[MX1.Example.ORG]", &h, &port, &fixed), 0, "[host]");
    is_str(h, "mx1.example.org", "[host] lower-cased");
    is_int(port, 25, "[host] port 25");
    is_int(fixed, 1, "[host] fixed");
    free(h);
    h = NULL;
    is_int(conf_parse_primary("example.org", &h, &port, &fixed), 0, "domain");
    is_int(fixed, 0, "domain is MX lookup");
    is_int(port, 25, "domain port 25");
    free(h);
    h = NULL;
    is_int(conf_parse_primary("example.org:587", &h, &port, &fixed), 0, "domain:port");
    is_str(h, "example.org", "domain:port host");
    is_int(port, 587, "domain:port port");
    free(h);
    h = NULL;
    is_int(conf_parse_primary("[::1]:2526", &h, &port, &fixed), 0, "[ipv6]:port");
    is_str(h, "::1", "[ipv6] host");
    is_int(port, 2526, "[ipv6] port");
    free(h);
    h = NULL;
    is_int(conf_parse_primary("[2001:db8::25]", &h, &port, &fixed), 0, "[ipv6]");
    free(h);
    h = NULL;

    is_int(conf_parse_primary("", &h, &port, &fixed), -1, "empty");
    is_int(conf_parse_primary("[]:25", &h, &port, &fixed), -1, "empty brackets");
    is_int(conf_parse_primary(":25", &h, &port, &fixed), -1, "no host");
    is_int(conf_parse_primary("[127.0.0.1]:", &h, &port, &fixed), -1, "empty port");
    is_int(conf_parse_primary("[127.0.0.1]:0", &h, &port, &fixed), -1, "port 0");
    is_int(conf_parse_primary("[127.0.0.1]:65536", &h, &port, &fixed), -1, "port 65536");
    is_int(conf_parse_primary("[127.0.0.1]:99999999999999999999", &h, &port, &fixed), -1,
           "port overflow");
    is_int(conf_parse_primary("[127.0.0.1]:-25", &h, &port, &fixed), -1, "negative port");
    is_int(conf_parse_primary("[127.0.0.1]:25x", &h, &port, &fixed), -1, "junk after port");
    is_int(conf_parse_primary("[127.0.0.1]x", &h, &port, &fixed), -1, "junk after bracket");
    is_int(conf_parse_primary("[127.0.0.1", &h, &port, &fixed), -1, "unclosed bracket");
    is_int(conf_parse_primary("::1", &h, &port, &fixed), -1, "bare ipv6");
    is_int(conf_parse_primary("127.0.0.1:25", &h, &port, &fixed), -1, "unbracketed address");
    is_int(conf_parse_primary("exa mple.org", &h, &port, &fixed), -1, "space in host");
    is_int(conf_parse_primary("[bad_host]:25", &h, &port, &fixed), -1, "bad host in brackets");
    is_int(conf_parse_primary("[::1]]:25", &h, &port, &fixed), -1, "double bracket");
    ok(h == NULL, "no host handed out on failure");
}

static void cleanup(void)
{
    static const char *const files[] = { "c.conf", "cert.pem", "key.pem", "example.org.rcpts" };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        unlink(files[i]);
    if (chdir("/") == 0)
        rmdir(dir);
}

/* cluster = { ... }: defaults, bounds, and the pgsql entry it must name. */
static void test_cluster(void)
{
#define PG "pgsql = ( { name = \"main\"; conninfo = \"dbname=x\"; } );\n"
    struct conf *c = load_text(BASE PG "cluster = { pgsql = \"main\"; };\n");
    ok(c && c->cluster.enabled && c->cluster.node == NULL &&
       strcmp(c->cluster.pgsql, "main") == 0 && c->cluster.status_interval == 5 &&
       c->cluster.stale_intervals == 3, "cluster: defaults (node = hostname, 5s, 3 intervals)");
    conf_free(c);
    c = load_text(BASE PG "cluster = { node = \"mx2a\"; pgsql = \"main\"; "
                  "status_interval = \"2s\"; stale_intervals = 5; };\n");
    ok(c && strcmp(c->cluster.node, "mx2a") == 0 && c->cluster.status_interval == 2 &&
       c->cluster.stale_intervals == 5, "cluster: node, status_interval, stale_intervals");
    conf_free(c);
    c = load_text(BASE);
    ok(c && !c->cluster.enabled, "no cluster group: not a fleet node");
    conf_free(c);
    expect_err(BASE PG "cluster = { node = \"mx2a\"; };\n", 4,
               "missing required setting \"cluster.pgsql\"", "cluster without pgsql");
    expect_err(BASE PG "cluster = {\n pgsql = \"other\"; };\n", 5,
               "cluster.pgsql: no pgsql entry is called \"other\"", "cluster.pgsql names no entry");
    expect_err(BASE PG "cluster = {\n node = \"mx 2a\"; pgsql = \"main\"; };\n", 5,
               "cluster.node", "node name with a space");
    expect_err(BASE PG "cluster = { pgsql = \"main\"; status_interval = 0; };\n", 4,
               "between 1s and 1h", "status_interval 0");
    expect_err(BASE PG "cluster = { pgsql = \"main\"; stale_intervals = 1; };\n", 4,
               "between 2 and 100", "stale_intervals 1");
#undef PG
}

/* Issue 9, section 5: quotas, ratelimit, greylist, dnsbl, allow_clients. */
static void test_limits_issue9(void)
{
    struct conf *c = load_text(BASE "domains = ( { name = \"a.example\"; max_messages = 100;\n"
                               "  max_bytes = \"2G\"; greylist = true; }, { name = \"b.example\"; } );\n"
                               "ratelimit = { connections = 5; net_messages = 0; tarpit_after = 2; };\n"
                               "greylist = { delay = \"1m\"; };\n"
                               "allow_clients = ( \"192.0.2.0/24\", \"2001:db8::/32\" );\n"
                               "dnsbl = { zones = ( { zone = \"BL.Example.\"; weight = 2;\n"
                               "  reply = \"listed at %s, 100%%\"; }, { zone = \"wl.example\"; weight = -3; } );\n"
                               "  threshold = 2; };\n");
    if (!ok(c != NULL, "issue 9 settings load"))
        diag("  %s", errbuf);
    if (c == NULL)
        return;
    const struct conf_domain *a = conf_domain_find(c, "a.example");
    const struct conf_domain *b = conf_domain_find(c, "b.example");
    ok(a && a->max_messages == 100 && a->max_bytes == 2L * 1024 * 1024 * 1024 && a->greylist,
       "max_messages, max_bytes \"2G\", greylist");
    ok(b && b->max_messages == 0 && b->max_bytes == 0 && !b->greylist, "quotas off by default");
    ok(c->ratelimit.connections == 5 && c->ratelimit.net_messages == 0 &&
       c->ratelimit.net_connections == 0 && c->ratelimit.window == 60 &&
       c->ratelimit.ipv4_prefix == 24 && c->ratelimit.ipv6_prefix == 64 &&
       c->ratelimit.tarpit_after == 2 && c->ratelimit.tarpit_delay == 1 &&
       c->ratelimit.tarpit_max == 10, "ratelimit values and defaults");
    ok(c->greylist.delay == 60 && c->greylist.retry_window == 36 * 3600 &&
       c->greylist.pass_expire == 36 * 86400, "greylist values and defaults");
    ok(c->nallow_clients == 2, "allow_clients");
    ok(c->dnsbl.nzones == 2 && strcmp(c->dnsbl.zones[0].zone, "bl.example") == 0 &&
       c->dnsbl.zones[0].weight == 2 && c->dnsbl.zones[1].weight == -3 &&
       c->dnsbl.zones[1].reply == NULL && c->dnsbl.threshold == 2 && c->dnsbl.timeout == 5,
       "dnsbl zones (name normalized), weights, threshold, defaults");
    conf_free(c);
    c = load_text(BASE);
    ok(c && c->dnsbl.nzones == 0 && c->ratelimit.messages == 0 && c->nallow_clients == 0,
       "without the groups: no zones, default limits");
    conf_free(c);

    expect_err(BASE "dnsbl = { zones = ( { zone = \"bl.example\";\n reply = \"%s %s\"; } ); };\n",
               4, "at most one %s", "dnsbl reply with two %s");
    expect_err(BASE "dnsbl = { zones = ( { zone = \"bl.example\";\n reply = \"%d\"; } ); };\n",
               4, "at most one %s", "dnsbl reply with %d");
    expect_err(BASE "dnsbl = { zones = ( { weight = 1; } ); };\n", 3, "zone", "dnsbl zone missing");
    expect_err(BASE "allow_clients = ( \"300.1.1.1\" );\n", 3, "allow_clients", "bad allow prefix");
    expect_err(BASE "ratelimit = { ipv4_prefix = 33; };\n", 3, "between", "ipv4_prefix 33");
    expect_err(BASE "domains = ( { name = \"a.example\"; max_messages = -1; } );\n", 3, "between",
               "negative max_messages");
}

int main(void)
{
    if (!mkdtemp(dir) || chdir(dir) < 0 || !getcwd(cwd, sizeof cwd)) {
        printf("Bail out! cannot make a temp directory\n");
        return 1;
    }
    write_file("cert.pem", "not really a certificate\n");
    write_file("key.pem", "not really a key\n");
    write_file("example.org.rcpts", "postmaster@example.org\n");

    test_sample();
    test_defaults();
    test_refcount();
    test_long_lists();
    test_errors();
    test_duration();
    test_size();
    test_cidr();
    test_primary();
    test_cluster();
    test_limits_issue9();

    cleanup();
    return done_testing();
}
