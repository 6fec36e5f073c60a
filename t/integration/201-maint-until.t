#!/usr/bin/env python3
# 201-maint-until: `mxkeepctl maintenance D start --until +4s --note ..`
# holds the domain (nothing delivered, ETRN 458, flush refused), shows
# it in `maintenance list --json` with origin runtime, uid, until and
# note; at the --until time the window ends by itself: the recipients'
# expiry is moved out by the time spent in it, and the domain flushes
# without anyone asking.  A second window stopped early with `stop`
# flushes at once.  Another domain keeps flowing throughout.
import json
import os
import sys
import urllib.request
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def expiries(srv, domain):
    return {r["addr"]: r["expiry"] for m in srv.queue() for r in m["recipients"]
            if r["domain"] == domain and r["state"] == "pending"}


def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2").start()
    other = FakeSMTP(host="127.0.0.2").start()
    mport = free_port_on("127.0.0.1")
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % fake.port},
        {"name": "free.test", "primary": "[127.0.0.2]:%d" % other.port},
    ], settings={"delivery": fast_delivery(),
                 "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()
    t0 = time.time()
    r = srv.ctl("maintenance", "example.org", "start", "--until", "+4s", "--note",
                "disk swap, ticket #42")
    is_(r.returncode, 0, "maintenance start --until +4s: exit 0")
    like(r.stdout.decode(), r"maintenance of example\.org until \d{4}-\d\d-\d\dT", "reply names the end")
    for i in range(3):
        send_smtplib(srv, "s@sender.test", ["u%d@example.org" % i], make_message("m%d" % i))
    send_batch(srv, 1, rcpt="x@free.test", tag="free")
    before = expiries(srv, "example.org")
    is_(len(before), 3, "3 recipients waiting in maintenance")
    lst = json.loads(srv.ctl("--json", "maintenance", "list").stdout.decode())["holds"]
    w = [x for x in lst if x["domain"] == "example.org"]
    is_(len(w), 1, "maintenance list --json: one window")
    if w:
        is_((w[0]["kind"], w[0]["origin"], w[0]["active"], w[0]["uid"]),
            ("maintenance", "runtime", True, os.getuid()), "runtime window, active, with the uid")
        is_(w[0]["note"], "disk swap, ticket #42", "the note, spaces and all")
        ok(w[0]["until"] is not None, "until given")
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10).read().decode()
    like(body, r'mxkeep_maintenance\{domain="example\.org",origin="runtime",phase="running",'
         r'until="\d+"\} 1', "/metrics: example.org in maintenance, runtime, running, until")
    like(body, r'mxkeep_maintenance_windows\{origin="runtime"\} 1\b', "/metrics: 1 runtime window")
    page = urllib.request.urlopen("http://127.0.0.1:%d/status" % mport, timeout=10).read().decode()
    like(page, r'<rect class="maint-band" [^>]*><title>example\.org in maintenance</title>',
         "/status: a maintenance band on the backlog chart")
    ok(wait_for(lambda: other.count() >= 1, 5), "another domain flows meanwhile")
    is_(fake.count(), 0, "in maintenance: nothing delivered")
    r = srv.ctl("flush", "example.org")
    is_(r.returncode, 75, "flush refused while in maintenance (held)")
    ok(wait_log(srv, r"maintenance of example\.org \(runtime\) ended after 0h00m0[4-9]s: expiry of "
                r"1 message moved out; delivering|maintenance of example\.org \(runtime\) ended after "
                r"0h00m0[4-9]s: expiry of 3 messages moved out; delivering", 15) is not None,
       "log: the window ended at its --until, expiry of the 3 messages moved out")
    ok(wait_for(lambda: fake.count() >= 3, 10), "flushed by itself: 3 delivered, nobody asked")
    took = time.time() - t0
    ok(took < 14, "delivered %.1f s after the start of a 4 s window" % took)
    lst = json.loads(srv.ctl("--json", "maintenance", "list").stdout.decode())["holds"]
    is_([x for x in lst if x["domain"] == "example.org"], [], "the window is gone from the list")
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10).read().decode()
    unlike(body, r'mxkeep_maintenance\{domain="example\.org"', "/metrics: no longer in maintenance")
    page = urllib.request.urlopen("http://127.0.0.1:%d/status" % mport, timeout=10).read().decode()
    like(page, r'<rect class="maint-band" [^>]*><title>example\.org in maintenance</title>',
         "/status: the past window stays as a band on the 24 h chart")

    # The expiry moved out by the time in maintenance: held mail this time.
    stop_fake = free_port_on("127.0.0.2")
    srv.domains[0]["primary"] = "[127.0.0.2]:%d" % stop_fake     # nobody answers
    srv.write_config(srv.port)
    srv.hup()
    time.sleep(1)
    send_smtplib(srv, "s@sender.test", ["late@example.org"], make_message("late"))
    before = expiries(srv, "example.org")
    r = srv.ctl("maintenance", "example.org", "start")
    is_(r.returncode, 0, "maintenance start without --until: exit 0")
    time.sleep(3)
    mark = len(srv.log())
    r = srv.ctl("maintenance", "example.org", "stop")
    is_(r.returncode, 0, "maintenance stop: exit 0")
    ok(wait_log(srv, r"maintenance of example\.org \(runtime\) ended after 0h00m0[3-9]s", 10, mark)
       is not None, "log: stopped window ended")
    after = expiries(srv, "example.org")
    d = after.get("late@example.org", 0) - before.get("late@example.org", 0)
    ok(3 <= d <= 8, "expiry moved out by the %d s spent in maintenance" % d)
    ok(wait_log(srv, r"destination example\.org: unknown -> down", 10, mark) is not None,
       "delivery tried again at once after stop (probe of the dead primary)")
    r = srv.ctl("maintenance", "example.org", "stop")
    is_(r.returncode, 66, "stop when not in maintenance: exit 66 (EX_NOINPUT)")
    like(r.stderr.decode(), r"not in maintenance", "... says why")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
