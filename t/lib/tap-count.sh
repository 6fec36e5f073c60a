# t/lib/tap-count.sh - count one TAP producer's results for t/run-all.
# Sourced; the caller sets logdir and PER_TEST_TIMEOUT and starts the
# totals passed, failed and skipped at 0.  run_tap adds to them and prints
# one line per producer.  t/integration/90-runner.t checks the rules on
# fake producers.

# run_tap NAME CMD...: run one TAP producer, count its results.
# "ok N - ... # SKIP" counts as skipped, not passed ("# TODO" stays what it
# is); "1..0 # SKIP why" skips the whole file.  A crash, a time-out, a
# missing plan or a plan that does not match the tests run is one more
# failure.
run_tap() {
    local name=$1; shift
    local out="$logdir/$(echo "$name" | tr '/ ' '__').tap"
    timeout -k 10 "$PER_TEST_TIMEOUT" "$@" >"$out" 2>"$out.err"
    local rc=$?
    local p f s planned why=""
    s=$(grep -ciE '^(not )?ok\b[^#]*# *skip' "$out")
    p=$(( $(grep -cE '^ok\b' "$out") - $(grep -ciE '^ok\b[^#]*# *skip' "$out") ))
    f=$(( $(grep -cE '^not ok\b' "$out") - $(grep -ciE '^not ok\b[^#]*# *skip' "$out") ))
    planned=$(sed -n 's/^1\.\.\([0-9]*\).*/\1/p' "$out" | tail -1)
    if grep -qiE '^1\.\.0 *# *skip' "$out"; then
        skipped=$((skipped + 1))
        echo "$name: skipped ($(sed -n 's/^1\.\.0 *# *[Ss][Kk][Ii][Pp][a-zA-Z]*:* *//p' "$out"))"
        return
    fi
    local ran=$((p + f + s))
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=$((f + 1)); why="exit $rc"; fi
    if [ -z "$planned" ]; then
        f=$((f + 1)); why="${why:+$why, }no plan"
    elif [ "$planned" != "$ran" ]; then
        f=$((f + 1)); why="${why:+$why, }planned $planned, ran $ran"
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    skipped=$((skipped + s))
    if [ "$f" = 0 ]; then
        if [ "$s" = 0 ]; then echo "$name: ok ($p)"; else echo "$name: ok ($p, $s skipped)"; fi
    else
        echo "$name: FAILED ($f of $((p + f + s)), exit $rc${why:+; $why})"
        grep -E '^not ok|^#' "$out" | head -40 | sed 's/^/    /'
        tail -20 "$out.err" | sed 's/^/    stderr: /'
    fi
}
