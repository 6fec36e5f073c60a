#!/usr/bin/env python3
# run-all: alone (new mail delivered within 2 s)
# 01-flush: primary down -> mail kept and probed; primary (smtp-sink) up ->
# the whole backlog flushed within a probe interval; bodies exact with one
# Received header of ours; new mail to an up destination goes out at once;
# tricky bodies byte-exact through a recording primary.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 30
PROBE_MAX = 4


def main():
    require_binaries()
    sink = SmtpSink()                                    # not started: primary down
    fake = FakeSMTP(host="127.0.0.2")
    fake.start()
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.1]:%d" % sink.port},
        {"name": "bytes.test", "primary": "[127.0.0.2]:%d" % fake.port},
    ], settings={"delivery": fast_delivery(probe_max="%ds" % PROBE_MAX)})
    srv.start()

    # --- primary down: mail stays ---
    sent = send_batch(srv, N, tag="flush")
    qids = [q for q, _ in sent]
    is_(len([q for q in qids if q]), N, "%d messages queued" % N)
    stored = {}
    for q, msg in sent:
        stored[q] = srv.body(q)
    ok(all(stored[q] is not None for q in qids), "bodies readable with mxkeepctl cat")
    for q, msg in sent:
        rec, rest = split_received(stored[q])
        if rest != msg or not rec:
            ok(False, "%s stored as sent after one Received header" % q)
            break
    else:
        ok(True, "every stored body is the sent message after one Received header")

    ok(wait_log(srv, r"destination example\.org: \w+ -> down", 8) is not None,
       "log: destination example.org goes down (nothing listens)")
    time.sleep(1.5)
    q = srv.queue()
    is_(len(q), N, "all %d messages still queued while the primary is down" % N)
    is_({r.get("state") for m in q for r in m.get("recipients", [])}, {"pending"},
        "every recipient pending")
    unlike(srv.log(), r"status=(bounced|sent)", "nothing bounced or sent while down")

    # --- primary comes up: the next probe flushes everything ---
    mark = len(srv.log())
    sink.start()
    t0 = time.monotonic()
    empty = wait_empty(srv, PROBE_MAX * 1.5 + 5)
    took = time.monotonic() - t0
    ok(empty, "queue empty after the primary came up (%.1fs)" % took)
    ok(took <= PROBE_MAX * 1.5 + 5, "flushed within probe_max + jitter + a few s")
    wait_for(lambda: sink.count() >= N, 5)
    got = sink.messages()
    is_(len(got), N, "smtp-sink got exactly %d messages" % N)
    dumped = {}
    for m in got:
        dumped.setdefault(strip_our_ar(m["data"]), []).append(m)
    missing = [q for q in qids if SmtpSink.as_dumped(stored[q]) not in dumped]
    is_(missing, [], "every stored body (our Received + original) arrived exactly, "
        "below our Authentication-Results header")
    bad_env = [m for m in got if m["mail"] is None or not m["mail"].startswith("<sender@example.com>")
               or m["rcpts"] != ["<user@example.org>"]]
    is_(len(bad_env), 0, "envelope kept: MAIL FROM:<sender@example.com>, RCPT TO:<user@example.org>")
    recv = [len(re.findall(rb"(?m)^Received:", m["data"])) for m in got]
    is_(set(recv), {1}, "each delivered message carries exactly one Received header")
    ok(all(strip_our_ar(m["data"]).startswith(b"Received: ") and
           m["data"].startswith(b"Authentication-Results: mx2.example.net;") for m in got),
       "our Authentication-Results header on top, then our Received header")
    log = srv.log()[mark:]
    n_sent = len(re.findall(r"to=<user@example\.org>, relay=[^,]*\[127\.0\.0\.1\]:%d, delay=\d+, "
                            r"dsn=2\.\d\.\d, status=sent \(250" % sink.port, log))
    is_(n_sent, N, "log: %d status=sent lines naming relay [127.0.0.1]:%d" % (N, sink.port))
    like(log, r"destination example\.org: \w+ -> up", "log: destination example.org -> up")
    for q in qids[:3]:
        like(log, r"%s: to=<user@example\.org>, .*status=sent" % q, "log line for %s" % q)

    # --- new mail for an up destination goes out at once ---
    t0 = time.monotonic()
    code, _ = send_smtplib(srv, "sender@example.com", ["user@example.org"], make_message("hot"))
    is_(code, 250, "new message accepted")
    ok(wait_for(lambda: sink.count() >= N + 1, 3, 0.05), "new message at the sink")
    took = time.monotonic() - t0
    ok(took < 2.0, "new mail to an up destination delivered within ~1 s (%.2fs)" % took)
    ok(wait_empty(srv, 5), "queue empty again")

    # --- byte-exact through a recording primary ---
    tricky = [
        make_message("dots") + b".\r\n..\r\n...three\r\n. space\r\n.\r\nend\r\n",
        make_message("8bit", extra_headers=["Content-Transfer-Encoding: 8bit"]) +
        "caf\u00e9 \u00fcber\r\n".encode("utf-8"),
        make_message("long") + b"L" * 990 + b"\r\n",
        make_message("big", size=200000),
        make_message("blank") + b"\r\n\r\n\r\n",
        make_message("fold", extra_headers=["X-Folded: one", "\ttwo", " three"]),
    ]
    tq = []
    for msg in tricky:
        code, text = send_smtplib(srv, "b@example.com", ["u@bytes.test"], msg)
        tq.append(qid_of(text))
    ok(wait_for(lambda: fake.count() >= len(tricky), 10), "tricky messages delivered to the fake")
    ok(wait_empty(srv, 10), "queue empty after the tricky messages")
    bodies = {message_id(b): b for b in fake.bodies()}
    for msg in tricky:
        mid = message_id(msg)
        b = bodies.get(mid)
        rec, rest = split_received(b)
        ok(b is not None and rest == msg, "byte-exact: %s" % mid)
        ok(rec is not None and rec.startswith(b"Received: ") and
           len(re.findall(rb"(?m)^Received:", b or b"")) == 1, "one Received added: %s" % mid)
    envs = {(m["sender"], tuple(m["rcpts"])) for m in fake.messages}
    is_(envs, {("b@example.com", ("u@bytes.test",))}, "envelope kept at the recording primary")

    is_(srv.stop(), 0, "mxkeepd exits 0 on SIGTERM")


run_main(main)
