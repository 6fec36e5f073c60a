/*
 * timearg.c - parse and format TIME arguments (see timearg.h).
 *
 * Owns: nothing; every function is pure.
 * Never: reads the clock, the environment (TZ), the locale or any file;
 * allocates; writes past the buffers it is given.
 * Security: the input comes from an operator's command line or the
 * config, and reaches the daemon over the control socket: every number is
 * bounded before it is multiplied, so no input overflows a time_t.
 */
#include "config.h"
#include "timearg.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define SECS_PER_MIN  60LL
#define SECS_PER_HOUR 3600LL
#define SECS_PER_DAY  86400LL
#define SECS_PER_WEEK (7 * SECS_PER_DAY)

static int __attribute__((format(printf, 3, 4)))
timearg_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Howard Hinnant's days_from_civil: exact for every proleptic Gregorian
 * date, no table, no time zone. */
long long timearg_days_from_civil(long long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static void timearg_civil_from_days(long long z, long long *y, unsigned *m, unsigned *d)
{
    z += 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (long long)yoe + era * 400 + (*m <= 2);
}

static int timearg_is_leap(long long y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned timearg_month_days(long long y, unsigned m)
{
    static const unsigned days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && timearg_is_leap(y) ? 29 : days[m - 1];
}

/* Exactly n decimal digits at *p; advances *p. */
static int timearg_digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

static int timearg_relative(const char *s, time_t now, time_t *out, char *err, size_t errlen)
{
    int sign = *s == '-' ? -1 : 1;
    const char *p = s + 1;
    long long total = 0;
    if (!*p)
        return timearg_fail(err, errlen, "\"%s\": a number and a unit (s, m, h, d, w) must follow the sign", s);
    while (*p) {
        if (*p < '0' || *p > '9')
            return timearg_fail(err, errlen, "\"%s\": expected a number at \"%s\"", s, p);
        long long n = 0;
        while (*p >= '0' && *p <= '9') {
            n = n * 10 + (*p - '0');
            if (n > TIMEARG_MAX_OFFSET)
                return timearg_fail(err, errlen, "\"%s\": offset too large", s);
            p++;
        }
        long long unit;
        switch (*p) {
        case 's': unit = 1; break;
        case 'm': unit = SECS_PER_MIN; break;
        case 'h': unit = SECS_PER_HOUR; break;
        case 'd': unit = SECS_PER_DAY; break;
        case 'w': unit = SECS_PER_WEEK; break;
        case '\0':
            return timearg_fail(err, errlen, "\"%s\": a unit (s, m, h, d, w) must follow %lld", s, n);
        default:
            return timearg_fail(err, errlen, "\"%s\": unknown unit '%c' (use s, m, h, d, w)", s, *p);
        }
        p++;
        /* n <= MAX_OFFSET and unit <= a week: the product fits easily */
        total += n * unit;
        if (total > TIMEARG_MAX_OFFSET)
            return timearg_fail(err, errlen, "\"%s\": offset too large", s);
    }
    *out = (time_t)((long long)now + sign * total);
    return 0;
}

static int timearg_absolute(const char *s, time_t *out, char *err, size_t errlen)
{
    const char *p = s;
    int y, mo, d, h = 0, mi = 0, sec = 0;
    if (timearg_digits(&p, 4, &y) < 0 || *p++ != '-' || timearg_digits(&p, 2, &mo) < 0 ||
        *p++ != '-' || timearg_digits(&p, 2, &d) < 0)
        return timearg_fail(err, errlen, "\"%s\": not a time (use 2026-12-01T06:00:00Z, +2h or -30m)", s);
    if (y < TIMEARG_MIN_YEAR || y > TIMEARG_MAX_YEAR)
        return timearg_fail(err, errlen, "\"%s\": year out of range %d-%d", s, TIMEARG_MIN_YEAR, TIMEARG_MAX_YEAR);
    if (mo < 1 || mo > 12)
        return timearg_fail(err, errlen, "\"%s\": no month %02d", s, mo);
    if (d < 1 || (unsigned)d > timearg_month_days(y, (unsigned)mo))
        return timearg_fail(err, errlen, "\"%s\": no day %02d in %04d-%02d", s, d, y, mo);
    long long offset = 0;
    if (*p) {
        if (*p != 'T' && *p != 't' && *p != ' ')
            return timearg_fail(err, errlen, "\"%s\": expected 'T' after the date", s);
        p++;
        if (timearg_digits(&p, 2, &h) < 0 || *p++ != ':' || timearg_digits(&p, 2, &mi) < 0)
            return timearg_fail(err, errlen, "\"%s\": expected HH:MM after 'T'", s);
        if (*p == ':') {
            p++;
            if (timearg_digits(&p, 2, &sec) < 0)
                return timearg_fail(err, errlen, "\"%s\": expected two digits of seconds", s);
        }
        if (h > 23 || mi > 59 || sec > 60)
            return timearg_fail(err, errlen, "\"%s\": no time of day %02d:%02d:%02d", s, h, mi, sec);
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p == '-' ? -1 : 1, oh, om;
            p++;
            if (timearg_digits(&p, 2, &oh) < 0)
                return timearg_fail(err, errlen, "\"%s\": bad UTC offset", s);
            if (*p == ':')
                p++;
            if (timearg_digits(&p, 2, &om) < 0 || oh > 23 || om > 59)
                return timearg_fail(err, errlen, "\"%s\": bad UTC offset", s);
            offset = sign * (oh * SECS_PER_HOUR + om * SECS_PER_MIN);
        } else if (*p == '\0') {
            return timearg_fail(err, errlen, "\"%s\": add 'Z' (times are UTC) or an offset such as +01:00", s);
        } else {
            return timearg_fail(err, errlen, "\"%s\": unexpected \"%s\" after the time", s, p);
        }
        if (*p)
            return timearg_fail(err, errlen, "\"%s\": unexpected \"%s\" after the time", s, p);
    }
    long long t = timearg_days_from_civil(y, (unsigned)mo, (unsigned)d) * SECS_PER_DAY +
                  h * SECS_PER_HOUR + mi * SECS_PER_MIN + sec - offset;
    *out = (time_t)t;
    return 0;
}

int timearg_parse(const char *s, time_t now, time_t *out, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!s || !*s)
        return timearg_fail(err, errlen, "empty time (use 2026-12-01T06:00:00Z, +2h or -30m)");
    size_t len = strnlen(s, TIMEARG_MAX_LEN + 1);
    if (len > TIMEARG_MAX_LEN)
        return timearg_fail(err, errlen, "time longer than %d characters", TIMEARG_MAX_LEN);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
            return timearg_fail(err, errlen, "time contains a control or non-ASCII character");
    if (strcmp(s, "now") == 0) {
        *out = now;
        return 0;
    }
    if (s[0] == '+' || s[0] == '-')
        return timearg_relative(s, now, out, err, errlen);
    return timearg_absolute(s, out, err, errlen);
}

char *timearg_format(time_t t, char buf[TIMEARG_ISO_SIZE])
{
    long long tt = (long long)t;
    long long days = (tt >= 0 ? tt : tt - (SECS_PER_DAY - 1)) / SECS_PER_DAY;
    long long rem = tt - days * SECS_PER_DAY;
    long long y;
    unsigned m, d;
    timearg_civil_from_days(days, &y, &m, &d);
    if (y < TIMEARG_MIN_YEAR || y > TIMEARG_MAX_YEAR) {
        strcpy(buf, "-");
        return buf;
    }
    /* the bounds (already true) let the compiler see the output fits */
    unsigned r = (unsigned)rem;
    snprintf(buf, TIMEARG_ISO_SIZE, "%04u-%02u-%02uT%02u:%02u:%02uZ", (unsigned)y % 10000,
             m % 13, d % 32, r / 3600 % 24, r / 60 % 60, r % 60);
    return buf;
}
