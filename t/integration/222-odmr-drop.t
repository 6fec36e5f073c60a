#!/usr/bin/env python3
# 222-odmr-drop: issue 10 section 4, "nothing lost if the link drops
# mid-flight".  A scripted primary authenticates, ATRNs and serves the
# reversed session itself: it takes two messages, then reads the third's
# whole body and closes without answering it.  Asserts: a second ATRN for
# the domain while the first session runs gets 451; the two answered
# messages are recorded delivered and leave the queue; every other message
# stays queued (the unanswered one included: at-least-once); the next ATRN
# (fetchmail's ODMR mode, relaying to a capturing server that advertises
# PIPELINING) delivers the rest, each message once there, and the answered
# ones are never sent again.
import os
import re
import shutil
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
from odmrtest import Fetchmail, cert_md5, make_secret, odmr_login, odmr_server, serve_reversed

N = 6


def tag_of(body):
    m = re.search(rb"Subject: test (\S+)", body)
    return m.group(1).decode() if m else "?"


def main():
    require_binaries()
    if shutil.which("fetchmail") is None:
        skip_all("fetchmail not installed (build.sh installs it)")
    srv = odmr_server([{"name": "example.org", "odmr": True,
                        "odmr_secret": make_secret("secret")}])
    srv.start()
    ip = srv.odmr_ports["implicit"]
    send_batch(srv, N, rcpt="u@example.org", tag="drop")
    is_(len(srv.queue()), N, "%d messages queued" % N)

    c = odmr_login(ip, "example.org", "secret")
    is_(c.auth_reply.code, 235, "scripted primary authenticated (CRAM-MD5)")
    r = c.cmd("ATRN example.org")
    is_(r.code, 250, "ATRN: 250, the roles reverse")
    like(r.text, r"%d messages" % N, "... with the count (%d)" % N)

    # A second session for the same domain while the first one runs.
    c2 = odmr_login(ip, "example.org", "secret")
    r2 = c2.cmd("ATRN example.org")
    is_(r2.code, 451, "a second ATRN for the domain meanwhile: 451")
    c2.cmd("QUIT")
    c2.close()

    got, dropped = serve_reversed(c, accept=2, drop_in_data=True)
    is_(len(got), 2, "the primary took two messages")
    ok(dropped is not None, "... read the third's body and dropped the link unanswered")
    ok(wait_log(srv, r"reversed session for example\.org ended: 2 recipients delivered, 1 left "
                r"queued", 15) is not None, "session end logged: 2 delivered, 1 left queued")
    like(srv.log(), r"status=deferred \(451 4\.4\.2 .*sending end of data",
         "the unanswered one deferred 451 4.4.2 (may be sent more than once)")
    ok(wait_for(lambda: len(srv.queue()) == N - 2, 10),
       "%d still queued: nothing lost (%d)" % (N - 2, len(srv.queue())))
    first = sorted(tag_of(b) for b in got)
    queued_tags = set()
    for m in srv.queue():
        body = srv.body(m["qid"])
        queued_tags.add(tag_of(body if isinstance(body, bytes) else body.encode()))
    ok(not (set(first) & queued_tags), "the answered ones are not queued any more")
    ok(tag_of(dropped) in queued_tags, "the unanswered one is still queued (at-least-once)")

    # The next ATRN, with fetchmail this time: the rest arrives, once each.
    capture = FakeSMTP(host="127.0.0.1", name="capture.test", pipelining=True)
    capture.start()
    fm = Fetchmail()
    rc, out = fm.run('poll 127.0.0.1 service %d protocol odmr user "example.org" password '
                     '"secret" fetchdomains example.org smtphost 127.0.0.1/%d ssl no sslcertck '
                     'sslfingerprint "%s"\n' % (ip, capture.port, cert_md5(srv.cert)))
    is_(rc, 0, "fetchmail ODMR: exit 0")
    ok(wait_for(lambda: len(capture.messages) >= N - 2, 20, 0.1),
       "the rest (%d) arrived over the next ATRN (%d)" % (N - 2, len(capture.messages)))
    second = sorted(tag_of(m["body"]) for m in capture.messages)
    is_(len(second), len(set(second)), "each once in that session")
    is_(sorted(set(first) | set(second)), sorted("drop%03d" % i for i in range(N)),
        "all %d messages delivered over the two sessions" % N)
    ok(not (set(first) & set(second)), "the answered ones were not sent again")
    ok(wait_for(lambda: len(srv.queue()) == 0, 10), "queue empty")
    fm.cleanup()
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
