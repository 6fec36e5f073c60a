#!/usr/bin/env python3
# 50-multiline-status (issue 7, item 10): the enhanced status code of a
# multi-line reply from the primary is kept.  RCPT answered with
# "550-5.2.1 The account is disabled" / "550 5.2.1 more text": the log says
# dsn=5.2.1 and the DSN to the sender says Status: 5.2.1, with the whole
# text; a multi-line 450-4.2.1 is deferred with dsn=4.2.1.
import email
import email.policy
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def answers(addr):
    local = addr.split("@")[0].lower()
    if local == "disabled":
        return "550-5.2.1 The account is disabled\r\n550 5.2.1 more text"
    if local == "busy":
        return "450-4.2.1 The mailbox is busy\r\n450-4.2.1 really\r\n450 4.2.1 try later"
    return None


def dsn_fields(body):
    msg = email.message_from_bytes(body, policy=email.policy.compat32)
    out = []
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            blocks = payload if isinstance(payload, list) else \
                [email.message_from_string(x) for x in str(payload).split("\n\n") if x.strip()]
            for b in blocks:
                if b.get("Final-Recipient"):
                    out.append((b.get("Final-Recipient"), b.get("Status"), b.get("Diagnostic-Code")))
    return out


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", rcpt=answers, name="primary.example.org").start()
    mxport = free_port_on("127.0.0.3")
    smx = FakeSMTP(host="127.0.0.3", port=mxport, name="mx.sender.test").start()
    dns = Dnsmasq(mx=[("sender.test", "mx.sender.test", 10)],
                  hosts=[("mx.sender.test", "127.0.0.3")]).start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"resolver": dns.address,
                           "delivery": fast_delivery(probe_min="30s", probe_max="60s",
                                                     mx_port=mxport)})
    srv.start()

    code, text = send_smtplib(srv, "alice@sender.test",
                              ["ok@example.org", "disabled@example.org", "busy@example.org"],
                              make_message("multi"))
    is_(code, 250, "message accepted")
    qid = qid_of(text)
    ok(wait_for(lambda: prim.count() >= 1, 8), "primary got the message for ok@")
    ok(wait_log(srv, r"%s: to=<disabled@example\.org>, relay=[^,]*, delay=\d+, dsn=5\.2\.1, "
                r"status=bounced \(550 5\.2\.1 The account is disabled more text\)" % qid, 8)
       is not None, "log: multi-line 550 gives dsn=5.2.1 with the whole text")
    ok(wait_log(srv, r"%s: to=<busy@example\.org>, relay=[^,]*, delay=\d+, dsn=4\.2\.1, "
                r"status=deferred \(450 4\.2\.1 The mailbox is busy really try later\)" % qid, 8)
       is not None, "log: multi-line 450 gives dsn=4.2.1, deferred")
    unlike(srv.log(), r"dsn=[45]\.0\.0", "no status made up from the reply code")

    ok(wait_for(lambda: smx.count() >= 1, 10), "a DSN reached the sender's MX")
    f = dsn_fields(smx.messages[0]["body"]) if smx.messages else []
    is_(len(f), 1, "one recipient in the DSN")
    if f:
        like(f[0][0], r"(?i)rfc822;\s*disabled@example\.org", "Final-Recipient: disabled@")
        is_((f[0][1] or "").strip(), "5.2.1", "DSN Status: 5.2.1 (not 5.0.0)")
        like(f[0][2] or "", r"550 5\.2\.1 The account is disabled\s+more text",
             "Diagnostic-Code has the whole reply")
    else:
        skip("no DSN to look at", 3)
    st = rcpt_states(srv)
    is_(st.get("busy@example.org"), "pending", "busy@ stays pending (4.2.1)")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
