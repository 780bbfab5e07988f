"""A Sentinel stack, as rendered, survives losing its master: real Redis, Sentinel and Celery.

Each test boots its own stack (three broker pods, each with its own address, a Sentinel beside
each Redis), because every test moves the master. Timings are shortened (down-after 2 s,
failover-timeout 4 s) where the point is behaviour; bench/failover.py measures the shipped
defaults. What these tests assert: a replica is promoted, workers consume tasks published
after the fault without a restart, on Celery 5.5, 5.6 and 5.7, acknowledged tasks are lost
only within the loss bound (none on a planned handover), a master cut off from the others
refuses writes, and a lost master comes back as a replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ha.conftest import CELERY_SERIES
from tests.ha.sentinel_stack import (
    PoolSpec,
    SentinelStack,
    parse_publishes,
    running_stack,
    stack_file,
)
from tests.podrunner import LocalImage, Pod, WaitTimeout, wait_until

pytestmark = [pytest.mark.ha, pytest.mark.timeout(240)]

FAST = {"down_after_ms": 2000, "failover_timeout_ms": 4000}
"""Sentinel timings of these tests: a failover in seconds, still far above a loaded PING."""

ONE_POOL = stack_file(**FAST)
EVERY_CELERY = stack_file(
    **FAST,
    pools=[
        PoolSpec(name=f"celery{series.replace('.', '')}", celery=series, replicas=1)
        for series in CELERY_SERIES
    ],
)

FAILOVER_SECONDS = 60
"""Bound on a failover here: down-after + election + promotion, with retries to spare."""
RESUME_SECONDS = 60
"""Bound on workers consuming again after a failover."""


def restarts(pods: list[Pod]) -> dict[str, int]:
    """Restart count of each pod, by name."""
    return {pod.name: pod.restart_count for pod in pods}


def assert_workers_kept(stack: SentinelStack, before: dict[str, int]) -> None:
    """Assert the same worker pods run, none restarted: they followed the failover alone."""
    now = restarts(stack.worker_pods())
    ended = "\n".join(
        f"--- {pod.name}, the run that ended:\n{pod.logs(previous=True)[-3000:]}"
        for pod in stack.worker_pods()
        if pod.restart_count != before.get(pod.name)
    )
    assert now == before, (
        f"workers restarted or were replaced during the failover (before {before}, after "
        f"{now}): they did not follow the new master by themselves\n{ended}"
    )


def stopped_as(pod: Pod) -> str:
    """Return the role (M master, S replica) Redis logged as it began shutting down."""
    lines = [line for line in pod.logs("redis").splitlines() if "User requested shutdown" in line]
    return lines[-1].split(":", 2)[1][0] if lines else "?"


def wait_each_queue_consumed(stack: SentinelStack, producer: Pod, fault_at: float) -> None:
    """Wait until every pool ran a task published after the fault; name the pools that did not."""
    queues = set(stack.worker_deployments)

    def pending() -> set[str]:
        ran = stack.executions()
        after = [p for p in parse_publishes(producer.logs()) if p.started > fault_at]
        return queues - {p.queue for p in after if p.label in ran}

    try:
        wait_until(lambda: not pending(), RESUME_SECONDS, "every pool to consume again")
    except WaitTimeout as error:
        msg = (
            f"pools {sorted(pending())} ran no task published after the fault within "
            f"{RESUME_SECONDS}s\n{stack.describe()}"
        )
        raise AssertionError(msg) from error


def test_stack_comes_up_and_a_deleted_master_hands_over_without_losing_a_task(
    render_ha: Callable[[str, str], Path], ha_images: dict[str, LocalImage]
) -> None:
    """First deploy: pod 0 leads, replicas sync, quorum holds, the check passes. Then a drain.

    Deleting the master's pod runs its preStop handover (SENTINEL FAILOVER, wait to be a
    replica), so the pod stops as a replica and no acknowledged task is lost.
    """
    with running_stack(render_ha("ha-fast", ONE_POOL), ha_images) as stack:
        stack.start_broker()
        master = stack.wait_sentinels_agree()
        first = f"{stack.broker}-0"
        assert master.name == first, f"a first deploy should elect {first}, not {master.name}"
        for pod in stack.broker_pods():
            if pod is not master:
                stack.wait_replica_of(pod.name, master)
            quorum = stack.sentinel(pod, "SENTINEL", "CKQUORUM", stack.master_name)
            assert quorum.startswith("OK"), f"{pod.name}'s Sentinel: {quorum}"
        workers = stack.start_workers()
        job = stack.cluster.run_job(stack.check_job, timeout=90)
        assert job.succeeded, f"the check Job failed on a healthy Sentinel stack:\n{job.logs}"

        before = restarts(workers)
        producer = stack.start_producer()
        stack.wait_acknowledged(producer, 40)
        fault_at = time.time()
        master.delete(timeout=60)
        new = stack.wait_master(other_than=master.name, timeout=FAILOVER_SECONDS)
        assert stopped_as(master) == "S", (
            "the master's preStop did not hand over (Redis logs its role, M or S, on every "
            f"line):\n{master.logs('redis')[-3000:]}"
        )
        wait_each_queue_consumed(stack, producer, fault_at)
        outcome = stack.outcome(producer, fault_at, new)
        assert not outcome.lost, (
            f"{len(outcome.lost)} acknowledged tasks lost by a planned handover: "
            f"{[p.label for p in outcome.lost][:10]}"
        )
        assert_workers_kept(stack, before)
        stack.wait_replica_of(master.name, new)  # the recreated pod rejoins as a replica


def test_lost_master_node_promotes_a_replica_and_workers_of_each_celery_follow(
    render_ha: Callable[[str, str], Path], ha_images: dict[str, LocalImage]
) -> None:
    """The master's node is lost (cut off, its processes killed -9): a replica is promoted.

    One pool per Celery series (5.5, 5.6, 5.7) consumes its own queue; each must consume
    tasks published after the fault without a restart. Acknowledged tasks may be lost only
    from the last min-replicas-max-lag seconds before the fault. When the node comes back, its
    Redis rejoins as a replica of the new master.
    """
    with running_stack(render_ha("ha-every-celery", EVERY_CELERY), ha_images) as stack:
        stack.start_broker()
        master = stack.wait_sentinels_agree()
        before = restarts(stack.start_workers())
        producer = stack.start_producer()
        stack.wait_acknowledged(producer, 40)

        fault_at = stack.lose_node(master)
        new = stack.wait_master(other_than=master.name, timeout=FAILOVER_SECONDS)
        wait_each_queue_consumed(stack, producer, fault_at)
        outcome = stack.outcome(producer, fault_at, new)

        lag = stack.config_value("min-replicas-max-lag")
        early = [p.label for p in outcome.lost if p.finished < fault_at - lag - 1]
        assert not early, (
            f"tasks acknowledged more than {lag + 1}s before the master was lost are gone: "
            f"{early[:10]} (of {len(outcome.lost)} lost): the loss bound did not hold"
        )
        assert_workers_kept(stack, before)

        stack.reconnect(master.name)
        stack.wait_replica_of(master.name, new)


def test_master_cut_off_refuses_writes_then_rejoins_as_a_replica(
    render_ha: Callable[[str, str], Path], ha_images: dict[str, LocalImage]
) -> None:
    """A master cut off from its replicas stops taking writes (NOREPLICAS), then rejoins.

    Its processes keep running; a client on its side of the cut (exec in its pod) keeps
    writing. Writes it accepted after the cut are thrown away when it rejoins the new master.
    """
    with running_stack(render_ha("ha-fast", ONE_POOL), ha_images) as stack:
        stack.start_broker()
        master = stack.wait_sentinels_agree()
        key = "ha-partition-probe"
        for value in ("before-1", "before-2"):
            reply = stack.redis(master, "RPUSH", key, value, user="celery")
            assert reply.isdigit(), f"a healthy master refused a write: {reply}"

        cut_at = stack.cut_off(master)
        accepted: list[str] = []
        refusal = ""
        lag = stack.config_value("min-replicas-max-lag")
        while time.time() - cut_at < lag + 15 and not refusal:
            reply = stack.redis(master, "RPUSH", key, f"cut-{len(accepted)}", user="celery")
            if reply.isdigit():
                accepted.append(reply)
            else:
                refusal = reply
        assert "NOREPLICAS" in refusal, (
            f"the master cut off from every replica still took writes {lag + 15}s later "
            f"(accepted {len(accepted)}; last reply {refusal!r}): the loss bound is not in effect"
        )

        # Redis alone keeps silent replica links for repl-timeout (60 s) and refuses only at
        # its next once-a-second recount; the fence drops them as soon as they lag.
        def fenced() -> bool:
            return "fence:" in master.logs("reloader")

        try:
            wait_until(fenced, 5, "the fence to drop the lagging replica links")
        except WaitTimeout:
            pytest.fail(
                "the master refused writes but its fence never dropped the lagging replica "
                f"links (reloader log):\n{master.logs('reloader')[-2000:]}",
                pytrace=False,
            )
        links = stack.redis(master, "INFO", "replication", user="probe")
        assert "connected_slaves:0" in links, f"replica links kept while cut off:\n{links}"

        new = stack.wait_master(other_than=master.name, timeout=FAILOVER_SECONDS)
        stack.reconnect(master.name)
        stack.wait_replica_of(master.name, new)
        kept = stack.redis(new, "LRANGE", key, "0", "-1", user="celery").split()
        assert kept == ["before-1", "before-2"], (
            f"after the rejoin the list holds {kept}: expected only the writes before the cut "
            f"({len(accepted)} accepted while cut off are thrown away by the resync)"
        )
        old = stack.redis(stack.pod(master.name), "LRANGE", key, "0", "-1", user="celery").split()
        assert old == kept, f"the rejoined replica holds {old}, the master {kept}"


def test_master_lost_right_after_a_first_deploy_is_replaced_at_the_first_election(
    render_ha: Callable[[str, str], Path], ha_images: dict[str, LocalImage]
) -> None:
    """The master's node is lost as soon as both replicas are in sync, on a brand-new stack.

    Sentinels read replicas from the master's INFO every 10 s; one that has not yet, when
    elected, finds nothing to promote (-failover-abort-no-good-slave) and the next election
    waits 2 x failover-timeout, for as long as the master is gone. Each Sentinel must
    therefore know the other pods as replicas from its start: the first election promotes.
    """
    with running_stack(render_ha("ha-fast", ONE_POOL), ha_images) as stack:
        stack.start_broker()
        master = stack.wait_master()
        for pod in stack.broker_pods():
            if pod is not master:
                stack.wait_replica_of(pod.name, master)
        # Right away, not after their next look at the master's INFO (up to 10 s away).
        pods = stack.broker_pods()
        known = {pod.name: stack.sentinel_view(pod).get("num-slaves") for pod in pods}
        assert set(known.values()) == {"2"}, (
            f"replicas each Sentinel knows right after the replicas synced: {known} (expected 2 "
            "each): a Sentinel elected now would find nothing to promote"
        )
        fault_at = stack.lose_node(master)
        new = stack.wait_master(other_than=master.name, timeout=FAILOVER_SECONDS)
        timeline = [
            (round(at - fault_at, 2), text)
            for at, text in stack.sentinel_log()
            if at >= fault_at and ("failover" in text or "elected" in text or "epoch" in text)
        ]
        aborted = [line for line in timeline if "-failover-abort" in line[1]]
        assert not aborted, (
            f"{new.name} was promoted only after an aborted election: the elected Sentinel "
            "knew no replica yet\n" + "\n".join(f"{at:7.2f} {text}" for at, text in timeline)
        )
