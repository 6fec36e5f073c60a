#!/usr/bin/env python3
# run-all: alone (10,000 domains applied within 1 s)
# 113-pgsql-start: start-up and scale of domains_from.  A config naming a
# pgsql entry that does not exist (recipients or domains_from) or a bad
# custom query is refused with file:line and exit 78.  With the database
# down at start mxkeepd starts anyway, serves the file's domains, says so
# once, and adds the database's domains when it comes up.  10,000 domains
# inserted in one statement are all served within a second.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

SCHEMA = os.path.join(ROOT, "doc", "schema.sql")
NDOMAINS = 10000


def rcpt(srv, addr):
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@example.com>")
    r = c.cmd("RCPT TO:<%s>" % addr)
    c.cmd("QUIT")
    c.close()
    return r


def check(srv):
    srv.write_config()
    return run([MXKEEPD, "-t", "-c", srv.conf], timeout=30)


def main():
    require_binaries()
    if not have_postgres():
        skip_all("PostgreSQL 15 server binaries or psql not installed")
    pg = Postgres()
    entry = {"name": "main", "conninfo": "host=127.0.0.1 port=%d user=postgres" % pg.port}

    # Config errors name file:line.
    bad = Server(domains=[{"name": "a.test", "recipients": "pgsql:nope"}],
                 settings={"pgsql": [entry]})
    r = check(bad)
    is_(r.returncode, 78, "recipients naming no pgsql entry: exit 78")
    like(r.stderr.decode(), r'^\S+mxkeep\.conf:\d+: recipients: no pgsql entry is called "nope"',
         "... file:line: reason")
    bad = Server(settings={"pgsql": [entry], "domains_from": "pgsql:other"})
    r = check(bad)
    is_(r.returncode, 78, "domains_from naming no pgsql entry: exit 78")
    like(r.stderr.decode(), r'mxkeep\.conf:\d+: domains_from: no pgsql entry is called "other"',
         "... file:line: reason")
    bad = Server(settings={"pgsql": [dict(entry, recipient_query="SELECT 1 FROM t WHERE a = %x")]})
    r = check(bad)
    is_(r.returncode, 78, "a custom query with an unknown %-escape: exit 78")
    like(r.stderr.decode(), r'mxkeep\.conf:\d+: pgsql\.recipient_query: "%x" is not',
         "... file:line: reason")

    # The database is down at start.
    pg.start()
    pg.load(SCHEMA)
    pg.psql("INSERT INTO domains (name) VALUES ('db.test')")
    pg.stop()
    srv = Server(domains=[{"name": "file.test"}],
                 settings={"pgsql": [dict(entry, retry_max="1s", connect_timeout="2s",
                                          query_timeout="2s")],
                           "domains_from": "pgsql:main"})
    t0 = time.monotonic()
    srv.start()
    ok(time.monotonic() - t0 < 5, "mxkeepd starts with the database down")
    is_(rcpt(srv, "u@file.test").code, 250, "the file's domain is served at once")
    is_(rcpt(srv, "u@db.test").code, 451,
        "the database's domain is not (yet): 451, never a permanent refusal")
    ok(wait_log(srv, r"domains_from pgsql:main: no answer from the database; serving the "
                r"file's 1 domains", 6) is not None, "log: serving the file's domains")
    time.sleep(2.5)                     # several reconnect attempts
    is_(len(re.findall(r"no answer from the database", srv.log())), 1, "... said once")
    is_(len(re.findall(r"pgsql main: down", srv.log())), 1, "one 'down' line across retries")
    pg.start()
    ok(wait_for(lambda: rcpt(srv, "u@db.test").code == 250, 5, 0.1),
       "the database's domain is served once it is up")

    # 10,000 domains in one INSERT.
    t0 = time.monotonic()
    pg.psql("INSERT INTO domains (name, primary_route) SELECT 'd' || i || '.bulk.test', "
            "'[127.0.0.1]:25' FROM generate_series(1, %d) i" % NDOMAINS)
    t1 = time.monotonic()
    served = wait_for(lambda: rcpt(srv, "u@d%d.bulk.test" % NDOMAINS).code == 250, 5, 0.02)
    took = time.monotonic() - t1
    ok(served and took < 1.0, "10,000 domains inserted: the last one served within 1 s "
       "(%.3f s after the INSERT returned)" % took)
    diag("INSERT of %d domains took %.3f s; served %.3f s later" % (NDOMAINS, t1 - t0, took))
    m = re.search(r"%d rows from the database; \d+ domains served, applied in (\d+) ms" % (NDOMAINS + 1),
                  srv.log())
    ok(m and int(m.group(1)) < 1000, "applied (compose, policy, swap) in %s ms" % (m.group(1) if m else "?"))
    is_(rcpt(srv, "u@d1.bulk.test").code, 250, "the first of them too")
    like(srv.log(), r"%d rows from the database; %d domains served" % (NDOMAINS + 1, NDOMAINS + 2),
         "log: 10,001 rows, 10,002 domains served")
    ok(srv.running(), "daemon alive")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
