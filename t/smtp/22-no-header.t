#!/usr/bin/env python3
# 22-no-header: a message may have no header section (RFC 5322 3.5: the
# body alone).  Our Received field goes in front of every message; with no
# header after it, the first body line would read as a malformed header
# field and the body would vanish (found trying it as an admin would: the
# primary got "Received: ...\r\njust body no header\r\n").  An empty line
# now goes between, whether the text came by DATA or BDAT, in one piece or
# a few octets at a time; a message that has a header, or that starts with
# the empty line, is stored as sent.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def stored(srv, qid):
    return split_received(srv.body(qid))[1]


def by_data(c, text, pieces=1):
    """DATA with text (CRLF lines, dot-stuffed here) sent in `pieces` writes."""
    c.cmd("MAIL FROM:<s@example.com>")
    c.cmd("RCPT TO:<user@example.org>")
    is_(c.cmd("DATA").code, 354, "DATA: 354")
    raw = dot_stuff(text)
    step = max(1, len(raw) // pieces)
    for i in range(0, len(raw), step):
        c.send(raw[i:i + step])
        time.sleep(0.02 if pieces > 1 else 0)
    return c.reply()


def by_bdat(c, text):
    c.cmd("MAIL FROM:<s@example.com>")
    c.cmd("RCPT TO:<user@example.org>")
    c.send(b"BDAT %d LAST\r\n" % len(text) + text)
    return c.reply()


def main():
    require_binaries()
    srv = Server()
    srv.start()
    c = srv.raw()
    c.ehlo()
    cases = [
        ("no header (DATA)", by_data, b"just body no header\r\nline 2\r\n",
         b"\r\njust body no header\r\nline 2\r\n"),
        ("no header, a few octets at a time", lambda c, t: by_data(c, t, pieces=8),
         b"just body no header\r\nline 2\r\n", b"\r\njust body no header\r\nline 2\r\n"),
        ("a space before the colon: not a field", by_data, b"Note that: this is body\r\n",
         b"\r\nNote that: this is body\r\n"),
        ("name and colon: a field, even alone", by_data, b"Note: this\r\n", b"Note: this\r\n"),
        ("first line folded (continuation)", by_data, b" indented\r\n", b"\r\n indented\r\n"),
        ("no header (BDAT, no final CRLF)", by_bdat, b"body only", b"\r\nbody only\r\n"),
        ("a header", by_data, b"Subject: hi\r\n\r\nbody\r\n", b"Subject: hi\r\n\r\nbody\r\n"),
        ("a header, split in its name", lambda c, t: by_data(c, t, pieces=12),
         b"Subject: hi\r\n\r\nbody\r\n", b"Subject: hi\r\n\r\nbody\r\n"),
        ("starts with the empty line", by_data, b"\r\nbody\r\n", b"\r\nbody\r\n"),
        ("a first line of 1200 octets, no colon", by_data, b"x" * 1200 + b"\r\n",
         b"\r\n" + b"x" * 1200 + b"\r\n"),
    ]
    for name, how, text, want in cases:
        r = how(c, text)
        is_(r.code, 250, "%s: 250" % name)
        got = stored(srv, qid_of(r.text)) if r.code == 250 else None
        is_(got, want, "%s: stored %s" % (name, "with the empty line" if want != text else "as sent"))
    r = c.cmd("MAIL FROM:<s@example.com>")
    c.cmd("RCPT TO:<user@example.org>")
    is_(c.cmd("DATA").code, 354, "empty message: 354")
    c.send(b".\r\n")
    r = c.reply()
    is_(r.code, 250, "empty message: 250")
    is_(stored(srv, qid_of(r.text)), b"", "empty message: nothing added")
    c.cmd("QUIT")
    c.close()
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
