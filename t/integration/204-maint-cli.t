#!/usr/bin/env python3
# 204-maint-cli: the command line and the config.  Bad TIME arguments get a
# clear error and exit 64 before the daemon is asked (and nothing is
# held); an unknown domain exit 67; --until in the past is refused;
# `holds --json` and `maintenance list --json` are JSON with the fields
# documented (kind, origin, active, start, until, created, uid, phase,
# note, schedule); absolute ISO times work; a bad window in the config is
# one line `file:line: reason` and exit 78.
import json
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

FIELDS = {"domain", "kind", "origin", "active", "start", "until", "created", "uid", "phase",
          "note", "schedule"}


def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2").start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % fake.port}],
                 settings={"delivery": fast_delivery()})
    srv.start()
    for bad, why in (("tomorrow", r"not a time"), ("+2", r"unit"), ("+2x", r"unknown unit 'x'"),
                     ("2026-13-01T00:00:00Z", r"no month 13"),
                     ("2026-12-01T06:00:00", r"add 'Z'")):
        r = srv.ctl("maintenance", "example.org", "start", "--until", bad)
        is_(r.returncode, 64, "--until %s: exit 64" % bad)
        like(r.stderr.decode(), r"--until: .*" + why, "... says: %s" % r.stderr.decode().strip())
    r = srv.ctl("maintenance", "example.org", "start", "--until", "-1h")
    is_(r.returncode, 64, "--until in the past: exit 64")
    like(r.stderr.decode(), r"not in the future", "... says so")
    r = srv.ctl("maintenance", "example.org", "start", "--until", "2000-01-01")
    is_(r.returncode, 64, "--until 2000-01-01: exit 64")
    h = json.loads(srv.ctl("--json", "holds").stdout.decode())["holds"]
    is_(h, [], "nothing held after the refused requests")
    send_batch(srv, 1, tag="free")
    ok(wait_for(lambda: fake.count() >= 1, 5), "... and mail flows")

    r = srv.ctl("maintenance", "nosuch.test", "start")
    is_(r.returncode, 67, "unknown domain: exit 67")
    like(r.stderr.decode(), r"unknown domain nosuch\.test", "... says so")
    r = srv.ctl("maintenance", "example.org", "begin")
    is_(r.returncode, 64, "maintenance D begin: usage, exit 64")
    r = srv.ctl("maintenance", "example.org", "stop", "--note", "x")
    is_(r.returncode, 64, "stop --note: exit 64")
    r = srv.ctl("hold", "example.org", "--until", "+1h")
    is_(r.returncode, 64, "hold --until: option not for this command, exit 64")

    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    r = srv.ctl("maintenance", "example.org", "start", "--until", until, "--note", "50% off -")
    is_(r.returncode, 0, "--until %s (absolute): exit 0" % until)
    r = srv.ctl("--json", "maintenance", "example.org", "stop")
    ok(r.returncode == 0 and "reply" in json.loads(r.stdout.decode()), "stop --json: a JSON reply")
    r = srv.ctl("maintenance", "example.org", "start", "--until", until, "--note", "50% off -")
    r = srv.ctl("hold", "example.org")
    for args in (("--json", "holds"), ("maintenance", "list", "--json")):
        r = srv.ctl(*args)
        is_(r.returncode, 0, "%s: exit 0" % " ".join(args))
        try:
            d = json.loads(r.stdout.decode())
        except ValueError:
            d = {}
        rows = d.get("holds", [])
        ok(rows and all(set(x) == FIELDS for x in rows), "%s: JSON with the documented fields" %
           " ".join(args))
        w = [x for x in rows if x["kind"] == "maintenance"]
        is_([(x["until"], x["note"], x["origin"], x["phase"]) for x in w],
            [(until, "50% off -", "runtime", "running")], "%s: the window, note kept" % " ".join(args))
    is_(sorted(x["kind"] for x in json.loads(srv.ctl("--json", "holds").stdout.decode())["holds"]),
        ["hold", "maintenance"], "holds lists the hold and the window")
    is_([x["kind"] for x in json.loads(srv.ctl("--json", "maintenance", "list").stdout.decode())
         ["holds"]], ["maintenance"], "maintenance list lists only windows")
    r = srv.ctl("holds")
    like(r.stdout.decode(), r"(?m)^example\.org +maintenance +runtime +running ", "holds: text table")
    r = srv.ctl("release", "example.org")
    like(r.stdout.decode(), r"stays held: in maintenance", "release during maintenance says it stays held")
    is_(srv.stop(), 0, "stopped")

    # Bad windows in the config: file:line: reason, exit 78.
    for win, why in (({"weekly": "Sun 2:00-4:00"}, r"maintenance\.weekly: .*HH:MM"),
                     ({"start": "2026-12-01T06:00:00Z"}, r"needs start and end"),
                     ({"start": "+1h", "end": "+2h"}, r"absolute UTC"),
                     ({"start": "2026-12-01T08:00:00Z", "end": "2026-12-01T06:00:00Z"},
                      r"not after start"),
                     ({"weekly": "Sun 02:00-04:00", "start": "2026-12-01T06:00:00Z"},
                      r"either weekly or start/end"),
                     ({"weekly": "Sun 02:00-04:00", "when": "x"}, r"unknown setting when")):
        srv.domains[0]["maintenance"] = [win]
        srv.write_config()
        r = run([MXKEEPD, "-t", "-c", srv.conf])
        is_(r.returncode, 78, "bad window %s: exit 78" % json.dumps(win))
        lines = [x for x in r.stderr.decode().splitlines() if x.strip()]
        ok(len(lines) == 1 and re.search(r"^%s:\d+: .*%s" % (re.escape(srv.conf), why), lines[0]),
           "... one line file:line: %s" % (lines[0] if lines else "(nothing)"))


run_main(main)
