"""A TCP proxy on loopback in front of redis-server, whose connections a test can cut.

    with tcp_proxy(redis_server.port) as proxy:
        url = redis_server.url(...).replace(f":{redis_server.port}/", f":{proxy.port}/")
        proxy.pause(); proxy.resume()   # a network cut TCP rides out: data late, never lost
        proxy.silence(port)             # one connection goes silent for good, others carry on
        proxy.blackhole()               # every connection, old and new, silent for good

Each client connection gets its own upstream connection to the target; Redis sees the client
at the upstream socket's local port (`CLIENT LIST` addr), which is how a test names the one
connection to silence (`upstream_ports`). Silent means no RST and no FIN: the peer's writes are
accepted and dropped, its reads wait forever, as behind a dead NAT entry or a partition.
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

POLL_SECONDS = 0.05
"""How often a connection's thread looks at the proxy's state while nothing arrives."""


class _Link:
    """One proxied connection: the client's socket, its upstream socket, and whether dropped."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.dropped = threading.Event()

    @property
    def upstream_port(self) -> int:
        return int(self.upstream.getsockname()[1])


class TcpProxy:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`target_port`, until told to pause or drop."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.running = threading.Event()  # cleared while paused: nothing is read or forwarded
        self.running.set()
        self.blackholed = threading.Event()
        self.closed = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(POLL_SECONDS)
        self.port = int(self.server.getsockname()[1])
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._idle: list[socket.socket] = []  # accepted while blackholed, never answered
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def pause(self) -> None:
        """Stop moving bytes on every connection, and hold new ones: a network cut.

        Nothing is read, so nothing is lost: the kernels buffer what the peers send, and it
        all arrives after `resume`, as after a cut that TCP's retransmissions rode out.
        """
        self.running.clear()

    def resume(self) -> None:
        """Move bytes again, including everything sent during the pause."""
        self.running.set()

    def silence(self, upstream_port: int) -> None:
        """From now on drop what either side of that one connection sends; keep it open."""
        with self._lock:
            links = [link for link in self._links if link.upstream_port == upstream_port]
        if not links:
            msg = f"no proxied connection leaves from port {upstream_port}"
            raise LookupError(msg)
        for link in links:
            link.dropped.set()

    def blackhole(self) -> None:
        """Drop everything, in both directions, on old and new connections."""
        self.blackholed.set()
        with self._lock:
            for link in self._links:
                link.dropped.set()

    def upstream_ports(self) -> set[int]:
        """Local ports of the upstream connections: Redis's `addr` of each proxied client."""
        with self._lock:
            return {link.upstream_port for link in self._links}

    def close(self) -> None:
        """Close every socket and wait for the threads (bounded)."""
        self.closed.set()
        self.running.set()
        with self._lock:
            sockets = [self.server, *self._idle]
            for link in self._links:
                sockets += [link.client, link.upstream]
        for thread in self._threads:
            thread.join(timeout=2)
        for sock in sockets:
            sock.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.blackholed.is_set():
                with self._lock:
                    self._idle.append(client)
                continue
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, client: socket.socket) -> None:
        """Connect upstream once not paused, then pump both ways until either side closes."""
        while not self.running.wait(POLL_SECONDS):
            if self.closed.is_set():
                client.close()
                return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()  # the target is down: the client sees its connection refused
            return
        link = _Link(client, upstream)
        with self._lock:
            self._links.append(link)
        if self.blackholed.is_set():
            link.dropped.set()
        self._pump(link)

    def _pump(self, link: _Link) -> None:
        peers = {link.client: link.upstream, link.upstream: link.client}
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                sock.setblocking(True)
                selector.register(sock, selectors.EVENT_READ)
            while not self.closed.is_set():
                if not self.running.wait(POLL_SECONDS):
                    continue  # paused: leave the bytes in the kernel's buffers
                for key, _ in selector.select(POLL_SECONDS):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    if not self._move(source, peers[source], link):
                        if not link.dropped.is_set():  # a silenced peer hears no close either
                            self._hang_up(link)
                        return

    def _move(self, source: socket.socket, sink: socket.socket, link: _Link) -> bool:
        """Forward one read (or drop it); False once either side closed or failed."""
        try:
            data = source.recv(65536)
        except OSError:
            return False
        if not data:
            return False
        if link.dropped.is_set():
            return True
        try:
            sink.sendall(data)
        except OSError:
            return False
        return True

    def _hang_up(self, link: _Link) -> None:
        """Pass a close on: the other side sees the connection end, as it would without us."""
        for sock in (link.client, link.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@contextmanager
def tcp_proxy(target_port: int) -> Iterator[TcpProxy]:
    """Yield a TcpProxy in front of `target_port` for the block's duration, then close it."""
    proxy = TcpProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
