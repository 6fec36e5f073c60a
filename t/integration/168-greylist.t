#!/usr/bin/env python3
# 168-greylist (issue 9, section 5): greylisting per domain with short
# configured delays.  First attempt 450 4.2.0; a retry before the delay
# 450; after it 250; another address in the same /24 passes at once, one
# in another /24 does not; a domain without greylist and an allow-listed
# client are never greylisted; a triplet not retried within the retry
# window starts over; the pass-list survives a restart; with the clock
# moved past pass_expire (libfaketime) a passed triplet is greylisted
# again.  On the old code `greylist` is unknown (exit 78).
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

DELAY = 2


def stats(srv):
    r = srv.ctl("--json", "stats")
    try:
        return json.loads(r.stdout.decode("utf-8"))
    except ValueError:
        return {}


def attempt(srv, src, sender, rcpt):
    c = srv.raw(timeout=10, source=src)
    c.ehlo()
    c.cmd("MAIL FROM:<%s>" % sender)
    r = c.cmd("RCPT TO:<%s>" % rcpt)
    c.cmd("QUIT")
    c.close()
    return r


def main():
    require_binaries()
    srv = Server(domains=[{"name": "grey.example", "hold": True, "greylist": True},
                          {"name": "plain.example", "hold": True}],
                 settings={"greylist": {"delay": "%ds" % DELAY, "retry_window": "4s",
                                        "pass_expire": "1d"},
                           "allow_clients": ["127.0.9.0/24"]})
    srv.start()
    before = stats(srv)

    r = attempt(srv, "127.0.5.1", "s@sender.example", "u@grey.example")
    is_(r.code, 450, "first attempt: 450")
    like(r.text, r"^450 4\.2\.0 <u@grey\.example>: .*Greylisted", "... 4.2.0 Greylisted")
    t0 = time.monotonic()
    r = attempt(srv, "127.0.5.1", "s@sender.example", "u@grey.example")
    is_(r.code, 450, "retry before the delay: still 450")
    is_(attempt(srv, "127.0.5.1", "s@sender.example", "u@plain.example").code, 250,
        "a domain without greylist: 250 at once")
    is_(attempt(srv, "127.0.9.4", "s@sender.example", "u@grey.example").code, 250,
        "an allow-listed client: 250 at once")
    is_(attempt(srv, "127.0.5.1", "other@sender.example", "u@grey.example").code, 450,
        "another sender is another triplet: 450")
    time.sleep(max(0, DELAY + 0.3 - (time.monotonic() - t0)))
    is_(attempt(srv, "127.0.5.1", "s@sender.example", "u@grey.example").code, 250,
        "retry after the delay: 250")
    is_(attempt(srv, "127.0.5.77", "S@Sender.Example", "u@grey.example").code, 250,
        "another address in the same /24 (sender in other case): 250")
    is_(attempt(srv, "127.0.6.1", "s@sender.example", "u@grey.example").code, 450,
        "an address in another /24: 450")

    # The retry window (4s): a triplet first seen and retried too late
    # starts over.
    is_(attempt(srv, "127.0.7.1", "late@sender.example", "u@grey.example").code, 450,
        "window: first attempt 450")
    time.sleep(5.5)
    is_(attempt(srv, "127.0.7.1", "late@sender.example", "u@grey.example").code, 450,
        "retried after the retry window: 450 again (starts over)")

    # A whole transaction through a greylisted then passed triplet.
    c = srv.raw(timeout=10, source="127.0.5.1")
    c.ehlo()
    rs = c.transaction("s@sender.example", ["u@grey.example"], make_message("g"))
    c.cmd("QUIT")
    c.close()
    is_(rs[-1].code, 250, "a passed triplet's message is queued")

    after = stats(srv)
    is_(after.get("rejected_greylist_total", 0) - before.get("rejected_greylist_total", 0), 6,
        "rejected_total{reason=greylist}: 6")
    ok(os.path.isdir(os.path.join(srv.spool, "greylist")), "the store is SPOOL/greylist")

    srv.stop()
    srv.start()
    is_(attempt(srv, "127.0.5.1", "s@sender.example", "u@grey.example").code, 250,
        "after a restart the pass-list is kept: 250")
    is_(srv.stop(), 0, "mxkeepd exits 0")

    env = faketime_env("+3d")
    if env is None:
        skip("libfaketime not installed", 2)
    else:
        srv.start(env=env)
        is_(attempt(srv, "127.0.5.1", "s@sender.example", "u@grey.example").code, 450,
            "3 days later (pass_expire 1d): greylisted again")
        is_(srv.stop(), 0, "mxkeepd exits 0 (faketime)")


run_main(main)
