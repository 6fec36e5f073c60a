/*
 * log.c - log line output (see log.h).
 *
 * Owns: the choice of stderr or syslog.  Never allocates, so it is safe to
 * call from any error path, including out-of-memory and the writer thread.
 * Security: every line is formatted with a fixed format string; peer data
 * only ever appears as %s arguments, and callers pass it through
 * log_sanitize-like escaping (smtpd does) so a peer cannot forge lines.
 */
#include "config.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <sys/time.h>

static int log_foreground = 1;
static int log_level;
static const char *log_ident = "mxkeepd";

void log_open(const char *ident, int foreground)
{
    log_ident = ident;
    log_foreground = foreground;
    if (!foreground)
        openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void log_set_debug(int level) { log_level = level; }
int log_debug_level(void) { return log_level; }

static void __attribute__((format(printf, 3, 0)))
log_vline(int prio, const char *tag, const char *fmt, va_list ap)
{
    char line[2048];
    vsnprintf(line, sizeof line, fmt, ap);
    if (log_foreground) {
        struct timeval tv;
        struct tm tm;
        char ts[32];
        gettimeofday(&tv, NULL);
        localtime_r(&tv.tv_sec, &tm);
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
        fprintf(stderr, "%s.%03ld %s: %s%s\n", ts, (long)(tv.tv_usec / 1000),
                log_ident, tag, line);
    } else {
        syslog(prio, "%s%s", tag, line);
    }
}

#define LOG_BODY(prio, tag)          \
    do {                             \
        va_list ap;                  \
        va_start(ap, fmt);           \
        log_vline(prio, tag, fmt, ap); \
        va_end(ap);                  \
    } while (0)

void log_debug(const char *fmt, ...)
{
    if (log_level <= 0)
        return;
    LOG_BODY(LOG_DEBUG, "debug: ");
}
void log_info(const char *fmt, ...) { LOG_BODY(LOG_INFO, ""); }
void log_warn(const char *fmt, ...) { LOG_BODY(LOG_WARNING, "warning: "); }
void log_err(const char *fmt, ...) { LOG_BODY(LOG_ERR, "error: "); }

void log_fatal(int code, const char *fmt, ...)
{
    LOG_BODY(LOG_CRIT, "fatal: ");
    exit(code);
}

void log_panic(const char *fmt, ...)
{
    LOG_BODY(LOG_CRIT, "panic: ");
    abort();
}
