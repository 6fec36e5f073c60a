#!/usr/bin/env python3
# 121-verify-postfix (issue 8, part 1): callouts at RCPT against a real
# Postfix primary whose relay_recipient_maps knows only some users.
#  - a known user: 250 at RCPT, cached valid (a second RCPT probes nothing)
#  - an unknown user: 550 5.1.1 with Postfix's own text passed through,
#    cached invalid
#  - a dictionary attack of 500 addresses from one client, over several
#    sessions: the probes the primary sees are bounded (the unknown-limit
#    plus the catch-all test, not 500), the client is throttled (450 4.7.1,
#    then 421) and stays throttled when it reconnects; another client is
#    not; /metrics shows the throttled client.
import http.client
import os
import re
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

UNKNOWN_LIMIT = 10


def http_get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8")
    finally:
        c.close()


def rcpt(conn, addr):
    # The tarpit delays refusals by up to 10 s (limits.tarpit); a client
    # that gave up on a reply at 10 s would send its next RCPT early and
    # lose step with the replies (seen once in the ASan pass).
    return conn.cmd("RCPT TO:<%s>" % addr, timeout=30)


def main():
    require_binaries()
    if not IS_ROOT or not os.path.exists(POSTFIX):
        skip_all("a private Postfix instance needs root and postfix")
    pf = Postfix(domains=("example.org",),
                 recipients=("alice@example.org", "bob@example.org"), log_rcpts=True).start()
    mport = free_port()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.1]:%d" % pf.port,
                           "verify": "callout", "unverified": "tempfail"}],
                 settings={"verify": {"unknown_limit": UNKNOWN_LIMIT, "unknown_penalty": "10m",
                                      "probe_timeout": "10s", "reply_wait": "10s"},
                           "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()

    c = srv.raw()
    c.ehlo()
    is_(c.cmd("MAIL FROM:<sender@example.com>").code, 250, "MAIL")
    r = rcpt(c, "alice@example.org")
    is_(r.code, 250, "a user the primary knows: 250 (%s)" % r.last)
    r = rcpt(c, "nobody@example.org")
    is_(r.code, 550, "a user the primary does not know: 550")
    like(r.text.rstrip(), r"^550 5\.1\.1 <nobody@example\.org>: Recipient address rejected: "
         r"User unknown in relay recipient table$", "Postfix's enhanced code and text passed through")
    # Postfix writes its log through postlogd: wait for it to catch up.
    wait_for(lambda: pf.rcpt_count() >= 3, 5)
    n = pf.rcpt_count()
    is_(n, 3, "three RCPTs at the primary: the catch-all test, alice, nobody")
    like(pf.log(), r"warn: RCPT from [^\n]*to=<mxkeep-verify-[0-9a-f]{16}@example\.org>",
         "the first was a random local part (catch-all test)")
    r = rcpt(c, "alice@example.org")
    is_(r.code, 250, "alice again: 250")
    r = rcpt(c, "NOBODY@example.org")
    is_(r.code, 550, "nobody again: 550 from the cache")
    like(r.last, r"User unknown in relay recipient table", "with the cached primary text")
    time.sleep(1)
    is_(pf.rcpt_count(), n, "cached answers: no further probe")
    c.cmd("QUIT")
    c.close()
    like(srv.ctl("verify", "alice@example.org").stdout.decode(), r"^alice@example\.org  valid ",
         "mxkeepctl verify shows the cached answer")

    # Dictionary attack from 127.0.0.1: 500 addresses, reconnecting.
    before = pf.rcpt_count()
    codes = {}
    sent = 0
    sessions = 0
    while sent < 500 and sessions < 60:
        sessions += 1
        c = srv.raw()
        c.ehlo()
        if c.cmd("MAIL FROM:<spammer@example.com>").code != 250:
            c.close()
            continue
        for i in range(50):
            if sent >= 500:
                break
            r = rcpt(c, "dict%03d@example.org" % sent)
            sent += 1
            codes[r.code] = codes.get(r.code, 0) + 1
            if r.code == 421 or r.eof:
                break
        c.close()
    is_(sent, 500, "500 addresses tried (%d sessions)" % sessions)
    time.sleep(1)
    probes = pf.rcpt_count() - before
    diag("codes %s, probes at the primary %d" % (codes, probes))
    ok(probes <= UNKNOWN_LIMIT + 2, "probes bounded: %d at the primary for 500 addresses" % probes)
    is_(codes.get(550, 0), UNKNOWN_LIMIT - 2,
        "550 until the unknown limit (two refusals already went to nobody@)")
    ok(codes.get(450, 0) > 0 and codes.get(421, 0) > 0,
       "then 450 4.7.1 and 421 (%s)" % codes)
    is_(codes.get(250, 0), 0, "no dictionary address accepted")

    # Reconnect: still throttled, no probe; a known address also waits.
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<spammer@example.com>")
    r = rcpt(c, "fresh-one@example.org")
    like(r.text, r"^450 4\.7\.1 ", "a new session of the throttled client: 450 4.7.1")
    c.close()
    time.sleep(1)
    is_(pf.rcpt_count() - before, probes, "and no probe for it")

    # Another client (127.0.0.2) is not throttled.
    c = srv.raw(source="127.0.0.2")
    c.ehlo()
    c.cmd("MAIL FROM:<sender@example.com>")
    r = rcpt(c, "bob@example.org")
    is_(r.code, 250, "another client is not throttled (bob: %s)" % r.last)
    c.close()
    _, text = http_get(mport, "/metrics")
    like(text, r"(?m)^mxkeep_verify_throttled_clients 1$", "/metrics: one throttled client")
    m = re.search(r'(?m)^mxkeep_verify_probes_total\{result="invalid"\} (\d+)$', text)
    ok(m is not None and int(m.group(1)) <= UNKNOWN_LIMIT + 1, "/metrics: invalid probes counted")
    srv.stop()
    pf.stop()
    done()


run_main(main)
