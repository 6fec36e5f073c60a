#!/usr/bin/env python3
# 102-rcpt-throttle (issue 8, part 1, abuse bounds) through the RCPT path:
# a client that gave unknown_limit unknown recipients gets 450 4.7.1 for
# every further RCPT without a probe (a valid address too), across its
# sessions and reconnects; a session that keeps trying is ended with
# 421 4.7.0 after as many throttled RCPTs as bad_commands; another client
# address is not affected.  Real verifier, scripted primary.  On the old
# code nothing is refused, so every check fails there.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

LIMIT = 5
BAD_COMMANDS = 10       # the default: throttled RCPTs before 421


def answers(addr):
    if addr.lower().partition("@")[0] == "alice":
        return None
    return "550 5.1.1 <%s>: Recipient address rejected: User unknown in local recipient table" % addr


def probed(prim):
    with prim.lock:
        return [a.lower() for a, _ in prim.rcpt_log]


def stats(srv):
    r = srv.ctl("--json", "stats")
    try:
        return json.loads(r.stdout.decode("utf-8"))
    except ValueError:
        return {}


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", rcpt=answers, name="primary.example.org").start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port,
                           "verify": "callout"}],
                 settings={"verify": {"unknown_limit": LIMIT, "unknown_penalty": "10m",
                                      "reply_wait": "5s", "probe_timeout": "5s"}})
    srv.start()
    before = stats(srv)

    c = srv.raw(timeout=20)
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    rs = [c.cmd("RCPT TO:<guess%d@example.org>" % i) for i in range(LIMIT)]
    is_([x.code for x in rs], [550] * LIMIT, "the first %d unknown recipients: 550 each" % LIMIT)
    n_probes = len(probed(prim))
    ok(n_probes >= LIMIT, "each was probed (%d probes)" % n_probes)
    c.send("".join("RCPT TO:<guess%d@example.org>\r\n" % i for i in range(LIMIT, LIMIT + BAD_COMMANDS - 1)))
    c.send("RCPT TO:<alice@example.org>\r\n")
    rs = c.replies(BAD_COMMANDS + 1)
    is_([x.code for x in rs[:BAD_COMMANDS]], [450] * BAD_COMMANDS,
        "then 450 for every RCPT, a valid address included")
    ok(all(re.match(r"^450 4\.7\.1 ", x.text) for x in rs[:BAD_COMMANDS]), "... 4.7.1")
    like(rs[BAD_COMMANDS].text, r"^421 4\.7\.0 ", "after %d throttled RCPTs: 421 4.7.0" % BAD_COMMANDS)
    ok(c.closed(5), "and the session ends")
    c.close()
    is_(len(probed(prim)), n_probes, "no probe for a throttled client")

    # A reconnect is the same client.
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    like(c.cmd("RCPT TO:<alice@example.org>").text, r"^450 4\.7\.1 ", "reconnected: still throttled")
    c.cmd("QUIT")
    c.close()

    # Another client address is not.
    c = srv.raw(source="127.0.0.3")
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.example>")
    is_(c.cmd("RCPT TO:<alice@example.org>").code, 250, "another client: 250")
    c.cmd("QUIT")
    c.close()

    after = stats(srv)
    is_(after.get("rejected_throttled_total", 0) - before.get("rejected_throttled_total", 0),
        BAD_COMMANDS + 1, "rejected_total{reason=throttled}: one per throttled RCPT")
    is_(after.get("rejected_unknown_user_total", 0) - before.get("rejected_unknown_user_total", 0),
        LIMIT, "rejected_total{reason=unknown_user}: the %d probed" % LIMIT)
    is_(srv.stop(), 0, "mxkeepd exits 0")
    prim.stop()


run_main(main)
