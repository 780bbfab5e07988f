"""A broker still loading its dataset is reported as loading, with how far it got.

A real server (Redis, then Valkey) restarts on an RDB of many keys, slowed with `key-load-delay`
(microseconds per key) and answering clients between small chunks
(`loading-process-events-interval-bytes`), so that the check runs while it loads: Redis
then accepts connections and AUTH, answers `-LOADING` to PING and reports its progress in
INFO persistence.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.support.check_cli import run_check
from tests.support.engines import ENGINES, server_executable
from tests.support.redis_server import (
    CELERY_PASSWORD,
    PROBE_PASSWORD,
    broker_config,
    free_port,
    running_redis,
    url_credentials,
)

KEYS = 40_000
KEY_LOAD_DELAY_MICROSECONDS = 200  # about 8 s or more to load: the check runs well within it


@pytest.fixture(scope="module", params=ENGINES)
def rdb_directory(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """Return a directory whose dump.rdb holds KEYS keys (saved on SIGTERM: `save` is on)."""
    engine = request.param
    directory = tmp_path_factory.mktemp(f"loading-{engine}")
    config = broker_config(persistence="rdb", engine=engine)
    (directory / "engine").write_text(engine)
    with running_redis(config, directory=directory, engine=engine) as server:
        client = server.client("celery", CELERY_PASSWORD)
        for start in range(0, KEYS, 1000):
            client.mset({f"key:{n}": b"v" * 64 for n in range(start, start + 1000)})
    assert (directory / "dump.rdb").stat().st_size > KEYS * 10, "the RDB was not written"
    return directory


@contextmanager
def loading_redis(directory: Path) -> Iterator[int]:
    """Start the RDB's own engine on `directory`, slowed down; yield its port once it is LOADING."""
    port = free_port()
    argv = [
        server_executable((directory / "engine").read_text()),
        str(directory / "redis.conf"),
        *("--key-load-delay", str(KEY_LOAD_DELAY_MICROSECONDS)),
        *("--loading-process-events-interval-bytes", "1024"),
        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)),
        *("--daemonize", "no", "--logfile", str(directory / "loading.log")),
    ]
    process = subprocess.Popen(argv, cwd=directory, stdin=subprocess.DEVNULL)
    try:
        reply = wait_for_reply(port)
        assert reply.startswith("LOADING"), f"the broker was not loading: {reply!r}"
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)


def wait_for_reply(port: int, timeout: float = 10.0) -> str:
    """Return the first answer to an authenticated PING once the server accepts connections."""
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        username="probe",
        password=PROBE_PASSWORD,
        socket_timeout=1,
        socket_connect_timeout=1,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return str(client.ping())
        except redis.exceptions.BusyLoadingError as loading:
            return f"LOADING {loading}"
        except redis.exceptions.ConnectionError:
            time.sleep(0.02)
    pytest.fail(f"redis-server did not accept connections on {port} within {timeout} s")


@pytest.mark.parametrize("output", [["--json"], []], ids=["json", "table"])
def test_loading_broker_is_reported_as_loading_with_its_progress(
    rdb_directory: Path, output: list[str]
) -> None:
    with loading_redis(rdb_directory) as port:
        probe = f"redis://{url_credentials('probe', PROBE_PASSWORD)}127.0.0.1:{port}/0"
        run = run_check("--url", probe, "--timeout", "3", *output)

    assert run.returncode == 1, f"a loading broker serves no task: the check fails:\n{run.output}"
    assert "loading its dataset" in run.stdout, f"the report should say loading:\n{run.stdout}"
    assert "% loaded" in run.stdout, f"the report should say how far:\n{run.stdout}"
    assert "NetworkPolicy" not in run.stdout, f"loading is no network problem:\n{run.stdout}"
    if output:
        connect = next(c for c in run.report["checks"] if c["name"] == "connect")
        assert connect["status"] == "fail", connect
        assert "rerun" in connect["hint"], connect
