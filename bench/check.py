"""Benchmark the broker check against `celery inspect ping`, and its time to fail.

    .venv/bin/python bench/check.py [--runs 5] [--fail-timeout 2]

Starts a real redis-server (AOF, ACL users) and one stand-in worker, then times, as
subprocesses so start-up imports count:
  - the full check (every check, worker ping, canary round trip) via brokercheck.py and via
    `python -m brokerctl check`;
  - `celery -A src.celery_app inspect ping` with its default timeout (1 s), same broker;
  - the check against a dead port and against a silent endpoint (accepts TCP, never answers).
Target: a healthy full check takes under half the wall time of `celery inspect ping`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.celery_worker import (
    STANDIN_APP_DIR,
    celery_executable,
    running_worker,
    worker_argv,
    worker_env,
)
from tests.support.check_cli import CheckUrls, check_urls, run_check
from tests.support.network import dead_port, silent_listener
from tests.support.redis_server import PROBE_PASSWORD, broker_config, running_redis


def timed_runs(runs: int, once: Callable[[], float]) -> list[float]:
    """Call `once` `runs` times; it returns the seconds one run took."""
    return [once() for _ in range(runs)]


def full_check(urls: CheckUrls, via_brokerctl: bool) -> float:
    """One full check with every check enabled; it must pass."""
    run = run_check(
        *urls.args(), "--expect-persistence", "aof", "--expect-workers", "1", "--json",
        via_brokerctl=via_brokerctl,
    )  # fmt: skip
    if run.returncode != 0:
        msg = f"the healthy check failed:\n{run.output}"
        raise SystemExit(msg)
    return run.seconds


def inspect_ping(urls: CheckUrls) -> float:
    """`celery inspect ping` with its default timeout, as a person would run it."""
    started = time.monotonic()
    done = subprocess.run(
        [*celery_executable(), "-A", "src.celery_app", "inspect", "ping"],
        env=worker_env(urls.celery, urls.result_backend),
        cwd=STANDIN_APP_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        msg = f"celery inspect ping failed:\n{done.stdout}{done.stderr}"
        raise SystemExit(msg)
    return seconds


def time_to_fail(url: str, timeout: float) -> float:
    """Seconds until the check gives up on `url` (it must exit 1)."""
    run = run_check("--url", url, "--timeout", str(timeout), "--expect-workers", "1", "--json")
    if run.returncode != 1:
        msg = f"expected exit 1 for {url}, got {run.returncode}"
        raise SystemExit(msg)
    return run.seconds


def describe(label: str, samples: list[float]) -> str:
    """One line: median, min and max of the samples."""
    return (
        f"{label:<48} median {statistics.median(samples):6.3f} s"
        f"   min {min(samples):6.3f} s   max {max(samples):6.3f} s   (n={len(samples)})"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures; exit 1 when the target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement")
    parser.add_argument("--fail-timeout", type=float, default=2.0, help="--timeout when failing")
    args = parser.parse_args(argv)

    with running_redis(broker_config(persistence="aof")) as server:
        urls = check_urls(server)
        env = worker_env(urls.celery, urls.result_backend)
        with running_worker(worker_argv(), env=env):
            full_check(urls, via_brokerctl=False)  # warm the page cache once
            checks = timed_runs(args.runs, lambda: full_check(urls, via_brokerctl=False))
            brokerctl = timed_runs(args.runs, lambda: full_check(urls, via_brokerctl=True))
            pings = timed_runs(args.runs, lambda: inspect_ping(urls))
    with silent_listener() as silent_port:
        dead = f"redis://probe:{PROBE_PASSWORD}@127.0.0.1:{dead_port()}/0"
        silent = f"redis://probe:{PROBE_PASSWORD}@127.0.0.1:{silent_port}/0"
        dead_runs = timed_runs(args.runs, lambda: time_to_fail(dead, args.fail_timeout))
        silent_runs = timed_runs(args.runs, lambda: time_to_fail(silent, args.fail_timeout))

    ratio = statistics.median(checks) / statistics.median(pings)
    print(describe("full check, python brokercheck.py", checks))
    print(describe("full check, python -m brokerctl check", brokerctl))
    print(describe("celery inspect ping (default timeout 1 s)", pings))
    print(describe(f"fail on dead port (--timeout {args.fail_timeout:g})", dead_runs))
    print(describe(f"fail on silent endpoint (--timeout {args.fail_timeout:g})", silent_runs))
    print(f"full check / inspect ping (medians): {ratio:.2f}  (target < 0.50)")
    return 0 if ratio < 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
