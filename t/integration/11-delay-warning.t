#!/usr/bin/env python3
# 11-delay-warning: with delivery.delay_warning set, a message still
# waiting after that long earns its sender one "delayed" notice (RFC 3464
# Action: delayed, Will-Retry-Until) while the message itself stays queued;
# without the setting, no notice.
import email
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def run(warning):
    env = faketime_env("+2h")
    dead = free_port_on("127.0.0.2")
    mxport = free_port_on("127.0.0.3")
    smx = FakeSMTP(host="127.0.0.3", port=mxport, name="mx.sender.test").start()
    dns = Dnsmasq(mx=[("sender.test", "mx.sender.test", 10)],
                  hosts=[("mx.sender.test", "127.0.0.3")]).start()
    delivery = fast_delivery(mx_port=mxport)
    if warning:
        delivery["delay_warning"] = "1h"
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % dead,
                           "retention": "7d"}],
                 settings={"resolver": dns.address, "delivery": delivery})
    srv.start()
    code, text = send_smtplib(srv, "bob@sender.test", ["w1@example.org"],
                              make_message("waiting", extra_headers=["X-Marker: delayed"]))
    q = qid_of(text)
    ok(q, "message queued")
    time.sleep(1)
    is_(smx.count(), 0, "no notice within the first hour")
    is_(srv.stop(), 0, "stopped")
    srv.start(env=env)
    if warning:
        ok(wait_for(lambda: smx.count() >= 1, 15), "a delay notice reached the sender's MX")
        if smx.messages:
            d = smx.messages[0]
            is_(d["sender"], "", "notice from the null sender")
            is_(d["rcpts"], ["bob@sender.test"], "notice to the sender")
            msg = email.message_from_bytes(d["body"])
            ds = ""
            for part in msg.walk():
                if part.get_content_type() == "message/delivery-status":
                    ds += "".join(str(x) for x in part.get_payload()) if part.is_multipart() \
                        else str(part.get_payload())
            like(ds, r"(?i)Action:\s*delayed", "Action: delayed")
            like(ds, r"(?i)Will-Retry-Until:", "Will-Retry-Until given")
            like(ds, r"(?i)Final-Recipient:\s*rfc822;\s*w1@example\.org", "names the recipient")
        time.sleep(1.5)
        is_(smx.count(), 1, "exactly one delay notice")
    else:
        time.sleep(3)
        is_(smx.count(), 0, "no notice without delay_warning")
    st = rcpt_states(srv)
    is_(st.get("w1@example.org"), "pending", "the message itself is still queued")
    is_(srv.stop(), 0, "mxkeepd exits 0")
    smx.stop()
    dns.stop()


def main():
    require_binaries()
    if faketime_env("+1s") is None:
        skip_all("libfaketime not installed")
    run(True)
    run(False)


run_main(main)
