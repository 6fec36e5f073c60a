// fuzz-sources: src/smtp_parse.c src/utf8.c
/*
 * fuzz_address.c - libFuzzer target for addresses: smtp_parse_path under all
 * eight flag combinations, then smtp_addr_format, smtp_local_is_route and
 * smtp_domain_valid on what was accepted, plus an xtext roundtrip.
 * Build: clang -g -fsanitize=fuzzer,address,undefined -Isrc \
 *            t/fuzz/fuzz_address.c src/smtp_parse.c -o /tmp/fz
 * Invariants (abort() on violation): accepted parts respect the RFC 5321
 * limits; the domain has no ASCII upper case; without SMTPUTF8 nothing
 * 8-bit gets through; a formatted address parses back to the same address;
 * xtext decode(encode(s)) == s for control-free s, and a decoded value
 * re-encodes to something that decodes to the same value.
 */
#include "config.h"
#include "smtp_parse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_FMT_BUF   (SMTP_PATH_MAX + 8)
#define FUZZ_PATH_BUF  (FUZZ_FMT_BUF + 8)
#define FUZZ_XTEXT_MAX 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int has_8bit(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 1;
    return 0;
}

static void check_addr(const struct smtp_addr *a, int allow_null, int utf8, int rcpt)
{
    char fmt[FUZZ_FMT_BUF], path[FUZZ_PATH_BUF], tiny[2];
    struct smtp_addr b;
    const char *rest, *r;
    int n;

    if (a->null) {
        if (!allow_null || smtp_addr_format(a, fmt, sizeof fmt) != 0 || fmt[0] != '\0')
            abort();
        return;
    }
    if (strlen(a->local) == 0 || strlen(a->local) > SMTP_PATH_MAX - 2 ||
        strlen(a->domain) > SMTP_DOMAIN_MAX)
        abort();
    for (const char *p = a->domain; *p; p++)
        if (*p >= 'A' && *p <= 'Z' && !(a->domain_literal && p > a->domain && p < a->domain + 5))
            abort();
    if (!utf8 && (a->utf8 || has_8bit(a->local) || has_8bit(a->domain)))
        abort();
    if (a->domain[0] == '\0' && !rcpt)
        abort();
    if (!a->domain_literal && a->domain[0] && !smtp_domain_valid(a->domain, utf8))
        abort();
    (void)smtp_local_is_route(a->local);

    n = smtp_addr_format(a, fmt, sizeof fmt);
    if (n <= 0 || (size_t)n != strlen(fmt))
        abort();
    if (smtp_addr_format(a, tiny, sizeof tiny) != -1)
        abort();
    if (smtp_addr_format(a, fmt, (size_t)n) != -1 || smtp_addr_format(a, fmt, (size_t)n + 1) != n)
        abort();

    /* The canonical form must parse back to itself. */
    path[0] = '<';
    memcpy(path + 1, fmt, (size_t)n);
    path[n + 1] = '>';
    path[n + 2] = '\0';
    r = smtp_parse_path(path, &rest, &b, allow_null, utf8, rcpt);
    if (r != NULL || strcmp(a->local, b.local) != 0 || strcmp(a->domain, b.domain) != 0 ||
        a->utf8 != b.utf8 || a->domain_literal != b.domain_literal || *rest != '\0')
        abort();
}

static void check_xtext(const char *s, size_t len)
{
    static char enc[FUZZ_XTEXT_MAX * 3 + 1], dec[FUZZ_XTEXT_MAX + 1], dec2[FUZZ_XTEXT_MAX + 1];
    int ctl = 0, n, m;

    if (len > FUZZ_XTEXT_MAX)
        return;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f)
            ctl = 1;
    n = smtp_xtext_encode(s, enc, sizeof enc);
    if (n < 0)
        abort();
    m = smtp_xtext_decode(enc, (size_t)n, dec, sizeof dec);
    if (ctl ? m != -1 : (m != (int)len || memcmp(dec, s, len) != 0))
        abort();

    m = smtp_xtext_decode(s, len, dec, sizeof dec);
    if (m >= 0) {
        n = smtp_xtext_encode(dec, enc, sizeof enc);
        if (n < 0 || smtp_xtext_decode(enc, (size_t)n, dec2, sizeof dec2) != m ||
            memcmp(dec, dec2, (size_t)m) != 0)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    struct smtp_addr a;
    const char *r, *rest;

    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';

    for (int flags = 0; flags < 8; flags++) {
        int allow_null = flags & 1, utf8 = (flags >> 1) & 1, rcpt = (flags >> 2) & 1;
        r = smtp_parse_path(buf, &rest, &a, allow_null, utf8, rcpt);
        if (r != NULL) {
            if (r[0] != '5' || strpbrk(r, "\r\n"))
                abort();
            continue;
        }
        if (rest < buf || rest > buf + strlen(buf))
            abort();
        check_addr(&a, allow_null, utf8, rcpt);
    }
    (void)smtp_domain_valid(buf, 0);
    (void)smtp_domain_valid(buf, 1);
    (void)smtp_local_is_route(buf);
    check_xtext(buf, strlen(buf));
    free(buf);
    return 0;
}
