#!/usr/bin/env python3
# 60-reload-tls: reloads replace what live connections still use.  Outbound
# TLS sessions to a slow primary (greeting and EHLO reply each held back)
# sit before STARTTLS while the config is reloaded in a loop, alternating
# the domain's tls_ca so every reload builds a new client SSL_CTX and drops
# the old one.  Every message must still arrive over TLS and the daemon must
# survive: on 0.1.0 the reload freed the context the waiting sessions had
# borrowed and their SSL_new used freed memory (ASan: heap-use-after-free).
import os
import sys
import tempfile
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

GREETING_DELAY = 0.8        # seconds the primary waits before its 220
EHLO_DELAY = 0.8            # and before answering each EHLO
MESSAGES = 8
RELOAD_EVERY = 0.1
RELOAD_FOR = 12.0           # bounded: the reload loop stops after this


class SlowTLSPrimary:
    """A primary that is slow to greet and to answer EHLO, offers STARTTLS
    and records each message with whether it came over TLS."""

    def __init__(self, host, cert):
        self.host = host
        self.port = free_port_on(host)
        self.cert = cert
        self.lock = threading.Lock()
        self.messages = []
        self.nconn = 0
        self.sock = None
        self.stopping = False

    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(64)
        s.settimeout(0.2)
        self.sock = s
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self):
        self.stopping = True
        if self.sock:
            self.sock.close()
            self.sock = None

    def count(self):
        with self.lock:
            return len(self.messages)

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except (OSError, AttributeError):
                return
            with self.lock:
                self.nconn += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, sock):
        sock.settimeout(30)
        try:
            self._session(sock)
        except (OSError, ValueError, ssl.SSLError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _session(self, sock):
        time.sleep(GREETING_DELAY)
        sock.sendall(b"220 slow.test ESMTP\r\n")
        f = sock.makefile("rb")
        tls = False
        rcpts = []
        while True:
            ln = f.readline(4096)
            if not ln:
                return
            word = ln.split(b" ", 1)[0].strip().upper()
            if word == b"EHLO":
                time.sleep(EHLO_DELAY)
                caps = [b"250-slow.test", b"250-PIPELINING", b"250-8BITMIME"]
                if not tls:
                    caps.append(b"250-STARTTLS")
                caps.append(b"250 ENHANCEDSTATUSCODES")
                sock.sendall(b"\r\n".join(caps) + b"\r\n")
            elif word == b"STARTTLS" and not tls:
                sock.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(*self.cert)
                sock = ctx.wrap_socket(sock, server_side=True)
                f = sock.makefile("rb")
                tls = True
            elif word == b"MAIL":
                rcpts = []
                sock.sendall(b"250 2.1.0 Ok\r\n")
            elif word == b"RCPT":
                rcpts.append(ln)
                sock.sendall(b"250 2.1.5 Ok\r\n")
            elif word == b"DATA":
                sock.sendall(b"354 go ahead\r\n")
                body = b""
                while True:
                    dl = f.readline(1 << 20)
                    if not dl:
                        return
                    if dl == b".\r\n":
                        break
                    body += dl
                with self.lock:
                    self.messages.append({"tls": tls, "body": body})
                sock.sendall(b"250 2.0.0 Ok: queued\r\n")
            elif word == b"RSET" or word == b"NOOP":
                sock.sendall(b"250 2.0.0 Ok\r\n")
            elif word == b"QUIT":
                sock.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                sock.sendall(b"502 5.5.2 unknown\r\n")


def main():
    require_binaries()
    cdir = tempfile.mkdtemp(prefix="reloadtls.")
    atexit.register(shutil.rmtree, cdir, True)
    os.chmod(cdir, 0o755)           # the daemon reads the CA files as its own user
    os.makedirs(os.path.join(cdir, "a"), 0o755)
    os.makedirs(os.path.join(cdir, "b"), 0o755)
    cert = make_cert(os.path.join(cdir, "a"), cn="slow.test")
    other = make_cert(os.path.join(cdir, "b"), cn="other-ca.test")
    cas = [cert[0], other[0]]

    prim = SlowTLSPrimary("127.0.0.2", cert).start()
    atexit.register(prim.stop)
    dom = {"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port, "tls": "may",
           "tls_ca": cas[0]}
    srv = Server(domains=[dom], settings={"delivery": fast_delivery(
        max_connections=4, messages_per_connection=1, probe_min="1s", probe_max="2s")})
    srv.start()

    send_batch(srv, MESSAGES, tag="reload")
    ok(wait_for(lambda: prim.nconn >= 1, 10), "a connection to the slow primary is open")

    # Reload in a loop, SIGHUP and mxkeepctl reload in turn, each time with
    # the other CA file: a new client context every time.
    n = 0
    nctl = 0
    deadline = time.monotonic() + RELOAD_FOR
    while time.monotonic() < deadline and srv.running() and prim.count() < MESSAGES:
        srv.domains[0]["tls_ca"] = cas[n % 2]
        srv.write_config(srv.port)
        if n % 4 == 3:
            r = srv.ctl("reload")
            nctl += r.returncode == 0
        else:
            srv.hup()
        n += 1
        time.sleep(RELOAD_EVERY)
    diag("%d reloads (%d by mxkeepctl), %d connections, %d delivered" %
         (n, nctl, prim.nconn, prim.count()))
    ok(n >= 20, "reloaded %d times while sessions waited for the greeting and EHLO" % n)
    ok(nctl >= 1, "mxkeepctl reload answered too")
    ok(srv.running(), "mxkeepd survived the reloads")
    ok(wait_for(lambda: prim.count() >= MESSAGES, 30), "all %d messages delivered" % MESSAGES)
    with prim.lock:
        tls = [m["tls"] for m in prim.messages]
    is_(tls, [True] * len(tls), "every message went over TLS (STARTTLS after the reloads)")
    ok(wait_empty(srv, 10), "queue empty")
    log = srv.log()
    like(log, r"reloaded .*: 1 domains", "log: reloads took effect")
    unlike(log, r"AddressSanitizer|runtime error|heap-use-after-free", "no sanitizer report")
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
