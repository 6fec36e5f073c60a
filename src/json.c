/*
 * json.c - RFC 8259 string escaping (see json.h).
 *
 * Owns: nothing; output goes through the caller's emit function.
 * Must never: do I/O itself, allocate, or read past s + n.
 * Security: the strings are peer text (addresses, HELO names, primaries'
 * replies, message headers).  The output is always one valid JSON string
 * of valid UTF-8: nothing can end it early, split a line-oriented reply
 * (LF and CR are escaped) or reach a terminal as a control character
 * (DEL is escaped too, which RFC 8259 allows but does not require), and a
 * malformed sequence becomes U+FFFD one octet at a time, so no decoder
 * downstream has to guess where it ends.
 */
#include "config.h"
#include "json.h"

#include <stdint.h>

#include "utf8.h"

#define JSON_CTL_END    0x20    /* C0 controls must be escaped */
#define JSON_DEL        0x7F
#define JSON_REPLACEMENT "\\ufffd"
#define JSON_U_ESCAPE_LEN 6     /* "\u00xx" */

#define JSON_SHORT_ESCAPE_LEN 2 /* a backslash and one character */

/* A string literal, without its NUL. */
#define EMIT_LIT(lit) emit(arg, (lit), sizeof(lit) - 1)

/* The short escape for c, or NULL when it has none. */
static const char *json_short_escape(unsigned char c)
{
    switch (c) {
    case '"':  return "\\\"";
    case '\\': return "\\\\";
    case '\b': return "\\b";
    case '\f': return "\\f";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    default:   return NULL;
    }
}

void json_escape(const char *s, size_t n, json_emit_fn emit, void *arg)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;     /* s[run..i) passes unchanged, not yet emitted */

    EMIT_LIT("\"");
    while (i < n) {
        unsigned char c = u[i];
        const char *esc = json_short_escape(c);
        size_t len;

        if (esc == NULL && c >= JSON_CTL_END && c != JSON_DEL &&
            (len = utf8_decode(u + i, n - i, NULL)) != 0) {
            i += len;
            continue;
        }
        if (i > run)
            emit(arg, s + run, i - run);
        if (esc != NULL) {
            emit(arg, esc, JSON_SHORT_ESCAPE_LEN);
        } else if (c < JSON_CTL_END || c == JSON_DEL) {
            char ue[JSON_U_ESCAPE_LEN] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 0x0F] };
            emit(arg, ue, sizeof ue);
        } else {
            EMIT_LIT(JSON_REPLACEMENT);
        }
        run = ++i;
    }
    if (i > run)
        emit(arg, s + run, i - run);
    EMIT_LIT("\"");
}
