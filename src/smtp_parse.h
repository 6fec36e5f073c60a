/*
 * smtp_parse.h - pure parsers for the SMTP command layer (RFC 5321 and the
 * extensions mxkeep speaks).  No I/O, no allocation, no globals: every
 * function works on caller-owned memory, so the whole module is unit-tested
 * and fuzzed on its own (t/unit/t_smtp_parse.c, t/fuzz/fuzz_command.c,
 * t/fuzz/fuzz_address.c).
 *
 * Error convention: functions that can reject peer input return NULL on
 * success or a pointer to a static, complete reply line WITHOUT CRLF, e.g.
 * "501 5.1.7 Bad sender address syntax", which the caller sends as-is.
 */
#ifndef MXKEEP_SMTP_PARSE_H
#define MXKEEP_SMTP_PARSE_H

#include <stddef.h>

enum smtp_cmd {
    SMTP_CMD_UNKNOWN = 0,
    SMTP_CMD_HELO, SMTP_CMD_EHLO, SMTP_CMD_MAIL, SMTP_CMD_RCPT, SMTP_CMD_DATA,
    SMTP_CMD_BDAT, SMTP_CMD_RSET, SMTP_CMD_NOOP, SMTP_CMD_QUIT, SMTP_CMD_VRFY,
    SMTP_CMD_EXPN, SMTP_CMD_HELP, SMTP_CMD_STARTTLS, SMTP_CMD_ETRN,
    SMTP_CMD_AUTH,
    SMTP_CMD_HTTP,              /* GET, POST, HEAD, PUT, CONNECT...: close at once */
    SMTP_CMD_COUNT_
};

/*
 * RFC 5321 4.5.3.1 names 64 octets for a local part and 256 for a path,
 * and in the same breath says to avoid such limits: real, everyday
 * addresses (SRS, VERP, list confirmations) have longer local parts.  A
 * local part is therefore bounded only by the path, and a path only by the
 * command line that carries it (limits.line_length, 512 by default) and by
 * SMTP_PATH_MAX, the room every stored copy has (queue records, notices):
 * a path that fits a 1024-octet line fits.  A domain stays within DNS's
 * 255 octets: longer names cannot be resolved or served.
 */
#define SMTP_DOMAIN_MAX  255
#define SMTP_PATH_MAX    1024
#define SMTP_ENVID_MAX   100     /* RFC 3461 4.4 */
#define SMTP_ORCPT_MAX   500     /* RFC 3461 4.2: 500 after xtext decoding */

struct smtp_command {
    enum smtp_cmd cmd;
    const char *arg;            /* points into the line after the verb and one
                                   or more spaces; "" when none; never NULL */
};

/*
 * Split one command line.  line is NUL-terminated, with the CRLF already
 * removed by the caller.  "MAIL FROM:" and "RCPT TO:" are verbs with their
 * arg starting after the colon (spaces after the colon allowed).
 * Returns NULL or a reply: "500 5.5.2 ..." for a line with a NUL, CR, or LF
 * inside (never two commands), "500 5.5.1 Command unrecognized" for unknown
 * verbs (cmd is then SMTP_CMD_UNKNOWN).
 */
const char *smtp_parse_command(const char *line, size_t len, struct smtp_command *out);

/* Canonical name of a command for logs, e.g. "MAIL". */
const char *smtp_cmd_name(enum smtp_cmd cmd);

/* An address.  Local part kept exactly as given between the brackets,
 * including quotes; domain lower-cased, with a trailing dot removed.
 * Address literals ("[1.2.3.4]", "[IPv6:...]") keep their brackets. */
struct smtp_addr {
    int null;                       /* "<>" */
    int utf8;                       /* has octets >= 0x80 */
    int domain_literal;             /* domain is [..] */
    char local[SMTP_PATH_MAX + 1];  /* quotes included; bounded by the path */
    char domain[SMTP_DOMAIN_MAX + 1];
};

/*
 * Parse a reverse-path or forward-path at s: optional spaces, then
 * "<" [source-route ":"] mailbox ">" or "<>" (only when allow_null).
 * A source route (@a,@b:) is accepted and dropped (RFC 5321 4.1.2, C.).
 * Octets >= 0x80 are accepted only when allow_utf8 (SMTPUTF8 given), and
 * must then be valid UTF-8.  On success *rest points just after '>'.
 * is_rcpt picks the reply: "501 5.1.3 ..." for recipients, "501 5.1.7 ..."
 * for senders.
 */
const char *smtp_parse_path(const char *s, const char **rest, struct smtp_addr *out,
                            int allow_null, int allow_utf8, int is_rcpt);

/* Format addr as local@domain (no brackets) into buf; "" for null.
 * Returns the length, or -1 if it does not fit. */
int smtp_addr_format(const struct smtp_addr *a, char *buf, size_t len);

/* Is the domain a syntactically valid hostname (letters, digits, hyphens,
 * dots, labels <= 63, total <= 255; U-labels only when allow_utf8)? */
int smtp_domain_valid(const char *d, int allow_utf8);

/* Does the local part try to route elsewhere (%, !, or @ inside quotes)?
 * mxkeep accepts such a local part only as an opaque mailbox of the served
 * domain, never as a route; policy uses this to refuse them outright. */
int smtp_local_is_route(const char *local);

enum smtp_body { SMTP_BODY_7BIT = 0, SMTP_BODY_8BITMIME, SMTP_BODY_BINARYMIME };
enum smtp_ret { SMTP_RET_NONE = 0, SMTP_RET_FULL, SMTP_RET_HDRS };

struct smtp_mail_params {
    long size;                  /* -1: not given */
    enum smtp_body body;
    int smtputf8;
    enum smtp_ret ret;
    char envid[SMTP_ENVID_MAX + 1];  /* xtext-decoded; "" when not given */
};

#define SMTP_NOTIFY_NEVER   1
#define SMTP_NOTIFY_SUCCESS 2
#define SMTP_NOTIFY_FAILURE 4
#define SMTP_NOTIFY_DELAY   8

struct smtp_rcpt_params {
    int notify;                     /* 0: not given; else a mask of the above */
    char orcpt_type[32];            /* e.g. "rfc822"; "" when not given */
    char orcpt[SMTP_ORCPT_MAX + 1]; /* xtext-decoded address; "" when not given */
};

/*
 * Parse the parameters after the path (s is *rest from smtp_parse_path).
 * Keywords are case-insensitive; each may appear once; unknown keywords get
 * "555 5.5.4 ...".  xtext values are decoded and must not contain CR, LF,
 * NUL or other control characters.  SMTPUTF8 takes no value.  A SIZE too
 * big for a long is LONG_MAX: over any limit, refused by the caller, which
 * knows the limit, as a size (never as a syntax error).
 */
const char *smtp_parse_mail_params(const char *s, struct smtp_mail_params *out);
const char *smtp_parse_rcpt_params(const char *s, struct smtp_rcpt_params *out);

/* Decode xtext (RFC 3461 4) into out (outlen incl. NUL).  Returns the decoded
 * length or -1 on bad syntax, a control octet, or overflow. */
int smtp_xtext_decode(const char *in, size_t inlen, char *out, size_t outlen);
/* Encode for passing on; returns length or -1 on overflow. */
int smtp_xtext_encode(const char *in, char *out, size_t outlen);

/*
 * ETRN argument (RFC 1985): "domain", "@domain" (domain and subdomains) or
 * "#queue".  *kind is 0, '@' or '#'; domain is lower-cased, no trailing dot.
 * Missing argument: "500 5.5.2 ..."; bad syntax: "501 5.5.4 ...".
 */
const char *smtp_parse_etrn(const char *arg, int *kind, char *domain, size_t len);

/* HELO/EHLO argument: a domain or an address literal; anything else
 * "501 5.5.4 ...".  Copied (truncated safely) into out. */
const char *smtp_parse_helo(const char *arg, char *out, size_t len);

/* BDAT argument: "size" [" LAST"].  Sizes beyond max get "552 5.3.4 ...". */
const char *smtp_parse_bdat(const char *arg, long max, long *size, int *last);

#endif
