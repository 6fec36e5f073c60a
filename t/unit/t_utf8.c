/*
 * t_utf8.c - utf8_decode (every valid length, every invalid class, the
 * bound, an exhaustive cross-check against a decode-then-check reference)
 * and json_escape (each escape class, invalid UTF-8, the length bound).
 */
#include "config.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "tap.h"
#include "utf8.h"

#define OUT_MAX 512
#define CP_UNTOUCHED 0xDEADBEEFu

/* The decoders this module replaced worked the other way round: take the
 * length from the lead's bit pattern, gather the bits, then reject
 * overlongs, surrogates and values past U+10FFFF.  Agreeing with it on every
 * input tested shows the range table in utf8.c accepts exactly the same. */
static size_t ref_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    static const uint32_t min_cp[] = { 0, 0, 0x80, 0x800, 0x10000 };
    size_t len;
    uint32_t v;

    if (n == 0)
        return 0;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if ((s[0] & 0xE0) == 0xC0) {
        len = 2;
        v = s[0] & 0x1F;
    } else if ((s[0] & 0xF0) == 0xE0) {
        len = 3;
        v = s[0] & 0x0F;
    } else if ((s[0] & 0xF8) == 0xF0) {
        len = 4;
        v = s[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min_cp[len] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return len;
}

/* 1 when utf8_decode and the reference disagree on b[0..n). */
static int cmp_ref(const unsigned char *b, size_t n)
{
    uint32_t c1 = 0, c2 = 0;
    size_t r1 = utf8_decode(b, n, &c1), r2 = ref_decode(b, n, &c2);

    return r1 != r2 || (r1 != 0 && c1 != c2);
}

static size_t encode(uint32_t cp, unsigned char *o)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decode from a heap copy of exactly n octets, so ASan catches a read past
 * the bound.  Returns the length; *cp is CP_UNTOUCHED when not written. */
static size_t dec(const char *s, size_t n, uint32_t *cp)
{
    unsigned char *copy = malloc(n ? n : 1);
    size_t r;

    memcpy(copy, s, n);
    *cp = CP_UNTOUCHED;
    r = utf8_decode(copy, n, cp);
    free(copy);
    return r;
}

static void check_valid(const char *s, size_t len, uint32_t want, const char *what)
{
    uint32_t cp;
    size_t r = dec(s, len, &cp);

    is_int(r, len, "%s: length %zu", what, len);
    is_int(cp, want, "%s: U+%04X", what, (unsigned)want);
    /* Room after the sequence must not change the answer. */
    char buf[8] = { 0 };
    memcpy(buf, s, len);
    buf[len] = 'x';
    is_int(utf8_decode((const unsigned char *)buf, len + 1, NULL), len,
           "%s: same length with octets after it (cp NULL)", what);
    for (size_t k = 0; k < len; k++)
        is_int(dec(s, k, &cp), 0, "%s: bound %zu < %zu is truncated", what, k, len);
}

static void check_invalid(const char *s, size_t n, const char *what)
{
    uint32_t cp;

    is_int(dec(s, n, &cp), 0, "invalid: %s", what);
    ok(cp == CP_UNTOUCHED, "invalid: %s leaves *cp alone", what);
}

/* --- json_escape ------------------------------------------------------- */

struct sink {
    char buf[OUT_MAX];
    size_t len;
    int calls_empty;
};

static void sink_emit(void *arg, const char *p, size_t len)
{
    struct sink *k = arg;

    if (len == 0)
        k->calls_empty++;
    if (k->len + len < sizeof k->buf) {
        memcpy(k->buf + k->len, p, len);
        k->len += len;
    }
    k->buf[k->len] = '\0';
}

static const char *esc(const char *s, size_t n)
{
    static struct sink k;

    memset(&k, 0, sizeof k);
    json_escape(s, n, sink_emit, &k);
    ok(k.calls_empty == 0, "no empty pieces emitted");
    return k.buf;
}

#define ESC(lit) esc((lit), sizeof(lit) - 1)

int main(void)
{
    uint32_t cp;

    /* Valid sequences of each length, at the edges of each range. */
    check_valid("A", 1, 'A', "ASCII");
    check_valid("\0", 1, 0, "NUL");
    check_valid("\x7F", 1, 0x7F, "DEL");
    check_valid("\xC2\x80", 2, 0x80, "first 2-octet");
    check_valid("\xC3\xA9", 2, 0xE9, "e-acute");
    check_valid("\xDF\xBF", 2, 0x7FF, "last 2-octet");
    check_valid("\xE0\xA0\x80", 3, 0x800, "first 3-octet");
    check_valid("\xE2\x82\xAC", 3, 0x20AC, "euro sign");
    check_valid("\xED\x9F\xBF", 3, 0xD7FF, "below the surrogates");
    check_valid("\xEE\x80\x80", 3, 0xE000, "above the surrogates");
    check_valid("\xEF\xBF\xBD", 3, 0xFFFD, "replacement character");
    check_valid("\xEF\xBF\xBF", 3, 0xFFFF, "last 3-octet");
    check_valid("\xF0\x90\x80\x80", 4, 0x10000, "first 4-octet");
    check_valid("\xF0\x9F\x98\x80", 4, 0x1F600, "emoji");
    check_valid("\xF3\xBF\xBF\xBF", 4, 0xFFFFF, "plane 15 end");
    check_valid("\xF4\x8F\xBF\xBF", 4, 0x10FFFF, "U+10FFFF");

    /* Every invalid class. */
    check_invalid("", 0, "empty (bound 0)");
    check_invalid("A", 0, "ASCII with bound 0");
    check_invalid("\x80", 1, "lone continuation 80");
    check_invalid("\xBF", 1, "lone continuation BF");
    check_invalid("\xC0\x80", 2, "overlong NUL C0 80");
    check_invalid("\xC0\xAF", 2, "overlong '/' C0 AF");
    check_invalid("\xC1\xBF", 2, "overlong C1 BF");
    check_invalid("\xE0\x80\x80", 3, "overlong E0 80 80");
    check_invalid("\xE0\x9F\xBF", 3, "overlong E0 9F BF");
    check_invalid("\xF0\x80\x80\x80", 4, "overlong F0 80 80 80");
    check_invalid("\xF0\x8F\xBF\xBF", 4, "overlong F0 8F BF BF");
    check_invalid("\xED\xA0\x80", 3, "surrogate U+D800");
    check_invalid("\xED\xBF\xBF", 3, "surrogate U+DFFF");
    check_invalid("\xF4\x90\x80\x80", 4, "U+110000");
    check_invalid("\xF5\x80\x80\x80", 4, "lead F5");
    check_invalid("\xF7\xBF\xBF\xBF", 4, "lead F7");
    check_invalid("\xF8\x88\x80\x80\x80", 5, "5-octet form F8");
    check_invalid("\xFC\x84\x80\x80\x80\x80", 6, "6-octet form FC");
    check_invalid("\xFE", 1, "FE");
    check_invalid("\xFF", 1, "FF");
    check_invalid("\xC3\x41", 2, "2-octet, ASCII continuation");
    check_invalid("\xC3\xC3", 2, "2-octet, lead as continuation");
    check_invalid("\xC3\x00", 2, "2-octet, NUL continuation");
    check_invalid("\xE2\x82\x41", 3, "3-octet, bad third");
    check_invalid("\xE2\x41\xAC", 3, "3-octet, bad second");
    check_invalid("\xF0\x9F\x98\x41", 4, "4-octet, bad fourth");
    check_invalid("\xF0\x9F\xC0\x80", 4, "4-octet, bad third");
    check_invalid("\xC3", 1, "truncated 2-octet");
    check_invalid("\xE2\x82", 2, "truncated 3-octet");
    check_invalid("\xF0\x9F\x98", 3, "truncated 4-octet");

    /* The bound cuts a valid sequence that the buffer holds in full. */
    is_int(utf8_decode((const unsigned char *)"\xE2\x82\xAC", 2, NULL), 0,
           "bound shorter than the sequence: invalid even though octets follow");
    is_int(utf8_decode((const unsigned char *)"\xE2\x82\xAC", 3, NULL), 3, "bound equal: valid");

    /* Every code point round-trips; surrogates are refused. */
    {
        unsigned long bad = 0, surr_ok = 0;
        for (uint32_t c = 0; c <= 0x10FFFF; c++) {
            unsigned char b[4];
            size_t n = encode(c, b);
            size_t r = utf8_decode(b, n, &cp);
            if (c >= 0xD800 && c <= 0xDFFF)
                surr_ok += r != 0;
            else
                bad += r != n || cp != c;
        }
        is_int(bad, 0, "every scalar value U+0000..U+10FFFF decodes to itself");
        is_int(surr_ok, 0, "no surrogate decodes");
    }

    /* Exhaustive over every 1-, 2- and 3-octet input and every 4-octet
     * input with a lead >= F0 and interesting tails: same as the reference. */
    {
        unsigned long diff = 0, tried = 0;
        static const unsigned char tails[] = { 0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90,
                                               0x9F, 0xA0, 0xBF, 0xC0, 0xFF };
        unsigned char b[4];
        for (unsigned a = 0; a < 256; a++) {
            b[0] = (unsigned char)a;
            diff += cmp_ref(b, 1), tried++;
            for (unsigned x = 0; x < 256; x++) {
                b[1] = (unsigned char)x;
                diff += cmp_ref(b, 2), tried++;
                for (unsigned y = 0; y < 256; y++) {
                    b[2] = (unsigned char)y;
                    diff += cmp_ref(b, 3), tried++;
                    if (a < 0xF0)
                        continue;
                    for (size_t t = 0; t < sizeof tails; t++) {
                        b[3] = tails[t];
                        diff += cmp_ref(b, 4), tried++;
                    }
                }
            }
        }
        diag("%lu inputs compared", tried);
        is_int(diff, 0, "agrees with the decode-then-check reference everywhere");
    }

    /* json_escape */
    is_str(ESC(""), "\"\"", "json: empty string");
    is_str(ESC("plain text 123"), "\"plain text 123\"", "json: plain ASCII");
    is_str(ESC("a\"b\\c/d"), "\"a\\\"b\\\\c/d\"", "json: quote and backslash; '/' as is");
    is_str(ESC("\b\f\n\r\t"), "\"\\b\\f\\n\\r\\t\"", "json: short escapes");
    is_str(ESC("\x01\x1f\x0b\x1b"), "\"\\u0001\\u001f\\u000b\\u001b\"",
           "json: other C0 as \\u00xx, lower-case hex");
    is_str(ESC("x\x7fy"), "\"x\\u007fy\"", "json: DEL escaped");
    is_str(esc("a\0b", 3), "\"a\\u0000b\"", "json: embedded NUL escaped, n honoured");
    is_str(esc("abcdef", 3), "\"abc\"", "json: stops at n");
    is_str(ESC("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"),
           "\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\"", "json: valid UTF-8 passes");
    is_str(ESC("\xC2\x85"), "\"\xC2\x85\"", "json: C1 control (valid UTF-8) passes");
    is_str(ESC("\xEF\xBF\xBD"), "\"\xEF\xBF\xBD\"", "json: a real U+FFFD passes");
    is_str(ESC("a\x80z"), "\"a\\ufffdz\"", "json: stray continuation");
    is_str(ESC("\xFF\xFE"), "\"\\ufffd\\ufffd\"", "json: FF FE");
    is_str(ESC("\xC0\xAF"), "\"\\ufffd\\ufffd\"", "json: overlong, one U+FFFD per octet");
    is_str(ESC("\xED\xA0\x80!"), "\"\\ufffd\\ufffd\\ufffd!\"", "json: surrogate");
    is_str(ESC("\xF4\x90\x80\x80"), "\"\\ufffd\\ufffd\\ufffd\\ufffd\"", "json: past U+10FFFF");
    is_str(ESC("\xE2\x82x"), "\"\\ufffd\\ufffdx\"", "json: bad continuation");
    is_str(ESC("ok\xC3"), "\"ok\\ufffd\"", "json: truncated at the end");
    is_str(esc("\xE2\x82\xAC", 2), "\"\\ufffd\\ufffd\"", "json: sequence cut by n");
    is_str(ESC("\xC3\xA9\"\xC3\n\xE2\x82\xAC"),
           "\"\xC3\xA9\\\"\\ufffd\\n\xE2\x82\xAC\"", "json: classes mixed");

    return done_testing();
}
