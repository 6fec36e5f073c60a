#!/usr/bin/env python3
# 142-gate-stale (issue 9, part 1): the gate opens when the heartbeat's
# answers stop.  A primary that answers, then hangs (accepts TCP, never
# greets; heartbeat_timeout longer than heartbeat_stale): up -> 450, then,
# with no heartbeat answer for heartbeat_stale, stale -> accepted.  A
# primary that hangs from the start keeps the gate unknown, and unknown
# accepts.  A bad `accept` value is a config error (file:line, exit 78).
# On the old code `accept` is an unknown key and nothing is refused 450.
import json
import os
import socket
import sys
import threading
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

HB = 1
STALE = 3


class Primary:
    """A primary that answers (mode "smtp") or hangs after accept ("hang")."""

    def __init__(self, host):
        self.mode = "smtp"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.stopping = False
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.mode == "hang":
                self.held.append(c)         # never answered
                continue
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        try:
            c.settimeout(10)
            c.sendall(b"220 primary.test ESMTP\r\n")
            f = c.makefile("rb")
            for ln in f:
                w = ln.split(b" ", 1)[0].strip().upper()
                if w == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    break
                c.sendall(b"250 primary.test\r\n" if w in (b"EHLO", b"HELO") else b"502 no\r\n")
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.stopping = True
        self.sock.close()
        for c in self.held:
            c.close()


def rcpt(srv, addr):
    c = srv.raw(timeout=15)
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    r = c.cmd("RCPT TO:<%s>" % addr)
    c.close()
    return r


def gate(srv, domain):
    r = srv.ctl("--json", "summary")
    try:
        for d in json.loads(r.stdout.decode("utf-8"))["domains"]:
            if d.get("domain") == domain:
                return d.get("gate")
    except (ValueError, KeyError):
        pass
    return None


def main():
    require_binaries()
    p = Primary("127.0.0.2")
    hung = Primary("127.0.0.3")
    hung.mode = "hang"
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % p.port, "accept": "when-primary-down"},
        {"name": "hung.test", "primary": "[127.0.0.3]:%d" % hung.port, "accept": "when-primary-down"},
    ], settings={"delivery": fast_delivery(heartbeat="%ds" % HB, heartbeat_timeout="30s",
                                           heartbeat_stale="%ds" % STALE)})
    srv.start()

    ok(wait_for(lambda: rcpt(srv, "a@example.org").code == 450, 3 * HB + 5, 0.3),
       "primary answering: 450 4.7.0")
    is_(gate(srv, "example.org"), "up", "summary: gate up")

    # Unknown: a primary that never answered.
    time.sleep(HB * 2)
    is_(gate(srv, "hung.test"), "unknown", "a primary that never answers leaves the gate unknown")
    is_(rcpt(srv, "a@hung.test").code, 250, "unknown accepts")

    # Stale: the primary stops answering (checks hang, none fails).
    p.mode = "hang"
    t0 = time.monotonic()
    r = rcpt(srv, "a@example.org")
    is_(r.code, 450, "just after the primary hangs, its last answer is fresh: still 450")
    ok(wait_for(lambda: rcpt(srv, "a@example.org").code == 250, STALE + 2 * HB + 5, 0.3),
       "no heartbeat answer for heartbeat_stale: accepted")
    took = time.monotonic() - t0
    ok(took >= STALE - HB - 0.5, "stale only after about heartbeat_stale (%.1f s)" % took)
    is_(gate(srv, "example.org"), "stale", "summary: gate stale")
    like(srv.log(), r"gate 127\.0\.0\.2:%d: up -> stale" % p.port, "up -> stale is logged")
    srv.stop()

    # A bad value: file:line, exit 78.
    bad = Server(domains=[{"name": "example.org", "accept": "sometimes"}])
    bad.start(expect_fail=True)
    try:
        rc = bad.proc.wait(10)
    except Exception:  # noqa: B902 - report and go on
        rc = None
        bad.kill9()
    bad.proc = None
    is_(rc, 78, "accept = \"sometimes\": exit 78")
    like(bad.log(), r"mxkeep\.conf:\d+: .*accept", "one line file:line naming accept")
    p.stop()
    hung.stop()


run_main(main)
