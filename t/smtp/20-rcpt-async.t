#!/usr/bin/env python3
# 20-rcpt-async: a RCPT whose verdict is not known at once (a callout to
# the primary, a database lookup) suspends the session, not the daemon:
# pipelined RCPTs are answered in command order, buffered commands run
# after the verdict, the command timeout still applies, and a session that
# goes away (peer reset, timeout) cancels its pending verdict while the
# daemon keeps serving.  Issue 8, section 1 ("the loop is never blocked:
# the RCPT reply waits for the probe, pipelined RCPTs are still answered
# in order"; 450 4.1.1 after reply_wait; "unverified"; throttled clients).
#
# The daemon is t/unit/mxkeepd_fakeverify: the real mxkeepd (src/main.c,
# libmxkeep.a: smtpd.c, recipient.c, policy.c) linked with a test double of
# verify.h whose answers have known timing (see t/unit/fake_verify.c), so
# the ordering and cancellation of smtpd.c are tested deterministically;
# the real verifier against a real primary is t/integration/100.  On the
# old code (no recipient.c) a verify = "callout" domain accepts every
# local part at once, so every ordering and refusal below fails there.
import os
import re
import socket
import struct
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import mxtest  # noqa: E402
from mxtest import *  # noqa: F401,F403,E402

COMMAND_TIMEOUT = 3     # seconds
SLOW_MS = 400           # a probe in flight
CO = "co.example"       # verify = callout, unverified = accept
TF = "tf.example"       # verify = callout, unverified = tempfail
PLAIN = "plain.example"  # no table, verify off: the synchronous fast path


def fake_daemon():
    top = os.path.dirname(os.path.dirname(os.path.abspath(mxtest.MXKEEPD)))
    return os.path.join(top, "t", "unit", "mxkeepd_fakeverify")


def stats(srv):
    r = srv.ctl("--json", "stats")
    if r.returncode != 0:
        return {}
    return json.loads(r.stdout.decode("utf-8"))


def codes(rs):
    return [x.code for x in rs]


def main():
    require_binaries()
    fake = fake_daemon()
    if not os.access(fake, os.X_OK):
        bail_out("no %s: run make check TESTS= first" % fake)
    mxtest.MXKEEPD = fake
    srv = Server(domains=[
        {"name": CO, "verify": "callout", "unverified": "accept", "primary": "[127.0.0.1]:9"},
        {"name": TF, "verify": "callout", "unverified": "tempfail", "primary": "[127.0.0.1]:9"},
        {"name": PLAIN},
    ], limits={"command_timeout": "%ds" % COMMAND_TIMEOUT})
    srv.start()
    before = stats(srv)

    # 1. One pipelined group: slow verdicts, at-once verdicts, a relay
    # refusal and a fast-path domain, then DATA.  Replies in order.
    c = srv.raw()
    c.ehlo()
    t0 = time.monotonic()
    c.send(b"MAIL FROM:<s@sender.example>\r\n"
           b"RCPT TO:<slow%d-valid1@%s>\r\n"
           b"RCPT TO:<unknown1@%s>\r\n"
           b"RCPT TO:<slow%d-unknown2@%s>\r\n"
           b"RCPT TO:<valid2@%s>\r\n"
           b"RCPT TO:<x@elsewhere.example>\r\n"
           b"RCPT TO:<anyone@%s>\r\n"
           b"DATA\r\n" % (SLOW_MS, CO.encode(), CO.encode(), SLOW_MS, CO.encode(), CO.encode(),
                          PLAIN.encode()))
    first = c.reply()
    early = c.pending(SLOW_MS / 1000.0 / 2)
    is_(first.code, 250, "MAIL answered at once")
    is_(early, b"", "nothing after MAIL while the first RCPT's probe is in flight")
    rs = c.replies(7)
    took = time.monotonic() - t0
    is_(codes(rs), [250, 550, 550, 250, 550, 250, 354], "pipelined RCPTs answered in command order")
    like(rs[1].text, r"^550 5\.1\.1 <unknown1@co\.example>: .*User unknown in local recipient table",
         "cached refusal: the primary's 5.1.1 reply")
    like(rs[2].text, r"^550 5\.1\.1 <slow\d+-unknown2@co\.example>: ",
         "probed refusal after the wait, in its place")
    like(rs[4].text, r"^550 5\.7\.1 ", "relay refused in its place")
    # Parallel probes would take one SLOW_MS; serialized ones two.  The margin
    # absorbs timer rounding (a 0.80 s bound measured 0.7996 s once).
    ok(took >= 1.8 * SLOW_MS / 1000.0, "two slow probes waited for one after the other (%.2fs)" % took)
    msg = make_message("async")
    c.send(dot_stuff(msg))
    r = c.reply()
    is_(r.code, 250, "message accepted after the suspended group")
    qid = qid_of(r.text)
    q = srv.queue_by_qid()
    is_(sorted(x["addr"] for x in q.get(qid, {}).get("recipients", [])),
        sorted(["slow%d-valid1@%s" % (SLOW_MS, CO), "valid2@%s" % CO, "anyone@%s" % PLAIN]),
        "queued for exactly the accepted recipients")
    r = c.cmd("QUIT")
    is_(r.code, 221, "QUIT after")
    c.close()

    # 2. No answer yet after reply_wait, no answer at all, per `unverified`.
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    r = c.cmd("RCPT TO:<wait200-valid3@%s>" % CO)
    like(r.text, r"^450 4\.1\.1 <wait200-valid3@co\.example>: verification in progress, try again later",
         "probe still running after reply_wait: 450 4.1.1")
    r = c.cmd("RCPT TO:<down1@%s>" % CO)
    is_(r.code, 250, "primary unreachable, unverified = accept: 250")
    r = c.cmd("RCPT TO:<down2@%s>" % TF)
    like(r.text, r"^450 4\.1\.1 <down2@tf\.example>: Recipient address verification failed",
         "primary unreachable, unverified = tempfail: 450 4.1.1")
    r = c.cmd("RCPT TO:<slow%d-down3@%s>" % (SLOW_MS, TF))
    is_(r.code, 450, "probe that ends without an answer, tempfail: 450")
    c.cmd("QUIT")
    c.close()

    # 3. Peer reset while a verdict is pending: the probe is cancelled, the
    # daemon keeps serving.
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    c.send("RCPT TO:<slow3000-valid4@%s>\r\nRCPT TO:<valid5@%s>\r\n" % (CO, CO))
    ok(wait_for(lambda: "probing <slow3000-valid4@" in srv.log(), 3), "probe started")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()
    ok(wait_for(lambda: "cancelled <slow3000-valid4@" in srv.log(), 3),
       "peer reset: the pending probe is cancelled")
    d = srv.raw()
    d.ehlo()
    rs = [d.cmd("MAIL FROM:<s@sender.example>"), d.cmd("RCPT TO:<slow100-valid6@%s>" % CO)]
    is_(codes(rs), [250, 250], "daemon keeps serving after the reset")
    d.cmd("QUIT")
    d.close()
    time.sleep(3.2)
    unlike(srv.log(), r"answered <slow3000-valid4@", "the cancelled probe never answered")
    ok(srv.running(), "daemon alive")

    # 3b. A reload while a verdict is pending: the pending request keeps
    # the policy (and its domains) it started with; the verdict is applied
    # and the message queued (under ASan: nothing used after free).
    c = srv.raw(timeout=10)
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    c.send("RCPT TO:<slow1500-valid9@%s>\r\nDATA\r\n" % CO)
    ok(wait_for(lambda: "probing <slow1500-valid9@" in srv.log(), 3), "probe started")
    srv.domains.append({"name": "new.example"})
    srv.write_config(port=srv.port)
    srv.hup()
    ok(wait_for(lambda: re.search(r"reloaded .*: 4 domains", srv.log()), 3), "reloaded meanwhile")
    rs = c.replies(2)
    is_(codes(rs), [250, 354], "the verdict after the reload: 250, then DATA")
    c.send(dot_stuff(make_message("reload")))
    r = c.reply()
    is_(r.code, 250, "message queued")
    q = srv.queue_by_qid().get(qid_of(r.text), {})
    is_([x["addr"] for x in q.get("recipients", [])], ["slow1500-valid9@%s" % CO],
        "for the recipient verified across the reload")
    c.cmd("QUIT")
    c.close()

    # 4. The command timeout still applies while waiting.
    c = srv.raw(timeout=COMMAND_TIMEOUT + 5)
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    t0 = time.monotonic()
    r = c.cmd("RCPT TO:<slow%d-valid7@%s>" % ((COMMAND_TIMEOUT + 5) * 1000, CO))
    took = time.monotonic() - t0
    like(r.text, r"^421 4\.4\.2 ", "verdict slower than the command timeout: 421 4.4.2 (%.1fs)" % took)
    ok(c.closed(3), "and the session is closed")
    ok(wait_for(lambda: "cancelled <slow%d-valid7@" % ((COMMAND_TIMEOUT + 5) * 1000) in srv.log(), 3),
       "timeout cancels the pending probe")
    c.close()

    # 5. A throttled client: 450 4.7.1 per RCPT, then 421 4.7.0 and close
    # after as many as the bad-command limit (default 10).
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    c.send("".join("RCPT TO:<thr%d@%s>\r\n" % (i, CO) for i in range(10)))
    rs = c.replies(11)
    is_(codes(rs[:10]), [450] * 10, "throttled client: 450 for each RCPT")
    like(rs[0].text, r"^450 4\.7\.1 ", "... 4.7.1")
    like(rs[10].text, r"^421 4\.7\.0 ", "then 421 4.7.0")
    ok(c.closed(3), "and the session ends")
    c.close()

    # 6. Reject reasons, counted where decided.
    after = stats(srv)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in
             ("rejected_unverified_total", "rejected_throttled_total",
              "rejected_unknown_user_total", "rejected_relay_total")}
    is_(delta, {"rejected_unverified_total": 3, "rejected_throttled_total": 10,
                "rejected_unknown_user_total": 2, "rejected_relay_total": 1},
        "reject classes: unverified, throttled, unknown_user, relay")
    like(srv.log(), r"unknown recipients noted: 2\b", "each 5.1.1 reported for the client's throttle")

    # 7. Shutdown while a verdict is pending: cancelled, clean exit (under
    # ASan: nothing leaked, nothing touched after free).
    c = srv.raw(timeout=10)
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    c.send("RCPT TO:<slow2500-valid8@%s>\r\n" % CO)
    ok(wait_for(lambda: "probing <slow2500-valid8@" in srv.log(), 3), "probe started")
    t0 = time.monotonic()
    is_(srv.stop(), 0, "SIGTERM while a verdict is pending: exit 0")
    like(srv.log(), r"cancelled <slow2500-valid8@|answered <slow2500-valid8@",
         "the pending probe was answered or cancelled before exit (%.1fs)" % (time.monotonic() - t0))
    c.close()


run_main(main)
