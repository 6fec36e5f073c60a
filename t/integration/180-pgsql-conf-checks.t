#!/usr/bin/env python3
# 180-pgsql-conf-checks (trial 8): mistakes a hosting admin makes in the
# pgsql and verify settings are configuration errors, one line
# `file:line: reason` and exit 78, at `mxkeepd -t`, at start and at
# reload (the running configuration stays) -- not a daemon that starts and
# then fails every lookup:
#  - a conninfo libpq cannot parse (an unknown keyword): the database would
#    never be up, every RCPT 451;
#  - an escape inside a quoted SQL string, the Postfix idiom
#    `WHERE username = '%u@%d'`: it became the text '$1@$2', not parameters;
#  - an unterminated quoted string in a query;
#  - verify.positive_refresh / negative_refresh longer than the expiry.
# And queries that are right stay accepted: '%s' alone, '' inside a
# literal, LIKE 'a%%'.  No database is needed: the checks are at load.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

EXIT_TIMEOUT = 10
PG = 'pgsql = ( { name = "main";\n  conninfo = %s;\n  recipient_query = %s; } );'
GOOD_CONNINFO = '"hostaddr=127.0.0.1 port=1 dbname=mxkeep connect_timeout=2"'
GOOD_QUERY = '"SELECT 1 FROM mailbox WHERE local_part = %u AND domain = %d"'


def check(srv, extra):
    """mxkeepd -t on srv's config with extra appended: (rc, stderr lines)."""
    srv.extra = extra
    srv.write_config(srv.port)
    r = run([MXKEEPD, "-t", "-c", srv.conf], timeout=30)
    return r.returncode, [ln for ln in r.stderr.decode("utf-8", "replace").splitlines() if ln]


def line_of(conf, needle):
    with open(conf) as f:
        for i, ln in enumerate(f, 1):
            if needle in ln:
                return i
    return -1


def bad(srv, name, extra, needle, reason):
    rc, lines = check(srv, extra)
    is_(rc, 78, "%s: exit 78" % name)
    is_(len(lines), 1, "%s: one line" % name)
    like(lines[0] if lines else "", r"^%s:%d: .*%s" % (re.escape(srv.conf), line_of(srv.conf, needle),
                                                       reason),
         "%s: file:line of %s and the reason" % (name, needle))


def main():
    require_binaries()
    srv = Server(domains=[{"name": "example.org"}])
    srv.write_config()

    rc, lines = check(srv, PG % (GOOD_CONNINFO, GOOD_QUERY))
    is_(rc, 0, "a right pgsql entry passes -t (%s)" % lines)
    for q in ('"SELECT 1 FROM u WHERE a = \'%s\'"',
              '"SELECT 1 FROM u WHERE a = %s AND note <> \'it\'\'s %%\' AND b LIKE \'a%%\'"'):
        rc, lines = check(srv, PG % (GOOD_CONNINFO, q))
        is_(rc, 0, "accepted: %s (%s)" % (q, lines))

    bad(srv, "unknown conninfo keyword",
        PG % ('"hostaddr=127.0.0.1 dbnmae=mxkeep"', GOOD_QUERY), "conninfo",
        r'pgsql\.conninfo: invalid connection option "dbnmae"')
    rc, lines = check(srv, PG % ('"host=127.0.0.1 password=s3cr3t dbname"', GOOD_QUERY))
    is_(rc, 78, "a conninfo with no '=': exit 78")
    unlike("\n".join(lines), r"s3cr3t", "the reason does not echo the conninfo (a password)")
    bad(srv, "an escape inside a quoted string ('%u@%d')",
        PG % (GOOD_CONNINFO, '"SELECT 1 FROM mailbox WHERE username = \'%u@%d\'"'),
        "recipient_query", r"inside a quoted string")
    bad(srv, "an unterminated quoted string",
        PG % (GOOD_CONNINFO, '"SELECT 1 FROM mailbox WHERE username = %s AND x = \'y"'),
        "recipient_query", r"quoted string is not closed")
    bad(srv, "positive_refresh after positive_expire",
        'verify = { positive_expire = "1d";\n  positive_refresh = "7d"; };', "positive_refresh",
        r"positive_refresh must not exceed verify\.positive_expire")
    bad(srv, "negative_refresh after negative_expire",
        'verify = { negative_expire = "1h";\n  negative_refresh = "3h"; };', "negative_refresh",
        r"negative_refresh must not exceed verify\.negative_expire")

    # At start: exit 78 too.  At reload: refused, the daemon keeps serving.
    srv.extra = PG % ('"hostaddr=127.0.0.1 dbnmae=mxkeep"', GOOD_QUERY)
    srv.write_config(srv.port)
    srv.start(expect_fail=True)
    try:
        rc = srv.proc.wait(EXIT_TIMEOUT)
    except Exception:  # noqa: B902 - report and go on
        rc = None
        srv.kill9()
    srv.proc = None
    is_(rc, 78, "start with a bad conninfo: exit 78")
    srv.extra = ""
    srv.write_config(srv.port)
    srv.start()
    srv.extra = PG % (GOOD_CONNINFO, '"SELECT 1 FROM mailbox WHERE username = \'%u@%d\'"')
    srv.write_config(srv.port)
    r = srv.ctl("reload")
    is_(r.returncode, 78, "reload with '%u@%d' refused: exit 78")
    ok(srv.running(), "the daemon keeps running")
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@example.com>")
    is_(c.cmd("RCPT TO:<alice@example.org>").code, 250, "and serving with the old configuration")
    c.close()
    srv.stop()
    done()


run_main(main)
