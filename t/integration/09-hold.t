#!/usr/bin/env python3
# 09-hold: a held domain delivers nothing (not even with its primary up);
# removing hold and SIGHUP releases it; holding again by reload stops new
# deliveries.
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2").start()
    other = FakeSMTP(host="127.0.0.2").start()
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % fake.port, "hold": True},
        {"name": "free.test", "primary": "[127.0.0.2]:%d" % other.port},
    ], settings={"delivery": fast_delivery()})
    srv.start()
    send_batch(srv, 5, tag="held")
    send_batch(srv, 1, rcpt="u@free.test", tag="free")
    ok(wait_for(lambda: other.count() >= 1, 5), "a domain that is not held delivers")
    time.sleep(3)
    is_(fake.count(), 0, "held domain: nothing delivered in 3 s")
    is_(fake.nconn, 0, "held domain: not even a probe connection")
    q = srv.queue()
    is_(len(q), 5, "the 5 held messages stay queued")
    is_({r["state"] for m in q for r in m["recipients"]}, {"pending"}, "all pending")
    # Every view of the held domain tells the same count and state.
    rs = srv.ctl("--json", "summary")
    row = {d["domain"]: d for d in json.loads(rs.stdout.decode()).get("domains", [])}.get(
        "example.org", {})
    is_((row.get("state"), row.get("messages")), ("held", 5), "summary: held, 5 messages")
    r = srv.ctl("flush", "example.org")
    is_(r.returncode, 75, "mxkeepctl flush of the held domain: exit 75")
    like(r.stderr.decode(), r"example\.org is held: 5 messages waiting", "... held, 5 waiting")

    mark = len(srv.log())
    srv.domains[0].pop("hold")
    srv.write_config(srv.port)
    srv.hup()
    ok(wait_for(lambda: fake.count() >= 5, 10), "released by reload: the 5 messages delivered")
    ok(wait_empty(srv, 5), "queue empty")
    like(srv.log()[mark:], r"destination example\.org: released", "log: destination released")

    srv.domains[0]["hold"] = True
    srv.write_config(srv.port)
    srv.hup()
    ok(wait_log(srv, r"destination example\.org: held", 5, mark) is not None, "log: held again by reload")
    send_batch(srv, 2, tag="again")
    time.sleep(3)
    is_(fake.count(), 5, "held again: new mail not delivered")
    is_(len(srv.queue()), 2, "new mail kept")
    ok(srv.running(), "daemon alive after two reloads")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
