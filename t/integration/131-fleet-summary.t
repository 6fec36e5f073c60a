#!/usr/bin/env python3
# 131-fleet-summary: `mxkeepctl cluster summary` answers for three nodes
# from any one of them, and its counts are exact: each node's rows equal
# that node's own `mxkeepctl summary`, the fleet line is their sum.  A node
# that stops reporting is shown stale after 3 status intervals and leaves
# the fleet's total (and the ETRN count).
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
from mxcluster import *  # noqa: F401,F403


def rows_of(cs):
    """{(node, domain): messages} and {node: stale} from a cluster summary."""
    rows, stale = {}, {}
    for n in cs["nodes"]:
        stale[n["node"]] = n["stale"]
        for d in n["destinations"]:
            rows[(n["node"], d["domain"])] = d["messages"]
    return rows, stale


def main():
    require_binaries()
    if not have_postgres():
        skip_all("PostgreSQL 15 (initdb, pg_ctl, psql) not installed")
    pg = Postgres().start()
    doms = [{"name": "example.org", "primary": "[127.0.0.1]:%d" % free_port(), "hold": True},
            {"name": "example.net", "primary": "[127.0.0.1]:%d" % free_port(), "hold": True}]
    nodes = fleet(pg, doms)
    for n in nodes:
        n.start()
    names = {"mx2a": nodes[0], "mx2b": nodes[1], "mx2c": nodes[2]}
    plan = {("mx2a", "example.org"): 4, ("mx2a", "example.net"): 1,
            ("mx2b", "example.org"): 2, ("mx2b", "example.net"): 6,
            ("mx2c", "example.org"): 9, ("mx2c", "example.net"): 0}
    for (node, dom), k in plan.items():
        if k:
            send_batch(names[node], k, rcpt="user@" + dom, tag="%s-%s-" % (node, dom))

    def own():
        out = {}
        for name, n in names.items():
            for dom, k in (n.summary() or {}).items():
                out[(name, dom)] = k
        return out

    ok(wait_for(lambda: own() == plan, 10), "each node's own summary shows what it was sent")
    got = {}

    def settled():
        cs = nodes[2].cluster_summary()
        if cs is None:
            return False
        got["cs"] = cs
        return rows_of(cs)[0] == own()
    ok(wait_for(settled, 15), "cluster summary (asked on node c) equals every node's own summary")
    rows, stale = rows_of(got["cs"])
    is_(rows, plan, "per node and domain, the exact counts")
    is_(stale, {"mx2a": False, "mx2b": False, "mx2c": False}, "no node stale")
    tot = {d["domain"]: d["messages"] for d in got["cs"]["destinations"]}
    is_(tot, {"example.org": 15, "example.net": 7}, "fleet totals: 15 and 7")
    bytes_a = {d["domain"]: d["bytes"] for d in got["cs"]["nodes"][0]["destinations"]}
    own_a = {d["domain"]: d["bytes"] for d in json.loads(
        nodes[0].ctl("--json", "summary").stdout.decode())["domains"]}
    is_(bytes_a, own_a, "bytes too match node a's own summary")
    cs_b = nodes[1].cluster_summary()
    is_(rows_of(cs_b)[0] if cs_b else None, plan, "the same answer from node b")
    t = nodes[0].ctl("cluster", "summary")
    is_(t.returncode, 0, "text cluster summary: exit 0")
    like(t.stdout.decode(), r"(?m)^mx2c\s+ok \d+s\s+example\.org\s+9\b", "text: node c, example.org, 9")
    like(t.stdout.decode(), r"(?m)^example\.org\s+15\b", "text: fleet line example.org 15")

    # Node c stops: stale after 3 intervals of 1 s, and out of the totals.
    is_(nodes[2].stop(), 0, "node c stops")
    ok(wait_for(lambda: rows_of(nodes[0].cluster_summary())[1].get("mx2c") is True, 10),
       "node c shown stale")
    cs = nodes[0].cluster_summary()
    is_({d["domain"]: d["messages"] for d in cs["destinations"]},
        {"example.org": 6, "example.net": 7}, "fleet totals leave the stale node out")
    like(nodes[0].ctl("cluster", "summary").stdout.decode(), r"(?m)^mx2c\s+STALE", "text: STALE")
    for n in nodes[:2]:
        n.ctl("release", "example.org")
    # Released: the primaries are dead, nothing leaves; ETRN's count is a's
    # 4 plus b's 2, once a has read the others' rows after c went stale
    # (each node reads them every status interval: 1 s here).
    time.sleep(2.5)
    r = etrn(nodes[0], "example.org")
    m = re.search(r"(\d+) pending message", r.text)
    is_((r.code, int(m.group(1)) if m else None), (253, 6),
        "ETRN count: the live nodes' 6, not the stale node's 9")
    r = nodes[0].ctl("cluster", "bogus")
    is_(r.returncode, 64, "cluster bogus: usage, exit 64")
    for n in nodes[:2]:
        is_(n.stop(), 0, "node %s exits 0" % n.host)
    pg.stop()


run_main(main)
