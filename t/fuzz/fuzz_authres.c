// fuzz-sources: src/authres.c
/*
 * fuzz_authres.c - libFuzzer target for the Authentication-Results filter
 * and formatter (authres.c), on the header sections a peer controls.
 * Invariants (abort() on violation): the filter never writes more than it
 * read, and its output is the input with whole fields left out (so a
 * second pass removes nothing more); no field of another authserv-id is
 * removed; everything after the first empty line is kept byte for byte;
 * a resinfo built from the input as a peer value formats into a header
 * whose only authserv-id is ours and that contains no bare CR or LF but
 * its folds.
 */
#include "config.h"
#include "authres.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ID "mx2.example.net"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    char *out = malloc(size + 1), *out2 = malloc(size + 1);
    int removed, removed2;
    if (!out || !out2)
        abort();
    size_t n = authres_filter(in, size, ID, out, &removed);
    if (n > size || (removed == 0 && (n != size || memcmp(in, out, size) != 0)))
        abort();
    size_t n2 = authres_filter(out, n, ID, out2, &removed2);
    if (removed2 != 0 || n2 != n || memcmp(out, out2, n) != 0)
        abort();
    /* the body (after the first empty line) is kept */
    for (size_t i = 0; i + 1 < size; i++) {
        size_t hdr = 0;
        if (in[i] == '\n' && in[i + 1] == '\n')
            hdr = i + 1;
        else if (in[i] == '\n' && i + 2 < size && in[i + 1] == '\r' && in[i + 2] == '\n')
            hdr = i + 1;
        else
            continue;
        size_t tail = size - hdr;
        if (n < tail || memcmp(out + n - tail, in + hdr, tail) != 0)
            abort();
        break;
    }
    /* the input as a peer value */
    char val[300], res[AUTHRES_RESINFO_MAX] = "", hdr[AUTHRES_HEADER_MAX];
    size_t vl = size < sizeof val - 1 ? size : sizeof val - 1;
    memcpy(val, data, vl);
    val[vl] = '\0';
    if (authres_add2(res, sizeof res, "dkim", "pass", "header.d", val, "header.s", val) == 0) {
        int hl = authres_format(ID, res, hdr, sizeof hdr);
        if (hl > 0) {
            for (int i = 0; i < hl; i++)
                if ((hdr[i] == '\r' && hdr[i + 1] != '\n') ||
                    (hdr[i] == '\n' && i + 1 < hl && hdr[i + 1] != '\t'))
                    abort();
            char id[256];
            const char *colon = strchr(hdr, ':');
            if (authres_field_id(colon + 1, (size_t)(hdr + hl - colon - 1), id, sizeof id) < 0 ||
                strcmp(id, ID) != 0)
                abort();
        }
    }
    free(out);
    free(out2);
    return 0;
}
