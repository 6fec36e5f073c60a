/*
 * received.c - format the Received: trace header mxkeep prepends to every
 * message (RFC 5321 4.4; protocol names from RFC 3848), e.g.
 *
 *   Received: from mail.example.com (mail.example.com [192.0.2.1])
 *   	by mx2.example.net (mxkeep) with ESMTPS (TLSv1.3) id 4AbCdE
 *   	for <user@example.org>; Mon, 23 Nov 2026 16:52:47 +0000
 *
 * Owns: nothing; writes only the caller's buffer.
 * Must never: do I/O, allocate, depend on the locale or time zone (day and
 * month names are spelled here, the date is always UTC), or write past len.
 * Security: the HELO name is the peer's free text and goes into a header
 * every later hop parses.  It is cut to a bounded length, anything but
 * printable ASCII (space included, so it cannot fake "by"/"with" words)
 * becomes '?', and parentheses are dropped so it cannot open or close a
 * comment.  Our own strings get the same treatment, as a PTR name is
 * peer-controlled too and a bug elsewhere must not become header injection.
 */
#include "config.h"
#include "received.h"
#include "util.h"

#include <stdio.h>
#include <string.h>

#define RECEIVED_LINE_MAX   78      /* RFC 5322 2.1.1 "SHOULD" */
#define RECEIVED_FIELD_MAX  255     /* longest piece of peer text we copy */
#define RECEIVED_HARD_MAX   998     /* RFC 5322 2.1.1 MUST, CRLF excluded */
/* Longest recipient "for <rcpt>;" can name: alone on a folded line it must
 * stay within the hard limit.  An address is never cut (that would name
 * someone else); a longer one leaves the optional "for" clause out. */
#define RECEIVED_RCPT_MAX   (RECEIVED_HARD_MAX - FOLD_INDENT - sizeof "<>;")
#define RECEIVED_UNIT_MAX   (RECEIVED_FIELD_MAX + 16)  /* + brackets, parens, ';' */
#define RECEIVED_DATE_MAX   UTIL_DATE_MAX
#define RECEIVED_SOFTWARE   "(mxkeep)"
#define RECEIVED_UNKNOWN    "unknown"
#define FOLD                "\r\n\t"
#define FOLD_INDENT         1       /* the tab after a fold, counted as one octet */

/* Bounded writer with a column counter for folding. */
struct writer {
    char *buf;
    size_t len, pos;
    size_t col;
    int fresh;                  /* at the start of a continuation line */
    int overflow;
};

static void put(struct writer *w, const char *s, size_t n)
{
    if (w->overflow || n >= w->len - w->pos) {
        w->overflow = 1;
        return;
    }
    memcpy(w->buf + w->pos, s, n);
    w->pos += n;
    w->buf[w->pos] = '\0';
}

static void fold(struct writer *w)
{
    put(w, FOLD, strlen(FOLD));
    w->col = FOLD_INDENT;
    w->fresh = 1;
}

/* Append one unbreakable unit, folding before it when the line would grow
 * past the limit; a unit longer than a whole line still goes out whole. */
static void unit(struct writer *w, const char *s)
{
    size_t n = strlen(s);

    if (n == 0)
        return;
    if (!w->fresh && w->col + 1 + n > RECEIVED_LINE_MAX && w->col > FOLD_INDENT)
        fold(w);
    if (!w->fresh) {
        put(w, " ", 1);
        w->col++;
    }
    put(w, s, n);
    w->col += n;
    w->fresh = 0;
}

/*
 * Copy src into dst (size dstlen) making it safe for a header: printable
 * ASCII only ('?' otherwise), parentheses dropped, at most
 * RECEIVED_FIELD_MAX octets.  keep_space lets our own multi-word comment
 * text (the TLS summary) keep its spaces; keep_8bit keeps UTF-8 in an
 * SMTPUTF8 recipient, already validated by smtp_parse.
 */
static void sanitize(char *dst, size_t dstlen, const char *src, int keep_space, int keep_8bit)
{
    size_t o = 0, max = dstlen - 1;     /* callers size dst: RECEIVED_*_MAX + 1 */

    for (const unsigned char *p = (const unsigned char *)src; *p && o < max; p++) {
        unsigned char c = *p;
        if (c == '(' || c == ')')
            continue;
        if ((c == ' ' && keep_space) || (c > ' ' && c < 0x7f) || (c >= 0x80 && keep_8bit))
            dst[o++] = (char)c;
        else
            dst[o++] = '?';
    }
    dst[o] = '\0';
}

int received_format(char *buf, size_t len, const struct received_info *ri)
{
    struct writer w = { .buf = buf, .len = len };
    char a[RECEIVED_FIELD_MAX + 1], b[RECEIVED_FIELD_MAX + 1];
    char u[RECEIVED_UNIT_MAX], date[RECEIVED_DATE_MAX];
    char ra[RECEIVED_RCPT_MAX + 1], ru[RECEIVED_RCPT_MAX + sizeof "<>;"];
    const char *rcpt = ri->rcpt && strlen(ri->rcpt) <= RECEIVED_RCPT_MAX ? ri->rcpt : NULL;

    if (len == 0)
        return -1;
    buf[0] = '\0';

    put(&w, "Received:", strlen("Received:"));
    w.col = strlen("Received:");

    /* from HELO (NAME [ADDR]) */
    unit(&w, "from");
    if (ri->helo && *ri->helo)
        sanitize(a, sizeof a, ri->helo, 0, 0);
    else
        sanitize(a, sizeof a, ri->client_name ? ri->client_name : RECEIVED_UNKNOWN, 0, 0);
    unit(&w, a);
    if (ri->client_addr && *ri->client_addr) {
        sanitize(b, sizeof b, ri->client_addr, 0, 0);
        if (ri->client_name && *ri->client_name) {
            sanitize(a, sizeof a, ri->client_name, 0, 0);
            snprintf(u, sizeof u, "(%s", a);
            unit(&w, u);
            snprintf(u, sizeof u, "[%s])", b);
        } else {
            snprintf(u, sizeof u, "([%s])", b);
        }
        unit(&w, u);
    } else if (ri->client_name && *ri->client_name) {
        sanitize(a, sizeof a, ri->client_name, 0, 0);
        snprintf(u, sizeof u, "(%s)", a);
        unit(&w, u);
    }

    /* by HOSTNAME (mxkeep) with PROTOCOL (TLS) id QID */
    fold(&w);
    unit(&w, "by");
    sanitize(a, sizeof a, ri->hostname ? ri->hostname : RECEIVED_UNKNOWN, 0, 0);
    unit(&w, a);
    unit(&w, RECEIVED_SOFTWARE);
    unit(&w, "with");
    sanitize(a, sizeof a, ri->protocol ? ri->protocol : "SMTP", 0, 0);
    unit(&w, a);
    if (ri->tls && *ri->tls) {
        /* Word by word, so a long cipher description folds inside the
         * comment (FWS is allowed there) instead of overrunning the line. */
        char *word, *save = NULL;
        int first = 1;
        sanitize(b, sizeof b, ri->tls, 1, 0);
        for (word = strtok_r(b, " ", &save); word; first = 0) {
            char *next = strtok_r(NULL, " ", &save);
            snprintf(u, sizeof u, "%s%s%s", first ? "(" : "", word, next ? "" : ")");
            unit(&w, u);
            word = next;
        }
    }
    if (ri->qid && *ri->qid) {
        unit(&w, "id");
        sanitize(a, sizeof a, ri->qid, 0, 0);
        snprintf(u, sizeof u, "%s%s", a, rcpt ? "" : ";");
        unit(&w, u);
    } else if (!rcpt) {
        unit(&w, ";");
    }

    /* for <rcpt>; DATE */
    fold(&w);
    if (rcpt) {
        unit(&w, "for");
        sanitize(ra, sizeof ra, rcpt, 1, 1);
        snprintf(ru, sizeof ru, "<%s>;", ra);
        unit(&w, ru);
    }
    util_rfc5322_date(date, sizeof date, ri->when);
    unit(&w, date);
    put(&w, "\r\n", 2);

    if (w.overflow) {
        buf[0] = '\0';
        return -1;
    }
    return (int)w.pos;
}

const char *received_protocol(int esmtp, int tls, int utf8)
{
    /* STARTTLS and SMTPUTF8 both need EHLO, so either implies ESMTP. */
    if (utf8)
        return tls ? "UTF8SMTPS" : "UTF8SMTP";
    if (tls)
        return "ESMTPS";
    return esmtp ? "ESMTP" : "SMTP";
}

int received_header_start(const char *b, size_t n)
{
    if (n == 0)
        return -1;
    if (b[0] == '\r' || b[0] == '\n')
        return 1;                       /* the empty line: no header, but separated */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)b[i];
        if (c == ':')
            return i > 0;
        if (c < 33 || c > 126)
            return 0;
        if (i + 1 >= RECEIVED_NAME_PEEK)
            return 0;
    }
    return -1;
}
