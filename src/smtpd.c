/*
 * smtpd.c - inbound SMTP sessions (RFC 5321, 1870, 2920, 3030, 3207, 3461,
 * 6152, 6531, 1985).
 *
 * Each connection is a struct session whose life is an explicit state
 * machine: session_drive() is the one loop that moves it (memcached's
 * drive_machine), session_set_state() the one transition function, checked
 * against sstate_next[] (closing and dead are final), and smtpd_cmds[] the
 * table of which command is allowed in which state.
 *
 * Owns: the sessions, their bufferevents, the transaction in progress (the
 * body being received, its parser, its recipients), each session's
 * reverse lookup of its client (cancelled in session_free()), and the
 * commits in flight.  Hands a finished message to spool_commit() with a
 * struct smtpd_commit owned by that request: its completion, not the
 * session, makes the message "queued" (log line, counters, the queued
 * hook); the session only observes it and answers 250 from it, i.e. after
 * the message is on stable storage.  A refusal is counted in its reject
 * class where it is decided.
 *
 * Never: blocks on the disk (the spool's writer thread does the syncing);
 * runs a command that arrived in cleartext before STARTTLS completed;
 * treats anything but <CRLF>.<CRLF> as the end of DATA (data.c); frees a
 * session anywhere but session_free(), which runs only at the very end of
 * a libevent callback (the S_DEAD state marks it); hangs an effect of a
 * durable change on the session; lets a closed session back into the
 * dialogue (an unlisted transition is a broken invariant: panic).
 *
 * Security: every peer-controlled quantity is bounded: line length,
 * recipients, message and header size, errors, junk commands, time in each
 * state (read/write timeouts), and buffered input/output (watermarks).
 */
#include "config.h"
#include "smtpd.h"
#include "authres.h"
#include "data.h"
#include "dkim.h"
#include "dns.h"
#include "dnsbl.h"
#include "listen.h"
#include "greylist.h"
#include "log.h"
#include "milter_run.h"
#include "milter_set.h"
#include "quarantine.h"
#include "policy.h"
#include "qid.h"
#include "queue_db.h"
#include "ratelimit.h"
#include "received.h"
#include "recipient.h"
#include "smtp_parse.h"
#include "spf.h"
#include "spool.h"
#include "stats.h"
#include "tls.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>

/* Buffered input beyond this stops reading from the socket (the client is
 * ahead of us while a commit or handshake is in progress). */
#define SMTPD_INPUT_MAX (256 * 1024)
/* Unread replies beyond this stop command processing until the client
 * reads: a pipelining client that never reads cannot grow our memory. */
#define SMTPD_OUTPUT_MAX (64 * 1024)
/* Room for our Received header: every field at its bound (helo and names
 * 255, a one-recipient "for <path>" of SMTP_PATH_MAX, the TLS text) plus
 * folding, with margin; received_format refusing it would be a bug. */
#define SMTPD_RECEIVED_MAX (4 * 1024 + SMTP_PATH_MAX)
/* Seconds a statvfs() answer is trusted. */
#define SMTPD_DISK_CHECK_EVERY 1
/* A DNSBL refusal: formatted in a buffer that holds every part, then cut
 * to one reply line of 512 octets with its CRLF (RFC 5321 4.5.3.1.5). */
#define SMTPD_DNSBL_REPLY_BUF 1024
#define SMTP_REPLY_LINE_MAX 510

enum sstate {
    S_INIT = 0,     /* greeted; no HELO/EHLO yet */
    S_HELO,         /* HELO/EHLO done, no transaction */
    S_MAIL,         /* MAIL accepted, no recipient yet */
    S_RCPT,         /* at least one recipient */
    S_DATA,         /* reading message text after 354 */
    S_BDAT,         /* reading the octets of a BDAT chunk */
    S_CHUNKING,     /* between BDAT chunks */
    S_COMMIT,       /* end of data seen; waiting for the spool */
    S_RCPT_WAIT,    /* a RCPT's verdict is pending (table, callout) */
    S_MILTER,       /* end of data seen; the milters look at the message */
    S_MILTER_WAIT,  /* a HELO or MAIL waits for the live milters' verdict */
    S_TLS,          /* TLS handshake in progress */
    S_CLOSING,      /* last reply queued; free once it is written */
    S_DEAD          /* free at the end of the current callback */
};

static const char *const sstate_names[] = {
    "init", "helo", "mail", "rcpt", "data", "bdat", "chunking", "commit", "rcpt-wait", "milter",
    "milter-wait", "tls",
    "closing", "dead",
};
_Static_assert(sizeof sstate_names / sizeof sstate_names[0] == S_DEAD + 1,
               "sstate_names[] must name every enum sstate");

#define ST(s) (1u << (s))
/* Closing is final: a session that queued its last reply (or died) never
 * moves back into the dialogue, whatever completes later. */
#define ST_END (ST(S_CLOSING) | ST(S_DEAD))

/* The allowed transitions, checked by session_set_state(): from each state,
 * the states it may move to (staying put is always allowed). */
static const unsigned sstate_next[] = {
    [S_INIT] = ST(S_HELO) | ST(S_BDAT) | ST(S_TLS) | ST_END,
    [S_HELO] = ST(S_MAIL) | ST(S_BDAT) | ST(S_TLS) | ST(S_MILTER_WAIT) | ST_END,
    [S_MAIL] = ST(S_HELO) | ST(S_RCPT) | ST(S_BDAT) | ST(S_RCPT_WAIT) | ST(S_MILTER_WAIT) | ST_END,
    [S_RCPT] = ST(S_HELO) | ST(S_DATA) | ST(S_BDAT) | ST(S_RCPT_WAIT) | ST_END,
    [S_DATA] = ST(S_HELO) | ST(S_COMMIT) | ST(S_MILTER) | ST_END,
    [S_BDAT] = ST(S_INIT) | ST(S_HELO) | ST(S_CHUNKING) | ST(S_COMMIT) | ST(S_MILTER) | ST_END,
    [S_CHUNKING] = ST(S_HELO) | ST(S_BDAT) | ST_END,
    [S_COMMIT] = ST(S_HELO) | ST_END,
    /* back to where the RCPT came from, or on to S_RCPT when accepted */
    [S_RCPT_WAIT] = ST(S_MAIL) | ST(S_RCPT) | ST_END,
    /* refused or discarded by a milter, or on to the commit */
    [S_MILTER] = ST(S_HELO) | ST(S_COMMIT) | ST_END,
    /* a HELO (from S_HELO) or MAIL (from S_MAIL): refused or accepted */
    [S_MILTER_WAIT] = ST(S_INIT) | ST(S_HELO) | ST(S_MAIL) | ST_END,
    [S_TLS] = ST(S_INIT) | ST_END,
    [S_CLOSING] = ST(S_DEAD),
    [S_DEAD] = 0,
};
_Static_assert(sizeof sstate_next / sizeof sstate_next[0] == S_DEAD + 1,
               "sstate_next[] must cover every enum sstate");
/* RFC 1035 limit on a name's presentation form */
#define SMTPD_NAME_MAX 253
#define SMTPD_NAME_UNKNOWN "unknown"

struct session {
    struct smtpd *d;
    struct session *prev, *next;
    struct bufferevent *bev;
    enum sstate state;
    struct sockaddr_storage sa;
    char addr[INET6_ADDRSTRLEN + 8];    /* "127.0.0.1" or "IPv6:::1" */
    char helo[SMTP_DOMAIN_MAX + 1];
    /* FCrDNS name, "unknown" until (unless) it is confirmed; the lookup
     * runs beside the dialogue, so lines before its answer say unknown */
    char name[SMTPD_NAME_MAX + 1];
    struct dns_ptr_req *ptr;            /* the lookup in flight */
    int esmtp;
    int tls;
    char tls_desc[160];
    int errors;
    int junk;
    unsigned long ncmds;
    unsigned long nmsgs;
    char *line;                         /* one command line */
    size_t linecap;                     /* its size: line_length at accept + 1 */
    int discarding;                     /* skipping the rest of an over-long line */
    int out_blocked;                    /* waiting for the client to read replies */
    int tls_switch;                     /* 220 to STARTTLS queued; switch when written */
    /* Replies on a cleartext socket are written by session_on_flush, once
     * per loop pass, straight to the socket: the bufferevent's write event
     * is enabled only while the kernel refuses part of them.  (Enabling it
     * for every reply cost two epoll_ctl calls and a loop pass per reply,
     * the largest system-call cost of accepting a message.)  TLS sessions
     * write through their bufferevent as before. */
    int direct;
    int flush_pending;
    struct event *flush_ev;

    /* The transaction. */
    char qid[QID_SIZE];
    char *sender;                       /* SMTP_PATH_MAX + 1 octets, allocated
                                           at the first MAIL: an idle session
                                           does not carry a 1 KiB path */
    struct smtp_mail_params mp;
    struct qrcpt *rcpt;
    size_t nrcpt, rcpt_cap;
    struct spool_body *body;
    struct data_parser *dp;
    int body_errno;
    /* The message's first octets, held until we know whether it begins
     * with a header field (received_header_start): if not, an empty line
     * goes between our Received field and it. */
    char *peek;                         /* RECEIVED_NAME_PEEK octets, while held */
    size_t npeek;
    int peek_done;
    long bdat_left;
    int bdat_last;
    const char *bdat_reply;             /* refusal to send once the chunk is read */
    enum stat_id bdat_why;              /* its reject class */
    enum sstate bdat_back;              /* the state a refused chunk returns to */
    struct smtpd_commit *commit;        /* observed while in S_COMMIT */
    struct recipient_req *rreq;         /* RCPT verdicts (recipient.c); made
                                           at the first one that needs it */
    struct rcpt_wait *wait;             /* the RCPT in S_RCPT_WAIT; ditto */
    int throttled;                      /* RCPTs refused: client throttled */
    int client_slot;                    /* holds its client's place (listen.c) */
    /* Milters of the transaction (global, then the recipients' domains',
     * each socket once), the copy of the stored message they read, and
     * the run while in S_MILTER. */
    struct conf_milter *mlist;          /* copies: a reload may free the conf */
    size_t nmlist;
    struct evbuffer *mcopy;
    struct milter_run *mrun;
    const char **mrcpts;                /* the run's recipient list */
    char *mquarantine;                  /* a milter's quarantine reason: the
                                           commit goes into quarantine */
    /* The global milters, live from connect (milter_set.h), NULL without;
     * a milter's refusal at connect (every later command but QUIT, RSET
     * and NOOP gets it, as Postfix does); what S_MILTER_WAIT resumes. */
    struct milter_set *mset;
    char *mconn_reply;
    enum sstate mwait_back;
    int mwait_init;                     /* the HELO came before any: back to S_INIT */
    int m8bit;
    /* SPF of this transaction (spf.h): started at MAIL, kept in the
     * message record; never awaited (a check still running at the end of
     * data passes to the commit and is recorded after it). */
    struct spf_req *spf;                /* the check in flight */
    int spf_done;                       /* spf_ans holds its answer */
    struct spf_answer spf_ans;
    time_t started;
    int allowed;                        /* in allow_clients: no rate limits */
    long rcpt_5xx;                      /* RCPTs refused 5xx: the tarpit's count */
    struct event *tarpit;               /* a delayed RCPT refusal (S_RCPT_WAIT) */
    enum sstate tarpit_back;
    enum stat_id tarpit_why;
    char *tarpit_reply;
    struct dnsbl_req *dnsbl;            /* pending DNSBL check; the greeting waits */
    char *dnsbl_reply;                  /* listed: the 554 5.7.1 every MAIL gets */
};

struct smtpd {
    struct event_base *base;
    struct listener *lst;
    struct spool *spool;
    SSL_CTX *tls;
    struct dns *dns;                    /* borrowed; NULL: no client names */
    struct spf_pool *spf;               /* borrowed; NULL: no SPF checks */
    struct dkim_pool *dkim;             /* borrowed; NULL: no DKIM checks */
    const struct conf *conf;
    const struct policy *policy;
    smtpd_etrn_fn etrn;
    smtpd_queued_fn queued;
    void *hook_arg;
    struct session *sessions;
    size_t nsessions;
    struct smtpd_commit *commits;       /* handed to the spool, not yet done */
    int draining;
    struct ratelimit *rl;               /* per-client counts (ratelimit.h) */
    struct dnsbl *dnsbl;                /* DNSBL answer cache (dnsbl.h) */
    struct greylist *gl;                /* SPOOL/greylist, opened at first need */
    struct event *gl_sweep;             /* its periodic expiry sweep */
    int gl_failed;                      /* its open failed: logged once */
    time_t disk_checked;
    unsigned long long disk_free;
};

/*
 * A message handed to the spool.  The spool request owns it: the commit's
 * done callback (commit_done) is the one place where "message queued"
 * happens (its log line, the counters, and the queued hook that schedules
 * delivery and enters the delay warning), whatever became of the session
 * that sent it, and the one place that frees it once the spool has it
 * (spool_commit refusing it frees it at once).  The session merely
 * observes it to answer 250 (or 451/452); a session that closes detaches
 * itself (session_end) and the message is queued all the same.
 */
struct smtpd_commit {
    struct smtpd *d;
    struct smtpd_commit *prev, *next;   /* d->commits: in flight */
    struct session *s;                  /* the observer; NULL once it closed */
    char qid[QID_SIZE];
    char sender[SMTP_PATH_MAX + 1];
    char client[SMTPD_NAME_MAX + INET6_ADDRSTRLEN + 16];
    unsigned long long size;
    size_t nrcpt;
    char *quarantine;                   /* a milter's reason: into quarantine */
    int dkim_verify;                    /* DKIM-Signature fields: verify after */
    struct spf_req *spf;                /* SPF still running at the commit */
    int spf_have;                       /* ... finished since: spf_ans */
    struct spf_answer spf_ans;
    int dkim_held;                      /* dkim_hold taken: delivery waits */
};

/* A RCPT whose verdict is pending: what applying it needs. */
struct rcpt_wait {
    enum sstate back;                   /* S_MAIL or S_RCPT */
    int addr_ok;                        /* addr fitted */
    char dom[SMTP_DOMAIN_MAX + 1];      /* its domain, while the milters look */
    char addr[SMTP_PATH_MAX + 1];
    struct smtp_rcpt_params rp;
};

struct smtpd_cmd {
    enum smtp_cmd cmd;
    unsigned allowed;                   /* ST() mask of states */
    const char *refusal;                /* reply when not allowed */
    void (*run)(struct session *s, const char *arg);
};

static void session_drive(struct session *s);
static void session_free(struct session *s);
static void session_on_read(struct bufferevent *bev, void *arg);
static void session_on_write(struct bufferevent *bev, void *arg);
static void session_on_event(struct bufferevent *bev, short what, void *arg);
static void session_tls_switch(struct session *s);
static void session_end(struct session *s);

/* ------------------------------------------------------------------ */
/* State, replies, closing                                            */

static void session_set_state(struct session *s, enum sstate next)
{
    if (s->state == next)
        return;
    if (!(sstate_next[s->state] & ST(next)))
        log_panic("%s [%s]: session state %s -> %s is not allowed", s->qid[0] ? s->qid : "-",
                  s->addr, sstate_names[s->state], sstate_names[next]);
    log_debug("%s [%s]: %s -> %s", s->qid[0] ? s->qid : "-", s->addr, sstate_names[s->state],
              sstate_names[next]);
    s->state = next;
    if (ST(next) & ST_END)
        session_end(s);
}

static void session_reply(struct session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void session_reply(struct session *s, const char *fmt, ...)
{
    va_list ap;
    struct evbuffer *out = bufferevent_get_output(s->bev);
    va_start(ap, fmt);
    evbuffer_add_vprintf(out, fmt, ap);
    va_end(ap);
    evbuffer_add(out, "\r\n", 2);
    if (s->direct && !s->flush_pending) {
        /* Later in this loop pass, after every command already read has
         * been answered, so pipelined replies leave in one write. */
        s->flush_pending = 1;
        event_active(s->flush_ev, EV_TIMEOUT, 1);
    }
}

/* The class of a reply that is not a refusal (session_close of a 221). */
#define SMTPD_NO_REJECT STAT_COUNT_

/* A refusal: counted under its class, decided by the caller (the place
 * that knows why), never read back out of the reply text. */
static void session_reject(struct session *s, enum stat_id cls, const char *reply)
{
    if (cls != SMTPD_NO_REJECT)
        stats_inc(cls);
    session_reply(s, "%s", reply);
}

/* A refusal that also counts toward the bad-command limit when it is 5xx. */
static void session_error(struct session *s, enum stat_id cls, const char *reply)
{
    session_reject(s, cls, reply);
    if (reply[0] == '5' && ++s->errors >= s->d->conf->limits.bad_commands) {
        log_warn("[%s]: too many errors (%d), disconnecting", s->addr, s->errors);
        stats_inc(STAT_REJ_LIMIT);
        session_reply(s, "421 4.7.0 %s Error: too many errors", s->d->conf->hostname);
        session_set_state(s, S_CLOSING);
    }
}

/* Queue a last reply and close once it is written. */
static void session_close(struct session *s, enum stat_id cls, const char *reply)
{
    session_reject(s, cls, reply);
    session_set_state(s, S_CLOSING);
    bufferevent_disable(s->bev, EV_READ);
}

/* The session leaves the dialogue (closing, dead, or freed): a commit in
 * flight goes on without it, and its client may connect again at once
 * (the connection still counts toward the total until it is freed). */
static void session_end(struct session *s)
{
    /* A verdict still pending would call back into a session that has
     * left the dialogue (or is freed): it never runs. */
    recipient_cancel(s->rreq);
    milter_run_cancel(s->mrun);
    s->mrun = NULL;
    milter_set_cancel(s->mset);
    if (s->tarpit != NULL)
        evtimer_del(s->tarpit);
    dnsbl_cancel(s->dnsbl);
    s->dnsbl = NULL;
    spf_cancel(s->spf);
    s->spf = NULL;
    if (s->commit != NULL) {
        s->commit->s = NULL;
        s->commit = NULL;
    }
    if (s->client_slot) {
        s->client_slot = 0;
        listen_release_client(s->d->lst, (struct sockaddr *)&s->sa);
    }
}

static void session_txn_reset(struct session *s)
{
    free(s->peek);
    s->peek = NULL;
    s->npeek = 0;
    spf_cancel(s->spf);
    s->spf = NULL;
    s->spf_done = 0;
    spool_body_free(s->body);
    s->body = NULL;
    data_free(s->dp);
    s->dp = NULL;
    s->qid[0] = '\0';
    if (s->sender != NULL)
        s->sender[0] = '\0';
    s->nrcpt = 0;
    s->body_errno = 0;
    s->bdat_left = 0;
    s->bdat_last = 0;
    s->bdat_reply = NULL;
    memset(&s->mp, 0, sizeof s->mp);
    milter_run_cancel(s->mrun);
    s->mrun = NULL;
    /* the live milters saw a transaction that did not reach its end of
     * message (RSET, HELO, a refusal): SMFIC_ABORT */
    milter_set_abort(s->mset);
    if (s->mcopy)
        evbuffer_free(s->mcopy);
    s->mcopy = NULL;
    free(s->mrcpts);
    s->mrcpts = NULL;
    free(s->mquarantine);
    s->mquarantine = NULL;
    for (size_t i = 0; i < s->nmlist; i++)
        free(s->mlist[i].socket);
    free(s->mlist);
    s->mlist = NULL;
    s->nmlist = 0;
}

static void session_set_timeout(struct session *s, long read_seconds)
{
    struct timeval rtv = { read_seconds, 0 };
    struct timeval wtv = { s->d->conf->limits.command_timeout, 0 };
    bufferevent_set_timeouts(s->bev, read_seconds > 0 ? &rtv : NULL, &wtv);
}

/* ------------------------------------------------------------------ */
/* Disk space                                                         */

static int smtpd_disk_ok(struct smtpd *d, unsigned long long need)
{
    time_t now = time(NULL);
    if (now - d->disk_checked >= SMTPD_DISK_CHECK_EVERY) {
        if (spool_free_space(d->spool, &d->disk_free) != 0) {
            log_warn("free space of %s: %s", d->conf->spool, strerror(errno));
            d->disk_free = ~0ULL; /* cannot tell: let the write decide */
        }
        d->disk_checked = now;
    }
    return d->disk_free >= need + (unsigned long long)d->conf->limits.disk_reserve;
}

/* ------------------------------------------------------------------ */
/* Per-client limits and quotas                                       */

static int session_client(const struct session *s, unsigned char a[16]);

/*
 * Count one event of kind for the session's client, by address and by
 * network (ratelimit.h).  Returns NULL, or "address"/"network" when that
 * count is over its limit (the event is then refused, not counted).
 * Allow-listed clients are not counted.
 */
static const char *session_rate(struct session *s, enum ratelimit_kind kind)
{
    const struct conf_ratelimit *c = &s->d->conf->ratelimit;
    long lim_addr, lim_net;
    unsigned char a[16], net[16];

    if (s->allowed)
        return NULL;
    switch (kind) {
    case RL_CONNECT: lim_addr = c->connections; lim_net = c->net_connections; break;
    case RL_MAIL:    lim_addr = c->messages;    lim_net = c->net_messages;    break;
    default:         lim_addr = c->recipients;  lim_net = c->net_recipients;  break;
    }
    if (lim_addr == 0 && lim_net == 0)
        return NULL;
    if (s->d->rl == NULL && (s->d->rl = ratelimit_new((size_t)c->clients)) == NULL)
        return NULL;                    /* fail open: no memory for counting */
    int family = session_client(s, a);
    size_t len = family == AF_INET6 ? 16 : 4;
    int64_t now = (int64_t)time(NULL);
    /* Address and network keys differ by a leading octet. */
    unsigned char key[17];
    if (lim_addr > 0) {
        key[0] = 'a';
        memcpy(key + 1, a, len);
        if (ratelimit_hit(s->d->rl, kind, key, len + 1, now, c->window, lim_addr) >
            (uint64_t)lim_addr)
            return "address";
    }
    if (lim_net > 0) {
        ratelimit_network(family, a, (int)(family == AF_INET6 ? c->ipv6_prefix : c->ipv4_prefix),
                          net);
        key[0] = 'n';
        memcpy(key + 1, net, len);
        if (ratelimit_hit(s->d->rl, kind, key, len + 1, now, c->window, lim_net) >
            (uint64_t)lim_net)
            return "network";
    }
    return NULL;
}

/*
 * Would one more message of size octets put dom over its spool quota?
 * The counts are the index's per-destination record (one short read
 * transaction); messages still being committed are not in it yet, so a
 * burst may pass the quota by what is in flight (bounded by the
 * connection limits and message_size).
 */
static int smtpd_quota_full(struct smtpd *d, const struct conf_domain *dom,
                            unsigned long long size)
{
    struct qdest q;

    if (dom->max_messages <= 0 && dom->max_bytes <= 0)
        return 0;
    if (spool_dest_get(d->spool, dom->name, &q) != 0)
        return 0;                       /* nothing queued for it */
    if (dom->max_messages > 0 && q.nmsg >= (uint64_t)dom->max_messages)
        return 1;
    if (dom->max_bytes > 0 && q.nbytes + size > (uint64_t)dom->max_bytes)
        return 1;
    return 0;
}

static void smtpd_greylist_sweep(evutil_socket_t fd, short what, void *arg)
{
    struct smtpd *d = arg;
    (void)fd;
    (void)what;
    long n = greylist_sweep(d->gl, &d->conf->greylist, (int64_t)time(NULL));
    if (n < 0)
        log_warn("greylist: expiry sweep failed");
    else if (n > 0)
        log_info("greylist: %ld expired triplets removed", n);
}

/* The greylist store, opened at first need (SPOOL/greylist, beside the
 * spool's index; the spool is ours by then).  NULL: not available, the
 * reason logged once; greylisting then passes everything (fail open). */
static struct greylist *smtpd_greylist(struct smtpd *d)
{
    char dir[PATH_MAX], err[512];

    if (d->gl != NULL)
        return d->gl;
    snprintf(dir, sizeof dir, "%s/greylist", d->conf->spool);
    d->gl = greylist_open(dir, (size_t)d->conf->greylist.map_size, err, sizeof err);
    if (d->gl == NULL) {
        if (!d->gl_failed)
            log_warn("greylist: cannot open %s; greylisting passes all mail", err);
        d->gl_failed = 1;
        return NULL;
    }
    if (d->gl_failed)
        log_info("greylist: %s open again", dir);
    d->gl_failed = 0;
    d->gl_sweep = event_new(d->base, -1, EV_PERSIST, smtpd_greylist_sweep, d);
    struct timeval tv = { d->conf->greylist.sweep, 0 };
    if (d->gl_sweep != NULL)
        evtimer_add(d->gl_sweep, &tv);
    return d->gl;
}

/*
 * Greylisting for a valid recipient of a domain with `greylist = true`.
 * Returns 0 to accept, or 1 with the 450 4.2.0 refusal in reply.
 */
static int session_greylisted(struct session *s, const struct conf_domain *dom, const char *addr,
                              char *reply, size_t len)
{
    const struct conf *c = s->d->conf;
    unsigned char a[16], net[16];
    enum greylist_result res;
    long wait;

    if (!dom->greylist || s->allowed)
        return 0;
    struct greylist *g = smtpd_greylist(s->d);
    if (g == NULL)
        return 0;
    int family = session_client(s, a);
    ratelimit_network(family, a,
                      (int)(family == AF_INET6 ? c->ratelimit.ipv6_prefix : c->ratelimit.ipv4_prefix),
                      net);
    if (greylist_check(g, &c->greylist, family, net, s->sender ? s->sender : "", addr,
                       (int64_t)time(NULL), &res, &wait) != 0) {
        log_warn("%s: greylist: lookup failed for <%s>; passed", s->qid, addr);
        return 0;
    }
    if (res == GREYLIST_PASS)
        return 0;
    log_info("%s: reject: RCPT from %s[%s]: <%s>: greylisted for %lds; from=<%s>", s->qid,
             s->name, s->addr, addr, wait, s->sender);
    snprintf(reply, len, "450 4.2.0 <%s>: Recipient address rejected: Greylisted, "
             "please try again in %ld seconds", addr, wait);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Live milters (milter_set.c): connect, HELO, MAIL, RCPT              */

static void session_sync_check(struct session *s, enum smtp_cmd cmd);

/* The session as the milters' macros see it (milter_run.h). */
static void session_milter_txn(const struct session *s, struct milter_run_txn *t)
{
    const struct sockaddr *sa = (const struct sockaddr *)&s->sa;
    memset(t, 0, sizeof *t);
    t->qid = s->qid;
    t->hostname = s->d->conf->hostname;
    t->client_name = s->name;
    t->client_addr = strncmp(s->addr, "IPv6:", 5) == 0 ? s->addr + 5 : s->addr;
    t->family = sa->sa_family == AF_INET ? '4' : sa->sa_family == AF_INET6 ? '6' : 'U';
    t->port = sa->sa_family == AF_INET ? ntohs(((const struct sockaddr_in *)sa)->sin_port)
            : sa->sa_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)sa)->sin6_port)
            : 0;
    t->helo = s->helo;
    t->sender = s->sender ? s->sender : "";
    t->tls_version = s->tls ? s->tls_desc : NULL;
}

/* A milter's refusal of a command: its own reply; a 421 ends the session. */
static void session_milter_refuse(struct session *s, const char *text)
{
    if (strncmp(text, "421", 3) == 0)
        session_close(s, STAT_REJ_CONTENT, text);
    else
        session_error(s, STAT_REJ_CONTENT, text);
}

/* After a milter verdict: what the client pipelined meanwhile. */
static void session_milter_resume(struct session *s, enum smtp_cmd cmd)
{
    session_sync_check(s, cmd);
    session_drive(s);
    if (s->state == S_DEAD)
        session_free(s);
}

static void session_helo_reply(struct session *s);

static void session_on_milter_helo(void *arg, const struct milter_set_answer *a)
{
    struct session *s = arg;
    if (s->state != S_MILTER_WAIT)
        log_panic("[%s]: milter HELO verdict in state %s", s->addr, sstate_names[s->state]);
    if (a->verdict == MILTER_REJECT || a->verdict == MILTER_TEMPFAIL) {
        log_info("reject: HELO from %s[%s]: %s; helo=%s", s->name, s->addr, a->text, s->helo);
        session_set_state(s, s->mwait_init ? S_INIT : S_HELO);
        if (s->mwait_init)
            s->helo[0] = '\0';
        session_milter_refuse(s, a->text);
    } else {
        session_set_state(s, S_HELO);
        session_helo_reply(s);
    }
    session_milter_resume(s, SMTP_CMD_HELO);
}

static void session_spf_start(struct session *s);

static void session_on_milter_mail(void *arg, const struct milter_set_answer *a)
{
    struct session *s = arg;
    if (s->state != S_MILTER_WAIT)
        log_panic("[%s]: milter MAIL verdict in state %s", s->addr, sstate_names[s->state]);
    if (a->verdict == MILTER_REJECT || a->verdict == MILTER_TEMPFAIL) {
        log_info("%s: reject: MAIL from %s[%s]: %s; from=<%s>", s->qid, s->name, s->addr,
                 a->text, s->sender);
        session_set_state(s, S_HELO);
        session_txn_reset(s);
        session_milter_refuse(s, a->text);
    } else {
        session_set_state(s, S_MAIL);
        session_reply(s, "250 2.1.0 Ok");
        session_spf_start(s);
    }
    session_milter_resume(s, SMTP_CMD_MAIL);
}

/* The greeting, once the connect-time checks are done: the live milters'
 * connect event first.  A milter's 4xx makes the greeting a 421 with its
 * text and ends the session; a 5xx greets as usual and refuses every
 * later command but QUIT, RSET and NOOP with it (Postfix's behaviour). */
static void session_on_milter_connect(void *arg, const struct milter_set_answer *a);

static void session_greet(struct session *s)
{
    const struct conf *c = s->d->conf;
    if (c->milters.n > 0 && s->mset == NULL &&
        (s->mset = milter_set_new(s->d->base, &c->milters, s->addr)) != NULL) {
        struct milter_run_txn t;
        session_milter_txn(s, &t);
        if (milter_set_event(s->mset, MILTER_STEP_CONNECT, &t, NULL, session_on_milter_connect,
                             s)) {
            bufferevent_disable(s->bev, EV_READ);
            return;
        }
    }
    session_reply(s, "220 %s ESMTP mxkeep", c->hostname);
    bufferevent_enable(s->bev, EV_READ);
}

static void session_on_milter_connect(void *arg, const struct milter_set_answer *a)
{
    struct session *s = arg;
    if (s->state != S_INIT)
        log_panic("[%s]: milter connect verdict in state %s", s->addr, sstate_names[s->state]);
    if (a->verdict == MILTER_TEMPFAIL) {
        char reply[sizeof a->text];
        /* every line's code becomes 421: the client must not go on */
        snprintf(reply, sizeof reply, "%s", a->text);
        for (char *p = reply; p != NULL; p = strstr(p, "\n")) {
            if (*p == '\n')
                p++;
            if (p[0] == '4' && p[1] && p[2])
                memcpy(p, "421", 3);
        }
        log_info("reject: CONNECT from %s[%s]: %s", s->name, s->addr, reply);
        session_close(s, STAT_REJ_CONTENT, reply);
        if (s->state == S_DEAD)
            session_free(s);
        return;
    }
    if (a->verdict == MILTER_REJECT) {
        log_info("reject: CONNECT from %s[%s]: %s (every command refused)", s->name, s->addr,
                 a->text);
        stats_inc(STAT_REJ_CONTENT);
        s->mconn_reply = strdup(a->text);
    }
    session_reply(s, "220 %s ESMTP mxkeep", s->d->conf->hostname);
    bufferevent_enable(s->bev, EV_READ);
}

/* ------------------------------------------------------------------ */
/* Commands                                                           */

static void cmd_helo_common(struct session *s, const char *arg, int esmtp)
{
    int first = s->state == S_INIT;
    const char *err = smtp_parse_helo(arg, s->helo, sizeof s->helo);
    if (err) {
        session_error(s, STAT_REJ_PROTOCOL, err);
        return;
    }
    session_txn_reset(s);
    s->esmtp = esmtp;
    session_set_state(s, S_HELO);
    if (s->mset != NULL) {
        struct milter_run_txn t;
        session_milter_txn(s, &t);
        if (milter_set_event(s->mset, MILTER_STEP_HELO, &t, NULL, session_on_milter_helo, s)) {
            s->mwait_init = first;
            session_set_state(s, S_MILTER_WAIT);
            return;
        }
    }
    session_helo_reply(s);
}

static void session_helo_reply(struct session *s)
{
    if (!s->esmtp) {
        session_reply(s, "250 %s", s->d->conf->hostname);
        return;
    }
    session_reply(s, "250-%s", s->d->conf->hostname);
    session_reply(s, "250-PIPELINING");
    session_reply(s, "250-SIZE %ld", s->d->conf->limits.message_size);
    session_reply(s, "250-ETRN");
    if (s->d->tls && !s->tls)
        session_reply(s, "250-STARTTLS");
    session_reply(s, "250-ENHANCEDSTATUSCODES");
    session_reply(s, "250-8BITMIME");
    session_reply(s, "250-DSN");
    session_reply(s, "250-SMTPUTF8");
    session_reply(s, "250 CHUNKING");
}

static void cmd_helo(struct session *s, const char *arg) { cmd_helo_common(s, arg, 0); }
static void cmd_ehlo(struct session *s, const char *arg) { cmd_helo_common(s, arg, 1); }

static int session_client(const struct session *s, unsigned char a[16]);
static void session_data_commit(struct session *s);
static void session_spf_fill(struct session *s, struct qmsg *m);

/* SPF finished: keep the answer for the record. */
static void session_on_spf(void *arg, const struct spf_answer *a)
{
    struct session *s = arg;
    s->spf = NULL;
    s->spf_ans = *a;
    s->spf_done = 1;
}

/* Start the SPF check of this transaction (MAIL accepted); the loop goes
 * on at once, the pool's workers do the DNS. */
static void session_spf_start(struct session *s)
{
    unsigned char a[16];
    if (s->d->spf == NULL)
        return;
    int family = session_client(s, a);
    s->spf = spf_check(s->d->spf, family, a, s->helo, s->sender, session_on_spf, s);
    if (s->spf == NULL)
        log_warn("%s: spf check not started: out of memory", s->qid);
}

static void cmd_mail(struct session *s, const char *arg)
{
    struct smtp_addr a;
    const char *rest, *err;
    const struct conf *c = s->d->conf;

    if (s->d->draining) {
        session_close(s, SMTPD_NO_REJECT, "421 4.3.2 Error: server shutting down");
        return;
    }
    if ((err = smtp_parse_path(arg, &rest, &a, 1, 1, 0)) != NULL ||
        (err = smtp_parse_mail_params(rest, &s->mp)) != NULL) {
        session_error(s, STAT_REJ_PROTOCOL, err);
        return;
    }
    if (a.utf8 && !s->mp.smtputf8) {
        session_error(s, STAT_REJ_PROTOCOL, "553 5.6.7 Error: non-ASCII address requires SMTPUTF8");
        return;
    }
    if (s->mp.size > c->limits.message_size) {
        session_error(s, STAT_REJ_SIZE, "552 5.3.4 Error: message size exceeds fixed limit");
        return;
    }
    if (!smtpd_disk_ok(s->d, s->mp.size > 0 ? (unsigned long long)s->mp.size : 0)) {
        log_warn("[%s]: refusing mail: spool %s is short of space", s->addr, c->spool);
        session_reject(s, STAT_REJ_STORAGE, "452 4.3.1 Error: insufficient system storage");
        return;
    }
    if (s->sender == NULL && (s->sender = malloc(SMTP_PATH_MAX + 1)) == NULL) {
        log_warn("[%s]: out of memory for a sender", s->addr);
        session_reject(s, STAT_REJ_STORAGE, "451 4.3.0 Error: insufficient resources");
        return;
    }
    if (smtp_addr_format(&a, s->sender, SMTP_PATH_MAX + 1) < 0) {
        session_error(s, STAT_REJ_PROTOCOL, "501 5.1.7 Error: sender address too long");
        return;
    }
    if (s->dnsbl_reply != NULL) {
        log_info("reject: MAIL from %s[%s]: %s", s->name, s->addr, s->dnsbl_reply);
        session_reject(s, STAT_REJ_DNSBL, s->dnsbl_reply);
        return;
    }
    const char *over = session_rate(s, RL_MAIL);
    if (over != NULL) {
        log_info("reject: MAIL from %s[%s]: too many messages from this %s", s->name, s->addr,
                 over);
        session_reject(s, STAT_REJ_RATE, over[0] == 'a'
                       ? "450 4.7.1 Error: too many messages from your address, try again later"
                       : "450 4.7.1 Error: too many messages from your network, try again later");
        return;
    }
    qid_next(s->qid);
    s->started = time(NULL);
    log_info("%s: client=%s[%s], helo=%s", s->qid, s->name, s->addr, s->helo);
    session_set_state(s, S_MAIL);
    if (s->mset != NULL) {
        struct milter_run_txn t;
        session_milter_txn(s, &t);
        if (milter_set_event(s->mset, MILTER_STEP_MAIL, &t, NULL, session_on_milter_mail, s)) {
            session_set_state(s, S_MILTER_WAIT);
            return;
        }
    }
    session_reply(s, "250 2.1.0 Ok");
    session_spf_start(s);
}

/* The client's address for recipient.c: family and network-order octets,
 * an IPv4-mapped IPv6 address unwrapped (dual-stack listeners). */
static int session_client(const struct session *s, unsigned char a[16])
{
    if (s->sa.ss_family == AF_INET) {
        memcpy(a, &((const struct sockaddr_in *)&s->sa)->sin_addr, 4);
        return AF_INET;
    }
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)&s->sa)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a6)) {
        memcpy(a, a6->s6_addr + 12, 4);
        return AF_INET;
    }
    memcpy(a, a6, 16);
    return AF_INET6;
}

/* Apply a RCPT verdict, in command order: the reply and, when accepted,
 * the recipient.  addr is NULL when it did not fit. */
static void session_sync_check(struct session *s, enum smtp_cmd cmd);

/* The tarpit's delay is over: send the refusal it held back and go on
 * with what the client pipelined meanwhile. */
static void session_on_tarpit(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    (void)fd;
    (void)what;
    if (s->state != S_RCPT_WAIT)
        log_panic("[%s]: tarpit ended in state %s", s->addr, sstate_names[s->state]);
    session_set_state(s, s->tarpit_back);
    session_error(s, s->tarpit_why, s->tarpit_reply);
    session_sync_check(s, SMTP_CMD_RCPT);
    session_drive(s);
    if (s->state == S_DEAD)
        session_free(s);
}

/*
 * Unknown-recipient tarpit: after tarpit_after 5xx RCPT replies in this
 * session, each further one is held back tarpit_delay, doubling up to
 * tarpit_max, on a timer (the loop never sleeps).  Returns 1 when the
 * reply was held (the session waits in S_RCPT_WAIT), 0 to send it now.
 */
static int session_tarpit(struct session *s, enum stat_id why, const char *reply)
{
    const struct conf_ratelimit *c = &s->d->conf->ratelimit;

    if (reply[0] != '5' || s->allowed)
        return 0;
    s->rcpt_5xx++;
    if (c->tarpit_after <= 0 || s->rcpt_5xx <= c->tarpit_after)
        return 0;
    long steps = s->rcpt_5xx - c->tarpit_after - 1;
    long delay = c->tarpit_delay;
    while (steps-- > 0 && delay < c->tarpit_max)
        delay *= 2;
    if (delay > c->tarpit_max)
        delay = c->tarpit_max;
    if (s->tarpit == NULL && (s->tarpit = evtimer_new(s->d->base, session_on_tarpit, s)) == NULL)
        return 0;
    if (s->tarpit_reply == NULL && (s->tarpit_reply = malloc(RECIPIENT_REPLY_MAX)) == NULL)
        return 0;
    snprintf(s->tarpit_reply, RECIPIENT_REPLY_MAX, "%s", reply);
    s->tarpit_why = why;
    s->tarpit_back = s->state;
    struct timeval tv = { delay, 0 };
    if (evtimer_add(s->tarpit, &tv) != 0)
        return 0;
    stats_inc(STAT_TARPIT);
    log_info("[%s]: tarpit: RCPT reply delayed %lds after %ld refused recipients", s->addr,
             delay, s->rcpt_5xx - 1);
    session_set_state(s, S_RCPT_WAIT);
    return 1;
}

static void session_rcpt_add(struct session *s, const struct conf_domain *dom, const char *addr,
                             const struct smtp_rcpt_params *rp);

/* The live milters' verdict on a RCPT: a refusal refuses that recipient
 * only, with the milter's reply; then on with what was pipelined. */
static void session_on_milter_rcpt(void *arg, const struct milter_set_answer *a)
{
    struct session *s = arg;
    struct rcpt_wait *w = s->wait;
    if (s->state != S_RCPT_WAIT)
        log_panic("[%s]: milter RCPT verdict in state %s", s->addr, sstate_names[s->state]);
    session_set_state(s, w->back);
    if (a->verdict == MILTER_REJECT || a->verdict == MILTER_TEMPFAIL) {
        log_info("%s: reject: RCPT from %s[%s]: <%s>: %s; from=<%s>", s->qid, s->name, s->addr,
                 w->addr, a->text, s->sender);
        session_milter_refuse(s, a->text);
    } else {
        const struct conf_domain *dom = conf_domain_find(s->d->conf, w->dom);
        if (dom == NULL)                /* a reload dropped the domain meanwhile */
            session_reject(s, STAT_REJ_LOOKUP, "451 4.3.0 Error: configuration changed, "
                           "try again later");
        else
            session_rcpt_add(s, dom, w->addr, &w->rp);
    }
    session_milter_resume(s, SMTP_CMD_RCPT);
}

static void session_rcpt_verdict(struct session *s, const struct recipient_answer *v,
                                 const char *addr, const struct smtp_rcpt_params *rp)
{
    if (v->verdict != RECIPIENT_ACCEPT) {
        log_info("%s: reject: RCPT from %s[%s]: %s; from=<%s>", s->qid, s->name, s->addr,
                 v->reply, s->sender);
        if (v->verdict == RECIPIENT_THROTTLED &&
            ++s->throttled >= s->d->conf->limits.bad_commands) {
            /* The throttle is the client's, across sessions: a session
             * that keeps trying gets no further. */
            log_warn("[%s]: too many throttled recipients (%d), disconnecting", s->addr,
                     s->throttled);
            session_reject(s, v->why, v->reply);
            session_txn_reset(s);
            /* counted once, as the RCPT's refusal above */
            session_close(s, SMTPD_NO_REJECT,
                          "421 4.7.0 Error: too many unknown recipients, try again later");
            return;
        }
        if (session_tarpit(s, v->why, v->reply))
            return;
        session_error(s, v->why, v->reply);
        return;
    }
    if (addr == NULL) {
        session_error(s, STAT_REJ_PROTOCOL, "501 5.1.3 Error: recipient address too long");
        return;
    }
    if (v->unverified)
        log_info("%s: RCPT <%s> accepted unverified: no answer from the primary", s->qid, addr);
    for (size_t i = 0; i < s->nrcpt; i++) {
        if (strcasecmp(s->rcpt[i].addr, addr) == 0) {
            /* The same mailbox twice gets one copy, as every MTA does. */
            session_reply(s, "250 2.1.5 Ok");
            return;
        }
    }
    if (s->nrcpt == s->rcpt_cap) {
        size_t cap = s->rcpt_cap ? s->rcpt_cap * 2 : 4;
        struct qrcpt *r = realloc(s->rcpt, cap * sizeof *r);
        if (r == NULL) {
            session_reject(s, STAT_REJ_STORAGE, "452 4.3.0 Error: out of memory");
            return;
        }
        s->rcpt = r;
        s->rcpt_cap = cap;
    }
    const struct conf_domain *dom = v->dom;
    if (smtpd_quota_full(s->d, dom, s->mp.size > 0 ? (unsigned long long)s->mp.size : 0)) {
        log_info("%s: reject: RCPT from %s[%s]: <%s>: domain %s quota exceeded; from=<%s>",
                 s->qid, s->name, s->addr, addr, dom->name, s->sender);
        char reply[RECIPIENT_REPLY_MAX];
        snprintf(reply, sizeof reply, "452 4.2.2 <%s>: Recipient address rejected: "
                 "mailbox full: domain quota exceeded, try again later", addr);
        session_reject(s, STAT_REJ_QUOTA, reply);
        return;
    }
    {
        char reply[RECIPIENT_REPLY_MAX];
        if (session_greylisted(s, dom, addr, reply, sizeof reply)) {
            session_reject(s, STAT_REJ_GREYLIST, reply);
            return;
        }
    }
    /* The live milters' envrcpt: the RCPT waits for it in S_RCPT_WAIT,
     * pipelined commands behind it in order. */
    if (s->mset != NULL && (s->wait != NULL || (s->wait = malloc(sizeof *s->wait)) != NULL)) {
        struct milter_run_txn t;
        session_milter_txn(s, &t);
        if (milter_set_event(s->mset, MILTER_STEP_RCPT, &t, addr, session_on_milter_rcpt, s)) {
            struct rcpt_wait *w = s->wait;
            w->back = s->state;
            w->addr_ok = 1;
            if (w->addr != addr)
                snprintf(w->addr, sizeof w->addr, "%s", addr);
            if (&w->rp != rp)
                w->rp = *rp;
            snprintf(w->dom, sizeof w->dom, "%s", dom->name);
            session_set_state(s, S_RCPT_WAIT);
            return;
        }
    }
    session_rcpt_add(s, dom, addr, rp);
}

/* The recipient is accepted: into the transaction. */
static void session_rcpt_add(struct session *s, const struct conf_domain *dom, const char *addr,
                             const struct smtp_rcpt_params *rp)
{
    struct qrcpt *r = &s->rcpt[s->nrcpt];
    memset(r, 0, sizeof *r);
    r->index = (uint32_t)s->nrcpt;
    r->state = QRCPT_PENDING;
    r->notify = rp->notify;
    r->expiry = (int64_t)time(NULL) + dom->retention;
    snprintf(r->addr, sizeof r->addr, "%s", addr);
    snprintf(r->domain, sizeof r->domain, "%s", dom->name);
    if (rp->orcpt[0])
        snprintf(r->orcpt, sizeof r->orcpt, "%s;%s", rp->orcpt_type, rp->orcpt);
    s->nrcpt++;
    session_set_state(s, S_RCPT);
    session_reply(s, "250 2.1.5 Ok");
}

/* recipient_cb: the pending RCPT's verdict.  Answer it, then go on with
 * what the client pipelined meanwhile. */
static void session_on_verdict(void *arg, const struct recipient_answer *v)
{
    struct session *s = arg;
    struct rcpt_wait *w = s->wait;

    if (s->state != S_RCPT_WAIT)
        log_panic("[%s]: RCPT verdict in state %s", s->addr, sstate_names[s->state]);
    session_set_state(s, w->back);
    session_rcpt_verdict(s, v, w->addr_ok ? w->addr : NULL, &w->rp);
    session_sync_check(s, SMTP_CMD_RCPT);
    session_drive(s);
    if (s->state == S_DEAD)
        session_free(s);
}

static void cmd_rcpt(struct session *s, const char *arg)
{
    struct smtp_addr a;
    struct smtp_rcpt_params rp;
    struct recipient_answer v;
    const char *rest, *err;
    char addr[SMTP_PATH_MAX + 1];
    unsigned char client[16];

    if ((long)s->nrcpt >= s->d->conf->limits.recipients) {
        session_reject(s, STAT_REJ_LIMIT, "452 4.5.3 Error: too many recipients");
        return;
    }
    if ((err = smtp_parse_path(arg, &rest, &a, 0, 1, 1)) != NULL ||
        (err = smtp_parse_rcpt_params(rest, &rp)) != NULL) {
        session_error(s, STAT_REJ_PROTOCOL, err);
        return;
    }
    if (a.utf8 && !s->mp.smtputf8) {
        session_error(s, STAT_REJ_PROTOCOL, "553 5.6.7 Error: non-ASCII address requires SMTPUTF8");
        return;
    }
    const char *over = session_rate(s, RL_RCPT);
    if (over != NULL) {
        log_info("%s: reject: RCPT from %s[%s]: too many recipients from this %s", s->qid,
                 s->name, s->addr, over);
        session_reject(s, STAT_REJ_RATE, over[0] == 'a'
                       ? "450 4.7.1 Error: too many recipients from your address, try again later"
                       : "450 4.7.1 Error: too many recipients from your network, try again later");
        return;
    }
    int family = session_client(s, client);
    int addr_ok = smtp_addr_format(&a, addr, sizeof addr) >= 0;
    if (recipient_check(&s->rreq, s->d->policy, &a, family, client, session_on_verdict, s,
                        &v) == 0) {
        session_rcpt_verdict(s, &v, addr_ok ? addr : NULL, &rp);
        return;
    }
    /* Pending: the session stops here (session_drive) until the verdict;
     * later pipelined commands wait in the input buffer, bounded by its
     * watermark, and are run in order after it. */
    if (s->wait == NULL && (s->wait = malloc(sizeof *s->wait)) == NULL) {
        recipient_cancel(s->rreq);
        session_reject(s, STAT_REJ_STORAGE, "451 4.3.0 Error: insufficient resources");
        return;
    }
    s->wait->back = s->state;
    s->wait->addr_ok = addr_ok;
    memcpy(s->wait->addr, addr, sizeof addr);
    s->wait->rp = rp;
    session_set_state(s, S_RCPT_WAIT);
}

static int session_body_put(struct session *s, const char *buf, size_t n)
{
    if (n == 0)
        return 0;
    if (spool_body_write(s->body, buf, n) != 0) {
        s->body_errno = errno ? errno : EIO;
        return -1;
    }
    if (s->mcopy && evbuffer_add(s->mcopy, buf, n) != 0) {
        s->body_errno = ENOMEM;
        return -1;
    }
    return 0;
}

/* The held first octets go out, after an empty line when the message has
 * no header section (blank), and from now on octets pass straight. */
static int session_body_release(struct session *s, int blank)
{
    s->peek_done = 1;
    int rc = (blank ? session_body_put(s, "\r\n", 2) : 0) == 0 &&
             session_body_put(s, s->peek, s->npeek) == 0 ? 0 : -1;
    free(s->peek);
    s->peek = NULL;
    s->npeek = 0;
    return rc;
}

/* data_out_fn: the parser's output, into the body (and the milters' copy). */
static int session_body_out(void *arg, const char *buf, size_t n)
{
    struct session *s = arg;
    if (s->peek_done)
        return session_body_put(s, buf, n);
    if (s->peek == NULL && (s->peek = malloc(RECEIVED_NAME_PEEK)) == NULL) {
        s->body_errno = ENOMEM;
        return -1;
    }
    size_t k = RECEIVED_NAME_PEEK - s->npeek;
    if (k > n)
        k = n;
    memcpy(s->peek + s->npeek, buf, k);
    s->npeek += k;
    int r = received_header_start(s->peek, s->npeek);
    if (r < 0)
        return 0;                       /* all of buf held (k == n): more to come */
    if (session_body_release(s, r == 0) != 0)
        return -1;
    return session_body_put(s, buf + k, n - k);
}

/* End of the message text: octets still held never showed a colon. */
static int session_body_end(struct session *s)
{
    if (s->peek_done)
        return 0;
    return session_body_release(s, s->npeek > 0);
}

/* The transaction's milters at end of data: the live ones (the global
 * list, milter_set.c) go on from DATA; the global list when it could not
 * be opened live, then each recipient domain's, in recipient order, are
 * replayed from connect, a socket named twice run once.  With any, the
 * message is also kept in memory (bounded by message_size) for them to
 * read at end of data.  -1 on allocation failure. */
static int session_milters_begin(struct session *s)
{
    const struct conf *c = s->d->conf;
    size_t cap = s->mset ? 0 : c->milters.n;
    struct milter_run_live one;
    int live = milter_set_live(s->mset, &one, 1) > 0;
    for (size_t i = 0; i < s->nrcpt; i++) {
        const struct conf_domain *d = conf_domain_find(c, s->rcpt[i].domain);
        if (d)
            cap += d->milters.n;
    }
    if (cap == 0 && !live)
        return 0;
    if (!(s->mlist = calloc(cap ? cap : 1, sizeof *s->mlist)))
        return -1;
    s->nmlist = 0;
    for (size_t i = s->mset ? 1 : 0; i <= s->nrcpt; i++) {
        const struct conf_milters *ms = &c->milters;
        if (i > 0) {
            const struct conf_domain *d = conf_domain_find(c, s->rcpt[i - 1].domain);
            if (!d)
                continue;
            ms = &d->milters;
        }
        for (size_t k = 0; k < ms->n; k++) {
            size_t j;
            for (j = 0; j < s->nmlist; j++)
                if (strcmp(s->mlist[j].socket, ms->v[k].socket) == 0)
                    break;
            if (j < s->nmlist || milter_set_has(s->mset, ms->v[k].socket))
                continue;
            s->mlist[j] = ms->v[k];
            if (!(s->mlist[j].socket = strdup(ms->v[k].socket)))
                return -1;
            s->nmlist++;
        }
    }
    if (!(s->mcopy = evbuffer_new()))
        return -1;
    return 0;
}

/* Create the body, write our Received header first, make the parser. */
static const char *session_body_begin(struct session *s, int bdat)
{
    const struct conf *c = s->d->conf;
    char hdr[SMTPD_RECEIVED_MAX];
    struct received_info ri = {
        .helo = s->helo,
        .client_name = s->name,
        .client_addr = s->addr,
        .hostname = c->hostname,
        .protocol = received_protocol(s->esmtp, s->tls, s->mp.smtputf8),
        .tls = s->tls ? s->tls_desc : NULL,
        .qid = s->qid,
        .rcpt = s->nrcpt == 1 ? s->rcpt[0].addr : NULL,
        .when = time(NULL),
    };
    struct data_limits lim = {
        .bare_newline = c->bare_newline,
        .max_size = c->limits.message_size,
        .header_size = c->limits.header_size,
        .header_lines = c->limits.header_lines,
        .received_max = c->limits.received_max,
    };
    int n = received_format(hdr, sizeof hdr, &ri);
    if (n < 0)
        log_panic("%s: Received header does not fit %zu octets", s->qid, sizeof hdr);
    s->body = spool_body_new(s->d->spool, s->qid);
    if (s->body == NULL) {
        log_warn("%s: cannot create body: %s", s->qid, strerror(errno));
        return errno == ENOSPC ? "452 4.3.1 Error: insufficient system storage"
                               : "451 4.3.0 Error: queue file write error";
    }
    s->dp = data_new(&lim, bdat);
    s->peek_done = 0;
    s->npeek = 0;
    if (session_milters_begin(s) < 0 || s->dp == NULL ||
        spool_body_write(s->body, hdr, (size_t)n) != 0 ||
        (s->mcopy && evbuffer_add(s->mcopy, hdr, (size_t)n) != 0)) {
        int e = errno;
        session_txn_reset(s);
        return e == ENOSPC ? "452 4.3.1 Error: insufficient system storage"
                           : "451 4.3.0 Error: queue file write error";
    }
    return NULL;
}

static void cmd_data(struct session *s, const char *arg)
{
    const char *err;
    if (*arg) {
        session_error(s, STAT_REJ_PROTOCOL, "501 5.5.4 Syntax: DATA");
        return;
    }
    if (s->state == S_MAIL) {
        session_error(s, STAT_REJ_PROTOCOL, "554 5.5.1 Error: no valid recipients");
        return;
    }
    /* RFC 2920: DATA ends a command group.  Message text already here was
     * sent before our 354 allowed it. */
    if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0) {
        log_warn("%s: [%s] sent message text before 354: pipelining abuse", s->qid, s->addr);
        session_close(s, STAT_REJ_PROTOCOL, "554 5.5.0 Error: SMTP protocol synchronization");
        return;
    }
    if ((err = session_body_begin(s, 0)) != NULL) {
        session_reject(s, STAT_REJ_STORAGE, err);
        return;
    }
    session_set_state(s, S_DATA);
    session_set_timeout(s, s->d->conf->limits.data_timeout);
    session_reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void cmd_bdat(struct session *s, const char *arg)
{
    long size;
    int last;
    const char *err = smtp_parse_bdat(arg, LONG_MAX, &size, &last);
    if (err) {
        /* Without a valid size we cannot tell where the chunk ends: the
         * session cannot be kept in step, so it ends here. */
        session_close(s, STAT_REJ_PROTOCOL, err);
        return;
    }
    const char *refusal = NULL;
    enum stat_id why = STAT_REJ_PROTOCOL;
    if (size > s->d->conf->limits.message_size) {
        session_txn_reset(s);
        refusal = "552 5.3.4 Error: message size exceeds fixed limit";
        why = STAT_REJ_SIZE;
    } else if (s->state == S_HELO || s->state == S_INIT)
        refusal = "503 5.5.1 Error: need MAIL command";
    else if (s->state == S_MAIL)
        refusal = "554 5.5.1 Error: no valid recipients";
    else if (s->state == S_RCPT && (refusal = session_body_begin(s, 1)) != NULL)
        why = STAT_REJ_STORAGE;                 /* NULL: the chunk is ours */
    /* The chunk's octets are read (and dropped on refusal) either way:
     * RFC 3030 keeps the session in step only if we consume them. */
    s->bdat_left = size;
    s->bdat_last = last;
    s->bdat_reply = refusal;
    s->bdat_why = why;
    /* Where a refused chunk leaves the session: no transaction either way. */
    s->bdat_back = s->state == S_INIT ? S_INIT : S_HELO;
    session_set_state(s, S_BDAT);
    session_set_timeout(s, s->d->conf->limits.data_timeout);
}

static void cmd_rset(struct session *s, const char *arg)
{
    session_txn_reset(s);
    if (s->state != S_INIT)
        session_set_state(s, S_HELO);
    session_reply(s, "250 2.0.0 Ok");
}

static void cmd_noop(struct session *s, const char *arg) { session_reply(s, "250 2.0.0 Ok"); }

static void cmd_quit(struct session *s, const char *arg)
{
    char buf[320];
    snprintf(buf, sizeof buf, "221 2.0.0 %s closing connection", s->d->conf->hostname);
    session_close(s, SMTPD_NO_REJECT, buf);
}

static void cmd_vrfy(struct session *s, const char *arg)
{
    /* RFC 5321 3.5.3: 252 neither confirms nor denies; a backup MX cannot
     * know more than its recipient list, and must not leak that list. */
    session_reply(s, "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_expn(struct session *s, const char *arg)
{
    session_error(s, STAT_REJ_PROTOCOL, "502 5.5.1 Error: command not implemented");
}

static void cmd_help(struct session *s, const char *arg)
{
    session_reply(s, "214 2.0.0 mxkeep backup MX: see RFC 5321");
}

static void cmd_auth(struct session *s, const char *arg)
{
    session_error(s, STAT_REJ_PROTOCOL, "503 5.5.1 Error: authentication not enabled");
}

static void cmd_http(struct session *s, const char *arg)
{
    log_warn("[%s]: HTTP command, not SMTP: closing", s->addr);
    session_set_state(s, S_DEAD);
}

static void session_tls_start(struct session *s);

static void cmd_starttls(struct session *s, const char *arg)
{
    if (*arg) {
        session_error(s, STAT_REJ_PROTOCOL, "501 5.5.4 Syntax: STARTTLS");
        return;
    }
    if (s->d->tls == NULL) {
        session_error(s, STAT_REJ_PROTOCOL, "502 5.5.1 Error: command not implemented");
        return;
    }
    if (s->tls) {
        session_error(s, STAT_REJ_PROTOCOL, "503 5.5.1 Error: TLS already active");
        return;
    }
    session_reply(s, "220 2.0.0 Ready to start TLS");
    session_tls_start(s);
}

static void cmd_etrn(struct session *s, const char *arg)
{
    int kind;
    char domain[SMTP_DOMAIN_MAX + 1], buf[512];
    const struct conf_domain **doms = NULL;
    size_t n = 0;
    const char *err = smtp_parse_etrn(arg, &kind, domain, sizeof domain);
    unsigned char a[16];
    int family = s->sa.ss_family;

    if (err) {
        session_error(s, STAT_REJ_PROTOCOL, err);
        return;
    }
    if (family == AF_INET)
        memcpy(a, &((struct sockaddr_in *)&s->sa)->sin_addr, 4);
    else
        memcpy(a, &((struct sockaddr_in6 *)&s->sa)->sin6_addr, 16);
    /* "@domain" may cover every served domain: sized by the config, so
     * none is silently left out of the flush. */
    if (!(doms = calloc(s->d->conf->ndomains + 1, sizeof *doms))) {
        session_reply(s, "452 4.3.0 Error: out of memory");
        return;
    }
    err = policy_check_etrn(s->d->policy, family, a, kind, domain, doms,
                            s->d->conf->ndomains + 1, &n, buf, sizeof buf);
    if (err) {
        free(doms);
        log_info("ETRN %s from [%s]: %s", arg, s->addr, err);
        session_reply(s, "%s", err);
        return;
    }
    if (s->d->etrn == NULL) {
        snprintf(buf, sizeof buf, "458 4.3.0 Unable to queue messages for node %s", domain);
    } else {
        s->d->etrn(s->d->hook_arg, arg, doms, n, buf, sizeof buf);
    }
    free(doms);
    log_info("ETRN %s from [%s]: %s", arg, s->addr, buf);
    session_reply(s, "%s", buf);
}

#define IN_TXN (ST(S_MAIL) | ST(S_RCPT))
#define ANY_CMD (ST(S_INIT) | ST(S_HELO) | IN_TXN)

static const struct smtpd_cmd smtpd_cmds[] = {
    { SMTP_CMD_HELO, ANY_CMD, NULL, cmd_helo },
    { SMTP_CMD_EHLO, ANY_CMD, NULL, cmd_ehlo },
    { SMTP_CMD_MAIL, ST(S_HELO), NULL, cmd_mail },
    { SMTP_CMD_RCPT, IN_TXN, "503 5.5.1 Error: need MAIL command", cmd_rcpt },
    { SMTP_CMD_DATA, IN_TXN, "503 5.5.1 Error: need RCPT command", cmd_data },
    { SMTP_CMD_BDAT, ANY_CMD | ST(S_CHUNKING), NULL, cmd_bdat },
    { SMTP_CMD_RSET, ANY_CMD | ST(S_CHUNKING), NULL, cmd_rset },
    { SMTP_CMD_NOOP, ANY_CMD | ST(S_CHUNKING), NULL, cmd_noop },
    { SMTP_CMD_QUIT, ANY_CMD | ST(S_CHUNKING), NULL, cmd_quit },
    { SMTP_CMD_VRFY, ANY_CMD, NULL, cmd_vrfy },
    { SMTP_CMD_EXPN, ANY_CMD, NULL, cmd_expn },
    { SMTP_CMD_HELP, ANY_CMD, NULL, cmd_help },
    { SMTP_CMD_AUTH, ANY_CMD, NULL, cmd_auth },
    { SMTP_CMD_STARTTLS, ST(S_INIT) | ST(S_HELO), "503 5.5.1 Error: STARTTLS not allowed in a mail transaction", cmd_starttls },
    { SMTP_CMD_ETRN, ST(S_HELO), "503 5.5.1 Error: ETRN not allowed in a mail transaction", cmd_etrn },
    { SMTP_CMD_HTTP, ANY_CMD | ST(S_CHUNKING), NULL, cmd_http },
};

static const struct smtpd_cmd *smtpd_cmd_find(enum smtp_cmd cmd)
{
    for (size_t i = 0; i < sizeof smtpd_cmds / sizeof smtpd_cmds[0]; i++)
        if (smtpd_cmds[i].cmd == cmd)
            return &smtpd_cmds[i];
    return NULL;
}

/* Why a command is refused in a state the table does not allow it in. */
static const char *smtpd_refusal(const struct session *s, const struct smtpd_cmd *c)
{
    if (s->state == S_CHUNKING)
        return "503 5.5.1 Error: BDAT transaction in progress: send BDAT, RSET or QUIT";
    if (s->state == S_INIT && (c->cmd == SMTP_CMD_MAIL || c->cmd == SMTP_CMD_ETRN))
        return "503 5.5.1 Error: send HELO/EHLO first";
    if (c->cmd == SMTP_CMD_MAIL)
        return "503 5.5.1 Error: nested MAIL command";
    if (c->refusal)
        return c->refusal;
    return "503 5.5.1 Error: bad sequence of commands";
}

static int smtpd_cmd_is_junk(enum smtp_cmd c)
{
    return c == SMTP_CMD_NOOP || c == SMTP_CMD_RSET || c == SMTP_CMD_VRFY ||
           c == SMTP_CMD_EXPN || c == SMTP_CMD_HELP || c == SMTP_CMD_UNKNOWN;
}

static void session_command(struct session *s, const char *line, size_t len)
{
    struct smtp_command sc;
    const char *err = smtp_parse_command(line, len, &sc);
    const struct smtpd_cmd *c;

    s->ncmds++;
    if (smtpd_cmd_is_junk(sc.cmd) && ++s->junk > s->d->conf->limits.junk_commands) {
        log_warn("[%s]: too many junk commands, disconnecting", s->addr);
        session_close(s, STAT_REJ_LIMIT, "421 4.7.0 Error: too many junk commands");
        return;
    }
    if (err) {
        session_error(s, STAT_REJ_PROTOCOL, err);
        return;
    }
    c = smtpd_cmd_find(sc.cmd);
    if (c == NULL) {
        session_error(s, STAT_REJ_PROTOCOL, "500 5.5.1 Error: command unrecognized");
        return;
    }
    if (s->mconn_reply != NULL && sc.cmd != SMTP_CMD_QUIT && sc.cmd != SMTP_CMD_RSET &&
        sc.cmd != SMTP_CMD_NOOP) {
        /* a milter refused the connection */
        session_error(s, STAT_REJ_CONTENT, s->mconn_reply);
        return;
    }
    if (!(c->allowed & ST(s->state))) {
        session_error(s, STAT_REJ_PROTOCOL, smtpd_refusal(s, c));
        return;
    }
    c->run(s, sc.arg);
    session_sync_check(s, sc.cmd);
}

/* A client that did not get PIPELINING (HELO), or a command that must end
 * a group (RFC 2920 3.1: EHLO, HELO, QUIT...), may not have sent more
 * before our reply to cmd.  (A RCPT waiting for its verdict is checked
 * when the verdict is answered.) */
static void session_sync_check(struct session *s, enum smtp_cmd cmd)
{
    if ((s->state == S_HELO || s->state == S_MAIL || s->state == S_RCPT || s->state == S_INIT) &&
        evbuffer_get_length(bufferevent_get_input(s->bev)) > 0 &&
        (!s->esmtp || cmd == SMTP_CMD_EHLO || cmd == SMTP_CMD_HELO)) {
        log_warn("[%s]: command sent before reply to %s: pipelining abuse", s->addr,
                 smtp_cmd_name(cmd));
        evbuffer_drain(bufferevent_get_input(s->bev),
                       evbuffer_get_length(bufferevent_get_input(s->bev)));
        session_txn_reset(s);
        session_close(s, STAT_REJ_PROTOCOL, "554 5.5.0 Error: SMTP protocol synchronization");
    }
}

/* ------------------------------------------------------------------ */
/* Commit                                                             */

static void commit_free(struct smtpd_commit *c)
{
    if (c == NULL)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->d->commits = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->quarantine);
    spf_cancel(c->spf);
    if (c->dkim_held)
        dkim_unhold(c->d->dkim, c->qid);
    free(c);
}

/* The session saw its commit complete: answer, and go on reading. */
static void session_committed(struct session *s, const char *qid, int err)
{
    s->commit = NULL;
    if (err == 0) {
        session_reply(s, "250 2.0.0 Ok: queued as %s", qid);
        s->nmsgs++;
    } else if (err == ENOSPC) {
        session_reply(s, "452 4.3.1 Error: insufficient system storage");
    } else {
        session_reply(s, "451 4.3.0 Error: queue file write error");
    }
    session_txn_reset(s);
    session_set_state(s, S_HELO);
    session_set_timeout(s, s->d->conf->limits.command_timeout);
    bufferevent_enable(s->bev, EV_READ);
    session_drive(s);
    if (s->state == S_DEAD)
        session_free(s);
}

/* SPF finished while the commit was with the spool: keep the answer for
 * the post-commit record update. */
static void commit_on_spf(void *arg, const struct spf_answer *a)
{
    struct smtpd_commit *c = arg;
    c->spf = NULL;
    c->spf_have = 1;
    c->spf_ans = *a;
}

/* dkim_check's hook for a quarantined message (a dkim_then_fn): its
 * results are in the record.  Released meanwhile, it is delivery's now,
 * and the release found it still being verified and left it: schedule it.
 * Still quarantined: nothing to do. */
static void commit_quarantine_then(void *arg, const char *qid)
{
    struct smtpd *d = arg;
    struct qmsg *m = malloc(sizeof *m);
    if (m != NULL && d->queued && spool_msg_get(d->spool, qid, m) == 0 &&
        !(m->flags & QMSG_F_QUARANTINE))
        d->queued(d->hook_arg, qid);
    free(m);
}

/* spool_done_fn of a commit: runs exactly once, on the loop thread. */
static void commit_done(void *arg, int err)
{
    struct smtpd_commit *c = arg;
    struct smtpd *d = c->d;
    if (err == 0 && c->quarantine != NULL) {
        /* A milter's quarantine: held in the spool, never scheduled.  Its
         * SPF (if still running) and DKIM results are recorded all the
         * same, so that a released message carries them to the primary. */
        struct spf_req *spf = c->spf;
        c->spf = NULL;                  /* dkim_check takes it over */
        dkim_check(d->dkim, c->qid, c->dkim_verify, spf, c->spf_have ? &c->spf_ans : NULL,
                   commit_quarantine_then, d);
        struct qmsg *q = calloc(1, sizeof *q);
        log_info("%s: from=<%s>, size=%llu, nrcpt=%zu (quarantine)", c->qid, c->sender,
                 c->size, c->nrcpt);
        stats_inc(STAT_ACCEPTED);
        stats_add(STAT_ACCEPTED_BYTES, (uint64_t)c->size);
        if (q != NULL) {
            snprintf(q->qid, sizeof q->qid, "%s", c->qid);
            snprintf(q->quarantine_reason, sizeof q->quarantine_reason, "%s", c->quarantine);
            quarantine_committed(q);
            free(q);
        }
    } else if (err == 0) {
        log_info("%s: from=<%s>, size=%llu, nrcpt=%zu (queue active)", c->qid, c->sender,
                 c->size, c->nrcpt);
        stats_inc(STAT_ACCEPTED);
        stats_add(STAT_ACCEPTED_BYTES, (uint64_t)c->size);
        if (c->s == NULL)
            log_info("%s: queued after %s disconnected", c->qid, c->client);
        /* DKIM first (after the 250, never before it), with SPF if it
         * was still running at the commit: the message goes to delivery
         * once both are in the record, so the primary's
         * Authentication-Results header carries them. */
        struct spf_req *spf = c->spf;
        c->spf = NULL;                  /* dkim_check takes it over */
        /* The hold ends here: from now on the job (if any) keeps delivery
         * off the message.  Before dkim_check, whose job may call the hook
         * at once, and before the hook, which would find it held (one
         * thread: no walk runs in between). */
        if (c->dkim_held) {
            dkim_unhold(d->dkim, c->qid);
            c->dkim_held = 0;
        }
        int started = d->queued && dkim_check(d->dkim, c->qid, c->dkim_verify, spf,
                                              c->spf_have ? &c->spf_ans : NULL, d->queued,
                                              d->hook_arg) == 0;
        if (!d->queued)
            spf_cancel(spf);
        if (d->queued && !started)
            d->queued(d->hook_arg, c->qid);
    } else {
        stats_inc(STAT_REJ_STORAGE);
        log_warn("%s: not queued: %s", c->qid, err == ENOSPC ? "spool full" : strerror(err));
    }
    struct session *s = c->s;
    char qid[QID_SIZE];
    memcpy(qid, c->qid, sizeof qid);
    commit_free(c);
    if (s != NULL)
        session_committed(s, qid, err);
}

static void session_commit(struct session *s);
static void session_milters_start(struct session *s);

/* The message text is complete: refuse it, hand it to the milters, or
 * hand it to the spool. */
static void session_data_end(struct session *s)
{
    enum data_status st = data_finish(s->dp, session_body_out, s);
    if (st == DATA_OK && session_body_end(s) != 0)
        st = DATA_WRITE_ERROR;
    const char *reply = NULL;
    enum stat_id why = STAT_REJ_CONTENT;

    switch (st) {
    case DATA_OK:
        break;
    case DATA_BARE_NEWLINE:
        reply = "550 5.5.2 Error: bare CR or LF in message text is not allowed here; use CRLF";
        break;
    case DATA_HEADER_TOO_BIG:
        reply = "552 5.3.4 Error: message header size exceeds limit";
        why = STAT_REJ_CONTENT;         /* a header limit (stats.h), not the size */
        break;
    case DATA_LOOP:
        reply = "554 5.4.6 Error: too many hops: routing loop";
        break;
    case DATA_TOO_BIG:
        reply = "552 5.3.4 Error: message file too big";
        why = STAT_REJ_SIZE;
        break;
    case DATA_WRITE_ERROR:
        reply = s->body_errno == ENOSPC ? "452 4.3.1 Error: insufficient system storage"
                                        : "451 4.3.0 Error: queue file write error";
        why = STAT_REJ_STORAGE;
        break;
    }
    if (reply) {
        log_info("%s: reject: end of data from %s[%s]: %s; from=<%s>", s->qid, s->name, s->addr,
                 reply, s->sender);
        session_reject(s, why, reply);
        session_txn_reset(s);
        session_set_state(s, S_HELO);
        session_set_timeout(s, s->d->conf->limits.command_timeout);
        return;
    }
    s->m8bit = data_has_8bit(s->dp);
    if (milter_set_discarded(s->mset)) {
        /* a live milter said discard at MAIL or RCPT: 250, nothing kept */
        log_info("%s: discard: end of data from %s[%s]: by milter; from=<%s>", s->qid, s->name,
                 s->addr, s->sender);
        stats_inc(STAT_REJ_CONTENT);
        session_reply(s, "250 2.0.0 Ok: queued as %s", s->qid);
        session_txn_reset(s);
        session_set_state(s, S_HELO);
        session_set_timeout(s, s->d->conf->limits.command_timeout);
        return;
    }
    if (s->mcopy != NULL) {
        session_milters_start(s);
        return;
    }
    session_commit(s);
}

/* After the milters, if any: the quota again with the real size, then
 * SPF (waited for at most spf.timeout), then the commit. */
static void session_commit(struct session *s)
{
    /* The quota again with the real size: refused only when every
     * recipient's domain would cross its quota.  When some would not, the
     * message is taken (it is stored once, for all its recipients) and
     * the full domains overshoot by this one message. */
    unsigned long long real = spool_body_size(s->body);
    size_t fits = 0;
    for (size_t i = 0; i < s->nrcpt && fits == 0; i++) {
        const struct conf_domain *dom = conf_domain_find(s->d->conf, s->rcpt[i].domain);
        if (dom == NULL || !smtpd_quota_full(s->d, dom, real))
            fits++;
    }
    if (fits == 0 && s->nrcpt > 0) {
        log_info("%s: reject: end of data from %s[%s]: domain quota exceeded (%llu octets); "
                 "from=<%s>", s->qid, s->name, s->addr, real, s->sender);
        session_reject(s, STAT_REJ_QUOTA,
                       "452 4.2.2 Error: mailbox full: domain quota exceeded, try again later");
        session_txn_reset(s);
        session_set_state(s, S_HELO);
        session_set_timeout(s, s->d->conf->limits.command_timeout);
        return;
    }

    /* SPF still looking is not waited for: the commit takes the check
     * over and its result is recorded after the 250 (dkim_check). */
    session_data_commit(s);
}

/* The message's authentication results when SPF has finished (a check
 * still running is recorded after the commit), and DKIM's when the
 * message has no signature: "none" needs no worker (dkim.h). */
static void session_auth_fill(struct session *s, struct qmsg *m)
{
    session_spf_fill(s, m);
    if (s->d->dkim != NULL && data_dkim_signatures(s->dp) == 0) {
        m->auth_flags |= QMSG_AUTH_DKIM_DONE;
        if (authres_add(m->auth_results, sizeof m->auth_results, "dkim", "none", NULL, NULL) < 0)
            log_warn("%s: dkim result does not fit the record", s->qid);
    }
}

static void session_spf_fill(struct session *s, struct qmsg *m)
{
    if (!s->spf_done)
        return;                         /* running, or no check made */
    struct spf_answer a = s->spf_ans;
    if (s->sender[0]) {
        m->auth_flags |= QMSG_AUTH_SPF_DONE;
        if (a.mailfrom == SPF_RES_PASS)
            m->auth_flags |= QMSG_AUTH_SPF_PASS;
    }
    if (spf_answer_resinfo(&a, s->sender, s->helo, m->auth_results, sizeof m->auth_results) < 0)
        log_warn("%s: spf results do not fit the record", s->qid);
    log_info("%s: spf: mailfrom=%s helo=%s", s->qid, s->sender[0] ? spf_result_name(a.mailfrom) : "-",
             spf_result_name(a.helo));
}

/* Hand the finished message to the spool (S_DATA/S_BDAT). */
static void session_data_commit(struct session *s)
{
    struct qmsg m;
    memset(&m, 0, sizeof m);
    snprintf(m.qid, sizeof m.qid, "%s", s->qid);
    m.arrival = (int64_t)s->started;
    m.size = spool_body_size(s->body);
    m.nrcpt = (uint32_t)s->nrcpt;
    m.flags = (s->m8bit ? QMSG_F_8BIT : 0) | (s->mp.smtputf8 ? QMSG_F_SMTPUTF8 : 0);
    m.body = s->mp.body;
    m.ret = s->mp.ret;
    snprintf(m.envid, sizeof m.envid, "%s", s->mp.envid);
    snprintf(m.sender, sizeof m.sender, "%s", s->sender);
    snprintf(m.client_addr, sizeof m.client_addr, "%s", s->addr);
    snprintf(m.client_name, sizeof m.client_name, "%s", s->name);
    snprintf(m.helo, sizeof m.helo, "%s", s->helo);
    if (s->mquarantine != NULL)         /* a milter's quarantine action */
        quarantine_prepare(&m, s->d->conf, s->mquarantine, (int64_t)time(NULL));
    session_auth_fill(s, &m);
    int dkim_verify = data_dkim_signatures(s->dp) > 0;
    struct spf_req *spf = s->spf;       /* still running: the commit's now */
    s->spf = NULL;

    struct spool_body *b = s->body;
    s->body = NULL;                     /* the spool owns it now */
    data_free(s->dp);
    s->dp = NULL;
    struct smtpd_commit *c = calloc(1, sizeof *c);
    /* A milter's quarantine reason goes with the commit: without it the
     * record (quarantined) and commit_done (which would schedule it)
     * would disagree, so no memory for it is no commit. */
    if (c != NULL && s->mquarantine != NULL && (c->quarantine = strdup(s->mquarantine)) == NULL) {
        free(c);
        c = NULL;
    }
    if (c == NULL) {
        spf_cancel(spf);
        spool_body_free(b);
        log_warn("%s: cannot queue commit: out of memory", s->qid);
        session_reject(s, STAT_REJ_STORAGE, "451 4.3.0 Error: queue file write error");
        session_txn_reset(s);
        session_set_state(s, S_HELO);
        session_set_timeout(s, s->d->conf->limits.command_timeout);
        return;
    }
    c->d = s->d;
    c->s = s;
    memcpy(c->qid, m.qid, sizeof c->qid);
    memcpy(c->sender, m.sender, sizeof c->sender);
    snprintf(c->client, sizeof c->client, "%s[%s]", s->name, s->addr);
    c->size = (unsigned long long)m.size;
    c->nrcpt = s->nrcpt;
    /* Results still to come (SPF running, signatures to verify): delivery
     * must not take the message before they are recorded, and its walk of
     * the index sees the record before commit_done runs. */
    if (c->quarantine == NULL && (spf != NULL || dkim_verify)) {
        if (dkim_hold(s->d->dkim, c->qid) == 0)
            c->dkim_held = 1;
        else
            log_warn("%s: out of memory: may be delivered before its SPF/DKIM results", c->qid);
    }
    session_set_state(s, S_COMMIT);
    /* No read timeout while the disk works: the client is waiting on us. */
    session_set_timeout(s, 0);
    if (spool_commit(s->d->spool, b, &m, s->rcpt, s->nrcpt, commit_done, c) == NULL) {
        log_warn("%s: cannot queue commit: %s", s->qid, strerror(errno));
        spf_cancel(spf);
        if (c->dkim_held)
            dkim_unhold(s->d->dkim, c->qid);
        free(c->quarantine);
        free(c);
        session_reject(s, STAT_REJ_STORAGE, "451 4.3.0 Error: queue file write error");
        session_txn_reset(s);
        session_set_state(s, S_HELO);
        session_set_timeout(s, s->d->conf->limits.command_timeout);
        return;
    }
    c->next = s->d->commits;
    if (c->next)
        c->next->prev = c;
    s->d->commits = c;
    s->commit = c;
    c->dkim_verify = dkim_verify;
    c->spf = spf;
    spf_redirect(spf, commit_on_spf, c);
}

/* ------------------------------------------------------------------ */
/* Milters (milter_run.c): after the end of data, before the commit    */

/* A header field of the rewritten message: "Name: value" with CRLF. */
struct mhdr {
    char *text;
    size_t len;
};

/* Milter text uses "\n" between folded lines: stored text wants CRLF. */
static int mtext_add_crlf(struct evbuffer *out, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r')) {
            if (evbuffer_add(out, "\r\n", 2) != 0)
                return -1;
        } else if (evbuffer_add(out, p + i, 1) != 0) {
            return -1;
        }
    }
    return 0;
}

static char *mhdr_make(const char *name, const char *value, size_t *len)
{
    struct evbuffer *b = evbuffer_new();
    char *t = NULL;
    if (b && evbuffer_add_printf(b, "%s: ", name) >= 0 &&
        mtext_add_crlf(b, value, strlen(value)) == 0 && evbuffer_add(b, "\r\n", 2) == 0) {
        *len = evbuffer_get_length(b);
        if ((t = malloc(*len + 1)) != NULL) {
            evbuffer_remove(b, t, *len);
            t[*len] = '\0';
        }
    }
    if (b)
        evbuffer_free(b);
    return t;
}

/* Does header field h have this name (case-insensitive)? */
static int mhdr_is(const struct mhdr *h, const char *name)
{
    size_t n = strlen(name);
    return h->len > n && strncasecmp(h->text, name, n) == 0 && h->text[n] == ':';
}

static void mhdrs_free(struct mhdr *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(h[i].text);
    free(h);
}

/* Strip <> from a milter's address argument into out ("" for <>). */
static int maddr(const char *in, char *out, size_t len, struct smtp_addr *a, int rcpt)
{
    char path[SMTP_PATH_MAX + 3];
    const char *rest;
    if (in[0] == '<')
        snprintf(path, sizeof path, "%s", in);
    else
        snprintf(path, sizeof path, "<%s>", in);
    if (smtp_parse_path(path, &rest, a, !rcpt, 1, rcpt) != NULL)
        return -1;
    return smtp_addr_format(a, out, len) < 0 ? -1 : 0;
}

/* Apply the milters' recipient and sender changes.  An added recipient
 * goes through the same policy as RCPT (served domains only: a milter
 * is never a way to relay); its refusal is logged and it is not added.
 * Returns -1 on allocation failure. */
static int session_milter_envelope(struct session *s, const struct milter_run_result *r)
{
    for (size_t i = 0; i < r->nmods; i++) {
        const struct milter_mod *d = &r->mods[i];
        char addr[SMTP_PATH_MAX + 1];
        struct smtp_addr a;
        if (d->cmd == SMFIR_CHGFROM) {
            if (maddr(d->addr, addr, sizeof addr, &a, 0) < 0) {
                log_warn("%s: milter change of sender to %s refused: bad address", s->qid, d->addr);
                continue;
            }
            log_info("%s: milter: sender <%s> -> <%s>", s->qid, s->sender, addr);
            snprintf(s->sender, SMTP_PATH_MAX + 1, "%s", addr);
        } else if (d->cmd == SMFIR_DELRCPT) {
            if (maddr(d->addr, addr, sizeof addr, &a, 1) < 0)
                continue;
            for (size_t k = 0; k < s->nrcpt; k++) {
                if (strcasecmp(s->rcpt[k].addr, addr) == 0) {
                    log_info("%s: milter: recipient <%s> removed", s->qid, addr);
                    memmove(&s->rcpt[k], &s->rcpt[k + 1], (s->nrcpt - k - 1) * sizeof *s->rcpt);
                    s->nrcpt--;
                    break;
                }
            }
        } else if (d->cmd == SMFIR_ADDRCPT || d->cmd == SMFIR_ADDRCPT_PAR) {
            const struct conf_domain *dom = NULL;
            char buf[SMTP_PATH_MAX + 128];
            const char *why;
            if (maddr(d->addr, addr, sizeof addr, &a, 1) < 0 ||
                (why = policy_check_rcpt(s->d->policy, &a, &dom, NULL, buf, sizeof buf)) != NULL ||
                dom == NULL) {
                log_warn("%s: milter: recipient %s not added: %s", s->qid, d->addr,
                         "not a recipient of a served domain");
                continue;
            }
            size_t k;
            for (k = 0; k < s->nrcpt; k++)
                if (strcasecmp(s->rcpt[k].addr, addr) == 0)
                    break;
            if (k < s->nrcpt)
                continue;
            if ((long)s->nrcpt >= s->d->conf->limits.recipients) {
                log_warn("%s: milter: recipient <%s> not added: too many recipients", s->qid, addr);
                continue;
            }
            if (s->nrcpt == s->rcpt_cap) {
                size_t cap = s->rcpt_cap ? s->rcpt_cap * 2 : 4;
                struct qrcpt *nr = realloc(s->rcpt, cap * sizeof *nr);
                if (!nr)
                    return -1;
                s->rcpt = nr;
                s->rcpt_cap = cap;
            }
            struct qrcpt *q = &s->rcpt[s->nrcpt];
            memset(q, 0, sizeof *q);
            q->state = QRCPT_PENDING;
            q->expiry = (int64_t)time(NULL) + dom->retention;
            snprintf(q->addr, sizeof q->addr, "%s", addr);
            snprintf(q->domain, sizeof q->domain, "%s", dom->name);
            s->nrcpt++;
            log_info("%s: milter: recipient <%s> added", s->qid, addr);
        }
    }
    for (size_t k = 0; k < s->nrcpt; k++)
        s->rcpt[k].index = (uint32_t)k;
    return 0;
}

/* Rewrite the stored message with the milters' header and body changes:
 * a new body under the same queue ID replaces the uncommitted one.
 * Returns NULL, or the reply to refuse the message with. */
static const char *session_milter_rewrite(struct session *s, const struct milter_run_result *r)
{
    int headers = 0, body = 0;
    for (size_t i = 0; i < r->nmods; i++) {
        char c = r->mods[i].cmd;
        headers |= c == SMFIR_ADDHEADER || c == SMFIR_INSHEADER || c == SMFIR_CHGHEADER;
        body |= c == SMFIR_REPLBODY;
    }
    if (!headers && !body)
        return NULL;
    const char *fail = "451 4.3.0 Error: queue file write error";
    size_t len = evbuffer_get_length(s->mcopy);
    const char *msg = (const char *)evbuffer_pullup(s->mcopy, -1);
    struct mhdr *h = NULL;
    size_t nh = 0, cap = 0, off = 0, body_start = len;
    struct evbuffer *out = NULL;
    /* split the header into fields (folded lines stay with their field) */
    while (off < len) {
        if (len - off >= 2 && msg[off] == '\r' && msg[off + 1] == '\n') {
            body_start = off + 2;
            break;
        }
        size_t e = off;
        for (;;) {
            const char *nl = memchr(msg + e, '\n', len - e);
            e = nl ? (size_t)(nl - msg) + 1 : len;
            if (e >= len || (msg[e] != ' ' && msg[e] != '\t'))
                break;
        }
        if (nh == cap) {
            cap = cap ? cap * 2 : 32;
            struct mhdr *n = realloc(h, cap * sizeof *h);
            if (!n)
                goto out;
            h = n;
        }
        if (!(h[nh].text = malloc(e - off + 1)))
            goto out;
        memcpy(h[nh].text, msg + off, e - off);
        h[nh].text[e - off] = '\0';
        h[nh].len = e - off;
        nh++;
        off = e;
    }
    if (!(out = evbuffer_new()))
        goto out;
    for (size_t i = 0; i < r->nmods; i++) {
        const struct milter_mod *d = &r->mods[i];
        if (d->cmd != SMFIR_ADDHEADER && d->cmd != SMFIR_INSHEADER && d->cmd != SMFIR_CHGHEADER)
            continue;
        if (d->cmd == SMFIR_CHGHEADER) {
            /* index: the n-th field of that name, from 1 (0 taken as 1) */
            uint32_t want = d->index ? d->index : 1, seen = 0;
            size_t k;
            for (k = 0; k < nh; k++)
                if (mhdr_is(&h[k], d->name) && ++seen == want)
                    break;
            if (k == nh) {
                if (d->value[0] == '\0')
                    continue;       /* deleting what is not there */
                /* changing a field that is not there adds it (libmilter) */
            } else {
                free(h[k].text);
                if (d->value[0] == '\0') {
                    memmove(&h[k], &h[k + 1], (nh - k - 1) * sizeof *h);
                    nh--;
                    continue;
                }
                if (!(h[k].text = mhdr_make(d->name, d->value, &h[k].len))) {
                    memmove(&h[k], &h[k + 1], (nh - k - 1) * sizeof *h);
                    nh--;
                    goto out;
                }
                continue;
            }
        }
        if (nh == cap) {
            cap = cap ? cap * 2 : 32;
            struct mhdr *n = realloc(h, cap * sizeof *h);
            if (!n)
                goto out;
            h = n;
        }
        size_t at = nh;
        if (d->cmd == SMFIR_INSHEADER && d->index < nh)
            at = d->index;
        memmove(&h[at + 1], &h[at], (nh - at) * sizeof *h);
        if (!(h[at].text = mhdr_make(d->name, d->value, &h[at].len))) {
            memmove(&h[at], &h[at + 1], (nh - at) * sizeof *h);
            goto out;
        }
        nh++;
    }
    for (size_t k = 0; k < nh; k++)
        if (evbuffer_add(out, h[k].text, h[k].len) != 0)
            goto out;
    if (evbuffer_add(out, "\r\n", 2) != 0)
        goto out;
    if (body) {
        for (size_t i = 0; i < r->nmods; i++)
            if (r->mods[i].cmd == SMFIR_REPLBODY &&
                mtext_add_crlf(out, (const char *)r->mods[i].body, r->mods[i].body_len) != 0)
                goto out;
    } else if (body_start < len && evbuffer_add(out, msg + body_start, len - body_start) != 0) {
        goto out;
    }
    if ((long)evbuffer_get_length(out) > s->d->conf->limits.message_size + SMTPD_RECEIVED_MAX) {
        fail = "552 5.3.4 Error: message file too big";
        goto out;
    }
    /* the new body replaces the uncommitted one (same queue ID) */
    spool_body_free(s->body);
    s->body = spool_body_new(s->d->spool, s->qid);
    if (s->body == NULL) {
        fail = errno == ENOSPC ? "452 4.3.1 Error: insufficient system storage" : fail;
        goto out;
    }
    {
        struct evbuffer_iovec v[64];
        int n = evbuffer_peek(out, -1, NULL, v, 64);
        const unsigned char *flat = n > 64 ? evbuffer_pullup(out, -1) : NULL;
        if (flat) {
            if (spool_body_write(s->body, flat, evbuffer_get_length(out)) != 0)
                goto out;
        } else {
            for (int i = 0; i < n; i++)
                if (spool_body_write(s->body, v[i].iov_base, v[i].iov_len) != 0)
                    goto out;
        }
    }
    log_info("%s: milter: message rewritten (%zu modifications)", s->qid, r->nmods);
    fail = NULL;
out:
    if (fail)
        log_warn("%s: cannot apply the milters' changes: %s", s->qid, fail);
    mhdrs_free(h, nh);
    if (out)
        evbuffer_free(out);
    return fail;
}

/* The milters' verdict: refuse, discard, or rewrite and commit. */
static void session_on_milters(void *arg, const struct milter_run_result *r)
{
    struct session *s = arg;
    const char *reply = NULL;
    s->mrun = NULL;
    if (s->state != S_MILTER)
        log_panic("[%s]: milter verdict in state %s", s->addr, sstate_names[s->state]);
    if (r->verdict == MILTER_REJECT || r->verdict == MILTER_TEMPFAIL) {
        reply = r->text;
    } else if (r->verdict == MILTER_DISCARD) {
        log_info("%s: discard: end of data from %s[%s]: by milter; from=<%s>", s->qid, s->name,
                 s->addr, s->sender);
        stats_inc(STAT_REJ_CONTENT);
        session_reply(s, "250 2.0.0 Ok: queued as %s", s->qid);
        session_txn_reset(s);
        session_set_state(s, S_HELO);
        goto resume;
    } else {
        if (r->quarantine) {
            /* committed into the spool's quarantine, not delivered */
            log_info("%s: milter quarantine: %s", s->qid, r->quarantine);
            free(s->mquarantine);
            if ((s->mquarantine = strdup(r->quarantine)) == NULL)
                reply = "451 4.3.0 Error: insufficient resources";
        }
        if (reply != NULL)
            ;
        else if (session_milter_envelope(s, r) < 0)
            reply = "451 4.3.0 Error: insufficient resources";
        else if (s->nrcpt == 0) {
            log_info("%s: discard: every recipient removed by milters", s->qid);
            session_reply(s, "250 2.0.0 Ok: queued as %s", s->qid);
            session_txn_reset(s);
            session_set_state(s, S_HELO);
            goto resume;
        } else {
            reply = session_milter_rewrite(s, r);
        }
    }
    if (reply) {
        log_info("%s: reject: end of data from %s[%s]: %s; from=<%s>", s->qid, s->name, s->addr,
                 reply, s->sender);
        session_reject(s, STAT_REJ_CONTENT, reply);
        session_txn_reset(s);
        session_set_state(s, S_HELO);
        goto resume;
    }
    session_commit(s);
    return;
resume:
    session_set_timeout(s, s->d->conf->limits.command_timeout);
    bufferevent_enable(s->bev, EV_READ);
    session_drive(s);
    if (s->state == S_DEAD)
        session_free(s);
}

static void session_milters_start(struct session *s)
{
    const char **rc = calloc(s->nrcpt ? s->nrcpt : 1, sizeof *rc);
    size_t cap = milter_set_count(s->mset);
    struct milter_run_live *live = calloc(cap ? cap : 1, sizeof *live);
    size_t nlive = live ? milter_set_live(s->mset, live, cap) : 0;
    for (size_t i = 0; rc && i < s->nrcpt; i++)
        rc[i] = s->rcpt[i].addr;
    struct milter_run_txn t;
    session_milter_txn(s, &t);
    t.rcpts = rc;
    t.nrcpt = s->nrcpt;
    t.msg = evbuffer_pullup(s->mcopy, -1);
    t.len = evbuffer_get_length(s->mcopy);
    session_set_state(s, S_MILTER);
    /* no read timeout: the milters' own timeouts bound this state */
    session_set_timeout(s, 0);
    if (rc == NULL || live == NULL || nlive + s->nmlist == 0 ||
        (s->mrun = milter_run_start(s->d->base, live, nlive, s->mlist, s->nmlist, &t,
                                    session_on_milters, s)) == NULL) {
        free(live);
        if (rc != NULL && live != NULL && nlive + s->nmlist == 0) {
            /* every live milter left the transaction meanwhile: commit */
            free(rc);
            session_commit(s);
            return;
        }
        free(rc);
        session_reject(s, STAT_REJ_STORAGE, "451 4.3.0 Error: insufficient resources");
        session_txn_reset(s);
        session_set_state(s, S_HELO);
        session_set_timeout(s, s->d->conf->limits.command_timeout);
        return;
    }
    free(live);
    /* milter_run copied the transaction but borrows its strings: the
     * recipient pointers must live as long as the run */
    free(s->mrcpts);
    s->mrcpts = rc;
}

/* ------------------------------------------------------------------ */
/* The drive loop                                                     */

/* Feed DATA text to the parser.  Returns 1 when the state changed. */
static int session_feed_data(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    struct evbuffer_iovec v[16];
    size_t used = 0;
    int n = evbuffer_peek(in, -1, NULL, v, 16);
    if (n <= 0)
        return 0;
    if (n > 16)
        n = 16;
    for (int i = 0; i < n && !data_done(s->dp); i++) {
        size_t k = data_feed(s->dp, v[i].iov_base, v[i].iov_len, session_body_out, s);
        used += k;
        if (k < v[i].iov_len)
            break;
    }
    evbuffer_drain(in, used);
    if (data_done(s->dp)) {
        session_data_end(s);
        return 1;
    }
    return used > 0;
}

/* Feed the octets of a BDAT chunk.  Returns 1 when progress was made. */
static int session_feed_bdat(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t avail = evbuffer_get_length(in);
    size_t take = avail < (size_t)s->bdat_left ? avail : (size_t)s->bdat_left;

    if (take > 0) {
        if (s->bdat_reply || s->dp == NULL) {
            evbuffer_drain(in, take);
        } else {
            struct evbuffer_iovec v[16];
            int n = evbuffer_peek(in, (ev_ssize_t)take, NULL, v, 16);
            size_t used = 0;
            if (n > 16)
                n = 16;
            for (int i = 0; i < n && used < take; i++) {
                size_t len = v[i].iov_len;
                if (len > take - used)
                    len = take - used;
                data_feed(s->dp, v[i].iov_base, len, session_body_out, s);
                used += len;
            }
            evbuffer_drain(in, used);
            take = used;
        }
        s->bdat_left -= (long)take;
    }
    if (s->bdat_left > 0)
        return take > 0;

    if (s->bdat_reply) {
        session_error(s, s->bdat_why, s->bdat_reply);
        session_txn_reset(s);
        if (s->state != S_CLOSING)
            session_set_state(s, s->bdat_back);
        session_set_timeout(s, s->d->conf->limits.command_timeout);
        return 1;
    }
    if (s->bdat_last) {
        session_data_end(s);
        return 1;
    }
    if (data_status(s->dp) != DATA_OK) {
        /* Fail now instead of reading chunks we will throw away. */
        session_data_end(s);
        return 1;
    }
    session_reply(s, "250 2.0.0 %ld octets received", data_size(s->dp));
    session_set_state(s, S_CHUNKING);
    session_set_timeout(s, s->d->conf->limits.command_timeout);
    return 1;
}

/* Take one CRLF-terminated command line off the input.  Returns its length
 * (line copied to s->line without CRLF), or -1 when none is complete. */
static long session_read_line(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    /* A reload may raise line_length; this session keeps its buffer. */
    size_t max = (size_t)s->d->conf->limits.line_length;
    if (max > s->linecap - 1)
        max = s->linecap - 1;
    size_t avail = evbuffer_get_length(in);
    struct evbuffer_ptr p;

    if (avail == 0)
        return -1;
    p = evbuffer_search(in, "\r\n", 2, NULL);
    if (p.pos < 0) {
        if (avail <= max)
            return -1;
        /* Over-long: answer now, throw the line away up to its CRLF.  A
         * trailing CR may start the CRLF, so keep it. */
        if (!s->discarding) {
            s->discarding = 1;
            session_error(s, STAT_REJ_PROTOCOL, "500 5.5.2 Error: line too long");
        }
        evbuffer_drain(in, avail - 1);
        return -1;
    }
    if (s->discarding || (size_t)p.pos + 2 > max) {
        evbuffer_drain(in, (size_t)p.pos + 2);
        if (!s->discarding)
            session_error(s, STAT_REJ_PROTOCOL, "500 5.5.2 Error: line too long");
        s->discarding = 0;
        return -2;
    }
    evbuffer_remove(in, s->line, (size_t)p.pos);
    s->line[p.pos] = '\0';
    evbuffer_drain(in, 2);
    return (long)p.pos;
}

static void session_drive(struct session *s)
{
    for (;;) {
        if (s->state >= S_COMMIT)       /* commit, rcpt-wait, tls, closing, dead */
            return;
        if (evbuffer_get_length(bufferevent_get_output(s->bev)) > SMTPD_OUTPUT_MAX) {
            s->out_blocked = 1;
            bufferevent_disable(s->bev, EV_READ);
            return;
        }
        switch (s->state) {
        case S_DATA:
            if (!session_feed_data(s))
                return;
            break;
        case S_BDAT:
            if (!session_feed_bdat(s))
                return;
            break;
        default: {
            long n = session_read_line(s);
            if (n == -1)
                return;
            if (n >= 0)
                session_command(s, s->line, (size_t)n);
            break;
        }
        }
    }
}

/* ------------------------------------------------------------------ */
/* libevent callbacks                                                 */

static void session_on_read(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;
    session_drive(s);
    if (s->state == S_DEAD)
        session_free(s);
}

/* Every reply queued so far reached the kernel: what waited for that. */
static void session_drained(struct session *s)
{
    if (s->state == S_CLOSING) {
        session_free(s);
        return;
    }
    if (s->tls_switch) {
        session_tls_switch(s);
        if (s->state == S_DEAD)
            session_free(s);
        return;
    }
    if (s->out_blocked) {
        s->out_blocked = 0;
        bufferevent_enable(s->bev, EV_READ);
        session_drive(s);
        if (s->state == S_DEAD)
            session_free(s);
    }
}

static void session_on_write(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;
    /* Callbacks are deferred (BEV_OPT_DEFER_CALLBACKS): this one may have
     * been scheduled when an earlier reply drained, before an asynchronous
     * completion (RCPT verdict, commit) queued more replies and a pipelined
     * QUIT closed the session.  Acting on the state alone would then free
     * the session with its last replies unsent; act only once the output
     * is really empty (libevent calls back again when it is). */
    if (evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        return;
    /* A direct session goes back to writing by itself (see struct session). */
    if (s->direct)
        bufferevent_disable(bev, EV_WRITE);
    session_drained(s);
}

/* The replies of this loop pass go to the socket (struct session, direct).
 * What the kernel does not take now, and any error, is left to the
 * bufferevent: it writes the rest when the socket is writable and reports
 * an error through session_on_event, as for any session. */
static void session_on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    struct evbuffer *out;
    (void)fd;
    (void)what;
    s->flush_pending = 0;
    if (!s->direct)
        return;
    out = bufferevent_get_output(s->bev);
    if (evbuffer_get_length(out) > 0) {
        /* A bufferevent keeps its output's start frozen so that only it
         * drains it; thaw it for this write as libevent's own does. */
        evbuffer_unfreeze(out, 1);
        evbuffer_write(out, bufferevent_getfd(s->bev));
        evbuffer_freeze(out, 1);
        if (evbuffer_get_length(out) > 0) {
            bufferevent_enable(s->bev, EV_WRITE);
            return;
        }
    }
    session_drained(s);
}

static void session_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct session *s = arg;

    if (what & BEV_EVENT_CONNECTED) {
        /* A session closed meanwhile (drain, timeout) stays closed: its last
         * reply goes out over the new TLS layer and it ends. */
        if (s->state != S_TLS)
            return;
        /* The TLS handshake is done: the session starts over (RFC 3207 4.2). */
        SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
        s->tls = 1;
        tls_describe(ssl, s->tls_desc, sizeof s->tls_desc);
        log_info("[%s]: TLS established: %s", s->addr, s->tls_desc);
        s->helo[0] = '\0';
        s->esmtp = 0;
        session_set_state(s, S_INIT);
        session_set_timeout(s, s->d->conf->limits.command_timeout);
        bufferevent_enable(s->bev, EV_READ | EV_WRITE);
        session_drive(s);
        if (s->state == S_DEAD)
            session_free(s);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        if (s->state == S_CLOSING) {
            session_free(s);
            return;
        }
        log_info("%s: timeout after %s from %s[%s]", s->qid[0] ? s->qid : "-",
                 sstate_names[s->state], s->name, s->addr);
        session_txn_reset(s);
        bufferevent_enable(s->bev, EV_WRITE);
        session_close(s, STAT_REJ_LIMIT, "421 4.4.2 Error: timeout exceeded");
        return;
    }
    if (what & BEV_EVENT_ERROR) {
        if (s->state == S_TLS || s->tls) {
            char buf[256];
            unsigned long e = bufferevent_get_openssl_error(s->bev);
            if (e)
                ERR_error_string_n(e, buf, sizeof buf);
            else
                snprintf(buf, sizeof buf, "%s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
            log_info("[%s]: TLS error in state %s: %s", s->addr, sstate_names[s->state], buf);
        }
    }
    if (s->state == S_COMMIT)
        log_info("%s: lost connection after end of data from %s[%s]; the commit goes on",
                 s->qid, s->name, s->addr);
    else if (s->state != S_CLOSING && s->qid[0])
        log_info("%s: lost connection after %s from %s[%s]", s->qid,
                 sstate_names[s->state], s->name, s->addr);
    session_free(s);
}

/* STARTTLS accepted: drop cleartext input, wait for the 220 to reach the
 * kernel (session_on_write then calls session_tls_switch). */
static void session_tls_start(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t junk = evbuffer_get_length(in);

    /* CVE-2011-0411 class: whatever followed STARTTLS in cleartext must
     * never be read as if it came over TLS. */
    if (junk) {
        log_warn("[%s]: discarded %zu octets pipelined after STARTTLS", s->addr, junk);
        evbuffer_drain(in, junk);
    }
    session_txn_reset(s);
    bufferevent_disable(s->bev, EV_READ);
    s->tls_switch = 1;
    session_set_state(s, S_TLS);
}

/* Replace the cleartext bufferevent by an OpenSSL one on the same socket.
 * A socket-based (not filter) bufferevent means "output written" really
 * means written to the kernel, so a last reply is never lost on close. */
static void session_tls_switch(struct session *s)
{
    evutil_socket_t fd = bufferevent_getfd(s->bev);
    struct evbuffer *in = bufferevent_get_input(s->bev);
    SSL *ssl;
    struct bufferevent *tb;

    s->tls_switch = 0;
    s->direct = 0;
    if (evbuffer_get_length(in))
        log_warn("[%s]: discarded %zu octets pipelined after STARTTLS", s->addr,
                 evbuffer_get_length(in));
    ssl = tls_server_ssl_new(s->d->tls, fd);
    if (ssl == NULL) {
        char buf[256];
        log_warn("[%s]: SSL_new: %s", s->addr, tls_last_error(buf, sizeof buf));
        session_set_state(s, S_DEAD);
        return;
    }
    /* Detach the descriptor so freeing the old bufferevent keeps it open. */
    bufferevent_setfd(s->bev, -1);
    bufferevent_free(s->bev);
    s->bev = NULL;
    tb = bufferevent_openssl_socket_new(s->d->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                        BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (tb == NULL) {
        SSL_free(ssl);
        evutil_closesocket(fd);
        session_set_state(s, S_DEAD);
        return;
    }
    s->bev = tb;
    bufferevent_setcb(tb, session_on_read, session_on_write, session_on_event, s);
    bufferevent_setwatermark(tb, EV_READ, 0, SMTPD_INPUT_MAX);
    session_set_timeout(s, s->d->conf->limits.command_timeout);
    bufferevent_enable(tb, EV_READ | EV_WRITE);
}

/* ------------------------------------------------------------------ */
/* Session life                                                       */

static void session_free(struct session *s)
{
    struct smtpd *d = s->d;
    session_end(s);
    session_txn_reset(s);               /* ABORT first, then QUIT */
    milter_set_free(s->mset);
    s->mset = NULL;
    free(s->mconn_reply);
    dns_ptr_cancel(s->ptr);
    recipient_req_free(s->rreq);
    free(s->wait);
    if (s->tarpit != NULL)
        event_free(s->tarpit);
    if (s->flush_ev != NULL)
        event_free(s->flush_ev);
    free(s->tarpit_reply);
    free(s->dnsbl_reply);
    session_txn_reset(s);
    free(s->rcpt);
    free(s->sender);
    free(s->line);
    if (s->bev)
        bufferevent_free(s->bev);
    listen_release(d->lst);
    if (s->prev)
        s->prev->next = s->next;
    else
        d->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    d->nsessions--;
    log_info("disconnect from %s[%s] commands=%lu messages=%lu", s->name, s->addr, s->ncmds,
             s->nmsgs);
    free(s);
}

static void session_addr_text(struct session *s)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (s->sa.ss_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&s->sa)->sin_addr, ip, sizeof ip);
        snprintf(s->addr, sizeof s->addr, "%s", ip);
    } else {
        struct in6_addr *a6 = &((struct sockaddr_in6 *)&s->sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            inet_ntop(AF_INET, a6->s6_addr + 12, ip, sizeof ip);
            snprintf(s->addr, sizeof s->addr, "%s", ip);
        } else {
            inet_ntop(AF_INET6, a6, ip, sizeof ip);
            snprintf(s->addr, sizeof s->addr, "IPv6:%s", ip);
        }
    }
}

/* The name goes into logs, the Received header and the queue: even
 * though dns.c vets it, keep only hostname characters here too, so that
 * this module's output never depends on another's checks. */
static void session_on_ptr(void *arg, const char *name)
{
    struct session *s = arg;
    size_t n;

    s->ptr = NULL;                      /* the handle is gone after this call */
    if (!name)
        return;
    n = strlen(name);
    if (n == 0 || n > SMTPD_NAME_MAX)
        return;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!isalnum(c) && c != '-' && c != '.' && c != '_')
            return;
    }
    memcpy(s->name, name, n + 1);
}

static int session_is_loopback(const struct session *s)
{
    if (s->sa.ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)&s->sa)->sin_addr.s_addr) >> 24) == 127;
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)&s->sa)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a6))
        return a6->s6_addr[12] == 127;
    return IN6_IS_ADDR_LOOPBACK(a6);
}

/* A DNSBL verdict: a listed client is greeted like any other and gets
 * 554 5.7.1 with the list's reason at every MAIL (a client sees and logs
 * a refusal of MAIL better than one of the greeting). */
static void session_dnsbl_note(struct session *s, const struct dnsbl_result *r)
{
    if (!r->blocked || s->dnsbl_reply != NULL)
        return;
    if ((s->dnsbl_reply = malloc(SMTPD_DNSBL_REPLY_BUF)) == NULL)
        return;                         /* fail open */
    snprintf(s->dnsbl_reply, SMTPD_DNSBL_REPLY_BUF,
             "554 5.7.1 Service unavailable; client [%s] blocked using %s; %s", s->addr, r->zone,
             r->reason);
    /* a list's TXT may be long: one reply line (RFC 5321 4.5.3.1.5) */
    s->dnsbl_reply[SMTP_REPLY_LINE_MAX] = '\0';
    log_info("[%s]: listed (score %ld): %s: %s", s->addr, r->score, r->zone, r->reason);
}

static void session_on_dnsbl(void *arg, const struct dnsbl_result *r)
{
    struct session *s = arg;

    s->dnsbl = NULL;
    session_dnsbl_note(s, r);
    if (s->state >= S_CLOSING)
        return;
    session_greet(s);
}

void smtpd_accept(void *arg, evutil_socket_t fd, const struct sockaddr *sa, int salen)
{
    struct smtpd *d = arg;
    struct session *s = calloc(1, sizeof *s);

    if (s == NULL) {
        log_warn("out of memory for a new session");
        listen_release_client(d->lst, sa);
        listen_release(d->lst);
        evutil_closesocket(fd);
        return;
    }
    s->d = d;
    s->linecap = (size_t)d->conf->limits.line_length + 1;
    s->line = malloc(s->linecap);
    if (s->line == NULL) {
        log_warn("out of memory for a new session");
        listen_release_client(d->lst, sa);
        listen_release(d->lst);
        evutil_closesocket(fd);
        free(s);
        return;
    }
    memcpy(&s->sa, sa, (size_t)salen < sizeof s->sa ? (size_t)salen : sizeof s->sa);
    session_addr_text(s);
    snprintf(s->name, sizeof s->name, "%s", SMTPD_NAME_UNKNOWN);
    s->bev = bufferevent_socket_new(d->base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    s->flush_ev = event_new(d->base, -1, 0, session_on_flush, s);
    if (s->bev == NULL || s->flush_ev == NULL) {
        if (s->bev != NULL)
            bufferevent_free(s->bev);   /* closes fd (BEV_OPT_CLOSE_ON_FREE) */
        else
            evutil_closesocket(fd);
        if (s->flush_ev != NULL)
            event_free(s->flush_ev);
        log_warn("[%s]: cannot create bufferevent", s->addr);
        listen_release_client(d->lst, sa);
        listen_release(d->lst);
        free(s->line);
        free(s);
        return;
    }
    s->client_slot = 1;
    s->next = d->sessions;
    if (d->sessions)
        d->sessions->prev = s;
    d->sessions = s;
    d->nsessions++;
    log_info("connect from %s[%s]", s->name, s->addr);
    stats_inc(STAT_CONN_IN);
    bufferevent_setcb(s->bev, session_on_read, session_on_write, session_on_event, s);
    bufferevent_setwatermark(s->bev, EV_READ, 0, SMTPD_INPUT_MAX);
    session_set_timeout(s, d->conf->limits.command_timeout);
    s->direct = 1;
    bufferevent_disable(s->bev, EV_WRITE);  /* on by default in libevent */
    bufferevent_enable(s->bev, EV_READ);
    session_set_state(s, S_INIT);
    if (d->draining) {
        session_close(s, SMTPD_NO_REJECT, "421 4.3.2 Error: server shutting down");
        return;
    }
    {
        unsigned char ca[16];
        int fam = session_client(s, ca);
        s->allowed = conf_cidr_match(d->conf->allow_clients, d->conf->nallow_clients, fam, ca);
    }
    const char *over = session_rate(s, RL_CONNECT);
    if (over != NULL) {
        log_info("reject: CONNECT from %s[%s]: too many connections from this %s", s->name,
                 s->addr, over);
        stats_inc(STAT_REJ_RATE);
        session_reply(s, "421 4.7.1 %s Error: too many connections from your %s, "
                      "try again later", d->conf->hostname, over);
        session_set_state(s, S_CLOSING);
        bufferevent_disable(s->bev, EV_READ);
        return;
    }
    /* Not awaited: a slow or dead resolver must not delay the greeting.
     * A loopback client is this machine: with the system resolver it is
     * "localhost" without a query (a burst of local connections must not
     * become a burst of queries to a shared resolver); with an explicit
     * `resolver` it is looked up like anyone (tests rely on that). */
    if (d->dns && d->conf->resolver == NULL && session_is_loopback(s))
        snprintf(s->name, sizeof s->name, "localhost");
    else if (d->dns && !(s->ptr = dns_ptr(d->dns, (struct sockaddr *)&s->sa, session_on_ptr, s)))
        log_warn("[%s]: cannot start the reverse lookup; client stays unknown", s->addr);
    if (!s->allowed && d->dns != NULL && d->conf->dnsbl.nzones > 0) {
        struct dnsbl_result now;
        unsigned char ca[16];
        int fam = session_client(s, ca);
        if (d->dnsbl == NULL)
            d->dnsbl = dnsbl_new(d->base);
        s->dnsbl = dnsbl_check(d->dnsbl, d->dns, d->conf, fam, ca, session_on_dnsbl, s, &now);
        if (s->dnsbl != NULL) {
            /* The greeting waits for the lists (bounded by dnsbl.timeout),
             * so that the verdict is known before any command. */
            bufferevent_disable(s->bev, EV_READ);
            return;
        }
        session_dnsbl_note(s, &now);
    }
    session_greet(s);
}

/* ------------------------------------------------------------------ */
/* The server object                                                  */

struct smtpd *smtpd_new(struct event_base *base, struct listener *l, struct spool *sp,
                        SSL_CTX *tls)
{
    struct smtpd *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->base = base;
    d->lst = l;
    d->spool = sp;
    d->tls = tls;
    return d;
}

void smtpd_configure(struct smtpd *d, const struct conf *c, const struct policy *p)
{
    d->conf = c;
    d->policy = p;
    d->disk_checked = 0;
}

void smtpd_set_spf(struct smtpd *d, struct spf_pool *p) { d->spf = p; }
void smtpd_set_dkim(struct smtpd *d, struct dkim_pool *p) { d->dkim = p; }

void smtpd_set_dns(struct smtpd *d, struct dns *dns)
{
    d->dns = dns;
}

void smtpd_set_hooks(struct smtpd *d, smtpd_etrn_fn etrn, smtpd_queued_fn queued, void *arg)
{
    d->etrn = etrn;
    d->queued = queued;
    d->hook_arg = arg;
}

void smtpd_drain(struct smtpd *d)
{
    struct session *s, *next;
    d->draining = 1;
    for (s = d->sessions; s; s = next) {
        next = s->next;
        if (s->state == S_INIT || s->state == S_HELO || s->state == S_TLS) {
            session_close(s, SMTPD_NO_REJECT, "421 4.3.2 Error: server shutting down");
        }
    }
}

size_t smtpd_session_count(const struct smtpd *d) { return d->nsessions; }

void smtpd_free(struct smtpd *d)
{
    if (d == NULL)
        return;
    while (d->sessions)
        session_free(d->sessions);
    /* The loop has stopped: these completions will never run (spool_close
     * drops them).  Their messages are on disk or not; the scheduler finds
     * the committed ones at the next start. */
    while (d->commits)
        commit_free(d->commits);
    ratelimit_free(d->rl);
    dnsbl_free(d->dnsbl);
    if (d->gl_sweep != NULL)
        event_free(d->gl_sweep);
    greylist_close(d->gl);
    free(d);
}
