#!/usr/bin/env python3
# 132-fleet-hold: `mxkeepctl hold D` on one node holds D on all three
# within seconds (ETRN answers 458 on every node; a domain from the config
# file); a node started while D is held reads the holds table and answers
# 458 at once; `release D` on another node releases it everywhere and every
# node delivers its backlog.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
from mxcluster import *  # noqa: F401,F403

HOLD_WAIT = 5.0     # seconds a hold may take to reach every node


def main():
    require_binaries()
    if not have_postgres():
        skip_all("PostgreSQL 15 (initdb, pg_ctl, psql) not installed")
    pg = Postgres().start()
    fake = FakeSMTP(host="127.0.0.1").start()
    doms = [{"name": "example.org", "primary": "[127.0.0.1]:%d" % fake.port},
            {"name": "other.test", "primary": "[127.0.0.1]:%d" % fake.port}]
    nodes = fleet(pg, doms)
    for n in nodes:
        n.start()
    a, b, c = nodes
    for n in nodes:
        is_(etrn(n, "example.org").code, 251, "node %s: ETRN before the hold: 251" % n.host)

    r = a.ctl("hold", "example.org")
    is_(r.returncode, 0, "hold example.org on node a: exit 0")
    t0 = time.monotonic()
    for n in nodes:
        ok(wait_for(lambda: etrn(n, "example.org").code == 458, HOLD_WAIT),
           "node %s: ETRN 458 within %gs" % (n.host, HOLD_WAIT))
    diag("hold reached every node in %.2fs" % (time.monotonic() - t0))
    is_(pg.psql("SELECT held, held_by FROM holds WHERE domain = 'example.org'"),
        [("t", "mx2a")], "holds table: example.org held by mx2a")
    is_(etrn(b, "other.test").code, 251, "another domain is not held")
    # A reload hands holds back to the file; the fleet's hold comes back with it.
    mark = len(b.log())
    b.hup()
    ok(wait_log(b, r"reloaded ", 5, mark) is not None, "node b reloads")
    is_(etrn(b, "example.org").code, 458, "node b after the reload: still 458 (the fleet's hold)")

    # Mail arrives everywhere while held: nothing goes out.
    for n, k in zip(nodes, (2, 3, 1)):
        send_batch(n, k, tag="held-%s-" % n.host)
    time.sleep(2)
    is_(fake.count(), 0, "held on every node: nothing delivered")

    # A node that starts while the hold is on reads the table.
    is_(c.stop(), 0, "node c stops")
    c.start()
    ok(wait_for(lambda: etrn(c, "example.org").code == 458, HOLD_WAIT),
       "node c after a restart: 458 (read from the holds table)")
    ok(wait_for(lambda: c.dest_state("example.org") == "held", 5), "node c: summary says held")
    # 458 counts the fleet's held mail as 253 does (each node's own part
    # plus the others' last status rows, refreshed every second here).
    ok(wait_for(lambda: " 6 messages waiting" in etrn(a, "example.org").text, 10),
       "node a's 458 counts the fleet's held mail (2 + 3 + 1)")
    time.sleep(1)
    is_(fake.count(), 0, "restarted node c delivers nothing while held")

    r = b.ctl("release", "example.org")
    is_(r.returncode, 0, "release on node b: exit 0")
    ok(wait_for(lambda: fake.count() >= 6, 15), "released everywhere: the primary gets all 6")
    for n in nodes:
        ok(wait_empty(n, 10), "node %s: queue empty" % n.host)
    # The others' part of an ETRN count is as fresh as their last status
    # row (1 s here): once every node has reported its empty queue, 251.
    for n in nodes:
        ok(wait_for(lambda: etrn(n, "example.org").code == 251, 5),
           "node %s: ETRN 251 once the fleet's rows say nothing waits" % n.host)
    is_(pg.psql("SELECT held, held_by FROM holds WHERE domain = 'example.org'"),
        [("f", "mx2b")], "holds table: released by mx2b")
    like(a.log(), r"cluster: example\.org released by node mx2b", "node a logs the fleet release")
    for n in nodes:
        is_(n.stop(), 0, "node %s exits 0" % n.host)
    fake.stop()
    pg.stop()


run_main(main)
