#!/usr/bin/env python3
# 03-bdat: RFC 3030 CHUNKING: chunks split anywhere, BDAT 0 LAST, no dot
# handling, pipelined chunks, size limit, chunk data always consumed.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

MAX = 100000


def begin(c, sender="b@example.com"):
    rs = [c.cmd("MAIL FROM:<%s>" % sender), c.cmd("RCPT TO:<user@example.org>")]
    return [x.code for x in rs]


def main():
    require_binaries()
    srv = Server(limits={"message_size": MAX, "header_size": MAX // 2})
    srv.start()
    c = srv.raw()
    r = c.ehlo()
    ok(any(l.upper() == "CHUNKING" for l in r.lines), "CHUNKING advertised")

    # Chunks split inside a CRLF and right after a "." line; the body holds
    # "\r\n.\r\n" and a leading dot, which BDAT must keep as they are.
    msg = make_message("bdat1") + b".not stuffed\r\n.\r\nafter the dot line\r\n"
    cut1 = msg.index(b"\r\n") + 1            # between CR and LF
    cut2 = msg.index(b"\r\n.\r\n") + 3       # between "." and CRLF
    chunks = [msg[:cut1], msg[cut1:cut2], msg[cut2:]]
    is_(begin(c), [250, 250], "MAIL RCPT for BDAT")
    for i, ch in enumerate(chunks):
        c.send(b"BDAT %d\r\n" % len(ch) + ch)
        r = c.reply()
        is_(r.code, 250, "BDAT chunk %d: 250" % (i + 1))
        like(r.last, r"^2\.0\.0 ", "BDAT chunk %d: 2.0.0" % (i + 1))
    r = c.cmd("BDAT 0 LAST")
    is_(r.code, 250, "BDAT 0 LAST: 250")
    like(r.last, r"^2\.0\.0 Ok: queued as [0-9A-V]{12}$", "BDAT 0 LAST: queued as QID")
    q1 = qid_of(r.text)
    _, rest = split_received(srv.body(q1) if q1 else None)
    is_(rest, msg, "BDAT body byte-exact, no dot handling")

    # Everything pipelined in one write, LAST on a data chunk.
    msg2 = make_message("bdat2", body_lines=40)
    half = len(msg2) // 2
    c.send(b"MAIL FROM:<b2@example.com>\r\nRCPT TO:<user@example.org>\r\n" +
           b"BDAT %d\r\n" % half + msg2[:half] +
           b"BDAT %d LAST\r\n" % (len(msg2) - half) + msg2[half:] + b"NOOP\r\n")
    rs = c.replies(5)
    is_([x.code for x in rs], [250, 250, 250, 250, 250], "pipelined MAIL RCPT BDAT BDAT-LAST NOOP")
    q2 = qid_of(rs[3].text)
    ok(q2 is not None, "BDAT LAST with data: queued as QID")
    _, rest = split_received(srv.body(q2) if q2 else None)
    is_(rest, msg2, "pipelined BDAT body byte-exact")

    # DATA after BDAT in the same transaction is a sequence error.
    is_(begin(c), [250, 250], "MAIL RCPT")
    c.send(b"BDAT 5\r\nhello")
    is_(c.reply().code, 250, "BDAT 5")
    r = c.cmd("DATA")
    is_(r.code, 503, "DATA after BDAT: 503")
    r = c.cmd("RSET")
    is_(r.code, 250, "RSET")

    # Oversize: two chunks of 60000 against a 100000 limit.
    is_(begin(c), [250, 250], "MAIL RCPT for oversize")
    big = make_message("big", size=60000)
    c.send(b"BDAT %d\r\n" % len(big) + big + b"BDAT %d LAST\r\n" % len(big) + big)
    rs = c.replies(2, timeout=15)
    codes = [x.code for x in rs]
    ok(552 in codes, "oversize BDAT: 552 (got %s)" % codes)
    bad = [x for x in rs if x.code == 552]
    like(bad[0].last if bad else "", r"^5\.3\.4 ", "oversize BDAT: 5.3.4")
    ok(all(qid_of(x.text) is None for x in rs), "oversize BDAT: nothing queued as")
    c.cmd("RSET")
    r = c.cmd("NOOP")
    is_(r.code, 250, "session continues after oversize BDAT")

    # Chunk data is consumed even when BDAT is refused: the bytes inside
    # it must never run as commands.
    c.send(b"BDAT 12\r\nRSET\r\nRSET\r\n" + b"NOOP\r\n")
    r1 = c.reply()
    ok(r1.code is not None and r1.code >= 500, "BDAT without MAIL refused (%s)" % r1)
    r2 = c.reply()
    is_(r2.code, 250, "the NOOP after the chunk answered")
    like(r2.last, r"^2\.0\.0 ", "... and it is the NOOP reply")
    extra = c.pending(0.5)
    is_(extra, b"", "no replies to commands hidden in chunk data")
    r = c.cmd("BDAT abc")
    ok(r.code in (501, 500), "BDAT with a bad size: 501 (%s)" % r)
    c.cmd("QUIT")
    c.close()

    qs = srv.qids()
    is_(sorted(qs), sorted([x for x in (q1, q2) if x]), "only the two good BDAT messages queued")


run_main(main)
