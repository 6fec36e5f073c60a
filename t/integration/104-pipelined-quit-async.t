#!/usr/bin/env python3
# 104-pipelined-quit-async: a reply queued after an asynchronous completion
# is never dropped by a pipelined QUIT.  A client sends MAIL, RCPT and QUIT
# in one write; the RCPT's verdict is pending (a cold pgsql lookup, or a
# callout to a slow primary), so its reply and the 221 are queued from the
# completion callback.  smtpd's bufferevents defer their callbacks: a write
# callback scheduled when the 250 to MAIL drained could run after the
# verdict had queued "550 ... 221" and closed the session, and freed it
# with both replies unsent (no RCPT reply, no 221; the reject line logged).
# The same holds for the end-of-data reply of the asynchronous commit
# followed by a pipelined QUIT.  Each case runs 60+ times and asserts every
# reply arrives, in order, and the log has the reject line.  On the old
# code the pgsql case loses the replies several times in 60 tries.
import os
import random
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

ROUNDS = 60
USERS = {"alice"}


def primary_answers(addr):
    # A short, varying delay: the verdict lands within a few loop turns of
    # the MAIL reply being written, which is the window at stake.
    time.sleep(random.choice((0, 0.001, 0.003, 0.008, 0.02)))
    local = addr.lower().partition("@")[0]
    if local in USERS:
        return None
    return "550 5.1.1 <%s>: Recipient address rejected: User unknown in local recipient table" % addr


def pipelined_rounds(srv, domain, tag):
    """ROUNDS sessions each sending MAIL+RCPT(unknown)+QUIT in one write;
    returns the list of (i, replies) that were not [250, 550, 221+EOF]."""
    bad = []
    for i in range(ROUNDS):
        addr = "nobody-%s-%d@%s" % (tag, i, domain)
        c = srv.raw(timeout=15)
        c.ehlo()
        c.send(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<%s>\r\nQUIT\r\n" % addr.encode())
        rs = c.replies(3)
        closed = c.closed(timeout=5)
        c.close()
        if [r.code for r in rs] != [250, 550, 221] or addr not in rs[1].text or not closed:
            bad.append((i, [str(r) for r in rs]))
    return bad


def rejects_logged(srv, domain, tag):
    log = srv.log()
    return sum(1 for i in range(ROUNDS)
               if re.search(r"reject: RCPT from .*<nobody-%s-%d@%s>" % (tag, i, re.escape(domain)), log))


def main():
    require_binaries()
    if not have_postgres():
        skip_all("PostgreSQL 15 server binaries or psql not installed")
    pg = Postgres().start()
    pg.load(os.path.join(ROOT, "doc", "schema.sql"))
    pg.psql("INSERT INTO recipients VALUES ('alice@pg.test')")
    prim = FakeSMTP(host="127.0.0.2", rcpt=primary_answers, name="primary.example.org").start()
    route = "[127.0.0.2]:%d" % prim.port
    srv = Server(domains=[
        {"name": "pg.test", "recipients": "pgsql:main"},
        {"name": "co.test", "primary": route, "verify": "callout", "unverified": "tempfail"},
        {"name": "example.org"},
    ], settings={"verify": {"unknown_limit": 100000, "reply_wait": "10s"}},
        extra='pgsql = ( { name = "main"; conninfo = "%s"; } );' % pg.conninfo())
    srv.start()
    try:
        # The database connection comes up asynchronously: wait (bounded)
        # until a known address is found, so the rounds below see lookups,
        # not the start-up 451.
        deadline = time.monotonic() + 15
        while True:
            c = srv.raw()
            c.ehlo()
            r = c.cmd("MAIL FROM:<s@x.test>")
            r = c.cmd("RCPT TO:<alice@pg.test>")
            c.close()
            if r.code == 250 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        is_(r.code, 250, "pgsql table answers (known address found)")

        # 1. A pending pgsql lookup (each address unknown: a cold cache).
        bad = pipelined_rounds(srv, "pg.test", "pg")
        is_(len(bad), 0, "pgsql: every pipelined RCPT reply and the 221 arrive (%d rounds)" % ROUNDS)
        if bad:
            diag("pgsql failures: %d, first: %s" % (len(bad), bad[:3]))
        is_(rejects_logged(srv, "pg.test", "pg"), ROUNDS, "pgsql: a reject line for every round")

        # 2. A pending callout to a primary that answers after a short delay.
        bad = pipelined_rounds(srv, "co.test", "co")
        is_(len(bad), 0, "callout: every pipelined RCPT reply and the 221 arrive (%d rounds)" % ROUNDS)
        if bad:
            diag("callout failures: %d, first: %s" % (len(bad), bad[:3]))
        is_(rejects_logged(srv, "co.test", "co"), ROUNDS, "callout: a reject line for every round")

        # 3. The asynchronous commit: the message and QUIT in one write; the
        # 250 queued when the message is on disk and the 221 after it both
        # arrive.
        bad = []
        for i in range(ROUNDS):
            c = srv.raw(timeout=15)
            c.ehlo()
            c.send(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n")
            rs = c.replies(3)
            c.send(dot_stuff(make_message("commit %d" % i)) + b"QUIT\r\n")
            rs += c.replies(2)
            closed = c.closed(timeout=5)
            c.close()
            if [r.code for r in rs] != [250, 250, 354, 250, 221] or not closed:
                bad.append((i, [str(r) for r in rs]))
        is_(len(bad), 0, "commit: the end-of-data reply and the 221 arrive (%d rounds)" % ROUNDS)
        if bad:
            diag("commit failures: %d, first: %s" % (len(bad), bad[:3]))
        ok(srv.running(), "the daemon is still serving")
    finally:
        srv.stop()
        prim.stop()
        pg.stop()


run_main(main)
