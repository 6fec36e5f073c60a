#!/usr/bin/env python3
# 42-index-panic: one failed LMDB meta-page write (EIO injected by strace
# into the writer's pwrite64 of 120 octets at offset 32 or 4128 of
# data.mdb) puts LMDB in MDB_PANIC.  The daemon must notice, reopen the
# index and go on: the message of that moment gets 451, later ones 250
# again within a bound, the outage is logged once and counted in /metrics;
# when the reopen itself fails (index directory out of reach) it retries
# with back-off, logged once, and recovers when the directory is back;
# mail queued before and after is delivered once released; a fault in the
# middle of a flush to a slow primary does not stop it (deliveries go on
# after the reopen with no admin action); and a
# kill -9 at points along that path (just after the failure, just after the
# recovery) loses no acknowledged message.  Root only (ptrace).
import http.client
import os
import stat
import subprocess
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

STRACE = shutil.which("strace")
ATTEMPTS = 40               # commits tried until the injection hits a meta write
ATTACH_TIMEOUT = 5.0
RECOVER_TIMEOUT = 15.0      # failure to the first 250 again
META_RE = re.compile(r"pwrite64\(\d+, .*, 120, (32|4128)\) = -1 EIO .*INJECTED")
META_CALL_RE = re.compile(r"pwrite64\(\d+, .*, 120, (32|4128)[,)]")
ANY_INJECTED_RE = re.compile(r"^.*INJECTED.*$", re.M)
BLOCKED_SECONDS = 3.5        # the reopen fails for this long (several tries)
N_LOAD = 100                # messages being delivered when the fault comes
SLOW_DELAY = 0.5            # the slow primary's pause after each message
GO_ON = 5                   # deliveries after the reopen, to call it going on
MSG_SIZE = 1500             # inline bodies: all of it lives in the index


def attach(srv, nth, tag):
    """strace attached to every thread of the daemon, failing the nth
    pwrite64 on data.mdb with EIO.  Returns (proc, outfile)."""
    data = os.path.join(srv.spool, "index", "data.mdb")
    out = os.path.join(srv.dir, "strace-%s.out" % tag)
    err = os.path.join(srv.dir, "strace-%s.err" % tag)
    ef = open(err, "wb")
    p = subprocess.Popen([STRACE, "-f", "-p", str(srv.proc.pid), "-P", data,
                          "-e", "trace=pwrite64", "-e", "inject=pwrite64:error=EIO:when=%d" % nth,
                          "-o", out], stdout=subprocess.DEVNULL, stderr=ef)
    ef.close()
    # "Process N attached with M threads": printed once all are.
    if not wait_for(lambda: b"attached" in open(err, "rb").read(), ATTACH_TIMEOUT, 0.02):
        diag("strace did not attach: %s" % open(err, "rb").read().decode("latin-1")[-300:])
    return p, out


def detach(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def send_one(c, tag):
    m = make_message(tag, size=MSG_SIZE)
    rs = c.transaction("s@example.com", ["user@example.org"], m)
    return rs[-1], m


def settle(srv, quiet=0.3, bound=5.0):
    """Wait (at most `bound` s) until data.mdb has not been written for
    `quiet` s: the commits that follow a restart or an accepted message
    (scheduling, held state) are over, so the injection below lands in
    the test's own commit rather than in one of theirs."""
    data = os.path.join(srv.spool, "index", "data.mdb")
    t0 = time.monotonic()
    last, since = None, time.monotonic()
    while time.monotonic() - t0 < bound:
        try:
            m = os.stat(data).st_mtime_ns
        except OSError:
            m = None
        if m != last:
            last, since = m, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
        time.sleep(0.05)
    return False


def inject_meta_failure(srv, c, acked, tag, own=True):
    """Send messages one at a time under strace, moving the injection
    point, until it hits a meta-page write.  Returns the reply of that
    commit, or None.  With `own`, a meta-page failure that was not this
    message's commit (it got 250: the commit that failed was another
    one, e.g. a delivery outcome) does not count: the index recovers and
    the search goes on."""
    nth = 1
    for i in range(ATTEMPTS):
        if own:
            settle(srv)         # not during the flush: its writes never pause long
        p, out = attach(srv, nth, "%s%d" % (tag, i))
        r, m = send_one(c, "%s-try%d" % (tag, i))
        detach(p)
        if r.code == 250:
            acked[qid_of(r.text)] = m
        text = open(out, errors="replace").read()
        calls = [ln for ln in text.splitlines() if "pwrite64(" in ln]
        if META_RE.search(text):
            diag("meta write failed at try %d: %s" % (i, META_RE.search(text).group(0)[-60:]))
            if not own or r.code != 250:
                return r
            diag("... of another commit (this message got %s): the search goes on" % r)
            until_accepted(srv, c, acked, "%s-recover%d" % (tag, i))
            nth = 1
            continue
        hit = ANY_INJECTED_RE.search(text)
        if hit:
            # A commit that failed is rolled back, so the next one mostly
            # repeats its writes: one further along.
            diag("try %d hit another write: %s" % (i, hit.group(0)[-50:]))
            nth += 1
        else:
            # Fewer writes than nth this time: aim at the first meta-page
            # write the trace saw (a commit's page count varies).
            metas = [k for k, ln in enumerate(calls) if META_CALL_RE.search(ln)]
            nth = metas[0] + 1 if metas else max(1, len(calls))
        if r.code is None:
            return r
    return None


def until_accepted(srv, c, acked, tag, timeout=RECOVER_TIMEOUT):
    """Send until one message gets 250; returns (seconds, refusals)."""
    t0 = time.monotonic()
    refused = []
    i = 0
    while time.monotonic() - t0 < timeout:
        r, m = send_one(c, "%s%d" % (tag, i))
        i += 1
        if r.code == 250:
            acked[qid_of(r.text)] = m
            return time.monotonic() - t0, refused
        refused.append(r)
        if r.code is None:
            c.close()
            return None, refused
        time.sleep(0.1)
    return None, refused


def metric(port, name):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metrics")
        body = c.getresponse().read().decode()
    finally:
        c.close()
    m = re.search(r"^mxkeep_%s(?:\{\})? (\d+)" % name, body, re.M)
    return int(m.group(1)) if m else None


def check_kept(srv, acked, label):
    q = srv.queue_by_qid()
    missing = [x for x in acked if x not in q]
    is_(missing, [], "%s: every acknowledged message is in the queue (%d)" % (label, len(acked)))
    bad = []
    for qid, msg in acked.items():
        b = srv.body(qid)
        if b is None or split_received(b)[1] != msg:
            bad.append(qid)
    is_(bad, [], "%s: every acknowledged body byte-exact" % label)


def main():
    if not IS_ROOT:
        skip_all("needs root to ptrace the daemon")
    if not STRACE:
        skip_all("strace not installed")
    require_binaries()
    mport = free_port()
    # Held at first, so that the only commits are the test's own and the
    # injection lands in one of them.
    fake = FakeSMTP(host="127.0.0.2")
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % fake.port,
                           "hold": True}],
                 settings={"delivery": fast_delivery(probe_max="2s"),
                           "metrics": {"address": "127.0.0.1", "port": mport}},
                 name="mxpanic")
    srv.start()
    acked = {}
    c = srv.raw()
    c.ehlo()
    for i in range(5):
        r, m = send_one(c, "before%d" % i)
        is_(r.code, 250, "before the fault: message %d accepted" % i)
        acked[qid_of(r.text)] = m

    # --- the fault, and recovery without a restart ---
    r = inject_meta_failure(srv, c, acked, "a")
    ok(r is not None, "an EIO was injected into a meta-page write")
    if r is None:
        srv.stop()
        return
    is_(r.code, 451, "the commit whose meta-page write failed: 451 (%s)" % r)
    secs, refused = until_accepted(srv, c, acked, "after")
    ok(secs is not None, "mail accepted again %.1f s after the failure, %d refused meanwhile" %
       (secs or -1, len(refused)))
    is_([x.code for x in refused if x.code != 451], [], "refusals meanwhile are 451 only")
    ok(srv.running(), "daemon still running")
    log = srv.log()
    is_(len(re.findall(r"the LMDB index failed", log)), 1, "the outage is logged once")
    like(log, r"spool: index reopened after", "the reopen is logged")
    is_(metric(mport, "spool_index_failures_total"), 1, "/metrics: one index failure")
    is_(metric(mport, "spool_index_reopens_total"), 1, "/metrics: one reopen")
    r = srv.ctl("queue")
    is_(r.returncode, 0, "mxkeepctl queue reads the reopened index")
    check_kept(srv, acked, "after the reopen")

    # The reopen itself fails for a while (the index directory out of the
    # daemon's reach): it retries with back-off, logged once, and recovers
    # when the directory is back.
    index = os.path.join(srv.spool, "index")
    mode = stat.S_IMODE(os.stat(index).st_mode)
    os.chmod(index, 0)
    try:
        r = inject_meta_failure(srv, c, acked, "b")
        ok(r is not None and r.code == 451, "second fault injected: 451 (%s)" % r)
        time.sleep(BLOCKED_SECONDS)
    finally:
        os.chmod(index, mode)
    secs, refused = until_accepted(srv, c, acked, "unblocked")
    ok(secs is not None, "accepted again once the index is reachable (%.1f s)" % (secs or -1))
    log = srv.log()
    is_(len(re.findall(r"reopening the index: .*retrying with back-off", log)), 1,
        "the failing reopen is logged once")
    is_(len(re.findall(r"the LMDB index failed", log)), 2, "one line per outage")
    is_(metric(mport, "spool_index_reopens_total"), 2, "/metrics: two reopens")
    check_kept(srv, acked, "after the blocked reopen")

    # Delivery goes on: released, everything acknowledged (before, at and
    # after the fault) is delivered.
    fake.start()
    r = srv.ctl("release", "example.org")
    is_(r.returncode, 0, "mxkeepctl release example.org")
    ok(wait_empty(srv, 30), "queue delivered once released")
    got = set(fake.message_ids())
    is_(sorted(set(message_id(m) for m in acked.values()) - got), [],
        "every acknowledged message delivered")
    fake.stop()

    # The fault in the middle of a flush to a slow primary: the commits are
    # delivery outcomes.  After the reopen deliveries go on by themselves
    # (no admin action, no new mail); at the end every message is
    # delivered.  (An outcome lost to an injected data-page error, which is
    # not a panic, waits for the scheduler's next pass: the flush below.)
    slow = FakeSMTP(host="127.0.0.2", delay=SLOW_DELAY)
    srv.ctl("hold", "example.org")
    load = {}
    for i in range(N_LOAD):
        r, m = send_one(c, "load%d" % i)
        if r.code == 250:
            load[qid_of(r.text)] = m
    is_(len(load), N_LOAD, "%d messages queued for the flush" % N_LOAD)
    n_load = len(load)
    slow.port = fake.port
    slow.start()
    srv.ctl("release", "example.org")
    ok(wait_for(lambda: slow.count() > 0, 10, 0.05), "the flush has started")
    r = inject_meta_failure(srv, c, load, "load", own=False)
    at = slow.count()
    ok(r is not None, "a meta-page write failed during the flush")
    ok(at < N_LOAD - GO_ON, "... with the flush still under way (%d of %d delivered)" % (at, N_LOAD))
    ok(len(load) >= n_load, "(%d more accepted meanwhile)" % (len(load) - n_load))
    ok(wait_for(lambda: slow.count() >= at + GO_ON, 30, 0.1),
       "deliveries go on after the reopen by themselves (%d -> %d)" % (at, slow.count()))
    wait_for(lambda: len(srv.queue()) == 0, 30, 0.5)
    srv.ctl("flush", "example.org")
    ok(wait_empty(srv, 60), "queue empty")
    got = set(slow.message_ids())
    is_(sorted(set(message_id(m) for m in load.values()) - got), [],
        "every message of the flush delivered (at least once)")
    c.close()
    c = srv.raw()
    c.ehlo()
    slow.stop()
    srv.ctl("hold", "example.org")

    # --- kill -9 along that path: nothing acknowledged is lost ---
    for point in ("just after the failure", "while the reopen fails", "just after the recovery"):
        acked2 = {}
        srv2_tag = "k%d" % len(point)
        blocked = point.endswith("fails")
        if blocked:
            os.chmod(index, 0)
        try:
            r = inject_meta_failure(srv, c, acked2, srv2_tag)
            if blocked:
                time.sleep(1.5)
                ok(not wait_for(lambda: send_one(c, srv2_tag + "x")[0].code == 250, 0.5, 0.1),
                   "%s: still refusing" % point)
        finally:
            if blocked:
                srv.kill9()
                os.chmod(index, mode)
        if r is None or r.code != 451:
            ok(False, "%s: fault injected (%s)" % (point, r))
            continue
        if point.endswith("recovery"):
            secs, _ = until_accepted(srv, c, acked2, srv2_tag + "r")
            ok(secs is not None, "%s: accepted again" % point)
        srv.kill9()
        c.close()
        srv.start()
        check_kept(srv, acked2, "kill -9 %s, restart" % point)
        c = srv.raw()
        c.ehlo()
        r, m = send_one(c, srv2_tag + "-restarted")
        is_(r.code, 250, "%s: accepting after restart" % point)
    c.close()
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
