#!/usr/bin/env python3
# 08-crash: kill -9 in the middle of a flush to a slow primary, restart:
# every message is delivered at least once (duplicates allowed, nothing
# lost), and the queue ends empty.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 80
KILL_AT = 15


def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2", delay=0.05)            # down at first
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % fake.port}],
                 settings={"delivery": fast_delivery(probe_max="2s")})
    srv.start()
    sent = send_batch(srv, N, tag="crash")
    ids = sorted(message_id(m) for _, m in sent)
    ok(wait_log(srv, r"destination example\.org: \w+ -> down", 8) is not None, "primary down at first")
    is_(len(srv.queue()), N, "%d queued" % N)

    fake.start()
    ok(wait_for(lambda: fake.count() >= KILL_AT, 15, 0.01), "flush under way (%d delivered)" % fake.count())
    srv.kill9()
    at_kill = fake.count()
    diag("killed with %d delivered" % at_kill)
    ok(at_kill < N, "killed mid-flush")
    left = len(srv.queue())
    ok(left > 0, "messages left in the spool after kill -9 (%d)" % left)
    ok(left + at_kill >= N, "nothing vanished from the spool: %d left + %d delivered >= %d" %
       (left, at_kill, N))

    srv.start()
    ok(wait_empty(srv, 30), "queue empty after restart")
    got = fake.message_ids()
    is_(sorted(set(got)), ids, "every message delivered at least once")
    dups = len(got) - len(set(got))
    diag("%d duplicate deliveries (allowed: at-least-once)" % dups)
    ok(all(len(re.findall(rb"(?m)^Received:", b)) == 1 for b in fake.bodies()),
       "every copy carries exactly one Received header")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
