/*
 * log.c - log line output (see log.h).
 *
 * Owns: the choice of stderr or syslog, and the batch of stderr lines.
 * Never allocates, so it is safe to call from any error path, including
 * out-of-memory and the writer thread.
 *
 * Batching (log_batch_start): on stderr, the lines of one loop pass leave
 * in one write(2) instead of one each; accepting a message logs five
 * lines, and a write per line was a tenth of the daemon's system time.
 * The owner of the loop flushes at the end of each pass (the arm hook
 * asks it to, from any thread); a full batch, log_fatal, log_panic and
 * exit() flush at once, so a line is never held past the pass that wrote
 * it except by a SIGKILL inside that pass.
 * Security: every line is formatted with a fixed format string; peer data
 * only ever appears as %s arguments, and callers pass it through
 * log_sanitize-like escaping (smtpd does) so a peer cannot forge lines.
 */
#include "config.h"
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <sys/time.h>

/* The batch of stderr lines (see the contract above).  One log line is at
 * most LOG_LINE_MAX octets; a batch holds many. */
#define LOG_LINE_MAX  2048
#define LOG_BATCH_MAX 65536
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_batch[LOG_BATCH_MAX];
static size_t log_batch_len;
static void (*log_batch_arm)(void);

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

/* Write all of p to stderr; a failing stderr loses the lines (there is
 * nowhere to say so). */
static void log_write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

/* Caller holds log_mu. */
static void log_batch_write_locked(void)
{
    log_write_all(log_batch, log_batch_len);
    log_batch_len = 0;
}

void log_flush(void)
{
    pthread_mutex_lock(&log_mu);
    log_batch_write_locked();
    pthread_mutex_unlock(&log_mu);
}

static void log_flush_at_exit(void) { log_flush(); }

void log_batch_start(void (*arm)(void))
{
    static int registered;
    if (!registered && atexit(log_flush_at_exit) == 0)
        registered = 1;
    pthread_mutex_lock(&log_mu);
    log_batch_arm = arm;
    pthread_mutex_unlock(&log_mu);
}

void log_batch_stop(void)
{
    pthread_mutex_lock(&log_mu);
    log_batch_arm = NULL;
    log_batch_write_locked();
    pthread_mutex_unlock(&log_mu);
}

static void log_stderr(const char *out, size_t n)
{
    void (*arm)(void) = NULL;
    pthread_mutex_lock(&log_mu);
    if (log_batch_arm == NULL) {
        log_batch_write_locked();
        log_write_all(out, n);
    } else {
        if (log_batch_len + n > sizeof log_batch)
            log_batch_write_locked();
        if (log_batch_len == 0)
            arm = log_batch_arm;
        memcpy(log_batch + log_batch_len, out, n);
        log_batch_len += n;
    }
    pthread_mutex_unlock(&log_mu);
    if (arm)
        arm();
}

static void __attribute__((format(printf, 3, 0)))
log_vline(int prio, const char *tag, const char *fmt, va_list ap)
{
    char line[LOG_LINE_MAX];
    vsnprintf(line, sizeof line, fmt, ap);
    if (log_foreground) {
        struct timeval tv;
        struct tm tm;
        char ts[32], out[LOG_LINE_MAX + 128];
        int n;
        gettimeofday(&tv, NULL);
        localtime_r(&tv.tv_sec, &tm);
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
        n = snprintf(out, sizeof out, "%s.%03ld %s: %s%s\n", ts, (long)(tv.tv_usec / 1000),
                     log_ident, tag, line);
        if (n < 0)
            return;
        if ((size_t)n >= sizeof out) {      /* cut: keep the newline */
            n = (int)sizeof out - 1;
            out[n - 1] = '\n';
        }
        log_stderr(out, (size_t)n);
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
    log_batch_stop();                   /* write through from here on */
    LOG_BODY(LOG_CRIT, "fatal: ");
    exit(code);
}

void log_panic(const char *fmt, ...)
{
    /* Not under log_mu: a panic must get out even if the lock is held. */
    log_batch_arm = NULL;
    log_write_all(log_batch, log_batch_len);
    log_batch_len = 0;
    LOG_BODY(LOG_CRIT, "panic: ");
    abort();
}
