#!/usr/bin/env python3
# 202-maint-expiry: the retention clock and delay warnings stop during
# maintenance, whether or not the daemon runs.  A window is started, the
# daemon is stopped and started again with its clock moved on (libfaketime)
# past the delay warning and past the retention: the domain in
# maintenance gets neither a delay warning nor an expiry while another
# domain with the same retention gets both; at `stop` every waiting
# recipient's expiry moves out by the wall-clock time in maintenance
# (about 4 h, most of it with the daemon stopped) and the mail is still
# there to deliver.
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def expiry_of(srv, addr):
    for m in srv.queue():
        for r in m["recipients"]:
            if r["addr"] == addr:
                return r["expiry"], r["state"]
    return None, None


def main():
    require_binaries()
    env2 = faketime_env("+2h")
    env4 = faketime_env("+4h")
    if env2 is None:
        skip_all("libfaketime not installed")
    dead = free_port_on("127.0.0.2")
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % dead, "retention": "3h"},
        {"name": "ctrl.test", "primary": "[127.0.0.2]:%d" % dead, "retention": "3h"},
    ], settings={"delivery": fast_delivery(delay_warning="1h")})
    srv.start()
    qm, qc = [qid_of(send_smtplib(srv, "s@sender.test", [rcpt], make_message(rcpt))[1])
              for rcpt in ("u@example.org", "u@ctrl.test")]
    ok(qm and qc, "two messages queued, one per domain")
    e0, _ = expiry_of(srv, "u@example.org")
    r = srv.ctl("maintenance", "example.org", "start", "--note", "long one")
    is_(r.returncode, 0, "maintenance start (no end)")
    t0 = time.time()
    is_(srv.stop(), 0, "daemon stopped during the window")

    mark = len(srv.log())
    srv.start(env=env2)
    ok(wait_log(srv, r"%s: delay warning to <s@sender\.test>" % qc, 15, mark) is not None,
       "2 h later: the other domain's message gets its delay warning")
    time.sleep(2)
    unlike(srv.log()[mark:], r"%s: delay warning" % qm, "the message in maintenance gets none")
    w = [x for x in json.loads(srv.ctl("--json", "holds").stdout.decode())["holds"]
         if x["domain"] == "example.org"]
    is_([(x["kind"], x["origin"], x["active"]) for x in w], [("maintenance", "runtime", True)],
        "the window survived the restart, still active")
    is_(srv.stop(), 0, "stopped again")

    mark = len(srv.log())
    srv.start(env=env4)
    ok(wait_log(srv, r"%s: to=<u@ctrl\.test>, .*dsn=4\.4\.7, status=expired" % qc, 15, mark)
       is not None, "4 h later: the other domain's message expired (retention 3 h)")
    time.sleep(2)
    unlike(srv.log()[mark:], r"to=<u@example\.org>, [^\n]*status=expired",
           "the message in maintenance did not expire")
    _, st = expiry_of(srv, "u@example.org")
    is_(st, "pending", "... it is still pending")
    r = srv.ctl("maintenance", "example.org", "stop")
    is_(r.returncode, 0, "maintenance stop")
    m = wait_log(srv, r"maintenance of example\.org \(runtime\) ended after (\d+)h(\d\d)m(\d\d)s: "
                 r"expiry of 1 message moved out", 15, mark)
    ok(m is not None, "log: ended, expiry of 1 message moved out")
    spent = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3)) if m else 0
    wall = 4 * 3600 + (time.time() - t0)
    ok(abs(spent - wall) < 60, "time in maintenance %d s is the wall clock's %d s, daemon "
       "stopped or not" % (spent, wall))
    e1, st = expiry_of(srv, "u@example.org")
    ok(e1 is not None and abs((e1 - e0) - spent) <= 2,
       "expiry moved out by the time in maintenance (%s s)" % (e1 - e0 if e1 else "?"))
    is_(st, "pending", "still pending after the window, retention left: about 3 h")
    time.sleep(2)
    unlike(srv.log()[mark:], r"to=<u@example\.org>, [^\n]*status=expired", "and not expired")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
