#!/usr/bin/env python3
# 134-fleet-verify: the callout cache is the fleet's.  A probe made by one
# node (valid and invalid answers) lands in the verify_cache table, and
# another node answers the same recipients from it after the primary has
# gone away: 250 for the valid one, the primary's 550 5.1.1 for the
# invalid one, while an address nobody probed gets unverified's 450.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
from mxcluster import *  # noqa: F401,F403


def rcpt(node, addr):
    c = node.raw()
    try:
        c.ehlo()
        c.cmd("MAIL FROM:<sender@example.com>")
        return c.cmd("RCPT TO:<%s>" % addr, timeout=20)
    finally:
        c.close()


def main():
    require_binaries()
    if not have_postgres():
        skip_all("PostgreSQL 15 (initdb, pg_ctl, psql) not installed")
    pg = Postgres().start()
    fake = FakeSMTP(host="127.0.0.1", rcpt=lambda a: None if a.lower().startswith("good")
                    else "550 5.1.1 <%s>: Recipient address rejected: User unknown" % a).start()
    doms = [{"name": "example.org", "primary": "[127.0.0.1]:%d" % fake.port,
             "verify": "callout", "unverified": "tempfail"}]
    nodes = fleet(pg, doms)[:2]
    for n in nodes:
        n.start()
    a, b = nodes

    r = rcpt(a, "good@example.org")
    is_(r.code, 250, "node a: valid recipient verified by callout: 250")
    r = rcpt(a, "bad@example.org")
    is_(r.code, 550, "node a: invalid recipient: 550")
    like(r.text, r"5\.1\.1", "... 5.1.1 from the primary")
    probes = len(fake.rcpt_log)
    ok(probes >= 2, "the primary was probed (%d RCPTs)" % probes)
    ok(wait_for(lambda: len(pg.psql("SELECT 1 FROM verify_cache WHERE address IN "
                                    "('good@example.org', 'bad@example.org')")) == 2, 10),
       "both answers are in the fleet's verify_cache table")
    is_(pg.psql("SELECT result, learned_by FROM verify_cache WHERE address = 'good@example.org'"),
        [("valid", "mx2a")], "good@: valid, learned by mx2a")

    fake.stop()
    r = rcpt(b, "good@example.org")
    is_(r.code, 250, "node b, primary gone: valid from the shared cache: 250")
    r = rcpt(b, "bad@example.org")
    is_(r.code, 550, "node b: invalid from the shared cache: 550")
    like(r.text, r"5\.1\.1", "... with the primary's 5.1.1")
    r = rcpt(b, "nobody-probed@example.org")
    is_(r.code, 450, "node b: an address never probed, primary gone: 450 (unverified = tempfail)")
    is_(len(fake.rcpt_log), probes, "node b made no probe of its own for the shared answers")
    for n in nodes:
        is_(n.stop(), 0, "node %s exits 0" % n.host)
    pg.stop()


run_main(main)
