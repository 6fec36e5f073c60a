/*
 * tls.c - OpenSSL context set-up (see tls.h).
 *
 * Owns: nothing global; every context is the caller's.
 * Never: enables SSLv3/TLS 1.0/1.1, compression or renegotiation (the
 * renegotiation DoS and CRIME classes); never logs key material.
 */
#include "config.h"
#include "tls.h"

#include <stdio.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
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
    /* An idle session (most of them, most of the time) holds no record
     * buffers: OpenSSL frees its 16 KiB read and write buffers whenever
     * they are empty and takes them again for the next record. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
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

SSL *tls_server_ssl_new(SSL_CTX *ctx, int fd)
{
    int one = 1;
    /* A failure only costs latency: not worth refusing the session. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return SSL_new(ctx);
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

SSL_CTX *tls_client_ctx_new(const char *ca_file, char *err, size_t errlen)
{
    char why[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot create TLS client context: %s",
                 tls_last_error(why, sizeof why));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    /* The chain is always checked and the result recorded; whether it
     * matters is smtpc's per-connection policy (SSL_get_verify_result). */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            snprintf(err, errlen, "%s: cannot load CA certificates: %s", ca_file,
                     tls_last_error(why, sizeof why));
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(err, errlen, "cannot load the system CA store: %s", tls_last_error(why, sizeof why));
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int tls_peer_fingerprint(SSL *ssl, char *buf, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    static const char prefix[] = "sha256:";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    X509 *cert = SSL_get0_peer_certificate(ssl);

    if (cert == NULL || X509_digest(cert, EVP_sha256(), md, &n) != 1 ||
        len < sizeof prefix + 2 * (size_t)n)
        return -1;
    memcpy(buf, prefix, sizeof prefix - 1);
    for (unsigned int i = 0; i < n; i++) {
        buf[sizeof prefix - 1 + 2 * i] = hex[md[i] >> 4];
        buf[sizeof prefix + 2 * i] = hex[md[i] & 0xf];
    }
    buf[sizeof prefix - 1 + 2 * n] = '\0';
    return 0;
}
