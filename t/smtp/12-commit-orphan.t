#!/usr/bin/env python3
# 12-commit-orphan: issue 7.1.  A message committed after its client
# vanished is queued all the same: with the primary up, 20 clients each send
# DATA, the final ".", and reset the connection (SO_LINGER 0) without
# waiting for the reply.  The commit's completion, not the session, owns
# "message queued": every message reaches the primary, each has its
# "(queue active)" log line, and the counters count all of them.
import os
import socket
import struct
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 20
DELIVER_TIMEOUT = 20.0      # seconds for the 20 to reach the primary
QUEUED_RE = r"from=<[^>]*>, size=\d+, nrcpt=\d+ \(queue active\)"


def send_and_reset(port, tag):
    """EHLO, MAIL, RCPT, DATA, the text and the final dot in one write, then
    a TCP reset without reading the reply to the dot.  Returns the Message-ID."""
    c = Raw(port)
    c.greeting = c.reply()
    c.ehlo()
    for cmd in ("MAIL FROM:<sender@example.com>", "RCPT TO:<user@example.org>"):
        r = c.cmd(cmd)
        if r.code != 250:
            raise RuntimeError("%s: %s" % (cmd, r))
    r = c.cmd("DATA")
    if r.code != 354:
        raise RuntimeError("DATA: %s" % r)
    msg = make_message(tag)
    c.send(dot_stuff(msg))
    # l_onoff=1, l_linger=0: close() sends RST at once; the 250 is never read.
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()
    return message_id(msg)


def counter(srv, name):
    r = srv.ctl("--json", "stats")
    if r.returncode != 0:
        return None
    data = json.loads(r.stdout.decode("utf-8"))
    return data.get(name)


def main():
    require_binaries()
    fake = FakeSMTP()
    fake.start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.1]:%d" % fake.port}],
                 settings={"delivery": fast_delivery()})
    srv.start()

    # One ordinary message first: the destination is known to be up.
    code, text = send_smtplib(srv, "sender@example.com", ["user@example.org"],
                              make_message("warmup"))
    is_(code, 250, "warm-up message queued")
    ok(wait_for(lambda: fake.count() >= 1, DELIVER_TIMEOUT), "warm-up delivered: the primary is up")

    mark = len(srv.log())
    ids = [send_and_reset(srv.port, "orphan%02d" % i) for i in range(N)]
    ok(all(ids), "%d messages sent, each connection reset after the final dot" % N)

    got = wait_for(lambda: set(ids) <= set(fake.message_ids()), DELIVER_TIMEOUT, 0.2)
    delivered = set(ids) & set(fake.message_ids())
    ok(got, "all %d reached the primary (%d did)" % (N, len(delivered)))
    ok(wait_empty(srv, 10), "queue empty: nothing left to sit until retention")

    log = srv.log()[mark:]
    is_(len(re.findall(QUEUED_RE, log)), N, "%d '(queue active)' log lines after the resets" % N)
    like(log, r"queued after \S+ disconnected", "log says the client was gone at commit")
    unlike(log, r"status=(bounced|expired)", "nothing bounced")
    is_(counter(srv, "messages_accepted_total"), N + 1,
        "messages_accepted_total counts all %d plus the warm-up" % N)
    # Sanity: the harness reached the daemon's counters at all.
    ok((counter(srv, "smtpd_connections_total") or 0) >= N + 1, "connections counted")


run_main(main)
