#!/usr/bin/env python3
# 161-quarantine-5xx: bounce = "authenticated" and the primary refuses a
# recipient 550 for mail from a sender nobody vouched for: the message goes
# to quarantine (reason names the primary's reply), no notice leaves.
# Then the admin's ways out: release --deliver (the primary takes it now),
# release --notify (the withheld notice goes to the sender), delete.
# Counted in mxkeepctl stats/summary, /metrics and /status.
import json
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def held(srv):
    r = srv.ctl("--json", "quarantine", "list")
    return [json.loads(x)["qid"] for x in r.stdout.decode().splitlines() if x.strip()]


def main():
    require_binaries()
    refuse = [True]
    primary = FakeSMTP(host="127.0.0.2", name="primary.test",
                       rcpt=lambda a: "550 5.1.1 <%s>: user unknown" % a if refuse[0] else None)
    primary.start()
    mxport = free_port_on("127.0.0.3")
    smx = FakeSMTP(host="127.0.0.3", port=mxport, name="mx.forged.test").start()
    dns = Dnsmasq(mx=[("forged.test", "mx.forged.test", 10)],
                  hosts=[("mx.forged.test", "127.0.0.3")]).start()
    mport = free_port()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % primary.port,
                           "bounce": "authenticated"}],
                 settings={"resolver": dns.address,
                           "delivery": fast_delivery(mx_port=mxport),
                           "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()
    qids = []
    for i in range(3):
        code, text = send_smtplib(srv, "victim%d@forged.test" % i, ["u%d@example.org" % i],
                                  make_message("m%d" % i))
        qids.append(qid_of(text))
    ok(all(qids), "three messages queued")
    for i, q in enumerate(qids):
        ok(wait_log(srv, r"%s: to=<u%d@example\.org>, .*dsn=5\.1\.1, status=quarantined" % (q, i),
                    15) is not None, "%s: 550 from the primary -> quarantined" % q)
    ok(wait_log(srv, r"%s: quarantined: failure notice withheld: sender not authenticated "
                r"\(spf=none, dkim=none\); primary said 550 5\.1\.1" % qids[0], 5) is not None,
       "reason names the authentication and the primary's reply")
    ok(wait_for(lambda: sorted(held(srv)) == sorted(qids), 5), "all three in quarantine")
    time.sleep(2)
    is_(smx.count(), 0, "no notice to the forged senders")
    is_(len(primary.messages), 0, "the primary took nothing")

    r = srv.ctl("--json", "stats")
    st = json.loads(r.stdout.decode()) if r.returncode == 0 else {}
    is_(st.get("quarantine_messages"), 3, "stats: quarantine_messages 3")
    is_(st.get("quarantined_bounced_total"), 3, "stats: quarantined_bounced_total 3")
    r = srv.ctl("--json", "summary")
    is_(json.loads(r.stdout.decode()).get("quarantine_messages"), 3, "summary counts them")
    code, body = http_get(mport, "/metrics")
    like(body, r"(?m)^mxkeep_quarantine_messages 3$", "/metrics: mxkeep_quarantine_messages 3")
    like(body, r'(?m)^mxkeep_quarantined_total\{reason="bounced"\} 3$',
         "/metrics: mxkeep_quarantined_total{reason=\"bounced\"} 3")
    code, body = http_get(mport, "/status")
    like(body, r'<div class="n">3</div><div class="l">quarantined</div>', "/status shows 3")

    # release --deliver: the primary now knows the user.
    refuse[0] = False
    r = srv.ctl("quarantine", "release", "--deliver", qids[0])
    is_(r.returncode, 0, "release --deliver exits 0")
    ok(wait_for(lambda: any(m["rcpts"] == ["u0@example.org"] for m in primary.messages), 15),
       "released message delivered to the primary")
    ok(wait_log(srv, r"%s: to=<u0@example\.org>, .*status=sent" % qids[0], 5) is not None,
       "logged as sent")

    # release --notify: the withheld notice goes out.
    r = srv.ctl("quarantine", "--notify", "release", qids[1])
    is_(r.returncode, 0, "release --notify exits 0 (options anywhere)")
    ok(wait_for(lambda: smx.count() >= 1, 15), "a notice reached the sender's MX")
    is_([m["rcpts"] for m in smx.messages], [["victim1@forged.test"]], "to the released sender")

    # delete
    r = srv.ctl("quarantine", "delete", qids[2])
    is_(r.returncode, 0, "delete exits 0")
    ok(wait_log(srv, r"%s: removed from quarantine by the administrator" % qids[2], 5)
       is not None, "delete logged")
    ok(wait_for(lambda: held(srv) == [], 5), "quarantine empty")
    ok(wait_empty(srv, 15), "queue empty")
    r = srv.ctl("quarantine", "show", qids[2])
    ok(r.returncode != 0, "show of a deleted message fails")
    r = srv.ctl("quarantine", "release", qids[2])
    is_(r.returncode, 64, "release without --deliver/--notify is a usage error")
    time.sleep(1)
    is_(smx.count(), 1, "exactly one notice in all")
    code, body = http_get(mport, "/metrics")
    like(body, r"(?m)^mxkeep_quarantine_messages 0$", "/metrics gauge back to 0")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
