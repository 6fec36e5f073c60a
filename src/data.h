/*
 * data.h - pure DATA / BDAT content parser.
 *
 * Turns the octets a client sends after 354 (DATA) or inside BDAT chunks
 * into the message as we store it: CRLF line ends only, dot-unstuffed, with
 * the end of data found exactly once.  It also scans the header for the
 * header limits and the Received count (loop detection) and counts octets
 * for the size limit.  No I/O: output goes to a caller's callback.
 *
 * SMTP smuggling (CVE-2023-51764/5/6): in DATA mode the ONLY end of data is
 * <CRLF>.<CRLF> where both line ends are real CRLF pairs.  A "." line that
 * starts or ends with a bare LF or bare CR is content.  With
 * BARE_NL_NORMALIZE every bare LF, bare CR and CR LF becomes CRLF in the
 * output, so what we relay never carries a lone LF/CR for a downstream
 * server to misread; with BARE_NL_REJECT the message is marked
 * DATA_BARE_NEWLINE (parsing goes on to the real end so the session stays
 * in sync) and the caller refuses it.
 *
 * Ownership: data_new() returns a parser the caller owns; data_free()
 * accepts NULL.  The parser holds no pointer into caller buffers between
 * calls.
 */
#ifndef MXKEEP_DATA_H
#define MXKEEP_DATA_H

#include <stddef.h>
#include "conf.h"

enum data_status {
    DATA_OK = 0,
    DATA_BARE_NEWLINE,      /* reject mode saw a bare CR or LF: 550 5.5.2 */
    DATA_HEADER_TOO_BIG,    /* header octets or lines over the limit: 552 5.3.4 */
    DATA_LOOP,              /* more Received headers than allowed: 554 5.4.6 */
    DATA_TOO_BIG,           /* message over max_size: 552 5.3.4 */
    DATA_WRITE_ERROR        /* the output callback failed: 451 4.3.0 */
};

struct data_limits {
    enum bare_newline bare_newline;
    long max_size;          /* output octets; 0 = no limit */
    long header_size;       /* 0 = no limit */
    long header_lines;      /* 0 = no limit */
    long received_max;      /* 0 = no limit */
};

/* Output callback: append n octets of message.  Return 0, or -1 on a write
 * failure (the parser then stops calling it and reports DATA_WRITE_ERROR). */
typedef int (*data_out_fn)(void *arg, const char *buf, size_t n);

struct data_parser;

/* New parser.  bdat: 1 for BDAT chunks (no dot handling, no end marker),
 * 0 for DATA.  lim is copied.  Returns NULL on out of memory. */
struct data_parser *data_new(const struct data_limits *lim, int bdat);
void data_free(struct data_parser *p);

/*
 * Feed octets.  DATA mode: consumes up to and including the end-of-data
 * line and returns how many octets it consumed; octets after it (pipelined
 * commands) are the caller's.  BDAT mode: consumes everything.  Once the
 * status is not DATA_OK, output stops but parsing goes on (so the end of
 * data is still found).
 */
size_t data_feed(struct data_parser *p, const char *buf, size_t len,
                 data_out_fn out, void *arg);

/* DATA mode: has the end of data been seen? */
int data_done(const struct data_parser *p);

/* BDAT LAST (or DATA end): flush what is held back (a trailing CR), and
 * make sure the stored message ends with CRLF.  Returns data_status(). */
enum data_status data_finish(struct data_parser *p, data_out_fn out, void *arg);

enum data_status data_status(const struct data_parser *p);
long data_size(const struct data_parser *p);          /* octets output so far */
long data_received_count(const struct data_parser *p);
int data_dkim_signatures(const struct data_parser *p); /* DKIM-Signature fields */
int data_has_8bit(const struct data_parser *p);       /* any octet >= 0x80 */
int data_bare_newlines(const struct data_parser *p);  /* count normalized */

#endif
