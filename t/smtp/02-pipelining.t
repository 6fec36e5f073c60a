#!/usr/bin/env python3
# 02-pipelining: RFC 2920 groups in one write, replies in order; then
# smtp-source with 5 parallel sessions and 50 messages.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    srv = Server(domains=[{"name": "example.org", "recipients": ["user@example.org", "two@example.org"]}])
    srv.start()

    c = srv.raw()
    r = c.ehlo()
    ok(any(l.upper() == "PIPELINING" for l in r.lines), "PIPELINING advertised")

    # One group: MAIL, RCPT (good), RCPT (unknown), RCPT (relay), DATA.
    # DATA is the last command of the group, as RFC 2920 allows.
    c.send(b"MAIL FROM:<p@example.com>\r\nRCPT TO:<user@example.org>\r\n"
           b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<x@other.example>\r\n"
           b"RCPT TO:<two@example.org>\r\nDATA\r\n")
    rs = c.replies(6)
    is_([x.code for x in rs], [250, 250, 550, 550, 250, 354], "group replies in order")
    like(rs[2].last, r"^5\.1\.1 ", "unknown user 5.1.1 inside the group")
    like(rs[3].last, r"^5\.7\.1 ", "relay denied 5.7.1 inside the group")
    m1 = make_message("pipe1")
    # After the 354, the message, the end and the next transaction's group.
    c.send(dot_stuff(m1) + b"MAIL FROM:<p2@example.com>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
    rs = c.replies(4)
    is_([x.code for x in rs], [250, 250, 250, 354], "end-of-data reply then the next group's, in order")
    q1 = qid_of(rs[0].text)
    m2 = make_message("pipe2")
    c.send(dot_stuff(m2) + b"RSET\r\nNOOP\r\nMAIL FROM:<p3@example.com>\r\nRCPT TO:<two@example.org>\r\nDATA\r\n")
    rs = c.replies(6)
    is_([x.code for x in rs], [250, 250, 250, 250, 250, 354], "end, RSET, NOOP, MAIL, RCPT, DATA in order")
    q2 = qid_of(rs[0].text)
    m3 = make_message("pipe3")
    c.send(dot_stuff(m3) + b"QUIT\r\n")
    rs = c.replies(2)
    is_([x.code for x in rs], [250, 221], "end-of-data then QUIT")
    q3 = qid_of(rs[0].text)
    ok(c.closed(5), "closed after QUIT")
    c.close()
    ok(q1 and q2 and q3 and len({q1, q2, q3}) == 3, "three distinct QIDs")
    ok(q1 < q2 < q3 if (q1 and q2 and q3) else False, "QIDs sort by arrival")

    q = srv.queue_by_qid()
    is_(sorted(x["addr"] for x in q.get(q1, {}).get("recipients", [])),
        ["two@example.org", "user@example.org"], "first message: only the two accepted recipients")
    for qid, m, name in ((q1, m1, "pipe1"), (q2, m2, "pipe2"), (q3, m3, "pipe3")):
        _, rest = split_received(srv.body(qid) if qid else None)
        is_(rest, m, "%s body byte-exact" % name)

    # A group where MAIL fails: RCPT and DATA must fail too, nothing queued.
    c = srv.raw()
    c.ehlo()
    c.send(b"MAIL FROM:<bad address>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
    rs = c.replies(3)
    ok(rs[0].code is not None and rs[0].code >= 500, "bad MAIL refused in a group (%s)" % rs[0])
    is_(rs[1].code, 503, "RCPT after failed MAIL: 503")
    ok(rs[2].code in (503, 554), "DATA after failed MAIL refused (%s)" % rs[2])
    r = c.cmd("NOOP")
    is_(r.code, 250, "session still in sync")
    c.close()
    is_(len(srv.queue()), 3, "three messages queued so far")

    # smtp-source: 5 sessions, 50 messages.
    r = run([SMTP_SOURCE, "-s", "5", "-m", "50", "-l", "2000", "-f", "src@example.com",
             "-t", "user@example.org", "-M", "source.example.com", "127.0.0.1:%d" % srv.port],
            timeout=60)
    is_(r.returncode, 0, "smtp-source exit 0")
    if r.returncode != 0:
        diag(r.stderr.decode("latin-1")[-1000:])
    msgs = srv.queue()
    is_(len(msgs), 53, "50 smtp-source messages queued (plus the 3)")
    src = [m for m in msgs if m.get("sender") == "src@example.com"]
    is_(len(src), 50, "50 from smtp-source")
    sample = src[len(src) // 2]["qid"] if src else None
    b = srv.body(sample) if sample else None
    rec, rest = split_received(b)
    like(unfold(rec or b""), r"source\.example\.com", "smtp-source message Received names its HELO")
    ok(rest is not None and len(rest) >= 2000, "smtp-source payload stored")
    is_(len({m["qid"] for m in msgs}), 53, "every QID unique")


run_main(main)
