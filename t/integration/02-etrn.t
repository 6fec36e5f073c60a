#!/usr/bin/env python3
# 02-etrn: every ETRN reply (253 with the count, 251, 459 client, 459
# domain, 458 held by config or by mxkeepctl hold, with the count waiting,
# 500, 501, 503), and that ETRN flushes a destination at
# once although its next probe is minutes away.  ETRN @domain covers the
# served subdomains.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    f1 = FakeSMTP(host="127.0.0.1")          # example.org, not started yet
    f2 = FakeSMTP(host="127.0.0.2")          # sub.example.org, not started yet
    f3 = FakeSMTP(host="127.0.0.3").start()  # held.test: up, but held
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.1]:%d" % f1.port},
        {"name": "sub.example.org", "primary": "[127.0.0.2]:%d" % f2.port},
        {"name": "held.test", "primary": "[127.0.0.3]:%d" % f3.port, "hold": True},
    ], settings={"etrn": {"allow": ["127.0.0.1/32", "127.0.0.2/32"]},
                 "delivery": fast_delivery(probe_min="5m", probe_max="10m")})
    srv.start()

    send_batch(srv, 3, rcpt="u@example.org", tag="org")
    send_batch(srv, 2, rcpt="u@sub.example.org", tag="sub")
    send_batch(srv, 1, rcpt="u@held.test", tag="held")
    ok(wait_log(srv, r"destination example\.org: \w+ -> down", 8) is not None,
       "example.org down (nothing listens)")
    ok(wait_log(srv, r"destination sub\.example\.org: \w+ -> down", 8) is not None,
       "sub.example.org down (nothing listens)")

    f1.start()
    f2.start()
    time.sleep(2.5)
    is_((f1.count(), f2.count()), (0, 0), "primaries up, next probe minutes away: nothing sent yet")
    is_(len(srv.queue()), 6, "six messages queued")

    # --- 253 and the flush it starts ---
    t0 = time.monotonic()
    r = etrn(srv, "sub.example.org")
    is_(r.code, 253, "ETRN sub.example.org: 253")
    like(r.last, r"^2\.0\.0 OK, 2 pending messages for node sub\.example\.org started$",
         "253 text names the count (2) and the node")
    ok(wait_for(lambda: f2.count() >= 2, 3, 0.05), "ETRN flushed sub.example.org at once")
    diag("ETRN to last delivery: %.2fs" % (time.monotonic() - t0))
    is_(f1.count(), 0, "ETRN sub.example.org did not flush example.org")
    # The primary has the mail before its outcomes are committed; the count
    # the next ETRN answers comes from the committed records.
    ok(wait_for(lambda: len(srv.queue()) == 4, 5), "sub.example.org's outcomes committed")

    r = etrn(srv, "@example.org")
    is_(r.code, 253, "ETRN @example.org: 253")
    like(r.last, r"^2\.0\.0 OK, 3 pending messages for node @?example\.org started$",
         "ETRN @example.org counts the 3 left (sub.example.org is empty now)")
    ok(wait_for(lambda: f1.count() >= 3, 3, 0.05), "ETRN @example.org flushed example.org")
    ok(wait_for(lambda: len(srv.queue()) == 1, 5), "only the held message is left")

    # --- 251 ---
    r = etrn(srv, "example.org")
    is_(r.code, 251, "ETRN example.org with nothing waiting: 251")
    like(r.last, r"^2\.0\.0 OK, no messages waiting for node example\.org$", "251 text")

    # @domain covering a subdomain with mail
    f2.stop()
    send_batch(srv, 1, rcpt="u@sub.example.org", tag="sub2")
    ok(wait_log(srv, r"destination sub\.example\.org: (up|unknown) -> down", 8) is not None,
       "sub.example.org down again")
    f2 = FakeSMTP(host="127.0.0.2", port=f2.port).start()
    r = etrn(srv, "@example.org")
    is_(r.code, 253, "ETRN @example.org with mail only in a subdomain: 253")
    like(r.last, r"^2\.0\.0 OK, 1 pending messages? for node @?example\.org started$",
         "253 counts the subdomain's message")
    ok(wait_for(lambda: f2.count() >= 1, 3, 0.05), "ETRN @example.org flushed sub.example.org")

    # --- refusals ---
    r = etrn(srv, "example.org", source="127.0.0.5")
    is_(r.code, 459, "client outside etrn.allow: 459")
    like(r.last, r"^4\.7\.1 ", "459 4.7.1 (RFC 3463: the class follows the reply code)")
    r = etrn(srv, "nowhere.test")
    is_(r.code, 459, "unserved domain: 459")
    like(r.last, r"^4\.7\.1 ", "459 4.7.1 for an unserved domain")
    r = etrn(srv, "held.test")
    is_(r.code, 458, "held domain (config hold): 458")
    like(r.last, r"^4\.3\.0 Unable to queue messages for node held\.test: held by the "
         r"administrator, 1 message waiting$", "458 4.3.0 says held and the count (1)")
    time.sleep(1)
    is_(f3.count(), 0, "nothing delivered to the held domain")
    # Held at run time (mxkeepctl hold), with mail waiting: RFC 1985 458,
    # never "251 no messages waiting" (issue 7, item 9).
    f1.stop()
    send_batch(srv, 2, rcpt="u@example.org", tag="rt")
    is_(srv.ctl("hold", "example.org").returncode, 0, "mxkeepctl hold example.org")
    r = etrn(srv, "example.org")
    is_(r.code, 458, "ETRN for a node held by mxkeepctl, 2 waiting: 458, not 251")
    like(r.last, r"^4\.3\.0 .*node example\.org: held by the administrator, 2 messages waiting$",
         "458 text names the node, the hold and the count")
    r = etrn(srv, "@example.org")
    is_(r.code, 251, "ETRN @example.org: sub.example.org not held, nothing there: 251")
    like(r.last, r"\(1 held domain: 2 messages waiting\)$", "... and names the held one's count")
    is_(srv.ctl("release", "example.org").returncode, 0, "mxkeepctl release example.org")
    r = etrn(srv, None)
    is_(r.code, 500, "ETRN without argument: 500")
    like(r.last, r"^5\.5\.2 ", "500 5.5.2")
    r = etrn(srv, "bad..domain")
    is_(r.code, 501, "ETRN bad..domain: 501")
    like(r.last, r"^5\.5\.4 ", "501 5.5.4")
    r = etrn(srv, "exa mple.org")
    is_(r.code, 501, "ETRN with two words: 501")
    r = etrn(srv, "example.org", in_transaction=True)
    is_(r.code, 503, "ETRN inside a mail transaction: 503")
    like(r.last, r"^5\.5\.1 ", "503 5.5.1")

    log = srv.log()
    like(log, r"ETRN sub\.example\.org from \[127\.0\.0\.1\]: 253 ", "log: ETRN with client and answer")
    like(log, r"ETRN example\.org from \[127\.0\.0\.5\]: 459 ", "log: refused ETRN with client")

    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
