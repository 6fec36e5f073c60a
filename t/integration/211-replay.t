#!/usr/bin/env python3
# 211-replay: the primary (a capturing python primary) "was restored from a
# backup": mxkeepctl replay counts the kept copies delivered in a span of
# delivery times (--since, --until, ISO 8601 or relative), then with --yes
# the daemon queues them again and the domain flushes, so the primary gets
# those messages a second time (and only those); --recipient filters;
# --json; with the daemon stopped the count still works and --yes is
# refused with a clear message; bad arguments get usage errors.
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403



def send(srv, rcpt, tag):
    code, text = send_smtplib(srv, "s@sender.test", [rcpt], make_message(tag))
    return qid_of(text) if code == 250 else None


def copies(fake):
    out = {}
    for b in fake.bodies():
        mid = message_id(b)
        out[mid] = out.get(mid, 0) + 1
    return out


def replay(srv, *args):
    r = srv.ctl("--json", "replay", "keep.test", *args)
    try:
        return r.returncode, json.loads(r.stdout.decode()), r.stderr.decode()
    except ValueError:
        return r.returncode, None, r.stderr.decode()


def main():
    require_binaries()
    fake = FakeSMTP(host="127.0.0.2")
    fake.start()
    srv = Server(name="mxkeep211", domains=[
        {"name": "keep.test", "primary": "[127.0.0.2]:%d" % fake.port, "keep_delivered": "1h"},
    ], settings={"delivery": fast_delivery()})
    srv.start()

    old = [make_message("old-a"), make_message("old-b")]
    q_old = [send(srv, "a@keep.test", "old-a"), send(srv, "b@keep.test", "old-b")]
    ok(all(q_old), "two messages accepted")
    ok(wait_for(lambda: fake.count() >= 2, 15), "delivered to the primary")
    ok(wait_empty(srv, 10), "nothing queued")
    time.sleep(2.2)
    t_mid = time.time() - 1          # after the first deliveries, a second of margin
    time.sleep(1.2)
    q_new = [send(srv, "a@keep.test", "new-1"), send(srv, "a@keep.test", "new-2")]
    ok(wait_for(lambda: fake.count() >= 4, 15), "two more delivered")
    ok(wait_empty(srv, 10), "nothing queued")
    mids = {q: message_id(srv.body(q)) for q in q_old + q_new}

    # Counts first, nothing changes.
    rc, out, _ = replay(srv, "--since", iso(t_mid))
    is_((rc, out and out.get("copies"), out and out.get("messages"), out and out.get("replayed")),
        (0, 2, 2, False), "--since the middle: the 2 later copies of 2 messages, nothing done "
        "without --yes")
    rc, out, _ = replay(srv, "--since", "-1h", "--until", iso(t_mid))
    is_((rc, out and out.get("copies")), (0, 2), "--until the middle: the 2 earlier copies")
    rc, out, _ = replay(srv, "--since", "-1h", "--recipient", "B@keep.test")
    is_((rc, out and out.get("copies")), (0, 1), "--recipient b@: 1 copy")
    r = srv.ctl("replay", "keep.test", "--since", iso(t_mid))
    like(r.stdout.decode(), r"keep\.test: 2 kept copies of 2 messages delivered since \S+Z would be queued "
         r"again \(add --yes to do it\)", "text: the count and how to do it")
    time.sleep(1.5)
    is_(fake.count(), 4, "a count sends nothing")

    # --yes: queued again, delivered again.
    mark = len(srv.log())
    rc, out, _ = replay(srv, "--since", iso(t_mid), "--yes")
    is_((rc, out and out.get("copies"), out and out.get("messages"), out and out.get("replayed")),
        (0, 2, 2, True), "--yes: 2 copies of 2 messages queued again")
    ok(wait_for(lambda: fake.count() >= 6, 15), "the primary received them again")
    time.sleep(1)
    c = copies(fake)
    is_([c.get(mids[q]) for q in q_new], [2, 2], "each replayed message twice in total")
    is_([c.get(mids[q]) for q in q_old], [1, 1], "the earlier ones once")
    log = srv.log()[mark:]
    for q in q_new:
        like(log, r"%s: kept copies to keep\.test queued again \(replay\)" % q,
             "log: %s queued again" % q)
        like(log, r"%s: to=<a@keep\.test>, .*status=sent" % q, "log: %s sent again" % q)
    like(log, r"replay keep\.test: 2 kept copies of 2 messages queued again", "log: the total")
    ok(wait_empty(srv, 10), "nothing left queued")
    rc, out, _ = replay(srv, "--since", "-1h")
    is_(out and out.get("copies"), 4, "delivered again, kept again: still 4 copies")

    # --recipient with --yes: only that recipient's copy.
    rc, out, _ = replay(srv, "--since", "-1h", "--recipient", "b@keep.test", "--yes")
    is_((rc, out and out.get("copies")), (0, 1), "--recipient b@ --yes: one copy")
    ok(wait_for(lambda: fake.count() >= 7, 15), "the primary received it")
    time.sleep(1)
    c = copies(fake)
    is_((c.get(mids[q_old[1]]), c.get(mids[q_old[0]])), (2, 1), "b@ twice, a@ still once")
    is_(fake.count(), 7, "nothing else sent")
    b_rcpts = [m["rcpts"] for m in fake.messages if message_id(m["body"]) == mids[q_old[1]]]
    is_(b_rcpts, [["b@keep.test"], ["b@keep.test"]], "same envelope recipient both times")

    # Bad arguments.
    is_(srv.ctl("replay", "keep.test").returncode, 64, "no --since: usage error")
    r = srv.ctl("replay", "keep.test", "--since", "yesterday")
    ok(r.returncode == 64 and b"--since" in r.stderr, "a bad TIME: usage error naming it")
    is_(srv.ctl("replay", "nope.test", "--since", "-1h").returncode, 66, "unknown domain: 66")
    is_(srv.ctl("replay", "keep.test", "--since", "-1h", "--until", "-2h").returncode, 64,
        "--until before --since: usage error")

    # The daemon stopped: count yes, change no.
    is_(srv.stop(), 0, "mxkeepd stops")
    rc, out, _ = replay(srv, "--since", "-1h")
    is_((rc, out and out.get("copies")), (0, 4), "count works without the daemon")
    r = srv.ctl("replay", "keep.test", "--since", "-1h", "--yes")
    is_(r.returncode, 69, "--yes without the daemon: 69 (unavailable)")
    like(r.stderr.decode(), r"mxkeepd is not running: replay needs it", "and says why")
    srv.start()
    time.sleep(2)
    is_(fake.count(), 7, "nothing was queued by the refused replay")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
