#!/usr/bin/env python3
# 181-pgsql-doc-own-queries (trial 8): the "Your own queries" example of
# doc/pgsql.md, taken from the document itself (the ```ini block of that
# section, its conninfo pointed at a test PostgreSQL) and run as a hosting
# admin would: the admin's own `domain` and `mailbox` tables, domains from
# domain_query, recipients from recipient_query.  A domain the example
# serves must check its mailboxes: an active mailbox 250, an inactive one
# and an unknown one 550 5.1.1 (on the old text the example served the
# domains with no recipient table: every local part accepted, backscatter);
# a domain that is not a backup is refused (relay); setting backupmx by
# UPDATE serves it within a few seconds (the admin's own NOTIFY trigger).
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

DOC = os.path.join(ROOT, "doc", "pgsql.md")

ADMIN_SCHEMA = """
CREATE TABLE domain (domain text PRIMARY KEY, backup_mx_route text, backupmx boolean);
CREATE TABLE mailbox (local_part text, domain text, active boolean);
CREATE FUNCTION domain_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('mxkeep_domains', ''); RETURN NULL; END; $$;
CREATE TRIGGER domain_changed AFTER INSERT OR UPDATE OR DELETE ON domain
    FOR EACH STATEMENT EXECUTE FUNCTION domain_changed();
INSERT INTO domain VALUES ('cust.example', '[127.0.0.1]:%d', true),
                          ('other.example', NULL, false);
INSERT INTO mailbox VALUES ('alice', 'cust.example', true), ('bob', 'cust.example', false);
"""


def doc_block():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    sect = text.split("## Your own queries", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```ini\n(.*?)```", sect, re.S)
    return m.group(1) if m else None


def rcpt(srv, addr):
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<sender@example.com>")
    r = c.cmd("RCPT TO:<%s>" % addr)
    c.close()
    return r


def main():
    require_binaries()
    if not have_postgres():
        skip_all("PostgreSQL 15 (initdb, pg_ctl, psql) not installed")
    block = doc_block()
    ok(block is not None, "doc/pgsql.md has the example")
    if block is None:
        done()
    pg = Postgres().start()
    pg.psql(ADMIN_SCHEMA % free_port())
    block = re.sub(r'conninfo = "[^"]*";', 'conninfo = "%s";' % pg.conninfo(), block)
    srv = Server(domains=[], extra=block)
    srv.start()
    ok(wait_for(lambda: rcpt(srv, "alice@cust.example").code == 250, 5),
       "the example's domain is served, an active mailbox accepted")
    r = rcpt(srv, "bob@cust.example")
    like(r.text, r"^550 5\.1\.1 ", "an inactive mailbox refused (%s)" % r.text.strip())
    r = rcpt(srv, "nosuchuser@cust.example")
    like(r.text, r"^550 5\.1\.1 ", "an unknown mailbox refused (%s)" % r.text.strip())
    r = rcpt(srv, "alice@other.example")
    like(r.text, r"^550 5\.7\.1 ", "a domain without backupmx: relay refused")
    pg.psql("UPDATE domain SET backupmx = true WHERE domain = 'other.example'")
    pg.psql("INSERT INTO mailbox VALUES ('dave', 'other.example', true)")
    ok(wait_for(lambda: rcpt(srv, "dave@other.example").code == 250, 5),
       "backupmx set by UPDATE: served, its mailbox accepted")
    r = rcpt(srv, "alice@other.example")
    like(r.text, r"^550 5\.1\.1 ", "and its unknown mailbox refused")
    srv.stop()
    pg.stop()
    done()


run_main(main)
