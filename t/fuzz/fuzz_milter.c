// fuzz-sources: src/milter_proto.c
/*
 * fuzz_milter.c - libFuzzer target for the milter reply decoder
 * (milter_proto_parse) and the reply-text check (milter_proto_reply_valid).
 * Build: clang -g -fsanitize=fuzzer,address,undefined -Isrc \
 *            t/fuzz/fuzz_milter.c src/milter_proto.c -o /tmp/fz
 * The input is a stream of packets as a milter would send them; it is
 * decoded packet by packet under a small bound, as the client does.
 * Invariants (abort() on violation): OK consumes at least 5 and at most
 * the input and the bound; every string decoded lies inside the input and
 * ends there; MORE consumes nothing and only happens when the declared
 * packet is not all there; a REPLBODY chunk lies inside the packet;
 * re-encoding a decoded header reply and decoding it again round-trips.
 */
#include "config.h"
#include "milter_proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_PACKET 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void inside(const char *s, const uint8_t *lo, const uint8_t *hi)
{
    if (s[0] == '\0' && ((const uint8_t *)s < lo || (const uint8_t *)s >= hi))
        return;                 /* the static empty string */
    if ((const uint8_t *)s < lo || (const uint8_t *)s >= hi)
        abort();
    if (!memchr(s, '\0', (size_t)(hi - (const uint8_t *)s)))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly `size` octets, so ASan sees any over-read */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    size_t off = 0;
    while (off < size) {
        struct milter_reply r;
        size_t used;
        const char *why;
        const uint8_t *p = buf + off;
        size_t left = size - off;
        enum milter_parse st = milter_proto_parse(p, left, FUZZ_MAX_PACKET, &r, &used, &why);
        if (st == MILTER_PARSE_MORE) {
            if (used != 0)
                abort();
            if (left >= 4) {
                uint32_t l = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
                if (left - 4 >= l)
                    abort();
            }
            break;
        }
        if (st == MILTER_PARSE_ERROR) {
            if (!why)
                abort();
            break;
        }
        if (used < 5 || used > left || used > FUZZ_MAX_PACKET + 4)
            abort();
        const uint8_t *hi = p + used;
        inside(r.text, p, hi);
        inside(r.name, p, hi);
        inside(r.value, p, hi);
        inside(r.addr, p, hi);
        inside(r.args, p, hi);
        if (r.body && (r.body < p || r.body + r.body_len > hi))
            abort();
        if (r.cmd == SMFIR_REPLYCODE)
            (void)milter_proto_reply_valid(r.text);
        if (r.cmd == SMFIR_ADDHEADER) {
            struct milter_buf b = { 0 };
            /* a header reply has the same layout as the header command */
            if (milter_proto_header(&b, r.name, r.value) == 0) {
                b.data[4] = SMFIR_ADDHEADER;
                struct milter_reply r2;
                size_t u2;
                const char *w2;
                if (milter_proto_parse(b.data, b.len, FUZZ_MAX_PACKET, &r2, &u2, &w2) != MILTER_PARSE_OK ||
                    strcmp(r2.name, r.name) || strcmp(r2.value, r.value))
                    abort();
            }
            milter_buf_free(&b);
        }
        off += used;
    }
    /* the whole input as reply text too */
    char *s = malloc(size + 1);
    if (s) {
        memcpy(s, data, size);
        s[size] = '\0';
        (void)milter_proto_reply_valid(s);
        free(s);
    }
    free(buf);
    return 0;
}
