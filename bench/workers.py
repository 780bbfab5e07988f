"""Worker benchmark: the rendered pool configuration against Celery's defaults, in one run.

    .venv/bin/python -m bench.workers [--short-tasks 3000] [--large-tasks 150]

Runs Debian's redis-server and real Celery workers. "rendered" is a pool started exactly as its
pod (tests/integration/test_worker_harness: rendered command, env, wiring module); "defaults"
is `celery worker` with the same pool shape (-P/-c/-Q) and no configuration at all. Prints:

1. tasks/s (median of --rounds alternating runs) draining a pre-filled queue of no-op tasks
   (the prod `short` shape: threads x8) and of 1 MB messages (the prod `pdf` shape: prefork x2);
2. tasks lost when SIGTERM hits mid-task and the task outlives the grace period (SIGKILL at its
   end): the defaults ack on receipt, so the kill loses them; the rendered pool hands them back.
Target: short tasks keep >= 0.9x the defaults' throughput while losing nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.integration.test_worker_harness import (
    RenderedPool,
    client_app,
    pod_environment,
    pod_worker,
    render_pool,
    wait_for,
)
from tests.support.celery_worker import STANDIN_APP_DIR, celery_executable, running_worker
from tests.support.redis_server import CELERY_PASSWORD, RedisServer, broker_config, running_redis

TASK = "src.bench_tasks.count"
QUEUE = "bench"
SHAPES = {
    "short": {"pool": "threads", "concurrency": 8, "soft_time_limit": 50, "time_limit": 60},
    "large": {"pool": "prefork", "concurrency": 2},
}
GRACE = 5  # seconds between SIGTERM and SIGKILL in the loss test (tasks take longer)
LOSS_TASK_SECONDS = 8.0


def render(workdir: Path, shape: str, **extra: Any) -> RenderedPool:
    """Render the pool of one shape, consuming the benchmark queue."""
    settings = {
        "name": shape,
        "queues": [QUEUE],
        "app": "src.bench_tasks",
        **SHAPES[shape],
        **extra,
    }
    return render_pool(workdir / f"{shape}-{len(extra)}", settings)


@contextmanager
def default_worker(pool: RenderedPool, server: RedisServer) -> Iterator[Any]:
    """`celery worker` with the pool's shape and Celery's defaults (no wiring module, no remap)."""
    command = pool.container["command"]
    pool_kind, concurrency = (command[command.index(flag) + 1] for flag in ("-P", "-c"))
    env = pod_environment(pool, server, Path("/nonexistent"), Path(celery_executable()[0]).parent)
    env.pop("REMAP_SIGTERM")
    env["PYTHONPATH"] = str(STANDIN_APP_DIR)
    argv = [
        *celery_executable(),
        *(
            "-A",
            "src.bench_tasks",
            "worker",
            "--loglevel",
            "INFO",
            "-Q",
            QUEUE,
            "-P",
            pool_kind,
            "-c",
            concurrency,
        ),
        *("-n", f"defaults-{os.getpid()}@%h", "--without-gossip", "--without-mingle"),
    ]
    with running_worker(argv, env=env, stop_timeout=60) as worker:
        yield worker


def drain_rate(start_worker: Any, server: RedisServer, count: int, payload: str) -> float:
    """Tasks/s: fill the queue with the worker stopped, then time the worker draining it."""
    broker = server.client("celery", CELERY_PASSWORD)
    key = f"done-{time.monotonic_ns()}"
    client = client_app(server)
    with client.producer_or_acquire() as producer:
        for _ in range(count):
            client.send_task(TASK, args=[key, payload], queue=QUEUE, producer=producer)
    with start_worker() as _worker:
        started = time.monotonic()
        wait_for(lambda: int(broker.get(key) or 0) >= count, 600, f"{count} tasks", interval=0.02)
        return count / (time.monotonic() - started)


def sigterm_outcome(start_worker: Any, server: RedisServer, tasks: int) -> dict[str, int]:
    """Where tasks end up when SIGTERM lands mid-task and SIGKILL follows after GRACE seconds.

    `queued` are back in their list (another worker takes them at once), `unacked` wait in
    kombu's unacked hash for the visibility timeout, `lost` are nowhere.
    """
    broker = server.client("celery", CELERY_PASSWORD)
    key = f"lost-{time.monotonic_ns()}"
    client = client_app(server)
    with start_worker() as worker:
        process = getattr(worker, "worker", worker).process
        for _ in range(tasks):
            client.send_task(TASK, args=[key, "", LOSS_TASK_SECONDS], queue=QUEUE)
        wait_for(lambda: broker.llen(QUEUE) == 0, 10, "the tasks to be taken")
        time.sleep(0.5)  # let them start running
        os.kill(process.pid, signal.SIGTERM)  # the kubelet: SIGTERM to the main process
        try:
            process.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:  # the grace period ended: the kubelet kills
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    finished, queued, unacked = (
        int(broker.get(key) or 0),
        int(broker.llen(QUEUE)),
        int(broker.hlen("unacked")),
    )
    broker.delete(QUEUE, "unacked", "unacked_index")
    return {
        "finished": finished,
        "queued": queued,
        "unacked": unacked,
        "lost": tasks - finished - queued - unacked,
    }


def main() -> None:
    """Run every measurement for both configurations and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-tasks", type=int, default=3000)
    parser.add_argument("--large-tasks", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3, help="runs per configuration (median)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/bench-workers"))
    args = parser.parse_args()
    rows = []
    with running_redis(broker_config(maxmemory="1gb")) as server:
        for shape, count, payload in (
            ("short", args.short_tasks, ""),
            ("large", args.large_tasks, "x" * 1024 * 1024),
        ):
            pool = render(args.workdir, shape)
            rendered, defaults = [], []
            for _ in range(args.rounds):  # alternate, so drift on a shared machine hits both
                rendered.append(
                    drain_rate(lambda p=pool: pod_worker(p, server), server, count, payload)
                )
                defaults.append(
                    drain_rate(lambda p=pool: default_worker(p, server), server, count, payload)
                )
            label = f"{shape} ({SHAPES[shape]['pool']} x{SHAPES[shape]['concurrency']})"
            rows.append((label, statistics.median(rendered), statistics.median(defaults)))
        loss_pool = render(
            args.workdir, "large", soft_shutdown_seconds=1, termination_grace_period_seconds=GRACE
        )
        outcomes = {
            "rendered": sigterm_outcome(lambda: pod_worker(loss_pool, server), server, 2),
            "defaults": sigterm_outcome(lambda: default_worker(loss_pool, server), server, 2),
        }
    print(f"{'workload':<24}{'rendered t/s':>14}{'defaults t/s':>14}{'ratio':>8}")
    for name, rendered, defaults in rows:
        print(f"{name:<24}{rendered:>14.1f}{defaults:>14.1f}{rendered / defaults:>8.2f}")
    print(
        f"\nSIGTERM mid-task (prefork x2, 2 tasks of {LOSS_TASK_SECONDS:.0f} s), "
        f"SIGKILL after {GRACE} s:"
    )
    for name, outcome in outcomes.items():
        print(f"  {name:<10}" + "  ".join(f"{k}={v}" for k, v in outcome.items()))


if __name__ == "__main__":
    main()
