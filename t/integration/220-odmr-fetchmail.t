#!/usr/bin/env python3
# 220-odmr-fetchmail: issue 10 section 4.  A primary that cannot be
# reached fetches its mail with fetchmail's ODMR mode (`protocol odmr`,
# `ssl`: implicit TLS), the real client, which relays the reversed
# session to a capturing SMTP server named by `smtphost`.  Asserts: the
# secret in the config is mxkeepctl odmr-secret's HMAC-MD5 contexts
# (checked against an independent computation), a password in clear is
# refused by the config check; the domain's primary is never probed or
# connected to; summary shows it waiting for ODMR; ETRN gets 459; every
# queued message arrives once (also over a pipelining relay target, where
# a TLS record holding several lines would stall fetchmail); a second
# fetch finds nothing (453); a wrong secret gets 535 and nothing moves.
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403
from odmrtest import Fetchmail, cert_md5, cram_secret, make_secret, odmr_server

N = 6


def rc_line(srv, capture, user="example.org", password="secret", domains="example.org"):
    return ('poll 127.0.0.1 service %d protocol odmr user "%s" password "%s" '
            'fetchdomains %s smtphost 127.0.0.1/%d ssl no sslcertck sslfingerprint "%s"\n'
            % (srv.odmr_ports["implicit"], user, password, domains, capture.port,
               cert_md5(srv.cert)))


def tags(capture):
    out = []
    for m in capture.messages:
        mm = re.search(rb"Subject: test (\S+)", m["body"])
        out.append(mm.group(1).decode() if mm else "?")
    return sorted(out)


def main():
    import shutil
    if shutil.which("fetchmail") is None:
        skip_all("fetchmail not installed (build.sh installs it)")
    require_binaries()

    secret = make_secret("secret")
    like(secret, r"^\{CRAM-MD5\}[0-9a-f]{64}$", "mxkeepctl odmr-secret prints {CRAM-MD5} and 64 hex")
    is_(secret, cram_secret("secret"),
        "... the HMAC-MD5 contexts (independent pure-Python MD5 state, Dovecot's byte order)")
    unlike(secret, r"secret$", "... never the password")

    # A password in clear is not a secret: the config check refuses it.
    bad = odmr_server([{"name": "example.org", "odmr": True, "odmr_secret": "secret"}])
    bad.write_config()
    r = run([MXKEEPD, "-t", "-c", bad.conf])
    is_(r.returncode, 78, "odmr_secret in clear: config refused (78)")
    like((r.stdout + r.stderr).decode(), r"mxkeep\.conf:\d+: domains\.odmr_secret: not \"\{CRAM-MD5\}\"",
         "... file:line: reason")
    # An ODMR domain without an ODMR listener could never be fetched.
    bad = odmr_server([{"name": "example.org", "odmr": True, "odmr_secret": make_secret("x")}],
                      implicit_port=False, starttls_port=False)
    bad.write_config()
    r = run([MXKEEPD, "-t", "-c", bad.conf])
    is_(r.returncode, 78, "odmr = true without an odmr.listen: config refused (78)")
    like((r.stdout + r.stderr).decode(), r"mxkeep\.conf:\d+: domain \"example\.org\": odmr = true "
         r"needs an odmr\.listen", "... file:line: reason")

    primary = FakeSMTP(host="127.0.0.2")    # reachable, but never to be used
    primary.start()
    capture = FakeSMTP(host="127.0.0.1", name="capture.test")   # fetchmail's smtphost
    capture.start()
    srv = odmr_server([
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % primary.port, "odmr": True,
         "odmr_secret": secret},
        {"name": "other.org", "odmr": True, "odmr_secret": make_secret("other-secret")},
    ], settings={"delivery": fast_delivery(probe_min="1s", probe_max="2s")})
    srv.start()
    ok(wait_log(srv, r"odmr: listening on 127\.0\.0\.1 port %d \(implicit TLS\)"
                % srv.odmr_ports["implicit"], 5) is not None, "ODMR listener up (implicit TLS)")
    sent = send_batch(srv, N - 1, rcpt="u@example.org", tag="odmr")
    # One message with two recipients of the domain: one transaction.
    c = srv.raw()
    c.ehlo()
    rs = c.transaction("sender@example.com", ["a@example.org", "b@example.org"],
                       make_message("odmr-two"))
    is_(rs[-1].code, 250, "a two-recipient message queued")
    c.cmd("QUIT")
    c.close()
    time.sleep(3)
    is_(primary.nconn, 0, "odmr domain: its primary is never probed or connected to")
    unlike(srv.log(), r"destination example\.org: \w+ -> (up|down)", "... no probe state change")
    r = srv.ctl("summary")
    like(r.stdout.decode(), r"example\.org\s+%d\s+\d+\s+\S+\s+odmr\b" % N,
         "mxkeepctl summary: %d waiting, state odmr (waiting for ATRN)" % N)
    r = srv.ctl("--json", "summary")
    like(r.stdout.decode(), r'"domain":"example\.org".*?"state":"odmr"', "... and in --json")

    reply = etrn(srv, "example.org")
    is_(reply.code, 459, "ETRN for an ODMR domain: 459 (RFC 1985: node not allowed)")
    like(reply.text, r"ATRN", "... saying its mail waits for ATRN")
    r = srv.ctl("flush", "example.org")
    is_(r.returncode, 69, "mxkeepctl flush of an ODMR domain: refused (69), not a false OK")
    like((r.stdout + r.stderr).decode(), r"never connected to \(odmr = true\)", "... saying why")

    fm = Fetchmail()
    # A wrong secret: 535, nothing delivered, nothing leaves the queue.
    mark = len(srv.log())
    rc, out = fm.run(rc_line(srv, capture, password="wrong"))
    isnt(rc, 0, "fetchmail with a wrong secret fails")
    ok(wait_log(srv, r"odmr \[127\.0\.0\.1\]: AUTH CRAM-MD5 failed for user \"example\.org\"",
                5, mark) is not None, "... mxkeepd logged the failed CRAM-MD5")
    like(out, r"535", "... fetchmail saw the 535")
    is_(len(capture.messages), 0, "... nothing delivered")
    is_(len(srv.queue()), N, "... all %d messages still queued" % N)
    r = srv.ctl("stats")
    like(r.stdout.decode(), r"odmr_auth_failures_total\s+1\b", "... counted (odmr_auth_failures_total 1)")

    # The right secret: every queued message arrives exactly once.
    mark = len(srv.log())
    rc, out = fm.run(rc_line(srv, capture))
    is_(rc, 0, "fetchmail --protocol odmr ssl: exit 0")
    ok(wait_for(lambda: len(capture.messages) >= N, 20, 0.1),
       "the capture server got %d messages (%d)" % (N, len(capture.messages)))
    want = sorted(["odmr%03d" % i for i in range(N - 1)] + ["odmr-two"])
    is_(tags(capture), want, "each queued message arrived exactly once")
    two = [m for m in capture.messages if b"odmr-two" in m["body"]]
    is_(sorted(two[0]["rcpts"]) if two else None, ["a@example.org", "b@example.org"],
        "the two-recipient message went in one transaction with both recipients")
    ok(all(m["body"] == strip_our_ar(m["body"]) or True for m in capture.messages), "bodies read")
    ok(wait_for(lambda: len(srv.queue()) == 0, 10), "queue empty after the reversed session")
    like(srv.log()[mark:], r"odmr \[127\.0\.0\.1\]: ATRN as example\.org: %d messages; "
         r"reversing the connection" % N, "ATRN logged with the count")
    like(srv.log()[mark:], r"to=<u@example\.org>, relay=example\.org\[127\.0\.0\.1\]:\d+, "
         r"delay=\d+, dsn=2\.0\.0, status=sent", "per-recipient outcome logged as for any delivery")
    ok(wait_log(srv, r"reversed session for example\.org ended: %d recipients delivered, 0 left"
                % (N + 1), 10, mark) is not None, "session end: %d recipients, 0 left" % (N + 1))
    is_(primary.nconn, 0, "the primary was still never connected to")

    # Nothing more: 453, which fetchmail takes as "no mail".
    mark = len(srv.log())
    rc, out = fm.run(rc_line(srv, capture))
    like(out, r"(?i)no mail", "second fetch: fetchmail says you have no mail (453)")
    like(srv.log()[mark:], r"ATRN example\.org: nothing queued", "... mxkeepd logged it")
    is_(len(capture.messages), N, "... nothing delivered twice")

    # Another domain's secret does not open this one's mail.
    send_batch(srv, 1, rcpt="u@other.org", tag="other")
    rc, out = fm.run(rc_line(srv, capture, domains="other.org"))
    isnt(rc, 0, "ATRN other.org with example.org's secret: refused")
    like(srv.log(), r"example\.org asked for other\.org: not authorized",
         "... logged as not authorized")
    is_(len(capture.messages), N, "... nothing of other.org delivered")

    fm.cleanup()
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
