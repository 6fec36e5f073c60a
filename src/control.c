/*
 * control.c - the daemon's Unix control socket (mxkeepctl's way in).
 *
 * What it does: binds conf->control_socket while still root (mode 0660,
 * owned by the mail user and control.group), and once the spool and the
 * scheduler exist serves one request per connection: read one line, check
 * it against the command table, run the handler (most answer at once;
 * delete, delete-domain and bounce answer when the spool has written), send
 * "OK ..." or "ERR <sysexits code> <message>" plus any payload, close.
 *
 * Owns: the listening socket and its path (unlinked by control_free), every
 * open request.  Borrows the conf, spool and delivery.
 *
 * Must never: block the loop (no disk I/O but the short LMDB reads the
 * scheduler also does); trust the peer's line (bounded at CONTROL_LINE_MAX,
 * control characters refused, arguments validated before they reach the
 * scheduler); let an asynchronous completion touch a freed connection (a
 * request outlives its bufferevent: when the client goes away, the
 * bufferevent is freed and the request waits, detached, for its pending
 * completions before it is freed itself).
 *
 * Security: the file mode keeps strangers from connecting, and SO_PEERCRED
 * is checked as well (root, the daemon's uid, its gid or the socket's group,
 * primary or supplementary), because a mode can be loosened by hand.  A
 * refused peer gets "ERR 77 permission denied" and a log line.  Replies
 * carry peer-supplied text (primaries' errors) only inside JSON strings,
 * escaped per RFC 8259.
 */
#include "config.h"
#include "control.h"

#include "cluster.h"
#include "conf.h"
#include "delivery.h"
#include "json.h"
#include "log.h"
#include "qid.h"
#include "queue_db.h"
#include "spool.h"
#include "stats.h"
#include "util.h"
#include "verify.h"
#include "heartbeat.h"
#include "replay.h"
#include "maint.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define CONTROL_LINE_MAX        1024    /* request line octets, LF excluded */
#define CONTROL_TIMEOUT_SECONDS 10      /* to send the line / take the reply */
#define CONTROL_ARGS_MAX        6       /* command word included */
#define CONTROL_BACKLOG         16
#define CONTROL_SOCKET_MODE     0660
#define CONTROL_UMASK           0117    /* socket born 0660, never wider */
#define CONTROL_DELETE_PAGE     256     /* delete-domain: QIDs per round */
#define CONTROL_MSG_SIZE        512
#define CONTROL_DRAIN_MAX       (64 * 1024)     /* unread input dropped at close */
#define CONTROL_PROC_PATH       64
#define CONTROL_PROC_LINE       4096

struct control {
    struct event_base *base;
    const struct conf *conf;
    struct evconnlistener *lst;
    char *path;
    uid_t uid;
    gid_t gid;                          /* the daemon's group */
    gid_t sock_gid;                     /* control.group, else gid */
    struct spool *spool;
    struct delivery *dl;
    control_reload_fn reload;
    control_gauges_fn gauges;
    void *arg;
    struct ctl_req *reqs;               /* every open request */
    struct cluster *cluster;            /* the fleet, or NULL */
};

struct ctl_req {
    struct control *ctl;
    struct bufferevent *bev;            /* NULL once the client is gone */
    struct ctl_req *prev, *next;
    int handled;                        /* the line has been taken */
    int pending;                        /* completions still to come */
    int replied;
    /* delete / bounce / delete-domain */
    char qid[QID_SIZE];
    char domain[SMTP_DOMAIN_MAX + 1];
    char after[QID_SIZE];
    char (*page)[QID_SIZE];
    size_t npage;
    long deleted, skipped, gone;
    int failed;                         /* first spool error, 0 none */
    uid_t peer_uid;                     /* SO_PEERCRED: who asked (maint.h records it) */
};

static void req_free(struct ctl_req *r);
static void req_maybe_free(struct ctl_req *r);

/* ------------------------------------------------------------------ */
/* Output                                                              */
/* ------------------------------------------------------------------ */

/* Unchecked like every other add to a reply: out of memory truncates it,
 * and the client reports a malformed reply. */
static void json_emit_evbuffer(void *arg, const char *p, size_t len)
{
    evbuffer_add(arg, p, len);
}

/* RFC 8259 string; invalid UTF-8 becomes U+FFFD so the reply stays JSON. */
static void json_str(struct evbuffer *b, const char *str)
{
    json_escape(str, strlen(str), json_emit_evbuffer, b);
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

static void dest_info_json(struct evbuffer *b, const struct delivery_dest_info *i)
{
    evbuffer_add_printf(b, "{\"domain\":");
    json_str(b, i->domain);
    evbuffer_add_printf(b, ",\"served\":%s,\"state\":\"%s\",\"held\":%s,\"next_probe\":",
                        i->served ? "true" : "false", dest_state_name(i->state),
                        i->held ? "true" : "false");
    if (i->next_probe != 0)
        evbuffer_add_printf(b, "%" PRId64, i->next_probe);
    else
        evbuffer_add_printf(b, "null");
    evbuffer_add_printf(b, ",\"connections\":%d,\"concurrency\":%d,\"messages\":%" PRIu64
                        ",\"bytes\":%" PRIu64 ",\"last_error\":",
                        i->connections, i->concurrency, i->nmsg, i->nbytes);
    json_str(b, i->last_error);
    /* Adaptive concurrency and the primary's limits (dest_limits.h); flat,
     * as mxkeepctl reads it. */
    evbuffer_add_printf(b, ",\"ceiling\":%d,\"adaptive\":%s,\"limits_host\":", i->ceiling,
                        i->adaptive ? "true" : "false");
    json_str(b, i->limits_host);
    evbuffer_add_printf(b, ",\"rcpt_max\":%u,\"rcpt_max_source\":\"%s\",\"mail_max\":%u,"
                        "\"mail_max_source\":\"%s\",\"conn_max\":%u,\"conn_max_source\":\"%s\","
                        "\"rcptdomain_max\":%u", i->rcpt_max, i->rcpt_max_source, i->mail_max,
                        i->mail_max_source, i->conn_max, i->conn_max_source, i->rcptdomain_max);
    /* accept = "when-primary-down": the gate and since when (heartbeat.h). */
    enum gate_state gs;
    time_t since;
    if (i->served && heartbeat_gate_name(i->domain, &gs, &since) == 0) {
        evbuffer_add_printf(b, ",\"gate\":\"%s\",\"gate_since\":", gate_state_name(gs));
        if (since != 0)
            evbuffer_add_printf(b, "%" PRId64, (int64_t)since);
        else
            evbuffer_add_printf(b, "null");
    }
    evbuffer_add_printf(b, "}");
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */
/* ------------------------------------------------------------------ */

static void req_on_write(struct bufferevent *bev, void *arg)
{
    struct ctl_req *r = arg;

    /* Output drained after the reply: the request is over.  Unread input
     * (an over-long line) would make the close a reset that can destroy
     * the reply in flight, so what is waiting is read and dropped first. */
    if (r->replied) {
        char sink[CONTROL_LINE_MAX];
        evutil_socket_t fd = bufferevent_getfd(bev);
        size_t total = 0;
        ssize_t n;

        while (total < CONTROL_DRAIN_MAX &&
               (n = recv(fd, sink, sizeof sink, MSG_DONTWAIT)) > 0)
            total += (size_t)n;
        shutdown(fd, SHUT_WR);
        bufferevent_free(r->bev);
        r->bev = NULL;
        req_maybe_free(r);
    }
}

/* Send the first line (and optional payload) and close once written.  A
 * client that already left gets nothing; the request just ends. */
static void req_reply(struct ctl_req *r, struct evbuffer *payload, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void req_reply(struct ctl_req *r, struct evbuffer *payload, const char *fmt, ...)
{
    struct evbuffer *out;
    va_list ap;

    if (r->replied)
        log_panic("control: second reply to one request");
    r->replied = 1;
    if (r->bev == NULL) {
        req_maybe_free(r);
        return;
    }
    out = bufferevent_get_output(r->bev);
    va_start(ap, fmt);
    evbuffer_add_vprintf(out, fmt, ap);
    va_end(ap);
    evbuffer_add(out, "\n", 1);
    if (payload != NULL)
        evbuffer_add_buffer(out, payload);
    bufferevent_disable(r->bev, EV_READ);
    bufferevent_enable(r->bev, EV_WRITE);
    bufferevent_setwatermark(r->bev, EV_WRITE, 0, 0);
    /* The write callback runs when the output has drained. */
    if (evbuffer_get_length(out) == 0)
        req_on_write(r->bev, r);
}

static void req_err(struct ctl_req *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void req_err(struct ctl_req *r, int code, const char *fmt, ...)
{
    char msg[CONTROL_MSG_SIZE];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    req_reply(r, NULL, "ERR %d %s", code, msg);
}

static void req_free(struct ctl_req *r)
{
    struct control *ctl = r->ctl;

    if (r->bev != NULL)
        bufferevent_free(r->bev);
    if (r->prev != NULL)
        r->prev->next = r->next;
    else if (ctl->reqs == r)
        ctl->reqs = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    free(r->page);
    free(r);
}

/* Free the request once nothing refers to it: the reply is out (or the
 * client is gone) and no completion is pending. */
static void req_maybe_free(struct ctl_req *r)
{
    if (r->pending > 0)
        return;
    if (r->bev != NULL && !r->replied)
        return;
    if (r->bev != NULL && evbuffer_get_length(bufferevent_get_output(r->bev)) > 0)
        return;
    req_free(r);
}

/* ------------------------------------------------------------------ */
/* Argument checks                                                     */
/* ------------------------------------------------------------------ */

/* A domain from the line, folded like the index keys (lower case, no
 * trailing dot).  0, or -1 when it is not a plausible domain. */
static int arg_domain(const char *in, char out[SMTP_DOMAIN_MAX + 1])
{
    size_t len = strlen(in), i;

    if (len > 1 && in[len - 1] == '.')
        len--;
    if (len == 0 || len > SMTP_DOMAIN_MAX)
        return -1;
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)in[i];
        /* '[' ']' ':' for address literals of bounce destinations. */
        if (!isalnum(ch) && ch != '-' && ch != '.' && ch != '_' && ch != '[' && ch != ']' &&
            ch != ':')
            return -1;
        out[i] = util_lower((char)ch);
    }
    out[len] = '\0';
    return 0;
}

static int arg_qid(const char *in, char out[QID_SIZE])
{
    size_t len = strlen(in), i;

    if (len != QID_LEN)
        return -1;
    for (i = 0; i < len; i++)
        out[i] = (char)toupper((unsigned char)in[i]);
    out[len] = '\0';
    return qid_valid(out) ? 0 : -1;
}

/* Is domain a destination we know, served or with mail waiting? */
static int domain_known(struct control *ctl, const char *domain)
{
    struct delivery_dest_info info;

    return conf_domain_find(ctl->conf, domain) != NULL ||
           delivery_dest_info(ctl->dl, domain, &info) == 0;
}

/* ------------------------------------------------------------------ */
/* Handlers                                                            */
/* ------------------------------------------------------------------ */

static void errno_reply(struct ctl_req *r, int err, const char *what)
{
    switch (err) {
    case 0:
        break;
    case ENOENT:
        req_err(r, EX_NOINPUT, "no such message");
        break;
    case EBUSY:
        req_err(r, EX_TEMPFAIL, "being delivered, try again");
        break;
    case ENOMEM:
        req_err(r, EX_OSERR, "out of memory");
        break;
    default:
        req_err(r, EX_IOERR, "%s failed: %s", what, strerror(err));
        break;
    }
}

static void cmd_flush(struct ctl_req *r, int argc, char **argv);
static void cmd_hold(struct ctl_req *r, int argc, char **argv);
static void cmd_delete(struct ctl_req *r, int argc, char **argv);
static void cmd_delete_domain(struct ctl_req *r, int argc, char **argv);
static void cmd_bounce(struct ctl_req *r, int argc, char **argv);
static void cmd_reload(struct ctl_req *r, int argc, char **argv);
static void cmd_stats(struct ctl_req *r, int argc, char **argv);
static void cmd_status(struct ctl_req *r, int argc, char **argv);
static void cmd_cluster_summary(struct ctl_req *r, int argc, char **argv);
static void cmd_verify(struct ctl_req *r, int argc, char **argv);
static void cmd_verify_probe(struct ctl_req *r, int argc, char **argv);
static void cmd_verify_list(struct ctl_req *r, int argc, char **argv);
static void cmd_verify_forget(struct ctl_req *r, int argc, char **argv);
static void cmd_quarantine_release(struct ctl_req *r, int argc, char **argv);
static void cmd_quarantine_delete(struct ctl_req *r, int argc, char **argv);
static void cmd_replay(struct ctl_req *r, int argc, char **argv);
static void cmd_maintenance(struct ctl_req *r, int argc, char **argv);

struct ctl_cmd {
    const char *name;
    int min_args, max_args;             /* after the command word */
    void (*run)(struct ctl_req *r, int argc, char **argv);  /* argv[0]: name */
};

static const struct ctl_cmd ctl_cmds[] = {
    { "flush", 1, 1, cmd_flush },
    { "hold", 1, 1, cmd_hold },
    { "release", 1, 1, cmd_hold },
    { "delete", 1, 1, cmd_delete },
    { "delete-domain", 1, 1, cmd_delete_domain },
    { "bounce", 1, 1, cmd_bounce },
    { "reload", 0, 0, cmd_reload },
    { "stats", 0, 0, cmd_stats },
    { "status", 0, 1, cmd_status },
    { "cluster-summary", 0, 0, cmd_cluster_summary },
    { "verify", 1, 1, cmd_verify },
    { "verify-probe", 1, 1, cmd_verify_probe },
    { "verify-list", 0, 1, cmd_verify_list },
    { "verify-forget", 1, 1, cmd_verify_forget },
    { "quarantine-release", 2, 2, cmd_quarantine_release },
    { "quarantine-delete", 1, 1, cmd_quarantine_delete },
    { "replay", 4, 4, cmd_replay },
    { "maintenance-start", 3, 3, cmd_maintenance },
    { "maintenance-stop", 1, 1, cmd_maintenance },
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* flush --all: names first, then flush, so the scheduler's list is not
 * walked while flushing changes it. */
struct name_list {
    char (*name)[SMTP_DOMAIN_MAX + 1];
    size_t n, cap;
    int oom;
};

static void name_list_add(struct name_list *l, const char *name)
{
    size_t i;

    for (i = 0; i < l->n; i++)
        if (strcasecmp(l->name[i], name) == 0)
            return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        void *p = realloc(l->name, cap * sizeof *l->name);
        if (p == NULL) {
            l->oom = 1;
            return;
        }
        l->name = p;
        l->cap = cap;
    }
    snprintf(l->name[l->n++], sizeof l->name[0], "%s", name);
}

static int name_list_dest(void *arg, const struct delivery_dest_info *i)
{
    name_list_add(arg, i->domain);
    return 0;
}

static void flush_all(struct ctl_req *r)
{
    struct control *ctl = r->ctl;
    struct name_list l = { 0 };
    long total = 0, held = 0;
    size_t i;

    for (i = 0; i < ctl->conf->ndomains; i++)
        name_list_add(&l, ctl->conf->domains[i].name);
    delivery_dest_each(ctl->dl, name_list_dest, &l);
    if (l.oom) {
        free(l.name);
        req_err(r, EX_OSERR, "out of memory");
        return;
    }
    for (i = 0; i < l.n; i++) {
        long k = delivery_flush(ctl->dl, l.name[i], NULL);
        if (k < 0)
            held++;
        else
            total += k;
        /* In a fleet every node flushes what this one knows of. */
        if (k >= 0)
            cluster_flush(ctl->cluster, l.name[i]);
    }
    log_info("control: flush of every destination (%zu): %ld messages, %ld held", l.n, total,
             held);
    free(l.name);
    req_reply(r, NULL, "OK %ld message%s in %zu destination%s, %ld held", total,
              total == 1 ? "" : "s", l.n, l.n == 1 ? "" : "s", held);
}

static void cmd_flush(struct ctl_req *r, int argc, char **argv)
{
    char domain[SMTP_DOMAIN_MAX + 1];
    struct delivery_dest_info info;
    long n;

    if (strcmp(argv[1], "--all") == 0) {
        flush_all(r);
        return;
    }
    if (arg_domain(argv[1], domain) != 0) {
        req_err(r, EX_USAGE, "not a domain");
        return;
    }
    if (!domain_known(r->ctl, domain)) {
        req_err(r, EX_NOUSER, "unknown domain %s", domain);
        return;
    }
    /* An ODMR domain is never connected to (RFC 2645): its primary
     * fetches with ATRN, so a flush cannot start anything (as ETRN's 459). */
    const struct conf_domain *cd = conf_domain_find(r->ctl->conf, domain);
    if (cd != NULL && cd->odmr) {
        req_err(r, EX_UNAVAILABLE, "%s is never connected to (odmr = true): its mail waits to "
                "be fetched with ATRN", domain);
        return;
    }
    /* Count and state from the scheduler's record, as summary shows. */
    n = delivery_flush(r->ctl->dl, domain, &info);
    if (n < 0) {
        req_err(r, EX_TEMPFAIL, "%s is held: %" PRIu64 " message%s waiting", domain, info.nmsg,
                info.nmsg == 1 ? "" : "s");
        return;
    }
    log_info("control: flush %s: %" PRIu64 " message%s", domain, info.nmsg,
             info.nmsg == 1 ? "" : "s");
    if (r->ctl->cluster != NULL) {
        /* Every node flushes; the others' part is their last status. */
        uint64_t others = cluster_flush(r->ctl->cluster, domain);
        req_reply(r, NULL, "OK %" PRIu64 " message%s (%" PRIu64 " on other nodes)", info.nmsg,
                  info.nmsg == 1 ? "" : "s", others);
        return;
    }
    req_reply(r, NULL, "OK %" PRIu64 " message%s", info.nmsg, info.nmsg == 1 ? "" : "s");
}

/* Holds and windows (maint.h): the reply waits for the record's commit. */
static void maint_req_done(void *arg, int err, const char *msg)
{
    struct ctl_req *r = arg;

    r->pending--;
    if (err)
        req_err(r, EX_IOERR, "not saved: %s", strerror(err));
    else
        req_reply(r, NULL, "OK %s", msg);
    req_maybe_free(r);
}

/* hold/release: the count every listing shows, as before (delivery.h). */
static void hold_req_done(void *arg, int err, const char *msg)
{
    struct ctl_req *r = arg;
    struct delivery_dest_info info;

    if (err || delivery_dest_info(r->ctl->dl, r->domain, &info) != 0) {
        maint_req_done(arg, err, msg);
        return;
    }
    r->pending--;
    req_reply(r, NULL, "OK %s: %" PRIu64 " message%s waiting", msg, info.nmsg,
              info.nmsg == 1 ? "" : "s");
    req_maybe_free(r);
}

static void maint_req_err(struct ctl_req *r, int err, const char *domain)
{
    r->pending--;
    if (err == ENOENT)
        req_err(r, EX_NOUSER, "unknown domain %s", domain);
    else if (err == ESRCH)
        req_err(r, EX_NOINPUT, "%s is not in maintenance", domain);
    else if (err == EINVAL)
        req_err(r, EX_USAGE, "the end of the window is not in the future");
    else if (err == EBUSY)
        req_err(r, EX_TEMPFAIL, "the last window of %s is still ending, try again", domain);
    else
        errno_reply(r, err, "maintenance");
}

static void cmd_hold(struct ctl_req *r, int argc, char **argv)
{
    char domain[SMTP_DOMAIN_MAX + 1];
    int hold = strcmp(argv[0], "hold") == 0, err;

    if (arg_domain(argv[1], domain) != 0) {
        req_err(r, EX_USAGE, "not a domain");
        return;
    }
    /* Persisted with the uid (maint.c); applied here first, the fleet
     * follows (at once, or when the database is back). */
    snprintf(r->domain, sizeof r->domain, "%s", domain);
    r->pending++;
    if ((err = maint_hold(domain, (uint32_t)r->peer_uid, hold, hold_req_done, r)) != 0) {
        maint_req_err(r, err, domain);
        return;
    }
    cluster_hold(r->ctl->cluster, domain, hold);
}

/* maintenance-start DOMAIN UNTIL NOTE: UNTIL unix seconds or "-" (until
 * stopped), NOTE percent-encoded by mxkeepctl ("-" none). */
static void cmd_maintenance(struct ctl_req *r, int argc, char **argv)
{
    char domain[SMTP_DOMAIN_MAX + 1], note[QMAINT_NOTE_MAX];
    int64_t until = 0;
    int err;

    if (arg_domain(argv[1], domain) != 0) {
        req_err(r, EX_USAGE, "not a domain");
        return;
    }
    r->pending++;
    if (argc == 2) {
        if ((err = maint_window_stop(domain, (uint32_t)r->peer_uid, maint_req_done, r)) != 0)
            maint_req_err(r, err, domain);
        return;
    }
    if (strcmp(argv[2], "-") != 0) {
        char *end;
        errno = 0;
        until = strtoll(argv[2], &end, 10);
        if (errno || *end || until <= 0) {
            r->pending--;
            req_err(r, EX_USAGE, "bad end time");
            return;
        }
    }
    size_t n = 0;
    const char *p = strcmp(argv[3], "-") == 0 ? "" : argv[3];
    for (; *p && n + 1 < sizeof note; p++) {
        unsigned v;
        if (*p == '%' && sscanf(p + 1, "%2x", &v) == 1 && isxdigit((unsigned char)p[1]) &&
            isxdigit((unsigned char)p[2])) {
            note[n++] = (char)v;
            p += 2;
        } else {
            note[n++] = *p;
        }
        if ((unsigned char)note[n - 1] < 0x20 || note[n - 1] == 0x7f) {
            r->pending--;
            req_err(r, EX_USAGE, "the note may not hold control characters");
            return;
        }
    }
    note[n] = '\0';
    if ((err = maint_window_start(domain, until, note, (uint32_t)r->peer_uid, maint_req_done,
                                  r)) != 0)
        maint_req_err(r, err, domain);
}

static void delete_done(void *arg, int err)
{
    struct ctl_req *r = arg;

    r->pending--;
    if (err == 0)
        req_reply(r, NULL, "OK deleted %s", r->qid);
    else
        errno_reply(r, err, "delete");
}

static void cmd_delete(struct ctl_req *r, int argc, char **argv)
{
    int err;

    if (arg_qid(argv[1], r->qid) != 0) {
        req_err(r, EX_USAGE, "not a queue ID");
        return;
    }
    r->pending++;
    err = delivery_delete(r->ctl->dl, r->qid, delete_done, r);
    if (err != 0) {
        r->pending--;
        errno_reply(r, err, "delete");
    }
}

static void bounce_done(void *arg, int err)
{
    struct ctl_req *r = arg;

    r->pending--;
    if (err == 0)
        req_reply(r, NULL, "OK bounced %s", r->qid);
    else
        errno_reply(r, err, "bounce");
}

static void cmd_bounce(struct ctl_req *r, int argc, char **argv)
{
    int err;

    if (arg_qid(argv[1], r->qid) != 0) {
        req_err(r, EX_USAGE, "not a queue ID");
        return;
    }
    r->pending++;
    err = delivery_bounce(r->ctl->dl, r->qid, bounce_done, r);
    if (err != 0) {
        r->pending--;
        errno_reply(r, err, "bounce");
    }
}

/* quarantine-release QID deliver|notify: back to the queue for the
 * primary (recipients get a fresh retention from now), or the withheld
 * failure notice sent (an admin bounce of the released recipients). */
static void qrelease_notified(void *arg, int err)
{
    struct ctl_req *r = arg;

    r->pending--;
    if (err == 0) {
        log_info("%s: released from quarantine: notice sent", r->qid);
        req_reply(r, NULL, "OK released %s: notice sent", r->qid);
    } else
        errno_reply(r, err, "release --notify");
}

static void qrelease_done(void *arg, int err)
{
    struct ctl_req *r = arg;

    if (err != 0) {
        r->pending--;
        errno_reply(r, err == ENOENT ? ENOENT : err, "release");
        return;
    }
    if (r->failed == 'n') {
        err = delivery_bounce(r->ctl->dl, r->qid, qrelease_notified, r);
        if (err != 0) {
            r->pending--;
            errno_reply(r, err, "release --notify");
        }
        return;
    }
    r->pending--;
    log_info("%s: released from quarantine: back in the queue", r->qid);
    delivery_queued(r->ctl->dl, r->qid);
    req_reply(r, NULL, "OK released %s: queued for delivery", r->qid);
}

static void cmd_quarantine_release(struct ctl_req *r, int argc, char **argv)
{
    struct qrcpt rc[64];
    size_t n = 0;
    long keep = 0;

    (void)argc;
    if (arg_qid(argv[1], r->qid) != 0) {
        req_err(r, EX_USAGE, "not a queue ID");
        return;
    }
    if (strcmp(argv[2], "deliver") != 0 && strcmp(argv[2], "notify") != 0) {
        req_err(r, EX_USAGE, "release needs deliver or notify");
        return;
    }
    r->failed = argv[2][0];             /* 'd' or 'n': what the completion does */
    /* A fresh retention (the longest of its domains'), so a released
     * message is not expired straight back into quarantine. */
    if (spool_rcpt_list(r->ctl->spool, r->qid, rc, sizeof rc / sizeof rc[0], &n) == 0)
        for (size_t i = 0; i < n; i++) {
            const struct conf_domain *d = conf_domain_find(r->ctl->conf, rc[i].domain);
            if (d && d->retention > keep)
                keep = d->retention;
        }
    if (keep == 0)
        keep = 7 * 86400L;
    r->pending++;
    if (spool_release(r->ctl->spool, r->qid, (int64_t)time(NULL) + keep, qrelease_done, r) ==
        NULL) {
        r->pending--;
        errno_reply(r, errno ? errno : EIO, "release");
    }
}

static void qdelete_done(void *arg, int err)
{
    struct ctl_req *r = arg;

    r->pending--;
    if (err == 0) {
        log_info("%s: removed from quarantine by the administrator", r->qid);
        req_reply(r, NULL, "OK deleted %s", r->qid);
    } else
        errno_reply(r, err, "delete");
}

static void cmd_quarantine_delete(struct ctl_req *r, int argc, char **argv)
{
    (void)argc;
    if (arg_qid(argv[1], r->qid) != 0) {
        req_err(r, EX_USAGE, "not a queue ID");
        return;
    }
    r->pending++;
    if (spool_quarantine_delete(r->ctl->spool, r->qid, qdelete_done, r) == NULL) {
        r->pending--;
        errno_reply(r, errno ? errno : EIO, "delete");
    }
}

/* replay DOMAIN SINCE UNTIL ADDR|-: kept copies of DOMAIN delivered in
 * [SINCE, UNTIL] (unix seconds, UNTIL 0: no end), to ADDR only unless
 * "-", queued again (replay.c); the reply once the write committed. */
static void replay_reply(void *arg, int err, long copies, size_t messages)
{
    struct ctl_req *r = arg;

    r->pending--;
    if (err == 0)
        req_reply(r, NULL, "OK replayed %ld %zu", copies, messages);
    else
        errno_reply(r, err, "replay");
}

static int arg_time(const char *in, int64_t *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(in, &end, 10);
    if (errno != 0 || end == in || *end != '\0' || v < 0)
        return -1;
    *out = (int64_t)v;
    return 0;
}

static void cmd_replay(struct ctl_req *r, int argc, char **argv)
{
    int64_t since, until;
    const char *addr = NULL;
    int err;

    (void)argc;
    if (arg_domain(argv[1], r->domain) != 0) {
        req_err(r, EX_USAGE, "bad domain");
        return;
    }
    if (arg_time(argv[2], &since) != 0 || arg_time(argv[3], &until) != 0 ||
        (until != 0 && until < since)) {
        req_err(r, EX_USAGE, "bad time range");
        return;
    }
    if (strcmp(argv[4], "-") != 0) {
        if (strlen(argv[4]) > SMTP_PATH_MAX || strchr(argv[4], '@') == NULL) {
            req_err(r, EX_USAGE, "bad recipient address");
            return;
        }
        addr = argv[4];
    }
    r->pending++;
    if ((err = replay_run(r->domain, since, until, addr, replay_reply, r)) != 0) {
        r->pending--;
        if (err == ENOENT)
            req_err(r, EX_NOINPUT, "not a served domain");
        else
            errno_reply(r, err, "replay");
    }
}

/*
 * delete-domain walks by_dest a page at a time and deletes the page; the
 * next page starts after the last QID seen, so messages that stay (busy
 * ones) are not met again, and at most one page of deletes is in flight.
 */
static void delete_domain_round(struct ctl_req *r);

static void delete_domain_tally(struct ctl_req *r, int err)
{
    if (err == 0)
        r->deleted++;
    else if (err == EBUSY)
        r->skipped++;
    else if (err == ENOENT)
        r->gone++;
    else if (r->failed == 0)
        r->failed = err;
}

static void delete_domain_done(void *arg, int err)
{
    struct ctl_req *r = arg;

    r->pending--;
    delete_domain_tally(r, err);
    if (r->pending == 0)
        delete_domain_round(r);
}

static void delete_domain_finish(struct ctl_req *r)
{
    log_info("control: delete-domain %s: %ld deleted, %ld skipped (being delivered)", r->domain,
             r->deleted, r->skipped);
    if (r->failed != 0)
        req_err(r, EX_IOERR, "%ld deleted, %ld skipped, then: %s", r->deleted, r->skipped,
                strerror(r->failed));
    else
        req_reply(r, NULL, "OK %ld deleted, %ld skipped", r->deleted, r->skipped);
}

static void delete_domain_round(struct ctl_req *r)
{
    size_t i, n;
    long got;

    /* Each round's deletes have completed here; a client that left does
     * not stop the job (it was asked for), it only gets no reply. */
    if (r->failed != 0) {
        delete_domain_finish(r);
        return;
    }
    got = spool_page(r->ctl->spool, r->domain, r->after, r->page, CONTROL_DELETE_PAGE);
    r->npage = got > 0 ? (size_t)got : 0;
    if (got < 0) {
        r->failed = EIO;
        delete_domain_finish(r);
        return;
    }
    if (r->npage == 0) {
        delete_domain_finish(r);
        return;
    }
    n = r->npage;
    /* One count held over the loop, so no completion can start the next
     * round (or end the job) while this one is still being issued. */
    r->pending++;
    for (i = 0; i < n; i++) {
        int err;

        r->pending++;
        err = delivery_delete(r->ctl->dl, r->page[i], delete_domain_done, r);
        if (err != 0) {
            r->pending--;
            delete_domain_tally(r, err);
        }
    }
    r->pending--;
    if (r->pending == 0)
        delete_domain_round(r);
}

static void cmd_delete_domain(struct ctl_req *r, int argc, char **argv)
{
    if (arg_domain(argv[1], r->domain) != 0) {
        req_err(r, EX_USAGE, "not a domain");
        return;
    }
    if (!domain_known(r->ctl, r->domain)) {
        req_err(r, EX_NOUSER, "unknown domain %s", r->domain);
        return;
    }
    r->page = calloc(CONTROL_DELETE_PAGE, sizeof *r->page);
    if (r->page == NULL) {
        req_err(r, EX_OSERR, "out of memory");
        return;
    }
    log_info("control: delete-domain %s", r->domain);
    delete_domain_round(r);
}

static void cmd_reload(struct ctl_req *r, int argc, char **argv)
{
    char msg[CONTROL_MSG_SIZE] = "";
    size_t i;

    if (r->ctl->reload == NULL) {
        req_err(r, EX_UNAVAILABLE, "reload not available");
        return;
    }
    if (r->ctl->reload(r->ctl->arg, msg, sizeof msg) != 0) {
        for (i = 0; msg[i] != '\0'; i++)
            if (msg[i] == '\r' || msg[i] == '\n')
                msg[i] = ' ';
        req_err(r, EX_CONFIG, "%s", msg[0] ? msg : "reload failed");
        return;
    }
    for (i = 0; msg[i] != '\0'; i++)
        if (msg[i] == '\r' || msg[i] == '\n')
            msg[i] = ' ';
    req_reply(r, NULL, "OK %s", msg[0] ? msg : "reloaded");
}

static void cmd_stats(struct ctl_req *r, int argc, char **argv)
{
    struct control *ctl = r->ctl;
    struct evbuffer *b = evbuffer_new();
    size_t in = 0, out = 0;
    int64_t up = (int64_t)time(NULL) - stats_started();
    long nmsg = spool_msg_count(ctl->spool);
    long nheld = spool_held_count(ctl->spool);
    int s;

    if (b == NULL) {
        req_err(r, EX_OSERR, "out of memory");
        return;
    }
    if (ctl->gauges != NULL)
        ctl->gauges(ctl->arg, &in, &out);
    evbuffer_add(b, "{", 1);
    for (s = 0; s < STAT_COUNT_; s++)
        evbuffer_add_printf(b, "\"%s\":%" PRIu64 ",", stats_name(s), stats_get(s));
    struct qdb_kept_stats ks;
    if (spool_kept_stats(ctl->spool, &ks) != 0)
        memset(&ks, 0, sizeof ks);
    evbuffer_add_printf(b, "\"in_sessions\":%zu,\"out_connections\":%zu,"
                           "\"uptime_seconds\":%" PRId64 ",\"queue_messages\":%ld,"
                           "\"quarantine_messages\":%ld,\"kept_copies\":%ld,"
                           "\"kept_messages\":%ld,\"kept_bytes\":%" PRIu64 "}\n",
                        in, out, up < 0 ? 0 : up, nmsg < 0 ? 0 : nmsg, nheld < 0 ? 0 : nheld,
                        ks.copies, ks.messages, ks.bytes);
    req_reply(r, b, "OK");
    evbuffer_free(b);
}

struct status_all {
    struct evbuffer *b;
};

static int status_each(void *arg, const struct delivery_dest_info *i)
{
    struct status_all *a = arg;

    dest_info_json(a->b, i);
    evbuffer_add(a->b, "\n", 1);
    return 0;
}

/* status DOMAIN: one JSON object.  status (no argument): one object per
 * line for every destination the scheduler knows (mxkeepctl summary). */
static void cmd_status(struct ctl_req *r, int argc, char **argv)
{
    struct delivery_dest_info info;
    char domain[SMTP_DOMAIN_MAX + 1];
    struct status_all a;

    a.b = evbuffer_new();
    if (a.b == NULL) {
        req_err(r, EX_OSERR, "out of memory");
        return;
    }
    if (argc == 1) {
        delivery_dest_each(r->ctl->dl, status_each, &a);
        req_reply(r, a.b, "OK");
    } else if (arg_domain(argv[1], domain) != 0) {
        req_err(r, EX_USAGE, "not a domain");
    } else if (delivery_dest_info(r->ctl->dl, domain, &info) != 0) {
        req_err(r, EX_NOUSER, "unknown destination %s", domain);
    } else {
        dest_info_json(a.b, &info);
        evbuffer_add(a.b, "\n", 1);
        req_reply(r, a.b, "OK");
    }
    evbuffer_free(a.b);
}

/* cluster-summary: the fleet's node_status rows, one JSON object per
 * line, from one query run on the loop (pg.c); the request waits. */
static void cluster_summary_done(void *arg, struct evbuffer *payload, const char *err)
{
    struct ctl_req *r = arg;

    r->pending--;
    if (payload == NULL)
        req_err(r, EX_UNAVAILABLE, "cluster summary: %s", err);
    else
        req_reply(r, payload, "OK");
    req_maybe_free(r);
}

static void cmd_cluster_summary(struct ctl_req *r, int argc, char **argv)
{
    if (r->ctl->cluster == NULL) {
        req_err(r, EX_CONFIG, "no cluster configured");
        return;
    }
    r->pending++;
    if (cluster_summary(r->ctl->cluster, cluster_summary_done, r) != 0) {
        r->pending--;
        req_err(r, EX_UNAVAILABLE, "cluster summary: the database is unreachable");
    }
}

/* ------------------------------------------------------------------ */
/* verify: the callout cache (verify.h)                               */
/* ------------------------------------------------------------------ */

static const char *const verify_age_names[] = { "fresh", "stale", "expired" };

/* One cached answer as a JSON object line; the reply is the primary's
 * text, so it goes only inside a JSON string. */
static void verify_entry_json(struct evbuffer *b, const struct conf *c,
                              const struct verify_entry *e)
{
    time_t now = time(NULL);
    int64_t age = (int64_t)now - e->learned;

    evbuffer_add_printf(b, "{\"address\":");
    json_str(b, e->key);
    evbuffer_add_printf(b, ",\"result\":\"%s\",\"source\":\"%s\",\"learned\":%" PRId64
                           ",\"age\":%" PRId64 ",\"state\":\"%s\",\"reply\":",
                        verify_result_name(e->result), verify_source_name(e->source), e->learned,
                        age < 0 ? 0 : age, verify_age_names[verify_entry_age(c, e, now)]);
    json_str(b, e->reply);
    evbuffer_add(b, "}\n", 2);
}

/* verify ADDRESS: the cached answer, or {"address":..,"result":null}. */
static void cmd_verify(struct ctl_req *r, int argc, char **argv)
{
    struct verify_entry e;
    struct evbuffer *b = evbuffer_new();
    int rc;

    if (b == NULL) {
        req_err(r, EX_OSERR, "out of memory");
        return;
    }
    rc = verify_show(argv[1], &e);
    if (rc < 0) {
        req_err(r, EX_USAGE, "not an address, or verification is not running");
    } else if (rc == 0) {
        evbuffer_add_printf(b, "{\"address\":");
        json_str(b, argv[1]);
        evbuffer_add_printf(b, ",\"result\":null}\n");
        req_reply(r, b, "OK");
    } else {
        verify_entry_json(b, r->ctl->conf, &e);
        req_reply(r, b, "OK");
    }
    evbuffer_free(b);
}

static void verify_probe_done(void *arg, const struct verify_answer *a)
{
    struct ctl_req *r = arg;
    struct evbuffer *b = evbuffer_new();

    r->pending--;
    if (b == NULL) {
        req_err(r, EX_OSERR, "out of memory");
        return;
    }
    evbuffer_add_printf(b, "{\"address\":");
    json_str(b, r->domain);
    evbuffer_add_printf(b, ",\"result\":\"%s\",\"reply\":", verify_result_name(a->result));
    json_str(b, a->reply);
    evbuffer_add(b, "}\n", 2);
    req_reply(r, b, "OK");
    evbuffer_free(b);
}

/* verify-probe ADDRESS: probe now; answers when the probe has. */
static void cmd_verify_probe(struct ctl_req *r, int argc, char **argv)
{
    char err[CONTROL_MSG_SIZE];

    /* r->domain holds the address for the reply (bounded by the line). */
    snprintf(r->domain, sizeof r->domain, "%s", argv[1]);
    r->pending++;
    if (verify_probe(argv[1], verify_probe_done, r, err, sizeof err) == NULL) {
        r->pending--;
        /* The operator's mistakes get the codes mxkeepctl(8) gives them
         * everywhere (64 malformed, 67 unknown domain), not 69, which
         * says the daemon is not there. */
        int code = EX_UNAVAILABLE;
        if (strcmp(err, "not an address") == 0)
            code = EX_USAGE;
        else if (strcmp(err, "not a served domain") == 0)
            code = EX_NOUSER;
        req_err(r, code, "%s", err);
    }
}

struct verify_list_arg {
    struct evbuffer *b;
    const struct conf *c;
};

static int verify_list_each(void *arg, const struct verify_entry *e)
{
    struct verify_list_arg *a = arg;

    verify_entry_json(a->b, a->c, e);
    return 0;
}

/* verify-list [DOMAIN]: one JSON object per line. */
static void cmd_verify_list(struct ctl_req *r, int argc, char **argv)
{
    char domain[SMTP_DOMAIN_MAX + 1];
    struct verify_list_arg a = { evbuffer_new(), r->ctl->conf };

    if (a.b == NULL) {
        req_err(r, EX_OSERR, "out of memory");
        return;
    }
    if (argc == 2 && arg_domain(argv[1], domain) != 0)
        req_err(r, EX_USAGE, "not a domain");
    else if (verify_list(argc == 2 ? domain : NULL, verify_list_each, &a) != 0)
        req_err(r, EX_IOERR, "cannot read the verification cache");
    else
        req_reply(r, a.b, "OK");
    evbuffer_free(a.b);
}

static void cmd_verify_forget(struct ctl_req *r, int argc, char **argv)
{
    long n = verify_forget(argv[1]);

    if (n < 0) {
        req_err(r, EX_IOERR, "cannot change the verification cache");
        return;
    }
    log_info("control: verify forget %s: %ld answer%s", argv[1], n, n == 1 ? "" : "s");
    req_reply(r, NULL, "OK forgot %ld answer%s", n, n == 1 ? "" : "s");
}

/* ------------------------------------------------------------------ */
/* The line                                                            */
/* ------------------------------------------------------------------ */

static void req_dispatch(struct ctl_req *r, char *line)
{
    char *argv[CONTROL_ARGS_MAX + 1];
    int argc = 0;
    char *p = line;
    size_t i;

    for (i = 0; line[i] != '\0'; i++) {
        unsigned char ch = (unsigned char)line[i];
        if (ch < 0x20 || ch == 0x7F) {
            req_err(r, EX_USAGE, "control character in request");
            return;
        }
    }
    while (*p != '\0') {
        char *sp = strchr(p, ' ');
        if (sp == p || argc == CONTROL_ARGS_MAX) {
            req_err(r, EX_USAGE, sp == p ? "empty argument" : "too many arguments");
            return;
        }
        argv[argc++] = p;
        if (sp == NULL)
            break;
        *sp = '\0';
        p = sp + 1;
        if (*p == '\0') {
            req_err(r, EX_USAGE, "empty argument");
            return;
        }
    }
    argv[argc] = NULL;
    if (argc == 0) {
        req_err(r, EX_USAGE, "empty request");
        return;
    }
    for (i = 0; i < NELEM(ctl_cmds); i++) {
        const struct ctl_cmd *c = &ctl_cmds[i];
        if (strcmp(c->name, argv[0]) != 0)
            continue;
        if (argc - 1 < c->min_args || argc - 1 > c->max_args) {
            req_err(r, EX_USAGE, "wrong number of arguments for %s", c->name);
            return;
        }
        log_debug("control: %s", argv[0]);
        c->run(r, argc, argv);
        return;
    }
    req_err(r, EX_USAGE, "unknown command");
}

/* Take the request line when it is complete.  at_eof: the client shut
 * its side; whatever it sent is the line. */
static void req_take_line(struct ctl_req *r, int at_eof)
{
    struct evbuffer *in = bufferevent_get_input(r->bev);
    size_t len = 0;
    char *line;

    if (r->handled)
        return;
    line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF);
    if (line == NULL) {
        size_t have = evbuffer_get_length(in);
        if (have > CONTROL_LINE_MAX) {
            r->handled = 1;
            req_err(r, EX_USAGE, "request too long");
            return;
        }
        if (!at_eof)
            return;
        r->handled = 1;
        if (have == 0) {
            req_err(r, EX_USAGE, "empty request");
            return;
        }
        line = calloc(1, have + 1);
        if (line == NULL) {
            req_err(r, EX_OSERR, "out of memory");
            return;
        }
        evbuffer_remove(in, line, have);
        len = have;
    }
    r->handled = 1;
    if (len > CONTROL_LINE_MAX) {
        free(line);
        req_err(r, EX_USAGE, "request too long");
        return;
    }
    if (len > 0 && line[len - 1] == '\r')
        line[--len] = '\0';
    if (strlen(line) != len) {
        free(line);
        req_err(r, EX_USAGE, "NUL in request");
        return;
    }
    bufferevent_disable(r->bev, EV_READ);
    req_dispatch(r, line);
    free(line);
}

static void req_on_read(struct bufferevent *bev, void *arg)
{
    req_take_line(arg, 0);
}

static void req_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct ctl_req *r = arg;

    if ((what & BEV_EVENT_EOF) && (what & BEV_EVENT_READING) && !r->handled) {
        req_take_line(r, 1);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        if (!r->handled && !r->replied) {
            r->handled = 1;
            req_err(r, EX_TEMPFAIL, "timeout");
            return;
        }
        log_warn("control: client did not take its reply within %d s", CONTROL_TIMEOUT_SECONDS);
    }
    /* The client is gone (or stalled): drop the connection; pending
     * completions still find the request. */
    bufferevent_free(r->bev);
    r->bev = NULL;
    if (!r->replied && r->pending == 0 && r->handled)
        r->replied = 1;
    if (!r->handled)
        r->replied = 1;
    req_maybe_free(r);
}

/* ------------------------------------------------------------------ */
/* Peers                                                               */
/* ------------------------------------------------------------------ */

/* Does process pid have gid among its supplementary groups?  Read from
 * /proc while the peer is connected; a race only makes us refuse. */
static int peer_in_group(pid_t pid, gid_t gid)
{
    char path[CONTROL_PROC_PATH], line[CONTROL_PROC_LINE];
    int found = 0;
    FILE *f;

    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    f = fopen(path, "re");
    if (f == NULL)
        return 0;
    while (!found && fgets(line, sizeof line, f) != NULL) {
        char *p, *end;
        if (strncmp(line, "Groups:", 7) != 0)
            continue;
        for (p = line + 7;; p = end) {
            unsigned long g = strtoul(p, &end, 10);
            if (end == p)
                break;
            if ((gid_t)g == gid) {
                found = 1;
                break;
            }
        }
        break;
    }
    fclose(f);
    return found;
}

static int peer_allowed(const struct control *ctl, const struct ucred *cr)
{
    if (cr->uid == 0 || cr->uid == ctl->uid)
        return 1;
    if (cr->gid == ctl->gid || cr->gid == ctl->sock_gid)
        return 1;
    return peer_in_group(cr->pid, ctl->gid) || peer_in_group(cr->pid, ctl->sock_gid);
}

static void control_on_accept(struct evconnlistener *l, evutil_socket_t fd,
                              struct sockaddr *sa, int salen, void *arg)
{
    struct control *ctl = arg;
    struct timeval tv = { CONTROL_TIMEOUT_SECONDS, 0 };
    struct ucred cr;
    socklen_t crlen = sizeof cr;
    struct ctl_req *r;

    r = calloc(1, sizeof *r);
    if (r == NULL) {
        log_warn("control: out of memory; connection dropped");
        evutil_closesocket(fd);
        return;
    }
    r->ctl = ctl;
    r->bev = bufferevent_socket_new(ctl->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (r->bev == NULL) {
        log_warn("control: out of memory; connection dropped");
        evutil_closesocket(fd);
        free(r);
        return;
    }
    r->next = ctl->reqs;
    if (ctl->reqs != NULL)
        ctl->reqs->prev = r;
    ctl->reqs = r;
    bufferevent_setcb(r->bev, req_on_read, req_on_write, req_on_event, r);
    bufferevent_set_timeouts(r->bev, &tv, &tv);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) != 0 || crlen != sizeof cr) {
        log_warn("control: cannot read peer credentials: %s", strerror(errno));
        r->handled = 1;
        req_err(r, EX_NOPERM, "permission denied");
        return;
    }
    r->peer_uid = cr.uid;
    if (!peer_allowed(ctl, &cr)) {
        log_warn("control: refused connection from uid %ld gid %ld pid %ld", (long)cr.uid,
                 (long)cr.gid, (long)cr.pid);
        r->handled = 1;
        req_err(r, EX_NOPERM, "permission denied");
        return;
    }
    bufferevent_setwatermark(r->bev, EV_READ, 0, CONTROL_LINE_MAX + 2);
    bufferevent_enable(r->bev, EV_READ);
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                          */
/* ------------------------------------------------------------------ */

/* A socket file left at path: remove it when nobody answers on it, refuse
 * when a daemon does (two daemons on one spool would be a disaster).
 * 0, or -1 with a reason. */
static int control_clear_stale(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sun;
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "control socket %s: exists and is not a socket", path);
        return -1;
    }
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "control socket: %s", strerror(errno));
        return -1;
    }
    rc = connect(fd, (struct sockaddr *)&sun, sizeof sun);
    close(fd);
    if (rc == 0) {
        snprintf(err, errlen, "control socket %s: another mxkeepd answers on it", path);
        return -1;
    }
    if (errno != ECONNREFUSED && errno != ENOENT) {
        snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
        return -1;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        snprintf(err, errlen, "control socket %s: cannot remove the stale one: %s", path,
                 strerror(errno));
        return -1;
    }
    log_info("control: removed stale socket %s", path);
    return 0;
}

static int control_bind(struct control *ctl, char *err, size_t errlen)
{
    struct sockaddr_un sun;
    mode_t old;
    int fd, rc;

    if (strlen(ctl->path) >= sizeof sun.sun_path) {
        snprintf(err, errlen, "control socket %s: path too long", ctl->path);
        return -1;
    }
    if (control_clear_stale(ctl->path, err, errlen) != 0)
        return -1;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", ctl->path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "control socket: %s", strerror(errno));
        return -1;
    }
    /* Born 0660: no window in which a stranger could connect. */
    old = umask(CONTROL_UMASK);
    rc = bind(fd, (struct sockaddr *)&sun, sizeof sun);
    umask(old);
    if (rc != 0) {
        snprintf(err, errlen, "control socket %s: bind: %s", ctl->path, strerror(errno));
        close(fd);
        return -1;
    }
    if ((geteuid() == 0 && chown(ctl->path, ctl->uid, ctl->sock_gid) != 0) ||
        chmod(ctl->path, CONTROL_SOCKET_MODE) != 0) {
        snprintf(err, errlen, "control socket %s: %s", ctl->path, strerror(errno));
        close(fd);
        unlink(ctl->path);
        return -1;
    }
    if (listen(fd, CONTROL_BACKLOG) != 0) {
        snprintf(err, errlen, "control socket %s: listen: %s", ctl->path, strerror(errno));
        close(fd);
        unlink(ctl->path);
        return -1;
    }
    ctl->lst = evconnlistener_new(ctl->base, control_on_accept, ctl,
                                  LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_DISABLED,
                                  -1, fd);
    if (ctl->lst == NULL) {
        snprintf(err, errlen, "control socket %s: cannot listen", ctl->path);
        close(fd);
        unlink(ctl->path);
        return -1;
    }
    return 0;
}

struct control *control_new(struct event_base *base, const struct conf *c, uid_t uid,
                            gid_t gid, char *err, size_t errlen)
{
    struct control *ctl;

    if (c->control_socket == NULL) {
        snprintf(err, errlen, "no control.socket configured");
        return NULL;
    }
    ctl = calloc(1, sizeof *ctl);
    if (ctl == NULL || (ctl->path = strdup(c->control_socket)) == NULL) {
        free(ctl);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ctl->base = base;
    ctl->conf = c;
    ctl->uid = uid;
    ctl->gid = gid;
    ctl->sock_gid = gid;
    if (c->control_group != NULL) {
        struct group *gr = getgrnam(c->control_group);
        if (gr == NULL) {
            snprintf(err, errlen, "%s: control.group %s does not exist", c->path,
                     c->control_group);
            free(ctl->path);
            free(ctl);
            return NULL;
        }
        ctl->sock_gid = gr->gr_gid;
    }
    if (control_bind(ctl, err, errlen) != 0) {
        free(ctl->path);
        free(ctl);
        return NULL;
    }
    return ctl;
}

void control_start(struct control *ctl, struct spool *sp, struct delivery *dl,
                   control_reload_fn reload, control_gauges_fn gauges, void *arg)
{
    ctl->spool = sp;
    ctl->dl = dl;
    ctl->reload = reload;
    ctl->gauges = gauges;
    ctl->arg = arg;
    if (evconnlistener_enable(ctl->lst) != 0)
        log_warn("control: cannot enable the listener on %s", ctl->path);
    log_info("control socket %s ready", ctl->path);
}

void control_set_cluster(struct control *ctl, struct cluster *cl)
{
    if (ctl != NULL)
        ctl->cluster = cl;
}

void control_set_conf(struct control *ctl, const struct conf *c)
{
    ctl->conf = c;
}

void control_free(struct control *ctl)
{
    if (ctl == NULL)
        return;
    /* Completions can no longer come (the spool is closed first), so
     * requests still waiting for one are freed with the rest. */
    while (ctl->reqs != NULL)
        req_free(ctl->reqs);
    if (ctl->lst != NULL)
        evconnlistener_free(ctl->lst);
    /* After the privilege drop the directory may not let us; the next
     * start removes a stale socket anyway. */
    if (unlink(ctl->path) != 0 && errno != ENOENT && errno != EACCES && errno != EPERM)
        log_warn("control: cannot remove %s: %s", ctl->path, strerror(errno));
    free(ctl->path);
    free(ctl);
}
