#!/usr/bin/env python3
# run-all: alone (the 421 overload is a 2 s window of wall time)
# 05-421: the primary answers 421 in the middle of a flush (and to new
# connections for a while): mxkeepd halves its concurrency, does not
# hammer the struggling primary, and eventually delivers everything.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 60
MAXC = 4
OVERLOAD_AFTER = 12
OVERLOAD_SECONDS = 2.0


def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2", delay=0.03)      # not started: primary down
    fake.overload(OVERLOAD_AFTER, OVERLOAD_SECONDS)
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % fake.port}],
                 settings={"delivery": fast_delivery(max_connections=MAXC, probe_max="2s")})
    srv.start()
    sent = send_batch(srv, N, tag="ov")
    ids = sorted(message_id(m) for _, m in sent)
    ok(wait_log(srv, r"destination example\.org: \w+ -> down", 8) is not None, "primary down at first")

    fake.start()
    done_ok = wait_empty(srv, 40)
    ok(done_ok, "queue empty: everything delivered in the end")
    got = fake.message_ids()
    is_(sorted(set(got)), ids, "every Message-ID arrived at the primary (nothing lost)")
    is_(len(got), N, "no duplicates (%d deliveries)" % len(got))
    ok(fake.n421 >= 1, "the primary did say 421 (%d times)" % fake.n421)
    ok(fake.n421 <= 15, "not hammered while overloaded: %d connections refused in %.0fs" %
       (fake.n421, OVERLOAD_SECONDS))
    ok(fake.max_active <= MAXC, "never more than max_connections=%d at once (max %d)" %
       (MAXC, fake.max_active))
    log = srv.log()
    # The adaptive window may not have grown to the ceiling when the 421
    # comes (a slow build): halving it then ends below MAXC // 2.
    halved = "[1-%d]" % (MAXC // 2)
    for line in log.splitlines():
        if "concurrency" in line:
            diag(line)
    like(log, r"destination example\.org: .*421.*concurrency down to %s\b|"
              r"destination example\.org: .*concurrency down to %s\b" % (halved, halved),
         "log: concurrency halved after the 421")
    # After the first 421 the connections opened never exceed the halved
    # limit together with those still running from before.
    t421 = fake.t421[0] if fake.t421 else None
    if t421 is not None:
        later = [a for t, a in fake.active_log if t > t421 + 0.5 and t < t421 + OVERLOAD_SECONDS]
        ok(not later or max(later) <= MAXC // 2,
           "during the overload at most %d connections (saw %s)" % (MAXC // 2, max(later) if later else 0))
    else:
        skip("no 421 sent")
    n_sent = len(re.findall(r"to=<user@example\.org>, relay=.*status=sent", log))
    is_(n_sent, N, "log: %d status=sent" % N)
    unlike(log, r"status=bounced", "nothing bounced")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
