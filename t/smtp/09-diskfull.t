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

FS_SIZE = "16m"
# Free space left beside the filler: more than a daemon reserve of 4 MiB,
# enough for a few messages.
LEAVE_FREE = 4 * 1024 * 1024 + 600 * 1024
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
    on_tmpfs(srv, FS_SIZE, fill_and_recover)


def fill_up(path, leave=0):
    """Grow a filler file until only `leave` octets are free (0: until
    ENOSPC).  Returns its size."""
    st = os.statvfs(os.path.dirname(path))
    room = st.f_bavail * st.f_frsize - leave
    n = 0
    with open(path, "ab") as f:
        chunk = b"\0" * 65536
        try:
            while n < room:
                f.write(chunk[:min(len(chunk), room - n)])
                n += min(len(chunk), room - n)
            f.flush()
            if leave == 0:
                while True:
                    f.write(chunk)
                    f.flush()
                    n += len(chunk)
        except OSError:
            pass
    return n


def reconnect(srv, c):
    c.close()
    c = srv.raw()
    c.ehlo()
    return c


def fill_and_recover(srv, mnt):
    srv.spool = os.path.join(mnt, "spool")
    srv.settings["lmdb_map_size"] = 1048576
    srv.limits["message_size"] = 1048576
    srv.start()
    acked = {}
    c = srv.raw()
    c.ehlo()
    for i in range(3):
        codes, r, m = attempt(c, "pre%d" % i)
        if r.code == 250:
            acked[qid_of(r.text)] = m
    is_(len(acked), 3, "three messages accepted with room to spare")

    # The disk fills while a message is arriving: the write or the commit
    # fails, 452 4.3.1, nothing half kept.
    rs = [c.cmd("MAIL FROM:<d@example.com>"), c.cmd("RCPT TO:<user@example.org>"), c.cmd("DATA")]
    is_([x.code for x in rs], [250, 250, 354], "transaction open before the disk fills")
    filler_b = os.path.join(mnt, "filler-b")
    diag("filled %d octets" % fill_up(filler_b))
    big = make_message("midfull", size=MSG_SIZE * 3)
    c.send(dot_stuff(big))
    r = c.reply(timeout=20)
    is_(r.code, 452, "disk full during DATA: 452 (%s)" % r)
    like(r.last, r"^4\.3\.1 ", "disk full during DATA: 4.3.1")
    r = c.cmd("NOOP")
    is_(r.code, 250, "NOOP still works on the same connection when full")
    c2 = srv.raw()
    is_(c2.greeting.code, 220, "new connection greeted while full")
    is_(c2.ehlo().code, 250, "EHLO while full")
    codes, r, _ = attempt(c2, "stillfull")
    is_(r.code, 452, "new transaction while full: 452 (%s)" % r)
    like(r.last, r"^4\.3\.1 ", "... 4.3.1")
    c2.close()
    ok(srv.running(), "daemon still running when full")
    os.unlink(filler_b)

    # Running short by degrees: accepted until the spool is nearly full,
    # then 452 4.3.1 (the daemon may keep a reserve).
    filler = os.path.join(mnt, "filler")
    fill_up(filler, leave=LEAVE_FREE)
    diag("%d octets left" % (os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize))
    time.sleep(1.2)         # let any cached free-space figure expire
    full = None
    other = []
    n_before = len(acked)
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
            c = reconnect(srv, c)
    ok(full is not None, "452 once the spool runs short (after %d more messages)" % (len(acked) - n_before))
    like(full.last if full else "", r"^4\.3\.1 ", "spool short: 4.3.1")
    is_([str(x) for x in other], [], "no other failure on the way to full")
    ok(len(acked) > n_before, "some messages fit while space lasted")
    is_(c.cmd("NOOP").code, 250, "NOOP after 452")

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
            c = reconnect(srv, c)
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
    is_(sorted(q2), sorted(list(acked) + ([recovered[0]] if recovered else [])),
        "restart keeps exactly the acknowledged messages")
    tmp = os.path.join(srv.spool, "tmp")
    if os.path.isdir(tmp):
        is_(os.listdir(tmp), [], "no partial bodies left in spool/tmp")


run_main(main)
