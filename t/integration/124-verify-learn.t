#!/usr/bin/env python3
# 124-verify-learn (issue 8, part 1): delivery outcomes feed the callout
# cache.  Mail accepted unverified while the primary was down is delivered
# when it returns: the recipient it took (250) becomes valid in
# `mxkeepctl verify list` with source "delivery", the one it refused with
# 550 5.1.1 becomes invalid with the primary's reply, and neither costs a
# probe (no MAIL FROM:<> at the primary); a later RCPT is answered from
# that: 250 for the first, 550 5.1.1 for the second.  A 5.2.x refusal
# (mailbox full) is not "unknown user" and is not learned.
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def answers(addr):
    local = addr.split("@")[0].lower()
    if local == "gone":
        return "550 5.1.1 <%s>: mailbox gone" % addr
    if local == "full":
        return "552 5.2.2 <%s>: mailbox full" % addr
    return None


def main():
    require_binaries()
    port = free_port_on("127.0.0.2")
    prim = FakeSMTP(host="127.0.0.2", port=port, rcpt=answers, name="primary.test")
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % port,
                           "verify": "callout", "unverified": "accept"}],
                 settings={"delivery": fast_delivery(),
                           "verify": {"unreachable": "1h"}})
    srv.start()
    code, text = send_smtplib(srv, "sender@example.com",
                              ["frank@example.org", "gone@example.org", "full@example.org"],
                              make_message("learn"))
    is_(code, 250, "accepted unverified while the primary is down")
    prim.start()
    srv.ctl("flush", "example.org")
    ok(wait_for(lambda: len(prim.messages) == 1, 20), "delivered when the primary returns")
    rows = {}
    ok(wait_for(lambda: len(json.loads(srv.ctl("verify", "list", "--json").stdout.decode()
                                       or "[]")) >= 2, 10), "outcomes learned")
    for x in json.loads(srv.ctl("verify", "list", "--json").stdout.decode()):
        rows[x["address"]] = x
    is_(rows.get("frank@example.org", {}).get("result"), "valid", "a delivered recipient: valid")
    is_(rows.get("frank@example.org", {}).get("source"), "delivery", "learned from delivery")
    is_(rows.get("gone@example.org", {}).get("result"), "invalid", "a 5.1.1 at delivery: invalid")
    like(rows.get("gone@example.org", {}).get("reply", ""), r"^550 5\.1\.1 <gone@example\.org>: mailbox gone",
         "with the primary's reply")
    ok("full@example.org" not in rows, "a 5.2.2 (mailbox full) is not learned")
    with prim.lock:
        mails = [c for c in prim.commands if c.upper().startswith(b"MAIL FROM:<>")]
    is_(len(mails), 0, "no probe was made")

    srv.stop()
    srv.start()         # forgets the unreachable primary; the cache stays
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<sender@example.com>")
    is_(c.cmd("RCPT TO:<frank@example.org>").code, 250, "RCPT frank: 250 from the learned answer")
    r = c.cmd("RCPT TO:<gone@example.org>")
    like(r.text, r"^550 5\.1\.1 <gone@example\.org>: mailbox gone", "RCPT gone: the learned 550")
    c.close()
    with prim.lock:
        mails = [c for c in prim.commands if c.upper().startswith(b"MAIL FROM:<>")]
    is_(len(mails), 0, "still no probe")
    srv.stop()
    prim.stop()
    done()


run_main(main)
