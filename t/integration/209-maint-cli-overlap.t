#!/usr/bin/env python3
# 209-maint-cli-overlap: what mxkeepctl says about windows (issue 10,
# section 2: a hold is visible, not silent, and shown for what it is).
#   1. `maintenance D start` while a config window runs: the runtime
#      window is added (exit 0) and the reply says the domain is already
#      in the config window until its end and how long it is now held;
#      `holds` lists both; `stop` ends both.
#   2. With the daemon stopped, `holds` reads the spool: a runtime window
#      whose --until has passed is "ended" (applied at the next start), not
#      "scheduled"; a config window whose time has come is "running"; after
#      the next start the ended window is gone, as the online listing says.
import json
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403




def main():
    require_binaries()
    dead = free_port_on("127.0.0.2")
    now = int(time.time())
    cfg_end = now + 3600
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % dead,
         "maintenance": [{"start": iso(now - 60), "end": iso(cfg_end), "note": "cfg"}]},
        {"name": "gone.test", "primary": "[127.0.0.2]:%d" % dead},
        {"name": "later.test", "primary": "[127.0.0.2]:%d" % dead},
    ], settings={"delivery": fast_delivery()})
    srv.start()

    # 1. start during a config window
    ok(wait_for(lambda: any(x["active"] for x in srv.holds("example.org")), 5),
       "example.org is in its config window")
    r = srv.ctl("maintenance", "example.org", "start", "--until", "+2h")
    is_(r.returncode, 0, "maintenance start --until +2h during the config window: exit 0")
    out = r.stdout.decode() + r.stderr.decode()
    rt = [x for x in srv.holds("example.org") if x["origin"] == "runtime"]
    until = rt[0]["until"] if rt else "?"
    like(out, r"already in the config window until %s: held until %s" %
         (re.escape(iso(cfg_end)), re.escape(until)),
         "the reply says it is already in the config window, and until when it is held")
    is_(sorted((x["origin"], x["active"]) for x in srv.holds("example.org")),
        [("config", True), ("runtime", True)], "holds: both windows, both active")
    r = srv.ctl("maintenance", "example.org", "start")
    like(r.stdout.decode(), r"already in the config window until %s: held until stopped" %
         re.escape(iso(cfg_end)), "again without --until: held until stopped")
    r = srv.ctl("maintenance", "example.org", "stop")
    is_(r.returncode, 0, "stop")
    ok(wait_for(lambda: not any(x["active"] for x in srv.holds("example.org")), 10),
       "stop ended both: nothing holds example.org")

    # 2. the offline listing
    r = srv.ctl("maintenance", "gone.test", "start", "--until", "+3s", "--note", "short")
    is_(r.returncode, 0, "gone.test: maintenance start --until +3s")
    is_(srv.stop(), 0, "daemon stopped before that window's end")
    t = int(time.time())
    srv.domains[2]["maintenance"] = [{"start": iso(t + 1), "end": iso(t + 3600), "note": "l"}]
    srv.write_config(srv.port)
    time.sleep(5)
    g = srv.holds("gone.test")
    is_([(x["origin"], x["phase"], x["active"]) for x in g], [("runtime", "ended", False)],
        "offline --json holds: the window whose end passed is ended, not scheduled")
    l = srv.holds("later.test")
    is_([(x["origin"], x["phase"], x["active"]) for x in l], [("config", "running", True)],
        "offline: a config window whose time has come is running")
    r = srv.ctl("holds")
    like(r.stdout.decode(), r"(?m)^gone\.test +maintenance +runtime +ended .*over; ends when "
         r"mxkeepd runs", "offline text holds: ended, and when it is applied")
    unlike(r.stdout.decode(), r"(?m)^gone\.test .* scheduled ", "... not scheduled")
    mark = len(srv.log())
    srv.start(port=srv.port)
    ok(wait_log(srv, r"maintenance of gone\.test \(runtime\) ended after", 10, mark) is not None,
       "at the next start its end is applied")
    ok(wait_for(lambda: srv.holds("gone.test") == [], 5), "online: then it is gone")
    is_([(x["origin"], x["phase"]) for x in srv.holds("later.test")], [("config", "running")],
        "online: the config window runs, as the offline listing said")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
