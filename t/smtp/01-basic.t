#!/usr/bin/env python3
# 01-basic: greeting, EHLO extensions, a full transaction stored
# byte-exact, swaks, HELO, the small commands, MAIL/RCPT parameters.
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

MSG_SIZE = 10485760
ENH = r"^[245]\.\d{1,3}\.\d{1,3} "


def check_stored(srv, qid, msg, helo, proto, name):
    body = srv.body(qid)
    ok(body is not None, "%s: mxkeepctl cat %s works" % (name, qid))
    rec, rest = split_received(body)
    is_(rest, msg, "%s: body byte-exact after our Received header" % name)
    text = unfold(rec or b"")
    like(text, r"^Received: ", "%s: stored body starts with Received" % name)
    like(text, re.escape(qid), "%s: Received names the QID" % name)
    like(text, re.escape(helo), "%s: Received names the HELO" % name)
    like(text, r"\b127\.0\.0\.1\b", "%s: Received names the client address" % name)
    like(text, re.escape(HOSTNAME), "%s: Received names our hostname" % name)
    like(text, r"\bwith %s\b" % proto, "%s: Received says with %s" % (name, proto))
    like(text, r";\s*\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", "%s: Received ends in a date" % name)
    n = len(re.findall(rb"(?m)^Received:", body or b""))
    is_(n, len(re.findall(rb"(?m)^Received:", msg)) + 1, "%s: exactly one Received header added" % name)
    return body


def main():
    require_binaries()
    srv = Server(tls=True, limits={"message_size": MSG_SIZE})
    srv.start()

    # --- greeting and EHLO ---
    c = srv.raw()
    is_(c.greeting.code, 220, "greeting is 220")
    like(c.greeting.text, re.escape(HOSTNAME), "greeting names our hostname")
    r = c.ehlo("client.example.com")
    is_(r.code, 250, "EHLO 250")
    like(r.lines[0], re.escape(HOSTNAME), "EHLO first line names our hostname")
    exts = {}
    for line in r.lines[1:]:
        parts = line.split()
        if parts:
            exts[parts[0].upper()] = parts[1:]
    for e in ("PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "STARTTLS", "ETRN",
              "SMTPUTF8", "DSN", "CHUNKING"):
        ok(e in exts, "EHLO advertises %s" % e)
    is_(exts.get("SIZE"), [str(MSG_SIZE)], "SIZE advertises message_size")

    # --- small commands ---
    r = c.cmd("NOOP")
    is_(r.code, 250, "NOOP 250")
    like(r.last, ENH, "NOOP reply has an enhanced status code")
    r = c.cmd("RSET")
    is_(r.code, 250, "RSET 250")
    like(r.last, ENH, "RSET has an enhanced code")
    r = c.cmd("HELP")
    ok(r.code in (214, 211), "HELP 214 (got %s)" % r.code)
    like(r.last, ENH, "HELP has an enhanced code")
    r = c.cmd("VRFY user@example.org")
    is_(r.code, 252, "VRFY 252")
    like(r.last, ENH, "VRFY has an enhanced code")
    r = c.cmd("ETRN example.org")
    is_(r.code, 251, "ETRN with nothing queued answers 251")
    like(r.last, r"^2\.0\.0 OK, no messages waiting for node example\.org", "ETRN 2.0.0 text names the node")
    r = c.cmd("RCPT TO:<user@example.org>")
    is_(r.code, 503, "RCPT before MAIL: 503")
    like(r.last, r"^5\.5\.1 ", "RCPT before MAIL: 5.5.1")
    r = c.cmd("DATA")
    ok(r.code in (503, 554), "DATA before MAIL refused (%s)" % r)
    r = c.cmd("FROBNICATE")
    is_(r.code, 500, "unknown command 500")
    like(r.last, r"^5\.5\.[12] ", "unknown command has an enhanced code")

    # --- parameters ---
    r = c.cmd("MAIL FROM:<a@example.com> FOO=bar")
    is_(r.code, 555, "unknown MAIL parameter: 555")
    like(r.last, r"^5\.5\.4 ", "unknown MAIL parameter: 5.5.4")
    r = c.cmd("MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=env+2Bid123")
    is_(r.code, 250, "MAIL with SIZE BODY RET ENVID: 250")
    like(r.last, r"^2\.1\.0 ", "MAIL 2.1.0")
    r = c.cmd("RCPT TO:<user@example.org> BOGUS=1")
    is_(r.code, 555, "unknown RCPT parameter: 555")
    like(r.last, r"^5\.5\.4 ", "unknown RCPT parameter: 5.5.4")
    r = c.cmd("RCPT TO:<user@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Buser@example.org")
    is_(r.code, 250, "RCPT with NOTIFY ORCPT: 250")
    like(r.last, r"^2\.1\.5 ", "RCPT 2.1.5")
    r = c.cmd("RCPT TO:<second@example.org> NOTIFY=NEVER")
    is_(r.code, 250, "RCPT with NOTIFY=NEVER: 250")
    r = c.cmd("DATA")
    is_(r.code, 354, "DATA 354")
    pmsg = make_message("params", extra_headers=["Content-Transfer-Encoding: 8bit"]) + \
        "caf\u00e9 8bit line\r\n".encode("utf-8")
    c.send(dot_stuff(pmsg))
    r = c.reply()
    is_(r.code, 250, "parameter message accepted")
    like(r.last, r"^2\.0\.0 Ok: queued as [0-9A-V]{12}$", "250 2.0.0 Ok: queued as QID")
    pqid = qid_of(r.text)

    r = c.cmd("MAIL FROM:<u@example.com> SMTPUTF8")
    is_(r.code, 250, "MAIL with SMTPUTF8: 250")
    r = c.cmd("RSET")
    is_(r.code, 250, "RSET after MAIL")
    r = c.cmd("MAIL FROM:<u@example.com> RET=BOGUS")
    ok(r.code in (501, 555), "bad RET value refused (%s)" % r)
    r = c.cmd("MAIL FROM:<u@example.com> ENVID=bad+ZZ")
    ok(r.code in (501, 555), "malformed xtext in ENVID refused (%s)" % r)
    r = c.cmd("MAIL FROM:<u@example.com> ENVID=a+0Db")
    ok(r.code in (501, 555), "xtext decoding to CR refused (%s)" % r)
    r = c.cmd("QUIT")
    is_(r.code, 221, "QUIT 221")
    like(r.last, r"^2\.0\.0 ", "QUIT 2.0.0")
    ok(c.closed(5), "connection closed after QUIT")
    c.close()

    q = srv.queue_by_qid()
    ok(pqid in q, "parameter message in the queue")
    m = q.get(pqid, {})
    is_(m.get("sender"), "a@example.com", "sender stored")
    rcpts = {x.get("addr"): x for x in m.get("recipients", [])}
    is_(sorted(rcpts), ["second@example.org", "user@example.org"], "both recipients stored")
    is_({x.get("domain") for x in rcpts.values()}, {"example.org"}, "recipient domain stored")
    is_({x.get("state") for x in rcpts.values()}, {"pending"}, "recipients pending")
    sh = srv.show(pqid) if pqid else None
    ok(sh is not None, "mxkeepctl --json show works")
    sh = sh or {}
    is_(sh.get("envid"), "env+id123", "ENVID stored xtext-decoded")
    is_(str(sh.get("ret", "")).lower(), "hdrs", "RET=HDRS stored")
    like(str(sh.get("body", "")).lower(), r"^8bit", "BODY=8BITMIME stored")
    is_(sh.get("helo"), "client.example.com", "HELO stored")
    is_(sh.get("client_addr"), "127.0.0.1", "client address stored")
    u = json.dumps(rcpts.get("user@example.org", {})).lower()
    like(u, r"orig\+user@example\.org", "ORCPT stored decoded")
    like(u, r"success", "NOTIFY=SUCCESS stored")
    like(u, r"failure", "NOTIFY=FAILURE stored")
    like(json.dumps(rcpts.get("second@example.org", {})).lower(), r"never", "NOTIFY=NEVER stored")
    if pqid:
        check_stored(srv, pqid, pmsg, "client.example.com", "ESMTP", "params")

    # --- a full transaction with smtplib ---
    msg = make_message("smtplib", body_lines=5) + \
        b".leading dot line\r\n..two dots\r\n.\r\n \r\nlast line\r\n"
    code, text = send_smtplib(srv, "sender@example.com", ["user@example.org"], msg)
    is_(code, 250, "smtplib transaction: 250")
    like(text, r"^2\.0\.0 Ok: queued as [0-9A-V]{12}$", "smtplib: queued as QID")
    qid = qid_of(text)
    q = srv.queue_by_qid()
    ok(qid in q, "smtplib message in the queue")
    m = q.get(qid, {})
    is_(m.get("sender"), "sender@example.com", "smtplib sender")
    is_([x.get("addr") for x in m.get("recipients", [])], ["user@example.org"], "smtplib recipient")
    body = check_stored(srv, qid, msg, "client.example.com", "ESMTP", "smtplib")
    rec, _ = split_received(body)
    like(unfold(rec or b""), r"user@example\.org", "Received names the single recipient")
    is_(m.get("size"), len(body or b""), "queue size is the stored body size")

    # --- null sender ---
    s = srv.smtp()
    s.ehlo("client.example.com")
    code, _ = s.mail("")
    is_(code, 250, "MAIL FROM:<> accepted")
    s.quit()

    # --- HELO instead of EHLO ---
    c = srv.raw()
    r = c.cmd("HELO helo.example.com")
    is_(r.code, 250, "HELO 250")
    is_(len(r.lines), 1, "HELO reply is one line")
    hmsg = make_message("helo")
    rs = c.transaction("h@example.com", ["user@example.org"], hmsg)
    is_([x.code for x in rs], [250, 250, 354, 250], "transaction after HELO")
    hqid = qid_of(rs[-1].text)
    c.cmd("QUIT")
    c.close()
    if hqid:
        check_stored(srv, hqid, hmsg, "helo.example.com", "SMTP", "HELO")
    else:
        ok(False, "HELO transaction gave a QID")

    # --- swaks ---
    r = run([SWAKS, "--server", "127.0.0.1:%d" % srv.port, "--from", "swaks@example.com",
             "--to", "user@example.org", "--ehlo", "swaks.example.com",
             "--header", "Subject: swaks test", "--body", "body from swaks", "--timeout", "10"],
            timeout=30)
    out = r.stdout.decode("latin-1")
    is_(r.returncode, 0, "swaks exit 0")
    sq = qid_of(out)
    ok(sq is not None, "swaks saw 'queued as QID'")
    if sq:
        b = srv.body(sq)
        rec, rest = split_received(b)
        like(unfold(rec or b""), r"swaks\.example\.com", "swaks: Received names its HELO")
        like((rest or b"").decode("latin-1"), r"Subject: swaks test\r\n", "swaks: header stored")
        like((rest or b"").decode("latin-1"), r"\r\n\r\nbody from swaks\r\n", "swaks: body stored")
        ok(b"\n" not in (rest or b"").replace(b"\r\n", b""), "swaks: only CRLF line ends stored")

    is_(len(srv.queue()), 4, "four messages queued in all")
    rc = srv.stop()
    is_(rc, 0, "SIGTERM: mxkeepd exits 0")


run_main(main)
