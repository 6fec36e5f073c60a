#!/usr/bin/env python3
# 210-keep-delivered: a domain with keep_delivered keeps a copy of what
# its primary (a capturing python primary) accepted: the copies stay in the
# spool marked delivered with their delivery time, are never sent again
# (not by probes, not by a flush, not after a restart), are not queued mail
# (queue listing, count, spool_messages) and are counted apart in
# mxkeepctl summary (text and JSON), stats, /metrics and /status.  A domain
# without keep_delivered removes delivered mail as before.
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 3                   # messages to keep.test, the first to two recipients


def prom(text, name):
    m = re.search(r"(?m)^%s (\d+)$" % re.escape(name), text)
    return int(m.group(1)) if m else None


def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2")
    fake.start()
    mport = free_port()
    srv = Server(name="mxkeep210", domains=[
        {"name": "keep.test", "primary": "[127.0.0.2]:%d" % fake.port, "keep_delivered": "1h"},
        {"name": "plain.test", "primary": "[127.0.0.2]:%d" % fake.port},
    ], settings={"delivery": fast_delivery(),
                 "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()

    qids = []
    t0 = int(time.time())
    for i in range(N):
        rcpts = ["a@keep.test", "b@keep.test"] if i == 0 else ["a@keep.test"]
        code, text = send_smtplib(srv, "s@sender.test", rcpts, make_message("keep%d" % i))
        is_(code, 250, "message %d to keep.test accepted" % i)
        qids.append(qid_of(text))
    code, text = send_smtplib(srv, "s@sender.test", ["p@plain.test"], make_message("plain"))
    plain = qid_of(text)
    ok(wait_for(lambda: fake.count() >= N + 1, 15), "primary received all %d messages" % (N + 1))
    t1 = int(time.time())
    ok(wait_empty(srv, 10), "queue listing empty: kept copies are not queued mail")
    ok(wait_log(srv, r"%s: to=<p@plain\.test>, .*status=sent" % plain, 5), "plain.test delivered")

    # Kept, marked delivered, with the delivery time.
    r = srv.ctl("--json", "show", qids[0])
    is_(r.returncode, 0, "show a kept message")
    shown = json.loads(r.stdout.decode()) if r.returncode == 0 else {}
    states = sorted(x.get("state") for x in shown.get("recipients", []))
    is_(states, ["kept", "kept"], "both its recipients are kept")
    dl = [x.get("delivered") for x in shown.get("recipients", [])]
    ok(dl and all(isinstance(d, int) and t0 - 1 <= d <= t1 + 1 for d in dl),
       "marked with their delivery time (%s)" % dl)
    is_([x.get("kept_until") - x.get("delivered") for x in shown.get("recipients", [])
         if isinstance(x.get("delivered"), int)], [3600, 3600], "kept until delivery + keep_delivered")
    like(srv.ctl("show", qids[0]).stdout.decode(),
         r"state:      kept\n.*\n.*\n.*\n  delivered:  \S+Z \(copy kept until \S+Z\)",
         "show: the delivery time and until when the copy is kept")
    is_(srv.ctl("show", plain).returncode != 0, True, "plain.test's delivered message is gone")
    r = srv.ctl("--json", "replay", "keep.test", "--since", "-1h")
    is_(json.loads(r.stdout.decode()).get("copies") if r.returncode == 0 else r.stderr, N + 1,
        "the delivery times are in the index (replay counts %d copies)" % (N + 1))

    # Counted apart.
    r = srv.ctl("--json", "summary")
    s = json.loads(r.stdout.decode()) if r.returncode == 0 else {}
    is_(s.get("kept"), {"copies": N + 1, "messages": N,
                        "bytes": s.get("kept", {}).get("bytes")}, "summary: kept copies and messages")
    ok((s.get("kept") or {}).get("bytes", 0) > 0, "summary: their octets")
    rows = {d["domain"]: d for d in s.get("domains", [])}
    is_(rows.get("keep.test", {}).get("kept_copies"), N + 1, "summary: keep.test's copies")
    is_(rows.get("keep.test", {}).get("messages"), 0, "summary: nothing queued for keep.test")
    is_(rows.get("plain.test", {}).get("kept_copies"), 0, "summary: plain.test keeps nothing")
    r = srv.ctl("summary")
    like(r.stdout.decode(), r"kept keep\.test: %d copies of delivered mail" % (N + 1),
         "summary text: kept copies per domain")
    like(r.stdout.decode(), r"kept: %d copies in %d messages kept only for them" % (N + 1, N),
         "summary text: totals")
    is_(srv.ctl("count").stdout.decode().strip(), "0", "count: no queued mail")
    st = json.loads(srv.ctl("--json", "stats").stdout.decode())
    is_((st.get("queue_messages"), st.get("kept_copies"), st.get("kept_messages"),
         st.get("kept_copies_kept_total")), (0, N + 1, N, N + 1), "stats: kept apart")
    code, metrics = http_get(mport, "/metrics")
    is_(code, 200, "/metrics answers")
    is_(prom(metrics, "mxkeep_kept_copies"), N + 1, "/metrics: mxkeep_kept_copies")
    is_(prom(metrics, "mxkeep_kept_messages"), N, "/metrics: mxkeep_kept_messages")
    is_(prom(metrics, "mxkeep_spool_messages"), 0, "/metrics: spool_messages leaves them out")
    like(metrics, r'(?m)^mxkeep_kept_copies_total\{event="kept"\} %d$' % (N + 1),
         "/metrics: kept_copies_total{event=kept}")
    code, page = http_get(mport, "/status")
    like(page, r"kept copies", "/status: a kept copies total")

    # Never delivered again: probes, a flush, a restart.
    srv.ctl("flush", "keep.test")
    time.sleep(3)
    is_(fake.count(), N + 1, "no copy sent again after a flush and a few probe intervals")
    srv.restart()
    time.sleep(3)
    is_(fake.count(), N + 1, "nor after a restart")
    r = srv.ctl("--json", "summary")
    s = json.loads(r.stdout.decode()) if r.returncode == 0 else {}
    is_((s.get("kept") or {}).get("copies"), N + 1, "kept copies survive the restart")
    sent = len(re.findall(r"to=<[ab]@keep\.test>, .*status=sent", srv.log()))
    is_(sent, N + 1, "log: one status=sent line per copy")
    ok(t1 >= t0, "clock sane")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
