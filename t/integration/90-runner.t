#!/usr/bin/env python3
"""90-runner.t - the suite's own counting rules (t/lib/tap-count.sh).

A plan that does not match the tests run, a missing plan or a crash is a
failure; "ok N # SKIP" and "1..0 # SKIP" are skips, never passes.  Each
case runs a fake TAP producer through run_tap and reads the totals back.
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import mxtest as t  # noqa: E402

COUNTER = os.path.join(t.ROOT, "t", "lib", "tap-count.sh")

# (name, producer's output, exit code, expected passed, failed, skipped)
CASES = [
    ("all pass", "1..2\nok 1 - a\nok 2 - b\n", 0, 2, 0, 0),
    ("skip is not a pass", "1..3\nok 1\nok 2 # SKIP no pg\nok 3 # skip x\n", 0, 1, 0, 2),
    ("plan mismatch: fewer run", "1..4\nok 1\nok 2\n", 0, 2, 1, 0),
    ("plan mismatch: more run", "1..1\nok 1\nok 2\n", 0, 2, 1, 0),
    ("no plan", "ok 1\n", 0, 1, 1, 0),
    ("crash after passes", "ok 1\n", 139, 1, 2, 0),
    ("failure counted once", "1..2\nok 1\nnot ok 2 - broken\n", 1, 1, 1, 0),
    ("whole file skipped", "1..0 # SKIP no database\n", 0, 0, 0, 1),
    ("plan at the end", "ok 1\nok 2\n1..2\n", 0, 2, 0, 0),
]


def run_case(out, rc):
    with tempfile.TemporaryDirectory() as d:
        prod = os.path.join(d, "producer")
        with open(os.path.join(d, "out.tap"), "w") as f:
            f.write(out)
        with open(prod, "w") as f:
            f.write("#!/bin/sh\ncat %s/out.tap\nexit %d\n" % (d, rc))
        os.chmod(prod, 0o755)
        script = ('passed=0; failed=0; skipped=0; logdir=%s; PER_TEST_TIMEOUT=10; . %s; '
                  'run_tap fake %s >/dev/null; echo "$passed $failed $skipped"' % (d, COUNTER, prod))
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
        return tuple(int(x) for x in r.stdout.split())


def main():
    for name, out, rc, p, f, s in CASES:
        t.is_(run_case(out, rc), (p, f, s), "%s: %d passed, %d failed, %d skipped" % (name, p, f, s))


t.run_main(main)
