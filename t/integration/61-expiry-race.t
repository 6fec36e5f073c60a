#!/usr/bin/env python3
# 61-expiry-race: expiry and delivery never own a message at once.  Forty
# messages wait for a dead primary; the daemon restarts 8 days later
# (libfaketime) with the primary up and slow to accept each message, so
# the expiry (4.4.7, retention 7d) and the deliveries run through the same
# messages oldest first at the same time.  Each message must end exactly
# one way: delivered once and no 4.4.7 notice, or expired with one notice
# and not delivered.  On 0.1.0 the expiry marked a message expired in
# memory two writer rounds before it committed, the scheduler handed that
# same message to a connection meanwhile, and the sender got a 4.4.7
# failure notice for mail the primary had accepted.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

MESSAGES = 40
SENDER = "alice@example.org"        # served: the notices go to the same primary


def main():
    require_binaries()
    env = faketime_env("+8d")
    if env is None:
        skip_all("libfaketime not installed")
    port = free_port_on("127.0.0.2")
    prim = FakeSMTP(host="127.0.0.2", port=port, name="primary.test", delay=0.05)
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % port,
                           "retention": "7d"}],
                 settings={"delivery": fast_delivery(max_connections=4)})
    srv.start()
    sent = send_batch(srv, MESSAGES, sender=SENDER, rcpt="u@example.org", tag="race")
    qids = [q for q, _ in sent]
    ok(all(qids) and len(set(qids)) == MESSAGES, "%d messages queued" % MESSAGES)
    ok(wait_log(srv, r"destination example\.org: \w+ -> down", 8) is not None, "primary down")
    is_(srv.stop(), 0, "stopped while the primary is down")

    prim.start()
    mark = len(srv.log())
    srv.start(env=env)
    ok(wait_for(lambda: len(srv.queue()) == 0, 60, 0.3), "queue empty: every message settled")
    time.sleep(0.5)
    log = srv.log()[mark:]

    with prim.lock:
        msgs = list(prim.messages)
    delivered = {}
    noticed = {}
    for m in msgs:
        for i in range(MESSAGES):
            tag = ("race%03d@example.com" % i).encode()
            if tag not in m["body"]:
                continue
            if m["sender"] == SENDER:
                delivered[i] = delivered.get(i, 0) + 1
            elif m["sender"] == "":
                noticed[i] = noticed.get(i, 0) + 1
    both = sorted(i for i in delivered if i in noticed)
    diag("%d delivered, %d expired with a notice, %d both" % (len(delivered), len(noticed), len(both)))
    is_(both, [], "no message both delivered and reported as expired (4.4.7)")
    is_(sorted(i for i, n in delivered.items() if n > 1), [], "no message delivered twice")
    is_(sorted(i for i, n in noticed.items() if n > 1), [], "no message with two notices")
    is_(sorted(set(range(MESSAGES)) - set(delivered) - set(noticed)), [],
        "every message delivered or reported: nothing lost")

    twice = [q for q in qids if re.search(r"%s: to=<[^>]*>.*status=sent" % q, log) and
             re.search(r"%s: to=<[^>]*>.*status=expired" % q, log)]
    is_(twice, [], "log: no queue ID both sent and expired")
    unlike(log, r"settled while the expiry owned", "log: the expiry never found a recipient settled under it")
    ok(srv.running(), "daemon alive")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
