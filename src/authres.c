/*
 * authres.c - format mxkeep's Authentication-Results header (RFC 8601) and
 * filter out earlier ones that claim our authserv-id.
 *
 * Why: a backup MX is a hop the primary does not see the sender through:
 * the primary's own SPF check sees our address and fails.  We check SPF
 * and DKIM here (spf.c, dkim.c), keep the results in the message record
 * and, when forwarding, tell the primary in one A-R header with our
 * authserv-id, which the primary is configured to trust
 * (doc/operations.md).  Trust is only sound if nobody else can write a
 * header with our id: RFC 8601 section 5 says an MTA must remove (or
 * rename) such headers arriving from outside, which authres_filter does.
 *
 * Owns: nothing.  Must never: do I/O, allocate, or write past a length;
 * remove a header of another authserv-id or anything in the body.
 * Security: every value here except the authserv-id comes from a peer
 * (HELO, MAIL FROM domain, DKIM d=/s=): it is emitted as a token or a
 * quoted-string of printable ASCII only, so it cannot end the field, open
 * a comment or add a resinfo of its own.
 */
#include "config.h"
#include "authres.h"

#include <stdio.h>
#include <string.h>

#define AR_NAME "Authentication-Results"
/* Longest value copied from a peer into a resinfo. */
#define AUTHRES_VALUE_MAX 255

static int ar_lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* RFC 2045 token characters (the "value" of a property): printable ASCII
 * but specials, space and controls. */
static int ar_is_token_char(int c)
{
    return c > 32 && c < 127 && !strchr("()<>@,;:\\\"/[]?=", c);
}

/* Domain-ish characters that RFC 8601 allows bare in pvalue: a token plus
 * '@' (local-part@domain), which is what an A-R reader expects. */
static int ar_is_pvalue_char(int c) { return ar_is_token_char(c) || c == '@'; }

/* Write v as a pvalue: bare when it is made of pvalue characters, else a
 * quoted-string with '"' and '\' escaped and non-printables as '?'. */
static int ar_put_value(char *p, size_t room, const char *v)
{
    size_t n = strlen(v), i, o = 0;
    int bare = n > 0;
    if (n > AUTHRES_VALUE_MAX)
        n = AUTHRES_VALUE_MAX;
    for (i = 0; i < n; i++)
        if (!ar_is_pvalue_char((unsigned char)v[i]))
            bare = 0;
    if (!bare && o < room)
        p[o] = '"';
    o += !bare;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (!bare && (c == '"' || c == '\\')) {
            if (o < room)
                p[o] = '\\';
            o++;
        }
        if (o < room)
            p[o] = (c >= 32 && c < 127) ? (char)c : '?';
        o++;
    }
    if (!bare) {
        if (o < room)
            p[o] = '"';
        o++;
    }
    return (int)o;
}

int authres_add2(char *buf, size_t cap, const char *method, const char *result,
                 const char *prop1, const char *val1, const char *prop2, const char *val2)
{
    size_t len = strlen(buf), o = len;
    char tmp[AUTHRES_RESINFO_MAX];
    int n;

    if (len >= cap)
        return -1;
    n = snprintf(tmp, sizeof tmp, "%s%s=%s", len ? "; " : "", method, result);
    if (n < 0 || (size_t)n >= cap - o)
        return -1;
    memcpy(buf + o, tmp, (size_t)n);
    o += (size_t)n;
    const char *props[2] = { prop1, prop2 }, *vals[2] = { val1, val2 };
    for (int i = 0; i < 2; i++) {
        if (props[i] == NULL || vals[i] == NULL)
            continue;
        n = snprintf(tmp, sizeof tmp, " %s=", props[i]);
        if (n < 0 || (size_t)n >= cap - o)
            goto full;
        memcpy(buf + o, tmp, (size_t)n);
        o += (size_t)n;
        n = ar_put_value(buf + o, cap - o, vals[i]);
        if ((size_t)n >= cap - o)
            goto full;
        o += (size_t)n;
    }
    buf[o] = '\0';
    return 0;
full:
    buf[len] = '\0';
    return -1;
}

int authres_add(char *buf, size_t cap, const char *method, const char *result,
                const char *property, const char *value)
{
    return authres_add2(buf, cap, method, result, property, value, NULL, NULL);
}

int authres_format(const char *authserv_id, const char *resinfo, char *out, size_t outlen)
{
    size_t o = 0, idlen = strlen(authserv_id);
    const char *p = resinfo;
    int n;

    if (idlen == 0)
        return -1;
    for (size_t i = 0; i < idlen; i++)
        if (!ar_is_token_char((unsigned char)authserv_id[i]))
            return -1;
    n = snprintf(out, outlen, AR_NAME ": %s;", authserv_id);
    if (n < 0 || (size_t)n >= outlen)
        return -1;
    o = (size_t)n;
    if (*p == '\0') {
        n = snprintf(out + o, outlen - o, " none\r\n");
        if (n < 0 || (size_t)n >= outlen - o)
            return -1;
        return (int)(o + (size_t)n);
    }
    /* One resinfo per folded line: "\r\n\tspf=pass ...;" (the last without
     * ';').  Separators inside quoted values are not split on. */
    while (*p) {
        const char *q = p;
        int quoted = 0;
        while (*q && (quoted || *q != ';')) {
            if (*q == '\\' && quoted && q[1])
                q++;
            else if (*q == '"')
                quoted = !quoted;
            q++;
        }
        size_t len = (size_t)(q - p);
        if (o + 3 + len + 3 >= outlen)
            return -1;
        memcpy(out + o, "\r\n\t", 3);
        o += 3;
        memcpy(out + o, p, len);
        o += len;
        if (*q == ';') {
            out[o++] = ';';
            q++;
            while (*q == ' ')
                q++;
        }
        p = q;
    }
    memcpy(out + o, "\r\n", 3);
    return (int)(o + 2);
}

/* Skip folding white space and (nested) comments. */
static size_t ar_skip_cfws(const char *v, size_t i, size_t len)
{
    int depth = 0;
    while (i < len) {
        char c = v[i];
        if (depth > 0) {
            if (c == '\\' && i + 1 < len)
                i++;
            else if (c == '(')
                depth++;
            else if (c == ')')
                depth--;
        } else if (c == '(') {
            depth = 1;
        } else if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            break;
        }
        i++;
    }
    return i;
}

int authres_field_id(const char *v, size_t len, char *out, size_t outlen)
{
    size_t i = ar_skip_cfws(v, 0, len), o = 0;

    if (outlen == 0 || i >= len)
        return -1;
    if (v[i] == '"') {
        for (i++; i < len && v[i] != '"'; i++) {
            if (v[i] == '\\' && i + 1 < len)
                i++;
            if (v[i] == '\r' || v[i] == '\n')
                continue;
            if (o + 1 >= outlen)
                return -1;
            out[o++] = v[i];
        }
        if (i >= len)
            return -1;
    } else {
        for (; i < len && ar_is_token_char((unsigned char)v[i]) && v[i] != ';'; i++) {
            if (o + 1 >= outlen)
                return -1;
            out[o++] = v[i];
        }
    }
    out[o] = '\0';
    return o > 0 ? (int)o : -1;
}

/* Does the field f[0..n) (name, colon, value, folded lines) claim id? */
static int ar_field_claims(const char *f, size_t n, const char *id)
{
    size_t nl = sizeof AR_NAME - 1, i;
    char got[256];

    if (n <= nl)
        return 0;
    for (i = 0; i < nl; i++)
        if (ar_lower((unsigned char)f[i]) != ar_lower((unsigned char)AR_NAME[i]))
            return 0;
    /* obs-optional: white space before the colon (RFC 5322 4.5.8) */
    while (i < n && (f[i] == ' ' || f[i] == '\t'))
        i++;
    if (i >= n || f[i] != ':')
        return 0;
    i++;
    if (authres_field_id(f + i, n - i, got, sizeof got) < 0)
        return 0;
    if (strlen(got) != strlen(id))
        return 0;
    for (i = 0; got[i]; i++)
        if (ar_lower((unsigned char)got[i]) != ar_lower((unsigned char)id[i]))
            return 0;
    return 1;
}

/* End of the line starting at i: the index after its LF (or n). */
static size_t ar_line_end(const char *in, size_t i, size_t n)
{
    const char *lf = memchr(in + i, '\n', n - i);
    return lf ? (size_t)(lf - in) + 1 : n;
}

size_t authres_filter(const char *in, size_t n, const char *id, char *out, int *removed)
{
    size_t i = 0, o = 0;
    int dropped = 0;

    while (i < n) {
        size_t end = ar_line_end(in, i, n);
        /* the empty line: the header section ends; copy the rest */
        if (in[i] == '\n' || (in[i] == '\r' && i + 1 < n && in[i + 1] == '\n')) {
            memcpy(out + o, in + i, n - i);
            o += n - i;
            break;
        }
        /* the field runs on over continuation lines (starting with WSP) */
        while (end < n && (in[end] == ' ' || in[end] == '\t'))
            end = ar_line_end(in, end, n);
        if (ar_field_claims(in + i, end - i, id)) {
            dropped++;
        } else {
            memcpy(out + o, in + i, end - i);
            o += end - i;
        }
        i = end;
    }
    if (removed)
        *removed = dropped;
    return o;
}
