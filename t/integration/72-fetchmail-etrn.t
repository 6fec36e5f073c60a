#!/usr/bin/env python3
# 72-fetchmail-etrn: issue 7, item 18.  fetchmail's ETRN mode (`protocol
# etrn`, `fetchdomains`) is the standard client a primary runs to ask the
# backup MX for its backlog; doc/operations.md documents it and this test
# runs it as documented.  The primary is down while mail queues, comes up
# with probes minutes away, and fetchmail's ETRN makes mxkeep deliver at
# once (253, with the count summary shows).  A held node makes fetchmail
# report the 458 and fail.  fetchmail refuses an rc file others can read,
# and is run as an unprivileged user when the test runs as root (it
# discourages root).
import os
import pwd
import shutil
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N = 3


def fetchmail_env(home):
    env = dict(os.environ)
    env.update({"HOME": home, "FETCHMAILHOME": home, "LC_ALL": "C"})
    return env


def main():
    fm = shutil.which("fetchmail")
    if fm is None:
        skip_all("fetchmail not installed (build.sh installs it)")
    require_binaries()
    primary = FakeSMTP(host="127.0.0.2")       # not started: the primary is down
    second = FakeSMTP(host="127.0.0.3")        # cmd.test's, down as well
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.2]:%d" % primary.port},
        {"name": "held.test", "primary": "[127.0.0.2]:%d" % primary.port},
        {"name": "cmd.test", "primary": "[127.0.0.3]:%d" % second.port},
    ], settings={"delivery": fast_delivery(probe_min="10m", probe_max="1h")})
    srv.start()
    send_batch(srv, N, rcpt="u@example.org", tag="fm")
    send_batch(srv, 2, rcpt="u@held.test", tag="fmheld")
    send_batch(srv, 2, rcpt="u@cmd.test", tag="fmcmd")
    ok(wait_log(srv, r"destination example\.org: \w+ -> down", 10) is not None,
       "example.org down while its primary is off")
    primary.start()
    time.sleep(1.5)
    is_(primary.count(), 0, "primary back, next probe 10 minutes away: nothing sent yet")

    # fetchmail's home and rc file; as root, run it as an unprivileged user.
    home = tempfile.mkdtemp(prefix="fetchmail.")
    user = None
    if IS_ROOT:
        user = mxkeep_user() or "nobody"
        pw = pwd.getpwnam(user)
        os.chown(home, pw.pw_uid, pw.pw_gid)
    rc = os.path.join(home, "fetchmailrc")

    def write_rc(text, mode):
        with open(rc, "w") as f:
            f.write(text)
        os.chmod(rc, mode)
        if user:
            pw = pwd.getpwnam(user)
            os.chown(rc, pw.pw_uid, pw.pw_gid)

    def fetchmail(*args):
        cmd = [fm, "--nosyslog", "-f", rc] + list(args)
        if user:
            cmd = ["runuser", "-u", user, "--", "env", "HOME=" + home,
                   "FETCHMAILHOME=" + home] + cmd
        r = subprocess.run(cmd, env=fetchmail_env(home), capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        diag("fetchmail exit %d: %s" % (r.returncode, (r.stdout + r.stderr).decode(
            "utf-8", "replace").strip().replace("\n", " | ")[:400]))
        return r

    # The documented rc line (doc/operations.md), with the test's port.
    line = "poll 127.0.0.1 service %d protocol etrn fetchdomains example.org\n" % srv.port

    write_rc(line, 0o644)
    mark = len(srv.log())
    r = fetchmail()
    isnt(r.returncode, 0, "fetchmail refuses a world-readable rc file")
    like((r.stdout + r.stderr).decode(), r"(?i)permissions", "... saying why (permissions)")
    unlike(srv.log()[mark:], r"ETRN", "... and sends nothing")

    write_rc(line, 0o600)
    mark = len(srv.log())
    r = fetchmail()
    is_(r.returncode, 0, "fetchmail --protocol etrn: exit 0")
    ok(wait_log(srv, r"ETRN example\.org from \[127\.0\.0\.1\]: 253 2\.0\.0 OK, %d pending "
                r"messages for node example\.org started" % N, 5, mark) is not None,
       "mxkeepd answered fetchmail's ETRN 253 with the count (%d)" % N)
    ok(wait_for(lambda: primary.count() >= N, 10, 0.05),
       "the backlog reached the primary at once (%d)" % primary.count())
    ok(wait_for(lambda: not [m for m in srv.queue()
                             if m["recipients"][0]["domain"] == "example.org"], 5),
       "nothing left for example.org")

    # Nothing waiting: 251, still a success for fetchmail.
    r = fetchmail()
    is_(r.returncode, 0, "fetchmail with nothing waiting: exit 0 (251)")
    like(srv.log(), r"ETRN example\.org from \[127\.0\.0\.1\]: 251 ", "mxkeepd answered 251")

    # Held with mail: 458 with the count; fetchmail reports the failure.
    write_rc("poll 127.0.0.1 service %d protocol etrn fetchdomains held.test\n" % srv.port, 0o600)
    srv.ctl("hold", "held.test")
    r = fetchmail()
    isnt(r.returncode, 0, "fetchmail ETRN for a held node: fails (458)")
    like(srv.log(), r"ETRN held\.test from \[127\.0\.0\.1\]: 458 4\.3\.0 .*held by the "
         r"administrator, 2 messages waiting", "mxkeepd answered 458, held, 2 waiting")
    is_(primary.count(), N, "nothing of the held node delivered")

    # The command-line form the doc gives for a one-off flush (cmd.test's
    # primary was down as well and is back now).
    second.start()
    time.sleep(1.5)
    is_(second.count(), 0, "cmd.test's primary back: nothing sent before the ETRN")
    cmd_rc = os.path.join(home, "empty-rc")
    write_rc("", 0o600)
    os.rename(rc, cmd_rc)
    cmd = [fm, "--nosyslog", "-f", cmd_rc, "--protocol", "etrn", "--service", str(srv.port),
           "--fetchdomains", "cmd.test", "127.0.0.1"]
    if user:
        cmd = ["runuser", "-u", user, "--", "env", "HOME=" + home, "FETCHMAILHOME=" + home] + cmd
    r = subprocess.run(cmd, env=fetchmail_env(home), capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    is_(r.returncode, 0, "fetchmail --protocol etrn --fetchdomains D HOST: exit 0")
    ok(wait_for(lambda: second.count() >= 2, 10, 0.05),
       "... and cmd.test's 2 messages were delivered at once")

    shutil.rmtree(home, ignore_errors=True)
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
