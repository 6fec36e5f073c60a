#!/usr/bin/env python3
# 214-keep-quota: kept copies are not counted against a domain's quota
# (max_messages): with more kept copies than the quota, new mail is still
# taken; the quota still counts the mail that waits (452 4.2.2 once it is
# full); a replay may pass the quota (the copies were accepted once).
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

QUOTA = 2


def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2")
    fake.start()
    srv = Server(name="mxkeep214", domains=[
        {"name": "keep.test", "primary": "[127.0.0.2]:%d" % fake.port, "keep_delivered": "1h",
         "max_messages": QUOTA},
    ], settings={"delivery": fast_delivery()})
    srv.start()

    for i in range(QUOTA + 1):
        code, _ = send_smtplib(srv, "s@sender.test", ["a@keep.test"], make_message("k%d" % i))
        is_(code, 250, "message %d accepted" % i)
        ok(wait_for(lambda: fake.count() >= i + 1, 10), "and delivered")
    ok(wait_empty(srv, 10), "nothing waiting")
    r = json.loads(srv.ctl("--json", "summary").stdout.decode())
    is_((r.get("kept") or {}).get("copies"), QUOTA + 1, "%d kept copies, over the quota" % (QUOTA + 1))

    fake.stop()                         # the primary goes away: mail waits
    codes = []
    for i in range(QUOTA + 1):
        c = srv.raw()
        c.ehlo()
        rs = c.transaction("s@sender.test", ["a@keep.test"], make_message("w%d" % i))
        codes.append(rs[-1].code if rs[-1].code == 250 else str(rs[1]))   # the RCPT reply
        c.cmd("QUIT")
        c.close()
    is_(codes[:QUOTA], [250] * QUOTA, "the quota's worth of new mail taken despite the copies")
    like(str(codes[QUOTA]), r"^452 4\.2\.2", "then the quota counts the waiting mail: 452 4.2.2")
    is_(len(srv.queue()), QUOTA, "%d waiting" % QUOTA)
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
