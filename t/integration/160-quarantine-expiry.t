#!/usr/bin/env python3
# 160-quarantine-expiry: with bounce = "authenticated", a message from a
# sender nobody vouched for (no SPF pass, no sender DKIM) that expires goes
# to quarantine instead of bouncing: no notice reaches the sender's MX, it
# is listed and shown, a restart keeps it, and after quarantine_retention
# (14d) it is removed with its log line.  A bounce = "always" domain still
# bounces the same kind of message.
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    if faketime_env("+8d") is None:
        skip_all("libfaketime not installed")
    dead = free_port_on("127.0.0.2")                     # the primary never answers
    mxport = free_port_on("127.0.0.3")
    smx = FakeSMTP(host="127.0.0.3", port=mxport, name="mx.forged.test").start()
    dns = Dnsmasq(mx=[("forged.test", "mx.forged.test", 10), ("other.test", "mx.forged.test", 10)],
                  hosts=[("mx.forged.test", "127.0.0.3")]).start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % dead,
                           "retention": "7d", "bounce": "authenticated"},
                          {"name": "always.example", "primary": "[127.0.0.2]:%d" % dead,
                           "retention": "7d"}],
                 settings={"resolver": dns.address,
                           "delivery": fast_delivery(mx_port=mxport)})
    srv.start()
    code, text = send_smtplib(srv, "victim@forged.test", ["u1@example.org"],
                              make_message("forged", extra_headers=["X-Marker: q"]))
    q1 = qid_of(text)
    code, text = send_smtplib(srv, "someone@other.test", ["u2@always.example"],
                              make_message("plain"))
    q2 = qid_of(text)
    ok(q1 and q2, "two messages queued")
    r = srv.ctl("quarantine", "list")
    is_(r.stdout.decode().strip(), "", "nothing in quarantine before expiry")
    is_(srv.stop(), 0, "stopped")

    mark = len(srv.log())
    srv.start(env=faketime_env("+8d"))
    ok(wait_log(srv, r"%s: to=<u1@example\.org>, .*dsn=4\.4\.7, status=quarantined" % q1, 10,
                mark) is not None, "forged-sender recipient quarantined at expiry")
    ok(wait_log(srv, r"%s: quarantined: failure notice withheld: sender not authenticated "
                r"\(spf=none, dkim=none\); message kept too long" % q1, 5, mark) is not None,
       "quarantine logged with its reason")
    ok(wait_log(srv, r"%s: to=<u2@always\.example>, .*status=expired" % q2, 5, mark) is not None,
       "bounce = always domain expires as before")
    ok(wait_for(lambda: smx.count() >= 1, 15), "the always domain's notice arrives")
    time.sleep(2)
    rcpts = [m["rcpts"] for m in smx.messages]
    is_(rcpts, [["someone@other.test"]], "exactly one notice, none to the forged sender")

    r = srv.ctl("--json", "quarantine", "list")
    is_(r.returncode, 0, "quarantine list --json exits 0")
    lines = [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]
    is_([x["qid"] for x in lines], [q1], "the list has the quarantined message only")
    if lines:
        like(lines[0]["reason"], r"sender not authenticated", "reason in the list")
        is_(lines[0]["until"] - lines[0]["quarantined"], 14 * 86400, "kept for 14 days")
        is_(lines[0]["recipients"][0]["state"], "quarantined", "recipient state quarantined")
    r = srv.ctl("quarantine", "list", "always.example")
    is_(r.stdout.decode().strip(), "", "list DOMAIN filters")
    r = srv.ctl("quarantine", "show", q1)
    like(r.stdout.decode(), r"reason: failure notice withheld", "show gives the reason")
    like(r.stdout.decode(), r"recipient: <u1@example\.org> quarantined", "show gives recipients")
    is_(srv.stop(), 0, "stopped")

    # Readable with the daemon down, and still there after a restart.
    r = srv.ctl("quarantine", "list")
    like(r.stdout.decode(), q1, "listed with the daemon down")
    mark = len(srv.log())
    srv.start(env=faketime_env("+9d"))
    time.sleep(2)
    r = srv.ctl("quarantine", "list")
    like(r.stdout.decode(), q1, "a restart keeps the quarantine")
    is_(smx.count(), 1, "still no notice to the forged sender")
    is_(srv.stop(), 0, "stopped")

    mark = len(srv.log())
    srv.start(env=faketime_env("+23d"))
    ok(wait_log(srv, r"%s: removed from quarantine after 14d: failure notice withheld" % q1, 10,
                mark) is not None, "removed after 14d with its log line")
    ok(wait_for(lambda: srv.ctl("quarantine", "list").stdout.decode().strip() == "", 5),
       "quarantine empty")
    ok(wait_empty(srv, 5), "queue empty")
    is_(smx.count(), 1, "no notice at removal either")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
