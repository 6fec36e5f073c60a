#!/usr/bin/env python3
# run-all: alone (250 within 0.5 s)
# 190-spf-no-wait (issue 10 section 5; SPF must never cost the accept
# rate): the 250 after DATA never waits for SPF.
# 1. A slow resolver (a relay in front of dnsmasq that holds each answer
#    0.6 s; a check needs three lookups): the 250 comes at once, and the
#    result that arrives after the commit is recorded and reaches the
#    primary in the one Authentication-Results header (spf=pass for both
#    identities, with dkim=none): delivery waited for it.
# 2. A dead resolver (the relay drops every query): after spf.breaker
#    checks in a row without an answer the breaker opens (logged once),
#    new checks are answered temperror at once without a query (counted in
#    /metrics), the 250 still never waits; when the resolver answers again
#    one trial check finds it, the breaker closes (logged once) and checks
#    give real results again.
import os
import sys
import threading
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

RECORDS = [
    ("pass.test", "v=spf1 ip4:127.0.0.0/8 -all"),
    ("helo-a.test", "v=spf1 a -all"),
]
HOLD = 0.6          # seconds the slow relay holds each answer


class Relay:
    """A UDP DNS relay on loopback: 'hold' forwards each query to dnsmasq
    and answers HOLD seconds later, 'drop' never answers, 'pass' answers
    at once.  Counts the queries for SPF's names (.test) it saw (client
    name lookups go to it too: not counted)."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.mode = "hold"
        self.seen = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def forward(self, q, peer, delay):
        time.sleep(delay)
        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        up.settimeout(2.0)
        try:
            up.sendto(q, ("127.0.0.1", self.upstream))
            a, _ = up.recvfrom(65535)
            self.sock.sendto(a, peer)
        except OSError:
            pass
        finally:
            up.close()

    def run(self):
        while not self.stopping:
            try:
                q, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if b"\x04test\x00" in q[12:]:
                self.seen += 1
            if self.mode == "drop":
                continue
            threading.Thread(target=self.forward, daemon=True,
                             args=(q, peer, HOLD if self.mode == "hold" else 0)).start()

    def stop(self):
        self.stopping = True
        self.thread.join(2)
        self.sock.close()


def ar_headers(body):
    head = body.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    unfolded = re.sub(r"\r\n[ \t]+", " ", head)
    return [ln for ln in unfolded.split("\r\n") if ln.lower().startswith("authentication-results:")]


def send(srv, tag):
    """One message in its own session; returns (reply code, seconds DATA's
    end took to answer)."""
    c = srv.raw()
    c.ehlo("helo-a.test")
    msg = make_message(tag)
    for cmd in ("MAIL FROM:<user@pass.test>", "RCPT TO:<user@example.org>", "DATA"):
        c.cmd(cmd)
    c.send(msg if msg.endswith(b"\r\n") else msg + b"\r\n")
    t0 = time.monotonic()
    c.send(b".\r\n")
    r = c.reply()
    took = time.monotonic() - t0
    c.cmd("QUIT")
    c.close()
    return r.code, took


def by_tag(prim, tag):
    for b in prim.bodies():
        if message_id(b) == "<%s@example.com>" % tag:
            return b
    return None


def main():
    require_binaries()
    dns = Dnsmasq(txt=RECORDS, hosts=[("helo-a.test", "127.0.0.1")]).start()
    relay = Relay(dns.port)
    prim = FakeSMTP(host="127.0.0.2", name="primary.example.org").start()
    mport = free_port_on("127.0.0.1")
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"resolver": "127.0.0.1:%d" % relay.port,
                           "spf": {"timeout": "1s", "breaker": 2, "breaker_retry": "4s"},
                           "metrics": {"address": "127.0.0.1", "port": mport},
                           "delivery": fast_delivery()})
    srv.start()

    # 1. slow resolver: no wait, the late result still reaches the A-R header
    code, took = send(srv, "slow")
    is_(code, 250, "slow resolver: accepted")
    ok(took < 0.5, "slow resolver: 250 after %.2fs, not waiting for SPF (%.1fs a lookup)"
       % (took, HOLD))
    ok(wait_for(lambda: by_tag(prim, "slow") is not None, 30, 0.2), "slow resolver: delivered")
    ars = ar_headers(by_tag(prim, "slow") or b"")
    is_(len(ars), 1, "one Authentication-Results header")
    text = ars[0] if ars else ""
    like(text, r"spf=pass smtp\.mailfrom=user@pass\.test",
         "MAIL FROM result found after the commit is in the header")
    like(text, r"spf=pass smtp\.helo=helo-a\.test", "HELO result too")
    like(text, r"dkim=none", "with DKIM's, in the same header")
    like(srv.log(), r"spf: mailfrom=pass helo=pass \(after the commit\)",
         "the result is recorded after the commit, and logged")
    unlike(srv.log(), r"spf: the resolver gave no answer", "an answering resolver: breaker shut")

    # 2. dead resolver: two checks in a row get no answer, the breaker opens
    relay.mode = "drop"
    results = []
    th = [threading.Thread(target=lambda t=t: results.append(send(srv, t))) for t in ("dead1", "dead2")]
    for t in th:
        t.start()
    for t in th:
        t.join(30)
    is_(sorted(r[0] for r in results), [250, 250], "dead resolver: both accepted")
    ok(all(r[1] < 0.5 for r in results),
       "dead resolver: 250s after %s s" % ", ".join("%.2f" % r[1] for r in results))
    ok(wait_for(lambda: "spf: the resolver gave no answer to 2 checks in a row" in srv.log(), 20, 0.2),
       "the breaker opens after spf.breaker checks without an answer (logged)")
    seen = relay.seen
    code, took = send(srv, "open")
    is_(code, 250, "breaker open: accepted")
    ok(took < 0.5, "breaker open: 250 after %.2fs" % took)
    ok(wait_for(lambda: re.search(r"(\w+): spf: mailfrom=temperror helo=temperror\n", srv.log())
                is not None, 5, 0.1), "breaker open: temperror recorded at the commit")
    is_(relay.seen, seen, "breaker open: no SPF query sent")
    mtext = metrics_get(mport)
    is_(metric_value(mtext, "spf_breaker_opened_total"), 1.0, "/metrics: the breaker opened once")
    ok((metric_value(mtext, "spf_unchecked_total", reason="resolver") or 0) >= 1,
       "/metrics: checks answered without a query are counted")
    for tag in ("dead1", "dead2", "open"):
        ok(wait_for(lambda: by_tag(prim, tag) is not None, 30, 0.2), "%s: delivered" % tag)
        like(ar_headers(by_tag(prim, tag) or b"")[0] if by_tag(prim, tag) else "",
             r"spf=temperror smtp\.mailfrom=user@pass\.test", "%s: spf=temperror in A-R" % tag)

    # the resolver answers again: after breaker_retry one trial check asks
    relay.mode = "pass"
    time.sleep(4.5)
    code, took = send(srv, "trial")
    is_(code, 250, "trial: accepted")
    ok(wait_for(lambda: "spf: the resolver answers again" in srv.log(), 10, 0.2),
       "a trial check closes the breaker (logged)")
    code, took = send(srv, "after")
    ok(wait_for(lambda: by_tag(prim, "after") is not None, 30, 0.2), "after recovery: delivered")
    like(ar_headers(by_tag(prim, "after") or b"")[0] if by_tag(prim, "after") else "",
         r"spf=pass smtp\.mailfrom=user@pass\.test", "after recovery: real results again")
    is_(len(re.findall(r"spf: the resolver gave no answer", srv.log())), 1, "opening logged once")
    is_(len(re.findall(r"spf: the resolver answers again", srv.log())), 1, "closing logged once")

    relay.stop()
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
