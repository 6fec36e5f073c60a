/*
 * utf8.h - the one UTF-8 validator (RFC 3629): every module that must
 * tell well-formed UTF-8 from anything else asks here.
 *
 * Well formed means the shortest form of a scalar value: no overlongs
 * (C0, C1, E0 80..9F, F0 80..8F), no surrogates (ED A0..BF), nothing past
 * U+10FFFF (F4 90.., F5..FF), no stray continuation octet, no truncated
 * sequence.
 */
#ifndef MXKEEP_UTF8_H
#define MXKEEP_UTF8_H

#include <stddef.h>
#include <stdint.h>

#define UTF8_SEQ_MAX 4          /* octets in the longest sequence */

/*
 * Decode the sequence at s, of which n octets may be read (s[n] and beyond
 * are never touched, so a NUL-terminated caller may pass
 * strnlen(s, UTF8_SEQ_MAX)).  Returns its length, 1..UTF8_SEQ_MAX, with the
 * code point in *cp (cp may be NULL), or 0 when n is 0 or the octets are
 * not well formed; *cp is then left alone.  ASCII, NUL included, is a
 * sequence of 1.
 */
size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);

#endif
