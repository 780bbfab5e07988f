"""The rendered liveness and readiness probes, run as the kubelet runs them, judge real workers.

One window for all cases (they run side by side): a healthy worker, a SIGSTOP'd one, one whose
broker connection is blackholed by a proxy, and one whose redis-server was killed.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import ExitStack

from components.celery_config import heartbeat_seconds
from tests.integration.test_worker_harness import (
    ProxiedRedis,
    pod_worker,
    render_pool,
)
from tests.support.broker_boot import booted_broker, rendered_broker
from tests.support.tcp_proxy import tcp_proxy

STALE_SECONDS = 10  # the smallest window the settings allow: keeps the test short


def test_liveness_fails_for_stopped_and_cut_off_workers_and_passes_for_a_healthy_one(tmp_path):
    pool = render_pool(
        tmp_path / "stack",
        {"name": "probe", "queues": ["probe"], "liveness_stale_seconds": STALE_SECONDS},
    )
    with ExitStack() as stack:
        redis_server = stack.enter_context(booted_broker(rendered_broker("dev")))
        doomed_redis = stack.enter_context(booted_broker(rendered_broker("dev")))
        proxy = stack.enter_context(tcp_proxy(redis_server.port))
        workers = {
            "healthy": stack.enter_context(pod_worker(pool, redis_server)),
            "stopped": stack.enter_context(pod_worker(pool, redis_server)),
            "blackholed": stack.enter_context(
                pod_worker(pool, ProxiedRedis(redis_server, proxy.port))  # type: ignore[arg-type]
            ),
            "broker killed": stack.enter_context(pod_worker(pool, doomed_redis)),
        }
        stopped = workers["stopped"]
        for case, pod in workers.items():
            if case != "healthy":  # broken workers would only wait out their shutdown
                stack.callback(pod.kill)
        for case, pod in workers.items():
            assert pod.probe("liveness"), f"{case}: liveness fails for a freshly started worker"
            assert pod.probe("readiness"), f"{case}: readiness fails for a freshly started worker"

        os.kill(stopped.pid, signal.SIGSTOP)
        proxy.blackhole()
        doomed_redis.stop(signal.SIGKILL)
        broken = {case: pod for case, pod in workers.items() if case != "healthy"}
        failed_after = _seconds_until_liveness_fails(
            broken, STALE_SECONDS + 4 * heartbeat_seconds(STALE_SECONDS)
        )

        assert set(failed_after) == set(broken), (
            f"liveness still passes for {sorted(set(broken) - set(failed_after))} "
            f"{STALE_SECONDS + 8} s after they stopped working"
        )
        assert workers["healthy"].probe("liveness"), "liveness fails for a healthy worker"
        assert workers["healthy"].probe("readiness"), "readiness fails for a healthy worker"
        for case in ("blackholed", "broker killed"):
            assert not workers[case].probe("readiness"), f"{case}: still ready without a broker"


def _seconds_until_liveness_fails(workers: dict, timeout: float) -> dict[str, float]:
    """Poll every worker's liveness probe; return when each first failed."""
    started = time.monotonic()
    failed: dict[str, float] = {}
    while time.monotonic() - started < timeout and len(failed) < len(workers):
        for case, pod in workers.items():
            if case not in failed and not pod.probe("liveness"):
                failed[case] = time.monotonic() - started
        time.sleep(0.5)
    return failed
