#!/usr/bin/env python3
# 40-spool-lock: one daemon per spool.
#  (a) a second mxkeepd whose config names the same spool (another port,
#      another control socket) exits 75 with one line naming the spool and
#      the pid holding it, and binds nothing; the first keeps serving: a
#      large message it was receiving meanwhile (its body already in a file
#      under msg/) is acknowledged and reads back byte-exact, and so does
#      everything before and after;
#  (b) mxkeepctl's read-only listings (queue, summary, show, count, cat)
#      work beside the running daemon;
#  (c) as a real daemon (no -f, it forks): the pid file in a root-owned
#      directory holds the pid of the process that stays, the spool lock is
#      still held by it after the fork (a second one exits 75 naming that
#      pid, on stderr), and it stops on SIGTERM.
import os
import signal
import stat
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

EX_TEMPFAIL = 75
EXIT_BOUND = 10.0           # seconds for the second daemon to give up
BIG = 200 * 1024            # above the inline limit: the body goes to a file
SMALL = 3                   # small messages before and after


def second_daemon(first, name):
    """A Server of its own (port, control socket, dir) on first's spool."""
    return Server(spool_dir=first.spool, name=name)


def check_kept(srv, acked, label):
    q = srv.queue_by_qid()
    is_(sorted(x for x in acked if x not in q), [], "%s: every acknowledged QID queued" % label)
    bad = [qid for qid, m in acked.items()
           if srv.body(qid) is None or split_received(srv.body(qid))[1] != m]
    is_(bad, [], "%s: every acknowledged body byte-exact" % label)


def test_second_daemon():
    srv = Server(domains=[{"name": "example.org", "hold": True}], name="lock1")
    srv.start()
    acked = dict(send_batch(srv, SMALL, tag="pre"))

    # A large message half received: its body file exists, no record yet.
    c = srv.raw()
    c.ehlo()
    rs = [c.cmd("MAIL FROM:<s@example.com>"), c.cmd("RCPT TO:<user@example.org>"), c.cmd("DATA")]
    is_([r.code for r in rs], [250, 250, 354], "large message: DATA open on the first daemon")
    big = make_message("big", size=BIG)
    wire = dot_stuff(big)
    half = len(wire) // 2
    c.send(wire[:half])
    bodies = lambda: [f for _, _, fs in os.walk(os.path.join(srv.spool, "msg")) for f in fs]
    ok(wait_for(lambda: len(bodies()) == 1, 5, 0.05), "its body file is in msg/")

    two = second_daemon(srv, "lock2")
    two.start(expect_fail=True)
    try:
        rc = two.proc.wait(EXIT_BOUND)
    except subprocess.TimeoutExpired:
        rc = None
        two.kill9()
    is_(rc, EX_TEMPFAIL, "second daemon on the same spool exits 75")
    lines = [l for l in two.log().splitlines() if l and not l.startswith("===")]
    is_(len(lines), 1, "... with one line")
    like(lines[0] if lines else "", r"spool %s is in use by mxkeepd pid %d$" %
         (re.escape(srv.spool), srv.proc.pid), "... naming the spool and the first's pid")
    ok(not port_open("127.0.0.1", two.port), "the second bound nothing")
    ok(not os.path.exists(two.ctl_socket), "the second made no control socket")
    ok(srv.running(), "the first is still running")

    c.send(wire[half:])
    r = c.reply(timeout=20)
    is_(r.code, 250, "the large message is acknowledged (%s)" % r)
    if r.code == 250:
        acked[qid_of(r.text)] = big
    c.cmd("QUIT")
    c.close()
    acked.update(send_batch(srv, SMALL, tag="post"))
    check_kept(srv, acked, "first daemon")

    # (b) read-only listings beside the daemon.
    qid = sorted(acked)[0]
    for args in (["queue"], ["--json", "queue"], ["summary"], ["show", qid], ["count"],
                 ["cat", qid]):
        r = srv.ctl(*args)
        is_(r.returncode, 0, "mxkeepctl %s beside the daemon" % " ".join(args))
    is_(srv.ctl("count").stdout.decode().split()[0], str(len(acked)),
        "mxkeepctl count: %d" % len(acked))
    is_(srv.stop(), 0, "first daemon exits 0")
    srv.start()
    check_kept(srv, acked, "after restart")
    is_(srv.stop(), 0, "exits 0 again")
    two.cleanup()
    srv.cleanup()


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def daemon_pids(conf):
    """Pids of mxkeepd processes started with this (unique) config path."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if conf.encode() in argv and pid_alive(int(d)):
                out.append(int(d))
    return out


def test_daemon_mode():
    if not IS_ROOT or not mxkeep_user():
        skip("daemon mode with a root-owned pid directory: needs root and the mxkeep user", 9)
        return
    srv = Server(name="lock3")
    try:
        daemon_mode(srv)
    finally:
        # Not our child once it forked: stop whatever runs with its config.
        for pid in daemon_pids(srv.conf):
            os.kill(pid, signal.SIGKILL)
        srv.cleanup()


def daemon_mode(srv):
    rundir = os.path.join(srv.dir, "rootrun")
    os.makedirs(rundir)
    os.chmod(rundir, 0o755)                 # root's, not writable by mxkeep
    pidfile = os.path.join(rundir, "mxkeepd.pid")
    srv.settings["pid_file"] = pidfile
    srv.write_config()
    r = run([MXKEEPD, "-c", srv.conf], timeout=20)
    is_(r.returncode, 0, "mxkeepd (no -f) returns 0 once it has forked")
    ok(wait_for(lambda: port_open("127.0.0.1", srv.port), 10, 0.05), "the daemon listens")
    # The port is bound before the fork; the child writes the pid file
    # just after it, so wait (bounded) for its content.
    def pid_text():
        return open(pidfile).read() if os.path.exists(pidfile) else ""
    wait_for(lambda: re.match(r"^\d+\n$", pid_text()), 10, 0.05)
    text = pid_text()
    like(text, r"^\d+\n$", "pid file written in a root-owned directory")
    pid = int(text) if text.strip().isdigit() else 0
    ok(pid > 0 and pid_alive(pid), "its pid is a live process")
    st = os.stat(pidfile) if os.path.exists(pidfile) else None
    ok(st is not None and st.st_uid == 0 and not (st.st_mode & stat.S_IWOTH),
       "pid file owned by root, not writable by others")
    with open(os.path.join(srv.spool, "lock")) as f:
        is_(f.read().strip(), str(pid), "the spool lock file names the same pid")

    two = second_daemon(srv, "lock4")
    two.write_config()
    r = run([MXKEEPD, "-c", two.conf], timeout=20)
    is_(r.returncode, EX_TEMPFAIL, "second daemon (no -f): exit 75")
    like(r.stderr.decode(), r"^mxkeepd: spool %s is in use by mxkeepd pid %d\n$" %
         (re.escape(srv.spool), pid), "... one line on stderr naming the spool and the pid")

    if pid > 0:
        os.kill(pid, signal.SIGTERM)
    ok(wait_for(lambda: not pid_alive(pid), 20, 0.1), "the daemon stops on SIGTERM")
    two.cleanup()


def main():
    require_binaries()
    test_second_daemon()
    test_daemon_mode()


run_main(main)
