/*
 * tls.c - OpenSSL context set-up (see tls.h).
 *
 * Owns: nothing global; every context is the caller's.
 * Never: enables SSLv3/TLS 1.0/1.1, compression or renegotiation (the
 * renegotiation DoS and CRIME classes); never logs key material.
 */
#include "tls.h"

#include <stdio.h>
#include <string.h>
#include <openssl/err.h>

const char *tls_last_error(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    if (e == 0)
        snprintf(buf, len, "unknown TLS error");
    else
        ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return buf;
}

SSL_CTX *tls_server_ctx_new(const char *cert, const char *key, char *err, size_t errlen)
{
    char why[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot create TLS context: %s", tls_last_error(why, sizeof why));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Sessions are not resumed across our restarts anyway; a cache only
     * costs memory per peer. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        snprintf(err, errlen, "%s: cannot load certificate: %s", cert, tls_last_error(why, sizeof why));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        snprintf(err, errlen, "%s: cannot load private key: %s", key, tls_last_error(why, sizeof why));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "%s: key does not match certificate %s", key, cert);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

const char *tls_describe(SSL *ssl, char *buf, size_t len)
{
    int alg = 0;
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    int bits = c ? SSL_CIPHER_get_bits(c, &alg) : 0;
    snprintf(buf, len, "%s with cipher %s (%d/%d bits)", SSL_get_version(ssl),
             c ? SSL_CIPHER_get_name(c) : "none", bits, alg);
    return buf;
}
