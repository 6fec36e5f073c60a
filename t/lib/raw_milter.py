# raw_milter.py - a raw milter (no library) that speaks just enough of the
# protocol to negotiate, then misbehaves at a chosen step, for the milter
# failure tests (t/integration/145-*, 149-*).
import socket
import struct
import threading


class RawMilter:
    """A milter that negotiates properly, then misbehaves at the body:
    mode 'close' closes the connection, 'garbage' sends an unknown reply,
    'huge' announces a 2 GB packet; 'rcptclose' / 'rcptgarbage' do the
    same at RCPT instead.  Any other command gets SMFIR_CONTINUE."""

    def __init__(self, mode):
        self.mode = mode
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(4)
        self.port = self.ls.getsockname()[1]
        self.stop = False
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        self.ls.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.ls.accept()
            except OSError:
                continue
            threading.Thread(target=self.conn, args=(c,), daemon=True).start()

    def conn(self, c):
        c.settimeout(10)
        buf = b""
        try:
            while True:
                while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                n = struct.unpack(">I", buf[:4])[0]
                cmd, data, buf = buf[4:5], buf[5:4 + n], buf[4 + n:]
                if cmd == b"O":
                    c.sendall(struct.pack(">IcIII", 13, b"O", 6, 0x1ff, 0))
                elif cmd in (b"D", b"A"):
                    pass
                elif cmd == b"Q":
                    return
                elif cmd == b"R" and self.mode.startswith("rcpt"):
                    if self.mode == "rcptclose":
                        return
                    c.sendall(struct.pack(">Ic", 1, b"Z"))
                elif cmd == b"B":
                    if self.mode == "close":
                        return
                    if self.mode == "garbage":
                        c.sendall(struct.pack(">Ic", 1, b"Z"))
                    if self.mode == "huge":
                        c.sendall(struct.pack(">Ic", 0x7fffffff, b"c"))
                else:
                    c.sendall(struct.pack(">Ic", 1, b"c"))
        except OSError:
            pass
        finally:
            c.close()
