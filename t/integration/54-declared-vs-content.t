#!/usr/bin/env python3
# 54-declared-vs-content (issue 7, item 14): the outbound pre-check decides
# on what the message holds, not on what the sender declared.
#   MAIL FROM:<s@example.net> SMTPUTF8 with an all-ASCII message, to a
#     primary without SMTPUTF8: sent, without the parameter (0.1.0: 5.6.7);
#   SMTPUTF8 and a UTF-8 Subject, or a UTF-8 sender: 5.6.7, as before;
#   BODY=8BITMIME with an all-7-bit body to a primary without 8BITMIME:
#     sent without BODY= (0.1.0: 5.6.3);
#   BODY=8BITMIME with 8-bit octets in the body to it: 5.6.3.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def send_raw(srv, mail_cmd, rcpt, msg):
    c = srv.raw()
    c.cmd("EHLO client.test")
    r1 = c.cmd(mail_cmd)
    r2 = c.cmd("RCPT TO:<%s>" % rcpt)
    r3 = c.cmd("DATA")
    c.send(dot_stuff(msg))
    r = c.reply()
    c.cmd("QUIT")
    c.close()
    if (r1.code, r2.code, r3.code, r.code) != (250, 250, 354, 250):
        diag("raw send: %s %s %s %s" % (r1.code, r2.code, r3.code, r.code))
    return r.code, qid_of(r.text) if r.code == 250 else None


def main():
    require_binaries()
    noutf8 = FakeSMTP(host="127.0.0.2", name="noutf8.example.org").start()
    no8bit = FakeSMTP(host="127.0.0.2", eightbit=False, name="no8bit.example.org").start()
    srv = Server(domains=[{"name": "a.test", "primary": "[127.0.0.2]:%d" % noutf8.port},
                          {"name": "b.test", "primary": "[127.0.0.2]:%d" % no8bit.port}],
                 settings={"delivery": fast_delivery(probe_min="1s", probe_max="2s")})
    srv.start()

    ascii_msg = make_message("ascii")
    utf8_hdr = ("Subject: gr\u00fc\u00dfe\r\nMessage-ID: <utf8hdr@example.com>\r\n\r\nascii body\r\n"
                ).encode("utf-8")
    body8 = b"Subject: eight\r\nMessage-ID: <eight@example.com>\r\n\r\ncaf\xc3\xa9\r\n"
    seven = make_message("seven")

    c1, q1 = send_raw(srv, "MAIL FROM:<s@example.net> SMTPUTF8", "u1@a.test", ascii_msg)
    c2, q2 = send_raw(srv, "MAIL FROM:<s@example.net> SMTPUTF8", "u2@a.test", utf8_hdr)
    c3, q3 = send_raw(srv, "MAIL FROM:<j\u00f6rg@example.net> SMTPUTF8".encode("utf-8"),
                      "u3@a.test", make_message("utf8sender"))
    c4, q4 = send_raw(srv, "MAIL FROM:<s@example.net> BODY=8BITMIME", "u4@b.test", seven)
    c5, q5 = send_raw(srv, "MAIL FROM:<s@example.net> BODY=8BITMIME", "u5@b.test", body8)
    is_((c1, c2, c3, c4, c5), (250,) * 5, "all five accepted by mxkeepd")

    ok(wait_for(lambda: noutf8.count() >= 1, 10), "SMTPUTF8 declared, all ASCII: delivered")
    m = noutf8.messages[0] if noutf8.messages else {}
    is_(message_id(m.get("body")), message_id(ascii_msg), "it is the ASCII message")
    unlike(m.get("mail_args", ""), r"(?i)SMTPUTF8", "sent without the SMTPUTF8 parameter")
    ok(wait_log(srv, r"%s: to=<u2@a\.test>, .*dsn=5\.6\.7, status=bounced" % q2, 10) is not None,
       "UTF-8 in a header, primary without SMTPUTF8: 5.6.7")
    ok(wait_log(srv, r"%s: to=<u3@a\.test>, .*dsn=5\.6\.7, status=bounced" % q3, 10) is not None,
       "UTF-8 sender address, primary without SMTPUTF8: 5.6.7")

    ok(wait_for(lambda: no8bit.count() >= 1, 10), "BODY=8BITMIME declared, 7-bit body: delivered")
    m = no8bit.messages[0] if no8bit.messages else {}
    is_(message_id(m.get("body")), message_id(seven), "it is the 7-bit message")
    unlike(m.get("mail_args", ""), r"(?i)BODY=", "sent without BODY= to a peer without 8BITMIME")
    ok(wait_log(srv, r"%s: to=<u5@b\.test>, .*dsn=5\.6\.3, status=bounced" % q5, 10) is not None,
       "8-bit body, primary without 8BITMIME: 5.6.3")
    time.sleep(1)
    is_((noutf8.count(), no8bit.count()), (1, 1), "nothing else delivered")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
