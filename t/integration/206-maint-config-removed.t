#!/usr/bin/env python3
# 206-maint-config-removed: a running window from the config that a reload
# removes ends at once, as `maintenance stop` would: its expiry move is
# made, the domain is released and flushes by itself.  Before this, the
# window's record kept the domain held until its old end, through reloads
# and restarts, with nothing in the config to explain why.
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403



def active(srv, domain):
    r = srv.ctl("--json", "holds")
    return [x for x in json.loads(r.stdout.decode())["holds"]
            if x["domain"] == domain and x["active"]]


def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2").start()
    now = int(time.time())
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % fake.port,
         "maintenance": [{"start": iso(now - 60), "end": iso(now + 3600), "note": "by mistake"}]},
    ], settings={"delivery": fast_delivery()})
    srv.start()
    ok(wait_log(srv, r"maintenance of example\.org \(config [^)]*\) started", 10) is not None,
       "the config window runs")
    send_smtplib(srv, "s@sender.test", ["a@example.org"], make_message("held"))
    time.sleep(2)
    is_(fake.count(), 0, "held by the window: nothing delivered")
    is_(len(active(srv, "example.org")), 1, "holds: one active window")

    # The admin deletes the window from the config and reloads.
    del srv.domains[0]["maintenance"]
    srv.write_config(srv.port)
    mark = len(srv.log())
    r = srv.ctl("reload")
    is_(r.returncode, 0, "reload")
    ok(wait_log(srv, r"maintenance of example\.org \(config\) is no longer in the configuration",
                10, mark) is not None, "log: the removed window ends now")
    ok(wait_for(lambda: fake.count() >= 1, 15), "released: the held message is delivered")
    is_(active(srv, "example.org"), [], "holds: nothing active")

    # And it stays gone after a restart.
    is_(srv.stop(), 0, "stopped")
    srv.start(port=srv.port)
    is_(active(srv, "example.org"), [], "after a restart: nothing active")
    send_smtplib(srv, "s@sender.test", ["b@example.org"], make_message("after"))
    ok(wait_for(lambda: fake.count() >= 2, 10), "after a restart: delivered at once")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
