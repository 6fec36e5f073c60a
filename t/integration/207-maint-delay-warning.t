#!/usr/bin/env python3
# 207-maint-delay-warning: a delay warning whose time falls in a
# maintenance window is paused, not dropped (issue 10, section 2): never
# sent while the window runs, sent later by the wall-clock time the
# domain spent in maintenance, the same shift its expiry gets.  The daemon
# is restarted with its clock moved on (libfaketime):
#   example.org: a window without an end; at +2 h (warning due at +1 h)
#     nothing is sent; `stop` moves the warning to about +3 h: none at
#     once, one at +3 h 10 m;
#   late.test: a window of 30 min that ends while the daemon is stopped
#     (wall-clock time counts, the daemon ran or not): at +70 min its
#     warning, due at +1 h, is not sent (moved to +1 h 30 m); at +2 h it
#     is, once.
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    env1 = faketime_env("+70m")
    env2 = faketime_env("+2h")
    env3 = faketime_env("+190m")
    if env2 is None:
        skip_all("libfaketime not installed")
    dead = free_port_on("127.0.0.2")
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % dead, "retention": "10h"},
        {"name": "late.test", "primary": "[127.0.0.2]:%d" % dead, "retention": "10h"},
    ], settings={"delivery": fast_delivery(delay_warning="1h")})
    srv.start()
    qm, ql = [qid_of(send_smtplib(srv, "s@sender.test", [rcpt], make_message(rcpt))[1])
              for rcpt in ("u@example.org", "u@late.test")]
    ok(qm and ql, "two messages queued, one per domain")
    is_(srv.ctl("maintenance", "example.org", "start").returncode, 0,
        "example.org: maintenance start (no end)")
    is_(srv.ctl("maintenance", "late.test", "start", "--until", "+30m").returncode, 0,
        "late.test: maintenance start --until +30m")
    is_(srv.stop(), 0, "daemon stopped during both windows")

    mark = len(srv.log())
    srv.start(env=env1)
    ok(wait_log(srv, r"maintenance of late\.test \(runtime\) ended after 0h30m00s", 15, mark)
       is not None, "+70 min: late.test's window (ended while stopped) is applied: 30 min")
    time.sleep(3)
    unlike(srv.log()[mark:], r"%s: delay warning" % ql,
           "late.test: no warning yet (due at +1 h, moved out to +1 h 30 m)")
    unlike(srv.log()[mark:], r"%s: delay warning" % qm,
           "example.org: in maintenance: no warning (due at +1 h)")
    is_(srv.stop(), 0, "stopped again")

    mark = len(srv.log())
    srv.start(env=env2)
    ok(wait_log(srv, r"%s: delay warning to <s@sender\.test> for 1 recipient" % ql, 15, mark)
       is not None, "+2 h: late.test's paused warning is sent, not dropped")
    time.sleep(3)
    unlike(srv.log()[mark:], r"%s: delay warning" % qm,
           "example.org: its window still runs: no warning (due at +1 h)")
    mark = len(srv.log())
    is_(srv.ctl("maintenance", "example.org", "stop").returncode, 0, "maintenance stop")
    m = wait_log(srv, r"maintenance of example\.org \(runtime\) ended after (\d+)h(\d\d)m", 15,
                 mark)
    ok(m is not None and int(m.group(1)) == 2, "ended after about 2 h in maintenance")
    time.sleep(3)
    unlike(srv.log()[mark:], r"%s: delay warning" % qm,
           "right after the window: no warning yet (moved out to about +3 h)")
    is_(srv.stop(), 0, "stopped again")

    mark = len(srv.log())
    srv.start(env=env3)
    ok(wait_log(srv, r"%s: delay warning to <s@sender\.test> for 1 recipient" % qm, 15, mark)
       is not None, "+3 h 10 m: example.org's warning is sent, later by its time in maintenance")
    time.sleep(2)
    is_(len(re.findall(r"%s: delay warning" % ql, srv.log())), 1,
        "late.test's warning went once, not again")
    is_(len(re.findall(r"%s: delay warning" % qm, srv.log())), 1, "example.org's went once")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
