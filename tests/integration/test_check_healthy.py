"""The broker check against a healthy broker with real workers.

Everything passes, with a stable JSON schema, whether URLs come from argv, the
environment or stack outputs, and the check leaves no key behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.celery_worker import CeleryWorker, running_worker, worker_argv, worker_env
from tests.support.check_cli import BROKERCHECK, CheckUrls, check_urls, run_check
from tests.support.engines import ENGINES
from tests.support.redis_server import (
    CELERY_PASSWORD,
    PROBE_PASSWORD,
    RedisServer,
    broker_config,
    running_redis,
)

REPORT_KEYS = {"schema", "ok", "exit_code", "target", "duration_seconds", "summary", "checks"}
CHECK_KEYS = {"name", "status", "measured", "expected", "hint"}
HEALTHY_CHECKS = {
    "connect",
    "default-user",
    "persistence",
    "persistence-status",
    "eviction-policy",
    "maxmemory",
    "memory-usage",
    "backlog:celery",
    "unacked",
    "workers",
    "pool:default",
    "canary:celery",
}


@dataclass
class Deployment:
    """A broker with AOF persistence and one stand-in worker on queue `celery`."""

    server: RedisServer
    urls: CheckUrls
    worker: CeleryWorker


@pytest.fixture(scope="module", params=ENGINES)
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    engine = request.param
    with running_redis(broker_config(persistence="aof", engine=engine), engine=engine) as server:
        urls = check_urls(server)
        env = worker_env(urls.celery, urls.result_backend)
        with running_worker(worker_argv(concurrency=2), env=env) as worker:
            yield Deployment(server, urls, worker)


def all_keys(server: RedisServer, db: int) -> set[bytes]:
    """Every key of one database, by SCAN (KEYS is a dangerous command for user celery)."""
    return set(server.client("celery", CELERY_PASSWORD, db).scan_iter("*"))


def kombu_bookkeeping(server: RedisServer) -> dict[bytes, object]:
    """Members of kombu's binding sets and deadline zset: where a leak would hide in a key."""
    client = server.client("celery", CELERY_PASSWORD)
    found: dict[bytes, object] = {}
    for key in client.scan_iter("_kombu*"):
        kind = client.type(key)
        found[key] = client.smembers(key) if kind == b"set" else client.zrange(key, 0, -1)
    return found


def test_healthy_broker_and_worker_pass_every_check(deployment: Deployment) -> None:
    run = run_check(
        *deployment.urls.args(), "--expect-persistence", "aof", "--expect-workers", "1", "--json"
    )

    assert run.returncode == 0, f"healthy deployment failed the check:\n{run.output}"
    assert run.statuses() == dict.fromkeys(HEALTHY_CHECKS, "pass"), run.stdout
    assert deployment.worker.hostname in run.check("workers")["measured"], run.stdout


def test_json_report_keeps_its_documented_schema(deployment: Deployment) -> None:
    run = run_check(*deployment.urls.args(), "--expect-workers", "1", "--json")

    report = run.report  # stdout must be JSON and nothing else
    assert set(report) == REPORT_KEYS, f"top-level keys changed: {sorted(report)}"
    assert report["schema"] == "brokercheck/v1", report["schema"]
    assert report["ok"] is True, run.output
    assert report["exit_code"] == 0, run.output
    assert report["summary"] == {"pass": len(HEALTHY_CHECKS), "warn": 0, "fail": 0}, report
    assert isinstance(report["duration_seconds"], float), report["duration_seconds"]
    for entry in report["checks"]:
        assert set(entry) == CHECK_KEYS, f"check entry keys changed: {entry}"
        assert all(isinstance(value, str) for value in entry.values()), entry
    assert PROBE_PASSWORD not in report["target"], "target must be masked"
    assert "probe:***@" in report["target"], report["target"]


def test_table_report_is_for_people_and_hides_passwords(deployment: Deployment) -> None:
    run = run_check(*deployment.urls.args(), "--expect-workers", "1")

    assert run.returncode == 0, run.output
    assert run.stdout.startswith("CHECK"), f"table header missing:\n{run.stdout}"
    assert "OK: 12 passed, 0 warnings, 0 failed" in run.stdout, run.stdout
    for password in (PROBE_PASSWORD, CELERY_PASSWORD):
        assert password not in run.output, "a password was printed"


def test_healthy_check_stops_waiting_once_every_worker_answered(deployment: Deployment) -> None:
    """Replies are collected until the expected workers answered, not for a fixed window.

    `celery inspect ping` waits its whole timeout; with a --timeout far beyond the test's own
    guard, only that early stop lets the run end. How fast it ends is bench/check.py's figure.
    """
    run = run_check(
        *deployment.urls.args(), "--expect-workers", "1", "--timeout", "600", "--json",
        timeout=120,
    )  # fmt: skip

    assert run.returncode == 0, run.output
    assert "timeout" not in run.statuses(), run.stdout


def test_canary_runs_on_a_worker_whose_app_defines_no_task(deployment: Deployment) -> None:
    env = worker_env(deployment.urls.celery, deployment.urls.result_backend)
    argv = worker_argv("src.bare_app", queues=["bare"], hostname="bare@%h")
    with running_worker(argv, env=env):
        run = run_check(
            *deployment.urls.args(), "--pool", "bare=bare:1", "--expect-workers", "1", "--json"
        )

    assert run.check("canary:bare")["status"] == "pass", (
        f"celery.accumulate must run on a worker without user code:\n{run.stdout}"
    )
    assert run.check("pool:bare")["status"] == "pass", run.stdout


def test_check_leaves_no_key_behind(deployment: Deployment) -> None:
    server = deployment.server
    before = (all_keys(server, 0), all_keys(server, 1), kombu_bookkeeping(server))

    run = run_check(*deployment.urls.args(), "--expect-workers", "1", "--json")

    assert run.returncode == 0, run.output
    after = (all_keys(server, 0), all_keys(server, 1), kombu_bookkeeping(server))
    assert after[0] == before[0], f"broker DB keys changed: {before[0] ^ after[0]}"
    assert after[1] == before[1], f"result DB keys left behind: {after[1] - before[1]}"
    assert after[2] == before[2], f"kombu bindings changed: {before[2]} -> {after[2]}"


def test_brokercheck_file_runs_alone_from_any_directory(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The Job mounts only this file (from a ConfigMap) into the workers' image."""
    alone = tmp_path / "brokercheck.py"
    alone.write_text(BROKERCHECK.read_text())

    run = run_check(
        "--expect-workers", "1", "--json", env=deployment.urls.env(), script=alone, cwd=tmp_path
    )

    assert run.returncode == 0, f"brokercheck.py alone failed:\n{run.output}"
    assert run.statuses() == dict.fromkeys(HEALTHY_CHECKS, "pass"), run.stdout


def test_brokerctl_check_takes_urls_from_environment_not_argv(deployment: Deployment) -> None:
    run = run_check(
        "--expect-persistence", "aof", "--expect-workers", "1", "--json",
        env=deployment.urls.env(), via_brokerctl=True,
    )  # fmt: skip

    assert run.returncode == 0, f"python -m brokerctl check failed:\n{run.output}"
    assert run.statuses() == dict.fromkeys(HEALTHY_CHECKS, "pass"), run.stdout


def test_url_env_options_name_the_variables_to_read(deployment: Deployment) -> None:
    env = {
        "PROBE_URL": deployment.urls.probe,
        "WORKERS_URL": deployment.urls.celery,
        "RESULTS_URL": deployment.urls.result_backend,
    }
    run = run_check(
        *("--url-env", "PROBE_URL", "--worker-url-env", "WORKERS_URL"),
        *("--result-backend-env", "RESULTS_URL", "--expect-workers", "1", "--json"),
        env=env,
    )

    assert run.returncode == 0, run.output
    assert run.check("canary:celery")["status"] == "pass", run.stdout


def test_stack_outputs_file_supplies_urls_and_expectations(
    deployment: Deployment, tmp_path: Path
) -> None:
    outputs = {
        "check_url": deployment.urls.probe,
        "broker_url": deployment.urls.celery,
        "result_backend_url": deployment.urls.result_backend,
        "persistence": "aof",
        "visibility_timeout": 7200,
        "pools": [{"name": "transcription", "queues": ["celery"], "replicas": 1}],
        "expect_workers": 1,
    }
    outputs_file = tmp_path / "outputs.json"
    outputs_file.write_text(json.dumps(outputs))

    run = run_check("--outputs", str(outputs_file), "--json")

    assert run.returncode == 0, run.output
    assert run.check("pool:transcription")["status"] == "pass", run.stdout
    assert run.check("persistence")["expected"] == "aof", run.stdout
    assert "7200" in run.check("unacked")["expected"], "visibility_timeout output ignored"
