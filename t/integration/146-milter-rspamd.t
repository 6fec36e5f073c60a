#!/usr/bin/env python3
# 146-milter-rspamd (issue 9, part 2): src/milter.c against a real rspamd
# (its proxy worker in milter mode, offline, t/lib/rspamd_milter.py),
# driven through whole transactions by t/unit/milter_drive: GTUBE is
# refused with rspamd's own reply (5xx and its text, enhanced code of the
# same class), a clean message is accepted and comes back with rspamd's
# headers (X-Spamd-Result, X-Rspamd-*) to add, carrying the queue ID we
# sent in the {i} macro.  No milter client existed before: fails on old code.
import os
import subprocess
import sys
import tempfile
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
from rspamd_milter import Rspamd, RSPAMD, GTUBE

DRIVE = os.path.join(ROOT, "t", "unit", "milter_drive")
HDRS = ("Subject: test\nFrom: a@sender.test\nTo: b@example.org\nMessage-ID: <m1@sender.test>\n"
        "Date: Mon, 30 Nov 2026 05:00:00 +0000\n\n")


def drive(sock, msg):
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write(msg)
    try:
        r = subprocess.run([DRIVE, sock, "tempfail", "20000", "a@sender.test", "b@example.org", f.name],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        return r.stdout.decode()
    finally:
        os.unlink(f.name)


def main():
    if not os.access(DRIVE, os.X_OK):
        skip_all("no %s (make check builds it)" % DRIVE)
    if not os.access(RSPAMD, os.X_OK):
        skip_all("rspamd is not installed")
    port = free_port()
    rs = Rspamd(port)
    try:
        ok(rs.start(lambda: port_open("127.0.0.1", port)), "rspamd's proxy worker listens")
        sock = "inet:127.0.0.1:%d" % port
        out = drive(sock, HDRS + GTUBE + "\n")
        eom = [ln for ln in out.splitlines() if ln.startswith("eom ")]
        is_(len(eom), 1, "GTUBE: one end-of-message answer")
        like(eom[0] if eom else "", r"^eom reject 5\d\d 5\.\d+\.\d+ .*[Gg]tube", "GTUBE refused with rspamd's reply")
        unlike(out, r"failed", "no failure on the way")

        out = drive(sock, HDRS + "hello, a normal message\nwith two lines\n")
        like(out, r"(?m)^eom (accept|continue)$", "clean message accepted")
        like(out, r"(?m)^mod h 0 \[X-Spamd-Result\] \[default: False", "rspamd's X-Spamd-Result to add")
        like(out, r"(?m)^mod h 0 \[X-Rspamd-Queue-Id\] \[QID0001\]", "X-Rspamd-Queue-Id carries our {i} macro")
        like(out, r"(?m)^mod h 0 \[X-Rspamd-Action\] \[no action\]", "X-Rspamd-Action no action")
        unlike(out, r"(?m)^mod [^h]", "only header additions")
    finally:
        rs.stop()


run_main(main)
