#!/usr/bin/env python3
# 203-maint-scheduled: windows in the config.  A one-off window
# (start/end in ISO 8601 UTC) holds its domain from its start (mail sent
# then waits, shown as origin config with its note) and releases it at its
# end, flushing by itself.  A window that began and ended while the daemon
# was stopped still moves the expiry out by its length at the next start.
# A weekly window is listed as scheduled with its text before it runs.
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403




def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2").start()
    dead = free_port_on("127.0.0.2")
    now = int(time.time())
    start, end = now + 4, now + 10
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % fake.port,
         "maintenance": [{"start": iso(start), "end": iso(end), "note": "primary reinstall"},
                         {"weekly": "Sun 02:00-04:00", "note": "patch window"}]},
        {"name": "b.test", "primary": "[127.0.0.2]:%d" % dead},
    ], settings={"delivery": fast_delivery()})
    srv.start()
    h = srv.holds("example.org")
    ok(any(x["kind"] == "maintenance" and x["origin"] == "config" and not x["active"] and
           x["schedule"] == "Sun 02:00-04:00" and x["note"] == "patch window" for x in h),
       "the weekly window is listed as scheduled, with its text and note")
    ok(any(x["origin"] == "config" and not x["active"] and x["start"] == iso(start) for x in h),
       "the one-off window is listed as scheduled with its start")
    send_smtplib(srv, "s@sender.test", ["before@example.org"], make_message("before"))
    ok(wait_for(lambda: fake.count() >= 1, 5), "before the window: delivered at once")

    ok(wait_log(srv, r"maintenance of example\.org \(config [^)]*\) started", 10) is not None,
       "log: the scheduled window started")
    ok(time.time() >= start - 1, "... at its start")
    for i in range(2):
        send_smtplib(srv, "s@sender.test", ["in%d@example.org" % i], make_message("in%d" % i))
    h = [x for x in srv.holds("example.org") if x["active"]]
    is_([(x["kind"], x["origin"], x["uid"], x["note"]) for x in h],
        [("maintenance", "config", None, "primary reinstall")],
        "holds: active, origin config, no uid, its note")
    r = srv.ctl("flush", "example.org")
    is_(r.returncode, 75, "flush refused during the window")
    time.sleep(2)
    is_(fake.count(), 1, "in the window: nothing more delivered")
    ok(wait_log(srv, r"maintenance of example\.org \(config\) ended after 0h00m0[6-7]s: expiry of "
                r"2 messages moved out; delivering", 15) is not None,
       "log: ended at its scheduled end, expiry of the 2 messages moved out")
    ok(wait_for(lambda: fake.count() >= 3, 10), "after the window: flushed by itself")
    ok(time.time() >= end, "... not before its end")

    # A window that begins and ends while the daemon is stopped.
    send_smtplib(srv, "s@sender.test", ["w@b.test"], make_message("wait"))
    e0 = [r["expiry"] for m in srv.queue() for r in m["recipients"] if r["addr"] == "w@b.test"][0]
    is_(srv.stop(), 0, "stopped")
    now = int(time.time())
    srv.domains[1]["maintenance"] = [{"start": iso(now + 2), "end": iso(now + 5)}]
    srv.write_config(srv.port)
    time.sleep(max(0, now + 6 - time.time()))
    mark = len(srv.log())
    srv.start(port=srv.port)
    ok(wait_log(srv, r"maintenance of b\.test \(config\) ended after 0h00m03s: expiry of 1 message "
                r"moved out", 10, mark) is not None,
       "log: the window missed while stopped is applied at start-up (3 s)")
    e1 = [r["expiry"] for m in srv.queue() for r in m["recipients"] if r["addr"] == "w@b.test"][0]
    is_(e1 - e0, 3, "expiry moved out by the 3 s window that passed while stopped")
    is_([x for x in srv.holds("b.test") if x["active"]], [], "nothing holds b.test any more")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
