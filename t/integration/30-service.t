#!/usr/bin/env python3
# 30-service: mxkeepd as a service.
#  (a) privilege drop: as root with user = mxkeep, every uid/gid of every
#      thread is mxkeep's and the supplementary groups are just its gid;
#      the spool is 0700 directories and 0600 files owned by mxkeep;
#  (b) SIGTERM while 20 clients send: exit 0 within the bound, every
#      message that got 250 is in the spool byte-exact (read offline, and
#      again after a restart), clients only ever see 421 or a close;
#  (c) SIGHUP while 20 clients send: no session dropped, no message lost,
#      a domain added by the reload is accepted at once; an invalid new
#      file is refused with a log line and the old one keeps working;
#  (d) pid_file written with the daemon's pid and removed at exit;
#  (e) make install into a DESTDIR puts every file in its place.
import os
import pwd
import stat
import sys
import threading
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

CLIENTS = 20
# main.c's SHUTDOWN_GRACE_SECONDS (30) plus room for the exit itself.
STOP_BOUND = 40.0
LOAD_SECONDS = 1.5          # load before the signal
RELOAD_TXNS = 12            # transactions per client in (c)
INSTALL_TIMEOUT = 600


def mail_user():
    """(uid, gid) of the user the daemon drops to, or None."""
    name = mxkeep_user()
    if not name:
        return None
    pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def proc_ids(pid):
    """{'Uid': [...], 'Gid': [...], 'Groups': [...]} for every thread."""
    out = []
    tasks = os.path.join("/proc", str(pid), "task")
    for tid in sorted(os.listdir(tasks)):
        ids = {}
        with open(os.path.join(tasks, tid, "status")) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Uid", "Gid", "Groups"):
                    ids[k] = [int(x) for x in v.split()]
        out.append((tid, ids))
    return out


# --- (a) ------------------------------------------------------------------

def test_privilege_drop():
    ids = mail_user()
    if ids is None:
        skip("privilege drop: needs root and the mxkeep user", 6)
        return
    uid, gid = ids
    srv = Server(domains=[{"name": "example.org", "hold": True}], name="svc-priv")
    srv.start()
    # A small and a large message: the large one is stored as a file under
    # msg/XX, the small one inside the index.
    send_batch(srv, 2, tag="small")
    send_batch(srv, 1, tag="large", size=200 * 1024)
    threads = proc_ids(srv.proc.pid)
    ok(len(threads) >= 1, "daemon threads found (%d)" % len(threads))
    bad = [(t, i) for t, i in threads
           if i.get("Uid") != [uid] * 4 or i.get("Gid") != [gid] * 4 or i.get("Groups") != [gid]]
    ok(not bad, "every thread: Uid and Gid all mxkeep's (%d/%d), Groups just %d" % (uid, gid, gid))
    if bad:
        diag("offending threads: %r" % bad[:3])
    like(srv.log(), r"running as user \S+ \(uid %d, gid %d\)" % (uid, gid), "log: drop verified")

    dirs, files = [], []
    for root, dnames, fnames in os.walk(srv.spool):
        dirs.append(root)
        dirs.extend(os.path.join(root, d) for d in dnames)
        files.extend(os.path.join(root, f) for f in fnames)
    dirs = sorted(set(dirs))
    bad_dirs = [d for d in dirs if stat.S_IMODE(os.stat(d).st_mode) != 0o700 or
                os.stat(d).st_uid != uid or os.stat(d).st_gid != gid]
    bad_files = [f for f in files if stat.S_IMODE(os.stat(f).st_mode) != 0o600 or
                 os.stat(f).st_uid != uid]
    ok(not bad_dirs, "spool: %d directories, all 0700 mxkeep:%d" % (len(dirs), gid))
    for d in bad_dirs[:5]:
        diag("  %s %o uid %d" % (d, stat.S_IMODE(os.stat(d).st_mode), os.stat(d).st_uid))
    ok(files and not bad_files, "spool: %d files, all 0600 owned by mxkeep" % len(files))
    for f in bad_files[:5]:
        diag("  %s %o uid %d" % (f, stat.S_IMODE(os.stat(f).st_mode), os.stat(f).st_uid))
    is_(srv.stop(), 0, "mxkeepd exits 0")
    srv.cleanup()


# --- load generator -------------------------------------------------------

class Client(threading.Thread):
    """One SMTP client sending unique messages on one connection (a new
    one when the server closes), until told to stop or refused.

    Records (qid, msg) for every 250, and every other reply or close."""

    def __init__(self, srv, idx, limit=None, reconnect=False, rcpt="user@example.org"):
        super().__init__(daemon=True)
        self.srv = srv
        self.idx = idx
        self.limit = limit
        self.reconnect = reconnect
        self.rcpt = rcpt
        self.stop_flag = threading.Event()
        self.acked = []             # (qid, msg)
        self.events = []            # ("reply", code, text) | ("eof",) | ("error", str)
        self.sent = 0

    def _session(self):
        try:
            c = self.srv.raw(timeout=20)
        except OSError as e:
            self.events.append(("eof", "connect: %s" % e))
            return False
        try:
            if c.greeting.code != 220:
                self.events.append(("reply", c.greeting.code, str(c.greeting)))
                return False
            r = c.ehlo("client%d.example.com" % self.idx)
            if r.code != 250:
                self.events.append(("reply", r.code, str(r)) if r.code else ("eof", "EHLO"))
                return False
            while not self.stop_flag.is_set() and (self.limit is None or self.sent < self.limit):
                msg = make_message("c%02d-%05d" % (self.idx, self.sent),
                                   size=(600 + 97 * (self.sent % 50)))
                self.sent += 1
                rs = c.transaction("s%d@example.com" % self.idx, [self.rcpt], msg)
                last = rs[-1]
                if last.code == 250 and len(rs) == 4:
                    qid = qid_of(last.text)
                    self.acked.append((qid, msg))
                    continue
                bad = [x for x in rs if x.code != 250 and x.code != 354]
                x = bad[0] if bad else last
                if x.code is None:
                    self.events.append(("eof", "during transaction" if x.eof else "timeout"))
                else:
                    self.events.append(("reply", x.code, str(x)))
                return False
            try:
                c.cmd("QUIT", timeout=5)
            except OSError:
                pass
            return True
        except OSError as e:
            self.events.append(("eof", "socket: %s" % e))
            return False
        finally:
            c.close()

    def run(self):
        while True:
            done = self._session()
            if done or not self.reconnect or self.stop_flag.is_set():
                return
            if self.limit is not None and self.sent >= self.limit:
                return


def check_kept(srv, acked, label):
    """Every (qid, msg) is in the spool with the body byte-exact."""
    missing, wrong = [], []
    for qid, msg in acked:
        body = srv.body(qid)
        if body is None:
            missing.append(qid)
            continue
        _, rest = split_received(body)
        if rest != msg:
            wrong.append(qid)
    ok(not missing, "%s: every 250'd message is in the spool (%d; missing %d)" %
       (label, len(acked), len(missing)))
    if missing:
        diag("missing: %s" % " ".join(str(q) for q in missing[:10]))
    ok(not wrong, "%s: every kept body byte-exact (%d differ)" % (label, len(wrong)))


# --- (b) ------------------------------------------------------------------

def test_sigterm_under_load():
    srv = Server(domains=[{"name": "example.org", "hold": True}],
                 limits={"per_client": CLIENTS * 2}, name="svc-term")
    srv.start()
    clients = [Client(srv, i) for i in range(CLIENTS)]
    for c in clients:
        c.start()
    time.sleep(LOAD_SECONDS)
    before = sum(len(c.acked) for c in clients)
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    try:
        rc = srv.proc.wait(STOP_BOUND)
    except subprocess.TimeoutExpired:
        rc = None
    took = time.monotonic() - t0
    for c in clients:
        c.stop_flag.set()
    for c in clients:
        c.join(30)
    ok(before > CLIENTS, "load was flowing before SIGTERM (%d messages acknowledged)" % before)
    is_(rc, 0, "SIGTERM under load: exit status 0")
    ok(took < STOP_BOUND, "exited within %.0f s (took %.1f s)" % (STOP_BOUND, took))
    ok(not any(c.is_alive() for c in clients), "every client finished")
    ends = [e for c in clients for e in c.events]
    odd = [e for e in ends if not (e[0] == "eof" or (e[0] == "reply" and e[1] == 421))]
    ok(not odd, "clients saw only 421 or a closed connection (%d endings)" % len(ends))
    for e in odd[:5]:
        diag("  %r" % (e,))
    srv.proc = None
    acked = [a for c in clients for a in c.acked]
    ok(all(q for q, _ in acked), "every 250 named a queue ID")
    check_kept(srv, acked, "offline after SIGTERM")
    stored = set(srv.qids())
    ok(stored >= {q for q, _ in acked}, "the index lists every acknowledged QID "
       "(%d stored, %d acknowledged)" % (len(stored), len(acked)))
    srv.start()
    is_(set(srv.qids()), stored, "after a restart the queue is the same")
    is_(srv.stop(), 0, "restarted daemon exits 0")
    srv.cleanup()


# --- (c) ------------------------------------------------------------------

def test_reload_under_load():
    srv = Server(domains=[{"name": "example.org", "hold": True}],
                 limits={"per_client": CLIENTS * 2}, name="svc-hup")
    srv.start()
    clients = [Client(srv, i, limit=RELOAD_TXNS) for i in range(CLIENTS)]
    for c in clients:
        c.start()

    # Reload while they send: first with a domain added ...
    time.sleep(0.3)
    mark = len(srv.log())
    srv.domains.append({"name": "added.test", "hold": True})
    srv.write_config(srv.port)
    srv.hup()
    m = wait_log(srv, r"reloaded .*: 2 domains", 10, mark)
    ok(m is not None, "reload under load logged with the new domain count")
    try:
        code, text = send_smtplib(srv, "a@example.com", ["x@added.test"], make_message("added"))
    except Exception as e:  # noqa: B902 - any failure is the test's
        code, text = None, str(e)
    is_(code, 250, "a domain added by the reload is accepted right after (%s)" % text)
    added_qid = qid_of(text) if code == 250 else None

    # ... then a few more reloads of the same file while sessions go on.
    for _ in range(3):
        time.sleep(0.2)
        srv.hup()

    for c in clients:
        c.join(120)
    ok(not any(c.is_alive() for c in clients), "every client finished")
    short = [(c.idx, len(c.acked), c.events) for c in clients if len(c.acked) != RELOAD_TXNS]
    ok(not short, "no session dropped: all %d clients got 250 for all %d transactions" %
       (CLIENTS, RELOAD_TXNS))
    for s in short[:5]:
        diag("  client %d: %d acknowledged, %r" % s)
    acked = [a for c in clients for a in c.acked]
    if added_qid:
        acked.append((added_qid, make_message("added")))

    # An invalid file: refused with a log line, the old one keeps working.
    mark = len(srv.log())
    with open(srv.conf, "a") as f:
        f.write("no_such_setting = 1;\n")
    srv.hup()
    m = wait_log(srv, r"reload: .*no_such_setting.*keeping the old configuration", 10, mark)
    ok(m is not None, "invalid new config: refused with a log line naming the problem")
    ok(srv.running(), "daemon still running after the invalid reload")
    try:
        code, text = send_smtplib(srv, "a@example.com", ["y@added.test"], make_message("after-bad"))
    except Exception as e:  # noqa: B902
        code, text = None, str(e)
    is_(code, 250, "old configuration still in force: added.test accepted (%s)" % text)
    if code == 250:
        acked.append((qid_of(text), make_message("after-bad")))
    try:
        code, text = send_smtplib(srv, "a@example.com", ["z@example.org"], make_message("after-bad2"))
    except Exception as e:  # noqa: B902
        code, text = None, str(e)
    is_(code, 250, "old configuration still in force: example.org accepted")
    if code == 250:
        acked.append((qid_of(text), make_message("after-bad2")))

    srv.write_config(srv.port)   # valid again, for the record
    is_(srv.stop(), 0, "mxkeepd exits 0 after the reloads")
    check_kept(srv, acked, "after reloads under load")
    srv.cleanup()


# --- (d) ------------------------------------------------------------------

def test_pid_file():
    srv = Server(name="svc-pid")
    rundir = os.path.join(srv.dir, "pid")
    os.makedirs(rundir)
    ids = mail_user()
    if ids:
        # Written after the privilege drop: the directory is the mail user's.
        os.chown(rundir, ids[0], ids[1])
    pidfile = os.path.join(rundir, "mxkeepd.pid")
    srv.settings["pid_file"] = pidfile
    srv.start()
    got = wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip(), 5, 0.05)
    is_(got, str(srv.proc.pid), "pid_file holds the daemon's pid")
    is_(srv.stop(), 0, "mxkeepd exits 0")
    ok(not os.path.exists(pidfile), "pid_file removed at exit")
    srv.cleanup()


# --- (e) ------------------------------------------------------------------

def build_tree():
    """The configured build tree of the binaries under test, or None."""
    for d in (os.path.dirname(os.path.dirname(os.path.abspath(MXKEEPD))), ROOT):
        if os.path.exists(os.path.join(d, "Makefile")):
            return d
    return None


def find_one(top, rel_dir, name):
    """A file `name` under top whose directory ends with rel_dir."""
    for root, _, files in os.walk(top):
        if name in files and root.rstrip("/").endswith(rel_dir):
            return os.path.join(root, name)
    return None


def test_install():
    tree = build_tree()
    if tree is None:
        skip("make install: no configured build tree (no Makefile)", 11)
        return
    dest = tempfile.mkdtemp(prefix="svc-install.")
    try:
        r = run(["make", "-C", tree, "-s", "install", "DESTDIR=" + dest], timeout=INSTALL_TIMEOUT)
        if not is_(r.returncode, 0, "make install DESTDIR=... in %s" % tree):
            diag(r.stderr.decode("utf-8", "replace")[-2000:])
            skip("make install failed", 10)
            return
        sbin_d = find_one(dest, "/sbin", "mxkeepd")
        sbin_c = find_one(dest, "/sbin", "mxkeepctl")
        conf = find_one(dest, "/etc", "mxkeep.conf")
        man8d = find_one(dest, "/man/man8", "mxkeepd.8")
        man8c = find_one(dest, "/man/man8", "mxkeepctl.8")
        man5 = find_one(dest, "/man/man5", "mxkeep.conf.5")
        unit = find_one(dest, "/systemd/system", "mxkeepd.service")
        ok(sbin_d and os.access(sbin_d, os.X_OK), "sbin/mxkeepd installed, executable")
        ok(sbin_c and os.access(sbin_c, os.X_OK), "sbin/mxkeepctl installed, executable")
        ok(conf is not None, "etc/mxkeep.conf installed")
        ok(man8d and man8c and man5, "man pages mxkeepd(8), mxkeepctl(8), mxkeep.conf(5) installed")
        ok(unit is not None, "systemd unit mxkeepd.service installed")
        if sbin_d:
            v = run([sbin_d, "-V"], timeout=10)
            like(v.stdout.decode(), r"^mxkeepd \d", "installed mxkeepd -V runs")
        else:
            skip("no installed mxkeepd")
        text = open(unit).read() if unit else ""
        want = "/" + os.path.relpath(sbin_d, dest) if sbin_d else "?"
        ok(("ExecStart=%s -f -c " % want) in text and "@sbindir@" not in text,
           "unit: ExecStart runs the installed binary in the foreground")
        ok("ExecReload=/bin/kill -HUP $MAINPID" in text and "Type=simple" in text,
           "unit: Type=simple, reload by SIGHUP")
        ctext = open(conf).read() if conf else ""
        ok(conf and '"var/spool"' not in ctext and re.search(r'(?m)^spool\s*=\s*"/', ctext),
           "installed config: the spool path is absolute")
        spool = re.search(r'(?m)^spool\s*=\s*"([^"]+)"', ctext)
        sd = os.path.join(dest, spool.group(1).lstrip("/")) if spool else None
        ok(sd and os.path.isdir(sd) and stat.S_IMODE(os.stat(sd).st_mode) == 0o700,
           "spool directory created, mode 0700")
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def main():
    require_binaries()
    test_privilege_drop()
    test_sigterm_under_load()
    test_reload_under_load()
    test_pid_file()
    test_install()


run_main(main)
