/*
 * odmr_auth.c - the pure parts of ODMR authentication (see odmr_auth.h):
 * the stored HMAC-MD5 contexts, CRAM-MD5 and password checks, base64 and
 * the AUTH response parsers.
 *
 * Owns nothing; holds no I/O and no state.  Never: keeps a password or a
 * key beyond the call (buffers holding them are cleansed), compares a
 * secret with memcmp (CRYPTO_memcmp: constant time).
 *
 * MD5's chaining state: OpenSSL 3 deprecates the low-level MD5 API, but
 * it is the only OpenSSL interface that exposes and resumes the state
 * (EVP hides it), and the stored secret is that state (Dovecot's
 * CRAM-MD5 scheme).  The deprecation warning is silenced for this file
 * only.
 */
#include "config.h"
#include "odmr_auth.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <openssl/crypto.h>
#include <openssl/md5.h>

#define HMAC_BLOCK 64                   /* MD5's block: RFC 2104's B */
#define HMAC_IPAD  0x36
#define HMAC_OPAD  0x5c

static void state_get(const MD5_CTX *c, uint32_t out[4])
{
    out[0] = c->A;
    out[1] = c->B;
    out[2] = c->C;
    out[3] = c->D;
}

/* An MD5 context that has absorbed exactly one block and holds st. */
static void state_resume(MD5_CTX *c, const uint32_t st[4])
{
    MD5_Init(c);
    c->A = st[0];
    c->B = st[1];
    c->C = st[2];
    c->D = st[3];
    c->Nl = HMAC_BLOCK * 8;             /* bits so far */
    c->Nh = 0;
    c->num = 0;
}

void odmr_ctx_from_password(const void *pw, size_t len, struct odmr_ctx *out)
{
    unsigned char key[HMAC_BLOCK], pad[HMAC_BLOCK];
    MD5_CTX c;

    memset(key, 0, sizeof key);
    if (len > HMAC_BLOCK)
        MD5(pw, len, key);              /* RFC 2104: a long key is hashed first */
    else if (len > 0)
        memcpy(key, pw, len);
    for (int i = 0; i < HMAC_BLOCK; i++)
        pad[i] = key[i] ^ HMAC_IPAD;
    MD5_Init(&c);
    MD5_Update(&c, pad, sizeof pad);
    state_get(&c, out->inner);
    for (int i = 0; i < HMAC_BLOCK; i++)
        pad[i] = key[i] ^ HMAC_OPAD;
    MD5_Init(&c);
    MD5_Update(&c, pad, sizeof pad);
    state_get(&c, out->outer);
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(pad, sizeof pad);
    OPENSSL_cleanse(&c, sizeof c);
}

static const char hexd[] = "0123456789abcdef";

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

int odmr_secret_format(const struct odmr_ctx *ctx, char *out, size_t outlen)
{
    const size_t pre = sizeof ODMR_SECRET_SCHEME - 1;
    char *p;

    if (outlen < ODMR_SECRET_LEN + 1)
        return -1;
    memcpy(out, ODMR_SECRET_SCHEME, pre);
    p = out + pre;
    for (int half = 0; half < 2; half++) {
        const uint32_t *st = half ? ctx->outer : ctx->inner;
        for (int w = 0; w < 4; w++)
            for (int b = 0; b < 4; b++) {      /* little-endian, as Dovecot */
                unsigned v = (st[w] >> (8 * b)) & 0xffu;
                *p++ = hexd[v >> 4];
                *p++ = hexd[v & 15];
            }
    }
    *p = '\0';
    return 0;
}

int odmr_secret_parse(const char *secret, struct odmr_ctx *out)
{
    const size_t pre = sizeof ODMR_SECRET_SCHEME - 1;
    const char *p;

    if (secret == NULL || strlen(secret) != ODMR_SECRET_LEN ||
        strncasecmp(secret, ODMR_SECRET_SCHEME, pre) != 0)
        return -1;
    p = secret + pre;
    for (int half = 0; half < 2; half++) {
        uint32_t *st = half ? out->outer : out->inner;
        for (int w = 0; w < 4; w++) {
            st[w] = 0;
            for (int b = 0; b < 4; b++) {
                int hi = hexval((unsigned char)p[0]), lo = hexval((unsigned char)p[1]);
                if (hi < 0 || lo < 0)
                    return -1;
                st[w] |= (uint32_t)(hi * 16 + lo) << (8 * b);
                p += 2;
            }
        }
    }
    return 0;
}

static void hmac_finish(const struct odmr_ctx *ctx, const void *msg, size_t len,
                        unsigned char mac[MD5_DIGEST_LENGTH])
{
    unsigned char in[MD5_DIGEST_LENGTH];
    MD5_CTX c;

    state_resume(&c, ctx->inner);
    MD5_Update(&c, msg, len);
    MD5_Final(in, &c);
    state_resume(&c, ctx->outer);
    MD5_Update(&c, in, sizeof in);
    MD5_Final(mac, &c);
    OPENSSL_cleanse(&c, sizeof c);
}

void odmr_cram_digest(const struct odmr_ctx *ctx, const char *challenge, size_t clen,
                      char out[ODMR_DIGEST_HEX + 1])
{
    unsigned char mac[MD5_DIGEST_LENGTH];

    hmac_finish(ctx, challenge, clen, mac);
    for (int i = 0; i < MD5_DIGEST_LENGTH; i++) {
        out[2 * i] = hexd[mac[i] >> 4];
        out[2 * i + 1] = hexd[mac[i] & 15];
    }
    out[ODMR_DIGEST_HEX] = '\0';
}

int odmr_cram_verify(const struct odmr_ctx *ctx, const char *challenge, size_t clen,
                     const char *digest_hex, size_t dlen)
{
    unsigned char mac[MD5_DIGEST_LENGTH], got[MD5_DIGEST_LENGTH];

    if (dlen != ODMR_DIGEST_HEX)
        return 0;
    for (int i = 0; i < MD5_DIGEST_LENGTH; i++) {
        int hi = hexval((unsigned char)digest_hex[2 * i]);
        int lo = hexval((unsigned char)digest_hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return 0;
        got[i] = (unsigned char)(hi * 16 + lo);
    }
    hmac_finish(ctx, challenge, clen, mac);
    return CRYPTO_memcmp(mac, got, sizeof mac) == 0;
}

int odmr_password_verify(const struct odmr_ctx *ctx, const void *pw, size_t len)
{
    struct odmr_ctx mine;
    int ok;

    odmr_ctx_from_password(pw, len, &mine);
    ok = CRYPTO_memcmp(&mine, ctx, sizeof mine) == 0;
    OPENSSL_cleanse(&mine, sizeof mine);
    return ok;
}
#pragma GCC diagnostic pop

/* ---- base64 ---------------------------------------------------------------- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64val(int ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

int odmr_b64_decode(const char *in, size_t inlen, unsigned char *out, size_t outcap,
                    size_t *outlen)
{
    size_t n = 0;

    if (inlen % 4 != 0)
        return -1;
    for (size_t i = 0; i < inlen; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char ch = (unsigned char)in[i + k];
            if (ch == '=' && i + 4 == inlen && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad > 0 || (v[k] = b64val(ch)) < 0)
                return -1;      /* '=' only at the end, nothing after it */
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
                     (uint32_t)v[3];
        if (n + 3 - (size_t)pad > outcap)
            return -1;
        out[n++] = (unsigned char)(w >> 16);
        if (pad < 2)
            out[n++] = (unsigned char)(w >> 8);
        if (pad < 1)
            out[n++] = (unsigned char)w;
    }
    *outlen = n;
    return 0;
}

size_t odmr_b64_encode(const void *in, size_t len, char *out, size_t outcap)
{
    const unsigned char *p = in;
    size_t n = 0;

    if (outcap < 4 * ((len + 2) / 3) + 1) {
        if (outcap > 0)
            out[0] = '\0';
        return 0;
    }
    for (size_t i = 0; i < len; i += 3) {
        uint32_t w = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            w |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            w |= p[i + 2];
        out[n++] = b64[(w >> 18) & 63];
        out[n++] = b64[(w >> 12) & 63];
        out[n++] = i + 1 < len ? b64[(w >> 6) & 63] : '=';
        out[n++] = i + 2 < len ? b64[w & 63] : '=';
    }
    out[n] = '\0';
    return n;
}

/* ---- AUTH responses --------------------------------------------------------- */

static int printable(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] == 0x7f)
            return 0;
    return 1;
}

int odmr_cram_response_parse(const unsigned char *buf, size_t len, char *user, size_t ulen,
                             char *digest, size_t dlen)
{
    size_t sp = len;

    while (sp > 0 && buf[sp - 1] != ' ')
        sp--;
    if (sp == 0 || sp - 1 == 0 || !printable(buf, len))
        return -1;
    size_t un = sp - 1, dn = len - sp;
    if (un >= ulen || dn != ODMR_DIGEST_HEX || dn >= dlen)
        return -1;
    for (size_t i = 0; i < dn; i++)
        if (hexval(buf[sp + i]) < 0)
            return -1;
    memcpy(user, buf, un);
    user[un] = '\0';
    memcpy(digest, buf + sp, dn);
    digest[dn] = '\0';
    return 0;
}

int odmr_plain_parse(const unsigned char *buf, size_t len, char *user, size_t ulen, char *pw,
                     size_t pwcap, size_t *pwlen)
{
    const unsigned char *z1 = memchr(buf, '\0', len), *z2;
    size_t zn, un, pn;

    if (z1 == NULL)
        return -1;
    z2 = memchr(z1 + 1, '\0', len - (size_t)(z1 + 1 - buf));
    if (z2 == NULL)
        return -1;
    zn = (size_t)(z1 - buf);
    un = (size_t)(z2 - z1 - 1);
    pn = len - (size_t)(z2 + 1 - buf);
    if (un == 0 || un >= ulen || pn == 0 || pn > pwcap || !printable(z1 + 1, un) ||
        memchr(z2 + 1, '\0', pn) != NULL)
        return -1;
    /* An authorization identity other than the authenticated one would be
     * acting for someone else: not offered. */
    if (zn > 0 && (zn != un || memcmp(buf, z1 + 1, un) != 0))
        return -1;
    memcpy(user, z1 + 1, un);
    user[un] = '\0';
    memcpy(pw, z2 + 1, pn);
    *pwlen = pn;
    return 0;
}
