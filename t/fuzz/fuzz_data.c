// fuzz-sources: src/data.c
/*
 * fuzz_data.c - libFuzzer target for the DATA / BDAT parser (src/data.c).
 *
 * Input: the first octet picks the mode (bit 0: BDAT, bit 1: reject bare
 * newlines, bit 2: small header/Received/size limits); the rest is the
 * stream.  It is fed whole, then cut at points drawn from a PRNG seeded by
 * the input, and both runs must agree.  A slow line-by-line reference
 * model (written independently of the streaming code) must agree with the
 * whole run, and in DATA mode the consumed count must be exactly the first
 * "\r\n.\r\n" of CRLF + stream: the anti-smuggling rule stated as bytes.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *          t/fuzz/fuzz_data.c src/data.c -o fuzz_data
 */
#include "config.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

#define MODE_BDAT 0x01
#define MODE_REJECT 0x02
#define MODE_LIMITS 0x04

/* Small limits so the fuzzer reaches the error paths often. */
#define FUZZ_MAX_SIZE 200
#define FUZZ_HEADER_SIZE 60
#define FUZZ_HEADER_LINES 4
#define FUZZ_RECEIVED_MAX 1

/* Most pieces a split run makes; pieces are 0..PIECE_MAX octets. */
#define PIECE_MAX 17

#define RECEIVED_NAME "received:"
#define RECEIVED_NAME_LEN (sizeof RECEIVED_NAME - 1)

struct sink {
    char *buf;
    size_t len, cap;
};

static int sink_out(void *arg, const char *b, size_t n)
{
    struct sink *s = arg;

    if (n == 0)
        return 0;
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 256;

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

struct run {
    struct sink out;
    size_t consumed;
    int done;
    enum data_status status;
    long size, received;
    int has_8bit, bare;
};

static uint64_t prng_next(uint64_t *s)
{
    /* splitmix64: deterministic from the input, so crashes reproduce. */
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static void feed(const char *in, size_t len, const struct data_limits *lim,
                 int bdat, uint64_t seed, struct run *r)
{
    struct data_parser *p = data_new(lim, bdat);
    size_t pos = 0;

    memset(r, 0, sizeof *r);
    if (p == NULL)
        abort();
    while (pos < len) {
        size_t n = len - pos, c;

        if (seed != 0)
            n = (size_t)(prng_next(&seed) % (PIECE_MAX + 1));
        if (n > len - pos)
            n = len - pos;
        c = data_feed(p, in + pos, n, sink_out, &r->out);
        if (c > n)
            abort();
        r->consumed += c;
        pos += c;
        if (c < n)
            break;
    }
    r->status = data_finish(p, sink_out, &r->out);
    r->done = data_done(p);
    r->size = data_size(p);
    r->received = data_received_count(p);
    r->has_8bit = data_has_8bit(p);
    r->bare = data_bare_newlines(p);
    data_free(p);
}

/* The reference: split into lines (CRLF, bare LF, bare CR) and apply the
 * rules of data.h to each.  Only the normalize, no-limit case. */
struct ref {
    struct sink out;
    size_t consumed;
    int done, bare;
    long received;
    int in_header;
};

static void ref_line(struct ref *f, const char *l, size_t n)
{
    if (f->in_header) {
        if (n == 0) {
            f->in_header = 0;
        } else if (n >= RECEIVED_NAME_LEN) {
            size_t k;

            for (k = 0; k < RECEIVED_NAME_LEN; k++) {
                char c = l[k];

                if (c >= 'A' && c <= 'Z')
                    c = (char)(c - 'A' + 'a');
                if (c != RECEIVED_NAME[k])
                    break;
            }
            if (k == RECEIVED_NAME_LEN)
                f->received++;
        }
    }
    sink_out(&f->out, l, n);
    sink_out(&f->out, "\r\n", 2);
}

static void ref_run(const char *in, size_t len, int bdat, struct ref *f)
{
    size_t pos = 0;
    int bol_real = 1;

    memset(f, 0, sizeof *f);
    f->in_header = 1;
    while (pos < len) {
        size_t k = pos, tl = 0, n;
        int real = 0, held = 0;

        while (k < len && in[k] != '\r' && in[k] != '\n')
            k++;
        if (k < len && in[k] == '\n') {
            tl = 1;
        } else if (k < len && k + 1 < len) {
            real = in[k + 1] == '\n';
            tl = real ? 2 : 1;
        } else if (k < len) {
            held = 1;       /* CR at the very end: undecided */
        }
        n = k - pos;
        if (tl == 0) {
            /* Unterminated last line. */
            if (bdat) {
                if (held)
                    f->bare++;
                if (n > 0 || held)
                    ref_line(f, in + pos, n);
            } else if (n > 1 && in[pos] == '.') {
                sink_out(&f->out, in + pos + 1, n - 1);
            } else if (!(n == 1 && in[pos] == '.')) {
                sink_out(&f->out, in + pos, n);
            }
            f->consumed = len;
            return;
        }
        if (!real)
            f->bare++;
        if (!bdat && n == 1 && in[pos] == '.') {
            if (real && bol_real) {
                f->done = 1;
                f->consumed = k + tl;
                return;
            }
            ref_line(f, in + pos, 1);
        } else if (!bdat && n > 0 && in[pos] == '.') {
            ref_line(f, in + pos + 1, n - 1);
        } else {
            ref_line(f, in + pos, n);
        }
        bol_real = real;
        pos = k + tl;
    }
    f->consumed = len;
}

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

/* Where DATA must stop: just after the first "\r\n.\r\n" of "\r\n" + in. */
static size_t marker_end(const char *in, size_t len, int *found)
{
    size_t k;

    *found = 1;
    if (len >= 3 && memcmp(in, ".\r\n", 3) == 0)
        return 3;
    for (k = 0; k + 5 <= len; k++)
        if (memcmp(in + k, "\r\n.\r\n", 5) == 0)
            return k + 5;
    *found = 0;
    return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct data_limits lim = { BARE_NL_NORMALIZE, 0, 0, 0, 0 };
    const char *in;
    size_t len, k;
    uint64_t seed = UINT64_C(0xcbf29ce484222325);
    struct run whole, split;
    int bdat, found;
    unsigned mode;

    if (size < 1)
        return 0;
    mode = data[0];
    in = (const char *)data + 1;
    len = size - 1;
    bdat = (mode & MODE_BDAT) != 0;
    if (mode & MODE_REJECT)
        lim.bare_newline = BARE_NL_REJECT;
    if (mode & MODE_LIMITS) {
        lim.max_size = FUZZ_MAX_SIZE;
        lim.header_size = FUZZ_HEADER_SIZE;
        lim.header_lines = FUZZ_HEADER_LINES;
        lim.received_max = FUZZ_RECEIVED_MAX;
    }
    for (k = 0; k < size; k++)
        seed = (seed ^ data[k]) * UINT64_C(0x100000001b3);
    if (seed == 0)
        seed = 1;

    feed(in, len, &lim, bdat, 0, &whole);
    feed(in, len, &lim, bdat, seed, &split);

    if (whole.consumed > len)
        abort();
    if (whole.consumed != split.consumed || whole.done != split.done ||
        whole.status != split.status || whole.size != split.size ||
        whole.received != split.received || whole.has_8bit != split.has_8bit ||
        whole.bare != split.bare)
        abort();
    /* After an error the output is cut wherever it was noticed. */
    if (whole.status == DATA_OK &&
        (whole.out.len != split.out.len ||
         (whole.out.len && memcmp(whole.out.buf, split.out.buf, whole.out.len) != 0)))
        abort();
    if (whole.status == DATA_OK && (long)whole.out.len != whole.size)
        abort();

    if (!bdat) {
        size_t want = marker_end(in, len, &found);

        if (whole.consumed != want || whole.done != found)
            abort();
    } else if (whole.consumed != len || whole.done) {
        abort();
    }

    if (whole.status == DATA_OK && lim.bare_newline == BARE_NL_NORMALIZE &&
        !crlf_only(whole.out.buf, whole.out.len)) {
        abort();
    }
    if (lim.bare_newline == BARE_NL_REJECT &&
        (whole.bare > 0) != (whole.status == DATA_BARE_NEWLINE) &&
        !(mode & MODE_LIMITS))
        abort();

    if (!(mode & MODE_LIMITS) && lim.bare_newline == BARE_NL_NORMALIZE) {
        struct ref f;

        ref_run(in, len, bdat, &f);
        if (f.consumed != whole.consumed || f.done != whole.done ||
            f.bare != whole.bare || f.received != whole.received ||
            f.out.len != whole.out.len ||
            (f.out.len && memcmp(f.out.buf, whole.out.buf, f.out.len) != 0))
            abort();
        if (bdat && f.out.len > 0 &&
            (f.out.len < 2 || memcmp(f.out.buf + f.out.len - 2, "\r\n", 2) != 0))
            abort();
        free(f.out.buf);
    }

    free(whole.out.buf);
    free(split.out.buf);
    return 0;
}
