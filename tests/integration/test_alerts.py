"""Every alert of `alert_rules` fires on a broken broker and stays quiet on a healthy one.

The input series are the recorded exporter output (tests/fixtures/exporter/) with the labels
Prometheus adds to a scraped target, then changed one at a time into the failure an alert is
for. promtool evaluates the real rule file; a missing promtool fails the test, never skips it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from components import metrics, redis_config
from components.settings import StackSettings
from tests.support import promtool_rules
from tests.support.promtool_rules import FIXTURES, quiet

FIXTURE = FIXTURES / "redis_exporter-v1.67.0-celery.prom"


def stack() -> StackSettings:
    return promtool_rules.alert_stack()


def recorded(settings: StackSettings) -> dict[str, float]:
    """Return the fixture's samples by promtool series name (target labels added)."""
    return promtool_rules.exporter_samples(FIXTURE, target(settings))


def with_changes(base: dict[str, float], changes: dict[str, str]) -> list[dict[str, str]]:
    """Promtool input_series: the recorded values held for an hour, except the changed series."""
    values = {name: f"{value:g}x60" for name, value in base.items()}
    for needle, expression in changes.items():
        matches = [name for name in values if name.startswith(needle) or needle in name]
        assert matches, f"no recorded series matches {needle!r}"
        for name in matches:
            values[name] = expression
    return [{"series": name, "values": value} for name, value in values.items()]


def key(queue_key: str) -> str:
    """Return the series name fragment of one queue list's redis_key_size (PromQL escapes)."""
    return f'key="{queue_key.encode("unicode_escape").decode()}"'


def fires(eval_time: str, alert: str, labels: dict[str, str]) -> dict[str, Any]:
    """One expected firing alert; its annotations are the rule's own (promtool compares them)."""
    return promtool_rules.fires(metrics.alert_rules(stack()), eval_time, alert, labels)


def run_promtool(tmp_path: Path, settings: StackSettings, tests: list[dict[str, Any]]) -> None:
    promtool_rules.run_promtool(tmp_path, metrics.alert_rules(settings), tests)


ALL_ALERTS = (
    "CeleryBrokerDown",
    "CeleryBrokerMemoryHigh",
    "CeleryBrokerRejectingConnections",
    "CeleryBrokerAofWriteFailing",
    "CeleryQueueBacklog",
    "CeleryQueueNotConsumed",
)


def target(settings: StackSettings, **extra: str) -> dict[str, str]:
    return {"job": metrics.metrics_service_name(settings), "namespace": settings.namespace, **extra}


def test_recorded_healthy_broker_that_drains_its_queue_raises_no_alert(tmp_path: Path) -> None:
    settings = stack()
    # Workers take the recorded backlog (5, 2, 2 and 4 tasks over the priority lists) away.
    draining = {
        key("celery"): "5-1x5 0x55",
        key("celery\x06\x163"): "2-1x2 0x58",
        key("celery\x06\x166"): "2-1x2 0x58",
        key("celery\x06\x169"): "4-1x4 0x56",
    }
    run_promtool(
        tmp_path,
        settings,
        [
            {
                "interval": "1m",
                "input_series": with_changes(recorded(settings), draining),
                "alert_rule_test": quiet("40m", *ALL_ALERTS),
            }
        ],
    )


def test_broker_alerts_fire_on_their_failure(tmp_path: Path) -> None:
    settings = stack()
    base = recorded(settings)
    severity = {"critical": {"severity": "critical"}, "warning": {"severity": "warning"}}
    cases = [
        (
            {"redis_up{": "0x60"},
            fires("10m", "CeleryBrokerDown", target(settings, **severity["critical"])),
        ),
        (
            {"redis_up{": "1x5 _x55"},
            fires("20m", "CeleryBrokerDown", target(settings, **severity["critical"])),
        ),
        (
            {"redis_memory_used_bytes{": "95000000x60"},
            fires("10m", "CeleryBrokerMemoryHigh", target(settings, **severity["warning"])),
        ),
        (
            {"redis_rejected_connections_total{": "0x3 4x57"},
            fires(
                "5m", "CeleryBrokerRejectingConnections", target(settings, **severity["warning"])
            ),
        ),
        (
            {"redis_aof_last_write_status{": "1x3 0x57"},
            fires("5m", "CeleryBrokerAofWriteFailing", target(settings, **severity["critical"])),
        ),
        (
            {"redis_aof_last_bgrewrite_status{": "1x3 0x57"},
            fires("5m", "CeleryBrokerAofWriteFailing", target(settings, **severity["critical"])),
        ),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": with_changes(base, changes),
            "alert_rule_test": [expected],
        }
        for changes, expected in cases
    ]
    run_promtool(tmp_path, settings, tests)


def test_backlog_sums_priority_lists_and_respects_the_threshold(tmp_path: Path) -> None:
    settings = stack()
    base = recorded(settings)
    # 40 + 30 + 20 + 20 = 110 > 100 although no single list passes 100; 99 in total stays quiet.
    over = {
        key("celery"): "40x60",
        key("celery\x06\x163"): "30x60",
        key("celery\x06\x166"): "20x60",
        key("celery\x06\x169"): "20x60",
    }
    under = {**over, key("celery\x06\x169"): "9x60"}
    labels = target(settings, queue="celery", db="db0", pool="default", severity="warning")
    run_promtool(
        tmp_path,
        settings,
        [
            {
                "interval": "1m",
                "input_series": with_changes(base, over),
                "alert_rule_test": [fires("10m", "CeleryQueueBacklog", labels)],
            },
            {
                "interval": "1m",
                "input_series": with_changes(base, under),
                "alert_rule_test": quiet("10m", "CeleryQueueBacklog"),
            },
        ],
    )


def test_queue_that_never_shrinks_is_reported_as_not_consumed(tmp_path: Path) -> None:
    settings = stack()
    base = recorded(settings)
    growing = {key("celery"): "5+1x60"}
    busy_but_consumed = {key("celery"): "5+1x8 13-3x2 7+1x49"}  # grows, but workers take tasks
    labels = target(settings, queue="celery", db="db0", pool="default", severity="critical")
    run_promtool(
        tmp_path,
        settings,
        [
            {
                "interval": "1m",
                "input_series": with_changes(base, growing),
                "alert_rule_test": [fires("30m", "CeleryQueueNotConsumed", labels)],
            },
            {
                "interval": "1m",
                "input_series": with_changes(base, busy_but_consumed),
                "alert_rule_test": quiet("20m", "CeleryQueueNotConsumed"),
            },
        ],
    )


def test_task_unacked_past_the_pool_time_limit_fires_when_the_script_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(redis_config.EXPORTER_COMMANDS, "scripts", ("eval",))
    settings = stack()
    base = recorded(settings)
    sel = f'job="{metrics.metrics_service_name(settings)}",namespace="{settings.namespace}"'
    script = f'redis_script_values{{{sel},key="oldest_unacked_delivered_at"}}'

    def series(delivered_at: int) -> list[dict[str, str]]:
        return [*with_changes(base, {}), {"series": script, "values": f"{delivered_at}x60"}]

    labels = target(
        settings,
        key="oldest_unacked_delivered_at",
        severity="warning",
    )
    run_promtool(
        tmp_path,
        settings,
        [
            # delivered at t=0, hard limit 660 s: at 15 min it is 900 s old.
            {
                "interval": "1m",
                "input_series": series(0),
                "alert_rule_test": [fires("15m", "CeleryTaskUnackedTooLong", labels)],
            },
            {
                "interval": "1m",
                "input_series": series(600),
                "alert_rule_test": quiet("15m", "CeleryTaskUnackedTooLong"),
            },
        ],
    )
