#!/usr/bin/env python3
# 22-status-chromium: /status rendered by a real browser (Debian's
# chromium, headless; build.sh installs it, this test installs nothing).
# A screenshot must come out as a real PNG of the asked size, and the DOM
# chromium built must hold every domain with its state and the SVG chart.
# MXTEST_SCREENSHOT=path keeps a copy of the screenshot for people.
import os
import shutil
import struct
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1280, 900
BROWSER_TIMEOUT = 90        # seconds for one chromium run (first start is slow)
MIN_PNG_BYTES = 10000       # a blank page of this size compresses to far less
PNG_SIG = b"\x89PNG\r\n\x1a\n"
N_DOWN = 6


def chromium(profile, *args):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--user-data-dir=" + profile] + list(args)
    return run(cmd, timeout=BROWSER_TIMEOUT)


def png_size(data):
    """(width, height) from the IHDR chunk, or None."""
    if len(data) < 24 or not data.startswith(PNG_SIG) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def main():
    if not os.access(CHROMIUM, os.X_OK):
        skip_all("no %s (build.sh installs the chromium package)" % CHROMIUM)
    require_binaries()
    sink = SmtpSink().start()
    down_port = free_port()
    mport = free_port()
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.1]:%d" % sink.port},
        {"name": "down.test", "primary": "[127.0.0.1]:%d" % down_port},
        {"name": "held.test", "primary": "[127.0.0.1]:%d" % down_port, "hold": True},
        {"name": "quiet.test", "primary": "[127.0.0.1]:%d" % down_port},
    ], settings={"delivery": fast_delivery(),
                 "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()
    send_batch(srv, 3, rcpt="user@example.org", tag="up")
    send_batch(srv, N_DOWN, rcpt="user@down.test", tag="down", size=3000)
    send_batch(srv, 2, rcpt="user@held.test", tag="held")
    ok(wait_for(lambda: sink.count() >= 3, 15), "example.org delivered to the sink")
    ok(wait_log(srv, r"destination down\.test: \w+ -> down", 15) is not None, "down.test is down")
    # Restart so the start-up sample sees the backlog: the chart has a point
    # with mail in it (the minute timer is too slow for a test).
    srv.restart()
    mark = srv.log().rfind("=== start 2 ===")
    ok(wait_log(srv, r"destination down\.test: (\w+ -> down|still down)", 15, since=mark)
       is not None, "down.test probed and down again after the restart")
    send_batch(srv, 1, rcpt="user@example.org", tag="up-again")
    ok(wait_for(lambda: sink.count() >= 4, 15), "example.org up again: one more at the sink")

    url = "http://127.0.0.1:%d/status" % mport
    work = tempfile.mkdtemp(prefix="chromium.")
    try:
        shot = os.path.join(work, "status.png")
        r = chromium(os.path.join(work, "profile"), "--screenshot=" + shot,
                     "--window-size=%d,%d" % (WIDTH, HEIGHT), url)
        is_(r.returncode, 0, "chromium --screenshot exits 0")
        if r.returncode != 0:
            diag(r.stderr.decode("utf-8", "replace")[-2000:])
        data = b""
        if os.path.exists(shot):
            with open(shot, "rb") as f:
                data = f.read()
        ok(data.startswith(PNG_SIG), "the screenshot is a PNG")
        is_(png_size(data), (WIDTH, HEIGHT), "IHDR: %dx%d" % (WIDTH, HEIGHT))
        ok(len(data) > MIN_PNG_BYTES, "the screenshot is not blank (%d bytes)" % len(data))
        keep = os.environ.get("MXTEST_SCREENSHOT")
        if keep and data:
            shutil.copyfile(shot, keep)
            diag("screenshot kept in %s" % keep)

        r = chromium(os.path.join(work, "profile2"), "--dump-dom", url)
        is_(r.returncode, 0, "chromium --dump-dom exits 0")
        dom = r.stdout.decode("utf-8", "replace")
        like(dom, r"<svg[^>]*id=\"backlog-chart\"", "the rendered DOM has the SVG chart")
        like(dom, r"<polyline[^>]*points=\"[0-9.]+,[0-9.]+", "the chart has a plotted line")
        like(dom, r"mxkeep on " + re.escape(HOSTNAME), "the header names the host")
        for dom_name, state in (("example.org", "up"), ("down.test", "down"),
                                ("held.test", "held"), ("quiet.test", "unknown")):
            like(dom, r'<tr data-domain="%s" data-state="%s"><td>%s' %
                 (re.escape(dom_name), state, re.escape(dom_name)),
                 "row for %s in the DOM" % dom_name)
            like(dom, r'data-domain="%s".*?<span class="badge b-%s">%s</span>' %
                 (re.escape(dom_name), state, state), "%s shows a %s badge" % (dom_name, state))
        like(dom, r'data-domain="down\.test"[^\n]*<td class="num">%d</td>' % N_DOWN,
             "down.test shows %d messages" % N_DOWN)
        like(dom, r'<text[^>]*>down\.test \(%d\)</text>' % N_DOWN,
             "the legend names down.test with its backlog")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    is_(srv.stop(), 0, "mxkeepd exits 0 on SIGTERM")


run_main(main)
