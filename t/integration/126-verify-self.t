#!/usr/bin/env python3
# 126-verify-self: a callout whose primary greets with our own hostname
# (a route pointing back at this node, a NAT, a stale MX) is a loop: no
# RCPT is sent, one warning says "loops back to myself", the address is
# unknown (the domain's `unverified` decides) and the host is remembered
# as unreachable, so later RCPTs answer at once and log nothing more.
# A primary with another name on the same address is probed as usual.
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    loop = FakeSMTP(host="127.0.0.2", name=HOSTNAME.upper()).start()   # case-insensitive
    other = FakeSMTP(host="127.0.0.3", name="primary.example.org").start()
    doms = [{"name": "loop.test", "primary": "[127.0.0.2]:%d" % loop.port,
             "verify": "callout", "unverified": "tempfail"},
            {"name": "loop-accept.test", "primary": "[127.0.0.2]:%d" % loop.port,
             "verify": "callout", "unverified": "accept"},
            {"name": "fine.test", "primary": "[127.0.0.3]:%d" % other.port,
             "verify": "callout", "unverified": "tempfail"}]
    srv = Server(domains=doms, settings={"verify": {"reply_wait": "5s"}}).start()
    c = srv.raw()
    c.ehlo()
    is_(c.cmd("MAIL FROM:<s@sender.example>").code, 250, "MAIL")
    t0 = time.monotonic()
    r = c.cmd("RCPT TO:<a@loop.test>", timeout=20)
    took = time.monotonic() - t0
    like(r.text, r"^450 4\.1\.1 <a@loop\.test>: .*verification failed",
         "a primary greeting as ourselves: unknown, tempfail's 450 4.1.1 (%.2fs)" % took)
    ok(took < 4, "answered without waiting for reply_wait")
    r = c.cmd("RCPT TO:<b@loop-accept.test>", timeout=20)
    is_(r.code, 250, "the same loop with unverified = accept: 250")
    is_([a for a, _ in loop.rcpt_log], [], "no RCPT was sent to the looping primary")
    is_(len(re.findall(r"loops back to myself", srv.log())), 1,
        "one warning for the looping host, not one per RCPT")
    r = c.cmd("RCPT TO:<c@fine.test>", timeout=20)
    is_(r.code, 250, "a primary with another name is probed: 250")
    ok(any(a.lower() == "c@fine.test" for a, _ in other.rcpt_log), "the address reached it")
    c.cmd("QUIT")
    is_(srv.stop(), 0, "clean exit")


run_main(main)
