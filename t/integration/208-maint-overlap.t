#!/usr/bin/env python3
# 208-maint-overlap: overlapping maintenance windows of one domain move
# expiry out by the wall-clock UNION of the time in maintenance, each
# second once, not by the sum of the windows' lengths (issue 10, section
# 2), and hold the domain without a gap between them.
#   1. Two config windows that overlap, the daemon running: the domain
#      stays held from the first's start to the second's end (nothing is
#      delivered in between), one end is logged, and the expiry moves out
#      by that stretch only.
#   2. A config window and a runtime `maintenance start --until` that
#      overlap and both end while the daemon is stopped (libfaketime): at
#      the next start the expiry moves out by their union (about 2 h),
#      not by the sum (about 3 h).
#   3. A config window running when the daemon stops and a later one that
#      passes while it is stopped: the next start moves the expiry by the
#      rest of the first and all of the second (the second was lost).
import calendar
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403



def rcpt_of(srv, addr):
    for m in srv.queue():
        for r in m["recipients"]:
            if r["addr"] == addr:
                return m["arrival"], r["expiry"]
    return None, None


def main():
    require_binaries()
    env3 = faketime_env("+3h")
    fake = FakeSMTP(host="127.0.0.2").start()
    dead = free_port_on("127.0.0.2")
    now = int(time.time())
    a_end = now + 10
    b_start, b_end = now + 6, now + 18
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % fake.port,
         "maintenance": [{"start": iso(now - 60), "end": iso(a_end), "note": "first"},
                         {"start": iso(b_start), "end": iso(b_end), "note": "second"}]},
        {"name": "both.test", "primary": "[127.0.0.2]:%d" % dead, "retention": "10h",
         "maintenance": [{"start": iso(now - 60), "end": iso(now + 3600), "note": "cfg"}]},
    ], settings={"delivery": fast_delivery()})
    srv.start()

    # 1. two config windows, back to back through their overlap
    send_smtplib(srv, "s@sender.test", ["u@example.org"], make_message("held"))
    arr, e0 = rcpt_of(srv, "u@example.org")
    ok(arr is not None, "a message for example.org waits in the first window")
    h = [x for x in json.loads(srv.ctl("--json", "holds").stdout.decode())["holds"]
         if x["domain"] == "example.org" and x["active"]]
    is_([x["until"] for x in h], [iso(b_end)],
        "holds: one active config window, held until the second window's end")
    ok(wait_for(lambda: time.time() >= a_end + 2, 20), "the first window's end has passed")
    is_(fake.count(), 0, "... nothing delivered: the second window still holds the domain")
    m = wait_log(srv, r"maintenance of example\.org \(config\) ended after (\d+)h(\d\d)m(\d\d)s: "
                 r"expiry of 1 message moved out", 20)
    ok(m is not None, "log: the stretch ended, expiry of 1 message moved out")
    ok(time.time() >= b_end, "... at the second window's end")
    ok(wait_for(lambda: fake.count() >= 1, 10), "then delivered by itself")
    ok(srv.log().count("maintenance of example.org (config) ended after") == 1,
       "one end logged, not one per window")
    # Delivered: its expiry is read from the log line's span instead.
    spent = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3)) if m else 0
    is_(spent, b_end - (now - 60), "the stretch is the union of the two windows (%d s)" % spent)

    # 2. a config window and a runtime window, both ending while stopped
    if env3 is None:
        skip("libfaketime not installed", 7)
    else:
        send_smtplib(srv, "s@sender.test", ["u@both.test"], make_message("both"))
        arr, e0 = rcpt_of(srv, "u@both.test")
        is_(srv.ctl("maintenance", "both.test", "start", "--until", "+2h").returncode, 0,
            "both.test: runtime maintenance start --until +2h in the config window")
        rt = [x for x in json.loads(srv.ctl("--json", "holds").stdout.decode())["holds"]
              if x["domain"] == "both.test" and x["origin"] == "runtime"]
        is_(len(rt), 1, "holds: the runtime window is listed beside the config one")
        until = calendar.timegm(time.strptime(rt[0]["until"], "%Y-%m-%dT%H:%M:%SZ")) \
            if rt else 0
        is_(srv.stop(), 0, "stopped in both windows")
        mark = len(srv.log())
        srv.start(env=env3)
        ok(wait_log(srv, r"maintenance of both\.test \(\w+\) ended after \d+h\d\dm\d\ds: expiry of "
                    r"1 message moved out", 15, mark) is not None,
           "+3 h: both windows ended while stopped; expiry moved")
        time.sleep(2)
        _, e1 = rcpt_of(srv, "u@both.test")
        want = until - arr
        ok(e1 is not None and abs((e1 - e0) - want) <= 2,
           "expiry moved out by the union, %d s (got %s s; the sum would be about %d s)" %
           (want, e1 - e0 if e1 else "?", want + 3600))
        is_(srv.log()[mark:].count("maintenance of both.test (config) ended after") +
            srv.log()[mark:].count("maintenance of both.test (runtime) ended after"), 1,
            "one move for the two windows, not one each")
        # mxkeepctl runs on the real clock, where the config window still
        # runs: only the records (created) say what the daemon holds.
        is_([x for x in json.loads(srv.ctl("--json", "holds").stdout.decode())["holds"]
             if x["domain"] == "both.test" and x["active"] and x["created"]], [],
            "no window record holds both.test now")
    is_(srv.stop(), 0, "mxkeepd stopped")

    # 3. a config window running when the daemon stops, and a later one of
    # the same domain, both over by the next start: each counts.
    srv.domains.append({"name": "seen.test", "primary": "[127.0.0.2]:%d" % dead})
    srv.write_config(srv.port)
    srv.start(port=srv.port)
    send_smtplib(srv, "s@sender.test", ["w@seen.test"], make_message("seen"))
    arr, e0 = rcpt_of(srv, "w@seen.test")
    is_(srv.stop(), 0, "stopped with a message for seen.test")
    t = int(time.time())
    # Room for a slow start and stop (an ASan build beside other tests).
    a_end, b_start, b_end = t + 10, t + 12, t + 15
    srv.domains[-1]["maintenance"] = [{"start": iso(t - 120), "end": iso(a_end)},
                                      {"start": iso(b_start), "end": iso(b_end)}]
    srv.write_config(srv.port)
    srv.start(port=srv.port)
    ok(wait_for(lambda: any(x["active"] and x["created"] for x in srv.holds("seen.test")), 2),
       "seen.test: its first window runs, with a record")
    is_(srv.stop(), 0, "stopped in it")
    ok(time.time() < a_end, "... before its end")
    time.sleep(max(0, b_end + 1 - time.time()))
    mark = len(srv.log())
    srv.start(port=srv.port)
    ok(wait_log(srv, r"maintenance of seen\.test \(config\) ended after", 10, mark) is not None,
       "at the next start: its end applied")
    _, e1 = rcpt_of(srv, "w@seen.test")
    want = (a_end - arr) + (b_end - b_start)
    ok(e1 is not None and abs((e1 - e0) - want) <= 1,
       "expiry moved out by the rest of the first window and all of the second: %d s (got %s)"
       % (want, e1 - e0 if e1 else "?"))
    is_(srv.stop(), 0, "mxkeepd exits 0")



run_main(main)
