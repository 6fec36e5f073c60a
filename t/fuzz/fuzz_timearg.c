// fuzz-sources: src/timearg.c
/*
 * fuzz_timearg.c - libFuzzer target for TIME arguments (timearg.c), the
 * strings an operator passes to mxkeepctl maintenance/replay.
 * Invariants (abort() on violation): a refusal leaves *out alone and says
 * why; an accepted relative time is within TIMEARG_MAX_OFFSET of now; an
 * accepted absolute time formats to an ISO string that parses back to the
 * same time (whatever now is).
 */
#include "config.h"
#include "timearg.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW ((time_t)1796040000)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char s[TIMEARG_MAX_LEN * 2], err[160], iso[TIMEARG_ISO_SIZE];
    size_t n = size < sizeof s - 1 ? size : sizeof s - 1;
    memcpy(s, data, n);
    s[n] = '\0';
    time_t t = 42, t2 = 0;
    if (timearg_parse(s, NOW, &t, err, sizeof err) < 0) {
        if (t != 42 || err[0] == '\0')
            abort();
        return 0;
    }
    if (s[0] == '+' || s[0] == '-' || strcmp(s, "now") == 0) {
        long long d = (long long)t - (long long)NOW;
        if (d > TIMEARG_MAX_OFFSET || d < -TIMEARG_MAX_OFFSET)
            abort();
        return 0;
    }
    timearg_format(t, iso);
    if (strcmp(iso, "-") == 0)
        return 0; /* an offset moved it just outside the year range */
    if (timearg_parse(iso, 0, &t2, err, sizeof err) != 0 || t2 != t)
        abort();
    return 0;
}
