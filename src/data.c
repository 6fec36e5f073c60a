/*
 * data.c - DATA / BDAT content parser (pure; see data.h for the contract).
 *
 * Does: turns the octets after 354 (DATA) or inside BDAT chunks into the
 * message as stored (CRLF line ends only, dot-unstuffed), finds the end of
 * data, scans the header for size/line limits and the Received count,
 * counts output octets and notes 8-bit content.
 *
 * Owns: the parser struct and nothing else.  Between calls it keeps only
 * scalar state (line state, one held-back CR, counters, the first octets of
 * the current header line); never a pointer into a caller's buffer.
 *
 * Never: does I/O, logs, allocates per octet, or calls the output callback
 * once the status is not DATA_OK.
 *
 * Security (SMTP smuggling, CVE-2023-51764/5/6): in DATA mode the end of
 * data is exactly the first "\r\n.\r\n" of the stream (the DATA command's
 * own CRLF counts as the leading one).  A "." line begun or ended by a bare
 * LF or bare CR is content, and is kept as "." (not unstuffed to an empty
 * line) so that it can neither end the header nor vanish: on relay the
 * client side stuffs it back to "..".  In normalize mode every bare CR and
 * bare LF leaves here as CRLF, so nothing we relay carries a lone CR/LF for
 * a downstream server to misread.  A CR at the end of one feed is held
 * back until the next octet says whether it is part of CRLF.
 *
 * Speed: lines are found with memchr (vectorized in libc); the output is
 * passed on in runs that span many lines and are only broken where octets
 * are dropped (a stuffing dot) or added (a normalized bare newline).
 */
#include "config.h"
#include "data.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Header field counted for loop detection, compared ASCII-case-blind. */
#define RECEIVED_NAME "received:"
#define RECEIVED_NAME_LEN (sizeof RECEIVED_NAME - 1)
/* A DKIM signature (RFC 6376 3.5): without one the message's DKIM result
 * is "none" at once, and no worker needs to read it back (dkim.h). */
#define DKIM_NAME "dkim-signature:"
#define DKIM_NAME_LEN (sizeof DKIM_NAME - 1)
#define PREFIX_LEN DKIM_NAME_LEN        /* the longest name looked for */

#define CRLF "\r\n"
#define CRLF_LEN 2

/* Octets ORed together between two tests for a high bit. */
#define HIGHBIT_BLOCK 256
#define HIGHBIT_MASK UINT64_C(0x8080808080808080)

enum line_state {
    LS_BOL,     /* at the first octet of a line */
    LS_DOT,     /* the line so far is one withheld "." */
    LS_MID      /* inside a line's content */
};

struct data_parser {
    struct data_limits lim;
    int bdat;
    enum data_status status;
    enum line_state state;
    int bol_real;           /* the current line began after a real CRLF */
    int held_cr;            /* the last octet fed was a CR, not yet judged */
    int done;               /* DATA: end of data seen */
    int finished;           /* BDAT: data_finish() ran */
    int in_header;
    size_t line_len;        /* output octets of the current header line */
    char prefix[PREFIX_LEN];
    long size;
    long hdr_octets;
    long hdr_lines;
    long received;
    int dkim_sigs;
    int has_8bit;
    int bare;
};

struct data_parser *data_new(const struct data_limits *lim, int bdat)
{
    struct data_parser *p = calloc(1, sizeof *p);

    if (p == NULL)
        return NULL;
    if (lim != NULL)
        p->lim = *lim;
    p->bdat = bdat != 0;
    p->status = DATA_OK;
    p->state = LS_BOL;
    /* The DATA command line itself ended in CRLF. */
    p->bol_real = 1;
    p->in_header = 1;
    return p;
}

void data_free(struct data_parser *p)
{
    free(p);
}

static void set_status(struct data_parser *p, enum data_status s)
{
    /* First error wins: it is the one the client is told about. */
    if (p->status == DATA_OK)
        p->status = s;
}

static long add_sat(long a, size_t n)
{
    if (n > (size_t)(LONG_MAX - a))
        return LONG_MAX;
    return a + (long)n;
}

static void emit(struct data_parser *p, const char *b, size_t n,
                 data_out_fn out, void *arg)
{
    if (n == 0)
        return;
    /* Counted even once output has stopped, so the size of a refused
     * message can still be logged. */
    p->size = add_sat(p->size, n);
    if (p->status != DATA_OK)
        return;
    if (p->lim.max_size > 0 && p->size > p->lim.max_size) {
        set_status(p, DATA_TOO_BIG);
        return;
    }
    if (out != NULL && out(arg, b, n) != 0)
        set_status(p, DATA_WRITE_ERROR);
}

static void hdr_octets_add(struct data_parser *p, size_t n)
{
    p->hdr_octets = add_sat(p->hdr_octets, n);
    if (p->lim.header_size > 0 && p->hdr_octets > p->lim.header_size)
        set_status(p, DATA_HEADER_TOO_BIG);
}

/* Content octets of the current line (as output, without line end). */
static void hdr_content(struct data_parser *p, const char *b, size_t n)
{
    if (!p->in_header || n == 0)
        return;
    if (p->line_len < PREFIX_LEN) {
        size_t k = PREFIX_LEN - p->line_len;

        if (k > n)
            k = n;
        memcpy(p->prefix + p->line_len, b, k);
    }
    p->line_len += n;
    hdr_octets_add(p, n);
}

/* Does the line begin with header name `name` (lower case, colon
 * included; len octets)? */
static int is_name(const char *s, const char *name, size_t len)
{
    size_t k;

    for (k = 0; k < len; k++) {
        unsigned char c = (unsigned char)s[k];

        /* ASCII only: locale must not change what a header name is. */
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        if (c != (unsigned char)name[k])
            return 0;
    }
    return 1;
}

static void hdr_eol(struct data_parser *p)
{
    if (!p->in_header)
        return;
    if (p->line_len == 0) {
        p->in_header = 0;
        return;
    }
    p->hdr_lines++;
    hdr_octets_add(p, CRLF_LEN);
    if (p->lim.header_lines > 0 && p->hdr_lines > p->lim.header_lines)
        set_status(p, DATA_HEADER_TOO_BIG);
    if (p->line_len >= RECEIVED_NAME_LEN && is_name(p->prefix, RECEIVED_NAME, RECEIVED_NAME_LEN)) {
        p->received++;
        if (p->lim.received_max > 0 && p->received > p->lim.received_max)
            set_status(p, DATA_LOOP);
    }
    if (p->line_len >= DKIM_NAME_LEN && is_name(p->prefix, DKIM_NAME, DKIM_NAME_LEN))
        p->dkim_sigs++;
    p->line_len = 0;
}

/*
 * A line ended; real: by CR LF, else by a bare CR or LF.  The caller has
 * already passed on the line's content and passes on the line end after
 * this (a real CRLF usually stays inside the verbatim run).  Returns 1 when
 * the line was the end-of-data marker.
 */
static int line_end(struct data_parser *p, int real, data_out_fn out, void *arg)
{
    if (p->state == LS_DOT) {
        if (real && p->bol_real && !p->bdat) {
            p->done = 1;
            return 1;
        }
        /* Not the marker (a smuggling attempt or a sloppy client): keep
         * the "." as content rather than unstuff it to an empty line. */
        emit(p, ".", 1, out, arg);
        hdr_content(p, ".", 1);
    }
    if (!real) {
        if (p->bare < INT_MAX)
            p->bare++;
        if (p->lim.bare_newline == BARE_NL_REJECT)
            set_status(p, DATA_BARE_NEWLINE);
    }
    hdr_eol(p);
    p->state = LS_BOL;
    p->bol_real = real;
    return 0;
}

static size_t find_byte(const char *buf, size_t from, size_t len, int c)
{
    const char *q = memchr(buf + from, c, len - from);

    return q != NULL ? (size_t)(q - buf) : len;
}

static int any_high_bit(const char *b, size_t n)
{
    size_t k = 0;

    while (n - k >= HIGHBIT_BLOCK) {
        uint64_t acc = 0;
        size_t e = k + HIGHBIT_BLOCK;

        for (; k < e; k += sizeof acc) {
            uint64_t w;

            memcpy(&w, b + k, sizeof w);
            acc |= w;
        }
        if (acc & HIGHBIT_MASK)
            return 1;
    }
    for (; k < n; k++)
        if ((unsigned char)b[k] & 0x80)
            return 1;
    return 0;
}

size_t data_feed(struct data_parser *p, const char *buf, size_t len,
                 data_out_fn out, void *arg)
{
    size_t i = 0, run = 0, consumed = len, ncr, nlf;

    if (p == NULL || p->done || p->finished || len == 0)
        return 0;

    if (p->held_cr) {
        int real = buf[0] == '\n';

        p->held_cr = 0;
        if (line_end(p, real, out, arg)) {
            consumed = 1;
            goto out;
        }
        /* The CR was in the previous buffer: the line end is a constant. */
        emit(p, CRLF, CRLF_LEN, out, arg);
        if (real)
            i = run = 1;
    }

    /* Next CR and LF at or after i; found once, refreshed when passed, so
     * the scan stays linear even when one of them is rare. */
    ncr = find_byte(buf, i, len, '\r');
    nlf = find_byte(buf, i, len, '\n');

    while (i < len) {
        size_t j;
        int real;

        if (p->state == LS_BOL) {
            if (!p->bdat && buf[i] == '.') {
                emit(p, buf + run, i - run, out, arg);
                run = ++i;
                p->state = LS_DOT;
                continue;
            }
            p->state = LS_MID;
        } else if (p->state == LS_DOT) {
            if (buf[i] != '\r' && buf[i] != '\n')
                p->state = LS_MID;  /* stuffed line: the dot stays dropped */
        }

        if (ncr < i)
            ncr = find_byte(buf, i, len, '\r');
        if (nlf < i)
            nlf = find_byte(buf, i, len, '\n');
        j = ncr < nlf ? ncr : nlf;
        hdr_content(p, buf + i, j - i);
        if (j == len) {
            i = len;
            break;
        }
        if (buf[j] == '\r') {
            if (j + 1 == len) {
                emit(p, buf + run, j - run, out, arg);
                p->held_cr = 1;
                i = run = len;
                break;
            }
            real = buf[j + 1] == '\n';
        } else {
            real = 0;
        }
        if (real) {
            if (line_end(p, 1, out, arg)) {
                emit(p, buf + run, j - run, out, arg);
                run = i = j;
                consumed = j + CRLF_LEN;
                goto out;
            }
            i = j + CRLF_LEN;
        } else {
            emit(p, buf + run, j - run, out, arg);
            line_end(p, 0, out, arg);
            emit(p, CRLF, CRLF_LEN, out, arg);
            i = run = j + 1;
        }
    }
    emit(p, buf + run, i - run, out, arg);

out:
    /* The consumed span is content plus (at most) ".\r\n": plain ASCII. */
    if (!p->has_8bit && any_high_bit(buf, consumed))
        p->has_8bit = 1;
    return consumed;
}

int data_done(const struct data_parser *p)
{
    return p != NULL && p->done;
}

enum data_status data_finish(struct data_parser *p, data_out_fn out, void *arg)
{
    if (p == NULL)
        return DATA_WRITE_ERROR;
    /* DATA: the last content line's CRLF came before the marker; an
     * unfinished DATA is the caller's to discard, never to complete. */
    if (!p->bdat || p->finished)
        return p->status;
    p->finished = 1;
    if (p->held_cr) {
        p->held_cr = 0;
        line_end(p, 0, out, arg);
        emit(p, CRLF, CRLF_LEN, out, arg);
    } else if (p->state != LS_BOL) {
        /* RFC 3030: the message ends with CRLF; we store it that way. */
        line_end(p, 1, out, arg);
        emit(p, CRLF, CRLF_LEN, out, arg);
    }
    return p->status;
}

enum data_status data_status(const struct data_parser *p)
{
    return p->status;
}

long data_size(const struct data_parser *p)
{
    return p->size;
}

int data_dkim_signatures(const struct data_parser *p) { return p->dkim_sigs; }

long data_received_count(const struct data_parser *p)
{
    return p->received;
}

int data_has_8bit(const struct data_parser *p)
{
    return p->has_8bit;
}

int data_bare_newlines(const struct data_parser *p)
{
    return p->bare;
}
