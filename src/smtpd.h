/*
 * smtpd.h - the inbound SMTP server: one session per connection, each an
 * explicit state machine driven by libevent bufferevents.
 *
 * smtpd owns its sessions and frees each in exactly one place.  It reads
 * the current conf and policy through the pointers given to
 * smtpd_configure(); a reload passes new ones, and sessions pick them up
 * at their next command (a transaction in progress keeps the limits it
 * started with).
 *
 * Ownership: smtpd_new() -> smtpd_free() (accepts NULL; closes every
 * session).  The conf, policy, spool, listener and SSL_CTX are borrowed and
 * must outlive the smtpd (or be replaced through smtpd_configure first).
 */
#ifndef MXKEEP_SMTPD_H
#define MXKEEP_SMTPD_H

#include <stddef.h>
#include <sys/socket.h>
#include <openssl/ssl.h>
#include <event2/util.h>
#include "conf.h"

struct event_base;
struct listener;
struct spool;
struct policy;
struct smtpd;
struct dns;

/*
 * ETRN hook: start delivery for the n covered domains.  Writes the full
 * reply line (no CRLF) into buf, e.g. "253 2.0.0 OK, 42 pending messages
 * for node example.org started".  Without a hook, ETRN answers 458 4.3.0.
 */
typedef void (*smtpd_etrn_fn)(void *arg, const char *node, const struct conf_domain **doms,
                              size_t n, char *buf, size_t len);
/* Called after each message is committed (the scheduler learns of new mail
 * and enters its delay warning): from the commit's completion, whether or
 * not the session that sent the message is still there. */
typedef void (*smtpd_queued_fn)(void *arg, const char *qid);

struct smtpd *smtpd_new(struct event_base *base, struct listener *l, struct spool *sp,
                        SSL_CTX *tls);
void smtpd_configure(struct smtpd *d, const struct conf *c, const struct policy *p);
void smtpd_set_hooks(struct smtpd *d, smtpd_etrn_fn etrn, smtpd_queued_fn queued, void *arg);
/* Client names: each new session looks up the forward-confirmed reverse
 * DNS name of its client (in the background; the greeting does not wait)
 * and uses it in logs and the Received header once known.  dns is
 * borrowed and must outlive the smtpd; NULL (the default): every client
 * is "unknown". */
void smtpd_set_dns(struct smtpd *d, struct dns *dns);
/* SPF checks of each transaction (spf.h), borrowed; NULL: none. */
struct spf_pool;
void smtpd_set_spf(struct smtpd *d, struct spf_pool *p);
/* DKIM verification after each commit, before the queued hook (dkim.h). */
struct dkim_pool;
void smtpd_set_dkim(struct smtpd *d, struct dkim_pool *p);
/* listen_accept_fn: arg is the struct smtpd. */
void smtpd_accept(void *arg, evutil_socket_t fd, const struct sockaddr *sa, int salen);
/* Shutdown: close idle sessions now (421), let transactions finish. */
void smtpd_drain(struct smtpd *d);
size_t smtpd_session_count(const struct smtpd *d);
/* After the loop has stopped (commits still in flight are dropped with
 * it: their completions can no longer run). */
void smtpd_free(struct smtpd *d);

#endif
