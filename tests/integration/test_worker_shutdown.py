"""SIGTERM mid-task loses nothing: each running task finishes, or goes back and runs elsewhere.

The kubelet sends SIGTERM to the container's main process and SIGKILL when the grace period
ends. The rendered pod remaps SIGTERM to Celery's cold shutdown with a soft-shutdown window
(5.5+): a task that ends within the window finishes; a longer one is cancelled and handed back
to the queue at once, where another worker finishes it. Celery 5.3/5.4 have no soft window:
every running task is handed back.

Known edge (Celery 5.7, prefork): a SIGTERM arriving in the instant a task completes can leave
the cold shutdown waiting on a pool child until SIGKILL; the task has finished by then, and an
unacknowledged message would only be redelivered (never lost).

Other Celery versions: WORKER_TEST_CELERY_BINS=/venv53/bin/celery:/venv55/bin/celery adds runs
with those executables (each venv needs celery[redis] only; the stand-in app is on PYTHONPATH).
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.integration.test_worker_harness import (
    client_app,
    executions,
    pod_worker,
    render_pool,
    scratch_dir,
    wait_for,
)
from tests.support.broker_boot import booted_broker, rendered_broker
from tests.support.celery_worker import celery_executable
from tests.support.redis_server import CELERY_PASSWORD

TASK = "src.plain_tasks.record_plain"
SOFT_SHUTDOWN = 3
SHORT_TASK = 1.0  # ends inside the soft-shutdown window
LONG_TASK = 6.0  # outlives it: must be handed back


@pytest.fixture
def scratch():
    """Yield a directory this test and its workers share."""
    with scratch_dir() as path:
        yield path


def celery_bins() -> list[str]:
    """Return this virtualenv's celery, plus any listed in WORKER_TEST_CELERY_BINS."""
    extra = [b for b in os.environ.get("WORKER_TEST_CELERY_BINS", "").split(":") if b]
    return [celery_executable()[0], *extra]


def celery_version(celery_bin: str) -> tuple[int, ...]:
    """Return the version an executable reports, e.g. (5, 5, 3)."""
    banner = subprocess.run(
        [celery_bin, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return tuple(int(part) for part in banner.split()[0].split(".")[:3])


@pytest.mark.parametrize("celery_bin", celery_bins())
def test_sigterm_mid_task_finishes_or_hands_back_every_task(tmp_path, scratch, celery_bin):
    pool = render_pool(
        tmp_path / "stack",
        {
            "name": "pdf",
            "queues": ["pdf"],
            "app": "src.plain_tasks",
            "concurrency": 2,
            "soft_shutdown_seconds": SOFT_SHUTDOWN,
        },
    )
    record = scratch / "record.txt"
    with booted_broker(rendered_broker("dev")) as redis_server:
        client = client_app(redis_server)
        with pod_worker(pool, redis_server, celery_bin=celery_bin) as first:
            short = client.send_task(TASK, args=[str(record), "short", SHORT_TASK], queue="pdf")
            long = client.send_task(TASK, args=[str(record), "long", LONG_TASK], queue="pdf")
            wait_for(
                lambda: {"short", "long"} <= set(executions(record)), 15, "both tasks to start"
            )
            terminated_at = time.monotonic()
            first.terminate()
            # Exit before the grace period ends, when the kubelet would SIGKILL it.
            first.worker.process.wait(timeout=pool.grace_period_seconds)
            shutdown_seconds = time.monotonic() - terminated_at
        with redis_server.client("celery", CELERY_PASSWORD) as redis:
            waiting = redis.llen("pdf")
        with pod_worker(pool, redis_server, celery_bin=celery_bin) as second:
            assert long.get(timeout=30) == "long", "the handed-back task did not finish elsewhere"
            assert short.get(timeout=30) == "short", "the short task was lost"
            # Not under test, and a SIGTERM landing as a task completes can stall Celery's
            # cold shutdown until the grace period ends (see the module docstring).
            second.kill()

    runs = executions(record)
    assert waiting >= 1, "the cancelled task was not back in its queue after the worker exited"
    assert runs.count("long") == 2, f"long task: expected a cut run and a full rerun, got {runs}"
    if celery_version(celery_bin) >= (5, 5):
        assert runs.count("short") == 1, f"short task should finish in the soft window: {runs}"
        assert shutdown_seconds >= SOFT_SHUTDOWN, "the soft-shutdown window was not waited"
