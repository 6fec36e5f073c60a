#!/usr/bin/env python3
# 41-diskfull-inline: small messages (bodies stored inside the LMDB index)
# on a spool whose disk fills while the transaction is open.  LMDB reports
# the write cut short by the full disk as EIO; the sender must still hear
# 452 4.3.1 (insufficient storage), never 451 4.3.0, the storage counter
# counts each refusal, the daemon keeps serving, nothing half kept, and
# once space returns mail is accepted again.  Root only (mount).
import json
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

FS_SIZE = "16m"
MAP_SIZE = 64 * 1024 * 1024     # larger than the disk: the disk fills first
LEFT = 12288                    # free octets left: less than a commit writes
SIZES = (60000, 20000, 2000)    # all below the inline limit (64 KiB)
ATTEMPTS = 12


def storage_count(srv):
    """The daemon's storage-refusal counter (whatever its exact name)."""
    r = srv.ctl("--json", "stats")
    if r.returncode != 0:
        return None
    data = json.loads(r.stdout.decode())
    vals = [v for k, v in data.items() if "storage" in k and isinstance(v, int)]
    return sum(vals) if vals else None



def main():
    if not IS_ROOT:
        skip_all("needs root to mount a tmpfs")
    require_binaries()
    srv = Server(name="mxfullin", domains=[{"name": "example.org", "hold": True}])
    on_tmpfs(srv, FS_SIZE, scenario)


def scenario(srv, mnt):
    srv.spool = os.path.join(mnt, "spool")
    srv.settings["lmdb_map_size"] = MAP_SIZE
    srv.start()
    acked = {}
    c = srv.raw()
    c.ehlo()
    for i in range(3):
        m = make_message("pre%d" % i, size=2000)
        rs = c.transaction("d@example.com", ["user@example.org"], m)
        if rs[-1].code == 250:
            acked[qid_of(rs[-1].text)] = m
    is_(len(acked), 3, "three small messages accepted with room to spare")
    before = storage_count(srv)
    ok(before is not None, "storage counter readable (%s)" % before)

    # Each transaction is opened while the daemon still sees room (MAIL
    # passes its free-space check, whose statvfs answer is trusted for a
    # second); the disk is full when the text ends.  Once the daemon has
    # measured again, MAIL itself gets 452 4.3.1: also right.
    replies = []
    at_commit = []
    filler = None
    for i in range(ATTEMPTS):
        # A real client stops at a refused MAIL: sending RCPT and DATA after
        # it would earn 503s, which count towards bad_commands and end the
        # session before the disk has room again.
        rs = [c.cmd("MAIL FROM:<d@example.com>")]
        if rs[0].code == 250:
            rs += [c.cmd("RCPT TO:<user@example.org>"), c.cmd("DATA")]
        if [x.code for x in rs] != [250, 250, 354]:
            replies.append(rs[-1] if rs[0].code == 250 else rs[0])
            c.cmd("RSET")
            continue
        if filler is None:
            filler = fill_fs(mnt, LEFT)
            st = os.statvfs(mnt)
            diag("%d octets left" % (st.f_bavail * st.f_frsize))
        m = make_message("full%d" % i, size=SIZES[i % len(SIZES)])
        c.send(dot_stuff(m))
        r = c.reply(timeout=20)
        replies.append(r)
        at_commit.append(r)
        if r.code == 250:
            acked[qid_of(r.text)] = m     # it fit: durable, so 250 is right
    codes = [r.code for r in replies]
    diag("replies while full: %s" % codes)
    ok(452 in [r.code for r in at_commit], "a full disk at commit: 452")
    is_([str(r) for r in replies if r.code not in (250, 452)], [],
        "no other reply while full (in particular no 451 4.3.0)")
    is_([r.last for r in replies if r.code == 452 and not r.last.startswith("4.3.1 ")], [],
        "every 452 carries 4.3.1")
    n452 = codes.count(452)
    after = storage_count(srv)
    is_(after - before if after is not None and before is not None else None, n452,
        "storage counter up by the number of 452s (%d)" % n452)
    is_(len(re.findall(r"not queued: spool full", srv.log())),
        len([r for r in at_commit if r.code == 452]),
        "each refusal at commit logged as 'spool full'")
    is_(len(re.findall(r"refusing mail: spool .* is short of space", srv.log())),
        n452 - len([r for r in at_commit if r.code == 452]),
        "each refusal at MAIL logged as short of space")
    is_(c.cmd("NOOP").code, 250, "the session goes on")
    ok(srv.running(), "daemon still running")

    os.unlink(filler)
    m = make_message("recovered", size=2000)
    deadline = time.monotonic() + 5   # the daemon trusts a free-space answer 1 s
    while True:
        rs = c.transaction("d@example.com", ["user@example.org"], m)
        if rs[-1].code == 250 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    is_(rs[-1].code, 250, "accepted again once space returned")
    if rs[-1].code == 250:
        acked[qid_of(rs[-1].text)] = m
    c.cmd("QUIT")
    c.close()

    q = srv.queue_by_qid()
    is_(sorted(q), sorted(acked), "the queue holds exactly the acknowledged messages")
    bad = [x for x, m in acked.items() if split_received(srv.body(x) or b"")[1] != m]
    is_(bad, [], "each reads back byte-exact")
    is_(srv.stop(), 0, "clean exit")
    srv.start()
    is_(srv.qids(), sorted(acked), "restart keeps exactly the acknowledged messages")


run_main(main)
