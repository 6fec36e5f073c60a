#!/usr/bin/env python3
# 109-shared-list: one list file (or map) for many domains (issue 8, 2:
# 10,000 domains, 1,000,000 recipients): every domain naming it is served
# from one copy (the start-up line counts its entries once), and a list
# that names a domain which does not use it stops the start with the
# list's file:line (a typo would otherwise leave that domain's entries
# silently unused).  Reload re-reads the shared list once.
import os
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

DOMAINS = 50
PER_DOMAIN = 20
EXIT_TIMEOUT = 10


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)


def main():
    require_binaries()
    srv = Server(domains=[{"name": "example.org"}])
    lst = os.path.join(srv.dir, "all.rcpts")
    write(lst, "".join("u%d@d%02d.example\n" % (u, d)
                       for d in range(DOMAINS) for u in range(PER_DOMAIN)))
    srv.domains = [{"name": "d%02d.example" % d, "recipients": lst} for d in range(DOMAINS)]
    srv.start()
    like(srv.log(), r"%d domains, %d recipient entries" % (DOMAINS, DOMAINS * PER_DOMAIN),
         "one copy of the shared list: %d entries counted once" % (DOMAINS * PER_DOMAIN))
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.test>")
    is_(c.cmd("RCPT TO:<u0@d00.example>").code, 250, "first domain's user")
    is_(c.cmd("RCPT TO:<U19@D49.EXAMPLE>").code, 250, "last domain's user, any case")
    r = c.cmd("RCPT TO:<u0@d01.exampl>")
    is_(r.code, 550, "not a served domain: 550")
    r = c.cmd("RCPT TO:<u20@d07.example>")
    is_(r.code, 550, "unknown user of a sharing domain: 550")
    like(r.last, r"^5\.1\.1 ", "... 5.1.1")
    c.cmd("QUIT")
    c.close()

    # reload: the list grows; the new entry is served, still counted once
    with open(lst, "a") as f:
        f.write("newbie@d07.example\n")
    r = srv.ctl("reload")
    is_(r.returncode, 0, "reload (%s)" % r.stdout.decode().strip())
    like(r.stdout.decode(), r"%d recipient entries" % (DOMAINS * PER_DOMAIN + 1),
         "reload counts the shared list once")
    c = srv.raw()
    c.ehlo()
    c.cmd("MAIL FROM:<s@sender.test>")
    is_(c.cmd("RCPT TO:<newbie@d07.example>").code, 250, "new entry served after reload")
    c.cmd("QUIT")
    c.close()
    srv.stop()

    # a list naming a domain that does not use it: start refused, file:line
    write(lst, "u0@d00.example\nu0@d01.example\nu1@elsewhere.example\n")
    srv.domains = [{"name": "d00.example", "recipients": lst},
                   {"name": "d01.example", "recipients": lst},
                   {"name": "elsewhere.example"}]
    srv.write_config()
    srv.start(expect_fail=True)
    try:
        rc = srv.proc.wait(EXIT_TIMEOUT)
    except Exception:  # noqa: B902 - report and go on
        rc = None
        srv.kill9()
    srv.proc = None
    is_(rc, 78, "list naming a domain that does not use it: exit 78")
    last = srv.log().rsplit("=== start", 1)[-1]
    lines = [ln for ln in last.splitlines()[1:] if ln]
    is_(len(lines), 1, "one line")
    like(lines[0] if lines else "", r"^%s:3: domain elsewhere\.example does not name this list" %
         re.escape(lst), "... the list's file:line names the domain")


run_main(main)
