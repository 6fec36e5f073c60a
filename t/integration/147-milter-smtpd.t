#!/usr/bin/env python3
# 147-milter-smtpd (issue 9, part 2): mxkeepd runs its milters at the end
# of data, before the commit, against a python3-milter test milter
# (t/lib/test_milter.py; the action is chosen by the recipient's local
# part).  Asserted on the client's replies and on what the spool holds
# (mxkeepctl show / cat):
#   reject / tempfail with the milter's own reply, nothing kept;
#   discard: 250, nothing kept;
#   headers added, inserted, changed and deleted in the stored message;
#   body replaced; sender changed; recipients added (a served domain only:
#   an added recipient of an unserved domain is never kept) and deleted;
#   per-domain milters: a domain's list runs only for its recipients;
#   a milter that is down or slower than its timeout: tempfail (451 4.7.1,
#   nothing kept) by default,
#   the message kept unchanged with default_action = "accept".
# On the old code `milters` is an unknown setting: the daemon refuses the
# configuration, so every check fails there.
import os
import subprocess
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

MILTER = os.path.join(ROOT, "t", "lib", "test_milter.py")
SYSPY = "/usr/bin/python3"


def msg(tag, extra=""):
    return ("From: a@sender.test\r\nTo: x@example.org\r\nSubject: %s\r\nX-Drop: remove me\r\n"
            "Message-ID: <%s@sender.test>\r\n%s\r\nbody of %s\r\n" % (tag, tag, extra, tag))


def send(srv, rcpts, tag):
    try:
        return send_smtplib(srv, "a@sender.test", rcpts, msg(tag))
    except Exception as e:  # noqa: B902 - smtplib raises on 4xx/5xx at DATA
        code = getattr(e, "smtp_code", None)
        text = getattr(e, "smtp_error", b"")
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        return code, text


def stored(srv, qid):
    b = srv.body(qid)
    return b.decode("latin-1") if b else ""


def main():
    require_binaries()
    if subprocess.run([SYSPY, "-c", "import Milter"], stderr=subprocess.DEVNULL).returncode:
        skip_all("python3-milter is not installed")
    mport = free_port()
    proc = subprocess.Popen([SYSPY, MILTER, "inet:%d@127.0.0.1" % mport, "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ok(wait_for(lambda: port_open("127.0.0.1", mport), 10), "test milter listens")
        run(mport)
    finally:
        proc.terminate()
        proc.wait(5)


def run(mport):
    msock = "inet:127.0.0.1:%d" % mport
    dead = "inet:127.0.0.1:%d" % free_port()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.1]:9"},
                          {"name": "other.test", "primary": "[127.0.0.1]:9",
                           "milters": [{"socket": msock, "timeout": "3s"}]},
                          {"name": "down.test", "primary": "[127.0.0.1]:9",
                           "milters": [dead]},
                          {"name": "open.test", "primary": "[127.0.0.1]:9",
                           "milters": [{"socket": dead, "default_action": "accept"}]}],
                 settings={"milters": [{"socket": msock, "timeout": "3s"}]})
    srv.start()

    code, text = send(srv, ["plain@example.org"], "plain")
    is_(code, 250, "plain message accepted")
    qid = qid_of(text)
    ok(qid and "Subject: plain" in stored(srv, qid), "plain message stored unchanged")

    code, text = send(srv, ["reject@example.org"], "rej")
    is_((code, text), (554, "5.7.1 Rejected by test milter"), "reject with the milter's own reply")
    code, text = send(srv, ["tempfail@example.org"], "tf")
    is_((code, text), (451, "4.7.1 Try later, test milter"), "tempfail with the milter's own reply")
    code, text = send(srv, ["discard@example.org"], "disc")
    is_(code, 250, "discard answers 250")
    ok(wait_log(srv, r"discard: end of data.*by milter"), "discard logged")
    n_before = len(srv.qids())

    code, text = send(srv, ["addhdr@example.org"], "hdr")
    qid = qid_of(text)
    body = stored(srv, qid)
    like(body, r"(?m)^X-Test-Milter: added\r$", "header added")
    like(body, r"^X-Test-First: inserted\r\n", "header inserted at the top")
    like(body, r"(?m)^Subject: changed by milter\r$", "Subject changed")
    unlike(body, r"X-Drop", "header deleted")
    like(body, r"body of hdr", "body kept")
    ok(body.index("X-Test-Milter") < body.index("\r\n\r\n"), "added header is in the header")

    code, text = send(srv, ["replbody@example.org"], "rb")
    body = stored(srv, qid_of(text))
    like(body, r"\r\n\r\nreplaced body\r\n$", "body replaced")
    unlike(body, r"body of rb", "old body gone")

    code, text = send(srv, ["chgfrom@example.org"], "cf")
    info = srv.show(qid_of(text)) or {}
    is_(info.get("sender"), "new-sender@sender.test", "sender changed")

    code, text = send(srv, ["rcpts@example.org"], "rc")
    info = srv.show(qid_of(text)) or {}
    addrs = sorted(r.get("address", r.get("addr", "")) for r in info.get("recipients", []))
    is_(addrs, ["added2@example.org", "added@example.org"],
        "recipients added, original deleted, the unserved one never added")
    ok(wait_log(srv, r"recipient <victim@unserved.test> not added"), "the relay attempt is logged")

    # per domain: other.test's list is the global one again (run once);
    # down.test's milter is down: tempfail, nothing kept
    code, text = send(srv, ["reject@other.test"], "od")
    is_(code, 554, "domain milter (same socket as the global one) runs once and rejects")
    before = len(srv.qids())
    code, text = send(srv, ["x@down.test"], "down")
    is_((code, text), (451, "4.7.1 Service unavailable - try again later"),
        "milter down, default tempfail: 451 4.7.1")
    is_(len(srv.qids()), before, "nothing kept")
    code, text = send(srv, ["x@example.org"], "notdown")
    is_(code, 250, "the down milter does not apply to another domain's mail")
    code, text = send(srv, ["slow@example.org"], "slow")
    is_((code, text), (451, "4.7.1 Service unavailable - try again later"),
        "milter slower than its timeout mid-body, default tempfail: 451 4.7.1")
    code, text = send(srv, ["quarantine@example.org"], "quar")
    is_(code, 250, "quarantine: accepted")
    ok(wait_log(srv, r"milter quarantine: held by test milter"), "the milter's quarantine reason is kept (logged)")
    code, text = send(srv, ["x@open.test"], "open")
    is_(code, 250, "milter down, default_action accept: accepted")
    like(stored(srv, qid_of(text)), r"body of open", "kept unchanged")
    is_(n_before, 1, "reject, tempfail and discard kept nothing (only the plain message)")
    srv.stop()


run_main(main)
