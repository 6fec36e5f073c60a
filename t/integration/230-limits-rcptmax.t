#!/usr/bin/env python3
# 230-limits-rcptmax (issue 10, 1): a primary that declares RFC 9422
# LIMITS RCPTMAX=2 in its EHLO.  A 7-recipient message: no transaction
# carries more than 2 RCPTs (the primary never has to refuse one), every
# recipient is delivered exactly once, promptly (the rest go in further
# transactions at once, not after the retry back-off), none bounces.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 7


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", limits="RCPTMAX=2 MAILMAX=1000",
                    name="primary.example.org").start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"delivery": fast_delivery(probe_min="60s", probe_max="120s")})
    srv.start()
    rcpts = ["u%d@example.org" % i for i in range(N)]
    t0 = time.monotonic()
    code, text = send_smtplib(srv, "alice@sender.test", rcpts, make_message("limits"))
    is_(code, 250, "7-recipient message accepted")
    qid = qid_of(text)
    got = lambda: sorted(r for m in prim.messages for r in m["rcpts"])
    ok(wait_for(lambda: len(got()) >= N, 10), "all 7 recipients reached the primary")
    dt = time.monotonic() - t0
    is_(got(), sorted(rcpts), "each recipient exactly once")
    ok(dt < 10, "promptly: %.1f s (the retry back-off is 60 s)" % dt)
    ok(prim.max_rcpts_txn <= 2, "no transaction carried more than 2 RCPTs (most: %d)"
       % prim.max_rcpts_txn)
    is_(len(prim.messages), 4, "four transactions: 2 + 2 + 2 + 1")
    is_(len([a for a, c in prim.rcpt_log if c != 250]), 0, "the primary refused no RCPT")
    ok(wait_for(lambda: qid not in srv.queue_by_qid(), 5), "message left the queue")
    log = srv.log()
    unlike(log, r"status=bounced", "nothing bounced")
    like(log, r"declares LIMITS RCPTMAX=2 MAILMAX=1000", "log: the declared limits")
    is_(len(re.findall(r"%s: to=<[^>]+>, .*status=sent" % qid, log)), N, "log: 7 status=sent")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
