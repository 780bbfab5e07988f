"""Run a real redis-server for a test from a config text, and always stop it.

    with running_redis(broker_config()) as server:
        probe = server.client("probe", PROBE_PASSWORD)
        url = server.url("celery", CELERY_PASSWORD, db=0)

`running_redis` writes the config to `redis.conf` in a directory (a temporary one unless
given, so a test can restart a broker on the same data), starts the engine's server
(redis-server, or Valkey's valkey-server: tests/support/engines.py) on a free port
bound to 127.0.0.1, waits until it answers (a `-NOAUTH` reply counts: the server is up, the
test has not authenticated), and stops it on exit, SIGKILL if SIGTERM is not enough.
A missing redis-server is an error, never a skip: CI must not pass without a broker.

`broker_config` is a stand-in for the broker's rendered `redis.conf` (ACL users `celery` and
`probe`, noeviction, maxmemory) until tests can feed the real one from components.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from tests.support.engines import server_executable, server_version
from tests.support.network import free_port

REDIS_SERVER = "redis-server"
CELERY_PASSWORD = "celery-Pa55-9f3Kq"
PROBE_PASSWORD = "probe-Pa55-X7mWz"

PROBE_ACL = (
    "%R~* -@all +ping +info +config|get +llen +zcard +zrange +zrangebyscore +hget +hlen"
    " +hkeys +type +exists +scan +hello +auth +select"
)
"""Read-only rights of the check user: what `brokercheck` needs and nothing that writes.

`+client|setinfo` (redis-py announces itself with it) is added only for Redis 7.2+: 7.0
refuses to load an ACL naming a command it does not know. redis-py ignores the refusal.
"""

CELERY_ACL = "~* &* +@all -@dangerous -@admin"
"""The workers' user: every key and channel, no administrative or dangerous command."""

PERSISTENCE_LINES = {
    "none": 'save ""\nappendonly no',
    "rdb": "save 900 1 300 10 60 10000\nappendonly no",
    "aof": 'save ""\nappendonly yes\nappendfsync everysec',
    "aof-always": 'save ""\nappendonly yes\nappendfsync always',
}
"""redis.conf lines for each persistence mode the project offers."""


class RedisServerError(RuntimeError):
    """redis-server is missing, did not start, or did not answer in time."""


def broker_config(
    *,
    persistence: str = "none",
    maxmemory: str = "64mb",
    maxmemory_policy: str = "noeviction",
    celery_password: str = CELERY_PASSWORD,
    probe_password: str = PROBE_PASSWORD,
    extra: str = "",
    engine: str = "redis",
) -> str:
    """Return a broker redis.conf shaped like production's: ACL users, memory, persistence."""
    known = server_version(engine) >= (7, 2)  # every Valkey: it starts at 7.2
    probe_acl = PROBE_ACL + (" +client|setinfo" if known else "")
    return "\n".join(
        [
            "user default off",
            f"user celery on >{celery_password} {CELERY_ACL}",
            f"user probe on >{probe_password} {probe_acl}",
            f"maxmemory {maxmemory}",
            f"maxmemory-policy {maxmemory_policy}",
            PERSISTENCE_LINES[persistence],
            extra,
            "",
        ]
    )


def redis_server_version() -> tuple[int, ...]:
    """Return the installed redis-server's version, e.g. (7, 0, 15)."""
    return server_version("redis")


def url_credentials(user: str | None, password: str | None) -> str:
    """Return the `user:password@` part of a Redis URL, percent-encoded; empty without either."""
    if not (user or password):
        return ""
    return f"{quote(user or '', safe='')}:{quote(password or '', safe='')}@"


@dataclass
class RedisServer:
    """A running redis-server: where it listens, its directory, and its process."""

    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def url(
        self,
        user: str | None = None,
        password: str | None = None,
        db: int = 0,
        scheme: str = "redis",
    ) -> str:
        """Return a redis:// URL for this server, credentials percent-encoded."""
        return f"{scheme}://{url_credentials(user, password)}{self.host}:{self.port}/{db}"

    def client(self, user: str, password: str, db: int = 0) -> redis.Redis:
        """Return a redis-py client with short timeouts, so a test never hangs on the server."""
        return redis.Redis(
            host=self.host,
            port=self.port,
            username=user,
            password=password,
            db=db,
            socket_timeout=5,
            socket_connect_timeout=5,
        )

    def log(self) -> str:
        """Return the server's log, for assertion messages."""
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the server with `sig` (SIGKILL simulates a crash); SIGKILL after `timeout`."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)


@contextmanager
def running_redis(
    config_text: str,
    *,
    directory: Path | None = None,
    port: int | None = None,
    args: Sequence[str] = (),
    ready_timeout: float = 10.0,
    engine: str = "redis",
) -> Iterator[RedisServer]:
    """Start `engine`'s server from `config_text` (plus command-line `args`), yield it, stop it."""
    executable = server_executable(engine)
    own_directory = directory is None
    workdir = Path(tempfile.mkdtemp(prefix="redis-test-")) if directory is None else directory
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "redis.conf").write_text(config_text)
    listen_port = port or free_port()
    argv = [
        executable,
        str(workdir / "redis.conf"),
        *args,
        *("--port", str(listen_port), "--bind", "127.0.0.1", "--dir", str(workdir)),
        *("--daemonize", "no", "--logfile", str(workdir / "redis.log")),
    ]
    process = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL)
    server = RedisServer("127.0.0.1", listen_port, workdir, process)
    try:
        _wait_until_answering(server, ready_timeout)
        yield server
    finally:
        server.stop()
        if own_directory:
            shutil.rmtree(workdir, ignore_errors=True)


def _wait_until_answering(server: RedisServer, timeout: float) -> None:
    """Poll with a raw PING until the server replies with anything but -LOADING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            msg = f"redis-server exited with {server.process.returncode}:\n{server.log()}"
            raise RedisServerError(msg)
        if _answers_ping(server.host, server.port):
            return
        time.sleep(0.05)
    msg = f"redis-server did not answer within {timeout} s:\n{server.log()}"
    raise RedisServerError(msg)


def _answers_ping(host: str, port: int) -> bool:
    """Return whether the server answers PING (+PONG or an auth error both mean it is up)."""
    try:
        with socket.create_connection((host, port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            reply = connection.recv(64)
    except OSError:
        return False
    return bool(reply) and not reply.startswith(b"-LOADING")
