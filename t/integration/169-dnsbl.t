#!/usr/bin/env python3
# 169-dnsbl (issue 9, section 5): DNSBL/DNSWL at connect, with dnsmasq
# serving the zones on loopback.  A client listed in a zone whose weight
# reaches the threshold gets 554 5.7.1 at MAIL with the zone's TXT reason
# (or the zone's configured reply when there is no TXT); a listing below
# the threshold passes; a DNSWL listing (negative weight) cancels a DNSBL
# one; an allow-listed client is not checked; an unlisted client passes.
# With the resolver down nothing is blocked (fail open), logged once.
# Different clients are 127.x.y.z source addresses.  On the old code the
# `dnsbl` setting is unknown (exit 78).
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

ZONES = [{"zone": "bl.test", "weight": 2},
         {"zone": "soft.test", "weight": 1},
         {"zone": "quiet.test", "weight": 2, "reply": "found in %s"},
         {"zone": "wl.test", "weight": -5}]
# Two character-strings in one TXT record (dnsmasq splits at the comma):
# the reason is their concatenation.
REASON_PARTS = ["spam source;", " see http://bl.test/q?127.0.0.2"]
REASON = "".join(REASON_PARTS)


def rev(ip):
    return ".".join(reversed(ip.split(".")))


def mail(srv, src):
    c = srv.raw(timeout=15, source=src)
    g = c.greeting
    c.ehlo()
    r = c.cmd("MAIL FROM:<s@sender.example>")
    c.cmd("QUIT")
    c.close()
    return g, r


def stats(srv):
    r = srv.ctl("--json", "stats")
    try:
        return json.loads(r.stdout.decode("utf-8"))
    except ValueError:
        return {}


def main():
    require_binaries()
    if not os.path.exists(DNSMASQ):
        skip_all("dnsmasq not installed")
    listed = [("127.0.0.2", "bl.test"), ("127.0.0.3", "soft.test"), ("127.0.0.4", "quiet.test"),
              ("127.0.0.5", "bl.test"), ("127.0.0.5", "wl.test"), ("127.0.9.2", "bl.test")]
    hosts = [("%s.%s" % (rev(ip), z), "127.0.0.2") for ip, z in listed]
    extra = ["--txt-record=%s.bl.test,%s" % (rev("127.0.0.2"), ",".join(REASON_PARTS))]
    dns = Dnsmasq(hosts=hosts, local=("test",), extra=extra).start()
    settings = {"resolver": dns.address, "allow_clients": ["127.0.9.0/24"],
                "dnsbl": {"zones": ZONES, "threshold": 2, "timeout": "3s", "cache_ttl": "1m"}}
    srv = Server(domains=[{"name": "example.org", "hold": True}], settings=settings)
    srv.start()
    before = stats(srv)

    g, r = mail(srv, "127.0.0.2")
    is_(g.code, 220, "a listed client is greeted")
    is_(r.code, 554, "listed at bl.test (weight 2, threshold 2): MAIL gets 554")
    like(r.text, r"^554 5\.7\.1 .*\[127\.0\.0\.2\] blocked using bl\.test; " + re.escape(REASON),
         "... 5.7.1 with the zone and its TXT reason")
    g, r = mail(srv, "127.0.0.2")
    is_(r.code, 554, "again (from the cache): 554")
    is_(mail(srv, "127.0.0.3")[1].code, 250, "listed at soft.test only (weight 1 < 2): 250")
    g, r = mail(srv, "127.0.0.4")
    is_(r.code, 554, "listed at quiet.test (no TXT): 554")
    like(r.text, r"blocked using quiet\.test; found in quiet\.test\s*$", "... with the zone's reply text")
    is_(mail(srv, "127.0.0.5")[1].code, 250, "listed at bl.test and at wl.test (DNSWL -5): 250")
    is_(mail(srv, "127.0.9.2")[1].code, 250, "allow-listed client listed at bl.test: 250")
    is_(mail(srv, "127.0.0.6")[1].code, 250, "an unlisted client: 250")

    after = stats(srv)
    is_(after.get("rejected_dnsbl_total", 0) - before.get("rejected_dnsbl_total", 0), 3,
        "rejected_total{reason=dnsbl}: 3")
    ok(wait_log(srv, r"\[127\.0\.0\.2\]: listed \(score 2\): bl\.test"), "the listing is logged")
    is_(srv.stop(), 0, "mxkeepd exits 0")

    # The resolver down: nothing blocked, greeting within the timeout,
    # one log line for several clients.
    srv2 = Server(domains=[{"name": "example.org", "hold": True}],
                  settings=dict(settings, resolver="127.0.0.1:%d" % free_port_on("127.0.0.1"),
                                dnsbl=dict(settings["dnsbl"], timeout="2s")))
    srv2.start()
    t0 = time.monotonic()
    g, r = mail(srv2, "127.0.0.2")
    is_(r.code, 250, "resolver down: a client listed before is not blocked (fail open)")
    ok(time.monotonic() - t0 < 6, "... greeted within the DNSBL timeout (%.1fs)" % (time.monotonic() - t0))
    is_(mail(srv2, "127.0.0.4")[1].code, 250, "... nor another")
    ok(wait_log(srv2, r"dnsbl: no answer"), "the failure is logged")
    n = len(re.findall(r"dnsbl: no answer", srv2.log()))
    is_(n, 1, "... once")
    is_(srv2.stop(), 0, "mxkeepd exits 0")
    dns.stop()


run_main(main)
