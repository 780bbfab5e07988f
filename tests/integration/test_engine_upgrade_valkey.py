"""An engine upgrade is an image change: Redis 7.0's data carries over to Valkey 9.1, not back.

The staging stack (AOF, fsync every second) runs on Debian's Redis 7.0 from its rendered
objects; real Celery tasks are queued, some before an AOF rewrite (so they sit in the base
file, an RDB that Redis 7.0 wrote) and some after (in the incremental AOF). The broker stops
as the kubelet stops it; the Valkey render of the same stack starts on the same volume, as
the rolled StatefulSet would. Every task is still queued, a real worker runs each one once,
and the check passes. The settings guard allows exactly this change and refuses the way back,
which Redis 7.0 indeed cannot take: it refuses to start on Valkey 9.1's files, and they stay
intact for Valkey.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery

from brokerctl import mockrun
from components.deployed import engine_change_problem
from components.engine import version_text
from components.settings import StackSettings
from tests.support.broker_boot import CHECK_PASSWORD, BootedBroker, booted_broker, rendered_broker
from tests.support.celery_worker import running_worker, worker_argv, worker_env
from tests.support.check_cli import run_check
from tests.support.engines import server_version
from tests.support.redis_server import CELERY_PASSWORD, RedisServerError

STACK = "staging"
QUEUE = "celery"
BEFORE_REWRITE = 5
AFTER_REWRITE = 3
IMAGES = {"redis": "docker.io/library/redis", "valkey": "docker.io/valkey/valkey"}


def stack_settings(engine: str) -> StackSettings:
    """Return the staging stack's settings, its broker image the installed `engine`'s version."""
    config = yaml.safe_load(mockrun.stack_file(STACK).read_text())["config"]
    data: dict[str, Any] = {key.split(":", 1)[1]: value for key, value in config.items()}
    image = f"{IMAGES[engine]}:{version_text(server_version(engine))}"
    data["broker"] = {**data["broker"], "engine": engine, "image": image}
    return StackSettings.model_validate(data)


def deployed_output(engine: str) -> dict[str, str]:
    """Return the `broker_engine` output of a stack that ran the installed `engine`."""
    return {"engine": engine, "version": version_text(server_version(engine))}


def rewrite_aof(server: BootedBroker) -> None:
    """Rewrite the AOF now, so the queued messages land in the base file (an RDB)."""
    admin = server.admin()
    admin.bgrewriteaof()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = admin.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            assert info["aof_last_bgrewrite_status"] == "ok", info
            return
        time.sleep(0.05)
    pytest.fail("the AOF rewrite did not finish within 30 s")


def queue_tasks(server: BootedBroker, record: Path, labels: list[str]) -> None:
    """Publish one real Celery task per label, as a producer would; no worker consumes yet."""
    producer = Celery("producer", broker=server.url("celery", CELERY_PASSWORD))
    try:
        for label in labels:
            producer.send_task("src.tasks.record_execution", args=[str(record), label], queue=QUEUE)
    finally:
        producer.close()


def wait_for_lines(path: Path, count: int, timeout: float = 30.0) -> list[str]:
    """Return the record's lines once it has `count`; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    pytest.fail(f"{len(lines)} of {count} tasks ran within {timeout} s: {lines}")


def test_redis_70_data_upgrades_to_valkey_91_and_the_check_passes(tmp_path: Path) -> None:
    assert engine_change_problem(stack_settings("valkey"), deployed_output("redis"), "aof") is None
    root, record = tmp_path / "pod", tmp_path / "executions.txt"
    labels = [f"task-{number}" for number in range(BEFORE_REWRITE + AFTER_REWRITE)]
    with booted_broker(rendered_broker(STACK, "redis"), root=root) as server:
        queue_tasks(server, record, labels[:BEFORE_REWRITE])
        rewrite_aof(server)
        queue_tasks(server, record, labels[BEFORE_REWRITE:])
        queued_on_redis = server.admin().lrange(QUEUE, 0, -1)
    base = next((root / "volumes").rglob("*.base.rdb"))
    assert base.read_bytes()[:9] == b"REDIS0010", "Redis 7.0 should have written RDB 10"

    valkey = rendered_broker(STACK, "valkey")
    with booted_broker(valkey, root=root) as server:
        assert server.admin().lrange(QUEUE, 0, -1) == queued_on_redis, "queued tasks changed"
        urls = {
            "celery": server.url("celery", CELERY_PASSWORD, db=0),
            "results": server.url("celery", CELERY_PASSWORD, db=1),
        }
        env = worker_env(urls["celery"], urls["results"])
        with running_worker(worker_argv(queues=[QUEUE]), env=env):
            ran = wait_for_lines(record, len(labels))
            check = run_check(
                *("--url", server.url("check", CHECK_PASSWORD)),
                *("--worker-url", urls["celery"], "--result-backend", urls["results"]),
                *("--expect-persistence", "aof", "--expect-workers", "1", "--json"),
                *("--expect-engine", f"valkey:{deployed_output('valkey')['version']}"),
            )
            not_rolled = run_check(
                *("--url", server.url("check", CHECK_PASSWORD), "--no-canary"),
                *("--expect-workers", "0", "--expect-engine", "redis:7.0", "--json"),
            )
    assert sorted(line.split()[0] for line in ran) == sorted(labels), "each task runs once"
    assert check.returncode == 0, f"the check fails after the upgrade:\n{check.output}"
    assert check.check("engine")["measured"].startswith("valkey 9.1"), check.stdout
    assert not_rolled.returncode == 1, f"a broker still on the old engine passed:\n{not_rolled}"
    assert not_rolled.statuses()["engine"] == "fail", not_rolled.stdout


def test_valkey_91_data_is_refused_by_the_guard_and_by_redis_70(tmp_path: Path) -> None:
    problem = engine_change_problem(stack_settings("redis"), deployed_output("valkey"), "aof")
    assert problem is not None, "the guard let Valkey 9.1's data go to Redis 7.0"
    assert "RDB 80" in problem, problem
    root = tmp_path / "pod"
    with booted_broker(rendered_broker(STACK, "valkey"), root=root) as server:
        server.admin().lpush(QUEUE, "kept")
        rewrite_aof(server)
    base = next((root / "volumes").rglob("*.base.rdb"))
    assert base.read_bytes()[:9] == b"VALKEY080", "Valkey 9.1 should have written RDB 80"

    with (
        pytest.raises(RedisServerError, match="exited") as refused,
        booted_broker(rendered_broker(STACK, "redis"), root=root),
    ):
        pass
    log = str(refused.value)
    refusal = re.search(r"Bad file format reading the append only file \S+\.base\.rdb", log)
    assert refusal, f"Redis 7.0 failed for another reason than the base file's format:\n{log}"
    with booted_broker(rendered_broker(STACK, "valkey"), root=root) as server:
        assert server.admin().lrange(QUEUE, 0, -1) == [b"kept"], "the failed start hurt the data"
