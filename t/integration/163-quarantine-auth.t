#!/usr/bin/env python3
# 163-quarantine-auth (issue 9, sections 3 and 4): a message a milter
# quarantines keeps its authentication results.  A DKIM-signed message
# (key served by dnsmasq) is quarantined by the test milter; its
# signature is verified all the same and the result written into its
# record, so when `mxkeepctl quarantine release --deliver` lets it go, the
# primary's Authentication-Results header says dkim=pass (and SPF's
# verdict), as it would for mail that was never held.  On the old code a
# quarantined message was never verified: it left with no dkim= at all.
import os
import subprocess
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

MILTER = os.path.join(ROOT, "t", "lib", "test_milter.py")
SYSPY = "/usr/bin/python3"


def main():
    require_binaries()
    if subprocess.run([SYSPY, "-c", "import Milter"], stderr=subprocess.DEVNULL).returncode:
        skip_all("python3-milter is not installed")
    kdir, txt, key = dkim_key()
    mport = free_port()
    proc = subprocess.Popen([SYSPY, MILTER, "inet:%d@127.0.0.1" % mport, "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ok(wait_for(lambda: port_open("127.0.0.1", mport), 10), "test milter listens")
        run(mport, txt, key)
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(kdir, ignore_errors=True)


def run(mport, txt, key):
    dns, prim, srv = dkim_world(txt, {"milters": [{"socket": "inet:127.0.0.1:%d" % mport,
                                                   "timeout": "5s"}]})
    signed = dkim_sign(make_message("held-signed"), "pass.test", "sel1", key)
    c = srv.raw()
    c.ehlo("client.example.com")
    r = c.transaction("sender@pass.test", ["quarantine@example.org"], signed)[-1]
    is_(r.code, 250, "signed message to quarantine@: 250")
    qid = qid_of(r.text)
    ok(wait_log(srv, r"%s: quarantined: held by test milter" % qid, 10) is not None,
       "quarantined by the milter")
    ok(wait_log(srv, r"%s: dkim: dkim=pass header\.d=pass\.test header\.s=sel1" % qid, 15)
       is not None, "verified while in quarantine")
    time.sleep(1)
    is_(prim.count(), 0, "nothing delivered from quarantine")
    r = srv.ctl("quarantine", "release", "--deliver", qid)
    is_(r.returncode, 0, "quarantine release --deliver")
    ok(wait_for(lambda: prim.count() == 1, 15), "released message delivered")
    ars = ar_of(prim.bodies()[0]) if prim.count() else []
    is_(len(ars), 1, "one Authentication-Results header")
    like(ars[0] if ars else "", r"dkim=pass header\.d=pass\.test header\.s=sel1",
         "the DKIM result went with it")
    like(ars[0] if ars else "", r"spf=fail smtp\.mailfrom=sender@pass\.test",
         "and SPF's, in the same header")
    c.cmd("QUIT")
    c.close()
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
