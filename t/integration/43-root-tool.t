#!/usr/bin/env python3
"""43-root-tool.t - a listing run as root while the daemon is stopped does
not keep the daemon from starting.

Input (found trying the compaction recipe of doc/operations.md): the daemon
stopped, index/lock.mdb absent (mdb_copy makes none), `mxkeepctl count` run
as root creates lock.mdb owned by root, 0600; the unprivileged daemon then
failed with "./index: Permission denied".  Right: under its spool lock,
as root, the daemon gives such files back to the mail user, and never
follows a symlink planted in the spool to do so.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: E402,F401,F403


def main():
    require_binaries()
    if not IS_ROOT:
        skip_all("needs root: the daemon must drop to the mail user")
    srv = Server()
    srv.start()
    acked = dict(send_batch(srv, 3, tag="pre"))
    is_(len(acked), 3, "three messages acknowledged")
    srv.stop()

    lock = os.path.join(srv.spool, "index", "lock.mdb")
    if os.path.exists(lock):
        os.unlink(lock)
    r = srv.ctl("count")
    is_(r.returncode, 0, "mxkeepctl count as root with the daemon stopped")
    like(r.stdout.decode(), r"\b3\b", "it counts 3")
    st = os.stat(lock)
    is_(st.st_uid, 0, "the listing left index/lock.mdb owned by root (the input)")

    # A symlink planted where root would reclaim a file must not steer
    # root's chown: lock.mdb pointing at a file of root's stays as it is.
    bait = os.path.join(srv.dir, "bait")
    with open(bait, "w") as f:
        f.write("root's\n")
    os.chmod(bait, 0o600)
    os.rename(lock, lock + ".real")
    os.symlink(bait, lock)
    srv.start(expect_fail=True)
    ok(wait_for(lambda: srv.proc.poll() is not None, 10, 0.05),
       "with lock.mdb a symlink to a file of root's, the daemon stops (cannot open its index)")
    if srv.proc.poll() is None:
        srv.kill9()
    is_(os.stat(bait).st_uid, 0, "... and the symlink's target stays root's")
    os.unlink(lock)
    os.rename(lock + ".real", lock)

    srv.start()
    like(srv.log(), r"index/lock\.mdb was root's", "the daemon says it gave lock.mdb back")
    is_(os.stat(lock).st_uid, pwd.getpwnam("mxkeep").pw_uid, "lock.mdb now belongs to the mail user")
    more = dict(send_batch(srv, 2, tag="post"))
    is_(len(more), 2, "the daemon serves: two more acknowledged")
    is_(len(srv.queue()), 5, "all five messages are in the queue")


run_main(main)
