#!/usr/bin/env python3
# 213-keep-diskfull: kept copies count against the disk reserve and are the
# first thing dropped when space runs short.  On a small tmpfs, copies of
# delivered mail are kept (keep_delivered) beside queued mail for a held
# domain; the disk is filled until free space is below disk_reserve +
# keep_reserve: kept copies are dropped, oldest first, each drop logged
# with its queue ID and counted, until there is room again; the queued
# mail is all still there.  Once free space is below disk_reserve itself,
# every copy goes and the queued mail still stays.  Root only (mount).
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

FS_SIZE = "16m"
MAP_SIZE = 64 * 1024 * 1024     # larger than the disk: the disk is the limit
RESERVE = 1024 * 1024
KEEP_RESERVE = 2 * 1024 * 1024
BIG = 300000                    # file bodies (over the 64 KiB inline limit)
N_KEPT = 8
N_HELD = 3



def free(mnt):
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


def main():
    if not IS_ROOT:
        skip_all("needs root to mount a tmpfs")
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2")
    fake.start()
    srv = Server(name="mxkeep213", domains=[
        {"name": "keep.test", "primary": "[127.0.0.2]:%d" % fake.port, "keep_delivered": "1h"},
        {"name": "held.test", "primary": "[127.0.0.2]:%d" % fake.port, "hold": True},
    ], limits={"disk_reserve": RESERVE, "keep_reserve": KEEP_RESERVE},
        settings={"delivery": fast_delivery()})
    on_tmpfs(srv, FS_SIZE, scenario, fake)


def scenario(srv, mnt, fake):
    srv.spool = os.path.join(mnt, "spool")
    srv.settings["lmdb_map_size"] = MAP_SIZE
    srv.start()
    kept_q = []
    for i in range(N_KEPT):
        code, text = send_smtplib(srv, "s@sender.test", ["a@keep.test"],
                                  make_message("kept%d" % i, size=BIG))
        kept_q.append(qid_of(text) if code == 250 else None)
        time.sleep(0.05)
    held_q = []
    for i in range(N_HELD):
        code, text = send_smtplib(srv, "s@sender.test", ["h@held.test"],
                                  make_message("held%d" % i, size=BIG))
        held_q.append(qid_of(text) if code == 250 else None)
    ok(all(kept_q) and all(held_q), "%d + %d big messages accepted" % (N_KEPT, N_HELD))
    ok(wait_for(lambda: fake.count() >= N_KEPT, 20), "keep.test's delivered")

    def kept():
        r = srv.ctl("--json", "summary")
        return (json.loads(r.stdout.decode()).get("kept") or {}) if r.returncode == 0 else {}
    ok(wait_for(lambda: kept().get("messages") == N_KEPT, 5), "%d kept copies" % N_KEPT)
    ok(free(mnt) > RESERVE + KEEP_RESERVE, "room to spare so far (%d free)" % free(mnt))
    is_(sorted(srv.queue_by_qid()), sorted(held_q), "the queue is the held mail")
    unlike(srv.log(), r"dropped", "nothing dropped while there is room")

    # Short of space, above the reserve itself: copies go until there is room.
    mark = len(srv.log())
    filler = fill_fs(mnt, RESERVE + KEEP_RESERVE // 4)
    diag("%d octets free" % free(mnt))
    ok(wait_log(srv, r"below disk_reserve \+ keep_reserve .*dropping kept copies, oldest first",
                5, mark), "log: the shortage and what is done about it")
    ok(wait_for(lambda: free(mnt) >= RESERVE + KEEP_RESERVE, 10),
       "room again after the drops (%d free)" % free(mnt))
    time.sleep(1.5)
    log = srv.log()[mark:]
    dropped = re.findall(r"(\w{12}): kept copy dropped \(1\): spool short of space", log)
    ok(0 < len(dropped) < N_KEPT, "some copies dropped, not all (%d)" % len(dropped))
    is_(dropped, kept_q[:len(dropped)], "oldest first, each logged with its queue ID")
    is_(kept().get("messages"), N_KEPT - len(dropped), "the others still kept")
    for q in dropped[:2]:
        is_(srv.ctl("show", q).returncode, 66, "%s gone from the spool" % q)
    is_(sorted(srv.queue_by_qid()), sorted(held_q), "the queued mail is all there")
    st = json.loads(srv.ctl("--json", "stats").stdout.decode())
    is_(st.get("kept_copies_dropped_total"), len(dropped), "stats: dropped copies counted")

    # Below the reserve itself: every copy goes, mail stays.
    os.unlink(filler)
    mark = len(srv.log())
    filler = fill_fs(mnt, RESERVE // 2)
    ok(wait_for(lambda: kept().get("copies") == 0, 10), "every kept copy dropped")
    log = srv.log()[mark:]
    more = re.findall(r"(\w{12}): kept copy dropped \(1\): spool short of space", log)
    is_(more, kept_q[len(dropped):], "the rest, oldest first")
    is_(sorted(srv.queue_by_qid()), sorted(held_q), "the queued mail is still all there")
    bodies_ok = all(split_received(srv.body(q) or b"")[1] ==
                    make_message("held%d" % i, size=BIG) for i, q in enumerate(held_q))
    ok(bodies_ok, "and intact")
    ok(srv.running(), "daemon still running")
    os.unlink(filler)
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
