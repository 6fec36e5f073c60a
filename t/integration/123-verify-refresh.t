#!/usr/bin/env python3
# run-all: alone (cached answers within 0.5 s)
# 123-verify-refresh (issue 8, part 1): cache expiry and background
# refresh.
#  A. short refresh times (2 s): a stale positive answer is still used
#     (250 at once) and a background probe refreshes it; when the primary
#     has since deleted the user, the refresh turns it invalid and the next
#     RCPT gets 550.  A stale negative answer likewise.
#  B. Postfix's defaults (positive 31d/7d, negative 3d/3h), the clock moved
#     with libfaketime: at +8 days the positive answer is stale (used, and
#     refreshed in the background), the negative one expired (probed again
#     at RCPT); at +32 days the refreshed answer is still valid (the
#     refresh renewed it) without a probe at RCPT, and the sweep deletes
#     the expired negative answer from the cache, and nothing else.
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

USERS = {"alice", "bob", "carol"}


def answers(addr):
    local = addr.split("@")[0].lower()
    if local in USERS:
        return None
    return "550 5.1.1 <%s>: unknown user" % addr


def probes_for(prim, addr):
    with prim.lock:
        return sum(1 for a, _ in prim.rcpt_log if a.lower() == addr)


def rcpt(srv, addr):
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<sender@example.com>")
    t0 = time.monotonic()
    r = c.cmd("RCPT TO:<%s>" % addr, timeout=30)
    t = time.monotonic() - t0
    c.close()
    return r, t


def state(srv, addr):
    return srv.ctl("verify", addr).stdout.decode()


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", rcpt=answers, name="primary.test").start()
    route = "[127.0.0.2]:%d" % prim.port

    # ---- A: short refresh times ----
    srv = Server(domains=[{"name": "example.org", "primary": route, "verify": "callout",
                           "unverified": "tempfail"}],
                 settings={"verify": {"positive_refresh": "2s", "negative_refresh": "2s",
                                      "reply_wait": "5s"}})
    srv.start()
    r, _ = rcpt(srv, "alice@example.org")
    is_(r.code, 250, "alice: probed, valid")
    r, _ = rcpt(srv, "dave@example.org")
    is_(r.code, 550, "dave: probed, invalid")
    is_(probes_for(prim, "alice@example.org"), 1, "one probe for alice")
    r, _ = rcpt(srv, "alice@example.org")
    is_(probes_for(prim, "alice@example.org"), 1, "fresh: answered from the cache")
    like(state(srv, "alice@example.org"), r"valid  \S+  fresh", "listed fresh")

    time.sleep(2.5)
    USERS.discard("alice")          # the primary deletes alice
    USERS.add("dave")               # and creates dave
    like(state(srv, "alice@example.org"), r"valid  \S+  stale", "past positive_refresh: stale")
    r, t = rcpt(srv, "alice@example.org")
    ok(r.code == 250 and t < 0.5, "a stale answer is used at once (%s, %.2f s)" % (r, t))
    ok(wait_for(lambda: probes_for(prim, "alice@example.org") == 2, 5),
       "and a background probe refreshes it")
    ok(wait_for(lambda: " invalid " in state(srv, "alice@example.org"), 5),
       "the refresh learned the primary's new answer")
    r, _ = rcpt(srv, "alice@example.org")
    is_(r.code, 550, "the next RCPT: 550")
    r, t = rcpt(srv, "dave@example.org")
    ok(r.code == 550 and t < 0.5, "stale negative answer used at once (%s)" % r)
    ok(wait_for(lambda: " valid " in state(srv, "dave@example.org"), 5),
       "and refreshed in the background: now valid")
    r, _ = rcpt(srv, "dave@example.org")
    is_(r.code, 250, "dave: 250")
    srv.stop()

    # ---- B: the defaults, with the clock moved ----
    env8 = faketime_env("+8d")
    env32 = faketime_env("+32d")
    if env8 is None:
        skip("libfaketime not installed", 11)
        prim.stop()
        done()
        return
    USERS.clear()
    USERS.update({"bob"})
    srv2 = Server(domains=[{"name": "example.org", "primary": route, "verify": "callout",
                            "unverified": "tempfail"}],
                  settings={"verify": {"reply_wait": "5s"}})
    srv2.start()
    is_(rcpt(srv2, "bob@example.org")[0].code, 250, "defaults: bob valid")
    is_(rcpt(srv2, "erin@example.org")[0].code, 550, "defaults: erin invalid")
    nb, ne = probes_for(prim, "bob@example.org"), probes_for(prim, "erin@example.org")
    srv2.stop()
    srv2.start(env=env8)
    r, t = rcpt(srv2, "bob@example.org")
    ok(r.code == 250 and t < 0.5, "+8d: bob's answer is stale (7d) but kept (31d): 250 at once")
    ok(wait_for(lambda: probes_for(prim, "bob@example.org") == nb + 1, 5),
       "+8d: and refreshed in the background")
    r, _ = rcpt(srv2, "erin@example.org")
    is_(r.code, 550, "+8d: erin probed again")
    is_(probes_for(prim, "erin@example.org"), ne + 1, "+8d: the negative answer had expired (3d)")
    srv2.stop()
    prim.stop()         # from here only the cache can answer (tempfail domain)
    srv2.start(env=env32)
    r, _ = rcpt(srv2, "bob@example.org")
    is_(r.code, 250, "+32d, primary down: bob still valid from the record the +8d refresh "
        "renewed (24 days old, not expired)")
    r, _ = rcpt(srv2, "erin@example.org")
    is_(r.code, 450, "+32d: erin's answer (renewed at +8d) has expired: unverified, 450")
    # The sweep (10 s after start) deletes expired records, and only those.
    ok(wait_log(srv2, r"verify: 1 expired cache record removed", 30) is not None,
       "+32d: the sweep removes the one expired record")
    like(state(srv2, "bob@example.org"), r"valid", "+32d: bob's (not expired) is kept")
    unlike(state(srv2, "erin@example.org"), r"invalid", "+32d: erin's is gone from the cache")
    srv2.stop()
    done()


run_main(main)
