"""Ports for servers the tests start, and endpoints that misbehave on purpose.

port = free_port()                # for a server started next (redis-server --port, etcd, ...)
with silent_listener() as port:   # accepts TCP connections, never sends a byte
    ...
port = dead_port()                # connection refused
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    """Return a port on 127.0.0.1 for a server to bind next, kept from others for a minute.

    A port that is merely closed again can be taken before the server binds it: by another
    bind(0) or, more often, as the source port of any outgoing connection, and under pytest-xdist
    other workers open connections all the time. So the port is left in TIME_WAIT (one
    connection to it, closed by the accepting side first): the kernel then hands it to no
    bind(0) and no connect() until TIME_WAIT ends (60 s), while a server that binds it with
    SO_REUSEADDR, as redis-server, valkey-server and Go's listeners (etcd, the API server) do,
    gets it at once.
    """
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        address = listener.getsockname()
        with socket.create_connection(address, timeout=5):
            accepted, _ = listener.accept()
            accepted.close()  # the side that closes first holds TIME_WAIT, on `address`
        return int(address[1])


def dead_port() -> int:
    """Return a port on 127.0.0.1 that refuses connections (nothing listens, nobody takes it)."""
    return free_port()


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
