#!/usr/bin/env python3
# run-all: alone (a next probe time read from /metrics is compared with the clock seconds later)
# 21-metrics: the HTTP listener.  Known traffic (accepted, relay and
# unknown-user rejections, deliveries to a sink, one bounce from a primary
# answering 550, mail kept for a down and a held destination) and then
# /metrics checked value by value, the per-domain queue gauges against
# mxkeepctl --json summary, the methods (HEAD without a body, POST/PUT 405),
# the redirect and 404, and /status showing every domain and its state with
# peer text escaped.
import http.client
import shutil
import subprocess
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

N_OK = 5            # to example.org, delivered to the sink
N_DOWN = 4          # to down.test, kept (nothing listens)
N_RELAY = 3         # RCPT for a domain we do not serve
N_UNKNOWN = 2       # RCPT for a user not in example.org's list
EVIL = '<b id="x">evil</b> & co'
HTTP_TIMEOUT = 10


def fetch(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
    finally:
        c.close()


LINE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_prom(text):
    """{(name, ((label, value), ...)): float}, {name: type}, problems."""
    samples, types, helps, problems = {}, {}, set(), []
    for ln in text.split("\n"):
        if ln == "":
            continue
        if ln.startswith("# HELP "):
            helps.add(ln.split(" ")[2])
            continue
        if ln.startswith("# TYPE "):
            _, _, name, typ = ln.split(" ", 3)
            if name in types:
                problems.append("TYPE twice for " + name)
            types[name] = typ
            continue
        m = LINE_RE.match(ln)
        if not m:
            problems.append("bad line: " + ln)
            continue
        name, _, lab, val = m.groups()
        labels = []
        if lab:
            pos = 0
            while pos < len(lab):
                lm = LABEL_RE.match(lab, pos)
                if not lm:
                    problems.append("bad labels: " + ln)
                    break
                labels.append((lm.group(1), lm.group(2)))
                pos = lm.end()
        fam = family_of(name, types)
        if fam not in types or fam not in helps:
            problems.append("sample before its HELP/TYPE: " + name)
        key = (name, tuple(sorted(labels)))
        if key in samples:
            problems.append("duplicate sample: " + ln)
        samples[key] = float(val)
    return samples, types, problems


NAME_RE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*$')


def family_of(name, types):
    """A histogram's samples are FAMILY_bucket, FAMILY_sum, FAMILY_count."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[:-len(suffix)]
        if name.endswith(suffix) and types.get(base) == "histogram":
            return base
    return name


def strict_problems(text):
    """What promtool check metrics would reject, or our own naming rules:
    HELP and TYPE exactly once per family and before its samples, valid
    names, counters ending _total and no gauge ending _total, every sample
    of a family together."""
    problems, helps, types, closed = [], {}, {}, set()
    current = None
    for ln in text.split("\n"):
        if ln == "":
            continue
        if ln.startswith("# HELP ") or ln.startswith("# TYPE "):
            parts = ln.split(" ", 3)
            if len(parts) < 4:
                problems.append("short comment: " + ln)
                continue
            kind, name = parts[1], parts[2]
            if not NAME_RE.match(name):
                problems.append("bad family name: " + name)
            seen = helps if kind == "HELP" else types
            if name in seen:
                problems.append("%s twice for %s" % (kind, name))
            seen[name] = parts[3]
            if current != name:
                if name in closed:
                    problems.append("family %s split" % name)
                if current is not None:
                    closed.add(current)
                current = name
            continue
        if ln.startswith("#"):
            continue
        m = LINE_RE.match(ln)
        if not m:
            problems.append("bad line: " + ln)
            continue
        if family_of(m.group(1), types) != current:
            problems.append("sample outside its family block: " + ln)
    for name, typ in types.items():
        if typ not in ("counter", "gauge", "histogram", "summary", "untyped"):
            problems.append("bad type %s for %s" % (typ, name))
        if typ == "counter" and not name.endswith("_total"):
            problems.append("counter without _total: " + name)
        if typ == "gauge" and name.endswith("_total"):
            problems.append("gauge ending _total: " + name)
        if name not in helps:
            problems.append("TYPE without HELP: " + name)
    return problems


def main():
    require_binaries()
    sink = SmtpSink().start()
    fake = FakeSMTP(host="127.0.0.2", rcpt=lambda a: "550 5.1.1 <%s>: no such user" % a)
    fake.start()
    evil = FakeSMTP(host="127.0.0.2", name="evil.test")
    evil.greeting = "421 4.3.2 " + EVIL
    evil.start()
    down_port = free_port()
    mport = free_port()
    srv = Server(domains=[
        {"name": "example.org", "primary": "[127.0.0.1]:%d" % sink.port,
         "recipients": ["user@example.org", "other@example.org"]},
        {"name": "bounce.test", "primary": "[127.0.0.2]:%d" % fake.port},
        {"name": "down.test", "primary": "[127.0.0.1]:%d" % down_port},
        {"name": "evil.test", "primary": "[127.0.0.2]:%d" % evil.port},
        {"name": "held.test", "primary": "[127.0.0.1]:%d" % down_port, "hold": True},
        {"name": "idle.test", "primary": "[127.0.0.1]:%d" % down_port},
    ], settings={"delivery": fast_delivery(),
                 "metrics": {"address": "127.0.0.1", "port": mport}})
    srv.start()
    t_start = time.time()
    nconn = 0

    st, hd, body = fetch(mport, "GET", "/metrics")
    is_(st, 200, "GET /metrics answers 200 right after start")
    like(hd.get("content-type", ""), r"^text/plain; version=0\.0\.4", "Prometheus content type")

    # --- traffic ---
    c = srv.raw()
    nconn += 1
    c.ehlo()
    for i in range(N_OK):
        rs = c.transaction("sender@example.com", ["user@example.org"], make_message("ok%d" % i))
        is_(rs[-1].code, 250, "message %d to example.org accepted" % i)
    for i in range(N_DOWN):
        rs = c.transaction("sender@example.com", ["u@down.test"],
                           make_message("down%d" % i, size=1000 + 100 * i))
        is_(rs[-1].code, 250, "message %d to down.test accepted" % i)
    rs = c.transaction("sender@held.test", ["u@bounce.test"], make_message("bounce"))
    is_(rs[-1].code, 250, "message to bounce.test accepted (its DSN goes to held.test)")
    rs = c.transaction("sender@example.com", ["u@evil.test"], make_message("evil"))
    is_(rs[-1].code, 250, "message to evil.test accepted")
    c.cmd("QUIT")
    c.close()
    n_accepted = N_OK + N_DOWN + 2

    # Each kind of rejection in its own session, so no error limit is near.
    for addrs, code, what in ((["x%d@not-ours.test" % i for i in range(N_RELAY)], 554, "relay"),
                              (["nobody%d@example.org" % i for i in range(N_UNKNOWN)], 550,
                               "unknown user")):
        c = srv.raw()
        nconn += 1
        c.ehlo()
        is_(c.cmd("MAIL FROM:<sender@example.com>").code, 250, "MAIL for the %s test" % what)
        codes = [c.cmd("RCPT TO:<%s>" % a).code for a in addrs]
        ok(all(x is not None and x // 100 == 5 for x in codes), "%s refused 5xx: %s" % (what, codes))
        c.cmd("RSET")
        c.cmd("QUIT")
        c.close()

    # --- let delivery settle ---
    ok(wait_for(lambda: sink.count() >= N_OK, 15), "the sink got the %d example.org messages" % N_OK)
    ok(wait_for(lambda: any(code == 550 for _, code in fake.rcpt_log), 15),
       "the fake primary answered 550 to bounce.test")
    ok(wait_log(srv, r"destination down\.test: \w+ -> down", 15) is not None, "down.test is down")
    ok(wait_log(srv, r"destination evil\.test: \w+ -> down", 15) is not None, "evil.test is down")

    def settled():
        s = summary(srv)
        return (s.get("example.org", {}).get("messages", 0) == 0 and
                s.get("bounce.test", {}).get("messages", 0) == 0 and
                s.get("held.test", {}).get("messages") == 1 and
                s.get("down.test", {}).get("messages") == N_DOWN)
    ok(wait_for(settled, 15, 0.2), "queue settled: down.test %d, held.test 1 (the DSN)" % N_DOWN)
    time.sleep(1.0)                 # a probe may still be writing its outcome

    # One session open while scraping: the inbound gauge must see it.
    hold_open = srv.raw()
    nconn += 1
    hold_open.ehlo()
    st, hd, body = fetch(mport, "GET", "/metrics")
    summ = summary(srv)
    is_(st, 200, "GET /metrics 200")
    text = body.decode("utf-8")
    samples, types, problems = parse_prom(text)
    is_(problems, [], "exposition format parses: HELP/TYPE before samples, no duplicates")

    def v(name, **labels):
        return samples.get(("mxkeep_" + name, tuple(sorted(labels.items()))))

    log = srv.log()
    sizes = [int(x) for x in re.findall(r"from=<[^>]*>, size=(\d+), nrcpt=\d+ \(queue active\)", log)]
    is_(len(sizes), n_accepted, "log: %d queue active lines" % n_accepted)
    # One family per thing counted, the reason or outcome as a label
    # (Prometheus naming: counters end in _total, units in the name).
    expect = [
        ("messages_accepted_total", {}, n_accepted),
        ("messages_accepted_bytes_total", {}, sum(sizes)),
        ("rejected_total", {"reason": "relay"}, N_RELAY),
        ("rejected_total", {"reason": "unknown_user"}, N_UNKNOWN),
        ("rejected_total", {"reason": "protocol"}, 0),
        ("rejected_total", {"reason": "size"}, 0),
        ("rejected_total", {"reason": "content"}, 0),
        ("rejected_total", {"reason": "storage"}, 0),
        ("rejected_total", {"reason": "limit"}, 0),
        ("recipients_total", {"outcome": "delivered"}, N_OK),
        ("recipients_total", {"outcome": "bounced"}, 1),
        ("recipients_total", {"outcome": "deferred"}, 0),
        ("recipients_total", {"outcome": "expired"}, 0),
        ("dsn_queued_total", {}, 1),
        ("etrn_started_total", {}, 0),
        ("smtpd_connections_total", {"result": "accepted"}, nconn + 1),  # + the start probe
        ("smtpd_connections_total", {"result": "refused"}, 0),
    ]
    for name, labels, want in expect:
        shown = "mxkeep_%s%s" % (name, "{%s}" % ",".join('%s="%s"' % kv for kv in labels.items())
                                 if labels else "")
        is_(v(name, **labels), float(want), "%s %d" % (shown, want))
        is_(types.get("mxkeep_" + name), "counter", "%s is a counter" % shown)
    for old in ("rejected_relay_total", "rejected_size_total", "recipients_delivered_total",
                "smtpd_connections_refused_total", "queue_messages_total"):
        ok(("mxkeep_" + old) not in types, "no old per-reason family mxkeep_%s" % old)
    ok(v("flush_seconds_total") is not None and v("flushes_total") is not None,
       "flush counters exported")
    ok((v("smtp_connections_total") or 0) >= 3, "outbound connections counted (%s)" %
       v("smtp_connections_total"))
    is_(v("inbound_sessions"), 1.0, "mxkeep_inbound_sessions 1 (one session held open)")
    is_(types.get("mxkeep_inbound_sessions"), "gauge", "inbound_sessions is a gauge")
    is_(v("spool_messages"), float(N_DOWN + 2),
        "mxkeep_spool_messages %d (down.test, the DSN, evil.test)" % (N_DOWN + 2))
    is_(types.get("mxkeep_spool_messages"), "gauge", "spool_messages is a gauge")
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                           timeout=30)
        is_((r.returncode, r.stdout + r.stderr), (0, b""), "promtool check metrics: clean")
    else:
        skip("promtool not installed (the strict check below stands in)")
    is_(strict_problems(text), [], "strict exposition check: HELP/TYPE once per family, "
        "names match [a-zA-Z_:][a-zA-Z0-9_:]*, counters end _total, gauges do not")
    up = v("uptime_seconds")
    ok(up is not None and 0 <= up <= time.time() - t_start + 2, "uptime_seconds plausible (%s)" % up)
    conns = sum(val for (n, _), val in samples.items() if n == "mxkeep_destination_connections")
    is_(v("outbound_connections"), conns, "outbound_connections = sum of per-destination ones")

    # Per-domain queue gauges = mxkeepctl --json summary.
    ok(len(summ) >= 4, "summary lists the destinations with records (%s)" % sorted(summ))
    for dom, row in sorted(summ.items()):
        is_(v("queue_messages", domain=dom), float(row["messages"]),
            "queue_messages{%s} = summary %d" % (dom, row["messages"]))
        is_(v("queue_bytes", domain=dom), float(row["bytes"]),
            "queue_bytes{%s} = summary %d" % (dom, row["bytes"]))
        age = v("queue_oldest_seconds", domain=dom)
        want = row.get("oldest_age") or 0
        ok(age is not None and abs(age - want) <= 2,
           "queue_oldest_seconds{%s} %s ~ summary %s" % (dom, age, want))
    down_bytes = sum(len(srv.body(q) or b"") for q in srv.qids()
                     if "down.test" in str(srv.show(q)))
    is_(v("queue_bytes", domain="down.test"), float(down_bytes),
        "queue_bytes{down.test} = the stored bodies (%d)" % down_bytes)
    ok((v("queue_oldest_seconds", domain="down.test") or 0) >= 1, "down.test's oldest is aging")
    is_(v("queue_messages", domain="idle.test"), 0.0, "a configured domain with no mail: 0")

    states = {"example.org": "up", "bounce.test": "up", "down.test": "down",
              "evil.test": "down", "held.test": "held"}
    for dom, want in states.items():
        got = {s: v("destination_state", domain=dom, state=s) for s in
               ("up", "down", "held", "unknown")}
        is_(got, {s: (1.0 if s == want else 0.0) for s in got},
            "destination_state{%s}: %s is 1, the others 0" % (dom, want))
    ok((v("destination_next_probe_timestamp_seconds", domain="down.test") or 0) > time.time() - 1,
       "down.test has a next probe time")
    hold_open.cmd("QUIT")
    hold_open.close()

    # --- methods and paths ---
    st, hd, body = fetch(mport, "HEAD", "/metrics")
    is_((st, body), (200, b""), "HEAD /metrics: 200, no body")
    ok(int(hd.get("content-length", "0")) > 1000, "HEAD gives the Content-Length of the GET")
    with socket.create_connection(("127.0.0.1", mport), timeout=HTTP_TIMEOUT) as s:
        s.sendall(b"HEAD /status HTTP/1.1\r\nHost: t\r\n\r\n"
                  b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    ok(head.startswith(b"HTTP/1.1 200") and rest.startswith(b"HTTP/1.1 404"),
       "HEAD sends headers only: the next response follows at once")
    for method in ("POST", "PUT", "DELETE"):
        st, hd, _ = fetch(mport, method, "/metrics", body=b"x=1")
        is_(st, 405, "%s /metrics: 405" % method)
        is_(hd.get("allow"), "GET, HEAD", "%s: Allow: GET, HEAD" % method)
    st, hd, _ = fetch(mport, "GET", "/")
    is_((st, hd.get("location")), (302, "/status"), "/ redirects to /status")
    for p in ("/nope", "/metrics/x", "/status.html"):
        st, _, _ = fetch(mport, "GET", p)
        is_(st, 404, "GET %s: 404" % p)
    st, _, _ = fetch(mport, "GET", "/metrics", headers={"X-Big": "a" * 20000})
    ok(st in (400, 413, 431), "oversized headers refused (%s)" % st)

    # --- /status ---
    st, hd, body = fetch(mport, "GET", "/status")
    page = body.decode("utf-8")
    is_(st, 200, "GET /status 200")
    like(hd.get("content-type", ""), r"^text/html", "HTML content type")
    like(hd.get("content-security-policy", ""), r"default-src 'none'", "CSP forbids fetches")
    like(page, r'<meta http-equiv="refresh" content="30">', "refreshes itself every 30 s")
    like(page, r"<svg[^>]*id=\"backlog-chart\"", "has the SVG chart")
    like(page, r"<polyline", "the chart has a line")
    unlike(page, r"(?i)<(script|link|img|iframe)\b|src=|href=\"http", "no scripts, no external assets")
    like(page, re.escape(HOSTNAME), "shows the hostname")
    for dom, want in dict(states, **{"idle.test": "unknown"}).items():
        like(page, r'data-domain="%s" data-state="%s"' % (re.escape(dom), want),
             "/status row for %s in state %s" % (dom, want))
    like(page, r'<span class="badge b-down">down</span>', "a red badge for down")
    unlike(page, re.escape(EVIL), "peer text not sent raw")
    like(page, re.escape("&lt;b id=&quot;x&quot;&gt;evil&lt;/b&gt; &amp; co"),
         "evil.test's greeting shown escaped")
    like(page, r'<table id="errors">.*evil\.test', "the error shows under recent errors")
    rows = re.findall(r'<tr data-domain="([^"]+)"', page)
    is_(rows[0], "down.test", "table sorted by oldest age: down.test first")

    is_(srv.stop(), 0, "mxkeepd exits 0 on SIGTERM")


def summary(srv):
    r = srv.ctl("--json", "summary")
    if r.returncode != 0:
        return {}
    return {d["domain"]: d for d in json.loads(r.stdout.decode("utf-8")).get("domains", [])}


run_main(main)
