/*
 * quarantine.c - the failure-notice policy and the quarantine (see
 * quarantine.h).
 *
 * Owns: the decision "may a failure notice go to this sender" (one place:
 * deliver_outcome.c, deliver_expire.c and the admin bounce ask here), the
 * wording of quarantine reasons.
 * Never: writes the spool itself outside the spool's writer (records are
 * queue_db.c's, writes go through spool.h); sends a notice to a sender the
 * domain's policy says was not authenticated.
 * Security: the reason text comes partly from peers (the primary's reply,
 * a milter's text); it is stored bounded and shown as data, never run.
 */
#include "config.h"
#include "quarantine.h"

#include <stdio.h>
#include <string.h>

#include "conf.h"
#include "log.h"
#include "stats.h"

/* The value of method= in an RFC 8601 resinfo list ("none" when absent). */
static void authres_value(const char *text, const char *method, char *out, size_t outlen)
{
    size_t ml = strlen(method);
    snprintf(out, outlen, "none");
    for (const char *p = text; p && *p; p++) {
        if ((p == text || p[-1] == ' ' || p[-1] == ';') && strncmp(p, method, ml) == 0 &&
            p[ml] == '=') {
            const char *v = p + ml + 1;
            size_t n = strcspn(v, " ;\t");
            if (n > 0 && n < outlen) {
                memcpy(out, v, n);
                out[n] = '\0';
            }
            return;
        }
    }
}

int quarantine_notice_allowed(const struct conf_domain *d, const struct qmsg *m, char *why,
                              size_t whylen)
{
    if (!d || d->bounce != BOUNCE_AUTHENTICATED)
        return 1;
    if (m->auth_flags & (QMSG_AUTH_SPF_PASS | QMSG_AUTH_DKIM_SENDER_PASS))
        return 1;
    char spf[32], dkim[32];
    authres_value(m->auth_results, "spf", spf, sizeof spf);
    authres_value(m->auth_results, "dkim", dkim, sizeof dkim);
    snprintf(why, whylen, "sender not authenticated (spf=%s, dkim=%s)", spf, dkim);
    return 0;
}

void quarantine_prepare(struct qmsg *m, const struct conf *c, const char *reason, int64_t now)
{
    m->flags |= QMSG_F_QUARANTINE;
    m->quarantined = now;
    m->quarantine_until = now + c->quarantine_retention;
    snprintf(m->quarantine_reason, sizeof m->quarantine_reason, "%s", reason ? reason : "");
}

/* Bounded concatenation (the parts come from peers; a cut reason is fine). */
static size_t cat(char *out, size_t outlen, size_t len, const char *s)
{
    size_t n = strlen(s);
    if (len + 1 >= outlen)
        return len;
    if (n > outlen - 1 - len)
        n = outlen - 1 - len;
    memcpy(out + len, s, n);
    out[len + n] = '\0';
    return len + n;
}

void quarantine_reason(char *out, size_t outlen, const char *why, const char *detail)
{
    if (outlen == 0)
        return;
    out[0] = '\0';
    size_t len = cat(out, outlen, 0, "failure notice withheld: ");
    len = cat(out, outlen, len, why);
    if (detail && *detail) {
        len = cat(out, outlen, len, "; ");
        cat(out, outlen, len, detail);
    }
}

void quarantine_span(char *out, size_t outlen, int64_t seconds)
{
    if (seconds > 0 && seconds % 86400 == 0)
        snprintf(out, outlen, "%lldd", (long long)(seconds / 86400));
    else if (seconds > 0 && seconds % 3600 == 0)
        snprintf(out, outlen, "%lldh", (long long)(seconds / 3600));
    else
        snprintf(out, outlen, "%llds", (long long)seconds);
}

void quarantine_committed(const struct qmsg *m)
{
    log_info("%s: quarantined: %s", m->qid, m->quarantine_reason);
    stats_inc(STAT_QUARANTINED_MILTER);
}
