/*
 * replay.h - kept copies of delivered mail (per domain `keep_delivered`):
 * queuing them again (`mxkeepctl replay`, through the control socket) and
 * dropping them first, oldest first, when the spool runs short of space.
 *
 * A kept copy is a recipient the primary accepted (2xx) whose message
 * stays in the spool marked delivered (QRCPT_KEPT, queue_db.h) until
 * kept_until; the expiry removes it then (deliver_expire.c).  Kept copies
 * are not queued mail: never scheduled, counted apart, not counted against
 * a domain's max_messages/max_bytes (those count by_dest, mail waiting);
 * they do take disk, so while free space is below
 * limits.disk_reserve + limits.keep_reserve they are dropped before any
 * mail is refused or lost.
 *
 * Ownership: one module-wide instance, replay_init() ... replay_shutdown(),
 * on the loop thread; it borrows the spool and the scheduler and holds a
 * reference on the conf of the last replay_reload().
 */
#ifndef MXKEEP_REPLAY_H
#define MXKEEP_REPLAY_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct spool;
struct delivery;
struct conf;

int replay_init(struct event_base *base, struct spool *sp, struct delivery *dl,
                const struct conf *c, char *err, size_t errlen);
void replay_reload(const struct conf *c);
void replay_shutdown(void);

/* Queue again the kept copies of domain delivered in [since, until]
 * (until 0: no end; to addr only, when addr is non-NULL): they become
 * pending recipients with a fresh retention and the domain is flushed.
 * done(arg, err, copies, messages) runs once on the loop after the write
 * committed (err 0) or failed (an errno; ENOENT: not a served domain).
 * 0, or an errno when nothing was started (done will not run). */
typedef void (*replay_done_fn)(void *arg, int err, long copies, size_t messages);
int replay_run(const char *domain, int64_t since, int64_t until, const char *addr,
               replay_done_fn done, void *arg);

#endif
