#!/usr/bin/env python3
# 141-gate-shared (issue 9, part 1): one heartbeat per primary host however
# many gated domains share it.  Twenty gated domains route to one primary
# and one more to a second primary; over a measured window the first
# primary sees about one connection per heartbeat (not twenty), the second
# its own heartbeats, and every gated domain is refused 450 4.7.0 while
# its primary is up.  On the old code `accept` is an unknown key and no
# heartbeat connects at all.
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

HB = 1                  # heartbeat, seconds
NDOM = 20
WINDOW = 6.0            # seconds of counting


def rcpt_codes(srv, addrs):
    c = srv.raw(timeout=15)
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    codes = [c.cmd("RCPT TO:<%s>" % a).code for a in addrs]
    c.close()
    return codes


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", name="shared.example").start()
    other = FakeSMTP(host="127.0.0.3", name="other.example").start()
    route = "[127.0.0.2]:%d" % prim.port
    doms = [{"name": "d%02d.test" % i, "primary": route, "accept": "when-primary-down"}
            for i in range(NDOM)]
    doms.append({"name": "lone.test", "primary": "[127.0.0.3]:%d" % other.port,
                 "accept": "when-primary-down"})
    srv = Server(domains=doms, settings={"delivery": fast_delivery(heartbeat="%ds" % HB)})
    srv.start()

    addrs = ["u@d%02d.test" % i for i in range(NDOM)] + ["u@lone.test"]
    ok(wait_for(lambda: set(rcpt_codes(srv, addrs)) == {450}, 3 * HB + 5, 0.3),
       "every gated domain is refused 450 once its primary answered")

    with prim.lock:
        n0 = prim.nconn
    with other.lock:
        o0 = other.nconn
    time.sleep(WINDOW)
    with prim.lock:
        n1 = prim.nconn
    with other.lock:
        o1 = other.nconn
    beats = WINDOW / HB
    diag("shared primary: %d connections in %.0f s; other: %d" % (n1 - n0, WINDOW, o1 - o0))
    ok(n1 - n0 <= beats + 2,
       "%d domains sharing a primary: one heartbeat per interval (%d connections in %.0f s)"
       % (NDOM, n1 - n0, WINDOW))
    ok(n1 - n0 >= beats - 2, "the heartbeat keeps running (%d in %.0f s)" % (n1 - n0, WINDOW))
    ok(o1 - o0 >= beats - 2 and o1 - o0 <= beats + 2,
       "the other primary gets its own heartbeat (%d in %.0f s)" % (o1 - o0, WINDOW))
    with prim.lock:
        cmds = [c.split(b" ")[0].upper() for c in prim.commands]
    ok(set(cmds) <= {b"EHLO", b"HELO", b"QUIT"} and b"EHLO" in cmds,
       "a heartbeat is light: EHLO and QUIT only, no MAIL or RCPT")
    codes = rcpt_codes(srv, addrs)
    is_(codes.count(450), NDOM + 1, "still refused for every gated domain")
    srv.stop()
    prim.stop()
    other.stop()


run_main(main)
