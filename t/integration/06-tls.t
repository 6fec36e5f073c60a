#!/usr/bin/env python3
# 06-tls: STARTTLS to a primary with a self-signed certificate under
# tls = may, encrypt, verify with the right pin (delivered over TLS) and a
# wrong pin (not delivered, destination down, the log says why); a broken
# handshake under may is retried in clear; encrypt without STARTTLS on
# offer is not delivered; tls = none never starts TLS.
import os
import sys
import tempfile
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    cdir = tempfile.mkdtemp(prefix="tlscert.")
    atexit.register(shutil.rmtree, cdir, True)
    cert = make_cert(cdir, cn="primary.example.test")
    pin = cert_fingerprint(cert[0])
    wrong = "sha256:" + "00" * 32
    fakes = {
        "may.test": FakeSMTP(host="127.0.0.2", tls=cert),
        "enc.test": FakeSMTP(host="127.0.0.2", tls=cert),
        "pin.test": FakeSMTP(host="127.0.0.2", tls=cert),
        "badpin.test": FakeSMTP(host="127.0.0.2", tls=cert),
        "broken.test": FakeSMTP(host="127.0.0.2", bad_tls=True),
        "noenc.test": FakeSMTP(host="127.0.0.2"),
        "none.test": FakeSMTP(host="127.0.0.2", tls=cert),
    }
    pol = {"may.test": {"tls": "may"}, "enc.test": {"tls": "encrypt"},
           "pin.test": {"tls": "verify", "tls_fingerprint": pin},
           "badpin.test": {"tls": "verify", "tls_fingerprint": wrong},
           "broken.test": {"tls": "may"}, "noenc.test": {"tls": "encrypt"},
           "none.test": {"tls": "none"}}
    doms = []
    for d, f in fakes.items():
        f.start()
        e = {"name": d, "primary": "[127.0.0.2]:%d" % f.port}
        e.update(pol[d])
        doms.append(e)
    srv = Server(domains=doms, settings={"delivery": fast_delivery(probe_min="1s", probe_max="2s")})
    srv.start()
    for d in fakes:
        send_batch(srv, 2, rcpt="u@" + d, tag=d.split(".")[0])

    for d in ("may.test", "enc.test", "pin.test"):
        f = fakes[d]
        ok(wait_for(lambda: f.count() >= 2, 10), "%s: delivered" % d)
        is_([m["tls"] for m in f.messages], [True] * len(f.messages), "%s: over TLS" % d)
        ok(any(c.upper() == b"STARTTLS" for c in f.commands), "%s: STARTTLS sent" % d)
        ehlos = [c for c in f.commands if c.upper().startswith(b"EHLO")]
        ok(len(ehlos) >= 2, "%s: EHLO again after STARTTLS" % d)
        if f.messages:
            body = f.messages[0]["body"]
            is_(len(re.findall(rb"(?m)^Received:", body)), 1, "%s: body intact (one Received)" % d)

    f = fakes["broken.test"]
    ok(wait_for(lambda: f.count() >= 2, 12), "broken.test (may, handshake garbage): delivered")
    is_([m["tls"] for m in f.messages], [False] * len(f.messages), "broken.test: in clear")
    like(srv.log(), r"destination broken\.test: TLS failed .*in clear", "log: TLS failed, next in clear")

    f = fakes["none.test"]
    ok(wait_for(lambda: f.count() >= 2, 10), "none.test: delivered")
    ok(not any(c.upper() == b"STARTTLS" for c in f.commands), "none.test: no STARTTLS although offered")

    ok(wait_log(srv, r"destination badpin\.test: \w+ -> down: .*fingerprint", 10) is not None,
       "badpin.test: destination down, log names the fingerprint mismatch")
    ok(wait_log(srv, r"destination noenc\.test: \w+ -> down: .*(TLS|STARTTLS)", 10) is not None,
       "noenc.test: destination down, log says TLS is required")
    time.sleep(2)
    is_(fakes["badpin.test"].count(), 0, "badpin.test: nothing delivered")
    is_(fakes["noenc.test"].count(), 0, "noenc.test: nothing delivered in clear under encrypt")
    st = rcpt_states(srv)
    is_((st.get("u@badpin.test"), st.get("u@noenc.test")), ("pending", "pending"),
        "their mail stays pending")
    unlike(srv.log(), r"status=bounced", "nothing bounced")
    shutil.rmtree(cdir, ignore_errors=True)
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
