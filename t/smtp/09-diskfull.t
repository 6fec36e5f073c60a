#!/usr/bin/env python3
# 09-diskfull: the spool on a small tmpfs.  When it fills: 452 4.3.1, the
# server keeps serving, nothing is half kept; when space returns, mail is
# accepted again.  Root only (mount).
import os
import subprocess
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

FS_SIZE = "4m"
LEAVE_FREE = 1024 * 1024        # room left beside the filler
MSG_SIZE = 100 * 1024
MAX_ATTEMPTS = 200


def attempt(c, tag):
    """One transaction; returns (codes, last reply, message)."""
    m = make_message(tag, size=MSG_SIZE)
    codes = []
    r = c.cmd("MAIL FROM:<d@example.com>")
    codes.append(r.code)
    if r.code != 250:
        return codes, r, m
    r = c.cmd("RCPT TO:<user@example.org>")
    codes.append(r.code)
    if r.code != 250:
        c.cmd("RSET")
        return codes, r, m
    r = c.cmd("DATA")
    codes.append(r.code)
    if r.code != 354:
        c.cmd("RSET")
        return codes, r, m
    c.send(dot_stuff(m))
    r = c.reply(timeout=20)
    codes.append(r.code)
    return codes, r, m


def main():
    if not IS_ROOT:
        skip_all("needs root to mount a tmpfs")
    require_binaries()
    srv = Server(name="mxfull")
    mnt = os.path.join(srv.dir, "fs")
    os.makedirs(mnt)
    r = run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % FS_SIZE, "tmpfs", mnt])
    if r.returncode != 0:
        skip_all("cannot mount tmpfs: %s" % r.stderr.decode("latin-1").strip())
    try:
        body(srv, mnt)
    finally:
        srv.stop()
        for _ in range(20):
            if run(["umount", mnt]).returncode == 0:
                break
            time.sleep(0.25)
        else:
            run(["umount", "-l", mnt])


def body(srv, mnt):
    srv.spool = os.path.join(mnt, "spool")
    srv.settings["lmdb_map_size"] = 1048576
    srv.start()
    filler = os.path.join(mnt, "filler")
    st = os.statvfs(mnt)
    room = st.f_bavail * st.f_frsize - LEAVE_FREE
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, room))
    diag("filler %d octets, %d left" % (room, os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize))

    c = srv.raw()
    c.ehlo()
    acked = {}
    full = None
    other = []
    for i in range(MAX_ATTEMPTS):
        codes, r, m = attempt(c, "full%d" % i)
        if r.code == 250 and qid_of(r.text):
            acked[qid_of(r.text)] = m
            continue
        if r.code == 452:
            full = r
            break
        other.append(r)
        if r.code is None or r.code == 421:
            c.close()
            c = srv.raw()
            c.ehlo()
    ok(full is not None, "452 once the disk is full (after %d messages)" % len(acked))
    like(full.last if full else "", r"^4\.3\.1 ", "disk full: 4.3.1")
    is_([str(x) for x in other], [], "no other failure on the way to full")
    ok(len(acked) > 0, "some messages fit before it filled")

    r = c.cmd("NOOP")
    is_(r.code, 250, "NOOP still works on the same connection when full")
    c2 = srv.raw()
    is_(c2.greeting.code, 220, "new connection greeted while full")
    is_(c2.ehlo().code, 250, "EHLO while full")
    c2.close()
    ok(srv.running(), "daemon still running when full")

    # A second try while still full fails cleanly too.
    codes, r, _ = attempt(c, "stillfull")
    ok(r.code == 452, "still full: 452 again (%s)" % r)

    q = srv.queue_by_qid()
    missing = [x for x in acked if x not in q]
    is_(missing, [], "every acknowledged message is in the queue")
    clean = set(acked.values())
    bad = []
    for qid in q:
        _, rest = split_received(srv.body(qid))
        if rest not in clean:
            bad.append(qid)
    is_(bad, [], "every queued message reads back whole, nothing half kept")
    is_(len(q), len(acked), "no unacknowledged message kept")

    os.unlink(filler)
    recovered = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        codes, r, m = attempt(c, "recovered")
        if r.code == 250:
            recovered = (qid_of(r.text), m)
            break
        if r.code is None:
            c.close()
            c = srv.raw()
            c.ehlo()
        time.sleep(0.5)
    ok(recovered is not None, "accepted again once space returned")
    if recovered:
        _, rest = split_received(srv.body(recovered[0]))
        is_(rest, recovered[1], "message after recovery byte-exact")
    c.cmd("QUIT")
    c.close()
    rc = srv.stop()
    is_(rc, 0, "clean exit")
    srv.start()
    q2 = srv.qids()
    is_(sorted(q2), sorted(list(acked) + ([recovered[0]] if recovered else [])), "restart keeps exactly the acknowledged messages")


run_main(main)
