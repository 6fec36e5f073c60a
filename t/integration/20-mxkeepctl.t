#!/usr/bin/env python3
# 20-mxkeepctl: every mxkeepctl command and its JSON shape, with the daemon
# stopped (queue, summary, show, cat, count read the index; the daemon
# commands say "daemon not running", exit 69) and running (flush, hold,
# release, delete, delete --domain, bounce, reload, stats, summary with the
# live destination state); the control socket's refusals (file mode, peer
# credentials, malformed requests) and a client vanishing mid-request.
import json
import os
import shutil
import socket
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

EX_USAGE, EX_NOINPUT, EX_NOUSER, EX_UNAVAILABLE, EX_TEMPFAIL, EX_NOPERM, EX_CONFIG = \
    64, 66, 67, 69, 75, 77, 78
FILE_BODY = 100000          # over the spool's inline limit: a body file

MSG_KEYS = {"qid", "arrival", "arrival_iso", "size", "sender", "flags", "recipients"}
RCPT_KEYS = {"addr", "domain", "state", "attempts", "last_try", "expiry", "last_reply",
             "orcpt", "notify"}
SUMMARY_KEYS = {"domain", "messages", "bytes", "oldest_arrival", "oldest_age", "state",
                "next_probe", "last_error", "source", "connections"}
SHOW_KEYS = MSG_KEYS | {"body", "ret", "envid", "client_addr", "client_name", "helo",
                        "headers", "headers_truncated"}


def ctl_json(srv, *args):
    r = srv.ctl("--json", *args)
    try:
        return r.returncode, json.loads(r.stdout.decode("utf-8"))
    except ValueError:
        diag("not JSON from %s: %r %r" % (args, r.stdout[:300], r.stderr[:300]))
        return r.returncode, None


def err_of(r):
    return r.stderr.decode("utf-8", "replace")


def summary_row(srv, domain):
    rc, d = ctl_json(srv, "summary")
    for row in (d or {}).get("domains", []):
        if row.get("domain") == domain:
            return row
    return None


def check_listings(srv, label, qids, big):
    """queue/summary/show/cat/count and their JSON shapes."""
    rc, d = ctl_json(srv, "queue")
    is_(rc, 0, "%s: queue --json exits 0" % label)
    msgs = (d or {}).get("messages", [])
    is_(sorted(m["qid"] for m in msgs), sorted(qids), "%s: queue lists every message" % label)
    ok(all(set(m) >= MSG_KEYS for m in msgs), "%s: message objects have the documented keys" % label)
    ok(all(set(r) >= RCPT_KEYS for m in msgs for r in m["recipients"]),
       "%s: recipient objects have the documented keys" % label)
    r = srv.ctl("queue", "example.org")
    like(r.stdout.decode(), r"-- \d+ messages?, \d+ bytes", "%s: queue DOMAIN text trailer" % label)

    rc, d = ctl_json(srv, "summary")
    is_(rc, 0, "%s: summary --json exits 0" % label)
    rows = (d or {}).get("domains", [])
    ok(rows and all(set(x) >= SUMMARY_KEYS for x in rows), "%s: summary rows have the keys" % label)
    r = srv.ctl("summary")
    like(r.stdout.decode(), r"DOMAIN\s+MSGS\s+BYTES\s+OLDEST\s+STATE", "%s: summary text header" % label)

    rc, d = ctl_json(srv, "show", big)
    is_(rc, 0, "%s: show --json exits 0" % label)
    ok(d is not None and set(d) >= SHOW_KEYS, "%s: show has the documented keys" % label)
    like((d or {}).get("headers", ""), r"Message-ID: <big@example\.com>", "%s: show has the headers" % label)
    body = srv.body(big)
    ok(body is not None and b"Message-ID: <big@example.com>" in body, "%s: cat writes the body" % label)
    rc, d = ctl_json(srv, "count")
    is_(d, {"count": len(qids)}, "%s: count --json" % label)


def main():
    require_binaries()
    sink = SmtpSink()                                   # example.org: down for now
    held = FakeSMTP(host="127.0.0.2").start()           # hold.test: up
    mxport = free_port_on("127.0.0.3")
    smx = FakeSMTP(host="127.0.0.3", port=mxport, name="mx.sender.test").start()
    dns = Dnsmasq(mx=[("sender.test", "mx.sender.test", 10)],
                  hosts=[("mx.sender.test", "127.0.0.3")]).start()
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.1]:%d" % sink.port},
        {"name": "hold.test", "primary": "[127.0.0.2]:%d" % held.port},
        {"name": "del.test", "primary": "[127.0.0.2]:9"},
    ], settings={"resolver": dns.address,
                 # Probes far apart: only a flush can deliver to example.org.
                 "delivery": fast_delivery(probe_min="10m", probe_max="1h", mx_port=mxport)})
    srv.start()

    sent = send_batch(srv, 3, tag="early")
    code, text = send_smtplib(srv, "alice@sender.test", ["u@example.org"],
                              make_message("big", size=FILE_BODY))
    big = qid_of(text)
    qids = [q for q, _ in sent] + [big]
    srv.stop()

    # --- daemon stopped: the readers work, the daemon commands do not ---
    check_listings(srv, "offline", qids, big)
    row = summary_row(srv, "example.org")
    is_((row or {}).get("source"), "index", "offline: summary state comes from the index")
    for args in (["stats"], ["flush", "example.org"], ["hold", "hold.test"], ["reload"],
                 ["delete", big], ["bounce", big]):
        r = srv.ctl(*args)
        is_(r.returncode, EX_UNAVAILABLE, "offline: %s exits 69" % args[0])
    like(err_of(r), r"^mxkeepctl: daemon not running \(socket .*mxkeep\.sock\)\n$",
         "offline: one clear line naming the socket")

    # --- daemon running ---
    srv.start()
    check_listings(srv, "online", qids, big)
    row = summary_row(srv, "example.org")
    is_((row or {}).get("source"), "daemon", "online: summary merges the daemon's state")
    ok(isinstance((row or {}).get("connections"), int), "online: summary has connections")
    row = summary_row(srv, "hold.test")
    ok(row is not None and row["messages"] == 0,
       "online: a served domain known to the daemon is listed with nothing waiting")

    # stats: counters of this run
    n_new = 2
    send_batch(srv, n_new, tag="stats")
    rc, st = ctl_json(srv, "stats")
    is_(rc, 0, "stats --json exits 0")
    ok(isinstance(st, dict), "stats --json is one object")
    st = st or {}
    is_(st.get("messages_accepted_total"), n_new, "stats: messages_accepted_total counts this run")
    for k in ("smtpd_connections_total", "recipients_delivered_total", "dsn_queued_total",
              "in_sessions", "out_connections", "uptime_seconds", "queue_messages"):
        ok(isinstance(st.get(k), int), "stats has %s" % k)
    is_(st.get("queue_messages"), len(qids) + n_new, "stats: queue_messages")
    r = srv.ctl("stats")
    like(r.stdout.decode(), r"(?m)^messages_accepted_total\s+%d$" % n_new, "stats text: name value lines")

    # flush DOMAIN: the primary comes up, a flush (not a probe) delivers
    n_org = len(srv.queue())
    sink.start()
    time.sleep(1)
    is_(sink.count(), 0, "primary up: nothing delivered without a flush (probe in 10m)")
    r = srv.ctl("flush", "example.org")
    is_(r.returncode, 0, "flush example.org exits 0")
    like(r.stdout.decode(), r"^%d messages\n$" % n_org, "flush reports the messages waiting")
    ok(wait_for(lambda: sink.count() >= n_org, 15), "flush delivered the backlog to the sink")
    ok(wait_empty(srv, 10), "queue empty after the flush")
    rc, d = ctl_json(srv, "flush", "--all")
    is_(rc, 0, "flush --all exits 0")
    like((d or {}).get("reply", ""), r"^0 messages in \d+ destinations?, 0 held$", "flush --all --json reply")
    r = srv.ctl("flush", "nowhere.test")
    is_(r.returncode, EX_NOUSER, "flush of an unknown domain: exit 67")
    like(err_of(r), r"unknown domain nowhere\.test", "... and says so")
    r = srv.ctl("flush", "bad domain")
    is_(r.returncode, EX_USAGE, "flush of a malformed domain: exit 64")

    # hold / release
    r = srv.ctl("hold", "hold.test")
    is_(r.returncode, 0, "hold hold.test exits 0")
    send_batch(srv, 2, rcpt="u@hold.test", tag="held")
    time.sleep(2)
    is_(held.count(), 0, "held: nothing delivered")
    is_((summary_row(srv, "hold.test") or {}).get("state"), "held", "summary shows held")
    r = srv.ctl("flush", "hold.test")
    is_(r.returncode, EX_TEMPFAIL, "flush of a held domain: exit 75")
    like(err_of(r), r"hold\.test is held", "... with the reason")
    r = srv.ctl("release", "hold.test")
    is_(r.returncode, 0, "release hold.test exits 0")
    ok(wait_for(lambda: held.count() >= 2, 10), "released: both messages delivered")
    r = srv.ctl("hold", "nowhere.test")
    is_(r.returncode, EX_NOUSER, "hold of an unknown domain: exit 67")

    # delete QID (a body file, to see it go)
    code, text = send_smtplib(srv, "bob@sender.test", ["u@del.test"], make_message("del", size=FILE_BODY))
    dq = qid_of(text)
    path = os.path.join(srv.spool, "msg", dq[-2:], dq)
    ok(os.path.exists(path), "the big message has a body file")
    r = srv.ctl("delete", dq.lower())
    is_(r.returncode, 0, "delete QID exits 0 (lower case accepted)")
    like(r.stdout.decode(), r"deleted %s" % dq, "delete says what it deleted")
    ok(dq not in srv.queue_by_qid(), "deleted message gone from the queue")
    ok(wait_for(lambda: not os.path.exists(path), 5), "and its body file is gone")
    is_(srv.ctl("cat", dq).returncode, EX_NOINPUT, "cat of the deleted QID: exit 66")
    r = srv.ctl("delete", dq)
    is_(r.returncode, EX_NOINPUT, "delete of a missing QID: exit 66")
    like(err_of(r), r"no such message", "... no such message")
    is_(srv.ctl("delete", "not-a-qid").returncode, EX_USAGE, "delete of a malformed QID: exit 64")
    like(srv.log(), r"%s: removed by the administrator" % dq, "log: removed by the administrator")

    # delete --domain D --yes
    send_batch(srv, 3, rcpt="u@del.test", tag="deldom")
    r = srv.ctl("delete", "--domain", "del.test")
    is_(r.returncode, EX_USAGE, "delete --domain without --yes: exit 64")
    is_(len(srv.queue()), 3, "... and nothing deleted")
    rc, d = ctl_json(srv, "delete", "--domain", "del.test", "--yes")
    is_(rc, 0, "delete --domain del.test --yes exits 0")
    is_((d or {}).get("reply"), "3 deleted, 0 skipped", "delete --domain --json reply counts")
    is_(srv.queue(), [], "queue empty")

    # bounce QID: the sender gets a DSN via its MX
    code, text = send_smtplib(srv, "carol@sender.test", ["u@del.test"], make_message("bounceme"))
    bq = qid_of(text)
    r = srv.ctl("bounce", bq)
    is_(r.returncode, 0, "bounce QID exits 0")
    like(r.stdout.decode(), r"bounced %s" % bq, "bounce says what it bounced")
    ok(bq not in srv.queue_by_qid(), "bounced message left the queue")
    ok(wait_for(lambda: smx.count() >= 1, 15), "a DSN reached the sender's MX")
    dsn = smx.messages[0] if smx.messages else {}
    is_(dsn.get("sender"), "", "DSN has the null sender")
    is_(dsn.get("rcpts"), ["carol@sender.test"], "DSN goes to the sender")
    like((dsn.get("body") or b"").decode("latin-1"), r"returned by the administrator",
         "DSN says the administrator returned it")
    is_(srv.ctl("bounce", bq).returncode, EX_NOINPUT, "bounce of a missing QID: exit 66")

    # reload
    r = srv.ctl("reload")
    is_(r.returncode, 0, "reload exits 0")
    like(r.stdout.decode(), r"reloaded .*3 domains", "reload reports the new config")
    with open(srv.conf) as f:
        good = f.read()
    with open(srv.conf, "a") as f:
        f.write("this is not a setting\n")
    r = srv.ctl("reload")
    # mxkeepctl reads the config too: a broken file stops it before the daemon.
    is_(r.returncode, EX_CONFIG, "reload with a broken config: exit 78")
    with open(srv.conf, "w") as f:
        f.write(good)
    ok(srv.running(), "daemon alive after the reloads")

    # the socket: malformed requests, a client that goes away
    def raw(req, read=True):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(srv.ctl_socket)
        s.sendall(req)
        s.shutdown(socket.SHUT_WR)          # also ends a request without LF
        if not read:
            s.close()
            return b""
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        s.close()
        return out
    like(raw(b"bogus\n").decode(), r"^ERR 64 unknown command\n$", "unknown command: ERR 64")
    like(raw(b"x" * 5000 + b"\n").decode(), r"^ERR 64 request too long\n$", "over-long line: ERR 64")
    like(raw(b"flush  example.org\n").decode(), r"^ERR 64 ", "empty argument: ERR 64")
    like(raw(b"stats").decode(), r"^OK\n\{", "a line ended by EOF is taken")
    with open(srv.conf, "a") as f:
        f.write("this is not a setting\n")
    like(raw(b"reload\n").decode(), r"^ERR 78 .*keeping the old configuration\n$",
         "reload of a broken config over the socket: ERR 78, old config kept")
    with open(srv.conf, "w") as f:
        f.write(good)
    is_(srv.ctl("flush", "hold.test").returncode, 0, "the old config still serves hold.test")
    like(raw(b"status example.org\n").decode(),
         r'^OK\n\{"domain":"example\.org","served":true,"state":"\w+"', "status DOMAIN: JSON")
    send_batch(srv, 1, rcpt="u@del.test", tag="vanish")
    vq = srv.qids()[0]
    raw(("delete %s\n" % vq).encode(), read=False)
    ok(wait_for(lambda: vq not in srv.queue_by_qid(), 5), "a delete whose client left still runs")
    ok(srv.running() and srv.ctl("stats").returncode == 0, "daemon fine after the client vanished")

    # permission refusal
    if IS_ROOT:
        # A copy nobody can run: the build tree may sit in a 0700 directory.
        ctl_copy = os.path.join(srv.dir, "mxkeepctl")
        shutil.copy(MXKEEPCTL, ctl_copy)
        os.chmod(ctl_copy, 0o755)

        def as_nobody(*args):
            return run(["runuser", "-u", "nobody", "--", ctl_copy, "-c", srv.conf] + list(args),
                       timeout=CTL_TIMEOUT)
        st = os.stat(srv.ctl_socket)
        is_(oct(st.st_mode & 0o777), oct(0o660), "control socket is mode 0660")
        r = as_nobody("stats")
        is_(r.returncode, EX_NOPERM, "nobody: stats refused by the file mode, exit 77")
        like(err_of(r), r"permission denied", "... permission denied")
        # Loosened by hand: the daemon's own check still refuses.
        mark = len(srv.log())
        os.chmod(srv.ctl_socket, 0o666)
        r = as_nobody("flush", "example.org")
        os.chmod(srv.ctl_socket, 0o660)
        is_(r.returncode, EX_NOPERM, "nobody on a 0666 socket: refused by SO_PEERCRED, exit 77")
        like(err_of(r), r"permission denied", "... permission denied")
        ok(wait_log(srv, r"control: refused connection from uid 65534", 5, mark) is not None,
           "daemon logs the refusal")
        unlike(srv.log()[mark:], r"control: flush", "the refused request did nothing")
    else:
        skip("permission tests need root", 7)

    is_(srv.stop(), 0, "mxkeepd exits 0")
    r = srv.ctl("--json", "stats")
    is_(r.returncode, EX_UNAVAILABLE, "stopped again: stats exits 69")
    srv.start()
    is_(srv.ctl("stats").returncode, 0, "restart: the stale socket is replaced")


run_main(main)
