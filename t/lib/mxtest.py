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


def _cleanup_all():
    for s in list(_servers):
        try:
            s.cleanup()
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
    def start(self, port=None, expect_fail=False):
        if self.proc and self.proc.poll() is None:
            raise RuntimeError("server already running")
        if self.port is None or port is not None:
            self.write_config(port)
        self._starts += 1
        log = open(self.logfile, "ab")
        log.write(("=== start %d ===\n" % self._starts).encode())
        log.flush()
        self.proc = subprocess.Popen([MXKEEPD, "-f", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, cwd=self.dir)
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

    def raw(self, timeout=REPLY_TIMEOUT, greet=True, source=None):
        c = Raw(self.port, timeout=timeout, source=source)
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


def split_received(body):
    """Split a stored body into (our Received header, the rest)."""
    if body is None:
        return None, None
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

    def __init__(self, port, host="127.0.0.1", timeout=REPLY_TIMEOUT, source=None):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
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
