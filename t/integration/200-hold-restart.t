#!/usr/bin/env python3
# 200-hold-restart: a runtime hold (mxkeepctl hold) is kept in the spool's
# index: it survives a restart and a reload, is shown with its origin
# (runtime), time and uid in holds/summary/metrics/status, and only
# release ends it (then the domain flushes).  A config hold shows as
# origin config.
import json
import os
import sys
import urllib.request
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403



def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2").start()
    other = FakeSMTP(host="127.0.0.2").start()
    mport = free_port_on("127.0.0.1")
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % fake.port},
        {"name": "cfg.test", "primary": "[127.0.0.2]:%d" % other.port, "hold": True},
    ], settings={"delivery": fast_delivery(),
                 "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()
    r = srv.ctl("hold", "example.org")
    is_(r.returncode, 0, "mxkeepctl hold example.org: exit 0")
    send_batch(srv, 3, tag="held")
    time.sleep(2)
    is_(fake.count(), 0, "held: nothing delivered")

    h = srv.holds()
    ok(h is not None, "mxkeepctl --json holds parses")
    rt = [x for x in (h or []) if x["domain"] == "example.org"]
    is_(len(rt), 1, "one hold listed for example.org")
    if rt:
        is_((rt[0]["kind"], rt[0]["origin"], rt[0]["active"]), ("hold", "runtime", True),
            "kind hold, origin runtime, active")
        is_(rt[0]["uid"], os.getuid(), "the uid of who asked (SO_PEERCRED)")
        ok(rt[0]["created"] is not None, "when it was made")
    cf = [x for x in (h or []) if x["domain"] == "cfg.test"]
    is_([(x["kind"], x["origin"]) for x in cf], [("hold", "config")], "config hold: origin config")

    # Restart: the hold is still there, and still holds.
    is_(srv.stop(), 0, "stopped")
    mark = len(srv.log())
    srv.start()
    ok(wait_log(srv, r"hold of example\.org \(runtime, since \d{4}-\d\d-\d\dT[\d:]+Z, by uid %d\) restored" % os.getuid(),
                5, mark) is not None, "log: hold restored from the spool at start-up")
    time.sleep(3)
    is_(fake.count(), 0, "after restart: still held, nothing delivered")
    r = srv.ctl("flush", "example.org")
    is_(r.returncode, 75, "flush of the held domain after restart: exit 75 (held)")
    # ETRN answers as for a hold.
    code = None
    try:
        import smtplib
        s = smtplib.SMTP("127.0.0.1", srv.port, timeout=10)
        s.ehlo("client.test")
        code, _ = s.docmd("ETRN", "example.org")
        s.quit()
    except Exception as e:  # noqa: BLE001
        diag("ETRN: %s" % e)
    is_(code, 458, "ETRN example.org: 458 (held)")

    # A reload does not drop it either.
    srv.hup()
    time.sleep(2)
    is_(fake.count(), 0, "after reload: still held")

    rs = srv.ctl("summary")
    like(rs.stdout.decode(), r"held example\.org: hold \(runtime, uid %d, since " % os.getuid(),
         "summary shows the hold with origin, uid and time")
    like(rs.stdout.decode(), r"held cfg\.test: hold \(config\)", "summary shows the config hold")
    js = json.loads(srv.ctl("--json", "summary").stdout.decode())
    is_(sorted((x["domain"], x["origin"]) for x in js.get("holds", [])),
        [("cfg.test", "config"), ("example.org", "runtime")], "summary --json: holds with origin")

    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10).read().decode()
    like(body, r'mxkeep_holds\{origin="runtime"\} 1\b', "/metrics: 1 runtime hold")
    like(body, r'mxkeep_holds\{origin="config"\} 1\b', "/metrics: 1 config hold")
    page = urllib.request.urlopen("http://127.0.0.1:%d/status" % mport, timeout=10).read().decode()
    like(page, r'<tr data-hold-domain="example\.org" data-kind="hold" data-origin="runtime">',
         "/status: the hold in the holds table with its origin")

    r = srv.ctl("release", "example.org")
    is_(r.returncode, 0, "release: exit 0")
    ok(wait_for(lambda: fake.count() >= 3, 10), "released: the 3 messages delivered")
    is_([x for x in srv.holds() or [] if x["domain"] == "example.org"], [],
        "the hold is gone from the listing")
    is_(srv.stop(), 0, "stopped")
    srv.start()
    send_batch(srv, 1, tag="after")
    ok(wait_for(lambda: fake.count() >= 4, 10), "after another restart: not held any more")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
