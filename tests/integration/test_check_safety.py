"""The check never disturbs running tasks.

kombu's Redis transport requeues ("restores") unacknowledged messages from a consuming
connection: on idle polls (`restore_visible`, judged by *that connection's*
visibility_timeout) and when a channel closes. A check that consumed its control replies
through such a connection would run a long acks_late task a second time. These tests count
executions of a real running task while the check runs with a visibility timeout far below
the task's age, and prove with a plain kombu consumer that the hazard is real.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection, Queue

from tests.support.celery_worker import running_worker, worker_argv, worker_env
from tests.support.check_cli import CheckUrls, check_urls, run_check
from tests.support.redis_server import CELERY_PASSWORD, RedisServer, broker_config, running_redis

TASK_SECONDS = 8.0
RECORD_TASK = "src.tasks.record_execution"


@dataclass
class RunningTask:
    """A long acks_late task that a worker is running, and where it records executions."""

    server: RedisServer
    urls: CheckUrls
    record: Path
    result: object

    def executions(self) -> int:
        """How many times the task started so far."""
        return len(self.record.read_text().splitlines()) if self.record.exists() else 0

    def unacked(self) -> int:
        """Entries in kombu's unacked hash: deliveries not acknowledged yet."""
        return int(self.server.client("celery", CELERY_PASSWORD).hlen("unacked"))


def wait_for(condition: object, timeout: float, what: str) -> None:
    """Poll `condition()` until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def running_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningTask]:
    """Yield a worker (2 processes: the canary can run beside it) busy with one long task."""
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    with running_redis(broker_config()) as server:
        urls = check_urls(server)
        env = worker_env(urls.celery, urls.result_backend)
        with running_worker(worker_argv(concurrency=2), env=env):
            client = Celery("test-client", broker=urls.celery, backend=urls.result_backend)
            record = tmp_path / "executions.txt"
            result = client.send_task(RECORD_TASK, args=[str(record), "long", TASK_SECONDS])
            task = RunningTask(server, urls, record, result)
            wait_for(lambda: task.executions() == 1, 10, "the long task to start")
            assert task.unacked() == 1, "an acks_late task in progress is in kombu's unacked hash"
            time.sleep(2.0)  # the delivery is now older than the check's 1 s visibility timeout
            yield task
            client.close()


def test_check_does_not_redeliver_a_running_acks_late_task(running_task: RunningTask) -> None:
    urls = running_task.urls.args()
    run = run_check(*urls, "--expect-workers", "1", "--visibility-timeout", "1", "--json")
    assert run.returncode == 0, f"check failed beside a running task:\n{run.output}"
    assert run.check("unacked")["status"] == "warn", "an old delivery must be reported"
    # Expecting a worker too many keeps the check polling an empty reply queue until its
    # timeout: the idle polls where kombu's restore_visible would requeue the running task.
    run = run_check(*urls, "--expect-workers", "2", "--visibility-timeout", "1", "--timeout", "2")
    assert run.returncode == 1, f"the missing worker must fail the check:\n{run.output}"

    assert running_task.result.get(timeout=TASK_SECONDS + 10) == "long"  # type: ignore[attr-defined]
    time.sleep(1.0)  # a redelivered copy would start within this
    assert running_task.executions() == 1, (
        f"the check made the task run {running_task.executions()} times"
    )
    assert running_task.unacked() == 0, "the task's delivery was not acknowledged once"


def test_plain_kombu_consumer_would_redeliver_it(running_task: RunningTask) -> None:
    """Guard for the test above: with ack emulation on, consuming anything restores the task."""
    naive = Connection(running_task.urls.celery, transport_options={"visibility_timeout": 1})
    with naive, naive.Consumer(Queue("naive-probe"), callbacks=[], no_ack=True):
        for _ in range(3):
            try:
                naive.drain_events(timeout=0.3)
            except TimeoutError:  # kombu's socket.timeout
                pass

    wait_for(lambda: running_task.executions() >= 2, 10, "the restored task to run again")
