#!/usr/bin/env python3
# 08-restart: a clean stop keeps every message; kill -9 while 20 clients
# send loses nothing that got a 250, byte-exact, and keeps nothing half.
import os
import smtplib
import sys
import threading
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

CLIENTS = 20
PER_CLIENT = 25
KILL_AFTER_ACKS = 150
KILL_AFTER_SECONDS = 8.0


def msg_for(tag, i):
    # Mostly small messages, some large enough to live in body files.
    size = (120000 + i * 37) if i % 7 == 3 else (300 + (i * 131) % 5000)
    return make_message(tag, size=size)


def check_all(srv, acked, label):
    q = srv.queue_by_qid()
    missing = [x for x in acked if x not in q]
    is_(missing, [], "%s: every acknowledged QID is in the queue (%d)" % (label, len(acked)))
    bad = []
    for qid, msg in acked.items():
        _, rest = split_received(srv.body(qid))
        if rest != msg:
            bad.append(qid)
    is_(bad, [], "%s: every acknowledged body byte-exact" % label)
    return q


def main():
    require_binaries()
    srv = Server()
    srv.start()

    # --- clean stop and start ---
    acked = {}
    s = srv.smtp()
    s.ehlo("restart.example.com")
    for i in range(30):
        m = msg_for("clean%d" % i, i)
        s.mail("r@example.com")
        s.rcpt("user@example.org")
        code, text = s.data(m)
        if code == 250 and qid_of(text):
            acked[qid_of(text)] = m
    s.quit()
    is_(len(acked), 30, "30 messages acknowledged")
    is_(len(srv.queue()), 30, "30 in the queue before stop")
    rc = srv.stop()
    is_(rc, 0, "SIGTERM: exit 0")
    srv.start()
    q = check_all(srv, acked, "after SIGTERM restart")
    is_(len(q), 30, "exactly 30 after restart")

    # --- kill -9 under load ---
    lock = threading.Lock()
    load_acked = {}
    sent = {}
    errors = []
    stop = threading.Event()

    def client(n):
        i = 0
        while i < PER_CLIENT and not stop.is_set():
            try:
                s = smtplib.SMTP("127.0.0.1", srv.port, local_hostname="c%d.example.com" % n, timeout=10)
                s.ehlo("c%d.example.com" % n)
                for _ in range(5):
                    if i >= PER_CLIENT:
                        break
                    tag = "k%d-%d" % (n, i)
                    m = msg_for(tag, n * PER_CLIENT + i)
                    with lock:
                        sent[tag] = m
                    i += 1
                    s.mail("load%d@example.com" % n)
                    s.rcpt("user@example.org")
                    code, text = s.data(m)
                    qid = qid_of(text.decode("latin-1") if isinstance(text, bytes) else text)
                    if code == 250 and qid:
                        with lock:
                            load_acked[qid] = m
                s.quit()
            except (OSError, smtplib.SMTPException) as e:
                with lock:
                    errors.append(repr(e))
                if stop.is_set():
                    return
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < KILL_AFTER_SECONDS:
        with lock:
            if len(load_acked) >= KILL_AFTER_ACKS:
                break
        time.sleep(0.01)
    srv.kill9()
    stop.set()
    with lock:
        snapshot = dict(load_acked)
    for t in threads:
        t.join(15)
    ok(not any(t.is_alive() for t in threads), "every client thread ended")
    with lock:
        final_acked = dict(load_acked)
    diag("acknowledged before kill -9: %d (of %d attempted), client errors: %d"
         % (len(final_acked), len(sent), len(errors)))
    ok(len(snapshot) > 0, "some messages were acknowledged before the kill")

    srv.start()
    acked.update(final_acked)
    q = check_all(srv, acked, "after kill -9")
    # Nothing half kept: every queued message reads back whole and is one
    # of the messages a client sent (acknowledged or not).
    by_text = {m: tag for tag, m in sent.items()}
    clean = set(acked.values())
    half = []
    for qid in q:
        _, rest = split_received(srv.body(qid))
        if rest is None or (rest not in by_text and rest not in clean):
            half.append(qid)
    is_(half, [], "every queued message reads back whole")
    diag("queued but never acknowledged (killed before the 250): %d" % (len(q) - len(acked)))
    tmp = os.path.join(srv.spool, "tmp")
    if os.path.isdir(tmp):
        is_(os.listdir(tmp), [], "no leftovers in spool/tmp after recovery")

    # New QIDs after the restart sort after every old one.
    s = srv.smtp()
    s.ehlo("restart.example.com")
    s.mail("r@example.com")
    s.rcpt("user@example.org")
    code, text = s.data(make_message("after"))
    s.quit()
    nq = qid_of(text.decode("latin-1"))
    is_(code, 250, "accepting again after recovery")
    ok(nq is not None and all(nq > x for x in q), "new QID sorts after every existing one")
    rc = srv.stop()
    is_(rc, 0, "clean exit at the end")


run_main(main)
