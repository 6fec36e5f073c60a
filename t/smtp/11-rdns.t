#!/usr/bin/env python3
# 11-rdns: forward-confirmed reverse DNS names of SMTP clients, in the log
# (connect/client=/disconnect lines) and in our Received header, with
# "unknown" when there is no PTR or it does not lead back to the client.
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

NAME = "client.rdns.test"
# The lookup runs beside the dialogue (the greeting does not wait for it);
# a local dnsmasq answers within milliseconds, so this pause only keeps a
# loaded machine from racing MAIL against the answer.
SETTLE = 0.5
# reverse zones answered here (NXDOMAIN when unlisted), never forwarded
REV_LOCAL = ("test", "127.in-addr.arpa")


def send_one(srv, tag):
    """One message from 127.0.0.1; returns (qid, Received header text)."""
    c = srv.raw()
    time.sleep(SETTLE)
    r = c.ehlo("helo.example.com")
    is_(r.code, 250, "%s: EHLO 250" % tag)
    msg = make_message(tag)
    out = c.transaction("sender@example.com", ["rcpt@example.org"], msg)
    is_(out[-1].code, 250, "%s: message accepted" % tag)
    qid = qid_of(out[-1].text)
    ok(qid, "%s: reply names the QID" % tag)
    c.cmd("QUIT")
    c.close()
    rec, _ = split_received(srv.body(qid) if qid else None)
    return qid, unfold(rec or b"")


def scenario(tag, dns, expect):
    srv = Server(settings={"resolver": dns.address}, name="mxtest-rdns")
    srv.start()
    qid, rec = send_one(srv, tag)
    like(rec, r"^Received: from helo\.example\.com \(%s \[127\.0\.0\.1\]\)" % re.escape(expect),
         "%s: Received says (%s [127.0.0.1])" % (tag, expect))
    ok(wait_log(srv, r"%s: client=%s\[127\.0\.0\.1\], helo=helo\.example\.com" %
                (re.escape(qid or "-"), re.escape(expect))),
       "%s: log says client=%s[127.0.0.1]" % (tag, expect))
    ok(wait_log(srv, r"disconnect from %s\[127\.0\.0\.1\]" % re.escape(expect)),
       "%s: disconnect line names %s" % (tag, expect))
    # the greeting never waits for DNS, so the connect line comes first
    like(srv.log(), r"connect from unknown\[127\.0\.0\.1\]",
         "%s: connect line logged before the name is known" % tag)
    show = srv.show(qid) if qid else None
    like(json.dumps(show) if show is not None else "", re.escape(expect),
         "%s: the queue record keeps the client name" % tag)
    rc = srv.stop()
    is_(rc, 0, "%s: mxkeepd exits 0" % tag)


def main():
    require_binaries()

    # host-record gives both the PTR and the A record: confirmed
    dns = Dnsmasq(local=REV_LOCAL, hosts=[(NAME, "127.0.0.1")]).start()
    scenario("confirmed", dns, NAME)
    dns.stop()

    # no PTR for 127.0.0.1 at all
    dns = Dnsmasq(local=REV_LOCAL, hosts=[("other.rdns.test", "127.0.0.7")]).start()
    scenario("no PTR", dns, "unknown")
    dns.stop()

    # a PTR whose name points elsewhere: claimed, not confirmed
    dns = Dnsmasq(local=REV_LOCAL, hosts=[("liar.rdns.test", "127.0.0.8")],
                  extra=["--ptr-record=1.0.0.127.in-addr.arpa,liar.rdns.test"]).start()
    is_(dns_query(dns.port, "1.0.0.127.in-addr.arpa", 12), (0, 1),
        "unconfirmed: dnsmasq does serve the PTR")
    scenario("unconfirmed", dns, "unknown")
    dns.stop()


run_main(main)
