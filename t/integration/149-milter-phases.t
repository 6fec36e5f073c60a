#!/usr/bin/env python3
# 149-milter-phases (issue 9, part 2): the global milters are asked during
# the dialogue, phase by phase, against a python3-milter test milter
# (t/lib/test_milter.py, which logs every event it gets):
#   connect: the milter sees the connection before any command; its 4xx
#     makes the greeting a 421 with its text; its 5xx greets and refuses
#     every later command but QUIT with its reply (Postfix's way);
#   HELO, MAIL: refused with the milter's own code and text, the session
#     goes on (a second HELO / MAIL is accepted);
#   RCPT: a refusal (5xx, 4xx) refuses that recipient only, pipelined
#     RCPTs answered in order; the message reaches the others;
#   RSET after MAIL/RCPT: the milter gets ABORT; the connection's end:
#     the milter's close;
#   discard at RCPT: 250, nothing kept, logged;
#   failures of a live milter (it closes, or sends a malformed packet, at
#     RCPT or in the body; it is slower than its timeout) with each default
#     action: tempfail refuses that command 451 4.7.1 and keeps nothing;
#     accept goes on without that milter for the rest of the connection;
#   nothing answered 250 is lost: every 250's queue ID is in the spool.
# On the old code the milters ran only at end of data: the connect, HELO,
# MAIL and RCPT checks here fail there (the refusals come at end of data
# or never, and the test milter logs no event before end of data).
import os
import subprocess
import sys
import tempfile
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
from raw_milter import RawMilter  # noqa: E402

MILTER = os.path.join(ROOT, "t", "lib", "test_milter.py")
SYSPY = "/usr/bin/python3"
PROCS = []


def start_milter(log, connect=""):
    port = free_port()
    env = dict(os.environ, TEST_MILTER_LOG=log, TEST_MILTER_CONNECT=connect)
    p = subprocess.Popen([SYSPY, MILTER, "inet:%d@127.0.0.1" % port, "4"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(p)
    if not wait_for(lambda: port_open("127.0.0.1", port), 10):
        raise RuntimeError("test milter did not listen")
    return "inet:127.0.0.1:%d" % port


def events(log):
    try:
        with open(log) as f:
            return [ln.rstrip("\n") for ln in f]
    except OSError:
        return []


def server(milters):
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.1]:9"}],
                 settings={"milters": milters})
    srv.start()
    return srv


def main():
    require_binaries()
    if subprocess.run([SYSPY, "-c", "import Milter"], stderr=subprocess.DEVNULL).returncode:
        skip_all("python3-milter is not installed")
    tmp = tempfile.mkdtemp(prefix="mxtest-149.")
    try:
        run(tmp)
    finally:
        for p in PROCS:
            p.terminate()
            p.wait(5)
        if not os.environ.get("MXTEST_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


def run(tmp):
    log = os.path.join(tmp, "events.log")
    sock = start_milter(log)
    srv = server([{"socket": sock, "timeout": "5s"}])
    accepted = []

    # connect: the milter hears of the client before the greeting
    before = len(events(log))
    c = srv.raw()
    is_(c.greeting.code, 220, "greeting after the milter's connect")
    ok(wait_for(lambda: "connect " + HOSTNAME in events(log)[before:], 5),
       "the milter saw the connection before any command")
    # HELO refused with the milter's reply, a second HELO accepted
    r = c.cmd("EHLO helorefuse.test")
    is_(str(r), "550 5.7.1 HELO refused by test milter", "HELO refused with the milter's reply")
    r = c.cmd("EHLO helodefer.test")
    is_(str(r), "451 4.7.1 HELO deferred by test milter", "HELO tempfail with the milter's reply")
    r = c.cmd("EHLO client.example.com")
    is_(r.code, 250, "another HELO accepted")
    # MAIL refused / deferred with the milter's own code and text
    r = c.cmd("MAIL FROM:<mailrefuse@sender.test>")
    is_(str(r), "553 5.7.1 Sender refused by test milter", "MAIL refused with the milter's reply")
    r = c.cmd("MAIL FROM:<maildefer@sender.test>")
    is_(str(r), "451 4.7.1 Sender deferred by test milter", "MAIL tempfail with the milter's reply")
    # RSET after MAIL and RCPT: ABORT
    is_(c.cmd("MAIL FROM:<a@sender.test>").code, 250, "MAIL accepted")
    is_(c.cmd("RCPT TO:<one@example.org>").code, 250, "RCPT accepted")
    before = len(events(log))
    is_(c.cmd("RSET").code, 250, "RSET")
    ok(wait_for(lambda: "abort" in events(log)[before:], 5), "RSET: the milter got ABORT")
    # RCPT: pipelined, the refused ones refused alone, in order
    c.send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<one@example.org>\r\n"
           "RCPT TO:<rcptreject@example.org>\r\nRCPT TO:<rcptdefer@example.org>\r\n"
           "RCPT TO:<two@example.org>\r\nDATA\r\n")
    rs = c.replies(6)
    is_([x.code for x in rs], [250, 250, 550, 450, 250, 354], "pipelined replies in order")
    is_(str(rs[2]), "550 5.7.1 Recipient refused by test milter",
        "RCPT refused with the milter's reply")
    is_(str(rs[3]), "450 4.7.1 Recipient deferred by test milter",
        "RCPT tempfail with the milter's reply")
    c.send(dot_stuff(make_message("phases")))
    r = c.reply()
    is_(r.code, 250, "the message is accepted for the others")
    qid = qid_of(r.text)
    accepted.append(qid)
    m = srv.show(qid) if qid else None
    rc = sorted(x.get("address", x.get("addr")) for x in (m or {}).get("recipients", []))
    is_(rc, ["one@example.org", "two@example.org"], "kept for the accepted recipients only")
    ok("eom" in events(log), "the same milter session saw the end of message")
    # discard at RCPT: 250, nothing kept
    c.send("MAIL FROM:<a@sender.test>\r\nRCPT TO:<one@example.org>\r\n"
           "RCPT TO:<rcptdrop@example.org>\r\nDATA\r\n")
    is_([x.code for x in c.replies(4)], [250, 250, 250, 354], "discard at RCPT answers 250")
    c.send(dot_stuff(make_message("dropped")))
    r = c.reply()
    is_(r.code, 250, "discarded message: 250")
    dq = qid_of(r.text)
    ok(dq and wait_log(srv, r"%s: discard: end of data .*by milter" % dq, 5) is not None,
       "discard logged")
    ok(dq and srv.show(dq) is None, "discarded message not kept")
    c.cmd("QUIT")
    c.close()
    ok(wait_for(lambda: "close" in events(log), 5), "QUIT: the milter's session closed")

    # connect-time refusals, on their own milters
    for mode, want in (("conndefer", "421 4.7.1 Connection deferred by test milter"),
                       ("connrefuse", None)):
        clog = os.path.join(tmp, mode + ".log")
        s2 = Server(domains=[{"name": "example.org", "primary": "[127.0.0.1]:9"}],
                    settings={"milters": [{"socket": start_milter(clog, mode), "timeout": "5s"}]})
        # the daemon's readiness probe expects a 220: start as usual for
        # connrefuse; for conndefer the probe's 421 is the point
        if mode == "conndefer":
            s2.start(expect_fail=True)
            ok(wait_for(lambda: port_open("127.0.0.1", s2.port), 10), "conndefer daemon listens")
            c2 = s2.raw()
            is_(str(c2.greeting), want, "connect tempfail: the greeting is 421 with its text")
            ok(c2.closed(5), "and the session ends")
        else:
            s2.start()
            c2 = s2.raw()
            is_(c2.greeting.code, 220, "connect reject: greeted")
            r = c2.cmd("EHLO client.example.com")
            is_(str(r), "550 5.7.1 Connection refused by test milter", "EHLO refused with it")
            r = c2.cmd("MAIL FROM:<a@sender.test>")
            is_(str(r), "550 5.7.1 Connection refused by test milter", "MAIL refused with it")
            is_(c2.cmd("QUIT").code, 221, "QUIT still answered")
        c2.close()
        s2.stop()

    # failures of a live milter at RCPT and in the body (closes, malformed
    # packet), each default action
    for mode in ("rcptclose", "rcptgarbage", "close", "garbage"):
        for action in ("tempfail", "accept"):
            raw = RawMilter(mode)
            s3 = server([{"socket": "inet:127.0.0.1:%d" % raw.port, "timeout": "3s",
                          "default_action": action}])
            c3 = s3.raw()
            c3.cmd("EHLO client.example.com")
            rs = c3.transaction("a@sender.test", ["one@example.org"], make_message(mode))
            if action == "tempfail":
                at = 1 if mode.startswith("rcpt") else -1
                is_(str(rs[at]), "451 4.7.1 Service unavailable - try again later",
                    "%s, default tempfail: %s 451 4.7.1" % (mode, "RCPT" if at == 1 else
                                                            "end of data"))
                is_(s3.qids(), [], "%s, default tempfail: nothing kept" % mode)
            else:
                is_([x.code for x in rs], [250, 250, 354, 250],
                    "%s, default accept: accepted without it" % mode)
                q = qid_of(rs[-1].text)
                ok(q and q in s3.qids(), "%s, default accept: kept" % mode)
            c3.close()
            raw.stop = True
            s3.stop()

    # a live milter slower than its content timeout, default accept: the
    # message is kept without it, and the session goes on without it
    s4 = server([{"socket": sock, "timeout": "2s", "default_action": "accept"}])
    c4 = s4.raw()
    c4.cmd("EHLO client.example.com")
    rs = c4.transaction("a@sender.test", ["slow@example.org"], make_message("slow"))
    is_([x.code for x in rs], [250, 250, 354, 250], "slow milter, default accept: accepted")
    q = qid_of(rs[-1].text)
    ok(q and q in s4.qids(), "slow milter, default accept: kept")
    rs = c4.transaction("a@sender.test", ["rcptreject@example.org"], make_message("after"))
    is_(rs[1].code, 250, "the failed milter is out of this connection (its RCPT refusal not asked)")
    c4.close()
    s4.stop()

    # nothing answered 250 was lost
    kept = srv.qids()
    ok(all(q in kept for q in accepted), "every 250 is in the spool")


run_main(main)
