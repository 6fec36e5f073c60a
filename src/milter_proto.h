/*
 * milter_proto.h - a pure codec of the Sendmail milter protocol, version 6
 * as Postfix speaks it (the client side: we send SMFIC_* commands and read
 * SMFIR_* replies).  No I/O, no globals; encoders append to a caller-owned
 * growable buffer, the decoder reads caller memory and points into it.
 * Unit-tested (t/unit/t_milter_proto.c) and fuzzed (t/fuzz/fuzz_milter.c).
 *
 * Wire form of every packet: a 4-octet big-endian length, then one command
 * octet, then length-1 octets of data.  Strings in the data are
 * NUL-terminated.
 */
#ifndef MXKEEP_MILTER_PROTO_H
#define MXKEEP_MILTER_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define MILTER_PROTO_VERSION 6

/* Commands (client -> milter). */
#define SMFIC_ABORT    'A'
#define SMFIC_BODY     'B'
#define SMFIC_CONNECT  'C'
#define SMFIC_MACRO    'D'
#define SMFIC_BODYEOB  'E'
#define SMFIC_HELO     'H'
#define SMFIC_QUIT_NC  'K'
#define SMFIC_HEADER   'L'
#define SMFIC_MAIL     'M'
#define SMFIC_EOH      'N'
#define SMFIC_OPTNEG   'O'
#define SMFIC_QUIT     'Q'
#define SMFIC_RCPT     'R'
#define SMFIC_DATA     'T'
#define SMFIC_UNKNOWN  'U'

/* Replies (milter -> client). */
#define SMFIR_ADDRCPT     '+'
#define SMFIR_DELRCPT     '-'
#define SMFIR_ADDRCPT_PAR '2'
#define SMFIR_SHUTDOWN    '4'
#define SMFIR_ACCEPT      'a'
#define SMFIR_REPLBODY    'b'
#define SMFIR_CONTINUE    'c'
#define SMFIR_DISCARD     'd'
#define SMFIR_CHGFROM     'e'
#define SMFIR_CONN_FAIL   'f'
#define SMFIR_ADDHEADER   'h'
#define SMFIR_INSHEADER   'i'
#define SMFIR_SETSYMLIST  'l'
#define SMFIR_CHGHEADER   'm'
#define SMFIR_PROGRESS    'p'
#define SMFIR_QUARANTINE  'q'
#define SMFIR_REJECT      'r'
#define SMFIR_SKIP        's'
#define SMFIR_TEMPFAIL    't'
#define SMFIR_REPLYCODE   'y'

/* Actions the client allows (SMFIC_OPTNEG, second word). */
#define SMFIF_ADDHDRS     0x0001u
#define SMFIF_CHGBODY     0x0002u
#define SMFIF_ADDRCPT     0x0004u
#define SMFIF_DELRCPT     0x0008u
#define SMFIF_CHGHDRS     0x0010u
#define SMFIF_QUARANTINE  0x0020u
#define SMFIF_CHGFROM     0x0040u
#define SMFIF_ADDRCPT_PAR 0x0080u
#define SMFIF_SETSYMLIST  0x0100u
#define SMFIF_ALL         0x01ffu

/* Protocol flags (SMFIC_OPTNEG, third word): steps the milter does not
 * want, and steps it will not answer. */
#define SMFIP_NOCONNECT   0x000001u
#define SMFIP_NOHELO      0x000002u
#define SMFIP_NOMAIL      0x000004u
#define SMFIP_NORCPT      0x000008u
#define SMFIP_NOBODY      0x000010u
#define SMFIP_NOHDRS      0x000020u
#define SMFIP_NOEOH       0x000040u
#define SMFIP_NR_HDR      0x000080u
#define SMFIP_NOUNKNOWN   0x000100u
#define SMFIP_NODATA      0x000200u
#define SMFIP_SKIP        0x000400u
#define SMFIP_RCPT_REJ    0x000800u
#define SMFIP_NR_CONN     0x001000u
#define SMFIP_NR_HELO     0x002000u
#define SMFIP_NR_MAIL     0x004000u
#define SMFIP_NR_RCPT     0x008000u
#define SMFIP_NR_DATA     0x010000u
#define SMFIP_NR_UNKN     0x020000u
#define SMFIP_NR_EOH      0x040000u
#define SMFIP_NR_BODY     0x080000u
#define SMFIP_HDR_LEADSPC 0x100000u
/* What Postfix offers in version 6 (everything but the leading-space
 * header form, which we do not implement). */
#define SMFIP_CLIENT_ALL  0x0fffffu

/* Macro stages for SMFIC_MACRO are named by the command they precede. */

/* A growable output buffer; the caller frees .data. */
struct milter_buf {
    unsigned char *data;
    size_t len, cap;
};
void milter_buf_free(struct milter_buf *b);

/* Encoders: append one packet; 0 on success, -1 on allocation failure or a
 * packet longer than the protocol's 32-bit length. */
int milter_proto_optneg(struct milter_buf *b, uint32_t version, uint32_t actions, uint32_t protocol);
/* names[i] / values[i] for i < n; a name is sent as "{name}" unless it is a
 * single character or already braced. */
int milter_proto_macro(struct milter_buf *b, char stage, const char *const *names,
                       const char *const *values, size_t n);
/* family: '4', '6', 'L' (unix), 'U' (unknown: no port/address follow). */
int milter_proto_connect(struct milter_buf *b, const char *hostname, char family,
                         uint16_t port, const char *addr);
int milter_proto_helo(struct milter_buf *b, const char *name);
/* MAIL / RCPT: argv[0] is "<addr>", then ESMTP parameters. */
int milter_proto_args(struct milter_buf *b, char cmd, const char *const *argv, size_t argc);
int milter_proto_header(struct milter_buf *b, const char *name, const char *value);
int milter_proto_body(struct milter_buf *b, const void *chunk, size_t len);
/* EOH, EOM (BODYEOB), ABORT, QUIT, DATA: no data. */
int milter_proto_simple(struct milter_buf *b, char cmd);

/* Decoding replies. */
enum milter_parse {
    MILTER_PARSE_MORE = 0,      /* need more input */
    MILTER_PARSE_OK,            /* one reply decoded; *used octets consumed */
    MILTER_PARSE_ERROR          /* protocol error: drop the milter */
};

struct milter_reply {
    char cmd;                   /* SMFIR_* or SMFIC_OPTNEG */
    /* SMFIC_OPTNEG */
    uint32_t version, actions, protocol;
    /* SMFIR_REPLYCODE: the full reply text (code, enhanced code, text,
     * possibly multi-line with CRLF); SMFIR_QUARANTINE: the reason. */
    const char *text;
    /* header operations: index (chg/ins), name, value */
    uint32_t index;
    const char *name, *value;
    /* chgfrom, addrcpt(_par), delrcpt: address, optional ESMTP args */
    const char *addr, *args;
    /* SMFIR_REPLBODY chunk */
    const unsigned char *body;
    size_t body_len;
};

/*
 * Decode one reply packet from in[0..len).  max_len bounds the packet
 * length field: a longer packet is a protocol error, never a big
 * allocation.  On MILTER_PARSE_ERROR, *why names the reason.  Pointers in
 * *r point into `in` (or to static empty strings) and live as long as it.
 */
enum milter_parse milter_proto_parse(const unsigned char *in, size_t len, size_t max_len,
                                     struct milter_reply *r, size_t *used, const char **why);

/*
 * Is text a reply a milter may give the SMTP client: each line "4xx" or
 * "5xx" with ' ' (last) or '-' between lines separated by CRLF, the same
 * first digit on every line, and an enhanced code, if present, whose class
 * matches (4.x.x for 4xx, 5.x.x for 5xx)?  1 yes, 0 no.
 */
int milter_proto_reply_valid(const char *text);

/* Postfix's rule for the OPTNEG answer: version 2..6, the milter asks for
 * no actions and no protocol steps we did not offer.  1 yes, 0 no. */
int milter_proto_optneg_ok(const struct milter_reply *r, uint32_t actions, uint32_t protocol);

#endif
