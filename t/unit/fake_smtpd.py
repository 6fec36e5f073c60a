#!/usr/bin/env python3
"""fake_smtpd.py - a small scriptable SMTP server for t_smtpc.

Listens on 127.0.0.1 (port 0), prints the port on stdout, then serves
connections until killed.  Each message is written byte-exact (dot-unstuffed,
CRLF kept) to OUTDIR/msgN; every command line received goes to OUTDIR/log.

Options:
  --out DIR            where messages and the command log go (required)
  --tls CERT KEY       offer STARTTLS with this certificate
  --bad-tls            offer STARTTLS, answer 220, then send garbage
  --chunking           offer CHUNKING (BDAT)
  --smtputf8           offer SMTPUTF8
  --size N             offer SIZE N (default 0: SIZE without a limit)
  --greeting TEXT      greeting line (e.g. "421 4.3.2 busy": sent, then close)
  --silent             accept and never say anything
  --drop-after-body    close without replying once the body has arrived
  --long-ehlo          EHLO reply with a 5000-octet line
  --inject-tls         offer STARTTLS, answer 220 and a plaintext line in the
                       same segment, then close
  --rcpt-max N         552 5.5.3 to every RCPT of a transaction after the Nth
Recipients whose local part starts with "reject" get 550, "defer" 451,
"multi" a two-line 550-5.2.1 / 550 5.2.1, "mdefer" a two-line 450-4.2.1.
"""
import os
import socket
import ssl
import sys
import threading
import time


def parse_args(argv):
    o = {"out": None, "tls": None, "bad_tls": False, "chunking": False,
         "smtputf8": False, "size": 0, "greeting": "220 fake.test ESMTP",
         "silent": False, "drop": False, "long_ehlo": False, "inject_tls": False,
         "rcpt_max": 0}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--out":
            o["out"] = argv[i + 1]; i += 1
        elif a == "--tls":
            o["tls"] = (argv[i + 1], argv[i + 2]); i += 2
        elif a == "--bad-tls":
            o["bad_tls"] = True
        elif a == "--chunking":
            o["chunking"] = True
        elif a == "--smtputf8":
            o["smtputf8"] = True
        elif a == "--size":
            o["size"] = int(argv[i + 1]); i += 1
        elif a == "--greeting":
            o["greeting"] = argv[i + 1]; i += 1
        elif a == "--silent":
            o["silent"] = True
        elif a == "--drop-after-body":
            o["drop"] = True
        elif a == "--long-ehlo":
            o["long_ehlo"] = True
        elif a == "--inject-tls":
            o["inject_tls"] = True
        elif a == "--rcpt-max":
            o["rcpt_max"] = int(argv[i + 1]); i += 1
        else:
            raise SystemExit("unknown option " + a)
        i += 1
    return o


OPT = {}
LOCK = threading.Lock()
COUNTER = [0]


def log(line):
    with LOCK:
        with open(os.path.join(OPT["out"], "log"), "ab") as f:
            f.write(line + b"\n")


def store(body):
    with LOCK:
        COUNTER[0] += 1
        path = os.path.join(OPT["out"], "msg%d" % COUNTER[0])
        with open(path + ".tmp", "wb") as f:
            f.write(body)
        os.rename(path + ".tmp", path)


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.f = sock.makefile("rb")
        self.tls = False

    def send(self, s):
        self.sock.sendall(s.encode() + b"\r\n")

    def line(self):
        ln = self.f.readline()
        if not ln:
            return None
        return ln.rstrip(b"\r\n")

    def ehlo(self):
        caps = ["PIPELINING", "8BITMIME", "DSN", "ENHANCEDSTATUSCODES",
                "SIZE %d" % OPT["size"] if OPT["size"] else "SIZE"]
        if OPT["chunking"]:
            caps.append("CHUNKING")
        if OPT["smtputf8"]:
            caps.append("SMTPUTF8")
        if (OPT["tls"] or OPT["bad_tls"] or OPT["inject_tls"]) and not self.tls:
            caps.append("STARTTLS")
        if OPT["long_ehlo"]:
            caps.append("X" * 5000)
        out = ["250-fake.test"] + ["250-" + c for c in caps[:-1]] + ["250 " + caps[-1]]
        self.sock.sendall(("\r\n".join(out) + "\r\n").encode())

    def data(self):
        body = bytearray()
        while True:
            ln = self.f.readline()
            if not ln:
                return None
            if ln == b".\r\n":
                return bytes(body)
            if ln.startswith(b"."):
                ln = ln[1:]
            body += ln

    def run(self):
        if OPT["silent"]:
            self.f.read()
            return
        self.send(OPT["greeting"])
        if not OPT["greeting"].startswith("220"):
            return
        rcpts = 0
        chunks = bytearray()
        while True:
            ln = self.line()
            if ln is None:
                return
            log(ln)
            verb = ln.split(b" ")[0].upper()
            if verb in (b"EHLO", b"HELO"):
                self.ehlo() if verb == b"EHLO" else self.send("250 fake.test")
            elif verb == b"STARTTLS":
                if OPT["inject_tls"]:
                    # 220 and a clear-text line in one segment, then close.
                    self.sock.sendall(b"220 2.0.0 Ready to start TLS\r\n"
                                      b"250 injected in clear\r\n")
                    self.sock.close()
                    return
                self.send("220 2.0.0 go ahead")
                if OPT["bad_tls"]:
                    # Late enough to arrive as the "ServerHello", not
                    # together with the 220 (that would be an injection).
                    time.sleep(0.2)
                    self.sock.sendall(b"this is not TLS\r\n" * 4)
                    self.sock.close()
                    return
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(*OPT["tls"])
                try:
                    self.sock = ctx.wrap_socket(self.sock, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                self.f = self.sock.makefile("rb")
                self.tls = True
                log(b"TLS-ON")
            elif verb == b"MAIL":
                rcpts = 0
                nrcpt = 0
                chunks = bytearray()
                self.send("250 2.1.0 Ok")
            elif verb == b"RCPT":
                addr = ln.split(b"<", 1)[1]
                nrcpt += 1
                if OPT["rcpt_max"] and nrcpt > OPT["rcpt_max"]:
                    self.send("552 5.5.3 Too many recipients")
                elif addr.startswith(b"multi"):
                    self.send("550-5.2.1 The account is disabled\r\n550 5.2.1 more text")
                elif addr.startswith(b"mdefer"):
                    self.send("450-4.2.1 The mailbox is busy\r\n450 4.2.1 try again")
                elif addr.startswith(b"reject"):
                    self.send("550 5.1.1 no such user")
                elif addr.startswith(b"defer"):
                    self.send("451 4.2.0 try later")
                else:
                    rcpts += 1
                    self.send("250 2.1.5 Ok")
            elif verb == b"DATA":
                if rcpts == 0:
                    self.send("554 5.5.1 no valid recipients")
                    continue
                self.send("354 End data with <CR><LF>.<CR><LF>")
                body = self.data()
                if body is None:
                    return
                if OPT["drop"]:
                    self.sock.close()
                    return
                store(body)
                self.send("250 2.0.0 Ok: queued")
            elif verb == b"BDAT":
                parts = ln.split(b" ")
                n = int(parts[1])
                buf = self.f.read(n)
                if len(buf) != n:
                    return
                chunks += buf
                if len(parts) > 2 and parts[2].upper() == b"LAST":
                    if OPT["drop"]:
                        self.sock.close()
                        return
                    store(bytes(chunks))
                    self.send("250 2.0.0 Ok: chunked")
                else:
                    self.send("250 2.0.0 chunk ok")
            elif verb == b"RSET" or verb == b"NOOP":
                self.send("250 2.0.0 Ok")
            elif verb == b"QUIT":
                self.send("221 2.0.0 Bye")
                return
            else:
                self.send("502 5.5.2 unknown command")


def serve(c):
    try:
        Conn(c).run()
    except (OSError, ssl.SSLError):
        pass
    finally:
        try:
            c.close()
        except OSError:
            pass


def main():
    OPT.update(parse_args(sys.argv[1:]))
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    try:
        os.write(1, b"%d\n" % ls.getsockname()[1])
    except OSError:
        pass
    # The test reads one line and closes its end: nothing more goes there.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


if __name__ == "__main__":
    main()
