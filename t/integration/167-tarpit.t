#!/usr/bin/env python3
# run-all: alone (delays measured to 0.1 s)
# 167-tarpit (issue 9, section 5): the unknown-recipient tarpit.  After
# tarpit_after 5xx RCPT replies in a session, each further 5xx reply is
# delayed tarpit_delay, doubling, bounded by tarpit_max (lower bounds
# measured; the upper bound loosely).  The loop does not sleep: another
# client is served at once meanwhile.  Pipelined commands behind a held
# reply are answered in order.  A valid recipient is not delayed; an
# allow-listed client is never delayed.  On the old code every reply comes
# at once (and the settings are unknown: exit 78).
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def stats(srv):
    r = srv.ctl("--json", "stats")
    try:
        return json.loads(r.stdout.decode("utf-8"))
    except ValueError:
        return {}


def timed(c, line):
    t0 = time.monotonic()
    r = c.cmd(line)
    return r, time.monotonic() - t0


def main():
    require_binaries()
    srv = Server(domains=[{"name": "example.org", "hold": True, "recipients": ["alice@example.org"]}],
                 settings={"ratelimit": {"tarpit_after": 2, "tarpit_delay": "1s", "tarpit_max": "2s"},
                           "allow_clients": ["127.0.9.1"]},
                 limits={"bad_commands": 20})
    srv.start()
    before = stats(srv)

    c = srv.raw(timeout=20)
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    took = []
    for i in range(2):
        r, t = timed(c, "RCPT TO:<nobody%d@example.org>" % i)
        is_(r.code, 550, "unknown recipient %d: 550" % (i + 1))
        took.append(t)
    ok(max(took) < 0.9, "the first 2 refusals are not delayed (%.2fs)" % max(took))

    r, t = timed(c, "RCPT TO:<nobody2@example.org>")
    is_(r.code, 550, "3rd unknown: 550")
    ok(t >= 0.95, "3rd unknown delayed at least tarpit_delay (1s): %.2fs" % t)

    # While this session is held, another client is served at once.
    c.send("RCPT TO:<nobody3@example.org>\r\n")
    t0 = time.monotonic()
    o = srv.raw(timeout=10)
    o.ehlo()
    o.cmd("MAIL FROM:<s@sender.example>")
    is_(o.cmd("RCPT TO:<alice@example.org>").code, 250, "another client meanwhile: 250")
    ok(time.monotonic() - t0 < 1.0, "... served while the tarpit holds the first (%.2fs)"
       % (time.monotonic() - t0))
    o.cmd("QUIT")
    o.close()
    r = c.reply()
    t = time.monotonic() - t0
    is_(r.code, 550, "4th unknown: 550")
    ok(t >= 1.9, "4th delayed twice as long (2s): %.2fs" % t)

    # Bounded by tarpit_max, and pipelined commands wait their turn.
    t0 = time.monotonic()
    c.send("RCPT TO:<nobody4@example.org>\r\nRCPT TO:<alice@example.org>\r\nNOOP\r\n")
    rs = c.replies(3, timeout=15)
    t = time.monotonic() - t0
    is_([x.code for x in rs], [550, 250, 250], "pipelined behind a held reply: answered in order")
    ok(1.9 <= t < 3.5, "5th delayed tarpit_max (2s), no more: %.2fs" % t)
    r, t = timed(c, "RCPT TO:<alice@example.org>")
    is_(r.code, 250, "a valid recipient: 250")
    ok(t < 0.9, "... not delayed (%.2fs)" % t)
    c.cmd("QUIT")
    c.close()

    # A new session starts counting again; an allow-listed client never waits.
    a = srv.raw(timeout=10, source="127.0.9.1")
    a.ehlo()
    a.cmd("MAIL FROM:<s@sender.example>")
    t0 = time.monotonic()
    rs = [a.cmd("RCPT TO:<x%d@example.org>" % i) for i in range(5)]
    t = time.monotonic() - t0
    is_([x.code for x in rs], [550] * 5, "allow-listed: 5 unknown, 550 each")
    ok(t < 0.9, "... none delayed (%.2fs)" % t)
    a.cmd("QUIT")
    a.close()

    after = stats(srv)
    is_(after.get("tarpit_delays_total", 0) - before.get("tarpit_delays_total", 0), 3,
        "tarpit_delays_total: 3")
    ok(wait_log(srv, r"tarpit: RCPT reply delayed 2s"), "delays are logged")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
