/*
 * t_qid.c - queue IDs: form, uniqueness, order, time, seeding.
 */
#include "config.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qid.h"
#include "tap.h"

#define NIDS 100000

static int cmp_str(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

int main(void)
{
    char (*ids)[QID_SIZE] = malloc((size_t)NIDS * QID_SIZE);
    time_t before = time(NULL);
    for (int i = 0; i < NIDS; i++)
        qid_next(ids[i]);
    time_t after = time(NULL);

    int bad_len = 0, bad_valid = 0, bad_order = 0;
    for (int i = 0; i < NIDS; i++) {
        bad_len += strlen(ids[i]) != QID_LEN;
        bad_valid += !qid_valid(ids[i]);
        if (i && strcmp(ids[i - 1], ids[i]) >= 0)
            bad_order++;
    }
    is_int(bad_len, 0, "every ID is %d characters", QID_LEN);
    is_int(bad_valid, 0, "every ID is valid");
    is_int(bad_order, 0, "IDs strictly increase in strcmp order");

    char (*sorted)[QID_SIZE] = malloc((size_t)NIDS * QID_SIZE);
    memcpy(sorted, ids, (size_t)NIDS * QID_SIZE);
    qsort(sorted, NIDS, QID_SIZE, cmp_str);
    int dups = 0;
    for (int i = 1; i < NIDS; i++)
        dups += strcmp(sorted[i - 1], sorted[i]) == 0;
    is_int(dups, 0, "no duplicates in %d IDs", NIDS);

    ok(qid_time(ids[0]) >= before && qid_time(ids[0]) <= after, "qid_time of the first ID");
    ok(qid_time(ids[NIDS - 1]) >= before && qid_time(ids[NIDS - 1]) <= after + 1,
       "qid_time of the last ID");

    ok(!qid_valid(""), "empty is invalid");
    ok(!qid_valid(NULL), "NULL is invalid");
    ok(!qid_valid("0123456789A"), "11 characters invalid");
    ok(!qid_valid("0123456789ABC"), "13 characters invalid");
    ok(!qid_valid("0123456789AW"), "W is outside the alphabet");
    ok(!qid_valid("0123456789ab"), "lower case is invalid");
    ok(!qid_valid("../../etc/pa"), "path characters are invalid");
    ok(qid_valid("0123456789AV"), "upper bound of the alphabet is valid");
    is_int(qid_time("000000000000"), 0, "qid_time of zero");
    is_int(qid_time("bogus"), 0, "qid_time of a malformed ID is 0");

    /* Seeding far in the future: the next IDs continue after the seed, as
     * after a restart that follows a clock step back. */
    const char *future = "UVUVUVUVUV00";
    qid_seed(future);
    char a[QID_SIZE], b[QID_SIZE];
    qid_next(a);
    qid_next(b);
    ok(strcmp(a, future) > 0, "after seed: next ID > seed (%s > %s)", a, future);
    ok(strcmp(b, a) > 0, "and keeps increasing (%s > %s)", b, a);
    is_int(qid_time(a), qid_time(future), "same second as the seed while the clock lags");
    /* A seed lower than the last ID changes nothing. */
    qid_seed("000000000001");
    char c[QID_SIZE];
    qid_next(c);
    ok(strcmp(c, b) > 0, "a lower seed does not move the counter back");
    qid_seed("garbage");
    qid_next(a);
    ok(strcmp(a, c) > 0, "a malformed seed is ignored");

    free(ids);
    free(sorted);
    return done_testing();
}
