#!/usr/bin/env python3
# 212-keep-expiry: kept copies go after keep_delivered (a short one here),
# removed by the expiry with a log line naming the queue ID; a message
# whose other recipient is still waiting keeps that recipient (mail), only
# the copy goes; the counters say so; nothing is sent again or bounced.
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

KEEP = 4                # seconds


def kept(srv):
    r = srv.ctl("--json", "summary")
    return (json.loads(r.stdout.decode()).get("kept") or {}) if r.returncode == 0 else {}


def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2")
    fake.start()
    srv = Server(name="mxkeep212", domains=[
        {"name": "keep.test", "primary": "[127.0.0.2]:%d" % fake.port,
         "keep_delivered": "%ds" % KEEP},
        {"name": "held.test", "primary": "[127.0.0.2]:%d" % fake.port, "hold": True},
    ], settings={"delivery": fast_delivery()})
    srv.start()

    code, text = send_smtplib(srv, "s@sender.test", ["a@keep.test"], make_message("one"))
    q1 = qid_of(text)
    # One message to a kept domain and to a held one: the copy goes, the
    # mail for held.test stays.
    code, text = send_smtplib(srv, "s@sender.test", ["a@keep.test", "h@held.test"],
                              make_message("two"))
    q2 = qid_of(text)
    ok(q1 and q2, "two messages accepted")
    ok(wait_for(lambda: fake.count() >= 2, 15), "both delivered to keep.test's primary")
    t_done = time.monotonic()
    ok(wait_for(lambda: kept(srv).get("copies") == 2, 5), "two copies kept")
    is_(kept(srv).get("messages"), 1, "one message kept only for its copy (the other is mail)")
    time.sleep(max(0, KEEP - 2 - (time.monotonic() - t_done)))
    is_(kept(srv).get("copies"), 2, "still kept before keep_delivered is over")

    ok(wait_log(srv, r"%s: 1 kept copy removed: keep_delivered over" % q1, KEEP + 8),
       "log: %s's copy removed after keep_delivered" % q1)
    ok(wait_log(srv, r"%s: 1 kept copy removed: keep_delivered over" % q2, 5),
       "log: %s's copy removed too" % q2)
    ok(wait_for(lambda: kept(srv).get("copies") == 0, 5), "no copy left")
    is_(kept(srv).get("messages"), 0, "no kept message left")
    is_(srv.ctl("show", q1).returncode, 66, "%s gone from the spool" % q1)
    r = srv.ctl("--json", "show", q2)
    shown = json.loads(r.stdout.decode()) if r.returncode == 0 else {}
    is_(sorted((x.get("addr"), x.get("state")) for x in shown.get("recipients", [])),
        [("a@keep.test", "sent"), ("h@held.test", "pending")],
        "%s stays for held.test; its keep.test recipient is sent, no copy" % q2)
    st = json.loads(srv.ctl("--json", "stats").stdout.decode())
    is_((st.get("kept_copies_kept_total"), st.get("kept_copies_expired_total")), (2, 2),
        "stats: 2 kept, 2 expired")
    is_(fake.count(), 2, "nothing sent again")
    unlike(srv.log(), r"status=(bounced|expired)|non-delivery", "no bounce, no notice")
    is_(srv.ctl("replay", "keep.test", "--since", "-1h").returncode, 0, "replay count runs")
    like(srv.ctl("replay", "keep.test", "--since", "-1h").stdout.decode(),
         r"0 kept copies .*nothing to replay", "nothing left to replay")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
