#!/usr/bin/env python3
# run-all: alone (an INSERT served within 1 s)
# 110-pgsql-domains: served domains from PostgreSQL (domains_from) with a
# real PostgreSQL.  A domain added by one INSERT is served within a second
# (LISTEN/NOTIFY); its mail goes to the primary the row names; a domain in
# both the file and the database keeps the file's settings (one log line);
# a bad row is logged once and skipped; a domain removed from the
# database while it still has mail keeps its mail and the log says so;
# a reload keeps the database's domains.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

SCHEMA = os.path.join(ROOT, "doc", "schema.sql")


def rcpt_code(srv, addr):
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@example.com>")
    r = c.cmd("RCPT TO:<%s>" % addr)
    c.cmd("QUIT")
    c.close()
    return r


def main():
    require_binaries()
    if not have_postgres():
        skip_all("PostgreSQL 15 server binaries or psql not installed")
    pg = Postgres().start()
    pg.load(SCHEMA)
    fake = FakeSMTP().start()
    filep = FakeSMTP().start()
    pg.psql("INSERT INTO domains (name, primary_route) VALUES ('db1.test', '[127.0.0.1]:%d'),"
            " ('both.test', '[127.0.0.1]:%d')" % (fake.port, fake.port))
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.1]:%d" % filep.port},
        {"name": "both.test", "primary": "[127.0.0.1]:%d" % filep.port},
    ], settings={"delivery": fast_delivery(),
                 "pgsql": [{"name": "main", "conninfo": pg.conninfo(), "reread": "1h"}],
                 "domains_from": "pgsql:main"})
    srv.start()

    ok(wait_for(lambda: rcpt_code(srv, "u@db1.test").code == 250, 10),
       "a domain in the database at start is served")
    is_(rcpt_code(srv, "u@example.org").code, 250, "the file's domain is served")
    like(srv.log(), r"domain both\.test is in the configuration file too: the file's settings win",
         "a domain in file and database: logged at start")

    # One INSERT: served within a second (bounded loop, measured).
    r0 = rcpt_code(srv, "u@db2.test")
    ok(r0.code >= 500, "db2.test not served before the INSERT (%d)" % r0.code)
    pg.psql("INSERT INTO domains (name, primary_route, hold) VALUES ('db2.test', '[127.0.0.1]:%d', true)"
            % fake.port)
    t0 = time.monotonic()
    served = wait_for(lambda: rcpt_code(srv, "u@db2.test").code == 250, 3, 0.02)
    took = time.monotonic() - t0
    ok(served and took < 1.0, "INSERT served within 1 s (took %.3f s)" % took)
    diag("INSERT to RCPT 250: %.3f s" % took)

    # Mail for the database's domains goes where its row says; the file's
    # settings win for both.test.
    send_batch(srv, 1, rcpt="u@db1.test", tag="db1")
    send_batch(srv, 1, rcpt="u@both.test", tag="both")
    ok(wait_for(lambda: fake.count() >= 1 and filep.count() >= 1, 10),
       "db1.test delivered to its row's primary, both.test to the file's")
    is_((fake.count(), filep.count()), (1, 1), "one message each, nothing crossed")

    # A bad row: logged once, skipped, never fatal.
    mark = len(srv.log())
    pg.psql("INSERT INTO domains (name, primary_route) VALUES ('bad.test', '[127.0.0.1')")
    ok(wait_log(srv, r'row "bad\.test" skipped: primary_route', 3, mark) is not None,
       "a bad row is logged and skipped")
    pg.psql("INSERT INTO domains (name) VALUES ('db3.test')")
    ok(wait_for(lambda: rcpt_code(srv, "u@db3.test").code == 250, 3, 0.05),
       "the next change is served despite the bad row")
    is_(len(re.findall(r'row "bad\.test" skipped', srv.log()[mark:])), 1, "the bad row is logged once")
    ok(rcpt_code(srv, "u@bad.test").code >= 500, "the bad row's domain is not served")

    # db2.test is held: its message stays; removing the domain keeps it.
    send_batch(srv, 1, rcpt="u@db2.test", tag="db2")
    is_(len(srv.queue()), 1, "db2.test's message is queued (held)")
    mark = len(srv.log())
    pg.psql("DELETE FROM domains WHERE name = 'db2.test'")
    ok(wait_log(srv, r"domain db2\.test is no longer served; its 1 queued messages stay", 3, mark)
       is not None, "removing a domain with mail says so")
    ok(rcpt_code(srv, "u@db2.test").code >= 500, "db2.test no longer accepts mail")
    is_(len(srv.queue()), 1, "its message is still in the spool")

    # A reload keeps the database's domains (the file alone has two).
    srv.hup()
    ok(wait_log(srv, r"reloaded .*: 4 domains", 5, mark) is not None,
       "reload: file's 2 + database's db1, db3 (both.test once)")
    is_(rcpt_code(srv, "u@db1.test").code, 250, "db1.test still served after the reload")
    like(srv.log()[mark:], r"domain both\.test is in the configuration file too",
         "the file-wins line again at reload")

    # The database goes away and comes back: its domains stay served
    # meanwhile, and the LISTEN is re-issued after the reconnect.
    mark = len(srv.log())
    pg.stop()
    ok(wait_log(srv, r"pgsql main: down", 5, mark) is not None, "database stopped: down logged")
    is_(rcpt_code(srv, "u@db1.test").code, 250, "database down: db1.test still served (last read)")
    pg.start()
    ok(wait_log(srv, r"pgsql main: up", 10, mark) is not None, "database back: up logged")
    pg.psql("INSERT INTO domains (name) VALUES ('db4.test')")
    t0 = time.monotonic()
    served = wait_for(lambda: rcpt_code(srv, "u@db4.test").code == 250, 3, 0.02)
    took = time.monotonic() - t0
    ok(served and took < 1.0, "after the reconnect an INSERT is served within 1 s (%.3f s): "
       "LISTEN re-issued" % took)
    ok(srv.running(), "daemon alive")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
