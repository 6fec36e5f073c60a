#!/usr/bin/env python3
# 205-maint-batches: the end of a window moves the expiry of a backlog
# larger than one batch (256 messages a transaction): every recipient of
# the domain is moved exactly once, by the time its message spent in the
# window (all came during it: from its arrival to the end, so arrival +
# move is the window's end for every one), and a domain not in
# maintenance is left alone; then the whole backlog is delivered.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 600


def expiries(srv):
    return {(r["addr"], m["qid"]): (r["expiry"], m["arrival"]) for m in srv.queue()
            for r in m["recipients"] if r["state"] == "pending"}


def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2").start()
    dead = free_port_on("127.0.0.2")
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % dead},
        {"name": "other.test", "primary": "[127.0.0.2]:%d" % dead},
    ], settings={"delivery": fast_delivery()})
    srv.start()
    r = srv.ctl("maintenance", "example.org", "start")
    is_(r.returncode, 0, "maintenance start")
    send_batch(srv, N, tag="bulk", per_connection=50)
    send_batch(srv, 3, rcpt="x@other.test", tag="other")
    before = expiries(srv)
    is_(len([k for k in before if k[0].endswith("@example.org")]), N,
        "%d recipients waiting in maintenance" % N)
    time.sleep(2)
    mark = len(srv.log())
    r = srv.ctl("maintenance", "example.org", "stop")
    is_(r.returncode, 0, "maintenance stop")
    m = wait_log(srv, r"maintenance of example\.org \(runtime\) ended after 0h(\d\d)m(\d\d)s: "
                 r"expiry of (\d+) messages moved out", 30, mark)
    ok(m is not None, "log: ended")
    is_(int(m.group(3)) if m else 0, N, "the %d messages moved, in batches" % N)
    after = expiries(srv)
    ends, moved = set(), {}
    for k, (e, arrival) in before.items():
        if k in after:
            d = after[k][0] - e
            moved.setdefault(k[0].split("@")[1], []).append(d)
            if k[0].endswith("@example.org"):
                ends.add(arrival + d)
    is_(len(moved.get("example.org", [])), N, "all %d still there" % N)
    ok(len(ends) == 1 and min(moved["example.org"]) >= 2,
       "every recipient moved once, by its time in the window (arrival + move = %s)" %
       sorted(ends))
    is_(set(moved.get("other.test", [])), {0}, "the domain not in maintenance: expiry unchanged")
    # The primary comes up: the whole backlog goes.
    srv.domains[0]["primary"] = "[127.0.0.2]:%d" % fake.port
    srv.write_config(srv.port)
    srv.hup()
    ok(wait_for(lambda: fake.count() >= N, 60), "then all %d delivered" % N)
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
