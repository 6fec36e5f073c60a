#!/usr/bin/env python3
# 14-per-client: issue 7.15.  Postfix's smtp-source with 20 and with 40
# parallel sessions, 10,000 messages each (one message per connection, as
# a Postfix sender falling back to the backup does), against the default
# config: no 421 at the banner, every message queued.  Then the per-client
# limit set to exactly the concurrency (20 sessions, per_client 20): a
# session that answered QUIT no longer counts, so a client that reconnects
# at once is still let in.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

MESSAGES = 10000
EXACT_MESSAGES = 3000       # the per_client == sessions run
SOURCE_TIMEOUT = 240        # seconds for one smtp-source run


def counter(srv, name):
    r = srv.ctl("--json", "stats")
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.decode("utf-8")).get(name)


def source(srv, sessions, messages):
    t0 = time.monotonic()
    r = run([SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-f", "src@example.com",
             "-t", "user@example.org", "-M", "source.example.com", "127.0.0.1:%d" % srv.port],
            timeout=SOURCE_TIMEOUT)
    return r, time.monotonic() - t0


def check_run(srv, sessions, messages, what):
    before = counter(srv, "messages_accepted_total") or 0
    refused0 = counter(srv, "smtpd_connections_refused_total") or 0
    mark = len(srv.log())
    r, took = source(srv, sessions, messages)
    err = (r.stdout + r.stderr).decode("latin-1")
    is_(r.returncode, 0, "%s: smtp-source -s %d -m %d exit 0 (%.1fs)" % (what, sessions, messages, took))
    unlike(err, r"421", "%s: smtp-source saw no 421" % what)
    if r.returncode != 0:
        diag(err[-1500:])
    is_((counter(srv, "messages_accepted_total") or 0) - before, messages,
        "%s: %d messages accepted" % (what, messages))
    is_((counter(srv, "smtpd_connections_refused_total") or 0) - refused0, 0,
        "%s: no connection refused" % what)
    unlike(srv.log()[mark:], r"too many connections", "%s: log has no 'too many connections'" % what)


def main():
    require_binaries()
    if not os.access(SMTP_SOURCE, os.X_OK):
        skip_all("no smtp-source (Postfix) at %s" % SMTP_SOURCE)
    # Held: nothing is delivered, the test is about the inbound side only.
    srv = Server(domains=[{"name": "example.org", "hold": True}])
    srv.start()
    r = srv.ctl("--json", "stats")
    ok(r.returncode == 0 and "messages_accepted_total" in r.stdout.decode("utf-8"),
       "mxkeepctl stats answers")
    check_run(srv, 20, MESSAGES, "default config, 20 sessions")
    check_run(srv, 40, MESSAGES, "default config, 40 sessions")
    srv.stop()

    # per_client exactly the concurrency: only freeing the slot when the
    # 221 is queued (or the peer closes) lets the reconnects in.
    tight = Server(domains=[{"name": "example.org", "hold": True}], limits={"per_client": 20})
    tight.start()
    check_run(tight, 20, EXACT_MESSAGES, "per_client 20, 20 sessions")


run_main(main)
