"""The kubelet's log endpoint for the pod runner's pods: `kubectl logs` through an API server.

The API server answers `kubectl logs` (and every client of the pods/log subresource) by calling
`https://<node address>:<kubeletEndpoint port>/containerLogs/<ns>/<pod>/<container>` on the
pod's node. This server answers that path from the container's log files, with the query
parameters clients use: `previous`, `tailLines`, `limitBytes` and `follow` (streams until the
container's run ends). It listens on 127.0.0.1 only, with a self-signed certificate: an API
server without `--kubelet-certificate-authority` does not verify a kubelet's serving cert.
"""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from .kubelet import Container

FOLLOW_POLL_SECONDS = 0.2

ContainerLookup = Callable[[str, str, str], Container | None]
"""(namespace, pod, container) -> the container, or None when the node has no such thing."""


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """Write a key and a self-signed certificate for 127.0.0.1; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / "kubelet.key", folder / "kubelet.crt"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=podrunner-kubelet", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    key.chmod(0o600)
    return key, cert


def log_text(container: Container, previous: bool, tail_lines: int | None) -> bytes:
    """Return a container's log (current or previous run), optionally only its last lines."""
    data = container.logs(previous=previous).encode()
    if tail_lines is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-tail_lines:] if tail_lines > 0 else [])
    return data


class LogServer:
    """An HTTPS server on 127.0.0.1 answering the kubelet's /containerLogs path."""

    def __init__(self, find: ContainerLookup, state_dir: Path) -> None:
        """Listen on a free port of 127.0.0.1 (see port) and serve in a daemon thread."""
        key, cert = self_signed_certificate(state_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        handler = type("Handler", (LogRequestHandler,), {"find": staticmethod(find)})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="podrunner-logs", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


class LogRequestHandler(http.server.BaseHTTPRequestHandler):
    """GET /containerLogs/<namespace>/<pod>/<container>; 404 for anything else."""

    find: ContainerLookup

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""

    def do_GET(self) -> None:
        """Answer one log request (streaming when follow=true)."""
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        container = (
            self.find(*parts[1:4]) if len(parts) == 4 and parts[0] == "containerLogs" else None
        )
        if container is None:
            self.send_error(404, "no such container on this node")
            return
        query = urllib.parse.parse_qs(url.query)
        flag = lambda name: query.get(name, ["false"])[0] == "true"  # noqa: E731
        tail = int(query["tailLines"][0]) if "tailLines" in query else None
        limit = int(query["limitBytes"][0]) if "limitBytes" in query else None
        data = log_text(container, flag("previous"), tail)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        if limit is not None:
            data = data[:limit]
        self.wfile.write(data)
        if flag("follow") and not flag("previous"):
            self.follow(container, len(container.logs().encode()), limit, len(data))

    def follow(self, container: Container, offset: int, limit: int | None, sent: int) -> None:
        """Stream what the current run writes until it ends (or the client goes away)."""
        run = container.current
        if run is None:
            return
        with run.log_path.open("rb") as log:
            log.seek(offset)
            while True:
                running = run.process.launcher.poll() is None
                chunk = log.read()
                if chunk:
                    if limit is not None:
                        chunk = chunk[: max(0, limit - sent)]
                    sent += len(chunk)
                    try:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    except OSError:
                        return
                if not running or (limit is not None and sent >= limit):
                    return
                time.sleep(FOLLOW_POLL_SECONDS)
