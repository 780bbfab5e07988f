"""Feed recorded exporter output to the real promtool and check which alerts fire.

    samples = exporter_samples(FIXTURES / "redis_exporter-v1.67.0-celery.prom", target)
    run_promtool(tmp_path, metrics.alert_rules(settings), [{"input_series": ..., ...}])

The fixtures (tests/fixtures/exporter/, see its README) are what redis_exporter exports for a
real redis-server; `exporter_samples` names each sample as promtool's input series, with the
labels Prometheus adds to the scraped target. promtool evaluates the rule file exactly as the
PrometheusRule carries it; a missing promtool fails the test, never skips it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.settings import StackSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "exporter"
SAMPLE = re.compile(r"^(?P<name>[a-z_:]+)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def series_name(name: str, labels: Mapping[str, str]) -> str:
    """Return promtool's series notation, label values escaped as PromQL strings."""
    pairs = ",".join(
        f'{key}="{value.encode("unicode_escape").decode()}"' for key, value in labels.items()
    )
    return f"{name}{{{pairs}}}"


def exporter_series(
    fixture: Path,
    target: Mapping[str, str],
    *,
    replace: Mapping[str, str] | None = None,
    skip: tuple[str, ...] = ("redis_script_values",),
) -> list[tuple[str, dict[str, str], float]]:
    """Return a fixture's samples as (metric, labels, value), the target's labels first.

    `replace` maps recorded label values to the ones the test's pods have (a recording ran on
    loopback ports; a pod has its hostname and the broker port). Metrics in `skip` are left
    out (the unacked script's values depend on when the test runs; tests add their own).
    """
    replace = replace or {}
    samples = []
    for line in fixture.read_text().splitlines():
        match = SAMPLE.match(line)
        if not match or match["name"] in skip:
            continue
        labels = dict(target)
        for key, value in LABEL.findall(match["labels"] or ""):
            labels[key] = replace.get(value, value)
        samples.append((match["name"], labels, float(match["value"])))
    return samples


def exporter_samples(fixture: Path, target: Mapping[str, str]) -> dict[str, float]:
    """Return a fixture's samples by promtool series name (see `exporter_series`)."""
    return {
        series_name(name, labels): value for name, labels, value in exporter_series(fixture, target)
    }


def quiet(eval_time: str, *alerts: str) -> list[dict[str, Any]]:
    """Return what promtool should see: none of `alerts` fires at `eval_time`."""
    return [{"eval_time": eval_time, "alertname": alert, "exp_alerts": []} for alert in alerts]


def fires(
    rules: Mapping[str, Any], eval_time: str, alert: str, *label_sets: Mapping[str, str]
) -> dict[str, Any]:
    """Return what promtool should see: `alert` fires once per label set, no more.

    The expected annotations are the rule's own (promtool compares them); for a rule repeated
    per pool, the one whose `pool` label the labels name.
    """
    expected = []
    for labels in label_sets:
        annotations = next(
            rule["annotations"]
            for group in rules["groups"]
            for rule in group["rules"]
            if rule.get("alert") == alert
            and rule["labels"].get("pool") in (None, labels.get("pool"))
        )
        expected.append({"exp_labels": dict(labels), "exp_annotations": annotations})
    return {"eval_time": eval_time, "alertname": alert, "exp_alerts": expected}


def run_promtool(tmp_path: Path, rules: Mapping[str, Any], tests: list[dict[str, Any]]) -> None:
    """Write the rule file and the unit tests, run `promtool test rules`, fail with its output."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/bootstrap.sh --test installs Debian's prometheus"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(dict(rules), sort_keys=False))
    (tmp_path / "tests.yml").write_text(
        yaml.safe_dump(
            {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests},
            sort_keys=False,
        )
    )
    completed = subprocess.run(
        [promtool, "test", "rules", "tests.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, f"promtool:\n{completed.stdout}\n{completed.stderr}"


def alert_stack(broker: dict[str, Any] | None = None) -> StackSettings:
    """Return the stack the alert tests evaluate: exporter and operator on, one `celery` pool.

    `broker` replaces the broker section (the Sentinel alerts' tests give the topology).
    """
    return StackSettings.model_validate(
        {
            "kube_context": "test",
            **({"broker": broker} if broker is not None else {}),
            "metrics": {"exporter_enabled": True, "prometheus_operator": True},
            "workers": {
                "pools": [
                    {
                        "name": "default",
                        "image": "registry.example.com/transcritor-pdf:1.0.0",
                        "queues": ["celery"],
                        "alert_queue_depth": 100,
                    }
                ]
            },
        },
        strict=False,
    )
