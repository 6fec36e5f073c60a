#!/usr/bin/python3
# test_milter.py - a test milter on python3-milter (libmilter underneath),
# for the milter tests: every action, chosen by the recipient's local part.
#   addhdr      add, insert, change and delete headers
#   chgfrom     change the envelope sender
#   rcpts       add <added@example.org> (with and without ESMTP args) and
#               <victim@unserved.test> (a relay attempt), delete the original
#   replbody    replace the body
#   quarantine  quarantine with a reason
#   reject / tempfail   at end of message with our own reply
#   rcptreject  reject at RCPT with our own reply;  accept: accept at RCPT
#   discard     discard at end of message
#   slow        sleep SLOW seconds in the body (beyond the client's timeout)
#   skip        ask for no more body after the first chunk
#   rcptdefer   tempfail at RCPT with our own reply; rcptdrop: discard at RCPT
# By the sender's local part: mailrefuse / maildefer (reject / tempfail at
# MAIL); by the HELO name: helorefuse / helodefer; by the server's host
# name (macro j) at connect: connrefuse / conndefer.
# With TEST_MILTER_LOG set, every event is appended to that file, one line
# each ("connect", "helo NAME", "mail ADDR", "rcpt ADDR", "eom", "abort",
# "close"), so a test sees which events came and in what order.
# Usage: test_milter.py SOCKET [SLOW]   (SOCKET as libmilter: inet:PORT@127.0.0.1)
import os
import sys
import threading
import time
import Milter

SLOW = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
LOG = os.environ.get("TEST_MILTER_LOG")
LOCK = threading.Lock()


def note(*words):
    if LOG:
        with LOCK, open(LOG, "a") as f:
            f.write(" ".join(str(w) for w in words) + "\n")


class T(Milter.Base):
    def __init__(self):
        self.rcpts = []
        self.bodylen = 0

    def connect(self, hostname, family, hostaddr):
        j = (self.getsymval("j") or "") + os.environ.get("TEST_MILTER_CONNECT", "")
        note("connect", j)
        if "connrefuse" in j:
            self.setreply("550", "5.7.1", "Connection refused by test milter")
            return Milter.REJECT
        if "conndefer" in j:
            self.setreply("451", "4.7.1", "Connection deferred by test milter")
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def hello(self, name):
        note("helo", name)
        if "helorefuse" in name:
            self.setreply("550", "5.7.1", "HELO refused by test milter")
            return Milter.REJECT
        if "helodefer" in name:
            self.setreply("451", "4.7.1", "HELO deferred by test milter")
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def envfrom(self, f, *args):
        self.rcpts = []
        note("mail", f)
        if "mailrefuse" in f:
            self.setreply("553", "5.7.1", "Sender refused by test milter")
            return Milter.REJECT
        if "maildefer" in f:
            self.setreply("451", "4.7.1", "Sender deferred by test milter")
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def envrcpt(self, to, *args):
        note("rcpt", to)
        if "rcptreject" in to:
            self.setreply("550", "5.7.1", "Recipient refused by test milter")
            return Milter.REJECT
        if "rcptdefer" in to:
            self.setreply("450", "4.7.1", "Recipient deferred by test milter")
            return Milter.TEMPFAIL
        if "rcptdrop" in to:
            return Milter.DISCARD
        self.rcpts.append(to)
        if "accept" in to:
            return Milter.ACCEPT
        return Milter.CONTINUE

    def abort(self):
        note("abort")
        return Milter.CONTINUE

    def close(self):
        note("close")
        return Milter.CONTINUE

    def body(self, chunk):
        self.bodylen += len(chunk)
        if any("slow" in r for r in self.rcpts):
            time.sleep(SLOW)
        if any("skip" in r for r in self.rcpts):
            return Milter.SKIP
        return Milter.CONTINUE

    def eom(self):
        note("eom")
        who = " ".join(self.rcpts)
        if "addhdr" in who:
            self.addheader("X-Test-Milter", "added")
            self.addheader("X-Test-First", "inserted", 0)
            self.chgheader("Subject", 1, "changed by milter")
            self.chgheader("X-Drop", 1, None)
        if "chgfrom" in who:
            self.chgfrom("<new-sender@sender.test>")
        if "rcpts" in who:
            self.addrcpt("<added@example.org>")
            self.addrcpt("<added2@example.org>", "NOTIFY=NEVER")
            self.addrcpt("<victim@unserved.test>")
            self.delrcpt(self.rcpts[0])
        if "replbody" in who:
            self.replacebody(b"replaced body\r\n")
        if "quarantine" in who:
            self.quarantine("held by test milter")
        if "tempfail" in who:
            self.setreply("451", "4.7.1", "Try later, test milter")
            return Milter.TEMPFAIL
        if "reject" in who:
            self.setreply("554", "5.7.1", "Rejected by test milter")
            return Milter.REJECT
        if "discard" in who:
            return Milter.DISCARD
        return Milter.ACCEPT


def main():
    Milter.factory = T
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.ADDRCPT | Milter.DELRCPT |
                     Milter.CHGBODY | Milter.QUARANTINE | Milter.CHGFROM | Milter.ADDRCPT_PAR)
    sys.stdout.flush()
    Milter.runmilter("mxkeep-test", sys.argv[1], 60)


if __name__ == "__main__":
    main()
