"""Workers publish their running and held task counts, as the scale-in controller reads them.

Real workers started from the rendered Deployment and wiring module (test_worker_harness), a
real broker booted from the rendered dev objects (its ACL: the celery user must be allowed to
write the entry), tasks of the stand-in app. What is read back is the Redis key the controller
(brokerctl/deletioncost.py) reads, decoded by its own parser.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brokerctl.deletioncost import Load, load_key, parse_load
from components.celery_config import TASK_LOAD_CHECK_SECONDS
from tests.integration.test_worker_harness import (
    client_app,
    pod_worker,
    render_pool,
    scratch_dir,
    wait_for,
)
from tests.support.broker_boot import booted_broker, rendered_broker

TASK_SECONDS = 4.0
STALE_SECONDS = 12  # liveness window of the pool, hence the entry's TTL


@pytest.mark.parametrize(("pool_kind", "concurrency"), [("prefork", 2), ("solo", 1)])
def test_worker_publishes_running_tasks_while_they_run_then_zero(
    tmp_path: Path, pool_kind: str, concurrency: int
) -> None:
    """The entry says 1 running while a task runs (solo too: its event loop is blocked), then 0.

    The entry carries a TTL no longer than the pool's liveness window, so a dead pod's expires.
    """
    pool = render_pool(
        tmp_path / "stack",
        {
            "name": "load",
            "queues": ["load"],
            "pool": pool_kind,
            "concurrency": concurrency,
            "liveness_stale_seconds": STALE_SECONDS,
            "soft_time_limit": 20,
            "time_limit": 30,
        },
    )
    with (
        booted_broker(rendered_broker("dev")) as redis_server,
        pod_worker(pool, redis_server) as pod,
        scratch_dir() as scratch,
    ):
        broker = redis_server.admin()  # the celery user may write the entry, not read its TTL
        key = load_key(pod.pod_name)

        def load() -> Load | None:
            return parse_load(broker.get(key))

        idle = wait_for(load, 5, f"the idle worker's entry {key}")
        assert idle == Load(running=0, held=0), f"an idle worker reports {idle}"
        ttl = broker.ttl(key)
        window = STALE_SECONDS + (30 + 2 * 3 if pool_kind == "solo" else 0)
        assert 0 < ttl <= window, f"entry TTL {ttl} s, expected within the liveness window {window}"

        record = scratch / "runs"
        client_app(redis_server).send_task(
            "src.tasks.record_execution", args=[str(record), "long", TASK_SECONDS], queue="load"
        )
        busy = wait_for(
            lambda: (found := load()) is not None and found.running == 1 and found,
            TASK_SECONDS - 1,
            "the entry to report the running task",
            interval=0.05,
        )
        assert busy.held >= 1, f"a running task is also held: {busy}"
        assert record.exists(), "the report came while the task ran, not before it started"
        wait_for(
            lambda: load() == Load(running=0, held=0),
            TASK_SECONDS + 4 * TASK_LOAD_CHECK_SECONDS + 5,
            "the entry to report the worker idle again",
        )
        raw = json.loads(broker.get(key))
        assert set(raw) == {"running", "held"}, f"the entry's layout changed: {raw}"
