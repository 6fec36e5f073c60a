#include "config.h"
/*
 * util.c - ASCII case folding, the FNV-1a hash, the RFC 5322 date.
 *
 * Contract: pure functions of their arguments (util.h).  Owns nothing.
 * Must never consult the locale (tolower() would fold by LC_CTYPE, and a
 * mail server's comparisons must not change with the environment), read
 * past a bound it was given, or allocate.
 */
#include <stdio.h>
#include <time.h>

#include "util.h"

#define FNV_PRIME UINT64_C(1099511628211)

size_t util_lower_copy(char *dst, size_t size, const char *src)
{
    size_t i;

    for (i = 0; src[i] != '\0'; i++)
        if (i + 1 < size)
            dst[i] = util_lower(src[i]);
    if (size > 0)
        dst[i < size ? i : size - 1] = '\0';
    return i;
}

char *util_lower_inplace(char *s)
{
    for (char *p = s; *p; p++)
        *p = util_lower(*p);
    return s;
}

uint64_t util_hash(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;

    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * FNV_PRIME;
    return h;
}

uint64_t util_hash_lower(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)util_lower(s[i])) * FNV_PRIME;
    return h;
}

void util_rfc5322_date(char *out, size_t len, int64_t when)
{
    static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    time_t t = (time_t)when;
    struct tm tm;

    if ((int64_t)t != when || gmtime_r(&t, &tm) == NULL) {
        t = 0;
        gmtime_r(&t, &tm);
    }
    snprintf(out, len, "%s, %d %s %d %02d:%02d:%02d +0000", days[tm.tm_wday % 7], tm.tm_mday,
             months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}
