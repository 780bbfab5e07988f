"""The dev stack, as rendered, run as local pods: it comes up, works, and fails for good reasons.

Tests that only read share one cluster (`dev_stack`); tests that kill, delete or misconfigure
something get a cluster of their own, so none depends on what another did. Worker shutdown and
liveness run on a variant rendered from our own stack file (FAST_STACK): dev's 30 s soft
shutdown and 120 s liveness window are right for production but would take minutes here.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    ONE_MIB,
    RECORD_FILE,
    RECORD_TASK,
    RunningStack,
    records,
    send_pdfs,
)
from tests.podrunner import PodFailed, PodRunnerError, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

FAST_STACK = """\
# dev's shape with timings small enough to watch in a test: a heartbeat every 2 s, restart when it
# is 10 s stale (the minimum), 3 s of soft shutdown, 6 s of grace.
config:
  celery-redis:namespace: transcritor-e2e
  celery-redis:ephemeral: true
  celery-redis:broker:
    persistence: rdb
  celery-redis:workers:
    pools:
      - name: default
        image: registry.example.com/transcritor-pdf:dev
        queues: [celery]
        concurrency: 2
        liveness_stale_seconds: 10
        soft_shutdown_seconds: 3
        termination_grace_period_seconds: 6
"""

BROKER_STOP_SECONDS = 15
"""A deleted broker pod must be gone well before its grace period: Redis saves and exits in
well under a second, and every rollout or node drain waits for the slowest container."""


@pytest.fixture(scope="module")
def dev_dir(rendered: Callable[..., Path]) -> Path:
    return rendered("dev")


@pytest.fixture(scope="module")
def fast_dir(rendered: Callable[..., Path]) -> Path:
    return rendered("e2e-fast", FAST_STACK)


@pytest.fixture(scope="module")
def dev_stack(open_stack: Callable, dev_dir: Path) -> Iterator[RunningStack]:
    """Bring the dev stack up (broker, then workers) for the tests that do not disturb it."""
    with open_stack(dev_dir) as stack:
        stack.start_all()
        yield stack


def test_dev_stack_comes_up_and_its_check_job_passes(dev_stack: RunningStack) -> None:
    job = dev_stack.run_check_job()
    assert job.succeeded, f"the dev check Job failed ({job.reason}):\n{job.logs}"
    assert "OK:" in job.logs, f"the check Job passed without its summary line:\n{job.logs}"
    workers = dev_stack.worker_pods("default")
    assert workers, "no worker pod after the stack came up"
    assert all(pod.restart_count == 0 for pod in workers), (
        f"a worker restarted while the stack came up:\n{dev_stack.cluster.describe()}"
    )


def test_dev_workers_process_every_task_including_1mb_pdfs(dev_stack: RunningStack) -> None:
    with dev_stack.producer() as app:
        pdfs = send_pdfs(app, 6)
        small = send_pdfs(app, 30, size=4096)
    pdf_sizes = dev_stack.results(pdfs)
    small_sizes = dev_stack.results(small)
    assert pdf_sizes == [ONE_MIB] * 6, f"1 MiB PDFs came back with other sizes: {pdf_sizes}"
    assert small_sizes == [4096] * 30, f"small tasks came back with other sizes: {small_sizes}"
    assert dev_stack.queue_length("celery") == 0, "tasks left in the queue after all results"


def test_dev_broker_pod_deletion_is_prompt_and_keeps_queued_tasks(
    open_stack: Callable, dev_dir: Path
) -> None:
    """A deleted broker pod (rollout, drain) saves its snapshot, stops at once, comes back whole."""
    with open_stack(dev_dir) as stack:
        broker = stack.start_broker()
        with stack.producer() as app:
            send_pdfs(app, 3)
        started = time.monotonic()
        still_terminating = False
        try:
            broker.delete(timeout=BROKER_STOP_SECONDS)
        except PodRunnerError:
            still_terminating = True
        assert not still_terminating, (
            f"the broker pod was still terminating {BROKER_STOP_SECONDS}s after deletion (a "
            f"container ignores SIGTERM and waits out the grace period):\n{broker.describe()}"
        )
        stopped_in = time.monotonic() - started
        assert "DB saved on disk" in broker.logs(), f"no final snapshot:\n{broker.logs()}"
        stack.wait_broker_ready()
        assert stack.queue_length("celery") == 3, (
            f"queued tasks lost across a graceful broker restart (stopped in {stopped_in:.1f}s)"
        )


def test_dev_broker_kill_9_keeps_what_the_last_snapshot_holds(
    open_stack: Callable, dev_dir: Path
) -> None:
    """RDB (dev): what a snapshot holds survives kill -9; what came after it does not.

    A graceful stop makes Redis write a final snapshot, so the queued tasks survive a later
    kill -9 (reloaded from the same volume) and are all processed. Tasks queued after that
    snapshot are lost by a kill -9: the trade-off the dev stack file states, and the proof that
    this test notices a lost task.
    """
    with open_stack(dev_dir) as stack:
        broker = stack.start_broker()
        with stack.producer() as app:
            queued = send_pdfs(app, 5) + send_pdfs(app, 10, size=4096)
        assert stack.queue_length("celery") == 15, "the tasks sent were not queued"

        broker.delete(timeout=BROKER_STOP_SECONDS)  # graceful: Redis writes a final snapshot
        broker = stack.wait_broker_ready()
        assert stack.queue_length("celery") == 15, "queued tasks lost across a graceful restart"

        broker.kill(signal.SIGKILL)
        wait_until(lambda: broker.restart_count == 1, 30, "the broker container to restart")
        stack.wait_broker_ready()
        assert stack.queue_length("celery") == 15, (
            f"snapshotted tasks lost by a kill -9 of the broker:\n{broker.logs()[-2000:]}"
        )

        with stack.producer() as app:
            send_pdfs(app, 3, size=4096)
        assert stack.queue_length("celery") == 18, "the later tasks were not queued"
        broker.kill(signal.SIGKILL)
        wait_until(lambda: broker.restart_count == 2, 30, "the broker container to restart")
        stack.wait_broker_ready()
        assert stack.queue_length("celery") == 15, (
            "dev runs RDB: tasks queued after the last snapshot should be gone after kill -9 "
            "(if they survived, persistence is not what the dev stack file says)"
        )

        stack.start_workers()
        sizes = stack.results(queued)
    assert sizes == [ONE_MIB] * 5 + [4096] * 10, f"restored tasks ran with other sizes: {sizes}"


def test_worker_deleted_mid_task_finishes_it_once_during_soft_shutdown(
    open_stack: Callable, fast_dir: Path
) -> None:
    """A rolling restart lets a running task finish within the soft shutdown, and it runs once.

    The old pod acknowledges the task when its soft shutdown ends (Celery sleeps it out), so the
    test waits for the pod to be gone, then checks that nothing is left to redeliver and that the
    replacement never ran the task.
    """
    with open_stack(fast_dir) as stack:
        stack.start_all()
        (old,) = stack.worker_pods("default")
        with stack.producer() as app:
            task_id = app.send_task(RECORD_TASK, args=[RECORD_FILE, "rolling", 1.0]).id
        wait_until(lambda: "rolling" in records(old), 20, "the task to start in the worker")
        old.delete(timeout=30)
        assert stack.results([task_id], timeout=30) == ["rolling"], "the running task was lost"
        assert (stack.unacked(), stack.queue_length("celery")) == (0, 0), (
            f"the finished task is still unacknowledged or queued:\n{old.logs()[-3000:]}"
        )
        (new,) = stack.wait_workers_ready()
        assert "rolling" not in records(new), "a task that finished ran again on the replacement"


def test_worker_deleted_mid_long_task_hands_it_back_for_redelivery(
    open_stack: Callable, fast_dir: Path
) -> None:
    """A task longer than the soft shutdown is handed back on deletion and runs again elsewhere.

    With acks_late and reject-on-worker-lost the message stays unacknowledged while it runs; the
    cold shutdown after the soft one must requeue it at once (not after visibility_timeout, 16
    minutes in dev), so the replacement pod runs it.
    """
    with open_stack(fast_dir) as stack:
        stack.start_all()
        (old,) = stack.worker_pods("default")
        with stack.producer() as app:
            task_id = app.send_task(RECORD_TASK, args=[RECORD_FILE, "long", 5.0]).id
        wait_until(lambda: "long" in records(old), 20, "the task to start in the worker")
        old.delete(timeout=30)
        (new,) = stack.wait_workers_ready()
        assert stack.results([task_id], timeout=30) == ["long"], (
            f"the task cut off by the deletion was lost:\nold pod:\n{old.logs()[-3000:]}"
        )
        assert "long" in records(new), (
            f"the result exists but the replacement never ran the task:\n{new.logs()[-3000:]}"
        )


def test_stopped_worker_is_restarted_by_its_liveness_probe(
    open_stack: Callable, fast_dir: Path
) -> None:
    """SIGSTOP freezes the worker's main process: its heartbeat goes stale, liveness restarts it."""
    with open_stack(fast_dir) as stack:
        stack.start_all()
        (worker,) = stack.worker_pods("default")
        worker.kill(signal.SIGSTOP)
        wait_until(
            lambda: worker.restart_count >= 1,
            40,
            "the liveness probe to restart the stopped worker",
            describe=worker.describe,
        )
        assert any("Liveness probe failed" in event for event in worker.events), (
            f"the worker restarted, but not because of its liveness probe:\n{worker.describe()}"
        )
        stack.wait_workers_ready()
        with stack.producer() as app:
            task_ids = send_pdfs(app, 2, size=1024)
        assert stack.results(task_ids) == [1024, 1024], "the restarted worker processes no task"


def test_dev_check_job_fails_and_says_why_when_the_check_password_is_wrong(
    open_stack: Callable, dev_dir: Path
) -> None:
    wrong_url = "redis://check:not-the-password@celery-broker.transcritor-dev.svc:6379/0"
    overrides = {"celery-broker-client": {"BROKER_CHECK_URL": wrong_url}}
    with open_stack(dev_dir, secret_overrides=overrides) as stack:
        stack.start_all()
        job = stack.run_check_job()
    assert not job.succeeded, f"the check passed with a wrong password:\n{job.logs}"
    assert job.reason == "BackoffLimitExceeded", f"unexpected end of the Job: {job.reason}"
    assert "not-the-password" not in job.logs, "the check printed the password"
    assert re.search(r"^connect\s+FAIL.*invalid username-password", job.logs, re.MULTILINE), (
        f"the check failed without saying its own login was refused:\n{job.logs}"
    )


def test_dev_check_job_fails_and_says_why_when_the_workers_password_is_wrong(
    open_stack: Callable, dev_dir: Path
) -> None:
    """The workers' URL (CELERY_BROKER_URL) is wrong: no worker can connect, the check says so."""
    wrong_url = "redis://celery:not-the-password@celery-broker.transcritor-dev.svc:6379/0"
    overrides = {"celery-broker-client": {"CELERY_BROKER_URL": wrong_url}}
    with open_stack(dev_dir, secret_overrides=overrides) as stack:
        stack.start_broker()
        stack.start_workers_without_waiting()
        job = stack.run_check_job()
        workers = stack.worker_pods("default")
        ready = [pod.name for pod in workers if pod.ready]
    assert not job.succeeded, f"the check passed though no worker can log in:\n{job.logs}"
    assert "not-the-password" not in job.logs, "the check printed the password"
    assert not ready, f"workers with a wrong password became ready: {ready}"
    assert re.search(r"^connect\s+PASS", job.logs, re.MULTILINE), (
        f"the check's own login (check user) should still work:\n{job.logs}"
    )
    assert re.search(r"^workers\s+FAIL.*invalid username-password", job.logs, re.MULTILINE), (
        f"the check failed without saying the workers' login was refused:\n{job.logs}"
    )


def test_dev_stack_does_not_come_up_without_the_workers_broker_url_key(
    open_stack: Callable, dev_dir: Path
) -> None:
    """Without the Secret key the workers read, they must not start (the bring-up test can fail)."""
    overrides = {"celery-broker-client": {"CELERY_BROKER_URL": None}}
    with open_stack(dev_dir, secret_overrides=overrides) as stack:
        stack.start_broker()
        with pytest.raises(PodFailed, match="CELERY_BROKER_URL"):
            stack.start_workers()
