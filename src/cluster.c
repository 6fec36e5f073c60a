/*
 * cluster.c - the fleet: holds, flushes, node status and the verify cache
 * shared by every mxkeepd node through one PostgreSQL database (cluster.h,
 * doc/scaling.md).
 *
 * What it does: on every (re)connect of its pgsql entry, creates its
 * tables if missing, publishes what this node did while the database was
 * away (the outbox), and reads the holds table again, reconciling the
 * local holds it made for the fleet.  LISTENs on mxkeep_hold and
 * mxkeep_flush and applies what the other nodes publish through the
 * scheduler's own calls (delivery_hold, delivery_flush).  Every
 * status_interval, one statement upserts this node's node_status rows and
 * returns the other live nodes' backlog per destination, kept in memory
 * so an ETRN's fleet count is answered at once.
 *
 * Owns: the outbox, the set of domains held for the fleet, the others'
 * counts, its timer, its LISTENs and queries in flight.  Borrows the
 * scheduler, the spool and the pgsql connection (pg.h).
 *
 * Must never: block the loop (every query goes through pg.c's
 * asynchronous API; the one blocking read, of the holds at start-up, runs
 * before the loop does and is bounded); let a database outage change what the node serves
 * (holds stay as last known, requests are applied locally first); let a
 * callback touch a freed cluster (queries in flight are cancelled by
 * cluster_free).
 *
 * Security: domain names, node names and addresses travel as bound
 * parameters only, arrays included (array literals are quoted element by
 * element); NOTIFY payloads from other nodes are parsed as untrusted
 * (bounded, one domain checked like a control-socket argument) because
 * anyone with access to the database can NOTIFY.
 */
#include "config.h"
#include "cluster.h"

#include "conf.h"
#include "delivery.h"
#include "json.h"
#include "log.h"
#include "pg.h"
#include "queue_db.h"
#include "spool.h"
#include "util.h"
#include "verify.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>

#define CLUSTER_CHAN_HOLD       "mxkeep_hold"
#define CLUSTER_CHAN_FLUSH      "mxkeep_flush"
#define CLUSTER_NODE_SIZE       64      /* cluster.node, NUL included */
#define CLUSTER_PAYLOAD_MAX     512     /* NOTIFY payloads we build or accept */
#define CLUSTER_NUM_SIZE        32      /* a decimal int64 parameter */
#define CLUSTER_OUTBOX_MAX      10000   /* requests kept while the database is away */
#define CLUSTER_LOCK_KEY        "714902"  /* pg_advisory_xact_lock key of the schema */

enum cluster_op { OP_HOLD, OP_RELEASE, OP_FLUSH };

struct outbox_item {
    enum cluster_op op;
    char domain[SMTP_DOMAIN_MAX + 1];
};

/* Name -> count, the other nodes' backlog (small: one per destination). */
struct other_count {
    char domain[SMTP_DOMAIN_MAX + 1];
    uint64_t nmsg;
};

/* A query of ours in flight, so cluster_free can cancel it. */
struct cl_query {
    struct cluster *cl;
    struct pg_query *q;
    struct cl_query *prev, *next;
    struct outbox_item item;            /* publish: put back on failure */
    int kind;                           /* enum below */
    cluster_summary_cb *scb;            /* summary */
    void *sarg;
};

enum { Q_SCHEMA, Q_PUBLISH, Q_HOLDS, Q_STATUS, Q_SUMMARY, Q_VERIFY };

struct cluster {
    struct event_base *base;
    const struct conf *conf;            /* referenced */
    struct delivery *dl;
    struct spool *sp;
    struct pg *pg;
    char node[CLUSTER_NODE_SIZE];       /* conf.c bounds it at 63 */
    struct event *tick;
    struct cl_query *queries;
    struct outbox_item *outbox;
    size_t nout, capout;
    char (*held)[SMTP_DOMAIN_MAX + 1];  /* domains held here for the fleet */
    size_t nheld, capheld;
    struct other_count *others;
    size_t nothers;
    int status_busy;                    /* one status statement at a time */
    int listening;
};

/* ------------------------------------------------------------------ */
/* The tables                                                          */
/* ------------------------------------------------------------------ */

/*
 * One DO block, so the whole schema is one statement (PQsendQueryParams
 * takes one) in one transaction, serialised by an advisory lock: nodes
 * starting together would otherwise race on CREATE TABLE IF NOT EXISTS.
 * doc/schema-cluster.sql holds the same tables for an administrator.
 */
static const char cluster_schema_sql[] =
    "DO $mxkeep$ BEGIN "
    "PERFORM pg_advisory_xact_lock(" CLUSTER_LOCK_KEY "); "
    "CREATE TABLE IF NOT EXISTS holds ("
    " domain text PRIMARY KEY, held boolean NOT NULL DEFAULT true,"
    " source text NOT NULL DEFAULT 'mxkeepctl', held_by text, held_at timestamptz NOT NULL DEFAULT now()); "
    "CREATE TABLE IF NOT EXISTS cluster_nodes ("
    " node text PRIMARY KEY, status_interval integer NOT NULL,"
    " started_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now()); "
    "CREATE TABLE IF NOT EXISTS node_status ("
    " node text NOT NULL, domain text NOT NULL, messages bigint NOT NULL, bytes bigint NOT NULL,"
    " oldest timestamptz, state text NOT NULL, last_error text NOT NULL DEFAULT '',"
    " updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (node, domain)); "
    "CREATE TABLE IF NOT EXISTS verify_cache ("
    " address text PRIMARY KEY, result text NOT NULL, reply text NOT NULL DEFAULT '',"
    " learned_at timestamptz NOT NULL DEFAULT now(), learned_by text); "
    "END $mxkeep$";

/* ------------------------------------------------------------------ */
/* Queries                                                             */
/* ------------------------------------------------------------------ */

static void cl_query_unlink(struct cl_query *cq)
{
    struct cluster *cl = cq->cl;

    if (cq->prev != NULL)
        cq->prev->next = cq->next;
    else if (cl->queries == cq)
        cl->queries = cq->next;
    if (cq->next != NULL)
        cq->next->prev = cq->prev;
}

static void cl_on_result(void *arg, const PGresult *res);

static struct cl_query *cl_send(struct cluster *cl, int kind, const char *sql, int n,
                                const char *const *params)
{
    struct cl_query *cq = calloc(1, sizeof *cq);

    if (cq == NULL)
        return NULL;
    cq->cl = cl;
    cq->kind = kind;
    cq->next = cl->queries;
    if (cl->queries != NULL)
        cl->queries->prev = cq;
    cl->queries = cq;
    cq->q = pg_query(cl->pg, sql, n, params, cl_on_result, cq);
    if (cq->q == NULL) {
        cl_query_unlink(cq);
        free(cq);
        return NULL;
    }
    return cq;
}

static int res_ok(const PGresult *res)
{
    ExecStatusType st;

    if (res == NULL)
        return 0;
    st = PQresultStatus(res);
    return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
}

/* The server's one-line reason (PQresultErrorMessage ends in a newline
 * and may add DETAIL lines: not for a log line or a control reply). */
static const char *res_err(const PGresult *res)
{
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    return m ? m : res ? PQresStatus(PQresultStatus(res)) : "database unreachable";
}

/* ------------------------------------------------------------------ */
/* Holds applied here for the fleet                                    */
/* ------------------------------------------------------------------ */

static ssize_t held_find(const struct cluster *cl, const char *domain)
{
    for (size_t i = 0; i < cl->nheld; i++)
        if (strcmp(cl->held[i], domain) == 0)
            return (ssize_t)i;
    return -1;
}

static void held_set(struct cluster *cl, const char *domain, int hold)
{
    ssize_t i = held_find(cl, domain);

    if (!hold) {
        if (i >= 0)
            memcpy(cl->held[i], cl->held[--cl->nheld], sizeof cl->held[0]);
        return;
    }
    if (i >= 0)
        return;
    if (cl->nheld == cl->capheld) {
        size_t cap = cl->capheld ? cl->capheld * 2 : 16;
        void *p = realloc(cl->held, cap * sizeof *cl->held);
        if (p == NULL) {
            log_warn("cluster: out of memory: hold of %s not remembered across reloads", domain);
            return;
        }
        cl->held = p;
        cl->capheld = cap;
    }
    snprintf(cl->held[cl->nheld++], sizeof cl->held[0], "%s", domain);
}

/* Apply a hold or release that came from the fleet.  A domain this node
 * does not know yet (a database domain not loaded, say) stays in the set
 * and is held when it appears (every tick re-applies the set). */
static void cluster_apply(struct cluster *cl, const char *domain, int hold, const char *from)
{
    struct delivery_dest_info info;
    int was = delivery_dest_info(cl->dl, domain, &info) == 0 && info.held;

    held_set(cl, domain, hold);
    if (was == hold)
        return;
    if (delivery_hold(cl->dl, domain, hold) == 0)
        log_info("cluster: %s %s by node %s", domain, hold ? "held" : "released", from);
}

static void cluster_reapply(struct cluster *cl)
{
    struct delivery_dest_info info;

    for (size_t i = 0; i < cl->nheld; i++)
        if (delivery_dest_info(cl->dl, cl->held[i], &info) != 0 || !info.held)
            delivery_hold(cl->dl, cl->held[i], 1);
}

/* ------------------------------------------------------------------ */
/* Publishing: hold, release, flush                                    */
/* ------------------------------------------------------------------ */

static void outbox_put(struct cluster *cl, const struct outbox_item *it)
{
    /* A later hold/release of a domain replaces the earlier one; flushes
     * of one domain are one. */
    for (size_t i = 0; i < cl->nout; i++) {
        struct outbox_item *o = &cl->outbox[i];
        if (strcmp(o->domain, it->domain) != 0)
            continue;
        if ((o->op == OP_FLUSH) == (it->op == OP_FLUSH)) {
            o->op = it->op;
            return;
        }
    }
    if (cl->nout >= CLUSTER_OUTBOX_MAX) {
        log_warn("cluster: %zu requests wait for the database; %s of %s not published",
                 cl->nout, it->op == OP_FLUSH ? "flush" : "hold", it->domain);
        return;
    }
    if (cl->nout == cl->capout) {
        size_t cap = cl->capout ? cl->capout * 2 : 16;
        void *p = realloc(cl->outbox, cap * sizeof *cl->outbox);
        if (p == NULL) {
            log_warn("cluster: out of memory: %s not published", it->domain);
            return;
        }
        cl->outbox = p;
        cl->capout = cap;
    }
    cl->outbox[cl->nout++] = *it;
}

static const char sql_hold[] =
    "WITH w AS (INSERT INTO holds (domain, held, source, held_by, held_at)"
    " VALUES ($1, true, 'mxkeepctl', $2, now())"
    " ON CONFLICT (domain) DO UPDATE SET held = true, source = 'mxkeepctl',"
    " held_by = EXCLUDED.held_by, held_at = now() RETURNING 1)"
    " SELECT pg_notify('" CLUSTER_CHAN_HOLD "', $3) FROM w";
static const char sql_release[] =
    "WITH w AS (INSERT INTO holds (domain, held, source, held_by, held_at)"
    " VALUES ($1, false, 'mxkeepctl', $2, now())"
    " ON CONFLICT (domain) DO UPDATE SET held = false, source = 'mxkeepctl',"
    " held_by = EXCLUDED.held_by, held_at = now() RETURNING 1)"
    " SELECT pg_notify('" CLUSTER_CHAN_HOLD "', $3) FROM w";
static const char sql_flush[] = "SELECT pg_notify('" CLUSTER_CHAN_FLUSH "', $1)";

static void publish(struct cluster *cl, const struct outbox_item *it)
{
    char payload[CLUSTER_PAYLOAD_MAX];
    struct cl_query *cq;

    if (!pg_is_up(cl->pg)) {
        outbox_put(cl, it);
        return;
    }
    /* "node op domain": the receivers skip their own. */
    snprintf(payload, sizeof payload, "%s %s %s", cl->node,
             it->op == OP_HOLD ? "hold" : it->op == OP_RELEASE ? "release" : "flush", it->domain);
    if (it->op == OP_FLUSH) {
        const char *p[1] = { payload };
        cq = cl_send(cl, Q_PUBLISH, sql_flush, 1, p);
    } else {
        const char *p[3] = { it->domain, cl->node, payload };
        cq = cl_send(cl, Q_PUBLISH, it->op == OP_HOLD ? sql_hold : sql_release, 3, p);
    }
    if (cq == NULL)
        outbox_put(cl, it);
    else
        cq->item = *it;
}

static void outbox_drain(struct cluster *cl)
{
    struct outbox_item *items = cl->outbox;
    size_t n = cl->nout;

    if (n == 0)
        return;
    log_info("cluster: publishing %zu request%s made while the database was away", n,
             n == 1 ? "" : "s");
    cl->outbox = NULL;
    cl->nout = cl->capout = 0;
    for (size_t i = 0; i < n; i++)
        publish(cl, &items[i]);
    free(items);
}

void cluster_hold(struct cluster *cl, const char *domain, int hold)
{
    struct outbox_item it = { .op = hold ? OP_HOLD : OP_RELEASE };

    if (cl == NULL)
        return;
    snprintf(it.domain, sizeof it.domain, "%s", domain);
    held_set(cl, domain, hold);
    publish(cl, &it);
}

static uint64_t others_count(const struct cluster *cl, const char *domain)
{
    for (size_t i = 0; i < cl->nothers; i++)
        if (strcmp(cl->others[i].domain, domain) == 0)
            return cl->others[i].nmsg;
    return 0;
}

uint64_t cluster_flush(struct cluster *cl, const char *domain)
{
    struct outbox_item it = { .op = OP_FLUSH };

    if (cl == NULL)
        return 0;
    snprintf(it.domain, sizeof it.domain, "%s", domain);
    publish(cl, &it);
    /* Down: the others flush when the request reaches them, later. */
    return pg_is_up(cl->pg) ? others_count(cl, domain) : 0;
}

uint64_t cluster_etrn_count(void *arg, const char *domain, int flush)
{
    const struct cluster *cl = arg;

    if (flush)
        return cluster_flush(arg, domain);
    return cl != NULL && pg_is_up(cl->pg) ? others_count(cl, domain) : 0;
}

/* ------------------------------------------------------------------ */
/* Notifications from the other nodes                                  */
/* ------------------------------------------------------------------ */

/* The control socket's rule for a domain argument: lower case, letters,
 * digits and - . _ [ ] :, at most SMTP_DOMAIN_MAX. */
static int domain_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > SMTP_DOMAIN_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!islower(ch) && !isdigit(ch) && ch != '-' && ch != '.' && ch != '_' && ch != '[' &&
            ch != ']' && ch != ':')
            return 0;
    }
    return 1;
}

static void cluster_on_notify(void *arg, const char *channel, const char *payload)
{
    struct cluster *cl = arg;
    char buf[CLUSTER_PAYLOAD_MAX], *node, *op, *domain, *save = NULL;

    if (strlen(payload) >= sizeof buf) {
        log_warn("cluster: NOTIFY on %s too long; ignored", channel);
        return;
    }
    snprintf(buf, sizeof buf, "%s", payload);
    node = strtok_r(buf, " ", &save);
    op = node ? strtok_r(NULL, " ", &save) : NULL;
    domain = op ? strtok_r(NULL, " ", &save) : NULL;
    if (domain == NULL || strtok_r(NULL, " ", &save) != NULL || !domain_ok(domain)) {
        log_warn("cluster: malformed NOTIFY on %s ignored", channel);
        return;
    }
    if (strcmp(node, cl->node) == 0)
        return;                         /* our own, already applied */
    if (strcmp(channel, CLUSTER_CHAN_FLUSH) == 0 && strcmp(op, "flush") == 0) {
        long n = delivery_flush(cl->dl, domain, NULL);
        log_info("cluster: flush %s from node %s: %ld message%s%s", domain, node, n < 0 ? 0 : n,
                 n == 1 ? "" : "s", n < 0 ? " (held here)" : "");
    } else if (strcmp(channel, CLUSTER_CHAN_HOLD) == 0 &&
               (strcmp(op, "hold") == 0 || strcmp(op, "release") == 0)) {
        cluster_apply(cl, domain, strcmp(op, "hold") == 0, node);
    } else {
        log_warn("cluster: unknown NOTIFY \"%s\" on %s ignored", op, channel);
    }
}

/* ------------------------------------------------------------------ */
/* (Re)connect: schema, outbox, holds                                  */
/* ------------------------------------------------------------------ */

static void status_send(struct cluster *cl);

static const char sql_holds[] = "SELECT domain, held, coalesce(held_by, '') FROM holds";

static void holds_read(struct cluster *cl, const PGresult *res)
{
    int n = PQntuples(res);
    char (*was)[SMTP_DOMAIN_MAX + 1] = NULL;
    size_t nwas = cl->nheld;

    /* Reconcile: what the table holds is held; what we held for the fleet
     * and the table no longer holds (released while we were away) is
     * released.  A row held = false releases nothing at start: the
     * config's own hold stands until someone releases it again. */
    if (nwas > 0 && (was = malloc(nwas * sizeof *was)) != NULL)
        memcpy(was, cl->held, nwas * sizeof *was);
    for (int i = 0; i < n; i++) {
        const char *d = PQgetvalue(res, i, 0);
        int held = PQgetvalue(res, i, 1)[0] == 't';
        if (!domain_ok(d))
            continue;
        if (held)
            cluster_apply(cl, d, 1, PQgetvalue(res, i, 2));
    }
    for (size_t j = 0; was != NULL && j < nwas; j++) {
        int still = 0;
        for (int i = 0; i < n && !still; i++)
            still = PQgetvalue(res, i, 1)[0] == 't' && strcmp(PQgetvalue(res, i, 0), was[j]) == 0;
        if (!still)
            cluster_apply(cl, was[j], 0, "(holds table)");
    }
    free(was);
}

static void cluster_on_up(void *arg, struct pg *p)
{
    struct cluster *cl = arg;

    (void)p;
    /* In order on the one connection: tables, then what we did while
     * away, then the holds as they are now (our own writes included). */
    if (cl_send(cl, Q_SCHEMA, cluster_schema_sql, 0, NULL) == NULL)
        log_warn("cluster: out of memory creating the fleet's tables");
    outbox_drain(cl);
    if (cl_send(cl, Q_HOLDS, sql_holds, 0, NULL) == NULL)
        log_warn("cluster: out of memory reading the holds table");
    status_send(cl);
}

/* ------------------------------------------------------------------ */
/* Node status                                                         */
/* ------------------------------------------------------------------ */

/* A growing text buffer for array literals. */
struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

/* One element of a PostgreSQL array literal, double-quoted with '"' and
 * '\' backslashed: any text survives, whatever it contains. */
static void sb_elem(struct sbuf *b, const char *s)
{
    sb_add(b, b->n > 1 ? ",\"" : "\"", b->n > 1 ? 2 : 1);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            sb_add(b, "\\", 1);
        sb_add(b, s, 1);
    }
    sb_add(b, "\"", 1);
}

struct status_rows {
    struct cluster *cl;
    struct sbuf dom, msg, bytes, oldest, state, err;
};

static const char *state_name(int state)
{
    switch (state) {
    case QDEST_UP: return "up";
    case QDEST_DOWN: return "down";
    case QDEST_HELD: return "held";
    default: return "unknown";
    }
}

static int status_each(void *arg, const struct delivery_dest_info *i)
{
    struct status_rows *r = arg;
    char num[CLUSTER_NUM_SIZE];
    int64_t oldest = 0;

    if (i->nmsg > 0) {
        /* The first QID waiting for the destination is its oldest (the
         * by_dest index is in QID order, as mxkeepctl summary reads it). */
        char after[QID_SIZE] = "", first[1][QID_SIZE];
        struct qmsg m;
        if (spool_page(r->cl->sp, i->domain, after, first, 1) == 1 &&
            spool_msg_get(r->cl->sp, first[0], &m) == 0)
            oldest = m.arrival;
    }
    sb_elem(&r->dom, i->domain);
    snprintf(num, sizeof num, "%" PRIu64, i->nmsg);
    sb_elem(&r->msg, num);
    snprintf(num, sizeof num, "%" PRIu64, i->nbytes);
    sb_elem(&r->bytes, num);
    snprintf(num, sizeof num, "%" PRId64, oldest);
    sb_elem(&r->oldest, num);
    sb_elem(&r->state, state_name(i->state));
    sb_elem(&r->err, i->last_error);
    return 0;
}

/*
 * One statement, so one transaction: this node's heartbeat, its rows
 * replaced (destinations gone are deleted), and the other live nodes'
 * backlog per destination read back in the same round trip.
 */
static const char sql_status[] =
    "WITH n AS (INSERT INTO cluster_nodes (node, status_interval, updated_at)"
    "  VALUES ($1, $8::integer, now()) ON CONFLICT (node) DO UPDATE"
    "  SET status_interval = EXCLUDED.status_interval, updated_at = now()),"
    " d AS (DELETE FROM node_status WHERE node = $1 AND NOT (domain = ANY ($2::text[]))),"
    " u AS (INSERT INTO node_status (node, domain, messages, bytes, oldest, state, last_error,"
    "  updated_at) SELECT $1, t.d, t.m, t.b,"
    "  CASE WHEN t.o > 0 THEN to_timestamp(t.o) END, t.s, t.e, now()"
    "  FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[],"
    "  $7::text[]) AS t(d, m, b, o, s, e)"
    "  ON CONFLICT (node, domain) DO UPDATE SET messages = EXCLUDED.messages,"
    "  bytes = EXCLUDED.bytes, oldest = EXCLUDED.oldest, state = EXCLUDED.state,"
    "  last_error = EXCLUDED.last_error, updated_at = now())"
    " SELECT s.domain, sum(s.messages)::bigint FROM node_status s"
    " JOIN cluster_nodes c ON c.node = s.node"
    " WHERE s.node <> $1 AND c.updated_at > now() - make_interval(secs => c.status_interval * $9::integer)"
    " GROUP BY s.domain";

static void status_send(struct cluster *cl)
{
    struct status_rows r = { .cl = cl };
    struct sbuf *all[] = { &r.dom, &r.msg, &r.bytes, &r.oldest, &r.state, &r.err };
    char ival[CLUSTER_NUM_SIZE], stale[CLUSTER_NUM_SIZE];
    int oom = 0;

    if (cl->status_busy || !pg_is_up(cl->pg))
        return;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sb_add(all[i], "{", 1);
    delivery_dest_each(cl->dl, status_each, &r);
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        sb_add(all[i], "}", 1);
        oom |= all[i]->oom;
    }
    snprintf(ival, sizeof ival, "%ld", cl->conf->cluster.status_interval);
    snprintf(stale, sizeof stale, "%ld", cl->conf->cluster.stale_intervals);
    if (!oom) {
        const char *p[9] = { cl->node, r.dom.p, r.msg.p, r.bytes.p, r.oldest.p, r.state.p,
                             r.err.p, ival, stale };
        if (cl_send(cl, Q_STATUS, sql_status, 9, p) != NULL)
            cl->status_busy = 1;
    } else {
        log_warn("cluster: out of memory building the status rows");
    }
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]->p);
}

static void status_read(struct cluster *cl, const PGresult *res)
{
    int n = PQntuples(res);
    struct other_count *o = n > 0 ? calloc((size_t)n, sizeof *o) : NULL;

    if (n > 0 && o == NULL)
        return;                         /* keep the last counts */
    for (int i = 0; i < n; i++) {
        snprintf(o[i].domain, sizeof o[i].domain, "%s", PQgetvalue(res, i, 0));
        o[i].nmsg = strtoull(PQgetvalue(res, i, 1), NULL, 10);
    }
    free(cl->others);
    cl->others = o;
    cl->nothers = (size_t)n;
}

static void cluster_on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct cluster *cl = arg;

    (void)fd;
    (void)what;
    cluster_reapply(cl);
    status_send(cl);
}

/* ------------------------------------------------------------------ */
/* Summary                                                             */
/* ------------------------------------------------------------------ */

static const char sql_summary[] =
    "SELECT c.node,"
    " (c.updated_at < now() - make_interval(secs => c.status_interval * $1::integer)) AS stale,"
    " floor(extract(epoch FROM now() - c.updated_at))::bigint AS age,"
    " s.domain, s.messages, s.bytes, floor(extract(epoch FROM s.oldest))::bigint, s.state,"
    " s.last_error, floor(extract(epoch FROM now()))::bigint"
    " FROM cluster_nodes c LEFT JOIN node_status s ON s.node = c.node"
    " ORDER BY c.node, s.domain";

static void json_emit_evbuffer(void *arg, const char *p, size_t len)
{
    evbuffer_add(arg, p, len);
}

static void jstr(struct evbuffer *b, const char *s)
{
    json_escape(s, strlen(s), json_emit_evbuffer, b);
}

static void summary_reply(struct cl_query *cq, const PGresult *res)
{
    struct evbuffer *b;
    int n;

    if (!res_ok(res)) {
        cq->scb(cq->sarg, NULL, res_err(res));
        return;
    }
    if ((b = evbuffer_new()) == NULL) {
        cq->scb(cq->sarg, NULL, "out of memory");
        return;
    }
    n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        int has_dom = !PQgetisnull(res, i, 3);
        evbuffer_add_printf(b, "{\"node\":");
        jstr(b, PQgetvalue(res, i, 0));
        evbuffer_add_printf(b, ",\"stale\":%s,\"age\":%s,\"now\":%s,\"domain\":",
                            PQgetvalue(res, i, 1)[0] == 't' ? "true" : "false",
                            PQgetvalue(res, i, 2), PQgetvalue(res, i, 9));
        if (has_dom) {
            jstr(b, PQgetvalue(res, i, 3));
            evbuffer_add_printf(b, ",\"messages\":%s,\"bytes\":%s,\"oldest\":%s,\"state\":",
                                PQgetvalue(res, i, 4), PQgetvalue(res, i, 5),
                                PQgetisnull(res, i, 6) ? "null" : PQgetvalue(res, i, 6));
            jstr(b, PQgetvalue(res, i, 7));
            evbuffer_add_printf(b, ",\"last_error\":");
            jstr(b, PQgetvalue(res, i, 8));
        } else {
            evbuffer_add_printf(b, "null");
        }
        evbuffer_add_printf(b, "}\n");
    }
    cq->scb(cq->sarg, b, NULL);
    evbuffer_free(b);
}

int cluster_summary(struct cluster *cl, cluster_summary_cb *cb, void *arg)
{
    char stale[CLUSTER_NUM_SIZE];
    const char *p[1] = { stale };
    struct cl_query *cq;

    if (cl == NULL || !pg_is_up(cl->pg))
        return -1;
    snprintf(stale, sizeof stale, "%ld", cl->conf->cluster.stale_intervals);
    if ((cq = cl_send(cl, Q_SUMMARY, sql_summary, 1, p)) == NULL)
        return -1;
    cq->scb = cb;
    cq->sarg = arg;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Results                                                             */
/* ------------------------------------------------------------------ */

static void cl_on_result(void *arg, const PGresult *res)
{
    struct cl_query *cq = arg;
    struct cluster *cl = cq->cl;

    cl_query_unlink(cq);
    switch (cq->kind) {
    case Q_SCHEMA:
        if (!res_ok(res) && res != NULL)
            log_warn("cluster: creating the fleet's tables: %s", res_err(res));
        break;
    case Q_PUBLISH:
        /* Lost on the way: publish again when the database is back. */
        if (!res_ok(res))
            outbox_put(cl, &cq->item);
        break;
    case Q_HOLDS:
        if (res_ok(res))
            holds_read(cl, res);
        break;
    case Q_STATUS:
        cl->status_busy = 0;
        if (res_ok(res))
            status_read(cl, res);
        else if (res != NULL)
            log_warn("cluster: node status: %s", res_err(res));
        break;
    case Q_SUMMARY:
        summary_reply(cq, res);
        break;
    case Q_VERIFY:
        /* Fire and forget: the local cache has the answer anyway. */
        if (!res_ok(res) && res != NULL)
            log_warn("cluster: verify_cache: %s", res_err(res));
        break;
    }
    free(cq);
}

/* ------------------------------------------------------------------ */
/* The shared verify cache (verify.h's struct verify_shared)           */
/* ------------------------------------------------------------------ */

struct vlookup {
    struct cluster *cl;
    struct pg_query *q;
    void (*cb)(void *arg, int found, enum verify_result r, const char *reply, time_t when);
    void *arg;
};

static const char *vresult_name(enum verify_result r)
{
    switch (r) {
    case VERIFY_VALID: return "valid";
    case VERIFY_INVALID: return "invalid";
    default: return "unknown";
    }
}

static void vlookup_done(void *arg, const PGresult *res)
{
    struct vlookup *v = arg;
    int found = res_ok(res) && PQntuples(res) == 1;
    enum verify_result r = VERIFY_UNKNOWN;
    const char *reply = "";
    time_t when = 0;

    if (found) {
        const char *s = PQgetvalue(res, 0, 0);
        r = strcmp(s, "valid") == 0 ? VERIFY_VALID : strcmp(s, "invalid") == 0 ? VERIFY_INVALID
                                                                              : VERIFY_UNKNOWN;
        reply = PQgetvalue(res, 0, 1);
        when = (time_t)strtoll(PQgetvalue(res, 0, 2), NULL, 10);
        found = r != VERIFY_UNKNOWN;
    }
    v->cb(v->arg, found, r, reply, when);
    free(v);
}

static void *vshared_lookup(void *ctx, const char *key,
                            void (*cb)(void *arg, int found, enum verify_result r,
                                       const char *reply, time_t when),
                            void *arg)
{
    struct cluster *cl = ctx;
    struct vlookup *v;
    const char *p[1] = { key };

    /* Database away: no shared answer; the caller probes or uses its own. */
    if (cl == NULL || !pg_is_up(cl->pg) || (v = calloc(1, sizeof *v)) == NULL)
        return NULL;
    v->cl = cl;
    v->cb = cb;
    v->arg = arg;
    v->q = pg_query(cl->pg,
                    "SELECT result, reply, floor(extract(epoch FROM learned_at))::bigint"
                    " FROM verify_cache WHERE address = $1",
                    1, p, vlookup_done, v);
    if (v->q == NULL) {
        free(v);
        return NULL;
    }
    return v;
}

static void vshared_cancel(void *ctx, void *handle)
{
    struct vlookup *v = handle;

    (void)ctx;
    if (v == NULL)
        return;
    pg_cancel(v->q);
    free(v);
}

static void vshared_store(void *ctx, const char *key, enum verify_result r, const char *reply,
                          time_t when)
{
    struct cluster *cl = ctx;
    char ts[CLUSTER_NUM_SIZE];
    const char *p[5] = { key, vresult_name(r), reply ? reply : "", ts, cl ? cl->node : "" };

    if (cl == NULL || !pg_is_up(cl->pg) || (r != VERIFY_VALID && r != VERIFY_INVALID))
        return;
    snprintf(ts, sizeof ts, "%lld", (long long)when);
    /* Fire and forget; a newer answer never loses to an older one. */
    cl_send(cl, Q_VERIFY,
            "INSERT INTO verify_cache (address, result, reply, learned_at, learned_by)"
            " VALUES ($1, $2, $3, to_timestamp($4::bigint), $5)"
            " ON CONFLICT (address) DO UPDATE SET result = EXCLUDED.result,"
            " reply = EXCLUDED.reply, learned_at = EXCLUDED.learned_at,"
            " learned_by = EXCLUDED.learned_by"
            " WHERE verify_cache.learned_at <= EXCLUDED.learned_at",
            5, p);
}

static void vshared_forget(void *ctx, const char *key_or_domain)
{
    struct cluster *cl = ctx;
    const char *p[1] = { key_or_domain };

    if (cl == NULL || !pg_is_up(cl->pg))
        return;
    /* An address, or every address of a domain ("@domain" keys too). */
    cl_send(cl, Q_VERIFY,
            "DELETE FROM verify_cache WHERE address = $1"
            " OR (strpos($1, '@') = 0 AND lower(split_part(address, '@', 2)) = lower($1))",
            1, p);
}

static const struct verify_shared cluster_vops = {
    vshared_lookup, vshared_cancel, vshared_store, vshared_forget,
};

const struct verify_shared *cluster_verify_ops(void)
{
    return &cluster_vops;
}

/* ------------------------------------------------------------------ */
/* Life                                                                */
/* ------------------------------------------------------------------ */

/*
 * The one blocking database call, and it runs before the loop does: the
 * holds table is read before the scheduler starts, so a node restarted
 * during a fleet hold never delivers a held message in the moment before
 * its asynchronous connection would have answered.  Bounded by the pgsql
 * entry's connect_timeout and query_timeout; a database that does not
 * answer in time leaves the config's holds, and the asynchronous read on
 * connect corrects them later.
 */
static void cluster_holds_at_start(struct cluster *cl, const struct conf *c)
{
    const struct conf_pgsql *e = conf_pgsql_find(c, c->cluster.pgsql);
    char ct[CLUSTER_NUM_SIZE], opts[CLUSTER_PAYLOAD_MAX];
    const char *keys[] = { "dbname", "connect_timeout", "options", NULL };
    const char *vals[] = { e ? e->conninfo : "", ct, opts, NULL };
    PGconn *conn;
    PGresult *res;

    if (e == NULL)
        return;
    snprintf(ct, sizeof ct, "%ld", e->connect_timeout);
    snprintf(opts, sizeof opts, "-c statement_timeout=%ld", e->query_timeout * 1000);
    /* expand_dbname: the conninfo string first, our bounds after it. */
    conn = PQconnectdbParams(keys, vals, 1);
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        log_warn("cluster: database %s unreachable at start; holds as the file says until it "
                 "answers", c->cluster.pgsql);
        PQfinish(conn);
        return;
    }
    res = PQexecParams(conn, sql_holds, 0, NULL, NULL, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        holds_read(cl, res);
    /* No table yet (first node ever): nothing is held. */
    PQclear(res);
    PQfinish(conn);
}

static void cluster_arm(struct cluster *cl)
{
    struct timeval tv = { cl->conf->cluster.status_interval, 0 };

    event_del(cl->tick);
    event_add(cl->tick, &tv);
}

struct cluster *cluster_new(struct event_base *base, const struct conf *c, struct delivery *dl,
                            struct spool *sp, char *err, size_t errlen)
{
    struct cluster *cl;
    struct pg *p;
    const char *node;

    if (errlen)
        err[0] = '\0';
    if (!c->cluster.enabled)
        return NULL;
    if ((p = pg_find(c->cluster.pgsql)) == NULL) {
        snprintf(err, errlen, "cluster.pgsql: \"%s\" names no pgsql entry", c->cluster.pgsql);
        return NULL;
    }
    node = c->cluster.node ? c->cluster.node : c->hostname;
    if ((cl = calloc(1, sizeof *cl)) == NULL) {
        snprintf(err, errlen, "cluster: out of memory");
        return NULL;
    }
    cl->base = base;
    cl->conf = conf_ref(c);
    cl->dl = dl;
    cl->sp = sp;
    cl->pg = p;
    snprintf(cl->node, sizeof cl->node, "%s", node);
    cl->tick = event_new(base, -1, EV_PERSIST, cluster_on_tick, cl);
    if (cl->tick == NULL || pg_listen(p, CLUSTER_CHAN_HOLD, cluster_on_notify, cluster_on_up, cl) != 0 ||
        pg_listen(p, CLUSTER_CHAN_FLUSH, cluster_on_notify, NULL, cl) != 0) {
        snprintf(err, errlen, "cluster: cannot listen on the database's channels");
        cluster_free(cl);
        return NULL;
    }
    cl->listening = 1;
    cluster_arm(cl);
    cluster_holds_at_start(cl, c);
    /* Already up (pg_listen runs on_up only at the next connect): read now. */
    if (pg_is_up(p))
        cluster_on_up(cl, p);
    log_info("cluster: node %s, database %s, status every %lds", cl->node, pg_name(p),
             c->cluster.status_interval);
    return cl;
}

void cluster_reload(struct cluster *cl, const struct conf *c)
{
    const char *node;
    long was;

    if (cl == NULL)
        return;
    node = c->cluster.node ? c->cluster.node : c->hostname;
    if (!c->cluster.enabled || strcmp(node, cl->node) != 0 ||
        strcmp(c->cluster.pgsql, cl->conf->cluster.pgsql) != 0) {
        log_warn("cluster: a change of cluster.node or cluster.pgsql takes a restart; "
                 "still node %s on %s", cl->node, pg_name(cl->pg));
    } else {
        was = cl->conf->cluster.status_interval;
        conf_free(cl->conf);
        cl->conf = conf_ref(c);
        if (c->cluster.status_interval != was)
            cluster_arm(cl);
    }
    /* The reload handed holds back to the file: the fleet's come back. */
    cluster_reapply(cl);
}

void cluster_free(struct cluster *cl)
{
    if (cl == NULL)
        return;
    if (cl->listening) {
        pg_unlisten(cl->pg, CLUSTER_CHAN_HOLD, cl);
        pg_unlisten(cl->pg, CLUSTER_CHAN_FLUSH, cl);
    }
    while (cl->queries != NULL) {
        struct cl_query *cq = cl->queries;
        cl_query_unlink(cq);
        pg_cancel(cq->q);
        if (cq->kind == Q_SUMMARY)
            cq->scb(cq->sarg, NULL, "shutting down");
        free(cq);
    }
    if (cl->tick != NULL)
        event_free(cl->tick);
    conf_free(cl->conf);
    free(cl->outbox);
    free(cl->held);
    free(cl->others);
    free(cl);
}
