#!/usr/bin/env python3
# 159-auth-before-delivery (issue 9, section 3; a fault found in CI): a
# message whose DKIM result is still to be recorded never leaves before
# it is, even when delivery's walk of the index meets the record before
# the commit's completion has reached the loop.
#
# The message is large (its body a file of its own).  strace attached to
# the spool's writer thread ("mxkeep-spool") delays its close(2) calls:
# the one that closes the body file comes after the LMDB commit, so for
# that long the record is in the index (LMDB's mdb_stat sees it) while
# the commit has not reached the loop.  Then `mxkeepctl flush` makes
# delivery walk the index.  The message must reach the primary once its
# DKIM result is in, with dkim=pass in its Authentication-Results header,
# and only once.  Root only (ptrace).
import os
import subprocess
import sys
import threading
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

STRACE = shutil.which("strace")
MDB_STAT = shutil.which("mdb_stat")
DELAY_US = 2000000          # each close(2) of the writer waits this long
BIG = 100000                # octets: a body file, not inline in the index
ATTACH_TIMEOUT = 5.0


def thread_of(pid, name):
    """The TID of pid's thread called name, or None."""
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                if f.read().strip() == name:
                    return int(tid)
        except OSError:
            pass
    return None


def msg_entries(srv):
    """Entries of the index's msg table, read as LMDB's own mdb_stat reads
    it (a read-only reader that never waits for the writer)."""
    r = subprocess.run([MDB_STAT, "-s", "msg", os.path.join(srv.spool, "index")],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10)
    m = re.search(rb"Entries: (\d+)", r.stdout)
    return int(m.group(1)) if m else None


def main():
    if not IS_ROOT:
        skip_all("needs root to ptrace the daemon")
    if not STRACE:
        skip_all("strace not installed")
    if not MDB_STAT:
        skip_all("mdb_stat (lmdb-utils) not installed")
    require_binaries()
    kdir, txt, key = dkim_key()
    dns, prim, srv = dkim_world(txt)
    c = srv.raw(timeout=60)            # the delayed commit takes seconds
    c.ehlo("client.example.com")

    # The destination is up and its walk over: only the flush below walks.
    rs = c.transaction("sender@pass.test", ["user@example.org"], make_message("first"))
    is_(rs[-1].code, 250, "first message accepted")
    ok(wait_for(lambda: prim.count() == 1 and msg_entries(srv) == 0, 30, 0.05),
       "first message delivered")

    tid = thread_of(srv.proc.pid, "mxkeep-spool")
    ok(tid is not None, "the spool writer thread is named mxkeep-spool")
    if tid is None:
        srv.stop()
        return
    err = os.path.join(srv.dir, "strace.err")
    with open(err, "wb") as ef:
        st = subprocess.Popen([STRACE, "-p", str(tid), "-e", "trace=close",
                               "-e", "inject=close:delay_enter=%d" % DELAY_US,
                               "-o", os.path.join(srv.dir, "strace.out")],
                              stdout=subprocess.DEVNULL, stderr=ef)
    ok(wait_for(lambda: b"attached" in open(err, "rb").read(), ATTACH_TIMEOUT, 0.02),
       "strace attached to the writer")

    signed = dkim_sign(make_message("late-loop", size=BIG), "pass.test", "sel1", key)
    reply = {}

    def send():
        reply["r"] = c.transaction("sender@pass.test", ["user@example.org"], signed)[-1]
    sender = threading.Thread(target=send)
    t0 = time.monotonic()
    sender.start()
    # The record is in the index (mxkeepctl reads it) while the client
    # still waits for its 250: now delivery walks.
    seen = wait_for(lambda: msg_entries(srv) == 1, 60, 0.01)
    ok(seen and "r" not in reply, "the record is in the index before the 250")
    t1 = time.monotonic()
    r = srv.ctl("flush", "example.org")
    diag("seen %.2f s after the DATA, flush took %.2f s" % (t1 - t0, time.monotonic() - t1))
    is_(r.returncode, 0, "mxkeepctl flush meanwhile")
    ok("r" not in reply, "... answered before the commit returned")
    sender.join(60)
    st.terminate()
    st.wait(10)
    r = reply.get("r")
    is_(r.code if r else None, 250, "the message is accepted (%.1f s)" % (time.monotonic() - t0))

    ok(wait_for(lambda: prim.count() >= 2, 30, 0.1), "the message is delivered")
    time.sleep(1.0)                     # a second copy would be on its way
    copies = [b for b in prim.bodies() if message_id(b) == "<late-loop@example.com>"]
    is_(len(copies), 1, "delivered once")
    ars = ar_of(copies[0]) if copies else []
    is_(len(ars), 1, "one Authentication-Results header")
    like(ars[0] if ars else "", r"dkim=pass header\.d=pass\.test header\.s=sel1",
         "the DKIM result went with it: it waited for its record")
    c.cmd("QUIT")
    c.close()
    shutil.rmtree(kdir, ignore_errors=True)
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
