#!/usr/bin/env python3
# 62-self-many: MX self-detection sees every alias and every listen
# address, however many the config lists.  With 40 aliases and 20 listen
# addresses, an MX naming the 40th alias and an MX whose address is the
# 20th listen address are both recognised as us: "4.4.6 ... loops back to
# myself", the mail stays queued and is never handed to the host the MX
# points at.  0.1.0 kept only the first 32 names and 16 addresses and sent
# such mail around the loop.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

NALIASES = 40
NLISTEN = 20


def main():
    require_binaries()
    port = free_port_on("127.0.0.2")
    other = FakeSMTP(host="127.0.0.2", port=port, name="mx1.example.test").start()
    aliases = ["alias%02d.example.net" % i for i in range(1, NALIASES + 1)]
    extra_addrs = ["127.0.1.%d" % i for i in range(1, NLISTEN)]     # + 127.0.0.1
    dns = Dnsmasq(local=("test", "example.net"), mx=[
        ("loop40.test", aliases[-1], 10),           # the 40th alias: us
        ("loop40.test", "mx1.example.test", 20),
        ("addr20.test", "host20.example.test", 10),  # the 20th listen address: us
        ("addr20.test", "mx1.example.test", 20),
        ("plain.test", "mx1.example.test", 10),
    ], hosts=[
        ("mx1.example.test", "127.0.0.2"),
        # if the alias is missed, the mail goes here: the loop made visible
        (aliases[-1], "127.0.0.2"),
        ("host20.example.test", extra_addrs[-1]),
    ]).start()

    doms = [{"name": d, "primary": "%s:%d" % (d, port)}
            for d in ("loop40.test", "addr20.test", "plain.test")]
    srv = Server(domains=doms, settings={"resolver": dns.address, "aliases": aliases,
                                         "delivery": fast_delivery(mx_port=port)})
    conf = srv.write_config()
    with open(conf) as f:
        text = f.read()
    listen = ", ".join(['{ address = "%s"; port = %d; }' % (a, srv.port)
                        for a in ["127.0.0.1"] + extra_addrs])
    text = re.sub(r"(?m)^listen = .*$", "listen = ( %s );" % listen, text)
    with open(conf, "w") as f:
        f.write(text)
    srv.start()
    is_(len(re.findall(r"listening on 127\.0\.[01]\.\d+:%d" % srv.port, srv.log())), NLISTEN,
        "listening on all %d addresses" % NLISTEN)

    send_batch(srv, 1, rcpt="u@plain.test", tag="plain")
    ok(wait_for(lambda: other.count() >= 1, 10), "plain.test: delivered by MX (the set-up works)")

    send_batch(srv, 2, rcpt="u@loop40.test", tag="loop")
    send_batch(srv, 2, rcpt="u@addr20.test", tag="addr")
    ok(wait_log(srv, r"destination loop40\.test: .*4\.4\.6 mail for loop40\.test loops back to myself",
                10) is not None, "loop40.test (MX = 40th alias): loops back to myself (4.4.6)")
    ok(wait_log(srv, r"destination addr20\.test: .*4\.4\.6 mail for addr20\.test loops back to myself",
                10) is not None, "addr20.test (MX at the 20th listen address): loops back to myself")
    time.sleep(1)
    is_(other.count(), 1, "nothing but plain.test reached the other host")
    st = rcpt_states(srv)
    is_(st.get("u@loop40.test"), "pending", "loop40.test mail kept")
    is_(st.get("u@addr20.test"), "pending", "addr20.test mail kept")
    unlike(srv.log(), r"status=(bounced|expired)", "nothing bounced")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
