#!/usr/bin/env python3
# 107-map-bad-start: a map mxkeepd cannot use at start is a config error
# (issue 8, 2; project rule: one line `file:line: reason`, exit 78): a
# corrupt file, an LMDB file that is not a compiled map, a missing map.
# The line names the config file and the line of `recipients`.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

EXIT_TIMEOUT = 10


def start_fails(srv, name):
    srv.start(expect_fail=True)
    try:
        rc = srv.proc.wait(EXIT_TIMEOUT)
    except Exception:  # noqa: B902 - report and go on
        rc = None
        srv.kill9()
    srv.proc = None
    is_(rc, 78, "%s: exit 78" % name)
    last = srv.log().rsplit("=== start", 1)[-1]      # this start's output only
    lines = [ln for ln in last.splitlines()[1:] if ln]
    return lines


def recipients_line(conf):
    with open(conf) as f:
        for i, ln in enumerate(f, 1):
            if "recipients" in ln:
                return i
    return -1


def main():
    require_binaries()
    srv = Server(domains=[{"name": "example.org"}])
    bad = os.path.join(srv.dir, "corrupt.lmdb")
    with open(bad, "wb") as f:
        f.write(b"not an lmdb map, just text\n" * 200)
    os.chmod(bad, 0o644)
    srv.domains = [{"name": "example.org", "recipients": "lmdb:" + bad}]
    srv.write_config()
    lines = start_fails(srv, "corrupt map")
    is_(len(lines), 1, "corrupt map: one line (%r)" % lines)
    want = r"^%s:%d: recipients: %s: " % (re.escape(srv.conf), recipients_line(srv.conf),
                                          re.escape(bad))
    like(lines[0] if lines else "", want, "corrupt map: config file:line: recipients: map: reason")
    like(lines[0] if lines else "", r"corrupt|LMDB", "corrupt map: says what is wrong")

    # An LMDB file of someone else's: valid LMDB, no mxkeep header.
    foreign = os.path.join(srv.dir, "foreign.lmdb")
    r = run(["mdb_load", "-n", "-f", "/dev/stdin", foreign],
            input=b"VERSION=3\nformat=print\ntype=btree\nHEADER=END\n a\n b\nDATA=END\n")
    if r.returncode == 0:
        os.chmod(foreign, 0o644)
        srv.domains = [{"name": "example.org", "recipients": "lmdb:" + foreign}]
        srv.write_config()
        lines = start_fails(srv, "LMDB file without a map header")
        is_(len(lines), 1, "foreign LMDB: one line")
        like(lines[0] if lines else "", r"^%s:\d+: recipients: .*not a recipient map" %
             re.escape(srv.conf), "foreign LMDB: says it is not a recipient map")
    else:
        skip("mdb_load (lmdb-utils) not available", 3)

    # A map that is not there: the config check names it.
    srv.domains = [{"name": "example.org", "recipients": "lmdb:" + os.path.join(srv.dir, "nope.lmdb")}]
    srv.write_config()
    lines = start_fails(srv, "missing map")
    is_(len(lines), 1, "missing map: one line")
    like(lines[0] if lines else "", r"^%s:\d+: recipients: .*nope\.lmdb.*No such file" %
         re.escape(srv.conf), "missing map: file:line names the map")

    # `mxkeepd -t` (config check) says the same and exits 78 too.
    srv.domains = [{"name": "example.org", "recipients": "lmdb:" + bad}]
    srv.write_config()
    r = run([MXKEEPD, "-t", "-c", srv.conf])
    is_(r.returncode, 78, "mxkeepd -t: exit 78 on a corrupt map")
    like(r.stderr.decode(), r"recipients: .*corrupt", "mxkeepd -t names the problem")


run_main(main)
