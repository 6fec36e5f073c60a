/*
 * log.h - one place for every log line mxkeepd writes.
 *
 * Lines go to stderr when running in the foreground (-f), else to syslog's
 * mail facility.  Per-message lines start with the queue ID, Postfix style,
 * so that "grep QID" over a log tells a message's whole story.
 *
 * The ladder (house style rule 4):
 *   log_info/log_warn  - things worth knowing; a recoverable fault is a warn.
 *   log_fatal          - bad config or start-up failure: one line, exit(code).
 *   log_panic          - a broken invariant: one line, abort() for a core.
 */
#ifndef MXKEEP_LOG_H
#define MXKEEP_LOG_H

#include <stdarg.h>

#define EX_CONFIG_CODE 78   /* sysexits EX_CONFIG */

/* Open the log.  ident is the program name.  foreground: log to stderr.
 * May be called again (after privilege drop, on reload). */
void log_open(const char *ident, int foreground);

/* Batch stderr lines (foreground only; syslog lines are never held).
 * arm is called, from whichever thread logged, when a line enters an
 * empty batch: the caller then runs log_flush() soon, once per loop pass
 * (main.c does it from an event it activates).  arm must not log.
 * log_batch_stop writes what is held and goes back to a write per line.
 * log_fatal, log_panic and exit() write the batch first. */
void log_batch_start(void (*arm)(void));
void log_batch_stop(void);
void log_flush(void);

/* Raise or lower verbosity: 0 normal, 1 adds session state transitions. */
void log_set_debug(int level);
int log_debug_level(void);

void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Log and exit(code).  Never returns. */
void log_fatal(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
/* Log "panic: ..." and abort().  Never returns. */
void log_panic(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
