# rspamd_milter.py - a real rspamd (Debian's package) for the milter tests:
# only the proxy worker, in milter mode, self-scanning, on a loopback port,
# from a temporary config dir; no internet (DNS points at a dead port), no
# redis, no hyperscan (its regexps compile for minutes on a loaded machine
# at every start in a fresh directory).  rspamd's milter_headers module adds its X-Spamd-Result /
# X-Rspamd-* headers to every message, loopback clients included.
import os
import shutil
import subprocess
import tempfile
import time

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"

CONF = """.include "$CONFDIR/common.conf"
options {
    pidfile = "%(dir)s/rspamd.pid";
    .include "$CONFDIR/options.inc"
    disable_hyperscan = true;
    dns { nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }
}
logging { type = "file"; filename = "%(dir)s/rspamd.log"; level = "notice"; }
worker "rspamd_proxy" {
    bind_socket = "127.0.0.1:%(port)d";
    milter = yes;
    timeout = 120s;
    count = 1;
    upstream "local" { default = yes; self_scan = yes; }
}
"""
HEADERS = "extended_spam_headers = true;\nskip_local = false;\nskip_authenticated = false;\n"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class Rspamd:
    def __init__(self, port):
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="mxkeep-rspamd.")
        os.makedirs(os.path.join(self.dir, "local", "local.d"))
        with open(os.path.join(self.dir, "rspamd.conf"), "w") as f:
            f.write(CONF % {"dir": self.dir, "port": port})
        with open(os.path.join(self.dir, "local", "local.d", "milter_headers.conf"), "w") as f:
            f.write(HEADERS)
        # Its fuzzy_check resolves rspamd.com's fuzzy servers with the
        # system resolver while starting: offline, with an unreachable
        # resolver, that made the start take over a minute.  Off, and the
        # resolver's waits bounded (RES_OPTIONS) for what else it looks up.
        with open(os.path.join(self.dir, "local", "local.d", "fuzzy_check.conf"), "w") as f:
            f.write("enabled = false;\n")
        self.proc = None

    def start(self, ready):
        """Start rspamd and wait for ready(); an rspamd that exits at start
        (seen under load, right after another test's rspamd stopped) is
        started again, three times at most."""
        d = self.dir
        for _ in range(3):
            self.proc = subprocess.Popen(
                [RSPAMD, "-f", "-i", "-c", os.path.join(d, "rspamd.conf"), "--var", "DBDIR=" + d,
                 "--var", "RUNDIR=" + d, "--var", "LOGDIR=" + d, "--var",
                 "LOCAL_CONFDIR=" + d + "/local"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                env=dict(os.environ, RES_OPTIONS="timeout:1 attempts:1"))
            deadline = time.time() + 180    # a loaded machine: it compiles its regexps
            while time.time() < deadline and self.proc.poll() is None:
                if ready():
                    return True
                time.sleep(0.3)
            if self.proc.poll() is None:
                return False
            time.sleep(1)
        return False

    def log(self):
        try:
            return open(os.path.join(self.dir, "rspamd.log")).read()
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
