/*
 * t_dest_limits.c - RFC 9422 LIMITS parsing, limits learned per primary
 * host, and the AIMD concurrency controller (src/dest_limits.c).
 */
#include "config.h"
#include "dest_limits.h"
#include "tap.h"

static void test_parse(void)
{
    struct dl_declared d = { 0 };

    is_int(dl_limits_parse("RCPTMAX=20 MAILMAX=100 RCPTDOMAINMAX=1", &d), 3, "three limits");
    is_int(d.rcptmax, 20, "RCPTMAX");
    is_int(d.mailmax, 100, "MAILMAX");
    is_int(d.rcptdomainmax, 1, "RCPTDOMAINMAX");

    struct dl_declared e = { 0 };
    is_int(dl_limits_parse("rcptMax=7  mailmax=3", &e), 2, "names in any case, runs of spaces");
    is_int(e.rcptmax, 7, "lower-case RCPTMAX");
    is_int(e.mailmax, 3, "lower-case MAILMAX");

    struct dl_declared f = { 0 };
    is_int(dl_limits_parse("FOO=9 RCPTMAX=x MAILMAX= RCPTMAX=0 BAR MAILMAX=-1 RCPTMAX=5", &f), 1,
           "unknown names, bad and zero values ignored");
    is_int(f.rcptmax, 5, "the good one taken");
    is_int(f.mailmax, 0, "no MAILMAX");

    struct dl_declared g = { 0 };
    dl_limits_parse("RCPTMAX=99999999999999999999 MAILMAX=4294967297", &g);
    is_int(g.rcptmax, DL_VALUE_MAX, "a huge value is bounded");
    is_int(g.mailmax, DL_VALUE_MAX, "a value past 32 bits is bounded, not wrapped");

    struct dl_declared h = { 0 };
    dl_limits_parse("RCPTMAX=10 RCPTMAX=4", &h);
    is_int(h.rcptmax, 4, "declared twice: the smaller");
    struct dl_declared z = { 0 };
    is_int(dl_limits_parse("", &z), 0, "empty parameters");
    is_int(dl_limits_parse(NULL, &z), 0, "no parameters");
    is_int(dl_limits_parse("\tRCPTMAX=2\t", &z), 1, "tabs");
}

static void test_host(void)
{
    struct dl_host h = { 0 };
    struct dl_declared d = { .rcptmax = 10, .mailmax = 50 };
    enum dl_source src;

    is_int(dl_host_rcpt_max(&h, &src), 0, "nothing known: no limit");
    is_int(src, DL_NONE, "source none");
    dl_host_declare(&h, &d);
    is_int(dl_host_rcpt_max(&h, &src), 10, "declared rcpt max");
    is_int(src, DL_DECLARED, "source declared");
    is_int(dl_host_rcpt_refused(&h, 3), 1, "452 after 3 recipients learned");
    is_int(dl_host_rcpt_max(&h, &src), 3, "learned is smaller: it wins");
    is_int(src, DL_LEARNED, "source learned");
    is_int(dl_host_rcpt_refused(&h, 5), 0, "a larger count teaches nothing");
    is_int(dl_host_rcpt_max(&h, NULL), 3, "still 3");
    is_int(dl_host_rcpt_refused(&h, 0), 0, "452 at the first RCPT is no limit");
    is_int(dl_host_mail_421(&h, 7), 1, "421 after 7 transactions");
    is_int(dl_host_mail_max(&h, &src), 7, "mail max 7");
    is_int(src, DL_LEARNED, "learned below the declared 50");
    is_int(dl_host_conn_max(&h, &src), 0, "no connection ceiling yet");
    is_int(dl_host_greeting_421(&h, 0), 0, "421 at greeting with nothing else open: no ceiling");
    is_int(dl_host_greeting_421(&h, 4), 1, "421 at greeting with 4 open");
    is_int(dl_host_conn_max(&h, &src), 4, "ceiling 4");
    is_int(dl_host_greeting_421(&h, 6), 0, "a later 421 with more open does not raise it");
    is_int(dl_host_greeting_421(&h, 2), 1, "... with fewer lowers it");
    is_int(dl_host_conn_max(&h, NULL), 2, "ceiling 2");
    dl_host_forget(&h);
    is_int(dl_host_conn_max(&h, NULL), 0, "forgotten at the end of the flush");
    is_int(dl_host_rcpt_max(&h, &src), 10, "declared stays");
    is_int(src, DL_DECLARED, "source declared again");
    is_str(dl_source_name(DL_LEARNED), "learned", "source name");
}

static void test_aimd(void)
{
    struct dl_aimd a;

    dl_aimd_init(&a, 16, 1);
    is_int(dl_aimd_window(&a), DL_START_WINDOW, "adaptive starts low");
    /* Unloaded: 10 ms replies, every session busy: the window grows to
     * the ceiling and no further. */
    int grew = 0;
    for (int i = 0; i < 2000; i++)
        grew += dl_aimd_latency(&a, 10.0, dl_aimd_window(&a)) == DL_GROW;
    is_int(dl_aimd_window(&a), 16, "grows to the ceiling while latency stays at the floor");
    is_int(grew, 14, "one step at a time");

    /* Latency climbs to 5x the floor: multiplicative decrease. */
    unsigned before = dl_aimd_window(&a);
    int shrank = 0;
    for (int i = 0; i < 40; i++)
        shrank += dl_aimd_latency(&a, 50.0, dl_aimd_window(&a)) == DL_SHRINK;
    ok(shrank >= 1, "latency over twice the floor shrinks the window (%d times)", shrank);
    ok(dl_aimd_window(&a) < before, "window %u < %u", dl_aimd_window(&a), before);
    ok(dl_aimd_window(&a) >= 1, "never below one");

    /* Twice the floor for one round is not enough: our own loop may have
     * run late; two rounds in a row cut the window. */
    dl_aimd_init(&a, 4, 1);
    for (int i = 0; i < 200; i++)
        dl_aimd_latency(&a, 10.0, dl_aimd_window(&a));
    is_int(dl_aimd_window(&a), 4, "at the ceiling of 4");
    int n50 = 0;
    while (dl_aimd_window(&a) == 4 && n50 < 40) {
        dl_aimd_latency(&a, 50.0, 4);
        n50++;
    }
    ok(n50 > 4 && n50 <= 12, "cut after two loaded rounds, not one (%d replies)", n50);
    is_int(dl_aimd_window(&a), 2, "x0.7 of 4, rounded down");

    /* Past the knee but not twice the floor: one session less a round. */
    dl_aimd_init(&a, 16, 1);
    for (int i = 0; i < 2000; i++)
        dl_aimd_latency(&a, 10.0, dl_aimd_window(&a));
    int k = 0;
    while (dl_aimd_window(&a) == 16 && k < 64) {
        dl_aimd_latency(&a, 15.0, 16);
        k++;
    }
    is_int(dl_aimd_window(&a), 15, "1.5x the floor: one session less");
    ok(k <= 32, "within two rounds (%d replies)", k);
    for (int i = 0; i < 15; i++)
        dl_aimd_latency(&a, i == 7 ? 10.0 : 90.0, 15);
    is_int(dl_aimd_window(&a), 16,
           "a round with one reply at the floor is unloaded: the slow ones were noise");

    /* No growth while the window is not used. */
    dl_aimd_init(&a, 16, 1);
    for (int i = 0; i < 500; i++)
        dl_aimd_latency(&a, 10.0, 1);
    is_int(dl_aimd_window(&a), DL_START_WINDOW, "an unused window does not grow");

    /* 421: halve; a burst counts once; force for a second later. */
    dl_aimd_init(&a, 16, 1);
    for (int i = 0; i < 2000; i++)
        dl_aimd_latency(&a, 10.0, dl_aimd_window(&a));
    is_int(dl_aimd_421(&a), DL_SHRINK, "421 shrinks");
    is_int(dl_aimd_window(&a), 8, "to half");
    is_int(dl_aimd_421(&a), DL_HOLD, "a second 421 of the same burst does not");
    is_int(dl_aimd_window(&a), 8, "still 8");
    for (int i = 0; i < 32; i++)
        dl_aimd_latency(&a, 10.0, 8);
    is_int(dl_aimd_421(&a), DL_SHRINK, "a 421 after two rounds of the old window does");
    is_int(dl_aimd_window(&a), 4, "to 4");

    /* A run of 4xx. */
    dl_aimd_init(&a, 8, 0);
    is_int(dl_aimd_window(&a), 8, "fixed: starts at the ceiling");
    for (int i = 0; i < DL_4XX_RUN - 1; i++)
        is_int(dl_aimd_reply(&a, 1), DL_HOLD, "4xx %d of the run", i + 1);
    is_int(dl_aimd_reply(&a, 0), DL_HOLD, "a 2xx breaks the run");
    for (int i = 0; i < DL_4XX_RUN - 1; i++)
        dl_aimd_reply(&a, 1);
    is_int(dl_aimd_reply(&a, 1), DL_SHRINK, "a whole run shrinks");
    is_int(dl_aimd_window(&a), 4, "halved");

    /* Fixed: latency neither grows nor shrinks it. */
    dl_aimd_init(&a, 4, 0);
    for (int i = 0; i < 100; i++)
        dl_aimd_latency(&a, i < 50 ? 1.0 : 500.0, 4);
    is_int(dl_aimd_window(&a), 4, "fixed ignores latency");

    /* Cap, ceiling, reconfigure. */
    dl_aimd_init(&a, 16, 1);
    for (int i = 0; i < 2000; i++)
        dl_aimd_latency(&a, 10.0, dl_aimd_window(&a));
    is_int(dl_aimd_cap(&a, 5), DL_SHRINK, "a learned connection ceiling caps");
    is_int(dl_aimd_window(&a), 5, "to 5");
    is_int(dl_aimd_cap(&a, 0), DL_HOLD, "no ceiling: nothing");
    dl_aimd_configure(&a, 3, 1);
    is_int(dl_aimd_window(&a), 3, "a lower max_connections clamps");
    dl_aimd_configure(&a, 3, 0);
    is_int(dl_aimd_window(&a), 3, "adaptation off: at the ceiling");
    dl_aimd_init(&a, 1, 1);
    is_int(dl_aimd_window(&a), 1, "ceiling 1: start at 1");
    dl_aimd_init(&a, 0, 1);
    is_int(dl_aimd_window(&a), 1, "ceiling 0 is taken as 1");

    /* Slack: a sub-millisecond floor does not make loopback jitter load. */
    dl_aimd_init(&a, 8, 1);
    for (int i = 0; i < 2000; i++)
        dl_aimd_latency(&a, (i % 3) ? 0.2 : 1.5, dl_aimd_window(&a));
    is_int(dl_aimd_window(&a), 8, "jitter under the slack is no load");
}

int main(void)
{
    test_parse();
    test_host();
    test_aimd();
    return done_testing();
}
