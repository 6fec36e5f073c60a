#!/usr/bin/env python3
# 140-gate-switch (issue 9, part 1): accept = "when-primary-down" switching
# both ways as the primary goes down and up.  A primary that is not there
# yet: the gate is unknown, then down (3 failed heartbeats), and mail is
# accepted and kept; the primary comes up: the kept mail is delivered, the
# gate is up and RCPT gets 450 4.7.0 telling the sender to use the primary
# (counted as rejected_total{reason="gated"}, shown in summary and
# /metrics); the primary stops: after three failed heartbeats in a row
# (not one) mail is accepted again, kept, and delivered when it returns.
# A domain that is not gated, with the same primary, is never refused.
# On the old code `accept` is an unknown key (the daemon does not start)
# and nothing is ever refused 450 4.7.0.
import http.client
import json
import os
import re
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

HB = 1                  # heartbeat, seconds


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


def metrics(mport):
    c = http.client.HTTPConnection("127.0.0.1", mport, timeout=10)
    try:
        c.request("GET", "/metrics")
        return c.getresponse().read().decode("utf-8", "replace")
    finally:
        c.close()


def metric(text, name, **labels):
    for ln in text.split("\n"):
        if not ln.startswith(name + "{") and not ln.startswith(name + " "):
            continue
        if all('%s="%s"' % (k, v) in ln for k, v in labels.items()):
            return float(ln.rsplit(" ", 1)[1])
    return None


def summary_gate(srv, domain):
    r = srv.ctl("--json", "summary")
    try:
        doms = json.loads(r.stdout.decode("utf-8"))["domains"]
    except (ValueError, KeyError):
        return None
    for d in doms:
        if d.get("domain") == domain:
            return d.get("gate")
    return None


def main():
    require_binaries()
    port = free_port_on("127.0.0.2")
    route = "[127.0.0.2]:%d" % port
    mport = free_port()
    srv = Server(domains=[
        {"name": "example.org", "primary": route, "accept": "when-primary-down"},
        {"name": "open.test", "primary": route},
    ], settings={"delivery": fast_delivery(heartbeat="%ds" % HB),
                 "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()

    # 1. No primary yet: unknown, then down after three failed heartbeats.
    r = rcpt(srv, "alice@example.org")
    is_(r.code, 250, "gate unknown or down at start: RCPT accepted")
    m = wait_log(srv, r"gate 127\.0\.0\.2:%d: \w+ -> \w+" % port, timeout=3 * HB + 5)
    ok(m is not None and m.group(0).endswith("unknown -> down"),
       "the gate goes unknown -> down after failed heartbeats")
    r = send(srv, "alice@example.org", "while-down-1")
    is_(r.code, 250, "mail for the gated domain is accepted while the primary is down")
    is_(summary_gate(srv, "example.org"), "down", "summary --json shows the gate down")
    is_(summary_gate(srv, "open.test"), None, "summary shows no gate for a domain not gated")

    # 2. The primary comes up: the kept mail is delivered, the gate is up.
    prim = FakeSMTP(host="127.0.0.2", port=port, name="primary.example.org").start()
    ok(wait_for(lambda: summary_gate(srv, "example.org") == "up", 3 * HB + 5, 0.2),
       "the gate goes up after the primary answers a heartbeat")
    ok(wait_for(lambda: any(b"while-down-1" in x["body"] for x in prim.messages), 15, 0.2),
       "mail kept while the primary was down is delivered when it returns")
    gated_before = metric(metrics(mport), "mxkeep_rejected_total", reason="gated") or 0
    r = rcpt(srv, "alice@example.org")
    is_(r.code, 450, "primary up: RCPT for the gated domain gets 450")
    like(r.text, r"^450 4\.7\.0 <alice@example\.org>: primary MX is up",
         "the 450 4.7.0 text tells the sender to use the primary")
    r = rcpt(srv, "bob@open.test")
    is_(r.code, 250, "a domain that is not gated is never refused (same primary, up)")
    text = metrics(mport)
    is_(metric(text, "mxkeep_rejected_total", reason="gated"), gated_before + 1,
        "/metrics counts the refusal as rejected_total{reason=\"gated\"}")
    is_(metric(text, "mxkeep_gate_state", primary="127.0.0.2:%d" % port, state="up"), 1.0,
        "/metrics shows mxkeep_gate_state{state=\"up\"} 1")
    c = http.client.HTTPConnection("127.0.0.1", mport, timeout=10)
    c.request("GET", "/status")
    page = c.getresponse().read().decode("utf-8", "replace")
    c.close()
    like(page, r'data-domain="example\.org".*?data-gate="up">gate up since ',
         "/status shows the gate of the gated domain")
    out = srv.ctl("summary").stdout.decode("utf-8", "replace")
    like(out, r"gate example\.org: up since \d{4}-", "summary text shows the gate and since when")

    # 3. The primary stops: still refused after one failure, accepted
    #    after three in a row.
    failed0 = metric(text, "mxkeep_heartbeats_total", primary="127.0.0.2:%d" % port,
                     result="failed") or 0
    prim.stop()
    t0 = time.monotonic()
    r = rcpt(srv, "alice@example.org")
    is_(r.code, 450, "right after the primary stops the gate is still up (hysteresis)")
    ok(wait_for(lambda: rcpt(srv, "alice@example.org").code == 250, 3 * HB + 6, 0.3),
       "after failed heartbeats the gated domain accepts again")
    took = time.monotonic() - t0
    failed = metric(metrics(mport), "mxkeep_heartbeats_total", primary="127.0.0.2:%d" % port,
                    result="failed") or 0
    ok(failed - failed0 >= 3, "down only after at least 3 failed heartbeats (%d)" % (failed - failed0))
    ok(took >= 1.5 * HB, "not down after the first failure (%.1f s)" % took)
    like(srv.log(), r"gate 127\.0\.0\.2:%d: up -> down" % port, "the transition up -> down is logged")
    r = send(srv, "alice@example.org", "while-down-2")
    is_(r.code, 250, "mail accepted again while the primary is down")
    ok(len(srv.queue()) >= 1, "and kept in the queue")

    # 4. It returns: delivered, and the gate closes again.
    prim2 = FakeSMTP(host="127.0.0.2", port=port, name="primary.example.org").start()
    ok(wait_for(lambda: any(b"while-down-2" in x["body"] for x in prim2.messages), 15, 0.2),
       "mail accepted while down is delivered when the primary returns")
    ok(wait_for(lambda: rcpt(srv, "alice@example.org").code == 450, 3 * HB + 5, 0.3),
       "the gate is up again: 450 4.7.0")
    ok(wait_empty(srv, 10), "nothing left in the queue")
    srv.stop()
    prim2.stop()


run_main(main)
