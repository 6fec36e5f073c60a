#!/usr/bin/env python3
# 10-postfix: a real Postfix instance (private config and queue, smtpd on a
# loopback port, holding what it gets in its deferred queue) as the
# primary: down while mail arrives, then up; mxkeepd flushes 20 messages
# into it, each exactly once, with its Message-ID.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 20


def main():
    require_binaries()
    if not IS_ROOT:
        skip_all("a private Postfix instance needs root")
    if not os.access(POSTFIX, os.X_OK):
        skip_all("postfix not installed")
    pf = Postfix()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.1]:%d" % pf.port}],
                 settings={"delivery": fast_delivery(probe_max="3s")})
    srv.start()
    sent = send_batch(srv, N, tag="pf", size=4096)
    ids = sorted(message_id(m) for _, m in sent)
    ok(wait_log(srv, r"destination example\.org: \w+ -> down", 8) is not None, "Postfix not up yet: down")
    is_(len(srv.queue()), N, "%d messages kept" % N)

    pf.start()
    t0 = time.monotonic()
    ok(wait_empty(srv, 25), "mxkeepd's queue empty after Postfix came up (%.1fs)" % (time.monotonic() - t0))
    ok(wait_for(lambda: pf.count() >= N, 15), "Postfix's queue holds the messages")
    is_(pf.count(), N, "exactly %d messages in Postfix's queue" % N)
    got = pf.message_ids()
    is_(sorted(got), ids, "every Message-ID once in Postfix's queue")
    log = srv.log()
    n = len(re.findall(r"relay=[^,]*\[127\.0\.0\.1\]:%d, delay=\d+, dsn=2\.0\.0, status=sent "
                       r"\(250 2\.0\.0 Ok: [^)]*queued as \w+\)" % pf.port, log))
    is_(n, N, "log: %d status=sent with Postfix's 'queued as' reply" % N)
    pflog = pf.log()
    is_(len(re.findall(r"smtpd\[\d+\]: \w+: client=\S+\[127\.0\.0\.1\]", pflog)), N,
        "Postfix's log: %d messages from 127.0.0.1" % N)
    like(pflog, r"helo=<mx2\.example\.net>|connect from", "Postfix saw mxkeepd connect")
    unlike(pflog, r"reject:", "Postfix rejected nothing")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
