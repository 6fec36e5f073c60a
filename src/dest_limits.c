/*
 * dest_limits.c - a primary's limits, declared (RFC 9422 LIMITS) and
 * learned from its replies, and the AIMD controller of how many sessions
 * we open to it (see dest_limits.h).
 *
 * Owns nothing: pure functions over structs the delivery module embeds
 * (deliver_conn.c and deliver_dest.c call them).  Never: reads the clock,
 * does I/O, allocates, trusts a value beyond DL_VALUE_MAX.
 *
 * Why AIMD on latency: a primary that comes back after an outage is best
 * served at the concurrency where its reply latency starts to climb; past
 * that point more sessions only add queueing at the primary (and, past
 * its own limit, 421s).  Growing by one session per window's worth of
 * transactions while the latency stays near the floor, and cutting by a
 * factor when it climbs or the primary says 421, settles near that point
 * without knowing it in advance (TCP Vegas / AIMD).
 *
 * Security: every input is the primary's; values are bounded here
 * (DL_VALUE_MAX) and a learned limit only ever lowers what we send.
 */
#include "config.h"
#include "dest_limits.h"

#include <string.h>
#include <strings.h>

/* ---- RFC 9422 LIMITS ------------------------------------------------------ */

/* A limit value: 1*DIGIT, bounded; 0 when malformed or zero. */
static unsigned limit_value(const char *p, size_t n)
{
    unsigned long v = 0;

    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        if (v < DL_VALUE_MAX)
            v = v * 10 + (unsigned long)(p[i] - '0');
    }
    return v > DL_VALUE_MAX ? DL_VALUE_MAX : (unsigned)v;
}

static void take_min(unsigned *slot, unsigned v)
{
    if (*slot == 0 || v < *slot)
        *slot = v;
}

int dl_limits_parse(const char *params, struct dl_declared *out)
{
    int taken = 0;
    const char *p = params;

    while (p && *p) {
        while (*p == ' ' || *p == '\t')
            p++;
        size_t n = strcspn(p, " \t");
        if (n == 0)
            break;
        const char *eq = memchr(p, '=', n);
        if (eq != NULL) {
            size_t kl = (size_t)(eq - p);
            unsigned v = limit_value(eq + 1, n - kl - 1);
#define KEY(s) (kl == sizeof(s) - 1 && strncasecmp(p, s, kl) == 0)
            if (v > 0 && KEY("RCPTMAX")) {
                take_min(&out->rcptmax, v);
                taken++;
            } else if (v > 0 && KEY("MAILMAX")) {
                take_min(&out->mailmax, v);
                taken++;
            } else if (v > 0 && KEY("RCPTDOMAINMAX")) {
                take_min(&out->rcptdomainmax, v);
                taken++;
            }
#undef KEY
        }
        p += n;
    }
    return taken;
}

/* ---- learned limits per host ----------------------------------------------- */

void dl_host_declare(struct dl_host *h, const struct dl_declared *d)
{
    h->declared = *d;
}

static int learn(unsigned *slot, unsigned n)
{
    if (n == 0)
        return 0;
    if (n > DL_VALUE_MAX)
        n = DL_VALUE_MAX;
    if (*slot != 0 && *slot <= n)
        return 0;
    *slot = n;
    return 1;
}

int dl_host_rcpt_refused(struct dl_host *h, unsigned n)
{
    return learn(&h->rcpt_learned, n);
}

int dl_host_mail_421(struct dl_host *h, unsigned n)
{
    return learn(&h->mail_learned, n);
}

int dl_host_greeting_421(struct dl_host *h, unsigned k)
{
    return learn(&h->conn_learned, k);
}

static unsigned effective(unsigned declared, unsigned learned, enum dl_source *src)
{
    enum dl_source s = DL_NONE;
    unsigned v = 0;

    if (declared) {
        v = declared;
        s = DL_DECLARED;
    }
    if (learned && (v == 0 || learned < v)) {
        v = learned;
        s = DL_LEARNED;
    }
    if (src)
        *src = s;
    return v;
}

unsigned dl_host_rcpt_max(const struct dl_host *h, enum dl_source *src)
{
    return effective(h->declared.rcptmax, h->rcpt_learned, src);
}

unsigned dl_host_mail_max(const struct dl_host *h, enum dl_source *src)
{
    return effective(h->declared.mailmax, h->mail_learned, src);
}

unsigned dl_host_conn_max(const struct dl_host *h, enum dl_source *src)
{
    return effective(0, h->conn_learned, src);
}

void dl_host_forget(struct dl_host *h)
{
    h->rcpt_learned = h->mail_learned = h->conn_learned = 0;
}

const char *dl_source_name(enum dl_source s)
{
    switch (s) {
    case DL_DECLARED: return "declared";
    case DL_LEARNED: return "learned";
    default: return "none";
    }
}

/* ---- AIMD ---------------------------------------------------------------- */

static double start_window(const struct dl_aimd *a)
{
    if (!a->adaptive)
        return (double)a->ceiling;
    return a->ceiling < DL_START_WINDOW ? (double)a->ceiling : (double)DL_START_WINDOW;
}

void dl_aimd_init(struct dl_aimd *a, unsigned ceiling, int adaptive)
{
    memset(a, 0, sizeof *a);
    a->ceiling = ceiling > 0 ? ceiling : 1;
    a->adaptive = adaptive;
    a->window = start_window(a);
}

void dl_aimd_configure(struct dl_aimd *a, unsigned ceiling, int adaptive)
{
    if (ceiling == 0)
        ceiling = 1;
    if (a->ceiling == ceiling && a->adaptive == adaptive)
        return;
    int was_fixed = !a->adaptive;
    a->ceiling = ceiling;
    a->adaptive = adaptive;
    if (!adaptive || was_fixed)
        a->window = start_window(a);
    if (a->window > (double)ceiling)
        a->window = (double)ceiling;
}

unsigned dl_aimd_window(const struct dl_aimd *a)
{
    unsigned w = (unsigned)a->window;

    if (w < 1)
        w = 1;
    return w > a->ceiling ? a->ceiling : w;
}

/* Multiplicative decrease, at most once per window's worth of samples so
 * one burst of bad news (every session hit by the same overload) counts
 * once. */
static enum dl_event decrease(struct dl_aimd *a, double factor, int force)
{
    unsigned before = dl_aimd_window(a);

    if (a->hold > 0 && !force)
        return DL_HOLD;
    a->window *= factor;
    if (a->window < 1.0)
        a->window = 1.0;
    /* The sessions open at the cut still report what they met before it:
     * wait for about two rounds of the old window. */
    a->hold = 2 * before;
    return dl_aimd_window(a) < before ? DL_SHRINK : DL_HOLD;
}

enum dl_event dl_aimd_latency(struct dl_aimd *a, double ms, unsigned busy)
{
    unsigned before = dl_aimd_window(a);

    if (ms < 0)
        ms = 0;
    a->samples++;
    if (a->hold > 0)
        a->hold--;
    if (a->round_n == 0 || ms < a->round_min_ms)
        a->round_min_ms = ms;
    if (++a->round_n < before)
        return DL_HOLD;
    /* A round is over: decide on its smallest latency. */
    double m = a->round_min_ms;
    a->round_n = 0;
    if (m <= a->floor_ms * DL_LATENCY_FACTOR + DL_LATENCY_SLACK_MS)
        a->loaded = 0;
    if (a->floor_ms <= 0 || m < a->floor_ms)
        a->floor_ms = m > 0 ? m : 0.001;
    else
        a->floor_ms += (m - a->floor_ms) / DL_FLOOR_AGE;
    if (!a->adaptive)
        return DL_HOLD;
    if (m > a->floor_ms * DL_LATENCY_FACTOR + DL_LATENCY_SLACK_MS) {
        /* Two loaded rounds in a row: one can be our own loop running
         * late (a busy host delays every reply we read, not the peer). */
        if (++a->loaded < DL_LOADED_ROUNDS)
            return DL_HOLD;
        a->loaded = 0;
        a->window *= DL_DECREASE_SLOW;
    } else if (m > a->floor_ms * DL_LATENCY_STEP + DL_LATENCY_SLACK_MS) {
        a->window = before > 1 ? (double)before - 1.0 : 1.0;
        return before > 1 ? DL_STEP : DL_HOLD;
    } else if (m <= a->floor_ms * DL_LATENCY_GROW + DL_LATENCY_SLACK_MS && busy >= before &&
               before < a->ceiling) {
        a->window = (double)before + 1.0;
        return DL_GROW;
    } else {
        return DL_HOLD;
    }
    if (a->window < 1.0)
        a->window = 1.0;
    return dl_aimd_window(a) < before ? DL_SHRINK : DL_HOLD;
}

enum dl_event dl_aimd_reply(struct dl_aimd *a, int deferred)
{
    if (!deferred) {
        a->run_4xx = 0;
        return DL_HOLD;
    }
    if (++a->run_4xx < DL_4XX_RUN)
        return DL_HOLD;
    a->run_4xx = 0;
    return decrease(a, DL_DECREASE_421, 1);
}

enum dl_event dl_aimd_421(struct dl_aimd *a)
{
    return decrease(a, DL_DECREASE_421, !a->adaptive);
}

enum dl_event dl_aimd_cap(struct dl_aimd *a, unsigned cap)
{
    if (cap == 0 || a->window <= (double)cap)
        return DL_HOLD;
    a->window = (double)cap;
    return DL_SHRINK;
}
