#!/usr/bin/env python3
# 105-lmdb-map: a domain's `recipients = "lmdb:PATH"` names a map compiled
# by `mxkeepctl map compile` (issue 8, 2): listed users get 250, unknown
# ones 550 5.1.1 at RCPT, a "@domain" entry accepts every local part,
# matching ignores case, and several domains naming one map share it.
# The map is one file (no lock file), readable by the unprivileged daemon.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403


def main():
    require_binaries()
    srv = Server(domains=[{"name": "example.org"}])    # for its directory
    src = os.path.join(srv.dir, "all.rcpts")
    with open(srv.dir + "/all.rcpts", "w") as f:
        f.write("# one list for three domains\n"
                "alice@example.org\n"
                "Bob@Example.Org\n"
                "@catchall.example\n"
                "carol@example.net  # comment\n")
    os.chmod(src, 0o644)
    r = run([MXKEEPCTL, "map", "compile", src])
    is_(r.returncode, 0, "map compile exits 0 (%s)" % r.stderr.decode().strip())
    like(r.stdout.decode(), r"all\.rcpts\.lmdb: 4 entries", "map compile reports 4 entries")
    mp = src + ".lmdb"
    ok(os.path.isfile(mp), "the map is one file beside the list")
    ok(not os.path.exists(mp + "-lock"), "no lock file")
    spec = "lmdb:" + mp
    srv.domains = [{"name": "example.org", "recipients": spec},
                   {"name": "catchall.example", "recipients": spec},
                   {"name": "example.net", "recipients": spec},
                   {"name": "open.example"}]
    srv.start()
    like(srv.log(), r"4 domains, 4 recipient entries",
         "start-up line counts the shared map once (4 entries, not 12)")

    c = srv.raw()
    c.ehlo()
    is_(c.cmd("MAIL FROM:<s@sender.test>").code, 250, "MAIL")
    for addr, name in (("alice@example.org", "listed user"),
                       ("ALICE@EXAMPLE.ORG", "listed user, upper case"),
                       ("bob@example.org", "entry stored folded"),
                       ('"alice"@example.org', "quoted local part = bare atom"),
                       ("anyone@catchall.example", "@domain catch-all"),
                       ("Someone.Else@CatchAll.Example", "catch-all, any case"),
                       ("carol@example.net", "third domain on the same map"),
                       ("whoever@open.example", "domain without a table accepts anyone")):
        r = c.cmd("RCPT TO:<%s>" % addr)
        is_(r.code, 250, "%s: 250 (%s)" % (name, r))
    for addr, name in (("mallory@example.org", "unknown user"),
                       ("alice@example.net", "user of another domain"),
                       ("x@sub.catchall.example", "catch-all is not for subdomains")):
        r = c.cmd("RCPT TO:<%s>" % addr)
        if addr.startswith("x@sub"):
            is_(r.code, 550, "%s: 550 (%s)" % (name, r))
            like(r.last, r"^5\.7\.1 ", "... relay denied, not served")
            continue
        is_(r.code, 550, "%s: 550 (%s)" % (name, r))
        like(r.last, r"^5\.1\.1 .*[Uu]ser unknown", "%s: 5.1.1 user unknown" % name)
    r = c.cmd("DATA")
    is_(r.code, 354, "DATA after mixed RCPTs")
    c.send(dot_stuff(make_message("lmdb")))
    r = c.reply()
    is_(r.code, 250, "message accepted for the valid recipients")
    c.cmd("QUIT")
    c.close()
    q = srv.ctl("queue")
    like(q.stdout.decode(), r"alice@example\.org", "queued for alice")
    unlike(q.stdout.decode(), r"mallory", "nothing queued for the unknown user")
    ok(srv.running(), "daemon still running")


run_main(main)
