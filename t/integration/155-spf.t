#!/usr/bin/env python3
# run-all: alone (250 within 0.8 s)
# 155-spf (issue 9, section 3): SPF (RFC 7208) of MAIL FROM and HELO is
# evaluated from the records our resolver (dnsmasq) serves, for a loopback
# client, without libspf2's loopback shortcut: a record that does not list
# 127.0.0.1 gives fail.  Each result (pass, fail, softfail, neutral, none,
# permerror, and pass through include: and a:) reaches the primary in our
# Authentication-Results header, and the 250 never waits on a slow check.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

RECORDS = [
    ("pass.test", "v=spf1 ip4:127.0.0.0/8 -all"),
    ("fail.test", "v=spf1 ip4:192.0.2.0/24 -all"),
    ("soft.test", "v=spf1 ip4:192.0.2.0/24 ~all"),
    ("neutral.test", "v=spf1 ?all"),
    ("perm.test", "v=spf1 ip4:127.0.0.0/8 bogus:x -all"),
    ("inc.test", "v=spf1 include:pass.test -all"),
    ("helo-a.test", "v=spf1 a -all"),
    ("helo-fail.test", "v=spf1 -all"),
]
# sender domain -> expected mailfrom result; none.test has no record
CASES = [("pass.test", "pass"), ("fail.test", "fail"), ("soft.test", "softfail"),
         ("neutral.test", "neutral"), ("none.test", "none"), ("perm.test", "permerror"),
         ("inc.test", "pass")]


def ar_headers(body):
    """The Authentication-Results fields of a message (unfolded)."""
    head = body.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    unfolded = re.sub(r"\r\n[ \t]+", " ", head)
    return [ln for ln in unfolded.split("\r\n") if ln.lower().startswith("authentication-results:")]


def main():
    require_binaries()
    dns = Dnsmasq(txt=RECORDS, hosts=[("helo-a.test", "127.0.0.1")]).start()
    prim = FakeSMTP(host="127.0.0.2", name="primary.example.org").start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"resolver": dns.address, "delivery": fast_delivery()})
    srv.start()

    tags = {}
    for dom, want in CASES:
        c = srv.raw()
        c.ehlo("helo-a.test")
        msg = make_message("spf-" + dom)
        rs = c.transaction("user@" + dom, ["user@example.org"], msg)
        is_(rs[-1].code, 250, "MAIL FROM user@%s: accepted (SPF is recorded, not enforced)" % dom)
        tags[message_id(msg)] = (dom, want)
        c.cmd("QUIT")
        c.close()
    # HELO identity: fail, and the null sender (only HELO is checked)
    c = srv.raw()
    c.ehlo("helo-fail.test")
    msg = make_message("spf-null")
    rs = c.transaction("", ["user@example.org"], msg)
    is_(rs[-1].code, 250, "null sender accepted")
    c.cmd("QUIT")
    c.close()

    ok(wait_for(lambda: prim.count() == len(CASES) + 1, 30, 0.2), "all delivered to the primary")
    by_id = {message_id(b): b for b in prim.bodies()}
    for mid, (dom, want) in tags.items():
        ars = ar_headers(by_id.get(mid, b""))
        is_(len(ars), 1, "%s: one Authentication-Results header" % dom)
        text = ars[0] if ars else ""
        like(text, r"^Authentication-Results: mx2\.example\.net;", "%s: our authserv-id" % dom)
        like(text, r"spf=%s smtp\.mailfrom=user@%s" % (want, re.escape(dom)),
             "%s: spf=%s for MAIL FROM" % (dom, want))
        like(text, r"spf=pass smtp\.helo=helo-a\.test", "%s: HELO helo-a.test passes by a:" % dom)
    null = ar_headers(by_id.get("<spf-null@example.com>", b""))
    text = null[0] if null else ""
    like(text, r"spf=fail smtp\.helo=helo-fail\.test", "HELO identity fail")
    unlike(text, r"smtp\.mailfrom", "null sender: no MAIL FROM result")
    like(srv.log(), r"spf: mailfrom=fail helo=pass", "result logged with the queue ID")

    # A resolver that never answers: the 250 does not wait for SPF (t/190
    # has the details), and the record says temperror once the check gives
    # up, after the commit.
    srv.stop()
    dead = free_port_on("127.0.0.1")
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", dead))      # bound, never read: queries vanish
    srv2 = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                  settings={"resolver": "127.0.0.1:%d" % dead, "spf": {"timeout": "1s"},
                            "delivery": fast_delivery()})
    srv2.start()
    c = srv2.raw()
    c.ehlo("helo-a.test")
    t0 = time.monotonic()
    rs = c.transaction("user@pass.test", ["user@example.org"], make_message("spf-slow"))
    took = time.monotonic() - t0
    is_(rs[-1].code, 250, "slow DNS: still accepted")
    ok(took < 0.9, "slow DNS: 250 after %.2fs, not waiting for SPF (spf.timeout 1s)" % took)
    # the next end of data does not wait either
    t0 = time.monotonic()
    rs = c.transaction("user@pass.test", ["user@example.org"], make_message("spf-slow2"))
    took2 = time.monotonic() - t0
    is_(rs[-1].code, 250, "slow DNS, second message: accepted")
    ok(took2 < 0.8, "slow DNS, second message: no wait (%.2fs)" % took2)
    c.cmd("QUIT")
    c.close()
    ok(wait_for(lambda: any(message_id(b) == "<spf-slow@example.com>" for b in prim.bodies()), 20, 0.2),
       "slow DNS: delivered")
    slow = [b for b in prim.bodies() if message_id(b) == "<spf-slow@example.com>"]
    like(ar_headers(slow[0])[0] if slow else "", r"spf=temperror smtp\.mailfrom=user@pass\.test",
         "slow DNS: temperror recorded")
    like(srv2.log(), r"spf: mailfrom=temperror helo=temperror \(after the commit\)",
         "the result that came after the commit is logged")
    hole.close()
    is_(srv2.stop(), 0, "mxkeepd exits 0")


run_main(main)
