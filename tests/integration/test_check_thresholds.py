"""The memory check judges a real broker with the thresholds the stack outputs carry.

`pulumi stack output` holds the gate Job's own thresholds (checks.memory_*_ratio); a check run
from those outputs must reach the same verdict as the Job, not apply defaults of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.check_cli import CheckRun, run_check
from tests.support.engines import ENGINES
from tests.support.redis_server import (
    PROBE_PASSWORD,
    RedisServer,
    broker_config,
    running_redis,
)


@pytest.fixture(scope="module", params=ENGINES)
def server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    engine = request.param
    with running_redis(broker_config(maxmemory="64mb", engine=engine), engine=engine) as running:
        yield running


def used_percent(server: RedisServer) -> float:
    """Return used memory as a share of maxmemory, in percent, as the check computes it."""
    info = server.client("probe", PROBE_PASSWORD).info("memory")
    return 100.0 * info["used_memory"] / info["maxmemory"]


def check_with_outputs(server: RedisServer, tmp_path: Path, **thresholds: float) -> CheckRun:
    outputs = {"check_url": server.url("probe", PROBE_PASSWORD), **thresholds}
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    return run_check("--outputs", str(path), "--json")


def test_outputs_thresholds_below_usage_fail_the_memory_check(
    server: RedisServer, tmp_path: Path
) -> None:
    assert used_percent(server) > 0.2, "an empty Redis uses about 1 MiB: 1.3% of 64 MiB"
    run = check_with_outputs(server, tmp_path, memory_warn_ratio=0.001, memory_fail_ratio=0.002)

    assert run.returncode == 1, f"usage above the outputs' failure share must fail:\n{run.stdout}"
    assert run.check("memory-usage")["status"] == "fail", run.stdout
    expected = run.check("memory-usage")["expected"]
    assert expected == "< 0.1% (fail at 0.2%)", f"not the outputs' thresholds: {expected}"


def test_outputs_thresholds_between_warn_and_fail_warn(server: RedisServer, tmp_path: Path) -> None:
    assert used_percent(server) > 0.2, "an empty Redis uses about 1 MiB: 1.3% of 64 MiB"
    run = check_with_outputs(server, tmp_path, memory_warn_ratio=0.002, memory_fail_ratio=0.99)

    assert run.returncode == 0, f"a warning must not fail the check:\n{run.stdout}"
    assert run.check("memory-usage")["status"] == "warn", run.stdout


def test_outputs_without_thresholds_use_the_settings_defaults(
    server: RedisServer, tmp_path: Path
) -> None:
    run = check_with_outputs(server, tmp_path)

    assert run.check("memory-usage")["status"] == "pass", run.stdout
    assert run.check("memory-usage")["expected"] == "< 80% (fail at 95%)", run.stdout
