/*
 * t_timearg.c - TIME arguments: the absolute ISO 8601 UTC forms, relative
 * offsets from a given now, the errors for everything else, and the
 * formatter round trip.
 */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "timearg.h"
#include "tap.h"

/* 2026-11-30T12:00:00Z */
#define NOW ((time_t)1796040000)

static void good(const char *s, time_t want)
{
    time_t t = 0;
    char err[128] = "";
    int rc = timearg_parse(s, NOW, &t, err, sizeof err);
    if (!ok(rc == 0 && t == want, "\"%s\" parses", s))
        diag("  rc %d, got %lld, want %lld, err \"%s\"", rc, (long long)t, (long long)want, err);
}

static void bad(const char *s, const char *why)
{
    time_t t = 12345;
    char err[128] = "";
    int rc = timearg_parse(s, NOW, &t, err, sizeof err);
    char shown[80] = "(null)";
    if (s) { /* the TAP line must stay one line */
        snprintf(shown, sizeof shown, "%s", s);
        for (char *c = shown; *c; c++)
            if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
                *c = '?';
    }
    if (!ok(rc == -1 && t == 12345 && strstr(err, why), "\"%s\" refused: %s", shown, why))
        diag("  rc %d, err \"%s\"", rc, err);
}

int main(void)
{
    char buf[TIMEARG_ISO_SIZE];
    is_str(timearg_format(NOW, buf), "2026-11-30T12:00:00Z", "NOW is what the test thinks it is");

    good("2026-12-01T06:00:00Z", NOW + 18 * 3600);
    good("2026-12-01T06:00Z", NOW + 18 * 3600);
    good("2026-12-01t06:00:00z", NOW + 18 * 3600);
    good("2026-12-01 06:00:00Z", NOW + 18 * 3600);
    good("2026-12-01", NOW + 12 * 3600);
    good("2026-12-01T07:00:00+01:00", NOW + 18 * 3600);
    good("2026-12-01T00:30:00-0530", NOW + 18 * 3600);
    good("1970-01-01T00:00:00Z", 0);
    good("2024-02-29T00:00:00Z", 1709164800);
    good("2000-03-01T00:00:00Z", 951868800);
    good("now", NOW);
    good("+2h", NOW + 7200);
    good("-30m", NOW - 1800);
    good("+1d12h", NOW + 36 * 3600);
    good("+90s", NOW + 90);
    good("+1w", NOW + 7 * 86400);
    good("+0s", NOW);
    good("+1h30m15s", NOW + 5415);

    bad(NULL, "empty");
    bad("", "empty");
    bad("+", "must follow the sign");
    bad("-", "must follow the sign");
    bad("+2", "a unit");
    bad("+2x", "unknown unit 'x'");
    bad("+h", "expected a number");
    bad("+2h-3m", "expected a number");
    bad("2h", "not a time");
    bad("tomorrow", "not a time");
    bad("2026-12-01T06:00:00", "add 'Z'");
    bad("2026-12-01T06", "HH:MM");
    bad("2026-13-01T06:00Z", "no month 13");
    bad("2026-02-29T06:00Z", "no day 29");
    bad("2026-04-31", "no day 31");
    bad("2026-12-01T24:00Z", "no time of day");
    bad("2026-12-01T06:60Z", "no time of day");
    bad("2026-12-01T06:00:00ZZ", "unexpected");
    bad("2026-12-01T06:00:00Z ", "unexpected");
    bad("2026-12-01X", "expected 'T'");
    bad("1969-12-31T23:59:59Z", "year out of range");
    bad("26-12-01", "not a time");
    bad("+99999999999999999999d", "too large");
    bad("+36700d", "too large");
    bad("+1000000w", "too large");
    bad("2026-12-01T06:00:00+25:00", "bad UTC offset");
    bad("+2h\n", "control");
    bad("2026-12-01T06:00:00Z\xc3\xa9", "non-ASCII");
    bad("+1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h", "longer than");

    /* an error with no room for the reason still fails cleanly */
    time_t t = 7;
    ok(timearg_parse("bogus", NOW, &t, NULL, 0) == -1 && t == 7, "no error buffer: still refused");

    /* formatter: round trip over a spread of times, every day of 2028 */
    int bad_rt = 0;
    time_t base = 1830297600; /* 2028-01-01 */
    for (int i = 0; i < 366; i++) {
        time_t x = base + (time_t)i * 86400 + (time_t)i * 97 % 86400, y = 0;
        timearg_format(x, buf);
        if (timearg_parse(buf, 0, &y, NULL, 0) != 0 || y != x)
            bad_rt++;
    }
    is_int(bad_rt, 0, "format then parse gives the same time, every day of a leap year");
    is_str(timearg_format((time_t)-1, buf), "-", "a time before 1970 formats as -");
    is_str(timearg_format((time_t)951782400, buf), "2000-02-29T00:00:00Z", "leap day 2000");
    return done_testing();
}
