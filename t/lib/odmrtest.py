"""
odmrtest.py - helpers shared by the ODMR tests (t/integration/220-229):
an independent computation of the stored secret (pure-Python MD5 chaining
state, so the test does not trust the code it checks), CRAM-MD5 the way a
client computes it (Python's hmac), fetchmail in ODMR mode as the real
client, and the config of a server with ODMR listeners.
"""
import base64
import hmac
import os
import pwd
import shutil
import struct
import subprocess
import tempfile

from mxtest import (MXKEEPCTL as CTL, IS_ROOT, Server, diag, free_port, mxkeep_user)

# MD5 (RFC 1321) block function, to get the chaining state HMAC's
# precomputed contexts are made of (hashlib does not expose it).
_S = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_K = [int(abs(__import__("math").sin(i + 1)) * 2**32) & 0xffffffff for i in range(64)]


def _rotl(x, c):
    return ((x << c) | (x >> (32 - c))) & 0xffffffff


def md5_state_after_block(block):
    assert len(block) == 64
    a0, b0, c0, d0 = 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476
    m = struct.unpack("<16I", block)
    a, b, c, d = a0, b0, c0, d0
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | (~d & 0xffffffff)), (7 * i) % 16
        f = (f + a + _K[i] + m[g]) & 0xffffffff
        a, d, c = d, c, b
        b = (b + _rotl(f, _S[i])) & 0xffffffff
    return [(a0 + a) & 0xffffffff, (b0 + b) & 0xffffffff, (c0 + c) & 0xffffffff,
            (d0 + d) & 0xffffffff]


def cram_secret(password):
    """Dovecot's CRAM-MD5 scheme: MD5 state after key^ipad, then key^opad,
    each word little-endian, in hex."""
    key = password.encode()
    if len(key) > 64:
        key = __import__("hashlib").md5(key).digest()
    key = key.ljust(64, b"\0")
    out = b""
    for pad in (0x36, 0x5c):
        st = md5_state_after_block(bytes(k ^ pad for k in key))
        out += struct.pack("<4I", *st)
    return "{CRAM-MD5}" + out.hex()


def make_secret(password):
    r = subprocess.run([CTL, "odmr-secret"], input=(password + "\n").encode(),
                       capture_output=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("mxkeepctl odmr-secret: %r" % r.stderr)
    return r.stdout.decode().strip()


def cram_response(user, password, challenge_b64):
    ch = base64.b64decode(challenge_b64)
    dig = hmac.new(password.encode(), ch, "md5").hexdigest()
    return base64.b64encode(("%s %s" % (user, dig)).encode()).decode()


def odmr_server(domains, implicit_port=None, starttls_port=None, settings=None, **kw):
    """A Server with a certificate and ODMR listeners on free ports."""
    listen = []
    ports = {}
    if implicit_port is not False:
        ports["implicit"] = implicit_port or free_port()
        listen.append({"address": "127.0.0.1", "port": ports["implicit"], "tls": "implicit"})
    if starttls_port is not False:
        ports["starttls"] = starttls_port or free_port()
        listen.append({"address": "127.0.0.1", "port": ports["starttls"], "tls": "starttls"})
    st = dict(settings or {})
    odmr = {"listen": listen, "auth_delay": "1s", "auth_delay_max": "4s"}
    odmr.update(st.pop("odmr", {}))
    st["odmr"] = odmr
    srv = Server(domains=domains, settings=st, tls=True, **kw)
    srv.odmr_ports = ports
    return srv


def cert_md5(cert):
    r = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-md5", "-in", cert],
                       capture_output=True, timeout=30, check=True)
    return r.stdout.decode().strip().split("=", 1)[1]


class Fetchmail:
    """fetchmail in ODMR mode, from an rc file of its own (0600; as an
    unprivileged user when the test runs as root: fetchmail discourages
    root)."""

    def __init__(self):
        self.bin = shutil.which("fetchmail")
        self.home = tempfile.mkdtemp(prefix="fetchmail.")
        self.user = None
        if IS_ROOT:
            self.user = mxkeep_user() or "nobody"
            pw = pwd.getpwnam(self.user)
            os.chown(self.home, pw.pw_uid, pw.pw_gid)
        self.rc = os.path.join(self.home, "fetchmailrc")

    def run(self, rc_text, timeout=90):
        with open(self.rc, "w") as f:
            f.write(rc_text)
        os.chmod(self.rc, 0o600)
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.rc, pw.pw_uid, pw.pw_gid)
        cmd = [self.bin, "--nosyslog", "-v", "-f", self.rc]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", "env", "HOME=" + self.home,
                   "FETCHMAILHOME=" + self.home] + cmd
        env = dict(os.environ)
        env.update({"HOME": self.home, "FETCHMAILHOME": self.home, "LC_ALL": "C"})
        r = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        out = (r.stdout + r.stderr).decode("utf-8", "replace")
        diag("fetchmail exit %d: %s" % (r.returncode, out.strip().replace("\n", " | ")[-600:]))
        return r.returncode, out

    def cleanup(self):
        shutil.rmtree(self.home, ignore_errors=True)


def odmr_login(port, user, password, implicit=True):
    """A Raw client on an ODMR listener, greeted, EHLO'd and authenticated
    with CRAM-MD5 (Python's hmac: the client's view of RFC 2195)."""
    from mxtest import Raw
    c = Raw(port)
    if implicit:
        c.starttls()
    c.greeting = c.reply()
    c.ehlo_reply = c.ehlo("primary.example.org")
    r = c.cmd("AUTH CRAM-MD5")
    if r.code != 334:
        raise RuntimeError("AUTH CRAM-MD5: %s" % r)
    c.auth_reply = c.cmd(cram_response(user, password, r.lines[0]))
    return c


def serve_reversed(c, accept, drop_in_data=False, pipelining=False):
    """After ATRN's 250: be the SMTP server on c (RFC 2645's role reversal).
    Accept `accept` messages (250 after each end of data); then, with
    drop_in_data, read the next message's whole body and close without
    answering it (the link dropped mid-flight); else answer QUIT.  Returns
    (bodies accepted, body of the dropped one or None)."""
    got = []
    c.send("220 primary.example.org ESMTP\r\n")
    line = c.readline()
    if line is None or not line.upper().startswith(b"EHLO"):
        raise RuntimeError("no EHLO after the reversal: %r" % line)
    c.send("250-primary.example.org\r\n%s250 8BITMIME\r\n" %
           ("250-PIPELINING\r\n" if pipelining else ""))
    while True:
        line = c.readline()
        if line is None:
            return got, None
        cmd = line.strip().upper()
        if cmd.startswith(b"MAIL") or cmd.startswith(b"RCPT") or cmd.startswith(b"RSET"):
            c.send("250 2.0.0 OK\r\n")
        elif cmd == b"DATA":
            c.send("354 go ahead\r\n")
            body = b""
            while True:
                l = c.readline()
                if l is None:
                    return got, None
                if l == b".\r\n":
                    break
                body += l[1:] if l.startswith(b"..") else l
            if len(got) >= accept and drop_in_data:
                c.close()
                return got, body
            got.append(body)
            c.send("250 2.0.0 Ok: queued\r\n")
        elif cmd == b"QUIT":
            c.send("221 2.0.0 bye\r\n")
            c.close()
            return got, None
        else:
            c.send("502 5.5.1 what\r\n")
