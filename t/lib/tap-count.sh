# t/lib/tap-count.sh - run and count TAP producers for t/run-all.
# Sourced; the caller sets logdir and PER_TEST_TIMEOUT and starts the
# totals passed, failed and skipped at 0.  t/integration/90-runner.t checks
# the counting rules on fake producers.
#
# Running and counting are apart so that t/run-all can run producers side
# by side and still count and print them one at a time, in its own order:
#   tap_exec NAME CMD...  run one producer (may be in a background job);
#                         its output, stderr and exit status go to files
#                         under $logdir, nothing to the terminal
#   tap_count NAME        count one finished producer: add to the totals,
#                         print its line (and what failed)
#   run_tap NAME CMD...   both, one after the other

# tap_out NAME: the file a producer's TAP goes to ($out.err, $out.rc beside).
tap_out() {
    echo "$logdir/$(echo "$1" | tr '/ ' '__').tap"
}

# tap_exec NAME CMD...: run CMD under the per-test time-out.  The
# time-out's pid is in $out.pid while it runs, for t/run-all to stop it.
# Its wall time is added to $logdir/durations ("SECONDS NAME").
tap_exec() {
    local name=$1 out rc t0=$SECONDS
    out=$(tap_out "$1"); shift
    rm -f "$out.rc"
    timeout -k 10 "$PER_TEST_TIMEOUT" "$@" >"$out" 2>"$out.err" </dev/null &
    echo $! >"$out.pid"
    wait $!
    rc=$?
    echo "$rc" >"$out.rc"
    rm -f "$out.pid"
    echo "$((SECONDS - t0)) $name" >>"$logdir/durations"
    return "$rc"
}

# tap_count NAME: "ok N - ... # SKIP" counts as skipped, not passed
# ("# TODO" stays what it is); "1..0 # SKIP why" skips the whole file.  A
# crash, a time-out, a missing plan or a plan that does not match the
# tests run is one more failure; so is a producer that left no exit status.
tap_count() {
    local name=$1
    local out rc p f s planned why=""
    out=$(tap_out "$name")
    touch "$out" "$out.err"
    rc=$(cat "$out.rc" 2>/dev/null)
    [ -n "$rc" ] || { rc=none; why="no exit status"; }
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
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=$((f + 1)); why="${why:-exit $rc}"; fi
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

# run_tap NAME CMD...: run one producer and count it.
run_tap() {
    tap_exec "$@"
    tap_count "$1"
}
