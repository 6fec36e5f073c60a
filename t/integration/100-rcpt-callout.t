#!/usr/bin/env python3
# run-all: alone (replies timed against reply_wait and the primary's delays)
# 100-rcpt-callout (issue 8, part 1): the RCPT path end to end with the real
# verifier against a scripted primary (FakeSMTP) that answers some RCPTs
# slowly.  Pipelined RCPTs to a callout domain are answered in command
# order, each in its place, the slow ones after their probe; a verdict the
# primary takes longer than reply_wait for is 450 4.1.1 and the probe goes
# on and fills the cache; a peer reset while a verdict is pending leaves a
# daemon that keeps serving; a primary that is down gives what the
# domain's `unverified` says; a domain with a recipient table is never
# probed (the table is the administrator's word: FOUND 250, else 550).
# On the old code a callout domain accepts every local part at once, so
# the refusals, the order checks and the 450s fail there.
import os
import re
import socket
import struct
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

USERS = {"alice", "bob", "slow-carol", "glacial-dave", "glacial-erin"}
SLOW = 0.8              # seconds the primary takes for slow-* RCPTs
GLACIAL = 3.5           # ... for glacial-* (longer than reply_wait)
REPLY_WAIT = 2


def answers(addr):
    local = addr.lower().partition("@")[0]
    if local.startswith("slow-"):
        time.sleep(SLOW)
    elif local.startswith("glacial-"):
        time.sleep(GLACIAL)
    if local in USERS:
        return None
    return "550 5.1.1 <%s>: Recipient address rejected: User unknown in local recipient table" % addr


def probed(prim):
    with prim.lock:
        return [a.lower() for a, _ in prim.rcpt_log]


def commands(prim):
    with prim.lock:
        return list(prim.commands)


def stats(srv):
    r = srv.ctl("--json", "stats")
    try:
        return json.loads(r.stdout.decode("utf-8"))
    except ValueError:
        return {}


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", rcpt=answers, name="primary.example.org").start()
    route = "[127.0.0.2]:%d" % prim.port
    dead = "[127.0.0.1]:%d" % free_port()       # nothing listens there
    srv = Server(domains=[
        {"name": "example.org", "primary": route, "verify": "callout", "unverified": "tempfail"},
        {"name": "listed.test", "primary": route, "verify": "callout", "recipients": ["alice@listed.test"]},
        {"name": "down-tf.test", "primary": dead, "verify": "callout", "unverified": "tempfail"},
        {"name": "down-ok.test", "primary": dead, "verify": "callout", "unverified": "accept"},
    ], settings={"verify": {"probe_timeout": "6s", "reply_wait": "%ds" % REPLY_WAIT}})
    srv.start()
    before = stats(srv)

    # 1. One pipelined group: replies in command order, slow ones in place.
    c = srv.raw(timeout=30)
    c.ehlo()
    t0 = time.monotonic()
    c.send(b"MAIL FROM:<s@sender.example>\r\n"
           b"RCPT TO:<slow-carol@example.org>\r\n"
           b"RCPT TO:<alice@example.org>\r\n"
           b"RCPT TO:<slow-ghost@example.org>\r\n"
           b"RCPT TO:<nobody@example.org>\r\n"
           b"RCPT TO:<x@relay.example>\r\n"
           b"RCPT TO:<bob@example.org>\r\n"
           b"DATA\r\n")
    first = c.reply()
    early = c.pending(SLOW / 2)
    is_(first.code, 250, "MAIL answered at once")
    is_(early, b"", "nothing more while the first RCPT is being verified")
    rs = c.replies(7)
    took = time.monotonic() - t0
    is_([x.code for x in rs], [250, 250, 550, 550, 550, 250, 354],
        "pipelined RCPTs to a callout domain answered in command order")
    like(rs[2].text, r"^550 5\.1\.1 <slow-ghost@example\.org>: Recipient address rejected: "
         r"User unknown in local recipient table", "slow refusal: the primary's code and text, in place")
    like(rs[3].text, r"^550 5\.1\.1 <nobody@example\.org>: .*local recipient table",
         "fast refusal after it")
    like(rs[4].text, r"^550 5\.7\.1 ", "relay refusal in place")
    ok(took >= 2 * SLOW, "the slow verdicts were waited for (%.1fs)" % took)
    c.send(dot_stuff(make_message("callout")))
    r = c.reply()
    is_(r.code, 250, "message accepted")
    qid = qid_of(r.text)
    q = srv.queue_by_qid() if qid else {}
    got = sorted(x["addr"] for x in q.get(qid, {}).get("recipients", [])) if q.get(qid) else None
    # The daemon may have delivered it already to the same fake primary.
    if got is None:
        with prim.lock:
            got = sorted(r for m in prim.messages for r in m["rcpts"] if "callout" in
                         m["body"].decode("latin-1", "replace"))
    is_(got, ["alice@example.org", "bob@example.org", "slow-carol@example.org"],
        "only the verified recipients are in the message")
    c.cmd("QUIT")
    c.close()

    # 2. Answers are cached: a second session costs the primary nothing.
    n0 = len(probed(prim))
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    rs = [c.cmd("RCPT TO:<alice@example.org>"), c.cmd("RCPT TO:<slow-ghost@example.org>")]
    is_([x.code for x in rs], [250, 550], "cached answers, same verdicts")
    is_(len(probed(prim)), n0, "no new probe for cached addresses")
    c.cmd("QUIT")
    c.close()

    # 3. Peer reset while a verdict is pending.
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    c.send(b"RCPT TO:<glacial-dave@example.org>\r\nRCPT TO:<bob@example.org>\r\n")
    ok(wait_for(lambda: any(b"glacial-dave@example.org" in x.lower() for x in commands(prim)), 5),
       "probe under way")
    t_reset = time.monotonic()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()
    d = srv.raw(timeout=15)
    d.ehlo()
    rs = [d.cmd("MAIL FROM:<s@sender.example>"), d.cmd("RCPT TO:<bob@example.org>"), d.cmd("DATA")]
    is_([x.code for x in rs], [250, 250, 354], "another session is served while the probe runs")
    d.send(dot_stuff(make_message("after-reset")))
    is_(d.reply().code, 250, "and its message queued")
    d.cmd("QUIT")
    d.close()
    ok(time.monotonic() - t_reset < REPLY_WAIT, "all that before the probe or reply_wait ended")
    time.sleep(GLACIAL + 0.5)           # the probe ends after its session went away
    ok(srv.running(), "daemon alive after the probe of a reset session ended")
    like(srv.log(), r"lost connection after rcpt-wait from", "the session was reset while waiting")
    d = srv.raw()
    d.ehlo()
    d.cmd("MAIL FROM:<s@sender.example>")
    is_(d.cmd("RCPT TO:<glacial-dave@example.org>").code, 250,
        "the orphaned probe still filled the cache")
    d.cmd("QUIT")
    d.close()

    # 4. Longer than reply_wait: 450 4.1.1, the probe goes on.
    c = srv.raw(timeout=30)
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    t0 = time.monotonic()
    r = c.cmd("RCPT TO:<glacial-erin@example.org>")
    took = time.monotonic() - t0
    like(r.text, r"^450 4\.1\.1 <glacial-erin@example\.org>: verification in progress, try again later",
         "probe slower than reply_wait: 450 4.1.1 (%.1fs)" % took)
    ok(REPLY_WAIT - 0.5 <= took < GLACIAL, "after about reply_wait")
    retries = []

    def retry():
        retries.append(c.cmd("RCPT TO:<glacial-erin@example.org>").code)
        return retries[-1] == 250
    ok(wait_for(retry, GLACIAL + 3, 0.5), "the retry is accepted once the probe finished")
    ok(all(x in (250, 450) for x in retries), "retries meanwhile: 450 until then (%s)" % retries)

    # 5. Primary down, nothing cached: per `unverified`.
    r = c.cmd("RCPT TO:<someone@down-tf.test>")
    like(r.text, r"^450 4\.1\.1 <someone@down-tf\.test>: Recipient address verification failed",
         "primary down, unverified = tempfail: 450 4.1.1")
    r = c.cmd("RCPT TO:<someone@down-ok.test>")
    is_(r.code, 250, "primary down, unverified = accept: 250")

    # 6. A domain with a table is never probed.
    rs = [c.cmd("RCPT TO:<alice@listed.test>"), c.cmd("RCPT TO:<nobody@listed.test>")]
    is_([x.code for x in rs], [250, 550], "table + callout: FOUND 250, not found 550")
    like(rs[1].text, r"^550 5\.1\.1 ", "... 5.1.1")
    ok(not any(a.endswith("@listed.test") for a in probed(prim)), "and no probe for the table's domain")
    c.cmd("QUIT")
    c.close()

    after = stats(srv)
    is_(after.get("rejected_unverified_total", 0) - before.get("rejected_unverified_total", 0),
        2 + retries.count(450),
        "rejected_total{reason=unverified}: each 450 in progress and the tempfail")
    is_(after.get("rejected_unknown_user_total", 0) - before.get("rejected_unknown_user_total", 0), 4,
        "rejected_total{reason=unknown_user}: the primary's three 5.1.1 and the table's")
    unlike(srv.log(), r"panic|AddressSanitizer", "no panic in the log")
    is_(srv.stop(), 0, "daemon exits 0")
    prim.stop()


run_main(main)
