#!/usr/bin/env python3
# 07-starttls: RFC 3207 upgrade, ESMTPS in Received, the CVE-2011-0411
# command-injection case, a failed handshake, STARTTLS twice.
import os
import socket
import ssl
import sys
import time
import warnings
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def exts(reply):
    return {l.split()[0].upper() for l in reply.lines[1:] if l.split()}


def main():
    require_binaries()
    srv = Server(tls=True)
    srv.start()

    # smtplib: STARTTLS, EHLO again, a transaction.
    s = srv.smtp()
    s.ehlo("tls.example.com")
    ok(s.has_extn("starttls"), "STARTTLS advertised before TLS")
    code, _ = s.starttls(context=insecure_context())
    is_(code, 220, "STARTTLS 220")
    ver = s.sock.version() if hasattr(s.sock, "version") else None
    ok(ver in ("TLSv1.2", "TLSv1.3"), "TLS 1.2 or newer (%s)" % ver)
    code, _ = s.ehlo("tls.example.com")
    is_(code, 250, "EHLO after STARTTLS")
    ok(not s.has_extn("starttls"), "STARTTLS not advertised once TLS is on")
    ok(s.has_extn("pipelining") and s.has_extn("size"), "other extensions still advertised")
    msg = make_message("tls")
    s.mail("t@example.com")
    s.rcpt("user@example.org")
    code, text = s.data(msg)
    is_(code, 250, "transaction over TLS: 250")
    qid = qid_of(text)
    s.quit()
    rec, rest = split_received(srv.body(qid) if qid else None)
    is_(rest, msg, "TLS message byte-exact")
    like(unfold(rec or b""), r"\bwith ESMTPS\b", "Received says ESMTPS")
    like(unfold(rec or b""), r"TLSv1\.[23]", "Received names the TLS version")

    # TLS 1.1 is refused.
    c = srv.raw()
    c.ehlo()
    r = c.cmd("STARTTLS")
    is_(r.code, 220, "STARTTLS 220 (for the TLS 1.1 probe)")
    ctx = insecure_context()
    warnings.simplefilter("ignore", DeprecationWarning)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    refused = False
    try:
        c.starttls(ctx)
    except (ssl.SSLError, OSError):
        refused = True
    ok(refused, "TLS 1.1 handshake refused")
    c.close()

    # Injection: commands pipelined after STARTTLS in cleartext are dropped.
    c = srv.raw()
    c.ehlo()
    c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<inject@example.com>\r\n")
    r = c.reply()
    is_(r.code, 220, "STARTTLS 220 with injected commands behind it")
    # Nothing else may arrive in cleartext before the handshake.
    is_(c.buf, b"", "nothing but the 220 in the first read")
    c.sock.settimeout(0.5)
    try:
        leaked = c.sock.recv(4096, socket.MSG_PEEK)
    except socket.timeout:
        leaked = b""
    is_(leaked, b"", "no cleartext reply to the injected commands")
    c.starttls()
    early = c.pending(0.5)
    is_(early, b"", "after the handshake the injected RSET/MAIL are not answered")
    r = c.cmd("MAIL FROM:<after@example.com>")
    is_(r.code, 503, "session starts over: MAIL before EHLO is a sequence error")
    r = c.ehlo("tls.example.com")
    is_(r.code, 250, "EHLO in the new session")
    ok("STARTTLS" not in exts(r), "no STARTTLS in the TLS session's EHLO")
    r = c.cmd("MAIL FROM:<after@example.com>")
    is_(r.code, 250, "MAIL in the new session (no transaction left from the injection)")
    r = c.cmd("STARTTLS")
    ok(r.code in (503, 554), "STARTTLS twice refused (%s)" % r)
    like(r.last, r"^5\.\d\.\d ", "STARTTLS twice: enhanced code")
    r = c.cmd("RCPT TO:<user@example.org>")
    is_(r.code, 250, "session usable after the refused second STARTTLS")
    c.cmd("QUIT")
    c.close()

    # Handshake garbage after the 220: closed cleanly, server keeps serving.
    c = srv.raw()
    c.ehlo()
    is_(c.cmd("STARTTLS").code, 220, "STARTTLS 220 before garbage")
    c.send(b"this is not a TLS ClientHello\r\n" * 4)
    ok(c.closed(10), "garbage handshake: connection closed")
    c.close()
    c = srv.raw()
    c.ehlo()
    is_(c.cmd("STARTTLS").code, 220, "STARTTLS 220 before a silent close")
    c.close()
    time.sleep(0.2)
    ok(srv.running(), "daemon alive after failed handshakes")
    c = srv.raw()
    is_(c.greeting.code, 220, "new connection greeted after failed handshakes")
    is_(c.ehlo().code, 250, "and served")
    c.close()

    # STARTTLS with an argument is a syntax error; no TLS without a cert.
    c = srv.raw()
    c.ehlo()
    r = c.cmd("STARTTLS now")
    is_(r.code, 501, "STARTTLS with an argument: 501")
    c.close()
    srv.cleanup()

    plain = Server(name="mxnotls")
    plain.start()
    c = plain.raw()
    r = c.ehlo()
    ok("STARTTLS" not in exts(r), "no STARTTLS advertised without a certificate")
    r = c.cmd("STARTTLS")
    ok(r.code in (454, 502, 500, 503), "STARTTLS without a certificate refused (%s)" % r)
    c.close()
    plain.cleanup()


run_main(main)
