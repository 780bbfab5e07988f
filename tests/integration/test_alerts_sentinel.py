"""The Sentinel topology's alerts, evaluated by the real promtool over three scraped pods.

Each broker pod is its own scrape target: its series carry the labels the Prometheus Operator
gives a ServiceMonitor target (`pod`, `instance`, `service`, `endpoint`, `container`, `job`,
`namespace`). A pod's series are the recorded standalone exporter output (queues, memory,
persistence) plus the recorded replication output of a real master with two replicas
(tests/fixtures/exporter/, its README says how), recorded loopback addresses replaced by the
pods' hostnames and the broker port. A lost pod is not scraped at all: its series go stale.
Failures are then played minute by minute, and promtool says which alerts fire.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from components import metrics, redis_config, sentinel_config
from components.settings import StackSettings
from tests.support.promtool_rules import (
    FIXTURES,
    alert_stack,
    exporter_series,
    fires,
    quiet,
    run_promtool,
    series_name,
)

STANDALONE_FIXTURE = FIXTURES / "redis_exporter-v1.67.0-celery.prom"
MASTER_FIXTURE = FIXTURES / "redis_exporter-v1.67.0-sentinel-pod0-master.prom"
REPLICA_FIXTURES = (
    FIXTURES / "redis_exporter-v1.67.0-sentinel-pod1-replica.prom",
    FIXTURES / "redis_exporter-v1.67.0-sentinel-pod2-replica.prom",
)
RECORDED_MASTER = {"master_host": "127.0.0.1", "port": "17101"}
RECORDED_PORTS = ("17101", "17102", "17103")
RECORDED_HOST = "celery-broker-{k}.celery-broker-headless.celery.svc"
"""The announced hostnames the recording gave its replicas (`replica-announce-ip`)."""
MINUTES = 61
"""Samples per series, one a minute: minute 0 to 60."""
PODS = 3
SENTINEL_ALERTS = (
    "CeleryBrokerNoMaster",
    "CeleryBrokerSplitBrain",
    "CeleryBrokerFailover",
    "CeleryBrokerReplicaDown",
    "CeleryBrokerReplicationBroken",
    "CeleryBrokerWritesRefused",
)
QUEUE_KEYS = ("celery", "celery\x06\x163", "celery\x06\x166", "celery\x06\x169")


def stack(**sentinel: int) -> StackSettings:
    return alert_stack(
        {
            "topology": "sentinel",
            "sentinel": {"replicas": PODS, "min_replicas_to_write": 1, **sentinel},
        }
    )


def pod_name(settings: StackSettings, k: int) -> str:
    return sentinel_config.pod_hostname(settings, k).split(".", 1)[0]


def target(settings: StackSettings, k: int) -> dict[str, str]:
    """Return the labels Prometheus gives the scrape target of broker pod `k` (its exporter)."""
    service = metrics.metrics_service_name(settings)
    return {
        "job": service,
        "namespace": settings.namespace,
        "service": service,
        "endpoint": metrics.PORT_NAME,
        "container": metrics.CONTAINER,
        "pod": pod_name(settings, k),
        "instance": f"192.0.2.{10 + k}:{settings.metrics.exporter_port}",
    }


def release(settings: StackSettings) -> dict[str, str]:
    """Return the labels every pod of the release shares: what alerts counting pods keep."""
    return {"job": metrics.metrics_service_name(settings), "namespace": settings.namespace}


@dataclass
class Series:
    """One input series: its metric, labels and one token a minute (value, `_` or `stale`)."""

    metric: str
    labels: dict[str, str]
    tokens: list[str] = field(default_factory=lambda: ["_"] * MINUTES)


@dataclass
class Broker:
    """What Prometheus scraped from the broker pods, minute by minute."""

    settings: StackSettings
    series: dict[str, Series] = field(default_factory=dict)

    def _replace(self, follows: int) -> dict[str, str]:
        """Map recorded addresses to this stack's: hostnames, broker port, master followed."""
        port = str(self.settings.broker.port)
        replace = {recorded: port for recorded in RECORDED_PORTS}
        replace |= {
            RECORDED_HOST.format(k=k): sentinel_config.pod_hostname(self.settings, k)
            for k in range(PODS)
        }
        replace[RECORDED_MASTER["master_host"]] = sentinel_config.pod_hostname(
            self.settings, follows
        )
        return replace

    def master(
        self,
        k: int,
        replicas: Iterable[int],
        start: int = 0,
        stop: int = MINUTES,
        *,
        syncing: Iterable[int] = (),
    ) -> None:
        """Pod `k` is scraped as master in [start, stop), stale at stop.

        `replicas` are online with lag 0 (the recorded replica line, one per pod); `syncing`
        are connected but still in their full resync (state wait_bgsave, lag 0 as INFO shows).
        """
        replicas, syncing = list(replicas), list(syncing)
        recorded_replica = sentinel_config.pod_hostname(self.settings, 1)
        samples = []
        for name, labels, value in exporter_series(
            MASTER_FIXTURE, target(self.settings, k), replace=self._replace(0)
        ):
            if name == "redis_connected_slaves":
                samples.append((name, labels, float(len(replicas) + len(syncing))))
            elif "slave_ip" not in labels:
                samples.append((name, labels, value))
            elif labels["slave_ip"] == recorded_replica:
                for j in replicas:
                    host = sentinel_config.pod_hostname(self.settings, j)
                    samples.append((name, {**labels, "slave_ip": host}, value))
                for j in syncing:
                    host = sentinel_config.pod_hostname(self.settings, j)
                    resync = {**labels, "slave_ip": host, "slave_state": "wait_bgsave"}
                    samples.append((name, resync, 0.0))
        self._scrape(k, samples, start, stop)

    def replica(self, k: int, follows: int = 0, start: int = 0, stop: int = MINUTES) -> None:
        """Pod `k` is scraped as a replica whose link to pod `follows` is up, in [start, stop)."""
        fixture = REPLICA_FIXTURES[(k - 1) % len(REPLICA_FIXTURES)]
        samples = exporter_series(fixture, target(self.settings, k), replace=self._replace(follows))
        self._scrape(k, samples, start, stop)

    def _scrape(
        self,
        k: int,
        role_samples: list[tuple[str, dict[str, str], float]],
        start: int,
        stop: int,
    ) -> None:
        """Add pod `k`'s standalone series and `role_samples` for [start, stop), stale at stop."""
        for name, labels, value in [
            *exporter_series(STANDALONE_FIXTURE, target(self.settings, k)),
            *role_samples,
        ]:
            series = self.series.setdefault(series_name(name, labels), Series(name, dict(labels)))
            for minute in range(start, stop):
                series.tokens[minute] = repr(value)
            if stop < MINUTES:
                series.tokens[stop] = "stale"

    def change(
        self,
        metric: str,
        values: Callable[[int], float],
        *,
        pod: int,
        start: int = 0,
        stop: int = MINUTES,
        **labels: str,
    ) -> None:
        """Set every matching series of `pod` to `values(minute)` in [start, stop)."""
        wanted = {"pod": pod_name(self.settings, pod), **labels}
        matching = [
            series
            for series in self.series.values()
            if series.metric == metric
            and all(series.labels.get(key) == value for key, value in wanted.items())
        ]
        assert matching, f"no series {metric} {wanted}"
        for series in matching:
            for minute in range(start, stop):
                series.tokens[minute] = repr(float(values(minute)))

    def drain_queues(self, pod: int) -> None:
        """Workers take the recorded backlog (5, 2, 2, 4 tasks) away in a few minutes."""
        for queue_key in QUEUE_KEYS:
            recorded = next(
                float(s.tokens[0])
                for s in self.series.values()
                if s.metric == "redis_key_size" and s.labels.get("key") == queue_key
            )
            self.change(
                "redis_key_size",
                lambda minute, n=recorded: max(0.0, n - minute),
                pod=pod,
                key=queue_key,
            )

    def input_series(self) -> list[dict[str, str]]:
        return [
            {"series": name, "values": " ".join(series.tokens)}
            for name, series in self.series.items()
        ]


def healthy(settings: StackSettings) -> Broker:
    """Pod 0 master of pods 1 and 2, every link up, workers draining the queue on all pods."""
    broker = Broker(settings)
    broker.master(0, replicas=(1, 2))
    broker.replica(1)
    broker.replica(2)
    for k in range(PODS):
        broker.drain_queues(k)
    return broker


def every_alert(settings: StackSettings) -> list[str]:
    return [
        rule["alert"]
        for group in metrics.alert_rules(settings)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def case(broker: Broker, *expectations: dict[str, Any]) -> dict[str, Any]:
    """One promtool test: the broker's series, and what must (not) fire when."""
    flat: list[dict[str, Any]] = []
    for expectation in expectations:
        flat += expectation if isinstance(expectation, list) else [expectation]
    return {"interval": "1m", "input_series": broker.input_series(), "alert_rule_test": flat}


def labelled(settings: StackSettings, k: int, severity: str, **extra: str) -> dict[str, str]:
    return {**target(settings, k), "severity": severity, **extra}


def test_healthy_three_pod_broker_raises_no_alert(tmp_path: Path) -> None:
    settings = stack()
    names = every_alert(settings)
    assert set(SENTINEL_ALERTS) <= set(names), f"Sentinel alerts missing from {names}"
    broker = healthy(settings)
    run_promtool(
        tmp_path,
        metrics.alert_rules(settings),
        [case(broker, quiet("5m", *names), quiet("20m", *names), quiet("40m", *names))],
    )


def test_a_lost_replica_pod_is_reported_by_the_master(tmp_path: Path) -> None:
    settings = stack()
    rules = metrics.alert_rules(settings)
    broker = Broker(settings)
    # Pod 2's node is lost at minute 5: nothing of it is scraped, the master keeps pod 1.
    broker.master(0, replicas=(1, 2), stop=5)
    broker.master(0, replicas=(1,), start=5)
    broker.replica(1)
    broker.replica(2, stop=5)
    run_promtool(
        tmp_path,
        rules,
        [
            case(
                broker,
                fires(rules, "10m", "CeleryBrokerReplicaDown", labelled(settings, 0, "warning")),
                quiet("4m", "CeleryBrokerReplicaDown"),
                quiet(
                    "10m",
                    "CeleryBrokerWritesRefused",
                    "CeleryBrokerNoMaster",
                    "CeleryBrokerSplitBrain",
                    "CeleryBrokerFailover",
                    "CeleryBrokerReplicationBroken",
                    "CeleryBrokerDown",
                ),
            )
        ],
    )


def test_a_replica_whose_redis_stops_answering_warns_and_does_not_page(tmp_path: Path) -> None:
    settings = stack()
    rules = metrics.alert_rules(settings)
    broker = healthy(settings)
    # Pod 2's Redis stops answering its exporter at minute 5; the master loses that replica.
    broker.change("redis_up", lambda _: 0, pod=2, start=5)
    broker.change("redis_connected_slaves", lambda _: 1, pod=0, start=5)
    run_promtool(
        tmp_path,
        rules,
        [
            case(
                broker,
                fires(
                    rules,
                    "10m",
                    "CeleryBrokerReplicaDown",
                    labelled(settings, 0, "warning"),
                    labelled(settings, 2, "warning"),
                ),
                quiet("10m", "CeleryBrokerDown", "CeleryBrokerNoMaster"),
            )
        ],
    )


def test_every_pod_silent_pages_once_for_the_release(tmp_path: Path) -> None:
    settings = stack()
    rules = metrics.alert_rules(settings)
    broker = healthy(settings)
    for k in range(PODS):
        broker.change("redis_up", lambda _: 0, pod=k, start=5)
    down = {**release(settings), "severity": "critical"}
    run_promtool(
        tmp_path,
        rules,
        [
            case(
                broker,
                fires(rules, "10m", "CeleryBrokerDown", down),
                quiet("4m", "CeleryBrokerDown"),
            )
        ],
    )


def test_losing_every_replica_stops_writes_and_the_alert_says_so(tmp_path: Path) -> None:
    settings = stack()
    rules = metrics.alert_rules(settings)
    broker = Broker(settings)
    broker.master(0, replicas=(1, 2), stop=5)
    broker.master(0, replicas=(), start=5)
    broker.replica(1, stop=5)
    broker.replica(2, stop=5)
    critical = labelled(settings, 0, "critical")
    run_promtool(
        tmp_path,
        rules,
        [
            case(
                broker,
                fires(rules, "10m", "CeleryBrokerWritesRefused", critical),
                fires(rules, "10m", "CeleryBrokerReplicaDown", labelled(settings, 0, "warning")),
                quiet("4m", "CeleryBrokerWritesRefused"),
            )
        ],
    )
    refused = next(
        rule
        for group in rules["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "CeleryBrokerWritesRefused"
    )
    assert "NOREPLICAS" in refused["annotations"]["summary"], "say that every publish fails"


def test_replicas_lagging_past_the_bound_do_not_count_towards_it(tmp_path: Path) -> None:
    settings = stack(min_replicas_max_lag=2)
    rules = metrics.alert_rules(settings)
    lagging = healthy(settings)
    # Both replicas stay connected but stop acknowledging: 3 s since their last ACK > 2 s.
    for replica in (1, 2):
        lagging.change(
            "redis_connected_slave_lag_seconds",
            lambda _: 3,
            pod=0,
            start=3,
            slave_ip=sentinel_config.pod_hostname(settings, replica),
        )
    at_the_bound = healthy(settings)
    at_the_bound.change("redis_connected_slave_lag_seconds", lambda _: 2, pod=0, start=3)
    run_promtool(
        tmp_path,
        rules,
        [
            case(
                lagging,
                fires(rules, "10m", "CeleryBrokerWritesRefused", labelled(settings, 0, "critical")),
                quiet("10m", "CeleryBrokerReplicaDown"),
            ),
            # Redis counts a replica whose lag equals min-replicas-max-lag as good.
            case(at_the_bound, quiet("10m", "CeleryBrokerWritesRefused")),
        ],
    )


def test_replica_still_in_its_full_resync_does_not_count_towards_the_bound(
    tmp_path: Path,
) -> None:
    settings = stack(min_replicas_to_write=2)
    rules = metrics.alert_rules(settings)
    broker = Broker(settings)
    # Pod 2 restarted at minute 3 and reconnected: connected, but not online until synced.
    broker.master(0, replicas=(1, 2), stop=3)
    broker.master(0, replicas=(1,), syncing=(2,), start=3)
    broker.replica(1)
    broker.replica(2)
    broker.change("redis_master_link_up", lambda _: 0, pod=2, start=3)
    run_promtool(
        tmp_path,
        rules,
        [
            case(
                broker,
                fires(rules, "10m", "CeleryBrokerWritesRefused", labelled(settings, 0, "critical")),
                quiet("2m", "CeleryBrokerWritesRefused"),
                # Connected is not down: the replica count is the master's connected ones.
                quiet("10m", "CeleryBrokerReplicaDown"),
            )
        ],
    )


def test_broken_link_is_reported_and_its_stale_queue_copy_is_ignored(tmp_path: Path) -> None:
    settings = stack()
    rules = metrics.alert_rules(settings)
    broker = Broker(settings)
    broker.master(0, replicas=(1, 2), stop=3)
    broker.master(0, replicas=(2,), start=3)
    broker.replica(1)
    broker.replica(2)
    broker.change("redis_master_link_up", lambda _: 0, pod=1, start=3)
    # The master and pod 2 drain the queue; pod 1 keeps the copy it had when its link broke.
    broker.drain_queues(0)
    broker.drain_queues(2)
    master_host = sentinel_config.pod_hostname(settings, 0)
    broken = labelled(
        settings,
        1,
        "warning",
        master_host=master_host,
        master_port=str(settings.broker.port),
    )
    run_promtool(
        tmp_path,
        rules,
        [
            case(
                broker,
                fires(rules, "10m", "CeleryBrokerReplicationBroken", broken),
                quiet("3m", "CeleryBrokerReplicationBroken"),
                quiet("30m", "CeleryQueueNotConsumed", "CeleryQueueBacklog"),
                quiet("10m", "CeleryBrokerWritesRefused", "CeleryBrokerSplitBrain"),
            )
        ],
    )


def queue_labels(settings: StackSettings, severity: str) -> dict[str, str]:
    """Return a queue alert's labels: the target labels without the pod's own."""
    labels = {
        key: value for key, value in target(settings, 0).items() if key not in ("pod", "instance")
    }
    return {**labels, "queue": "celery", "db": "db0", "pool": "default", "severity": severity}


def test_failover_is_reported_and_a_queue_keeps_one_series_across_it(tmp_path: Path) -> None:
    settings = stack()
    rules = metrics.alert_rules(settings)
    broker = Broker(settings)
    # Pod 0 (master) is lost at minute 5; at minute 6 Sentinels have promoted pod 1, and pod 2
    # follows it. Nobody consumes the queue: it grows on every pod, before and after.
    broker.master(0, replicas=(1, 2), stop=5)
    broker.replica(1, stop=6)
    broker.master(1, replicas=(2,), start=6)
    broker.replica(2, stop=6)
    broker.replica(2, follows=1, start=6)
    for k in range(PODS):
        broker.change("redis_key_size", lambda minute: 5 + minute, pod=k, key="celery")
    run_promtool(
        tmp_path,
        rules,
        [
            case(
                broker,
                fires(
                    rules, "10m", "CeleryBrokerFailover", {**release(settings), "severity": "info"}
                ),
                quiet("25m", "CeleryBrokerFailover"),
                quiet("4m", "CeleryBrokerFailover"),
                quiet("5m", "CeleryBrokerNoMaster"),
                quiet("7m", "CeleryBrokerNoMaster"),
                quiet("10m", "CeleryBrokerSplitBrain", "CeleryBrokerWritesRefused"),
                # Pod 0 is gone: the new master has one replica of two.
                fires(rules, "10m", "CeleryBrokerReplicaDown", labelled(settings, 1, "warning")),
                # Growing since minute 0 with a 12m window: at minute 15 the queue's series must
                # reach back past the failover, once for the release, not once per pod.
                fires(rules, "15m", "CeleryQueueNotConsumed", queue_labels(settings, "critical")),
            )
        ],
    )


def test_backlog_fires_once_for_the_release_not_once_per_pod(tmp_path: Path) -> None:
    settings = stack()
    rules = metrics.alert_rules(settings)
    broker = healthy(settings)
    for k in range(PODS):
        for queue_key, size in zip(QUEUE_KEYS, (40, 30, 20, 20), strict=True):
            broker.change("redis_key_size", lambda _, n=size: n, pod=k, key=queue_key)
    run_promtool(
        tmp_path,
        rules,
        [
            case(
                broker, fires(rules, "10m", "CeleryQueueBacklog", queue_labels(settings, "warning"))
            )
        ],
    )


def test_two_masters_are_a_split_brain_but_a_handover_is_not(tmp_path: Path) -> None:
    settings = stack()
    rules = metrics.alert_rules(settings)
    split = {**release(settings), "severity": "critical"}
    # Pod 1, cut off with pod 2's vote lost, promotes itself at minute 3; pod 0 stays master.
    two_masters = Broker(settings)
    two_masters.master(0, replicas=(2,))
    two_masters.replica(1, stop=3)
    two_masters.master(1, replicas=(), start=3)
    two_masters.replica(2)
    # Pod 2 follows pod 1 while pod 1 still follows pod 0: replicas disagree on the master.
    chained = Broker(settings)
    chained.master(0, replicas=(1,))
    chained.replica(1)
    chained.replica(2, stop=3)
    chained.replica(2, follows=1, start=3)
    # A planned handover: pod 1 is promoted at minute 3, pod 0 demoted one scrape later.
    handover = Broker(settings)
    handover.master(0, replicas=(1, 2), stop=4)
    handover.replica(0, follows=1, start=4)
    handover.replica(1, stop=3)
    handover.master(1, replicas=(2,), start=3, stop=4)
    handover.master(1, replicas=(0, 2), start=4)
    handover.replica(2, stop=4)
    handover.replica(2, follows=1, start=4)
    run_promtool(
        tmp_path,
        rules,
        [
            case(
                two_masters,
                fires(rules, "10m", "CeleryBrokerSplitBrain", split),
                quiet("3m", "CeleryBrokerSplitBrain"),
            ),
            case(chained, fires(rules, "10m", "CeleryBrokerSplitBrain", split)),
            case(
                handover,
                quiet("5m", "CeleryBrokerSplitBrain"),
                quiet("10m", "CeleryBrokerSplitBrain", "CeleryBrokerNoMaster"),
                quiet("10m", "CeleryBrokerReplicaDown", "CeleryBrokerWritesRefused"),
                fires(
                    rules, "10m", "CeleryBrokerFailover", {**release(settings), "severity": "info"}
                ),
            ),
        ],
    )


def test_no_master_after_the_master_is_lost_and_none_is_promoted(tmp_path: Path) -> None:
    settings = stack()
    rules = metrics.alert_rules(settings)
    broker = Broker(settings)
    broker.master(0, replicas=(1, 2), stop=3)
    broker.replica(1)
    broker.replica(2)
    for replica in (1, 2):
        broker.change("redis_master_link_up", lambda _: 0, pod=replica, start=3)
    no_master = {**release(settings), "role": "master", "severity": "critical"}
    run_promtool(
        tmp_path,
        rules,
        [
            case(
                broker,
                fires(rules, "10m", "CeleryBrokerNoMaster", no_master),
                quiet("4m", "CeleryBrokerNoMaster"),
            )
        ],
    )


def test_unacked_task_alert_reads_the_master_not_a_stale_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(redis_config.EXPORTER_COMMANDS, "scripts", ("eval",))
    settings = stack()
    rules = metrics.alert_rules(settings)

    def broker(delivered_at: dict[int, float]) -> Broker:
        scraped = healthy(settings)
        for k, at in delivered_at.items():
            labels = {**target(settings, k), "key": metrics.OLDEST_UNACKED_KEY}
            series = Series("redis_script_values", labels, [repr(at)] * MINUTES)
            scraped.series[series_name(series.metric, labels)] = series
        return scraped

    # Hard limit 660 s. Delivered at 0 everywhere: at 15 min the task is 900 s old.
    held = broker({0: 0, 1: 0, 2: 0})
    # The master's oldest delivery is recent; replica 1 (link broken) still shows an old one.
    stale_copy = broker({0: 600, 1: 0, 2: 600})
    labels = labelled(settings, 0, "warning", key=metrics.OLDEST_UNACKED_KEY)
    run_promtool(
        tmp_path,
        rules,
        [
            case(held, fires(rules, "15m", "CeleryTaskUnackedTooLong", labels)),
            case(stale_copy, quiet("15m", "CeleryTaskUnackedTooLong")),
        ],
    )
