#!/usr/bin/env python3
# 233-greeting-ceiling (issue 10, 1): a primary that greets a session over
# its own limit of K=2 with "421 4.3.2 Too many connections", serving two
# of our domains.  40 messages (20 each) queued while it was down, then
# the flush with max_connections 8 and adaptive concurrency: the first
# refusal while 2 sessions lived teaches "at most 2" for the HOST, so
# after it the sessions of both domains together stay within 2 (a few
# 421s, not one per domain per pass), every message arrives once, and
# show-dest shows conn_max 2 (learned).
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

K = 2
N = 20


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", max_sessions=K, delay=0.02, name="primary.example.org")
    p = "[127.0.0.2]:%d" % prim.port
    srv = Server(domains=[{"name": "example.org", "primary": p}, {"name": "example.net", "primary": p}],
                 settings={"delivery": fast_delivery(max_connections=8, probe_min="1s",
                                                     probe_max="2s")})
    srv.start()
    ids = sorted(queue_while_down(srv, prim, N, tag="org") +
                 queue_while_down(srv, prim, N, domain="example.net", tag="net"))
    prim.start()
    learned = wait_log(srv, r"refused a session while (\d+) others were open: at most \d+ \(learned\)", 20)
    ok(learned is not None, "a 421 at the greeting taught the ceiling")
    ok(wait_empty(srv, 60), "queue empty: all delivered")
    is_(sorted(prim.message_ids()), ids, "every message once")
    diag("%d connections, %d refused with 421" % (prim.nconn, prim.n421))
    ok(prim.n421 <= 4, "a few 421s, not a storm (%d)" % prim.n421)
    if learned is not None:
        # after the ceiling was learned, refusals stop (allow the ones in flight)
        t_learn = min(prim.t421) if prim.t421 else 0
        late = [t for t in prim.t421 if t > t_learn + 1.0]
        is_(len(late), 0, "no 421 more than a second after the first (%d)" % len(late))
    for dom in ("example.org", "example.net"):
        r = srv.ctl("show-dest", dom)
        like(r.stdout.decode(), r"conn_max %d \(learned\)" % K, "show-dest %s: conn_max %d (learned)"
             % (dom, K))
    unlike(srv.log(), r"status=bounced", "nothing bounced")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
