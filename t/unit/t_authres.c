/*
 * t_authres.c - the Authentication-Results header: formatting (values from
 * peers cannot inject), authserv-id parsing, and the forged-header filter
 * (RFC 8601 section 5).
 */
#include "config.h"
#include "authres.h"
#include "tap.h"

#include <string.h>

static const char *filt(const char *in, const char *id, int *removed)
{
    static char out[4096];
    size_t n = authres_filter(in, strlen(in), id, out, removed);
    out[n] = '\0';
    return out;
}

int main(void)
{
    char buf[AUTHRES_RESINFO_MAX], hdr[AUTHRES_HEADER_MAX], id[256];
    int removed, n;

    /* resinfo */
    buf[0] = '\0';
    is_int(authres_add(buf, sizeof buf, "spf", "pass", "smtp.mailfrom", "a.example"), 0, "add spf");
    is_int(authres_add(buf, sizeof buf, "spf", "none", "smtp.helo", "mail.a.example"), 0, "add helo");
    is_int(authres_add2(buf, sizeof buf, "dkim", "pass", "header.d", "a.example", "header.s", "sel1"), 0,
           "add dkim");
    is_str(buf, "spf=pass smtp.mailfrom=a.example; spf=none smtp.helo=mail.a.example; "
                "dkim=pass header.d=a.example header.s=sel1", "resinfo list");

    buf[0] = '\0';
    authres_add(buf, sizeof buf, "spf", "fail", "smtp.helo", "x; dkim=pass (\r\nEvil: 1");
    is_str(buf, "spf=fail smtp.helo=\"x; dkim=pass (??Evil: 1\"", "peer text is quoted, no CRLF");
    buf[0] = '\0';
    authres_add(buf, sizeof buf, "spf", "pass", "smtp.mailfrom", "a\"b\\c");
    is_str(buf, "spf=pass smtp.mailfrom=\"a\\\"b\\\\c\"", "quotes and backslashes escaped");
    buf[0] = '\0';
    authres_add(buf, sizeof buf, "spf", "pass", "smtp.mailfrom", "u@a.example");
    is_str(buf, "spf=pass smtp.mailfrom=u@a.example", "local@domain stays bare");

    char small[24] = "";
    is_int(authres_add(small, sizeof small, "spf", "pass", "smtp.mailfrom", "long.domain.example"), -1,
           "does not fit: refused");
    is_str(small, "", "buffer unchanged when refused");

    /* header */
    n = authres_format("mx2.example.net", "spf=pass smtp.mailfrom=a.example; dkim=fail header.d=b",
                       hdr, sizeof hdr);
    is_str(hdr, "Authentication-Results: mx2.example.net;\r\n\tspf=pass smtp.mailfrom=a.example;"
                "\r\n\tdkim=fail header.d=b\r\n", "header folded per resinfo");
    is_int(n, (int)strlen(hdr), "length returned");
    authres_format("mx2.example.net", "", hdr, sizeof hdr);
    is_str(hdr, "Authentication-Results: mx2.example.net; none\r\n", "no results: none");
    authres_format("mx2", "spf=pass smtp.helo=\"a;b\"", hdr, sizeof hdr);
    is_str(hdr, "Authentication-Results: mx2;\r\n\tspf=pass smtp.helo=\"a;b\"\r\n",
           "no fold inside a quoted value");
    is_int(authres_format("bad id", "", hdr, sizeof hdr), -1, "an id that is no token is refused");
    is_int(authres_format("mx2", "spf=pass", hdr, 10), -1, "too small: refused");

    /* authserv-id */
    const char *v = " (comment (nested)) mx2.Example.NET 1; spf=pass";
    ok(authres_field_id(v, strlen(v), id, sizeof id) > 0 && strcmp(id, "mx2.Example.NET") == 0,
       "id after comments, version ignored");
    v = "\r\n\t\"mx2.example.net\"; none";
    ok(authres_field_id(v, strlen(v), id, sizeof id) > 0 && strcmp(id, "mx2.example.net") == 0,
       "quoted id on a folded line");
    v = "mx2;spf=pass";
    ok(authres_field_id(v, strlen(v), id, sizeof id) > 0 && strcmp(id, "mx2") == 0, "id before ';'");
    v = "  ";
    is_int(authres_field_id(v, strlen(v), id, sizeof id), -1, "no id");

    /* filter */
    const char *msg =
        "Received: from x by y; date\r\n"
        "Authentication-Results: MX2.example.net; spf=pass\r\n"
        "\tsmtp.mailfrom=forged.example\r\n"
        "Subject: hi\r\n"
        "authentication-results : other.example; dkim=pass header.d=b\r\n"
        "Authentication-Results: (c) mx2.example.net;\r\n"
        " spf=pass\r\n"
        "Authentication-Results: mx2.example.net.evil; none\r\n"
        "X-Authentication-Results: mx2.example.net; none\r\n"
        "\r\n"
        "Authentication-Results: mx2.example.net; in the body\r\n";
    const char *want =
        "Received: from x by y; date\r\n"
        "Subject: hi\r\n"
        "authentication-results : other.example; dkim=pass header.d=b\r\n"
        "Authentication-Results: mx2.example.net.evil; none\r\n"
        "X-Authentication-Results: mx2.example.net; none\r\n"
        "\r\n"
        "Authentication-Results: mx2.example.net; in the body\r\n";
    is_str(filt(msg, "mx2.example.net", &removed), want,
           "ours removed with continuations, case-insensitive; others and the body kept");
    is_int(removed, 2, "two removed");

    is_str(filt("A: b\nAuthentication-Results: mx2; none\n\nbody\n", "mx2", &removed),
           "A: b\n\nbody\n", "bare LF line ends");
    is_str(filt("Authentication-Results: mx2; none", "mx2", &removed), "",
           "a last field without line end");
    is_str(filt("Authentication-Results: mx3; none\r\n", "mx2", &removed),
           "Authentication-Results: mx3; none\r\n", "another id kept");
    is_int(removed, 0, "none removed");
    is_str(filt("", "mx2", &removed), "", "empty input");
    is_str(filt("\r\nAuthentication-Results: mx2; none\r\n", "mx2", &removed),
           "\r\nAuthentication-Results: mx2; none\r\n", "empty header section: body untouched");
    is_str(filt("Authentication-Results:\r\n mx2\r\n ; none\r\nX: y\r\n", "mx2", &removed), "X: y\r\n",
           "id on a continuation line");

    return done_testing();
}
