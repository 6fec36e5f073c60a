#!/usr/bin/env python3
# 64-reload-tls-key: the server key kept as the docs say (root:root 0600,
# read once at start, as root) does not stop a reload or mxkeepctl.  A
# reload after the privilege drop cannot read that key and need not (the
# TLS context it made at start serves until a restart); on the old code
# every reload failed "tls.key: cannot read ...: Permission denied", and
# so did mxkeepctl run by a user of the daemon's group.  A key that is
# not there at all is still refused (file:line), a changed certificate or
# key is reported as taking effect at the next restart, and STARTTLS goes
# on with the key read at start.
import os
import stat
import subprocess
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    user = mxkeep_user()
    if user is None:
        skip_all("needs root and the mxkeep user (the key must be unreadable to the daemon)")
    srv = Server(tls=True)
    st = os.stat(srv.key)
    ok(st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600, "tls.key is root's, mode 0600")
    srv.start()

    r = srv.ctl("reload")
    is_(r.returncode, 0, "reload with a root-only key: exit 0 (%s)" %
        (r.stdout + r.stderr).decode("utf-8", "replace").strip())
    like(srv.log(), r"reloaded .*mxkeep\.conf", "the reload is logged")
    unlike(srv.log(), r"cannot read", "no complaint about the key")

    # A copy the user can reach: the build tree may sit under a directory
    # only root can enter (a CI clone in a 0700 temp dir).
    ctl = os.path.join(srv.dir, "mxkeepctl")
    shutil.copy(MXKEEPCTL, ctl)
    os.chmod(ctl, 0o755)
    r = subprocess.run(["su", user, "-s", "/bin/sh", "-c",
                        "'%s' -c '%s' summary" % (ctl, srv.conf)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=CTL_TIMEOUT)
    is_(r.returncode, 0, "mxkeepctl summary as %s: exit 0 (%s)" %
        (user, r.stderr.decode("utf-8", "replace").strip()))

    # A new key pair (the old one stays where it was): taken at restart.
    kdir = os.path.join(srv.dir, "newtls")
    os.mkdir(kdir)
    old_cert, old_key = srv.cert, srv.key
    srv.cert, srv.key = make_cert(kdir)
    srv.write_config(srv.port)
    mark = len(srv.log())
    r = srv.ctl("reload")
    is_(r.returncode, 0, "reload naming a new certificate and key: exit 0")
    like(r.stdout.decode("utf-8", "replace"), r"new TLS certificate or key needs a restart",
         "mxkeepctl says the new ones need a restart")
    ok(wait_log(srv, r"reload: tls\.certificate or tls\.key changed: .* next restart", 5, mark)
       is not None, "and so does the log")

    # A key that does not exist is still a configuration error.
    srv.key = os.path.join(kdir, "missing.pem")
    srv.write_config(srv.port)
    r = srv.ctl("reload")
    is_(r.returncode, 78, "reload naming a missing key: exit 78")
    like(r.stderr.decode("utf-8", "replace") + r.stdout.decode("utf-8", "replace"),
         r"mxkeep\.conf:\d+: tls\.key: cannot read \".*missing\.pem\": No such file",
         "file:line: reason")
    srv.cert, srv.key = old_cert, old_key
    srv.write_config(srv.port)

    c = srv.raw()
    c.ehlo("client.example.com")
    is_(c.cmd("STARTTLS").code, 220, "STARTTLS still offered and answered after the reloads")
    c.close()
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
