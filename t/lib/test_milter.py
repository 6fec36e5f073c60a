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
# Usage: test_milter.py SOCKET [SLOW]   (SOCKET as libmilter: inet:PORT@127.0.0.1)
import sys
import time
import Milter

SLOW = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0


class T(Milter.Base):
    def __init__(self):
        self.rcpts = []
        self.bodylen = 0

    def envfrom(self, f, *args):
        self.rcpts = []
        return Milter.CONTINUE

    def envrcpt(self, to, *args):
        self.rcpts.append(to)
        if "rcptreject" in to:
            self.setreply("550", "5.7.1", "Recipient refused by test milter")
            return Milter.REJECT
        if "accept" in to:
            return Milter.ACCEPT
        return Milter.CONTINUE

    def body(self, chunk):
        self.bodylen += len(chunk)
        if any("slow" in r for r in self.rcpts):
            time.sleep(SLOW)
        if any("skip" in r for r in self.rcpts):
            return Milter.SKIP
        return Milter.CONTINUE

    def eom(self):
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
