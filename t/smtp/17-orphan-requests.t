#!/usr/bin/env python3
# 17-orphan-requests: issue 7.1, the kind.  Effects of a durable change
# hang off the change, never off the connection that asked for it: an
# admin action over the control socket whose mxkeepctl client reset the
# connection right after sending it is still applied and logged (delete,
# bounce, delete-domain), and an ETRN whose session reset right after the
# command still flushes the queue to the primary.
import os
import socket
import struct
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

WAIT = 15.0


def reset(sock):
    """Close with a TCP/Unix reset-like abort: nothing more is read."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def ctl_and_vanish(srv, line):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(srv.ctl_socket)
    s.sendall(line.encode() + b"\n")
    reset(s)


def main():
    require_binaries()
    fake = FakeSMTP()               # the primary of example.net: down for now
    srv = Server(domains=[{"name": "example.org", "hold": True},
                          {"name": "example.net", "primary": "[127.0.0.1]:%d" % fake.port}],
                 settings={"delivery": fast_delivery(probe_min="60s", probe_max="120s")})
    srv.start()

    held = send_batch(srv, 4, rcpt="user@example.org", tag="held")
    q = [qid for qid, _ in held]
    ok(all(q), "4 messages queued for the held domain")

    # delete: the client is gone before the answer.
    ctl_and_vanish(srv, "delete %s" % q[0])
    ok(wait_log(srv, r"%s: removed by the administrator" % q[0], WAIT) is not None,
       "delete applied and logged after its client vanished")
    ok(wait_for(lambda: q[0] not in srv.qids(), WAIT), "deleted message gone from the queue")

    # bounce: the notice is queued and the recipient marked.
    ctl_and_vanish(srv, "bounce %s" % q[1])
    ok(wait_log(srv, r"%s: to=<user@example\.org>.*status=bounced" % q[1], WAIT) is not None,
       "bounce applied and logged after its client vanished")
    ok(wait_for(lambda: q[1] not in srv.qids(), WAIT), "bounced message gone from the queue")

    # delete-domain: every remaining message of the domain.
    ctl_and_vanish(srv, "delete-domain example.org")
    ok(wait_log(srv, r"delete-domain example\.org: 2 deleted", WAIT) is not None,
       "delete-domain ran to the end after its client vanished")
    ok(wait_for(lambda: not (set(q[2:]) & set(srv.qids())), WAIT), "the other two are gone")

    # ETRN: the primary was down, now up; the next probe is a minute away.
    waiting = send_batch(srv, 3, rcpt="someone@example.net", tag="etrn")
    ok(wait_log(srv, r"destination example\.net: \w+ -> down", WAIT) is not None,
       "example.net marked down while its primary is away")
    fake.start()
    c = srv.raw()
    c.ehlo()
    c.send(b"ETRN example.net\r\n")
    reset(c.sock)
    ids = [message_id(m) for _, m in waiting]
    ok(wait_for(lambda: set(ids) <= set(fake.message_ids()), WAIT, 0.2),
       "ETRN whose session reset at once still flushed all 3 to the primary")
    like(srv.log(), r"ETRN example\.net from \[127\.0\.0\.1\]: 25[0-9]", "ETRN logged with its answer")
    ok(srv.running(), "mxkeepd still running")


run_main(main)
