"""
mxtest.py - harness for the t/smtp integration tests of mxkeep.

What it does: prints TAP, writes a config for one mxkeepd in a private
temporary directory, starts it on 127.0.0.1 with an ephemeral port, talks
to it (smtplib, or a raw socket for dialogues smtplib cannot express), and
reads the spool back through mxkeepctl.

What it owns: the temporary directory and the daemon process of each
Server.  Both are removed on stop()/cleanup(), and an atexit hook makes
sure no daemon outlives its test even when the test dies on an exception.

What it must never do: wait without a bound (every socket read and every
process wait has a timeout), or touch anything outside its temp dir.

Security notes: the test cert and key are generated per test file and
live only in the temp dir.  When run as root the daemon drops to the
"mxkeep" user, so the temp dir is made 0755 for it to reach the spool.

Environment: MXKEEPD and MXKEEPCTL override the binaries (default
<root>/src/mxkeepd and <root>/src/mxkeepctl).  MXTEST_KEEP=1 keeps the
temp dirs for post-mortem.
"""

import atexit
import json
import os
import pwd
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback

# --- locations ---------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MXKEEPD = os.environ.get("MXKEEPD", os.path.join(ROOT, "src", "mxkeepd"))
MXKEEPCTL = os.environ.get("MXKEEPCTL", os.path.join(ROOT, "src", "mxkeepctl"))
SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"

HOSTNAME = "mx2.example.net"
START_TIMEOUT = 10.0        # seconds for the daemon to accept connections
STOP_TIMEOUT = 10.0         # seconds between SIGTERM and SIGKILL
REPLY_TIMEOUT = 10.0        # default bound on one SMTP reply
CTL_TIMEOUT = 30.0          # bound on one mxkeepctl run
QID_RE = re.compile(r"queued as ([0-9A-V]{12})\b")
CRLF = b"\r\n"

IS_ROOT = os.geteuid() == 0

# --- TAP ---------------------------------------------------------------

_tap = {"n": 0, "failed": 0, "planned": None}


def _emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def diag(*msg):
    for part in " ".join(str(m) for m in msg).splitlines() or [""]:
        sys.stdout.write("# " + part + "\n")
    sys.stdout.flush()


note = diag


def ok(cond, name=""):
    _tap["n"] += 1
    name = name.replace("#", "\\#")
    if cond:
        _emit("ok %d - %s" % (_tap["n"], name))
    else:
        _tap["failed"] += 1
        _emit("not ok %d - %s" % (_tap["n"], name))
        caller = traceback.extract_stack()[-3] if len(traceback.extract_stack()) > 2 else None
        if caller:
            diag("  Failed test '%s' at %s line %d." % (name, os.path.basename(caller.filename), caller.lineno))
    return bool(cond)


def is_(got, expected, name=""):
    r = ok(got == expected, name)
    if not r:
        diag("         got: %r" % (_short(got),))
        diag("    expected: %r" % (_short(expected),))
    return r


def isnt(got, unexpected, name=""):
    r = ok(got != unexpected, name)
    if not r:
        diag("         got: %r" % (_short(got),))
        diag("    expected: anything else")
    return r


def like(got, pattern, name=""):
    text = got if isinstance(got, str) else ("" if got is None else repr(got))
    r = ok(re.search(pattern, text, re.S) is not None, name)
    if not r:
        diag("                  %r" % (_short(got),))
        diag("    doesn't match '%s'" % pattern)
    return r


def unlike(got, pattern, name=""):
    text = got if isinstance(got, str) else ("" if got is None else repr(got))
    r = ok(re.search(pattern, text, re.S) is None, name)
    if not r:
        diag("                  %r" % (_short(got),))
        diag("          matches '%s'" % pattern)
    return r


def skip(reason, count=1):
    for _ in range(count):
        _tap["n"] += 1
        _emit("ok %d # skip %s" % (_tap["n"], reason))


def _short(v, limit=600):
    r = v
    if isinstance(v, (bytes, str)) and len(v) > limit:
        r = v[:limit // 2] + (b"..." if isinstance(v, bytes) else "...") + v[-limit // 2:]
    return r


def skip_all(reason):
    _cleanup_all()
    _emit("1..0 # SKIP %s" % reason)
    sys.stdout.flush()
    os._exit(0)


def bail_out(reason):
    _emit("Bail out! %s" % reason)
    _cleanup_all()
    sys.stdout.flush()
    os._exit(255)


def done():
    """Print the plan and exit: 0 when every test passed."""
    _cleanup_all()
    _emit("1..%d" % _tap["n"])
    if _tap["failed"]:
        diag("Looks like you failed %d test%s of %d." %
             (_tap["failed"], "" if _tap["failed"] == 1 else "s", _tap["n"]))
    sys.stdout.flush()
    sys.exit(min(_tap["failed"], 254) if _tap["failed"] else (0 if _tap["n"] else 255))


def run_main(fn):
    """Run a test body; an unexpected exception is one failed test, and the
    servers are cleaned up either way."""
    try:
        fn()
    except SystemExit:
        raise
    except BaseException as e:  # noqa: B902 - any escape is a test failure
        ok(False, "test body raised %s: %s" % (type(e).__name__, e))
        for line in traceback.format_exc().splitlines():
            diag(line)
        for s in list(_servers):
            tail = s.log()[-3000:]
            if tail:
                diag("--- mxkeepd log tail (%s) ---" % s.dir)
                diag(tail)
    done()


def require_binaries(ctl=True):
    if not os.access(MXKEEPD, os.X_OK):
        skip_all("no mxkeepd at %s (build first)" % MXKEEPD)
    if ctl and not os.access(MXKEEPCTL, os.X_OK):
        skip_all("no mxkeepctl at %s (build first)" % MXKEEPCTL)


# --- processes and ports -----------------------------------------------

_servers = []
_peers = []


def _cleanup_all():
    for s in list(_servers):
        try:
            s.cleanup()
        except Exception as e:  # noqa: B902 - cleanup must go on
            diag("cleanup: %s" % e)
    # Peers (sinks, fake primaries, dnsmasq, Postfix) after the daemons,
    # so no daemon sees its primary vanish while it is being stopped.
    for p in list(_peers):
        try:
            p.cleanup()
        except Exception as e:  # noqa: B902 - cleanup must go on
            diag("cleanup: %s" % e)


atexit.register(_cleanup_all)


def _on_signal(signum, frame):
    _cleanup_all()
    os._exit(128 + signum)


for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _on_signal)


def free_port():
    """An ephemeral port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cert(directory, cn=HOSTNAME):
    """A self-signed cert and key in directory; returns (cert, key)."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-subj", "/CN=" + cn, "-days", "2", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return cert, key


def run(cmd, timeout=60, input=None):
    """Run a command, capture output (bytes); never hangs past timeout."""
    try:
        return subprocess.run(cmd, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        r = subprocess.CompletedProcess(cmd, 124, e.stdout or b"", (e.stderr or b"") + b"\n[timeout]")
        return r


def mxkeep_user():
    """The user the daemon should drop to, or None."""
    if not IS_ROOT:
        return None
    name = os.environ.get("MXTEST_USER", "mxkeep")
    try:
        pwd.getpwnam(name)
    except KeyError:
        diag("running as root but user %r does not exist: not setting user" % name)
        return None
    return name


def cfg_str(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def cfg_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return "%dL" % v if abs(v) > 2**31 - 1 else str(v)
    if isinstance(v, (list, tuple)):
        return "( " + ", ".join(cfg_value(x) for x in v) + " )"
    if isinstance(v, dict):
        return "{ " + " ".join("%s = %s;" % (k, cfg_value(x)) for k, x in v.items()) + " }"
    return cfg_str(v)


class Server:
    """
    One mxkeepd in its own temp dir.

    domains: list of dicts; each has "name" and optionally "recipients" (a
    list of addresses or "@domain" entries, written to a file) and any
    other domain key (primary, retention, tls, hold) passed as is.
    limits: dict merged over the test defaults.  settings: other top-level
    keys (bare_newline, lmdb_map_size...).  extra: raw config text appended.
    tls: True to generate (or reuse cert=(c, k)) a certificate.
    """

    DEFAULT_LIMITS = {"command_timeout": "30s", "data_timeout": "30s"}

    def __init__(self, domains=None, limits=None, settings=None, extra="", tls=False,
                 cert=None, spool_dir=None, name="mxtest"):
        self.dir = tempfile.mkdtemp(prefix=name + ".")
        os.chmod(self.dir, 0o755 if IS_ROOT else 0o700)
        self.port = None
        self.proc = None
        self.logfile = os.path.join(self.dir, "mxkeepd.log")
        self.conf = os.path.join(self.dir, "mxkeep.conf")
        self.spool = spool_dir or os.path.join(self.dir, "spool")
        self.ctl_socket = os.path.join(self.dir, "run", "mxkeep.sock")
        self.domains = domains if domains is not None else [{"name": "example.org"}]
        self.limits = dict(self.DEFAULT_LIMITS)
        self.limits.update(limits or {})
        self.settings = dict(settings or {})
        self.extra = extra
        self.cert = None
        self.key = None
        if cert:
            self.cert, self.key = cert
        elif tls:
            self.cert, self.key = make_cert(self.dir)
        self._starts = 0
        _servers.append(self)

    # -- configuration --
    def write_config(self, port=None):
        self.port = port or free_port()
        os.makedirs(os.path.join(self.dir, "run"), exist_ok=True)
        lines = [
            "# written by t/lib/mxtest.py",
            "hostname = %s;" % cfg_str(HOSTNAME),
            "listen = ( { address = \"127.0.0.1\"; port = %d; } );" % self.port,
            "spool = %s;" % cfg_str(self.spool),
            "control = { socket = %s; };" % cfg_str(self.ctl_socket),
        ]
        if "etrn" not in self.settings:
            lines.append('etrn = { allow = ( "127.0.0.0/8" ); };')
        if "spf" not in self.settings and "resolver" not in self.settings:
            # No resolver: the system's is unreachable from a test box, so
            # every SPF query would spend its timeout in the workers until
            # the breaker opens (the 250 never waits for it: 190 shows the
            # default).  Tests that check SPF set a resolver (dnsmasq) or
            # spf themselves.
            lines.append('spf = { timeout = "0s"; };')
        user = mxkeep_user()
        if user and "user" not in self.settings:
            lines.append("user = %s;" % cfg_str(user))
        if self.cert:
            lines.append("tls = { certificate = %s; key = %s; };" % (cfg_str(self.cert), cfg_str(self.key)))
        for k, v in self.settings.items():
            if v is None:
                continue
            lines.append("%s = %s;" % (k, cfg_value(v)))
        lines.append("limits = %s;" % cfg_value(self.limits))
        doms = []
        for i, d in enumerate(self.domains):
            d = dict(d)
            items = ["name = %s;" % cfg_str(d.pop("name"))]
            rcpts = d.pop("recipients", None)
            if rcpts is not None:
                if isinstance(rcpts, str):
                    path = rcpts                  # a path given as is
                else:
                    path = os.path.join(self.dir, "rcpts.%d" % i)
                    with open(path, "w") as f:
                        f.write("# recipients\n" + "".join(r + "\n" for r in rcpts))
                    os.chmod(path, 0o644)
                items.append("recipients = %s;" % cfg_str(path))
            for k, v in d.items():
                items.append("%s = %s;" % (k, cfg_value(v)))
            doms.append("  { " + " ".join(items) + " }")
        lines.append("domains = (\n" + ",\n".join(doms) + "\n);")
        if self.extra:
            lines.append(self.extra)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.conf, 0o644)
        return self.conf

    # -- life cycle --
    def start(self, port=None, expect_fail=False, env=None, prefix=None):
        """env: variables added to the daemon's environment (e.g. the
        faketime_env() of a clock offset); prefix: argv put before mxkeepd
        (e.g. ["faketime", "+8d"]).  Both apply to this start only."""
        if self.proc and self.proc.poll() is None:
            raise RuntimeError("server already running")
        if self.port is None or port is not None:
            self.write_config(port)
        self._starts += 1
        log = open(self.logfile, "ab")
        log.write(("=== start %d ===\n" % self._starts).encode())
        log.flush()
        penv = None
        if env:
            penv = dict(os.environ)
            penv.update(env)
        self.proc = subprocess.Popen(list(prefix or []) + [MXKEEPD, "-f", "-c", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     cwd=self.dir, env=penv)
        log.close()
        if expect_fail:
            return self
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mxkeepd exited with %s at start:\n%s" %
                                   (self.proc.returncode, self.log()[-2000:]))
            try:
                self._probe()
                return self
            except OSError as e:
                last = e
                time.sleep(0.05)
        self.kill9()
        raise RuntimeError("mxkeepd did not accept on port %d within %ds (%s):\n%s" %
                           (self.port, START_TIMEOUT, last, self.log()[-2000:]))

    def _probe(self):
        # A full greeting/QUIT/EOF round, so the connection is gone from
        # the daemon's books before a test counts connections.
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.settimeout(2)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed before greeting")
                buf += chunk
            if not buf.startswith(b"220"):
                raise ConnectionError("greeting %r" % buf)
            s.sendall(b"QUIT\r\n")
            end = time.monotonic() + 2
            while time.monotonic() < end:
                chunk = s.recv(4096)
                if not chunk:
                    break
        time.sleep(0.05)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM, wait, SIGKILL.  Returns the exit status (or None)."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                diag("mxkeepd ignored SIGTERM for %ds: SIGKILL" % STOP_TIMEOUT)
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
            except ProcessLookupError:
                pass
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def hup(self):
        if self.running():
            self.proc.send_signal(signal.SIGHUP)

    def cleanup(self):
        try:
            self.stop()
        finally:
            if self in _servers:
                _servers.remove(self)
            if os.environ.get("MXTEST_KEEP"):
                diag("kept %s" % self.dir)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        try:
            with open(self.logfile, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- clients --
    def smtp(self, timeout=REPLY_TIMEOUT, helo=None):
        import smtplib
        s = smtplib.SMTP("127.0.0.1", self.port, local_hostname=helo or "client.example.com",
                         timeout=timeout)
        return s

    def raw(self, timeout=REPLY_TIMEOUT, greet=True, source=None, rcvbuf=None):
        c = Raw(self.port, timeout=timeout, source=source, rcvbuf=rcvbuf)
        if greet:
            c.greeting = c.reply()
        return c

    # -- spool --
    def ctl(self, *args, timeout=CTL_TIMEOUT):
        return run([MXKEEPCTL, "-c", self.conf] + list(args), timeout=timeout)

    def queue(self):
        r = self.ctl("--json", "queue")
        if r.returncode != 0:
            raise RuntimeError("mxkeepctl --json queue: exit %d: %s" %
                               (r.returncode, r.stderr.decode("utf-8", "replace")))
        data = json.loads(r.stdout.decode("utf-8"))
        return data.get("messages", [])

    def holds(self, domain=None):
        """mxkeepctl --json holds: the hold records (of domain only, when
        given), or None when the command fails."""
        r = self.ctl("--json", "holds")
        if r.returncode != 0:
            return None
        return [x for x in json.loads(r.stdout.decode("utf-8"))["holds"]
                if domain is None or x["domain"] == domain]

    def queue_by_qid(self):
        return {m["qid"]: m for m in self.queue()}

    def show(self, qid):
        """mxkeepctl --json show QID: the extended record (envid, ret,
        body, client, helo, recipients), or None."""
        r = self.ctl("--json", "show", qid)
        if r.returncode != 0:
            return None
        data = json.loads(r.stdout.decode("utf-8"))
        if isinstance(data, dict) and "messages" in data:
            data = (data["messages"] or [None])[0]
        return data

    def qids(self):
        return sorted(m["qid"] for m in self.queue())

    def body(self, qid):
        r = self.ctl("cat", qid)
        if r.returncode != 0:
            return None
        return r.stdout


# --- message helpers ---------------------------------------------------

def qid_of(reply_text):
    """The QID in a '250 2.0.0 Ok: queued as QID' reply, or None."""
    if isinstance(reply_text, bytes):
        reply_text = reply_text.decode("latin-1")
    m = QID_RE.search(reply_text or "")
    return m.group(1) if m else None


def strip_our_ar(data):
    """A delivered message without the Authentication-Results header
    mxkeepd puts on top when forwarding (CRLF or, in smtp-sink dumps, LF
    line ends): what the spool stored."""
    ar = ("Authentication-Results: %s;" % HOSTNAME).encode()
    if data is None or not data.startswith(ar):
        return data
    lines = data.split(b"\n")
    i = 1
    while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\n".join(lines[i:])


def split_received(body):
    """Split a stored body into (our Received header, the rest).  A body as
    the primary got it starts with our Authentication-Results header (added
    on the way out): that one is left out of both."""
    if body is None:
        return None, None
    ar = ("Authentication-Results: %s;" % HOSTNAME).encode()
    if body.startswith(ar):
        pos = body.find(b"\r\n")
        while pos >= 0 and body[pos + 2:pos + 3] in (b" ", b"\t"):
            pos = body.find(b"\r\n", pos + 2)
        body = body[pos + 2:] if pos >= 0 else b""
    if not body.startswith(b"Received:"):
        return b"", body
    pos = body.find(b"\r\n")
    while pos >= 0 and body[pos + 2:pos + 3] in (b" ", b"\t"):
        pos = body.find(b"\r\n", pos + 2)
    if pos < 0:
        return body, b""
    return body[:pos + 2], body[pos + 2:]


def unfold(header):
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    return re.sub(r"\r?\n[ \t]+", " ", header).strip()


def iso(t):
    """Unix time t as RFC 3339 UTC, "YYYY-MM-DDTHH:MM:SSZ": the form the
    configuration's maintenance windows and mxkeepctl take."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def make_message(tag, body_lines=3, extra_headers=(), size=None):
    """An RFC 5322 message (bytes, CRLF line ends, ending in CRLF)."""
    hdr = [b"From: sender@example.com", b"To: user@example.org",
           ("Subject: test " + tag).encode(), ("Message-ID: <" + tag + "@example.com>").encode()]
    hdr += [h if isinstance(h, bytes) else h.encode() for h in extra_headers]
    lines = [("line %d of %s" % (i, tag)).encode() for i in range(body_lines)]
    msg = CRLF.join(hdr) + CRLF + CRLF + CRLF.join(lines) + CRLF
    if size is not None and len(msg) < size:
        filler = []
        need = size - len(msg)
        row = (b"x" * 76) + CRLF
        while need > 0:
            filler.append(row if need >= len(row) else (b"y" * max(0, need - 2) + CRLF)[:max(need, 2)])
            need -= len(filler[-1])
        msg += b"".join(filler)
    return msg


# --- DKIM (tests 157, 159) ---

def relaxed_header(name, value):
    v = re.sub(r"\r\n", "", value)
    v = re.sub(r"[ \t]+", " ", v).strip()
    return name.strip().lower() + ":" + v


def relaxed_body(body):
    lines = body.split(b"\r\n")
    out = [re.sub(rb"[ \t]+", b" ", ln).rstrip(b" \t") for ln in lines]
    while out and out[-1] == b"":
        out.pop()
    return b"".join(ln + b"\r\n" for ln in out)


def dkim_sign(msg, domain, selector, keyfile):
    """A relaxed/relaxed rsa-sha256 DKIM signature (RFC 6376 3.4, 3.7),
    made with the cryptography package: python3-dkim is not installed."""
    import base64
    import hashlib
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    head, body = msg.split(b"\r\n\r\n", 1)
    fields = []
    for ln in head.decode("latin-1").split("\r\n"):
        if ln[:1] in (" ", "\t") and fields:
            fields[-1] += "\r\n" + ln
        else:
            fields.append(ln)
    signed = ["from", "to", "subject", "message-id"]
    byname = {f.split(":", 1)[0].strip().lower(): f for f in fields}
    bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
    sig = ("v=1; a=rsa-sha256; c=relaxed/relaxed; d=%s; s=%s; h=%s; bh=%s; b="
           % (domain, selector, ":".join(signed), bh))
    data = "".join(relaxed_header(*byname[h].split(":", 1)) + "\r\n" for h in signed)
    data += relaxed_header("DKIM-Signature", sig)
    with open(keyfile, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    b = base64.b64encode(key.sign(data.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()
    return ("DKIM-Signature: " + sig + b + "\r\n").encode() + msg


def ar_of(body):
    head = body.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    unfolded = re.sub(r"\r\n[ \t]+", " ", head)
    ars = [ln for ln in unfolded.split("\r\n") if ln.lower().startswith("authentication-results:")]
    return ars


def dkim_key(domain="pass.test", selector="sel1"):
    """A DKIM key pair made by opendkim-genkey: (key directory, TXT record
    text, private key file).  skip_all when the tools to make one or to
    sign with it are missing.  The caller removes the directory."""
    genkey = shutil.which("opendkim-genkey") or "/usr/sbin/opendkim-genkey"
    if not os.access(genkey, os.X_OK):
        skip_all("opendkim-genkey not installed (opendkim-tools)")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        skip_all("python cryptography not available to sign test messages")
    kdir = tempfile.mkdtemp(prefix="mxtest-dkim.")
    subprocess.run([genkey, "-D", kdir, "-d", domain, "-s", selector, "-b", "1024"], check=True)
    with open(os.path.join(kdir, selector + ".txt")) as f:
        txt = "".join(re.findall(r'"([^"]*)"', f.read()))
    return kdir, txt, os.path.join(kdir, selector + ".private")


def dkim_world(txt, settings=None):
    """The peers of the DKIM tests, started: dnsmasq serving the key record
    txt at sel1._domainkey.pass.test and pass.test's SPF record (which
    fails the loopback client), a FakeSMTP primary for example.org on
    127.0.0.2, and mxkeepd using that resolver (and `settings` besides).
    Returns (dns, prim, srv)."""
    dns = Dnsmasq(txt=[("sel1._domainkey.pass.test", txt),
                       ("pass.test", "v=spf1 ip4:192.0.2.0/24 -all")]).start()
    prim = FakeSMTP(host="127.0.0.2", name="primary.example.org").start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings=dict({"resolver": dns.address, "delivery": fast_delivery()},
                               **(settings or {})))
    srv.start()
    return dns, prim, srv


def dot_stuff(msg):
    """Dot-stuff a CRLF message for DATA and append the end marker."""
    out = re.sub(rb"(?m)^\.", b"..", msg)
    if not out.endswith(CRLF):
        out += CRLF
    return out + b".\r\n"


def wait_for(pred, timeout=10.0, step=0.1):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= end:
            return v
        time.sleep(step)


# --- raw SMTP client ---------------------------------------------------

class Reply:
    """A parsed SMTP reply: code (int, or None on EOF/timeout), lines
    (text after the code), text (the raw reply)."""

    def __init__(self, code, lines, raw, eof=False, timeout=False):
        self.code = code
        self.lines = lines
        self.raw = raw
        self.eof = eof
        self.timeout = timeout

    @property
    def text(self):
        return self.raw.decode("latin-1")

    @property
    def last(self):
        return self.lines[-1] if self.lines else ""

    def __repr__(self):
        if self.code is None:
            return "<Reply %s %r>" % ("EOF" if self.eof else "TIMEOUT", self.raw)
        return "<Reply %r>" % self.text

    def __str__(self):
        return self.text.rstrip("\r\n").replace("\r\n", " | ") if self.code is not None else repr(self)


class Raw:
    """A plain socket SMTP client that sends exactly the bytes it is given
    and reads replies with a bound on every wait."""

    def __init__(self, port, host="127.0.0.1", timeout=REPLY_TIMEOUT, source=None, rcvbuf=None):
        """rcvbuf: a fixed receive buffer, set before connecting so that
        the window is scaled for it (the kernel then stops tuning it)."""
        self.timeout = timeout
        if rcvbuf is None:
            self.sock = socket.create_connection((host, port), timeout=timeout,
                                                 source_address=(source, 0) if source else None)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            if source:
                self.sock.bind((source, 0))
            self.sock.connect((host, port))
        self.buf = b""
        self.eof = False
        self.greeting = None

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self, deadline):
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ssl.SSLError:
            self.eof = True
            return False
        except (ConnectionResetError, BrokenPipeError):
            self.eof = True
            return False
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def readline(self, timeout=None):
        """One line including its line end, or None on EOF/timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.buf:
            if not self._fill(deadline):
                return None
        i = self.buf.index(b"\n") + 1
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def reply(self, timeout=None):
        """Read one (possibly multi-line) reply."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        raw = b""
        lines = []
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line is None:
                return Reply(None, lines, raw, eof=self.eof, timeout=not self.eof)
            raw += line
            text = line.rstrip(b"\r\n").decode("latin-1")
            if len(text) < 3 or not text[:3].isdigit():
                return Reply(None, lines + [text], raw)
            lines.append(text[4:])
            if len(text) == 3 or text[3] == " ":
                return Reply(int(text[:3]), lines, raw)

    def replies(self, n, timeout=None):
        return [self.reply(timeout) for _ in range(n)]

    def cmd(self, line, timeout=None):
        if isinstance(line, str):
            line = line.encode("latin-1")
        self.send(line + CRLF)
        return self.reply(timeout)

    def pending(self, wait=0.3):
        """Whatever arrives within `wait` seconds (and what is buffered)."""
        deadline = time.monotonic() + wait
        while self._fill(deadline):
            pass
        data, self.buf = self.buf, b""
        return data

    def closed(self, timeout=None):
        """True when the server closes the connection within timeout
        (data arriving meanwhile is discarded)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                return False
        return True

    def ehlo(self, name="client.example.com"):
        return self.cmd("EHLO " + name)

    def starttls(self, context=None, server_hostname=HOSTNAME):
        ctx = context or insecure_context()
        self.sock.settimeout(self.timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        return self.sock

    def transaction(self, sender, rcpts, msg):
        """MAIL/RCPT/DATA one at a time; returns the list of replies (stops at
        the first failure of MAIL or DATA)."""
        out = [self.cmd("MAIL FROM:<%s>" % sender)]
        if out[-1].code != 250:
            return out
        for r in rcpts:
            out.append(self.cmd("RCPT TO:<%s>" % r))
        out.append(self.cmd("DATA"))
        if out[-1].code != 354:
            return out
        self.send(dot_stuff(msg))
        out.append(self.reply())
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def insecure_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def send_smtplib(server, sender, rcpts, msg, **kw):
    """One transaction with smtplib; returns (code, text) of the end-of-data
    reply, or raises smtplib errors."""
    s = server.smtp()
    try:
        s.ehlo("client.example.com")
        s.mail(sender, kw.get("mail_options", []))
        for r in rcpts:
            code, text = s.rcpt(r, kw.get("rcpt_options", []))
            if code != 250:
                raise RuntimeError("RCPT %s: %d %s" % (r, code, text))
        code, text = s.data(msg)
        return code, text.decode("latin-1")
    finally:
        try:
            s.quit()
        except Exception:  # noqa: B902 - best effort
            s.close()


# --- delivery peers (t/integration) --------------------------------------
#
# Every peer lives in its own temp dir (or in-process), listens on loopback
# only, and is registered in _peers so _cleanup_all() stops it even when a
# test dies.  Every wait has a bound.

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
FAKETIME = shutil.which("faketime") or "/usr/bin/faketime"
POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
POSTCAT = "/usr/sbin/postcat"
PEER_START_TIMEOUT = 10.0   # seconds for a peer to listen
PEER_IO_TIMEOUT = 30.0      # bound on one read in the fake primary
MSGID_RE = re.compile(rb"(?im)^Message-ID:\s*(<[^>\r\n]*>)")

# Delivery settings that keep the integration tests fast: probe every 1-4 s.
FAST_DELIVERY = {"probe_min": "1s", "probe_max": "4s", "max_connections": 4,
                 "connect_timeout": "2s"}


def fast_delivery(**over):
    d = dict(FAST_DELIVERY)
    d.update(over)
    return d


def message_id(body):
    """The Message-ID (with <>) of a message, or None."""
    m = MSGID_RE.search(body or b"")
    return m.group(1).decode("latin-1") if m else None


def metrics_get(port):
    """The text of mxkeepd's /metrics on 127.0.0.1:port."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metrics")
        return c.getresponse().read().decode("utf-8")
    finally:
        c.close()


def metric_value(text, name, **labels):
    """The value of series mxkeep_NAME{labels} in /metrics text, or None."""
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for ln in text.split("\n"):
        m = re.match(r'^mxkeep_%s(?:\{(.*)\})? (\S+)$' % re.escape(name), ln)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return None


def free_port_on(host):
    """A TCP port free on host that is also free for UDP (for dnsmasq)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port on %s" % host)


def port_open(host, port, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def cert_fingerprint(cert_path):
    """'sha256:<hex>' of the DER certificate, as tls_fingerprint wants it."""
    import hashlib
    with open(cert_path) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    return "sha256:" + hashlib.sha256(der).hexdigest()


def faketime_env(offset):
    """Environment that runs a program with its clock moved by offset
    ("+8d", "+31d"): libfaketime, the thread-safe flavour (mxkeepd has a
    writer thread)."""
    lib = None
    for cand in ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/faketime/libfaketimeMT.so.1"):
        if os.path.exists(cand):
            lib = cand
            break
    if lib is None:
        return None
    env = {"LD_PRELOAD": lib, "FAKETIME": offset, "FAKETIME_NO_CACHE": "1",
           "DONT_FAKE_MONOTONIC": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    # An ASan build insists on coming first among the loaded libraries;
    # the preload comes before it.  And ASan's allocator reads the clock
    # when it maps a size class's first region (for its release-to-OS
    # timer): if that happens inside libfaketime's own lazy start, whose
    # dlsym allocates in the class being mapped, the process deadlocks
    # before main (seen as soon as a library constructor, p11-kit's via
    # libpq, made the first allocation of that class).  Without the timer
    # the allocator never reads the clock.  Both harmless for a normal
    # build.
    asan = os.environ.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = ((asan + ":" if asan else "") +
                           "verify_asan_link_order=0:allocator_release_to_os_interval_ms=-1")
    return env


def wait_empty(srv, timeout=20.0):
    """True when mxkeepctl shows an empty queue within timeout."""
    return bool(wait_for(lambda: len(srv.queue()) == 0, timeout, 0.2))


def wait_log(srv, pattern, timeout=10.0, since=0):
    """The first match of pattern in the daemon log after offset since
    (a re.Match), or None after timeout."""
    rx = re.compile(pattern)

    def look():
        return rx.search(srv.log(), since)
    return wait_for(look, timeout, 0.1)


def http_get(port, path, timeout=10):
    """(status, text) of GET path on the metrics listener at 127.0.0.1:port."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def on_tmpfs(srv, size, fn, *args):
    """Mount a tmpfs of size at srv.dir/fs (root only: skip_all otherwise),
    run fn(srv, mnt, *args), then stop srv and unmount whatever happened."""
    if not IS_ROOT:
        skip_all("needs root to mount a tmpfs")
    mnt = os.path.join(srv.dir, "fs")
    os.makedirs(mnt)
    r = run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", mnt])
    if r.returncode != 0:
        skip_all("cannot mount tmpfs: %s" % r.stderr.decode("latin-1").strip())
    try:
        fn(srv, mnt, *args)
    finally:
        srv.stop()
        for _ in range(20):
            if run(["umount", mnt]).returncode == 0:
                break
            time.sleep(0.25)
        else:
            run(["umount", "-l", mnt])


def fill_fs(mnt, leave, chunk=65536):
    """Fill the file system at mnt to ENOSPC with the file mnt/filler, then
    give back `leave` octets; returns the filler's path."""
    path = os.path.join(mnt, "filler")
    # Unbuffered: a buffered file would raise ENOSPC again at close, when
    # it tries to write what the failed flush left in its buffer.
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * chunk)
        except OSError:
            pass
    os.truncate(path, max(0, os.path.getsize(path) - leave))
    return path


def rcpt_states(srv):
    """{address: state} over the whole queue (last one wins)."""
    out = {}
    for m in srv.queue():
        for r in m.get("recipients", []):
            out[r.get("addr")] = r.get("state")
    return out


def send_batch(srv, n, sender="sender@example.com", rcpt="user@example.org", tag="m",
               per_connection=10, size=None):
    """Queue n messages over a few connections; returns [(qid, msg)]."""
    out = []
    i = 0
    while i < n:
        c = srv.raw()
        c.ehlo()
        for _ in range(min(per_connection, n - i)):
            msg = make_message("%s%03d" % (tag, i), size=size)
            rs = c.transaction(sender, [rcpt] if isinstance(rcpt, str) else rcpt, msg)
            if rs[-1].code != 250:
                raise RuntimeError("message %d refused: %s" % (i, rs[-1]))
            out.append((qid_of(rs[-1].text), msg))
            i += 1
        c.cmd("QUIT")
        c.close()
    return out


def queue_while_down(srv, prim, n, domain="example.org", tag="m"):
    """Queue n messages for user@domain while prim is not started, wait
    until the destination is down, start prim; returns the sorted
    Message-IDs (a backlog waiting for a primary that comes back)."""
    sent = send_batch(srv, n, tag=tag, rcpt="user@" + domain)
    ok(wait_log(srv, r"destination %s: \w+ -> down" % re.escape(domain), 8) is not None,
       "primary down at first: %d messages queued for %s" % (n, domain))
    return sorted(message_id(m) for _, m in sent)


def etrn(srv, arg, source=None, in_transaction=False):
    """EHLO + ETRN arg on a fresh connection; returns the Reply."""
    c = srv.raw(source=source)
    try:
        c.ehlo()
        if in_transaction:
            c.cmd("MAIL FROM:<a@example.com>")
        return c.cmd("ETRN" + ("" if arg is None else " " + arg))
    finally:
        try:
            c.cmd("QUIT", timeout=2)
        except OSError:
            pass
        c.close()


class _Peer:
    def __init__(self, name):
        self.dir = tempfile.mkdtemp(prefix=name + ".")
        os.chmod(self.dir, 0o755)
        self.proc = None
        _peers.append(self)

    def _popen(self, cmd, logname):
        log = open(os.path.join(self.dir, logname), "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     cwd=self.dir)
        log.close()

    def plog(self, logname):
        try:
            with open(os.path.join(self.dir, logname), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.proc = None

    def cleanup(self):
        try:
            self.stop()
        finally:
            if self in _peers:
                _peers.remove(self)
            if os.environ.get("MXTEST_KEEP"):
                diag("kept %s" % self.dir)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)


class SmtpSink(_Peer):
    """Postfix's smtp-sink on host:port, dumping every transaction into a
    file (-d).  smtp-sink writes what came after DATA as is (still
    dot-stuffed, CRLF turned into LF) after its own X-* and Received
    lines; messages() undoes none of that but splits it off."""

    def __init__(self, host="127.0.0.1", port=None, options=()):
        super().__init__("sink")
        self.host = host
        self.port = port or free_port_on(host)
        self.dump = os.path.join(self.dir, "dump")
        os.makedirs(self.dump)
        os.chmod(self.dump, 0o777)   # smtp-sink runs as nobody when we are root
        self.options = list(options)

    def start(self):
        cmd = [SMTP_SINK]
        if IS_ROOT:
            cmd += ["-u", "nobody"]
        cmd += ["-d", os.path.join(self.dump, "m.")] + self.options + \
            ["%s:%d" % (self.host, self.port), "256"]
        self._popen(cmd, "sink.log")
        if not wait_for(lambda: port_open(self.host, self.port), PEER_START_TIMEOUT, 0.05):
            raise RuntimeError("smtp-sink did not listen on %s:%d: %s" %
                               (self.host, self.port, self.plog("sink.log")))
        return self

    def files(self):
        try:
            return sorted(os.path.join(self.dump, f) for f in os.listdir(self.dump))
        except OSError:
            return []

    def count(self):
        return len(self.files())

    @staticmethod
    def parse(data):
        """One dump file -> dict(mail, rcpts, helo, client, data): data is
        the DATA stream as smtp-sink saw it (LF line ends, dot-stuffed)."""
        out = {"mail": None, "rcpts": [], "helo": None, "client": None, "data": b""}
        lines = data.split(b"\n")
        i = 0
        while i < len(lines):
            ln = lines[i]
            if ln.startswith(b"X-Client-Addr: "):
                out["client"] = ln[15:].decode("latin-1")
            elif ln.startswith(b"X-Helo-Args: "):
                out["helo"] = ln[13:].decode("latin-1")
            elif ln.startswith(b"X-Mail-Args: "):
                out["mail"] = ln[13:].decode("latin-1")
            elif ln.startswith(b"X-Rcpt-Args: "):
                out["rcpts"].append(ln[13:].decode("latin-1"))
            elif ln.startswith(b"Received: ") and b"(smtp-sink)" in lines[i + 1]:
                i += 3
                break
            i += 1
        rest = b"\n".join(lines[i:])
        # smtp-sink ends each dump with one empty line of its own.
        if rest.endswith(b"\n\n"):
            rest = rest[:-1]
        out["data"] = rest
        return out

    def messages(self):
        out = []
        for path in self.files():
            with open(path, "rb") as f:
                out.append(self.parse(f.read()))
        return out

    @staticmethod
    def as_dumped(msg):
        """What smtp-sink's dump holds for a message sent byte-exact."""
        stuffed = dot_stuff(msg)[:-3]            # without the ".\r\n" end
        return stuffed.replace(CRLF, b"\n")


class FakeSMTP:
    """
    A scriptable SMTP primary in this process (threads), on host:port.

    Records every accepted message byte-exact (dot-unstuffed, CRLF kept) in
    .messages (dicts: sender, mail_args, rcpts, body, tls, cipher, helo,
    conn, time), every RCPT answer in .rcpt_log, and connection counts
    (.nconn, .active, .max_active).  Behaviour can be changed while it runs:
      rcpt:   fn(address) -> None (250) or a full reply line ("450 4.2.0 x")
      delay:  seconds to sleep before answering the end of data
      tls:    (cert, key) to offer STARTTLS; bad_tls: answer 220 to STARTTLS
              and then send garbage instead of a ServerHello
      overload(after, seconds): once `after` messages have been accepted in
              all, every MAIL and every new connection for `seconds` gets
              "421 4.3.2" and the connection is closed
      max_sessions: more sessions than this at once are greeted with
              "421 4.3.2 Too many connections" (counted in .n421)
      rcpt_max: RCPTs of a transaction after the first rcpt_max get
              "552 5.5.3 Too many recipients"
      inject_tls: offer STARTTLS, answer it with 220 and a clear-text line
              in the same segment, then close
      eightbit: advertise 8BITMIME (default True)
      close_after_data: close the connection right after the 250 to the
              end of data (nothing else sent)
      limits: RFC 9422 LIMITS parameters to declare in EHLO ("RCPTMAX=2");
              the most RCPTs seen in one transaction and transactions in one
              session are kept in .max_rcpts_txn and .max_txn_session
      rcpt_max_reply: the reply past rcpt_max (default "552 5.5.3 ...")
      mail_max_421: after this many transactions in a session, the next
              MAIL gets "421 4.7.0 too many messages" and the session ends
    """

    def __init__(self, host="127.0.0.1", port=None, tls=None, bad_tls=False, name="fake.test",
                 rcpt=None, delay=0.0, pipelining=True, dsn=True, size=0, max_sessions=0,
                 rcpt_max=0, inject_tls=False, eightbit=True, close_after_data=False,
                 limits=None, rcpt_max_reply="552 5.5.3 Too many recipients", mail_max_421=0):
        self.host = host
        self.port = port or free_port_on(host)
        self.tls = tls
        self.bad_tls = bad_tls
        self.name = name
        self.rcpt = rcpt
        self.delay = delay
        self.pipelining = pipelining
        self.dsn = dsn
        self.size = size
        self.max_sessions = max_sessions
        self.rcpt_max = rcpt_max
        self.inject_tls = inject_tls
        self.eightbit = eightbit
        self.close_after_data = close_after_data
        self.limits = limits
        self.rcpt_max_reply = rcpt_max_reply
        self.mail_max_421 = mail_max_421
        self.max_rcpts_txn = 0
        self.max_txn_session = 0
        self.max_sessions_seen = 0      # greeted sessions at once, most seen
        self.sessions = 0               # greeted sessions now (max_sessions)
        self.n_inject = 0               # STARTTLS answered with injected text
        self.greeting = None            # None: "220 name ESMTP"
        self.lock = threading.Lock()
        self.messages = []
        self.rcpt_log = []
        self.commands = []
        self.nconn = 0
        self.active = 0
        self.max_active = 0
        self.n421 = 0
        self.t421 = []                  # monotonic times of the 421s sent
        self.active_log = []            # (monotonic time, active) at each change
        self._ended = set()             # sockets counted out before their last reply
        self._over_after = None
        self._over_secs = 0.0
        self._over_until = None
        self._lsock = None
        self._thread = None
        self._socks = set()
        self._stopping = False
        _peers.append(self)

    def overload(self, after, seconds):
        with self.lock:
            self._over_after = after
            self._over_secs = seconds
            self._over_until = None

    def _overloaded(self):
        with self.lock:
            now = time.monotonic()
            if self._over_until is None and self._over_after is not None and \
                    len(self.messages) >= self._over_after:
                self._over_until = now + self._over_secs
            return self._over_until is not None and now < self._over_until

    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(128)
        s.settimeout(0.2)
        self._lsock = s
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def running(self):
        return self._lsock is not None

    def _accept_loop(self):
        lsock = self._lsock
        while not self._stopping:
            try:
                sock, addr = lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self._socks.add(sock)
            threading.Thread(target=self._serve, args=(sock, addr), daemon=True).start()

    def stop(self):
        """Stop listening and drop every connection."""
        self._stopping = True
        if self._lsock:
            try:
                self._lsock.close()
            except OSError:
                pass
            self._lsock = None
        if self._thread:
            self._thread.join(5)
            self._thread = None
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def cleanup(self):
        self.stop()
        if self in _peers:
            _peers.remove(self)

    def _count(self, delta):
        with self.lock:
            if delta > 0:
                self.nconn += 1
            self.active += delta
            self.max_active = max(self.max_active, self.active)
            self.active_log.append((time.monotonic(), self.active))

    def _send421(self, sock):
        # The session is over once this 421 is decided: count it out before
        # the client can read it, or the client's next connection may be
        # accepted before this thread gets to its finally and the two look
        # simultaneous (seen once: "max 5" with max_connections = 4).
        with self.lock:
            self.n421 += 1
            self.t421.append(time.monotonic())
            self._ended.add(sock)
        self._count(-1)
        sock.sendall(b"421 4.3.2 " + self.name.encode() + b" overloaded, closing\r\n")

    def _serve(self, sock, addr):
        self._count(1)
        sock.settimeout(PEER_IO_TIMEOUT)
        try:
            self._session(sock, addr)
        except (OSError, ValueError, ssl.SSLError):
            pass
        finally:
            with self.lock:
                ended = sock in self._ended
                self._ended.discard(sock)
            if not ended:
                self._count(-1)
            with self.lock:
                self._socks.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def _session(self, sock, addr):
        if self.max_sessions:
            with self.lock:
                busy = self.sessions >= self.max_sessions
                if not busy:
                    self.sessions += 1
                    self.max_sessions_seen = max(self.max_sessions_seen, self.sessions)
            if busy:
                with self.lock:
                    self.n421 += 1
                    self.t421.append(time.monotonic())
                sock.sendall(b"421 4.3.2 Too many connections\r\n")
                return
            try:
                return self._session1(sock, addr)
            finally:
                with self.lock:
                    self.sessions -= 1
        return self._session1(sock, addr)

    def _session1(self, sock, addr):
        conn = addr
        if self._overloaded():
            self._send421(sock)
            return
        greeting = self.greeting or ("220 %s ESMTP fake" % self.name)
        sock.sendall(greeting.encode() + CRLF)
        if not greeting.startswith("220"):
            return
        f = sock.makefile("rb")
        tls = False
        cipher = None
        helo = None
        sender = None
        mail_args = None
        rcpts = []
        rcpt_args = []
        ntxn = 0                        # RCPTs in this transaction (rcpt_max)
        nmail = 0                       # transactions in this session

        def send(line):
            sock.sendall(line.encode() + CRLF)

        while True:
            ln = f.readline(65536)
            if not ln:
                return
            ln = ln.rstrip(b"\r\n")
            with self.lock:
                self.commands.append(ln)
            word = ln.split(b" ", 1)[0].upper()
            if word == b"EHLO":
                helo = ln[5:].decode("latin-1")
                caps = ["8BITMIME"] if self.eightbit else []
                caps += ["ENHANCEDSTATUSCODES", "SIZE %d" % self.size if self.size else "SIZE"]
                if self.pipelining:
                    caps.append("PIPELINING")
                if self.dsn:
                    caps.append("DSN")
                if self.limits:
                    caps.append("LIMITS " + self.limits)
                if (self.tls or self.bad_tls or self.inject_tls) and not tls:
                    caps.append("STARTTLS")
                out = ["250-" + self.name] + ["250-" + c for c in caps[:-1]] + ["250 " + caps[-1]]
                sock.sendall(("\r\n".join(out) + "\r\n").encode())
            elif word == b"HELO":
                helo = ln[5:].decode("latin-1")
                send("250 " + self.name)
            elif word == b"STARTTLS" and self.inject_tls and not tls:
                with self.lock:
                    self.n_inject += 1
                sock.sendall(b"220 Ready to start TLS\r\n250 injected in clear\r\n")
                return
            elif word == b"STARTTLS" and (self.tls or self.bad_tls) and not tls:
                send("220 2.0.0 Ready to start TLS")
                if self.bad_tls:
                    time.sleep(0.2)
                    sock.sendall(b"this is not a TLS ServerHello\r\n" * 8)
                    return
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(*self.tls)
                sock = ctx.wrap_socket(sock, server_side=True)
                f = sock.makefile("rb")
                tls = True
                cipher = sock.cipher()
                helo = sender = None
                rcpts = []
            elif word == b"MAIL":
                if self._overloaded():
                    self._send421(sock)
                    return
                if self.mail_max_421 and nmail >= self.mail_max_421:
                    with self.lock:
                        self.n421 += 1
                        self.t421.append(time.monotonic())
                    send("421 4.7.0 too many messages in this session")
                    return
                nmail += 1
                with self.lock:
                    self.max_txn_session = max(self.max_txn_session, nmail)
                sender = ln[10:].decode("latin-1")
                mail_args = sender
                m = re.match(r"\s*<([^>]*)>", sender)
                sender = m.group(1) if m else sender
                rcpts = []
                rcpt_args = []
                ntxn = 0
                send("250 2.1.0 Ok")
            elif word == b"RCPT":
                arg = ln[8:].decode("latin-1")
                m = re.match(r"\s*<([^>]*)>", arg)
                addr_ = m.group(1) if m else arg
                if sender is None:
                    send("503 5.5.1 need MAIL")
                    continue
                fn = self.rcpt
                reply = fn(addr_) if fn else None
                ntxn += 1
                with self.lock:
                    self.max_rcpts_txn = max(self.max_rcpts_txn, ntxn)
                if self.rcpt_max and ntxn > self.rcpt_max:
                    reply = self.rcpt_max_reply
                with self.lock:
                    self.rcpt_log.append((addr_, int(reply[:3]) if reply else 250))
                if reply:
                    send(reply)
                else:
                    rcpts.append(addr_)
                    rcpt_args.append(arg)
                    send("250 2.1.5 Ok")
            elif word == b"DATA":
                if not rcpts:
                    send("554 5.5.1 no valid recipients")
                    continue
                send("354 End data with <CR><LF>.<CR><LF>")
                body = bytearray()
                while True:
                    dl = f.readline(1 << 20)
                    if not dl:
                        return
                    if dl == b".\r\n":
                        break
                    if dl.startswith(b"."):
                        dl = dl[1:]
                    body += dl
                if self.delay:
                    time.sleep(self.delay)
                with self.lock:
                    self.messages.append({"sender": sender, "mail_args": mail_args,
                                          "rcpts": list(rcpts), "rcpt_args": list(rcpt_args),
                                          "body": bytes(body), "tls": tls, "cipher": cipher,
                                          "helo": helo, "conn": id(sock), "peer": conn,
                                          "time": time.monotonic()})
                    n = len(self.messages)
                send("250 2.0.0 Ok: queued as FAKE%06d" % n)
                if self.close_after_data:
                    return
                sender = None
                rcpts = []
            elif word == b"RSET":
                sender = None
                rcpts = []
                send("250 2.0.0 Ok")
            elif word == b"NOOP":
                send("250 2.0.0 Ok")
            elif word == b"QUIT":
                send("221 2.0.0 Bye")
                return
            else:
                send("502 5.5.2 Error: command not recognized")

    # -- views --
    def bodies(self):
        with self.lock:
            return [m["body"] for m in self.messages]

    def count(self):
        with self.lock:
            return len(self.messages)

    def message_ids(self):
        return [message_id(b) for b in self.bodies()]


class Dnsmasq(_Peer):
    """dnsmasq answering MX and A records on 127.0.0.1:port and nothing
    else: no upstream, no /etc/hosts, no system config.  Names under
    `local` domains that it does not know get NXDOMAIN."""

    def __init__(self, mx=(), hosts=(), local=("test",), port=None, extra=(), txt=()):
        super().__init__("dnsmasq")
        # (name, text): one TXT record each (SPF policies, DKIM keys); text
        # longer than a character-string (255) is split into several.
        self.txt = list(txt)
        self.port = port or free_port_on("127.0.0.1")
        self.mx = list(mx)          # (domain, host, preference)
        self.hosts = list(hosts)    # (name, ip)
        self.local = list(local)
        self.extra = list(extra)

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        cmd = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--port=%d" % self.port,
               "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
               "--no-negcache", "--log-facility=-", "--log-queries",
               "--pid-file=" + os.path.join(self.dir, "pid")]
        cmd += ["--local=/%s/" % d for d in self.local]
        cmd += ["--mx-host=%s,%s,%d" % m for m in self.mx]
        cmd += ["--host-record=%s,%s" % h for h in self.hosts]
        for name, text in self.txt:
            parts = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
            # argv, no shell: dnsmasq takes the text as given (no quotes),
            # a comma separating character-strings
            cmd.append("--txt-record=%s,%s" % (name, ",".join(parts)))
        cmd += self.extra
        self._popen(cmd, "dnsmasq.log")
        probe = self.hosts[0][0] if self.hosts else "probe.test"
        if not wait_for(lambda: dns_query(self.port, probe, 1) is not None, PEER_START_TIMEOUT, 0.1):
            raise RuntimeError("dnsmasq did not answer on port %d: %s" %
                               (self.port, self.plog("dnsmasq.log")))
        return self

    def log(self):
        return self.plog("dnsmasq.log")


def dns_query(port, name, qtype, timeout=1.0):
    """A bare DNS query to 127.0.0.1:port; returns (rcode, ancount) or None
    when nothing answered.  qtype: 1 A, 15 MX, 28 AAAA."""
    import random
    import struct
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(q, ("127.0.0.1", port))
            data, _ = s.recvfrom(4096)
        except OSError:
            return None
    if len(data) < 12:
        return None
    rid, flags, _, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    if rid != qid:
        return None
    return flags & 0xF, an


class Postfix(_Peer):
    """A private Postfix instance (own config, queue and data dirs, as in
    bench/postfix-backup-mx.sh) whose smtpd listens on 127.0.0.1:port and
    accepts mail for `domains` from strangers.  Nothing leaves it:
    defer_transports holds every message in its deferred queue, where
    count() and message_ids() find it.  Needs root (master does)."""

    QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

    def __init__(self, port=None, domains=("example.org",), recipients=None, log_rcpts=False,
                 main_extra=""):
        """recipients: the addresses it knows ("user@domain" or "@domain"
        for any); default every address of its domains.  Unknown ones get
        550 5.1.1.  log_rcpts: log every RCPT (a WARN access action) so a
        test can count the RCPTs it was asked (rcpt_count()).  main_extra:
        lines appended to main.cf."""
        super().__init__("postfix")
        self.port = port or free_port_on("127.0.0.1")
        self.domains = list(domains)
        self.recipients = list(recipients) if recipients is not None else \
            ["@%s" % d for d in self.domains]
        self.log_rcpts = log_rcpts
        self.main_extra = main_extra
        self.etc = os.path.join(self.dir, "etc")
        self.queue_dir = os.path.join(self.dir, "queue")
        self.started = False

    def start(self):
        if not IS_ROOT:
            raise RuntimeError("a private Postfix instance needs root")
        data = os.path.join(self.dir, "data")
        for d in (self.etc, self.queue_dir, data):
            os.makedirs(d, exist_ok=True)
        for d in (self.dir, self.etc, self.queue_dir):
            os.chmod(d, 0o755)
        shutil.chown(data, "postfix")
        maillog = os.path.join(self.dir, "maillog")
        open(maillog, "a").close()
        shutil.chown(maillog, "postfix")
        doms = " ".join(self.domains)
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write("""# written by t/lib/mxtest.py: a primary that keeps what it gets
compatibility_level = 3.6
config_directory = {etc}
queue_directory = {queue}
data_directory = {data}
myhostname = primary.example.org
mydomain = example.org
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 192.0.2.0/24
relay_domains = {doms}
relay_recipient_maps = inline:{{ {maps} }}
transport_maps = inline:{{ {tmaps} }}
defer_transports = smtp
smtp_dns_support_level = disabled
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = {rrestr}
smtpd_banner = $myhostname ESMTP
biff = no
syslog_name = postfix-mxtest
maillog_file = {maillog}
maillog_file_prefixes = {dir}
{extra}
""".format(dir=self.dir, etc=self.etc, queue=self.queue_dir, data=data, doms=doms, maillog=maillog,
                maps=", ".join("%s=ok" % r for r in self.recipients),
                rrestr="check_recipient_access static:WARN" if self.log_rcpts else "",
                extra=self.main_extra,
                tmaps=", ".join("%s=smtp:[127.0.0.1]:9" % d for d in self.domains)))
        # One master.cf for the bench and test instances.
        with open(os.path.join(ROOT, "bench", "postfix-master.cf")) as f:
            master = f.read().replace("@PORT@", str(self.port))
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(master)
        run([POSTFIX, "-c", self.etc, "check"], timeout=60)
        r = run([POSTFIX, "-c", self.etc, "start"], timeout=60)
        if r.returncode != 0:
            raise RuntimeError("postfix start: %s%s" % (r.stdout.decode("latin-1"),
                                                         r.stderr.decode("latin-1")))
        self.started = True
        if not wait_for(lambda: port_open("127.0.0.1", self.port), PEER_START_TIMEOUT, 0.1):
            raise RuntimeError("postfix smtpd did not listen on %d: %s" %
                               (self.port, self.plog("maillog")))
        return self

    def stop(self):
        if self.started:
            run([POSTFIX, "-c", self.etc, "stop"], timeout=60)
            # master waits for its children; give it a moment to let go of the port
            wait_for(lambda: not port_open("127.0.0.1", self.port), 10, 0.1)
            self.started = False

    def queue_ids(self):
        ids = []
        for q in self.QUEUES:
            d = os.path.join(self.queue_dir, q)
            for root, _, files in os.walk(d):
                for fn in files:
                    ids.append((q, fn))
        return ids

    def count(self):
        return len(self.queue_ids())

    def message_ids(self):
        """Message-IDs of every message in the instance's queue."""
        out = []
        for _, qid in self.queue_ids():
            r = run([POSTCAT, "-c", self.etc, "-h", "-q", qid], timeout=30)
            out.append(message_id(r.stdout))
        return out

    def log(self):
        return self.plog("maillog")

    def rcpt_count(self):
        """RCPTs it was asked (log_rcpts=True)."""
        return len(re.findall(r"warn: RCPT from ", self.log()))


# --- PostgreSQL --------------------------------------------------------

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
PSQL = shutil.which("psql") or "/usr/bin/psql"
PG_START_TIMEOUT = 60       # seconds for initdb, and for pg_ctl -w start/stop


def have_postgres():
    """True when the server binaries and psql are installed."""
    return all(os.access(p, os.X_OK) for p in
               (os.path.join(PG_BIN, "initdb"), os.path.join(PG_BIN, "pg_ctl"), PSQL))


class Postgres(_Peer):
    """
    A private PostgreSQL 15 cluster in a temp dir, listening on 127.0.0.1
    on an ephemeral port (and a Unix socket in the temp dir), trust
    authentication, superuser "postgres", database "postgres".

    PostgreSQL refuses to run as root: when the tests run as root the
    cluster belongs to `nobody` (initdb and pg_ctl through setpriv).
    stop() and start() again keep the data: outage tests stop the server
    mid-run and bring it back on the same port.
        pg = Postgres().start(); pg.load(".../doc/schema.sql")
        pg.psql("INSERT INTO domains (name) VALUES ('example.org')")
        conf: pgsql = ( { name = "main"; conninfo = pg.conninfo(); } )
    """

    USER = "nobody"

    def __init__(self, port=None, settings=None):
        """settings: extra server settings, e.g. {"log_statement": "all"}."""
        super().__init__("postgres")
        self.settings = dict(settings or {})
        self.port = port or free_port_on("127.0.0.1")
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "sock")
        self.logfile = os.path.join(self.dir, "postgres.log")
        self.running = False
        self.initialised = False

    def _as_owner(self, cmd):
        if not IS_ROOT:
            return cmd
        pw = pwd.getpwnam(self.USER)
        return ["setpriv", "--reuid=%d" % pw.pw_uid, "--regid=%d" % pw.pw_gid,
                "--clear-groups", "--"] + cmd

    def _run(self, cmd, what):
        r = run(self._as_owner(cmd), timeout=PG_START_TIMEOUT)
        if r.returncode != 0:
            raise RuntimeError("%s: rc %d: %s%s\n%s" % (
                what, r.returncode, r.stdout.decode("latin-1"), r.stderr.decode("latin-1"),
                self.log()[-2000:]))
        return r

    def _init(self):
        os.makedirs(self.data)
        os.makedirs(self.sock)
        open(self.logfile, "a").close()
        if IS_ROOT:
            for p in (self.data, self.sock, self.logfile):
                shutil.chown(p, self.USER)
        os.chmod(self.data, 0o700)
        self._run([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-A", "trust",
                   "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"], "initdb")
        self.initialised = True

    def start(self):
        if not self.initialised:
            self._init()
        opts = ("-k %s -p %d -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c max_connections=50 -c shared_buffers=16MB" % (self.sock, self.port))
        for k, v in self.settings.items():
            opts += " -c %s=%s" % (k, v)
        self._run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-l", self.logfile,
                   "-o", opts, "-w", "-t", str(PG_START_TIMEOUT), "start"], "pg_ctl start")
        self.running = True
        if not wait_for(lambda: port_open("127.0.0.1", self.port), PEER_START_TIMEOUT, 0.05):
            raise RuntimeError("postgres did not listen on %d: %s" % (self.port, self.log()[-2000:]))
        return self

    def stop(self, mode="fast"):
        """Stop the server (data kept).  mode: smart, fast or immediate."""
        if self.running:
            r = run(self._as_owner([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", mode,
                                    "-w", "-t", str(PG_START_TIMEOUT), "stop"]),
                    timeout=PG_START_TIMEOUT + 10)
            if r.returncode != 0:
                diag("pg_ctl stop: %s" % r.stderr.decode("latin-1"))
            self.running = False

    def cleanup(self):
        try:
            self.stop("immediate")
        finally:
            super().cleanup()

    def conninfo(self, dbname="postgres", **extra):
        """A libpq conninfo string for the TCP listener."""
        parts = ["host=127.0.0.1", "port=%d" % self.port, "user=postgres", "dbname=%s" % dbname]
        parts += ["%s=%s" % kv for kv in extra.items()]
        return " ".join(parts)

    def psql(self, sql, check=True, timeout=60):
        """Run sql (one or more statements) through psql; returns the
        rows as a list of tuples of strings (unaligned, tab-separated).
        check: raise on an SQL error."""
        r = run([PSQL, "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                 "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                 "-f", "-"], input=sql.encode("utf-8"), timeout=timeout)
        if r.returncode != 0 and check:
            raise RuntimeError("psql: %s" % r.stderr.decode("utf-8", "replace"))
        out = r.stdout.decode("utf-8", "replace")
        return [tuple(line.split("\t")) for line in out.splitlines() if line != ""]

    def scalar(self, sql):
        """The first column of the first row, or None."""
        rows = self.psql(sql)
        return rows[0][0] if rows else None

    def load(self, path):
        """Run an SQL file (e.g. doc/schema.sql)."""
        with open(path, encoding="utf-8") as f:
            return self.psql(f.read())

    def log(self):
        return self.plog("postgres.log")
