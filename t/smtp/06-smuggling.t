#!/usr/bin/env python3
# 06-smuggling: SMTP smuggling (CVE-2023-51764/5/6).  For every fake
# end-of-data variant with a smuggled transaction after it: one DATA makes
# exactly one message, its body is the normalized text (the fake "." line
# stays content), and nothing after the fake end runs as a command.  With
# bare_newline = "reject" such messages get 550 5.5.2 and nothing is kept.
import os
import re
import socket
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

FAKES = [
    ("LF.LF", b"\n.\n"),
    ("LF.CRLF", b"\n.\r\n"),
    ("CRLF.LF", b"\r\n.\n"),
    ("CR.CRLF", b"\r.\r\n"),
    ("CRLF.CR", b"\r\n.\r"),
    ("CR.CR", b"\r.\r"),
]
PREFIX = b"From: a@example.com\r\nSubject: smuggle\r\n\r\nhello"
SMUGGLED = (b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
            b"From: evil@example.com\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")
END = b".\r\n"


def normalize(data):
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def no_smuggled(srv, what):
    bad = [m["qid"] for m in srv.queue()
           if m.get("sender") == "evil@example.com"
           or any(x.get("addr") == "victim@example.org" for x in m.get("recipients", []))]
    is_(bad, [], "%s: the smuggled transaction never shows in the queue" % what)


def send_split(c, data, around):
    """Send data, one octet per write around offset `around`."""
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lo, hi = max(0, around - 3), min(len(data), around + 8)
    c.send(data[:lo])
    for i in range(lo, hi):
        c.send(data[i:i + 1])
        time.sleep(0.003)
    c.send(data[hi:])


def one_variant(srv, name, fake, split, reject):
    label = "%s%s%s" % ("reject " if reject else "", name, " split" if split else "")
    before = srv.qids()
    c = srv.raw()
    c.ehlo()
    rs = [c.cmd("MAIL FROM:<a@example.com>"), c.cmd("RCPT TO:<user@example.org>"), c.cmd("DATA")]
    if not is_([x.code for x in rs], [250, 250, 354], "%s: MAIL RCPT DATA" % label):
        c.close()
        return
    payload = PREFIX + fake + SMUGGLED + END
    if split:
        send_split(c, payload, len(PREFIX))
    else:
        c.send(payload)
    r = c.reply()
    if reject:
        is_(r.code, 550, "%s: refused 550" % label)
        like(r.last, r"^5\.5\.2 ", "%s: 5.5.2" % label)
        like(r.last, r"(?i)bare|newline|line end|CR|LF", "%s: reply says why" % label)
    else:
        is_(r.code, 250, "%s: one reply, 250" % label)
    r2 = c.cmd("NOOP")
    is_(r2.code, 250, "%s: next command answered in sync" % label)
    like(r2.last, r"^2\.0\.0 ", "%s: and it is the NOOP's reply" % label)
    is_(c.pending(0.3), b"", "%s: no replies to smuggled commands" % label)
    c.cmd("QUIT")
    c.close()
    new = sorted(set(srv.qids()) - set(before))
    if reject:
        is_(new, [], "%s: nothing kept" % label)
    else:
        is_(len(new), 1, "%s: exactly one message kept" % label)
        qid = qid_of(r.text)
        is_(new, [qid] if qid else [], "%s: the kept one is the acknowledged QID" % label)
        _, rest = split_received(srv.body(new[0]) if new else None)
        is_(rest, normalize(PREFIX + fake + SMUGGLED), "%s: body normalized, fake '.' line kept as content" % label)
        ok(rest is not None and b"\r\n.\r\nMAIL FROM" in rest, "%s: the fake end stored as a '.' line" % label)
        if rest is not None:
            ok(re.search(rb"\r(?!\n)|(?<!\r)\n", rest) is None, "%s: no bare CR or LF stored" % label)
        q = srv.queue_by_qid().get(new[0], {}) if new else {}
        is_([x.get("addr") for x in q.get("recipients", [])], ["user@example.org"],
            "%s: recipients are the outer transaction's only" % label)
    no_smuggled(srv, label)


def real_end(srv, reject):
    # The real CRLF.CRLF: the first message ends there, and the rest is a
    # pipelined MAIL RCPT DATA with message text sent before the 354,
    # which is abuse: 554 5.5.0 and close; the second message is not kept.
    label = "%sreal CRLF.CRLF" % ("reject " if reject else "")
    before = srv.qids()
    c = srv.raw()
    c.ehlo()
    rs = [c.cmd("MAIL FROM:<a@example.com>"), c.cmd("RCPT TO:<user@example.org>"), c.cmd("DATA")]
    is_([x.code for x in rs], [250, 250, 354], "%s: MAIL RCPT DATA" % label)
    c.send(PREFIX + b"\r\n.\r\n" + SMUGGLED + END)
    first = c.reply()
    is_(first.code, 250, "%s: first message 250" % label)
    codes = []
    for _ in range(4):
        r = c.reply(timeout=5)
        codes.append(r.code)
        if r.code is None or r.code >= 400:
            break
    ok(554 in codes, "%s: text before 354 after the pipelined DATA: 554 (%s)" % (label, codes))
    ok(c.closed(5), "%s: disconnected" % label)
    c.close()
    new = sorted(set(srv.qids()) - set(before))
    is_(len(new), 1, "%s: one message kept" % label)
    _, rest = split_received(srv.body(new[0]) if new else None)
    is_(rest, PREFIX + b"\r\n", "%s: body ends at the real end" % label)
    no_smuggled(srv, label)


def plain_bare(srv, reject):
    label = "%sbare LF in body" % ("reject " if reject else "")
    before = srv.qids()
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<a@example.com>")
    c.cmd("RCPT TO:<user@example.org>")
    c.cmd("DATA")
    text = b"Subject: bare\nX-H: y\r\n\r\nline one\nline two\rline three\r\n"
    c.send(text + END)
    r = c.reply()
    if reject:
        is_(r.code, 550, "%s: 550" % label)
        like(r.last, r"^5\.5\.2 ", "%s: 5.5.2" % label)
        is_(sorted(set(srv.qids()) - set(before)), [], "%s: nothing kept" % label)
    else:
        is_(r.code, 250, "%s: 250" % label)
        qid = qid_of(r.text)
        _, rest = split_received(srv.body(qid) if qid else None)
        is_(rest, normalize(text), "%s: every line end stored as CRLF" % label)
    is_(c.cmd("NOOP").code, 250, "%s: session goes on" % label)
    c.close()


def main():
    require_binaries()
    srv = Server(settings={"bare_newline": "normalize"})
    srv.start()
    for name, fake in FAKES:
        one_variant(srv, name, fake, False, False)
    for name, fake in FAKES:
        one_variant(srv, name, fake, True, False)
    real_end(srv, False)
    plain_bare(srv, False)
    srv.cleanup()

    srv = Server(settings={"bare_newline": "reject"}, name="mxreject")
    srv.start()
    for name, fake in FAKES:
        one_variant(srv, name, fake, False, True)
    one_variant(srv, FAKES[0][0], FAKES[0][1], True, True)
    real_end(srv, True)
    plain_bare(srv, True)
    is_(len(srv.queue()), 1, "reject mode kept only the clean message")
    srv.cleanup()


run_main(main)
