#!/usr/bin/env python3
# 07-expiry: mail kept past its retention (clock moved with libfaketime)
# fails 4.4.7 and a DSN saying so reaches the sender's MX; a null-sender
# message expires silently.
import email
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    env = faketime_env("+8d")
    if env is None:
        skip_all("libfaketime not installed")
    dead = free_port_on("127.0.0.2")                     # the primary never answers
    mxport = free_port_on("127.0.0.3")
    smx = FakeSMTP(host="127.0.0.3", port=mxport, name="mx.sender.test").start()
    dns = Dnsmasq(mx=[("sender.test", "mx.sender.test", 10)],
                  hosts=[("mx.sender.test", "127.0.0.3")]).start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % dead,
                           "retention": "7d"}],
                 settings={"resolver": dns.address,
                           "delivery": fast_delivery(mx_port=mxport)})
    srv.start()
    code, text = send_smtplib(srv, "alice@sender.test", ["u1@example.org", "u2@example.org"],
                              make_message("expiring", extra_headers=["X-Marker: exp"]))
    q1 = qid_of(text)
    code, text = send_smtplib(srv, "", ["u3@example.org"], make_message("nullexp"))
    q2 = qid_of(text)
    ok(q1 and q2, "two messages queued")
    ok(wait_log(srv, r"destination example\.org: \w+ -> down", 8) is not None, "primary down")
    time.sleep(1)
    is_(len(srv.queue()), 2, "both kept while within retention")
    unlike(srv.log(), r"status=expired", "nothing expired yet")
    is_(srv.stop(), 0, "stopped")

    mark = len(srv.log())
    srv.start(env=env)
    ok(wait_log(srv, r"%s: to=<u1@example\.org>, relay=[^,]*, delay=\d+, dsn=4\.4\.7, status=expired"
                % q1, 10, mark) is not None, "u1@ expired with dsn=4.4.7")
    ok(wait_log(srv, r"%s: to=<u2@example\.org>, .*dsn=4\.4\.7, status=expired" % q1, 5, mark)
       is not None, "u2@ expired")
    ok(wait_log(srv, r"%s: to=<u3@example\.org>, .*dsn=4\.4\.7, status=expired" % q2, 5, mark)
       is not None, "null-sender message expired")
    m = wait_log(srv, r"to=<u1@example\.org>, [^\n]*delay=(\d+)", 1, mark)
    ok(m is not None and int(m.group(1)) >= 7 * 86400, "delay counts the kept time (%s s)" %
       (m.group(1) if m else "?"))

    ok(wait_for(lambda: smx.count() >= 1, 15), "a DSN reached the sender domain's MX")
    if smx.messages:
        d = smx.messages[0]
        is_(d["sender"], "", "DSN from the null sender")
        is_(d["rcpts"], ["alice@sender.test"], "DSN to alice@sender.test")
        msg = email.message_from_bytes(d["body"])
        is_(msg.get_content_type(), "multipart/report", "multipart/report")
        ds = ""
        hdrs = ""
        for part in msg.walk():
            if part.get_content_type() == "message/delivery-status":
                ds += "".join(str(x) for x in part.get_payload()) if part.is_multipart() \
                    else str(part.get_payload())
            if part.get_content_type() in ("text/rfc822-headers", "message/rfc822"):
                hdrs += str(part.get_payload() if not part.is_multipart() else part.get_payload()[0])
        like(ds, r"(?i)Status:\s*4\.4\.7", "DSN Status: 4.4.7")
        like(ds, r"(?i)Action:\s*failed", "DSN Action: failed")
        like(ds, r"(?i)Final-Recipient:\s*rfc822;\s*u1@example\.org", "DSN names u1@")
        like(ds, r"(?i)Final-Recipient:\s*rfc822;\s*u2@example\.org", "DSN names u2@")
        like(hdrs, r"X-Marker: exp", "original headers in the DSN")
    ok(wait_empty(srv, 15), "queue empty: expired mail gone, DSN delivered")
    time.sleep(1)
    is_(smx.count(), 1, "exactly one DSN (none for the null sender)")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
