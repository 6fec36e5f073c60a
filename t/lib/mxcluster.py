"""
mxcluster.py - a fleet of mxkeepd nodes for the t/integration/13x tests:
three nodes on 127.0.0.2, 127.0.0.3 and 127.0.0.4 (each its own temp dir,
spool, port and control socket) sharing one PostgreSQL (mxtest.Postgres).

What it owns: nothing beyond mxtest's Server and Postgres objects, which
clean up after themselves (atexit).  Every wait is bounded.
"""

import json
import os
import socket
import time

from mxtest import (Server, Postgres, Raw, REPLY_TIMEOUT, free_port_on, fast_delivery,
                    have_postgres, wait_for, etrn, ROOT)

NODE_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SCHEMA_CLUSTER = os.path.join(ROOT, "doc", "schema-cluster.sql")


class Node(Server):
    """One mxkeepd listening on its own loopback address."""

    def __init__(self, host, **kw):
        self.host = host
        super().__init__(**kw)

    def write_config(self, port=None):
        port = port or free_port_on(self.host)
        path = super().write_config(port)
        with open(path) as f:
            text = f.read()
        text = text.replace('listen = ( { address = "127.0.0.1";',
                            'listen = ( { address = "%s";' % self.host, 1)
        with open(path, "w") as f:
            f.write(text)
        return path

    def _probe(self):
        with socket.create_connection((self.host, self.port), timeout=2) as s:
            s.settimeout(2)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed before greeting")
                buf += chunk
            if not buf.startswith(b"220"):
                raise ConnectionError("greeting %r" % buf)
            s.sendall(b"QUIT\r\n")
            end = time.monotonic() + 2
            while time.monotonic() < end:
                if not s.recv(4096):
                    break
        time.sleep(0.05)

    def raw(self, timeout=REPLY_TIMEOUT, greet=True, source=None):
        c = Raw(self.port, host=self.host, timeout=timeout, source=source)
        if greet:
            c.greeting = c.reply()
        return c

    def summary(self):
        """This node's own view: {domain: messages} from mxkeepctl summary."""
        r = self.ctl("--json", "summary")
        if r.returncode != 0:
            return None
        return {d["domain"]: d["messages"] for d in json.loads(r.stdout.decode())["domains"]}

    def dest_state(self, domain):
        """The state this node's summary gives domain (None: not listed)."""
        r = self.ctl("--json", "summary")
        if r.returncode != 0:
            return None
        return {d["domain"]: d["state"] for d in json.loads(r.stdout.decode())["domains"]}.get(domain)

    def cluster_summary(self):
        """The fleet's view through this node: the parsed --json, or None."""
        r = self.ctl("--json", "cluster", "summary")
        if r.returncode != 0:
            return None
        return json.loads(r.stdout.decode())


def fleet(pg, domains, names=("mx2a", "mx2b", "mx2c"), interval="1s", pgsql_extra=None):
    """Three nodes (not started) sharing pg.  domains: the domain list every
    node serves (the same file on each, as a provider deploys it)."""
    nodes = []
    for host, name in zip(NODE_HOSTS, names):
        pgsql = {"name": "main", "conninfo": pg.conninfo(), "retry_max": "1s",
                 "connect_timeout": "2s", "query_timeout": "3s"}
        pgsql.update(pgsql_extra or {})
        nodes.append(Node(host, domains=[dict(d) for d in domains], name="mxnode",
                          settings={"delivery": fast_delivery(),
                                    "pgsql": [pgsql],
                                    "cluster": {"node": name, "pgsql": "main",
                                                "status_interval": interval}}))
    return nodes


def fleet_total(nodes, domain):
    """The sum of each running node's own count for domain."""
    total = 0
    for n in nodes:
        s = n.summary() or {}
        total += s.get(domain, 0)
    return total


def node_rows(pg, domain):
    """{node: messages} in node_status for domain."""
    return {r[0]: int(r[1]) for r in pg.psql(
        "SELECT node, messages FROM node_status WHERE domain = '%s'" % domain.replace("'", "''"))}


def wait_status(pg, domain, expect, timeout=15.0):
    """Wait until node_status holds exactly expect ({node: messages})."""
    return wait_for(lambda: node_rows(pg, domain) == expect, timeout, 0.2)
