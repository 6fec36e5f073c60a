#!/usr/bin/env python3
# 04-policy: served domains, recipient lists (and SIGHUP reload), relay
# denied, each relay trick refused with nothing queued.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def rcpt(c, addr):
    return c.cmd("RCPT TO:<%s>" % addr if not addr.startswith("<") else "RCPT TO:" + addr)


def main():
    require_binaries()
    srv = Server(domains=[
        {"name": "example.org", "recipients": ["user@example.org", "Info@Example.ORG", "  spaced@example.org  "]},
        {"name": "example.net"},
    ])
    srv.start()
    c = srv.raw()
    c.ehlo()
    is_(c.cmd("MAIL FROM:<s@example.com>").code, 250, "MAIL")

    r = rcpt(c, "user@other.example")
    is_(r.code, 550, "other domain: 550")
    like(r.last, r"^5\.7\.1 .*[Rr]elay", "other domain: 5.7.1 relay access denied")
    r = rcpt(c, "user@example.org.other.example")
    is_(r.code, 550, "served domain as a prefix of another: 550 5.7.1")
    r = rcpt(c, "user@sub.example.net")
    is_(r.code, 550, "subdomain of a served domain is not served")
    r = rcpt(c, "nobody@example.org")
    is_(r.code, 550, "unknown user: 550")
    like(r.last, r"^5\.1\.1 ", "unknown user: 5.1.1")
    accepted = []
    for addr, name in (("user@example.org", "listed user"),
                       ("USER@EXAMPLE.ORG", "listed user, upper case"),
                       ("info@example.org", "list entry matched case-insensitively"),
                       ("spaced@example.org", "list entry with white space trimmed"),
                       ("user@example.org.", "trailing dot on the domain"),
                       ("anyone@example.net", "domain without list accepts any local part"),
                       ("Other.Person@EXAMPLE.NET", "domain matched case-insensitively"),
                       ('"john doe"@example.net', "quoted local part")):
        r = rcpt(c, addr)
        is_(r.code, 250, "%s: 250" % name)
        if r.code == 250:
            accepted.append(addr)
    r = rcpt(c, "<@relay.other.example:routed@example.net>")
    is_(r.code, 250, "source route accepted and ignored")
    # RFC 5321 4.5.3.1 asks to avoid limits: a local part over 64 octets
    # (SRS, VERP, list confirmations) is bounded only by the line.
    r = rcpt(c, "%s@example.net" % ("a" * 65))
    is_(r.code, 250, "local part over 64 octets accepted (%s)" % r)
    if r.code == 250:
        accepted.append("%s@example.net" % ("a" * 65))
    r = rcpt(c, "#hash@example.org")
    is_(r.code, 550, "'#' local part is not a list comment: unknown user")
    r = c.cmd("DATA")
    is_(r.code, 354, "DATA")
    msg = make_message("policy")
    c.send(dot_stuff(msg))
    r = c.reply()
    is_(r.code, 250, "message with good recipients queued")
    qid = qid_of(r.text)
    q = srv.queue_by_qid()
    got = sorted(x["addr"].lower() for x in q.get(qid, {}).get("recipients", []))
    ok("routed@example.net" in got, "source route dropped from the stored address")
    ok(("a" * 65) + "@example.net" in got, "the 65-octet local part stored whole")
    ok(all(a.endswith("@example.org") or a.endswith("@example.net") for a in got),
       "every stored recipient is in a served domain: %s" % got)
    ok(not any("nobody" in a or "other.example" in a for a in got), "refused recipients not stored")
    ok(all(x.get("domain") in ("example.org", "example.net") for x in q.get(qid, {}).get("recipients", [])),
       "recipient destinations are served domains")

    # Relay tricks, each in its own transaction: refused, nothing queued.
    before = len(srv.queue())
    tricks = [
        "user%other.example@example.net",
        "user%other.example@example.org",
        "other.example!user@example.net",
        '"user@other.example"@example.net',
        "user@[127.0.0.1]",
        "user@[IPv6:::1]",
        "user@other.example@example.net",
        "<@example.net:user@other.example>",
        '"user%other.example"@example.net',
    ]
    c.cmd("QUIT")
    c.close()
    for t in tricks:
        # A session each: refusals count towards bad_commands.
        c = srv.raw()
        c.ehlo()
        is_(c.cmd("MAIL FROM:<s@example.com>").code, 250, "MAIL for %s" % t)
        r = rcpt(c, t if t.startswith("<") else "<%s>" % t)
        ok(r.code is not None and 500 <= r.code < 600, "relay trick %s refused (%s)" % (t, r))
        like(r.last, r"^5\.\d\.\d ", "relay trick %s: enhanced 5.x.x code" % t)
        r = c.cmd("DATA")
        ok(r.code in (503, 554), "DATA with no recipient refused after %s (%s)" % (t, r))
        if r.code == 354:
            c.send(dot_stuff(make_message("leak")))
            c.reply()
        c.close()
    is_(len(srv.queue()), before, "no relay trick queued anything")
    for m in srv.queue():
        for x in m.get("recipients", []):
            ok(x["addr"].lower().endswith(("@example.org", "@example.net"))
               and "%" not in x["addr"] and "!" not in x["addr"], "stored %s is local" % x["addr"])

    # Recipient list re-read on SIGHUP.
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@example.com>")
    is_(rcpt(c, "newcomer@example.org").code, 550, "newcomer unknown before reload")
    c.close()
    with open(os.path.join(srv.dir, "rcpts.0"), "a") as f:
        f.write("newcomer@example.org\n")
    srv.hup()

    def newcomer_ok():
        k = srv.raw()
        try:
            k.ehlo()
            k.cmd("MAIL FROM:<s@example.com>")
            return rcpt(k, "newcomer@example.org").code == 250
        finally:
            k.close()
    ok(wait_for(newcomer_ok, timeout=5, step=0.2), "SIGHUP re-reads the recipient list")
    ok(srv.running(), "daemon still running after SIGHUP")
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@example.com>")
    is_(rcpt(c, "user@example.org").code, 250, "old entries kept after reload")
    c.close()


run_main(main)
