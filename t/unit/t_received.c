/*
 * t_received.c - unit tests for src/received.c: content, CRLF line ends,
 * folding at 78 columns, hostile HELO sanitizing, buffer limits, RFC 3848
 * protocol names.
 */
#include "config.h"
#include "received.h"
#include "tap.h"

#include <string.h>

#define BUFSZ 2048
#define LINE_MAX_OCTETS 78
/* 2026-11-23 16:52:47 UTC, a Monday */
#define T_WHEN ((time_t)1795452767)

/* Longest line (without CRLF); -1 if a bare CR or LF appears. */
static int longest_line(const char *s)
{
    int longest = 0, cur = 0;

    for (; *s; s++) {
        if (s[0] == '\r' && s[1] == '\n') {
            if (cur > longest)
                longest = cur;
            cur = 0;
            s++;
            continue;
        }
        if (*s == '\r' || *s == '\n')
            return -1;
        cur++;
    }
    return cur > longest ? cur : longest;
}

/* Every continuation line starts with whitespace (a proper fold). */
static int folds_ok(const char *s)
{
    const char *p = s;

    while ((p = strstr(p, "\r\n")) != NULL) {
        p += 2;
        if (*p && *p != '\t' && *p != ' ')
            return 0;
    }
    return 1;
}

static int count(const char *s, char c)
{
    int n = 0;

    for (; *s; s++)
        n += *s == c;
    return n;
}

/* Show a header as TAP comments, one per line. */
static void diag_header(const char *s)
{
    const char *e;

    while (*s && (e = strstr(s, "\r\n")) != NULL) {
        diag("%.*s", (int)(e - s), s);
        s = e + 2;
    }
}

static struct received_info base(void)
{
    struct received_info ri = {
        .helo = "mail.example.com",
        .client_name = "mail.example.com",
        .client_addr = "192.0.2.1",
        .hostname = "mx2.example.net",
        .protocol = "ESMTPS",
        .tls = "TLSv1.3",
        .qid = "4AbCdEfGh",
        .rcpt = "user@example.org",
        .when = T_WHEN,
    };
    return ri;
}

static void test_header_start(void)
{
    static char longname[RECEIVED_NAME_PEEK + 8];
    is_int(received_header_start("Subject: x\r\n", 12), 1, "a header field");
    is_int(received_header_start("X-A:", 4), 1, "name and colon, nothing after");
    is_int(received_header_start("\r\nbody\r\n", 8), 1, "empty first line: separated already");
    is_int(received_header_start("just body\r\n", 11), 0, "text: needs the empty line");
    is_int(received_header_start(": v\r\n", 5), 0, "a colon with no name");
    is_int(received_header_start(" folded\r\n", 9), 0, "a continuation line first");
    is_int(received_header_start("From foo@example.com Mon\r\n", 26), 0, "an mbox From_ line");
    is_int(received_header_start("Subj\xc3\xa9t: x", 10), 0, "8-bit in the name");
    is_int(received_header_start("Subj", 4), -1, "a name so far: cannot tell yet");
    is_int(received_header_start("", 0), -1, "nothing yet: cannot tell");
    memset(longname, 'a', sizeof longname);
    is_int(received_header_start(longname, sizeof longname), 0,
           "no colon within a line's bound: not a field");
    is_int(received_header_start(longname, RECEIVED_NAME_PEEK - 1), -1,
           "just under the bound: cannot tell yet");
}

int main(void)
{
    char buf[BUFSZ];
    test_header_start();
    struct received_info ri = base();
    int n, n2;

    n = received_format(buf, sizeof buf, &ri);
    ok(n > 0 && (size_t)n == strlen(buf), "returns length of text");
    diag_header(buf);
    is_str(buf,
           "Received: from mail.example.com (mail.example.com [192.0.2.1])\r\n"
           "\tby mx2.example.net (mxkeep) with ESMTPS (TLSv1.3) id 4AbCdEfGh\r\n"
           "\tfor <user@example.org>; Mon, 23 Nov 2026 16:52:47 +0000\r\n",
           "exact layout for a typical message");
    ok(strncmp(buf, "Received: from mail.example.com ", 32) == 0, "starts with from HELO");
    ok(strstr(buf, "[192.0.2.1]") != NULL, "contains address literal");
    ok(strstr(buf, "id 4AbCdEfGh") != NULL, "contains qid");
    ok(strstr(buf, "with ESMTPS") != NULL, "contains protocol");
    ok(strstr(buf, "for <user@example.org>;") != NULL, "contains for <rcpt>;");
    ok(strstr(buf, "Mon, 23 Nov 2026 16:52:47 +0000") != NULL, "RFC 5322 date in UTC");
    ok(n >= 2 && strcmp(buf + n - 2, "\r\n") == 0, "ends in CRLF");
    ok(longest_line(buf) > 0 && longest_line(buf) <= LINE_MAX_OCTETS, "no line over 78");
    ok(folds_ok(buf), "continuation lines start with whitespace");

    /* long TLS text folds inside the comment rather than overrunning */
    ri.tls = "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519";
    n = received_format(buf, sizeof buf, &ri);
    diag_header(buf);
    ok(n > 0 && longest_line(buf) <= LINE_MAX_OCTETS, "long TLS text still within 78");
    ok(folds_ok(buf), "long TLS folds are proper");
    ok(count(buf, '(') == count(buf, ')'), "parentheses balanced with long TLS text");
    ok(strstr(buf, "(TLSv1.3") != NULL && strstr(buf, "X25519)") != NULL, "TLS comment wrapped in parens");

    /* no TLS, no client name, several recipients */
    ri = base();
    ri.tls = NULL;
    ri.client_name = NULL;
    ri.rcpt = NULL;
    ri.protocol = "SMTP";
    n = received_format(buf, sizeof buf, &ri);
    diag_header(buf);
    ok(n > 0 && strstr(buf, "from mail.example.com ([192.0.2.1])") != NULL, "no client name: ([addr])");
    ok(strstr(buf, "for <") == NULL, "no for clause when several recipients");
    ok(strstr(buf, "id 4AbCdEfGh;") != NULL, "';' follows the id when there is no rcpt");
    ok(strstr(buf, "with SMTP id") != NULL, "no TLS comment without TLS");
    ok(longest_line(buf) <= LINE_MAX_OCTETS && strcmp(buf + n - 2, "\r\n") == 0, "short and CRLF");

    /* IPv6 client */
    ri = base();
    ri.client_addr = "IPv6:2001:db8::25";
    n = received_format(buf, sizeof buf, &ri);
    ok(n > 0 && strstr(buf, "[IPv6:2001:db8::25])") != NULL, "IPv6 address literal");

    /* no HELO: falls back to the client name, then "unknown" */
    ri = base();
    ri.helo = NULL;
    received_format(buf, sizeof buf, &ri);
    ok(strncmp(buf, "Received: from mail.example.com (", 33) == 0, "no HELO -> client name");
    ri.client_name = NULL;
    received_format(buf, sizeof buf, &ri);
    ok(strncmp(buf, "Received: from unknown ([192.0.2.1])", 36) == 0, "no HELO, no name -> unknown");

    /* hostile HELO */
    ri = base();
    ri.helo = "evil)\r\nX-Injected: yes\r\n(by trusted.example";
    n = received_format(buf, sizeof buf, &ri);
    diag_header(buf);
    ok(n > 0, "hostile helo formatted");
    ok(strstr(buf, "\r\nX-Injected") == NULL && count(buf, '\n') == 4, "no header injected");
    ok(longest_line(buf) >= 0, "no bare CR or LF");
    ok(count(buf, '(') == count(buf, ')'), "parentheses balanced");
    ok(strstr(buf, "evil??X-Injected:?yes??by?trusted.example") != NULL, "CR, LF, space -> '?', parens dropped");
    ok(strstr(buf, "by trusted.example") == NULL, "cannot forge a by clause");
    ri.helo = "h\xc3\xa9llo\x01\x7f.example";
    received_format(buf, sizeof buf, &ri);
    ok(strstr(buf, "from h??llo??.example ") != NULL, "8-bit and control octets become '?'");

    /* very long HELO is cut; header stays well-formed */
    {
        char longhelo[1000];
        memset(longhelo, 'h', sizeof longhelo - 1);
        longhelo[sizeof longhelo - 1] = '\0';
        ri.helo = longhelo;
        n = received_format(buf, sizeof buf, &ri);
        ok(n > 0 && longest_line(buf) < 998, "long HELO cut below the RFC 5322 hard limit");
        ok(strcmp(buf + n - 2, "\r\n") == 0, "long HELO still ends in CRLF");
    }

    /* A long recipient (issue 7.16) is named whole while a folded line can
     * hold it, and never cut: beyond that the optional "for" is left out. */
    {
        char lr[1100];
        memset(lr, 'r', sizeof lr);
        memcpy(lr + 990 - strlen("@example.org"), "@example.org", strlen("@example.org") + 1);
        ri = base();
        ri.rcpt = lr;
        n = received_format(buf, sizeof buf, &ri);
        ok(n > 0 && strstr(buf, lr) != NULL && strstr(buf, "\tfor") != NULL,
           "990-octet recipient named whole");
        ok(longest_line(buf) <= 998, "... within the 998-octet hard limit (%d)", longest_line(buf));
        memset(lr, 'r', sizeof lr);
        memcpy(lr + 1000 - strlen("@example.org"), "@example.org", strlen("@example.org") + 1);
        n = received_format(buf, sizeof buf, &ri);
        ok(n > 0 && strstr(buf, "for ") == NULL && strstr(buf, "rrrrrrrrrr") == NULL,
           "1000-octet recipient: no for clause, no cut address");
        ok(n > 0 && strchr(buf, ';') != NULL && strcmp(buf + n - 2, "\r\n") == 0 &&
           longest_line(buf) <= 998, "... and the header stays well-formed");
    }

    /* buffer limits */
    ri = base();
    n = received_format(buf, sizeof buf, &ri);
    is_int(received_format(buf, (size_t)n, &ri), -1, "buffer one short -> -1");
    ok(buf[0] == '\0', "buffer left empty on failure");
    n2 = received_format(buf, (size_t)n + 1, &ri);
    is_int(n2, n, "exact fit works");
    is_int(received_format(buf, 10, &ri), -1, "tiny buffer -> -1");
    is_int(received_format(buf, 0, &ri), -1, "zero buffer -> -1");

    /* protocol names (RFC 3848) */
    is_str(received_protocol(0, 0, 0), "SMTP", "HELO -> SMTP");
    is_str(received_protocol(1, 0, 0), "ESMTP", "EHLO -> ESMTP");
    is_str(received_protocol(1, 1, 0), "ESMTPS", "EHLO+TLS -> ESMTPS");
    is_str(received_protocol(1, 0, 1), "UTF8SMTP", "SMTPUTF8 -> UTF8SMTP");
    is_str(received_protocol(1, 1, 1), "UTF8SMTPS", "SMTPUTF8+TLS -> UTF8SMTPS");

    /* date: single-digit day, other weekday */
    ri = base();
    ri.when = 0;
    received_format(buf, sizeof buf, &ri);
    ok(strstr(buf, "; Thu, 1 Jan 1970 00:00:00 +0000\r\n") != NULL, "epoch date");

    return done_testing();
}
