/*
 * milter_proto.c - the Sendmail milter protocol (version 6, as Postfix
 * implements it) as a pure codec: packet encoders for the commands a client
 * sends, one decoder for the replies a milter sends, and the two checks a
 * client makes on them (the OPTNEG answer, the reply text a milter may put
 * in front of the SMTP client).
 *
 * Owns: nothing but the growable buffer the caller hands to the encoders.
 * Must never: do I/O, log, keep state, or read outside [in, in+len) (the
 * fuzzer t/fuzz/fuzz_milter.c holds it to that).
 * Security: the milter is configured by the operator but is still a peer
 * on a socket; the length field it sends is bounded by the caller's
 * max_len before anything is trusted, and every string must end with its
 * NUL inside the packet.
 */
#include "config.h"
#include "milter_proto.h"

#include <stdlib.h>
#include <string.h>

#define MILTER_HDR_LEN  4           /* the length word before each packet */
#define MILTER_BUF_MIN  256         /* first allocation of a milter_buf */

void milter_buf_free(struct milter_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int buf_reserve(struct milter_buf *b, size_t more)
{
    if (more > SIZE_MAX - b->len)
        return -1;
    size_t need = b->len + more;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : MILTER_BUF_MIN;
    while (cap < need) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    unsigned char *p = realloc(b->data, cap);
    if (!p)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Packet under construction: begin() reserves the header, add*() append
 * data, end() writes the length.  On any failure the buffer is rolled back
 * to where the packet began. */
struct pkt {
    struct milter_buf *b;
    size_t start;
    int err;
};

static void pkt_begin(struct pkt *k, struct milter_buf *b, char cmd)
{
    k->b = b;
    k->start = b->len;
    k->err = 0;
    if (buf_reserve(b, MILTER_HDR_LEN + 1) < 0) {
        k->err = 1;
        return;
    }
    b->len += MILTER_HDR_LEN;
    b->data[b->len++] = (unsigned char)cmd;
}

static void pkt_add(struct pkt *k, const void *p, size_t n)
{
    if (k->err || n == 0)
        return;
    if (buf_reserve(k->b, n) < 0) {
        k->err = 1;
        return;
    }
    memcpy(k->b->data + k->b->len, p, n);
    k->b->len += n;
}

static void pkt_str(struct pkt *k, const char *s)
{
    if (!s)
        s = "";
    pkt_add(k, s, strlen(s) + 1);
}

static void pkt_u32(struct pkt *k, uint32_t v)
{
    unsigned char w[4];
    put32(w, v);
    pkt_add(k, w, sizeof w);
}

static int pkt_end(struct pkt *k)
{
    size_t n = k->err ? 0 : k->b->len - k->start - MILTER_HDR_LEN;
    if (k->err || n > UINT32_MAX) {
        k->b->len = k->start;
        return -1;
    }
    put32(k->b->data + k->start, (uint32_t)n);
    return 0;
}

int milter_proto_optneg(struct milter_buf *b, uint32_t version, uint32_t actions, uint32_t protocol)
{
    struct pkt k;
    pkt_begin(&k, b, SMFIC_OPTNEG);
    pkt_u32(&k, version);
    pkt_u32(&k, actions);
    pkt_u32(&k, protocol);
    return pkt_end(&k);
}

int milter_proto_macro(struct milter_buf *b, char stage, const char *const *names,
                       const char *const *values, size_t n)
{
    struct pkt k;
    pkt_begin(&k, b, SMFIC_MACRO);
    pkt_add(&k, &stage, 1);
    for (size_t i = 0; i < n; i++) {
        const char *name = names[i];
        size_t nl = strlen(name);
        if (nl > 1 && name[0] != '{') {
            pkt_add(&k, "{", 1);
            pkt_add(&k, name, nl);
            pkt_add(&k, "}", 2);        /* with the NUL */
        } else {
            pkt_str(&k, name);
        }
        pkt_str(&k, values[i]);
    }
    return pkt_end(&k);
}

int milter_proto_connect(struct milter_buf *b, const char *hostname, char family,
                         uint16_t port, const char *addr)
{
    struct pkt k;
    pkt_begin(&k, b, SMFIC_CONNECT);
    pkt_str(&k, hostname);
    pkt_add(&k, &family, 1);
    if (family != 'U') {
        unsigned char w[2] = { (unsigned char)(port >> 8), (unsigned char)port };
        pkt_add(&k, w, sizeof w);
        pkt_str(&k, addr);
    }
    return pkt_end(&k);
}

int milter_proto_helo(struct milter_buf *b, const char *name)
{
    struct pkt k;
    pkt_begin(&k, b, SMFIC_HELO);
    pkt_str(&k, name);
    return pkt_end(&k);
}

int milter_proto_args(struct milter_buf *b, char cmd, const char *const *argv, size_t argc)
{
    struct pkt k;
    pkt_begin(&k, b, cmd);
    for (size_t i = 0; i < argc; i++)
        pkt_str(&k, argv[i]);
    return pkt_end(&k);
}

int milter_proto_header(struct milter_buf *b, const char *name, const char *value)
{
    struct pkt k;
    pkt_begin(&k, b, SMFIC_HEADER);
    pkt_str(&k, name);
    pkt_str(&k, value);
    return pkt_end(&k);
}

int milter_proto_body(struct milter_buf *b, const void *chunk, size_t len)
{
    struct pkt k;
    pkt_begin(&k, b, SMFIC_BODY);
    pkt_add(&k, chunk, len);
    return pkt_end(&k);
}

int milter_proto_simple(struct milter_buf *b, char cmd)
{
    struct pkt k;
    pkt_begin(&k, b, cmd);
    return pkt_end(&k);
}

/* ---- decoding ------------------------------------------------------------ */

/* The NUL-terminated string at *p, which must end before `end`; advances
 * *p past the NUL.  NULL if unterminated. */
static const char *take_str(const unsigned char **p, const unsigned char *end)
{
    if (*p >= end)
        return NULL;
    const unsigned char *nul = memchr(*p, '\0', (size_t)(end - *p));
    if (!nul)
        return NULL;
    const char *s = (const char *)*p;
    *p = nul + 1;
    return s;
}

enum milter_parse milter_proto_parse(const unsigned char *in, size_t len, size_t max_len,
                                     struct milter_reply *r, size_t *used, const char **why)
{
    static const char *const empty = "";
    memset(r, 0, sizeof *r);
    *used = 0;
    *why = NULL;
    if (len < MILTER_HDR_LEN)
        return MILTER_PARSE_MORE;
    uint32_t plen = get32(in);
    if (plen == 0) {
        *why = "empty packet";
        return MILTER_PARSE_ERROR;
    }
    if (plen > max_len) {
        *why = "packet too long";
        return MILTER_PARSE_ERROR;
    }
    if (len - MILTER_HDR_LEN < plen)
        return MILTER_PARSE_MORE;
    const unsigned char *p = in + MILTER_HDR_LEN + 1;
    const unsigned char *end = in + MILTER_HDR_LEN + plen;
    r->cmd = (char)in[MILTER_HDR_LEN];
    r->text = r->name = r->value = r->addr = r->args = empty;

    switch (r->cmd) {
    case SMFIC_OPTNEG:
        /* Three words; a version 6 milter may append the macro lists it
         * wants per stage, which we do not use (we send a fixed set). */
        if (end - p < 12) {
            *why = "short OPTNEG";
            return MILTER_PARSE_ERROR;
        }
        r->version = get32(p);
        r->actions = get32(p + 4);
        r->protocol = get32(p + 8);
        break;
    case SMFIR_ACCEPT: case SMFIR_CONTINUE: case SMFIR_DISCARD:
    case SMFIR_REJECT: case SMFIR_TEMPFAIL: case SMFIR_PROGRESS:
    case SMFIR_SKIP: case SMFIR_SHUTDOWN: case SMFIR_CONN_FAIL:
        break;                  /* no data; any that came is ignored */
    case SMFIR_REPLYCODE:
    case SMFIR_QUARANTINE:
        if (!(r->text = take_str(&p, end))) {
            *why = "unterminated reply text";
            return MILTER_PARSE_ERROR;
        }
        break;
    case SMFIR_INSHEADER:
    case SMFIR_CHGHEADER:
        if (end - p < 4) {
            *why = "short header index";
            return MILTER_PARSE_ERROR;
        }
        r->index = get32(p);
        p += 4;
        /* fall through */
    case SMFIR_ADDHEADER:
        if (!(r->name = take_str(&p, end)) || !(r->value = take_str(&p, end))) {
            *why = "unterminated header";
            return MILTER_PARSE_ERROR;
        }
        if (r->name[0] == '\0') {
            *why = "empty header name";
            return MILTER_PARSE_ERROR;
        }
        break;
    case SMFIR_CHGFROM:
    case SMFIR_ADDRCPT_PAR:
    case SMFIR_ADDRCPT:
    case SMFIR_DELRCPT:
        if (!(r->addr = take_str(&p, end))) {
            *why = "unterminated address";
            return MILTER_PARSE_ERROR;
        }
        if ((r->cmd == SMFIR_CHGFROM || r->cmd == SMFIR_ADDRCPT_PAR) && p < end) {
            if (!(r->args = take_str(&p, end))) {
                *why = "unterminated ESMTP arguments";
                return MILTER_PARSE_ERROR;
            }
        }
        break;
    case SMFIR_REPLBODY:
        r->body = p;
        r->body_len = (size_t)(end - p);
        break;
    default:
        *why = "unknown reply";
        return MILTER_PARSE_ERROR;
    }
    *used = MILTER_HDR_LEN + (size_t)plen;
    return MILTER_PARSE_OK;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

int milter_proto_reply_valid(const char *text)
{
    if (!text || !text[0])
        return 0;
    char cls = text[0];
    if (cls != '4' && cls != '5')
        return 0;
    const char *p = text;
    for (;;) {
        if (p[0] != cls || !is_digit(p[1]) || !is_digit(p[2]))
            return 0;
        char sep = p[3];
        if (sep != ' ' && sep != '-' && sep != '\0')
            return 0;
        const char *q = p + (sep ? 4 : 3);
        /* an enhanced code, if the text starts with one, must be of the
         * same class: "x.y.z" with digits */
        if (is_digit(q[0]) && q[1] == '.') {
            if (q[0] != cls)
                return 0;
            const char *e = q + 2;
            int d = 0;
            while (is_digit(*e) && d < 3) { e++; d++; }
            if (d == 0 || *e != '.')
                return 0;
            e++; d = 0;
            while (is_digit(*e) && d < 3) { e++; d++; }
            if (d == 0 || (*e != ' ' && *e != '\0' && *e != '\r'))
                return 0;
        }
        const char *eol = strstr(q, "\r\n");
        /* no bare CR or LF inside a line */
        for (const char *c = q; *c && c != eol; c++)
            if ((unsigned char)*c < 0x20 && *c != '\t')
                return 0;
        if (!eol)
            return sep != '-';
        if (sep != '-')
            return 0;           /* a line after the last one */
        p = eol + 2;
    }
}

int milter_proto_optneg_ok(const struct milter_reply *r, uint32_t actions, uint32_t protocol)
{
    if (r->cmd != SMFIC_OPTNEG)
        return 0;
    if (r->version < 2 || r->version > MILTER_PROTO_VERSION)
        return 0;
    if (r->actions & ~actions)
        return 0;
    if (r->protocol & ~protocol)
        return 0;
    return 1;
}
