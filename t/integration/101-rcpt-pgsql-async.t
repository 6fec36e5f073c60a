#!/usr/bin/env python3
# run-all: alone (replies timed against the queries' delays)
# 101-rcpt-pgsql-async (issue 8, parts 1 and 2): RCPTs whose table is in
# PostgreSQL wait for the query without blocking the daemon.  The
# recipient query goes through a function that sleeps for some local
# parts, so the lookups are really pending: pipelined RCPTs are answered
# in command order; a peer reset while a lookup is pending cancels it and
# the daemon keeps serving (the late answer touches no freed session);
# with the database gone an uncached recipient gets 451 4.3.0, counted as
# rejected_total{reason="lookup"}.  On the old code a pgsql table is
# never asked (every local part is accepted at once), so the refusals and
# the ordering checks fail there.
import os
import socket
import struct
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

SCHEMA = os.path.join(ROOT, "doc", "schema.sql")
SLOW = 0.8              # seconds the query takes for slow-* local parts
GLACIAL = 2.5           # ... for glacial-*


def stats(srv):
    r = srv.ctl("--json", "stats")
    try:
        return json.loads(r.stdout.decode("utf-8"))
    except ValueError:
        return {}


def main():
    require_binaries()
    if not have_postgres():
        skip_all("PostgreSQL 15 server binaries or psql not installed")
    pg = Postgres().start()
    pg.load(SCHEMA)
    pg.psql("INSERT INTO recipients (address) VALUES ('slow-alice@a.test'), ('carol@a.test'), "
            "('glacial-dave@a.test');\n"
            "CREATE FUNCTION slow_rcpt(l text, d text) RETURNS SETOF int LANGUAGE plpgsql AS $$\n"
            "BEGIN\n"
            "  IF l LIKE 'slow-%%' THEN PERFORM pg_sleep(%s); END IF;\n"
            "  IF l LIKE 'glacial-%%' THEN PERFORM pg_sleep(%s); END IF;\n"
            "  RETURN QUERY SELECT 1 FROM recipients WHERE address = l || '@' || d;\n"
            "END $$;\n" % (SLOW, GLACIAL))
    srv = Server(domains=[
        {"name": "a.test", "recipients": "pgsql:slow", "primary": "[127.0.0.1]:9"},
    ], settings={"pgsql": [
        {"name": "slow", "conninfo": pg.conninfo(),
         "recipient_query": "SELECT 1 FROM slow_rcpt(%u, %d)"},
    ]})
    srv.start()
    before = stats(srv)

    # 1. Pipelined RCPTs, some pending on slow queries: replies in order.
    c = srv.raw(timeout=30)
    c.ehlo()
    t0 = time.monotonic()
    c.send(b"MAIL FROM:<s@sender.example>\r\n"
           b"RCPT TO:<slow-alice@a.test>\r\n"
           b"RCPT TO:<bob@a.test>\r\n"
           b"RCPT TO:<slow-ghost@a.test>\r\n"
           b"RCPT TO:<x@relay.example>\r\n"
           b"RCPT TO:<carol@a.test>\r\n"
           b"DATA\r\n")
    first = c.reply()
    early = c.pending(SLOW / 2)
    is_(first.code, 250, "MAIL answered at once")
    is_(early, b"", "nothing more while the first RCPT's query runs")
    rs = c.replies(6)
    took = time.monotonic() - t0
    is_([x.code for x in rs], [250, 550, 550, 550, 250, 354], "pipelined RCPTs answered in command order")
    like(rs[1].text, r"^550 5\.1\.1 <bob@a\.test>", "not in the table: 550 5.1.1")
    like(rs[2].text, r"^550 5\.1\.1 <slow-ghost@a\.test>", "slow not-found in its place")
    like(rs[3].text, r"^550 5\.7\.1 ", "relay refusal in its place")
    ok(took >= 2 * SLOW, "the slow queries were waited for (%.1fs)" % took)
    c.send(dot_stuff(make_message("pgsql-async")))
    r = c.reply()
    is_(r.code, 250, "message accepted")
    qid = qid_of(r.text)
    q = srv.queue_by_qid()
    is_(sorted(x["addr"] for x in q.get(qid, {}).get("recipients", [])),
        ["carol@a.test", "slow-alice@a.test"], "queued for the table's recipients only")
    c.cmd("QUIT")
    c.close()

    # 2. Peer reset while a lookup is pending.
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    c.send(b"RCPT TO:<glacial-dave@a.test>\r\nRCPT TO:<carol@a.test>\r\n")
    time.sleep(0.3)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()
    t_reset = time.monotonic()
    d = srv.raw(timeout=15)
    d.ehlo()
    rs = [d.cmd("MAIL FROM:<s@sender.example>"), d.cmd("RCPT TO:<carol@a.test>"), d.cmd("DATA")]
    is_([x.code for x in rs], [250, 250, 354], "another session is served meanwhile")
    d.send(dot_stuff(make_message("after-reset")))
    is_(d.reply().code, 250, "and its message queued")
    d.cmd("QUIT")
    d.close()
    ok(time.monotonic() - t_reset < GLACIAL, "all that while the reset session's query ran")
    ok(wait_for(lambda: "lost connection after rcpt-wait" in srv.log(), 3),
       "the session was reset while waiting for its verdict")
    time.sleep(GLACIAL)
    ok(srv.running(), "daemon alive after the cancelled lookup's query ended")
    d = srv.raw()
    d.ehlo()
    d.cmd("MAIL FROM:<s@sender.example>")
    is_(d.cmd("RCPT TO:<glacial-dave@a.test>").code, 250, "the same address later: 250")
    d.cmd("QUIT")
    d.close()

    # 3. Database gone, address not cached: 451 4.3.0, reason lookup.
    pg.stop()
    c = srv.raw(timeout=30)
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    r = c.cmd("RCPT TO:<never-seen@a.test>")
    like(r.text, r"^451 4\.3\.0 <never-seen@a\.test>: Temporary lookup failure",
         "database down, nothing cached: 451 4.3.0")
    is_(c.cmd("RCPT TO:<carol@a.test>").code, 250, "a cached answer still works")
    c.cmd("QUIT")
    c.close()
    after = stats(srv)
    is_(after.get("rejected_lookup_total", 0) - before.get("rejected_lookup_total", 0), 1,
        "rejected_total{reason=lookup}: 1")
    is_(after.get("rejected_unknown_user_total", 0) - before.get("rejected_unknown_user_total", 0), 2,
        "rejected_total{reason=unknown_user}: the two not-found")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
