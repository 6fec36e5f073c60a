#!/bin/bash
# bench/postfix-backup-mx.sh - a private Postfix instance set up as a backup
# MX for example.org, the yardstick the benchmarks hold mxkeepd against.
#
#   postfix-backup-mx.sh start DIR PORT PRIMARYPORT   listen on 127.0.0.1:PORT
#   postfix-backup-mx.sh stop DIR
#   postfix-backup-mx.sh flush DIR                    postqueue -f
#   postfix-backup-mx.sh count DIR                    messages in its queue
#
# Or source it and call pfbmx_start, pfbmx_stop, pfbmx_flush, pfbmx_count.
#
# Owns: DIR/etc (config_directory), DIR/queue (queue_directory), DIR/data
# (data_directory), DIR/maillog.  The instance relays for example.org only,
# to [127.0.0.1]:PRIMARYPORT with no DNS; the benchmark client (127.0.0.1)
# is deliberately outside mynetworks, so it is treated as any stranger on
# the Internet is: relay_domains and relay_recipient_maps decide.
# Never: touches /etc/postfix, /var/spool/postfix or the system instance;
# listens anywhere but loopback.
# Needs root (Postfix's master does); the daemons run as "postfix".

PFBMX_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PFBMX_POSTFIX=${PFBMX_POSTFIX:-/usr/sbin/postfix}
PFBMX_POSTQUEUE=${PFBMX_POSTQUEUE:-/usr/sbin/postqueue}
PFBMX_POSTCONF=${PFBMX_POSTCONF:-/usr/sbin/postconf}

# The queues a message can sit in before it leaves the instance.
PFBMX_QUEUES="maildrop incoming active deferred hold"

pfbmx_start() {
    local dir=$1 port=$2 pport=$3
    [ "$(id -u)" = 0 ] || { echo "postfix-backup-mx: needs root" >&2; return 1; }
    mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
    # The daemons run as postfix and chdir into the queue directory.
    chmod 755 "$dir" "$dir/etc" "$dir/queue"
    chown postfix "$dir/data"
    : >"$dir/maillog"
    chown postfix "$dir/maillog"

    cat >"$dir/etc/main.cf" <<EOF
# Written by bench/postfix-backup-mx.sh: backup MX for example.org.
compatibility_level = 3.6
config_directory = $dir/etc
queue_directory = $dir/queue
data_directory = $dir/data
myhostname = backup.bench.example.net
mydomain = bench.example.net
myorigin = \$myhostname
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
# TEST-NET-1: contains nothing on this machine, so 127.0.0.1 is a stranger.
mynetworks = 192.0.2.0/24
relay_domains = example.org
relay_recipient_maps = inline:{ @example.org=ok }
transport_maps = inline:{ example.org=smtp:[127.0.0.1]:$pport }
smtp_dns_support_level = disabled
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions =
smtpd_banner = \$myhostname ESMTP
biff = no
syslog_name = postfix-bench
maillog_file = $dir/maillog
EOF
    # PFBMX_EXTRA: more main.cf lines (bench/accept-milter: smtpd_milters)
    if [ -n "${PFBMX_EXTRA:-}" ]; then printf '%s\n' "$PFBMX_EXTRA" >>"$dir/etc/main.cf"; fi

    sed "s/@PORT@/$port/" "$PFBMX_DIR/postfix-master.cf" >"$dir/etc/master.cf"

    "$PFBMX_POSTFIX" -c "$dir/etc" check >>"$dir/maillog.start" 2>&1 || true
    if ! "$PFBMX_POSTFIX" -c "$dir/etc" start >>"$dir/maillog.start" 2>&1; then
        cat "$dir/maillog.start" >&2
        return 1
    fi
}

pfbmx_stop() {
    local dir=$1
    [ -f "$dir/etc/main.cf" ] || return 0
    "$PFBMX_POSTFIX" -c "$dir/etc" status >/dev/null 2>&1 || return 0
    "$PFBMX_POSTFIX" -c "$dir/etc" stop >/dev/null 2>&1
}

pfbmx_flush() {
    "$PFBMX_POSTQUEUE" -c "$1/etc" -f
}

# Every queue file, whichever queue it is in; hashed subdirectories included.
pfbmx_count() {
    local dir=$1 q paths=()
    for q in $PFBMX_QUEUES; do
        [ -d "$dir/queue/$q" ] && paths+=("$dir/queue/$q")
    done
    [ ${#paths[@]} -eq 0 ] && { echo 0; return 0; }
    find "${paths[@]}" -type f 2>/dev/null | wc -l
}

# Run as a command unless sourced.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -u
    cmd=${1:-}
    case "$cmd" in
        start) [ $# -eq 4 ] || { echo "usage: $0 start DIR PORT PRIMARYPORT" >&2; exit 2; }
               pfbmx_start "$2" "$3" "$4" ;;
        stop)  [ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }
               pfbmx_stop "$2" ;;
        flush) [ $# -eq 2 ] || { echo "usage: $0 flush DIR" >&2; exit 2; }
               pfbmx_flush "$2" ;;
        count) [ $# -eq 2 ] || { echo "usage: $0 count DIR" >&2; exit 2; }
               pfbmx_count "$2" ;;
        *) echo "usage: $0 start|stop|flush|count DIR [PORT PRIMARYPORT]" >&2; exit 2 ;;
    esac
fi
