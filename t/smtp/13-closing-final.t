#!/usr/bin/env python3
# 13-closing-final: issue 7.5.  A session that got 421 for a timeout while
# its commit was pending must stay closed when the commit completes (0.1.0
# moved it back to the HELO state, answered 250 after the 421 and went on
# reading commands).
#
# Reaching the window for real: the daemon runs with a small preloaded shim
# that makes fdatasync() slow while a flag file exists, so the commit stays
# pending for SLOW_SYNC seconds, and that gives accepted sockets a small
# fixed send buffer.  The client reads nothing: its receive buffer is tiny
# and the replies to two thousand pipelined (duplicate) RCPTs fill both
# buffers, so the session's output cannot drain and its write timeout
# (command_timeout) fires while the commit is still on the disk.
import os
import socket
import subprocess
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

# The write timeout fires about COMMAND_TIMEOUT after the output stalled
# (just before the dot), the commit completes SLOW_SYNC after the dot, and
# a closing session whose output still cannot drain is freed at the next
# write timeout: the commit must complete between the two, as in 0.1.0's
# bug, so that a session brought back to life can be seen.
SLOW_SYNC = 4           # seconds a flagged fdatasync takes
COMMAND_TIMEOUT = 3     # seconds
N_RCPT = 2000           # duplicate RCPTs: 14-octet replies, about 28 KB (< 64 KB,
                        # where the session would stop reading before DATA)
CLIENT_RCVBUF = 1024    # the kernel rounds it up to its minimum
SERVER_SNDBUF = 4096    # the shim's SO_SNDBUF for accepted sockets

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void slow(void)
{
    const char *flag = getenv("MXTEST_SLOW_SYNC_FLAG");
    const char *secs = getenv("MXTEST_SLOW_SYNC_SECONDS");
    if (flag && access(flag, F_OK) == 0)
        sleep(secs ? (unsigned)atoi(secs) : 5);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow();
    return real(fd);
}

int accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real)
        real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int c = real(fd, sa, len, flags);
    const char *sb = getenv("MXTEST_SNDBUF");
    if (c >= 0 && sb) {
        int v = atoi(sb);
        setsockopt(c, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
    }
    return c;
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow();
    return real(fd);
}
"""


def build_shim(directory):
    src = os.path.join(directory, "slowsync.c")
    lib = os.path.join(directory, "slowsync.so")
    with open(src, "w") as f:
        f.write(SHIM)
    r = run(["cc", "-shared", "-fPIC", "-O1", "-o", lib, src, "-ldl"], timeout=60)
    if r.returncode != 0:
        return None
    os.chmod(lib, 0o755)
    os.chmod(directory, 0o755)
    return lib


def main():
    require_binaries()
    srv = Server(domains=[{"name": "example.org", "recipients": ["user@example.org"]}],
                 limits={"command_timeout": "%ds" % COMMAND_TIMEOUT, "data_timeout": "30s"})
    shim = build_shim(srv.dir)
    if shim is None:
        skip_all("no C compiler for the slow-fdatasync shim")
    flag = os.path.join(srv.dir, "slow")
    env = {"LD_PRELOAD": shim, "MXTEST_SLOW_SYNC_FLAG": flag,
           "MXTEST_SLOW_SYNC_SECONDS": str(SLOW_SYNC), "MXTEST_SNDBUF": str(SERVER_SNDBUF)}
    asan = os.environ.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "verify_asan_link_order=0"
    srv.start(env=env)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    sock.settimeout(REPLY_TIMEOUT)
    sock.connect(("127.0.0.1", srv.port))
    c = Raw.__new__(Raw)
    c.timeout, c.sock, c.buf, c.eof = REPLY_TIMEOUT, sock, b"", False
    c.greeting = c.reply()
    is_(c.greeting.code, 220, "greeting")
    is_(c.ehlo().code, 250, "EHLO")

    # From here on the client reads nothing until the commit is over.
    open(flag, "w").close()
    mark = len(srv.log())
    c.send(b"MAIL FROM:<s@example.com>\r\n" + b"RCPT TO:<user@example.org>\r\n" * N_RCPT +
           b"DATA\r\n")
    time.sleep(0.5)                     # the server has answered DATA with 354 by now
    msg = make_message("closing")
    c.send(dot_stuff(msg))
    t0 = time.monotonic()
    reached = wait_log(srv, r"timeout after commit", COMMAND_TIMEOUT + 2, mark)
    ok(reached is not None, "the write timeout fired while the commit was pending")
    # Let the slow commit finish while the session is closing.
    queued = wait_log(srv, r"\(queue active\)", SLOW_SYNC + 10, mark)
    ok(queued is not None, "the commit completed (%.1fs after the dot)" % (time.monotonic() - t0))
    os.unlink(flag)
    ok(reached is not None and queued is not None and reached.start() < queued.start(),
       "the 421 came before the commit completed")

    # Now read everything the server sent: the last reply must be the 421,
    # no 250 after it, and the connection ends.
    data = b""
    end = time.monotonic() + 15
    while time.monotonic() < end:
        try:
            sock.settimeout(max(0.1, end - time.monotonic()))
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except OSError:
            break
        if not chunk:
            c.eof = True
            break
        data += chunk
    lines = data.decode("latin-1").split("\r\n")
    lines = [x for x in lines if x]
    i421 = min([i for i, x in enumerate(lines) if x.startswith("421 ")] or [-1])
    ok(i421 >= 0, "the session got 421 (%s)" % (lines[i421] if i421 >= 0 else lines[-3:]))
    like(lines[i421] if i421 >= 0 else "", r"^421 4\.4\.2 ", "421 4.4.2 timeout")
    is_(lines[i421 + 1:] if i421 >= 0 else None, [],
        "nothing after the 421 (no 250 from the commit, no second timeout)")
    is_(sum(1 for x in lines if x.startswith("250 2.0.0 Ok: queued")), 0,
        "no 250 for the message: the session was closed when it was queued")
    ok(c.eof, "the server closed the connection")
    if not c.eof:
        # A session brought back to life would answer this.
        try:
            sock.sendall(b"NOOP\r\n")
            sock.settimeout(2)
            more = sock.recv(4096)
        except OSError:
            more = b""
        is_(more, b"", "no reply to a NOOP after the 421")
    sock.close()

    # The message is committed all the same (issue 7.1), and the daemon
    # still serves.
    qs = srv.queue()
    is_(len(qs), 1, "the message is queued")
    qid = qs[0]["qid"] if qs else "none"
    like(srv.log()[mark:], r"%s: from=<s@example\.com>, size=\d+, nrcpt=1 \(queue active\)" % qid,
         "its queued log line names it")
    unlike(srv.log()[mark:], r"timeout after (helo|init|mail|rcpt)",
           "the closed session never went back to the dialogue")
    ok(srv.running(), "mxkeepd still running")
    code, _ = send_smtplib(srv, "s@example.com", ["user@example.org"], make_message("after"))
    is_(code, 250, "a new session is served")


run_main(main)
