#!/usr/bin/env python3
# run-all: alone (a reply within 2 s of the query timeout)
# 112-pgsql-outage: the database stops mid-run.  Answers already cached
# keep working (an expired one too: stale beats a refusal in an outage);
# an address never looked up gets 451 4.3.0, never a guess; mail accepted
# before and during the outage flows out to the primary; one log line when
# the connection goes down and one when it comes back (not one per RCPT);
# mxkeep_pgsql_up in /metrics follows; after recovery unknown addresses
# are answered again.  Then a hung query (pg_sleep) is cut at
# query_timeout: the RCPT gets 451 4.3.0 within the bound, not a stall.
import os
import sys
import urllib.request
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

SCHEMA = os.path.join(ROOT, "doc", "schema.sql")


def rcpt(srv, addr):
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@example.com>")
    r = c.cmd("RCPT TO:<%s>" % addr)
    c.cmd("QUIT")
    c.close()
    return r


def gauge(mport):
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
    m = re.search(r'^mxkeep_pgsql_up\{name="main"\} (\d)$', body, re.M)
    return int(m.group(1)) if m else None


def main():
    require_binaries()
    if not have_postgres():
        skip_all("PostgreSQL 15 server binaries or psql not installed")
    pg = Postgres().start()
    pg.load(SCHEMA)
    pg.psql("INSERT INTO recipients (address) VALUES ('alice@a.test'), ('bob@a.test'), "
            "('carol@a.test'), ('dave@a.test'), ('@slow.test')")
    fake = FakeSMTP()                   # not listening yet: the primary is down
    mport = free_port()
    srv = Server(domains=[
        {"name": "a.test", "recipients": "pgsql:main", "primary": "[127.0.0.1]:%d" % fake.port},
        {"name": "slow.test", "recipients": "pgsql:hang"},
    ], settings={"delivery": fast_delivery(),
                 "metrics": {"address": "127.0.0.1", "port": mport},
                 "pgsql": [{"name": "main", "conninfo": pg.conninfo(), "retry_max": "2s",
                            "cache_ttl": "1s", "cache_negative_ttl": "1s"},
                           {"name": "hang", "conninfo": pg.conninfo(), "query_timeout": "2s",
                            "recipient_query": "SELECT 1 FROM recipients, pg_sleep(30) "
                                               "WHERE address = '@' || %d"}]})
    srv.start()
    ok(wait_for(lambda: rcpt(srv, "alice@a.test").code == 250, 10), "database up: alice 250")
    is_(rcpt(srv, "mallory@a.test").code, 550, "database up: mallory 550")
    is_(gauge(mport), 1, "mxkeep_pgsql_up{name=\"main\"} 1")
    send_batch(srv, 2, rcpt="alice@a.test", tag="before")
    is_(len(srv.queue()), 2, "2 messages accepted and waiting (primary down)")

    mark = len(srv.log())
    pg.stop()
    ok(wait_log(srv, r"pgsql main: down", 5, mark) is not None, "log: pgsql main: down")
    ok(wait_for(lambda: gauge(mport) == 0, 5), "mxkeep_pgsql_up{name=\"main\"} 0")
    time.sleep(1.2)                     # past cache_ttl: the answers are stale now
    for i in range(3):
        is_(rcpt(srv, "alice@a.test").code, 250, "outage %d: cached (expired) alice still 250" % i)
        is_(rcpt(srv, "mallory@a.test").code, 550, "outage %d: cached (expired) mallory still 550" % i)
        r = rcpt(srv, "bob@a.test")
        is_((r.code, r.text[4:9]), (451, "4.3.0"), "outage %d: never-seen bob 451 4.3.0" % i)
    send_batch(srv, 1, rcpt="alice@a.test", tag="during")
    is_(len(srv.queue()), 3, "a message accepted during the outage")
    fake.start()
    srv.ctl("flush", "a.test")
    ok(wait_for(lambda: fake.count() >= 3, 15), "all 3 messages delivered while the database is down")
    ok(wait_empty(srv, 10), "spool empty")
    is_(len(re.findall(r"pgsql main: down", srv.log()[mark:])), 1,
        "one 'down' line for the whole outage (3 rounds of RCPTs, reconnect attempts)")

    pg.start()
    ok(wait_log(srv, r"pgsql main: up", 10, mark) is not None, "log: pgsql main: up again")
    ok(wait_for(lambda: gauge(mport) == 1, 5), "mxkeep_pgsql_up{name=\"main\"} 1 again")
    is_(rcpt(srv, "bob@a.test").code, 250, "after recovery: bob 250")
    is_(len(re.findall(r"pgsql main: up", srv.log()[mark:])), 1, "one 'up' line")

    # A hung server: the query sleeps 30 s, query_timeout is 2 s.
    ok(wait_for(lambda: "pgsql hang: up" in srv.log(), 5), "pgsql hang: up")
    t0 = time.monotonic()
    r = rcpt(srv, "x@slow.test")
    took = time.monotonic() - t0
    is_((r.code, r.text[4:9]), (451, "4.3.0"), "hung query: 451 4.3.0")
    ok(took < 4, "... within the query_timeout bound (%.1f s)" % took)
    # The 451 comes from the lookup's own deadline; the connection's "down"
    # line from pg.c's query timer, which may fire a moment later.
    ok(wait_log(srv, r"pgsql hang: down: no answer to a query within 2s", 5) is not None,
       "log names the timeout")
    is_(rcpt(srv, "carol@a.test").code, 250, "the other connection is unaffected")
    ok(srv.running(), "daemon alive")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
