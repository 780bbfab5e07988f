"""A rendered pool, run as its pod would run it, consumes its queues with the rendered settings."""

from __future__ import annotations

import time

import pytest

from components.celery_config import BROKER_SOCKET_TIMEOUT
from tests.integration.test_worker_harness import (
    client_app,
    executions,
    pod_worker,
    render_pool,
    scratch_dir,
    wait_for,
)
from tests.support.broker_boot import booted_broker, rendered_broker
from tests.support.celery_worker import TESTED_CELERY_SERIES, celery_for_series
from tests.support.redis_server import CELERY_PASSWORD

RECORD_TASK = "src.tasks.record_execution"
PLAIN_TASK = "src.plain_tasks.record_plain"


@pytest.fixture
def scratch():
    """Yield a directory this test and its workers share."""
    with scratch_dir() as path:
        yield path


@pytest.fixture(scope="module")
def redis_server():
    with booted_broker(rendered_broker("dev")) as server:
        yield server


def test_worker_consumes_its_pools_queues_and_no_others(redis_server, tmp_path, scratch):
    pool = render_pool(tmp_path / "stack", {"name": "mixed", "queues": ["alpha", "beta"]})
    client = client_app(redis_server)
    record = scratch / "record.txt"
    with pod_worker(pool, redis_server):
        for queue in ("alpha", "beta", "gamma"):
            client.send_task(RECORD_TASK, args=[str(record), queue], queue=queue)
        wait_for(lambda: {"alpha", "beta"} <= set(executions(record)), 20, "alpha and beta to run")
        with redis_server.client("celery", "celery-Pa55-9f3Kq") as redis:
            assert redis.llen("gamma") == 1, "the task for another pool's queue was taken"
    assert "gamma" not in executions(record), "the worker ran a task from a queue not its own"


@pytest.mark.parametrize(
    "app",
    [
        "src.celery_app",  # the user's app: configured by environment only
        "src.self_configured_app",  # broker=, config_from_object and conf.update, all conflicting
        "src.namespaced_app",  # Django style: config_from_object(..., namespace="CELERY")
    ],
)
def test_rendered_settings_are_in_effect_in_the_running_worker(redis_server, tmp_path, app):
    pool_settings = {
        "name": "conf",
        "queues": ["conf"],
        "app": app,
        "concurrency": 3,
        "prefetch_multiplier": 2,
        "soft_time_limit": 40,
        "time_limit": 50,
    }
    pool = render_pool(tmp_path / "stack", pool_settings)
    inspect = client_app(redis_server).control.inspect
    with pod_worker(pool, redis_server) as pod:
        replies = inspect(destination=[pod.nodename], timeout=5)
        conf = (replies.conf(with_defaults=True) or {}).get(pod.nodename)
        stats = (replies.stats() or {}).get(pod.nodename)
    assert conf, f"{app}: the worker {pod.nodename} did not answer `inspect conf`"
    assert stats, f"{app}: the worker {pod.nodename} did not answer `inspect stats`"
    expected = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 2,
        "task_soft_time_limit": 40,
        "task_time_limit": 50,
    }
    actual = {key: conf.get(key) for key in expected}
    assert actual == expected, f"{app}: the running worker's settings differ from the rendered ones"
    transport = conf["broker_transport_options"]
    assert transport["visibility_timeout"] == 50 + 300, f"{app}: visibility_timeout {transport}"
    assert transport["socket_timeout"] == BROKER_SOCKET_TIMEOUT, f"{app}: transport {transport}"
    assert stats["prefetch_count"] == 3 * 2, (
        f"{app}: the consumer's QoS is {stats['prefetch_count']}"
    )
    assert stats["broker"]["port"] == redis_server.port, (
        f"{app}: the worker connected to {stats['broker']} instead of CELERY_BROKER_URL's broker"
    )
    assert stats["broker"]["transport_options"]["visibility_timeout"] == 350, (
        f"{app}: the live connection does not carry the rendered transport options"
    )


def test_a_task_runs_through_the_rendered_worker_and_stores_its_result(redis_server, tmp_path):
    pool = render_pool(tmp_path / "stack", {"name": "pdf", "queues": ["celery"]})
    client = client_app(redis_server)
    with pod_worker(pool, redis_server):
        result = client.send_task(
            "src.tasks.process_pdf_task", args=[b"%PDF-1.7 stand-in".decode(), "a.pdf"]
        )
        assert result.get(timeout=20) == len("%PDF-1.7 stand-in"), "the task did not run to the end"


@pytest.mark.parametrize("series", TESTED_CELERY_SERIES, ids=lambda series: f"celery-{series}")
def test_a_busy_early_acked_worker_leaves_the_next_task_queued_from_celery_5_6(
    redis_server, tmp_path, scratch, series
):
    """worker_disable_prefetch where the pod's Celery knows it (5.6+), left out where not (5.5).

    Early acks count only messages not yet started against the prefetch, so a busy one-process
    worker would reserve the next task and keep it from idle pods for as long as it is busy.
    """
    pool = render_pool(
        tmp_path / "stack",
        {
            "name": "early",
            "queues": ["early"],
            "app": "src.plain_tasks",  # its task leaves acks_late to the pool's settings
            "concurrency": 1,
            "acks_late": False,
            "reject_on_worker_lost": False,
        },
    )
    client = client_app(redis_server)
    record = scratch / "record.txt"
    with pod_worker(pool, redis_server, celery_bin=celery_for_series(series)) as pod:
        for label in ("running", "next"):
            client.send_task(PLAIN_TASK, args=[str(record), label, 4.0], queue="early")
        wait_for(lambda: executions(record) == ["running"], 20, "the first task to start")
        time.sleep(1)  # time enough for a consumer that may fetch to fetch the next one
        with redis_server.client("celery", CELERY_PASSWORD) as redis:
            queued = redis.llen("early")
        replies = client.control.inspect([pod.nodename], timeout=5)
        conf = (replies.conf() or {}).get(pod.nodename) or {}
        reserved = (replies.reserved() or {}).get(pod.nodename)
        log = pod.worker.log()
    if tuple(map(int, series.split("."))) < (5, 6):
        assert "worker_disable_prefetch" not in conf, f"Celery {series} got a setting it lacks"
        assert "does not know ['worker_disable_prefetch']" in log, (
            f"Celery {series}: the worker did not say which setting it left out"
        )
        assert queued == 0, f"Celery {series}: expected the busy worker to reserve the next task"
        assert len(reserved or []) == 1, f"Celery {series}: reserved {reserved}"
    else:
        assert conf.get("worker_disable_prefetch") is True, f"Celery {series}: {conf}"
        assert queued == 1, f"Celery {series}: the busy worker took the next task ({reserved})"
        assert reserved == [], f"Celery {series}: the busy worker reserved {reserved}"
