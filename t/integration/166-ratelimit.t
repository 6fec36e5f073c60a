#!/usr/bin/env python3
# 166-ratelimit (issue 9, section 5): per-client rate limits, per address
# and per network (/24), each with its reply: connections 421 4.7.1 at the
# greeting (and the connection closed), messages 450 4.7.1 at MAIL,
# recipients 450 4.7.1 at RCPT; another address of a different network
# is not affected; an allow-listed client is exempt.  Different clients
# are different 127.x.y.z source addresses.  On the old code the settings
# are unknown (exit 78) and nothing is refused.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def stats(srv):
    r = srv.ctl("--json", "stats")
    try:
        return json.loads(r.stdout.decode("utf-8"))
    except ValueError:
        return {}


def greet(srv, src):
    c = srv.raw(timeout=10, greet=False, source=src)
    return c, c.reply()


def main():
    require_binaries()
    srv = Server(domains=[{"name": "example.org", "hold": True}],
                 settings={"ratelimit": {"window": "10m", "connections": 3, "net_connections": 5,
                                         "messages": 2, "net_messages": 4,
                                         "recipients": 3, "net_recipients": 100},
                           "allow_clients": ["127.0.9.0/24"]})
    srv.start()
    before = stats(srv)

    # connections per address
    codes = []
    for i in range(4):
        c, g = greet(srv, "127.0.0.5")
        codes.append(g.code)
        if i == 3:
            like(g.text, r"^421 4\.7\.1 .*too many connections from your address",
                 "4th connection from one address: 421 4.7.1")
            ok(c.closed(5), "... and the connection is closed")
        else:
            c.cmd("QUIT")
        c.close()
    is_(codes, [220, 220, 220, 421], "connections per address: 3 greeted, the 4th refused")
    c, g = greet(srv, "127.0.1.7")
    is_(g.code, 220, "another network is not affected")
    c.cmd("QUIT")
    c.close()

    # connections per network: 127.0.2.1 .. .6, one each; the 6th is over 5
    codes = []
    for i in range(1, 7):
        c, g = greet(srv, "127.0.2.%d" % i)
        codes.append(g.code)
        if g.code == 421:
            like(g.text, r"^421 4\.7\.1 .*from your network", "... the reply names the network")
        else:
            c.cmd("QUIT")
        c.close()
    is_(codes, [220] * 5 + [421], "connections per /24: 5 greeted, the 6th (a new address) refused")

    # messages per address
    c, g = greet(srv, "127.0.3.1")
    c.ehlo()
    rs = []
    for i in range(3):
        rs.append(c.cmd("MAIL FROM:<s%d@sender.example>" % i))
        c.cmd("RSET")
    is_([x.code for x in rs], [250, 250, 450], "messages per address: the 3rd MAIL gets 450")
    like(rs[2].text, r"^450 4\.7\.1 .*too many messages", "... 4.7.1")
    # recipients per address (same client, its own count)
    c2, g = greet(srv, "127.0.4.1")
    c2.ehlo()
    c2.cmd("MAIL FROM:<s@sender.example>")
    rs = [c2.cmd("RCPT TO:<r%d@example.org>" % i) for i in range(4)]
    is_([x.code for x in rs], [250, 250, 250, 450], "recipients per address: the 4th RCPT gets 450")
    like(rs[3].text, r"^450 4\.7\.1 .*too many recipients", "... 4.7.1")
    is_(c2.cmd("DATA").code, 354, "the transaction goes on with the accepted ones")
    c2.send(dot_stuff(make_message("r")))
    is_(c2.reply().code, 250, "... and is queued")
    c2.cmd("QUIT")
    c2.close()
    c.cmd("QUIT")
    c.close()

    # messages per network: 127.0.8.1 and .2 send 2 each (the /24's 4),
    # then a third address of the same /24 is refused at once
    codes = []
    for src in ("127.0.8.1", "127.0.8.2", "127.0.8.3"):
        c, g = greet(srv, src)
        c.ehlo()
        for i in range(2 if src != "127.0.8.3" else 1):
            r = c.cmd("MAIL FROM:<n@sender.example>")
            codes.append(r.code)
            c.cmd("RSET")
        c.cmd("QUIT")
        c.close()
    is_(codes, [250, 250, 250, 250, 450], "messages per /24: the 5th MAIL (a new address) gets 450")
    like(r.text, r"^450 4\.7\.1 .*from your network", "... 4.7.1, the network named")

    # allow-listed: none of the limits
    codes = []
    for i in range(6):
        c, g = greet(srv, "127.0.9.1")
        codes.append(g.code)
        c.ehlo()
        codes.append(c.cmd("MAIL FROM:<s@sender.example>").code)
        for j in range(4):
            codes.append(c.cmd("RCPT TO:<a%d@example.org>" % j).code)
        c.cmd("QUIT")
        c.close()
    is_(sorted(set(codes)), [220, 250], "allow_clients: 6 connections, 6 messages, 24 RCPTs, none refused")

    after = stats(srv)
    is_(after.get("rejected_rate_total", 0) - before.get("rejected_rate_total", 0), 5,
        "rejected_total{reason=rate}: 5")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
