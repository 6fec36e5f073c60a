#!/usr/bin/env python3
# 133-fleet-db-down: the fleet's database stops.  Every node keeps
# accepting and delivering; holds stay as last known (458 on every node);
# a release and a hold made on one node meanwhile apply there at once and
# reach the other nodes when the database is back; cluster summary says
# the database is unreachable (exit 69) instead of guessing.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
from mxcluster import *  # noqa: F401,F403

HOLD_WAIT = 5.0
RECONNECT_WAIT = 15.0   # retry_max 1s: a node is back within seconds


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
    is_(a.ctl("hold", "example.org").returncode, 0, "hold example.org on node a")
    for n in nodes:
        ok(wait_for(lambda: etrn(n, "example.org").code == 458, HOLD_WAIT),
           "node %s: 458 with the database up" % n.host)
    for n, k in zip(nodes, (1, 2, 3)):
        send_batch(n, k, tag="held-%s-" % n.host)

    pg.stop()
    for n in nodes:
        ok(wait_log(n, r"pgsql main: .*down|pgsql main.*(lost|unreachable|down)", 10) is not None,
           "node %s logs the database down" % n.host)
        is_(etrn(n, "example.org").code, 458, "node %s: still 458 (hold as last known)" % n.host)
    before = fake.count()
    for n, k in zip(nodes, (2, 2, 2)):
        send_batch(n, k, rcpt="user@other.test", tag="down-%s-" % n.host)
    ok(True, "every node accepts mail with the database down (send_batch raised nothing)")
    ok(wait_for(lambda: fake.count() >= before + 6, 15), "and delivers it: 6 messages to the primary")
    is_(fake.count(), 6, "nothing held was delivered")
    r = a.ctl("cluster", "summary")
    is_(r.returncode, 69, "cluster summary with the database down: exit 69")
    like(r.stderr.decode(), r"unreachable", "... says the database is unreachable")

    # Requests made while the database is away: applied here at once.
    is_(b.ctl("release", "example.org").returncode, 0, "release example.org on node b (db down)")
    ok(wait_for(lambda: fake.count() >= 8, 10), "node b delivers its 2 held messages at once")
    is_(c.ctl("hold", "other.test").returncode, 0, "hold other.test on node c (db down)")
    is_(etrn(c, "other.test").code, 458, "node c: other.test 458 at once")
    time.sleep(1)
    is_(etrn(a, "example.org").code, 458, "node a does not know of the release yet")
    is_(etrn(a, "other.test").code, 251, "nor of node c's hold")
    is_(fake.count(), 8, "nodes a and c keep example.org's mail")

    pg.start()
    ok(wait_for(lambda: etrn(a, "other.test").code == 458 and etrn(b, "other.test").code == 458,
                RECONNECT_WAIT), "database back: node c's hold reaches a and b")
    ok(wait_for(lambda: fake.count() >= 12, RECONNECT_WAIT),
       "and node b's release reaches a and c: all 6 held messages delivered")
    for n in nodes:
        ok(wait_empty(n, 10), "node %s: queue empty" % n.host)
    rows = dict((r[0], (r[1], r[2])) for r in pg.psql("SELECT domain, held, held_by FROM holds"))
    is_(rows, {"example.org": ("f", "mx2b"), "other.test": ("t", "mx2c")},
        "holds table: released by mx2b, held by mx2c")
    ok(wait_for(lambda: a.cluster_summary() is not None, 10), "cluster summary answers again")
    ids = fake.message_ids()
    is_(len(set(ids)), 12, "12 distinct messages delivered over the outage")
    for n in nodes:
        is_(n.stop(), 0, "node %s exits 0" % n.host)
    fake.stop()
    pg.stop()


run_main(main)
