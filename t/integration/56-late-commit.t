#!/usr/bin/env python3
"""56-late-commit.t - a message that commits after a later QID was already
walked past is still delivered at once.

A QID is taken at MAIL; with parallel senders the commits finish in
another order, so a message can sort before the scheduler's cursor when
its commit completes.  Input (found trying issue 7's item 1 by hand):
smtp-source with 20 sessions against an up primary left a few messages
queued with no attempt until a flush or restart.  Right: the commit's
completion schedules the message whatever its place in the order.
"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: E402,F401,F403

ROUNDS = 3
PER_ROUND = 2000
SESSIONS = 20


def main():
    require_binaries()
    prim = SmtpSink()
    prim.start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.1]:%d" % prim.port}])
    srv.start()
    total = 0
    for rnd in range(ROUNDS):
        r = subprocess.run([SMTP_SOURCE, "-s", str(SESSIONS), "-m", str(PER_ROUND), "-l", "512",
                            "-f", "a@example.net", "-t", "x@example.org",
                            "127.0.0.1:%d" % srv.port], capture_output=True, text=True, timeout=300)
        is_(r.returncode, 0, "round %d: smtp-source -s %d -m %d exits 0" % (rnd + 1, SESSIONS, PER_ROUND))
        total += PER_ROUND
        # No flush, no ETRN, no restart: the primary is up, and every
        # committed message is scheduled by its commit.  The retry timer
        # is minutes away (probe_min), so waiting a few seconds cannot
        # hide a stranded message.
        ok(wait_for(lambda: prim.count() >= total, 30, 0.2),
           "round %d: the primary has all %d messages" % (rnd + 1, total))
        ok(wait_for(lambda: len(srv.queue()) == 0, 10, 0.2),
           "round %d: nothing left in the queue (%d left)" % (rnd + 1, len(srv.queue())))
    is_(len(re.findall(r"status=sent", srv.log())), total, "one 'sent' line per message")


run_main(main)
