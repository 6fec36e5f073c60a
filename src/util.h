/*
 * util.h - the small things every module needs the same way: ASCII case
 * folding (domains and local parts compare case-insensitively in ASCII,
 * never by the locale), one non-cryptographic hash, and the RFC 5322 date.
 *
 * Pure: no I/O, no allocation, no global state; safe on any thread.
 */
#ifndef MXKEEP_UTIL_H
#define MXKEEP_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* ASCII lower case of one octet; octets outside A-Z (UTF-8 included) are
 * returned unchanged, whatever the locale. */
static inline char util_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Copy src into dst (size octets, NUL included) folded to ASCII lower
 * case.  Returns the length of src; a result >= size means dst was cut
 * (always NUL-terminated when size > 0). */
size_t util_lower_copy(char *dst, size_t size, const char *src);
/* Fold s in place; returns s. */
char *util_lower_inplace(char *s);

/* FNV-1a, 64 bits: for hash tables and change detection, never for
 * anything an attacker's choice of keys could exploit beyond a longer
 * chain (tables bound their chains by the input they were built from). */
#define UTIL_HASH_INIT UINT64_C(14695981039346656037)
/* Continue hash h over n octets of p. */
uint64_t util_hash(uint64_t h, const void *p, size_t n);
/* Continue hash h over n octets of s folded to ASCII lower case, so that
 * "Example.ORG" and "example.org" hash alike. */
uint64_t util_hash_lower(uint64_t h, const char *s, size_t n);

/* RFC 5322 3.3 date-time in UTC, "Mon, 30 Nov 2026 01:02:03 +0000",
 * locale-independent.  when: unix seconds; an unrepresentable time gives
 * the epoch, so the field stays well-formed.  len >= UTIL_DATE_MAX. */
#define UTIL_DATE_MAX 40
void util_rfc5322_date(char *out, size_t len, int64_t when);

#endif
