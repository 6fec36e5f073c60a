#!/usr/bin/env python3
# 04-rcpt-results: per-recipient answers of the primary: 250 -> done,
# 450 -> kept and retried (delivered once the primary takes it, without
# sending to the others again), 550 -> bounced, and the RFC 3464 DSN is
# delivered by MX lookup of the sender's domain.  The null sender and
# NOTIFY=NEVER get no DSN.
import email
import email.policy
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

STATE = {"b": "450 4.2.0 <b@example.org>: mailbox busy, try later"}


def answers(addr):
    local = addr.split("@")[0].lower()
    if local == "b":
        return STATE["b"]
    if local.startswith("c"):
        return "550 5.1.1 <%s>: Recipient address rejected: no such user" % addr
    return None


def parse_dsn(body):
    msg = email.message_from_bytes(body, policy=email.policy.compat32)
    out = {"msg": msg, "status": [], "recipients": [], "actions": [], "diag": [],
           "headers_part": None, "text": None}
    for part in msg.walk():
        ct = part.get_content_type()
        if ct == "message/delivery-status":
            payload = part.get_payload()
            blocks = payload if isinstance(payload, list) else \
                [email.message_from_string(x) for x in str(payload).split("\n\n") if x.strip()]
            for b in blocks:
                if b.get("Final-Recipient"):
                    out["recipients"].append(b.get("Final-Recipient"))
                    out["actions"].append(b.get("Action"))
                    out["status"].append(b.get("Status"))
                    out["diag"].append(b.get("Diagnostic-Code"))
        elif ct in ("text/rfc822-headers", "message/rfc822"):
            p = part.get_payload()
            out["headers_part"] = p if isinstance(p, str) else str(p[0] if isinstance(p, list) else p)
        elif ct == "text/plain" and out["text"] is None:
            out["text"] = part.get_payload(decode=True)
    return out


def check_dsn(dsn):
    is_(dsn["sender"], "", "DSN has the null envelope sender")
    is_(dsn["rcpts"], ["alice@sender.test"], "DSN goes to the original sender")
    p = parse_dsn(dsn["body"])
    h = p["msg"]
    like(h.get("From", ""), r"MAILER-DAEMON@mx2\.example\.net", "DSN From: MAILER-DAEMON@hostname")
    like(h.get("To", ""), r"alice@sender\.test", "DSN To: the sender")
    is_(h.get_content_type(), "multipart/report", "DSN is multipart/report")
    is_(h.get_param("report-type"), "delivery-status", "report-type=delivery-status")
    ok(h.get("Message-ID") is not None and h.get("Date") is not None, "DSN has Message-ID and Date")
    is_(len(p["recipients"]), 1, "one recipient reported")
    like(p["recipients"][0] if p["recipients"] else "", r"(?i)rfc822;\s*c@example\.org",
         "Final-Recipient: rfc822; c@example.org")
    is_([a.strip().lower() if a else a for a in p["actions"]], ["failed"], "Action: failed")
    like(p["status"][0] if p["status"] else "", r"^5\.\d+\.\d+$", "Status: 5.x.x")
    like(p["diag"][0] if p["diag"] else "", r"(?i)smtp;\s*550", "Diagnostic-Code: smtp; 550 ...")
    hp = p["headers_part"] or ""
    like(hp, r"Message-ID: <mixed@example\.com>", "original headers returned (Message-ID)")
    like(hp, r"X-Original-Marker: keep-me", "original headers returned (X-Original-Marker)")
    unlike(" ".join(p["recipients"]), r"[ab]@example\.org", "a@ and b@ are not in the DSN")
    unlike(dsn["body"].decode("latin-1"), r"line 0 of mixed", "RET default (HDRS): body not returned")


def main():
    require_binaries()
    prim = FakeSMTP(host="127.0.0.2", rcpt=answers, name="primary.example.org").start()
    mxport = free_port_on("127.0.0.3")
    smx = FakeSMTP(host="127.0.0.3", port=mxport, name="mx.sender.test").start()
    dns = Dnsmasq(mx=[("sender.test", "mx.sender.test", 10)],
                  hosts=[("mx.sender.test", "127.0.0.3")]).start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"resolver": dns.address,
                           "delivery": fast_delivery(probe_max="2s", mx_port=mxport)})
    srv.start()

    msg = make_message("mixed", extra_headers=["X-Original-Marker: keep-me"])
    code, text = send_smtplib(srv, "alice@sender.test",
                              ["a@example.org", "b@example.org", "c@example.org"], msg)
    is_(code, 250, "message for a, b, c accepted")
    qid = qid_of(text)
    ok(wait_for(lambda: prim.count() >= 1, 8), "primary got the message")
    m = prim.messages[0] if prim.messages else {}
    is_(m.get("rcpts"), ["a@example.org"], "primary took a@ only")
    is_(m.get("sender"), "alice@sender.test", "envelope sender kept")
    ok(wait_log(srv, r"%s: to=<c@example\.org>, relay=[^,]*\[127\.0\.0\.2\]:%d, delay=\d+, "
                r"dsn=5\.1\.1, status=bounced \(550" % (qid, prim.port), 8) is not None,
       "log: c@ status=bounced with dsn=5.1.1")
    like(srv.log(), r"%s: to=<a@example\.org>, relay=.*dsn=2\.0\.0, status=sent \(250" % qid,
         "log: a@ status=sent")
    like(srv.log(), r"%s: to=<b@example\.org>, relay=.*dsn=4\.2\.0, status=deferred \(450" % qid,
         "log: b@ status=deferred")
    st = {}
    for qm in srv.queue():
        if qm["qid"] == qid:
            st = {r["addr"]: r["state"] for r in qm.get("recipients", [])}
    is_(st.get("b@example.org"), "pending", "b@ stays pending")
    ok(st.get("a@example.org") in ("sent", None), "a@ done (%s)" % st.get("a@example.org"))
    ok(st.get("c@example.org") in ("bounced", None), "c@ final (%s)" % st.get("c@example.org"))

    # --- the DSN, delivered to the sender's MX ---
    ok(wait_for(lambda: smx.count() >= 1, 10), "a DSN reached the sender domain's MX")
    if smx.messages:
        check_dsn(smx.messages[0])
    else:
        diag("queue now: %s" % json.dumps(srv.queue()))
    like(srv.log(), r"%s: sender non-delivery notification: [0-9A-V]{12}" % qid,
         "log: sender non-delivery notification")

    # A 4xx recipient waits for the destination's next pass (about
    # 2 x probe_min here), it is not hammered.
    time.sleep(3)
    nb = len([a for a, _ in prim.rcpt_log if a == "b@example.org"])
    ok(nb <= 6, "450 recipient retried with back-off, not in a tight loop (%d RCPT b@ in ~3 s)" % nb)

    # --- b@ accepted on retry; a@ not sent again ---
    STATE["b"] = None
    ok(wait_for(lambda: prim.count() >= 2, 15), "retry delivered b@ once the primary took it")
    m2 = prim.messages[1] if len(prim.messages) > 1 else {}
    is_(m2.get("rcpts"), ["b@example.org"], "the retry carried b@ only (a@ not sent twice)")
    is_(message_id(m2.get("body")), "<mixed@example.com>", "the retry is the same message")
    ok(wait_for(lambda: qid not in srv.queue_by_qid(), 5), "message left the queue: every recipient final")
    time.sleep(0.5)
    is_(prim.count(), 2, "no further copies")

    # --- the null sender is never bounced ---
    ndsn = smx.count()
    code, text = send_smtplib(srv, "", ["c2@example.org"], make_message("nullsender"))
    nq = qid_of(text)
    ok(wait_log(srv, r"%s: to=<c2@example\.org>, .*status=bounced" % nq, 8) is not None,
       "null-sender message: c2@ bounced")
    ok(wait_for(lambda: nq not in srv.queue_by_qid(), 5), "null-sender message left the queue")
    # --- NOTIFY=NEVER gets no DSN either ---
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<alice@sender.test>")
    r = c.cmd("RCPT TO:<c3@example.org> NOTIFY=NEVER")
    c.cmd("DATA")
    c.send(dot_stuff(make_message("never")))
    r = c.reply()
    c.cmd("QUIT")
    c.close()
    vq = qid_of(r.text)
    ok(wait_log(srv, r"%s: to=<c3@example\.org>, .*status=bounced" % vq, 8) is not None,
       "NOTIFY=NEVER message: c3@ bounced")
    time.sleep(3)
    is_(smx.count(), ndsn, "no DSN for the null sender nor for NOTIFY=NEVER")
    unlike(srv.log(), r"%s: sender non-delivery" % nq, "log: no notification for the null sender")
    ok(wait_empty(srv, 5), "queue empty at the end")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
