#!/usr/bin/env python3
# 130-fleet-etrn: three nodes (127.0.0.2-4) share one PostgreSQL.  Mail for
# one domain waits on all three while the primary is down; one ETRN on one
# node makes all three flush (each node would otherwise wait minutes for
# its next probe), the primary receives every message, and the 253 count
# is the fleet's total.  Then `mxkeepctl flush D` on another node does the
# same, and says how many wait on the other nodes.
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
from mxcluster import *  # noqa: F401,F403

# Long probes: after the first failed probe no node tries again during the
# test unless it is told to flush.
SLOW_PROBES = {"probe_min": "10m", "probe_max": "20m"}


def main():
    require_binaries()
    if not have_postgres():
        skip_all("PostgreSQL 15 (initdb, pg_ctl, psql) not installed")
    pg = Postgres().start()
    fake = FakeSMTP(host="127.0.0.1")          # not started: the primary is down
    doms = [{"name": "example.org", "primary": "[127.0.0.1]:%d" % fake.port}]
    nodes = fleet(pg, doms)
    for n in nodes:
        n.settings["delivery"] = fast_delivery(**SLOW_PROBES)
        n.start()
    a, b, c = nodes

    counts = {"mx2a": 3, "mx2b": 5, "mx2c": 7}
    for n, k in zip(nodes, (3, 5, 7)):
        send_batch(n, k, tag="%s-" % n.host)
    total = sum(counts.values())
    for n, k in zip(nodes, (3, 5, 7)):
        ok(wait_for(lambda: (n.summary() or {}).get("example.org") == k, 10),
           "node %s holds its %d messages" % (n.host, k))
    ok(wait_status(pg, "example.org", counts), "node_status shows every node's backlog %s" % counts)
    # Each node has probed the dead primary once and now waits 10 minutes.
    ok(wait_for(lambda: all(n.dest_state("example.org") == "down" for n in nodes), 10),
       "every node found the primary down")

    fake.start()
    time.sleep(2)
    is_(fake.count(), 0, "primary up again: no node delivers on its own (next probe in minutes)")

    r = etrn(a, "example.org")
    is_(r.code, 253, "ETRN on one node: 253")
    m = re.search(r"(\d+) pending message", r.text)
    is_(int(m.group(1)) if m else None, total, "the 253 count is the fleet's total (%d)" % total)

    ok(wait_for(lambda: fake.count() >= total, 20), "the primary receives all %d messages" % total)
    time.sleep(1)
    ids = fake.message_ids()
    is_(len(set(ids)), total, "every message arrived (%d distinct Message-IDs)" % total)
    is_(len(ids), total, "and each exactly once")
    for n in nodes:
        ok(wait_empty(n, 10), "node %s: queue empty" % n.host)
    like(b.log(), r"cluster: flush example\.org from node mx2a", "node b logs the fleet flush")
    like(c.log(), r"cluster: flush example\.org from node mx2a", "node c logs the fleet flush")

    # mxkeepctl flush on node b: every node flushes again.
    fake.stop()
    for n, k in zip(nodes, (2, 1, 4)):
        send_batch(n, k, tag="again-%s-" % n.host)
    ok(wait_status(pg, "example.org", {"mx2a": 2, "mx2b": 1, "mx2c": 4}),
       "node_status: the new backlog 2/1/4")
    ok(wait_for(lambda: all(n.dest_state("example.org") == "down" for n in nodes), 10),
       "primary down again on every node")
    fake = FakeSMTP(host="127.0.0.1", port=fake.port).start()
    rr = b.ctl("flush", "example.org")
    is_(rr.returncode, 0, "mxkeepctl flush on node b: exit 0")
    like(rr.stdout.decode(), r"^1 message \(6 on other nodes\)", "... 1 here, 6 on the other nodes")
    ok(wait_for(lambda: fake.count() >= 7, 20), "the primary receives the 7 new messages")
    for n in nodes:
        ok(wait_empty(n, 10), "node %s: queue empty again" % n.host)

    # flush --all on node c: every node flushes every destination it knows.
    fake.stop()
    for n, k in zip(nodes, (1, 2, 1)):
        send_batch(n, k, tag="all-%s-" % n.host)
    ok(wait_for(lambda: all(n.dest_state("example.org") == "down" for n in nodes), 10),
       "primary down a third time on every node")
    fake = FakeSMTP(host="127.0.0.1", port=fake.port).start()
    is_(c.ctl("flush", "--all").returncode, 0, "mxkeepctl flush --all on node c: exit 0")
    ok(wait_for(lambda: fake.count() >= 4, 20), "every node flushed: the primary gets the 4")
    for n in nodes:
        ok(wait_empty(n, 10), "node %s: queue empty a third time" % n.host)
    for n in nodes:
        is_(n.stop(), 0, "node %s exits 0" % n.host)
    fake.stop()
    pg.stop()


run_main(main)
