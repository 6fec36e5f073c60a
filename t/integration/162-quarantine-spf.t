#!/usr/bin/env python3
# 162-quarantine-spf: bounce = "authenticated" with real SPF (records from
# dnsmasq, evaluated at MAIL): the primary refuses both recipients 550; the
# sender whose domain's SPF passes for us gets the failure notice, the one
# whose SPF fails does not (quarantined, reason "spf=fail"); the
# quarantined message's record shows what SPF said.
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    primary = FakeSMTP(host="127.0.0.2", name="primary.test",
                       rcpt=lambda a: "550 5.1.1 <%s>: user unknown" % a)
    primary.start()
    mxport = free_port_on("127.0.0.3")
    smx = FakeSMTP(host="127.0.0.3", port=mxport, name="mx.senders.test").start()
    dns = Dnsmasq(txt=[("good.test", "v=spf1 ip4:127.0.0.0/8 -all"),
                       ("forged.test", "v=spf1 ip4:192.0.2.0/24 -all")],
                  mx=[("good.test", "mx.senders.test", 10), ("forged.test", "mx.senders.test", 10)],
                  hosts=[("mx.senders.test", "127.0.0.3")]).start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % primary.port,
                           "bounce": "authenticated"}],
                 settings={"resolver": dns.address,
                           "delivery": fast_delivery(mx_port=mxport)})
    srv.start()
    code, text = send_smtplib(srv, "alice@good.test", ["u1@example.org"], make_message("good"))
    qg = qid_of(text)
    code, text = send_smtplib(srv, "victim@forged.test", ["u2@example.org"], make_message("bad"))
    qf = qid_of(text)
    ok(qg and qf, "both accepted")
    ok(wait_log(srv, r"%s: to=<u1@example\.org>, .*dsn=5\.1\.1, status=bounced" % qg, 15)
       is not None, "SPF-pass sender: recipient bounced")
    ok(wait_log(srv, r"%s: to=<u2@example\.org>, .*dsn=5\.1\.1, status=quarantined" % qf, 15)
       is not None, "SPF-fail sender: recipient quarantined")
    ok(wait_log(srv, r"%s: quarantined: failure notice withheld: sender not authenticated "
                r"\(spf=fail, dkim=none\); primary said 550" % qf, 5) is not None,
       "reason says spf=fail")
    ok(wait_for(lambda: smx.count() >= 1, 15), "a notice reached the senders' MX")
    time.sleep(2)
    is_([m["rcpts"] for m in smx.messages], [["alice@good.test"]],
        "exactly one notice, to the SPF-pass sender")
    r = srv.ctl("--json", "quarantine", "show", qf)
    is_(r.returncode, 0, "show exits 0")
    m = json.loads(r.stdout.decode()) if r.returncode == 0 else {}
    like(m.get("auth_results", ""), r"spf=fail smtp\.mailfrom=\S*forged\.test",
         "record keeps what SPF said")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
