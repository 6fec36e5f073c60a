#!/usr/bin/env python3
# 73-doc-examples: issue 7, item 18.  Every shell example of the
# documentation runs, against a live mxkeepd:
#   - doc/operations.md and doc/mxkeepctl.md: every fenced block whose
#     language is sh or bash.  The info string after the language marks
#     what a block is or needs (machine-readable, checked here):
#       needs=install|systemd|primary|cron   external set-up: skipped, named
#       file=PATH [mode=0NNN]                a file to create, not a command
#       expect=REGEX (no spaces; \s)         its output must match
#     Other fenced blocks (ini, crontab, text, yaml) are not commands,
#     unless they carry file=.  An indented block (outside any fence)
#     that starts with a command is an unfenced shell example: a failure.
#   - the manual page's EXAMPLES are the same lines as mxkeepctl.md's.
#   - README's tour ("Try it."), against the shipped sample configuration
#     on free ports, ending with the backlog delivered to smtp-sink.
# The doc's names are mapped to the test's: mx2.example.net -> 127.0.0.1
# and the daemon's port, /etc/mxkeep.conf -> the test's file, file= paths
# -> a temp dir; mxkeepctl is a wrapper adding `-c FILE` AFTER the
# arguments (options anywhere), systemctl a shim that only knows
# `reload mxkeepd` (SIGHUP to the test daemon).
# Also the doc's recipient-list rules: `@lists.example.org` in
# example.org's list stops mxkeepd -t with file:line (0.1.0's doc showed
# it as valid); `@example.org` accepts every local part.
import os
import re
import shlex
import signal
import stat
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

DOCS = ["doc/operations.md", "doc/mxkeepctl.md"]
SHELL_LANGS = {"sh", "bash"}
NEEDS = {"install": "installs into the system (make install, useradd)",
         "systemd": "a running systemd",
         "primary": "the primary's own host and certificate",
         "cron": "a cron daemon"}
KEYS = {"needs", "file", "mode", "expect"}
COMMAND_WORDS = {"mxkeepctl", "mxkeepd", "systemctl", "swaks", "fetchmail", "openssl", "useradd",
                 "make", "./build.sh", "./configure", "curl", "exec", "src/mxkeepctl",
                 "src/mxkeepd", "smtp-sink", "journalctl", "mdb_copy", "python3", "bash", "sh",
                 "printf", "cat", "kill", "postmap"}
FENCE_RE = re.compile(r"^```(\S*)(.*)$")
BLOCK_TIMEOUT = 60


def parse_blocks(path):
    """[(line, lang, {key: value}, text)] of fenced blocks, and problems."""
    blocks, problems, unfenced = [], [], []
    lines = open(path, encoding="utf-8").read().split("\n")
    i, prev_blank = 0, True
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if m:
            start, lang, attrs = i + 1, m.group(1), {}
            for tok in m.group(2).split():
                k, eq, v = tok.partition("=")
                if not eq or k not in KEYS:
                    problems.append("%s:%d: unknown fence marker %r" % (path, start, tok))
                    continue
                attrs[k] = v
            if attrs.get("needs") and attrs["needs"] not in NEEDS:
                problems.append("%s:%d: unknown needs=%s" % (path, start, attrs["needs"]))
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                problems.append("%s:%d: fence not closed" % (path, start))
            blocks.append((start, lang, attrs, "\n".join(body) + "\n"))
            i += 1
            prev_blank = False
            continue
        if prev_blank and lines[i].startswith("    ") and lines[i].strip():
            word = lines[i].split()[0]
            if word in COMMAND_WORDS or word.startswith("/usr/") or word.startswith("src/"):
                unfenced.append("%s:%d: %s" % (path, i + 1, lines[i].strip()))
        prev_blank = lines[i].strip() == ""
        i += 1
    return blocks, problems, unfenced


def apply_map(text, mapping):
    for a, b in mapping:
        text = text.replace(a, b)
    return text


def write_exec(path, text, mode=0o755):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def run_block(text, env, cwd, timeout=BLOCK_TIMEOUT):
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", text], env=env, cwd=cwd,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def main():
    require_binaries()
    tmp = tempfile.mkdtemp(prefix="docex.")
    os.chmod(tmp, 0o755)
    bindir, files, home = (os.path.join(tmp, d) for d in ("bin", "files", "home"))
    for d in (bindir, files, home):
        os.makedirs(d)
        os.chmod(d, 0o755)

    down_port = free_port()
    mport = free_port()
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.1]:%d" % down_port,
         "recipients": ["alice@example.org", "bob@example.org", "postmaster@example.org"]},
        {"name": "example.com", "primary": "[127.0.0.1]:%d" % down_port},
    ], settings={"delivery": fast_delivery(probe_min="10m", probe_max="1h"),
                 "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()
    sent = send_batch(srv, 2, rcpt="alice@example.org", tag="doc")
    qid = sent[0][0]

    write_exec(os.path.join(bindir, "mxkeepctl"),
               "#!/bin/sh\nexec %s \"$@\" -c %s\n" % (shlex.quote(MXKEEPCTL), shlex.quote(srv.conf)))
    write_exec(os.path.join(bindir, "mxkeepd"),
               "#!/bin/sh\nexec %s \"$@\"\n" % shlex.quote(MXKEEPD))
    write_exec(os.path.join(bindir, "systemctl"),
               "#!/bin/sh\n"
               "if [ \"$1 $2\" = \"reload mxkeepd\" ]; then exec kill -HUP %d; fi\n"
               "echo \"systemctl shim: only 'reload mxkeepd' here\" >&2; exit 1\n" % srv.proc.pid)
    env = dict(os.environ)
    env.update({"PATH": bindir + ":" + env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin",
                "HOME": home, "FETCHMAILHOME": home, "LC_ALL": "C"})
    base_map = [
        ("mx2.example.net/25", "127.0.0.1/%d" % srv.port),
        ("mx2.example.net service 25", "127.0.0.1 service %d" % srv.port),
        ("127.0.0.1:9125", "127.0.0.1:%d" % mport),
        ("mx2.example.net", "127.0.0.1:%d" % srv.port),
        ("/etc/mxkeep.conf", srv.conf),
        ("0H2Q7B1M8G00", qid),
        ("/tmp/message.eml", os.path.join(tmp, "message.eml")),
    ]

    ran = 0
    for doc in DOCS:
        blocks, problems, unfenced = parse_blocks(os.path.join(ROOT, doc))
        is_(problems, [], "%s: every fence marker is known" % doc)
        is_(unfenced, [], "%s: no unfenced shell example" % doc)
        # file= paths first: later blocks (and other files) name them.
        file_map = []
        for line, lang, attrs, text in blocks:
            if "file" in attrs:
                target = os.path.join(files, attrs["file"].strip("/").replace("/", "_"))
                file_map.append((attrs["file"], target))
        file_map.sort(key=lambda x: -len(x[0]))
        mapping = file_map + base_map
        for line, lang, attrs, text in blocks:
            where = "%s:%d" % (doc, line)
            if "file" in attrs:
                target = apply_map(attrs["file"], file_map)
                mode = int(attrs.get("mode", "0644"), 8)
                write_exec(target, apply_map(text, mapping), mode)
                ok(os.path.exists(target), "%s: file %s written (mode %o)" % (where, attrs["file"], mode))
                continue
            if lang not in SHELL_LANGS:
                continue
            if "needs" in attrs:
                skip("%s needs %s" % (where, NEEDS.get(attrs["needs"], attrs["needs"])))
                continue
            cmd = apply_map(text, mapping)
            mark = len(srv.log())
            r = run_block(cmd, env, tmp)
            ran += 1
            out = (r.stdout + r.stderr).decode("utf-8", "replace")
            first = text.strip().split("\n")[0]
            is_(r.returncode, 0, "%s: `%s` exits 0" % (where, first[:70]))
            if r.returncode != 0:
                diag(out[-1500:])
            if "expect" in attrs:
                like(r.stdout.decode("utf-8", "replace"), "(?m)" + attrs["expect"],
                     "%s: output matches %s" % (where, attrs["expect"]))
            ok(srv.running(), "%s: daemon still running" % where)
            new_log = srv.log()[mark:]
            unlike(new_log, r"pipelining|ETRN .*: 5\d\d ", "%s: no refusal in the log" % where)

    # 0.1.0's one-liner wrote EHLO, ETRN and QUIT at once.  EHLO ends a
    # pipelining group (RFC 2920 3.1), so an ETRN behind it in the same
    # segment is refused: why the example now waits for each reply.
    c = srv.raw()
    c.send(b"EHLO mx1.example.org\r\nETRN example.org\r\nQUIT\r\n")
    rs = [c.reply() for _ in range(3)]
    c.close()
    codes = [x.code for x in rs if x is not None]
    ok(554 in codes and not any(x in (250, 251, 252, 253) for x in codes[1:]),
       "ETRN pipelined behind EHLO: 554 5.5.0, no flush (%s)" % codes)
    ok(ran >= 12, "ran %d shell blocks (12 when this test was written)" % ran)
    # What the examples did, seen from the daemon.
    log = srv.log()
    like(log, r"ETRN example\.org from \[127\.0\.0\.1\]: 25[0-3] ", "the ETRN examples reached mxkeepd")
    is_(len(re.findall(r"ETRN example\.org from \[127\.0\.0\.1\]: 25[0-3] ", log)) >= 4, True,
        "fetchmail (2), the hook, the if-up script and bash each sent one ETRN")
    like(log, r"destination example\.org: held by the administrator", "the hold example held")
    like(log, r"destination example\.org: released by the administrator", "... and released")
    like(log, r"(?i)reload", "the reload example reloaded")
    with open(os.path.join(tmp, "message.eml"), "rb") as f:
        like(f.read().decode("utf-8", "replace"), r"Message-ID:", "mxkeepctl cat wrote the message")

    # The manual page's EXAMPLES are mxkeepctl.md's block.
    man = open(os.path.join(ROOT, "doc", "mxkeepctl.8")).read()
    m = re.search(r"\.SH EXAMPLES\n\.nf\n(.*?)\.fi\n", man, re.S)
    man_ex = (m.group(1) if m else "").replace("\\-", "-")
    md_blocks, _, _ = parse_blocks(os.path.join(ROOT, "doc", "mxkeepctl.md"))
    md_ex = [t for _, lang, a, t in md_blocks if lang == "sh" and not a]
    is_(man_ex, md_ex[-1] if md_ex else None, "mxkeepctl.8 EXAMPLES = mxkeepctl.md EXAMPLES")

    # --- the recipient-list rules operations.md states ---
    rl = os.path.join(tmp, "example.org.rcpts")
    conf = os.path.join(tmp, "rcpts.conf")
    with open(srv.conf) as f:
        text = f.read()
    text = re.sub(r'recipients = "[^"]*";', 'recipients = "%s";' % rl, text, count=1)
    with open(conf, "w") as f:
        f.write(text)
    with open(rl, "w") as f:
        f.write("alice@example.org\n@lists.example.org        # everything in a subdomain\n")
    r = run([MXKEEPD, "-t", "-c", conf])
    is_(r.returncode, 78, "@lists.example.org in example.org's list: mxkeepd -t exits 78")
    like(r.stderr.decode() + r.stdout.decode(),
         r"%s:2: address not in domain example\.org" % re.escape(rl), "... naming file:line")
    with open(rl, "w") as f:
        f.write("alice@example.org\n@example.org\n")
    r = run([MXKEEPD, "-t", "-c", conf])
    is_(r.returncode, 0, "@example.org (the list's own domain) is valid")

    is_(srv.stop(), 0, "mxkeepd exits 0")

    # --- README's tour, with the shipped sample configuration ---
    try:
        readme_tour(tmp)
    finally:
        if not os.environ.get("MXTEST_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


def readme_tour(tmp):
    text = open(os.path.join(ROOT, "README"), encoding="utf-8").read()
    m = re.search(r"\nTry it\.(?s:.*?)\n\n((?:    .*\n|\n)+)", text)
    ok(m is not None, "README: the tour's commands found")
    if not m:
        return
    block = "\n".join(ln[4:] for ln in m.group(1).rstrip("\n").split("\n"))
    if not IS_ROOT:
        skip("README tour: the sample config runs as user mxkeep (needs root)", 5)
        return
    p_mx, p_primary = free_port(), free_port()
    rdir = os.path.join(tmp, "readme")
    os.makedirs(os.path.join(rdir, "run"))
    os.chmod(rdir, 0o755)
    conf = os.path.join(rdir, "mxkeep.conf")
    sample = open(os.path.join(ROOT, "etc", "mxkeep.conf")).read()
    sample = (sample.replace("port = 2525;", "port = %d;" % p_mx)
              .replace("[127.0.0.1]:2526", "[127.0.0.1]:%d" % p_primary)
              .replace('"var/spool"', '"%s"' % os.path.join(rdir, "spool"))
              .replace('"var/run/mxkeep.sock"', '"%s"' % os.path.join(rdir, "run", "mxkeep.sock")))
    with open(conf, "w") as f:
        f.write(sample)
    os.chmod(conf, 0o644)
    log = open(os.path.join(rdir, "mxkeepd.log"), "ab")
    # README's first command, minus build.sh, from the source directory.
    daemon = subprocess.Popen([MXKEEPD, "-f", "-c", conf], cwd=ROOT, stdout=log, stderr=log,
                              stdin=subprocess.DEVNULL)
    log.close()
    ok(wait_for(lambda: port_open("127.0.0.1", p_mx), 10), "README: the sample daemon listens")
    cmd = apply_map(block, [("127.0.0.1:2525", "127.0.0.1:%d" % p_mx),
                            ("127.0.0.1:2526", "127.0.0.1:%d" % p_primary),
                            ("etc/mxkeep.conf", conf),
                            ("src/mxkeepctl", MXKEEPCTL)])
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    # Output to a file: the tour's `smtp-sink &` keeps a pipe open.
    outpath = os.path.join(rdir, "tour.out")
    with open(outpath, "wb") as outf:
        proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", cmd], cwd=ROOT, env=env,
                                stdout=outf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=BLOCK_TIMEOUT)
        is_(proc.returncode, 0, "README: the tour's commands exit 0")
        text = open(outpath, "rb").read().decode("utf-8", "replace")
        like(text, r"(?m)^example\.org\s+1\s", "README: summary shows example.org with 1 message")
        like(text, r"(?m)^1 message\n", "README: flush example.org: 1 message")

        def empty():
            r = run([MXKEEPCTL, "-c", conf, "count"])
            return r.stdout.strip() == b"0"
        ok(wait_for(empty, 20), "README: the flush delivered the message to smtp-sink")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)     # the tour's smtp-sink &
        except ProcessLookupError:
            pass
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()


run_main(main)
