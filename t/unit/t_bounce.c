/*
 * t_bounce.c - DSN notices (bounce.c): NOTIFY truth table, exact RFC 3464
 * fields, RET=HDRS/FULL and the full_max cap, delay and relay notices,
 * MIME structure and line ends; one notice is also parsed by Python's
 * email package when python3 is installed.
 */
#include "config.h"
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bounce.h"
#include "tap.h"

#define T_ARRIVAL   1700000000          /* Tue, 14 Nov 2023 22:13:20 +0000 */
#define T_LASTTRY   (T_ARRIVAL + 3600)  /* Tue, 14 Nov 2023 23:13:20 +0000 */
#define T_EXPIRY    (T_ARRIVAL + 7 * 86400)
#define T_NOW       (T_EXPIRY + 100)
#define T_DELAY_NOW (T_ARRIVAL + 2 * 86400)

#define ORIGINAL                                                                  \
    "Received: from client.example (client.example [192.0.2.1])\r\n"              \
    "\tby mx2.example.net (mxkeep) with ESMTP id 4ABCDEFGHIJK\r\n"                \
    "From: Alice <alice@sender.example>\r\n"                                      \
    "Subject: hello\r\n"                                                          \
    "\r\n"                                                                        \
    "BODY-LINE-1 secret text\r\n"                                                 \
    "last line\r\n"
#define ORIGINAL_HDR_LEN 169

static struct qmsg msg;
static struct qrcpt r1, r2;

static void fixture(void)
{
    memset(&msg, 0, sizeof msg);
    strcpy(msg.qid, "4ABCDEFGHIJK");
    msg.arrival = T_ARRIVAL;
    msg.ret = SMTP_RET_HDRS;
    strcpy(msg.sender, "alice@sender.example");
    strcpy(msg.envid, "ENV-42");
    msg.nrcpt = 2;

    memset(&r1, 0, sizeof r1);
    r1.index = 0;
    r1.state = QRCPT_BOUNCED;
    strcpy(r1.addr, "bob@example.org");
    strcpy(r1.domain, "example.org");
    strcpy(r1.orcpt, "rfc822;Bob@Example.org");
    r1.last_try = T_LASTTRY;
    r1.expiry = T_EXPIRY;

    memset(&r2, 0, sizeof r2);
    r2.index = 1;
    r2.state = QRCPT_EXPIRED;
    strcpy(r2.addr, "carol@example.org");
    strcpy(r2.domain, "example.org");
    r2.expiry = T_EXPIRY;
}

/* Build a notice into a NUL-terminated malloc'd string; rc in *rcp. */
static char *build(const struct bounce_rcpt *rc, size_t n, const char *orig, size_t full_max,
                   time_t now, int *rcp)
{
    struct evbuffer *out = evbuffer_new(), *o = NULL;
    struct bounce_info bi = {
        .hostname = "mx2.example.net", .new_qid = "4ZZZZZZZZZZZ", .m = &msg, .rcpts = rc,
        .nrcpt = n, .full_max = full_max, .now = now,
    };
    size_t len;
    char *s;

    if (orig) {
        o = evbuffer_new();
        evbuffer_add(o, orig, strlen(orig));
        bi.original = o;
    }
    *rcp = bounce_build(out, &bi);
    if (o) {
        size_t olen = evbuffer_get_length(o);
        char *copy = malloc(olen + 1);
        evbuffer_copyout(o, copy, olen);
        copy[olen] = '\0';
        ok(strcmp(copy, orig) == 0, "original left untouched");
        free(copy);
        evbuffer_free(o);
    }
    len = evbuffer_get_length(out);
    s = malloc(len + 1);
    evbuffer_remove(out, s, len);
    s[len] = '\0';
    evbuffer_free(out);
    return s;
}

static int has(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

/* Every line ends in CRLF, no bare CR or LF, none longer than 998. */
static int lines_ok(const char *s, const char **why)
{
    size_t col = 0;

    for (const char *p = s; *p; p++) {
        if (*p == '\r') {
            if (p[1] != '\n') {
                *why = "bare CR";
                return 0;
            }
            p++;
            col = 0;
        } else if (*p == '\n') {
            *why = "bare LF";
            return 0;
        } else if (++col > 998) {
            *why = "line over 998";
            return 0;
        }
    }
    if (col != 0) {
        *why = "last line without CRLF";
        return 0;
    }
    return 1;
}

/* The boundary parameter of the top Content-Type (copy in out). */
static int get_boundary(const char *s, char *out, size_t len)
{
    const char *p = strstr(s, "boundary=\"");
    const char *e;

    if (p == NULL)
        return 0;
    p += strlen("boundary=\"");
    e = strchr(p, '"');
    if (e == NULL || (size_t)(e - p) >= len)
        return 0;
    memcpy(out, p, (size_t)(e - p));
    out[e - p] = '\0';
    return 1;
}

/* Part idx (0-based) of the notice: the octets between "\r\n--b\r\n" and
 * the next "\r\n--b"; malloc'd, NULL when missing. */
static char *get_part(const char *s, const char *b, int idx)
{
    char open[128], *res;
    const char *p = s, *e;

    snprintf(open, sizeof open, "\r\n--%s\r\n", b);
    for (int i = 0; i <= idx; i++) {
        p = strstr(p, open);
        if (p == NULL)
            return NULL;
        p += strlen(open);
    }
    snprintf(open, sizeof open, "\r\n--%s", b);
    e = strstr(p, open);
    if (e == NULL)
        return NULL;
    res = malloc((size_t)(e - p) + 1);
    memcpy(res, p, (size_t)(e - p));
    res[e - p] = '\0';
    return res;
}

/* Content of a part (after its header). */
static const char *part_body(const char *part)
{
    const char *p = strstr(part, "\r\n\r\n");
    return p ? p + 4 : "";
}

static int count_lines_equal(const char *s, const char *line)
{
    int n = 0;
    size_t l = strlen(line);
    const char *p = s;

    while (*p) {
        const char *e = strstr(p, "\r\n");
        if (e == NULL)
            break;
        if ((size_t)(e - p) == l && memcmp(p, line, l) == 0)
            n++;
        p = e + 2;
    }
    return n;
}

static void test_wanted(void)
{
    fixture();
    r1.notify = 0;
    ok(bounce_wanted(&msg, &r1, BOUNCE_FAILED), "default: failure notice");
    ok(bounce_wanted(&msg, &r1, BOUNCE_DELAYED), "default: delay notice");
    ok(!bounce_wanted(&msg, &r1, BOUNCE_RELAYED), "default: no relayed notice");
    r1.notify = SMTP_NOTIFY_NEVER;
    ok(!bounce_wanted(&msg, &r1, BOUNCE_FAILED), "NEVER: no failure");
    ok(!bounce_wanted(&msg, &r1, BOUNCE_DELAYED), "NEVER: no delay");
    ok(!bounce_wanted(&msg, &r1, BOUNCE_RELAYED), "NEVER: no relayed");
    r1.notify = SMTP_NOTIFY_FAILURE;
    ok(bounce_wanted(&msg, &r1, BOUNCE_FAILED), "FAILURE: failure");
    ok(!bounce_wanted(&msg, &r1, BOUNCE_DELAYED), "FAILURE: no delay");
    ok(!bounce_wanted(&msg, &r1, BOUNCE_RELAYED), "FAILURE: no relayed");
    r1.notify = SMTP_NOTIFY_DELAY;
    ok(!bounce_wanted(&msg, &r1, BOUNCE_FAILED), "DELAY: no failure");
    ok(bounce_wanted(&msg, &r1, BOUNCE_DELAYED), "DELAY: delay");
    ok(!bounce_wanted(&msg, &r1, BOUNCE_RELAYED), "DELAY: no relayed");
    r1.notify = SMTP_NOTIFY_SUCCESS;
    ok(!bounce_wanted(&msg, &r1, BOUNCE_FAILED), "SUCCESS: no failure");
    ok(!bounce_wanted(&msg, &r1, BOUNCE_DELAYED), "SUCCESS: no delay");
    ok(bounce_wanted(&msg, &r1, BOUNCE_RELAYED), "SUCCESS: relayed");
    r1.notify = SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY;
    ok(bounce_wanted(&msg, &r1, BOUNCE_FAILED) && bounce_wanted(&msg, &r1, BOUNCE_DELAYED) &&
           bounce_wanted(&msg, &r1, BOUNCE_RELAYED), "SUCCESS,FAILURE,DELAY: all three");
    r1.notify = 0;
    msg.sender[0] = '\0';
    ok(!bounce_wanted(&msg, &r1, BOUNCE_FAILED), "null sender: no failure notice");
    ok(!bounce_wanted(&msg, &r1, BOUNCE_DELAYED), "null sender: no delay notice");
    fixture();
    r1.notify = SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_SUCCESS;
    msg.flags = QMSG_F_DSN;
    ok(!bounce_wanted(&msg, &r1, BOUNCE_FAILED), "DSN of a DSN: no failure notice");
    ok(!bounce_wanted(&msg, &r1, BOUNCE_RELAYED), "DSN of a DSN: no relayed notice");
}

static void test_build_none(void)
{
    struct bounce_rcpt rc[1];
    int rc_;
    char *s;

    fixture();
    rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_FAILED, "5.1.1", NULL, NULL };
    msg.sender[0] = '\0';
    s = build(rc, 1, ORIGINAL, 100000, T_NOW, &rc_);
    is_int(rc_, BOUNCE_NONE, "null sender: build gives BOUNCE_NONE");
    is_int(strlen(s), 0, "null sender: nothing appended");
    free(s);

    fixture();
    msg.flags = QMSG_F_DSN;
    s = build(rc, 1, ORIGINAL, 100000, T_NOW, &rc_);
    is_int(rc_, BOUNCE_NONE, "DSN of DSN: build gives BOUNCE_NONE");
    free(s);

    fixture();
    r1.notify = SMTP_NOTIFY_NEVER;
    s = build(rc, 1, ORIGINAL, 100000, T_NOW, &rc_);
    is_int(rc_, BOUNCE_NONE, "NOTIFY=NEVER only: BOUNCE_NONE");
    is_int(strlen(s), 0, "NOTIFY=NEVER only: nothing appended");
    free(s);
}

static const char expect_dsn[] =
    "Original-Envelope-Id: ENV-42\r\n"
    "Reporting-MTA: dns; mx2.example.net\r\n"
    "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    "X-Mxkeep-Queue-ID: 4ABCDEFGHIJK\r\n"
    "X-Mxkeep-Sender: rfc822; alice@sender.example\r\n"
    "\r\n"
    "Original-Recipient: rfc822;Bob@Example.org\r\n"
    "Final-Recipient: rfc822; bob@example.org\r\n"
    "Action: failed\r\n"
    "Status: 5.1.1\r\n"
    "Remote-MTA: dns; primary.example.org\r\n"
    "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.org>: Recipient address\r\n"
    " rejected: User unknown\r\n"
    "Last-Attempt-Date: Tue, 14 Nov 2023 23:13:20 +0000\r\n"
    "\r\n"
    "Final-Recipient: rfc822; carol@example.org\r\n"
    "Action: failed\r\n"
    "Status: 4.4.7\r\n"
    "Diagnostic-Code: smtp; 421 4.3.2 Service not available\r\n";

static void test_failure(void)
{
    struct bounce_rcpt rc[2];
    char b[128], *s, *p0, *p1, *p2, *p3, delim[160];
    const char *why = "";
    int rc_;

    fixture();
    rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_FAILED, "5.1.1", "primary.example.org",
                                  "smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown" };
    rc[1] = (struct bounce_rcpt){ &r2, BOUNCE_FAILED, "4.4.7", NULL,
                                  "smtp; 421 4.3.2 Service not available" };
    s = build(rc, 2, ORIGINAL, 100000, T_NOW, &rc_);
    is_int(rc_, 0, "failure notice built");
    ok(lines_ok(s, &why), "every line ends in CRLF (%s)", why);
    ok(strncmp(s, "Date: Tue, 21 Nov 2023 22:15:00 +0000\r\n", 39) == 0, "Date first, from now");
    ok(has(s, "\r\nFrom: MAILER-DAEMON@mx2.example.net (Mail Delivery System)\r\n"), "From");
    ok(has(s, "\r\nTo: <alice@sender.example>\r\n"), "To is the original sender");
    ok(has(s, "\r\nSubject: Undelivered Mail Returned to Sender\r\n"), "failure Subject");
    ok(has(s, "\r\nMessage-ID: <4ZZZZZZZZZZZ@mx2.example.net>\r\n"), "Message-ID from new qid");
    ok(has(s, "\r\nAuto-Submitted: auto-replied\r\n"), "Auto-Submitted");
    ok(has(s, "\r\nMIME-Version: 1.0\r\n"), "MIME-Version");
    ok(has(s, "\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n boundary=\""),
       "Content-Type multipart/report, folded before boundary");
    ok(strncmp(s, "Received", 8) != 0, "no Received header of our own");
    ok(get_boundary(s, b, sizeof b), "boundary found: %s", b);
    ok(has(b, "4ZZZZZZZZZZZ") && has(b, "1700604900"), "boundary built from qid and time");
    snprintf(delim, sizeof delim, "--%s", b);
    is_int(count_lines_equal(s, delim), 3, "three delimiter lines");
    snprintf(delim, sizeof delim, "--%s--", b);
    is_int(count_lines_equal(s, delim), 1, "one close delimiter");
    snprintf(delim, sizeof delim, "\r\n--%s--\r\n", b);
    ok(strlen(s) > strlen(delim) && strcmp(s + strlen(s) - strlen(delim), delim) == 0,
       "close delimiter ends the message");

    p0 = get_part(s, b, 0);
    p1 = get_part(s, b, 1);
    p2 = get_part(s, b, 2);
    p3 = get_part(s, b, 3);
    ok(p0 && p1 && p2 && !p3, "exactly three parts");
    if (p0 && p1 && p2) {
        ok(has(p0, "Content-Type: text/plain; charset=us-ascii\r\n"), "part 1 text/plain");
        ok(has(part_body(p0), "This is the mail system at host mx2.example.net.\r\n"),
           "part 1 names the host");
        ok(has(part_body(p0), "could not\r\nbe delivered to one or more recipients."),
           "part 1 apology");
        ok(has(part_body(p0), "<bob@example.org>: host primary.example.org said: 550 5.1.1"),
           "part 1 explains bob with the remote host");
        ok(has(part_body(p0), "<carol@example.org>: delivery time expired: the message was kept for 7 days"),
           "part 1 explains the expiry");
        ok(has(p1, "Content-Type: message/delivery-status\r\n"), "part 2 message/delivery-status");
        is_str(part_body(p1), expect_dsn, "part 2: every DSN field exact");
        ok(has(p2, "Content-Type: text/rfc822-headers\r\n"), "part 3 text/rfc822-headers (RET=HDRS)");
        is_int(strlen(part_body(p2)), ORIGINAL_HDR_LEN, "part 3 is the header, up to the empty line");
        ok(strncmp(part_body(p2), ORIGINAL, ORIGINAL_HDR_LEN) == 0, "part 3 header byte-exact");
        ok(!has(s, "BODY-LINE-1"), "RET=HDRS: body text absent");
    }
    free(p0);
    free(p1);
    free(p2);
    free(p3);

    /* One notice through Python's email parser, when python3 is here. */
    if (system("command -v python3 >/dev/null 2>&1") == 0) {
        char path[] = "/tmp/t_bounce.XXXXXX", cmd[2048];
        int fd = mkstemp(path);
        int st;

        ok(fd >= 0 && write(fd, s, strlen(s)) == (ssize_t)strlen(s), "notice written to %s", path);
        if (fd >= 0)
            close(fd);
        snprintf(cmd, sizeof cmd,
                 "python3 -c '\n"
                 "import email, sys\n"
                 "m = email.message_from_bytes(open(sys.argv[1], \"rb\").read())\n"
                 "assert m.get_content_type() == \"multipart/report\", m.get_content_type()\n"
                 "assert m.get_param(\"report-type\") == \"delivery-status\"\n"
                 "p = m.get_payload()\n"
                 "assert len(p) == 3, len(p)\n"
                 "assert [x.get_content_type() for x in p] == [\"text/plain\", "
                 "\"message/delivery-status\", \"text/rfc822-headers\"]\n"
                 "d = p[1].get_payload()\n"
                 "assert len(d) == 3, len(d)\n"
                 "assert d[0][\"Reporting-MTA\"] == \"dns; mx2.example.net\"\n"
                 "assert d[1][\"Final-Recipient\"] == \"rfc822; bob@example.org\"\n"
                 "assert d[1][\"Action\"] == \"failed\" and d[1][\"Status\"] == \"5.1.1\"\n"
                 "assert d[2][\"Status\"] == \"4.4.7\"\n"
                 "assert not m.defects and not any(x.defects for x in p), m.defects\n"
                 "' %s",
                 path);
        st = system(cmd);
        is_int(st, 0, "python3 email parses it: multipart/report with the 3 expected parts");
        unlink(path);
    } else {
        ok(1, "# SKIP python3 not installed");
    }
    free(s);
}

static void test_full(void)
{
    struct bounce_rcpt rc[1];
    char b[128], *s, *p0, *p2;
    const char *why = "";
    int rc_;

    fixture();
    msg.ret = SMTP_RET_FULL;
    rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_FAILED, "5.1.1", "primary.example.org",
                                  "smtp; 550 5.1.1 unknown user" };
    s = build(rc, 1, ORIGINAL, strlen(ORIGINAL), T_NOW, &rc_);
    is_int(rc_, 0, "RET=FULL notice built");
    ok(lines_ok(s, &why), "RET=FULL: CRLF everywhere (%s)", why);
    ok(get_boundary(s, b, sizeof b), "RET=FULL: boundary");
    p2 = get_part(s, b, 2);
    ok(p2 && has(p2, "Content-Type: message/rfc822\r\n"), "RET=FULL: part 3 message/rfc822");
    is_str(p2 ? part_body(p2) : NULL, ORIGINAL, "RET=FULL: whole original byte-exact");
    ok(has(s, "BODY-LINE-1"), "RET=FULL: body included");
    free(p2);
    free(s);

    /* One octet over the cap: header only, with a note. */
    s = build(rc, 1, ORIGINAL, strlen(ORIGINAL) - 1, T_NOW, &rc_);
    is_int(rc_, 0, "RET=FULL over full_max built");
    ok(get_boundary(s, b, sizeof b), "over cap: boundary");
    p0 = get_part(s, b, 0);
    p2 = get_part(s, b, 2);
    ok(p2 && has(p2, "Content-Type: text/rfc822-headers\r\n"), "over cap: text/rfc822-headers");
    ok(p2 && strlen(part_body(p2)) == ORIGINAL_HDR_LEN, "over cap: header only");
    ok(!has(s, "BODY-LINE-1"), "over cap: body absent");
    ok(p0 && has(p0, "The message was larger than 206 octets, so only its header"),
       "over cap: part 1 says so");
    free(p0);
    free(p2);
    free(s);

    /* A delay notice never returns content, RET=FULL or not (RFC 3461 4.3). */
    r1.notify = 0;
    rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_DELAYED, "4.4.1", NULL, NULL };
    s = build(rc, 1, ORIGINAL, 100000, T_DELAY_NOW, &rc_);
    is_int(rc_, 0, "delay with RET=FULL built");
    ok(!has(s, "BODY-LINE-1") && has(s, "Content-Type: text/rfc822-headers\r\n"),
       "delay with RET=FULL: header only");
    free(s);
}

static void test_delay_relay(void)
{
    struct bounce_rcpt rc[2];
    char b[128], *s, *p1, *p0;
    const char *why = "";
    int rc_;

    fixture();
    msg.envid[0] = '\0';
    rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_DELAYED, "4.4.1", NULL,
                                  "smtp; connect to primary.example.org: Connection refused" };
    s = build(rc, 1, ORIGINAL, 100000, T_DELAY_NOW, &rc_);
    is_int(rc_, 0, "delay notice built");
    ok(lines_ok(s, &why), "delay: CRLF everywhere (%s)", why);
    ok(has(s, "\r\nSubject: Delayed Mail (still being retried)\r\n"), "delay Subject");
    ok(get_boundary(s, b, sizeof b), "delay: boundary");
    p0 = get_part(s, b, 0);
    p1 = get_part(s, b, 1);
    ok(p1 && has(p1, "\r\nAction: delayed\r\nStatus: 4.4.1\r\n"), "delay: Action/Status");
    ok(p1 && has(p1, "\r\nWill-Retry-Until: Tue, 21 Nov 2023 22:13:20 +0000\r\n"),
       "delay: Will-Retry-Until is the expiry");
    ok(p1 && !has(p1, "Original-Envelope-Id"), "no ENVID: no Original-Envelope-Id");
    ok(p0 && has(p0, "THIS IS A WARNING ONLY"), "delay: warning text");
    ok(p0 && has(p0, "could not be delivered for 48.0 hours"), "delay: age in hours");
    ok(p0 && has(p0, "keep trying until Tue,\r\n    21 Nov 2023 22:13:20 +0000 (last error: connect to"),
       "delay: says until when (wrapped)");
    free(p0);
    free(p1);
    free(s);

    fixture();
    r1.notify = SMTP_NOTIFY_SUCCESS;
    r2.notify = 0;      /* default: no relayed notice for this one */
    rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_RELAYED, "2.0.0", "legacy.example.org",
                                  "smtp; 250 2.0.0 Ok: queued" };
    rc[1] = (struct bounce_rcpt){ &r2, BOUNCE_RELAYED, "2.0.0", "legacy.example.org",
                                  "smtp; 250 2.0.0 Ok: queued" };
    s = build(rc, 2, ORIGINAL, 100000, T_NOW, &rc_);
    is_int(rc_, 0, "relayed notice built");
    ok(has(s, "\r\nSubject: Successful Mail Relay\r\n"), "relayed Subject");
    ok(has(s, "\r\nAction: relayed\r\nStatus: 2.0.0\r\nRemote-MTA: dns; legacy.example.org\r\n"),
       "relayed: Action/Status/Remote-MTA");
    ok(!has(s, "carol@example.org"), "recipient without NOTIFY=SUCCESS left out");
    ok(has(s, "Original-Envelope-Id: ENV-42\r\n"), "envid present");
    free(s);

    /* Remote-MTA is a host name (RFC 3464 2.3.5), the peer is more. */
    const char *peers[][3] = {
        { "mx1.example.org[192.0.2.7]:2525", "\r\nRemote-MTA: dns; mx1.example.org\r\n",
          "Remote-MTA: the peer's name only" },
        { "[192.0.2.7]:2525", "\r\nRemote-MTA: dns; [192.0.2.7]\r\n",
          "Remote-MTA: no name, the address" },
    };
    for (size_t i = 0; i < sizeof peers / sizeof peers[0]; i++) {
        fixture();
        rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_FAILED, "5.1.1", peers[i][0],
                                      "smtp; 550 5.1.1 no such user" };
        s = build(rc, 1, ORIGINAL, 100000, T_NOW, &rc_);
        ok(has(s, peers[i][1]), "%s", peers[i][2]);
        free(s);
    }

    /* Mixed kinds get the mixed Subject. */
    fixture();
    rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_FAILED, "5.1.1", NULL, NULL };
    rc[1] = (struct bounce_rcpt){ &r2, BOUNCE_DELAYED, "4.4.1", NULL, NULL };
    s = build(rc, 2, ORIGINAL, 100000, T_DELAY_NOW, &rc_);
    ok(rc_ == 0 && has(s, "\r\nSubject: Mail Delivery Status Report\r\n"), "mixed Subject");
    ok(has(s, "\r\nAction: failed\r\n") && has(s, "\r\nAction: delayed\r\n"), "mixed: both actions");
    free(s);
}

static void test_hostile(void)
{
    struct bounce_rcpt rc[1];
    char b[128], guess[256], *orig, *s, delim[160];
    const char *why = "";
    int rc_;

    /* A returned message that contains the boundary we would pick first. */
    fixture();
    msg.ret = SMTP_RET_FULL;
    snprintf(guess, sizeof guess, "--4ZZZZZZZZZZZ.%lld/mxkeep", (long long)T_NOW);
    orig = malloc(strlen(ORIGINAL) + strlen(guess) + 8);
    sprintf(orig, "%s%s\r\n", ORIGINAL, guess);
    /* Header injection attempts through the primary's reply and ORCPT. */
    strcpy(r1.orcpt, "rfc822;x\xff@example.org");
    rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_FAILED, "5.1.1", "evil\r\nX-Injected: 1",
                                  "smtp; 550 no\r\nX-Injected: 2\n\rX-Injected: 3" };
    s = build(rc, 1, orig, 100000, T_NOW, &rc_);
    is_int(rc_, 0, "hostile notice built");
    ok(lines_ok(s, &why), "hostile: no bare CR/LF (%s)", why);
    ok(!has(s, "\r\nX-Injected"), "no injected field");
    ok(has(s, "Original-Recipient: rfc822;x+FF@example.org\r\n"), "8-bit ORCPT xtext-escaped");
    ok(get_boundary(s, b, sizeof b), "hostile: boundary");
    ok(strcmp(b, guess + 2) != 0, "guessed boundary avoided: %s", b);
    snprintf(delim, sizeof delim, "--%s", b);
    is_int(count_lines_equal(s, delim), 3, "hostile: three delimiter lines");
    ok(has(s, guess), "returned message kept intact");
    free(s);
    free(orig);

    /* No body left: two parts, and part 1 says so. */
    fixture();
    rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_FAILED, "5.1.1", NULL, NULL };
    s = build(rc, 1, NULL, 100000, T_NOW, &rc_);
    ok(rc_ == 0 && get_boundary(s, b, sizeof b), "no original: built");
    snprintf(delim, sizeof delim, "--%s", b);
    is_int(count_lines_equal(s, delim), 2, "no original: two parts");
    ok(has(s, "no\r\nlonger available"), "no original: said so");
    free(s);

    /* Invalid status text gets the class default. */
    fixture();
    rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_FAILED, "5.1.1\r\nX: y", NULL, NULL };
    s = build(rc, 1, ORIGINAL, 100000, T_NOW, &rc_);
    ok(has(s, "\r\nStatus: 5.0.0\r\n"), "malformed status replaced by 5.0.0");
    free(s);
}

static void test_long_lines(void)
{
    struct bounce_rcpt rc[1];
    char *longdiag = malloc(3000), *s;
    const char *why = "";
    int rc_;

    fixture();
    strcpy(longdiag, "smtp; 550 ");
    memset(longdiag + 10, 'x', 2500);   /* one word, far over 998 */
    strcpy(longdiag + 2510, " tail words here");
    rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_FAILED, "5.1.1", NULL, longdiag };
    s = build(rc, 1, ORIGINAL, 100000, T_NOW, &rc_);
    is_int(rc_, 0, "long diagnostic built");
    ok(lines_ok(s, &why), "long diagnostic: every line <= 998, CRLF (%s)", why);
    free(s);
    free(longdiag);
}

static void test_utf8(void)
{
    struct bounce_rcpt rc[1];
    char *s;
    int rc_;

    fixture();
    msg.flags = QMSG_F_SMTPUTF8 | QMSG_F_8BIT;
    strcpy(msg.sender, "jos\xc3\xa9@sender.example");
    strcpy(r1.addr, "b\xc3\xb6" "b@example.org");
    strcpy(r1.orcpt, "utf-8;b\xc3\xb6" "b@example.org");
    rc[0] = (struct bounce_rcpt){ &r1, BOUNCE_FAILED, "5.1.1", NULL, "smtp; 550 nope \xc3" };
    s = build(rc, 1, ORIGINAL, 100000, T_NOW, &rc_);
    is_int(rc_, 0, "SMTPUTF8 notice built");
    ok(has(s, "Content-Type: message/global-delivery-status\r\n"), "global delivery-status");
    ok(has(s, "Content-Type: message/global-headers\r\n"), "global headers");
    ok(has(s, "To: <jos\xc3\xa9@sender.example>\r\n"), "UTF-8 sender kept");
    ok(has(s, "Final-Recipient: utf-8; b\xc3\xb6" "b@example.org\r\n"), "utf-8 address type");
    ok(has(s, "Original-Recipient: utf-8;b\xc3\xb6" "b@example.org\r\n"), "utf-8 ORCPT kept");
    ok(has(s, "Diagnostic-Code: smtp; 550 nope ?\r\n"), "invalid UTF-8 replaced");
    free(s);
}

int main(void)
{
    test_wanted();
    test_build_none();
    test_failure();
    test_full();
    test_delay_relay();
    test_hostile();
    test_long_lines();
    test_utf8();
    return done_testing();
}
