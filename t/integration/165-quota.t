#!/usr/bin/env python3
# 165-quota (issue 9, section 5): per-domain spool quotas.  A domain at
# max_messages gets 452 4.2.2 at RCPT while another domain in the same
# transaction (and in later ones) flows; max_bytes refuses at RCPT by the
# announced SIZE and again at end of data by the real size, for the whole
# transaction only when every recipient's domain would cross its quota.
# Held domains keep what they accepted queued.  On the old code the
# settings are unknown (exit 78) and nothing is refused.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def stats(srv):
    r = srv.ctl("--json", "stats")
    try:
        return json.loads(r.stdout.decode("utf-8"))
    except ValueError:
        return {}


def send(c, rcpts, msg, size=None):
    mail = "MAIL FROM:<s@sender.example>" + (" SIZE=%d" % size if size else "")
    out = [c.cmd(mail)]
    for r in rcpts:
        out.append(c.cmd("RCPT TO:<%s>" % r))
    if not any(x.code == 250 for x in out[1:]):
        c.cmd("RSET")
        return out
    out.append(c.cmd("DATA"))
    c.send(dot_stuff(msg))
    out.append(c.reply())
    return out


def main():
    require_binaries()
    srv = Server(domains=[{"name": "full.example", "hold": True, "max_messages": 2},
                          {"name": "bytes.example", "hold": True, "max_bytes": "4k"},
                          {"name": "free.example", "hold": True}])
    srv.start()
    before = stats(srv)
    c = srv.raw(timeout=20)
    c.ehlo()

    msg = make_message("q", body_lines=3)
    for i in range(2):
        r = send(c, ["u%d@full.example" % i], msg)
        is_(r[-1].code, 250, "message %d for full.example queued" % (i + 1))

    r = send(c, ["u9@full.example", "x@free.example"], msg)
    is_(r[1].code, 452, "at max_messages: RCPT for full.example gets 452")
    like(r[1].text, r"^452 4\.2\.2 <u9@full\.example>: .*quota", "... 4.2.2 with the address and quota")
    is_(r[2].code, 250, "free.example in the same transaction: 250")
    is_(r[-1].code, 250, "and its message is queued")
    is_(len(srv.queue()), 3, "3 messages queued (2 full, 1 free)")

    # max_bytes: 3000 octets queued of 4k.
    big = make_message("b", size=3000)
    r = send(c, ["a@bytes.example"], big)
    is_(r[-1].code, 250, "3000 octets for bytes.example queued")
    r = send(c, ["b@bytes.example"], msg, size=2000)
    is_(r[1].code, 452, "SIZE=2000 would cross max_bytes: 452 at RCPT")
    like(r[1].text, r"^452 4\.2\.2 ", "... 4.2.2")
    small = make_message("s", body_lines=2)
    r = send(c, ["c@bytes.example"], small)
    is_(r[-1].code, 250, "a small message still fits")
    # No SIZE: accepted at RCPT, refused at end of data by the real size.
    r = send(c, ["d@bytes.example"], make_message("e", size=2500))
    is_(r[1].code, 250, "no SIZE: RCPT accepted")
    is_(r[-1].code, 452, "end of data: the real size crosses max_bytes: 452")
    like(r[-1].text, r"^452 4\.2\.2 ", "... 4.2.2")
    # Mixed: one domain over, one not: taken (stored once for both).
    r = send(c, ["e@bytes.example", "y@free.example"], make_message("m", size=2500))
    is_(r[-1].code, 250, "with a recipient of a domain within quota the message is taken")
    c.cmd("QUIT")
    c.close()

    after = stats(srv)
    is_(after.get("rejected_quota_total", 0) - before.get("rejected_quota_total", 0), 3,
        "rejected_total{reason=quota}: 2 RCPTs and 1 end of data")
    ok(wait_log(srv, r"domain full\.example quota exceeded"), "the refusal is logged with the domain")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
