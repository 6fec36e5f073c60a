#!/usr/bin/env python3
# run-all: alone (replies within 0.5 s and windows around reply_wait)
# 122-verify-failures (issue 8, part 1): what RCPT answers when the
# primary gives no answer.
#  - primary down (connection refused), unverified = "accept": 250, not
#    cached; unverified = "tempfail": 450 4.1.1
#  - a primary that takes the connection and never greets: the first RCPT
#    waits for the probe timeout, then the primary is remembered as
#    unreachable and the next RCPTs answer at once (no wait per RCPT)
#  - a slow primary (RCPT answered after 4 s, reply_wait 2 s): 450 4.1.1
#    "verification in progress" after reply_wait, the probe goes on and
#    fills the cache: the next RCPT gets 250 at once, with no new probe
#  - a primary slower than probe_timeout: unknown, nothing cached
#  - a 4xx from the primary (greylisting): unknown, nothing cached
import os
import socket
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def slow(addr):
    local = addr.split("@")[0].lower()
    if local.startswith("mxkeep-verify-"):
        return "550 5.1.1 no such user"
    if local.startswith("slow"):
        time.sleep(4)
        return None
    if local.startswith("glacial"):
        time.sleep(6)
        return None
    if local.startswith("grey"):
        return "450 4.7.1 greylisted, come back later"
    return None


def timed_rcpt(c, addr):
    t0 = time.monotonic()
    r = c.cmd("RCPT TO:<%s>" % addr, timeout=30)
    return r, time.monotonic() - t0


def cached(srv, addr):
    return srv.ctl("verify", addr).stdout.decode()


def main():
    require_binaries()
    down_port = free_port_on("127.0.0.2")          # nothing listens there
    silent = socket.socket()
    silent.bind(("127.0.0.3", 0))
    silent.listen(64)                               # handshakes, never greets
    prim = FakeSMTP(host="127.0.0.4", rcpt=slow, name="slow.primary").start()
    doms = [
        {"name": "down-accept.test", "primary": "[127.0.0.2]:%d" % down_port,
         "verify": "callout", "unverified": "accept"},
        {"name": "down-tempfail.test", "primary": "[127.0.0.2]:%d" % (down_port),
         "verify": "callout", "unverified": "tempfail"},
        {"name": "silent.test", "primary": "[127.0.0.3]:%d" % silent.getsockname()[1],
         "verify": "callout", "unverified": "accept"},
        {"name": "slow.test", "primary": "[127.0.0.4]:%d" % prim.port,
         "verify": "callout", "unverified": "tempfail"},
    ]
    srv = Server(domains=doms, settings={"verify": {"reply_wait": "2s", "probe_timeout": "5s",
                                                    "unreachable": "60s"}})
    srv.start()
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<sender@example.com>")

    r, t = timed_rcpt(c, "user@down-accept.test")
    is_(r.code, 250, "primary down, unverified=accept: 250 (%s)" % r)
    ok(t < 1.5, "at once (%.2f s)" % t)
    like(cached(srv, "user@down-accept.test"), r"  none", "no answer cached")
    r, t = timed_rcpt(c, "user@down-tempfail.test")
    is_(r.code, 450, "primary down, unverified=tempfail: 450")
    like(r.text, r"^450 4\.1\.1 ", "with 4.1.1")

    r, t = timed_rcpt(c, "one@silent.test")
    is_(r.code, 450, "silent primary: the first RCPT waits reply_wait, then 450 (%s)" % r)
    ok(1.5 <= t < 4.0, "after reply_wait (%.2f s)" % t)
    # The probe times out in the greeting (5 s after it started).
    time.sleep(4)
    r, t = timed_rcpt(c, "two@silent.test")
    is_(r.code, 250, "then unverified=accept answers (%s)" % r)
    ok(t < 0.5, "at once: the unreachable primary is remembered (%.2f s)" % t)
    r, t = timed_rcpt(c, "three@silent.test")
    ok(r.code == 250 and t < 0.5, "and for the next address too (%.2f s)" % t)

    r, t = timed_rcpt(c, "slow1@slow.test")
    is_(r.code, 450, "slow primary: 450 after reply_wait")
    like(r.text, r"^450 4\.1\.1 .*verification in progress", "verification in progress")
    ok(1.5 <= t < 3.5, "after about reply_wait (%.2f s)" % t)
    ok(wait_for(lambda: " valid " in cached(srv, "slow1@slow.test"), 8),
       "the probe went on and filled the cache")
    n = len(prim.rcpt_log)
    r, t = timed_rcpt(c, "slow1@slow.test")
    ok(r.code == 250 and t < 0.5, "the sender's retry: 250 at once (%s, %.2f s)" % (r, t))
    is_(len(prim.rcpt_log), n, "from the cache, no new probe")

    r, t = timed_rcpt(c, "glacial@slow.test")
    is_(r.code, 450, "primary slower than probe_timeout: 450")
    time.sleep(5)
    like(cached(srv, "glacial@slow.test"), r"  none", "a probe timeout caches nothing")
    r, t = timed_rcpt(c, "grey@slow.test")
    is_(r.code, 450, "a 4xx from the primary: 450 (tempfail domain)")
    like(r.text, r"^450 4\.1\.1 ", "our own 4.1.1, not the primary's text")
    like(cached(srv, "grey@slow.test"), r"  none", "a 4xx caches nothing")
    c.close()
    srv.stop()
    prim.stop()
    silent.close()
    done()


run_main(main)
