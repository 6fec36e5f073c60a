#!/usr/bin/env python3
# 108-map-bad-reload: a map that goes bad while mxkeepd runs never stops
# it serving (issue 8, 2; as a bad list file at reload today):
#  1. reload with a config naming a corrupt map: refused with one line
#     (config file:line: recipients: ...), the old map keeps answering;
#  2. a corrupt file renamed over the live map: the daemon notices, warns
#     once (not per RCPT) and keeps answering from the map it has; a
#     reload then is refused the same way;
#  3. a good map compiled over it afterwards is served again.
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

NOTICE_WAIT = 3.0           # the daemon re-checks the map's file every second
RCPTS_AFTER = 50            # RCPTs while the bad file sits there


def compile_map(src, entries):
    with open(src, "w") as f:
        f.write("".join(e + "\n" for e in entries))
    os.chmod(src, 0o644)
    r = run([MXKEEPCTL, "map", "compile", src])
    return r.returncode == 0


def answers(srv):
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.test>")
    out = (c.cmd("RCPT TO:<alice@example.org>").code, c.cmd("RCPT TO:<mallory@example.org>").code)
    c.cmd("QUIT")
    c.close()
    return out


def main():
    require_binaries()
    srv = Server(domains=[{"name": "example.org"}])
    src = os.path.join(srv.dir, "example.org.rcpts")
    mp = src + ".lmdb"
    ok(compile_map(src, ["alice@example.org"]), "good map compiled")
    srv.domains = [{"name": "example.org", "recipients": "lmdb:" + mp}]
    srv.start()
    is_(answers(srv), (250, 550), "good map: alice 250, mallory 550")

    # 1. reload onto a corrupt map
    bad = os.path.join(srv.dir, "corrupt.lmdb")
    with open(bad, "wb") as f:
        f.write(b"\x00garbage" * 1000)
    os.chmod(bad, 0o644)
    srv.domains = [{"name": "example.org", "recipients": "lmdb:" + bad}]
    srv.write_config(port=srv.port)
    before = len(srv.log())
    r = srv.ctl("reload")
    isnt(r.returncode, 0, "reload onto a corrupt map is refused (exit %d)" % r.returncode)
    like(r.stdout.decode() + r.stderr.decode(), r"recipients: .*corrupt.*keeping the old",
         "mxkeepctl reload says why and that the old configuration stays")
    new = srv.log()[before:]
    warn = [ln for ln in new.splitlines() if "reload:" in ln]
    is_(len(warn), 1, "one log line for the refused reload")
    like(warn[0] if warn else "", r"%s:\d+: recipients: " % re.escape(srv.conf),
         "... with the config's file:line")
    ok(srv.running(), "daemon still running")
    is_(answers(srv), (250, 550), "old map still answers after the refused reload")

    # back to the good map in the config (the reload succeeds)
    srv.domains = [{"name": "example.org", "recipients": "lmdb:" + mp}]
    srv.write_config(port=srv.port)
    is_(srv.ctl("reload").returncode, 0, "reload onto the good map")

    # 2. a corrupt file renamed over the live map
    tmp = mp + ".junk"
    with open(tmp, "wb") as f:
        f.write(b"\x00garbage" * 1000)
    os.chmod(tmp, 0o644)
    before = len(srv.log())
    os.rename(tmp, mp)
    time.sleep(NOTICE_WAIT)
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.test>")
    codes = set()
    for i in range(RCPTS_AFTER):
        codes.add(c.cmd("RCPT TO:<alice@example.org>").code)
        if i == RCPTS_AFTER // 2:
            time.sleep(1.2)     # past the next re-check
    is_(sorted(codes), [250], "corrupt file over the live map: the map in use keeps answering")
    is_(c.cmd("RCPT TO:<mallory@example.org>").code, 550, "... and still refuses unknown users")
    c.cmd("QUIT")
    c.close()
    new = srv.log()[before:]
    warns = [ln for ln in new.splitlines() if "still serving" in ln]
    is_(len(warns), 1, "warned once, not per RCPT (%d lines)" % len(warns))
    r = srv.ctl("reload")
    isnt(r.returncode, 0, "reload while the map file is corrupt is refused")
    is_(answers(srv), (250, 550), "old map still answers after that refused reload")

    # 3. a good map compiled over it is served again, without a reload
    ok(compile_map(src, ["alice@example.org", "mallory@example.org"]), "good map compiled again")
    deadline = time.monotonic() + NOTICE_WAIT + 2
    got = None
    while time.monotonic() < deadline:
        got = answers(srv)
        if got == (250, 250):
            break
        time.sleep(0.2)
    is_(got, (250, 250), "the new good map is served (mallory now listed)")
    is_(srv.ctl("reload").returncode, 0, "reload succeeds again")
    ok(srv.running(), "daemon still running")


run_main(main)
