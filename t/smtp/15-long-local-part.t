#!/usr/bin/env python3
# 15-long-local-part: issue 7.16.  Local parts over 64 octets are real,
# everyday addresses (SRS, VERP, list confirmations): an SRS sender with a
# 79-octet local part and a 70-octet list-confirmation recipient (listed in
# the domain's recipient list) are accepted, stored, and passed on to the
# primary unchanged; a recipient the primary refuses brings a notice back to
# the long sender with both addresses whole.  With line_length raised, a
# path of SMTP_PATH_MAX (1024) octets beside a 255-octet HELO name goes
# through too; our Received header names a 900-octet one whole and leaves
# out the optional "for" for one no header line can hold (never cut).  The bounds are the
# command line (500 5.5.2) and the 1024 octets every stored copy has.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

DELIVER_TIMEOUT = 20.0
LINE_LENGTH = 2048
PATH_MAX = 1024             # SMTP_PATH_MAX, brackets included


def pad(prefix, n, fill="x"):
    return (prefix + fill * n)[:n] if len(prefix) < n else prefix[:n]


def main():
    require_binaries()
    srs_local = pad("SRS0=HhGf=TT=example.com=a.person.with.a.rather.long.name.", 79)
    sender = srs_local + "@forwarder.test"
    confirm_local = pad("confirm-s2-0123456789abcdef0123456789abcdef-list=lists.example.org-", 70)
    rcpt = confirm_local + "@example.org"
    refused_local = pad("bounces+verp-", 70, "r")
    refused = refused_local + "@example.org"
    is_((len(srs_local), len(confirm_local), len(refused_local)), (79, 70, 70),
        "local parts of 79, 70 and 70 octets")

    fake = FakeSMTP(rcpt=lambda a: "550 5.1.1 no such user" if a == refused else None)
    fake.start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.1]:%d" % fake.port,
                           "recipients": [rcpt, refused, "user@example.org"]},
                          {"name": "example.net", "primary": "[127.0.0.1]:%d" % fake.port}],
                 limits={"line_length": LINE_LENGTH},
                 settings={"delivery": fast_delivery()})
    srv.start()

    c = srv.raw()
    c.ehlo()
    r = c.cmd("MAIL FROM:<%s>" % sender)
    is_(r.code, 250, "MAIL FROM with a 79-octet SRS local part: 250 (%s)" % r)
    r = c.cmd("RCPT TO:<%s>" % rcpt)
    is_(r.code, 250, "RCPT TO a 70-octet listed local part: 250 (%s)" % r)
    r = c.cmd("RCPT TO:<%s>" % refused)
    is_(r.code, 250, "second 70-octet listed recipient: 250")
    r = c.cmd("RCPT TO:<%s@example.org>" % pad("not-listed-", 70))
    is_(r.code, 550, "a long local part not in the list is still unknown: 550")
    like(r.last, r"^5\.1\.1 ", "unknown user 5.1.1")
    r = c.cmd("DATA")
    is_(r.code, 354, "DATA")
    msg = make_message("longlocal", extra_headers=["Return-Path: <%s>" % sender])
    c.send(dot_stuff(msg))
    r = c.reply()
    is_(r.code, 250, "message queued")
    qid = qid_of(r.text)

    # A path longer than the command line is the only bound (RFC 5321
    # 4.5.3.1): 500 5.5.2, not an address-length reply.
    r = c.cmd("MAIL FROM:<%s@forwarder.test>" % ("y" * LINE_LENGTH))
    is_(r.code, 500, "a path beyond line_length: 500 (%s)" % r)
    like(r.last, r"^5\.5\.2 ", "line too long: 5.5.2")
    r = c.cmd("MAIL FROM:<%s@forwarder.test>" % ("y" * PATH_MAX))
    is_(r.code, 501, "a path beyond 1024 octets within the line: 501 (%s)" % r)
    like(r.last, r"^5\.1\.7 ", "sender too long: 5.1.7")
    c.cmd("QUIT")
    c.close()

    # The longest path, one recipient (so our Received header names it),
    # and the longest HELO name: queued, and the header holds them whole.
    helo = ".".join(["h" * 63] * 4)
    huge = pad("verp-", PATH_MAX - 2 - len("@example.net")) + "@example.net"
    is_((len(helo), len("<%s>" % huge)), (255, PATH_MAX), "HELO of 255, path of 1024 octets")
    c = srv.raw()
    is_(c.ehlo(helo).code, 250, "EHLO with a 255-octet name")
    rs = c.transaction(sender, [huge], make_message("hugepath"))
    is_([x.code for x in rs], [250, 250, 354, 250], "1024-octet recipient path queued")
    c.cmd("QUIT")
    c.close()
    # The header as the primary got it (the spool copy may be gone by now).
    def received_of(addr):
        if not wait_for(lambda: any(m["rcpts"] == [addr] for m in fake.messages), DELIVER_TIMEOUT):
            return ""
        body = [m["body"] for m in fake.messages if m["rcpts"] == [addr]][0]
        rec, _ = split_received(body)
        return (rec or b"").decode("latin-1")
    rec = received_of(huge)
    # 1022 octets do not fit a header line (RFC 5322: 998): never cut, the
    # optional "for" clause is left out instead.
    unlike(rec, r"for\s", "Received: no 'for' clause for an address no header line can hold")
    ok(rec.startswith("Received:") and max(len(x) for x in rec.split("\r\n")) <= 998,
       "Received lines within 998 octets")
    # 900 octets fit: named whole.
    long900 = pad("verp-", 900 - len("@example.net")) + "@example.net"
    c = srv.raw()
    c.ehlo(helo)
    rs = c.transaction(sender, [long900], make_message("path900"))
    is_(rs[-1].code, 250, "900-octet recipient queued")
    q900 = qid_of(rs[-1].text)
    c.cmd("QUIT")
    c.close()
    ok(q900 is not None, "queued as %s" % q900)
    like(unfold(received_of(long900)), r"for <%s>;" % re.escape(long900), "Received names it whole")

    # Delivery: the primary sees both addresses unchanged.
    ok(wait_for(lambda: fake.count() >= 3, DELIVER_TIMEOUT), "delivered to the primary")
    ok(any(m["rcpts"] == [huge] for m in fake.messages),
       "primary got the 1024-octet path unchanged")
    msgs = [m for m in fake.messages if m["rcpts"] == [rcpt]]
    m = msgs[0] if msgs else {}
    is_(m.get("sender"), sender, "primary got the 79-octet sender unchanged")
    is_(m.get("rcpts"), [rcpt], "primary got the 70-octet recipient unchanged")
    ok(any(a == refused for a, code in fake.rcpt_log if code == 550),
       "the other 70-octet recipient reached the primary (and was refused)")

    # The notice for the refused recipient: to the long sender, naming the
    # long recipient, both whole.
    def notice():
        for q in srv.queue():
            if q["qid"] != qid and q.get("sender", "x") == "":
                return q
        return None
    n = wait_for(notice, DELIVER_TIMEOUT, 0.2)
    ok(n is not None, "a failure notice is queued")
    if n:
        is_([x.get("addr") for x in n.get("recipients", [])], [sender],
            "notice addressed to the 79-octet sender, whole")
        body = srv.body(n["qid"]) or b""
        like(unfold(body), r"(?i)Final-Recipient: rfc822; ?%s" % re.escape(refused),
             "notice names the refused 70-octet recipient whole")
        like(body.decode("latin-1"), r"(?im)^To: <?%s>?\r?$" % re.escape(sender),
             "notice To: is the 79-octet sender")
    else:
        skip("no notice", 2)
    like(srv.log(), r"%s: to=<%s>.*status=sent" % (qid, re.escape(rcpt)),
         "log: delivery line with the whole recipient")


run_main(main)
