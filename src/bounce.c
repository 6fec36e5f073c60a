/*
 * bounce.c - delivery status notifications: RFC 3464 multipart/report
 * messages (RFC 6533 message/global-* for SMTPUTF8 originals) carrying
 * failure, delay and "relayed" reports, with the RFC 3461 NOTIFY/RET rules.
 *
 * Owns: nothing beyond the call; every buffer it allocates is freed before
 * it returns.  The notice is assembled in private buffers and moved into
 * the caller's `out` only when complete, so a failure leaves out untouched.
 * Must never: do I/O, read the clock (bi->now is the time), touch the
 * spool, modify the original message, or emit a bare CR or LF.
 * Security: almost every string here came from a peer: the sender and
 * recipient addresses, ORCPT and ENVID (xtext-decoded, so any non-control
 * octet), and the primary's reply text.  They all pass through clean_dup()
 * before they reach a header or a DSN field: control octets can never
 * start a new line or field, 8-bit octets appear only in an SMTPUTF8
 * (global) notice and only as valid UTF-8.  The MIME boundary is checked
 * against everything it encloses, so a returned message cannot forge a
 * part by guessing it.  The original's own lines are returned as received:
 * they are what we accepted (a line over 998 octets stays one).
 */
#include "config.h"
#include "bounce.h"

#include <event2/buffer.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "utf8.h"
#include "util.h"

#define CRLF                "\r\n"
#define LINE_SOFT           78      /* RFC 5322 2.1.1 "SHOULD" */
#define LINE_HARD           900     /* split a single word here: well under 998 */
#define TEXT_INDENT         "    "  /* continuation of a recipient line in part 1 */
#define DATE_MAX            UTIL_DATE_MAX
#define BOUNDARY_MAX        70      /* RFC 2046 5.1.1 */
#define BOUNDARY_TRIES      64
#define STATUS_MAX          16      /* "5.999.999" with room */
#define NUM_MAX             24      /* a 64-bit number in decimal */
#define SECONDS_PER_HOUR    3600
#define SECONDS_PER_DAY     86400
#define XTEXT_ESCAPE_LEN    3       /* "+XX" */
#define DSN_TYPE_SEP        ';'

#define SUBJECT_FAILED  "Undelivered Mail Returned to Sender"
#define SUBJECT_DELAYED "Delayed Mail (still being retried)"
#define SUBJECT_RELAYED "Successful Mail Relay"
#define SUBJECT_MIXED   "Mail Delivery Status Report"
#define MAILER_DAEMON   "MAILER-DAEMON"
#define FROM_COMMENT    "(Mail Delivery System)"
#define QUEUE_ID_FIELD  "X-Mxkeep-Queue-ID"
#define SENDER_FIELD    "X-Mxkeep-Sender"

/* What clean_dup() does with an octet it cannot pass through. */
enum clean_mode {
    CLEAN_TEXT,     /* control -> space, bad 8-bit -> '?' (free text) */
    CLEAN_ADDR      /* space, control, bad 8-bit -> xtext "+XX" (addresses, ids) */
};

/* An evbuffer writer that remembers the first allocation failure, so the
 * builders can write straight through and check once at the end. */
struct w {
    struct evbuffer *b;
    int err;
};

static void w_add(struct w *w, const void *p, size_t n)
{
    if (!w->err && n > 0 && evbuffer_add(w->b, p, n) != 0)
        w->err = 1;
}

static void w_str(struct w *w, const char *s)
{
    w_add(w, s, strlen(s));
}

static void __attribute__((format(printf, 2, 3))) w_printf(struct w *w, const char *fmt, ...)
{
    va_list ap;

    if (w->err)
        return;
    va_start(ap, fmt);
    if (evbuffer_add_vprintf(w->b, fmt, ap) < 0)
        w->err = 1;
    va_end(ap);
}

static int is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7F;
}

/* A copy of s that is safe inside a header field or a DSN field (see the
 * security note at the top).  utf8: valid UTF-8 may stay.  NULL on out of
 * memory. */
static char *clean_dup(const char *s, enum clean_mode mode, int utf8)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t len = strlen(s), o = 0;
    char *out = malloc(len * XTEXT_ESCAPE_LEN + 1);

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < len;) {
        const unsigned char *p = (const unsigned char *)s + i;
        size_t n = 1;
        int bad;

        if (*p >= 0x80) {
            n = utf8 ? utf8_decode(p, len - i, NULL) : 0;
            bad = n == 0;
            if (bad)
                n = 1;
        } else {
            bad = is_ctl(*p) || (mode == CLEAN_ADDR && *p == ' ');
        }
        if (!bad) {
            memcpy(out + o, p, n);
            o += n;
        } else if (mode == CLEAN_ADDR) {
            out[o++] = '+';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 0x0Fu];
        } else {
            out[o++] = is_ctl(*p) ? ' ' : '?';
        }
        i += n;
    }
    out[o] = '\0';
    return out;
}

static int has_8bit(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 1;
    return 0;
}

/*
 * Write head then val, wrapped at LINE_SOFT columns on spaces, each line
 * ending in CRLF.  header: a folded header field (the fold goes before an
 * existing space, so unfolding gives val back exactly).  Otherwise body
 * text: the spaces at a break are dropped and TEXT_INDENT starts the next
 * line.  A word longer than LINE_HARD is split so no line passes 998.
 */
static void w_fold(struct w *w, const char *head, const char *val, int header)
{
    size_t col = strlen(head);
    const char *p = val;

    w_str(w, head);
    while (*p) {
        size_t sp = strspn(p, " ");
        size_t word = strcspn(p + sp, " ");

        if (sp > 0 && col > 0 && col + sp + word > LINE_SOFT) {
            w_str(w, CRLF);
            if (header) {
                w_add(w, p, sp);
                col = sp;
            } else {
                w_str(w, TEXT_INDENT);
                col = strlen(TEXT_INDENT);
            }
        } else {
            w_add(w, p, sp);
            col += sp;
        }
        p += sp;
        while (word > 0) {
            size_t room = col < LINE_HARD ? LINE_HARD - col : 0;
            size_t n = word < room ? word : room;

            if (n == 0) {
                /* The word does not fit even on a line of its own. */
                w_str(w, header ? CRLF " " : CRLF TEXT_INDENT);
                col = header ? 1 : strlen(TEXT_INDENT);
                continue;
            }
            w_add(w, p, n);
            col += n;
            p += n;
            word -= n;
        }
    }
    w_str(w, CRLF);
}

/* Header field "name: value" with value cleaned as free text. */
static void w_field(struct w *w, const char *name, const char *value)
{
    char head[64];

    snprintf(head, sizeof head, "%s: ", name);
    w_fold(w, head, value, 1);
}

/* bounce_wanted() in terms of the notify mask only. */
static int notify_wants(int notify, enum bounce_action a)
{
    if (notify & SMTP_NOTIFY_NEVER)
        return 0;
    switch (a) {
    case BOUNCE_FAILED:
        return notify == 0 || (notify & SMTP_NOTIFY_FAILURE);
    case BOUNCE_DELAYED:
        return notify == 0 || (notify & SMTP_NOTIFY_DELAY);
    case BOUNCE_RELAYED:
        /* RFC 3461 4.1: success is reported only on request. */
        return (notify & SMTP_NOTIFY_SUCCESS) != 0;
    }
    return 0;
}

int bounce_wanted(const struct qmsg *m, const struct qrcpt *r, enum bounce_action a)
{
    if (m->sender[0] == '\0')
        return 0;
    /* Never a notice about a notice: two MTAs bouncing at each other loop. */
    if (m->flags & QMSG_F_DSN)
        return 0;
    return notify_wants(r->notify, a);
}

static const char *action_word(enum bounce_action a)
{
    switch (a) {
    case BOUNCE_FAILED:
        return "failed";
    case BOUNCE_DELAYED:
        return "delayed";
    case BOUNCE_RELAYED:
        return "relayed";
    }
    log_panic("bounce: unknown action %d", (int)a);
}

/* "class.subject.detail" (RFC 3463): 2, 4 or 5, then 1-3 and 1-3 digits. */
static int status_valid(const char *s)
{
    size_t n;

    if (s == NULL || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
        return 0;
    s += 2;
    for (int part = 0; part < 2; part++) {
        n = strspn(s, "0123456789");
        if (n < 1 || n > 3)
            return 0;
        s += n;
        if (part == 0 && *s++ != '.')
            return 0;
    }
    return *s == '\0';
}

static const char *status_of(const struct bounce_rcpt *br)
{
    if (status_valid(br->status))
        return br->status;
    switch (br->action) {
    case BOUNCE_FAILED:
        return "5.0.0";
    case BOUNCE_DELAYED:
        return "4.0.0";
    case BOUNCE_RELAYED:
        return "2.0.0";
    }
    return "5.0.0";
}

static int is_expiry(const struct bounce_rcpt *br)
{
    return br->r->state == QRCPT_EXPIRED ||
           (br->status != NULL && strcmp(br->status, "4.4.7") == 0);
}

#define TYPE_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"

/* The diagnostic without its "smtp;" type, for humans. */
static const char *diag_text(const struct bounce_rcpt *br)
{
    const char *d = br->diagnostic;
    size_t n;

    if (d == NULL || *d == '\0')
        d = br->r->last_reply;
    if (*d == '\0')
        return NULL;
    n = strspn(d, TYPE_CHARS);
    if (n > 0 && d[n] == DSN_TYPE_SEP)
        d += n + 1 + strspn(d + n + 1, " ");
    return d;
}

struct ctx {
    const struct bounce_info *bi;
    const struct qmsg *m;
    const struct bounce_rcpt **sel;     /* the recipients that qualify */
    size_t nsel;
    size_t count[BOUNCE_RELAYED + 1];   /* per action */
    int utf8;                           /* global (RFC 6533) notice */
    int full;                           /* part 3 is the whole message */
    int too_big;                        /* RET=FULL wanted, header only sent */
    size_t hdr_len;                     /* original header octets */
};

/* One recipient's line in part 1. */
static int text_rcpt(struct w *w, const struct ctx *c, const struct bounce_rcpt *br)
{
    char *addr = clean_dup(br->r->addr, CLEAN_ADDR, c->utf8);
    char *mta = br->remote_mta ? clean_dup(br->remote_mta, CLEAN_TEXT, 0) : NULL;
    const char *d = diag_text(br);
    char *diag = d ? clean_dup(d, CLEAN_TEXT, c->utf8) : NULL;
    char *domain = clean_dup(br->r->domain, CLEAN_ADDR, c->utf8);
    char date[DATE_MAX], head[SMTP_PATH_MAX * XTEXT_ESCAPE_LEN + 8];
    struct w line = { evbuffer_new(), 0 };
    int rc = -1;

    if (addr == NULL || domain == NULL || (br->remote_mta && mta == NULL) || (d && diag == NULL) ||
        line.b == NULL)
        goto out;
    snprintf(head, sizeof head, "<%s>: ", addr);
    if (br->action == BOUNCE_FAILED && is_expiry(br)) {
        int64_t kept = br->r->expiry - c->m->arrival;
        long days = (long)((kept + SECONDS_PER_DAY / 2) / SECONDS_PER_DAY);

        if (kept > 0)
            w_printf(&line, "delivery time expired: the message was kept for %ld day%s, the most"
                            " this server keeps mail for %s, and could not be passed on in that"
                            " time", days, days == 1 ? "" : "s", domain);
        else
            w_printf(&line, "delivery time expired: the message could not be passed on to %s"
                            " in the time this server keeps mail", domain);
        if (diag)
            w_printf(&line, " (last error: %s)", diag);
    } else if (br->action == BOUNCE_DELAYED) {
        util_rfc5322_date(date, sizeof date, br->r->expiry);
        w_printf(&line, "delivery delayed; this server will keep trying until %s", date);
        if (diag)
            w_printf(&line, " (last error: %s)", diag);
    } else if (mta && diag) {
        w_printf(&line, "host %s said: %s", mta, diag);
    } else if (br->action == BOUNCE_RELAYED) {
        w_printf(&line, "relayed to %s, which does not offer delivery notifications",
                 mta ? mta : "the next server");
    } else {
        w_str(&line, diag ? diag : "delivery failed");
    }
    w_add(&line, "", 1);    /* NUL for w_fold */
    if (line.err)
        goto out;
    w_fold(w, head, (const char *)evbuffer_pullup(line.b, -1), 0);
    rc = 0;
out:
    evbuffer_free(line.b);
    free(addr);
    free(mta);
    free(diag);
    free(domain);
    return rc;
}

static void text_rcpts(struct w *w, const struct ctx *c, enum bounce_action a)
{
    for (size_t i = 0; i < c->nsel; i++)
        if (c->sel[i]->action == a && text_rcpt(w, c, c->sel[i]) < 0)
            w->err = 1;
}

/* Part 1: the explanation for people. */
static void part_text(struct w *w, const struct ctx *c)
{
    const struct bounce_info *bi = c->bi;
    char date[DATE_MAX];

    w_printf(w, "This is the mail system at host %s." CRLF CRLF, bi->hostname);
    if (c->count[BOUNCE_FAILED]) {
        w_str(w, "I'm sorry to have to inform you that your message could not" CRLF
                 "be delivered to one or more recipients. ");
        if (bi->original == NULL)
            w_str(w, "The message itself is no" CRLF "longer available." CRLF);
        else if (c->full)
            w_str(w, "It's attached below." CRLF);
        else
            w_str(w, "Its header is attached" CRLF "below." CRLF);
        if (c->too_big)
            w_printf(w, CRLF "The message was larger than %zu octets, so only its header" CRLF
                            "is returned." CRLF, bi->full_max);
        w_str(w, CRLF "For further assistance, please send mail to postmaster." CRLF CRLF
                 "If you do so, please include this problem report. You can" CRLF
                 "delete your own text from the attached returned message." CRLF CRLF
                 "                   The mail system" CRLF CRLF);
        text_rcpts(w, c, BOUNCE_FAILED);
        w_str(w, CRLF);
    }
    if (c->count[BOUNCE_DELAYED]) {
        int64_t age = (int64_t)bi->now - c->m->arrival;
        int64_t tenths = age > 0 ? (age * 10 + SECONDS_PER_HOUR / 2) / SECONDS_PER_HOUR : 0;

        w_str(w, "####################################################################" CRLF
                 "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #" CRLF
                 "####################################################################" CRLF CRLF);
        w_printf(w, "Your message could not be delivered for %lld.%lld hours." CRLF,
                 (long long)(tenths / 10), (long long)(tenths % 10));
        w_str(w, "This server will keep trying; the recipients below show until when." CRLF CRLF);
        text_rcpts(w, c, BOUNCE_DELAYED);
        w_str(w, CRLF);
    }
    if (c->count[BOUNCE_RELAYED]) {
        w_str(w, "Your message was successfully relayed to the destination(s) listed" CRLF
                 "below. They do not offer delivery notifications, so you will" CRLF
                 "receive no further notice from this server." CRLF CRLF);
        text_rcpts(w, c, BOUNCE_RELAYED);
        w_str(w, CRLF);
    }
    {
        char line[DATE_MAX + QID_SIZE + 64];

        util_rfc5322_date(date, sizeof date, c->m->arrival);
        snprintf(line, sizeof line, "The message arrived here on %s (queue ID %s).", date,
                 c->m->qid);
        w_fold(w, "", line, 0);
    }
}

/* "type; addr" for Final-Recipient and friends (RFC 3464 2.1.2, RFC 6533 3). */
static void dsn_addr(struct w *w, const char *name, const char *addr, int utf8)
{
    char *a = clean_dup(addr, CLEAN_ADDR, utf8);
    char val[SMTP_PATH_MAX * XTEXT_ESCAPE_LEN + 16];

    if (a == NULL) {
        w->err = 1;
        return;
    }
    snprintf(val, sizeof val, "%s; %s", utf8 && has_8bit(a) ? "utf-8" : "rfc822", a);
    w_field(w, name, val);
    free(a);
}

/* A DSN field whose value is "type; text": the type is kept when it looks
 * like one (atom before ';'), else dflt is prepended. */
/* RFC 3464 2.3.5: Remote-MTA's "dns" type names a host.  The peer as
 * delivery knows it ("name[addr]:port") gives the name, or the bracketed
 * address when it has none. */
static void remote_mta_name(const char *peer, char *out, size_t cap)
{
    const char *lb = strchr(peer, '[');
    if (lb == NULL)
        snprintf(out, cap, "%s", peer);
    else if (lb > peer)
        snprintf(out, cap, "%.*s", (int)(lb - peer), peer);
    else {
        const char *rb = strchr(lb, ']');
        snprintf(out, cap, "%.*s", rb ? (int)(rb - lb + 1) : (int)strlen(lb), lb);
    }
}

static void dsn_typed(struct w *w, const char *name, const char *dflt, const char *v,
                      enum clean_mode mode, int utf8)
{
    char *cv = clean_dup(v, mode, utf8);
    size_t n;
    struct w tmp = { evbuffer_new(), 0 };

    if (cv == NULL || tmp.b == NULL) {
        w->err = 1;
        goto out;
    }
    n = strspn(cv, TYPE_CHARS);
    if (n > 0 && cv[n] == DSN_TYPE_SEP)
        w_str(&tmp, cv);
    else
        w_printf(&tmp, "%s; %s", dflt, cv);
    w_add(&tmp, "", 1);
    if (tmp.err)
        w->err = 1;
    else
        w_field(w, name, (const char *)evbuffer_pullup(tmp.b, -1));
out:
    if (tmp.b)
        evbuffer_free(tmp.b);
    free(cv);
}

/* Part 2: the machine-readable report (RFC 3464 2.2, 2.3; field order
 * follows its ABNF, extension fields last). */
static void part_dsn(struct w *w, const struct ctx *c)
{
    const struct bounce_info *bi = c->bi;
    const struct qmsg *m = c->m;
    char date[DATE_MAX], val[SMTP_DOMAIN_MAX + 16];

    if (m->envid[0]) {
        char *e = clean_dup(m->envid, CLEAN_ADDR, 0);
        if (e == NULL)
            w->err = 1;
        else
            w_field(w, "Original-Envelope-Id", e);
        free(e);
    }
    snprintf(val, sizeof val, "dns; %s", bi->hostname);
    w_field(w, "Reporting-MTA", val);
    util_rfc5322_date(date, sizeof date, m->arrival);
    w_field(w, "Arrival-Date", date);
    w_field(w, QUEUE_ID_FIELD, m->qid);
    dsn_addr(w, SENDER_FIELD, m->sender, c->utf8);

    for (size_t i = 0; i < c->nsel; i++) {
        const struct bounce_rcpt *br = c->sel[i];
        const struct qrcpt *r = br->r;

        w_str(w, CRLF);
        if (r->orcpt[0])
            dsn_typed(w, "Original-Recipient", "rfc822", r->orcpt, CLEAN_ADDR, c->utf8);
        dsn_addr(w, "Final-Recipient", r->addr, c->utf8);
        w_field(w, "Action", action_word(br->action));
        w_field(w, "Status", status_of(br));
        if (br->remote_mta && br->remote_mta[0]) {
            char mta[SMTP_DOMAIN_MAX + 64];
            remote_mta_name(br->remote_mta, mta, sizeof mta);
            dsn_typed(w, "Remote-MTA", "dns", mta, CLEAN_TEXT, 0);
        }
        if (br->diagnostic && br->diagnostic[0])
            dsn_typed(w, "Diagnostic-Code", "smtp", br->diagnostic, CLEAN_TEXT, c->utf8);
        if (r->last_try != 0) {
            util_rfc5322_date(date, sizeof date, r->last_try);
            w_field(w, "Last-Attempt-Date", date);
        }
        if (br->action == BOUNCE_DELAYED && r->expiry != 0) {
            util_rfc5322_date(date, sizeof date, r->expiry);
            w_field(w, "Will-Retry-Until", date);
        }
    }
}

/* Copy the first len octets of src into w without draining src. */
static void w_copy_prefix(struct w *w, struct evbuffer *src, size_t len)
{
    int n;
    struct evbuffer_iovec *v;

    if (len == 0 || w->err)
        return;
    n = evbuffer_peek(src, (ev_ssize_t)len, NULL, NULL, 0);
    if (n <= 0)
        return;
    v = calloc((size_t)n, sizeof *v);
    if (v == NULL) {
        w->err = 1;
        return;
    }
    n = evbuffer_peek(src, (ev_ssize_t)len, NULL, v, n);
    for (int i = 0; i < n && len > 0; i++) {
        size_t take = v[i].iov_len < len ? v[i].iov_len : len;
        w_add(w, v[i].iov_base, take);
        len -= take;
    }
    free(v);
}

/* Octets of the original's header, including the CRLF that ends its last
 * field and excluding the empty line; the whole message when it has no
 * body. */
static size_t header_length(struct evbuffer *orig)
{
    static const char sep[] = CRLF CRLF;
    unsigned char first[2];
    struct evbuffer_ptr p;

    if (evbuffer_copyout(orig, first, sizeof first) == (ev_ssize_t)sizeof first &&
        first[0] == '\r' && first[1] == '\n')
        return 0;
    p = evbuffer_search(orig, sep, strlen(sep), NULL);
    if (p.pos < 0)
        return evbuffer_get_length(orig);
    return (size_t)p.pos + strlen(CRLF);
}

/* Part 3 content: the returned message or its header. */
static void part_original(struct w *w, const struct ctx *c)
{
    struct evbuffer *orig = c->bi->original;
    size_t len = c->full ? evbuffer_get_length(orig) : c->hdr_len;
    size_t start = evbuffer_get_length(w->b);

    w_copy_prefix(w, orig, len);
    /* A multipart body part must end in CRLF before our delimiter; the
     * spool always stores one, but a truncated body must not glue the
     * delimiter onto its last line. */
    if (!w->err && evbuffer_get_length(w->b) > start) {
        unsigned char tail[2];
        struct evbuffer_ptr p;
        size_t total = evbuffer_get_length(w->b);

        if (total - start >= sizeof tail &&
            evbuffer_ptr_set(w->b, &p, total - sizeof tail, EVBUFFER_PTR_SET) == 0 &&
            evbuffer_copyout_from(w->b, &p, tail, sizeof tail) == (ev_ssize_t)sizeof tail &&
            tail[0] == '\r' && tail[1] == '\n')
            return;
        w_str(w, CRLF);
    }
}

static int contains(struct evbuffer *b, const char *needle)
{
    struct evbuffer_ptr p = evbuffer_search(b, needle, strlen(needle), NULL);
    return p.pos >= 0;
}

/* A boundary that occurs in none of the parts (RFC 2046 5.1.1).  Its first
 * form is unique per notice; a part that contains it (a returned message
 * crafted to guess it) moves it on to a counter-and-hash form. */
static int choose_boundary(char *out, size_t len, const struct ctx *c, struct evbuffer **parts,
                           size_t nparts)
{
    uint64_t h = util_hash(UTIL_HASH_INIT, c->m->qid, strlen(c->m->qid));

    for (int t = 0; t < BOUNDARY_TRIES; t++) {
        char delim[BOUNDARY_MAX + 3];
        int clash = 0;

        if (t == 0)
            snprintf(out, len, "%s.%lld/mxkeep", c->bi->new_qid, (long long)c->bi->now);
        else
            snprintf(out, len, "%s.%lld.%d.%016llx/mxkeep", c->bi->new_qid,
                     (long long)c->bi->now, t, (unsigned long long)(h ^ ((uint64_t)t * 0x9E3779B97F4A7C15ull)));
        snprintf(delim, sizeof delim, "--%s", out);
        for (size_t i = 0; i < nparts && !clash; i++)
            clash = parts[i] != NULL && contains(parts[i], delim);
        if (!clash)
            return 0;
    }
    log_warn("%s: bounce: no free MIME boundary after %d tries", c->m->qid, BOUNDARY_TRIES);
    return -1;
}

static const char *subject_of(const struct ctx *c)
{
    int kinds = (c->count[BOUNCE_FAILED] > 0) + (c->count[BOUNCE_DELAYED] > 0) +
                (c->count[BOUNCE_RELAYED] > 0);

    if (kinds > 1)
        return SUBJECT_MIXED;
    if (c->count[BOUNCE_FAILED])
        return SUBJECT_FAILED;
    if (c->count[BOUNCE_DELAYED])
        return SUBJECT_DELAYED;
    return SUBJECT_RELAYED;
}

/* Decide what part 3 holds (RFC 3461 4.3). */
static void plan_original(struct ctx *c)
{
    const struct bounce_info *bi = c->bi;
    /* Content goes back only with a failure; delay and relay notices
     * return the header whatever RET says (RFC 3461 4.3). */
    int want_full = c->m->ret == SMTP_RET_FULL && c->count[BOUNCE_FAILED] > 0;

    if (bi->original == NULL)
        return;
    c->hdr_len = header_length(bi->original);
    /* A BINARYMIME body cannot sit inside a message/rfc822 part of an
     * 8-bit message: header only, as for an oversized one. */
    c->full = want_full && evbuffer_get_length(bi->original) <= bi->full_max &&
              c->m->body != SMTP_BODY_BINARYMIME;
    c->too_big = want_full && !c->full;
}

static void w_part_head(struct w *w, const char *boundary, const char *desc, const char *type,
                        int eightbit)
{
    w_printf(w, CRLF "--%s" CRLF, boundary);
    w_printf(w, "Content-Description: %s" CRLF, desc);
    w_printf(w, "Content-Type: %s" CRLF, type);
    if (eightbit)
        w_str(w, "Content-Transfer-Encoding: 8bit" CRLF);
    w_str(w, CRLF);
}

static int assemble(struct evbuffer *out, struct ctx *c)
{
    const struct bounce_info *bi = c->bi;
    struct evbuffer *parts[3] = { evbuffer_new(), evbuffer_new(), NULL };
    struct w notice = { evbuffer_new(), 0 };
    char boundary[BOUNDARY_MAX + 1], date[DATE_MAX], *to = NULL;
    char val[SMTP_DOMAIN_MAX + QID_SIZE + BOUNDARY_MAX + 64];
    int eightbit = (c->m->flags & (QMSG_F_8BIT | QMSG_F_SMTPUTF8)) != 0;
    int rc = -1;

    if (bi->original != NULL)
        parts[2] = evbuffer_new();
    if (parts[0] == NULL || parts[1] == NULL || (bi->original && parts[2] == NULL) ||
        notice.b == NULL)
        goto out;
    {
        struct w p0 = { parts[0], 0 }, p1 = { parts[1], 0 }, p2 = { parts[2], 0 };

        part_text(&p0, c);
        part_dsn(&p1, c);
        if (parts[2])
            part_original(&p2, c);
        if (p0.err || p1.err || p2.err)
            goto out;
    }
    if (choose_boundary(boundary, sizeof boundary, c, parts, 3) < 0)
        goto out;

    to = clean_dup(c->m->sender, CLEAN_ADDR, c->utf8);
    if (to == NULL)
        goto out;
    util_rfc5322_date(date, sizeof date, bi->now);
    w_field(&notice, "Date", date);
    snprintf(val, sizeof val, MAILER_DAEMON "@%s " FROM_COMMENT, bi->hostname);
    w_field(&notice, "From", val);
    w_printf(&notice, "To: <%s>" CRLF, to);
    w_field(&notice, "Subject", subject_of(c));
    snprintf(val, sizeof val, "<%s@%s>", bi->new_qid, bi->hostname);
    w_field(&notice, "Message-ID", val);
    w_field(&notice, "Auto-Submitted", "auto-replied");   /* RFC 3834 5 */
    w_field(&notice, "MIME-Version", "1.0");
    snprintf(val, sizeof val, "multipart/report; report-type=delivery-status; boundary=\"%s\"",
             boundary);
    w_field(&notice, "Content-Type", val);
    w_str(&notice, CRLF "This is a MIME-encapsulated message." CRLF);

    w_part_head(&notice, boundary, "Notification",
                c->utf8 ? "text/plain; charset=utf-8" : "text/plain; charset=us-ascii", c->utf8);
    if (!notice.err && evbuffer_add_buffer(notice.b, parts[0]) != 0)
        notice.err = 1;
    w_part_head(&notice, boundary, "Delivery report",
                c->utf8 ? "message/global-delivery-status" : "message/delivery-status", c->utf8);
    if (!notice.err && evbuffer_add_buffer(notice.b, parts[1]) != 0)
        notice.err = 1;
    if (parts[2]) {
        const char *type, *desc;

        if (c->full) {
            type = c->utf8 ? "message/global" : "message/rfc822";
            desc = "Undelivered Message";
        } else {
            type = c->utf8 ? "message/global-headers" : "text/rfc822-headers";
            desc = c->count[BOUNCE_FAILED] ? "Undelivered Message Headers" : "Message Headers";
        }
        w_part_head(&notice, boundary, desc, type, eightbit);
        if (!notice.err && evbuffer_add_buffer(notice.b, parts[2]) != 0)
            notice.err = 1;
    }
    w_printf(&notice, CRLF "--%s--" CRLF, boundary);
    if (notice.err || evbuffer_add_buffer(out, notice.b) != 0)
        goto out;
    rc = 0;
out:
    for (size_t i = 0; i < 3; i++)
        if (parts[i])
            evbuffer_free(parts[i]);
    if (notice.b)
        evbuffer_free(notice.b);
    free(to);
    return rc;
}

int bounce_build(struct evbuffer *out, const struct bounce_info *bi)
{
    struct ctx c;
    int rc;

    if (out == NULL || bi == NULL || bi->m == NULL || bi->hostname == NULL ||
        bi->new_qid == NULL || (bi->nrcpt > 0 && bi->rcpts == NULL))
        log_panic("bounce_build: missing argument");
    memset(&c, 0, sizeof c);
    c.bi = bi;
    c.m = bi->m;
    c.utf8 = (bi->m->flags & QMSG_F_SMTPUTF8) != 0;
    if (bi->nrcpt == 0)
        return BOUNCE_NONE;
    c.sel = calloc(bi->nrcpt, sizeof *c.sel);
    if (c.sel == NULL)
        return -1;
    for (size_t i = 0; i < bi->nrcpt; i++) {
        const struct bounce_rcpt *br = &bi->rcpts[i];

        if (br->r == NULL)
            log_panic("%s: bounce_build: recipient %zu without a record", c.m->qid, i);
        if ((unsigned)br->action > BOUNCE_RELAYED)
            log_panic("%s: bounce_build: unknown action %d", c.m->qid, (int)br->action);
        if (!bounce_wanted(c.m, br->r, br->action))
            continue;
        c.sel[c.nsel++] = br;
        c.count[br->action]++;
    }
    if (c.nsel == 0) {
        free(c.sel);
        return BOUNCE_NONE;
    }
    plan_original(&c);
    rc = assemble(out, &c);
    free(c.sel);
    return rc;
}
