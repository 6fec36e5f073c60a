#!/usr/bin/env python3
# 150-milter-quarantine (issue 9, parts 2 and 4): a milter's quarantine
# action (SMFIR_QUARANTINE, python3-milter's quarantine()) commits the
# message into the spool's quarantine with the milter's reason: the client
# gets 250 (the message is on disk), nothing is delivered, `mxkeepctl
# quarantine list` shows it with the reason, and `quarantine release
# --deliver` hands it to the primary.  A message the milter leaves alone
# in the same run is delivered as usual.
# On the old code the quarantine reason was only logged and the message
# was queued and delivered: the list, the "nothing delivered" and the
# release checks fail there.
import json
import os
import subprocess
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

MILTER = os.path.join(ROOT, "t", "lib", "test_milter.py")
SYSPY = "/usr/bin/python3"


def held(srv):
    r = srv.ctl("--json", "quarantine", "list")
    return [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]


def main():
    require_binaries()
    if subprocess.run([SYSPY, "-c", "import Milter"], stderr=subprocess.DEVNULL).returncode:
        skip_all("python3-milter is not installed")
    mport = free_port()
    proc = subprocess.Popen([SYSPY, MILTER, "inet:%d@127.0.0.1" % mport, "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ok(wait_for(lambda: port_open("127.0.0.1", mport), 10), "test milter listens")
        run(mport)
    finally:
        proc.terminate()
        proc.wait(5)


def run(mport):
    primary = FakeSMTP(host="127.0.0.2", name="primary.test")
    primary.start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % primary.port}],
                 settings={"milters": [{"socket": "inet:127.0.0.1:%d" % mport, "timeout": "5s"}],
                           "delivery": fast_delivery()})
    srv.start()
    code, text = send_smtplib(srv, "a@sender.test", ["quarantine@example.org"],
                              make_message("held"))
    is_(code, 250, "quarantined message: 250")
    qid = qid_of(text)
    code, text = send_smtplib(srv, "a@sender.test", ["plain@example.org"], make_message("plain"))
    is_(code, 250, "plain message: 250")
    ok(wait_for(lambda: any(m["rcpts"] == ["plain@example.org"] for m in primary.messages), 15),
       "the plain message is delivered")
    ok(wait_log(srv, r"%s: quarantined: held by test milter" % qid, 5) is not None,
       "logged as quarantined with the milter's reason")
    h = held(srv)
    is_([x.get("qid") for x in h], [qid], "quarantine list shows it")
    is_(h[0].get("reason") if h else None, "held by test milter", "with the milter's reason")
    r = srv.ctl("quarantine", "show", qid)
    like(r.stdout.decode(), r"reason: held by test milter", "quarantine show gives the reason")
    time.sleep(1)
    ok(not any(m["rcpts"] == ["quarantine@example.org"] for m in primary.messages),
       "nothing delivered from quarantine")

    r = srv.ctl("quarantine", "release", "--deliver", qid)
    is_(r.returncode, 0, "release --deliver exits 0")
    ok(wait_for(lambda: any(m["rcpts"] == ["quarantine@example.org"] for m in primary.messages),
                15), "released message delivered to the primary")
    ok(wait_for(lambda: held(srv) == [], 5), "quarantine empty")
    ok(wait_empty(srv, 15), "queue empty")


run_main(main)
