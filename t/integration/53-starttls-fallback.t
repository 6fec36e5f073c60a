#!/usr/bin/env python3
# 53-starttls-fallback (issue 7, item 13): policy "may"; the primary answers
# STARTTLS with "220 Ready to start TLS" and, in the same segment, a clear
# text line, then closes.  0.1.0 logged "data after the STARTTLS reply",
# marked the destination down and retried the same STARTTLS forever.
# Right: under "may" any failure of the TLS step means reconnect in clear and
# deliver; under "encrypt" the mail is deferred with the reason (nothing in
# clear, nothing bounced, no tight loop).
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    may = FakeSMTP(host="127.0.0.2", inject_tls=True, name="may.example.org").start()
    enc = FakeSMTP(host="127.0.0.2", inject_tls=True, name="enc.example.org").start()
    srv = Server(domains=[{"name": "may.test", "primary": "[127.0.0.2]:%d" % may.port, "tls": "may"},
                          {"name": "enc.test", "primary": "[127.0.0.2]:%d" % enc.port,
                           "tls": "encrypt"}],
                 settings={"delivery": fast_delivery(probe_min="1s", probe_max="2s")})
    srv.start()
    send_batch(srv, 3, rcpt="u@may.test", tag="may")
    send_batch(srv, 2, rcpt="u@enc.test", tag="enc")

    ok(wait_for(lambda: may.count() >= 3, 10), "may: all 3 delivered after the failed STARTTLS")
    is_([m["tls"] for m in may.messages], [False] * len(may.messages), "may: in clear")
    n_inj = may.n_inject
    ok(1 <= n_inj <= 2, "may: the broken STARTTLS tried once, not forever (%d)" % n_inj)
    log = srv.log()
    like(log, r"destination may\.test: TLS failed \(.*\); next connections in clear",
         "log: TLS step failed, next connections in clear")
    unlike(log, r"destination may\.test: \w+ -> down", "may: destination never marked down")

    ok(wait_log(srv, r"destination enc\.test: \w+ -> down: .*STARTTLS", 10) is not None,
       "encrypt: deferred, the reason names the STARTTLS failure")
    n0 = enc.n_inject
    time.sleep(4)
    is_(enc.count(), 0, "encrypt: nothing delivered in clear")
    n_enc = enc.n_inject - n0
    ok(n_enc <= 4, "encrypt: retried with back-off (probe_max 2 s), not in a loop "
                   "(%d STARTTLS in 4 s)" % n_enc)
    st = rcpt_states(srv)
    is_(st.get("u@enc.test"), "pending", "encrypt: mail stays pending")
    unlike(srv.log(), r"status=bounced", "nothing bounced")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
