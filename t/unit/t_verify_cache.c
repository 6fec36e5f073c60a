/*
 * t_verify_cache.c - the callout cache's records (vcache_encode/decode,
 * vcache_key: pure) and its LMDB store: put/get, versioned records refused
 * when unknown, forget of an address and of a domain, listing by domain
 * in pages, a full map grown, a read-only open beside a writer.
 */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "tap.h"
#include "verify.h"
#include "verify_cache.h"

static int count_each(void *arg, const struct verify_entry *e)
{
    (void)e;
    (*(int *)arg)++;
    return 0;
}

static int older_than(void *arg, const struct verify_entry *e)
{
    return e->learned < *(const int64_t *)arg;
}

int main(void)
{
    char key[VERIFY_KEY_MAX], err[256], dir[] = "/tmp/t_verify_cache.XXXXXX";
    unsigned char buf[1024];
    struct verify_entry e, g;
    size_t n;

    /* keys */
    is_int(vcache_key("Alice@Example.ORG.", key), 0, "key of a mixed-case address");
    is_str(key, "alice@example.org", "lower case, trailing dot dropped");
    is_int(vcache_key("", key), -1, "empty refused");
    is_int(vcache_key("a b@example.org", key), -1, "space refused");
    memset(buf, 'a', sizeof buf);
    buf[VERIFY_KEY_MAX] = '\0';
    is_int(vcache_key((char *)buf, key), -1, "over-long refused");

    /* records */
    memset(&e, 0, sizeof e);
    snprintf(e.key, sizeof e.key, "bob@example.org");
    e.result = VERIFY_INVALID;
    e.source = VSRC_DELIVERY;
    e.learned = 1700000000;
    snprintf(e.reply, sizeof e.reply, "550 5.1.1 <bob@example.org>: unknown");
    n = vcache_encode(&e, buf, sizeof buf);
    ok(n > 11, "encoded (%zu octets)", n);
    is_int(buf[0], VERIFY_RECORD_V1, "version byte first");
    is_int(vcache_encode(&e, buf, 5), 0, "too small a buffer: 0");
    n = vcache_encode(&e, buf, sizeof buf);
    memset(&g, 0, sizeof g);
    is_int(vcache_decode("bob@example.org", 15, buf, n, &g), 0, "decoded");
    is_int(g.result, VERIFY_INVALID, "result kept");
    is_int(g.source, VSRC_DELIVERY, "source kept");
    is_int(g.learned, 1700000000, "time kept");
    is_str(g.reply, e.reply, "reply kept");
    buf[0] = 99;
    is_int(vcache_decode("bob@example.org", 15, buf, n, &g), -1, "unknown version refused");
    buf[0] = VERIFY_RECORD_V1;
    buf[1] = VERIFY_PENDING;
    is_int(vcache_decode("bob@example.org", 15, buf, n, &g), -1, "a result never stored refused");
    is_int(vcache_decode("bob@example.org", 15, buf, 5, &g), -1, "short record refused");

    /* the store */
    if (mkdtemp(dir) == NULL)
        return 1;
    struct verify_cache *vc = vcache_open(dir, 1024 * 1024, 0, err, sizeof err);
    ok(vc != NULL, "opened (%s)", vc ? "" : err);
    if (vc == NULL)
        return done_testing();
    is_int(vcache_get(vc, "bob@example.org", &g), 0, "empty: not found");
    is_int(vcache_put(vc, &e), 0, "put");
    is_int(vcache_get(vc, "bob@example.org", &g), 1, "found");
    is_str(g.reply, e.reply, "same reply");
    /* Enough records to outgrow a 1 MiB map and to need several pages. */
    int fails = 0;
    for (int i = 0; i < 6000; i++) {
        snprintf(e.key, sizeof e.key, "user%05d@%s", i, i % 2 ? "odd.test" : "even.test");
        e.result = VERIFY_VALID;
        memset(e.reply, 'x', 300);
        e.reply[300] = '\0';
        fails += vcache_put(vc, &e) != 0;
    }
    is_int(fails, 0, "6000 puts past the initial map size: the map grew");
    snprintf(e.key, sizeof e.key, "@odd.test");
    vcache_put(vc, &e);
    int cnt = 0;
    vcache_each(vc, "odd.test", count_each, &cnt);
    is_int(cnt, 3001, "each of a domain: its addresses and its domain record");
    cnt = 0;
    vcache_each(vc, NULL, count_each, &cnt);
    is_int(cnt, 6002, "each of all");

    struct verify_cache *ro = vcache_open(dir, 0, 1, err, sizeof err);
    ok(ro != NULL, "read-only open beside the writer");
    is_int(ro ? vcache_get(ro, "user00002@even.test", &g) : -1, 1, "reader sees the writer's data");
    is_int(ro ? vcache_put(ro, &e) : 0, -1, "read-only refuses writes");
    vcache_close(ro);

    is_int(vcache_forget(vc, "user00002@even.test"), 1, "forget an address");
    is_int(vcache_get(vc, "user00002@even.test", &g), 0, "gone");
    is_int(vcache_forget(vc, "odd.test"), 3001, "forget a domain: every record of it");
    cnt = 0;
    vcache_each(vc, NULL, count_each, &cnt);
    is_int(cnt, 2999 + 1, "the other domain stays");

    /* The sweep: records learned before 1000 are expired.  A small step
     * makes it take several calls, resumed where the last one stopped. */
    int old_n = 0, fails_old = 0;
    for (int i = 0; i < 700; i++) {
        snprintf(e.key, sizeof e.key, "sweep%04d@sweep.test", i);
        e.result = i % 3 ? VERIFY_INVALID : VERIFY_VALID;
        e.learned = i % 2 ? 500 : 5000;
        old_n += i % 2;
        fails_old += vcache_put(vc, &e) != 0;
    }
    is_int(fails_old, 0, "700 records for the sweep");
    char after[VERIFY_KEY_MAX] = "";
    long swept = 0;
    int done = 0, calls = 0;
    int64_t cutoff = 1000;
    while (!done && calls < 1000) {
        long k = vcache_sweep(vc, older_than, &cutoff, after, 97, &done);
        if (k < 0)
            break;
        swept += k;
        calls++;
    }
    ok(done && calls > 1, "the sweep went in steps to the end (%d calls)", calls);
    cnt = 0;
    vcache_each(vc, "sweep.test", count_each, &cnt);
    is_int(swept, old_n + 0, "the sweep deleted the %d expired records of its domain and no others",
           old_n);
    is_int(cnt, 700 - old_n, "the fresh ones stay");
    is_int(vcache_get(vc, "sweep0001@sweep.test", &g), 0, "an expired one is gone");
    is_int(vcache_get(vc, "sweep0002@sweep.test", &g), 1, "a fresh one is there");
    cnt = 0;
    vcache_each(vc, NULL, count_each, &cnt);
    is_int(cnt, 2999 + 1 + (700 - old_n), "other domains' records (learned later) untouched");
    vcache_close(vc);
    vcache_close(NULL);

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        diag("could not remove %s", dir);
    return done_testing();
}
