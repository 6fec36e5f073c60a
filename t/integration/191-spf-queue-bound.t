#!/usr/bin/env python3
# run-all: alone (250 within 0.8 s)
# 191-spf-queue-bound (issue 10 section 5; SPF must never cost the accept
# rate or memory): the checks waiting for a worker are bounded by
# spf.queue.  With one worker stuck on a resolver that never answers and
# a queue of one, a third MAIL's check is answered temperror at once
# (logged once, counted in /metrics as spf_unchecked_total{reason="queue"}),
# its message is accepted without waiting and recorded with temperror;
# when the queue has room again that is logged once too.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))         # bound, never read: queries vanish
    mport = free_port_on("127.0.0.1")
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:9"}],
                 settings={"resolver": "127.0.0.1:%d" % hole.getsockname()[1],
                           "spf": {"timeout": "1s", "threads": 1, "queue": 1, "breaker": 1000},
                           "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()

    held = []
    for i in range(2):                  # one check running, one waiting
        c = srv.raw()
        c.ehlo("helo-a.test")
        is_(c.cmd("MAIL FROM:<user%d@pass.test>" % i).code, 250, "MAIL %d: 250" % i)
        held.append(c)
    is_(metric_value(metrics_get(mport), "spf_unchecked_total", reason="queue"), 0.0,
        "/metrics: none unchecked while the queue has room")
    c = srv.raw()
    c.ehlo("helo-a.test")
    t0 = time.monotonic()
    rs = c.transaction("over@pass.test", ["user@example.org"], make_message("over"))
    took = time.monotonic() - t0
    is_(rs[-1].code, 250, "the third message: accepted")
    ok(took < 0.8, "the third message: no wait (%.2fs)" % took)
    qid = QID_RE.search(rs[-1].text).group(1) if QID_RE.search(rs[-1].text) else "?"
    like(srv.log(), r"%s: spf: mailfrom=temperror helo=temperror\n" % qid,
         "its check was answered temperror at once and recorded at the commit")
    like(srv.log(), r"spf: 1 checks waiting \(spf\.queue\): new checks are answered temperror",
         "the full queue is logged")
    is_(metric_value(metrics_get(mport), "spf_unchecked_total", reason="queue"), 1.0,
        "/metrics: one check unchecked for the full queue")
    c.cmd("QUIT")
    c.close()
    for h in held:
        h.close()
    # the stuck checks end (two tries of each lookup): a later MAIL's check
    # gets into the queue again
    def later():
        c = srv.raw()
        c.ehlo("helo-a.test")
        code = c.cmd("MAIL FROM:<later@pass.test>").code
        c.close()
        return code == 250 and "spf: the check queue has room again" in srv.log()
    ok(wait_for(later, 30, 1.0), "room again is logged")
    is_(len(re.findall(r"checks waiting \(spf\.queue\)", srv.log())), 1, "the full queue logged once")
    hole.close()
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
