#!/usr/bin/env python3
# run-all: alone (400 idle TLS sessions, and a median EHLO latency under 30 ms)
# 195-tls-idle: STARTTLS sessions that sit idle (the server lets go of their
# record buffers, SSL_MODE_RELEASE_BUFFERS) come back to life: many sessions
# are held open after the handshake and EHLO, then each answers NOOP and
# sends a message, byte-exact in the spool, and one of them a message of
# many TLS records; a new session offering the ticket of an idle one is
# resumed (TLS 1.3, and TLS 1.2) and delivers its message.  And the EHLO
# after the handshake is not held back by Nagle behind the session
# tickets (the client's 40 ms delayed ACK on every STARTTLS session).
import os
import statistics
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

IDLE = 400                      # sessions held idle at once
IDLE_SECONDS = 2                # how long they sit before they speak again
BIG_OCTETS = 300 * 1024         # about 19 TLS records of 16 KiB
NAGLE_SAMPLES = 15
# The client's delayed ACK is at least 40 ms on Linux; a reply held back
# behind one waits that long.  A prompt one takes a few ms even on a
# loaded machine.
NAGLE_BOUND_MS = 30


def tls_session(srv, ctx=None, session=None):
    """A Raw client through STARTTLS and the second EHLO."""
    c = srv.raw()
    if c.greeting is None or c.greeting.code != 220:
        raise RuntimeError("no greeting: %r" % (c.greeting,))
    c.ehlo("idle.example.com")
    r = c.cmd("STARTTLS")
    if r.code != 220:
        raise RuntimeError("STARTTLS: %s" % r)
    c.sock.settimeout(c.timeout)
    c.sock = (ctx or insecure_context()).wrap_socket(c.sock, server_hostname=HOSTNAME,
                                                      session=session)
    c.ehlo_reply = c.ehlo("idle.example.com")
    return c


def send(c, tag, size=None):
    msg = make_message(tag, size=size) if size else make_message(tag)
    replies = c.transaction("idle@example.com", ["user@example.org"], msg)
    return replies[-1], msg


def main():
    require_binaries()
    srv = Server(tls=True, limits={"connections": IDLE + 50, "per_client": IDLE + 50,
                                   "command_timeout": "5m"})
    srv.start()

    held, bad = [], 0
    for i in range(IDLE):
        try:
            c = tls_session(srv)
            if c.ehlo_reply.code != 250:
                bad += 1
            held.append(c)
        except (OSError, RuntimeError) as e:
            bad += 1
            if bad == 1:
                diag("session %d: %s" % (i, e))
    is_((len(held), bad), (IDLE, 0), "%d STARTTLS sessions set up and held open" % IDLE)
    time.sleep(IDLE_SECONDS)
    ok(srv.running(), "daemon alive with %d idle TLS sessions" % IDLE)

    noop = [c.cmd("NOOP").code for c in held]
    is_(noop.count(250), IDLE, "every idle session answers NOOP 250 after idling")

    sent, refused = [], 0
    for i, c in enumerate(held):
        r, msg = send(c, "idle%d" % i)
        q = qid_of(r.text) if r.code == 250 else None
        if q is None:
            refused += 1
            if refused == 1:
                diag("session %d: %s" % (i, r))
        else:
            sent.append((q, msg))
    is_(refused, 0, "every idle session sends a message: 250 with a queue ID")
    wrong = 0
    for q, msg in sent:
        _rec, rest = split_received(srv.body(q))
        if rest != msg:
            wrong += 1
    is_(wrong, 0, "all %d messages byte-exact in the spool" % len(sent))

    # A message of many records on a session that sat idle.
    time.sleep(1)
    r, msg = send(held[0], "big", size=BIG_OCTETS)
    is_(r.code, 250, "a %d KiB message on a session that was idle: 250" % (BIG_OCTETS // 1024))
    q = qid_of(r.text)
    _rec, rest = split_received(srv.body(q) if q else None)
    ok(rest == msg, "and byte-exact")
    like(unfold(_rec or b""), r"\bwith ESMTPS\b", "its Received says ESMTPS")

    # Resumption: a new session offers the ticket of a held one.
    for label, maxver in (("TLS 1.3", ssl.TLSVersion.TLSv1_3), ("TLS 1.2", ssl.TLSVersion.TLSv1_2)):
        ctx = insecure_context()
        ctx.maximum_version = maxver
        first = tls_session(srv, ctx)
        first.cmd("NOOP")               # a TLS 1.3 ticket arrives after the handshake
        sess = first.sock.session
        ok(sess is not None and sess.has_ticket, "%s: the server issued a session ticket" % label)
        again = tls_session(srv, ctx, session=sess)
        ok(again.sock.session_reused, "%s: a new session offering it is resumed" % label)
        is_(again.ehlo_reply.code, 250, "%s: EHLO on the resumed session" % label)
        r, msg = send(again, "resumed-" + label.replace(" ", ""))
        is_(r.code, 250, "%s: a message over the resumed session: 250" % label)
        q = qid_of(r.text)
        _rec, rest = split_received(srv.body(q) if q else None)
        ok(rest == msg, "%s: byte-exact" % label)
        again.cmd("QUIT")
        again.close()
        first.cmd("QUIT")
        first.close()

    for c in held:
        c.cmd("QUIT")
        c.close()

    # Nagle: the EHLO reply right after the handshake comes at once.
    ms = []
    for _ in range(NAGLE_SAMPLES):
        c = srv.raw()
        c.ehlo("nagle.example.com")
        c.cmd("STARTTLS")
        c.sock.settimeout(c.timeout)
        c.sock = insecure_context().wrap_socket(c.sock, server_hostname=HOSTNAME)
        t0 = time.monotonic()
        r = c.ehlo("nagle.example.com")
        ms.append((time.monotonic() - t0) * 1000)
        c.cmd("QUIT")
        c.close()
    med = statistics.median(ms)
    diag("EHLO after the handshake, ms: " + " ".join("%.1f" % x for x in ms))
    ok(med < NAGLE_BOUND_MS, "EHLO after STARTTLS answered promptly (median %.1f ms < %d ms: "
       "not held back for the client's delayed ACK)" % (med, NAGLE_BOUND_MS))

    unlike(srv.log(), r"TLS error", "no TLS errors logged")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
