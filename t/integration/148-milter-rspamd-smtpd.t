#!/usr/bin/env python3
# 148-milter-rspamd-smtpd (issue 9, part 2): mxkeepd with a real rspamd as
# its milter (proxy worker in milter mode, offline: t/lib/rspamd_milter.py)
# and a fake primary (FakeSMTP): GTUBE is refused at the end of data with
# rspamd's own reply (5xx and its text), nothing kept; a clean message is
# accepted, and what reaches the primary carries rspamd's headers
# (X-Spamd-Result, X-Rspamd-Queue-Id with our queue ID, X-Rspamd-Action),
# once each, in the header.  On the old code `milters` is an unknown
# setting and the daemon does not start: every check fails there.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
from rspamd_milter import Rspamd, RSPAMD, GTUBE


def msg(tag, body):
    return ("From: a@sender.test\r\nTo: user@example.org\r\nSubject: %s\r\n"
            "Message-ID: <%s@sender.test>\r\nDate: Mon, 30 Nov 2026 05:00:00 +0000\r\n\r\n%s\r\n"
            % (tag, tag, body))


def main():
    require_binaries()
    if not os.access(RSPAMD, os.X_OK):
        skip_all("rspamd is not installed")
    rport = free_port()
    rs = Rspamd(rport)
    prim = FakeSMTP(name="primary.example.org").start()
    try:
        ok(rs.start(lambda: port_open("127.0.0.1", rport)), "rspamd's proxy worker listens")
        srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.1]:%d" % prim.port}],
                     settings={"milters": [{"socket": "inet:127.0.0.1:%d" % rport, "timeout": "20s"}],
                               "delivery": fast_delivery()})
        srv.start()
        code, text = send_smtplib(srv, "a@sender.test", ["user@example.org"], msg("gtube", GTUBE))
        ok(500 <= code < 600, "GTUBE refused with a 5xx (%s)" % code)
        like(text, r"^5\.\d+\.\d+ .*[Gg]tube", "with rspamd's own text: %s" % text)
        is_(srv.qids(), [], "nothing kept of the GTUBE message")

        code, text = send_smtplib(srv, "a@sender.test", ["user@example.org"],
                                  msg("clean", "hello, a normal message"))
        is_(code, 250, "clean message accepted")
        qid = qid_of(text)
        ok(wait_for(lambda: len(prim.messages) >= 1, 20), "delivered to the primary")
        body = prim.messages[0]["body"].decode("latin-1") if prim.messages else ""
        head = body.split("\r\n\r\n", 1)[0]
        like(head, r"(?m)^X-Spamd-Result: default: False", "X-Spamd-Result added")
        like(head, r"(?m)^X-Rspamd-Queue-Id: %s\r?$" % qid, "X-Rspamd-Queue-Id is our queue ID")
        like(head, r"(?m)^X-Rspamd-Action: no action", "X-Rspamd-Action added")
        is_(len(re.findall(r"(?m)^X-Spamd-Result:", head)), 1, "once")
        like(body, r"hello, a normal message", "body intact")
        srv.stop()
    finally:
        rs.stop()
        prim.stop()


run_main(main)
