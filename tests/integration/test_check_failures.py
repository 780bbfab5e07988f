"""Each way a broker or its workers can be wrong makes exactly the matching check fail.

Unreachable brokers (refused password, dead port, silent endpoint) end the run with a message
that says what failed and no password anywhere. A silent endpoint would hold a client without
timeouts forever: the test's own guard (HANG_GUARD, far above --timeout) turns that into a
failure; how soon the check really ends is measured in bench/check.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.support.celery_worker import running_worker, worker_argv, worker_env
from tests.support.check_cli import CheckRun, CheckUrls, check_urls, run_check
from tests.support.engines import ENGINES
from tests.support.network import dead_port, silent_listener
from tests.support.redis_server import (
    CELERY_PASSWORD,
    PROBE_PASSWORD,
    RedisServer,
    broker_config,
    running_redis,
)

TIMEOUT = 2.0
HANG_GUARD = 60.0  # seconds: only a check that ignores --timeout gets near it
WRONG_PASSWORD = "Wr0ng-Secret-Pa55-q8Zt"


@dataclass
class Deployment:
    """A broker (no persistence) with one stand-in worker on queue `celery`."""

    server: RedisServer
    urls: CheckUrls


@pytest.fixture(scope="module", params=ENGINES)
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    engine = request.param
    with running_redis(broker_config(engine=engine), engine=engine) as server:
        urls = check_urls(server)
        env = worker_env(urls.celery, urls.result_backend)
        with running_worker(worker_argv(), env=env):
            yield Deployment(server, urls)


def failed_checks(run: CheckRun) -> set[str]:
    """Names of the checks that failed in a --json run."""
    return {name for name, status in run.statuses().items() if status == "fail"}


def assert_no_password(run: CheckRun, *passwords: str) -> None:
    """No password, raw or percent-encoded, in anything the check printed."""
    for password in (PROBE_PASSWORD, CELERY_PASSWORD, WRONG_PASSWORD, *passwords):
        assert password not in run.output, f"password printed:\n{run.output}"


def assert_only_failure(run: CheckRun, name: str) -> None:
    """Exit 1, and `name` is the one failing check."""
    assert run.returncode == 1, f"expected exit 1 for a failing {name}:\n{run.output}"
    assert failed_checks(run) == {name}, f"expected only {name} to fail:\n{run.stdout}"


@pytest.mark.parametrize("output", [["--json"], []], ids=["json", "table"])
@pytest.mark.parametrize(
    ("endpoint", "explanation"),
    [
        ("wrong-password", "authentication refused"),
        ("dead-port", "unreachable"),
        ("silent", "no answer within"),
    ],
)
def test_unreachable_broker_fails_fast_and_says_why(
    deployment: Deployment, endpoint: str, explanation: str, output: list[str]
) -> None:
    with silent_listener() as silent_port:
        url = {
            "wrong-password": deployment.server.url("probe", WRONG_PASSWORD),
            "dead-port": f"redis://probe:{PROBE_PASSWORD}@127.0.0.1:{dead_port()}/0",
            "silent": f"redis://probe:{PROBE_PASSWORD}@127.0.0.1:{silent_port}/0",
        }[endpoint]
        run = run_check(
            *("--url", url, "--expect-workers", "1", "--timeout", str(TIMEOUT), *output),
            timeout=HANG_GUARD,
        )

    assert run.returncode == 1, f"{endpoint}: expected exit 1:\n{run.output}"
    assert explanation in run.stdout, (
        f"{endpoint}: message should say {explanation!r}:\n{run.stdout}"
    )
    assert_no_password(run)
    if output:
        assert run.statuses() == {"connect": "fail"}, run.stdout


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("running", "expected"),
    [("aof-always", "aof"), ("aof", "aof-always"), ("none", "rdb"), ("rdb", "none")],
)
def test_persistence_mismatch_fails_the_persistence_check(
    engine: str, running: str, expected: str
) -> None:
    with running_redis(broker_config(persistence=running, engine=engine), engine=engine) as server:
        run = run_check(
            "--url", check_urls(server).probe, "--expect-persistence", expected, "--json"
        )

    assert_only_failure(run, "persistence")
    assert run.check("persistence")["measured"] == running, run.stdout


@pytest.mark.parametrize("engine", ENGINES)
def test_evicting_broker_fails_the_eviction_policy_check(engine: str) -> None:
    with running_redis(
        broker_config(maxmemory_policy="allkeys-lru", engine=engine), engine=engine
    ) as server:
        run = run_check("--url", check_urls(server).probe, "--json")

    assert_only_failure(run, "eviction-policy")
    assert run.check("eviction-policy")["measured"] == "allkeys-lru", run.stdout


@pytest.mark.parametrize("engine", ENGINES)
def test_broker_without_maxmemory_fails_the_maxmemory_check(engine: str) -> None:
    with running_redis(broker_config(maxmemory="0", engine=engine), engine=engine) as server:
        run = run_check("--url", check_urls(server).probe, "--json")

    assert_only_failure(run, "maxmemory")


@pytest.mark.parametrize("engine", ENGINES)
def test_nearly_full_broker_fails_the_memory_check(engine: str) -> None:
    with running_redis(broker_config(maxmemory="4mb", engine=engine), engine=engine) as server:
        writer = server.client("celery", CELERY_PASSWORD)
        chunk = b"x" * 65536
        with pytest.raises(redis.exceptions.OutOfMemoryError):  # noqa: PT012 - fill until refused
            for number in range(1000):
                writer.lpush("celery", chunk + str(number).encode())
        run = run_check("--url", check_urls(server).probe, "--json")

    assert_only_failure(run, "memory-usage")
    assert "backlog" not in failed_checks(run), "a backlog alone is not a failure"


def test_queue_without_consumer_fails_its_pool(deployment: Deployment) -> None:
    run = run_check(
        *deployment.urls.args(), "--pool", "default=celery,pdf:1", "--timeout", "3", "--json"
    )

    assert_only_failure(run, "pool:default")
    assert "pdf" in run.check("pool:default")["hint"], run.stdout
    assert "canary:pdf" not in run.statuses(), "no canary may be sent to a queue nobody consumes"


def test_pool_scaled_to_zero_warns_instead_of_failing(deployment: Deployment) -> None:
    """KEDA with min_replicas 0 (or a paused pool): the gate Job passes `--pool NAME=Q:0`."""
    run = run_check(
        *deployment.urls.args(),
        "--pool",
        "default=celery:1",
        "--pool",
        "idle=pdf:0",
        "--timeout",
        "3",
        "--json",
    )

    assert run.returncode == 0, run.stdout
    assert run.statuses()["pool:idle"] == "warn", run.stdout
    assert "scales up" in run.check("pool:idle")["hint"], run.stdout
    assert run.statuses()["pool:default"] == "pass", run.stdout


def test_fewer_workers_than_expected_fails_the_workers_check(deployment: Deployment) -> None:
    run = run_check(*deployment.urls.args(), "--expect-workers", "2", "--timeout", "3", "--json")

    assert_only_failure(run, "workers")
    assert run.check("workers")["measured"].startswith("1 answered"), run.stdout


def test_refused_workers_password_fails_the_workers_check(deployment: Deployment) -> None:
    celery_url = deployment.server.url("celery", WRONG_PASSWORD)
    run = run_check(
        *("--url", deployment.urls.probe, "--worker-url", celery_url),
        *("--expect-workers", "1", "--timeout", str(TIMEOUT), "--json"),
        timeout=HANG_GUARD,
    )

    assert_only_failure(run, "workers")
    assert_no_password(run)


def test_brokerctl_check_fails_on_dead_port_without_printing_the_password() -> None:
    url = f"redis://probe:{PROBE_PASSWORD}@127.0.0.1:{dead_port()}/0"
    run = run_check("--timeout", str(TIMEOUT), env={"BROKER_CHECK_URL": url}, via_brokerctl=True)

    assert run.returncode == 1, run.output
    assert "connect" in run.stdout, run.stdout
    assert_no_password(run)


@pytest.mark.parametrize("engine", ENGINES)
def test_canary_queued_behind_a_backlog_warns_instead_of_failing(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    with running_redis(broker_config(engine=engine), engine=engine) as server:
        urls = check_urls(server)
        env = worker_env(urls.celery, urls.result_backend)
        argv = worker_argv(concurrency=1, extra=["--prefetch-multiplier", "1"])
        with running_worker(argv, env=env):
            client = Celery("test-client", broker=urls.celery, backend=urls.result_backend)
            record = tmp_path / "executions.txt"
            for label in ("busy", "waiting"):
                client.send_task("src.tasks.record_execution", args=[str(record), label, 4.0])
            wait_for_file(record)
            run = run_check(*urls.args(), "--expect-workers", "1", "--timeout", "2", "--json")
            client.close()

    assert run.returncode == 0, f"a backlog must not fail the check:\n{run.output}"
    assert run.check("canary:celery")["status"] == "warn", run.stdout
    assert run.check("backlog:celery")["measured"].startswith("1 waiting"), run.stdout


def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    """Wait until a task wrote its first line to `path`."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"no task started within {timeout} s"
