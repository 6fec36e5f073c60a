#!/usr/bin/env python3
# 51-rcpt-limit (issue 7, item 11): a primary with a per-transaction
# recipient limit.  An 8-recipient message; the primary answers the 4th and
# later RCPTs of a transaction with "552 5.5.3 Too many recipients".  Right
# (RFC 5321 4.5.3.1.10): none bounces; they are deferred and sent at once in
# further transactions (not after the retry back-off, 60 s here), and the
# limit is learned: no more than 3 RCPTs per transaction after the first.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

LIMIT = 3
N = 8


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", rcpt_max=LIMIT, name="primary.example.org").start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"delivery": fast_delivery(probe_min="60s", probe_max="120s")})
    srv.start()
    rcpts = ["u%d@example.org" % i for i in range(N)]
    t0 = time.monotonic()
    code, text = send_smtplib(srv, "alice@sender.test", rcpts, make_message("limit"))
    is_(code, 250, "8-recipient message accepted")
    qid = qid_of(text)

    got = lambda: sorted(r for m in prim.messages for r in m["rcpts"])
    ok(wait_for(lambda: len(got()) >= N, 10), "all 8 recipients reached the primary")
    dt = time.monotonic() - t0
    is_(got(), sorted(rcpts), "each recipient exactly once")
    ok(dt < 10, "promptly: %.1f s (the retry back-off is 60 s)" % dt)
    ok(all(len(m["rcpts"]) <= LIMIT for m in prim.messages),
       "no transaction carried more than %d recipients (%s)" %
       (LIMIT, [len(m["rcpts"]) for m in prim.messages]))
    is_(len(prim.messages), 3, "three transactions: 3 + 3 + 2")
    n552 = len([a for a, c in prim.rcpt_log if c == 552])
    is_(n552, N - LIMIT, "the limit was learned: 552 only in the first transaction (%d)" % n552)
    ok(wait_for(lambda: qid not in srv.queue_by_qid(), 5), "message left the queue")
    log = srv.log()
    unlike(log, r"status=bounced", "nothing bounced")
    like(log, r"%s: to=<u%d@example\.org>, .*dsn=4\.5\.3, status=deferred \(452 4\.5\.3 Too many "
              r"recipients\)" % (qid, LIMIT), "log: 4th recipient deferred with 452 4.5.3")
    like(log, r"destination example\.org: .* takes %d recipients per transaction" % LIMIT,
         "log: the limit learned")
    is_(len(re.findall(r"%s: to=<[^>]+>, .*status=sent" % qid, log)), N, "log: 8 status=sent")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
