/*
 * tls.h - OpenSSL contexts for the server side (STARTTLS) and, later, the
 * client side, with one policy: TLS 1.2 or newer, no compression, no
 * renegotiation, server cipher preference.
 *
 * Ownership: contexts are returned with one reference; release with
 * SSL_CTX_free (NULL is fine).  Keys are loaded while still root, before the
 * privilege drop.
 */
#ifndef MXKEEP_TLS_H
#define MXKEEP_TLS_H

#include <stddef.h>
#include <openssl/ssl.h>

/* Server context from PEM certificate chain and key.  NULL with a one-line
 * reason in err on failure (unreadable file, key does not match). */
SSL_CTX *tls_server_ctx_new(const char *cert, const char *key, char *err, size_t errlen);

/* A server-side SSL for one STARTTLS session on socket fd, from ctx.
 * Also turns Nagle off on fd: OpenSSL writes a record per write and the
 * session tickets after the handshake, and Nagle would hold the next
 * record until the client's delayed ACK (40 ms per TLS session on Linux).
 * NULL on failure (the reason is on OpenSSL's error queue). */
SSL *tls_server_ssl_new(SSL_CTX *ctx, int fd);

/* Client context: TLS 1.2+, peer verification against ca_file or (NULL)
 * the system CA store; whether a failed verification is fatal is the
 * caller's per-connection policy (smtpc.c).  NULL with a reason in err. */
SSL_CTX *tls_client_ctx_new(const char *ca_file, char *err, size_t errlen);

/* "sha256:<64 lower-case hex>" of the peer certificate's DER into buf
 * (at least 72 octets).  Returns 0, or -1 when there is no certificate. */
int tls_peer_fingerprint(SSL *ssl, char *buf, size_t len);

/* "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)" for logs and
 * the Received header.  Returns buf. */
const char *tls_describe(SSL *ssl, char *buf, size_t len);

/* The last OpenSSL error as text (drains the error queue). */
const char *tls_last_error(char *buf, size_t len);

#endif
