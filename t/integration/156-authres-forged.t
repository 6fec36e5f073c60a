#!/usr/bin/env python3
# 156-authres-forged (issue 9, section 3): the primary gets exactly one
# Authentication-Results header with our authserv-id, on top; an earlier
# one claiming our id (any case, folded) is removed as a forgery (RFC 8601
# section 5), one of another authserv-id is kept, and a look-alike in the
# body is left alone.  Both writers: DATA with dot-stuffing (a python
# primary) and BDAT/CHUNKING (a real Postfix).  authserv_id is a setting.
import os
import smtplib
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

AUTHSERV = "backup-mx.example.net"


def forged_message(tag):
    return (b"Authentication-Results: BACKUP-MX.example.NET;\r\n"
            b"\tspf=pass smtp.mailfrom=forged.example\r\n"
            b"From: sender@pass.test\r\nTo: user@example.org\r\n"
            b"Authentication-Results: other.example; dkim=pass header.d=pass.test\r\n"
            b"authentication-results: (forged) backup-mx.example.net; dkim=pass\r\n"
            b"Subject: forged " + tag.encode() + b"\r\n"
            b"Message-ID: <" + tag.encode() + b"@example.com>\r\n"
            b"\r\n"
            b"Authentication-Results: backup-mx.example.net; in the body\r\n"
            b".leading dot line\r\n")


def check(head, body_text, where):
    unfolded = re.sub(r"\r?\n[ \t]+", " ", head)
    lines = re.split(r"\r?\n", unfolded)
    ars = [ln for ln in lines if ln.lower().startswith("authentication-results:")]
    ours = [ln for ln in ars if re.match(r"(?i)authentication-results:\s*(\(.*?\)\s*)?backup-mx\.example\.net\b", ln)]
    is_(len(ours), 1, "%s: exactly one A-R header with our authserv-id" % where)
    like(ours[0] if ours else "", r"spf=pass smtp\.mailfrom=sender@pass\.test",
         "%s: ours carries our SPF result" % where)
    ok(lines[0].lower().startswith("authentication-results: backup-mx.example.net;") or
       (lines[0].startswith("Received:") and lines[1].lower().startswith("authentication-results: backup-mx")),
       "%s: ours is on top" % where)
    unlike(unfolded, r"forged\.example", "%s: the forged result is gone" % where)
    is_(len([ln for ln in ars if "other.example" in ln]), 1, "%s: another id's header kept" % where)
    like(body_text, r"Authentication-Results: backup-mx\.example\.net; in the body",
         "%s: the body is untouched" % where)
    like(body_text, r"(?m)^\.leading dot line", "%s: a leading dot arrives as sent" % where)


def main():
    require_binaries()
    dns = Dnsmasq(txt=[("pass.test", "v=spf1 ip4:127.0.0.0/8 -all")]).start()
    prim = FakeSMTP(host="127.0.0.2", name="primary.example.org").start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"resolver": dns.address, "authserv_id": AUTHSERV,
                           "delivery": fast_delivery()})
    srv.start()
    c = srv.raw()
    c.ehlo("client.example.com")
    rs = c.transaction("sender@pass.test", ["user@example.org"], forged_message("ar-data"))
    is_(rs[-1].code, 250, "message with forged headers accepted")
    c.cmd("QUIT")
    c.close()
    ok(wait_for(lambda: prim.count() == 1, 20, 0.2), "delivered to the python primary (DATA)")
    body = prim.bodies()[0] if prim.count() else b""
    head, _, text = body.decode("latin-1").partition("\r\n\r\n")
    check(head, text, "DATA")
    like(srv.log(), r"removed 2 earlier Authentication-Results headers claiming backup-mx\.example\.net",
         "the removal is logged")
    srv.stop()

    if not IS_ROOT or not os.access(POSTFIX, os.X_OK):
        skip("BDAT path: a private Postfix instance needs root", 9)
    else:
        pf = Postfix().start()
        s = smtplib.SMTP("127.0.0.1", pf.port, timeout=10)
        s.ehlo("probe.example.com")
        ok(s.has_extn("chunking"), "Postfix offers CHUNKING: mxkeepd sends BDAT")
        s.quit()
        srv2 = Server(domains=[{"name": "example.org", "primary": "[127.0.0.1]:%d" % pf.port}],
                      settings={"resolver": dns.address, "authserv_id": AUTHSERV,
                                "delivery": fast_delivery()})
        srv2.start()
        c = srv2.raw()
        c.ehlo("client.example.com")
        rs = c.transaction("sender@pass.test", ["user@example.org"], forged_message("ar-bdat"))
        c.cmd("QUIT")
        c.close()
        ok(wait_for(lambda: pf.count() >= 1, 25, 0.3), "delivered to Postfix (BDAT)")
        qid = pf.queue_ids()[0][1] if pf.count() else ""
        r = run([POSTCAT, "-c", pf.etc, "-bh", "-q", qid], timeout=30)
        out = r.stdout.decode("latin-1") if isinstance(r.stdout, bytes) else r.stdout
        head, _, text = out.partition("\n\n")
        # Postfix adds its own Received on top of ours
        head = re.sub(r"^Received: .*?(?=\n\S)", "", head, count=1, flags=re.S).lstrip("\n")
        check(head, text, "BDAT")
        srv2.stop()


run_main(main)
