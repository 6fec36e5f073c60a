#!/usr/bin/env python3
# 16-reject-class: every refusal is counted under the class decided where
# the refusal is decided (relay, unknown user, size, protocol, content,
# storage, limit), never read back out of the reply text.  Each scenario
# below makes one kind of refusal, and the counters must move by exactly
# the expected amounts in exactly the expected classes.  0.1.0 parsed the
# enhanced status code back out of the reply: a header over its limit
# (552 5.3.4) counted as a size, and refusals sent as a last reply
# (pipelining abuse, junk commands, timeouts) were not counted at all.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

CLASSES = ("relay", "unknown_user", "size", "protocol", "content", "storage", "limit")
COMMAND_TIMEOUT = 2     # seconds


def rejected(srv):
    r = srv.ctl("--json", "stats")
    if r.returncode != 0:
        return None
    data = json.loads(r.stdout.decode("utf-8"))
    out = {}
    for cls in CLASSES:
        keys = [k for k in data if re.match(r"^rejected_%s(_total)?$" % cls, k)]
        out[cls] = data[keys[0]] if keys else None
    return out


def scenario(srv, name, expect, fn):
    before = rejected(srv)
    fn()
    after = wait_for(lambda: (lambda a: a if all(
        a[c] is not None and before[c] is not None and a[c] - before[c] == expect.get(c, 0)
        for c in CLASSES) else None)(rejected(srv)), 3, 0.2) or rejected(srv)
    got = {c: (after[c] - before[c]) if after[c] is not None and before[c] is not None else None
           for c in CLASSES}
    want = {c: expect.get(c, 0) for c in CLASSES}
    is_(got, want, "%s: counted as %s" % (name, ", ".join("%s+%d" % kv for kv in expect.items())))


def session(srv):
    c = srv.raw()
    c.ehlo()
    return c


def main():
    require_binaries()
    srv = Server(domains=[{"name": "example.org", "recipients": ["user@example.org"]},
                          {"name": "example.net"}],
                 limits={"recipients": 2, "message_size": "1M", "header_lines": 20,
                         "command_timeout": "%ds" % COMMAND_TIMEOUT, "junk_commands": 3},
                 settings={"bare_newline": "reject"})
    srv.start()
    r = rejected(srv)
    ok(r is not None and all(v is not None for v in r.values()),
       "every reject class has a counter: %s" % r)

    def relay():
        c = session(srv)
        c.cmd("MAIL FROM:<s@example.com>")
        r = c.cmd("RCPT TO:<x@other.example>")
        is_(r.code, 550, "relay: 550")
        c.cmd("QUIT")
        c.close()
    scenario(srv, "relay denied", {"relay": 1}, relay)

    def unknown():
        c = session(srv)
        c.cmd("MAIL FROM:<s@example.com>")
        r = c.cmd("RCPT TO:<nobody@example.org>")
        is_(r.code, 550, "unknown user: 550")
        c.cmd("QUIT")
        c.close()
    scenario(srv, "unknown user", {"unknown_user": 1}, unknown)

    def size():
        c = session(srv)
        r = c.cmd("MAIL FROM:<s@example.com> SIZE=2000000")
        is_(r.code, 552, "SIZE over the limit: 552")
        r = c.cmd("MAIL FROM:<s@example.com> SIZE=99999999999999999999999")
        is_(r.code, 552, "SIZE beyond a long: 552, a size")
        c.cmd("QUIT")
        c.close()
    scenario(srv, "SIZE too big", {"size": 2}, size)

    def protocol():
        c = session(srv)
        r = c.cmd("MAIL FROM:<bad")
        is_(r.code, 501, "bad path: 501")
        r = c.cmd("RCPT TO:<user@example.org>")
        is_(r.code, 503, "RCPT before MAIL: 503")
        c.cmd("QUIT")
        c.close()
    scenario(srv, "syntax and sequence", {"protocol": 2}, protocol)

    def abuse():
        c = srv.raw()
        c.send(b"EHLO client.example.com\r\nMAIL FROM:<s@example.com>\r\n")
        c.reply()
        r = c.reply()
        is_(r.code, 554, "command pipelined behind EHLO: 554")
        c.close()
    scenario(srv, "pipelining abuse (a last reply)", {"protocol": 1}, abuse)

    def header():
        c = session(srv)
        msg = make_message("hdr", extra_headers=["X-Filler-%d: x" % i for i in range(40)])
        rs = c.transaction("s@example.com", ["user@example.org"], msg)
        is_(rs[-1].code, 552, "header over header_lines: 552")
        c.cmd("QUIT")
        c.close()
    scenario(srv, "header over its limit", {"content": 1}, header)

    def bare():
        c = session(srv)
        msg = b"Subject: bare\r\n\r\nline one\nline two\r\n"
        rs = c.transaction("s@example.com", ["user@example.org"], msg)
        is_(rs[-1].code, 550, "bare LF: 550")
        c.cmd("QUIT")
        c.close()
    scenario(srv, "bare newline", {"content": 1}, bare)

    def too_many():
        c = session(srv)
        c.cmd("MAIL FROM:<s@example.com>")
        rs = [c.cmd("RCPT TO:<r%d@example.net>" % i).code for i in range(3)]
        is_(rs, [250, 250, 452], "third recipient over limits.recipients 2: 452")
        c.cmd("QUIT")
        c.close()
    scenario(srv, "too many recipients", {"limit": 1}, too_many)

    def junk():
        c = session(srv)
        for _ in range(3):
            c.cmd("NOOP")
        r = c.cmd("NOOP")
        is_(r.code, 421, "junk commands over the limit: 421")
        c.close()
    scenario(srv, "too many junk commands (a last reply)", {"limit": 1}, junk)

    def timeout():
        c = session(srv)
        r = c.reply(COMMAND_TIMEOUT + 5)
        is_(r.code, 421, "idle past command_timeout: 421")
        like(r.last, r"^4\.4\.2 ", "timeout 4.4.2")
        c.close()
    scenario(srv, "timeout (a last reply)", {"limit": 1}, timeout)

    ok(srv.running(), "mxkeepd still running")


run_main(main)
