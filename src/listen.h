/*
 * listen.h - the inbound listeners and the connection limits that apply
 * before a session exists: total connections and connections per client
 * address.
 *
 * listen_new() binds every configured address (as root, before the
 * privilege drop) with the listeners disabled; listen_start() enables them
 * once the rest of the server is ready.  A connection over a limit gets
 * "421 4.7.0" and is closed here, without ever reaching smtpd.
 *
 * Ownership: listen_new() -> listen_free() (accepts NULL).  Every accepted
 * connection handed to the callback holds two places: one among its
 * client's connections, given back with listen_release_client() as soon
 * as the session is over (its last reply queued, or the peer gone: a
 * client that reconnects right after QUIT must not find its own closing
 * session counted), and one in the total, given back with listen_release()
 * when the connection is freed (closing sessions still hold descriptors
 * and memory, and the total bounds them).  Each exactly once.
 */
#ifndef MXKEEP_LISTEN_H
#define MXKEEP_LISTEN_H

#include <stddef.h>
#include <sys/socket.h>
#include <event2/util.h>

struct event_base;
struct conf;
struct listener;

/* A new connection: fd is non-blocking and owned by the callee. */
typedef void (*listen_accept_fn)(void *arg, evutil_socket_t fd, const struct sockaddr *sa,
                                 int salen);

struct listener *listen_new(struct event_base *base, const struct conf *c, char *err,
                            size_t errlen);
void listen_start(struct listener *l, listen_accept_fn fn, void *arg);
/* Stop accepting (shutdown); sessions already open go on. */
void listen_stop(struct listener *l);
/* New limits after a reload (addresses are not re-bound). */
void listen_set_limits(struct listener *l, long total, long per_client);
void listen_release_client(struct listener *l, const struct sockaddr *sa);
void listen_release(struct listener *l);
size_t listen_open_count(const struct listener *l);
void listen_free(struct listener *l);

#endif
