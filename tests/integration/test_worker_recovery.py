"""Workers come back after the broker does, on every Celery series a pool's image may carry.

Real redis-server booted from the rendered dev broker, real workers started as the rendered
pool's pod (tests/integration/test_worker_harness.py) with Celery 5.5, 5.6 and 5.7. Each
failure is one a broker meets in a cluster: its pod deleted (SIGTERM, restarted on the same
port and data), its process killed (SIGKILL, same), a network cut of a few seconds, and the one
a probe must catch: the worker's consuming connection silently dead while the broker, and any
fresh connection to it, are fine. Tasks sent after the broker is back must all run. How fast
is measured in bench/worker_recovery.py, never asserted here.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from tests.integration.test_worker_harness import (
    ProxiedRedis,
    RenderedPool,
    client_app,
    consuming_connection_port,
    executions,
    pod_worker,
    render_pool,
    scratch_dir,
    seconds_until_probe_fails,
    wait_for,
)
from tests.support.broker_boot import BootedBroker, booted_broker, rendered_broker
from tests.support.celery_worker import TESTED_CELERY_SERIES, celery_for_series
from tests.support.redis_server import CELERY_PASSWORD
from tests.support.tcp_proxy import tcp_proxy

RECORD_TASK = "src.tasks.record_execution"
TASKS_AFTER_RECOVERY = 5
ALL_PROCESSED_TIMEOUT = 60
"""Generous: the bound itself (RECONNECT_INTERVAL_MAX plus a connect) is a bench figure."""
STALE_SECONDS = 10  # the smallest liveness window the settings allow: keeps the test short
CUT_SECONDS = 4


@pytest.fixture(params=TESTED_CELERY_SERIES, ids=lambda series: f"celery-{series}")
def celery_bin(request: pytest.FixtureRequest) -> str:
    """Return the `celery` executable of one tested series (a missing virtualenv fails)."""
    return celery_for_series(request.param)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """Yield a directory the test and its workers share (the record of executed tasks)."""
    with scratch_dir() as path:
        yield path


def _pool(tmp_path: Path, **overrides: object) -> RenderedPool:
    return render_pool(tmp_path / "stack", {"name": "recover", "queues": ["recover"], **overrides})


def _send(broker: BootedBroker | ProxiedRedis, record: Path, labels: list[str]) -> None:
    """Publish record_execution tasks from a fresh client (the test's own connections are new)."""
    client = client_app(broker)  # type: ignore[arg-type]
    for label in labels:
        client.send_task(RECORD_TASK, args=[str(record), label], queue="recover")


def _all_processed(record: Path, labels: list[str], what: str) -> None:
    wait_for(
        lambda: set(labels) <= set(executions(record)),
        ALL_PROCESSED_TIMEOUT,
        f"{what}: tasks {sorted(set(labels) - set(executions(record)))} to run",
        interval=0.2,
    )


@pytest.mark.parametrize(
    "stop_signal",
    [signal.SIGTERM, signal.SIGKILL],
    ids=["pod-deleted-sigterm", "process-killed-sigkill"],
)
def test_pool_consumes_again_after_the_broker_restarts_on_its_port_and_data(
    tmp_path, scratch, celery_bin, stop_signal
):
    pool = _pool(tmp_path)
    record = scratch / "record.txt"
    rendered = rendered_broker("dev")
    with ExitStack() as brokers:  # outlive the worker: it stops while the broker is back
        broker = brokers.enter_context(booted_broker(rendered, root=tmp_path / "broker"))
        with pod_worker(pool, broker, celery_bin=celery_bin):
            _send(broker, record, ["before"])
            _all_processed(record, ["before"], "before the restart")

            broker.stop(stop_signal)
            restarted = brokers.enter_context(
                booted_broker(rendered, root=tmp_path / "broker", port=broker.port)
            )
            labels = [f"after-{n}" for n in range(TASKS_AFTER_RECOVERY)]
            _send(restarted, record, labels)
            _all_processed(record, labels, f"after a {signal.Signals(stop_signal).name} restart")


def test_pool_consumes_again_after_a_short_network_cut(tmp_path, scratch, celery_bin):
    pool = _pool(tmp_path)
    record = scratch / "record.txt"
    with ExitStack() as stack:
        broker = stack.enter_context(booted_broker(rendered_broker("dev")))
        proxy = stack.enter_context(tcp_proxy(broker.port))
        proxied = ProxiedRedis(broker, proxy.port)
        stack.enter_context(pod_worker(pool, proxied, celery_bin=celery_bin))  # type: ignore[arg-type]
        proxy.pause()
        _send(broker, record, ["during-cut"])  # the producer reaches Redis; the worker cannot
        time.sleep(CUT_SECONDS)
        assert "during-cut" not in executions(record), "the cut did not cut the worker off"
        proxy.resume()
        labels = ["during-cut", *[f"after-{n}" for n in range(TASKS_AFTER_RECOVERY)]]
        _send(broker, record, labels[1:])
        _all_processed(record, labels, f"after a {CUT_SECONDS} s network cut")


def test_a_silent_consuming_connection_fails_liveness_and_a_restarted_worker_consumes(
    tmp_path, scratch, celery_bin
):
    pool = _pool(tmp_path, liveness_stale_seconds=STALE_SECONDS)
    record = scratch / "record.txt"
    with ExitStack() as stack:
        broker = stack.enter_context(booted_broker(rendered_broker("dev")))
        proxy = stack.enter_context(tcp_proxy(broker.port))
        proxied = ProxiedRedis(broker, proxy.port)
        stuck = stack.enter_context(pod_worker(pool, proxied, celery_bin=celery_bin))  # type: ignore[arg-type]
        stack.callback(stuck.kill)
        assert stuck.probe("liveness"), "liveness fails for a freshly started worker"

        proxy.silence(consuming_connection_port(broker, proxy))
        with redis.Redis(
            port=proxy.port, username="celery", password=CELERY_PASSWORD, socket_timeout=5
        ) as fresh:
            assert fresh.ping(), "a fresh connection through the proxy must still reach Redis"
        time.sleep(2)  # past the BRPOP in flight: a task sent now stays queued in Redis
        _send(broker, record, ["while-stuck"])
        failed_after = seconds_until_probe_fails(stuck, "liveness", timeout=3 * STALE_SECONDS)

        assert failed_after is not None, (
            f"liveness still passes {3 * STALE_SECONDS} s after the consuming connection died"
        )
        assert not stuck.probe("readiness"), "a worker that cannot consume is still ready"
        assert "while-stuck" not in executions(record), (
            "the worker consumed: liveness failed on a worker that was not stuck"
        )
        assert client_app(proxied).control.ping([stuck.nodename], timeout=3), (  # type: ignore[arg-type]
            "the worker's other connections died too: this is not the consuming-only failure"
        )

        stuck.kill()  # the kubelet's restart: the container goes, a new one starts
        stack.enter_context(pod_worker(pool, proxied, celery_bin=celery_bin))  # type: ignore[arg-type]
        labels = ["while-stuck", *[f"after-{n}" for n in range(TASKS_AFTER_RECOVERY)]]
        _send(broker, record, labels[1:])
        _all_processed(record, labels, "after the stuck worker's restart")
