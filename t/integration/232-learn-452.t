#!/usr/bin/env python3
# 232-learn-452 (issue 10, 1): a primary that declares nothing and answers
# the 4th and later RCPTs of a transaction "452 4.5.3 Too many
# recipients".  The limit is learned per primary HOST: a second domain
# served by the same primary sends at most 3 RCPTs from its first
# transaction on.  Every recipient of both is delivered (none bounces),
# and show-dest shows "rcpt_max 3 (learned)" for both.
import os
import sys
import urllib.request
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

LIMIT = 3
N = 8


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", rcpt_max=LIMIT, rcpt_max_reply="452 4.5.3 Too many recipients",
                    name="primary.example.org").start()
    p = "[127.0.0.2]:%d" % prim.port
    mport = free_port()
    srv = Server(domains=[{"name": "example.org", "primary": p}, {"name": "example.net", "primary": p}],
                 settings={"delivery": fast_delivery(probe_min="60s", probe_max="120s"),
                           "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()
    a = ["u%d@example.org" % i for i in range(N)]
    code, text = send_smtplib(srv, "alice@sender.test", a, make_message("org"))
    is_(code, 250, "8 recipients of example.org accepted")
    got = lambda dom: sorted(r for m in prim.messages for r in m["rcpts"] if r.endswith(dom))
    ok(wait_for(lambda: len(got("example.org")) >= N, 10), "all of example.org delivered")
    is_(got("example.org"), sorted(a), "each once")
    n452 = len([x for x, c in prim.rcpt_log if c == 452])
    is_(n452, N - LIMIT, "452 only in the first transaction (%d)" % n452)

    b = ["v%d@example.net" % i for i in range(N)]
    code, text = send_smtplib(srv, "alice@sender.test", b, make_message("net"))
    is_(code, 250, "8 recipients of example.net accepted")
    ok(wait_for(lambda: len(got("example.net")) >= N, 10), "all of example.net delivered")
    is_(got("example.net"), sorted(b), "each once")
    is_(len([x for x, c in prim.rcpt_log if c == 452]), n452,
        "the other domain of the same primary kept to the learned limit: no new 452")
    ok(all(len(m["rcpts"]) <= LIMIT for m in prim.messages), "no transaction above %d" % LIMIT)
    ok(wait_empty(srv, 10), "queue empty")

    for dom in ("example.org", "example.net"):
        r = srv.ctl("show-dest", dom)
        like(r.stdout.decode(), r"rcpt_max 3 \(learned\)", "show-dest %s: rcpt_max 3 (learned)" % dom)
    j = json.loads(srv.ctl("--json", "show-dest", "example.net").stdout.decode())
    is_((j.get("rcpt_max"), j.get("rcpt_max_source")), (3, "learned"), "--json: learned")
    m = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
    like(m, r'mxkeep_primary_limit\{domain="example\.net",host="127\.0\.0\.2:\d+",limit="rcpt_max",'
         r'source="learned"\} 3', "/metrics: the learned limit")
    like(m, r'(?m)^mxkeep_destination_concurrency\{domain="example\.net"\} \d+$',
         "/metrics: the current concurrency")
    log = srv.log()
    unlike(log, r"status=bounced", "nothing bounced")
    like(log, r"takes 3 recipients per transaction \(learned\)", "log: learned once")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
