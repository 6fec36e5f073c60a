/*
 * utf8.c - decode and validate one UTF-8 sequence (see utf8.h).
 *
 * Owns: nothing; pure function of its arguments.
 * Must never: read past the bound it is given, allocate, do I/O or log.
 * Security: fed peer octets everywhere (SMTP paths and domains, DSN fields,
 * primaries' replies on their way into JSON, HTML and Prometheus output),
 * so it accepts only the shortest form of a Unicode scalar value: the
 * second octet's range is narrowed per lead octet as in the RFC 3629
 * section 4 table, which rules out overlongs, surrogates and values past
 * U+10FFFF without decoding first and checking after.
 */
#include "config.h"
#include "utf8.h"

#define UTF8_ASCII_END  0x80u   /* octets below are one-octet sequences */
#define UTF8_CONT_LO    0x80u   /* continuation octets: 10xxxxxx */
#define UTF8_CONT_HI    0xBFu
#define UTF8_CONT_BITS  6
#define UTF8_CONT_MASK  0x3Fu

/* One row per lead-octet range: sequence length, payload bits of the lead,
 * and the range allowed for the second octet. */
struct utf8_lead {
    unsigned char lo, hi;       /* lead octets covered */
    unsigned char len;
    unsigned char mask;
    unsigned char second_lo, second_hi;
};

static const struct utf8_lead utf8_leads[] = {
    { 0xC2, 0xDF, 2, 0x1F, 0x80, 0xBF },
    { 0xE0, 0xE0, 3, 0x0F, 0xA0, 0xBF },        /* below: overlong */
    { 0xE1, 0xEC, 3, 0x0F, 0x80, 0xBF },
    { 0xED, 0xED, 3, 0x0F, 0x80, 0x9F },        /* above: surrogates */
    { 0xEE, 0xEF, 3, 0x0F, 0x80, 0xBF },
    { 0xF0, 0xF0, 4, 0x07, 0x90, 0xBF },        /* below: overlong */
    { 0xF1, 0xF3, 4, 0x07, 0x80, 0xBF },
    { 0xF4, 0xF4, 4, 0x07, 0x80, 0x8F },        /* above: past U+10FFFF */
};

size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    const struct utf8_lead *l = NULL;
    uint32_t v;

    if (n == 0)
        return 0;
    if (s[0] < UTF8_ASCII_END) {
        if (cp != NULL)
            *cp = s[0];
        return 1;
    }
    for (size_t i = 0; i < sizeof utf8_leads / sizeof utf8_leads[0]; i++) {
        if (s[0] >= utf8_leads[i].lo && s[0] <= utf8_leads[i].hi) {
            l = &utf8_leads[i];
            break;
        }
    }
    if (l == NULL || l->len > n)        /* C0, C1, F5..FF, a continuation; truncated */
        return 0;
    if (s[1] < l->second_lo || s[1] > l->second_hi)
        return 0;
    v = s[0] & l->mask;
    for (size_t i = 1; i < l->len; i++) {
        if (i > 1 && (s[i] < UTF8_CONT_LO || s[i] > UTF8_CONT_HI))
            return 0;
        v = (v << UTF8_CONT_BITS) | (s[i] & UTF8_CONT_MASK);
    }
    if (cp != NULL)
        *cp = v;
    return l->len;
}
