#!/usr/bin/env python3
# 52-conn-limit (issue 7, item 12): a primary that allows one session at a
# time and greets any other with "421 4.3.2 Too many connections"; 12
# queued messages, max_connections 4.  0.1.0 delivered them with 174 to 221
# connection attempts in about 1.5 s.  Right: a 421 at the greeting while a
# session works means "fewer connections": drop to the sessions that work,
# space new attempts; at most a few attempts per message, all delivered.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 12
MAXC = 4


def stat(srv, name):
    r = srv.ctl("stats")
    m = re.search(r"(?m)^%s\s+(\d+)$" % name, r.stdout.decode("utf-8", "replace"))
    return int(m.group(1)) if m else None


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", max_sessions=1, name="primary.example.org")
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"delivery": fast_delivery(max_connections=MAXC, probe_min="1s",
                                                     probe_max="2s")})
    srv.start()
    sent = send_batch(srv, N, tag="one")
    ids = sorted(message_id(m) for _, m in sent)
    ok(wait_log(srv, r"destination example\.org: \w+ -> down", 8) is not None,
       "primary down at first: %d messages queued" % N)
    conn0 = stat(srv, "smtp_connections_total")

    prim.start()
    t0 = time.monotonic()
    ok(wait_empty(srv, 30), "queue empty: all %d delivered" % N)
    dt = time.monotonic() - t0
    got = prim.message_ids()
    is_(sorted(got), ids, "every message once (nothing lost, no duplicate)")
    diag("%d connections to the primary, %d greeted with 421, in %.1f s" % (prim.nconn, prim.n421, dt))
    ok(prim.nconn <= 3 * N, "bounded: %d connection attempts for %d messages (<= 3 each)" %
       (prim.nconn, N))
    ok(prim.nconn <= N, "no more connections than messages (%d)" % prim.nconn)
    ok(prim.n421 <= MAXC, "a few 421s, not a storm (%d)" % prim.n421)
    log = srv.log()
    like(log, r"destination example\.org: .*421 4\.3\.2 Too many connections.* concurrency down to 1",
         "log: concurrency down to the one session that works")
    conn1 = stat(srv, "smtp_connections_total")
    if conn0 is not None and conn1 is not None:
        ok(conn1 - conn0 <= 3 * N, "mxkeepctl stats: %d connections for %d messages" %
           (conn1 - conn0, N))
    else:
        skip("no smtp_connections_total in mxkeepctl stats")
    unlike(log, r"status=bounced", "nothing bounced")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
