#!/usr/bin/env python3
# 70-counts: issue 7, item 9.  A domain held with mxkeepctl hold while mail
# waits for it: ETRN answers 458 with an enhanced code, says the node is
# held and how many messages wait (0.1.0: "251 ... no messages waiting").
# And every view that reports a destination's count or state tells the
# same story as `mxkeepctl summary`: the ETRN replies (253, 458), mxkeepctl
# flush/hold output, mxkeepctl queue DOMAIN and count, the control
# socket's status, /metrics (queue_messages, destination_state,
# spool_messages) and the /status page.
import http.client
import json
import os
import re
import socket
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N_HELD = 4          # to example.org, then held
N_DOWN = 3          # to down.test: its primary never answers
HTTP_TIMEOUT = 10


def http_get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8")
    finally:
        c.close()


metric = metric_value     # mxtest.py


def ctl_status(srv, domain):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(srv.ctl_socket)
    s.sendall(("status %s\n" % domain).encode())
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    head, _, payload = out.decode().partition("\n")
    return head, json.loads(payload) if head == "OK" else None


def summary(srv):
    r = srv.ctl("summary", "--json")
    return {d["domain"]: d for d in json.loads(r.stdout.decode() or "{}").get("domains", [])}


def views(srv, mport, domain):
    """(messages, state) of domain as each view tells it."""
    out = {}
    row = summary(srv).get(domain, {})
    out["summary"] = (row.get("messages"), row.get("state"))
    r = srv.ctl("--json", "queue", domain)
    out["queue DOMAIN"] = (len(json.loads(r.stdout.decode() or "{}").get("messages", [])),
                           out["summary"][1])
    head, st = ctl_status(srv, domain)
    out["control status"] = ((st or {}).get("messages"), (st or {}).get("state"))
    _, text = http_get(mport, "/metrics")
    states = [s for s in ("up", "down", "held", "unknown")
              if metric(text, "destination_state", domain=domain, state=s) == 1.0]
    q = metric(text, "queue_messages", domain=domain)
    out["/metrics"] = (int(q) if q is not None else None, states[0] if len(states) == 1 else states)
    _, page = http_get(mport, "/status")
    m = re.search(r'<tr data-domain="%s" data-state="(\w+)"><td>[^<]*</td><td class="num">(\d+)<'
                  % re.escape(domain), page)
    out["/status"] = (int(m.group(2)), m.group(1)) if m else (None, None)
    return out


def main():
    require_binaries()
    down_port = free_port()
    mport = free_port()
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.1]:%d" % down_port},
        {"name": "down.test", "primary": "[127.0.0.1]:%d" % down_port},
    ], settings={"delivery": fast_delivery(probe_min="10m", probe_max="1h"),
                 "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()
    send_batch(srv, N_HELD, rcpt="u@example.org", tag="held")
    send_batch(srv, N_DOWN, rcpt="u@down.test", tag="down")
    ok(wait_log(srv, r"destination down\.test: \w+ -> down", 10) is not None, "down.test is down")
    ok(wait_log(srv, r"destination example\.org: \w+ -> down", 10) is not None,
       "example.org is down")

    # --- a destination that is down: every view says down and N_DOWN ---
    v = views(srv, mport, "down.test")
    for name, got in sorted(v.items()):
        is_(got, (N_DOWN, "down"), "down.test as %s: %d messages, down" % (name, N_DOWN))
    r = etrn(srv, "down.test")
    is_(r.code, 253, "ETRN down.test: 253")
    like(r.last, r"^2\.0\.0 OK, %d pending messages for node down\.test started$" % N_DOWN,
         "253 counts what summary counts (%d)" % N_DOWN)
    r = srv.ctl("flush", "down.test")
    is_((r.returncode, r.stdout.decode()), (0, "%d messages\n" % N_DOWN),
        "mxkeepctl flush: the same count")

    # --- held with mail waiting (the issue's input) ---
    r = srv.ctl("hold", "example.org")
    is_(r.returncode, 0, "mxkeepctl hold example.org: exit 0")
    is_(r.stdout.decode(), "held example.org: %d messages waiting\n" % N_HELD,
        "hold says held and how many wait")
    r = etrn(srv, "example.org")
    is_(r.code, 458, "ETRN for the held node: 458 (RFC 1985), not 251")
    is_(r.last, "4.3.0 Unable to queue messages for node example.org: held by the "
        "administrator, %d messages waiting" % N_HELD,
        "458 4.3.0: the node is held, %d messages wait" % N_HELD)
    unlike(r.last, r"no messages waiting", "never 'no messages waiting' while mail waits")
    like(srv.log(), r"ETRN example\.org from \[127\.0\.0\.1\]: 458 4\.3\.0 .*%d messages waiting"
         % N_HELD, "log: the 458 with the count")
    r = srv.ctl("flush", "example.org")
    is_(r.returncode, 75, "mxkeepctl flush of the held domain: exit 75")
    is_(r.stderr.decode(), "mxkeepctl: example.org is held: %d messages waiting\n" % N_HELD,
        "flush says held and the count")
    v = views(srv, mport, "example.org")
    for name, got in sorted(v.items()):
        is_(got, (N_HELD, "held"), "example.org as %s: %d messages, held" % (name, N_HELD))

    # --- totals: count, /metrics spool_messages, summary's sum ---
    r = srv.ctl("count")
    total = int(r.stdout.decode().strip() or -1)
    is_(total, N_HELD + N_DOWN, "count: %d" % (N_HELD + N_DOWN))
    _, text = http_get(mport, "/metrics")
    is_(metric(text, "spool_messages"), float(total), "/metrics spool_messages = count")
    is_(sum(d["messages"] for d in summary(srv).values()), total,
        "summary's rows add up to count (each message waits for one domain)")
    r = srv.ctl("stats", "--json")
    is_(json.loads(r.stdout.decode() or "{}").get("queue_messages"), total, "stats queue_messages = count")

    # --- released: the same views follow ---
    r = srv.ctl("release", "example.org")
    is_(r.stdout.decode(), "released example.org: %d messages waiting\n" % N_HELD,
        "release says how many wait")
    r = etrn(srv, "example.org")
    is_(r.code, 253, "released: ETRN 253")
    like(r.last, r" %d pending messages for node example\.org started$" % N_HELD, "... same count")

    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
