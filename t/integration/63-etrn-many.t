#!/usr/bin/env python3
# 63-etrn-many: "ETRN @domain" flushes every served domain it covers, however
# many.  70 subdomains of example.org wait for a primary that was down, the
# next probe minutes away; one ETRN @example.org must flush all 70.  0.1.0
# collected the covered domains into a fixed array of 64 and silently left
# the rest waiting.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

NDOMAINS = 70


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2")                   # not started yet
    names = ["d%02d.example.org" % i for i in range(1, NDOMAINS + 1)]
    srv = Server(domains=[{"name": n, "primary": "[127.0.0.2]:%d" % prim.port} for n in names],
                 settings={"delivery": fast_delivery(probe_min="5m", probe_max="10m")})
    srv.start()
    rcpts = ["u@" + n for n in names]
    c = srv.raw()
    c.ehlo()
    rs = c.transaction("s@example.com", rcpts, make_message("many"))
    c.cmd("QUIT")
    c.close()
    is_(rs[-1].code, 250, "one message to %d domains queued" % NDOMAINS)
    ok(wait_for(lambda: len(re.findall(r"destination d\d\d\.example\.org: \w+ -> down", srv.log()))
                >= NDOMAINS, 20), "all %d destinations down (nothing listens)" % NDOMAINS)

    prim.start()
    time.sleep(1)
    is_(prim.count(), 0, "primary up, next probes minutes away: nothing sent yet")
    r = etrn(srv, "@example.org")
    is_(r.code, 253, "ETRN @example.org: 253")
    ok(wait_for(lambda: len({a for m in prim.messages for a in m["rcpts"]}) >= NDOMAINS, 30),
       "ETRN @example.org flushed all %d domains" % NDOMAINS)
    got = {a for m in prim.messages for a in m["rcpts"]}
    is_(sorted(set(rcpts) - got), [], "no domain left out")
    ok(wait_empty(srv, 10), "queue empty")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
