/*
 * timearg.h - TIME arguments of mxkeepctl (maintenance --until, replay
 * --since/--until) and of scheduled windows in the config.
 *
 * Accepted forms (everything else is an error with a reason):
 *   absolute, ISO 8601 in UTC:  2026-12-01T06:00:00Z   2026-12-01T06:00Z
 *                               2026-12-01 (midnight UTC)
 *     'T' may be a space or 't', 'Z' may be 'z' or a numeric offset
 *     (+01:00, -0530), which is converted to UTC.
 *   relative to now:            +2h  -30m  +1d12h  +90s  +1w  now
 *     a sign, then one or more <number><unit> with unit s m h d w.
 * Pure: no I/O, no clock, no locale, no time zone database; `now` comes
 * from the caller, so the same input always gives the same answer.
 */
#ifndef MXKEEP_TIMEARG_H
#define MXKEEP_TIMEARG_H

#include <stddef.h>
#include <time.h>

/* Longest accepted argument; longer ones are refused, never truncated. */
#define TIMEARG_MAX_LEN 64
/* Relative offsets and absolute times are bounded so that every result
 * and every later sum of a few of them fits in a time_t comfortably. */
#define TIMEARG_MAX_OFFSET ((long long)100 * 366 * 86400)
#define TIMEARG_MIN_YEAR 1970
#define TIMEARG_MAX_YEAR 9999
/* Size of a formatted time "2026-12-01T06:00:00Z" with its NUL. */
#define TIMEARG_ISO_SIZE 21

/* Parse s relative to now.  Returns 0 and stores the time in *out, or -1
 * with a one-line reason (no trailing newline) in err (if errlen > 0). */
int timearg_parse(const char *s, time_t now, time_t *out, char *err, size_t errlen);

/* Format t as "YYYY-MM-DDTHH:MM:SSZ" (UTC).  Returns buf.  Times outside
 * the accepted year range format as "-". */
char *timearg_format(time_t t, char buf[TIMEARG_ISO_SIZE]);

/* Days since 1970-01-01 of a proleptic Gregorian date (no validation). */
long long timearg_days_from_civil(long long y, unsigned m, unsigned d);

#endif
