#!/usr/bin/env python3
# 111-pgsql-recipients: recipient tables in PostgreSQL, end to end through
# RCPT.  Default schema: 'local@domain' valid, unknown 550 5.1.1, '@domain'
# catch-all, case folded; a custom recipient_query with %u and '%d'; the
# cache (a second lookup sends no query) and one query for concurrent
# lookups of one key; SQL injection attempts (' ; \ % and NUL) change
# nothing in the database and get the right answer; values reach the
# server only as bound parameters (its statement log shows $n).
import os
import sys
import threading
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

SCHEMA = os.path.join(ROOT, "doc", "schema.sql")


def rcpt(srv, addr, raw=None):
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@example.com>")
    if raw is not None:
        c.send(raw + CRLF)
        r = c.reply()
    else:
        r = c.cmd("RCPT TO:<%s>" % addr)
    c.cmd("QUIT")
    c.close()
    return r


def queries(pg, needle):
    return len(re.findall(r"execute <unnamed>: " + re.escape(needle), pg.log()))


def main():
    require_binaries()
    if not have_postgres():
        skip_all("PostgreSQL 15 server binaries or psql not installed")
    pg = Postgres(settings={"log_statement": "all"}).start()
    pg.load(SCHEMA)
    pg.psql("""
        INSERT INTO recipients (address) VALUES ('alice@a.test'), ('@b.test'),
            ('o''brien@a.test'), ('x%y@a.test');
        CREATE TABLE users (local text, domain text, active boolean);
        INSERT INTO users VALUES ('carol', 'c.test', true), ('dave', 'c.test', false);
    """)
    before = pg.psql("SELECT address FROM recipients ORDER BY address")
    srv = Server(domains=[
        {"name": "a.test", "recipients": "pgsql:main"},
        {"name": "b.test", "recipients": "pgsql:main"},
        {"name": "c.test", "recipients": "pgsql:custom"},
    ], settings={"pgsql": [
        {"name": "main", "conninfo": pg.conninfo()},
        {"name": "custom", "conninfo": pg.conninfo(),
         "recipient_query": "SELECT 1 FROM users WHERE local = %u AND domain = '%d' AND active"},
    ]})
    srv.start()
    ok(wait_for(lambda: rcpt(srv, "alice@a.test").code == 250, 10), "default schema: a listed address: 250")
    r = rcpt(srv, "bob@a.test")
    is_(r.code, 550, "an unknown address: 550")
    like(r.text, r"5\.1\.1", "... 5.1.1")
    is_(rcpt(srv, "Alice@A.Test").code, 250, "case folded: Alice@A.Test is alice@a.test")
    is_(rcpt(srv, "anyone@b.test").code, 250, "'@b.test' catch-all: any local part")
    is_(rcpt(srv, "carol@c.test").code, 250, "custom query: an active user: 250")
    is_(rcpt(srv, "dave@c.test").code, 550, "custom query: an inactive user: 550")
    is_(rcpt(srv, "eve@c.test").code, 550, "custom query: an unknown user: 550")
    like(pg.log(), r"parameters: \$1 = 'carol', \$2 = 'c\.test'",
         "custom query: %u and '%d' travel as bound parameters $1, $2")

    # The cache: asking again sends nothing to the database.
    n = queries(pg, "SELECT 1 FROM recipients")
    for _ in range(3):
        rcpt(srv, "alice@a.test")
        rcpt(srv, "bob@a.test")
    is_(queries(pg, "SELECT 1 FROM recipients"), n, "found and not-found answers are cached")

    # Concurrent lookups of one uncached key share one query.
    n = queries(pg, "SELECT 1 FROM recipients")
    res = []
    th = [threading.Thread(target=lambda: res.append(rcpt(srv, "same@a.test").code)) for _ in range(8)]
    for t in th:
        t.start()
    for t in th:
        t.join(30)
    is_(sorted(res), [550] * 8, "8 concurrent sessions: 550 each")
    ok(queries(pg, "SELECT 1 FROM recipients") - n <= 2,
       "... from at most 2 queries (%d)" % (queries(pg, "SELECT 1 FROM recipients") - n))

    # SQL injection attempts: answers by the data, never by the text.
    is_(rcpt(srv, "o'brien@a.test").code, 250, "a listed local part with a quote: 250")
    for addr in ["x'or'1'='1@a.test", "x';DROP TABLE recipients;--@a.test",
                 '"x\\\\\'; DELETE FROM recipients; --"@a.test', "a\\b@a.test", "x%y@a.test",
                 "%s@a.test", "%u@c.test", "'@b'@a.test"]:
        r = rcpt(srv, addr)
        ok(r.code in (501, 550, 553), "%s: refused (%d %s)" % (addr, r.code, r.text[:60]))
    r = rcpt(srv, None, raw=b"RCPT TO:<al\x00ice@a.test>")
    ok(500 <= r.code < 600, "NUL in the address: refused by the SMTP parser (%d %s)" % (r.code, r.text[:60]))
    like(pg.log(), r"\$1 = '\"x.*''; delete from recipients; --\"@a\.test'",
         "the attempt reached the server as a parameter value")
    is_(pg.psql("SELECT address FROM recipients ORDER BY address"), before,
        "the recipients table is unchanged")
    is_(pg.scalar("SELECT count(*) FROM users"), "2", "the users table is unchanged")
    unlike(pg.log(), r"syntax error", "no statement the server could not parse")
    ok(srv.running(), "daemon alive")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
