/*
 * t_conf_pgsql.c - unit tests for the pgsql parts of conf.c: the query
 * rewriter (%s %u %d and '%s' into bound $n parameters, %% a literal %,
 * anything else refused), the `pgsql` entries and `domains_from` with their
 * file:line errors, and conf_with_domains(): rows validated like the
 * file's domains, the file winning on a name in both, bad rows reported
 * and skipped, duplicates dropped, the index sorted, ownership (the
 * composed conf borrows its base and frees only its own rows).
 */
#include "config.h"
#include "conf.h"
#include "tap.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ERRLEN 512

static char dir[] = "/tmp/t_conf_pgsql.XXXXXX";
static char errbuf[ERRLEN];

#define BASE "listen = ( { address = \"127.0.0.1\"; port = 2525; } );\n" \
             "spool = \"spool\";\n"

static struct conf *load_text(const char *text)
{
    FILE *f = fopen("c.conf", "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        printf("Bail out! cannot write c.conf\n");
        exit(1);
    }
    return conf_load("c.conf", errbuf, sizeof errbuf);
}

static void expect_err(const char *text, int line, const char *what, const char *name)
{
    char prefix[64];
    struct conf *c = load_text(text);
    snprintf(prefix, sizeof prefix, "c.conf:%d: ", line);
    if (!ok(c == NULL && strncmp(errbuf, prefix, strlen(prefix)) == 0 && strstr(errbuf, what),
            "error: %s", name))
        diag("  got \"%s\", want \"%s...%s\"", c ? "(loaded)" : errbuf, prefix, what);
    conf_free(c);
}

static void test_query(void)
{
    char *out = NULL, args[CONF_PGSQL_PARAMS_MAX + 1], why[128];

    is_int(conf_pgsql_query("SELECT 1 FROM u WHERE e = %s", &out, args, why, sizeof why), 0, "%%s");
    is_str(out, "SELECT 1 FROM u WHERE e = $1", "%%s -> $1");
    is_str(args, "s", "one address parameter");
    free(out);
    is_int(conf_pgsql_query("SELECT 1 FROM u WHERE l = '%u' AND d = %d AND x LIKE 'a%%'", &out,
                            args, why, sizeof why), 0, "quoted '%%u', %%d, %%%%");
    is_str(out, "SELECT 1 FROM u WHERE l = $1 AND d = $2 AND x LIKE 'a%'", "quotes dropped, %% kept");
    is_str(args, "ud", "local part then domain");
    free(out);
    is_int(conf_pgsql_query("SELECT %s, %s, %d", &out, args, why, sizeof why), 0, "repeats");
    is_str(out, "SELECT $1, $2, $3", "each occurrence its own parameter");
    free(out);
    is_int(conf_pgsql_query("SELECT %x", &out, args, why, sizeof why), -1, "%%x refused");
    ok(strstr(why, "%x") != NULL, "reason names %%x (%s)", why);
    is_int(conf_pgsql_query("SELECT 1 WHERE a = %", &out, args, why, sizeof why), -1,
           "a lone %% at the end refused");
    is_int(conf_pgsql_query("%s %s %s %s %s %s %s %s %s", &out, args, why, sizeof why), -1,
           "more than CONF_PGSQL_PARAMS_MAX refused");
    /* Nothing from a value can ever reach the text: the rewriter sees only
     * the administrator's query, and a quote next to %s is consumed. */
    is_int(conf_pgsql_query("SELECT 1 WHERE a = '%s'", &out, args, why, sizeof why), 0, "'%%s'");
    is_str(out, "SELECT 1 WHERE a = $1", "'%%s' -> $1 without quotes");
    free(out);
    is_int(conf_pgsql_query("SELECT 1 WHERE a LIKE '%%' AND b = %s", &out, args, why, sizeof why),
           0, "'%%%%' is a quoted literal %%");
    is_str(out, "SELECT 1 WHERE a LIKE '%' AND b = $1", "... kept with its quotes");
    free(out);
    /* An escape inside a literal would be text, not a parameter. */
    is_int(conf_pgsql_query("SELECT 1 FROM m WHERE username = '%u@%d'", &out, args, why,
                            sizeof why), -1, "'%%u@%%d' refused");
    is_int(conf_pgsql_query("SELECT 1 WHERE a = %s AND b = 'x", &out, args, why, sizeof why), -1,
           "unterminated literal refused");
    is_int(conf_pgsql_query("SELECT 1 WHERE a = %s AND b <> 'it''s %%'", &out, args, why,
                            sizeof why), 0, "'' inside a literal");
    is_str(out, "SELECT 1 WHERE a = $1 AND b <> 'it''s %'", "... kept as is, %%%% a literal %%");
    free(out);
}

static void test_entries(void)
{
    struct conf *c = load_text(BASE
        "pgsql = ( { name = \"main\"; conninfo = \"host=127.0.0.1\"; },\n"
        "          { name = \"custom\"; conninfo = \"host=127.0.0.1\";\n"
        "            recipient_query = \"SELECT 1 FROM users WHERE email = %s\";\n"
        "            cache_ttl = \"10m\"; cache_size = 5; query_timeout = 2; } );\n"
        "domains_from = \"pgsql:main\";\n"
        "domains = ( { name = \"a.test\"; recipients = \"pgsql:custom\"; } );\n");
    const struct conf_pgsql *m, *cu;
    if (!ok(c != NULL, "pgsql entries load"))
        diag("  %s", errbuf);
    if (!c)
        return;
    m = conf_pgsql_find(c, "main");
    cu = conf_pgsql_find(c, "custom");
    ok(m && cu && !conf_pgsql_find(c, "other"), "conf_pgsql_find");
    is_str(c->domains_from, "main", "domains_from NAME");
    is_str(m->recipient_sql, "SELECT 1 FROM recipients WHERE address = $1 OR address = $2 LIMIT 1",
           "default recipient query");
    is_str(m->recipient_args, "sc", "default: address and @domain");
    is_str(m->domain_sql, "SELECT * FROM domains", "default domain query");
    is_int(m->cache_ttl, 300, "cache_ttl default 5m");
    is_int(m->cache_negative_ttl, 60, "cache_negative_ttl default 1m");
    is_int(m->query_timeout, 5, "query_timeout default 5s");
    is_int(m->reread, 300, "reread default 5m");
    is_str(cu->recipient_sql, "SELECT 1 FROM users WHERE email = $1", "custom query rewritten");
    is_int(cu->cache_ttl, 600, "cache_ttl set");
    is_int(cu->cache_size, 5, "cache_size set");
    is_str(c->domains[0].recipients, "pgsql:custom", "domain recipients spec kept");
    conf_free(c);

    expect_err(BASE "domains = ( { name = \"a.test\"; recipients = \"pgsql:nope\"; } );\n", 3,
               "recipients: no pgsql entry is called \"nope\"", "recipients naming no entry");
    expect_err(BASE "pgsql = ( { name = \"main\"; conninfo = \"dbname=x\"; } );\ndomains_from = \"pgsql:m\";\n",
               4, "domains_from: no pgsql entry is called \"m\"", "domains_from naming no entry");
    expect_err(BASE "domains_from = \"main\";\n", 3, "is not \"pgsql:NAME\"", "domains_from without pgsql:");
    expect_err(BASE "pgsql = ( { name = \"main\"; } );\n", 3, "missing required setting \"pgsql.conninfo\"",
               "conninfo required");
    expect_err(BASE "pgsql = ( { name = \"Main!\"; conninfo = \"dbname=x\"; } );\n", 3, "may hold only",
               "bad entry name");
    expect_err(BASE "pgsql = ( { name = \"a\"; conninfo = \"dbname=x\"; },\n { name = \"a\"; conninfo = \"dbname=y\"; } );\n",
               4, "listed twice", "duplicate entry");
    expect_err(BASE "pgsql = ( { name = \"a\"; conninfo = \"dbname=x\";\n recipient_query = \"SELECT %z\"; } );\n",
               4, "\"%z\" is not", "bad escape in recipient_query");
    expect_err(BASE "pgsql = ( { name = \"a\"; conninfo = \"dbname=x\";\n domain_query = \"SELECT * FROM d WHERE n = %s\"; } );\n",
               4, "takes no", "parameters in domain_query");
    expect_err(BASE "pgsql = ( { name = \"a\"; conninfo = \"dbname=x\"; cache_sise = 1; } );\n", 3,
               "unknown setting \"cache_sise\" in pgsql", "misspelt key");
}

static int ndup, nbad;
static char lastbad[256];

static void on_dup(void *arg, const char *d, const char *why)
{
    ndup++;
}

static void on_bad(void *arg, const char *d, const char *why)
{
    nbad++;
    snprintf(lastbad, sizeof lastbad, "%s: %s", d, why);
}

static void test_with_domains(void)
{
    struct conf *base = load_text(BASE
        "pgsql = ( { name = \"main\"; conninfo = \"host=127.0.0.1\"; } );\n"
        "domains = ( { name = \"file.test\"; primary = \"[10.0.0.1]:25\"; },\n"
        "            { name = \"both.test\"; primary = \"[10.0.0.2]:25\"; } );\n");
    static const char *cols[] = { "name", "primary_route", "retention", "hold", "recipients",
                                  "verify", "extra" };
    static const char *rows[] = {
        "DB1.test", "[10.0.0.3]:2525", "2d", "t", "pgsql:main", "callout", "x",
        "both.test", "[10.0.0.9]:25", NULL, NULL, NULL, NULL, NULL,
        "bad..test", NULL, NULL, NULL, NULL, NULL, NULL,
        "badroute.test", "[10.0.0.1", NULL, NULL, NULL, NULL, NULL,
        "badret.test", NULL, "5x", NULL, NULL, NULL, NULL,
        "badrcpt.test", NULL, NULL, NULL, "pgsql:nope", NULL, NULL,
        "badrel.test", NULL, NULL, NULL, "relative/file", NULL, NULL,
        "badverify.test", NULL, NULL, NULL, NULL, "maybe", NULL,
        "db2.test", NULL, NULL, "f", NULL, NULL, NULL,
        "db1.test", NULL, NULL, NULL, NULL, NULL, NULL,
        NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    };
    size_t nrows = sizeof rows / sizeof rows[0] / 7;
    struct conf *c;
    const struct conf_domain *d;

    if (!ok(base != NULL, "base loads"))
        return;
    c = conf_with_domains(base, cols, 7, rows, nrows, on_dup, on_bad, NULL);
    if (!ok(c != NULL, "conf_with_domains"))
        return;
    is_int(ndup, 1, "both.test reported once: the file wins");
    is_int(nbad, 8, "bad rows reported: bad name, route, retention, recipients x2, verify, duplicate, no name");
    is_int(c->ndomains, 4, "file.test, both.test, db1.test, db2.test");
    d = conf_domain_find(c, "db1.test");
    ok(d && d->from_db, "db1.test from the database, name folded");
    if (d) {
        is_str(d->primary_host, "10.0.0.3", "primary_route parsed");
        is_int(d->primary_port, 2525, "port");
        is_int(d->primary_fixed, 1, "fixed");
        is_int(d->retention, 2 * 86400, "retention 2d");
        is_int(d->hold, 1, "hold t");
        is_str(d->recipients, "pgsql:main", "recipients");
        is_int(d->verify, VERIFY_CALLOUT, "verify callout");
    }
    d = conf_domain_find(c, "db2.test");
    ok(d && d->primary == NULL && strcmp(d->primary_host, "db2.test") == 0 && d->primary_port == 25,
       "no primary_route: MX of the name");
    ok(d && d->retention == 7 * 86400 && d->hold == 0, "defaults as in the file");
    d = conf_domain_find(c, "both.test");
    ok(d && !d->from_db && strcmp(d->primary_host, "10.0.0.2") == 0, "both.test keeps the file's primary");
    ok(conf_domain_find(c, "badroute.test") == NULL && conf_domain_find(c, "bad..test") == NULL,
       "bad rows are not served");
    ok(c->domains_from == base->domains_from && c->path == base->path, "the rest is the base's");
    for (size_t i = 1; i < c->ndomains; i++)
        ok(strcmp(c->domain_index[i - 1]->name, c->domain_index[i]->name) < 0, "index sorted %zu", i);
    /* Ownership: the composed conf holds the base; freeing the base's
     * reference first leaves the composed one intact. */
    conf_free(base);
    is_str(conf_domain_find(c, "file.test")->primary_host, "10.0.0.1", "file domain after base ref dropped");
    conf_free(c);

    /* No name column: every row is refused, the file's domains stay. */
    base = load_text(BASE "domains = ( { name = \"file.test\"; } );\n");
    nbad = 0;
    static const char *cols2[] = { "domain" };
    static const char *rows2[] = { "x.test", "y.test" };
    c = conf_with_domains(base, cols2, 1, rows2, 2, on_dup, on_bad, NULL);
    ok(c && c->ndomains == 1 && nbad == 1, "no name column: reported once, file's domains only");
    conf_free(c);

    /* accept (issue 9): a column like the file's key, checked the same. */
    nbad = 0;
    static const char *cols3[] = { "name", "accept" };
    static const char *rows3[] = { "gated.test", "when-primary-down", "open.test", NULL,
                                   "badaccept.test", "sometimes" };
    c = conf_with_domains(base, cols3, 2, rows3, 3, on_dup, on_bad, NULL);
    ok(c != NULL, "conf_with_domains with accept");
    d = c ? conf_domain_find(c, "gated.test") : NULL;
    ok(d && d->accept == ACCEPT_WHEN_PRIMARY_DOWN, "accept when-primary-down from the database");
    d = c ? conf_domain_find(c, "open.test") : NULL;
    ok(d && d->accept == ACCEPT_ALWAYS, "accept NULL: always (the default)");
    ok(c && conf_domain_find(c, "badaccept.test") == NULL && nbad == 1,
       "accept \"sometimes\": the row is reported and not served");
    conf_free(c);
    conf_free(base);
}

int main(void)
{
    if (!mkdtemp(dir) || chdir(dir) != 0) {
        printf("Bail out! mkdtemp\n");
        return 1;
    }
    test_query();
    test_entries();
    test_with_domains();
    unlink("c.conf");
    if (chdir("/") == 0)
        rmdir(dir);
    return done_testing();
}
