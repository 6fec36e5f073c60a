/*
 * t_smtp_parse.c - unit tests for src/smtp_parse.c: command split, paths
 * (every relay trick we know), length limits at their exact boundaries,
 * UTF-8, MAIL/RCPT parameters, xtext, ETRN, HELO, BDAT.
 */
#include "config.h"
#include "smtp_parse.h"
#include "tap.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#define BIG (SMTP_PATH_MAX + 1024)

/* Reply code prefix check: "501 5.1.3" etc. */
static int starts(const char *s, const char *prefix)
{
    return s != NULL && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The line with control characters shown as '?', so TAP output stays one line. */
static const char *shown(const char *s)
{
    static char buf[BIG];
    size_t i;

    for (i = 0; s[i] && i + 1 < sizeof buf; i++)
        buf[i] = ((unsigned char)s[i] < ' ' || s[i] == 0x7f) ? '?' : s[i];
    buf[i] = '\0';
    return buf;
}

static void t_cmd(const char *line, enum smtp_cmd want, const char *want_arg, const char *want_reply)
{
    struct smtp_command c;
    const char *r = smtp_parse_command(line, strlen(line), &c);

    line = shown(line);

    if (want_reply)
        ok(starts(r, want_reply), "command \"%s\" -> %s (got %s)", line, want_reply, r ? r : "NULL");
    else
        ok(r == NULL && c.cmd == want && c.arg && strcmp(c.arg, want_arg) == 0,
           "command \"%s\" -> %s arg \"%s\" (got %s \"%s\" %s)", line, smtp_cmd_name(want),
           want_arg, smtp_cmd_name(c.cmd), c.arg ? c.arg : "(null)", r ? r : "");
}

/* Parse a path; when want_reply is NULL the local/domain must match. */
static void t_path(const char *s, int allow_null, int utf8, int rcpt, const char *want_reply,
                   const char *want_local, const char *want_domain)
{
    struct smtp_addr a;
    const char *rest = NULL;
    const char *r = smtp_parse_path(s, &rest, &a, allow_null, utf8, rcpt);

    s = shown(s);

    if (want_reply)
        ok(starts(r, want_reply), "path %.60s -> %s (got %s)", s, want_reply, r ? r : "NULL");
    else
        ok(r == NULL && strcmp(a.local, want_local) == 0 && strcmp(a.domain, want_domain) == 0,
           "path %.60s -> %s @ %s (got %s, %s @ %s)", s, want_local, want_domain,
           r ? r : "ok", a.local, a.domain);
}

static void test_commands(void)
{
    struct smtp_command c;
    const char *r;

    t_cmd("HELO example.com", SMTP_CMD_HELO, "example.com", NULL);
    t_cmd("ehlo example.com", SMTP_CMD_EHLO, "example.com", NULL);
    t_cmd("EhLo   spaced.example", SMTP_CMD_EHLO, "spaced.example", NULL);
    t_cmd("MAIL FROM:<a@b.c>", SMTP_CMD_MAIL, "<a@b.c>", NULL);
    t_cmd("mail from:<a@b.c> SIZE=10", SMTP_CMD_MAIL, "<a@b.c> SIZE=10", NULL);
    t_cmd("MAIL FROM: <a@b.c>", SMTP_CMD_MAIL, "<a@b.c>", NULL);
    t_cmd("MAIL FROM:<>", SMTP_CMD_MAIL, "<>", NULL);
    t_cmd("RCPT TO:<x@y.z>", SMTP_CMD_RCPT, "<x@y.z>", NULL);
    t_cmd("rcpt to:  <x@y.z>", SMTP_CMD_RCPT, "<x@y.z>", NULL);
    t_cmd("DATA", SMTP_CMD_DATA, "", NULL);
    t_cmd("BDAT 100 LAST", SMTP_CMD_BDAT, "100 LAST", NULL);
    t_cmd("RSET", SMTP_CMD_RSET, "", NULL);
    t_cmd("noop whatever", SMTP_CMD_NOOP, "whatever", NULL);
    t_cmd("QUIT", SMTP_CMD_QUIT, "", NULL);
    t_cmd("QUIT ", SMTP_CMD_QUIT, "", NULL);
    t_cmd("VRFY root", SMTP_CMD_VRFY, "root", NULL);
    t_cmd("EXPN list", SMTP_CMD_EXPN, "list", NULL);
    t_cmd("HELP", SMTP_CMD_HELP, "", NULL);
    t_cmd("STARTTLS", SMTP_CMD_STARTTLS, "", NULL);
    t_cmd("ETRN @example.org", SMTP_CMD_ETRN, "@example.org", NULL);
    t_cmd("AUTH PLAIN AGZvbwBiYXI=", SMTP_CMD_AUTH, "PLAIN AGZvbwBiYXI=", NULL);
    t_cmd("GET / HTTP/1.1", SMTP_CMD_HTTP, "/ HTTP/1.1", NULL);
    t_cmd("POST /x HTTP/1.0", SMTP_CMD_HTTP, "/x HTTP/1.0", NULL);
    t_cmd("CONNECT host:25 HTTP/1.1", SMTP_CMD_HTTP, "host:25 HTTP/1.1", NULL);
    t_cmd("OPTIONS * HTTP/1.1", SMTP_CMD_HTTP, "* HTTP/1.1", NULL);
    t_cmd("GET", 0, NULL, "500 5.5.1");
    t_cmd("MAIL", 0, NULL, "501 5.5.4 Syntax: MAIL FROM:<address>");
    t_cmd("MAIL <a@b.c>", 0, NULL, "501 5.5.4 Syntax: MAIL FROM:");
    t_cmd("MAIL FROM<a@b.c>", 0, NULL, "501 5.5.4");
    t_cmd("RCPT <a@b.c>", 0, NULL, "501 5.5.4 Syntax: RCPT TO:<address>");
    t_cmd("RCPT FROM:<a@b.c>", 0, NULL, "501 5.5.4 Syntax: RCPT TO:");
    t_cmd("MAILFROM:<a@b.c>", 0, NULL, "500 5.5.1");
    t_cmd("XYZZY", 0, NULL, "500 5.5.1 Command unrecognized");
    t_cmd("", 0, NULL, "500 5.5.1");
    t_cmd(" HELO x", 0, NULL, "500 5.5.1");
    t_cmd("HELO\tx", 0, NULL, "500 5.5.1");
    t_cmd("DATAX", 0, NULL, "500 5.5.1");
    t_cmd("RSET\rQUIT", 0, NULL, "500 5.5.2");
    t_cmd("RSET\nQUIT", 0, NULL, "500 5.5.2");

    r = smtp_parse_command("RSET\0QUIT", 9, &c);
    ok(starts(r, "500 5.5.2 Syntax error: bad character in command"), "embedded NUL rejected");
    ok(c.cmd == SMTP_CMD_UNKNOWN && c.arg && *c.arg == '\0', "bad line leaves cmd UNKNOWN, arg \"\"");
    r = smtp_parse_command("MAIL", 4, &c);
    ok(r != NULL && c.cmd == SMTP_CMD_MAIL, "MAIL without FROM still identifies the verb");

    is_str(smtp_cmd_name(SMTP_CMD_MAIL), "MAIL", "cmd name MAIL");
    is_str(smtp_cmd_name(SMTP_CMD_STARTTLS), "STARTTLS", "cmd name STARTTLS");
    is_str(smtp_cmd_name(SMTP_CMD_HTTP), "HTTP", "cmd name HTTP");
    is_str(smtp_cmd_name(SMTP_CMD_COUNT_), "UNKNOWN", "cmd name out of range");
}

static void test_paths(void)
{
    char buf[BIG], local[SMTP_PATH_MAX + 16], dom[SMTP_DOMAIN_MAX + 16];
    struct smtp_addr a;
    const char *rest, *r;

    t_path("<user@example.org>", 0, 0, 1, NULL, "user", "example.org");
    t_path("  <User.Name+tag@Example.ORG.>", 0, 0, 1, NULL, "User.Name+tag", "example.org");
    t_path("<a@b>", 0, 0, 0, NULL, "a", "b");
    t_path("<a@localhost>", 0, 0, 0, NULL, "a", "localhost");
    t_path("<x@sub-1.example.org>", 0, 0, 1, NULL, "x", "sub-1.example.org");
    t_path("<x@1example.org>", 0, 0, 1, NULL, "x", "1example.org");

    /* null path */
    r = smtp_parse_path("<>", &rest, &a, 1, 0, 0);
    ok(r == NULL && a.null == 1 && *rest == '\0', "<> accepted when allowed");
    t_path("<>", 0, 0, 1, "501 5.1.3 Bad recipient address syntax", NULL, NULL);

    /* relay tricks */
    t_path("<user%other@served.example>", 0, 0, 1, NULL, "user%other", "served.example");
    t_path("<other!user@served.example>", 0, 0, 1, NULL, "other!user", "served.example");
    t_path("<\"user@other\"@served.example>", 0, 0, 1, NULL, "\"user@other\"", "served.example");
    t_path("<user@other@served.example>", 0, 0, 1, "501 5.1.3 Bad recipient address syntax", NULL, NULL);
    t_path("<user@other@served.example>", 0, 0, 0, "501 5.1.7 Bad sender address syntax", NULL, NULL);
    t_path("<user@[192.0.2.1]>", 0, 0, 1, NULL, "user", "[192.0.2.1]");
    t_path("<user@[IPv6:2001:db8::1]>", 0, 0, 1, NULL, "user", "[IPv6:2001:db8::1]");
    t_path("<user@[ipv6:2001:DB8::1]>", 0, 0, 1, NULL, "user", "[IPv6:2001:db8::1]");
    t_path("<user@[IPv6:::ffff:192.0.2.1]>", 0, 0, 1, NULL, "user", "[IPv6:::ffff:192.0.2.1]");
    t_path("<user@[300.1.1.1]>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<user@[2001:db8::1]>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<user@[IPv6:192.0.2.1]>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<user@[tag:stuff]>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<user@[192.0.2.1>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<user@192.0.2.1>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    r = smtp_parse_path("<u@[192.0.2.1]>", &rest, &a, 0, 0, 1);
    ok(r == NULL && a.domain_literal == 1, "literal flagged");
    r = smtp_parse_path("<u@example.org>", &rest, &a, 0, 0, 1);
    ok(r == NULL && a.domain_literal == 0 && a.utf8 == 0, "hostname not flagged literal/utf8");

    ok(smtp_local_is_route("user%other"), "%% is a route");
    ok(smtp_local_is_route("other!user"), "! is a route");
    ok(smtp_local_is_route("\"user@other\""), "quoted @ is a route");
    ok(smtp_local_is_route("\"a%b\""), "quoted %% is a route");
    ok(!smtp_local_is_route("plain.user+tag"), "plain local is not a route");
    ok(!smtp_local_is_route("\"plain user\""), "quoted space is not a route");

    /* quoted locals */
    t_path("<\"john smith\"@example.org>", 0, 0, 1, NULL, "\"john smith\"", "example.org");
    t_path("<\"a\\\"b\"@example.org>", 0, 0, 1, NULL, "\"a\\\"b\"", "example.org");
    t_path("<\"plain\"@example.org>", 0, 0, 1, NULL, "\"plain\"", "example.org");
    t_path("<\"unterminated@example.org>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<\"tab\there\"@example.org>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<\"bs\\", 0, 0, 1, "501 5.1.3", NULL, NULL);

    /* dot-string errors, brackets */
    t_path("<.a@example.org>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<a.@example.org>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<a..b@example.org>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<a b@example.org>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<a(b)@example.org>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("user@example.org", 0, 0, 1, "501 5.1.3 Bad recipient address syntax", NULL, NULL);
    t_path("user@example.org", 0, 0, 0, "501 5.1.7 Bad sender address syntax", NULL, NULL);
    t_path("<user@example.org", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<user>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<@example.org>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<user@>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<user@-bad.example>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<user@bad-.example>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<user@a..example>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<user@under_score.example>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<user@example.org..>", 0, 0, 1, "501 5.1.3", NULL, NULL);

    /* postmaster */
    t_path("<postmaster>", 0, 0, 1, NULL, "postmaster", "");
    t_path("<PostMaster>", 0, 0, 1, NULL, "PostMaster", "");
    t_path("<postmaster>", 0, 0, 0, "501 5.1.7", NULL, NULL);
    t_path("<postmistress>", 0, 0, 1, "501 5.1.3", NULL, NULL);

    /* source routes */
    t_path("<@relay.example:user@example.org>", 0, 0, 1, NULL, "user", "example.org");
    t_path("<@a.example,@b.example:user@example.org>", 0, 0, 1, NULL, "user", "example.org");
    t_path("<@[192.0.2.1]:user@example.org>", 0, 0, 1, NULL, "user", "example.org");
    t_path("<@a.example,b.example:user@example.org>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<@a.example user@example.org>", 0, 0, 1, "501 5.1.3", NULL, NULL);
    t_path("<@:user@example.org>", 0, 0, 1, "501 5.1.3", NULL, NULL);

    /* rest pointer */
    r = smtp_parse_path("<a@b.example> SIZE=1", &rest, &a, 0, 0, 0);
    ok(r == NULL && strcmp(rest, " SIZE=1") == 0, "rest points after '>'");

    /* Length: a local part has no bound of its own (RFC 5321 4.5.3.1);
     * SRS, VERP and list-confirmation addresses run past 64 octets. */
    memset(local, 'l', 65);
    local[65] = '\0';
    snprintf(buf, sizeof buf, "<%s@example.org>", local);
    t_path(buf, 0, 0, 1, NULL, local, "example.org");
    t_path(buf, 0, 0, 0, NULL, local, "example.org");
    t_path("<SRS0=HHH=TT=example.com=very.long.original.sender.name@forwarder.test>", 0, 0, 0,
           NULL, "SRS0=HHH=TT=example.com=very.long.original.sender.name", "forwarder.test");
    /* 79 octets, as in the issue's SRS sender */
    memset(local, 's', 79);
    local[79] = '\0';
    snprintf(buf, sizeof buf, "<%s@forwarder.test>", local);
    t_path(buf, 0, 0, 0, NULL, local, "forwarder.test");
    /* the whole path (brackets included) up to SMTP_PATH_MAX fits */
    memset(local, 'p', SMTP_PATH_MAX - 2 - 12);
    local[SMTP_PATH_MAX - 2 - 12] = '\0';          /* + "@example.org" = SMTP_PATH_MAX - 2 */
    snprintf(buf, sizeof buf, "<%s@example.org>", local);
    is_int((int)strlen(buf), SMTP_PATH_MAX, "test path is SMTP_PATH_MAX octets");
    r = smtp_parse_path(buf, &rest, &a, 0, 0, 1);
    ok(r == NULL && strcmp(a.local, local) == 0, "path of SMTP_PATH_MAX octets fits, local part whole");
    char fmt[SMTP_PATH_MAX + 1];
    ok(r == NULL && smtp_addr_format(&a, fmt, sizeof fmt) == SMTP_PATH_MAX - 2,
       "and formats into SMTP_PATH_MAX + 1 octets");
    snprintf(buf, sizeof buf, "<%sp@example.org>", local);
    t_path(buf, 0, 0, 1, "501 5.1.3 Recipient address too long", NULL, NULL);
    t_path(buf, 0, 0, 0, "501 5.1.7 Sender address too long", NULL, NULL);
    /* a local part alone longer than any path */
    memset(local, 'x', SMTP_PATH_MAX + 8);
    local[SMTP_PATH_MAX + 8] = '\0';
    snprintf(buf, sizeof buf, "<%s@example.org>", local);
    t_path(buf, 0, 0, 1, "501 5.1.3 Recipient address too long", NULL, NULL);
    /* a quoted local part keeps its quotes */
    memset(local, 'q', 70);
    local[70] = '\0';
    snprintf(buf, sizeof buf, "<\"%s\"@example.org>", local);
    r = smtp_parse_path(buf, &rest, &a, 0, 0, 1);
    ok(r == NULL && strlen(a.local) == 72, "quoted local of 72 with quotes fits");

    /* domain 255/256 via smtp_domain_valid (a path that long breaks 256) */
    memset(dom, 0, sizeof dom);
    for (int i = 0; i < 4; i++) {
        memset(dom + i * 64, 'd', 63);
        if (i < 3)
            dom[i * 64 + 63] = '.';
    }
    dom[255] = '\0';                    /* 63.63.63.63 = 255 */
    is_int((int)strlen(dom), 255, "test domain is 255 octets");
    ok(smtp_domain_valid(dom, 0), "domain of 255 valid");
    dom[255] = 'x';
    dom[256] = '\0';
    ok(!smtp_domain_valid(dom, 0), "domain of 256 invalid (label 64 too)");
    dom[254] = '\0';
    memmove(dom + 1, dom, 255);
    dom[0] = 'e';
    dom[1] = '.';                       /* e.ddd(62).ddd(63)... keeps labels <= 63 */
    dom[255] = '\0';
    ok(strlen(dom) == 255 && smtp_domain_valid(dom, 0), "another 255 domain valid");
    dom[255] = 'z';
    dom[256] = '\0';
    ok(!smtp_domain_valid(dom, 0), "256 domain with short labels invalid");
    memset(dom, 'a', 63);
    strcpy(dom + 63, ".example");
    ok(smtp_domain_valid(dom, 0), "label of 63 valid");
    memset(dom, 'a', 64);
    strcpy(dom + 64, ".example");
    ok(!smtp_domain_valid(dom, 0), "label of 64 invalid");
    ok(smtp_domain_valid("example.org.", 0), "trailing dot ok");
    ok(!smtp_domain_valid("", 0), "empty invalid");
    ok(!smtp_domain_valid(".", 0), "lone dot invalid");
    ok(!smtp_domain_valid("1.2.3.4", 0), "bare IP is not a hostname");
    ok(!smtp_domain_valid("b\xc3\xbc" "cher.example", 0), "U-label refused without utf8");
    ok(smtp_domain_valid("b\xc3\xbc" "cher.example", 1), "U-label accepted with utf8");

    /* path SMTP_PATH_MAX / + 1: "<" + local + "@" + 189-octet domain + ">" */
    {
        size_t ll = SMTP_PATH_MAX - 3 - 189;
        memset(local, 'l', ll);
        local[ll] = '\0';
    }
    memset(dom, 0, sizeof dom);
    {
        size_t n = 0;
        while (n < 189) {
            size_t take = 189 - n > 60 ? 50 : 189 - n;
            memset(dom + n, 'p', take);
            n += take;
            if (n < 189)
                dom[n++] = '.';
        }
        dom[189] = '\0';
    }
    snprintf(buf, sizeof buf, "<%s@%s>", local, dom);
    is_int((int)strlen(buf), SMTP_PATH_MAX, "boundary path is SMTP_PATH_MAX octets");
    r = smtp_parse_path(buf, &rest, &a, 0, 0, 1);
    ok(r == NULL, "path of SMTP_PATH_MAX accepted (%s)", r ? r : "ok");
    snprintf(buf, sizeof buf, "<%s@q%s>", local, dom);
    ok(starts(smtp_parse_path(buf, &rest, &a, 0, 0, 1), "501 5.1.3 Recipient address too long"),
       "path of SMTP_PATH_MAX + 1 too long");
    snprintf(buf, sizeof buf, "<%s@%s.>", local, dom);
    ok(starts(smtp_parse_path(buf, &rest, &a, 0, 0, 0), "501 5.1.7 Sender address too long"),
       "path of SMTP_PATH_MAX + 1 with trailing dot too long");

    /* UTF-8 */
    t_path("<j\xc3\xb6rg@example.org>", 0, 0, 1, "553 5.6.7 Non-ASCII address requires SMTPUTF8",
           NULL, NULL);
    t_path("<jorg@b\xc3\xbc" "cher.example>", 0, 0, 0, "553 5.6.7", NULL, NULL);
    t_path("<\"j\xc3\xb6rg\"@example.org>", 0, 0, 1, "553 5.6.7", NULL, NULL);
    t_path("<j\xc3\xb6rg@b\xc3\xbc" "cher.example>", 0, 1, 1, NULL, "j\xc3\xb6rg",
           "b\xc3\xbc" "cher.example");
    t_path("<\xe6\x97\xa5\xe6\x9c\xac@example.org>", 0, 1, 1, NULL, "\xe6\x97\xa5\xe6\x9c\xac",
           "example.org");
    t_path("<\xf0\x9f\x93\xa7@example.org>", 0, 1, 1, NULL, "\xf0\x9f\x93\xa7", "example.org");
    t_path("<\xc0\xaf@example.org>", 0, 1, 1, "501 5.1.3", NULL, NULL);      /* overlong */
    t_path("<\xe0\x80\xaf@example.org>", 0, 1, 1, "501 5.1.3", NULL, NULL);  /* overlong */
    t_path("<\xed\xa0\x80@example.org>", 0, 1, 1, "501 5.1.3", NULL, NULL);  /* surrogate */
    t_path("<\xc3(x@example.org>", 0, 1, 1, "501 5.1.3", NULL, NULL);        /* bad cont */
    t_path("<\xf4\x90\x80\x80@example.org>", 0, 1, 1, "501 5.1.3", NULL, NULL); /* > U+10FFFF */
    t_path("<x@b\xc3.example>", 0, 1, 1, "501 5.1.3", NULL, NULL);
    t_path("<\xc3>", 0, 1, 1, "501 5.1.3", NULL, NULL);
    r = smtp_parse_path("<j\xc3\xb6rg@example.org>", &rest, &a, 0, 1, 1);
    ok(r == NULL && a.utf8 == 1, "utf8 flag set");
    r = smtp_parse_path("<JOE@B\xc3\x9c" "CHER.EXAMPLE>", &rest, &a, 0, 1, 1);
    ok(r == NULL && strcmp(a.domain, "b\xc3\x9c" "cher.example") == 0,
       "domain lower-cased ASCII only, local kept");
    ok(r == NULL && strcmp(a.local, "JOE") == 0, "local case kept");

    /* format */
    r = smtp_parse_path("<User@Example.ORG>", &rest, &a, 0, 0, 1);
    is_int(smtp_addr_format(&a, buf, sizeof buf), 16, "format length");
    is_str(buf, "User@example.org", "format text");
    is_int(smtp_addr_format(&a, buf, 16), -1, "format too small");
    is_int(smtp_addr_format(&a, buf, 17), 16, "format exact fit");
    smtp_parse_path("<>", &rest, &a, 1, 0, 0);
    ok(smtp_addr_format(&a, buf, sizeof buf) == 0 && buf[0] == '\0', "format null");
    smtp_parse_path("<postmaster>", &rest, &a, 0, 0, 1);
    ok(smtp_addr_format(&a, buf, sizeof buf) == 10 && strcmp(buf, "postmaster") == 0,
       "format postmaster without domain");
}

static void test_xtext(void)
{
    char out[BIG], enc[BIG];
    const char *samples[] = { "plain", "a+b=c", "with space", "<user@example.org>",
                              "\xc3\xa9t\xc3\xa9", "~!#", "" };

    is_int(smtp_xtext_decode("abc", 3, out, sizeof out), 3, "xtext plain");
    is_str(out, "abc", "xtext plain text");
    is_int(smtp_xtext_decode("a+2Bb", 5, out, sizeof out), 3, "xtext +2B");
    is_str(out, "a+b", "xtext +2B text");
    is_int(smtp_xtext_decode("a+3Db+20c", 9, out, sizeof out), 5, "xtext = and space");
    is_str(out, "a=b c", "xtext = and space text");
    is_int(smtp_xtext_decode("a+2b", 4, out, sizeof out), -1, "xtext lower-case hex refused");
    is_int(smtp_xtext_decode("a+2", 3, out, sizeof out), -1, "xtext truncated escape");
    is_int(smtp_xtext_decode("a+", 2, out, sizeof out), -1, "xtext bare +");
    is_int(smtp_xtext_decode("a=b", 3, out, sizeof out), -1, "xtext literal = refused");
    is_int(smtp_xtext_decode("a b", 3, out, sizeof out), -1, "xtext literal space refused");
    is_int(smtp_xtext_decode("a+0Db", 5, out, sizeof out), -1, "xtext decoded CR refused");
    is_int(smtp_xtext_decode("a+00b", 5, out, sizeof out), -1, "xtext decoded NUL refused");
    is_int(smtp_xtext_decode("a+7F", 4, out, sizeof out), -1, "xtext decoded DEL refused");
    is_int(smtp_xtext_decode("abcd", 4, out, 4), -1, "xtext decode overflow");
    is_int(smtp_xtext_decode("abc", 3, out, 4), 3, "xtext decode exact fit");
    is_int(smtp_xtext_encode("a+b=c d", enc, sizeof enc), 13, "xtext encode length");
    is_str(enc, "a+2Bb+3Dc+20d", "xtext encode text");
    is_int(smtp_xtext_encode("abc", enc, 3), -1, "xtext encode overflow");
    is_int(smtp_xtext_encode("+", enc, 3), -1, "xtext encode escape overflow");
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        int n = smtp_xtext_encode(samples[i], enc, sizeof enc);
        int m = n < 0 ? -1 : smtp_xtext_decode(enc, (size_t)n, out, sizeof out);
        ok(m == (int)strlen(samples[i]) && strcmp(out, samples[i]) == 0,
           "xtext roundtrip \"%s\" via \"%s\"", samples[i], enc);
    }
}

static void test_mail_params(void)
{
    struct smtp_mail_params mp;
    char buf[BIG];
    const char *r;

    r = smtp_parse_mail_params("", &mp);
    ok(r == NULL && mp.size == -1 && mp.body == SMTP_BODY_7BIT && !mp.smtputf8 &&
       mp.ret == SMTP_RET_NONE && mp.envid[0] == '\0', "no params: defaults");
    r = smtp_parse_mail_params(" SIZE=12345", &mp);
    ok(r == NULL && mp.size == 12345, "SIZE");
    r = smtp_parse_mail_params(" size=0", &mp);
    ok(r == NULL && mp.size == 0, "size=0 lower-case keyword");
    r = smtp_parse_mail_params("  SIZE=1   BODY=8BITMIME  SMTPUTF8 RET=HDRS ENVID=QQ+2B1  ", &mp);
    ok(r == NULL && mp.size == 1 && mp.body == SMTP_BODY_8BITMIME && mp.smtputf8 &&
       mp.ret == SMTP_RET_HDRS && strcmp(mp.envid, "QQ+1") == 0, "all params, extra spaces");
    r = smtp_parse_mail_params(" BODY=7bit RET=full", &mp);
    ok(r == NULL && mp.body == SMTP_BODY_7BIT && mp.ret == SMTP_RET_FULL, "case-insensitive values");
    r = smtp_parse_mail_params(" SIZE=99999999999999999999999", &mp);
    ok(r == NULL && mp.size == LONG_MAX, "SIZE overflow saturates: the caller refuses it as a size");
    snprintf(buf, sizeof buf, " SIZE=%ld", LONG_MAX);
    r = smtp_parse_mail_params(buf, &mp);
    ok(r == NULL && mp.size == LONG_MAX, "SIZE=LONG_MAX accepted");
    ok(starts(smtp_parse_mail_params(" SIZE=12a", &mp), "501 5.5.4"), "SIZE junk");
    ok(starts(smtp_parse_mail_params(" SIZE=-1", &mp), "501 5.5.4"), "SIZE negative");
    ok(starts(smtp_parse_mail_params(" SIZE=", &mp), "501 5.5.4"), "SIZE empty");
    ok(starts(smtp_parse_mail_params(" SIZE", &mp), "501 5.5.4"), "SIZE without value");
    ok(starts(smtp_parse_mail_params(" BODY=BINARYMIME", &mp), "555 5.5.4"), "BINARYMIME 555");
    ok(starts(smtp_parse_mail_params(" BODY=9BIT", &mp), "501 5.5.4"), "BODY bad value");
    ok(starts(smtp_parse_mail_params(" SMTPUTF8=yes", &mp), "501 5.5.4"), "SMTPUTF8 with value");
    ok(starts(smtp_parse_mail_params(" RET=ALL", &mp), "501 5.5.4"), "RET bad value");
    ok(starts(smtp_parse_mail_params(" SIZE=1 SIZE=2", &mp), "501 5.5.4 Duplicate parameter"),
       "duplicate SIZE");
    ok(starts(smtp_parse_mail_params(" body=7BIT BODY=8BITMIME", &mp), "501 5.5.4 Duplicate"),
       "duplicate BODY (case differs)");
    ok(starts(smtp_parse_mail_params(" AUTH=<>", &mp), "555 5.5.4 Unsupported parameter"),
       "unknown AUTH= 555");
    ok(starts(smtp_parse_mail_params(" XFOO", &mp), "555 5.5.4"), "unknown keyword 555");
    ok(starts(smtp_parse_mail_params("SIZE=1", &mp), "501 5.5.4"), "no space before param");
    ok(starts(smtp_parse_mail_params(" =1", &mp), "501 5.5.4"), "empty keyword");
    ok(starts(smtp_parse_mail_params(" -X=1", &mp), "501 5.5.4"), "keyword starting with -");
    ok(starts(smtp_parse_mail_params(" SIZE=1\t", &mp), "501 5.5.4"), "tab in value");
    ok(starts(smtp_parse_mail_params(" ENVID=a\x01", &mp), "501 5.5.4"), "control char in value");
    ok(starts(smtp_parse_mail_params(" ENVID=a\x7f", &mp), "501 5.5.4"), "DEL in value");
    ok(starts(smtp_parse_mail_params(" ENVID=a+0Ab", &mp), "501 5.5.4"), "ENVID decoded LF");
    ok(starts(smtp_parse_mail_params(" ENVID=a+zz", &mp), "501 5.5.4"), "ENVID bad xtext");
    memset(buf, 0, sizeof buf);
    strcpy(buf, " ENVID=");
    memset(buf + 7, 'e', 100);
    r = smtp_parse_mail_params(buf, &mp);
    ok(r == NULL && strlen(mp.envid) == 100, "ENVID of 100 accepted");
    buf[107] = 'e';
    ok(starts(smtp_parse_mail_params(buf, &mp), "501 5.5.4"), "ENVID of 101 refused");
}

static void test_rcpt_params(void)
{
    struct smtp_rcpt_params rp;
    char buf[BIG];
    const char *r;

    r = smtp_parse_rcpt_params("", &rp);
    ok(r == NULL && rp.notify == 0 && rp.orcpt_type[0] == '\0' && rp.orcpt[0] == '\0',
       "no rcpt params");
    r = smtp_parse_rcpt_params(" NOTIFY=NEVER", &rp);
    ok(r == NULL && rp.notify == SMTP_NOTIFY_NEVER, "NOTIFY=NEVER");
    r = smtp_parse_rcpt_params(" NOTIFY=success,FAILURE,Delay", &rp);
    ok(r == NULL && rp.notify == (SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY),
       "NOTIFY list");
    r = smtp_parse_rcpt_params(" NOTIFY=DELAY", &rp);
    ok(r == NULL && rp.notify == SMTP_NOTIFY_DELAY, "NOTIFY=DELAY");
    ok(starts(smtp_parse_rcpt_params(" NOTIFY=NEVER,DELAY", &rp), "501 5.5.4"), "NEVER not alone");
    ok(starts(smtp_parse_rcpt_params(" NOTIFY=SUCCESS,,DELAY", &rp), "501 5.5.4"), "empty item");
    ok(starts(smtp_parse_rcpt_params(" NOTIFY=SUCCESS,", &rp), "501 5.5.4"), "trailing comma");
    ok(starts(smtp_parse_rcpt_params(" NOTIFY=SOMETIMES", &rp), "501 5.5.4"), "unknown NOTIFY");
    ok(starts(smtp_parse_rcpt_params(" NOTIFY", &rp), "501 5.5.4"), "NOTIFY without value");
    r = smtp_parse_rcpt_params(" ORCPT=rfc822;user+40example.org", &rp);
    ok(r == NULL && strcmp(rp.orcpt_type, "rfc822") == 0 &&
       strcmp(rp.orcpt, "user@example.org") == 0, "ORCPT rfc822 decoded");
    r = smtp_parse_rcpt_params(" ORCPT=RFC822;a@b.example NOTIFY=FAILURE", &rp);
    ok(r == NULL && strcmp(rp.orcpt_type, "rfc822") == 0 && strcmp(rp.orcpt, "a@b.example") == 0 &&
       rp.notify == SMTP_NOTIFY_FAILURE, "ORCPT type lower-cased, with NOTIFY");
    r = smtp_parse_rcpt_params(" ORCPT=utf-8;user+40example.org", &rp);
    ok(r == NULL && strcmp(rp.orcpt_type, "utf-8") == 0, "ORCPT utf-8 type");
    ok(starts(smtp_parse_rcpt_params(" ORCPT=rfc822", &rp), "501 5.5.4"), "ORCPT without ';'");
    ok(starts(smtp_parse_rcpt_params(" ORCPT=;a@b", &rp), "501 5.5.4"), "ORCPT empty type");
    ok(starts(smtp_parse_rcpt_params(" ORCPT=rfc822;", &rp), "501 5.5.4"), "ORCPT empty address");
    ok(starts(smtp_parse_rcpt_params(" ORCPT=rf(c;a@b", &rp), "501 5.5.4"), "ORCPT bad type");
    ok(starts(smtp_parse_rcpt_params(" ORCPT=rfc822;a+0Db", &rp), "501 5.5.4"), "ORCPT decoded CR");
    ok(starts(smtp_parse_rcpt_params(" NOTIFY=NEVER NOTIFY=NEVER", &rp), "501 5.5.4 Duplicate"),
       "duplicate NOTIFY");
    ok(starts(smtp_parse_rcpt_params(" ORCPT=rfc822;a ORCPT=rfc822;b", &rp), "501 5.5.4 Duplicate"),
       "duplicate ORCPT");
    ok(starts(smtp_parse_rcpt_params(" SIZE=1", &rp), "555 5.5.4"), "MAIL param on RCPT 555");
    memset(buf, 0, sizeof buf);
    strcpy(buf, " ORCPT=rfc822;");
    memset(buf + 14, 'o', 500);
    r = smtp_parse_rcpt_params(buf, &rp);
    ok(r == NULL && strlen(rp.orcpt) == 500, "ORCPT of 500 accepted");
    buf[514] = 'o';
    ok(starts(smtp_parse_rcpt_params(buf, &rp), "501 5.5.4"), "ORCPT of 501 refused");
}

static void test_etrn(void)
{
    char d[SMTP_DOMAIN_MAX + 1];
    int kind;
    const char *r;

    r = smtp_parse_etrn("example.org", &kind, d, sizeof d);
    ok(r == NULL && kind == 0 && strcmp(d, "example.org") == 0, "ETRN domain");
    r = smtp_parse_etrn("@Example.ORG.", &kind, d, sizeof d);
    ok(r == NULL && kind == '@' && strcmp(d, "example.org") == 0, "ETRN @domain lower-cased");
    r = smtp_parse_etrn("#queue1", &kind, d, sizeof d);
    ok(r == NULL && kind == '#' && strcmp(d, "queue1") == 0, "ETRN #queue");
    r = smtp_parse_etrn("example.org  ", &kind, d, sizeof d);
    ok(r == NULL && strcmp(d, "example.org") == 0, "ETRN trailing spaces");
    ok(starts(smtp_parse_etrn("", &kind, d, sizeof d), "500 5.5.2 Syntax: ETRN domain"), "ETRN empty");
    ok(starts(smtp_parse_etrn("   ", &kind, d, sizeof d), "500 5.5.2"), "ETRN spaces only");
    ok(starts(smtp_parse_etrn("@", &kind, d, sizeof d), "501 5.5.4 Bad domain name"), "ETRN bare @");
    ok(starts(smtp_parse_etrn("#", &kind, d, sizeof d), "501 5.5.4"), "ETRN bare #");
    ok(starts(smtp_parse_etrn("bad_domain.example", &kind, d, sizeof d), "501 5.5.4"), "ETRN underscore");
    ok(starts(smtp_parse_etrn("a b", &kind, d, sizeof d), "501 5.5.4"), "ETRN space inside");
    ok(starts(smtp_parse_etrn("@@x.example", &kind, d, sizeof d), "501 5.5.4"), "ETRN @@");
    ok(starts(smtp_parse_etrn("example.org", &kind, d, 5), "501 5.5.4"), "ETRN output too small");
    ok(starts(smtp_parse_etrn("#q\x01", &kind, d, sizeof d), "501 5.5.4"), "ETRN queue control char");
}

static void test_helo(void)
{
    char out[SMTP_DOMAIN_MAX + 1], small[8];

    ok(smtp_parse_helo("mail.example.com", out, sizeof out) == NULL &&
       strcmp(out, "mail.example.com") == 0, "HELO hostname");
    ok(smtp_parse_helo("localhost", out, sizeof out) == NULL, "HELO single label");
    ok(smtp_parse_helo("my_pc.local", out, sizeof out) == NULL, "HELO underscore tolerated");
    ok(smtp_parse_helo("Mail.Example.COM.", out, sizeof out) == NULL &&
       strcmp(out, "Mail.Example.COM.") == 0, "HELO kept as given");
    ok(smtp_parse_helo("[192.0.2.1]", out, sizeof out) == NULL, "HELO v4 literal");
    ok(smtp_parse_helo("[IPv6:2001:db8::1]", out, sizeof out) == NULL, "HELO v6 literal");
    ok(smtp_parse_helo("192.0.2.1", out, sizeof out) == NULL, "HELO bare IPv4 tolerated");
    ok(smtp_parse_helo("host.example  ", out, sizeof out) == NULL && strcmp(out, "host.example") == 0,
       "HELO trailing spaces stripped");
    ok(starts(smtp_parse_helo("", out, sizeof out), "501 5.5.4 Syntax: EHLO hostname"), "HELO empty");
    ok(starts(smtp_parse_helo("two words", out, sizeof out), "501 5.5.4"), "HELO with space");
    ok(starts(smtp_parse_helo("bad\x01host", out, sizeof out), "501 5.5.4"), "HELO control char");
    ok(starts(smtp_parse_helo("[999.0.0.1]", out, sizeof out), "501 5.5.4"), "HELO bad literal");
    ok(starts(smtp_parse_helo("-dash.example", out, sizeof out), "501 5.5.4"), "HELO leading hyphen");
    ok(starts(smtp_parse_helo("h\xc3\xa9.example", out, sizeof out), "501 5.5.4"), "HELO non-ASCII");
    ok(starts(smtp_parse_helo("a..b", out, sizeof out), "501 5.5.4"), "HELO empty label");
    ok(smtp_parse_helo("longer.example.com", small, sizeof small) == NULL &&
       strcmp(small, "longer.") == 0, "HELO truncated safely");
}

static void test_bdat(void)
{
    long size;
    int last;

    ok(smtp_parse_bdat("100", 1000, &size, &last) == NULL && size == 100 && last == 0, "BDAT 100");
    ok(smtp_parse_bdat("0 LAST", 1000, &size, &last) == NULL && size == 0 && last == 1, "BDAT 0 LAST");
    ok(smtp_parse_bdat("5 last", 1000, &size, &last) == NULL && last == 1, "BDAT last lower-case");
    ok(smtp_parse_bdat("5  LAST ", 1000, &size, &last) == NULL && last == 1, "BDAT extra spaces");
    ok(smtp_parse_bdat("1000", 1000, &size, &last) == NULL && size == 1000, "BDAT == max");
    ok(starts(smtp_parse_bdat("1001", 1000, &size, &last), "552 5.3.4 Message size exceeds fixed limit"),
       "BDAT > max");
    ok(starts(smtp_parse_bdat("99999999999999999999999", LONG_MAX, &size, &last), "552 5.3.4"),
       "BDAT overflow");
    ok(starts(smtp_parse_bdat("", 1000, &size, &last), "501 5.5.4 Syntax: BDAT size [LAST]"), "BDAT empty");
    ok(starts(smtp_parse_bdat("LAST", 1000, &size, &last), "501 5.5.4"), "BDAT no size");
    ok(starts(smtp_parse_bdat("10LAST", 1000, &size, &last), "501 5.5.4"), "BDAT no space");
    ok(starts(smtp_parse_bdat("10 FIRST", 1000, &size, &last), "501 5.5.4"), "BDAT bad word");
    ok(starts(smtp_parse_bdat("10 LAST x", 1000, &size, &last), "501 5.5.4"), "BDAT trailing junk");
    ok(starts(smtp_parse_bdat("-1", 1000, &size, &last), "501 5.5.4"), "BDAT negative");
    ok(starts(smtp_parse_bdat("+1", 1000, &size, &last), "501 5.5.4"), "BDAT plus sign");
}

int main(void)
{
    test_commands();
    test_paths();
    test_xtext();
    test_mail_params();
    test_rcpt_params();
    test_etrn();
    test_helo();
    test_bdat();
    return done_testing();
}
