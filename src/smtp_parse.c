/*
 * smtp_parse.c - pure parsers for the SMTP command layer: command lines,
 * paths and mailboxes (RFC 5321 4.1.2), MAIL/RCPT parameters (RFC 1870,
 * 6152, 6531, 3461), xtext, ETRN (RFC 1985), HELO/EHLO and BDAT (RFC 3030).
 *
 * Owns: nothing.  Every function reads caller memory and writes caller
 * buffers; replies are static strings.
 * Must never: allocate, do I/O, log, keep state, or read past the NUL that
 * ends its input (the fuzzers in t/fuzz hold it to that).
 * Security: every octet here comes from an untrusted peer.  Lengths are
 * checked before any copy; ASCII case mapping is done by hand so the locale
 * cannot change what we accept; non-ASCII is refused unless SMTPUTF8 was
 * given, and is then required to be well-formed UTF-8 (no overlongs, no
 * surrogates) so that later layers never see malformed sequences.
 */
#include "config.h"
#include "smtp_parse.h"
#include "utf8.h"

#include <arpa/inet.h>
#include <limits.h>
#include <string.h>

/* ---- replies ----------------------------------------------------------- */

#define R_BADCHAR        "500 5.5.2 Syntax error: bad character in command"
#define R_UNRECOGNIZED   "500 5.5.1 Command unrecognized"
#define R_MAIL_SYNTAX    "501 5.5.4 Syntax: MAIL FROM:<address>"
#define R_RCPT_SYNTAX    "501 5.5.4 Syntax: RCPT TO:<address>"
#define R_RCPT_ADDR      "501 5.1.3 Bad recipient address syntax"
#define R_SENDER_ADDR    "501 5.1.7 Bad sender address syntax"
#define R_RCPT_LONG      "501 5.1.3 Recipient address too long"
#define R_SENDER_LONG    "501 5.1.7 Sender address too long"
#define R_NEED_UTF8      "553 5.6.7 Non-ASCII address requires SMTPUTF8"
#define R_PARAM_SYNTAX   "501 5.5.4 Syntax error in parameters"
#define R_PARAM_CHAR     "501 5.5.4 Bad character in parameter"
#define R_PARAM_DUP      "501 5.5.4 Duplicate parameter"
#define R_PARAM_UNKNOWN  "555 5.5.4 Unsupported parameter"
#define R_SIZE_BAD       "501 5.5.4 Bad SIZE value"
#define R_BODY_BAD       "501 5.5.4 Bad BODY value"
#define R_BODY_BINARY    "555 5.5.4 BODY=BINARYMIME not supported"
#define R_UTF8_VALUE     "501 5.5.4 SMTPUTF8 takes no value"
#define R_RET_BAD        "501 5.5.4 Bad RET value"
#define R_ENVID_BAD      "501 5.5.4 Bad ENVID value"
#define R_NOTIFY_BAD     "501 5.5.4 Bad NOTIFY value"
#define R_ORCPT_BAD      "501 5.5.4 Bad ORCPT value"
#define R_ETRN_SYNTAX    "500 5.5.2 Syntax: ETRN domain"
#define R_ETRN_DOMAIN    "501 5.5.4 Bad domain name"
#define R_HELO_SYNTAX    "501 5.5.4 Syntax: EHLO hostname (or HELO hostname)"
#define R_HELO_BAD       "501 5.5.4 Invalid EHLO hostname"
#define R_BDAT_SYNTAX    "501 5.5.4 Syntax: BDAT size [LAST]"
#define R_BDAT_BIG       "552 5.3.4 Message size exceeds fixed limit"

/* ---- limits and constants ---------------------------------------------- */

#define LABEL_MAX         63      /* RFC 1035 2.3.4 */
#define IPV6_TAG          "IPv6:"
#define IPV6_TAG_LEN      (sizeof(IPV6_TAG) - 1)
#define IP_TEXT_MAX       64      /* > INET6_ADDRSTRLEN, room for the NUL */
#define POSTMASTER        "postmaster"
#define POSTMASTER_LEN    (sizeof(POSTMASTER) - 1)
#define XTEXT_MIN         33      /* RFC 3461 4: xchar is "!" .. "~" ... */
#define XTEXT_MAX         126
#define ASCII_DEL         0x7f
#define ASCII_CTL_END     0x20    /* octets below this are control characters */
#define HEX_DIGITS        "0123456789ABCDEF"

/* ---- ASCII helpers (locale-independent on purpose) ---------------------- */

static int is_alpha(unsigned char c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static int is_alnum(unsigned char c) { return is_alpha(c) || is_digit(c); }
static int is_ctl(unsigned char c) { return c < ASCII_CTL_END || c == ASCII_DEL; }
static unsigned char to_lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c; }

/* Case-insensitive compare of n octets of s against lower-case-free word. */
static int ascii_ieq(const char *s, const char *word, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (to_lower((unsigned char)s[i]) != to_lower((unsigned char)word[i]))
            return 0;
    return 1;
}

/* Does the span [s, s+n) equal word, ignoring ASCII case? */
static int span_is(const char *s, size_t n, const char *word)
{
    return strlen(word) == n && ascii_ieq(s, word, n);
}

/* RFC 5322 atext, the octets of a Dot-string atom. */
static int is_atext(unsigned char c)
{
    return is_alnum(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* Result of scanning a span for octets >= 0x80. */
enum eight { EIGHT_NONE = 0, EIGHT_OK, EIGHT_FORBIDDEN, EIGHT_INVALID };

static enum eight span_8bit(const char *s, size_t n, int allow_utf8)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    enum eight r = EIGHT_NONE;

    while (p < end) {
        size_t k;
        if (*p < 0x80) {
            p++;
            continue;
        }
        if (!allow_utf8)
            return EIGHT_FORBIDDEN;
        k = utf8_decode(p, (size_t)(end - p), NULL);
        if (k == 0)
            return EIGHT_INVALID;
        p += k;
        r = EIGHT_OK;
    }
    return r;
}

/* ---- domains ------------------------------------------------------------ */

/*
 * Check a hostname span (no trailing dot) of n octets: labels of letters,
 * digits and hyphens (underscore too for HELO, where Windows hosts send it),
 * or UTF-8 when allowed; no empty label, no hyphen at a label's ends, label
 * <= 63, total <= 255.  The last label must not be all digits: a bare IPv4
 * address is not a hostname and must be written as a literal.
 */
static int hostname_ok(const char *d, size_t n, int allow_utf8, int allow_underscore)
{
    const unsigned char *p = (const unsigned char *)d, *end = p + n;

    if (n == 0 || n > SMTP_DOMAIN_MAX)
        return 0;
    while (p < end) {
        const unsigned char *label = p;
        int all_digits = 1;
        while (p < end && *p != '.') {
            if (*p >= 0x80) {
                size_t k = allow_utf8 ? utf8_decode(p, (size_t)(end - p), NULL) : 0;
                if (k == 0)
                    return 0;
                p += k;
                all_digits = 0;
                continue;
            }
            if (!is_alnum(*p) && *p != '-' && !(allow_underscore && *p == '_'))
                return 0;
            if (!is_digit(*p))
                all_digits = 0;
            p++;
        }
        if (p == label || p - label > LABEL_MAX)
            return 0;
        if (label[0] == '-' || p[-1] == '-')
            return 0;
        if (p == end) {
            if (all_digits)
                return 0;
            break;
        }
        p++;                            /* the dot */
        if (p == end)
            return 0;                   /* trailing dot: the caller strips one */
    }
    return 1;
}

/*
 * Check an address literal span including its brackets: "[1.2.3.4]" or
 * "[IPv6:...]".  General (tagged) literals are refused: nothing we relay to
 * could use them.
 */
static int literal_ok(const char *s, size_t n)
{
    char ip[IP_TEXT_MAX];
    const char *in = s + 1;
    size_t inlen;
    int af = AF_INET;
    unsigned char bin[sizeof(struct in6_addr)];

    if (n < 3 || s[0] != '[' || s[n - 1] != ']')
        return 0;
    inlen = n - 2;
    if (inlen > IPV6_TAG_LEN && ascii_ieq(in, IPV6_TAG, IPV6_TAG_LEN)) {
        af = AF_INET6;
        in += IPV6_TAG_LEN;
        inlen -= IPV6_TAG_LEN;
    }
    if (inlen == 0 || inlen >= sizeof ip)
        return 0;
    memcpy(ip, in, inlen);
    ip[inlen] = '\0';
    return inet_pton(af, ip, bin) == 1;
}

int smtp_domain_valid(const char *d, int allow_utf8)
{
    size_t n = strlen(d);

    if (n > 1 && d[n - 1] == '.')
        n--;
    return hostname_ok(d, n, allow_utf8, 0);
}

/* Copy a validated domain span into out, ASCII lower-cased; a literal gets
 * its IPv6 tag in canonical case. */
static void domain_copy(char *out, const char *d, size_t n, int literal)
{
    size_t i = 0;

    if (literal && n > IPV6_TAG_LEN + 1 && ascii_ieq(d + 1, IPV6_TAG, IPV6_TAG_LEN)) {
        out[0] = '[';
        memcpy(out + 1, IPV6_TAG, IPV6_TAG_LEN);
        i = IPV6_TAG_LEN + 1;
    }
    for (; i < n; i++)
        out[i] = (char)to_lower((unsigned char)d[i]);
    out[n] = '\0';
}

/* Span of a domain or literal at p, ending before any octet in stops. */
static size_t domain_span(const char *p, const char *stops)
{
    if (*p == '[') {
        size_t n = strcspn(p, "]>");
        return p[n] == ']' ? n + 1 : 0;
    }
    return strcspn(p, stops);
}

/* ---- commands ----------------------------------------------------------- */

struct verb {
    const char *name;
    enum smtp_cmd cmd;
};

static const struct verb verbs[] = {
    { "HELO", SMTP_CMD_HELO }, { "EHLO", SMTP_CMD_EHLO }, { "MAIL", SMTP_CMD_MAIL },
    { "RCPT", SMTP_CMD_RCPT }, { "DATA", SMTP_CMD_DATA }, { "BDAT", SMTP_CMD_BDAT },
    { "RSET", SMTP_CMD_RSET }, { "NOOP", SMTP_CMD_NOOP }, { "QUIT", SMTP_CMD_QUIT },
    { "VRFY", SMTP_CMD_VRFY }, { "EXPN", SMTP_CMD_EXPN }, { "HELP", SMTP_CMD_HELP },
    { "STARTTLS", SMTP_CMD_STARTTLS }, { "ETRN", SMTP_CMD_ETRN },
    { "AUTH", SMTP_CMD_AUTH },
};

/* Web clients pointed at port 25 (and cross-protocol attacks): the session
 * closes at once rather than answering each header line. */
static const char *const http_verbs[] = {
    "GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE", "TRACE", "PATCH",
};

static const char *const cmd_names[SMTP_CMD_COUNT_] = {
    [SMTP_CMD_UNKNOWN] = "UNKNOWN", [SMTP_CMD_HELO] = "HELO", [SMTP_CMD_EHLO] = "EHLO",
    [SMTP_CMD_MAIL] = "MAIL", [SMTP_CMD_RCPT] = "RCPT", [SMTP_CMD_DATA] = "DATA",
    [SMTP_CMD_BDAT] = "BDAT", [SMTP_CMD_RSET] = "RSET", [SMTP_CMD_NOOP] = "NOOP",
    [SMTP_CMD_QUIT] = "QUIT", [SMTP_CMD_VRFY] = "VRFY", [SMTP_CMD_EXPN] = "EXPN",
    [SMTP_CMD_HELP] = "HELP", [SMTP_CMD_STARTTLS] = "STARTTLS", [SMTP_CMD_ETRN] = "ETRN",
    [SMTP_CMD_AUTH] = "AUTH", [SMTP_CMD_HTTP] = "HTTP",
};

const char *smtp_cmd_name(enum smtp_cmd cmd)
{
    if ((unsigned)cmd >= SMTP_CMD_COUNT_ || cmd_names[cmd] == NULL)
        return "UNKNOWN";
    return cmd_names[cmd];
}

static const char *skip_spaces(const char *p, const char *end)
{
    while (p < end && *p == ' ')
        p++;
    return p;
}

const char *smtp_parse_command(const char *line, size_t len, struct smtp_command *out)
{
    const char *end = line + len, *p;
    size_t vlen = 0;

    out->cmd = SMTP_CMD_UNKNOWN;
    out->arg = "";
    /* One line is one command: an embedded CR/LF/NUL is a smuggling attempt
     * or a broken client, and either way must not reach later parsers. */
    if (memchr(line, '\0', len) || memchr(line, '\r', len) || memchr(line, '\n', len))
        return R_BADCHAR;
    while (vlen < len && line[vlen] != ' ')
        vlen++;
    p = line + vlen;

    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
        const struct verb *v = &verbs[i];
        if (!span_is(line, vlen, v->name))
            continue;
        out->cmd = v->cmd;
        if (v->cmd == SMTP_CMD_MAIL || v->cmd == SMTP_CMD_RCPT) {
            const char *kw = v->cmd == SMTP_CMD_MAIL ? "FROM:" : "TO:";
            size_t kwlen = strlen(kw);
            const char *q = skip_spaces(p, end);
            if (q == p || (size_t)(end - q) < kwlen || !ascii_ieq(q, kw, kwlen))
                return v->cmd == SMTP_CMD_MAIL ? R_MAIL_SYNTAX : R_RCPT_SYNTAX;
            /* RFC violators send "MAIL FROM: <a@b>"; harmless to allow. */
            out->arg = skip_spaces(q + kwlen, end);
            return NULL;
        }
        out->arg = skip_spaces(p, end);
        return NULL;
    }
    if (vlen < len)
        for (size_t i = 0; i < sizeof http_verbs / sizeof http_verbs[0]; i++)
            if (span_is(line, vlen, http_verbs[i])) {
                out->cmd = SMTP_CMD_HTTP;
                out->arg = skip_spaces(p, end);
                return NULL;
            }
    return R_UNRECOGNIZED;
}

/* ---- paths ---------------------------------------------------------------- */

const char *smtp_parse_path(const char *s, const char **rest, struct smtp_addr *out,
                            int allow_null, int allow_utf8, int is_rcpt)
{
    const char *e_syntax = is_rcpt ? R_RCPT_ADDR : R_SENDER_ADDR;
    const char *e_long = is_rcpt ? R_RCPT_LONG : R_SENDER_LONG;
    const char *start, *p, *local, *dom;
    size_t llen, dlen, n;
    enum eight e8;
    int literal = 0;

    memset(out, 0, sizeof *out);
    if (rest)
        *rest = s;
    while (*s == ' ')
        s++;
    if (*s != '<')
        return e_syntax;
    start = s;
    p = s + 1;

    if (*p == '>') {
        if (!allow_null)
            return e_syntax;
        out->null = 1;
        if (rest)
            *rest = p + 1;
        return NULL;
    }

    /* Source route: checked for syntax, then dropped (RFC 5321 C.). */
    if (*p == '@') {
        for (;;) {
            p++;
            n = domain_span(p, ",:> ");
            if (n == 0)
                return e_syntax;
            e8 = span_8bit(p, n, allow_utf8);
            if (e8 == EIGHT_FORBIDDEN)
                return R_NEED_UTF8;
            if (*p == '[' ? !literal_ok(p, n) : !hostname_ok(p, n, allow_utf8, 0))
                return e_syntax;
            p += n;
            if (*p == ':')
                break;
            if (*p != ',' || p[1] != '@')
                return e_syntax;
            p++;
        }
        p++;
    }

    /* Local part: Dot-string or Quoted-string. */
    local = p;
    if (*p == '"') {
        p++;
        for (;;) {
            unsigned char c = (unsigned char)*p;
            if (c == '"') {
                p++;
                break;
            }
            if (c == '\\') {
                c = (unsigned char)p[1];
                if (c >= 0x80 && !allow_utf8)
                    return R_NEED_UTF8;
                if (c < ' ' || c > '~')
                    return e_syntax;    /* quoted-pairSMTP is %d92 %d32-126 */
                p += 2;
                continue;
            }
            if (c >= 0x80) {
                if (!allow_utf8)
                    return R_NEED_UTF8;
                n = utf8_decode((const unsigned char *)p, strnlen(p, UTF8_SEQ_MAX), NULL);
                if (n == 0)
                    return e_syntax;
                p += n;
                continue;
            }
            if (c < ' ' || c > '~')
                return e_syntax;        /* includes the NUL: no closing quote */
            p++;
        }
    } else {
        for (;;) {
            const char *atom = p;
            for (;;) {
                unsigned char c = (unsigned char)*p;
                if (is_atext(c)) {
                    p++;
                } else if (c >= 0x80) {
                    if (!allow_utf8)
                        return R_NEED_UTF8;
                    n = utf8_decode((const unsigned char *)p, strnlen(p, UTF8_SEQ_MAX), NULL);
                    if (n == 0)
                        return e_syntax;
                    p += n;
                } else
                    break;
            }
            if (p == atom)
                return e_syntax;        /* empty, leading or double dot */
            if (*p != '.')
                break;
            p++;
        }
    }
    llen = (size_t)(p - local);
    /* No bound of its own (RFC 5321 4.5.3.1): only the path's, below. */
    if (llen > SMTP_PATH_MAX - 2)
        return e_long;

    /* RFC 5321 4.5.1: <postmaster> without a domain, for recipients only. */
    if (*p == '>' && is_rcpt && llen == POSTMASTER_LEN && ascii_ieq(local, POSTMASTER, llen)) {
        memcpy(out->local, local, llen);
        out->local[llen] = '\0';
        out->domain[0] = '\0';
        if (rest)
            *rest = p + 1;
        return NULL;
    }
    if (*p != '@')
        return e_syntax;
    p++;

    dom = p;
    if (*p == '[') {
        dlen = domain_span(p, ">");
        if (dlen == 0)
            return e_syntax;
        literal = 1;
    } else {
        dlen = strcspn(p, ">");
    }
    e8 = span_8bit(dom, dlen, allow_utf8);
    if (e8 == EIGHT_FORBIDDEN)
        return R_NEED_UTF8;
    if (e8 == EIGHT_INVALID)
        return e_syntax;
    p = dom + dlen;
    if (*p != '>')
        return e_syntax;
    if (!literal && dlen > 1 && dom[dlen - 1] == '.')
        dlen--;
    if (dlen > SMTP_DOMAIN_MAX || (size_t)(p + 1 - start) > SMTP_PATH_MAX)
        return e_long;
    if (literal ? !literal_ok(dom, dlen) : !hostname_ok(dom, dlen, allow_utf8, 0))
        return e_syntax;

    memcpy(out->local, local, llen);
    out->local[llen] = '\0';
    domain_copy(out->domain, dom, dlen, literal);
    out->domain_literal = literal;
    out->utf8 = span_8bit(out->local, llen, 1) != EIGHT_NONE || e8 == EIGHT_OK;
    if (rest)
        *rest = p + 1;
    return NULL;
}

int smtp_addr_format(const struct smtp_addr *a, char *buf, size_t len)
{
    size_t ll, dl, need;

    if (len == 0)
        return -1;
    if (a->null) {
        buf[0] = '\0';
        return 0;
    }
    ll = strlen(a->local);
    dl = strlen(a->domain);
    need = ll + (dl ? 1 + dl : 0);
    if (need >= len || need > INT_MAX)
        return -1;
    memcpy(buf, a->local, ll);
    if (dl) {
        buf[ll] = '@';
        memcpy(buf + ll + 1, a->domain, dl);
    }
    buf[need] = '\0';
    return (int)need;
}

int smtp_local_is_route(const char *local)
{
    /* Quoting changes nothing here: "a@b"@us routes just as well at a
     * primary that unquotes before routing, so every occurrence counts. */
    return strpbrk(local, "%!@") != NULL;
}

/* ---- xtext ------------------------------------------------------------- */

static int hex_value(unsigned char c)
{
    /* RFC 3461 4: hexchar is upper case only. */
    if (is_digit(c))
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int smtp_xtext_decode(const char *in, size_t inlen, char *out, size_t outlen)
{
    size_t o = 0;

    if (outlen == 0)
        return -1;
    for (size_t i = 0; i < inlen; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '+') {
            int hi, lo;
            if (inlen - i < 3)
                return -1;
            hi = hex_value((unsigned char)in[i + 1]);
            lo = hex_value((unsigned char)in[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = (unsigned char)(hi * 16 + lo);
            if (is_ctl(c))
                return -1;
            i += 2;
        } else if (c < XTEXT_MIN || c > XTEXT_MAX || c == '=') {
            return -1;
        }
        if (o + 1 >= outlen || o >= INT_MAX)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return (int)o;
}

int smtp_xtext_encode(const char *in, char *out, size_t outlen)
{
    size_t o = 0;

    if (outlen == 0)
        return -1;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        if (*p >= XTEXT_MIN && *p <= XTEXT_MAX && *p != '+' && *p != '=') {
            if (o + 1 >= outlen)
                return -1;
            out[o++] = (char)*p;
        } else {
            if (o + 3 >= outlen)
                return -1;
            out[o++] = '+';
            out[o++] = HEX_DIGITS[*p >> 4];
            out[o++] = HEX_DIGITS[*p & 0xf];
        }
        if (o > INT_MAX)
            return -1;
    }
    out[o] = '\0';
    return (int)o;
}

/* ---- MAIL / RCPT parameters --------------------------------------------- */

struct param {
    const char *kw, *val;
    size_t kwlen, vallen;
    int has_val;
};

/*
 * Take the next "keyword[=value]" from *sp.  Parameters must be preceded by
 * at least one space; trailing spaces are tolerated.  Sets *done at the end.
 */
static const char *param_next(const char **sp, struct param *pm, int *done)
{
    const char *s = *sp, *eq;
    size_t n;

    *done = 0;
    if (*s == '\0') {
        *done = 1;
        return NULL;
    }
    if (*s != ' ')
        return R_PARAM_SYNTAX;
    while (*s == ' ')
        s++;
    if (*s == '\0') {
        *done = 1;
        return NULL;
    }
    n = strcspn(s, " ");
    for (size_t i = 0; i < n; i++)
        if (is_ctl((unsigned char)s[i]))
            return R_PARAM_CHAR;
    eq = memchr(s, '=', n);
    pm->kw = s;
    pm->kwlen = eq ? (size_t)(eq - s) : n;
    pm->has_val = eq != NULL;
    pm->val = eq ? eq + 1 : s + n;
    pm->vallen = eq ? n - pm->kwlen - 1 : 0;
    /* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
    if (pm->kwlen == 0 || !is_alnum((unsigned char)s[0]))
        return R_PARAM_SYNTAX;
    for (size_t i = 1; i < pm->kwlen; i++)
        if (!is_alnum((unsigned char)s[i]) && s[i] != '-')
            return R_PARAM_SYNTAX;
    if (pm->has_val && pm->vallen == 0)
        return R_PARAM_SYNTAX;
    *sp = s + n;
    return NULL;
}

static int param_is(const struct param *pm, const char *kw)
{
    return span_is(pm->kw, pm->kwlen, kw);
}

static int val_is(const struct param *pm, const char *v)
{
    return span_is(pm->val, pm->vallen, v);
}

/* Mark keyword bit seen; 0 if it was already seen. */
static int once(unsigned *seen, unsigned bit)
{
    if (*seen & bit)
        return 0;
    *seen |= bit;
    return 1;
}

enum { P_SIZE = 1u, P_BODY = 2u, P_UTF8 = 4u, P_RET = 8u, P_ENVID = 16u,
       P_NOTIFY = 32u, P_ORCPT = 64u };

/* Decimal digits into a long; -1 on syntax, -2 on overflow. */
static long parse_decimal(const char *s, size_t n)
{
    long v = 0;

    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit((unsigned char)s[i]))
            return -1;
        if (v > (LONG_MAX - (s[i] - '0')) / 10)
            return -2;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

const char *smtp_parse_mail_params(const char *s, struct smtp_mail_params *out)
{
    struct param pm;
    unsigned seen = 0;
    const char *err;
    int done;

    memset(out, 0, sizeof *out);
    out->size = -1;
    for (;;) {
        if ((err = param_next(&s, &pm, &done)) != NULL)
            return err;
        if (done)
            return NULL;
        if (param_is(&pm, "SIZE")) {
            long v;
            if (!once(&seen, P_SIZE))
                return R_PARAM_DUP;
            v = parse_decimal(pm.val, pm.vallen);
            /* Too big for a long is over any limit: the caller, which knows
             * the limit, refuses it as a size. */
            if (v == -2)
                v = LONG_MAX;
            if (v < 0)
                return R_SIZE_BAD;
            out->size = v;
        } else if (param_is(&pm, "BODY")) {
            if (!once(&seen, P_BODY))
                return R_PARAM_DUP;
            if (val_is(&pm, "7BIT"))
                out->body = SMTP_BODY_7BIT;
            else if (val_is(&pm, "8BITMIME"))
                out->body = SMTP_BODY_8BITMIME;
            else if (val_is(&pm, "BINARYMIME"))
                return R_BODY_BINARY;   /* we do not offer CHUNKING's BINARYMIME */
            else
                return R_BODY_BAD;
        } else if (param_is(&pm, "SMTPUTF8")) {
            if (!once(&seen, P_UTF8))
                return R_PARAM_DUP;
            if (pm.has_val)
                return R_UTF8_VALUE;
            out->smtputf8 = 1;
        } else if (param_is(&pm, "RET")) {
            if (!once(&seen, P_RET))
                return R_PARAM_DUP;
            if (val_is(&pm, "FULL"))
                out->ret = SMTP_RET_FULL;
            else if (val_is(&pm, "HDRS"))
                out->ret = SMTP_RET_HDRS;
            else
                return R_RET_BAD;
        } else if (param_is(&pm, "ENVID")) {
            if (!once(&seen, P_ENVID))
                return R_PARAM_DUP;
            if (smtp_xtext_decode(pm.val, pm.vallen, out->envid, sizeof out->envid) <= 0) {
                out->envid[0] = '\0';
                return R_ENVID_BAD;
            }
        } else
            return R_PARAM_UNKNOWN;
    }
}

/* NOTIFY=NEVER / NOTIFY=SUCCESS,FAILURE,DELAY (RFC 3461 4.1). */
static int notify_parse(const char *v, size_t n)
{
    int mask = 0;
    size_t i = 0;

    while (i <= n) {
        size_t j = i;
        while (j < n && v[j] != ',')
            j++;
        if (span_is(v + i, j - i, "NEVER"))
            mask |= SMTP_NOTIFY_NEVER;
        else if (span_is(v + i, j - i, "SUCCESS"))
            mask |= SMTP_NOTIFY_SUCCESS;
        else if (span_is(v + i, j - i, "FAILURE"))
            mask |= SMTP_NOTIFY_FAILURE;
        else if (span_is(v + i, j - i, "DELAY"))
            mask |= SMTP_NOTIFY_DELAY;
        else
            return -1;                  /* also catches empty items */
        i = j + 1;
    }
    if ((mask & SMTP_NOTIFY_NEVER) && mask != SMTP_NOTIFY_NEVER)
        return -1;
    return mask;
}

const char *smtp_parse_rcpt_params(const char *s, struct smtp_rcpt_params *out)
{
    struct param pm;
    unsigned seen = 0;
    const char *err;
    int done;

    memset(out, 0, sizeof *out);
    for (;;) {
        if ((err = param_next(&s, &pm, &done)) != NULL)
            return err;
        if (done)
            return NULL;
        if (param_is(&pm, "NOTIFY")) {
            int m;
            if (!once(&seen, P_NOTIFY))
                return R_PARAM_DUP;
            m = pm.has_val ? notify_parse(pm.val, pm.vallen) : -1;
            if (m <= 0)
                return R_NOTIFY_BAD;
            out->notify = m;
        } else if (param_is(&pm, "ORCPT")) {
            const char *semi;
            size_t tlen;
            if (!once(&seen, P_ORCPT))
                return R_PARAM_DUP;
            semi = pm.has_val ? memchr(pm.val, ';', pm.vallen) : NULL;
            if (semi == NULL)
                return R_ORCPT_BAD;
            /* addr-type is an RFC 822 atom; stored lower-cased so users of
             * it compare with strcmp. */
            tlen = (size_t)(semi - pm.val);
            if (tlen == 0 || tlen >= sizeof out->orcpt_type)
                return R_ORCPT_BAD;
            for (size_t i = 0; i < tlen; i++) {
                unsigned char c = (unsigned char)pm.val[i];
                if (!is_atext(c))
                    return R_ORCPT_BAD;
                out->orcpt_type[i] = (char)to_lower(c);
            }
            out->orcpt_type[tlen] = '\0';
            if (smtp_xtext_decode(semi + 1, pm.vallen - tlen - 1, out->orcpt,
                                  sizeof out->orcpt) <= 0) {
                out->orcpt_type[0] = out->orcpt[0] = '\0';
                return R_ORCPT_BAD;
            }
        } else
            return R_PARAM_UNKNOWN;
    }
}

/* ---- ETRN, HELO, BDAT ------------------------------------------------------ */

/* Length of arg without trailing spaces (clients pad; nothing is lost). */
static size_t trimmed_len(const char *arg)
{
    size_t n = strlen(arg);

    while (n > 0 && arg[n - 1] == ' ')
        n--;
    return n;
}

const char *smtp_parse_etrn(const char *arg, int *kind, char *domain, size_t len)
{
    size_t n = trimmed_len(arg);
    const char *d = arg;

    *kind = 0;
    if (len > 0)
        domain[0] = '\0';
    if (n == 0)
        return R_ETRN_SYNTAX;
    if (arg[0] == '#') {
        /* Queue names are site-defined; printable ASCII is all we ask. */
        if (n < 2 || n - 1 >= len)
            return R_ETRN_DOMAIN;
        for (size_t i = 1; i < n; i++)
            if ((unsigned char)arg[i] < XTEXT_MIN || (unsigned char)arg[i] > XTEXT_MAX)
                return R_ETRN_DOMAIN;
        memcpy(domain, arg + 1, n - 1);
        domain[n - 1] = '\0';
        *kind = '#';
        return NULL;
    }
    if (arg[0] == '@') {
        d++;
        n--;
    }
    if (n > 1 && d[n - 1] == '.')
        n--;
    if (!hostname_ok(d, n, 0, 0) || n >= len)
        return R_ETRN_DOMAIN;
    domain_copy(domain, d, n, 0);
    *kind = arg[0] == '@' ? '@' : 0;
    return NULL;
}

const char *smtp_parse_helo(const char *arg, char *out, size_t len)
{
    size_t n = trimmed_len(arg), cut;
    char ip[IP_TEXT_MAX];
    unsigned char bin[sizeof(struct in_addr)];
    int good;

    if (len > 0)
        out[0] = '\0';
    if (n == 0)
        return R_HELO_SYNTAX;
    if (arg[0] == '[') {
        good = literal_ok(arg, n);
    } else {
        size_t h = n;
        if (h > 1 && arg[h - 1] == '.')
            h--;
        good = hostname_ok(arg, h, 0, 1);
        /* Practical: plenty of real clients send their bare IPv4 address. */
        if (!good && n < sizeof ip) {
            memcpy(ip, arg, n);
            ip[n] = '\0';
            good = inet_pton(AF_INET, ip, bin) == 1;
        }
    }
    if (!good)
        return R_HELO_BAD;
    if (len > 0) {
        cut = n < len ? n : len - 1;
        memcpy(out, arg, cut);
        out[cut] = '\0';
    }
    return NULL;
}

const char *smtp_parse_bdat(const char *arg, long max, long *size, int *last)
{
    size_t n = trimmed_len(arg), d = 0;
    long v;

    *size = 0;
    *last = 0;
    while (d < n && is_digit((unsigned char)arg[d]))
        d++;
    if (d == 0)
        return R_BDAT_SYNTAX;
    if (d < n) {
        size_t i = d;
        if (arg[i] != ' ')
            return R_BDAT_SYNTAX;
        while (i < n && arg[i] == ' ')
            i++;
        if (!span_is(arg + i, n - i, "LAST"))
            return R_BDAT_SYNTAX;
        *last = 1;
    }
    v = parse_decimal(arg, d);
    if (v == -2 || v > max)
        return R_BDAT_BIG;
    *size = v;
    return NULL;
}
