#!/usr/bin/env python3
# run-all: alone (250 within 1 s)
# 158-auth-slow-dns (issue 9, section 3): authentication never delays the
# 250.  With a resolver that never answers, a DKIM-signed message is
# accepted at once (the end of data never waits for SPF; DKIM runs after
# the commit), and still reaches the primary, later,
# with spf=temperror and dkim=temperror in its one A-R header: nothing is
# lost or held for good because DNS is down.
import base64
import hashlib
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def signed(msg):
    """A DKIM-Signature header (its key is never found: DNS is silent)."""
    bh = base64.b64encode(hashlib.sha256(msg.split(b"\r\n\r\n", 1)[1]).digest()).decode()
    return ("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=pass.test; s=sel1;\r\n"
            "\th=from:to:subject; bh=%s;\r\n\tb=dGVzdA==\r\n" % bh).encode() + msg


def main():
    require_binaries()
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))         # bound, never read: queries vanish
    prim = FakeSMTP(host="127.0.0.2", name="primary.example.org").start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"resolver": "127.0.0.1:%d" % hole.getsockname()[1],
                           "spf": {"timeout": "0s"}, "dkim": {"timeout": "1s"},
                           "delivery": fast_delivery()})
    srv.start()
    c = srv.raw()
    c.ehlo("client.pass.test")
    t0 = time.monotonic()
    rs = c.transaction("sender@pass.test", ["user@example.org"], signed(make_message("slow-dkim")))
    took = time.monotonic() - t0
    is_(rs[-1].code, 250, "accepted")
    ok(took < 1.0, "250 after %.2fs: neither SPF nor DKIM waited on DNS" % took)
    c.cmd("QUIT")
    c.close()
    ok(wait_for(lambda: prim.count() == 1, 30, 0.2), "delivered once DKIM gave up")
    body = prim.bodies()[0] if prim.count() else b""
    head = re.sub(r"\r\n[ \t]+", " ", body.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
    ars = [ln for ln in head.split("\r\n") if ln.lower().startswith("authentication-results:")]
    is_(len(ars), 1, "one A-R header")
    like(ars[0] if ars else "", r"spf=temperror smtp\.mailfrom=sender@pass\.test",
         "SPF not finished at end of data: temperror")
    like(ars[0] if ars else "", r"dkim=temperror header\.d=pass\.test header\.s=sel1",
         "key not found for lack of DNS: temperror")
    hole.close()
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
