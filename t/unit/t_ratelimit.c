/* t_ratelimit.c - the per-client counting core (ratelimit.h): windows,
 * limits, keys kept apart, bounded table with least-recently-seen
 * eviction, network prefixes. */
#include "config.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include "ratelimit.h"
#include "tap.h"

static void v4(const char *s, unsigned char out[16])
{
    memset(out, 0, 16);
    inet_pton(AF_INET, s, out);
}

int main(void)
{
    struct ratelimit *rl = ratelimit_new(4);
    unsigned char a[16], b[16], n[16];
    v4("192.0.2.1", a);
    v4("192.0.2.2", b);

    /* counts up to the limit in one window, then refuses without counting */
    for (int i = 1; i <= 3; i++)
        is_int((int)ratelimit_hit(rl, RL_MAIL, a, 4, 1000, 60, 3), i, "hit %d counted", i);
    is_int((int)ratelimit_hit(rl, RL_MAIL, a, 4, 1010, 60, 3), 4, "4th in window is over (limit+1)");
    is_int((int)ratelimit_hit(rl, RL_MAIL, a, 4, 1059, 60, 3), 4, "still over at the window's end");
    is_int((int)ratelimit_hit(rl, RL_MAIL, a, 4, 1060, 60, 3), 1, "new window starts counting at 1");
    /* kinds and addresses are separate keys */
    is_int((int)ratelimit_hit(rl, RL_RCPT, a, 4, 1060, 60, 3), 1, "another kind, own count");
    is_int((int)ratelimit_hit(rl, RL_MAIL, b, 4, 1060, 60, 3), 1, "another address, own count");
    /* limit 0: counting only */
    for (int i = 0; i < 10; i++)
        ratelimit_hit(rl, RL_CONNECT, b, 4, 1060, 60, 0);
    is_int((int)ratelimit_hit(rl, RL_CONNECT, b, 4, 1060, 60, 0), 11, "limit 0 never refuses");
    is_int((int)ratelimit_size(rl), 4, "4 keys");

    /* bounded: a fifth key evicts the least recently seen (RL_MAIL a at
     * 1060 was touched before RCPT a... order: MAIL a, RCPT a, MAIL b,
     * CONNECT b; touch MAIL a again so RCPT a is the oldest) */
    ratelimit_hit(rl, RL_MAIL, a, 4, 1061, 60, 3);
    unsigned char c[16];
    v4("198.51.100.7", c);
    is_int((int)ratelimit_hit(rl, RL_MAIL, c, 4, 1061, 60, 3), 1, "new key counted");
    is_int((int)ratelimit_size(rl), 4, "table stays at its bound");
    is_int((int)ratelimit_hit(rl, RL_MAIL, a, 4, 1061, 60, 3), 3, "recently seen key kept its count");
    is_int((int)ratelimit_hit(rl, RL_RCPT, a, 4, 1061, 60, 3), 1, "oldest key was evicted, counts anew");

    /* a clock that goes back restarts the window instead of wedging */
    is_int((int)ratelimit_hit(rl, RL_RCPT, a, 4, 10, 60, 3), 1, "clock back: new window");
    ratelimit_free(rl);
    ratelimit_free(NULL);

    /* networks */
    v4("192.0.2.77", a);
    ratelimit_network(AF_INET, a, 24, n);
    v4("192.0.2.0", b);
    ok(memcmp(n, b, 16) == 0, "/24 of 192.0.2.77 is 192.0.2.0");
    ratelimit_network(AF_INET, a, 20, n);
    v4("192.0.0.0", b);
    ok(memcmp(n, b, 16) == 0, "/20 of 192.0.2.77 is 192.0.0.0");
    ratelimit_network(AF_INET, a, 32, n);
    ok(memcmp(n, a, 16) == 0, "/32 keeps the address");
    unsigned char a6[16], w6[16];
    inet_pton(AF_INET6, "2001:db8:1:2:3:4:5:6", a6);
    inet_pton(AF_INET6, "2001:db8:1:2::", w6);
    ratelimit_network(AF_INET6, a6, 64, n);
    ok(memcmp(n, w6, 16) == 0, "/64 of an IPv6 address");
    inet_pton(AF_INET6, "2001:db8:1::", w6);
    ratelimit_network(AF_INET6, a6, 52, n);
    ok(memcmp(n, w6, 16) == 0, "/52 of an IPv6 address (a partial octet)");
    return done_testing();
}
