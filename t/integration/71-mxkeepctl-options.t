#!/usr/bin/env python3
# 71-mxkeepctl-options: issue 7, item 17.  Options go anywhere on the
# command line (before the command, between it and its operands, after
# them), `--` ends them; every command is run with its options in each
# place and must give the same answer.  `queue DOMAIN` for a domain that is
# neither served nor queued is an error (exit 66, EX_NOINPUT), never
# "queue is empty".  The help text, the man page and the built-in default
# configuration path agree.
# On 0.1.0: `summary --json` was a usage error (64) and `queue --json`
# printed "queue is empty" (taking --json for a domain).
import json
import os
import re
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

EX_USAGE, EX_NOINPUT, EX_NOUSER = 64, 66, 67


def ctl_raw(*args):
    """mxkeepctl with exactly these arguments (no -c added)."""
    return run([MXKEEPCTL] + list(args), timeout=CTL_TIMEOUT)


def placements(conf, cmd, operands, opts):
    """The same request with the options (and -c FILE) in every place."""
    c = ["-c", conf]
    return [
        c + opts + [cmd] + operands,                       # all before
        [cmd] + operands + opts + c,                       # all after
        [cmd] + c + opts + operands,                       # between command and operands
        opts + [cmd] + operands + c,                       # split
        ["--config", conf] + [cmd] + opts + operands,      # long form
    ]


def norm(out):
    """Output without what changes from one second to the next."""
    return re.sub(rb'"(oldest_age|uptime_seconds)":\d+', b'"\\1":0', out)


def main():
    require_binaries()
    sink = SmtpSink()                       # example.org: down (not started)
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.1]:%d" % sink.port},
        {"name": "other.test", "primary": "[127.0.0.1]:9"},
    ], settings={"delivery": fast_delivery(probe_min="10m", probe_max="1h")})
    srv.start()
    sent = send_batch(srv, 3, tag="opt")
    qid = sent[0][0]

    # --- the readers: every placement gives the same document ---
    for cmd, operands in (("queue", []), ("queue", ["example.org"]), ("summary", []),
                          ("show", [qid]), ("count", [])):
        outs = []
        for argv in placements(srv.conf, cmd, operands, ["--json"]):
            r = ctl_raw(*argv)
            outs.append((r.returncode, norm(r.stdout)))
            try:
                json.loads(r.stdout.decode())
                parsed = True
            except ValueError:
                parsed = False
            shown = " ".join("FILE" if a == srv.conf else a for a in argv)
            ok(r.returncode == 0 and parsed, "%s: exit 0, JSON (exit %s)" % (shown, r.returncode))
        ok(all(o == outs[0] for o in outs), "%s %s: the same answer wherever --json and -c go" %
           (cmd, " ".join(operands)))
    r = srv.ctl("queue", "--json")
    d = json.loads(r.stdout.decode() or "{}")
    is_(len(d.get("messages", [])), 3, "queue --json lists the 3 messages (not \"queue is empty\")")
    r = srv.ctl("summary", "--json")
    is_(r.returncode, 0, "summary --json: exit 0 (was a usage error)")
    r = srv.ctl("cat", qid, "--json")
    is_((r.returncode, b"Message-ID" in r.stdout), (0, True), "cat QID --json: the body")
    r = srv.ctl("--", "cat", qid)
    is_(r.returncode, 0, "-- before the command: the command still runs")

    # --- `--` ends the options: an operand may start with '-' ---
    r = srv.ctl("queue", "--", "--json")
    is_(r.returncode, EX_NOINPUT, "queue -- --json: '--json' is an operand (a domain), unknown")
    like(r.stderr.decode(), r"unknown domain: --json", "... and says so")
    r = srv.ctl("--json", "show", "--", "-x")
    is_(r.returncode, EX_USAGE, "show -- -x: '-x' is an operand (malformed QID), exit 64")

    # --- unknown domain: an error, never an empty queue ---
    for args in (["queue", "nowhere.test"], ["queue", "--json", "nowhere.test"],
                 ["queue", "nowhere.test", "--json"]):
        r = srv.ctl(*args)
        is_(r.returncode, EX_NOINPUT, "%s: exit 66 (EX_NOINPUT)" % " ".join(args))
        like(r.stderr.decode(), r"^mxkeepctl: unknown domain: nowhere\.test \(not served here, "
             r"nothing queued for it\)\n$", "... one clear line")
        unlike(r.stdout.decode(), r"queue is empty", "... not \"queue is empty\"")
    r = srv.ctl("queue", "OTHER.test.")
    is_((r.returncode, r.stdout.decode()), (0, "queue is empty\n"),
        "a served domain with nothing waiting: queue is empty, exit 0")

    # --- the daemon commands, options after the operands ---
    r = srv.ctl("flush", "example.org", "--json")
    is_(r.returncode, 0, "flush DOMAIN --json: exit 0")
    like(r.stdout.decode(), r'^\{"reply":"3 messages"\}\n$', "... the JSON reply")
    r = srv.ctl("flush", "--json", "--all")
    like((r.returncode, r.stdout.decode()), r"\(0, '\{\"reply\":\"\d+ messages? in ",
         "flush --json --all")
    r = srv.ctl("--all", "flush")
    is_(r.returncode, 0, "--all before flush: exit 0")
    r = srv.ctl("flush", "--all", "example.org")
    is_(r.returncode, EX_USAGE, "flush --all DOMAIN: usage error")
    r = srv.ctl("queue", "--all")
    is_(r.returncode, EX_USAGE, "--all on queue: usage error")
    like(r.stderr.decode(), r"option --all is not for this command", "... naming the option")
    r = srv.ctl("hold", "other.test", "--json")
    is_(r.returncode, 0, "hold DOMAIN --json: exit 0")
    like(r.stdout.decode(), r'^\{"reply":"held other\.test: 0 messages waiting"\}\n$',
         "hold reply says held and the count")
    r = srv.ctl("--json", "release", "other.test")
    like(r.stdout.decode(), r'released other\.test', "--json release DOMAIN")
    r = srv.ctl("hold", "nowhere.test", "--json")
    is_(r.returncode, EX_NOUSER, "hold of an unknown domain: exit 67")
    r = srv.ctl("stats", "--json")
    ok(r.returncode == 0 and isinstance(json.loads(r.stdout.decode() or "null"), dict),
       "stats --json: one object")
    r = srv.ctl("reload", "--json")
    like(r.stdout.decode(), r'^\{"reply":"reloaded', "reload --json")
    send_batch(srv, 2, rcpt="u@other.test", tag="del")
    r = srv.ctl("delete", "--yes", "--json", "--domain", "other.test")
    is_(r.returncode, 0, "delete --yes --json --domain D: options in any order")
    like(r.stdout.decode(), r'"2 deleted, 0 skipped"', "... deleted both")
    send_batch(srv, 1, rcpt="u@other.test", tag="del2")
    r = srv.ctl("delete", "--domain", "other.test")
    is_(r.returncode, EX_USAGE, "delete --domain without --yes: exit 64")
    r = srv.ctl("--yes", "delete", "--domain=other.test")
    is_(r.returncode, 0, "--yes first, --domain=D form")
    send_batch(srv, 1, rcpt="u@other.test", tag="del3")
    bq = [m["qid"] for m in srv.queue() if m["recipients"][0]["domain"] == "other.test"][0]
    r = srv.ctl("bounce", bq, "--json")
    like((r.returncode, r.stdout.decode()), r"\(0, '\{\"reply\":\"bounced %s" % bq,
         "bounce QID --json")
    send_batch(srv, 1, rcpt="u@other.test", tag="del4")
    dq = [m["qid"] for m in srv.queue() if m["recipients"][0]["domain"] == "other.test"][0]
    r = srv.ctl("delete", dq, "--json")
    like((r.returncode, r.stdout.decode()), r"\(0, '\{\"reply\":\"deleted %s" % dq,
         "delete QID --json")
    r = srv.ctl("delete", dq, "--yes")
    is_(r.returncode, EX_USAGE, "delete QID --yes: usage error (--yes is for --domain)")

    # --- help, man page and the built-in default agree ---
    r = ctl_raw("--help")
    m = re.search(r"default (\S+mxkeep\.conf)\)", r.stdout.decode())
    ok(m is not None, "--help names the default configuration file")
    default = m.group(1) if m else ""
    r2 = ctl_raw("count")           # no -c: the built-in default is what it opens
    like(r2.stderr.decode(), re.escape(default), "without -c, mxkeepctl reads %s" % default)
    sysconfdir = None
    mk = os.path.join(ROOT, "Makefile")
    if os.path.exists(mk):
        prefix = re.search(r"(?m)^prefix = (.*)$", open(mk).read())
        sc = re.search(r"(?m)^sysconfdir = (.*)$", open(mk).read())
        if prefix and sc:
            sysconfdir = sc.group(1).replace("${prefix}", prefix.group(1))
    is_(default, (sysconfdir or "?") + "/mxkeep.conf", "the default is the build's sysconfdir")
    man = open(os.path.join(ROOT, "doc", "mxkeepctl.8")).read()
    like(man, r"SYSCONFDIR.*/mxkeep\.conf", "man page: default is SYSCONFDIR/mxkeep.conf")
    like(man, r"\\-\\-help.*prints", "man page: --help prints the built-in path")
    like(man, r"anywhere", "man page: options anywhere")
    md = open(os.path.join(ROOT, "doc", "mxkeepctl.md")).read()
    like(md, r"SYSCONFDIR/mxkeep\.conf", "mxkeepctl.md: the same default")
    for name in ("json", "config", "help", "all", "domain", "yes"):
        like(man, r"\\-\\-%s" % name, "man page documents --%s" % name)
        like(r.stdout.decode(), r"--%s" % name, "help mentions --%s" % name)

    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
