/*
 * mxkeepctl.c - the administration command line of mxkeep.
 *
 *   mxkeepctl [-c FILE] [--json] COMMAND [ARGS]
 *
 * Options may come anywhere on the line, before or after the command and
 * its operands (getopt_long with permutation); `--` ends them, so an
 * operand may start with '-'.  Command options (--all, --domain, --yes)
 * are parsed the same way and refused by commands that do not take them.
 *
 * What it does: answers questions about the queue (queue, summary, show,
 * cat, count) by reading the LMDB index of the spool directly; compiles
 * recipient lists into lmdb maps (map compile, like postmap: needs no
 * configuration and no daemon; the map is renamed into place, so a
 * running daemon switches to it whole).  LMDB lets
 * this second process read while mxkeepd writes, so these commands work
 * whether the daemon is running or not.  Commands that act (flush, hold,
 * release, delete, bounce, reload, stats, cluster summary) send one line over the daemon's
 * control socket (control.h) and print its answer; summary also asks the
 * daemon, when it answers, for the live state of each destination.
 *
 * Owns: its struct conf, its read-only use of the index (struct qdb) and
 * the page buffers below.  Output goes to stdout, diagnostics to stderr.
 *
 * Must never: write to the index or the spool itself (only qdb_* read
 * functions are called, bodies are opened O_RDONLY, and every change is
 * asked of the daemon); load the whole queue into memory (messages are
 * read in pages of CTL_PAGE, resuming after the last
 * QID, and written out as they come, JSON included); hold an LMDB read
 * transaction while writing output (a slow reader of our stdout would pin
 * old pages and make the daemon's map grow), so each page is copied out of
 * the callback first and printed afterwards.
 *
 * Security: everything printed may come from SMTP peers (sender, HELO,
 * replies of the primary, message headers).  Text output escapes control
 * characters (C0, DEL, C1) and invalid UTF-8 as \xNN (and doubles a
 * backslash) so a message cannot drive the administrator's terminal; JSON output escapes per RFC 8259 and
 * turns invalid UTF-8 into U+FFFD.  A QID from the command line is checked
 * with qid_valid() before it becomes part of a path or a request, a domain
 * is checked to be one printable word; the daemon's replies are bounded
 * (CTL_REPLY_MAX, CTL_DAEMON_TIMEOUT) and printed escaped like the rest.
 *
 * Exit codes (sysexits.h):
 *   0   EX_OK           success
 *   64  EX_USAGE        bad command line, unknown command, malformed QID
 *   65  EX_DATAERR      map compile: a bad line in the list (file:line: reason)
 *   66  EX_NOINPUT      no spool at the configured path; no such message;
 *                       queue DOMAIN for a domain neither served nor queued
 *   67  EX_NOUSER       unknown domain (daemon commands)
 *   69  EX_UNAVAILABLE  daemon not running (nothing on the control socket)
 *   71  EX_OSERR        out of memory
 *   73  EX_CANTCREAT    map compile: the map cannot be written
 *   74  EX_IOERR        index or body read failed, stdout write failed
 *   75  EX_TEMPFAIL     domain held; message being delivered; daemon too slow
 *   76  EX_PROTOCOL     malformed reply from the daemon
 *   77  EX_NOPERM       the spool or the control socket refuses this user
 *   78  EX_CONFIG       the configuration file does not load; no socket set
 * For daemon commands, the daemon's "ERR <code>" is the exit code.
 * On an error in the middle of a JSON listing the document is left
 * unterminated on purpose, so a consumer's parser fails too.
 */
#include "config.h"
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sysexits.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "json.h"
#include "log.h"
#include "maint.h"
#include "odmr_auth.h"
#include "qid.h"
#include "queue_db.h"
#include "timearg.h"
#include "table_lmdb.h"
#include "smtp_parse.h"
#include "utf8.h"
#include "util.h"
#include "verify.h"
#include "verify_cache.h"
#include "timearg.h"

#include <openssl/crypto.h>

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif

#define CTL_PROG          "mxkeepctl"
#define CTL_CONF_DEFAULT  SYSCONFDIR "/mxkeep.conf"
#define CTL_PAGE          1000          /* messages per read of the index */
#define CTL_HEADER_MAX    (1024 * 1024) /* most header octets `show` prints */
#define CTL_READ_CHUNK    (64 * 1024)   /* body file read size */
#define CTL_BODY_TRIES    3             /* qdb_body_get grow-and-retry rounds */
#define CTL_ISO_SIZE      32
#define CTL_AGE_SIZE      32
#define CTL_ERR_SIZE      512
#define CTL_PATH_SIZE     4096
#define CTL_QID_SUFFIX    2             /* msg/XX/: last two QID chars */
#define CTL_DAEMON_TIMEOUT 120          /* seconds for the daemon's whole answer */
#define CTL_REPLY_MAX     (64 * 1024 * 1024)  /* most reply octets we take */
#define CTL_LINE_MAX      1024          /* the daemon's CONTROL_LINE_MAX */
#define CTL_JSON_KEY      64
#define CTL_STATS_COL     32

#define SECS_MINUTE 60
#define SECS_HOUR   (60 * SECS_MINUTE)
#define SECS_DAY    (24 * SECS_HOUR)

struct ctl {
    struct conf *conf;
    struct qdb *db;
    FILE *out;
    int json;
    int all;                            /* --all (flush) */
    int yes;                            /* --yes (delete --domain) */
    int probe;                          /* --probe (verify ADDRESS) */
    int deliver, notify;                /* --deliver / --notify (quarantine release) */
    const char *since, *until;          /* --since (replay), --until TIME (replay, maintenance) */
    const char *recipient;              /* --recipient ADDR (replay) */
    const char *domain;                 /* --domain D (delete) */
    const char *output;                 /* -o OUT (map compile) */
    const char *note;                   /* --note TEXT (maintenance start) */
    int64_t now;
    struct qrcpt *rcpt;                 /* reused recipient buffer */
    size_t rcpt_cap;
};

/* ------------------------------------------------------------------ */
/* Output helpers: escaping                                            */
/* ------------------------------------------------------------------ */

/* Write errors show in ferror(), checked before exiting. */
static void json_emit_file(void *arg, const char *p, size_t len)
{
    fwrite(p, 1, len, arg);
}

static void json_strn(FILE *f, const void *data, size_t n)
{
    json_escape(data, n, json_emit_file, f);
}

static void json_str(FILE *f, const char *s)
{
    json_strn(f, s, strlen(s));
}

/*
 * Text for a terminal.  Valid UTF-8 passes except control characters
 * (C0, DEL, C1), which become \xNN like invalid octets do.  With multiline,
 * CRLF and LF end lines and TAB stays, for header blocks.
 */
static void text_strn(FILE *f, const void *data, size_t n, int multiline)
{
    const unsigned char *s = data;
    size_t i = 0;

    while (i < n) {
        unsigned char ch = s[i];
        uint32_t cp;
        size_t len;

        if (multiline && ch == '\r' && i + 1 < n && s[i + 1] == '\n') {
            i++;
            continue;
        }
        if (multiline && (ch == '\n' || ch == '\t')) {
            fputc(ch, f);
            i++;
            continue;
        }
        if (ch == '\\') {
            /* Doubled, so a peer's "\x1B" cannot pass for our escape. */
            fputs("\\\\", f);
            i++;
            continue;
        }
        len = utf8_decode(s + i, n - i, &cp);
        if (len == 0 || cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) {
            /* For a valid C1 sequence, escaping its lead octet and then
             * the continuation octet (invalid alone) shows both. */
            fprintf(f, "\\x%02X", ch);
            i++;
        } else {
            fwrite(s + i, 1, len, f);
            i += len;
        }
    }
}

static void text_str(FILE *f, const char *s)
{
    text_strn(f, s, strlen(s), 0);
}

/* ------------------------------------------------------------------ */
/* Output helpers: values                                              */
/* ------------------------------------------------------------------ */

static void fmt_iso(int64_t t, char buf[CTL_ISO_SIZE])
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (gmtime_r(&tt, &tm) == NULL || strftime(buf, CTL_ISO_SIZE, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, CTL_ISO_SIZE, "@%" PRId64, t);
}

/* Two units at most ("3d04h", "5m07s"): an age is read at a glance. */
static void fmt_age(int64_t secs, char buf[CTL_AGE_SIZE])
{
    if (secs < 0)
        secs = 0;
    if (secs >= SECS_DAY)
        snprintf(buf, CTL_AGE_SIZE, "%" PRId64 "d%02" PRId64 "h", secs / SECS_DAY,
                 secs % SECS_DAY / SECS_HOUR);
    else if (secs >= SECS_HOUR)
        snprintf(buf, CTL_AGE_SIZE, "%" PRId64 "h%02" PRId64 "m", secs / SECS_HOUR,
                 secs % SECS_HOUR / SECS_MINUTE);
    else if (secs >= SECS_MINUTE)
        snprintf(buf, CTL_AGE_SIZE, "%" PRId64 "m%02" PRId64 "s", secs / SECS_MINUTE,
                 secs % SECS_MINUTE);
    else
        snprintf(buf, CTL_AGE_SIZE, "%" PRId64 "s", secs);
}

static const char *rcpt_state_name(int state)
{
    switch (state) {
    case QRCPT_PENDING: return "pending";
    case QRCPT_SENT: return "sent";
    case QRCPT_BOUNCED: return "bounced";
    case QRCPT_EXPIRED: return "expired";
    case QRCPT_DELETED: return "deleted";
    case QRCPT_QUARANTINED: return "quarantined";
    case QRCPT_KEPT: return "kept";
    default: return "invalid";
    }
}

static const char *dest_state_name(int state)
{
    switch (state) {
    case QDEST_UNKNOWN: return "unknown";
    case QDEST_UP: return "up";
    case QDEST_DOWN: return "down";
    case QDEST_HELD: return "held";
    default: return "invalid";
    }
}

static const char *body_name(int body)
{
    switch (body) {
    case SMTP_BODY_7BIT: return "7bit";
    case SMTP_BODY_8BITMIME: return "8bitmime";
    case SMTP_BODY_BINARYMIME: return "binarymime";
    default: return "invalid";
    }
}

static const char *ret_name(int ret)
{
    switch (ret) {
    case SMTP_RET_NONE: return "";
    case SMTP_RET_FULL: return "full";
    case SMTP_RET_HDRS: return "hdrs";
    default: return "invalid";
    }
}

struct ctl_flag_name {
    unsigned bit;
    const char *name;
};

/* QMSG_F_INLINE is a storage detail, not a property of the message. */
static const struct ctl_flag_name msg_flag_names[] = {
    { QMSG_F_8BIT, "8bit" },
    { QMSG_F_SMTPUTF8, "smtputf8" },
    { QMSG_F_DSN, "dsn" },
    { QMSG_F_QUARANTINE, "quarantine" },
};

static const struct ctl_flag_name notify_names[] = {
    { SMTP_NOTIFY_NEVER, "never" },
    { SMTP_NOTIFY_SUCCESS, "success" },
    { SMTP_NOTIFY_FAILURE, "failure" },
    { SMTP_NOTIFY_DELAY, "delay" },
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* JSON: ["a","b"]; text: "a,b" (nothing when no bit is set). */
static void print_flags(FILE *f, int json, unsigned bits, const struct ctl_flag_name *names,
                        size_t n)
{
    int first = 1;
    size_t i;

    if (json)
        fputc('[', f);
    for (i = 0; i < n; i++) {
        if (!(bits & names[i].bit))
            continue;
        if (!first)
            fputc(',', f);
        first = 0;
        if (json)
            json_str(f, names[i].name);
        else
            fputs(names[i].name, f);
    }
    if (json)
        fputc(']', f);
}

/* A unix time, or null when 0 (never / none planned). */
static void json_time_or_null(FILE *f, int64_t t)
{
    if (t == 0)
        fputs("null", f);
    else
        fprintf(f, "%" PRId64, t);
}

static void ctl_error(const char *what, const char *detail)
{
    if (detail != NULL)
        fprintf(stderr, CTL_PROG ": %s: %s\n", what, detail);
    else
        fprintf(stderr, CTL_PROG ": %s\n", what);
}

/* ------------------------------------------------------------------ */
/* The daemon's control socket                                         */
/* ------------------------------------------------------------------ */

/*
 * One request per connection: send "COMMAND ARGS\n", read until the daemon
 * closes.  The first line is "OK[ text]" or "ERR <sysexits code> <text>";
 * the rest is payload (JSON).  Everything received is bounded.
 */
struct daemon_reply {
    char *buf;                          /* whole reply, NUL-terminated */
    size_t len;
    const char *text;                   /* after "OK " ("" when none) */
    const char *payload;                /* after the first line */
};

static void daemon_reply_free(struct daemon_reply *r)
{
    free(r->buf);
    memset(r, 0, sizeof *r);
}

/* Connect to the control socket.  fd >= 0, or -(exit code) after a one-line
 * message (none when quiet). */
static int daemon_connect(const struct ctl *c, int quiet)
{
    const char *path = c->conf->control_socket;
    struct sockaddr_un sun;
    int fd, e;

    if (path == NULL) {
        if (!quiet)
            ctl_error("no control socket configured (control.socket)", NULL);
        return -EX_CONFIG;
    }
    if (strlen(path) >= sizeof sun.sun_path) {
        if (!quiet)
            ctl_error("control socket path too long", path);
        return -EX_CONFIG;
    }
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        if (!quiet)
            ctl_error("socket", strerror(errno));
        return -EX_OSERR;
    }
    if (connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0)
        return fd;
    e = errno;
    close(fd);
    if (!quiet) {
        if (e == ECONNREFUSED || e == ENOENT)
            fprintf(stderr, CTL_PROG ": daemon not running (socket %s)\n", path);
        else if (e == EACCES || e == EPERM)
            fprintf(stderr, CTL_PROG ": permission denied (socket %s)\n", path);
        else
            fprintf(stderr, CTL_PROG ": control socket %s: %s\n", path, strerror(e));
    }
    return e == EACCES || e == EPERM ? -EX_NOPERM : -EX_UNAVAILABLE;
}

/* Wait for fd to be ready for ev within the reply deadline.  0 or -1. */
static int daemon_wait(int fd, short ev, int64_t deadline_ms)
{
    for (;;) {
        struct pollfd p = { .fd = fd, .events = ev };
        struct timespec ts;
        int64_t now_ms, left;
        int n;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        left = deadline_ms - now_ms;
        if (left <= 0)
            return -1;
        n = poll(&p, 1, (int)(left > INT32_MAX ? INT32_MAX : left));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

/* Send line, take the reply.  0 with r filled (OK), or an exit code after
 * a one-line message (the daemon's ERR code, or one of ours). */
static int daemon_request(const struct ctl *c, const char *line, struct daemon_reply *r, int quiet)
{
    struct timespec ts;
    int64_t deadline;
    size_t cap = CTL_READ_CHUNK, off = 0, len = strlen(line);
    char *nl;
    int fd, code;

    memset(r, 0, sizeof *r);
    fd = daemon_connect(c, quiet);
    if (fd < 0)
        return -fd;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    deadline = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + CTL_DAEMON_TIMEOUT * 1000;
    while (off < len) {
        ssize_t n;

        if (daemon_wait(fd, POLLOUT, deadline) != 0)
            goto timeout;
        n = send(fd, line + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        /* The daemon may answer and close before reading (a refused
         * peer): its reply is still there to read. */
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
            break;
        if (n < 0)
            goto broken;
        off += (size_t)n;
    }
    r->buf = malloc(cap + 1);
    if (r->buf == NULL)
        goto oom;
    for (;;) {
        ssize_t n;

        if (r->len == cap) {
            char *nb;
            if (cap >= CTL_REPLY_MAX) {
                if (!quiet)
                    ctl_error("reply from the daemon too long", NULL);
                close(fd);
                daemon_reply_free(r);
                return EX_PROTOCOL;
            }
            cap *= 2;
            nb = realloc(r->buf, cap + 1);
            if (nb == NULL)
                goto oom;
            r->buf = nb;
        }
        if (daemon_wait(fd, POLLIN, deadline) != 0)
            goto timeout;
        n = recv(fd, r->buf + r->len, cap - r->len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto broken;
        if (n == 0)
            break;
        r->len += (size_t)n;
    }
    close(fd);
    r->buf[r->len] = '\0';
    nl = memchr(r->buf, '\n', r->len);
    if (nl == NULL || memchr(r->buf, '\0', r->len) != NULL) {
        if (!quiet)
            ctl_error("malformed reply from the daemon", NULL);
        daemon_reply_free(r);
        return EX_PROTOCOL;
    }
    *nl = '\0';
    r->payload = nl + 1;
    if (strcmp(r->buf, "OK") == 0 || strncmp(r->buf, "OK ", 3) == 0) {
        r->text = r->buf[2] == ' ' ? r->buf + 3 : "";
        return 0;
    }
    if (strncmp(r->buf, "ERR ", 4) == 0) {
        char *end;
        long v = strtol(r->buf + 4, &end, 10);

        code = v >= EX__BASE && v <= EX__MAX ? (int)v : EX_SOFTWARE;
        if (!quiet) {
            fputs(CTL_PROG ": ", stderr);
            text_str(stderr, *end == ' ' ? end + 1 : end);
            fputc('\n', stderr);
        }
        daemon_reply_free(r);
        return code;
    }
    if (!quiet)
        ctl_error("malformed reply from the daemon", NULL);
    daemon_reply_free(r);
    return EX_PROTOCOL;

timeout:
    if (!quiet)
        fprintf(stderr, CTL_PROG ": no answer from the daemon within %d s\n", CTL_DAEMON_TIMEOUT);
    close(fd);
    daemon_reply_free(r);
    return EX_TEMPFAIL;
broken:
    if (!quiet)
        fprintf(stderr, CTL_PROG ": control socket: %s\n", strerror(errno));
    close(fd);
    daemon_reply_free(r);
    return EX_IOERR;
oom:
    if (!quiet)
        ctl_error("out of memory", NULL);
    close(fd);
    daemon_reply_free(r);
    return EX_OSERR;
}

/*
 * A flat JSON object as the daemon writes it: string, number, true, false
 * and null values, no nesting.  fn(arg, key, value, is_string) for each
 * member; numbers and literals arrive as their text.  The key and value
 * buffers are reused.  0, or -1 when the text is not such an object.
 */
typedef void (*json_member_fn)(void *arg, const char *key, const char *value, int is_string);

static const char *json_skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
        p++;
    return p;
}

/* A JSON string at p (after the quote) into out (size outlen, truncated);
 * \u escapes become UTF-8.  Returns the position after the closing quote,
 * or NULL. */
static const char *json_parse_str(const char *p, char *out, size_t outlen)
{
    size_t o = 0;

    while (*p != '"') {
        uint32_t cp;
        char tmp[4];
        size_t n, i;

        if (*p == '\0')
            return NULL;
        if (*p != '\\') {
            tmp[0] = *p++;
            n = 1;
        } else {
            p++;
            switch (*p) {
            case '"': case '\\': case '/': tmp[0] = *p; n = 1; break;
            case 'b': tmp[0] = '\b'; n = 1; break;
            case 'f': tmp[0] = '\f'; n = 1; break;
            case 'n': tmp[0] = '\n'; n = 1; break;
            case 'r': tmp[0] = '\r'; n = 1; break;
            case 't': tmp[0] = '\t'; n = 1; break;
            case 'u':
                cp = 0;
                for (i = 1; i <= 4; i++) {
                    if (!isxdigit((unsigned char)p[i]))
                        return NULL;
                    cp = cp * 16 + (uint32_t)(isdigit((unsigned char)p[i]) ? p[i] - '0'
                                                    : (util_lower(p[i]) - 'a' + 10));
                }
                p += 4;
                /* Surrogates never come from the daemon: U+FFFD. */
                if (cp >= 0xD800 && cp <= 0xDFFF)
                    cp = 0xFFFD;
                if (cp < 0x80) {
                    tmp[0] = (char)cp;
                    n = 1;
                } else if (cp < 0x800) {
                    tmp[0] = (char)(0xC0 | (cp >> 6));
                    tmp[1] = (char)(0x80 | (cp & 0x3F));
                    n = 2;
                } else {
                    tmp[0] = (char)(0xE0 | (cp >> 12));
                    tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                    tmp[2] = (char)(0x80 | (cp & 0x3F));
                    n = 3;
                }
                break;
            default:
                return NULL;
            }
            p++;
        }
        for (i = 0; i < n; i++)
            if (o + 1 < outlen)
                out[o++] = tmp[i];
    }
    out[o] = '\0';
    return p + 1;
}

static int json_flat_object(const char *p, json_member_fn fn, void *arg)
{
    char key[CTL_JSON_KEY], value[CTL_ERR_SIZE + CTL_JSON_KEY];

    p = json_skip_ws(p);
    if (*p++ != '{')
        return -1;
    p = json_skip_ws(p);
    if (*p == '}')
        return 0;
    for (;;) {
        p = json_skip_ws(p);
        if (*p != '"' || (p = json_parse_str(p + 1, key, sizeof key)) == NULL)
            return -1;
        p = json_skip_ws(p);
        if (*p++ != ':')
            return -1;
        p = json_skip_ws(p);
        if (*p == '"') {
            if ((p = json_parse_str(p + 1, value, sizeof value)) == NULL)
                return -1;
            fn(arg, key, value, 1);
        } else {
            size_t n = strcspn(p, ",} \t\r\n");
            if (n == 0 || n >= sizeof value)
                return -1;
            memcpy(value, p, n);
            value[n] = '\0';
            p += n;
            fn(arg, key, value, 0);
        }
        p = json_skip_ws(p);
        if (*p == '}')
            return 0;
        if (*p++ != ',')
            return -1;
    }
}

/* A daemon command's "OK text": text, or {"reply":"text"} with --json. */
static void print_ok(struct ctl *c, const struct daemon_reply *r)
{
    if (c->json) {
        fputs("{\"reply\":", c->out);
        json_str(c->out, r->text);
        fputs("}\n", c->out);
    } else {
        text_str(c->out, r->text[0] != '\0' ? r->text : "OK");
        fputc('\n', c->out);
    }
}

/* Send "verb arg" and print the OK line.  0 or an exit code. */
static int daemon_simple(struct ctl *c, const char *verb, const char *arg)
{
    char line[CTL_LINE_MAX];
    struct daemon_reply r;
    int rc;

    if ((size_t)snprintf(line, sizeof line, "%s%s%s\n", verb, arg ? " " : "", arg ? arg : "") >=
        sizeof line) {
        ctl_error("argument too long", arg);
        return EX_USAGE;
    }
    rc = daemon_request(c, line, &r, 0);
    if (rc == 0)
        print_ok(c, &r);
    daemon_reply_free(&r);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Reading the index                                                   */
/* ------------------------------------------------------------------ */

/* Recipients of m into c->rcpt.  0, or an exit code after a message. */
static int ctl_rcpts_load(struct ctl *c, const struct qmsg *m, size_t *n)
{
    size_t need = m->nrcpt;
    int rc;

    *n = 0;
    if (need == 0)
        return 0;
    if (need > c->rcpt_cap) {
        struct qrcpt *r = realloc(c->rcpt, need * sizeof *r);
        if (r == NULL) {
            ctl_error("out of memory", NULL);
            return EX_OSERR;
        }
        c->rcpt = r;
        c->rcpt_cap = need;
    }
    rc = qdb_rcpt_list(c->db, m->qid, c->rcpt, need, n);
    if (rc == QDB_NOTFOUND) {
        /* Delivered and removed between our reads: nothing to show. */
        *n = 0;
        return 0;
    }
    if (rc != 0) {
        ctl_error("index read failed", m->qid);
        return EX_IOERR;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Message blocks (queue, show)                                        */
/* ------------------------------------------------------------------ */

static void print_rcpt_json(FILE *f, const struct qrcpt *r)
{
    fputs("{\"addr\":", f);
    json_str(f, r->addr);
    fputs(",\"domain\":", f);
    json_str(f, r->domain);
    fputs(",\"state\":", f);
    json_str(f, rcpt_state_name(r->state));
    fprintf(f, ",\"attempts\":%" PRIu32 ",\"last_try\":", r->attempts);
    json_time_or_null(f, r->last_try);
    fprintf(f, ",\"expiry\":%" PRId64 ",\"last_reply\":", r->expiry);
    json_str(f, r->last_reply);
    fputs(",\"orcpt\":", f);
    json_str(f, r->orcpt);
    fputs(",\"notify\":", f);
    print_flags(f, 1, (unsigned)r->notify, notify_names, NELEM(notify_names));
    fputs(",\"delivered\":", f);
    json_time_or_null(f, r->state == QRCPT_KEPT ? r->delivered : 0);
    fputs(",\"kept_until\":", f);
    json_time_or_null(f, r->state == QRCPT_KEPT ? r->kept_until : 0);
    fputc('}', f);
}

/* Does r belong in a listing restricted to domain (NULL: no restriction)? */
static int rcpt_selected(const struct qrcpt *r, const char *domain)
{
    return domain == NULL || strcasecmp(r->domain, domain) == 0;
}

/*
 * The JSON object of one message.  extended adds the fields `show` gives
 * (envelope details); the caller closes the object, so `show` can append
 * "headers".
 */
static void print_msg_json_open(FILE *f, const struct qmsg *m, const struct qrcpt *r, size_t n,
                                const char *domain, int extended)
{
    char iso[CTL_ISO_SIZE];
    int first = 1;
    size_t i;

    fmt_iso(m->arrival, iso);
    fputs("{\"qid\":", f);
    json_str(f, m->qid);
    fprintf(f, ",\"arrival\":%" PRId64 ",\"arrival_iso\":\"%s\",\"size\":%" PRIu64 ",\"sender\":",
            m->arrival, iso, m->size);
    json_str(f, m->sender);
    fputs(",\"flags\":", f);
    print_flags(f, 1, m->flags, msg_flag_names, NELEM(msg_flag_names));
    if (extended) {
        fputs(",\"body\":", f);
        json_str(f, body_name(m->body));
        fputs(",\"ret\":", f);
        json_str(f, ret_name(m->ret));
        fputs(",\"envid\":", f);
        json_str(f, m->envid);
        fputs(",\"client_addr\":", f);
        json_str(f, m->client_addr);
        fputs(",\"client_name\":", f);
        json_str(f, m->client_name);
        fputs(",\"helo\":", f);
        json_str(f, m->helo);
    }
    fputs(",\"recipients\":[", f);
    for (i = 0; i < n; i++) {
        if (!rcpt_selected(&r[i], domain))
            continue;
        if (!first)
            fputc(',', f);
        first = 0;
        print_rcpt_json(f, &r[i]);
    }
    fputc(']', f);
}

/*
 * mailq-like block:
 *   QID  ARRIVAL  SIZE  <sender>  flags
 *       state  attempts  <rcpt>  (last reply)
 */
static void print_msg_text(FILE *f, const struct qmsg *m, const struct qrcpt *r, size_t n,
                           const char *domain)
{
    char iso[CTL_ISO_SIZE];
    size_t i;

    fmt_iso(m->arrival, iso);
    fprintf(f, "%-12s  %s  %10" PRIu64 "  <", m->qid, iso, m->size);
    text_str(f, m->sender);
    fputc('>', f);
    if (m->flags & (QMSG_F_8BIT | QMSG_F_SMTPUTF8 | QMSG_F_DSN)) {
        fputs("  ", f);
        print_flags(f, 0, m->flags, msg_flag_names, NELEM(msg_flag_names));
    }
    fputc('\n', f);
    for (i = 0; i < n; i++) {
        if (!rcpt_selected(&r[i], domain))
            continue;
        fprintf(f, "    %-8s %4" PRIu32 "  <", rcpt_state_name(r[i].state), r[i].attempts);
        text_str(f, r[i].addr);
        fputc('>', f);
        if (r[i].last_reply[0] != '\0') {
            fputs("  (", f);
            text_str(f, r[i].last_reply);
            fputc(')', f);
        }
        fputc('\n', f);
    }
}

/* ------------------------------------------------------------------ */
/* queue [DOMAIN]                                                      */
/* ------------------------------------------------------------------ */

struct queue_listing {
    struct ctl *c;
    const char *domain;                 /* NULL: every message */
    long count;
    uint64_t bytes;
};

struct msg_page {
    struct qmsg *m;
    size_t n;
};

struct qid_page {
    char (*qid)[QID_SIZE];
    size_t n;
};

static int msg_page_add(void *arg, const struct qmsg *m)
{
    struct msg_page *p = arg;

    if (p->n >= CTL_PAGE)
        return 1;
    p->m[p->n++] = *m;
    return 0;
}

static int qid_page_add(void *arg, const char *qid)
{
    struct qid_page *p = arg;

    if (p->n >= CTL_PAGE)
        return 1;
    snprintf(p->qid[p->n++], QID_SIZE, "%s", qid);
    return 0;
}

static void queue_begin(struct queue_listing *q)
{
    if (q->c->json)
        fputs("{\"messages\":[", q->c->out);
}

/* One message of the listing.  0, or an exit code. */
static int queue_emit(struct queue_listing *q, const struct qmsg *m)
{
    struct ctl *c = q->c;
    size_t n;
    int rc;

    rc = ctl_rcpts_load(c, m, &n);
    if (rc != 0)
        return rc;
    /* Kept copies of delivered mail are not queued mail (summary and
     * replay show them): a message that stays only for them is left out. */
    if (m->flags & QMSG_F_KEPT) {
        size_t i;
        for (i = 0; i < n; i++)
            if (c->rcpt[i].state == QRCPT_PENDING || c->rcpt[i].state == QRCPT_QUARANTINED)
                break;
        if (i == n)
            return 0;
    }
    if (c->json) {
        fputs(q->count == 0 ? "\n " : ",\n ", c->out);
        print_msg_json_open(c->out, m, c->rcpt, n, q->domain, 0);
        fputc('}', c->out);
    } else {
        if (q->count > 0)
            fputc('\n', c->out);
        print_msg_text(c->out, m, c->rcpt, n, q->domain);
    }
    q->count++;
    q->bytes += m->size;
    return 0;
}

static void queue_end(struct queue_listing *q)
{
    FILE *f = q->c->out;

    if (q->c->json)
        fputs(q->count == 0 ? "]}\n" : "\n]}\n", f);
    else if (q->count == 0)
        fputs("queue is empty\n", f);
    else
        fprintf(f, "\n-- %ld message%s, %" PRIu64 " bytes\n", q->count, q->count == 1 ? "" : "s",
                q->bytes);
}

static int queue_all(struct queue_listing *q)
{
    struct ctl *c = q->c;
    struct msg_page page;
    char after[QID_SIZE] = "";
    int rc = 0;

    page.m = calloc(CTL_PAGE, sizeof *page.m);
    if (page.m == NULL) {
        ctl_error("out of memory", NULL);
        return EX_OSERR;
    }
    for (;;) {
        long got;
        size_t i;

        page.n = 0;
        got = qdb_msg_each(c->db, after, CTL_PAGE, msg_page_add, &page);
        if (got < 0) {
            ctl_error("index read failed", NULL);
            rc = EX_IOERR;
            break;
        }
        for (i = 0; i < page.n && rc == 0; i++)
            rc = queue_emit(q, &page.m[i]);
        if (rc != 0 || page.n < CTL_PAGE)
            break;
        snprintf(after, sizeof after, "%s", page.m[page.n - 1].qid);
    }
    free(page.m);
    return rc;
}

static int queue_domain(struct queue_listing *q)
{
    struct ctl *c = q->c;
    struct qid_page page;
    char after[QID_SIZE] = "";
    int rc = 0;

    page.qid = calloc(CTL_PAGE, sizeof *page.qid);
    if (page.qid == NULL) {
        ctl_error("out of memory", NULL);
        return EX_OSERR;
    }
    for (;;) {
        long got;
        size_t i;

        page.n = 0;
        got = qdb_dest_walk(c->db, q->domain, after, CTL_PAGE, qid_page_add, &page);
        if (got < 0) {
            ctl_error("index read failed", q->domain);
            rc = EX_IOERR;
            break;
        }
        for (i = 0; i < page.n && rc == 0; i++) {
            struct qmsg m;
            int r = qdb_msg_get(c->db, page.qid[i], &m);

            if (r == QDB_NOTFOUND)
                continue;       /* delivered since the walk */
            if (r != 0) {
                ctl_error("index read failed", page.qid[i]);
                rc = EX_IOERR;
                break;
            }
            rc = queue_emit(q, &m);
        }
        if (rc != 0 || page.n < CTL_PAGE)
            break;
        snprintf(after, sizeof after, "%s", page.qid[page.n - 1]);
    }
    free(page.qid);
    return rc;
}

/* Destination keys are served-domain names: lower case, no trailing dot. */
static void domain_normalize(char *d)
{
    size_t len = strlen(d);

    if (len > 1 && d[len - 1] == '.')
        d[len - 1] = '\0';
    util_lower_inplace(d);
}

/*
 * A destination the listing can name: a served domain, or one the index
 * has a record for (a sender's domain with notices waiting).  Anything else
 * is an error, not an empty queue: a typo must not read as "nothing
 * waits".  0, or an exit code after a message.
 */
static int domain_listable(struct ctl *c, const char *domain)
{
    struct qdest d;
    int rc;

    if (conf_domain_find(c->conf, domain) != NULL)
        return 0;
    rc = qdb_dest_get(c->db, domain, &d);
    if (rc == 0)
        return 0;
    if (rc != QDB_NOTFOUND) {
        ctl_error("index read failed", domain);
        return EX_IOERR;
    }
    fprintf(stderr, CTL_PROG ": unknown domain: ");
    text_str(stderr, domain);
    fprintf(stderr, " (not served here, nothing queued for it)\n");
    return EX_NOINPUT;
}

static int cmd_queue(struct ctl *c, int argc, char **argv)
{
    struct queue_listing q = { .c = c };
    char domain[SMTP_DOMAIN_MAX + 2];
    int rc;

    if (argc > 1) {
        if (strlen(argv[1]) >= sizeof domain - 1 || argv[1][0] == '\0') {
            ctl_error("not a domain", argv[1]);
            return EX_USAGE;
        }
        snprintf(domain, sizeof domain, "%s", argv[1]);
        domain_normalize(domain);
        q.domain = domain;
        rc = domain_listable(c, domain);
        if (rc != 0)
            return rc;
    }
    queue_begin(&q);
    rc = q.domain != NULL ? queue_domain(&q) : queue_all(&q);
    if (rc == 0)
        queue_end(&q);
    return rc;
}

/* ------------------------------------------------------------------ */
/* summary                                                             */
/* ------------------------------------------------------------------ */

/* The daemon's adaptive window and the primary host's limits, declared
 * (RFC 9422 LIMITS) or learned from its replies (dest_limits.h). */
struct dest_limits_row {
    int has;
    int concurrency, ceiling, adaptive;
    char host[SMTP_DOMAIN_MAX + 8];
    unsigned rcpt_max, mail_max, conn_max, rcptdomain_max;
    char rcpt_src[12], mail_src[12], conn_src[12];
};

static void limits_member(struct dest_limits_row *l, const char *key, const char *value,
                          int is_string)
{
    unsigned long v = is_string ? 0 : strtoul(value, NULL, 10);

    if (strcmp(key, "concurrency") == 0 && !is_string)
        l->concurrency = (int)v, l->has = 1;
    else if (strcmp(key, "ceiling") == 0 && !is_string)
        l->ceiling = (int)v;
    else if (strcmp(key, "adaptive") == 0 && !is_string)
        l->adaptive = strcmp(value, "true") == 0;
    else if (strcmp(key, "limits_host") == 0 && is_string)
        snprintf(l->host, sizeof l->host, "%s", value);
    else if (strcmp(key, "rcpt_max") == 0 && !is_string)
        l->rcpt_max = (unsigned)v;
    else if (strcmp(key, "mail_max") == 0 && !is_string)
        l->mail_max = (unsigned)v;
    else if (strcmp(key, "conn_max") == 0 && !is_string)
        l->conn_max = (unsigned)v;
    else if (strcmp(key, "rcptdomain_max") == 0 && !is_string)
        l->rcptdomain_max = (unsigned)v;
    else if (strcmp(key, "rcpt_max_source") == 0 && is_string)
        snprintf(l->rcpt_src, sizeof l->rcpt_src, "%s", value);
    else if (strcmp(key, "mail_max_source") == 0 && is_string)
        snprintf(l->mail_src, sizeof l->mail_src, "%s", value);
    else if (strcmp(key, "conn_max_source") == 0 && is_string)
        snprintf(l->conn_src, sizeof l->conn_src, "%s", value);
}

static void limits_json_one(FILE *f, const char *name, unsigned v, const char *src)
{
    fprintf(f, ",\"%s\":", name);
    if (v > 0)
        fprintf(f, "%u,\"%s_source\":\"%s\"", v, name, src);
    else
        fprintf(f, "null,\"%s_source\":null", name);
}

/* ,"concurrency":...: the summary and show-dest JSON members. */
static void limits_json(FILE *f, const struct dest_limits_row *l)
{
    if (!l->has) {
        fputs(",\"concurrency\":null,\"limits_host\":null", f);
        return;
    }
    fprintf(f, ",\"concurrency\":%d,\"concurrency_ceiling\":%d,\"adaptive\":%s,\"limits_host\":",
            l->concurrency, l->ceiling, l->adaptive ? "true" : "false");
    if (l->host[0])
        json_str(f, l->host);
    else
        fputs("null", f);
    limits_json_one(f, "rcpt_max", l->rcpt_max, l->rcpt_src);
    limits_json_one(f, "mail_max", l->mail_max, l->mail_src);
    limits_json_one(f, "conn_max", l->conn_max, l->conn_src);
    limits_json_one(f, "rcptdomain_max", l->rcptdomain_max, "declared");
}

static void limits_text_one(FILE *f, const char *name, unsigned v, const char *src)
{
    if (v > 0)
        fprintf(f, " %s %u (%s)", name, v, src);
}

/* "concurrency 6/16 adaptive, primary H: rcpt_max 2 (declared) ..." */
static void limits_text(FILE *f, const struct dest_limits_row *l)
{
    fprintf(f, "concurrency %d/%d %s", l->concurrency, l->ceiling,
            l->adaptive ? "adaptive" : "fixed");
    if (l->host[0] == '\0')
        return;
    fputs(", primary ", f);
    text_str(f, l->host);
    fputc(':', f);
    if (l->rcpt_max == 0 && l->mail_max == 0 && l->conn_max == 0 && l->rcptdomain_max == 0)
        fputs(" no limits known", f);
    limits_text_one(f, "rcpt_max", l->rcpt_max, l->rcpt_src);
    limits_text_one(f, "mail_max", l->mail_max, l->mail_src);
    limits_text_one(f, "conn_max", l->conn_max, l->conn_src);
    limits_text_one(f, "rcptdomain_max", l->rcptdomain_max, "declared");
}

struct dest_row {
    struct qdest d;
    int has_oldest;
    int64_t oldest;
    int live;                           /* state from the running daemon */
    int connections;                    /* its open connections (live only) */
    char gate[16];                      /* accept = "when-primary-down": the
                                           daemon's gate state, "" none */
    int64_t gate_since;                 /* since when, 0 unknown */
    struct dest_limits_row lim;         /* window and the primary's limits (live only) */
};

struct dest_list {
    struct dest_row *row;
    size_t n, cap;
    int oom;
};

static int dest_list_add(void *arg, const struct qdest *d)
{
    struct dest_list *l = arg;

    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct dest_row *r = realloc(l->row, cap * sizeof *r);
        if (r == NULL) {
            l->oom = 1;
            return 1;
        }
        l->row = r;
        l->cap = cap;
    }
    memset(&l->row[l->n], 0, sizeof l->row[l->n]);
    l->row[l->n++].d = *d;
    return 0;
}

static int first_qid(void *arg, const char *qid)
{
    snprintf(arg, QID_SIZE, "%s", qid);
    return 1;
}

/* Oldest first; domains with nothing waiting last, by name. */
static int dest_row_cmp(const void *a, const void *b)
{
    const struct dest_row *x = a, *y = b;

    if (x->has_oldest != y->has_oldest)
        return x->has_oldest ? -1 : 1;
    if (x->has_oldest && x->oldest != y->oldest)
        return x->oldest < y->oldest ? -1 : 1;
    return strcmp(x->d.domain, y->d.domain);
}

/* The arrival of the first QID waiting for row's domain.  0, or exit code. */
static int dest_row_oldest(struct ctl *c, struct dest_row *row)
{
    char qid[QID_SIZE] = "";
    struct qmsg m;
    long got;
    int rc;

    got = qdb_dest_walk(c->db, row->d.domain, "", 1, first_qid, qid);
    if (got < 0) {
        ctl_error("index read failed", row->d.domain);
        return EX_IOERR;
    }
    if (got == 0 || qid[0] == '\0')
        return 0;
    rc = qdb_msg_get(c->db, qid, &m);
    if (rc == 0)
        row->oldest = m.arrival;
    else if (rc == QDB_NOTFOUND)
        row->oldest = (int64_t)qid_time(qid);   /* just delivered: close enough */
    else {
        ctl_error("index read failed", qid);
        return EX_IOERR;
    }
    row->has_oldest = 1;
    return 0;
}

/*
 * With the daemon up, its view of each destination (state, next probe,
 * last error, open connections) is newer than the stored record; the
 * counters still come from the index.  No daemon: the stored record.
 */
struct live_dest {
    struct qdest d;
    int connections;
    int has_domain;
    int has_counts;                     /* the daemon sent messages/bytes */
    char gate[16];
    int64_t gate_since;
    struct dest_limits_row lim;
};

static int dest_state_parse(const char *s)
{
    if (strcmp(s, "up") == 0)
        return QDEST_UP;
    if (strcmp(s, "down") == 0)
        return QDEST_DOWN;
    if (strcmp(s, "held") == 0)
        return QDEST_HELD;
    return QDEST_UNKNOWN;
}

static void live_member(void *arg, const char *key, const char *value, int is_string)
{
    struct live_dest *l = arg;

    if (strcmp(key, "domain") == 0 && is_string) {
        snprintf(l->d.domain, sizeof l->d.domain, "%s", value);
        domain_normalize(l->d.domain);
        l->has_domain = 1;
    } else if (strcmp(key, "state") == 0 && is_string) {
        l->d.state = dest_state_parse(value);
    } else if (strcmp(key, "next_probe") == 0 && !is_string) {
        l->d.next_probe = strcmp(value, "null") == 0 ? 0 : strtoll(value, NULL, 10);
    } else if (strcmp(key, "last_error") == 0 && is_string) {
        snprintf(l->d.last_error, sizeof l->d.last_error, "%s", value);
    } else if (strcmp(key, "connections") == 0 && !is_string) {
        l->connections = (int)strtol(value, NULL, 10);
    } else if (strcmp(key, "messages") == 0 && !is_string) {
        l->d.nmsg = strtoull(value, NULL, 10);
        l->has_counts = 1;
    } else if (strcmp(key, "bytes") == 0 && !is_string) {
        l->d.nbytes = strtoull(value, NULL, 10);
    } else if (strcmp(key, "gate") == 0 && is_string) {
        snprintf(l->gate, sizeof l->gate, "%s", value);
    } else if (strcmp(key, "gate_since") == 0 && !is_string) {
        l->gate_since = strcmp(value, "null") == 0 ? 0 : strtoll(value, NULL, 10);
    } else {
        limits_member(&l->lim, key, value, is_string);
    }
}

static void summary_merge_live(struct ctl *c, struct dest_list *l)
{
    struct daemon_reply r;
    const char *p;

    if (c->conf->control_socket == NULL || daemon_request(c, "status\n", &r, 1) != 0)
        return;
    for (p = r.payload; *p != '\0';) {
        const char *nl = strchr(p, '\n');
        struct live_dest ld;
        struct dest_row *row = NULL;
        char *line;
        size_t i, n = nl ? (size_t)(nl - p) : strlen(p);

        memset(&ld, 0, sizeof ld);
        line = strndup(p, n);
        p += n + (nl ? 1 : 0);
        if (line == NULL)
            break;
        if (n == 0 || json_flat_object(line, live_member, &ld) != 0 || !ld.has_domain) {
            free(line);
            continue;
        }
        free(line);
        for (i = 0; i < l->n && row == NULL; i++)
            if (strcmp(l->row[i].d.domain, ld.d.domain) == 0)
                row = &l->row[i];
        if (row == NULL) {
            /* Known to the daemon, nothing stored yet: nothing waits. */
            struct qdest empty;
            memset(&empty, 0, sizeof empty);
            snprintf(empty.domain, sizeof empty.domain, "%s", ld.d.domain);
            if (dest_list_add(l, &empty) != 0)
                break;
            row = &l->row[l->n - 1];
        }
        row->live = 1;
        /* The daemon's counts come from the same index record, read
         * through the one function all its replies use; take them so
         * summary, ETRN, flush and /metrics agree to the message. */
        if (ld.has_counts) {
            row->d.nmsg = ld.d.nmsg;
            row->d.nbytes = ld.d.nbytes;
        }
        row->connections = ld.connections;
        snprintf(row->gate, sizeof row->gate, "%s", ld.gate);
        row->gate_since = ld.gate_since;
        row->lim = ld.lim;
        row->d.state = ld.d.state;
        row->d.next_probe = ld.d.next_probe;
        snprintf(row->d.last_error, sizeof row->d.last_error, "%s", ld.d.last_error);
    }
    daemon_reply_free(&r);
}

/* An ODMR domain (odmr = true) is never connected to: its state is
 * "odmr", waiting for its primary's ATRN, unless held. */
static const char *row_state_name(const struct ctl *c, const struct dest_row *r)
{
    const struct conf_domain *cd = conf_domain_find(c->conf, r->d.domain);
    if (cd != NULL && cd->odmr && r->d.state != QDEST_HELD)
        return "odmr";
    return dest_state_name(r->d.state);
}

static void summary_json(struct ctl *c, const struct dest_list *l)
{
    FILE *f = c->out;
    size_t i;

    fputs("{\"domains\":[", f);
    for (i = 0; i < l->n; i++) {
        const struct dest_row *r = &l->row[i];

        fputs(i == 0 ? "\n {\"domain\":" : ",\n {\"domain\":", f);
        json_str(f, r->d.domain);
        fprintf(f, ",\"messages\":%" PRIu64 ",\"bytes\":%" PRIu64, r->d.nmsg, r->d.nbytes);
        if (r->has_oldest)
            fprintf(f, ",\"oldest_arrival\":%" PRId64 ",\"oldest_age\":%" PRId64, r->oldest,
                    c->now > r->oldest ? c->now - r->oldest : 0);
        else
            fputs(",\"oldest_arrival\":null,\"oldest_age\":null", f);
        fputs(",\"state\":", f);
        json_str(f, row_state_name(c, r));
        fputs(",\"next_probe\":", f);
        json_time_or_null(f, r->d.next_probe);
        fprintf(f, ",\"kept_copies\":%ld", qdb_kept_count(c->db, r->d.domain, 0, 0, NULL, NULL));
        fputs(",\"last_error\":", f);
        json_str(f, r->d.last_error);
        if (r->gate[0] != '\0') {
            fputs(",\"gate\":", f);
            json_str(f, r->gate);
            fputs(",\"gate_since\":", f);
            json_time_or_null(f, r->gate_since);
        }
        limits_json(f, &r->lim);
        if (r->live)
            fprintf(f, ",\"source\":\"daemon\",\"connections\":%d}", r->connections);
        else
            fputs(",\"source\":\"index\",\"connections\":null}", f);
    }
    long nh = qdb_held_count(c->db);
    struct qdb_kept_stats ks;
    if (qdb_kept_stats(c->db, &ks) != 0)
        memset(&ks, 0, sizeof ks);
    fprintf(f, "%s],\"quarantine_messages\":%ld,\"holds\":", l->n == 0 ? "" : "\n", nh > 0 ? nh : 0);
    /* Holds and windows with where they came from (maint.h). */
    if (maint_listing(f, MAINT_LIST_ARRAY, c->db, c->conf, c->now, 0) != 0)
        fputs("null", f);
    fprintf(f, ",\"kept\":{\"copies\":%ld,\"messages\":%ld,\"bytes\":%" PRIu64 "}}\n",
            ks.copies, ks.messages, ks.bytes);
}

/* Kept copies of delivered mail (keep_delivered), apart from the queue:
 * per domain, then the totals (what dropping them would give back). */
static void summary_kept_text(struct ctl *c, const struct dest_list *l)
{
    struct qdb_kept_stats ks;

    if (qdb_kept_stats(c->db, &ks) != 0 || ks.copies <= 0)
        return;
    for (size_t i = 0; i < l->n; i++) {
        long n = qdb_kept_count(c->db, l->row[i].d.domain, 0, 0, NULL, NULL);
        if (n <= 0)
            continue;
        fputs("kept ", c->out);
        text_str(c->out, l->row[i].d.domain);
        fprintf(c->out, ": %ld cop%s of delivered mail (mxkeepctl replay)\n", n,
                n == 1 ? "y" : "ies");
    }
    fprintf(c->out, "kept: %ld cop%s in %ld message%s kept only for them, %" PRIu64 " bytes\n",
            ks.copies, ks.copies == 1 ? "y" : "ies", ks.messages, ks.messages == 1 ? "" : "s",
            ks.bytes);
}

static void summary_text(struct ctl *c, const struct dest_list *l)
{
    FILE *f = c->out;
    size_t i;

    if (l->n == 0) {
        fputs("no destinations\n", f);
        return;
    }
    fprintf(f, "%-30s %8s %12s %7s %-7s %-20s %s\n", "DOMAIN", "MSGS", "BYTES", "OLDEST",
            "STATE", "NEXT PROBE", "LAST ERROR");
    for (i = 0; i < l->n; i++) {
        const struct dest_row *r = &l->row[i];
        char age[CTL_AGE_SIZE] = "-";
        char probe[CTL_ISO_SIZE] = "-";

        if (r->has_oldest)
            fmt_age(c->now - r->oldest, age);
        if (r->d.next_probe != 0)
            fmt_iso(r->d.next_probe, probe);
        /* Pad by hand: text_str may widen the name with escapes. */
        text_str(f, r->d.domain);
        fprintf(f, "%*s", strlen(r->d.domain) < 30 ? (int)(30 - strlen(r->d.domain)) : 0, "");
        fprintf(f, " %8" PRIu64 " %12" PRIu64 " %7s %-7s %-20s ", r->d.nmsg, r->d.nbytes, age,
                row_state_name(c, r), probe);
        text_str(f, r->d.last_error[0] != '\0' ? r->d.last_error : "-");
        fputc('\n', f);
    }
    /* Gated domains (accept = "when-primary-down"): the gate, apart, so
     * the table above keeps its columns. */
    for (i = 0; i < l->n; i++) {
        const struct dest_row *r = &l->row[i];
        char since[CTL_ISO_SIZE] = "-";

        if (r->gate[0] == '\0')
            continue;
        if (r->gate_since != 0)
            fmt_iso(r->gate_since, since);
        fputs("gate ", f);
        text_str(f, r->d.domain);
        fprintf(f, ": %s since %s\n", r->gate, since);
    }
    /* The primaries' limits and the adaptive window, apart too, for the
     * destinations the daemon has connected to. */
    for (i = 0; i < l->n; i++) {
        const struct dest_limits_row *lr = &l->row[i].lim;
        if (!lr->has || lr->host[0] == '\0')
            continue;
        fputs("limits ", f);
        text_str(f, l->row[i].d.domain);
        fputs(": ", f);
        limits_text(f, lr);
        fputc('\n', f);
    }
    long nh = qdb_held_count(c->db);
    if (nh > 0)
        fprintf(f, "quarantine: %ld message%s (mxkeepctl quarantine list)\n", nh,
                nh == 1 ? "" : "s");
    summary_kept_text(c, l);
    /* Holds and windows with where they came from (maint.h): a forgotten
     * hold shows here. */
    maint_listing(f, MAINT_LIST_SUMMARY, c->db, c->conf, c->now, 0);
}

/* Every destination: the index's records, their oldest message, and the
 * daemon's live view when it runs.  0, or an exit code. */
static int dest_list_load(struct ctl *c, struct dest_list *lp)
{
    struct dest_list l = *lp;
    long got;
    int rc = 0;
    size_t i;

    /* The destinations are the served domains: few, so they fit in memory
     * (and they must, to be sorted). */
    got = qdb_dest_each(c->db, dest_list_add, &l);
    if (l.oom) {
        ctl_error("out of memory", NULL);
        rc = EX_OSERR;
    } else if (got < 0) {
        ctl_error("index read failed", NULL);
        rc = EX_IOERR;
    }
    for (i = 0; i < l.n && rc == 0; i++)
        rc = dest_row_oldest(c, &l.row[i]);
    if (rc == 0) {
        summary_merge_live(c, &l);
        if (l.oom) {
            ctl_error("out of memory", NULL);
            rc = EX_OSERR;
        }
    }
    *lp = l;
    return rc;
}

/* show-dest DOMAIN: one destination, with the adaptive window and what
 * its primary declared or taught us. */
static int cmd_show_dest(struct ctl *c, int argc, char **argv)
{
    struct dest_list l = { 0 };
    char want[SMTP_DOMAIN_MAX + 1];
    const struct dest_row *r = NULL;
    int rc;

    (void)argc;
    snprintf(want, sizeof want, "%s", argv[1]);
    domain_normalize(want);
    rc = dest_list_load(c, &l);
    for (size_t i = 0; rc == 0 && i < l.n && r == NULL; i++)
        if (strcasecmp(l.row[i].d.domain, want) == 0)
            r = &l.row[i];
    if (rc == 0 && r == NULL) {
        ctl_error("no such destination", argv[1]);
        rc = EX_NOINPUT;
    }
    if (rc == 0 && c->json) {
        FILE *f = c->out;
        fputs("{\"domain\":", f);
        json_str(f, r->d.domain);
        fprintf(f, ",\"messages\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"state\":", r->d.nmsg,
                r->d.nbytes);
        json_str(f, dest_state_name(r->d.state));
        fputs(",\"next_probe\":", f);
        json_time_or_null(f, r->d.next_probe);
        fputs(",\"last_error\":", f);
        json_str(f, r->d.last_error);
        limits_json(f, &r->lim);
        if (r->live)
            fprintf(f, ",\"source\":\"daemon\",\"connections\":%d}\n", r->connections);
        else
            fputs(",\"source\":\"index\",\"connections\":null}\n", f);
    } else if (rc == 0) {
        FILE *f = c->out;
        char probe[CTL_ISO_SIZE] = "-";
        if (r->d.next_probe != 0)
            fmt_iso(r->d.next_probe, probe);
        fputs("domain: ", f);
        text_str(f, r->d.domain);
        fprintf(f, "\nmessages: %" PRIu64 "\nbytes: %" PRIu64 "\nstate: %s\nnext probe: %s\n",
                r->d.nmsg, r->d.nbytes, dest_state_name(r->d.state), probe);
        fputs("last error: ", f);
        text_str(f, r->d.last_error[0] ? r->d.last_error : "-");
        fputc('\n', f);
        if (r->live && r->lim.has) {
            fprintf(f, "connections: %d\n", r->connections);
            limits_text(f, &r->lim);
            fputc('\n', f);
        } else {
            fputs("connections: - (daemon not running)\n", f);
        }
    }
    free(l.row);
    return rc;
}

static int cmd_summary(struct ctl *c, int argc, char **argv)
{
    struct dest_list l = { 0 };
    int rc = dest_list_load(c, &l);

    (void)argc;
    (void)argv;
    if (rc == 0) {
        if (l.n > 1)
            qsort(l.row, l.n, sizeof *l.row, dest_row_cmp);
        if (c->json)
            summary_json(c, &l);
        else
            summary_text(c, &l);
    }
    free(l.row);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Bodies: cat, show                                                   */
/* ------------------------------------------------------------------ */

/* Receives body octets in order; returns non-zero to stop reading. */
typedef int (*body_sink_fn)(void *arg, const void *buf, size_t n);

static int body_read_inline(struct ctl *c, const struct qmsg *m, body_sink_fn sink, void *arg)
{
    size_t cap = m->size > 0 ? (size_t)m->size : 1;
    char *buf = NULL;
    int tries, rc = EX_IOERR;

    for (tries = 0; tries < CTL_BODY_TRIES; tries++) {
        size_t len = cap;
        char *nbuf = realloc(buf, cap);
        int r;

        if (nbuf == NULL) {
            ctl_error("out of memory", NULL);
            rc = EX_OSERR;
            break;
        }
        buf = nbuf;
        r = qdb_body_get(c->db, m->qid, buf, &len);
        if (r == 0) {
            sink(arg, buf, len);
            rc = 0;
            break;
        }
        if (r == QDB_NOTFOUND) {
            ctl_error("body missing from the index", m->qid);
            rc = EX_NOINPUT;
            break;
        }
        if (len <= cap) {
            ctl_error("index read failed", m->qid);
            break;
        }
        cap = len;
    }
    if (tries == CTL_BODY_TRIES)
        ctl_error("body keeps growing", m->qid);
    free(buf);
    return rc;
}

static int body_read_file(struct ctl *c, const struct qmsg *m, body_sink_fn sink, void *arg)
{
    char path[CTL_PATH_SIZE];
    size_t qlen = strlen(m->qid);
    char *buf;
    int fd, rc = 0;

    if (!qid_valid(m->qid) || qlen < CTL_QID_SUFFIX) {
        ctl_error("malformed QID in the index", m->qid);
        return EX_IOERR;
    }
    if ((size_t)snprintf(path, sizeof path, "%s/msg/%s/%s", c->conf->spool,
                         m->qid + qlen - CTL_QID_SUFFIX, m->qid) >= sizeof path) {
        ctl_error("spool path too long", c->conf->spool);
        return EX_IOERR;
    }
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        fprintf(stderr, CTL_PROG ": %s: %s\n", path, strerror(e));
        return e == ENOENT ? EX_NOINPUT : e == EACCES ? EX_NOPERM : EX_IOERR;
    }
    buf = malloc(CTL_READ_CHUNK);
    if (buf == NULL) {
        close(fd);
        ctl_error("out of memory", NULL);
        return EX_OSERR;
    }
    for (;;) {
        ssize_t got = read(fd, buf, CTL_READ_CHUNK);

        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            fprintf(stderr, CTL_PROG ": %s: %s\n", path, strerror(errno));
            rc = EX_IOERR;
            break;
        }
        if (got == 0 || sink(arg, buf, (size_t)got) != 0)
            break;
    }
    free(buf);
    close(fd);
    return rc;
}

static int body_read(struct ctl *c, const struct qmsg *m, body_sink_fn sink, void *arg)
{
    if (m->flags & QMSG_F_INLINE)
        return body_read_inline(c, m, sink, arg);
    return body_read_file(c, m, sink, arg);
}

/* QIDs are upper-case base32; accept what a human retypes.  0, or -1
 * when arg is no QID. */
static int qid_normalize(const char *arg, char qid[QID_SIZE])
{
    size_t i, len = strlen(arg);

    if (len != QID_LEN)
        return -1;
    for (i = 0; i < len; i++)
        qid[i] = (char)toupper((unsigned char)arg[i]);
    qid[len] = '\0';
    return qid_valid(qid) ? 0 : -1;
}

/* Look up the QID argument.  0 with *m filled, or an exit code. */
static int ctl_msg_lookup(struct ctl *c, const char *arg, struct qmsg *m)
{
    char qid[QID_SIZE];
    int rc;

    if (qid_normalize(arg, qid) != 0) {
        ctl_error("not a queue ID", arg);
        return EX_USAGE;
    }
    rc = qdb_msg_get(c->db, qid, m);
    if (rc == QDB_NOTFOUND) {
        ctl_error("no such message", qid);
        return EX_NOINPUT;
    }
    if (rc != 0) {
        ctl_error("index read failed", qid);
        return EX_IOERR;
    }
    return 0;
}

static int cat_sink(void *arg, const void *buf, size_t n)
{
    FILE *f = arg;

    return fwrite(buf, 1, n, f) != n;
}

static int cmd_cat(struct ctl *c, int argc, char **argv)
{
    struct qmsg m;
    int rc = ctl_msg_lookup(c, argv[1], &m);

    if (rc != 0)
        return rc;
    return body_read(c, &m, cat_sink, c->out);
}

/*
 * Where the header block of buf ends: 1 and *end = octets of header lines
 * (the empty line excluded) when an empty line is found, else 0.  Lines may
 * end in CRLF (as stored) or LF.  Pure.
 */
static int header_end(const char *buf, size_t len, size_t from, size_t *end)
{
    size_t i;

    if (from == 0 && ((len >= 1 && buf[0] == '\n') ||
                      (len >= 2 && buf[0] == '\r' && buf[1] == '\n'))) {
        *end = 0;
        return 1;
    }
    for (i = from; i < len; i++) {
        if (buf[i] != '\n' || i + 1 >= len)
            continue;
        if (buf[i + 1] == '\n' || (buf[i + 1] == '\r' && i + 2 < len && buf[i + 2] == '\n')) {
            *end = i + 1;
            return 1;
        }
    }
    return 0;
}

struct header_buf {
    char *buf;
    size_t len;
    int done;                           /* empty line seen */
    int truncated;                      /* CTL_HEADER_MAX reached first */
    int oom;
};

static int header_sink(void *arg, const void *data, size_t n)
{
    struct header_buf *h = arg;
    size_t from = h->len > 2 ? h->len - 2 : 0, take = n, end;
    char *nb;

    if (h->len + take > CTL_HEADER_MAX)
        take = CTL_HEADER_MAX - h->len;
    nb = realloc(h->buf, h->len + take + 1);
    if (nb == NULL) {
        h->oom = 1;
        return 1;
    }
    h->buf = nb;
    memcpy(h->buf + h->len, data, take);
    h->len += take;
    if (header_end(h->buf, h->len, from, &end)) {
        h->len = end;
        h->done = 1;
        return 1;
    }
    if (h->len >= CTL_HEADER_MAX) {
        h->truncated = 1;
        return 1;
    }
    return 0;
}

static void show_text(struct ctl *c, const struct qmsg *m, const struct qrcpt *r, size_t n,
                      const struct header_buf *h)
{
    FILE *f = c->out;
    char iso[CTL_ISO_SIZE];
    size_t i;

    fmt_iso(m->arrival, iso);
    fprintf(f, "qid:          %s\n", m->qid);
    fprintf(f, "arrival:      %s (%" PRId64 ")\n", iso, m->arrival);
    fprintf(f, "size:         %" PRIu64 "\n", m->size);
    fputs("sender:       <", f);
    text_str(f, m->sender);
    fputs(">\nflags:        ", f);
    print_flags(f, 0, m->flags, msg_flag_names, NELEM(msg_flag_names));
    fprintf(f, "\nbody:         %s\n", body_name(m->body));
    if (m->ret != SMTP_RET_NONE)
        fprintf(f, "ret:          %s\n", ret_name(m->ret));
    if (m->envid[0] != '\0') {
        fputs("envid:        ", f);
        text_str(f, m->envid);
        fputc('\n', f);
    }
    /* Notices we made ourselves have no client. */
    if (m->client_addr[0] != '\0') {
        fputs("client:       ", f);
        text_str(f, m->client_name[0] != '\0' ? m->client_name : "unknown");
        fputs(" [", f);
        text_str(f, m->client_addr);
        fputs("]\nhelo:         ", f);
        text_str(f, m->helo);
        fputc('\n', f);
    }
    for (i = 0; i < n; i++) {
        char when[CTL_ISO_SIZE] = "never";

        if (r[i].last_try != 0)
            fmt_iso(r[i].last_try, when);
        fputs("recipient:    <", f);
        text_str(f, r[i].addr);
        fputs(">\n  domain:     ", f);
        text_str(f, r[i].domain);
        fprintf(f, "\n  state:      %s\n  attempts:   %" PRIu32 "\n  last try:   %s\n",
                rcpt_state_name(r[i].state), r[i].attempts, when);
        fmt_iso(r[i].expiry, when);
        fprintf(f, "  expiry:     %s\n", when);
        if (r[i].state == QRCPT_KEPT) {
            char until[CTL_ISO_SIZE];
            fmt_iso(r[i].delivered, when);
            fmt_iso(r[i].kept_until, until);
            fprintf(f, "  delivered:  %s (copy kept until %s)\n", when, until);
        }
        if (r[i].orcpt[0] != '\0') {
            fputs("  orcpt:      ", f);
            text_str(f, r[i].orcpt);
            fputc('\n', f);
        }
        if (r[i].notify != 0) {
            fputs("  notify:     ", f);
            print_flags(f, 0, (unsigned)r[i].notify, notify_names, NELEM(notify_names));
            fputc('\n', f);
        }
        if (r[i].last_reply[0] != '\0') {
            fputs("  last reply: ", f);
            text_str(f, r[i].last_reply);
            fputc('\n', f);
        }
    }
    fputs("\n", f);
    text_strn(f, h->buf, h->len, 1);
    if (h->len > 0 && h->buf[h->len - 1] != '\n')
        fputc('\n', f);
    if (h->truncated)
        fprintf(f, "[headers truncated at %d octets]\n", CTL_HEADER_MAX);
}

static int cmd_show(struct ctl *c, int argc, char **argv)
{
    struct header_buf h = { 0 };
    struct qmsg m;
    size_t n;
    int rc;

    rc = ctl_msg_lookup(c, argv[1], &m);
    if (rc == 0)
        rc = ctl_rcpts_load(c, &m, &n);
    if (rc == 0)
        rc = body_read(c, &m, header_sink, &h);
    if (rc == 0 && h.oom) {
        ctl_error("out of memory", NULL);
        rc = EX_OSERR;
    }
    if (rc == 0) {
        if (c->json) {
            print_msg_json_open(c->out, &m, c->rcpt, n, NULL, 1);
            fputs(",\"headers\":", c->out);
            json_strn(c->out, h.buf != NULL ? h.buf : "", h.len);
            fprintf(c->out, ",\"headers_truncated\":%s}\n", h.truncated ? "true" : "false");
        } else {
            show_text(c, &m, c->rcpt, n, &h);
        }
    }
    free(h.buf);
    return rc;
}

/* ------------------------------------------------------------------ */
/* count                                                               */
/* ------------------------------------------------------------------ */

static int cmd_count(struct ctl *c, int argc, char **argv)
{
    long n = qdb_msg_count(c->db);

    if (n < 0) {
        ctl_error("index read failed", NULL);
        return EX_IOERR;
    }
    if (c->json)
        fprintf(c->out, "{\"count\":%ld}\n", n);
    else
        fprintf(c->out, "%ld\n", n);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Commands through the daemon                                         */
/* ------------------------------------------------------------------ */

/* A domain argument as the daemon will see it: one word, printable. */
static int arg_domain_ok(const char *arg)
{
    size_t i, len = strlen(arg);

    if (len == 0 || len > SMTP_DOMAIN_MAX + 1)
        return 0;
    for (i = 0; i < len; i++)
        if ((unsigned char)arg[i] <= ' ' || (unsigned char)arg[i] >= 0x7F)
            return 0;
    return 1;
}

static int cmd_domain_verb(struct ctl *c, const char *verb, const char *domain)
{
    if (!arg_domain_ok(domain)) {
        ctl_error("not a domain", domain);
        return EX_USAGE;
    }
    return daemon_simple(c, verb, domain);
}

static int cmd_flush(struct ctl *c, int argc, char **argv)
{
    if (c->all != (argc == 1)) {
        fprintf(stderr, CTL_PROG ": usage: " CTL_PROG " flush DOMAIN | flush --all\n");
        return EX_USAGE;
    }
    if (c->all)
        return daemon_simple(c, "flush", "--all");
    return cmd_domain_verb(c, "flush", argv[1]);
}

static int cmd_hold(struct ctl *c, int argc, char **argv)
{
    return cmd_domain_verb(c, argv[0], argv[1]);
}

static int cmd_delete(struct ctl *c, int argc, char **argv)
{
    const char *domain = c->domain;
    char qid[QID_SIZE];

    if (argc == 2 && domain == NULL && !c->yes) {
        if (qid_normalize(argv[1], qid) != 0) {
            ctl_error("not a queue ID", argv[1]);
            return EX_USAGE;
        }
        return daemon_simple(c, "delete", qid);
    }
    if (domain == NULL || argc != 1) {
        fprintf(stderr, CTL_PROG ": usage: " CTL_PROG " delete QID | delete --domain DOMAIN --yes\n");
        return EX_USAGE;
    }
    if (!c->yes) {
        fprintf(stderr, CTL_PROG ": delete --domain removes every message waiting for %s "
                        "without notice; add --yes to do it\n", domain);
        return EX_USAGE;
    }
    return cmd_domain_verb(c, "delete-domain", domain);
}

static int cmd_bounce(struct ctl *c, int argc, char **argv)
{
    char qid[QID_SIZE];

    if (qid_normalize(argv[1], qid) != 0) {
        ctl_error("not a queue ID", argv[1]);
        return EX_USAGE;
    }
    return daemon_simple(c, "bounce", qid);
}

static int cmd_reload(struct ctl *c, int argc, char **argv)
{
    return daemon_simple(c, "reload", NULL);
}

struct stats_text {
    FILE *f;
};

static void stats_member(void *arg, const char *key, const char *value, int is_string)
{
    struct stats_text *s = arg;

    text_str(s->f, key);
    fprintf(s->f, "%*s ", strlen(key) < CTL_STATS_COL ? (int)(CTL_STATS_COL - strlen(key)) : 0, "");
    text_str(s->f, value);
    fputc('\n', s->f);
}

static int cmd_stats(struct ctl *c, int argc, char **argv)
{
    struct daemon_reply r;
    struct stats_text s = { c->out };
    int rc = daemon_request(c, "stats\n", &r, 0);

    if (rc != 0)
        return rc;
    if (c->json) {
        /* The daemon's object, as sent: one line. */
        fputs(r.payload, c->out);
    } else if (json_flat_object(r.payload, stats_member, &s) != 0) {
        ctl_error("malformed stats from the daemon", NULL);
        rc = EX_PROTOCOL;
    }
    daemon_reply_free(&r);
    return rc;
}

/* map compile FILE [-o OUT]: the list FILE into the lmdb map OUT
 * (default FILE.lmdb), written beside OUT and renamed over it. */
static int cmd_map(struct ctl *c, int argc, char **argv)
{
    char err[CTL_ERR_SIZE], outbuf[CTL_PATH_SIZE];
    const char *src = argv[2], *out = c->output;
    struct timespec t0, t1;
    size_t n = 0;

    (void)argc;
    if (strcmp(argv[1], "compile") != 0) {
        fprintf(stderr, CTL_PROG ": map: unknown verb ");
        text_str(stderr, argv[1]);
        fprintf(stderr, " (want: map compile FILE [-o OUT])\n");
        return EX_USAGE;
    }
    if (out == NULL) {
        if ((size_t)snprintf(outbuf, sizeof outbuf, "%s.lmdb", src) >= sizeof outbuf) {
            ctl_error("path too long", src);
            return EX_USAGE;
        }
        out = outbuf;
    }
    if (access(src, R_OK) != 0) {
        fprintf(stderr, CTL_PROG ": %s: %s\n", src, strerror(errno));
        return EX_NOINPUT;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (table_lmdb_compile(src, out, &n, err, sizeof err) != 0) {
        fprintf(stderr, CTL_PROG ": %s\n", err);
        /* A list line at fault says "file:line:"; anything else is the
         * map's side (directory, space). */
        return strncmp(err, src, strlen(src)) == 0 && err[strlen(src)] == ':' &&
                       err[strlen(src) + 1] >= '0' && err[strlen(src) + 1] <= '9'
                   ? EX_DATAERR
                   : EX_CANTCREAT;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (c->json) {
        fputs("{\"map\":", c->out);
        json_strn(c->out, out, strlen(out));
        fprintf(c->out, ",\"entries\":%zu,\"seconds\":%.3f}\n", n, secs);
    } else {
        text_str(c->out, out);
        fprintf(c->out, ": %zu entries, compiled in %.3f s\n", n, secs);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* cluster summary                                                     */
/* ------------------------------------------------------------------ */

/* One row of the daemon's cluster-summary: a node and one destination
 * (or none: a node with no destination known). */
struct fleet_row {
    char node[CTL_JSON_KEY];
    int stale;
    int64_t age, now;
    int has_domain;
    char domain[SMTP_DOMAIN_MAX + 1];
    uint64_t nmsg, nbytes;
    int has_oldest;
    int64_t oldest;
    char state[CTL_JSON_KEY];
    char last_error[CTL_ERR_SIZE];
};

static void fleet_member(void *arg, const char *key, const char *value, int is_string)
{
    struct fleet_row *r = arg;

    if (strcmp(key, "node") == 0 && is_string)
        snprintf(r->node, sizeof r->node, "%s", value);
    else if (strcmp(key, "stale") == 0 && !is_string)
        r->stale = strcmp(value, "true") == 0;
    else if (strcmp(key, "age") == 0 && !is_string)
        r->age = strtoll(value, NULL, 10);
    else if (strcmp(key, "now") == 0 && !is_string)
        r->now = strtoll(value, NULL, 10);
    else if (strcmp(key, "domain") == 0 && is_string) {
        snprintf(r->domain, sizeof r->domain, "%s", value);
        r->has_domain = 1;
    } else if (strcmp(key, "messages") == 0 && !is_string)
        r->nmsg = strtoull(value, NULL, 10);
    else if (strcmp(key, "bytes") == 0 && !is_string)
        r->nbytes = strtoull(value, NULL, 10);
    else if (strcmp(key, "oldest") == 0 && !is_string && strcmp(value, "null") != 0) {
        r->oldest = strtoll(value, NULL, 10);
        r->has_oldest = 1;
    } else if (strcmp(key, "state") == 0 && is_string)
        snprintf(r->state, sizeof r->state, "%s", value);
    else if (strcmp(key, "last_error") == 0 && is_string)
        snprintf(r->last_error, sizeof r->last_error, "%s", value);
}

/* The fleet's total per destination, over the nodes that are not stale. */
struct fleet_total {
    char domain[SMTP_DOMAIN_MAX + 1];
    uint64_t nmsg, nbytes;
    int nodes;
};

static int fleet_total_cmp(const void *a, const void *b)
{
    return strcmp(((const struct fleet_total *)a)->domain, ((const struct fleet_total *)b)->domain);
}

static void cluster_summary_json(struct ctl *c, const struct fleet_row *row, size_t n,
                                 const struct fleet_total *tot, size_t ntot)
{
    FILE *f = c->out;
    size_t i, nodes = 0;

    fputs("{\"nodes\":[", f);
    for (i = 0; i < n; i++) {
        const struct fleet_row *r = &row[i];
        int first = i == 0 || strcmp(row[i - 1].node, r->node) != 0;
        int last = i + 1 == n || strcmp(row[i + 1].node, r->node) != 0;

        if (first) {
            fputs(nodes++ == 0 ? "\n {\"node\":" : ",\n {\"node\":", f);
            json_str(f, r->node);
            fprintf(f, ",\"stale\":%s,\"age\":%" PRId64 ",\"destinations\":[",
                    r->stale ? "true" : "false", r->age);
        }
        if (r->has_domain) {
            fputs(first ? "{\"domain\":" : ",{\"domain\":", f);
            json_str(f, r->domain);
            fprintf(f, ",\"messages\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"oldest_arrival\":",
                    r->nmsg, r->nbytes);
            if (r->has_oldest)
                fprintf(f, "%" PRId64, r->oldest);
            else
                fputs("null", f);
            fputs(",\"state\":", f);
            json_str(f, r->state);
            fputs(",\"last_error\":", f);
            json_str(f, r->last_error);
            fputc('}', f);
        }
        if (last)
            fputs("]}", f);
    }
    fputs(nodes == 0 ? "],\"destinations\":[" : "\n],\"destinations\":[", f);
    for (i = 0; i < ntot; i++) {
        fputs(i == 0 ? "\n {\"domain\":" : ",\n {\"domain\":", f);
        json_str(f, tot[i].domain);
        fprintf(f, ",\"messages\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"nodes\":%d}", tot[i].nmsg,
                tot[i].nbytes, tot[i].nodes);
    }
    fputs(ntot == 0 ? "]}\n" : "\n]}\n", f);
}

static void cluster_summary_text(struct ctl *c, const struct fleet_row *row, size_t n,
                                 const struct fleet_total *tot, size_t ntot)
{
    FILE *f = c->out;
    size_t i;

    if (n == 0) {
        fputs("no nodes\n", f);
        return;
    }
    fprintf(f, "%-16s %-12s %-30s %8s %12s %7s %s\n", "NODE", "STATUS", "DOMAIN", "MSGS",
            "BYTES", "OLDEST", "STATE");
    for (i = 0; i < n; i++) {
        const struct fleet_row *r = &row[i];
        char age[CTL_AGE_SIZE], status[CTL_AGE_SIZE + 8], oldest[CTL_AGE_SIZE] = "-";

        fmt_age(r->age, age);
        snprintf(status, sizeof status, "%s %s", r->stale ? "STALE" : "ok", age);
        if (r->has_oldest)
            fmt_age(r->now - r->oldest, oldest);
        text_str(f, r->node);
        fprintf(f, "%*s %-12s ", strlen(r->node) < 16 ? (int)(16 - strlen(r->node)) : 0, "",
                status);
        if (!r->has_domain) {
            fputs("-\n", f);
            continue;
        }
        text_str(f, r->domain);
        fprintf(f, "%*s %8" PRIu64 " %12" PRIu64 " %7s %s\n",
                strlen(r->domain) < 30 ? (int)(30 - strlen(r->domain)) : 0, "", r->nmsg,
                r->nbytes, oldest, r->state);
    }
    fprintf(f, "\nfleet (nodes not stale):\n%-30s %8s %12s %5s\n", "DOMAIN", "MSGS", "BYTES",
            "NODES");
    for (i = 0; i < ntot; i++) {
        text_str(f, tot[i].domain);
        fprintf(f, "%*s %8" PRIu64 " %12" PRIu64 " %5d\n",
                strlen(tot[i].domain) < 30 ? (int)(30 - strlen(tot[i].domain)) : 0, "",
                tot[i].nmsg, tot[i].nbytes, tot[i].nodes);
    }
}

static int cmd_cluster(struct ctl *c, int argc, char **argv)
{
    struct daemon_reply r;
    struct fleet_row *row = NULL;
    struct fleet_total *tot = NULL;
    size_t n = 0, cap = 0, ntot = 0, i, j;
    const char *p;
    int rc;

    if (strcmp(argv[1], "summary") != 0) {
        fprintf(stderr, CTL_PROG ": usage: " CTL_PROG " cluster summary [--json]\n");
        return EX_USAGE;
    }
    if ((rc = daemon_request(c, "cluster-summary\n", &r, 0)) != 0)
        return rc;
    for (p = r.payload; *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char *line = strndup(p, len);

        p += len + (nl ? 1 : 0);
        if (line == NULL) {
            rc = EX_OSERR;
            break;
        }
        if (len == 0) {
            free(line);
            continue;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            void *q = realloc(row, ncap * sizeof *row);
            if (q == NULL) {
                free(line);
                rc = EX_OSERR;
                break;
            }
            row = q;
            cap = ncap;
        }
        memset(&row[n], 0, sizeof row[n]);
        if (json_flat_object(line, fleet_member, &row[n]) != 0 || row[n].node[0] == '\0') {
            free(line);
            ctl_error("malformed cluster summary from the daemon", NULL);
            rc = EX_PROTOCOL;
            break;
        }
        free(line);
        n++;
    }
    if (rc == 0 && n > 0 && (tot = calloc(n, sizeof *tot)) == NULL)
        rc = EX_OSERR;
    for (i = 0; rc == 0 && i < n; i++) {
        if (!row[i].has_domain || row[i].stale)
            continue;
        for (j = 0; j < ntot && strcmp(tot[j].domain, row[i].domain) != 0; j++)
            ;
        if (j == ntot)
            snprintf(tot[ntot++].domain, sizeof tot[0].domain, "%s", row[i].domain);
        tot[j].nmsg += row[i].nmsg;
        tot[j].nbytes += row[i].nbytes;
        tot[j].nodes++;
    }
    if (rc == EX_OSERR)
        ctl_error("out of memory", NULL);
    if (rc == 0) {
        if (ntot > 1)
            qsort(tot, ntot, sizeof *tot, fleet_total_cmp);
        if (c->json)
            cluster_summary_json(c, row, n, tot, ntot);
        else
            cluster_summary_text(c, row, n, tot, ntot);
    }
    free(row);
    free(tot);
    daemon_reply_free(&r);
    return rc;
}

/* ------------------------------------------------------------------ */
/* verify: the callout cache                                           */
/* ------------------------------------------------------------------ */

/* One answer, as the daemon's JSON object has it. */
struct verify_row {
    char address[VERIFY_KEY_MAX];
    char result[16], source[16], state[16], reply[CTL_ERR_SIZE];
    int64_t age;
    int has_age;
};

static void verify_member(void *arg, const char *key, const char *value, int is_string)
{
    struct verify_row *v = arg;

    if (strcmp(key, "address") == 0)
        snprintf(v->address, sizeof v->address, "%s", value);
    else if (strcmp(key, "result") == 0)
        snprintf(v->result, sizeof v->result, "%s", is_string ? value : "none");
    else if (strcmp(key, "source") == 0)
        snprintf(v->source, sizeof v->source, "%s", value);
    else if (strcmp(key, "state") == 0)
        snprintf(v->state, sizeof v->state, "%s", value);
    else if (strcmp(key, "reply") == 0)
        snprintf(v->reply, sizeof v->reply, "%s", value);
    else if (strcmp(key, "age") == 0) {
        v->age = strtoll(value, NULL, 10);
        v->has_age = 1;
    }
}

/* "address  result  age  state  reply", escaped like every peer text. */
static void verify_row_text(struct ctl *c, const struct verify_row *v)
{
    char age[CTL_AGE_SIZE];

    text_str(c->out, v->address);
    fprintf(c->out, "  %s", v->result[0] ? v->result : "none");
    if (v->has_age) {
        fmt_age(v->age, age);
        fprintf(c->out, "  %s  %s  %s", age, v->state, v->source);
    }
    if (v->reply[0]) {
        fputs("  ", c->out);
        text_str(c->out, v->reply);
    }
    fputc('\n', c->out);
}

/* Print the daemon's lines of JSON objects: as a JSON array, or as text. */
static int verify_print_lines(struct ctl *c, const char *p, int array)
{
    int first = 1;

    if (c->json && array)
        fputs("[", c->out);
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (n > 0) {
            if (c->json) {
                fprintf(c->out, "%s%.*s", array ? (first ? "\n" : ",\n") : "", (int)n, p);
                if (!array)
                    fputc('\n', c->out);
            } else {
                struct verify_row v;
                char *line = strndup(p, n);
                memset(&v, 0, sizeof v);
                if (line == NULL || json_flat_object(line, verify_member, &v) != 0) {
                    free(line);
                    ctl_error("malformed verify answer from the daemon", NULL);
                    return EX_PROTOCOL;
                }
                free(line);
                verify_row_text(c, &v);
            }
            first = 0;
        }
        p += n + (nl ? 1 : 0);
    }
    if (c->json && array)
        fputs(first ? "]\n" : "\n]\n", c->out);
    return 0;
}

struct verify_offline {
    struct ctl *c;
    int first;
};

static int is_dir(const char *path);
static int spool_missing(const char *spool, const char *path);

static int verify_offline_each(void *arg, const struct verify_entry *e)
{
    struct verify_offline *o = arg;
    struct ctl *c = o->c;
    struct verify_row v;
    int64_t age = c->now - e->learned;

    memset(&v, 0, sizeof v);
    snprintf(v.address, sizeof v.address, "%s", e->key);
    snprintf(v.result, sizeof v.result, "%s", verify_result_name(e->result));
    snprintf(v.source, sizeof v.source, "%s", verify_source_name(e->source));
    snprintf(v.state, sizeof v.state, "%s",
             (const char *[]){ "fresh", "stale", "expired" }[verify_entry_age(c->conf, e,
                                                                              (time_t)c->now)]);
    snprintf(v.reply, sizeof v.reply, "%s", e->reply);
    v.age = age < 0 ? 0 : age;
    v.has_age = 1;
    if (c->json) {
        fputs(o->first ? "\n" : ",\n", c->out);
        fputs("{\"address\":", c->out);
        json_str(c->out, v.address);
        fprintf(c->out, ",\"result\":\"%s\",\"source\":\"%s\",\"learned\":%" PRId64
                        ",\"age\":%" PRId64 ",\"state\":\"%s\",\"reply\":",
                v.result, v.source, e->learned, v.age, v.state);
        json_str(c->out, v.reply);
        fputc('}', c->out);
    } else {
        verify_row_text(c, &v);
    }
    o->first = 0;
    return 0;
}

/* verify list with the daemon down: the cache read-only (LMDB readers
 * never block a writer, and nothing is written here). */
static int verify_list_offline(struct ctl *c, const char *domain)
{
    char dir[CTL_PATH_SIZE], err[CTL_ERR_SIZE];
    struct verify_offline o = { c, 1 };
    struct verify_cache *vc;
    int rc;

    if ((size_t)snprintf(dir, sizeof dir, "%s/verify", c->conf->spool) >= sizeof dir) {
        ctl_error("spool path too long", c->conf->spool);
        return EX_USAGE;
    }
    if (!is_dir(dir))
        return spool_missing(c->conf->spool, dir);
    if ((vc = vcache_open(dir, 0, 1, err, sizeof err)) == NULL) {
        fprintf(stderr, CTL_PROG ": %s\n", err);
        return EX_IOERR;
    }
    if (c->json)
        fputs("[", c->out);
    rc = vcache_each(vc, domain, verify_offline_each, &o) == 0 ? 0 : EX_IOERR;
    if (c->json)
        fputs(o.first ? "]\n" : "\n]\n", c->out);
    vcache_close(vc);
    return rc;
}

/*
 * verify ADDRESS [--probe]   the cached answer; --probe asks the primary now
 * verify list [DOMAIN]       every cached answer (the cache itself when the
 *                            daemon is down)
 * verify forget ADDRESS|DOMAIN
 */
static int cmd_verify(struct ctl *c, int argc, char **argv)
{
    char line[CTL_LINE_MAX];
    struct daemon_reply r;
    const char *verb, *arg;
    int rc, list = 0;

    if (strcmp(argv[1], "list") == 0) {
        verb = "verify-list";
        arg = argc > 2 ? argv[2] : NULL;
        list = 1;
    } else if (strcmp(argv[1], "forget") == 0) {
        if (argc != 3) {
            fprintf(stderr, CTL_PROG ": usage: " CTL_PROG " verify forget ADDRESS|DOMAIN\n");
            return EX_USAGE;
        }
        verb = "verify-forget";
        arg = argv[2];
    } else {
        if (argc != 2) {
            fprintf(stderr, CTL_PROG ": usage: " CTL_PROG " verify ADDRESS [--probe]\n");
            return EX_USAGE;
        }
        verb = c->probe ? "verify-probe" : "verify";
        arg = argv[1];
    }
    if (c->probe && strcmp(verb, "verify-probe") != 0) {
        fprintf(stderr, CTL_PROG ": --probe is for verify ADDRESS\n");
        return EX_USAGE;
    }
    if (arg != NULL && strlen(arg) >= VERIFY_KEY_MAX) {
        ctl_error("argument too long", NULL);
        return EX_USAGE;
    }
    if (arg != NULL) {
        for (const char *q = arg; *q; q++)
            if ((unsigned char)*q <= ' ' || (unsigned char)*q == 0x7f) {
                ctl_error("not an address or domain", arg);
                return EX_USAGE;
            }
    }
    if ((size_t)snprintf(line, sizeof line, "%s%s%s\n", verb, arg ? " " : "", arg ? arg : "") >=
        sizeof line) {
        ctl_error("argument too long", NULL);
        return EX_USAGE;
    }
    rc = daemon_request(c, line, &r, list);
    if (rc == EX_UNAVAILABLE && list) {
        daemon_reply_free(&r);
        return verify_list_offline(c, arg);
    }
    if (rc == 0) {
        if (strcmp(verb, "verify-forget") == 0)
            print_ok(c, &r);
        else
            rc = verify_print_lines(c, r.payload ? r.payload : "", list);
    }
    daemon_reply_free(&r);
    return rc;
}

/* ------------------------------------------------------------------ */
/* quarantine                                                          */
/* ------------------------------------------------------------------ */

static void quarantine_print(struct ctl *c, const struct qmsg *m, const struct qrcpt *r, size_t n,
                             int extended)
{
    char since[CTL_ISO_SIZE], until[CTL_ISO_SIZE];
    FILE *f = c->out;

    fmt_iso(m->quarantined, since);
    fmt_iso(m->quarantine_until, until);
    if (c->json) {
        print_msg_json_open(f, m, r, n, NULL, extended);
        fprintf(f, ",\"quarantined\":%" PRId64 ",\"quarantined_iso\":\"%s\",\"until\":%" PRId64
                ",\"until_iso\":\"%s\",\"reason\":", m->quarantined, since,
                m->quarantine_until, until);
        json_str(f, m->quarantine_reason);
        fprintf(f, ",\"auth_flags\":%" PRIu32 ",\"auth_results\":", m->auth_flags);
        json_str(f, m->auth_results);
        fputs("}\n", f);
        return;
    }
    if (!extended) {
        fprintf(f, "%s  %s  until %s  <", m->qid, since, until);
        text_str(f, m->sender);
        fputs(">  ", f);
        text_str(f, m->quarantine_reason);
        fputc('\n', f);
        return;
    }
    fprintf(f, "qid: %s\nquarantined: %s\nuntil: %s\nreason: ", m->qid, since, until);
    text_str(f, m->quarantine_reason);
    fputs("\nsender: <", f);
    text_str(f, m->sender);
    fputs(">\nauthentication: ", f);
    text_str(f, m->auth_results[0] ? m->auth_results : "none");
    fputc('\n', f);
    for (size_t i = 0; i < n; i++) {
        fputs("recipient: <", f);
        text_str(f, r[i].addr);
        fprintf(f, "> %s ", rcpt_state_name(r[i].state));
        text_str(f, r[i].last_reply);
        fputc('\n', f);
    }
}

/* The QIDs of quarantined messages, collected first: recipients are read
 * afterwards, in read transactions of their own, not inside the walk. */
struct qlist {
    char (*qid)[QID_SIZE];
    size_t n, cap;
    int oom;
};

static int quarantine_collect(void *arg, const char *qid)
{
    struct qlist *q = arg;

    if (q->n == q->cap) {
        size_t nc = q->cap ? q->cap * 2 : 64;
        void *p = realloc(q->qid, nc * sizeof *q->qid);
        if (p == NULL) {
            q->oom = 1;
            return 1;
        }
        q->qid = p;
        q->cap = nc;
    }
    memcpy(q->qid[q->n++], qid, QID_SIZE);
    return 0;
}

static int quarantine_list(struct ctl *c, const char *domain)
{
    struct qlist q = { NULL, 0, 0, 0 };
    struct qmsg m;
    int rc = 0;

    if (qdb_held_each(c->db, quarantine_collect, &q) < 0 || q.oom) {
        free(q.qid);
        ctl_error(q.oom ? "out of memory" : "cannot read the index", NULL);
        return q.oom ? EX_OSERR : EX_IOERR;
    }
    for (size_t k = 0; rc == 0 && k < q.n; k++) {
        size_t n = 0;
        int sel = domain == NULL;
        if (qdb_msg_get(c->db, q.qid[k], &m) != 0 || !(m.flags & QMSG_F_QUARANTINE))
            continue;           /* released or removed since the walk */
        if ((rc = ctl_rcpts_load(c, &m, &n)) != 0)
            break;
        for (size_t i = 0; !sel && i < n; i++)
            sel = c->rcpt[i].state == QRCPT_QUARANTINED &&
                  strcasecmp(c->rcpt[i].domain, domain) == 0;
        if (sel)
            quarantine_print(c, &m, c->rcpt, n, 0);
    }
    free(q.qid);
    return rc;
}

static int cmd_quarantine(struct ctl *c, int argc, char **argv)
{
    const char *verb = argv[1];
    if (strcmp(verb, "list") == 0 && argc <= 3 && !c->deliver && !c->notify) {
        return quarantine_list(c, argc == 3 ? argv[2] : NULL);
    }
    if (strcmp(verb, "show") == 0 && argc == 3 && !c->deliver && !c->notify) {
        struct qmsg m;
        size_t n;
        int rc = ctl_msg_lookup(c, argv[2], &m);
        if (rc == 0 && !(m.flags & QMSG_F_QUARANTINE)) {
            ctl_error("not in quarantine", argv[2]);
            return EX_NOINPUT;
        }
        if (rc == 0)
            rc = ctl_rcpts_load(c, &m, &n);
        if (rc == 0)
            quarantine_print(c, &m, c->rcpt, n, 1);
        return rc;
    }
    if (strcmp(verb, "release") == 0 && argc == 3 && c->deliver != c->notify) {
        char arg[QID_SIZE + 16];
        if (strlen(argv[2]) > QID_LEN) {
            ctl_error("not a queue ID", argv[2]);
            return EX_USAGE;
        }
        snprintf(arg, sizeof arg, "%s %s", argv[2], c->deliver ? "deliver" : "notify");
        return daemon_simple(c, "quarantine-release", arg);
    }
    if (strcmp(verb, "delete") == 0 && argc == 3 && !c->deliver && !c->notify)
        return daemon_simple(c, "quarantine-delete", argv[2]);
    fprintf(stderr, CTL_PROG ": usage: " CTL_PROG " [--json] quarantine list [DOMAIN] | show QID | "
                    "release QID --deliver|--notify | delete QID\n");
    return EX_USAGE;
}

/* ------------------------------------------------------------------ */
/* odmr-secret                                                         */
/* ------------------------------------------------------------------ */

/*
 * The `odmr_secret` of a domain (odmr_auth.h): read a password from the
 * first line of stdin, or from the terminal without echo, and print the
 * "{CRAM-MD5}" HMAC-MD5 contexts.  The password is never an argument (it
 * would show in ps and shell history) and never printed.
 */
static int cmd_odmr_secret(struct ctl *c, int argc, char **argv)
{
    char pw[ODMR_AUTH_FIELD_MAX + 2], out[ODMR_SECRET_LEN + 1];
    struct odmr_ctx ctx;
    FILE *in = stdin, *tty = NULL;
    size_t n;

    (void)argc;
    (void)argv;
    if (isatty(STDIN_FILENO) && (tty = fopen("/dev/tty", "r+")) != NULL) {
        struct termios old, quiet;
        int echo_off = tcgetattr(fileno(tty), &old) == 0;
        fputs("ODMR password: ", tty);
        fflush(tty);
        if (echo_off) {
            quiet = old;
            quiet.c_lflag &= ~(tcflag_t)ECHO;
            tcsetattr(fileno(tty), TCSAFLUSH, &quiet);
        }
        in = tty;
        if (fgets(pw, sizeof pw, in) == NULL)
            pw[0] = '\0';
        if (echo_off)
            tcsetattr(fileno(tty), TCSAFLUSH, &old);
        fputc('\n', tty);
        fclose(tty);
    } else if (fgets(pw, sizeof pw, in) == NULL) {
        pw[0] = '\0';
    }
    n = strcspn(pw, "\r\n");
    if (pw[n] == '\0' && n > ODMR_AUTH_FIELD_MAX) {
        OPENSSL_cleanse(pw, sizeof pw);
        ctl_error("password longer than 256 octets", NULL);
        return EX_DATAERR;
    }
    pw[n] = '\0';
    if (n == 0) {
        ctl_error("empty password", NULL);
        return EX_DATAERR;
    }
    odmr_ctx_from_password(pw, n, &ctx);
    OPENSSL_cleanse(pw, sizeof pw);
    odmr_secret_format(&ctx, out, sizeof out);
    OPENSSL_cleanse(&ctx, sizeof ctx);
    if (c->json) {
        fputs("{\"odmr_secret\":", c->out);
        json_str(c->out, out);
        fputs("}\n", c->out);
    } else {
        fprintf(c->out, "%s\n", out);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* replay                                                              */
/* ------------------------------------------------------------------ */

/* replay DOMAIN --since T [--until T] [--recipient ADDR] [--yes]: the
 * kept copies of DOMAIN delivered in that span (keep_delivered) are
 * counted from the index; with --yes the daemon queues them again (it
 * owns the index writes: with it stopped, nothing is changed). */
/* The fields a replay answers with, before messages and replayed. */
static void replay_json(struct ctl *c, const char *domain, const char *since,
                        const char *until, long copies)
{
    fputs("{\"domain\":", c->out);
    json_str(c->out, domain);
    fprintf(c->out, ",\"since\":\"%s\",\"until\":", since);
    if (until)
        fprintf(c->out, "\"%s\"", until);
    else
        fputs("null", c->out);
    fputs(",\"recipient\":", c->out);
    if (c->recipient)
        json_str(c->out, c->recipient);
    else
        fputs("null", c->out);
    fprintf(c->out, ",\"copies\":%ld", copies);
}

static int cmd_replay(struct ctl *c, int argc, char **argv)
{
    char domain[SMTP_DOMAIN_MAX + 2], err[CTL_ERR_SIZE], t1[TIMEARG_ISO_SIZE],
        t2[TIMEARG_ISO_SIZE], line[CTL_LINE_MAX];
    time_t since, until = 0;
    long n, nmsg = 0;
    int rc;

    (void)argc;
    if (c->since == NULL) {
        fprintf(stderr, CTL_PROG ": replay needs --since TIME (ISO 8601 UTC or +2h/-30m)\n");
        return EX_USAGE;
    }
    if (timearg_parse(c->since, (time_t)c->now, &since, err, sizeof err) != 0) {
        fprintf(stderr, CTL_PROG ": --since: %s\n", err);
        return EX_USAGE;
    }
    if (c->until && timearg_parse(c->until, (time_t)c->now, &until, err, sizeof err) != 0) {
        fprintf(stderr, CTL_PROG ": --until: %s\n", err);
        return EX_USAGE;
    }
    if (c->until && until < since) {
        fprintf(stderr, CTL_PROG ": --until is before --since\n");
        return EX_USAGE;
    }
    if (since < 0)
        since = 0;
    if (c->recipient && (strchr(c->recipient, '@') == NULL ||
                         strlen(c->recipient) > SMTP_PATH_MAX ||
                         strpbrk(c->recipient, " \t\r\n") != NULL)) {
        ctl_error("not a recipient address", c->recipient);
        return EX_USAGE;
    }
    if (strlen(argv[1]) >= sizeof domain - 1 || argv[1][0] == '\0') {
        ctl_error("not a domain", argv[1]);
        return EX_USAGE;
    }
    snprintf(domain, sizeof domain, "%s", argv[1]);
    domain_normalize(domain);
    if (conf_domain_find(c->conf, domain) == NULL) {
        ctl_error("not a served domain", domain);
        return EX_NOINPUT;
    }
    n = qdb_kept_count(c->db, domain, (int64_t)since, (int64_t)until, c->recipient, &nmsg);
    if (n < 0) {
        ctl_error("index read failed", NULL);
        return EX_IOERR;
    }
    timearg_format(since, t1);
    if (c->until)
        timearg_format(until, t2);
    if (!c->yes || n == 0) {
        if (c->json) {
            replay_json(c, domain, t1, c->until ? t2 : NULL, n);
            fprintf(c->out, ",\"messages\":%ld,\"replayed\":false}\n", nmsg);
        } else {
            text_str(c->out, domain);
            fprintf(c->out, ": %ld kept cop%s of %ld message%s delivered since %s%s%s", n,
                    n == 1 ? "y" : "ies", nmsg, nmsg == 1 ? "" : "s", t1,
                    c->until ? " until " : "", c->until ? t2 : "");
            if (c->recipient) {
                fputs(" to ", c->out);
                text_str(c->out, c->recipient);
            }
            fputs(n == 0 ? ": nothing to replay\n"
                  : c->yes ? "\n" : " would be queued again (add --yes to do it)\n", c->out);
        }
        return 0;
    }
    /* --yes: the daemon writes; without it, refuse rather than write an
     * index another process may open any moment. */
    int fd = daemon_connect(c, 1);
    if (fd < 0) {
        fprintf(stderr, CTL_PROG ": mxkeepd is not running: replay needs it (the daemon owns "
                        "the spool's writes and flushes the domain); start it and run this "
                        "again\n");
        return -fd;
    }
    close(fd);
    if ((size_t)snprintf(line, sizeof line, "replay %s %lld %lld %s\n", domain,
                         (long long)since, (long long)until,
                         c->recipient ? c->recipient : "-") >= sizeof line) {
        ctl_error("argument too long", NULL);
        return EX_USAGE;
    }
    struct daemon_reply r;
    long copies = 0;
    size_t msgs = 0;
    rc = daemon_request(c, line, &r, 0);
    if (rc == 0 && sscanf(r.text, "replayed %ld %zu", &copies, &msgs) != 2) {
        ctl_error("malformed reply from the daemon", NULL);
        rc = EX_PROTOCOL;
    }
    daemon_reply_free(&r);
    if (rc != 0)
        return rc;
    if (c->json) {
        replay_json(c, domain, t1, c->until ? t2 : NULL, copies);
        fprintf(c->out, ",\"messages\":%zu,\"replayed\":true}\n", msgs);
    } else {
        text_str(c->out, domain);
        fprintf(c->out, ": %ld kept cop%s of %zu message%s queued again; flushing\n", copies,
                copies == 1 ? "y" : "ies", msgs, msgs == 1 ? "" : "s");
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Command table and main                                              */
/* ------------------------------------------------------------------ */

/* Command options a command takes (struct ctl_cmd.opts). */
/* ------------------------------------------------------------------ */
/* Holds and maintenance windows (maint.h)                             */
/* ------------------------------------------------------------------ */

static int cmd_holds(struct ctl *c, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    if (maint_listing(c->out, c->json ? MAINT_LIST_JSON : MAINT_LIST_TEXT, c->db, c->conf,
                      c->now, 0) != 0) {
        ctl_error("index read failed", NULL);
        return EX_IOERR;
    }
    return 0;
}

/* maintenance list | maintenance DOMAIN start [--until TIME] [--note TEXT]
 * | maintenance DOMAIN stop.  TIME is parsed here (timearg.h), so a bad
 * one is refused before the daemon is asked; the note goes percent-
 * encoded (the control line is space-separated). */
static int cmd_maintenance(struct ctl *c, int argc, char **argv)
{
    char line[CTL_LINE_MAX], note[3 * QMAINT_NOTE_MAX + 1] = "-", until[32] = "-", err[200];
    const char *domain = argv[1];
    struct daemon_reply r;
    int rc;

    if (argc == 2 && strcmp(argv[1], "list") == 0) {
        if (c->until || c->note) {
            fprintf(stderr, CTL_PROG ": maintenance list takes no --until or --note\n");
            return EX_USAGE;
        }
        if (maint_listing(c->out, c->json ? MAINT_LIST_JSON : MAINT_LIST_TEXT, c->db, c->conf,
                          c->now, QMAINT_WINDOW) != 0) {
            ctl_error("index read failed", NULL);
            return EX_IOERR;
        }
        return 0;
    }
    if (argc != 3 || (strcmp(argv[2], "start") != 0 && strcmp(argv[2], "stop") != 0)) {
        fprintf(stderr, CTL_PROG ": usage: " CTL_PROG " maintenance DOMAIN start [--until TIME] "
                        "[--note TEXT] | maintenance DOMAIN stop | maintenance list\n");
        return EX_USAGE;
    }
    if (!arg_domain_ok(domain)) {
        ctl_error("not a domain", domain);
        return EX_USAGE;
    }
    if (strcmp(argv[2], "stop") == 0) {
        if (c->until || c->note) {
            fprintf(stderr, CTL_PROG ": maintenance stop takes no --until or --note\n");
            return EX_USAGE;
        }
        return daemon_simple(c, "maintenance-stop", domain);
    }
    if (c->until) {
        time_t t;
        if (timearg_parse(c->until, (time_t)c->now, &t, err, sizeof err) != 0) {
            fprintf(stderr, CTL_PROG ": --until: %s\n", err);
            return EX_USAGE;
        }
        if ((int64_t)t <= c->now) {
            fprintf(stderr, CTL_PROG ": --until: %s is not in the future\n", c->until);
            return EX_USAGE;
        }
        snprintf(until, sizeof until, "%lld", (long long)t);
    }
    if (c->note && c->note[0]) {
        size_t n = 0;
        if (strlen(c->note) >= QMAINT_NOTE_MAX) {
            fprintf(stderr, CTL_PROG ": --note: at most %d characters\n", QMAINT_NOTE_MAX - 1);
            return EX_USAGE;
        }
        for (const unsigned char *p = (const unsigned char *)c->note; *p; p++) {
            if (*p < 0x20 || *p == 0x7f) {
                fprintf(stderr, CTL_PROG ": --note: no control characters\n");
                return EX_USAGE;
            }
            if (*p == ' ' || *p == '%' || *p >= 0x80 || (*p == '-' && n == 0 && !p[1]))
                n += (size_t)snprintf(note + n, sizeof note - n, "%%%02X", *p);
            else
                note[n++] = (char)*p;
        }
        note[n] = '\0';
    }
    if ((size_t)snprintf(line, sizeof line, "maintenance-start %s %s %s\n", domain, until, note) >=
        sizeof line) {
        ctl_error("argument too long", NULL);
        return EX_USAGE;
    }
    rc = daemon_request(c, line, &r, 0);
    if (rc == 0)
        print_ok(c, &r);
    daemon_reply_free(&r);
    return rc;
}

#define CTL_OPT_ALL    0x1u
#define CTL_OPT_DOMAIN 0x2u
#define CTL_OPT_YES    0x4u
#define CTL_OPT_OUTPUT 0x8u
#define CTL_OPT_PROBE  0x10u
#define CTL_OPT_RELEASE 0x20u   /* --deliver, --notify */
#define CTL_OPT_REPLAY  0x40u   /* --since, --recipient */
#define CTL_OPT_MAINT   0x80u   /* --note */
#define CTL_OPT_UNTIL   0x100u  /* --until: replay and maintenance */

/* struct ctl_cmd.needs_daemon: what a command works on. */
#define CTL_ON_INDEX      0     /* the spool's index, read-only */
#define CTL_ON_DAEMON     1     /* the daemon, over its control socket */
#define CTL_ON_FILES      2     /* its operands only: no configuration */

struct ctl_cmd {
    const char *name;
    const char *args;                   /* for the usage text */
    int min_args, max_args;             /* operands after the command name */
    unsigned opts;                      /* CTL_OPT_* it takes */
    int needs_daemon;                   /* CTL_ON_* */
    int (*run)(struct ctl *c, int argc, char **argv);   /* argv[0]: name */
    const char *help;
};

static const struct ctl_cmd ctl_cmds[] = {
    { "queue", "[DOMAIN]", 0, 1, 0, 0, cmd_queue, "list queued messages (for DOMAIN only)" },
    { "summary", "", 0, 0, 0, 0, cmd_summary, "one line per destination domain" },
    { "show-dest", "DOMAIN", 1, 1, 0, 0, cmd_show_dest,
      "one destination: state, window, the primary's declared and learned limits" },
    { "show", "QID", 1, 1, 0, 0, cmd_show, "envelope, recipients and headers of a message" },
    { "cat", "QID", 1, 1, 0, 0, cmd_cat, "write the stored message to stdout" },
    { "count", "", 0, 0, 0, 0, cmd_count, "number of queued messages" },
    { "flush", "DOMAIN|--all", 0, 1, CTL_OPT_ALL, 1, cmd_flush,
      "deliver now (every destination with --all)" },
    { "hold", "DOMAIN", 1, 1, 0, 1, cmd_hold,
      "stop delivering to DOMAIN (until release; kept across restarts)" },
    { "holds", "", 0, 0, 0, CTL_ON_INDEX, cmd_holds,
      "every hold and maintenance window, with its origin, time and uid" },
    { "maintenance", "DOMAIN start [--until TIME] [--note TEXT] | DOMAIN stop | list", 1, 2,
      CTL_OPT_MAINT | CTL_OPT_UNTIL, CTL_ON_INDEX, cmd_maintenance,
      "hold DOMAIN with its retention clock paused; flush at the end" },
    { "release", "DOMAIN", 1, 1, 0, 1, cmd_hold, "resume delivering to DOMAIN" },
    { "delete", "QID|--domain D --yes", 0, 1, CTL_OPT_DOMAIN | CTL_OPT_YES, 1, cmd_delete,
      "remove a message, or all waiting for D, without notice" },
    { "bounce", "QID", 1, 1, 0, 1, cmd_bounce, "return a message to its sender now" },
    { "reload", "", 0, 0, 0, 1, cmd_reload, "re-read the configuration and recipient lists" },
    { "stats", "", 0, 0, 0, 1, cmd_stats, "the daemon's counters" },
    { "map", "compile FILE [-o OUT]", 2, 2, CTL_OPT_OUTPUT, CTL_ON_FILES, cmd_map,
      "compile a recipient list into an lmdb map (FILE.lmdb)" },
    { "cluster", "summary", 1, 1, 0, CTL_ON_DAEMON, cmd_cluster,
      "every node's backlog per destination, from the fleet's database" },
    { "verify", "ADDRESS [--probe] | list [DOMAIN] | forget ADDRESS|DOMAIN", 1, 2, CTL_OPT_PROBE,
      1, cmd_verify, "recipient verification: cached answer, probe, list, forget" },
    { "quarantine", "list [DOMAIN] | show QID | release QID --deliver|--notify | delete QID", 1, 3,
      CTL_OPT_RELEASE, CTL_ON_INDEX, cmd_quarantine,
      "messages held instead of bounced: list, show, release, delete" },
    { "odmr-secret", "", 0, 0, 0, CTL_ON_FILES, cmd_odmr_secret,
      "read a password (stdin or prompt), print a domain's odmr_secret" },
    { "replay", "DOMAIN --since T [--until T] [--recipient ADDR] [--yes]", 1, 1,
      CTL_OPT_REPLAY | CTL_OPT_UNTIL | CTL_OPT_YES, CTL_ON_INDEX, cmd_replay,
      "queue kept copies of delivered mail again (count first; --yes does it)" },
};

static void usage(FILE *f)
{
    size_t i;

    fprintf(f, "usage: " CTL_PROG " [-c FILE] [--json] COMMAND [ARGS]\n"
               "  -c FILE, --config FILE  configuration file (default " CTL_CONF_DEFAULT ")\n"
               "  --json                  machine-readable output\n"
               "  -h, --help              this text\n"
               "Options may also follow the command and its arguments; -- ends them.\n"
               "commands:\n");
    for (i = 0; i < NELEM(ctl_cmds); i++)
        fprintf(f, "  %-8s %-12s %s\n", ctl_cmds[i].name, ctl_cmds[i].args, ctl_cmds[i].help);
}

static const struct ctl_cmd *ctl_cmd_find(const char *name)
{
    size_t i;

    for (i = 0; i < NELEM(ctl_cmds); i++)
        if (strcmp(ctl_cmds[i].name, name) == 0)
            return &ctl_cmds[i];
    return NULL;
}

/* Is path a directory?  1, or 0 with errno (ENOTDIR when it is not). */
static int is_dir(const char *path)
{
    struct stat st;

    if (stat(path, &st) != 0)
        return 0;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return 0;
    }
    return 1;
}

/* The exit code for a spool directory that is_dir() refused. */
static int spool_missing(const char *spool, const char *path)
{
    if (errno == EACCES) {
        fprintf(stderr, CTL_PROG ": %s: %s\n", path, strerror(errno));
        return EX_NOPERM;
    }
    fprintf(stderr, CTL_PROG ": no spool at %s\n", spool);
    return EX_NOINPUT;
}

/* Open the index of c->conf's spool; only read functions are used on it.
 * 0 or an exit code. */
static int ctl_db_open(struct ctl *c)
{
    char dir[CTL_PATH_SIZE], err[CTL_ERR_SIZE];
    const char *spool = c->conf->spool;

    if (!is_dir(spool))
        return spool_missing(spool, spool);
    if ((size_t)snprintf(dir, sizeof dir, "%s/index", spool) >= sizeof dir) {
        ctl_error("spool path too long", spool);
        return EX_USAGE;
    }
    /* qdb_open creates a missing environment; a spool the daemon never
     * initialised is reported, not created behind its back. */
    if (!is_dir(dir))
        return spool_missing(spool, dir);
    err[0] = '\0';
    /* Read-only, and without the spool lock: listings work beside a
     * running daemon (LMDB's readers never block its writer). */
    c->db = qdb_open_readonly(dir, err, sizeof err);
    if (c->db == NULL) {
        fprintf(stderr, CTL_PROG ": %s: %s\n", dir, err);
        return access(dir, R_OK | W_OK | X_OK) != 0 && errno == EACCES ? EX_NOPERM : EX_IOERR;
    }
    return 0;
}

enum { OPT_JSON = 256, OPT_ALL, OPT_DOMAIN, OPT_YES, OPT_PROBE, OPT_DELIVER, OPT_NOTIFY,
       OPT_SINCE, OPT_UNTIL, OPT_RECIPIENT, OPT_NOTE };

/* A command option the command does not take: name it. */
static int opt_refused(const struct ctl_cmd *cmd, unsigned given)
{
    static const struct { unsigned bit; const char *name; } names[] = {
        { CTL_OPT_ALL, "--all" }, { CTL_OPT_DOMAIN, "--domain" }, { CTL_OPT_YES, "--yes" },
        { CTL_OPT_OUTPUT, "-o" },
        { CTL_OPT_PROBE, "--probe" },
        { CTL_OPT_RELEASE, "--deliver/--notify" },
        { CTL_OPT_REPLAY, "--since/--recipient" },
        { CTL_OPT_MAINT, "--note" },
        { CTL_OPT_UNTIL, "--until" },
    };
    size_t i;

    for (i = 0; i < NELEM(names); i++)
        if ((given & names[i].bit) && !(cmd->opts & names[i].bit)) {
            fprintf(stderr, CTL_PROG ": %s: option %s is not for this command\n", cmd->name,
                    names[i].name);
            fprintf(stderr, CTL_PROG ": usage: " CTL_PROG " [-c FILE] [--json] %s %s\n", cmd->name,
                    cmd->args);
            return EX_USAGE;
        }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "json", no_argument, NULL, OPT_JSON },
        { "help", no_argument, NULL, 'h' },
        { "config", required_argument, NULL, 'c' },
        { "all", no_argument, NULL, OPT_ALL },
        { "domain", required_argument, NULL, OPT_DOMAIN },
        { "yes", no_argument, NULL, OPT_YES },
        { "output", required_argument, NULL, 'o' },
        { "probe", no_argument, NULL, OPT_PROBE },
        { "deliver", no_argument, NULL, OPT_DELIVER },
        { "notify", no_argument, NULL, OPT_NOTIFY },
        { "since", required_argument, NULL, OPT_SINCE },
        { "until", required_argument, NULL, OPT_UNTIL },
        { "recipient", required_argument, NULL, OPT_RECIPIENT },
        { "note", required_argument, NULL, OPT_NOTE },
        { NULL, 0, NULL, 0 },
    };
    const char *conf_path = CTL_CONF_DEFAULT;
    struct ctl c = { .out = stdout };
    const struct ctl_cmd *cmd;
    char err[CTL_ERR_SIZE];
    unsigned given = 0;
    int opt, nargs, rc;

    /* Messages from queue_db/conf go to stderr with our name. */
    log_open(CTL_PROG, 1);
    /* No '+': options are taken anywhere (GNU permutation), so
     * `mxkeepctl queue --json` and `mxkeepctl --json queue` are the same;
     * `--` ends the options. */
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "c:ho:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            conf_path = optarg;
            break;
        case OPT_JSON:
            c.json = 1;
            break;
        case OPT_ALL:
            c.all = 1;
            given |= CTL_OPT_ALL;
            break;
        case OPT_DOMAIN:
            if (c.domain != NULL) {
                fprintf(stderr, CTL_PROG ": --domain given twice\n");
                return EX_USAGE;
            }
            c.domain = optarg;
            given |= CTL_OPT_DOMAIN;
            break;
        case OPT_YES:
            c.yes = 1;
            given |= CTL_OPT_YES;
            break;
        case 'o':
            c.output = optarg;
            given |= CTL_OPT_OUTPUT;
            break;
        case OPT_PROBE:
            c.probe = 1;
            given |= CTL_OPT_PROBE;
            break;
        case OPT_DELIVER:
            c.deliver = 1;
            given |= CTL_OPT_RELEASE;
            break;
        case OPT_NOTIFY:
            c.notify = 1;
            given |= CTL_OPT_RELEASE;
            break;
        case OPT_SINCE:
            c.since = optarg;
            given |= CTL_OPT_REPLAY;
            break;
        case OPT_UNTIL:
            c.until = optarg;
            given |= CTL_OPT_UNTIL;
            break;
        case OPT_RECIPIENT:
            c.recipient = optarg;
            given |= CTL_OPT_REPLAY;
            break;
        case OPT_NOTE:
            c.note = optarg;
            given |= CTL_OPT_MAINT;
            break;
        case 'h':
            usage(stdout);
            return EX_OK;
        default:
            /* One line, as every other error (getopt's own is off). */
            fprintf(stderr, CTL_PROG ": %s: unknown option, or its value is missing (" CTL_PROG
                    " -h lists them)\n", argv[optind - 1]);
            return EX_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EX_USAGE;
    }
    cmd = ctl_cmd_find(argv[optind]);
    nargs = argc - optind - 1;
    if (cmd == NULL) {
        fprintf(stderr, CTL_PROG ": unknown command: ");
        text_str(stderr, argv[optind]);
        fputc('\n', stderr);
        usage(stderr);
        return EX_USAGE;
    }
    if ((rc = opt_refused(cmd, given)) != 0)
        return rc;
    if (nargs < cmd->min_args || nargs > cmd->max_args) {
        fprintf(stderr, CTL_PROG ": usage: " CTL_PROG " [-c FILE] [--json] %s %s\n", cmd->name,
                cmd->args);
        return EX_USAGE;
    }

    if (cmd->needs_daemon == CTL_ON_FILES) {
        rc = cmd->run(&c, nargs + 1, argv + optind);
        goto out;
    }
    c.conf = conf_load(conf_path, err, sizeof err);
    if (c.conf == NULL) {
        fprintf(stderr, CTL_PROG ": %s\n", err);
        return EX_CONFIG;
    }
    /* Daemon commands open nothing here: the daemon checks who asks. */
    rc = cmd->needs_daemon == CTL_ON_DAEMON ? 0 : ctl_db_open(&c);
    if (rc == 0) {
        c.now = (int64_t)time(NULL);
        rc = cmd->run(&c, nargs + 1, argv + optind);
    }
out:
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, CTL_PROG ": write error: %s\n", strerror(errno));
        if (rc == 0)
            rc = EX_IOERR;
    }
    free(c.rcpt);
    qdb_close(c.db);
    conf_free(c.conf);
    return rc;
}
