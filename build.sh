#!/usr/bin/env bash
# build.sh - install what mxkeep needs on Debian 12, build it, and prepare
# the sample configuration (test certificate, mail user, var/).
# Safe to run again: each step is skipped when already done.
#   EXTRA_CONFIGURE="--enable-sanitizers CC=clang" ./build.sh   # sanitizer build
set -euo pipefail
cd "$(dirname "$0")"
top=$(pwd)

PKGS="build-essential autoconf automake libtool pkg-config libevent-dev libssl-dev liblmdb-dev
lmdb-utils libconfig-dev libc-ares-dev openssl python3 swaks postfix dnsmasq-base clang
libclang-rt-14-dev libnet-ssleay-perl faketime procps iproute2 ca-certificates chromium fetchmail jq
libpq-dev postgresql postgresql-client postfix-lmdb postfix-pgsql
libspf2-dev libopendkim-dev opendkim-tools python3-cryptography python3-milter rspamd"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "build.sh: missing packages:$missing (run as root to install them)" >&2
        exit 1
    fi
    # Postfix is a test peer and benchmark baseline only: install it without
    # configuring or starting a system instance.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ "$(id -u)" = 0 ] && ! getent passwd mxkeep >/dev/null; then
    useradd --system --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin mxkeep
fi

# A test certificate for the sample config's STARTTLS; never committed.
if [ ! -s etc/tls/key.pem ]; then
    mkdir -p etc/tls
    openssl req -x509 -newkey rsa:2048 -nodes -keyout etc/tls/key.pem -out etc/tls/cert.pem \
        -days 365 -subj "/CN=mx2.example.net" >/dev/null 2>&1
    chmod 600 etc/tls/key.pem
fi
mkdir -p var/run

[ -x configure ] && [ configure -nt configure.ac ] && [ Makefile.in -nt Makefile.am ] || autoreconf -fi >/dev/null 2>&1
if [ ! -f Makefile ] || [ configure -nt Makefile ]; then
    ./configure -q ${EXTRA_CONFIGURE:-}
fi
make -s -j"$(nproc)" all
make -s -j"$(nproc)" check TESTS= >/dev/null   # build the unit test programs too
