#!/usr/bin/env python3
# 10-config: -t, -V, and bad config files: exit 78 and exactly one line on
# stderr, "file:line: what is wrong".
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

EX_CONFIG = 78
# As root the daemon must drop privileges; on line 1 so line numbers hold.
USER = (' user = "%s";' % mxkeep_user()) if mxkeep_user() else ""


def base_lines(d, port):
    return [
        'hostname = "mx2.example.net";' + USER,                           # 1
        'listen = ( { address = "127.0.0.1"; port = %d; } );' % port,     # 2
        'spool = "%s";' % os.path.join(d, "spool"),                       # 3
        'limits = { message_size = 1048576; command_timeout = "5s"; };',  # 4
        'domains = (',                                                    # 5
        '  { name = "example.org"; },',                                   # 6
        '  { name = "example.net"; primary = "[127.0.0.1]:2526"; }',      # 7
        ');',                                                             # 8
    ]


def write(d, name, lines):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def check_bad(d, name, lines, line_no, why=None):
    path = write(d, name + ".conf", lines)
    r = run([MXKEEPD, "-t", "-c", path], timeout=10)
    err = r.stderr.decode("utf-8", "replace")
    is_(r.returncode, EX_CONFIG, "%s: exit 78" % name)
    is_(len(err.rstrip("\n").split("\n")) if err.strip() else 0, 1, "%s: one line on stderr" % name)
    first = err.split("\n")[0]
    if line_no is None:
        like(first, r"^%s:\d+: \S" % re.escape(path), "%s: 'file:line: reason'" % name)
    else:
        like(first, r"^%s:%d: \S" % (re.escape(path), line_no), "%s: names %s:%d" % (name, os.path.basename(path), line_no))
    if why:
        like(first, why, "%s: says what is wrong" % name)
    return first


def main():
    require_binaries(ctl=False)
    srv = Server(name="mxconf")       # for its temp dir and cleanup only
    d = srv.dir
    port = free_port()

    # -V
    r = run([MXKEEPD, "-V"], timeout=10)
    is_(r.returncode, 0, "-V exits 0")
    like((r.stdout + r.stderr).decode("latin-1"), r"mxkeep\S*\s.*\d+\.\d+", "-V prints a version")

    # A good config passes -t.
    good = write(d, "good.conf", base_lines(d, port))
    r = run([MXKEEPD, "-t", "-c", good], timeout=10)
    is_(r.returncode, 0, "-t on a good config exits 0")
    if r.returncode != 0:
        diag(r.stderr.decode("latin-1"))
    # The harness's full config (limits, control, tls...) passes too.
    full = Server(tls=True, domains=[{"name": "example.org", "recipients": ["user@example.org"]}],
                  name="mxconf2")
    full.write_config()
    r = run([MXKEEPD, "-t", "-c", full.conf], timeout=10)
    is_(r.returncode, 0, "-t on the harness config exits 0")
    if r.returncode != 0:
        diag(r.stderr.decode("latin-1"))

    L = base_lines(d, port)

    bad = list(L)
    bad[3] = "limits = { message_size = ; };"
    check_bad(d, "syntax", bad, 4)

    bad = list(L)
    bad[6] = '  { name = "example.net"; primary = "[127.0.0.1]:2526"; '   # no closing brace
    check_bad(d, "unclosed-brace", bad, None)

    bad = L[:1] + ["bogus_key = 1;"] + L[1:]
    check_bad(d, "unknown-key", bad, 2, r"bogus_key")

    bad = list(L)
    bad[3] = 'limits = { message_size = 1048576; command_timeot = "5s"; };'
    check_bad(d, "unknown-limit-key", bad, 4, r"command_timeot")

    bad = list(L)
    bad[3] = 'limits = { command_timeout = "5x"; };'
    check_bad(d, "bad-duration", bad, 4, r"command_timeout")

    bad = list(L)
    bad[3] = 'limits = { data_timeout = "-5s"; };'
    check_bad(d, "negative-duration", bad, 4, r"data_timeout")

    bad = list(L)
    bad[1] = 'listen = ( { address = "127.0.0.1"; port = 70000; } );'
    check_bad(d, "bad-port", bad, 2, r"port")

    bad = list(L)
    bad[1] = 'listen = ( { address = "127.0.0.1"; port = 0; } );'
    check_bad(d, "port-zero", bad, 2, r"port")

    bad = list(L)
    bad[1] = 'listen = ( { address = "localhost.invalid"; port = 25; } );'
    check_bad(d, "bad-address", bad, 2, r"address")

    bad = list(L)
    bad[6] = '  { name = "Example.ORG."; }'
    check_bad(d, "duplicate-domain", bad, 7, r"(?i)example\.org")

    bad = list(L)
    bad[5] = '  { name = "example.org"; recipients = "%s"; },' % os.path.join(d, "no-such.rcpts")
    check_bad(d, "missing-recipients-file", bad, 6, r"no-such\.rcpts")

    bad = list(L)
    bad[6] = '  { name = "example.net"; primary = "[127.0.0.1]:99999"; }'
    check_bad(d, "bad-primary", bad, 7, r"primary")

    bad = list(L)
    bad[6] = '  { name = "example.net"; retention = "forever"; }'
    check_bad(d, "bad-retention", bad, 7, r"retention")

    bad = list(L)
    bad[6] = '  { name = "exa mple.net"; }'
    check_bad(d, "bad-domain-name", bad, 7, r"name")

    bad = L + ['bare_newline = "sometimes";']
    check_bad(d, "bad-enum", bad, 9, r"bare_newline")

    bad = L + ['limits = { recipients = 10; };']
    check_bad(d, "duplicate-group", bad, None)

    bad = L + ['tls = { certificate = "%s"; key = "%s"; };' % (os.path.join(d, "nocert.pem"), os.path.join(d, "nokey.pem"))]
    check_bad(d, "missing-certificate", bad, 9, r"nocert\.pem")

    bad = L + ['limits = "big";']
    bad = [x for x in bad if not x.startswith("limits = {")]
    check_bad(d, "group-as-string", bad, 8, r"limits")

    bad = [x for x in L if not x.startswith("listen")]
    check_bad(d, "missing-listen", bad, None, r"listen")

    bad = L + ['domains2 = 1;']
    check_bad(d, "unknown-top-key-at-end", bad, 9, r"domains2")

    # Without -t, a bad file stops the daemon the same way.
    path = write(d, "run-bad.conf", L[:1] + ["bogus_key = 1;"] + L[1:])
    r = run([MXKEEPD, "-f", "-c", path], timeout=10)
    is_(r.returncode, EX_CONFIG, "-f with a bad config: exit 78")
    like(r.stderr.decode("latin-1"), r"^%s:2: " % re.escape(path), "-f with a bad config: file:line on stderr")

    # A config file that does not exist.
    missing = os.path.join(d, "absent.conf")
    r = run([MXKEEPD, "-t", "-c", missing], timeout=10)
    isnt(r.returncode, 0, "missing config file: non-zero exit")
    like(r.stderr.decode("latin-1"), re.escape(missing), "missing config file named on stderr")
    full.cleanup()
    srv.cleanup()


run_main(main)
