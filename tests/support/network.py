"""Endpoints that misbehave on purpose: a port nobody listens on, and a silent listener.

with silent_listener() as port:   # accepts TCP connections, never sends a byte
    ...
port = dead_port()                # connection refused
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def dead_port() -> int:
    """Return a port on 127.0.0.1 that refuses connections (bound a moment ago, now closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def silent_listener() -> Iterator[int]:
    """Yield the port of a listener that accepts every connection and never answers.

    This is what a hung server, a wrong Service port or a TLS endpoint spoken to in clear
    looks like to a client: the TCP handshake succeeds, then nothing.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_forever() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(connection)  # held open, never read nor written

    thread = threading.Thread(target=accept_forever, name="silent-listener", daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        server.close()
