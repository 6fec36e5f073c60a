/*
 * t_data.c - unit tests of the DATA / BDAT parser (src/data.c).
 *
 * Every input is fed whole, at every 2-way split, at every 3-way split
 * (short inputs) and one octet at a time; all must give the same output,
 * consumed count and flags, because a network read may end anywhere.  The
 * SMTP smuggling payloads check that no fake end of data ends a message
 * and that smuggled commands stay content.
 */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"
#include "data.h"

/* Longest input for which every 3-way split is also tried. */
#define SPLIT3_MAX 96
/* A line longer than the parser's high-bit scan block, 8-bit near its end. */
#define LONG_8BIT_LEN 4100
#define LONG_8BIT_AT 3001

struct sink {
    char *buf;
    size_t len, cap;
    int calls;
    int fail_at;            /* fail on this call number (1-based); 0 never */
};

static int sink_out(void *arg, const char *b, size_t n)
{
    struct sink *s = arg;

    s->calls++;
    if (s->fail_at > 0 && s->calls >= s->fail_at)
        return -1;
    if (n == 0)
        return 0;
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 64;

        while (cap < s->len + n)
            cap *= 2;
        s->buf = realloc(s->buf, cap);
        if (s->buf == NULL)
            abort();
        s->cap = cap;
    }
    memcpy(s->buf + s->len, b, n);
    s->len += n;
    return 0;
}

struct result {
    struct sink out;
    size_t consumed;
    int done;
    enum data_status status;
    long size;
    long received;
    int dkim;
    int has_8bit;
    int bare;
};

static void result_clear(struct result *r)
{
    free(r->out.buf);
    memset(r, 0, sizeof *r);
}

/* Feed in[0..len) cut at cuts[0..ncuts) (ascending), as a session would:
 * stop once a piece is not fully consumed. */
static void run_cuts(const char *in, size_t len, const struct data_limits *lim,
                     int bdat, const size_t *cuts, size_t ncuts, int fail_at,
                     struct result *r)
{
    struct data_parser *p = data_new(lim, bdat);
    size_t start = 0, k;

    memset(r, 0, sizeof *r);
    r->out.fail_at = fail_at;
    if (p == NULL)
        abort();
    for (k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        size_t c = data_feed(p, in + start, end - start, sink_out, &r->out);

        r->consumed += c;
        if (c < end - start)
            break;
        start = end;
    }
    r->status = data_finish(p, sink_out, &r->out);
    r->done = data_done(p);
    r->size = data_size(p);
    r->received = data_received_count(p);
    r->dkim = data_dkim_signatures(p);
    r->has_8bit = data_has_8bit(p);
    r->bare = data_bare_newlines(p);
    data_free(p);
}

/* Once the status is an error the output is cut off wherever the error was
 * noticed, which depends on the pieces; the caller discards it anyway. */
static int same(const struct result *a, const struct result *b)
{
    int out_same = a->out.len == b->out.len &&
        (a->out.len == 0 || memcmp(a->out.buf, b->out.buf, a->out.len) == 0);

    return (out_same || (a->status != DATA_OK && a->status == b->status)) &&
           a->consumed == b->consumed && a->done == b->done &&
           a->status == b->status && a->size == b->size &&
           a->received == b->received && a->dkim == b->dkim && a->has_8bit == b->has_8bit &&
           a->bare == b->bare;
}

/* Run whole into *whole, then every other split; one assertion per kind. */
static void check_splits(const char *name, const char *in, size_t len,
                         const struct data_limits *lim, int bdat,
                         struct result *whole)
{
    struct result r;
    size_t a, b, bad = 0;
    size_t *cuts;

    run_cuts(in, len, lim, bdat, NULL, 0, 0, whole);

    for (a = 0; a <= len; a++) {
        run_cuts(in, len, lim, bdat, &a, 1, 0, &r);
        if (!same(&r, whole))
            bad++;
        result_clear(&r);
    }
    ok(bad == 0, "%s: every 2-way split agrees", name);

    if (len <= SPLIT3_MAX) {
        bad = 0;
        for (a = 0; a <= len; a++)
            for (b = a; b <= len; b++) {
                size_t c2[2] = { a, b };

                run_cuts(in, len, lim, bdat, c2, 2, 0, &r);
                if (!same(&r, whole))
                    bad++;
                result_clear(&r);
            }
        ok(bad == 0, "%s: every 3-way split agrees", name);
    }

    cuts = malloc((len + 1) * sizeof *cuts);
    if (cuts == NULL)
        abort();
    for (a = 0; a + 1 < len; a++)
        cuts[a] = a + 1;
    run_cuts(in, len, lim, bdat, cuts, len ? len - 1 : 0, 0, &r);
    ok(same(&r, whole), "%s: 1-octet pieces agree", name);
    result_clear(&r);
    free(cuts);
}

static int out_is(const struct result *r, const char *want, size_t wlen)
{
    return r->out.len == wlen && (wlen == 0 || memcmp(r->out.buf, want, wlen) == 0);
}

/* Only CRLF line ends: no CR without LF after, no LF without CR before. */
static int crlf_only(const char *b, size_t n)
{
    size_t k;

    for (k = 0; k < n; k++) {
        if (b[k] == '\r' && (k + 1 == n || b[k + 1] != '\n'))
            return 0;
        if (b[k] == '\n' && (k == 0 || b[k - 1] != '\r'))
            return 0;
    }
    return 1;
}

static int contains(const char *h, size_t hn, const char *needle)
{
    size_t nn = strlen(needle), k;

    for (k = 0; k + nn <= hn; k++)
        if (memcmp(h + k, needle, nn) == 0)
            return 1;
    return 0;
}

static const struct data_limits lim_norm = { BARE_NL_NORMALIZE, 0, 0, 0, 0 };
static const struct data_limits lim_rej = { BARE_NL_REJECT, 0, 0, 0, 0 };

#define S(lit) (lit), (sizeof(lit) - 1)

/* DATA, normalize: expect output, all consumed but `left` octets, done. */
static void expect_data(const char *name, const char *in, size_t len,
                        const char *want, size_t wlen, size_t left, int bare)
{
    struct result r;

    check_splits(name, in, len, &lim_norm, 0, &r);
    if (!ok(out_is(&r, want, wlen), "%s: output", name))
        diag("  got %zu octets \"%.*s\"", r.out.len, (int)r.out.len,
             r.out.buf ? r.out.buf : "");
    is_int(r.consumed, len - left, "%s: consumed", name);
    is_int(r.done, 1, "%s: done", name);
    is_int(r.status, DATA_OK, "%s: status", name);
    is_int(r.bare, bare, "%s: bare newlines", name);
    is_int(r.size, (long)wlen, "%s: size", name);
    result_clear(&r);
}

static void test_plain(void)
{
    expect_data("plain", S("Subject: hi\r\n\r\nbody\r\nline 2\r\n.\r\n"),
                S("Subject: hi\r\n\r\nbody\r\nline 2\r\n"), 0, 0);
    expect_data("empty message", S(".\r\n"), "", 0, 0, 0);
    expect_data("one empty line", S("\r\n.\r\n"), S("\r\n"), 0, 0);
    expect_data("pipelined QUIT left", S("x\r\n.\r\nQUIT\r\n"), S("x\r\n"), 6, 0);
    expect_data("pipelined at once", S(".\r\nMAIL FROM:<a@b>\r\n"), "", 0, 17, 0);
}

static void test_stuffing(void)
{
    expect_data("dot-stuffing", S("..foo\r\n...\r\n.bar\r\n..\r\n.\r\n"),
                S(".foo\r\n..\r\nbar\r\n.\r\n"), 0, 0);
    expect_data("dot mid-line kept", S("a.b\r\n a.\r\n.\r\n"),
                S("a.b\r\n a.\r\n"), 0, 0);
    expect_data("dot-line after empty line", S("h: v\r\n\r\n..\r\n.\r\n"),
                S("h: v\r\n\r\n.\r\n"), 0, 0);
}

static void test_markers(void)
{
    struct result r;

    expect_data("fake LF.LF", S("a\n.\nb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), 0, 2);
    expect_data("fake LF.CRLF", S("a\n.\r\nb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), 0, 1);
    expect_data("fake CRLF.LF", S("a\r\n.\nb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), 0, 1);
    expect_data("fake CR.CR", S("a\r.\rb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), 0, 2);
    expect_data("fake CRLF.CR", S("a\r\n.\rb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), 0, 1);
    expect_data("fake CR.CRLF", S("a\r.\r\nb\r\n.\r\n"), S("a\r\n.\r\nb\r\n"), 0, 1);
    expect_data("fake marker at start", S(".\nx\r\n.\r\n"), S(".\r\nx\r\n"), 0, 1);
    expect_data("CR CR LF then end", S("a\r\r\n.\r\n"), S("a\r\n\r\n"), 0, 1);
    expect_data("dot CR CR LF", S(".\r\r\n.\r\n"), S(".\r\n\r\n"), 0, 1);
    expect_data("fake then real, QUIT left", S("a\n.\nb\r\n.\r\nQUIT\r\n"),
                S("a\r\n.\r\nb\r\n"), 6, 2);

    /* Reject mode: flagged, yet the real end is still found. */
    check_splits("reject LF.LF", S("a\n.\nb\r\n.\r\nQUIT\r\n"), &lim_rej, 0, &r);
    is_int(r.status, DATA_BARE_NEWLINE, "reject LF.LF: status");
    is_int(r.done, 1, "reject LF.LF: done");
    is_int(r.consumed, 10, "reject LF.LF: consumed up to the real end");
    ok(r.out.len <= 1, "reject LF.LF: output stops at the bare LF");
    result_clear(&r);

    check_splits("reject CRLF only", S("a\r\n.\r\n"), &lim_rej, 0, &r);
    is_int(r.status, DATA_OK, "reject mode, clean input: ok");
    ok(out_is(&r, S("a\r\n")), "reject mode, clean input: output");
    result_clear(&r);

    /* Incomplete: no end seen, everything consumed, "." withheld. */
    check_splits("unfinished", S("abc\r\n."), &lim_norm, 0, &r);
    is_int(r.done, 0, "unfinished: not done");
    is_int(r.consumed, 6, "unfinished: all consumed");
    ok(out_is(&r, S("abc\r\n")), "unfinished: dot withheld");
    result_clear(&r);
}

static void test_smuggling(void)
{
    static const struct { const char *name, *p; size_t n; int bare; } pl[] = {
        { "CRLF.LF", S("\r\n.\n"), 1 },
        { "LF.CRLF", S("\n.\r\n"), 1 },
        { "CR.CRLF", S("\r.\r\n"), 1 },
        { "CRLF.CR", S("\r\n.\r"), 1 },
        { "LF.LF", S("\n.\n"), 2 },
        { "CR.CR", S("\r.\r"), 2 },
        { "LF.CR", S("\n.\r"), 2 },
        { "CR.LF", S("\r.\n"), 2 },
        { "CRLF NUL.CRLF", S("\r\n\x00.\r\n"), 0 },
        { "CRLF.NUL CRLF", S("\r\n.\x00\r\n"), 0 },
        { "CRLF. CRLF", S("\r\n. \r\n"), 0 },
    };
    static const char head[] = "Subject: s\r\n\r\nhello";
    static const char smug[] = "MAIL FROM:<x@evil>\r\nRCPT TO:<y@victim>\r\n"
                               "DATA\r\nFrom: ceo\r\n\r\nsmuggled\r\n.\r\n";
    static const char tail[] = "QUIT\r\n";
    size_t k;

    for (k = 0; k < sizeof pl / sizeof pl[0]; k++) {
        char in[512], name[64];
        size_t n = 0;
        struct result r;

        memcpy(in + n, head, sizeof head - 1);
        n += sizeof head - 1;
        memcpy(in + n, pl[k].p, pl[k].n);
        n += pl[k].n;
        memcpy(in + n, smug, sizeof smug - 1);
        n += sizeof smug - 1;
        memcpy(in + n, tail, sizeof tail - 1);
        n += sizeof tail - 1;

        snprintf(name, sizeof name, "smuggle %s", pl[k].name);
        check_splits(name, in, n, &lim_norm, 0, &r);
        is_int(r.consumed, n - (sizeof tail - 1), "%s: one message, ends at the real end", name);
        ok(contains(r.out.buf, r.out.len, "MAIL FROM:<x@evil>\r\n") &&
           contains(r.out.buf, r.out.len, "smuggled\r\n"),
           "%s: smuggled commands are content", name);
        ok(crlf_only(r.out.buf, r.out.len), "%s: output has CRLF line ends only", name);
        is_int(r.bare, pl[k].bare, "%s: bare newlines counted", name);
        result_clear(&r);

        snprintf(name, sizeof name, "smuggle %s reject", pl[k].name);
        check_splits(name, in, n, &lim_rej, 0, &r);
        is_int(r.consumed, n - (sizeof tail - 1), "%s: ends at the real end", name);
        is_int(r.status, pl[k].bare ? DATA_BARE_NEWLINE : DATA_OK, "%s: status", name);
        result_clear(&r);
    }
}

static void test_header(void)
{
    static const char msg[] = "A: b\r\nC: d\r\n\r\nbody: x\r\nmore\r\n.\r\n";
    struct data_limits lim = lim_norm;
    struct result r;

    lim.header_lines = 2;
    check_splits("header lines at limit", S(msg), &lim, 0, &r);
    is_int(r.status, DATA_OK, "header lines at limit: ok");
    result_clear(&r);
    lim.header_lines = 1;
    check_splits("header lines over", S(msg), &lim, 0, &r);
    is_int(r.status, DATA_HEADER_TOO_BIG, "header lines over: too big");
    is_int(r.done, 1, "header lines over: end still found");
    is_int(r.consumed, sizeof msg - 1, "header lines over: all consumed");
    result_clear(&r);

    lim = lim_norm;
    lim.header_size = 12;
    check_splits("header octets at limit", S(msg), &lim, 0, &r);
    is_int(r.status, DATA_OK, "header octets at limit: ok");
    result_clear(&r);
    lim.header_size = 11;
    check_splits("header octets over", S(msg), &lim, 0, &r);
    is_int(r.status, DATA_HEADER_TOO_BIG, "header octets over: too big");
    result_clear(&r);

    /* A header that never ends (no empty line) is all header. */
    lim = lim_norm;
    lim.header_lines = 3;
    check_splits("no empty line", S("a: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n.\r\n"), &lim, 0, &r);
    is_int(r.status, DATA_HEADER_TOO_BIG, "no empty line: all of it is header");
    result_clear(&r);
}

/* DKIM-Signature fields (smtpd records dkim=none at once without one). */
static void test_dkim_signature(void)
{
    static const char msg[] =
        "DKIM-Signature: v=1; d=a.example\r\n\tb=x\r\ndkim-signature:v=1\r\n"
        "X-DKIM-Signature: no\r\nDKIM-Signature : no\r\n DKIM-Signature: no\r\n"
        "\r\nDKIM-Signature: in the body\r\n.\r\n";
    static const char none[] = "Subject: x\r\nDKIM-Sig: no\r\n\r\nbody\r\n.\r\n";
    struct data_limits lim = lim_norm;
    struct result r;

    check_splits("dkim signatures", S(msg), &lim, 0, &r);
    is_int(r.dkim, 2, "DKIM-Signature counted case-blind, header only, by name");
    result_clear(&r);
    check_splits("no dkim signature", S(none), &lim, 0, &r);
    is_int(r.dkim, 0, "no DKIM-Signature field: none counted");
    result_clear(&r);
}

static void test_received(void)
{
    static const char msg[] =
        "Received: from a\r\n\tby b\r\nRECEIVED: x\r\nreceived:y\r\n"
        "X-Received: no\r\nReceived-SPF: no\r\nReceived : no\r\nReceived\r\n"
        "..Received: no\r\n"
        "\r\nReceived: in the body\r\n.\r\n";
    struct data_limits lim = lim_norm;
    struct result r;

    check_splits("received count", S(msg), &lim, 0, &r);
    is_int(r.received, 3, "Received counted case-blind, header only");
    is_int(r.status, DATA_OK, "no limit: ok");
    result_clear(&r);

    lim.received_max = 3;
    check_splits("received at max", S(msg), &lim, 0, &r);
    is_int(r.status, DATA_OK, "received at max: ok");
    result_clear(&r);
    lim.received_max = 2;
    check_splits("received over max", S(msg), &lim, 0, &r);
    is_int(r.status, DATA_LOOP, "received over max: loop");
    is_int(r.done, 1, "loop: end still found");
    result_clear(&r);

    /* A bare-LF empty line ends the header too (it is a line end). */
    check_splits("bare LF ends header", S("a: b\n\nReceived: x\r\n.\r\n"), &lim_norm, 0, &r);
    is_int(r.received, 0, "bare LF empty line ends the header");
    result_clear(&r);
    /* A fake "." line is content and does not end the header. */
    check_splits("dot keeps header", S("a: b\n.\nReceived: x\r\n\r\n.\r\n"), &lim_norm, 0, &r);
    is_int(r.received, 1, "fake dot line keeps the header going");
    result_clear(&r);
}

static void test_size_and_errors(void)
{
    static const char msg[] = "0123456789\r\n.1234567\r\n.\r\n"; /* 12 + 9 = 21 out */
    struct data_limits lim = lim_norm;
    struct result r;

    lim.max_size = 21;
    check_splits("size at limit", S(msg), &lim, 0, &r);
    is_int(r.status, DATA_OK, "size at limit: ok");
    is_int(r.size, 21, "size at limit: size");
    result_clear(&r);
    lim.max_size = 20;
    check_splits("size over", S(msg), &lim, 0, &r);
    is_int(r.status, DATA_TOO_BIG, "size over: too big");
    ok(r.out.len <= 20, "size over: no more than the limit was written");
    is_int(r.done, 1, "size over: end still found");
    is_int(r.consumed, sizeof msg - 1, "size over: all consumed");
    result_clear(&r);

    run_cuts(S("a\r\n.b\r\nc\r\n.\r\nQUIT\r\n"), &lim_norm, 0, NULL, 0, 1, &r);
    is_int(r.status, DATA_WRITE_ERROR, "write error reported");
    is_int(r.out.calls, 1, "callback not called again after failing");
    is_int(r.consumed, 13, "write error: end still found");
    result_clear(&r);

    /* First error wins. */
    lim = lim_rej;
    lim.received_max = 1;
    check_splits("first error wins", S("Received: a\nReceived: b\r\n\r\n.\r\n"), &lim, 0, &r);
    is_int(r.status, DATA_BARE_NEWLINE, "first error wins");
    result_clear(&r);
}

static void test_8bit(void)
{
    struct result r;
    char big[LONG_8BIT_LEN];

    check_splits("8bit", S("caf\xc3\xa9\r\n.\r\n"), &lim_norm, 0, &r);
    is_int(r.has_8bit, 1, "8bit: seen");
    result_clear(&r);
    check_splits("7bit", S("cafe\r\n.\r\n"), &lim_norm, 0, &r);
    is_int(r.has_8bit, 0, "7bit: not seen");
    result_clear(&r);
    check_splits("8bit after end", S("cafe\r\n.\r\n\xff\xfe"), &lim_norm, 0, &r);
    is_int(r.has_8bit, 0, "8bit after the end is not content");
    result_clear(&r);

    /* Long enough for the word-at-a-time scan, 8-bit octet deep inside. */
    memset(big, 'x', sizeof big);
    memcpy(big + sizeof big - 5, "\r\n.\r\n", 5);
    big[LONG_8BIT_AT] = (char)0xe9;
    run_cuts(big, sizeof big, &lim_norm, 0, NULL, 0, 0, &r);
    is_int(r.has_8bit, 1, "8bit deep in a long line");
    is_int(r.out.len, sizeof big - 3, "long line passed on whole");
    result_clear(&r);
    big[LONG_8BIT_AT] = 'x';
    run_cuts(big, sizeof big, &lim_norm, 0, NULL, 0, 0, &r);
    is_int(r.has_8bit, 0, "long 7bit line");
    result_clear(&r);
}

static void test_bdat(void)
{
    struct result r;
    static const char dotted[] = "x\r\n.\r\n..y\r\nz\n.\n";

    check_splits("bdat plain", S("a\r\nb\r\n"), &lim_norm, 1, &r);
    ok(out_is(&r, S("a\r\nb\r\n")), "bdat plain: output");
    is_int(r.consumed, 6, "bdat plain: consumed");
    result_clear(&r);

    check_splits("bdat no dot handling", S(dotted), &lim_norm, 1, &r);
    ok(out_is(&r, S("x\r\n.\r\n..y\r\nz\r\n.\r\n")), "bdat: dots untouched, bare LF normalized");
    is_int(r.consumed, sizeof dotted - 1, "bdat: consumes everything");
    is_int(r.done, 0, "bdat: never 'done'");
    is_int(r.bare, 2, "bdat: bare newlines counted");
    result_clear(&r);

    check_splits("bdat final CRLF", S("a\r\nb"), &lim_norm, 1, &r);
    ok(out_is(&r, S("a\r\nb\r\n")), "bdat: CRLF appended at the end");
    is_int(r.bare, 0, "bdat: appended CRLF is not a bare newline");
    result_clear(&r);

    check_splits("bdat trailing CR", S("a\r\nb\r"), &lim_norm, 1, &r);
    ok(out_is(&r, S("a\r\nb\r\n")), "bdat: trailing CR flushed as CRLF");
    is_int(r.bare, 1, "bdat: trailing CR is bare");
    result_clear(&r);

    check_splits("bdat trailing CR reject", S("a\r\nb\r"), &lim_rej, 1, &r);
    is_int(r.status, DATA_BARE_NEWLINE, "bdat reject: trailing CR");
    result_clear(&r);

    check_splits("bdat empty", "", 0, &lim_norm, 1, &r);
    is_int(r.out.len, 0, "bdat empty: nothing stored");
    result_clear(&r);

    check_splits("bdat received", S("Received: a\r\nreceived: b\r\n\r\nReceived: c"), &lim_norm, 1, &r);
    is_int(r.received, 2, "bdat: Received counted in the header");
    result_clear(&r);
}

static void test_api(void)
{
    struct data_parser *p = data_new(&lim_norm, 0);
    struct sink s = { 0 };

    data_free(NULL);
    ok(p != NULL, "data_new");
    is_int(data_feed(p, "", 0, sink_out, &s), 0, "empty feed consumes nothing");
    is_int(data_feed(p, "a\r\n.\r", 5, sink_out, &s), 5, "feed consumes all before the end");
    is_int(data_done(p), 0, "not done while the last CR is held");
    is_int(data_feed(p, "\nMAIL", 5, sink_out, &s), 1, "held CR + LF ends the data");
    is_int(data_done(p), 1, "done");
    is_int(data_feed(p, "MAIL", 4, sink_out, &s), 0, "nothing consumed after the end");
    is_int(data_finish(p, sink_out, &s), DATA_OK, "finish ok");
    ok(s.len == 3 && memcmp(s.buf, "a\r\n", 3) == 0, "finish adds nothing in DATA mode");
    data_free(p);
    free(s.buf);
}

int main(void)
{
    test_plain();
    test_stuffing();
    test_markers();
    test_smuggling();
    test_header();
    test_received();
    test_dkim_signature();
    test_size_and_errors();
    test_8bit();
    test_bdat();
    test_api();
    return done_testing();
}
