/*
 * authres.h - the Authentication-Results header (RFC 8601) mxkeep adds when
 * it forwards a message to the primary, and the filter that removes earlier
 * ones claiming our authserv-id (RFC 8601 section 5: a forgery).
 *
 * Pure: no I/O, no allocation; every function writes only the caller's
 * buffer and never past its length.
 */
#ifndef MXKEEP_AUTHRES_H
#define MXKEEP_AUTHRES_H

#include <stddef.h>

/* Room for the resinfo text kept in the message record: SPF for two
 * identities and a few DKIM signatures. */
#define AUTHRES_RESINFO_MAX 1024
/* Room for one formatted header: the resinfo, the authserv-id (a host
 * name), the field name and folding. */
#define AUTHRES_HEADER_MAX (AUTHRES_RESINFO_MAX + 512)

/*
 * Append one resinfo ("method=result ptype.property=value") to buf, a
 * NUL-terminated list separated by "; ".  value is peer-controlled text
 * (a domain, a HELO name): it is written as a quoted-string when it is not
 * a plain token, with anything but printable ASCII replaced by '?', so it
 * cannot end the field or open a comment.  property/value may be NULL for
 * a result without one.  Returns 0, or -1 (buf unchanged) when it does
 * not fit in cap octets.
 */
int authres_add(char *buf, size_t cap, const char *method, const char *result,
                const char *property, const char *value);
/* The same with two properties (dkim: header.d and header.s). */
int authres_add2(char *buf, size_t cap, const char *method, const char *result,
                 const char *prop1, const char *val1, const char *prop2, const char *val2);

/*
 * Format the whole header field, CRLF-terminated and folded before each
 * resinfo:
 *   Authentication-Results: mx2.example.net;\r\n\tspf=pass smtp.mailfrom=a.example;\r\n...
 * resinfo "" gives "Authentication-Results: ID; none" (RFC 8601 2.2).
 * Returns the length written (excluding the NUL), or -1 when it does not
 * fit in outlen or authserv_id is not a token.
 */
int authres_format(const char *authserv_id, const char *resinfo, char *out, size_t outlen);

/*
 * The authserv-id of one Authentication-Results field's value (after the
 * colon; folded lines allowed, comments skipped).  Writes it to out
 * (quoted-string unquoted) and returns its length, or -1 when the value
 * has none or it does not fit.
 */
int authres_field_id(const char *value, size_t len, char *out, size_t outlen);

/*
 * Copy the header section in[0..n) to out (which has room for n octets),
 * leaving out every Authentication-Results field (continuation lines
 * included) whose authserv-id is authserv_id (ASCII case-insensitive).
 * Fields of another authserv-id, and everything after the first empty
 * line (the body), are copied unchanged.  Lines end in CRLF or LF.
 * Returns the length written; *removed (may be NULL) gets the count of
 * fields left out.
 */
size_t authres_filter(const char *in, size_t n, const char *authserv_id, char *out,
                      int *removed);

#endif
