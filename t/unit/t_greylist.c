/* t_greylist.c - greylisting (greylist.h): the pure decision through a
 * triplet's life (new, early retry, pass, pass-list, retry window and
 * pass-list expiry, clock going back), the versioned record, and the
 * LMDB store: the network as the key, case-insensitive addresses,
 * persistence across close/open, the sweep. */
#include "config.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "greylist.h"
#include "tap.h"

int main(void)
{
    struct conf_greylist c = { .delay = 300, .retry_window = 36 * 3600,
                               .pass_expire = 36 * 86400, .sweep = 3600, .map_size = 1 << 20 };
    struct greylist_rec r;
    long wait;

    memset(&r, 0, sizeof r);
    is_int(greylist_decide(&r, 0, 1000, &c, &wait), GREYLIST_DEFER, "new triplet: defer");
    is_int((int)wait, 300, "... for the whole delay");
    is_int(greylist_decide(&r, 1, 1100, &c, &wait), GREYLIST_DEFER, "retry before the delay: defer");
    is_int((int)wait, 200, "... for what is left of it");
    is_int(greylist_decide(&r, 1, 1300, &c, &wait), GREYLIST_PASS, "retry at the delay: pass");
    ok(r.passed == 1300, "passed time recorded");
    is_int(greylist_decide(&r, 1, 1300 + 35 * 86400, &c, &wait), GREYLIST_PASS,
           "35 days later: still on the pass-list");
    is_int(greylist_decide(&r, 1, 1300 + 35 * 86400 + 36 * 86400, &c, &wait), GREYLIST_PASS,
           "each pass renews it");
    is_int(greylist_decide(&r, 1, 1300 + 35 * 86400 + 73 * 86400, &c, &wait), GREYLIST_DEFER,
           "37 days unseen: greylisted again");

    memset(&r, 0, sizeof r);
    greylist_decide(&r, 0, 5000, &c, &wait);
    is_int(greylist_decide(&r, 1, 5000 + 36 * 3600 + 1, &c, &wait), GREYLIST_DEFER,
           "retried after the retry window: starts over");
    ok(r.first == 5000 + 36 * 3600 + 1, "... with a new first attempt");
    is_int(greylist_decide(&r, 1, 10, &c, &wait), GREYLIST_DEFER, "clock went back: starts over");

    unsigned char buf[64];
    struct greylist_rec a = { 1, 2, 3, 4 }, b;
    size_t n = greylist_encode(&a, buf, sizeof buf);
    ok(n > 0 && buf[0] == GREYLIST_RECORD_VERSION, "record carries its version");
    ok(greylist_decode(buf, n, &b) == 0 && b.first == 1 && b.last == 2 && b.passed == 3 &&
       b.count == 4, "encode/decode round trip");
    buf[0] = 99;
    ok(greylist_decode(buf, n, &b) == -1, "unknown version: not decoded");
    ok(greylist_decode(buf, n - 1, &b) == -1, "short record: not decoded");

    /* the store */
    char dir[] = "/tmp/t_greylist.XXXXXX", err[256], path[300];
    ok(mkdtemp(dir) != NULL, "temp dir");
    snprintf(path, sizeof path, "%s/greylist", dir);
    struct greylist *g = greylist_open(path, (size_t)c.map_size, err, sizeof err);
    ok(g != NULL, "open: %s", g ? "ok" : err);
    unsigned char net[16] = { 192, 0, 2, 0 }, net2[16] = { 198, 51, 100, 0 };
    enum greylist_result res;
    ok(greylist_check(g, &c, AF_INET, net, "s@a.example", "r@b.example", 1000, &res, &wait) == 0 &&
       res == GREYLIST_DEFER, "store: first attempt deferred");
    ok(greylist_check(g, &c, AF_INET, net, "S@A.example", "R@b.EXAMPLE", 1300, &res, &wait) == 0 &&
       res == GREYLIST_PASS, "store: retry after the delay passes (addresses without case)");
    ok(greylist_check(g, &c, AF_INET, net2, "s@a.example", "r@b.example", 1300, &res, &wait) == 0 &&
       res == GREYLIST_DEFER, "another network is another triplet");
    ok(greylist_check(g, &c, AF_INET, net, "t@a.example", "r@b.example", 1300, &res, &wait) == 0 &&
       res == GREYLIST_DEFER, "another sender is another triplet");
    greylist_close(g);
    g = greylist_open(path, (size_t)c.map_size, err, sizeof err);
    ok(g != NULL, "reopened");
    ok(greylist_check(g, &c, AF_INET, net, "s@a.example", "r@b.example", 1400, &res, &wait) == 0 &&
       res == GREYLIST_PASS, "pass-list kept across close and open");
    /* sweep: at 1400 + 36 h + 1 the unpassed ones are past their window */
    is_int((int)greylist_sweep(g, &c, 1400 + 36 * 3600 + 1), 2, "sweep removes the 2 unretried");
    is_int((int)greylist_sweep(g, &c, 1400 + 36 * 3600 + 1), 0, "... and nothing more");
    is_int((int)greylist_sweep(g, &c, 1400 + 37 * 86400), 1, "the passed one after pass_expire");
    greylist_close(g);
    greylist_close(NULL);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ok(system(cmd) == 0, "cleanup");
    return done_testing();
}
