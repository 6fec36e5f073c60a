/*
 * json.h - RFC 8259 string output, shared by the control socket's replies
 * (control.c) and mxkeepctl's --json output, so both speak the same JSON.
 */
#ifndef MXKEEP_JSON_H
#define MXKEEP_JSON_H

#include <stddef.h>

/* Where escaped output goes: called with consecutive pieces of it. */
typedef void (*json_emit_fn)(void *arg, const char *p, size_t len);

/*
 * Write s (n octets, NULs allowed) as one JSON string, quotes included.
 * '"' and '\\' are backslashed; BS, FF, LF, CR and TAB become \b \f \n \r
 * \t; the other C0 controls and DEL become \u00xx (lower-case hex); valid
 * UTF-8 passes as is; each octet that does not start a well-formed UTF-8
 * sequence (utf8.h) becomes \ufffd.
 */
void json_escape(const char *s, size_t n, json_emit_fn emit, void *arg);

#endif
