#!/usr/bin/env python3
# run-all: alone (a reload under 1 s)
# 106-map-swap: `mxkeepctl map compile` replaces a map under a running
# daemon (issue 8, 2: "swapped atomically, reload is instant").  The new
# map is written beside the old one and renamed over it; the daemon
# notices the new file within about a second and serves it, with no
# restart and no reload, in sessions opened before the swap too.  RCPTs
# sent in a tight loop during the swap always get 250 or 550, never an
# error.  A reload afterwards is instant and keeps serving the new map.
import os
import sys
import threading
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

SWAP_WAIT = 5.0             # bound for the daemon to see the new map
SWAPS = 5                   # compiles during the RCPT loop


def write_list(path, entries):
    with open(path + ".new", "w") as f:
        f.write("".join(e + "\n" for e in entries))
    os.chmod(path + ".new", 0o644)
    os.rename(path + ".new", path)


def compile_map(src):
    r = run([MXKEEPCTL, "map", "compile", src])
    return r.returncode == 0, r.stderr.decode().strip()


def main():
    require_binaries()
    srv = Server(domains=[{"name": "example.org"}])
    src = os.path.join(srv.dir, "example.org.rcpts")
    mp = src + ".lmdb"
    write_list(src, ["old@example.org", "stays@example.org"])
    good, err = compile_map(src)
    ok(good, "first map compiled (%s)" % err)
    srv.domains = [{"name": "example.org", "recipients": "lmdb:" + mp}]
    srv.start()

    c = srv.raw()
    c.ehlo()
    is_(c.cmd("MAIL FROM:<s@sender.test>").code, 250, "MAIL")
    is_(c.cmd("RCPT TO:<old@example.org>").code, 250, "old entry served")
    is_(c.cmd("RCPT TO:<new@example.org>").code, 550, "new entry not yet listed: 550")
    ino = os.stat(mp).st_ino

    write_list(src, ["new@example.org", "stays@example.org"])
    good, err = compile_map(src)
    ok(good, "second map compiled over the first (%s)" % err)
    isnt(os.stat(mp).st_ino, ino, "the map is a new file (renamed into place, not rewritten)")
    ok(not [f for f in os.listdir(srv.dir) if ".tmp." in f], "no temp file left behind")
    # Served within a bounded time, in the session opened before the swap.
    deadline = time.monotonic() + SWAP_WAIT
    r = None
    while time.monotonic() < deadline:
        r = c.cmd("RCPT TO:<new@example.org>")
        if r.code == 250:
            break
        time.sleep(0.2)
    is_(r.code if r else None, 250, "new entry served without restart or reload (%s)" % r)
    r = c.cmd("RCPT TO:<old@example.org>")
    is_(r.code, 550, "removed entry refused after the swap")
    like(r.last, r"^5\.1\.1 ", "... 5.1.1")
    c.cmd("RSET")
    like(srv.log(), r"replaced: 2 entries", "log says the map was replaced")

    # Swaps during a stream of RCPTs: every answer is 250 or 550 (the
    # entry "stays" is in every version, so it is always 250).
    answers = []
    stop = threading.Event()

    def rcpt_loop():
        # A new session every 500 RCPTs, not an RSET: RSETs count as junk
        # commands (100 a session), and a fast machine sent 100 of them
        # within the swaps (421, the loop died on a closed connection).
        n = 0
        while not stop.is_set() and n < 100000:
            cc = srv.raw()
            cc.ehlo()
            cc.cmd("MAIL FROM:<s@sender.test>")
            for _ in range(500):
                if stop.is_set():
                    break
                answers.append(cc.cmd("RCPT TO:<stays@example.org>").code)
                n += 1
            cc.cmd("QUIT")
            cc.close()

    th = threading.Thread(target=rcpt_loop)
    th.start()
    for i in range(SWAPS):
        write_list(src, ["stays@example.org", "gen%d@example.org" % i])
        good, err = compile_map(src)
        ok(good, "swap %d compiled (%s)" % (i, err))
        time.sleep(1.1)
    stop.set()
    th.join(60)
    ok(len(answers) > 100, "%d RCPTs answered during %d swaps" % (len(answers), SWAPS))
    is_(sorted(set(answers)), [250], "every RCPT for a listed user got 250 during the swaps")
    c2 = srv.raw()
    c2.ehlo()
    c2.cmd("MAIL FROM:<s@sender.test>")
    is_(c2.cmd("RCPT TO:<gen%d@example.org>" % (SWAPS - 1)).code, 250, "last map's entry served")
    is_(c2.cmd("RCPT TO:<gen0@example.org>").code, 550, "first swap's entry gone")

    # A reload re-opens the map (instant) and serves the same answers.
    t0 = time.monotonic()
    r = srv.ctl("reload")
    dt = time.monotonic() - t0
    is_(r.returncode, 0, "mxkeepctl reload (%s)" % r.stdout.decode().strip())
    ok(dt < 1.0, "reload took %.3f s (< 1 s)" % dt)
    is_(c2.cmd("RCPT TO:<gen%d@example.org>" % (SWAPS - 1)).code, 250, "served after reload")
    c2.cmd("QUIT")
    ok(srv.running(), "daemon still running")


run_main(main)
