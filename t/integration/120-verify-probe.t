#!/usr/bin/env python3
# 120-verify-probe (issue 8, part 1): the callout state machine against a
# scripted primary, through `mxkeepctl verify --probe` (no RCPT path
# needed).  A known user is VALID and cached; an unknown one is INVALID
# with the primary's own 5.1.1 text; a 4xx is UNKNOWN and not cached;
# probes share one session (RSET between them), never send DATA; a
# primary that accepts a random local part is recorded once as a
# catch-all domain and answers for every address of it with no more
# probes; verify list / forget and /metrics show it.
import http.client
import json
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

USERS = {"alice", "bob", "carol"}


def answers(addr):
    local, _, dom = addr.lower().partition("@")
    if dom == "catch.test":
        return None                                 # accepts anything
    if local == "busy":
        return "450 4.2.1 mailbox busy, try later"
    if local in USERS:
        return None
    return "550 5.1.1 <%s>: Recipient address rejected: User unknown in local recipient table" % addr


def probe(srv, addr):
    r = srv.ctl("--json", "verify", addr, "--probe", timeout=30)
    try:
        return r.returncode, json.loads(r.stdout.decode())
    except ValueError:
        return r.returncode, {"raw": r.stdout + r.stderr}


def show(srv, addr):
    r = srv.ctl("verify", "--json", addr)
    try:
        return json.loads(r.stdout.decode())
    except ValueError:
        return {"raw": r.stdout + r.stderr}


def http_get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8")
    finally:
        c.close()


metric = metric_value     # mxtest.py


def rcpts_at(prim):
    with prim.lock:
        return [a for a, _ in prim.rcpt_log]


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", rcpt=answers, name="primary.example.org").start()
    route = "[127.0.0.2]:%d" % prim.port
    mport = free_port()
    srv = Server(domains=[{"name": "example.org", "primary": route, "verify": "callout"},
                          {"name": "catch.test", "primary": route, "verify": "callout"}],
                 settings={"verify": {"probe_timeout": "5s", "reply_wait": "2s"},
                           "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()

    rc, a = probe(srv, "Alice@Example.org")
    is_(rc, 0, "verify --probe exits 0")
    is_(a.get("result"), "valid", "a known user is valid")
    rl = rcpts_at(prim)
    is_(len(rl), 2, "first probe of the domain: a random local part, then the address")
    like(rl[0] if rl else "", r"^mxkeep-verify-[0-9a-f]{16}@example\.org$",
         "the catch-all test uses a random local part")
    is_(rl[1] if len(rl) > 1 else "", "alice@example.org", "then the address itself (lower case)")
    s = show(srv, "alice@example.org")
    is_(s.get("result"), "valid", "the answer is cached")
    is_(s.get("source"), "probe", "learned by a probe")
    s = show(srv, "@example.org")
    is_(s.get("result"), "invalid", "the domain is recorded as not catch-all")

    rc, a = probe(srv, "nobody@example.org")
    is_(a.get("result"), "invalid", "an unknown user is invalid")
    like(a.get("reply", ""), r"^550 5\.1\.1 <nobody@example\.org>: Recipient address rejected: "
         r"User unknown in local recipient table$", "the primary's code, enhanced code and text")
    is_(len(rcpts_at(prim)), 3, "no second random probe once the domain is known")
    s = show(srv, "nobody@example.org")
    is_(s.get("result"), "invalid", "the negative answer is cached")
    like(s.get("reply", ""), r"^550 5\.1\.1 .*User unknown", "with the primary's reply")

    rc, a = probe(srv, "busy@example.org")
    is_(a.get("result"), "unknown", "a 4xx is no answer")
    s = show(srv, "busy@example.org")
    is_(s.get("result"), None, "and is not cached")

    with prim.lock:
        cmds = [c.split(b" ")[0].upper() for c in prim.commands]
    ok(b"DATA" not in cmds, "never DATA")
    ok(cmds.count(b"MAIL") == 3 and cmds.count(b"RSET") >= 2,
       "MAIL FROM:<> per probe, RSET between them")
    with prim.lock:
        mails = [c for c in prim.commands if c.upper().startswith(b"MAIL")]
    ok(all(m.upper() == b"MAIL FROM:<>" for m in mails), "MAIL FROM:<> (null sender)")

    # Several probes at once share the bounded sessions (default 2).
    before = prim.nconn
    import threading
    res = {}

    def go(u):
        res[u] = probe(srv, "%s@example.org" % u)[1].get("result")
    ts = [threading.Thread(target=go, args=(u,)) for u in ("bob", "carol", "x1", "x2", "x3", "x4")]
    for t in ts:
        t.start()
    for t in ts:
        t.join(40)
    is_(sorted(res.items()), sorted({"bob": "valid", "carol": "valid", "x1": "invalid",
                                     "x2": "invalid", "x3": "invalid", "x4": "invalid"}.items()),
        "six concurrent probes all answered")
    ok(prim.max_active <= 2, "at most 2 probe sessions to the primary (max %d)" % prim.max_active)
    ok(prim.nconn - before <= 6, "sessions reused (%d new for 6 probes)" % (prim.nconn - before))

    # Catch-all: the random local part is accepted.
    n0 = len(rcpts_at(prim))
    rc, a = probe(srv, "anyone@catch.test")
    is_(a.get("result"), "valid", "catch-all domain: valid")
    s = show(srv, "@catch.test")
    is_(s.get("result"), "valid", "one domain record says catch-all")
    n1 = len(rcpts_at(prim))
    is_(n1 - n0, 2, "the catch-all probe: random part + address")
    s = show(srv, "someone-else@catch.test")
    is_(s.get("result"), "valid", "every address of the domain is valid from that record")
    is_(s.get("address"), "@catch.test", "answered by the domain record")

    # list, forget
    r = srv.ctl("verify", "list", "example.org", "--json")
    is_(r.returncode, 0, "verify list exits 0")
    try:
        rows = json.loads(r.stdout.decode())
    except ValueError:
        rows = []
    addrs = sorted(x["address"] for x in rows)
    ok("alice@example.org" in addrs and "nobody@example.org" in addrs and
       "@example.org" in addrs and not any(a.endswith("catch.test") for a in addrs),
       "list DOMAIN shows that domain's answers only: %s" % addrs)
    ok(all(x.get("age", -1) >= 0 and x.get("state") == "fresh" for x in rows), "with age and state")
    r = srv.ctl("verify", "list")
    like(r.stdout.decode(), r"(?m)^alice@example\.org  valid  ", "text listing")
    r = srv.ctl("verify", "forget", "alice@example.org")
    is_(r.returncode, 0, "forget an address")
    is_(show(srv, "alice@example.org").get("result"), None, "forgotten")
    r = srv.ctl("verify", "forget", "catch.test")
    like(r.stdout.decode(), r"forgot 2 answers", "forget a domain: its records (domain + address)")
    is_(show(srv, "x@catch.test").get("result"), None, "the catch-all record is gone")
    r = srv.ctl("verify", "nobody@example.org", "--probe", "--all")
    is_(r.returncode, 64, "an option verify does not take is refused")

    _, text = http_get(mport, "/metrics")
    is_(metric(text, "verify_probes_total", result="valid"), 4.0, "/metrics: 4 valid probes")
    is_(metric(text, "verify_probes_total", result="invalid"), 5.0, "/metrics: 5 invalid probes")
    is_(metric(text, "verify_probes_total", result="unknown"), 1.0, "/metrics: 1 unknown probe")
    is_(metric(text, "verify_probe_seconds_count"), 10.0, "probe latency histogram counts them")
    ok(metric(text, "verify_probe_seconds_bucket", le="+Inf") == 10.0, "with a +Inf bucket")
    is_(metric(text, "verify_throttled_clients"), 0.0, "throttled clients gauge")
    srv.stop()
    # Daemon down: list reads the cache itself.
    r = srv.ctl("verify", "list", "--json")
    is_(r.returncode, 0, "verify list works with the daemon down")
    like(r.stdout.decode(), r'"address":"nobody@example\.org","result":"invalid"',
         "from the cache file")
    prim.stop()
    done()


run_main(main)
