#!/usr/bin/env python3
# run-all: alone (a window around the milter timeout)
# 145-milter-client (issue 9, part 2): src/milter.c, the asynchronous milter
# client session, driven through one whole transaction (t/unit/milter_drive)
# against a real milter library (python3-milter, t/lib/test_milter.py) and
# against a raw milter that misbehaves.  Every action comes back decoded
# (reject/tempfail with the milter's own reply, discard, accept at RCPT,
# skip, quarantine, add/insert/change/delete header, change sender,
# add/delete recipient, replace body); every failure (slow beyond the
# content timeout, closes mid-body, malformed packet, packet over the
# bound, refused connection) gives the configured default action, tempfail
# or accept, and the session answers that default from then on.  There
# was no milter client before: every check here fails on the old code.
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
from raw_milter import RawMilter  # noqa: E402

DRIVE = os.path.join(ROOT, "t", "unit", "milter_drive")
MILTER = os.path.join(ROOT, "t", "lib", "test_milter.py")
SYSPY = "/usr/bin/python3"
TIMEOUT_MS = 1500
MSG = "Subject: hi\nX-Drop: x\nFrom: a@sender.test\n\nhello body\nline two\n"


def drive(sock, default, rcpt, msg=MSG, timeout_ms=TIMEOUT_MS):
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write(msg)
    try:
        t0 = time.time()
        r = subprocess.run([DRIVE, sock, default, str(timeout_ms), "s@sender.test", rcpt, f.name],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        return r.stdout.decode(), time.time() - t0
    finally:
        os.unlink(f.name)


def step(out, name):
    """The answer lines of one step, e.g. 'eom accept'."""
    return [ln for ln in out.splitlines() if ln.split(" ")[0] == name]


def main():
    if not os.access(DRIVE, os.X_OK):
        skip_all("no %s (make check builds it)" % DRIVE)
    if subprocess.run([SYSPY, "-c", "import Milter"], stderr=subprocess.DEVNULL).returncode:
        skip_all("python3-milter is not installed")
    port = free_port()
    sock = "inet:127.0.0.1:%d" % port
    proc = subprocess.Popen([SYSPY, MILTER, "inet:%d@127.0.0.1" % port, "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ok(wait_for(lambda: port_open("127.0.0.1", port), 10), "test milter listens")
        run_actions(sock)
        run_failures(sock)
    finally:
        proc.terminate()
        proc.wait(5)


def run_actions(sock):
    out, _ = drive(sock, "tempfail", "plain@example.org")
    for s in ("connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body"):
        ok(step(out, s) and all(ln.endswith(" continue") for ln in step(out, s)),
           "plain: %s continues" % s)
    is_(step(out, "eom"), ["eom accept"], "plain: eom accepted, no modification")
    unlike(out, r"^mod ", "plain: no modification", )

    out, _ = drive(sock, "tempfail", "addhdr@example.org")
    like(out, r"(?m)^mod h 0 \[X-Test-Milter\] \[added\]", "addheader decoded")
    like(out, r"(?m)^mod i 0 \[X-Test-First\] \[inserted\]", "insheader at index 0")
    like(out, r"(?m)^mod m 1 \[Subject\] \[changed by milter\]", "chgheader Subject #1")
    like(out, r"(?m)^mod m 1 \[X-Drop\] \[\]", "delete header = chgheader with empty value")

    out, _ = drive(sock, "tempfail", "chgfrom-rcpts@example.org")
    like(out, r"(?m)^mod e 0 \[\] \[\] \[<new-sender@sender.test>\]", "chgfrom")
    like(out, r"(?m)^mod \+ 0 \[\] \[\] \[<added@example.org>\]", "addrcpt")
    like(out, r"(?m)^mod 2 0 \[\] \[\] \[<added2@example.org>\] \[NOTIFY=NEVER\]",
         "addrcpt_par with ESMTP args")
    like(out, r"(?m)^mod \+ 0 \[\] \[\] \[<victim@unserved.test>\]", "addrcpt of any address reaches the client (smtpd decides)")
    like(out, r"(?m)^mod - 0 \[\] \[\] \[<chgfrom-rcpts@example.org>\]", "delrcpt")

    out, _ = drive(sock, "tempfail", "replbody-quarantine@example.org")
    like(out, r"(?m)^mod b 0 .*\[replaced body", "replbody")
    like(out, r"(?m)^quarantine held by test milter$", "quarantine reason")

    out, _ = drive(sock, "accept", "reject@example.org")
    is_(step(out, "eom"), ["eom reject 554 5.7.1 Rejected by test milter"], "reject with the milter's reply")
    out, _ = drive(sock, "accept", "tempfail@example.org")
    is_(step(out, "eom"), ["eom tempfail 451 4.7.1 Try later, test milter"], "tempfail with the milter's reply")
    out, _ = drive(sock, "tempfail", "discard@example.org")
    is_(step(out, "eom"), ["eom discard"], "discard")
    out, _ = drive(sock, "tempfail", "rcptreject@example.org")
    is_(step(out, "rcpt"), ["rcpt reject 550 5.7.1 Recipient refused by test milter"], "reject at RCPT")
    is_(step(out, "data"), [], "nothing sent after the RCPT reject (aborted)")
    like(out, r"(?m)^abort ", "abort sent")
    out, _ = drive(sock, "tempfail", "accept@example.org")
    is_(step(out, "rcpt"), ["rcpt accept"], "accept at RCPT ends the milter's part")
    body = "x" * 70000 + "\n"
    out, _ = drive(sock, "tempfail", "skip@example.org", msg="Subject: s\n\n" + body + body)
    is_(step(out, "body"), ["body skip"], "skip: after the first chunk no more body is sent")
    is_(step(out, "eom"), ["eom accept"], "skip: then end of message")


def run_failures(sock):
    out, el = drive(sock, "tempfail", "slow@example.org")
    is_(step(out, "body"), ["body tempfail failed"], "slow milter beyond the content timeout: tempfail")
    ok(TIMEOUT_MS / 1000.0 - 0.2 < el < TIMEOUT_MS / 1000.0 + 2.5, "after the timeout (%.1fs)" % el)
    is_(step(out, "eom"), [], "no end of message to a dead milter")
    is_(step(out, "quit"), ["quit tempfail failed"], "a dead milter answers its default from then on")
    out, _ = drive(sock, "accept", "slow@example.org")
    is_(step(out, "body"), ["body accept failed"], "slow milter with default_action accept: accept")

    for mode, what in (("close", "closes mid-body"), ("garbage", "malformed packet"),
                       ("huge", "packet over the bound")):
        raw = RawMilter(mode)
        rs = "inet:127.0.0.1:%d" % raw.port
        out, el = drive(rs, "tempfail", "x@example.org")
        is_(step(out, "header"), ["header continue"] * 3, "%s: headers answered" % mode)
        is_(step(out, "body"), ["body tempfail failed"], "milter %s: tempfail" % what)
        ok(el < TIMEOUT_MS / 1000.0, "%s: noticed at once, not by the timeout (%.1fs)" % (mode, el))
        out, _ = drive(rs, "accept", "x@example.org")
        is_(step(out, "body"), ["body accept failed"], "milter %s, default accept: accept" % what)
        raw.stop = True

    dead = "inet:127.0.0.1:%d" % free_port()
    out, _ = drive(dead, "tempfail", "x@example.org")
    is_(step(out, "connect"), ["connect tempfail failed"], "refused connection: tempfail")
    out, _ = drive(dead, "accept", "x@example.org")
    is_(step(out, "connect"), ["connect accept failed"], "refused connection, default accept: accept")
    out, _ = drive("unix:/nonexistent/milter.sock", "tempfail", "x@example.org")
    is_(step(out, "connect"), ["connect tempfail failed"], "missing unix socket: tempfail")


run_main(main)
