#!/usr/bin/env python3
# 221-odmr-auth: issue 10 section 4, the ODMR session before the reversal
# (RFC 2645, RFC 4954), driven by a scripted client.  Asserts on a STARTTLS
# listener: EHLO offers AUTH CRAM-MD5 only and STARTTLS while in clear;
# PLAIN and LOGIN without TLS get 538 5.7.11; ATRN before AUTH gets 530,
# MAIL 502; after STARTTLS, PLAIN is offered and works; ATRN for another
# secret's domain gets 450, nothing queued 453.  On the implicit-TLS
# listener: wrong CRAM-MD5 secrets get 535 5.7.8 after a delay that grows,
# the session closes after odmr.auth_attempts, the client's address keeps
# its penalty on a new connection, the right secret then works; LOGIN
# under TLS works; a domain sharing the secret may be fetched; an
# overlong line is refused and the session closed.
import base64
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
from odmrtest import cram_response, make_secret, odmr_login, odmr_server


def b64(s):
    return base64.b64encode(s.encode()).decode()


def main():
    require_binaries()
    secret = make_secret("secret")
    srv = odmr_server([
        {"name": "example.org", "odmr": True, "odmr_secret": secret},
        {"name": "shared.org", "odmr": True, "odmr_secret": secret},
        {"name": "other.org", "odmr": True, "odmr_secret": make_secret("other")},
    ], settings={"odmr": {"auth_attempts": 3, "auth_delay": "1s", "auth_delay_max": "4s"}})
    srv.start()
    sp, ip = srv.odmr_ports["starttls"], srv.odmr_ports["implicit"]

    # --- STARTTLS listener, in clear ---
    c = Raw(sp)
    g = c.reply()
    is_(g.code, 220, "ODMR greeting 220 in clear on the starttls listener")
    is_(c.cmd("ATRN example.org").code, 503, "ATRN before EHLO: 503")
    e = c.ehlo("primary.example.org")
    is_(e.code, 250, "EHLO 250")
    ok("AUTH CRAM-MD5" in e.lines, "EHLO in clear offers AUTH CRAM-MD5 only (%s)" % e.lines)
    ok("ATRN" in e.lines and "STARTTLS" in e.lines, "... and ATRN, STARTTLS")
    is_(c.cmd("ATRN example.org").code, 530, "ATRN before AUTH: 530")
    is_(c.cmd("MAIL FROM:<a@b.example>").code, 502, "MAIL on the ODMR service: 502")
    r = c.cmd("AUTH PLAIN " + b64("\0example.org\0secret"))
    is_(r.code, 538, "AUTH PLAIN without TLS: 538")
    like(r.text, r"5\.7\.11", "... 5.7.11 encryption required")
    is_(c.cmd("AUTH LOGIN").code, 538, "AUTH LOGIN without TLS: 538")
    is_(c.cmd("STARTTLS").code, 220, "STARTTLS 220")
    c.starttls()
    e = c.ehlo("primary.example.org")
    ok("AUTH CRAM-MD5 PLAIN LOGIN" in e.lines, "under TLS EHLO offers PLAIN and LOGIN too (%s)" % e.lines)
    ok("STARTTLS" not in e.lines, "... and no STARTTLS again")
    r = c.cmd("AUTH PLAIN " + b64("\0example.org\0secret"))
    is_(r.code, 235, "AUTH PLAIN under TLS with the right password: 235")
    is_(c.cmd("AUTH PLAIN " + b64("\0example.org\0secret")).code, 503, "AUTH twice: 503")
    r = c.cmd("ATRN other.org")
    is_(r.code, 450, "ATRN for a domain of another secret: 450")
    r = c.cmd("ATRN example.org,other.org")
    is_(r.code, 450, "... also among others: the whole ATRN is refused")
    r = c.cmd("ATRN example.org")
    is_(r.code, 453, "ATRN with nothing queued: 453")
    is_(c.cmd("QUIT").code, 221, "QUIT 221")
    c.close()

    # --- implicit TLS: wrong secrets and the tarpit ---
    times = []
    c = Raw(ip)
    c.starttls()
    is_(c.reply().code, 220, "implicit TLS: greeting after the handshake")
    c.ehlo("primary.example.org")
    codes = []
    for i in range(3):
        r = c.cmd("AUTH CRAM-MD5")
        t0 = time.monotonic()
        r = c.cmd(cram_response("example.org", "wrong", r.lines[0]), timeout=15)
        times.append(time.monotonic() - t0)
        codes.append(r.code)
    is_(codes, [535, 535, 535], "three wrong CRAM-MD5 secrets: 535 each")
    ok(times[0] >= 0.9 and times[1] >= 1.9 and times[2] >= 3.9,
       "the delay grows: %.1f s, %.1f s, %.1f s" % tuple(times))
    r = c.reply(timeout=5)
    is_(r.code, 421, "after odmr.auth_attempts (3): 421")
    ok(c.closed(5), "... and the session is closed")
    like(srv.log(), r"AUTH CRAM-MD5 failed for user \"example\.org\" \(3 recent failures",
         "failures logged with their count")
    c = Raw(ip)
    c.starttls()
    c.reply()
    c.ehlo()
    r = c.cmd("AUTH CRAM-MD5")
    t0 = time.monotonic()
    r = c.cmd(cram_response("nosuch.org", "secret", r.lines[0]), timeout=15)
    t = time.monotonic() - t0
    is_(r.code, 535, "unknown user on a new connection: 535")
    ok(t >= 3.9, "... the address keeps its penalty across connections (%.1f s)" % t)
    r = c.cmd("AUTH CRAM-MD5")
    r = c.cmd(cram_response("example.org", "secret", r.lines[0]))
    is_(r.code, 235, "then the right secret: 235")
    is_(c.cmd("ATRN shared.org").code, 453, "ATRN shared.org (same secret): allowed (453: nothing queued)")
    c.close()
    r = srv.ctl("stats")
    like(r.stdout.decode(), r"odmr_auth_failures_total\s+4\b", "four failures counted")

    c = Raw(ip)
    c.starttls()
    c.reply()
    c.ehlo()
    is_(c.cmd("AUTH LOGIN").code, 334, "AUTH LOGIN: 334 Username:")
    is_(c.cmd(b64("example.org")).code, 334, "... 334 Password:")
    is_(c.cmd(b64("secret")).code, 235, "... right password under TLS: 235")
    r = c.cmd("X" * 3000)
    is_(r.code, 500, "a 3000-octet line: 500")
    ok(c.closed(5), "... and the session is closed")
    c.close()

    c = odmr_login(ip, "example.org", "secret")
    is_(c.auth_reply.code, 235, "a new session still works")
    is_(c.cmd("QUIT").code, 221, "QUIT")
    c.close()
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
