#!/usr/bin/env python3
# 55-outcome-after-close (issue 7, item 1, the outbound share): an outcome
# the primary gave (250 to the end of data) is committed and logged even
# when the connection closes right after it, in the same breath: no
# message is sent twice, each is logged status=sent once and leaves the
# queue; the message the closed connection had in hand next is deferred
# (4.4.2) and delivered on a later connection, not lost.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 6


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", close_after_data=True, name="primary.example.org")
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"delivery": fast_delivery(max_connections=1, probe_min="1s",
                                                     probe_max="2s")})
    srv.start()
    sent = send_batch(srv, N, tag="close")
    ids = sorted(message_id(m) for _, m in sent)
    ok(wait_log(srv, r"destination example\.org: \w+ -> down", 8) is not None,
       "primary down at first: %d queued" % N)
    prim.start()
    ok(wait_empty(srv, 30), "queue empty: every outcome committed")
    time.sleep(1.5)
    got = prim.message_ids()
    is_(sorted(got), ids, "each message delivered exactly once (no resend of a 250'd message)")
    log = srv.log()
    is_(len(re.findall(r"to=<user@example\.org>, relay=.*status=sent", log)), N,
        "log: one status=sent per message")
    unlike(log, r"status=bounced", "nothing bounced")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
