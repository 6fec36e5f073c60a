#!/usr/bin/env python3
# 05-limits: every limit with its reply, and the protocol-abuse rules.
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

MAX = 20000


def start_tx(c, n=1):
    codes = [c.cmd("MAIL FROM:<l@example.com>").code]
    for i in range(n):
        codes.append(c.cmd("RCPT TO:<u%d@example.org>" % i).code)
    return codes


def data_send(c, payload):
    r = c.cmd("DATA")
    if r.code != 354:
        return r
    c.send(payload)
    return c.reply(timeout=15)


def sizes_and_content(srv):
    c = srv.raw()
    c.ehlo()

    # SIZE= at MAIL.
    r = c.cmd("MAIL FROM:<l@example.com> SIZE=%d" % (MAX + 1))
    is_(r.code, 552, "SIZE= over the limit at MAIL: 552")
    like(r.last, r"^5\.3\.4 ", "SIZE= over: 5.3.4")
    r = c.cmd("MAIL FROM:<l@example.com> SIZE=%d" % (MAX // 2))
    is_(r.code, 250, "SIZE= under the limit: 250")
    c.cmd("RSET")

    # Actual oversize data: refused, nothing kept, session goes on.
    before = len(srv.queue())
    is_(start_tx(c), [250, 250], "MAIL RCPT")
    r = data_send(c, dot_stuff(make_message("oversize", size=MAX + 5000)))
    is_(r.code, 552, "oversize DATA: 552")
    like(r.last, r"^5\.3\.4 ", "oversize DATA: 5.3.4")
    is_(c.cmd("NOOP").code, 250, "session continues after oversize DATA")
    is_(start_tx(c), [250, 250], "new transaction after oversize")
    small = make_message("small")
    r = data_send(c, dot_stuff(small))
    is_(r.code, 250, "normal message after oversize: 250")
    is_(len(srv.queue()), before + 1, "oversize message not kept")

    # Recipients limit (3).
    r = c.cmd("MAIL FROM:<l@example.com>")
    codes = [c.cmd("RCPT TO:<r%d@example.org>" % i) for i in range(4)]
    is_([x.code for x in codes], [250, 250, 250, 452], "fourth recipient: 452")
    like(codes[3].last, r"^4\.5\.3 ", "too many recipients: 4.5.3")
    c.cmd("RSET")

    # Header size cap.
    is_(start_tx(c), [250, 250], "MAIL RCPT for big header")
    fold = "X-Big: start" + "".join("\r\n\t%s" % ("h" * 70) for _ in range(130))
    r = data_send(c, dot_stuff(make_message("bighdr", extra_headers=[fold])))
    is_(r.code, 552, "header over header_size: 552")
    like(r.last, r"^5\.3\.4 ", "header over header_size: 5.3.4")
    # Header line cap.
    is_(start_tx(c), [250, 250], "MAIL RCPT for many header lines")
    many = ["X-L%d: v" % i for i in range(250)]
    r = data_send(c, dot_stuff(make_message("manyhdr", extra_headers=many)))
    is_(r.code, 552, "header lines over header_lines: 552")
    like(r.last, r"^5\.3\.4 ", "header lines over: 5.3.4")
    # The same amount of text in the body is fine.
    is_(start_tx(c), [250, 250], "MAIL RCPT for long body")
    okmsg = make_message("bodylines", body_lines=250)
    r = data_send(c, dot_stuff(okmsg))
    is_(r.code, 250, "many body lines are not header lines")

    # Received loop detection: 100 is fine, 101 is a loop.
    recv = ["Received: by h%03d.example.com" % i for i in range(100)]
    is_(start_tx(c), [250, 250], "MAIL RCPT for 100 Received")
    m100 = CRLF.join(x.encode() for x in recv) + CRLF + make_message("r100")
    r = data_send(c, dot_stuff(m100))
    is_(r.code, 250, "100 Received headers accepted")
    q100 = qid_of(r.text)
    is_(start_tx(c), [250, 250], "MAIL RCPT for 101 Received")
    m101 = b"Received: by extra.example.com\r\n" + m100
    before = len(srv.queue())
    r = data_send(c, dot_stuff(m101))
    is_(r.code, 554, "101 Received headers: 554")
    like(r.last, r"^5\.4\.6 ", "routing loop: 5.4.6")
    is_(len(srv.queue()), before, "loop message not kept")
    if q100:
        _, rest = split_received(srv.body(q100))
        is_(rest, m100, "100-Received message stored byte-exact")

    c.cmd("QUIT")
    c.close()

    # A fresh session, so the errors above do not count towards bad_commands.
    c = srv.raw()
    c.ehlo()
    # Command line over 512 octets: one 500, the tail never runs.
    c.send(b"NOOP " + b"x" * 600 + b"RSET\r\n")
    r = c.reply()
    is_(r.code, 500, "line over 512: 500")
    like(r.last, r"^5\.5\.2 ", "line over 512: 5.5.2")
    is_(c.pending(0.4), b"", "the tail of the long line is not a command")
    r = c.cmd("MAIL FROM:<%s@example.com>" % ("a" * 64))
    is_(r.code, 250, "long but legal MAIL line accepted")
    c.cmd("RSET")

    # Bare LF / bare CR inside a command line: one syntax error, not two commands.
    c.send(b"NOOP\nNOOP\r\n")
    r = c.reply()
    ok(r.code in (500, 501), "bare LF inside a command: syntax error (%s)" % r)
    is_(c.pending(0.4), b"", "bare LF made one command, not two")
    c.send(b"MAIL FROM:<l@example.com>\nRCPT TO:<user@example.org>\r\n")
    r = c.reply()
    ok(r.code in (500, 501, 555), "MAIL..LF..RCPT: refused as one line (%s)" % r)
    is_(c.pending(0.4), b"", "no second reply for the LF-split line")
    r = c.cmd("RCPT TO:<user@example.org>")
    is_(r.code, 503, "no MAIL transaction was opened by the bare-LF line")
    c.send(b"NOOP\rNOOP\r\n")
    r = c.reply()
    ok(r.code in (500, 501), "bare CR inside a command: syntax error (%s)" % r)
    is_(c.pending(0.4), b"", "bare CR made one command")
    c.cmd("QUIT")
    c.close()

    # Ten bad commands: 421 4.7.0 and close.
    c = srv.raw()
    c.ehlo()
    seen = []
    last421 = None
    for i in range(12):
        try:
            r = c.cmd("BOGUS%d" % i, timeout=5)
        except OSError:
            break
        seen.append(r.code)
        if r.code in (421, None):
            last421 = r
            break
    ok(421 in seen and len(seen) <= 11, "bad commands: 421 by the eleventh (%s)" % seen)
    like(last421.last if last421 else "", r"^4\.7\.0 ", "too many bad commands: 4.7.0")
    ok(c.closed(5), "closed after too many bad commands")
    c.close()

    # HTTP verbs: closed at once.
    for req in (b"GET / HTTP/1.0\r\n\r\n", b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n",
                b"CONNECT mx.example.com:25 HTTP/1.1\r\n\r\n"):
        c = srv.raw()
        c.send(req)
        data = c.pending(0.3)
        ok(c.closed(3), "%s: connection closed" % req.split()[0].decode())
        ok(b"\r\n250" not in data and not data.startswith(b"250"), "%s: nothing accepted" % req.split()[0].decode())
        c.close()

    # Message text sent with DATA in one write (before the 354): 554 5.5.0.
    before = len(srv.queue())
    c = srv.raw()
    c.ehlo()
    is_(start_tx(c), [250, 250], "MAIL RCPT before early-content DATA")
    c.send(b"DATA\r\n" + dot_stuff(make_message("early")) + b"MAIL FROM:<s@example.com>\r\n")
    got = []
    while True:
        r = c.reply(timeout=5)
        got.append(r.code)
        if r.code != 354:
            break
    ok(554 in got, "content before 354: 554 (got %s)" % got)
    like(r.last, r"^5\.5\.0 ", "content before 354: 5.5.0")
    ok(c.closed(5), "content before 354: disconnected")
    c.close()
    is_(len(srv.queue()), before, "early content not kept")

    # Anything pipelined after HELO (PIPELINING not negotiated): 554 5.5.0.
    c = srv.raw()
    c.send(b"HELO x.example.com\r\nMAIL FROM:<s@example.com>\r\n")
    got = [c.reply(timeout=5) for _ in range(2)]
    codes = [x.code for x in got]
    ok(554 in codes, "command pipelined after HELO: 554 (got %s)" % codes)
    ok(c.closed(5), "pipelined after HELO: disconnected")
    c.close()


def connections():
    srv = Server(limits={"connections": 4, "per_client": 2}, name="mxconn")
    srv.start()
    held = []
    try:
        for src in ("127.0.0.1", "127.0.0.1"):
            k = srv.raw(source=src)
            held.append(k)
        is_([k.greeting.code for k in held], [220, 220], "two connections from 127.0.0.1")
        k = srv.raw(source="127.0.0.1")
        is_(k.greeting.code, 421, "third from the same client: 421")
        like(k.greeting.last, r"^4\.7\.0 ", "per_client: 4.7.0")
        ok(k.closed(5), "per_client: closed")
        k.close()
        for src in ("127.0.0.2", "127.0.0.2"):
            held.append(srv.raw(source=src))
        is_([k.greeting.code for k in held[2:]], [220, 220], "two from 127.0.0.2 (total 4)")
        k = srv.raw(source="127.0.0.3")
        is_(k.greeting.code, 421, "fifth connection in all: 421")
        like(k.greeting.last, r"^4\.7\.0 ", "connections: 4.7.0")
        ok(k.closed(5), "connections: closed")
        k.close()
        is_(held[0].cmd("NOOP").code, 250, "held connections still served")
    finally:
        for k in held:
            try:
                k.cmd("QUIT", timeout=2)
            except OSError:
                pass
            k.close()
    time.sleep(0.3)
    k = srv.raw(source="127.0.0.3")
    is_(k.greeting.code, 220, "slots freed after the others quit")
    k.close()
    srv.cleanup()


def timeouts():
    srv = Server(limits={"command_timeout": "2s", "data_timeout": "2s"}, name="mxtime")
    srv.start()
    c = srv.raw()
    c.ehlo()
    t0 = time.monotonic()
    r = c.reply(timeout=8)
    took = time.monotonic() - t0
    is_(r.code, 421, "idle client: 421")
    like(r.last, r"^4\.4\.2 ", "idle client: 4.4.2")
    ok(1.5 <= took <= 6, "after about command_timeout (%.1fs)" % took)
    ok(c.closed(3), "idle client: closed")
    c.close()

    c = srv.raw()
    c.ehlo()
    is_(start_tx(c), [250, 250], "MAIL RCPT before a stalled DATA")
    is_(c.cmd("DATA").code, 354, "DATA")
    c.send(b"Subject: stalled\r\n\r\npartial")
    r = c.reply(timeout=8)
    is_(r.code, 421, "stalled DATA: 421")
    like(r.last, r"^4\.4\.2 ", "stalled DATA: 4.4.2")
    ok(c.closed(3), "stalled DATA: closed")
    c.close()
    is_(len(srv.queue()), 0, "stalled message not kept")
    srv.cleanup()


def main():
    require_binaries()
    srv = Server(limits={"message_size": MAX, "recipients": 3, "header_size": 8192,
                         "header_lines": 200})
    srv.start()
    sizes_and_content(srv)
    ok(srv.running(), "daemon alive after the abuse")
    srv.cleanup()
    connections()
    timeouts()


run_main(main)
