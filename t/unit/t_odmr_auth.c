/*
 * t_odmr_auth - the pure parts of ODMR authentication (odmr_auth.c): the
 * stored "{CRAM-MD5}" secret (HMAC-MD5 precomputed contexts) and its
 * round trip, CRAM-MD5 against RFC 2195's own example, PLAIN/LOGIN
 * password checks, base64 and the decoding of AUTH responses.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "odmr_auth.h"
#include "tap.h"

/* RFC 2195 section 2's example. */
#define RFC_PW        "tanstaaftanstaaf"
#define RFC_CHALLENGE "<1896.697170952@postoffice.reston.mci.net>"
#define RFC_DIGEST    "b913a602c7eda7a495b4e6e7334d3890"
#define RFC_RESPONSE  "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"

static void secret(void)
{
    struct odmr_ctx a, b;
    char s[ODMR_SECRET_LEN + 1], t[ODMR_SECRET_LEN + 1], small[20];

    odmr_ctx_from_password(RFC_PW, strlen(RFC_PW), &a);
    ok(odmr_secret_format(&a, s, sizeof s) == 0, "secret formats");
    ok(strncmp(s, "{CRAM-MD5}", 10) == 0 && strlen(s) == 74, "scheme and 64 hex digits: %s", s);
    ok(odmr_secret_format(&a, small, sizeof small) == -1, "too small a buffer is refused");
    ok(odmr_secret_parse(s, &b) == 0 && memcmp(&a, &b, sizeof a) == 0, "parse(format(x)) == x");
    odmr_secret_format(&b, t, sizeof t);
    is_str(t, s, "format(parse(s)) == s");
    /* Upper-case hex and scheme are the same secret. */
    for (char *p = t; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 32);
    ok(odmr_secret_parse(t, &b) == 0 && memcmp(&a, &b, sizeof a) == 0, "case-insensitive");
    ok(odmr_secret_parse("{CRAM-MD5}00", &b) == -1, "short secret refused");
    ok(odmr_secret_parse("{PLAIN}tanstaaftanstaaftanstaaftanstaaftanstaaftanstaaftanstaaf12", &b) == -1,
       "other scheme refused");
    memcpy(t, s, sizeof t);
    t[20] = 'g';
    ok(odmr_secret_parse(t, &b) == -1, "non-hex refused");
    ok(odmr_secret_parse(NULL, &b) == -1, "NULL refused");
    /* The first word of the inner context, little-endian (Dovecot's order):
     * the MD5 state after one block is not the initial state. */
    ok(strncmp(s + 10, "01234567", 8) != 0, "state is not MD5's initial vector");
    /* A different password, a different secret. */
    odmr_ctx_from_password("secret", 6, &b);
    ok(memcmp(&a, &b, sizeof a) != 0, "another password, another secret");
}

static void cram(void)
{
    struct odmr_ctx c;
    char d[ODMR_DIGEST_HEX + 1];

    odmr_ctx_from_password(RFC_PW, strlen(RFC_PW), &c);
    odmr_cram_digest(&c, RFC_CHALLENGE, strlen(RFC_CHALLENGE), d);
    is_str(d, RFC_DIGEST, "RFC 2195 example digest from the stored contexts");
    ok(odmr_cram_verify(&c, RFC_CHALLENGE, strlen(RFC_CHALLENGE), RFC_DIGEST, 32) == 1,
       "RFC 2195 example verifies");
    ok(odmr_cram_verify(&c, RFC_CHALLENGE, strlen(RFC_CHALLENGE),
                        "B913A602C7EDA7A495B4E6E7334D3890", 32) == 1, "upper-case digest verifies");
    ok(odmr_cram_verify(&c, RFC_CHALLENGE, strlen(RFC_CHALLENGE),
                        "b913a602c7eda7a495b4e6e7334d3891", 32) == 0, "one bit off fails");
    ok(odmr_cram_verify(&c, "<1897.697170952@postoffice.reston.mci.net>", 42, RFC_DIGEST, 32) == 0,
       "another challenge fails");
    ok(odmr_cram_verify(&c, RFC_CHALLENGE, strlen(RFC_CHALLENGE), RFC_DIGEST, 31) == 0,
       "short digest fails");
    ok(odmr_cram_verify(&c, RFC_CHALLENGE, strlen(RFC_CHALLENGE),
                        "z913a602c7eda7a495b4e6e7334d3890", 32) == 0, "non-hex digest fails");
    /* A key longer than a block is hashed first (RFC 2104). */
    char longpw[100];
    memset(longpw, 'k', sizeof longpw);
    struct odmr_ctx l;
    odmr_ctx_from_password(longpw, sizeof longpw, &l);
    ok(odmr_password_verify(&l, longpw, sizeof longpw) == 1, "100-octet password verifies");
    ok(odmr_password_verify(&l, longpw, 99) == 0, "99 octets of it do not");
}

static void password(void)
{
    struct odmr_ctx c;

    odmr_ctx_from_password("secret", 6, &c);
    ok(odmr_password_verify(&c, "secret", 6) == 1, "PLAIN/LOGIN: right password");
    ok(odmr_password_verify(&c, "Secret", 6) == 0, "PLAIN/LOGIN: wrong password");
    ok(odmr_password_verify(&c, "secret ", 7) == 0, "PLAIN/LOGIN: a trailing space differs");
    ok(odmr_password_verify(&c, "", 0) == 0, "PLAIN/LOGIN: empty password");
}

static void base64(void)
{
    unsigned char out[64];
    char enc[64];
    size_t n = 0;

    ok(odmr_b64_decode(RFC_RESPONSE, strlen(RFC_RESPONSE), out, sizeof out, &n) == 0 &&
       n == 36 && memcmp(out, "tim " RFC_DIGEST, 36) == 0, "RFC 2195 response decodes");
    ok(odmr_b64_decode("AGZvbwBiYXI=", 12, out, sizeof out, &n) == 0 && n == 8 &&
       memcmp(out, "\0foo\0bar", 8) == 0, "PLAIN with NULs decodes");
    ok(odmr_b64_decode("Zm8=", 4, out, sizeof out, &n) == 0 && n == 2, "one pad");
    ok(odmr_b64_decode("Zg==", 4, out, sizeof out, &n) == 0 && n == 1, "two pads");
    ok(odmr_b64_decode("", 0, out, sizeof out, &n) == 0 && n == 0, "empty");
    ok(odmr_b64_decode("Zm8", 3, out, sizeof out, &n) == -1, "unpadded refused");
    ok(odmr_b64_decode("Z=8=", 4, out, sizeof out, &n) == -1, "pad in the middle refused");
    ok(odmr_b64_decode("Zm8=Zm8=", 8, out, sizeof out, &n) == -1, "pad before more refused");
    ok(odmr_b64_decode("Zm 8", 4, out, sizeof out, &n) == -1, "space refused");
    ok(odmr_b64_decode("Zm9vYmFy", 8, out, 5, &n) == -1, "longer than the buffer refused");
    ok(odmr_b64_encode("tim " RFC_DIGEST, 36, enc, sizeof enc) == strlen(RFC_RESPONSE) &&
       strcmp(enc, RFC_RESPONSE) == 0, "encode gives RFC 2195's response");
    ok(odmr_b64_encode("foo", 3, enc, 4) == 0, "encode: too small a buffer");
}

static void responses(void)
{
    char user[64], dig[40], pw[64];
    size_t pwlen = 0;
    const char *r = "example.org " RFC_DIGEST;

    ok(odmr_cram_response_parse((const unsigned char *)r, strlen(r), user, sizeof user, dig,
                                sizeof dig) == 0 &&
       strcmp(user, "example.org") == 0 && strcmp(dig, RFC_DIGEST) == 0, "CRAM: user and digest");
    r = "user with spaces " RFC_DIGEST;
    ok(odmr_cram_response_parse((const unsigned char *)r, strlen(r), user, sizeof user, dig,
                                sizeof dig) == 0 && strcmp(user, "user with spaces") == 0,
       "CRAM: the last space splits");
    r = RFC_DIGEST;
    ok(odmr_cram_response_parse((const unsigned char *)r, strlen(r), user, sizeof user, dig,
                                sizeof dig) == -1, "CRAM: no user refused");
    r = "tim b913a602";
    ok(odmr_cram_response_parse((const unsigned char *)r, strlen(r), user, sizeof user, dig,
                                sizeof dig) == -1, "CRAM: short digest refused");
    r = "tim\001x " RFC_DIGEST;
    ok(odmr_cram_response_parse((const unsigned char *)r, strlen(r), user, sizeof user, dig,
                                sizeof dig) == -1, "CRAM: control octet refused");
    ok(odmr_cram_response_parse((const unsigned char *)"example.org " RFC_DIGEST, 44, user, 5,
                                dig, sizeof dig) == -1, "CRAM: user longer than the buffer");

    ok(odmr_plain_parse((const unsigned char *)"\0example.org\0secret", 19, user, sizeof user,
                        pw, sizeof pw, &pwlen) == 0 && strcmp(user, "example.org") == 0 &&
       pwlen == 6 && memcmp(pw, "secret", 6) == 0, "PLAIN: empty authzid");
    ok(odmr_plain_parse((const unsigned char *)"example.org\0example.org\0secret", 30, user,
                        sizeof user, pw, sizeof pw, &pwlen) == 0, "PLAIN: authzid = authcid");
    ok(odmr_plain_parse((const unsigned char *)"other.org\0example.org\0secret", 28, user,
                        sizeof user, pw, sizeof pw, &pwlen) == -1, "PLAIN: acting for another refused");
    ok(odmr_plain_parse((const unsigned char *)"\0example.org", 12, user, sizeof user, pw,
                        sizeof pw, &pwlen) == -1, "PLAIN: no password field refused");
    ok(odmr_plain_parse((const unsigned char *)"\0\0secret", 8, user, sizeof user, pw,
                        sizeof pw, &pwlen) == -1, "PLAIN: empty user refused");
    ok(odmr_plain_parse((const unsigned char *)"\0u\0", 3, user, sizeof user, pw, sizeof pw,
                        &pwlen) == -1, "PLAIN: empty password refused");
    ok(odmr_plain_parse((const unsigned char *)"\0u\0a\0b", 6, user, sizeof user, pw, sizeof pw,
                        &pwlen) == -1, "PLAIN: a third NUL refused");
    ok(odmr_plain_parse((const unsigned char *)"\0u\0secret", 9, user, sizeof user, pw, 3,
                        &pwlen) == -1, "PLAIN: password longer than the buffer refused");
}

int main(void)
{
    secret();
    cram();
    password();
    base64();
    responses();
    return done_testing();
}
