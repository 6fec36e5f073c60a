/*
 * pg.c - PostgreSQL connections on the libevent loop (see pg.h).
 *
 * What it does: keeps one libpq connection per `pgsql` entry of the
 * config and runs queued queries on it one at a time, through libpq's
 * asynchronous API only: PQconnectStart/PQconnectPoll driven by events on
 * PQsocket, PQsetnonblocking, PQsendQueryParams + PQflush, and
 * PQconsumeInput/PQisBusy/PQgetResult when the socket is readable.
 * NOTIFYs (PQnotifies) go to the listeners of their channel; LISTENs are
 * re-issued after every reconnect, then the on_up callbacks run.
 *
 * State machine per connection (pg_set_state is the one transition):
 *   DOWN --connect--> CONNECTING --PQconnectPoll OK--> UP
 *   CONNECTING --fail/connect_timeout--> DOWN (retry after back-off)
 *   UP --read/write error, query_timeout--> DOWN (retry after back-off)
 * Back-off doubles from PG_RETRY_MIN to the entry's retry_max and starts
 * again at PG_RETRY_MIN once the connection is up.  One log line per
 * change between up and down (with the reason), never per query or per
 * failed retry.
 *
 * Timeouts: connect_timeout bounds a connection attempt; every query has a
 * deadline of query_timeout from the moment it was queued.  A queued query
 * past its deadline is failed (callback with NULL); a running one past its
 * deadline means the server hangs: the connection is dropped (PQcancel
 * would block the loop) and every queued query fails, so no RCPT waits on
 * a hung database longer than query_timeout.
 *
 * Owns: the connections, their queues, listeners, events and PGresults.
 * Never: calls a blocking libpq function on the loop (PQexec, PQconnectdb,
 * PQcancel, PQreset), or puts a value into SQL text.  Host names in a
 * conninfo are resolved by libpq inside PQconnectPoll (a blocking
 * getaddrinfo): operators give a numeric host or hostaddr (doc/pgsql.md).
 *
 * Security: parameters travel only through PQsendQueryParams; channel
 * names are our own identifiers ([a-z_]+), checked before they become
 * LISTEN text.  conninfo may hold a password: it is never logged.
 */
#include "config.h"
#include "pg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <event2/event.h>

#include "conf.h"
#include "log.h"

#define PG_RETRY_MIN        1       /* seconds: first reconnect delay */
#define PG_REASON_MAX       256
#define PG_CHANNEL_MAX      63      /* NAMEDATALEN - 1 */
#define PG_LISTEN_SQL_MAX   (sizeof "UNLISTEN " + PG_CHANNEL_MAX)

enum pg_state { PG_DOWN = 0, PG_CONNECTING, PG_UP };

static const char *const pg_state_names[] = { "down", "connecting", "up" };

struct pg_query {
    struct pg *p;
    char *sql;
    int nparams;
    char **params;
    pg_result_cb *cb;           /* NULL: cancelled while running */
    void *arg;
    struct timeval deadline;
    struct pg_query *next;
};

struct pg_listener {
    char channel[PG_CHANNEL_MAX + 1];
    pg_notify_cb *cb;
    pg_up_cb *on_up;
    void *arg;
    struct pg_listener *next;
};

struct pg {
    char *name;
    char *conninfo;
    long connect_timeout, query_timeout, retry_max;
    enum pg_state state;
    int announced;              /* -1 nothing logged yet, 0 down, 1 up */
    PGconn *conn;
    int sock;                   /* the socket ev_io watches, -1 none */
    short io_what;              /* what ev_io waits for */
    struct event *ev_io;
    struct event *ev_timer;
    long backoff;               /* seconds before the next attempt */
    struct timeval state_deadline;  /* DOWN: next attempt; CONNECTING: give up */
    struct pg_query *head, *tail;   /* waiting, in order */
    struct pg_query *running;       /* sent, result not complete */
    PGresult *result;               /* first result of the running query */
    struct pg_listener *listeners;
    int seen;                   /* pg_configure mark */
    char last_error[PG_REASON_MAX]; /* last query error logged */
    struct pg *next;
};

static struct event_base *pg_base;
static struct pg *pg_all;

static void pg_connect(struct pg *p);
static void pg_arm_timer(struct pg *p);
static void pg_pump(struct pg *p);
static void pg_ignore(void *arg, const PGresult *res);
static void pg_state_deadline(struct pg *p, long seconds);

/* ---- helpers ------------------------------------------------------------ */

/* libpq's messages end with a newline and may span lines: one line. */
static void pg_reason(char *out, size_t len, const char *msg)
{
    size_t o = 0;
    for (const char *s = msg ? msg : ""; *s && o + 1 < len; s++) {
        char ch = (*s == '\n' || *s == '\r' || *s == '\t') ? ' ' : *s;
        if (ch == ' ' && (o == 0 || out[o - 1] == ' '))
            continue;                   /* one space between libpq's lines */
        out[o++] = ch;
    }
    while (o > 0 && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
    if (o == 0)
        snprintf(out, len, "unknown error");
}

static void pg_query_free(struct pg_query *q)
{
    if (!q)
        return;
    free(q);                    /* sql and params live in the same block */
}

static void pg_notice(void *arg, const char *message)
{
    struct pg *p = arg;
    char r[PG_REASON_MAX];
    pg_reason(r, sizeof r, message);
    log_debug("pgsql %s: %s", p->name, r);
}

/* The one transition: debug line old -> new; an info line when the
 * connection becomes up, or down after being up (or at the first
 * failure), with the reason. */
static void pg_set_state(struct pg *p, enum pg_state to, const char *reason)
{
    if (p->state == to)
        return;
    log_debug("pgsql %s: %s -> %s", p->name, pg_state_names[p->state], pg_state_names[to]);
    p->state = to;
    if (to == PG_UP && p->announced != 1) {
        log_info("pgsql %s: up", p->name);
        p->announced = 1;
    } else if (to == PG_DOWN && p->announced != 0) {
        log_warn("pgsql %s: down: %s; lookups without a cached answer get 451 until it is back",
                 p->name, reason ? reason : "closed");
        p->announced = 0;
    }
}

static void pg_io_stop(struct pg *p)
{
    if (p->ev_io) {
        event_free(p->ev_io);
        p->ev_io = NULL;
    }
    p->sock = -1;
    p->io_what = 0;
}

static void pg_on_io(evutil_socket_t fd, short what, void *arg);

static void pg_io_want(struct pg *p, short what)
{
    int sock = p->conn ? PQsocket(p->conn) : -1;
    if (p->ev_io && sock == p->sock && what == p->io_what)
        return;
    pg_io_stop(p);
    if (sock < 0)
        return;
    p->ev_io = event_new(pg_base, sock, what | EV_PERSIST, pg_on_io, p);
    if (!p->ev_io || event_add(p->ev_io, NULL) != 0)
        log_panic("pgsql %s: cannot watch socket", p->name);
    p->sock = sock;
    p->io_what = what;
}

/* Fail every query: the callbacks get NULL ("no answer"). */
static void pg_fail_all(struct pg *p)
{
    struct pg_query *q = p->running, *list = p->head;
    p->running = NULL;
    p->head = p->tail = NULL;
    if (p->result) {
        PQclear(p->result);
        p->result = NULL;
    }
    if (q) {
        q->next = list;
        list = q;
    }
    while (list) {
        q = list;
        list = q->next;
        if (q->cb)
            q->cb(q->arg, NULL);
        pg_query_free(q);
    }
}

/* The connection is gone (or never came): drop it, fail what waited,
 * retry after the back-off. */
static void pg_down(struct pg *p, const char *why)
{
    char r[PG_REASON_MAX];
    pg_reason(r, sizeof r, why);
    pg_io_stop(p);
    if (p->conn) {
        PQfinish(p->conn);
        p->conn = NULL;
    }
    pg_set_state(p, PG_DOWN, r);
    pg_state_deadline(p, p->backoff);
    pg_fail_all(p);
    pg_arm_timer(p);
    if (p->backoff < p->retry_max)
        p->backoff = p->backoff * 2 > p->retry_max ? p->retry_max : p->backoff * 2;
}

/* ---- timers ------------------------------------------------------------- */

static void pg_on_timer(evutil_socket_t fd, short what, void *arg);

/* One timer per connection: the earlier of the state's deadline (retry
 * when down, connect_timeout when connecting) and the first query's. */
static void pg_arm_timer(struct pg *p)
{
    struct timeval tv = { 0, 0 }, now, at;
    const struct pg_query *first = p->running ? p->running : p->head;
    int have = 0;

    event_del(p->ev_timer);
    if (p->state != PG_UP) {
        at = p->state_deadline;
        have = 1;
    }
    if (first && (!have || timercmp(&first->deadline, &at, <))) {
        at = first->deadline;
        have = 1;
    }
    if (!have)
        return;
    gettimeofday(&now, NULL);
    if (timercmp(&at, &now, >))
        timersub(&at, &now, &tv);
    event_add(p->ev_timer, &tv);
}

static void pg_state_deadline(struct pg *p, long seconds)
{
    gettimeofday(&p->state_deadline, NULL);
    p->state_deadline.tv_sec += seconds;
}

/* Queued queries past their deadline fail; a running one past its
 * deadline means the server hangs.  1 when the connection was dropped. */
static int pg_expire(struct pg *p)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    if (p->running && !timercmp(&p->running->deadline, &now, >)) {
        char why[PG_REASON_MAX];
        snprintf(why, sizeof why, "no answer to a query within %lds (query_timeout)",
                 p->query_timeout);
        pg_down(p, why);
        return 1;
    }
    while (p->head && !timercmp(&p->head->deadline, &now, >)) {
        struct pg_query *q = p->head;
        p->head = q->next;
        if (!p->head)
            p->tail = NULL;
        if (q->cb)
            q->cb(q->arg, NULL);
        pg_query_free(q);
    }
    return 0;
}

static void pg_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct pg *p = arg;
    struct timeval now;

    if (pg_expire(p))
        return;
    gettimeofday(&now, NULL);
    if (p->state != PG_UP && !timercmp(&p->state_deadline, &now, >)) {
        if (p->state == PG_DOWN) {
            pg_connect(p);
            return;
        } else {
            char why[PG_REASON_MAX];
            snprintf(why, sizeof why, "no connection within %lds (connect_timeout)",
                     p->connect_timeout);
            pg_down(p, why);
            return;
        }
    }
    pg_arm_timer(p);
}

/* ---- connecting --------------------------------------------------------- */

static void pg_queue_front(struct pg *p, struct pg_query *q)
{
    q->next = p->head;
    p->head = q;
    if (!p->tail)
        p->tail = q;
}

static struct pg_query *pg_query_new(struct pg *p, const char *sql, int nparams,
                                     const char *const *params, pg_result_cb *cb, void *arg)
{
    size_t size = sizeof(struct pg_query) + (size_t)nparams * sizeof(char *) + strlen(sql) + 1;
    struct pg_query *q;
    char *s;

    for (int i = 0; i < nparams; i++)
        size += strlen(params[i] ? params[i] : "") + 1;
    if (!(q = calloc(1, size)))
        return NULL;
    q->params = (char **)(void *)(q + 1);
    s = (char *)(q->params + nparams);
    q->sql = s;
    s = stpcpy(s, sql) + 1;
    for (int i = 0; i < nparams; i++) {
        q->params[i] = s;
        s = stpcpy(s, params[i] ? params[i] : "") + 1;
    }
    q->p = p;
    q->nparams = nparams;
    q->cb = cb;
    q->arg = arg;
    gettimeofday(&q->deadline, NULL);
    q->deadline.tv_sec += p->query_timeout;
    return q;
}

static void pg_became_up(struct pg *p)
{
    char sql[PG_LISTEN_SQL_MAX];
    struct pg_listener *l;

    PQsetNoticeProcessor(p->conn, pg_notice, p);
    p->backoff = PG_RETRY_MIN;
    p->last_error[0] = '\0';
    pg_set_state(p, PG_UP, NULL);
    pg_io_want(p, EV_READ);
    /* LISTENs first, in front of anything queued meanwhile, so a NOTIFY
     * sent after an on_up re-read started cannot be missed. */
    for (l = p->listeners; l; l = l->next) {
        struct pg_query *q;
        snprintf(sql, sizeof sql, "LISTEN %s", l->channel);
        if ((q = pg_query_new(p, sql, 0, NULL, pg_ignore, NULL)))
            pg_queue_front(p, q);
    }
    for (l = p->listeners; l; l = l->next)
        if (l->on_up)
            l->on_up(l->arg, p);
    pg_pump(p);
}

static void pg_connect_poll(struct pg *p)
{
    switch (PQconnectPoll(p->conn)) {
    case PGRES_POLLING_READING:
        pg_io_want(p, EV_READ);
        break;
    case PGRES_POLLING_WRITING:
        pg_io_want(p, EV_WRITE);
        break;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(p->conn, 1) != 0) {
            pg_down(p, PQerrorMessage(p->conn));
            break;
        }
        pg_became_up(p);
        break;
    default:
        pg_down(p, PQerrorMessage(p->conn));
        break;
    }
}

static void pg_connect(struct pg *p)
{
    pg_set_state(p, PG_CONNECTING, NULL);
    pg_state_deadline(p, p->connect_timeout);
    p->conn = PQconnectStart(p->conninfo);
    if (!p->conn) {
        pg_down(p, "out of memory");
        return;
    }
    if (PQstatus(p->conn) == CONNECTION_BAD) {
        pg_down(p, PQerrorMessage(p->conn));
        return;
    }
    pg_arm_timer(p);
    /* libpq: start as if PQconnectPoll had answered WRITING. */
    pg_io_want(p, EV_WRITE);
}

/* ---- queries ------------------------------------------------------------ */

/* Send the next query when the connection is idle. */
static void pg_pump(struct pg *p)
{
    while (p->state == PG_UP && !p->running && p->head) {
        struct pg_query *q = p->head;
        int r;
        p->head = q->next;
        if (!p->head)
            p->tail = NULL;
        q->next = NULL;
        if (!PQsendQueryParams(p->conn, q->sql, q->nparams, NULL,
                               (const char *const *)q->params, NULL, NULL, 0)) {
            pg_queue_front(p, q);
            pg_down(p, PQerrorMessage(p->conn));
            return;
        }
        p->running = q;
        r = PQflush(p->conn);
        if (r < 0) {
            pg_down(p, PQerrorMessage(p->conn));
            return;
        }
        pg_io_want(p, r == 1 ? EV_READ | EV_WRITE : EV_READ);
    }
    pg_arm_timer(p);
}

static void pg_query_done(struct pg *p)
{
    struct pg_query *q = p->running;
    PGresult *res = p->result;
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

    p->running = NULL;
    p->result = NULL;
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        char r[PG_REASON_MAX];
        pg_reason(r, sizeof r, res ? PQresultErrorMessage(res) : PQerrorMessage(p->conn));
        /* A broken custom query fails every lookup: say so once, not per RCPT. */
        if (strcmp(r, p->last_error) != 0) {
            log_warn("pgsql %s: query failed: %s", p->name, r);
            snprintf(p->last_error, sizeof p->last_error, "%s", r);
        }
        if (res)
            PQclear(res);
        res = NULL;
    }
    if (q->cb)
        q->cb(q->arg, res);
    if (res)
        PQclear(res);
    pg_query_free(q);
}

static void pg_notifies(struct pg *p)
{
    PGnotify *n;
    while (p->conn && (n = PQnotifies(p->conn)) != NULL) {
        /* Copy: a callback may unlisten (and free its entry). */
        char channel[PG_CHANNEL_MAX + 1], *payload = strdup(n->extra ? n->extra : "");
        snprintf(channel, sizeof channel, "%s", n->relname);
        PQfreemem(n);
        for (struct pg_listener *l = p->listeners, *next; l; l = next) {
            next = l->next;
            if (strcmp(l->channel, channel) == 0 && l->cb)
                l->cb(l->arg, channel, payload ? payload : "");
        }
        free(payload);
    }
}

static void pg_on_io(evutil_socket_t fd, short what, void *arg)
{
    struct pg *p = arg;

    if (p->state == PG_CONNECTING) {
        pg_connect_poll(p);
        return;
    }
    if (p->state != PG_UP)
        return;
    if (what & EV_WRITE) {
        int r = PQflush(p->conn);
        if (r < 0) {
            pg_down(p, PQerrorMessage(p->conn));
            return;
        }
        pg_io_want(p, r == 1 ? EV_READ | EV_WRITE : EV_READ);
    }
    if (!(what & EV_READ))
        return;
    if (!PQconsumeInput(p->conn)) {
        pg_down(p, PQerrorMessage(p->conn));
        return;
    }
    while (p->running && !PQisBusy(p->conn)) {
        PGresult *res = PQgetResult(p->conn);
        if (!res) {
            pg_query_done(p);
            if (p->state != PG_UP)
                return;
            break;
        }
        if (!p->result)
            p->result = res;        /* one statement: the first result is the answer */
        else
            PQclear(res);
    }
    if (PQstatus(p->conn) == CONNECTION_BAD) {
        pg_down(p, PQerrorMessage(p->conn));
        return;
    }
    pg_notifies(p);
    pg_pump(p);
}

/* ---- life cycle --------------------------------------------------------- */

static void pg_destroy(struct pg *p, int callbacks)
{
    if (callbacks)
        pg_fail_all(p);
    else {
        struct pg_query *q = p->running, *n;
        if (q)
            pg_query_free(q);
        for (q = p->head; q; q = n) {
            n = q->next;
            pg_query_free(q);
        }
        if (p->result)
            PQclear(p->result);
    }
    pg_io_stop(p);
    if (p->conn)
        PQfinish(p->conn);
    if (p->ev_timer)
        event_free(p->ev_timer);
    while (p->listeners) {
        struct pg_listener *l = p->listeners;
        p->listeners = l->next;
        free(l);
    }
    free(p->name);
    free(p->conninfo);
    free(p);
}

static void pg_apply(struct pg *p, const struct conf_pgsql *e)
{
    p->connect_timeout = e->connect_timeout;
    p->query_timeout = e->query_timeout;
    p->retry_max = e->retry_max;
    if (p->backoff > p->retry_max)
        p->backoff = p->retry_max;
}

int pg_configure(struct event_base *base, const struct conf *c, char *err, size_t errlen)
{
    struct pg **pp, *p;

    pg_base = base;
    for (p = pg_all; p; p = p->next)
        p->seen = 0;
    for (size_t i = 0; i < c->npgsql; i++) {
        const struct conf_pgsql *e = &c->pgsql[i];
        for (p = pg_all; p; p = p->next)
            if (strcmp(p->name, e->name) == 0)
                break;
        if (p && strcmp(p->conninfo, e->conninfo) != 0) {
            /* Another database under the same name: start over, keeping
             * the listeners (their owners still expect notifications). */
            char *ci = strdup(e->conninfo);
            if (!ci) {
                snprintf(err, errlen, "pgsql %s: out of memory", e->name);
                return -1;
            }
            log_info("pgsql %s: conninfo changed; reconnecting", p->name);
            free(p->conninfo);
            p->conninfo = ci;
            pg_apply(p, e);
            pg_io_stop(p);
            if (p->conn) {
                PQfinish(p->conn);
                p->conn = NULL;
            }
            pg_fail_all(p);
            p->state = PG_DOWN;
            p->backoff = PG_RETRY_MIN;
            p->seen = 1;
            pg_connect(p);
            continue;
        }
        if (p) {
            pg_apply(p, e);
            p->seen = 1;
            continue;
        }
        if (!(p = calloc(1, sizeof *p)) || !(p->name = strdup(e->name)) ||
            !(p->conninfo = strdup(e->conninfo)) ||
            !(p->ev_timer = evtimer_new(base, pg_on_timer, p))) {
            if (p) {
                free(p->name);
                free(p->conninfo);
                free(p);
            }
            snprintf(err, errlen, "pgsql %s: out of memory", e->name);
            return -1;
        }
        p->sock = -1;
        p->announced = -1;
        p->backoff = PG_RETRY_MIN;
        p->state = PG_DOWN;
        p->seen = 1;
        pg_apply(p, e);
        p->next = pg_all;
        pg_all = p;
        pg_connect(p);
    }
    for (pp = &pg_all; (p = *pp);) {
        if (p->seen) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        log_info("pgsql %s: no longer configured; closing", p->name);
        pg_destroy(p, 1);
    }
    return 0;
}

void pg_shutdown(void)
{
    /* The loop has ended: nobody waits for an answer any more, and a
     * callback could reach modules already freed. */
    while (pg_all) {
        struct pg *p = pg_all;
        pg_all = p->next;
        pg_destroy(p, 0);
    }
}

struct pg *pg_find(const char *name)
{
    for (struct pg *p = pg_all; p && name; p = p->next)
        if (strcmp(p->name, name) == 0)
            return p;
    return NULL;
}

int pg_is_up(const struct pg *p)
{
    return p && p->state == PG_UP;
}

const char *pg_name(const struct pg *p)
{
    return p ? p->name : "";
}

void pg_each(void (*fn)(void *arg, const char *name, int up), void *arg)
{
    for (const struct pg *p = pg_all; p; p = p->next)
        fn(arg, p->name, p->state == PG_UP);
}

struct pg_query *pg_query(struct pg *p, const char *sql, int nparams,
                          const char *const *params, pg_result_cb *cb, void *arg)
{
    struct pg_query *q;
    if (!p || !cb || nparams < 0)
        return NULL;
    if (!(q = pg_query_new(p, sql, nparams, params, cb, arg)))
        return NULL;
    if (p->tail)
        p->tail->next = q;
    else
        p->head = q;
    p->tail = q;
    if (p->state == PG_UP)
        pg_pump(p);
    else
        pg_arm_timer(p);
    return q;
}

void pg_cancel(struct pg_query *q)
{
    struct pg *p;
    if (!q)
        return;
    p = q->p;
    if (p->running == q) {
        q->cb = NULL;               /* its result is read and dropped */
        return;
    }
    for (struct pg_query **qq = &p->head, *prev = NULL; *qq; prev = *qq, qq = &(*qq)->next) {
        if (*qq == q) {
            *qq = q->next;
            if (p->tail == q)
                p->tail = prev;
            pg_query_free(q);
            return;
        }
    }
}

static int pg_channel_ok(const char *ch)
{
    size_t n = 0;
    for (; ch[n]; n++)
        if (!((ch[n] >= 'a' && ch[n] <= 'z') || ch[n] == '_'))
            return 0;
    return n > 0 && n <= PG_CHANNEL_MAX;
}

/* LISTEN/UNLISTEN have no callback of their own. */
static void pg_ignore(void *arg, const PGresult *res)
{
}

int pg_listen(struct pg *p, const char *channel, pg_notify_cb *cb, pg_up_cb *on_up, void *arg)
{
    struct pg_listener *l;
    char sql[PG_LISTEN_SQL_MAX];
    if (!p || !pg_channel_ok(channel))
        return -1;
    if (!(l = calloc(1, sizeof *l)))
        return -1;
    snprintf(l->channel, sizeof l->channel, "%s", channel);
    l->cb = cb;
    l->on_up = on_up;
    l->arg = arg;
    l->next = p->listeners;
    p->listeners = l;
    if (p->state == PG_UP) {
        snprintf(sql, sizeof sql, "LISTEN %s", channel);
        pg_query(p, sql, 0, NULL, pg_ignore, NULL);
    }
    return 0;
}

void pg_unlisten(struct pg *p, const char *channel, void *arg)
{
    int others = 0;
    if (!p)
        return;
    for (struct pg_listener **ll = &p->listeners; *ll;) {
        struct pg_listener *l = *ll;
        if (strcmp(l->channel, channel) == 0 && l->arg == arg) {
            *ll = l->next;
            free(l);
            continue;
        }
        if (strcmp(l->channel, channel) == 0)
            others = 1;
        ll = &l->next;
    }
    if (!others && p->state == PG_UP && pg_channel_ok(channel)) {
        char sql[PG_LISTEN_SQL_MAX];
        snprintf(sql, sizeof sql, "UNLISTEN %s", channel);
        pg_query(p, sql, 0, NULL, pg_ignore, NULL);
    }
}
