#!/usr/bin/env python3
# 182-verify-probe-exit (trial 8): `mxkeepctl verify ADDRESS --probe`
# with the operator's mistake exits with the code mxkeepctl(8) gives that
# mistake everywhere, not 69 ("daemon not running"), which scripts and
# monitoring read as mxkeepd being down:
#  - not an address ("noat"): 64 (EX_USAGE)
#  - an address of a domain not served here: 67 (EX_NOUSER)
# and a real probe still answers (a scripted primary: valid, exit 0), and
# 69 still means what it says (daemon stopped).
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    prim = FakeSMTP().start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.1]:%d" % prim.port,
                           "verify": "callout"}],
                 settings={"verify": {"probe_timeout": "5s", "reply_wait": "5s"}})
    srv.start()
    r = srv.ctl("verify", "alice@example.org", "--probe")
    is_(r.returncode, 0, "a probe of a served address: exit 0")
    like(r.stdout.decode(), r"^alice@example\.org\s+valid", "the primary's answer")
    r = srv.ctl("verify", "noat", "--probe")
    is_(r.returncode, 64, "not an address: exit 64 (%s)" % r.stderr.decode().strip())
    like(r.stderr.decode(), r"^mxkeepctl: .*not an address", "one line saying why")
    r = srv.ctl("verify", "x@unserved.example", "--probe")
    is_(r.returncode, 67, "a domain not served: exit 67 (%s)" % r.stderr.decode().strip())
    like(r.stderr.decode(), r"^mxkeepctl: .*not a served domain", "one line saying why")
    ok(srv.running(), "the daemon keeps running")
    srv.stop()
    r = srv.ctl("verify", "alice@example.org", "--probe")
    is_(r.returncode, 69, "daemon stopped: exit 69")
    prim.stop()
    done()


run_main(main)
