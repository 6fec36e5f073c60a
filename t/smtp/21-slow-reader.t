#!/usr/bin/env python3
# 21-slow-reader: a client that pipelines far more than it reads.  Replies
# on a cleartext session are written straight to the socket; what the
# kernel refuses waits in the session until the client reads, reading
# stops meanwhile (the output bound), and nothing is lost or reordered.
# The daemon serves other clients meanwhile.
import os
import socket
import sys
import threading
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

# Transactions of MAIL, RCPT x PER and RSET, over and over (RFC 2920 lets
# all of them be pipelined), so the order shows in the replies' texts;
# 600,000 commands make 8.4 MB of replies, more than the kernel buffers
# between the two hold (tcp_wmem's 4 MB at most on the daemon's side, the
# client's fixed 256 KiB) and far over the daemon's output bound.
PER = 400
TXNS = 1500
COUNT = TXNS * (PER + 2)


def main():
    require_binaries()
    srv = Server(domains=[{"name": "example.org", "recipients": ["user@example.org"]}],
                 limits={"recipients": PER, "junk_commands": TXNS + 10})
    srv.start()

    # A fixed 256 KiB receive buffer (autotuned, it could take it all).
    c = srv.raw(rcvbuf=256 << 10)
    first = c.ehlo("slow.example.com")
    is_(first.code, 250, "EHLO answered")
    txn = (b"MAIL FROM:<s@example.com>\r\n" + b"RCPT TO:<user@example.org>\r\n" * PER +
           b"RSET\r\n")
    burst = txn * TXNS
    sent = {}

    def writer():
        try:
            c.sock.settimeout(60)
            c.sock.sendall(burst + b"QUIT\r\n")
            sent["ok"] = True
        except OSError as e:
            sent["error"] = str(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    # The client reads nothing for a while: the daemon's writes fall short,
    # the rest waits in the session, reading stops at the output bound.
    time.sleep(1.5)

    # Another client is served meanwhile.
    o = srv.raw()
    is_(o.ehlo().code, 250, "another client's EHLO is answered while the first is stuck")
    is_(o.cmd("QUIT").code, 221, "and its QUIT")
    o.close()

    # Now read everything until the daemon closes: every reply, in order,
    # then the 221.
    data = bytearray(c.buf)
    c.sock.settimeout(5)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            chunk = c.sock.recv(1 << 20)
        except socket.timeout:
            diag("read: timeout at %d octets" % len(data))
            break
        except OSError as e:
            diag("read: %s at %d octets" % (e, len(data)))
            break
        if not chunk:
            break
        data += chunk
    lines = bytes(data).split(b"\r\n")
    tail = lines.pop()
    is_(tail, b"", "the replies end with a whole line")
    is_(len(lines), COUNT + 1, "a reply for each pipelined command, and one for QUIT")
    want = ([b"250 2.1.0 Ok"] + [b"250 2.1.5 Ok"] * PER + [b"250 2.0.0 Ok"]) * TXNS
    bad = next((i for i, (g, w) in enumerate(zip(lines, want)) if g != w), None)
    ok(bad is None and len(lines) > COUNT,
       "in order: MAIL's 2.1.0, each RCPT's 2.1.5, RSET's 2.0.0%s" %
       ("" if bad is None else " (reply %d is %r)" % (bad, lines[bad])))
    like(lines[-1].decode("latin-1") if lines else "", r"^221 ", "QUIT after the burst answered, "
         "and the session closed")
    t.join(30)
    ok(sent.get("ok"), "the whole burst was taken (%s)" % sent.get("error", "sent"))
    c.close()
    ok(srv.running(), "daemon still running")
    srv.stop()
    done()


run_main(main)
