#!/usr/bin/env python3
# 125-verify-catchall (issue 8, part 1): a catch-all primary (a real
# Postfix accepting any local part of the domain) is detected by the
# random local part of the first probe and cached once for the domain:
# 50 different addresses at RCPT cost two RCPTs at the primary (the random
# one and the first address), the cache holds one domain record and one
# address, and every address is accepted.  A domain of the same primary
# that is not catch-all still probes each address.
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
import json


def main():
    require_binaries()
    if not IS_ROOT or not os.path.exists(POSTFIX):
        skip_all("a private Postfix instance needs root and postfix")
    pf = Postfix(domains=("catchall.org", "strict.org"),
                 recipients=("@catchall.org", "known@strict.org"), log_rcpts=True).start()
    route = "[127.0.0.1]:%d" % pf.port
    srv = Server(domains=[{"name": "catchall.org", "primary": route, "verify": "callout",
                           "unverified": "tempfail"},
                          {"name": "strict.org", "primary": route, "verify": "callout",
                           "unverified": "tempfail"}],
                 settings={"verify": {"reply_wait": "10s"}})
    srv.start()
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<sender@example.com>")
    codes = [c.cmd("RCPT TO:<user%02d@catchall.org>" % i).code for i in range(50)]
    is_(codes, [250] * 50, "50 addresses of the catch-all domain accepted")
    time.sleep(1)       # Postfix logs through postlogd
    is_(pf.rcpt_count(), 2, "two RCPTs at the primary: the random local part and the first address")
    rows = json.loads(srv.ctl("verify", "list", "catchall.org", "--json").stdout.decode())
    addrs = sorted(x["address"] for x in rows)
    is_(addrs, ["@catchall.org", "user00@catchall.org"], "one domain record (and the first address)")
    is_([x["result"] for x in rows if x["address"] == "@catchall.org"], ["valid"],
        "the domain record says catch-all")
    like(srv.ctl("verify", "anyone@catchall.org").stdout.decode(), r"^@catchall\.org  valid ",
         "mxkeepctl verify answers an address by the domain record")

    n = pf.rcpt_count()
    codes = [c.cmd("RCPT TO:<%s@strict.org>" % u).code for u in ("known", "x1", "x2")]
    is_(codes, [250, 550, 550], "the strict domain: known 250, others 550")
    time.sleep(1)
    is_(pf.rcpt_count() - n, 4, "probed per address (plus its one random local part)")
    c.close()
    srv.stop()
    pf.stop()
    done()


run_main(main)
