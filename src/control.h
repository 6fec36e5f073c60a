/*
 * control.h - the daemon's Unix control socket, spoken by mxkeepctl.
 *
 * The socket (conf->control_socket) is created at start-up while still
 * root, owned by the mail user and control.group (default: the user's
 * group), mode 0660.  Every connection's peer credentials (SO_PEERCRED)
 * are checked: root, the daemon's uid, or a member of its group; anyone
 * else gets "ERR 77 permission denied" and is closed.
 *
 * Protocol (one request per connection, bounded): the client sends one
 * line "COMMAND [ARG...]\n" (at most CONTROL_LINE_MAX octets, arguments
 * separated by single spaces); the daemon answers with lines, the first
 * being "OK" or "ERR <sysexits code> <message>", then any payload (JSON
 * for stats), and closes.  Commands: flush DOMAIN | flush --all,
 * hold DOMAIN, release DOMAIN, delete QID, delete-domain DOMAIN,
 * bounce QID, reload, stats, status DOMAIN, and status with no argument
 * (one JSON object per line, every destination: mxkeepctl summary),
 * cluster-summary (one JSON object per fleet node and destination),
 * maintenance-start DOMAIN UNTIL NOTE (UNTIL unix seconds or "-", NOTE
 * percent-encoded or "-") and maintenance-stop DOMAIN (maint.h: hold,
 * release and these are persisted with the peer's uid).
 *
 * Ownership: control_new() -> control_free() (accepts NULL; unlinks the
 * socket).  The delivery and spool are borrowed.
 */
#ifndef MXKEEP_CONTROL_H
#define MXKEEP_CONTROL_H

#include <stddef.h>
#include <sys/types.h>

struct event_base;
struct conf;
struct delivery;
struct spool;
struct control;

/* reload(arg, msg, len): re-read config and lists; 0 done, -1 kept the old
 * one; msg gets a one-line account either way. */
typedef int (*control_reload_fn)(void *arg, char *msg, size_t len);
/* Gauges the daemon's other parts own, for "stats". */
typedef void (*control_gauges_fn)(void *arg, size_t *in_sessions, size_t *out_connections);

/* Bind the socket (before the privilege drop): uid/gid are the daemon
 * user's.  NULL with a reason in err. */
struct control *control_new(struct event_base *base, const struct conf *c, uid_t uid,
                            gid_t gid, char *err, size_t errlen);
/* After the spool and scheduler exist (after the drop): start serving. */
void control_start(struct control *ctl, struct spool *sp, struct delivery *dl,
                   control_reload_fn reload, control_gauges_fn gauges, void *arg);
/* The fleet (cluster.h): hold, release and flush are published to the
 * other nodes; cluster-summary answers from the database.  NULL: none. */
struct cluster;
void control_set_cluster(struct control *ctl, struct cluster *cl);
/* A reload may change the config pointer. */
void control_set_conf(struct control *ctl, const struct conf *c);
void control_free(struct control *ctl);

#endif
