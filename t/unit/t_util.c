/*
 * t_util.c - util_lower*, util_hash*, util_rfc5322_date.
 */
#include "config.h"
#include <locale.h>
#include <stdint.h>
#include <string.h>

#include "tap.h"
#include "util.h"

int main(void)
{
    char buf[64];

    /* Folding is ASCII only, whatever the locale says. */
    setlocale(LC_ALL, "C.UTF-8");
    is_int(util_lower('A'), 'a', "A folds to a");
    is_int(util_lower('z'), 'z', "z stays");
    is_int((unsigned char)util_lower((char)0xC4), 0xC4, "a UTF-8 octet stays");
    is_int(util_lower_copy(buf, sizeof buf, "MX2.Example.ORG"), 15, "length returned");
    is_str(buf, "mx2.example.org", "copy folded");
    is_int(util_lower_copy(buf, 4, "ABCDEF"), 6, "cut copy returns the full length");
    is_str(buf, "abc", "cut copy is terminated");
    char in[] = "Postmaster@EXAMPLE.org";
    is_str(util_lower_inplace(in), "postmaster@example.org", "in place");

    /* FNV-1a 64 reference values (the published test vectors). */
    ok(util_hash(UTIL_HASH_INIT, "", 0) == UINT64_C(0xcbf29ce484222325), "hash of nothing is the basis");
    ok(util_hash(UTIL_HASH_INIT, "a", 1) == UINT64_C(0xaf63dc4c8601ec8c), "FNV-1a 64 of \"a\"");
    ok(util_hash(UTIL_HASH_INIT, "foobar", 6) == UINT64_C(0x85944171f73967e8), "FNV-1a 64 of \"foobar\"");
    ok(util_hash_lower(UTIL_HASH_INIT, "FooBar", 6) == util_hash(UTIL_HASH_INIT, "foobar", 6),
       "folded hash ignores ASCII case");
    ok(util_hash(util_hash(UTIL_HASH_INIT, "foo", 3), "bar", 3) == util_hash(UTIL_HASH_INIT, "foobar", 6),
       "hash continues across calls");

    util_rfc5322_date(buf, sizeof buf, 0);
    is_str(buf, "Thu, 1 Jan 1970 00:00:00 +0000", "epoch");
    util_rfc5322_date(buf, sizeof buf, INT64_C(1796000000));
    is_str(buf, "Mon, 30 Nov 2026 00:53:20 +0000", "a date this year, UTC (as date -u -d @1796000000)");
    util_rfc5322_date(buf, sizeof buf, INT64_MAX);
    is_str(buf, "Thu, 1 Jan 1970 00:00:00 +0000", "unrepresentable time stays well-formed");
    return done_testing();
}
