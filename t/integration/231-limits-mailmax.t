#!/usr/bin/env python3
# 231-limits-mailmax (issue 10, 1): a primary that declares RFC 9422
# LIMITS MAILMAX=3.  Ten messages queued while it was down, then a flush
# over one connection at a time (max_connections 1): no session carries
# more than 3 transactions (mxkeep QUITs and opens a new one), every
# message arrives once, and show-dest / summary show the declared limit.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 10


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", limits="MAILMAX=3", name="primary.example.org")
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"delivery": fast_delivery(max_connections=1, probe_min="1s",
                                                     probe_max="2s")})
    srv.start()
    ids = queue_while_down(srv, prim, N, tag="mm")
    prim.start()
    ok(wait_empty(srv, 30), "queue empty: all %d delivered" % N)
    is_(sorted(prim.message_ids()), ids, "every message once")
    ok(prim.max_txn_session <= 3, "no session had more than 3 transactions (most: %d)"
       % prim.max_txn_session)
    ok(prim.nconn >= 4, "at least 4 sessions for 10 messages (%d)" % prim.nconn)
    is_(prim.n421, 0, "the primary never had to refuse")

    r = srv.ctl("show-dest", "example.org")
    is_(r.returncode, 0, "mxkeepctl show-dest exits 0")
    out = r.stdout.decode()
    like(out, r"mail_max 3 \(declared\)", "show-dest: mail_max 3 (declared)")
    like(out, r"primary 127\.0\.0\.2:%d" % prim.port, "show-dest: the primary host")
    r = srv.ctl("--json", "show-dest", "example.org")
    j = json.loads(r.stdout.decode())
    is_((j.get("mail_max"), j.get("mail_max_source")), (3, "declared"), "show-dest --json mail_max")
    is_(j.get("rcpt_max"), None, "no RCPTMAX declared: null")
    r = srv.ctl("summary")
    like(r.stdout.decode(), r"(?m)^limits example\.org: concurrency \d+/1 adaptive, primary "
         r"127\.0\.0\.2:\d+: mail_max 3 \(declared\)", "summary: the limits line")
    j = json.loads(srv.ctl("--json", "summary").stdout.decode())
    row = [d for d in j["domains"] if d["domain"] == "example.org"][0]
    is_(row.get("mail_max"), 3, "summary --json mail_max")
    is_(row.get("concurrency_ceiling"), 1, "summary --json concurrency_ceiling")
    unlike(srv.log(), r"status=bounced", "nothing bounced")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
