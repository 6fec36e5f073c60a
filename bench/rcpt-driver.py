#!/usr/bin/env python3
# bench/rcpt-driver.py - RCPT lookups per second against one SMTP server
# (used by bench/rcpt; stdlib only).
#
#   rcpt-driver.py PORT ENTRIES DOMAINS COUNT PROCS [UNKNOWN]
#
# PROCS processes each open sessions to 127.0.0.1:PORT and pipeline their
# share of COUNT RCPT commands: MAIL, then BATCH RCPTs written at once, the
# replies read back, then RSET and the next batch (BATCH stays under
# limits.recipients, and a session does at most BATCHES_PER_SESSION
# batches before QUIT, under mxkeepd's junk-command bound on RSET).  The
# addresses are "user<u>@d<ddddd>.example" picked at random (a fixed seed
# per process) over ENTRIES entries in DOMAINS domains, all listed.  Then
# UNKNOWN addresses not in the table, one short session each (servers
# count refusals toward their error limits): each must get 550.
# Prints one line: "rcpt=N ok=N other=N seconds=S rate=R unknown_550=N/M", and
# "unknown_other=CODE,..." when some unknown address got no 550.
import multiprocessing
import random
import socket
import sys
import time

BATCH = 500                  # RCPTs per transaction
BATCHES_PER_SESSION = 40     # RSETs per session, under the junk bound
SENDER = b"MAIL FROM:<bench@sender.example>\r\n"
IO_TIMEOUT = 60


def read_replies(f, n):
    """Read n complete replies; returns the list of their codes."""
    codes = []
    while len(codes) < n:
        line = f.readline()
        if not line:
            raise ConnectionError("connection closed after %d of %d replies" % (len(codes), n))
        if line[3:4] == b"-":
            continue
        codes.append(line[:3])
    return codes


def session(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    read_replies(f, 1)
    s.sendall(b"EHLO bench.sender.example\r\n")
    read_replies(f, 1)
    return s, f


def worker(args):
    port, entries, domains, count, seed = args
    per_dom = max(1, entries // domains)
    rng = random.Random(seed)
    ok = other = 0
    done = 0
    s = f = None
    batches = 0
    while done < count:
        if s is None:
            s, f = session(port)
            batches = 0
        n = min(BATCH, count - done)
        lines = [b"RSET\r\n" if batches else b"", SENDER]
        for _ in range(n):
            i = rng.randrange(entries)
            lines.append(b"RCPT TO:<user%d@d%05d.example>\r\n" % (i % per_dom, i // per_dom))
        s.sendall(b"".join(lines))
        codes = read_replies(f, n + 1 + (1 if batches else 0))
        for c in codes[-n:]:
            if c == b"250":
                ok += 1
            else:
                other += 1
        done += n
        batches += 1
        if batches >= BATCHES_PER_SESSION:
            s.sendall(b"QUIT\r\n")
            s.close()
            s = None
    if s is not None:
        s.sendall(b"QUIT\r\n")
        s.close()
    return ok, other


def unknown_check(port, n, domains):
    """550 count, and what the others got (a code, or "closed")."""
    got, odd = 0, []
    for k in range(n):
        s, f = session(port)
        s.sendall(SENDER + b"RCPT TO:<nobody%d@d%05d.example>\r\nQUIT\r\n" % (k, k % domains))
        try:
            code = read_replies(f, 2)[1]
        except (ConnectionError, OSError):
            code = b"closed"
        if code == b"550":
            got += 1
        else:
            odd.append(code.decode())
        s.close()
    return got, odd


def main():
    port, entries, domains, count, procs = (int(x) for x in sys.argv[1:6])
    unknown = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    share = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    # warm-up: one short session, so process start-up is not timed
    worker((port, entries, domains, min(1000, count), 12345))
    with multiprocessing.Pool(procs) as pool:
        t0 = time.monotonic()
        res = pool.map(worker, [(port, entries, domains, share[i], i + 1) for i in range(procs)])
        el = time.monotonic() - t0
    ok = sum(r[0] for r in res)
    other = sum(r[1] for r in res)
    u, odd = unknown_check(port, unknown, domains) if unknown else (0, [])
    print("rcpt=%d ok=%d other=%d seconds=%.3f rate=%.0f unknown_550=%d/%d%s" %
          (count, ok, other, el, count / el if el > 0 else 0, u, unknown,
           " unknown_other=" + ",".join(odd) if odd else ""))


if __name__ == "__main__":
    main()
