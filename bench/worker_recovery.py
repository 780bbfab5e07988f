"""Worker recovery benchmark: how soon pools consume again, and what a busy pod reserves.

    .venv/bin/python -m bench.worker_recovery [--runs 5] [--outage 20] [--jitter 0]
                                              [--series 5.5,5.6,5.7]
                                              [--measure timing,reserved,liveness]

Debian's redis-server booted from the rendered dev broker, real workers started as the rendered
pool's pod (tests/integration/test_worker_harness) on each Celery series (5.5 and 5.6 from the
virtualenvs scripts/celery_venvs.py builds, 5.7 from the project's). Prints:

1. Time to consume again: from the moment the broker answers again (or the network cut ends)
   to the start of a task sent at that moment, median and worst of --runs, for: the broker's
   pod deleted (SIGTERM) and restarted at once on its port and data, its process killed
   (SIGKILL) and restarted at once, killed and back only after --outage seconds (a pod
   rescheduled; plus a random 0 to --jitter s, the same sequence for both variants, so runs
   land at different points of the reconnect schedule), and a 5 s network cut. "rendered" is
   the rendered wiring; "kombu intervals" is the same wiring without its PromptReconnect step
   (kombu's 2, 4, 6 ... 30 s between reconnect attempts), for the outage case where the
   difference shows.
2. Reserved tasks per pod under a long-task load: two pods of a prefork x2 pool, 12 tasks of
   20 s queued; for each pod, tasks running and tasks waiting in it (reserved, not started),
   with the rendered worker_disable_prefetch and without it, for early-acked and acks_late
   pools. Celery 5.5 has no such setting: its rows are the "without" case.
3. Liveness after only the consuming connection goes silent (a proxy drops that one flow;
   Redis and every other connection fine): seconds until the rendered liveness probe fails,
   with liveness_stale_seconds 10; the kubelet restarts the container two probe periods later.
Target: every pool consumes within 30 s of the broker being ready (goal of issue 14).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from tests.integration.test_worker_harness import (
    ProxiedRedis,
    RenderedPool,
    client_app,
    consuming_connection_port,
    pod_worker,
    render_pool,
    scratch_dir,
    seconds_until_probe_fails,
    wait_for,
)
from tests.support.broker_boot import booted_broker, rendered_broker
from tests.support.celery_worker import TESTED_CELERY_SERIES, celery_for_series
from tests.support.redis_server import CELERY_PASSWORD
from tests.support.tcp_proxy import tcp_proxy

RECORD_TASK = "src.tasks.record_execution"
PLAIN_TASK = "src.plain_tasks.record_plain"
QUEUE = "recover"
CUT_SECONDS = 5
CONSUME_TIMEOUT = 120
PROMPT_RECONNECT_LINE = '    app.steps["consumer"].add(PromptReconnect)\n'
DISABLE_PREFETCH_LINE = "    'worker_disable_prefetch': True,"
LIVENESS_WINDOW = 10  # the smallest liveness_stale_seconds the settings allow
MEASUREMENTS = ("timing", "reserved", "liveness")
LONG_TASKS = 12
LONG_TASK_SECONDS = 20.0


def without_line(pool: RenderedPool, line: str) -> RenderedPool:
    """Return the pool with one line taken out of its wiring module (a "before" variant)."""
    files = dict(pool.config_files)
    name = next(n for n, text in files.items() if line in text)
    kept = [text for text in files[name].splitlines(keepends=True) if not text.startswith(line)]
    files[name] = "".join(kept)
    return dataclasses.replace(pool, config_files=files)


def started_at(record: Path, label: str) -> float | None:
    """Return when the task labelled `label` started (record_execution's timestamp)."""
    if not record.exists():
        return None
    for line in record.read_text().splitlines():
        fields = line.split()
        if fields[0] == label:
            return float(fields[2])
    return None


def seconds_to_consume(broker: Any, record: Path, label: str, since: float) -> float:
    """Send one task now; return how long after `since` (wall clock) it started."""
    client_app(broker).send_task(RECORD_TASK, args=[str(record), label], queue=QUEUE)
    start = wait_for(lambda: started_at(record, label), CONSUME_TIMEOUT, f"task {label} to start")
    return float(start) - since


def restart_run(
    pool: RenderedPool,
    celery_bin: str,
    workdir: Path,
    number: int,
    *,
    stop: signal.Signals,
    outages: Sequence[float],
) -> float:
    """Restart the broker under a consuming worker; return seconds from ready to consuming.

    Run `number` keeps the broker down for `outages[number]` seconds.
    """
    outage = outages[number]
    rendered = rendered_broker("dev")
    with scratch_dir() as scratch, ExitStack() as brokers:
        record = scratch / "record.txt"
        broker = brokers.enter_context(booted_broker(rendered, root=workdir / "broker"))
        with pod_worker(pool, broker, celery_bin=celery_bin) as pod:
            seconds_to_consume(broker, record, "warm", time.time())
            broker.stop(stop)
            time.sleep(outage)
            restarted = brokers.enter_context(
                booted_broker(rendered, root=workdir / "broker", port=broker.port)
            )
            took = seconds_to_consume(restarted, record, "after", time.time())
            pod.kill()  # the measurement is over; a warm shutdown would only add time
        return took


def cut_run(pool: RenderedPool, celery_bin: str, workdir: Path, number: int) -> float:
    """Cut the worker's network for CUT_SECONDS; return seconds from the end to consuming."""
    del workdir, number
    with (
        scratch_dir() as scratch,
        booted_broker(rendered_broker("dev")) as broker,
        tcp_proxy(broker.port) as proxy,
    ):
        record = scratch / "record.txt"
        proxied = ProxiedRedis(broker, proxy.port)
        with pod_worker(pool, proxied, celery_bin=celery_bin) as pod:  # type: ignore[arg-type]
            seconds_to_consume(broker, record, "warm", time.time())
            proxy.pause()
            time.sleep(CUT_SECONDS)
            proxy.resume()
            took = seconds_to_consume(broker, record, "after", time.time())
            pod.kill()
        return took


def timing_rows(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str, str, list[float]]]:
    """Measure every failure on every series; return (series, failure, variant, seconds)."""
    rows = []
    for series in args.series:
        celery_bin = celery_for_series(series)
        pool = render_pool(workdir / "stack", {"name": "recover", "queues": [QUEUE]})
        kombu_intervals = without_line(pool, PROMPT_RECONNECT_LINE)
        at_once = [0.0] * args.runs
        jitter = random.Random(14)  # spreads the outages over the reconnect schedule
        outages = [args.outage + jitter.uniform(0, args.jitter) for _ in range(args.runs)]
        outage = f"killed, back after {args.outage:.0f}" + (
            f"-{args.outage + args.jitter:.0f} s" if args.jitter else " s"
        )
        restart = partial(restart_run, pool, celery_bin)
        cases: list[tuple[str, str, Callable[[Path, int], float]]] = [
            (
                "pod deleted (SIGTERM), back at once",
                "rendered",
                partial(restart, stop=signal.SIGTERM, outages=at_once),
            ),
            (
                "killed (SIGKILL), back at once",
                "rendered",
                partial(restart, stop=signal.SIGKILL, outages=at_once),
            ),
            (outage, "rendered", partial(restart, stop=signal.SIGKILL, outages=outages)),
            (
                outage,
                "kombu intervals",
                partial(
                    restart_run, kombu_intervals, celery_bin, stop=signal.SIGKILL, outages=outages
                ),
            ),
            (f"network cut of {CUT_SECONDS} s", "rendered", partial(cut_run, pool, celery_bin)),
        ]
        for failure, variant, run in cases:
            seconds = []
            for number in range(args.runs):
                run_dir = workdir / f"{series}-{len(rows)}-{number}"
                seconds.append(run(run_dir, number))
            rows.append((series, failure, variant, seconds))
            print(f"  {series} {failure} ({variant}): {[f'{s:.2f}' for s in seconds]}", flush=True)
    return rows


@contextmanager
def long_task_load(broker: Any, record: Path) -> Iterator[None]:
    """Queue LONG_TASKS tasks of LONG_TASK_SECONDS (a task leaving acks_late to the pool)."""
    client = client_app(broker)
    for number in range(LONG_TASKS):
        client.send_task(
            PLAIN_TASK, args=[str(record), f"long-{number}", LONG_TASK_SECONDS], queue=QUEUE
        )
    yield


def reserved_run(pool: RenderedPool, celery_bin: str) -> dict[str, Any]:
    """Two pods of `pool` under the long-task load; return running/waiting per pod and queued."""
    with (
        scratch_dir() as scratch,
        booted_broker(rendered_broker("dev")) as broker,
        ExitStack() as pods,
    ):
        record = scratch / "record.txt"
        workers = [
            pods.enter_context(pod_worker(pool, broker, celery_bin=celery_bin)) for _ in range(2)
        ]
        for pod in workers:
            pods.callback(pod.kill)
        with long_task_load(broker, record):
            wait_for(
                lambda: len(record.read_text().splitlines()) >= 4 if record.exists() else False,
                60,
                "both pods busy",
            )
            time.sleep(2)  # a pod that fetches ahead has fetched by now
            inspect = client_app(broker).control.inspect(
                [pod.nodename for pod in workers], timeout=5
            )
            active, reserved = inspect.active() or {}, inspect.reserved() or {}
            with broker.client("celery", CELERY_PASSWORD) as redis:
                queued = redis.llen(QUEUE)
        per_pod = [
            (len(active.get(p.nodename, [])), len(reserved.get(p.nodename, []))) for p in workers
        ]
        return {"pods": per_pod, "queued": queued}


def reserved_rows(
    args: argparse.Namespace, workdir: Path
) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Measure reserved tasks per pod for each acks mode and prefetch variant, per series."""
    rows = []
    for series in args.series:
        celery_bin = celery_for_series(series)
        for acks_late in (False, True):
            settings = {
                "name": "long",
                "queues": [QUEUE],
                "app": "src.plain_tasks",
                "concurrency": 2,
                "acks_late": acks_late,
                "reject_on_worker_lost": acks_late,
            }
            pool = render_pool(workdir / f"stack-{series}-{acks_late}", settings)
            variants = [
                ("without worker_disable_prefetch", without_line(pool, DISABLE_PREFETCH_LINE))
            ]
            if series != "5.5":
                variants.append(("with worker_disable_prefetch (rendered)", pool))
            for variant, variant_pool in variants:
                outcome = reserved_run(variant_pool, celery_bin)
                acks = "acks_late" if acks_late else "early ack"
                rows.append((series, acks, variant, outcome))
                print(f"  {series} {acks} {variant}: {outcome}", flush=True)
    return rows


def liveness_rows(args: argparse.Namespace, workdir: Path) -> list[tuple[str, list[float]]]:
    """Silence only the consuming connection; return seconds until liveness fails, per series."""
    rows = []
    for series in args.series:
        celery_bin = celery_for_series(series)
        pool = render_pool(
            workdir / f"stack-live-{series}",
            {"name": "live", "queues": [QUEUE], "liveness_stale_seconds": LIVENESS_WINDOW},
        )
        seconds = [liveness_run(pool, celery_bin) for _ in range(args.runs)]
        rows.append((series, seconds))
        print(f"  {series} liveness fails after: {[f'{s:.1f}' for s in seconds]}", flush=True)
    return rows


def liveness_run(pool: RenderedPool, celery_bin: str) -> float:
    """Return seconds from silencing the worker's consuming connection to a failed liveness."""
    with (
        booted_broker(rendered_broker("dev")) as broker,
        tcp_proxy(broker.port) as proxy,
        pod_worker(pool, ProxiedRedis(broker, proxy.port), celery_bin=celery_bin) as pod,  # type: ignore[arg-type]
    ):
        proxy.silence(consuming_connection_port(broker, proxy))
        failed_after = seconds_until_probe_fails(pod, "liveness", timeout=6 * LIVENESS_WINDOW)
        pod.kill()
    assert failed_after is not None, "liveness never failed"
    return failed_after


def main() -> None:
    """Run the measurements asked for and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per failure (median, worst)")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds the broker stays down")
    parser.add_argument("--jitter", type=float, default=0.0, help="random extra outage, up to")
    parser.add_argument("--series", type=lambda s: s.split(","), default=list(TESTED_CELERY_SERIES))
    parser.add_argument(
        "--measure",
        type=lambda s: s.split(","),
        default=list(MEASUREMENTS),
        help=f"comma-separated, of {','.join(MEASUREMENTS)}",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/bench-worker-recovery"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    if "timing" in args.measure:
        timing = timing_rows(args, args.workdir)
        print(f"\n{'celery':<8}{'failure':<40}{'variant':<18}{'median s':>10}{'worst s':>10}")
        for series, failure, variant, seconds in timing:
            print(
                f"{series:<8}{failure:<40}{variant:<18}{statistics.median(seconds):>10.2f}{max(seconds):>10.2f}"
            )
    if "reserved" in args.measure:
        reserved = reserved_rows(args, args.workdir)
        header = f"{'acks':<11}{'variant':<42}{'per pod (running, waiting)':<30}{'queued':>7}"
        print(f"\n{'celery':<8}{header}")
        for series, acks, variant, outcome in reserved:
            pods = "  ".join(f"({run}, {wait})" for run, wait in outcome["pods"])
            print(f"{series:<8}{acks:<11}{variant:<42}{pods:<30}{outcome['queued']:>7}")
    if "liveness" in args.measure:
        liveness = liveness_rows(args, args.workdir)
        print(f"\nliveness_stale_seconds {LIVENESS_WINDOW}, consuming connection silenced:")
        print(f"{'celery':<8}{'liveness fails after, median s':>32}{'worst s':>10}")
        for series, seconds in liveness:
            print(f"{series:<8}{statistics.median(seconds):>32.1f}{max(seconds):>10.1f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
