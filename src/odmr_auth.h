/*
 * odmr_auth.h - the pure parts of ODMR authentication (RFC 2645 makes
 * CRAM-MD5 mandatory; RFC 4954 AUTH, RFC 4616 PLAIN, the LOGIN
 * mechanism): the stored secret, CRAM-MD5 and password checks, base64 and
 * the decoding of AUTH responses.  No I/O, no state: unit-tested in
 * t/unit/t_odmr_auth.c.
 *
 * The secret is never kept in clear.  As Dovecot's CRAM-MD5 password
 * scheme, a domain's odmr_secret is "{CRAM-MD5}" and 64 hex digits: the
 * MD5 chaining state (A, B, C, D, each little-endian) after absorbing
 * (key xor ipad), then after (key xor opad) — HMAC-MD5's two precomputed
 * contexts (RFC 2104).  CRAM-MD5 (RFC 2195) finishes the HMAC of the
 * challenge from them; PLAIN and LOGIN compute the same contexts from the
 * password given and compare them in constant time.  So one stored value
 * serves every mechanism, and it is a password-equivalent for CRAM-MD5
 * only (as with Dovecot): keep the config file unreadable to others.
 */
#ifndef MXKEEP_ODMR_AUTH_H
#define MXKEEP_ODMR_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define ODMR_SECRET_SCHEME  "{CRAM-MD5}"
#define ODMR_SECRET_LEN     (sizeof ODMR_SECRET_SCHEME - 1 + 64)    /* without NUL */
#define ODMR_DIGEST_HEX     32                                      /* HMAC-MD5 in hex */
#define ODMR_AUTH_FIELD_MAX 256         /* user names and passwords we take */

struct odmr_ctx {
    uint32_t inner[4];
    uint32_t outer[4];
};

/* The HMAC-MD5 contexts of a password (any octets, any length). */
void odmr_ctx_from_password(const void *pw, size_t len, struct odmr_ctx *out);
/* "{CRAM-MD5}<64 lower-case hex>" of ctx into out (ODMR_SECRET_LEN + 1
 * octets at least).  0, or -1 when out is too small. */
int odmr_secret_format(const struct odmr_ctx *ctx, char *out, size_t outlen);
/* Parse a stored secret (scheme case-insensitive, hex either case).
 * 0, or -1 when malformed. */
int odmr_secret_parse(const char *secret, struct odmr_ctx *out);

/* CRAM-MD5: does digest_hex (32 hex digits, either case) equal
 * HMAC-MD5(secret, challenge)?  1 yes, 0 no.  Constant-time compare. */
int odmr_cram_verify(const struct odmr_ctx *ctx, const char *challenge, size_t clen,
                     const char *digest_hex, size_t dlen);
/* HMAC-MD5(secret, challenge) in lower-case hex into out[33] (tests, and
 * a client of our own). */
void odmr_cram_digest(const struct odmr_ctx *ctx, const char *challenge, size_t clen,
                      char out[ODMR_DIGEST_HEX + 1]);
/* PLAIN / LOGIN: does the password give the stored contexts?  1 / 0. */
int odmr_password_verify(const struct odmr_ctx *ctx, const void *pw, size_t len);

/* Base64 (RFC 4648, with padding; no line breaks, no spaces).  Decode:
 * 0 with *outlen set, -1 when malformed or longer than outcap. */
int odmr_b64_decode(const char *in, size_t inlen, unsigned char *out, size_t outcap,
                    size_t *outlen);
/* Encode into out (4 * ceil(len / 3) + 1 octets); returns the length. */
size_t odmr_b64_encode(const void *in, size_t len, char *out, size_t outcap);

/* The decoded CRAM-MD5 response "user SP digest" (the last space splits
 * it: RFC 2195).  0, or -1 when malformed (no space, a field too long,
 * a digest that is not 32 hex digits, a NUL or control octet). */
int odmr_cram_response_parse(const unsigned char *buf, size_t len, char *user, size_t ulen,
                             char *digest, size_t dlen);
/* The decoded PLAIN response "authzid NUL authcid NUL passwd" (RFC 4616).
 * authzid may be empty (else it must equal authcid: we act for no one
 * else).  0, or -1 when malformed or a field is too long. */
int odmr_plain_parse(const unsigned char *buf, size_t len, char *user, size_t ulen, char *pw,
                     size_t pwcap, size_t *pwlen);

#endif
