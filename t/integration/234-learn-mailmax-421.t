#!/usr/bin/env python3
# 234-learn-mailmax-421 (issue 10, 1): a primary that declares nothing and
# ends a session with "421 4.7.0 too many messages" at the MAIL after 4
# transactions.  20 messages queued while it was down, then the flush over
# one connection at a time: the first 421 teaches "at most 4 per session",
# later sessions QUIT after 4 (no more 421s), all 20 arrive once (none
# waits for the retry back-off of 60 s), and show-dest shows mail_max 4
# (learned).
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 20


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", mail_max_421=4, name="primary.example.org")
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"delivery": fast_delivery(max_connections=1, probe_min="1s",
                                                     probe_max="2s")})
    srv.start()
    ids = queue_while_down(srv, prim, N, tag="m4")
    prim.start()
    ok(wait_empty(srv, 30), "queue empty: all %d delivered" % N)
    is_(sorted(prim.message_ids()), ids, "every message once")
    is_(prim.n421, 1, "one 421: the limit was learned from it (%d)" % prim.n421)
    ok(prim.max_txn_session <= 4, "no session past 4 transactions (%d)" % prim.max_txn_session)
    r = srv.ctl("show-dest", "example.org")
    like(r.stdout.decode(), r"mail_max 4 \(learned\)", "show-dest: mail_max 4 (learned)")
    j = json.loads(srv.ctl("--json", "summary").stdout.decode())
    row = [d for d in j["domains"] if d["domain"] == "example.org"][0]
    is_((row.get("mail_max"), row.get("mail_max_source")), (4, "learned"), "summary --json")
    log = srv.log()
    like(log, r"ended a session with 421 after 4 messages: at most 4 per session \(learned\)",
         "log: learned")
    unlike(log, r"status=bounced", "nothing bounced")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
