/*
 * odmr.h - On-Demand Mail Relay (RFC 2645): the listener a primary that
 * cannot be reached (dynamic address, NAT) connects to, authenticates on
 * (AUTH CRAM-MD5; PLAIN and LOGIN only under TLS) and sends ATRN; its
 * domains' mail then goes out over that same connection, mxkeep being the
 * SMTP client (delivery_odmr_run).
 *
 * odmr_new() binds every `odmr.listen` address (as root, before the
 * privilege drop), disabled; odmr_start() enables them once the scheduler
 * runs.  TLS per listener: "implicit" (from the first octet: fetchmail's
 * `ssl`) or "starttls" (offered after EHLO).
 *
 * Ownership: odmr_new() -> odmr_free() (accepts NULL).  The conf is
 * referenced (odmr_set_conf replaces it on reload; listeners are not
 * re-bound); the TLS context is referenced; the scheduler is borrowed.
 */
#ifndef MXKEEP_ODMR_H
#define MXKEEP_ODMR_H

#include <stddef.h>
#include <openssl/ssl.h>

struct event_base;
struct conf;
struct delivery;
struct odmr;

/* NULL with err[0] == '\0' when no ODMR listener is configured; NULL
 * with a one-line reason when an address cannot be bound. */
struct odmr *odmr_new(struct event_base *base, const struct conf *c, char *err, size_t errlen);
/* Accept sessions: tls is the server context (tls.certificate). */
void odmr_start(struct odmr *o, SSL_CTX *tls, struct delivery *dl);
/* A reloaded conf (domains, secrets, limits; not the addresses). */
void odmr_set_conf(struct odmr *o, const struct conf *c);
/* Stop accepting; close sessions that have not reversed (shutdown).
 * Reversed sessions belong to the scheduler (delivery_stop). */
void odmr_stop(struct odmr *o);
/* Sessions open now (not reversed ones: the scheduler counts those). */
size_t odmr_session_count(const struct odmr *o);
void odmr_free(struct odmr *o);

#endif
