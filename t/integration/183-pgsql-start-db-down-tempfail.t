#!/usr/bin/env python3
# 183-pgsql-start-db-down-tempfail (trial 8): mxkeepd restarted while the
# database of domains_from is down does not know the database's domains
# yet.  An RCPT for one of them must not get a permanent refusal (the
# sender would bounce the customer's mail for good): until the database
# has answered once, a domain not in the file gets 451 4.3.0, counted as
# rejected_total{reason="lookup"}; the file's domains are served as usual.
# When the database answers, its domains are served and a domain in
# neither place gets 550 5.7.1 again.  (On the old code: 550 5.7.1
# "Relay access denied" for every database domain during the outage.)
import http.client
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def rcpt(srv, addr):
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<sender@example.com>")
    r = c.cmd("RCPT TO:<%s>" % addr)
    c.close()
    return r


def lookup_rejects(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    m = re.search(r'(?m)^mxkeep_rejected_total\{reason="lookup"\} (\d+)$', text)
    return int(m.group(1)) if m else None


def main():
    require_binaries()
    if not have_postgres():
        skip_all("PostgreSQL 15 (initdb, pg_ctl, psql) not installed")
    pg = Postgres().start()
    pg.load(os.path.join(ROOT, "doc", "schema.sql"))
    pg.psql("INSERT INTO domains (name, primary_route) VALUES ('cust.example', '[127.0.0.1]:%d')"
            % free_port())
    mport = free_port()
    srv = Server(domains=[{"name": "example.org"}],
                 settings={"pgsql": [{"name": "main", "conninfo": pg.conninfo(),
                                      "retry_max": "1s", "connect_timeout": "2s"}],
                           "domains_from": "pgsql:main",
                           "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()
    ok(wait_for(lambda: rcpt(srv, "u@cust.example").code == 250, 5),
       "database up: its domain is served")

    pg.stop()
    srv.stop()
    srv.start()
    r = rcpt(srv, "u@cust.example")
    like(r.text, r"^451 4\.3\.0 ", "restarted with the database down: its domain gets 451 4.3.0, "
         "not a permanent refusal (%s)" % r.text.strip())
    r = rcpt(srv, "u@example.org")
    is_(r.code, 250, "the file's domain is served")
    is_(lookup_rejects(mport), 1, "/metrics: counted as a lookup refusal")
    ok(srv.running(), "the daemon keeps running")

    pg.start()
    ok(wait_for(lambda: rcpt(srv, "u@cust.example").code == 250, 10),
       "database back: its domain is served")
    r = rcpt(srv, "u@nowhere.example")
    like(r.text, r"^550 5\.7\.1 ", "a domain in neither place: 550 5.7.1 again")
    srv.stop()
    pg.stop()
    done()


run_main(main)
