#!/usr/bin/env python3
# 03-mx: MX lookup through dnsmasq: deliver to the best MX that is not us,
# drop ourselves (by hostname, by alias, by address) and every MX as bad as
# or worse than ours; fall over to the next MX when the best is dead; mail
# whose best MX is us "loops back to myself" and stays (never bounced).
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    port = free_port_on("127.0.0.2")
    mx1 = FakeSMTP(host="127.0.0.2", port=port, name="mx1.example.test").start()
    worse = FakeSMTP(host="127.0.0.4", port=port, name="mx3.example.test").start()
    equal = FakeSMTP(host="127.0.0.5", port=port, name="mx4.example.test").start()
    dns = Dnsmasq(local=("test", "example.net"), mx=[
        ("example.test", "mx1.example.test", 10),
        ("example.test", "mx2.example.net", 20),
        ("example.test", "mx3.example.test", 30),
        ("example.test", "mx4.example.test", 20),
        ("fail.test", "dead.fail.test", 5),
        ("fail.test", "mx1.example.test", 10),
        ("fail.test", "mx2.example.net", 20),
        ("loop.test", "mx2.example.net", 10),
        ("best.test", "backup.example.net", 5),
        ("best.test", "mx1.example.test", 10),
        ("addr.test", "other.example.test", 10),
        ("addr.test", "mx1.example.test", 20),
        ("plain.test", "mx1.example.test", 10),
        ("plain.test", "mx2.example.net", 20),
    ], hosts=[
        ("mx1.example.test", "127.0.0.2"),
        ("mx2.example.net", "127.0.0.1"),
        ("backup.example.net", "127.0.0.9"),
        ("mx3.example.test", "127.0.0.4"),
        ("mx4.example.test", "127.0.0.5"),
        ("dead.fail.test", "127.0.0.6"),
        ("other.example.test", "127.0.0.1"),
    ]).start()
    is_(dns_query(dns.port, "example.test", 15), (0, 4), "dnsmasq serves 4 MX for example.test")

    # "domain:port" means an MX lookup with that port; plain.test has no
    # primary at all, so it goes by MX to delivery.mx_port.
    doms = [{"name": d, "primary": "%s:%d" % (d, port)} for d in
            ("example.test", "fail.test", "loop.test", "best.test", "addr.test")]
    doms.append({"name": "plain.test"})
    srv = Server(domains=doms,
                 settings={"resolver": dns.address, "aliases": ["backup.example.net"],
                           "delivery": fast_delivery(mx_port=port)})
    srv.start()

    send_batch(srv, 6, rcpt="u@example.test", tag="ex")
    ok(wait_for(lambda: mx1.count() >= 6, 10), "6 messages for example.test reached mx1 (pref 10)")
    ok(wait_for(lambda: "u@example.test" not in rcpt_states(srv), 5),
       "example.test messages left the queue")
    is_(worse.nconn, 0, "no connection to the MX worse than us (pref 30)")
    is_(equal.nconn, 0, "no connection to the MX as good as us (pref 20)")
    like(srv.log(), r"to=<u@example\.test>, relay=mx1\.example\.test\[127\.0\.0\.2\]:%d, "
         r"delay=\d+, dsn=2\.0\.0, status=sent" % port, "log names relay mx1.example.test[127.0.0.2]")

    before = mx1.count()
    send_batch(srv, 2, rcpt="u@fail.test", tag="fail")
    ok(wait_for(lambda: mx1.count() >= before + 2, 12),
       "fail.test: best MX dead, delivered to the next one (mx1, pref 10)")
    ok(wait_for(lambda: "u@fail.test" not in rcpt_states(srv), 5), "fail.test messages left the queue")

    before = mx1.count()
    send_batch(srv, 1, rcpt="u@plain.test", tag="plain")
    ok(wait_for(lambda: mx1.count() >= before + 1, 8),
       "plain.test (no primary): MX lookup, delivered to mx1 on delivery.mx_port")
    ok(wait_for(lambda: "u@plain.test" not in rcpt_states(srv), 5), "plain.test message left the queue")

    send_batch(srv, 1, rcpt="u@loop.test", tag="loop")
    send_batch(srv, 1, rcpt="u@best.test", tag="best")
    send_batch(srv, 1, rcpt="u@addr.test", tag="addr")
    ok(wait_log(srv, r"mail for loop\.test loops back to myself", 8) is not None,
       "loop.test (only MX is our hostname): log says loops back to myself")
    ok(wait_log(srv, r"mail for best\.test loops back to myself", 8) is not None,
       "best.test (best MX is our alias): loops back to myself")
    ok(wait_log(srv, r"mail for addr\.test loops back to myself", 8) is not None,
       "addr.test (best MX resolves to our address): loops back to myself")
    time.sleep(2)
    st = rcpt_states(srv)
    is_((st.get("u@loop.test"), st.get("u@best.test"), st.get("u@addr.test")),
        ("pending", "pending", "pending"), "looping mail stays queued, pending")
    unlike(srv.log(), r"status=bounced", "nothing bounced")
    unlike(srv.log(), r"to=<u@(loop|best|addr)\.test>.*status=sent", "looping mail not sent anywhere")
    ids = [message_id(b) for b in mx1.bodies()]
    ok(not any(i and re.match(r"<(loop|best|addr)\d+@", i) for i in ids),
       "mx1 (worse than us for best.test/addr.test) got none of the looping mail")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
