/*
 * t_policy.c - unit test of src/policy.c: served domains, recipient lists
 * and their errors, relay tricks, ETRN access, and scale (1,000,000 list
 * entries over 10,000 domains, load time reported, not asserted).
 *
 * Builds struct conf by hand and writes list files under a temp directory,
 * which it removes at the end.  For building before smtp_parse.c or conf.c
 * exist it carries minimal stand-ins: -DPOLICY_STUB_SMTP_PARSE
 * (smtp_addr_format, smtp_local_is_route), -DPOLICY_STUB_CONF
 * (conf_cidr_match), -DPOLICY_TEST_STUBS for both.  Normal builds link the
 * real modules.
 */
#include "config.h"
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "policy.h"
#include "tap.h"

#define SCALE_DOMAINS       10000
#define SCALE_PER_DOMAIN    100
#define REPLY_MAX           512
#define ERR_MAX             512
#define PATH_MAX_T          4096
#define ETRN_MAX            16
#define LIST_LONG_LOCAL     600     /* over the 511-octet entry limit */
#define LIST_LONG_BUF       700
#define LIST_LOCAL_OVER     256     /* over the 255 octets a list entry keeps */
#define LIST_CONFIRM_LOCAL  70      /* a list-confirmation address (issue 7.16) */

#ifdef POLICY_TEST_STUBS
#define POLICY_STUB_SMTP_PARSE
#define POLICY_STUB_CONF
#endif

#ifdef POLICY_STUB_SMTP_PARSE
int smtp_addr_format(const struct smtp_addr *a, char *buf, size_t len)
{
    int r;

    if (a->null)
        r = snprintf(buf, len, "%s", "");
    else
        r = snprintf(buf, len, "%s@%s", a->local, a->domain);
    return (r < 0 || (size_t)r >= len) ? -1 : r;
}

int smtp_local_is_route(const char *local)
{
    int quoted = local[0] == '"';
    return strpbrk(local, "%!") != NULL || (quoted && strchr(local, '@') != NULL);
}
#endif

#ifdef POLICY_STUB_CONF

int conf_cidr_match(const struct conf_cidr *list, size_t n, int family, const void *addr)
{
    const unsigned char *a = addr;
    for (size_t i = 0; i < n; i++) {
        if (list[i].family != family)
            continue;
        int bits = list[i].bits, k = 0, hit = 1;
        for (; bits >= 8; bits -= 8, k++)
            if (a[k] != list[i].addr[k])
                hit = 0;
        if (hit && bits > 0) {
            unsigned char mask = (unsigned char)(0xff << (8 - bits));
            if ((a[k] & mask) != (list[i].addr[k] & mask))
                hit = 0;
        }
        if (hit)
            return 1;
    }
    return 0;
}
#endif

static char tmpdir[] = "/tmp/t_policy.XXXXXX";

static char *write_file(const char *name, const char *text)
{
    char path[PATH_MAX_T];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) {
        printf("Bail out! cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    return strdup(path);
}

static struct smtp_addr mk(const char *local, const char *domain)
{
    struct smtp_addr a;
    memset(&a, 0, sizeof a);
    snprintf(a.local, sizeof a.local, "%s", local);
    snprintf(a.domain, sizeof a.domain, "%s", domain);
    a.domain_literal = domain[0] == '[';
    return a;
}

static const char *rcpt(const struct policy *p, const char *local, const char *domain,
                        const struct conf_domain **dom)
{
    static char buf[REPLY_MAX];
    struct smtp_addr a = mk(local, domain);
    return policy_check_rcpt(p, &a, dom, NULL, buf, sizeof buf);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One bad list for example.org; returns the error text (static). */
static const char *list_error(const char *body, int *returned_null)
{
    static char err[ERR_MAX];
    struct conf_domain d = { .name = "example.org" };
    struct conf c = { .path = "test.conf", .domains = &d, .ndomains = 1 };

    d.recipients = write_file("bad.rcpts", body);
    struct policy *p = policy_new(&c, err, sizeof err);
    *returned_null = p == NULL;
    policy_free(p);
    free(d.recipients);
    return err;
}

static void test_lists_bad(void)
{
    char want[PATH_MAX_T + 100];
    int isnull;
    const char *e;
    char path[PATH_MAX_T];
    char longline[LIST_LONG_BUF];

    snprintf(path, sizeof path, "%s/bad.rcpts", tmpdir);

    e = list_error("a@example.org\nb@example.com\n", &isnull);
    ok(isnull, "entry of another domain: policy_new fails");
    snprintf(want, sizeof want, "%s:2: address not in domain example.org", path);
    is_str(e, want, "entry of another domain: file:line error");

    e = list_error("# sub-domains are other lists\n\nx@sub.example.org\n", &isnull);
    snprintf(want, sizeof want, "%s:3: address not in domain example.org", path);
    ok(isnull && strcmp(e, want) == 0, "sub-domain entry refused: %s", e);

    e = list_error("a@example.org\n\njust-a-name\n", &isnull);
    snprintf(want, sizeof want, "%s:3: no @ in entry (want local@domain or @domain)", path);
    ok(isnull && strcmp(e, want) == 0, "no @: %s", e);

    e = list_error("john doe@example.org\n", &isnull);
    snprintf(want, sizeof want, "%s:1: white space inside an address", path);
    ok(isnull && strcmp(e, want) == 0, "space inside: %s", e);

    memset(longline, 'a', LIST_LONG_LOCAL);
    snprintf(longline + LIST_LONG_LOCAL, sizeof longline - LIST_LONG_LOCAL, "@example.org\n");
    e = list_error(longline, &isnull);
    snprintf(want, sizeof want, "%s:1: entry too long", path);
    ok(isnull && strcmp(e, want) == 0, "entry > 511 octets: %s", e);

    memcpy(longline, "ok@example.org\n", 15);
    memset(longline + 15, 'a', LIST_LOCAL_OVER);
    snprintf(longline + 15 + LIST_LOCAL_OVER, sizeof longline - 15 - LIST_LOCAL_OVER,
             "@example.org\n");
    e = list_error(longline, &isnull);
    snprintf(want, sizeof want, "%s:2: local part longer than 255 octets", path);
    ok(isnull && strcmp(e, want) == 0, "256-octet local part: %s", e);

    e = list_error("a..b@example.org\n", &isnull);
    snprintf(want, sizeof want, "%s:1: bad local part", path);
    ok(isnull && strcmp(e, want) == 0, "a..b: %s", e);

    e = list_error("a\001b@example.org\n", &isnull);
    ok(isnull && strstr(e, ":1: control character") != NULL, "control octet: %s", e);

    {
        char err[ERR_MAX];
        struct conf_domain d = { .name = "example.org", .recipients = "/nonexistent/x.rcpts" };
        struct conf c = { .path = "test.conf", .domains = &d, .ndomains = 1 };
        struct policy *p = policy_new(&c, err, sizeof err);
        ok(p == NULL && strncmp(err, "/nonexistent/x.rcpts: ", 22) == 0,
           "missing list file: %s", err);
    }
    {
        char err[ERR_MAX];
        struct conf_domain d[2] = { { .name = "example.org" }, { .name = "example.org" } };
        struct conf c = { .path = "test.conf", .domains = d, .ndomains = 2 };
        struct policy *p = policy_new(&c, err, sizeof err);
        ok(p == NULL && strstr(err, "example.org is listed twice") != NULL,
           "duplicate domain refused: %s", err);
    }
}

enum {
    D_ORG, D_COM, D_HELD, D_SUB, D_DEEP, D_HELDSUB, D_NOTORG, D_FROZEN, D_FROZEN_A,
    D_COUNT
};

static void test_rcpt_and_etrn(void)
{
    char err[ERR_MAX], buf[REPLY_MAX];
    const struct conf_domain *dom;
    struct conf_domain d[D_COUNT] = {
        [D_ORG] = { .name = "example.org" },
        [D_COM] = { .name = "example.com" },
        [D_HELD] = { .name = "held.example", .hold = 1 },
        [D_SUB] = { .name = "sub.example.org" },
        [D_DEEP] = { .name = "deep.sub.example.org" },
        [D_HELDSUB] = { .name = "heldsub.example.org", .hold = 1 },
        [D_NOTORG] = { .name = "notexample.org" },
        [D_FROZEN] = { .name = "frozen.example.net", .hold = 1 },
        [D_FROZEN_A] = { .name = "a.frozen.example.net", .hold = 1 },
    };
    struct conf_cidr allow[2] = { { .family = AF_INET, .bits = 8 },
                                  { .family = AF_INET6, .bits = 128 } };
    struct conf c = { .path = "test.conf", .domains = d, .ndomains = D_COUNT,
                      .etrn_allow = allow, .netrn_allow = 2 };

    inet_pton(AF_INET, "127.0.0.0", allow[0].addr);
    inet_pton(AF_INET6, "::1", allow[1].addr);
    d[D_ORG].recipients = write_file("example.org.rcpts",
        "# full-line comment\n"
        "\n"
        "alice@example.org\n"
        "   Bob@EXAMPLE.ORG\t# trailing comment\n"
        "\"carol\"@example.org\n"
        "\"Odd..Name\"@example.org\n"
        "hash#tag@example.org\n"
        "postmaster@example.org.\n"
        "alice@example.org\n"              /* duplicate: counted once */
        "  \t  \r\n"
        "confirm-s2-0123456789abcdef0123456789abcdef0123-list=example.org-abcde@example.org\n"
        "last@example.org");               /* no final newline */
    d[D_SUB].recipients = write_file("sub.rcpts", "@sub.example.org\nnamed@sub.example.org\n");

    struct policy *p = policy_new(&c, err, sizeof err);
    ok(p != NULL, "policy_new with lists: %s", p ? "ok" : err);
    if (p == NULL)
        return;
    /* 8 distinct entries on the example.org list, wildcard + 1 on sub */
    is_int(policy_entry_count(p), 10, "entry count: duplicates once, wildcard counted");

    /* served / case / trailing dot */
    ok(rcpt(p, "alice", "example.org", &dom) == NULL && dom == &d[D_ORG],
       "listed user accepted, dom set");
    is_str(rcpt(p, "ALICE", "example.org", &dom), NULL, "local part case-insensitive");
    is_str(rcpt(p, "alice", "EXAMPLE.ORG", &dom), NULL, "domain case-insensitive");
    ok(rcpt(p, "alice", "example.org.", &dom) == NULL && dom == &d[D_ORG],
       "trailing dot in domain");
    is_str(rcpt(p, "bob", "example.org", &dom), NULL, "entry written in upper case");
    is_str(rcpt(p, "\"alice\"", "example.org", &dom), NULL, "quoted dot-atom = bare");
    is_str(rcpt(p, "carol", "example.org", &dom), NULL, "list quoted, address bare");
    is_str(rcpt(p, "\"ODD..name\"", "example.org", &dom), NULL, "quoted non-atom matched literally");
    ok(rcpt(p, "odd..name", "example.org", &dom) != NULL, "... but not unquoted");
    is_str(rcpt(p, "hash#tag", "example.org", &dom), NULL, "'#' inside an entry is no comment");
    is_str(rcpt(p, "postmaster", "example.org", &dom), NULL, "entry with trailing dot domain");
    is_str(rcpt(p, "last", "example.org", &dom), NULL, "last line without newline");
    is_int((int)strlen("confirm-s2-0123456789abcdef0123456789abcdef0123-list=example.org-abcde"),
           LIST_CONFIRM_LOCAL, "list-confirmation local part is 70 octets");
    is_str(rcpt(p, "confirm-s2-0123456789abcdef0123456789abcdef0123-list=example.org-abcde",
                "example.org", &dom), NULL, "70-octet listed local part accepted");
    {
        enum stat_id why = STAT_COUNT_;
        struct smtp_addr a = mk("nobody", "example.org");
        ok(policy_check_rcpt(p, &a, &dom, &why, buf, sizeof buf) != NULL &&
           why == STAT_REJ_UNKNOWN_USER, "unknown user: class set by policy");
        a = mk("nobody", "example.net");
        ok(policy_check_rcpt(p, &a, &dom, &why, buf, sizeof buf) != NULL &&
           why == STAT_REJ_RELAY, "unserved domain: class relay");
    }

    /* unknown */
    dom = &d[D_COM];
    is_str(rcpt(p, "mallory", "example.org", &dom),
           "550 5.1.1 <mallory@example.org>: Recipient address rejected: User unknown",
           "unknown user refused");
    ok(dom == NULL, "dom cleared on refusal");
    ok(rcpt(p, "hash", "example.org", &dom) != NULL, "comment text is not an entry");
    ok(rcpt(p, "alic", "example.org", &dom) != NULL, "prefix of an entry is unknown");

    /* no list, wildcard */
    ok(rcpt(p, "anyone", "example.com", &dom) == NULL && dom == &d[D_COM],
       "domain without a list accepts any local part");
    ok(rcpt(p, "whoever", "sub.example.org", &dom) == NULL && dom == &d[D_SUB],
       "@domain entry accepts any local part");
    is_str(rcpt(p, "x", "held.example", &dom), NULL, "held domain still accepts mail");

    /* not served */
    is_str(rcpt(p, "alice", "example.net", &dom),
           "550 5.7.1 <alice@example.net>: Relay access denied", "unserved domain");
    ok(rcpt(p, "alice", "other.example.org", &dom) != NULL, "unserved sub-domain");
    ok(rcpt(p, "alice", "org", &dom) != NULL, "parent of a served domain");
    ok(rcpt(p, "alice", "example.org..", &dom) != NULL, "only one trailing dot ignored");
    ok(rcpt(p, "alice", "xample.org", &dom) != NULL, "suffix of a served domain");

    /* relay tricks */
    is_str(rcpt(p, "user%other.net", "example.org", &dom),
           "550 5.7.1 <user%other.net@example.org>: Source routing not supported",
           "percent hack refused");
    is_str(rcpt(p, "other.net!user", "example.com", &dom),
           "550 5.7.1 <other.net!user@example.com>: Source routing not supported",
           "bang path refused (domain without list)");
    is_str(rcpt(p, "\"user@other.net\"", "example.com", &dom),
           "550 5.7.1 <\"user@other.net\"@example.com>: Source routing not supported",
           "quoted @ refused");
    ok(rcpt(p, "\"user%other\"", "sub.example.org", &dom) != NULL && dom == NULL,
       "quoted %% refused even under a wildcard");
    is_str(rcpt(p, "user", "[127.0.0.1]", &dom),
           "550 5.7.1 <user@[127.0.0.1]>: Relay access denied", "IPv4 literal refused");
    ok(rcpt(p, "user", "[IPv6:::1]", &dom) != NULL && dom == NULL, "IPv6 literal refused");
    {
        struct smtp_addr a = mk("postmaster", "");
        is_str(policy_check_rcpt(p, &a, &dom, NULL, buf, sizeof buf),
               "550 5.1.1 <postmaster>: we are a backup MX: name a domain",
               "<postmaster> without a domain");
        a = mk("", "");
        a.null = 1;
        is_str(policy_check_rcpt(p, &a, &dom, NULL, buf, sizeof buf),
               "550 5.7.1 <>: Relay access denied", "null recipient refused");
        char tiny[12];
        a = mk("someone", "example.net");
        const char *r = policy_check_rcpt(p, &a, &dom, NULL, tiny, sizeof tiny);
        ok(r == tiny && strcmp(r, "550 5.7.1 <") == 0, "reply truncated into a small buffer");
    }

    /* ETRN */
    unsigned char v4ok[4], v4bad[4], v6ok[16], v6bad[16], mapped[16];
    const struct conf_domain *doms[ETRN_MAX];
    size_t n = 99;
    const char *r;

    inet_pton(AF_INET, "127.0.0.1", v4ok);
    inet_pton(AF_INET, "10.0.0.1", v4bad);
    inet_pton(AF_INET6, "::1", v6ok);
    inet_pton(AF_INET6, "::2", v6bad);
    inet_pton(AF_INET6, "::ffff:127.0.0.9", mapped);

    r = policy_check_etrn(p, AF_INET, v4ok, 0, "example.org", doms, ETRN_MAX, &n, buf, sizeof buf);
    ok(r == NULL && n == 1 && doms[0] == &d[D_ORG], "ETRN domain from allowed IPv4");
    r = policy_check_etrn(p, AF_INET, v4bad, 0, "example.org", doms, ETRN_MAX, &n, buf, sizeof buf);
    is_str(r, "459 4.7.1 <example.org>: client not allowed to run ETRN", "IPv4 client denied");
    is_int(n, 0, "n is 0 on refusal");
    r = policy_check_etrn(p, AF_INET6, v6ok, 0, "example.org", doms, ETRN_MAX, &n, buf, sizeof buf);
    ok(r == NULL && n == 1, "IPv6 client allowed");
    r = policy_check_etrn(p, AF_INET6, v6bad, 0, "example.org", doms, ETRN_MAX, &n, buf, sizeof buf);
    ok(r != NULL && strncmp(r, "459 4.7.1 ", 10) == 0, "IPv6 client denied");
    r = policy_check_etrn(p, AF_INET6, mapped, 0, "example.org", doms, ETRN_MAX, &n, buf, sizeof buf);
    ok(r == NULL && n == 1, "IPv4-mapped IPv6 client matched as IPv4");
    r = policy_check_etrn(p, AF_INET, v4ok, 0, "EXAMPLE.ORG", doms, ETRN_MAX, &n, buf, sizeof buf);
    ok(r == NULL && n == 1 && doms[0] == &d[D_ORG], "ETRN domain case-insensitive");
    r = policy_check_etrn(p, AF_INET, v4ok, 0, "example.net", doms, ETRN_MAX, &n, buf, sizeof buf);
    is_str(r, "459 4.7.1 <example.net>: not a domain we serve", "ETRN unserved domain");
    r = policy_check_etrn(p, AF_INET, v4ok, 0, "sub", doms, ETRN_MAX, &n, buf, sizeof buf);
    ok(r != NULL, "ETRN of a label is not a domain we serve");

    r = policy_check_etrn(p, AF_INET, v4ok, '@', "example.org", doms, ETRN_MAX, &n, buf, sizeof buf);
    ok(r == NULL && n == 4 && doms[0] == &d[D_ORG] && doms[1] == &d[D_SUB] && doms[2] == &d[D_DEEP] &&
       doms[3] == &d[D_HELDSUB],
       "@example.org: itself and served sub-domains, held included, notexample.org left out (n=%zu)",
       n);
    r = policy_check_etrn(p, AF_INET, v4ok, '@', "example.org", doms, 2, &n, buf, sizeof buf);
    ok(r == NULL && n == 2, "@domain stops at max");
    r = policy_check_etrn(p, AF_INET, v4ok, '@', "org", doms, ETRN_MAX, &n, buf, sizeof buf);
    ok(r == NULL && n == 5, "@org: not served itself, covers served sub-domains (n=%zu)", n);
    r = policy_check_etrn(p, AF_INET, v4ok, '@', "sub.example.org", doms, ETRN_MAX, &n, buf, sizeof buf);
    ok(r == NULL && n == 2 && doms[0] == &d[D_SUB] && doms[1] == &d[D_DEEP], "@sub.example.org");
    r = policy_check_etrn(p, AF_INET, v4ok, '@', "ample.org", doms, ETRN_MAX, &n, buf, sizeof buf);
    ok(r != NULL && strncmp(r, "459 4.7.1 <@ample.org>", 22) == 0,
       "@ample.org matches labels only, not string suffixes: %s", r ? r : "NULL");

    /* Held domains are covered like any other: the scheduler, which owns
     * the hold state, answers 458 with the count waiting. */
    r = policy_check_etrn(p, AF_INET, v4ok, 0, "held.example", doms, ETRN_MAX, &n, buf, sizeof buf);
    ok(r == NULL && n == 1, "held domain: allowed, left to the scheduler");
    r = policy_check_etrn(p, AF_INET, v4ok, '@', "frozen.example.net", doms, ETRN_MAX, &n, buf,
                          sizeof buf);
    ok(r == NULL && n >= 1, "every covered domain held: allowed, left to the scheduler");
    r = policy_check_etrn(p, AF_INET, v4ok, 0, "heldsub.example.org", doms, ETRN_MAX, &n, buf,
                          sizeof buf);
    ok(r == NULL && n == 1, "held sub-domain by name: allowed");

    r = policy_check_etrn(p, AF_INET, v4ok, '#', "queue1", doms, ETRN_MAX, &n, buf, sizeof buf);
    is_str(r, "501 5.5.4 <#queue1>: named queues are not supported", "#queue refused");
    r = policy_check_etrn(p, AF_INET, v4bad, '#', "queue1", doms, ETRN_MAX, &n, buf, sizeof buf);
    ok(r != NULL && strncmp(r, "459 4.7.1 ", 10) == 0, "client check comes before #queue");

    policy_free(p);
    free(d[D_ORG].recipients);
    free(d[D_SUB].recipients);

    /* no ETRN ACL: nobody may */
    c.netrn_allow = 0;
    c.domains = d;
    for (size_t k = 0; k < D_COUNT; k++)
        d[k].recipients = NULL;
    p = policy_new(&c, err, sizeof err);
    r = p ? policy_check_etrn(p, AF_INET, v4ok, 0, "example.org", doms, ETRN_MAX, &n, buf,
                              sizeof buf) : NULL;
    ok(r != NULL && strncmp(r, "459 4.7.1 ", 10) == 0, "empty etrn.allow denies everyone");
    ok(p != NULL && rcpt(p, "mallory", "example.org", &dom) == NULL,
       "same domain without a list accepts anyone");
    is_int(policy_entry_count(p), 0, "no lists, no entries");
    policy_free(p);
}

static void test_scale(void)
{
    struct conf_domain *d = calloc(SCALE_DOMAINS, sizeof *d);
    char name[64], line[128], err[ERR_MAX];
    size_t bodylen = (size_t)SCALE_PER_DOMAIN * sizeof line;
    char *body = malloc(bodylen);

    for (int k = 0; k < SCALE_DOMAINS; k++) {
        size_t off = 0;
        snprintf(name, sizeof name, "d%d.example", k);
        d[k].name = strdup(name);
        for (int u = 0; u < SCALE_PER_DOMAIN; u++)
            off += (size_t)snprintf(body + off, bodylen - off, "User%d.Name@%s\n", u, name);
        snprintf(name, sizeof name, "d%d.rcpts", k);
        d[k].recipients = write_file(name, body);
    }
    struct conf c = { .path = "test.conf", .domains = d, .ndomains = SCALE_DOMAINS };

    double t0 = now();
    struct policy *p = policy_new(&c, err, sizeof err);
    double t1 = now();
    ok(p != NULL, "1,000,000 entries over 10,000 lists load: %s", p ? "ok" : err);
    if (p != NULL) {
        diag("policy_new: %zu entries in %.3f s", policy_entry_count(p), t1 - t0);
        is_int(policy_entry_count(p), (long long)SCALE_DOMAINS * SCALE_PER_DOMAIN,
               "every entry counted");
        is_str(rcpt(p, "user57.name", "d9999.example", NULL), NULL, "lookup in the last list");
        is_str(rcpt(p, "USER0.NAME", "d0.example", NULL), NULL, "lookup in the first list");
        ok(rcpt(p, "user100.name", "d5.example", NULL) != NULL, "absent user refused");
        ok(rcpt(p, "user1.name", "d10000.example", NULL) != NULL, "absent domain refused");

        int bad = 0;
        t0 = now();
        for (int k = 0; k < SCALE_DOMAINS; k++) {
            snprintf(name, sizeof name, "d%d.example", k);
            for (int u = 0; u < SCALE_PER_DOMAIN; u++) {
                snprintf(line, sizeof line, "user%d.name", u);
                if (rcpt(p, line, name, NULL) != NULL)
                    bad++;
            }
        }
        t1 = now();
        is_int(bad, 0, "every one of 1,000,000 entries found");
        diag("1,000,000 lookups in %.3f s", t1 - t0);
    }
    policy_free(p);
    for (int k = 0; k < SCALE_DOMAINS; k++) {
        unlink(d[k].recipients);
        free(d[k].recipients);
        free(d[k].name);
    }
    free(d);
    free(body);
}

int main(void)
{
    char cmd[PATH_MAX_T];

    if (mkdtemp(tmpdir) == NULL) {
        printf("Bail out! mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    test_lists_bad();
    test_rcpt_and_etrn();
    test_scale();
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        diag("could not remove %s", tmpdir);
    return done_testing();
}
