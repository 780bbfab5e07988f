#!/usr/bin/python3
"""Stand-in for the redis_exporter image in end-to-end tests (no exporter binary exists here).

It accepts the rendered arguments, serves `/health` (what the sidecar's probes call) and a
minimal `/metrics` whose `redis_up` says whether the broker's port accepts a TCP connection.
It proves the sidecar's wiring (port, probes, mounted password map), not the exporter itself;
the alert rules are tested with promtool against recorded exporter output instead.
"""

import json
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def option(name: str, default: str) -> str:
    """Return the value of `--name=value` among the rendered arguments."""
    prefix = f"--{name}="
    return next((a[len(prefix) :] for a in sys.argv[1:] if a.startswith(prefix)), default)


LISTEN = option("web.listen-address", ":9121")
ADDRESS = urlsplit(option("redis.addr", "redis://localhost:6379"))
PASSWORD_FILE = option("redis.password-file", "")


def redis_up() -> int:
    """1 when the broker's port accepts a connection within a second."""
    try:
        with socket.create_connection((ADDRESS.hostname or "localhost", ADDRESS.port or 6379), 1):
            return 1
    except OSError:
        return 0


class Handler(BaseHTTPRequestHandler):
    """GET /health and /metrics."""

    def do_GET(self) -> None:
        """Answer the probes and a scrape."""
        if self.path == "/health":
            body = b"ok"
        elif self.path == "/metrics":
            body = f"redis_up {redis_up()}\n".encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: probe traffic would drown the pod's log."""


if __name__ == "__main__":
    if PASSWORD_FILE:
        json.loads(open(PASSWORD_FILE).read())  # the mounted password map must be readable JSON
    # As PID 1 of its container it gets no default SIGTERM action; the real exporter (a Go
    # program) exits on SIGTERM, so the broker pod's shutdown must not wait the grace period.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, _, port = LISTEN.rpartition(":")
    ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler).serve_forever()
