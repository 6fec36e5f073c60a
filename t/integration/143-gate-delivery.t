#!/usr/bin/env python3
# 143-gate-delivery (issue 9, part 1): delivery's own sessions feed the
# gate, and a reload changes which domains are gated.  The heartbeat is
# an hour apart (only the first check at start runs), so only delivery can
# move the gate: a delivery that worked opens it up (450 4.7.0 for the
# gated domain), failed delivery connects to the same primary (for a
# domain that is not gated) count as failed heartbeats and, three in a
# row, make it down (accepted again).  A reload to accept = "always"
# lifts the gate; back to "when-primary-down" brings it back.
# On the old code `accept` is an unknown key and nothing is refused 450.
import json
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def rcpt(srv, addr):
    c = srv.raw(timeout=15)
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    r = c.cmd("RCPT TO:<%s>" % addr)
    c.close()
    return r


def send(srv, addr, tag):
    c = srv.raw(timeout=15)
    c.ehlo()
    r = c.transaction("s@sender.example", [addr], make_message(tag))
    c.close()
    return r[-1]


def gate(srv, domain):
    r = srv.ctl("--json", "summary")
    try:
        for d in json.loads(r.stdout.decode("utf-8"))["domains"]:
            if d.get("domain") == domain:
                return d.get("gate")
    except (ValueError, KeyError):
        pass
    return None


def main():
    require_binaries()
    port = free_port_on("127.0.0.2")
    route = "[127.0.0.2]:%d" % port
    srv = Server(domains=[
        {"name": "example.org", "primary": route, "accept": "when-primary-down"},
        {"name": "open.test", "primary": route},
    ], settings={"delivery": fast_delivery(heartbeat="1h", probe_max="2s")})
    srv.start()

    # The one check at start fails (nothing listens): unknown, accepted.
    is_(rcpt(srv, "a@example.org").code, 250, "gate unknown: accepted")
    is_(send(srv, "a@example.org", "kept-1").code, 250, "mail taken while the primary is away")
    prim = FakeSMTP(host="127.0.0.2", port=port, name="primary.example.org").start()
    ok(wait_for(lambda: any(b"kept-1" in m["body"] for m in prim.messages), 20, 0.2),
       "delivered when the primary listens")
    ok(wait_for(lambda: gate(srv, "example.org") == "up", 5, 0.2),
       "a delivery session that worked is an answer: gate up (no heartbeat ran)")
    like(srv.log(), r"gate 127\.0\.0\.2:%d: unknown -> up \(delivery session\)" % port,
         "the transition names the delivery session as the answer")
    r = rcpt(srv, "a@example.org")
    is_(r.code, 450, "gate up: 450")
    like(r.text, r"^450 4\.7\.0 ", "450 4.7.0")

    # The primary goes away: failed delivery connects for open.test (same
    # primary, not gated) are failed heartbeats.
    prim.stop()
    for i in range(3):
        is_(send(srv, "b@open.test", "open-%d" % i).code, 250, "open.test is never gated (%d)" % i)
    ok(wait_for(lambda: gate(srv, "example.org") == "down", 25, 0.3),
       "three failed delivery connects in a row: gate down")
    like(srv.log(), r"gate 127\.0\.0\.2:%d: up -> down \(delivery connect failed\)" % port,
         "the transition names delivery as the cause")
    is_(rcpt(srv, "a@example.org").code, 250, "gate down: accepted again")

    # A reload lifts the gate and brings it back.
    prim2 = FakeSMTP(host="127.0.0.2", port=port, name="primary.example.org").start()
    ok(wait_for(lambda: gate(srv, "example.org") == "up", 25, 0.3), "up again after deliveries")
    ok(wait_for(lambda: len(prim2.messages) >= 3, 20, 0.2), "open.test mail delivered")
    is_(rcpt(srv, "a@example.org").code, 450, "450 again")
    srv.domains[0]["accept"] = "always"
    srv.write_config(port=srv.port)
    srv.hup()
    ok(wait_for(lambda: rcpt(srv, "a@example.org").code == 250, 10, 0.3),
       "reload to accept = \"always\": accepted though the primary is up")
    is_(gate(srv, "example.org"), None, "and no gate shown")
    srv.domains[0]["accept"] = "when-primary-down"
    srv.write_config(port=srv.port)
    srv.hup()
    ok(wait_for(lambda: rcpt(srv, "a@example.org").code == 450, 10, 0.3),
       "reload back to when-primary-down: the first check at once closes the gate")
    srv.stop()
    prim2.stop()


run_main(main)
