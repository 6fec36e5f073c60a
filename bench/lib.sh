# bench/lib.sh - helpers shared by the benchmark scripts (sourced, not run).
#
# Owns: the scratch directory of one benchmark run, every process a
# benchmark starts (tracked by PID and stopped on exit), the mxkeepd
# configuration written for a run.
# Never: touches the system Postfix instance, the system spool, or any
# address but 127.0.0.1; never kills a process it did not start.
# Security: runs as root when Postfix is part of the run (Postfix's master
# needs it); mxkeepd then drops to BENCH_USER, and smtp-sink to nobody.

set -u

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_TOP=$(dirname "$BENCH_DIR")
MXKEEPD=${MXKEEPD:-$BENCH_TOP/src/mxkeepd}
MXKEEPCTL=${MXKEEPCTL:-$BENCH_TOP/src/mxkeepctl}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
BACKUP_MX=$BENCH_DIR/postfix-backup-mx.sh

# Upper bound, in seconds, for any single step (a send, a drain, a start).
STEP_TIMEOUT=${STEP_TIMEOUT:-900}
# How long a daemon may take to answer on its port after being started.
START_TIMEOUT=${START_TIMEOUT:-30}
# Poll interval while waiting for a queue to fill or drain.
POLL_INTERVAL=${POLL_INTERVAL:-0.05}
# The listen backlog handed to smtp-sink; deep enough for 20 clients.
SINK_BACKLOG=${SINK_BACKLOG:-1024}
# mxkeepd's own descriptor limit; 10,000 idle sessions need more than that.
MXKEEPD_NOFILE=${MXKEEPD_NOFILE:-65536}

BENCH_PIDS=()
BENCH_POSTFIX_DIRS=()
BENCH_TMP=""

bench_log() { printf '%s\n' "$*" >&2; }
bench_die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# Stop everything this run started, newest first, then remove the scratch
# directory unless KEEP=1 asked to keep it for a post-mortem.
bench_cleanup() {
    local i pid d
    for d in "${BENCH_POSTFIX_DIRS[@]}"; do
        "$BACKUP_MX" stop "$d" >/dev/null 2>&1 || true
    done
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${BENCH_PIDS[i]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${BENCH_PIDS[i]}
        bench_wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "$BENCH_TMP" ] && [ -d "$BENCH_TMP" ]; then
        if [ "${KEEP:-0}" = 1 ]; then
            bench_log "kept scratch directory $BENCH_TMP"
        else
            rm -rf "$BENCH_TMP"
        fi
    fi
}

# Create the run's scratch directory (on the normal disk unless BENCH_ROOT
# says otherwise: a tmpfs would flatter every fsync) and arm the clean-up.
bench_init() {
    local root=${BENCH_ROOT:-/var/tmp}
    BENCH_TMP=$(mktemp -d "$root/mxkeep-bench.XXXXXX") || bench_die "cannot create a scratch directory under $root"
    # Postfix daemons and mxkeepd run unprivileged and must traverse it.
    chmod 755 "$BENCH_TMP"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_track() { BENCH_PIDS+=("$1"); }

# bench_run CMD...: run a long step in the background and wait for it, so
# ^C or TERM reaches the clean-up at once instead of after the step.
bench_run() {
    local pid rc
    "$@" <&0 &
    pid=$!
    bench_track "$pid"
    wait "$pid"
    rc=$?
    unset 'BENCH_PIDS[${#BENCH_PIDS[@]}-1]'
    return "$rc"
}
bench_track_postfix() { BENCH_POSTFIX_DIRS+=("$1"); }

# bench_wait_gone PID SECONDS: 0 when the process is gone in time.
bench_wait_gone() {
    local pid=$1 end=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 0.05
    done
    return 0
}

# Stop one tracked process now (TERM, then KILL after a grace period).
bench_stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    bench_wait_gone "$pid" 10 || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
bench_free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

bench_now() { date +%s.%N; }

# bench_elapsed START [END]: seconds between two bench_now stamps.
bench_elapsed() {
    local end=${2:-$(bench_now)}
    awk -v a="$1" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

# bench_rate COUNT SECONDS: messages a second, integer.
bench_rate() {
    awk -v n="$1" -v s="$2" 'BEGIN { if (s <= 0) print "n/a"; else printf "%.0f", n / s }'
}

# bench_ratio A B: A / B with two decimals, or n/a.
bench_ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'
}

# bench_wait_greeting PORT SECONDS: 0 once something on the port says 220.
bench_wait_greeting() {
    python3 - "$1" "$2" <<'EOF'
import socket, sys, time
port, limit = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + limit
while time.monotonic() < end:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            if s.recv(512).startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.05)
sys.exit(1)
EOF
}

# bench_status_kib PID FIELD: a /proc/PID/status field (VmRSS, VmHWM) in KiB.
bench_status_kib() {
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null
}

# --- smtp-sink -----------------------------------------------------------

# bench_sink_start PORT LOG: start smtp-sink with running counters written
# to LOG; sets SINK_PID.
bench_sink_start() {
    local port=$1 log=$2 user_opt=()
    [ "$(id -u)" = 0 ] && user_opt=(-u nobody)
    "$SMTP_SINK" -c "${user_opt[@]}" "127.0.0.1:$port" "$SINK_BACKLOG" >"$log" 2>&1 &
    SINK_PID=$!
    bench_track "$SINK_PID"
    bench_wait_greeting "$port" "$START_TIMEOUT" || bench_die "smtp-sink did not start on port $port (see $log)"
}

# bench_sink_messages LOG: messages the sink has taken so far ("mesg=N" of
# its last counter line; the counters are separated by CR).
bench_sink_messages() {
    tail -c 256 "$1" 2>/dev/null | tr '\r' '\n' | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^mesg=/) m = substr($i, 6) } END { print m + 0 }'
}

# --- smtp-source ---------------------------------------------------------

# bench_source PORT N SESSIONS LENGTH LOG [extra smtp-source options...]
# Sends N messages and fails unless every one got a 2xx.
bench_source() {
    local port=$1 n=$2 s=$3 len=$4 log=$5
    shift 5
    bench_run timeout "$STEP_TIMEOUT" "$SMTP_SOURCE" "$@" -s "$s" -m "$n" -l "$len" \
        -M bench.example.net -f sender@example.net -t rcpt@example.org \
        "127.0.0.1:$port" >"$log" 2>&1
}

# --- mxkeepd -------------------------------------------------------------

# The cost of one durable write on the disk under DIR: the median, in ms,
# of N (200) writes of 4 KiB at random offsets of a 16 MiB file written
# once, each followed by fdatasync.  Every batch of mail mxkeepd accepts
# waits at least one such flush before its 250, and smtp-sink waits none,
# so the accept ratio is to be read against this figure.
bench_flush_ms() {
    python3 - "$1" "${2:-200}" <<'PY'
import os, random, sys, time
path = os.path.join(sys.argv[1], "flush-probe.dat")
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
try:
    for off in range(0, 16 << 20, 1 << 20):
        os.pwrite(fd, b"\0" * (1 << 20), off)
    os.fsync(fd)
    page, ts = b"x" * 4096, []
    for _ in range(int(sys.argv[2])):
        t0 = time.perf_counter()
        os.pwrite(fd, page, random.randrange(4096) * 4096)
        os.fdatasync(fd)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    print("%.3f" % (ts[len(ts) // 2] * 1e3))
finally:
    os.close(fd)
    os.unlink(path)
PY
}

bench_have_mxkeepd() { [ -x "$MXKEEPD" ]; }

# The unprivileged user mxkeepd runs as when started by root.
bench_user() {
    if [ -n "${BENCH_USER:-}" ]; then echo "$BENCH_USER"
    elif id mxkeep >/dev/null 2>&1; then echo mxkeep
    else echo nobody
    fi
}

# bench_mxkeepd_conf DIR PORT PRIMARYPORT [LIMITS] [DELIVERY]
# Writes DIR/mxkeep.conf serving example.org with its primary at
# [127.0.0.1]:PRIMARYPORT; LIMITS and DELIVERY replace the default blocks'
# contents.  Prints the path.
bench_mxkeepd_conf() {
    local dir=$1 port=$2 pport=$3
    local limits=${4:-'message_size = 52428800; recipients = 1000; connections = 1000; per_client = 200;'}
    local delivery=${5:-'probe_min = "30s"; probe_max = "15m"; max_connections = 20;'}
    local user_line=""
    mkdir -p "$dir/spool" "$dir/run"
    if [ "$(id -u)" = 0 ]; then
        local u
        u=$(bench_user)
        user_line="user = \"$u\";"
        chown "$u" "$dir/spool" "$dir/run"
    fi
    cat >"$dir/mxkeep.conf" <<EOF
# Written by bench/lib.sh for one benchmark run.
hostname = "mx2.bench.example.net";
listen = ( { address = "127.0.0.1"; port = $port; } );
spool = "$dir/spool";
$user_line
etrn = { allow = ( "127.0.0.0/8" ); };
limits = { $limits };
delivery = { $delivery };
domains = ( { name = "example.org"; primary = "[127.0.0.1]:$pport"; tls = "none"; } );
control = { socket = "$dir/run/mxkeep.sock"; };
EOF
    echo "$dir/mxkeep.conf"
}

# bench_mxkeepd_start CONF PORT LOG: start mxkeepd in the foreground with a
# raised descriptor limit; sets MXKEEPD_PID.
bench_mxkeepd_start() {
    local conf=$1 port=$2 log=$3 nofile hard
    hard=$(ulimit -Hn)
    nofile=$MXKEEPD_NOFILE
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$nofile" ]; then nofile=$hard; fi
    (ulimit -n "$nofile" && exec "$MXKEEPD" -c "$conf" -f) >"$log" 2>&1 &
    MXKEEPD_PID=$!
    bench_track "$MXKEEPD_PID"
    if ! bench_wait_greeting "$port" "$START_TIMEOUT"; then
        tail -5 "$log" >&2
        bench_die "mxkeepd did not start on port $port (see $log)"
    fi
}

# bench_mxkeepd_count CONF: messages in mxkeepd's spool.  Uses mxkeepctl
# when it answers; otherwise counts committed bodies under spool/msg.  Fails,
# printing nothing, when neither works.  bench_mxkeepd_count_how says which
# (a separate call, as counts are usually taken in a command substitution).
bench_mxkeepctl_count() {
    local out
    [ -x "$MXKEEPCTL" ] || return 1
    out=$("$MXKEEPCTL" -c "$1" count 2>/dev/null) || return 1
    out=$(printf '%s\n' "$out" | awk 'match($0, /[0-9]+/) { print substr($0, RSTART, RLENGTH); exit }')
    [ -n "$out" ] && echo "$out"
}

# bench_mxkeepctl_stat CONF NAME: one counter of `mxkeepctl stats` (the
# first line whose name contains NAME), or fails printing nothing.
bench_mxkeepctl_stat() {
    local out
    [ -x "$MXKEEPCTL" ] || return 1
    out=$("$MXKEEPCTL" -c "$1" stats 2>/dev/null) || return 1
    out=$(printf '%s\n' "$out" | awk -v n="$2" 'index($1, n) && $NF ~ /^[0-9]+$/ { print $NF; exit }')
    [ -n "$out" ] && echo "$out"
}

bench_mxkeepd_count() {
    local spool
    bench_mxkeepctl_count "$1" && return 0
    spool=$(dirname "$1")/spool
    [ -d "$spool/msg" ] || return 1
    find "$spool/msg" -type f | wc -l
}

bench_mxkeepd_count_how() {
    if bench_mxkeepctl_count "$1" >/dev/null; then
        echo "mxkeepctl count"
    elif [ -d "$(dirname "$1")/spool/msg" ]; then
        echo "body files under spool/msg: mxkeepctl count unavailable"
    else
        echo "no way to count"
    fi
}

# bench_wait_count CMD TARGET OP SECONDS: poll CMD (prints a number) until
# "value OP TARGET" holds (OP: ge or eq); 0 when it did in time.
bench_wait_count() {
    local cmd=$1 target=$2 op=$3 end=$((SECONDS + $4)) v
    while :; do
        v=$(eval "$cmd")
        if [ -n "$v" ] && [ "$v" "-$op" "$target" ]; then return 0; fi
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep "$POLL_INTERVAL"
    done
}

# bench_etrn PORT DOMAIN: send ETRN, print the reply line.
bench_etrn() {
    python3 - "$1" "$2" <<'EOF'
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="bench.example.net", timeout=30)
s.ehlo()
code, msg = s.docmd("ETRN", sys.argv[2])
print(code, msg.decode(errors="replace"))
try:
    s.quit()
except smtplib.SMTPException:
    pass
EOF
}
