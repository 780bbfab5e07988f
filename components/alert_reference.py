"""The README's alert table, generated from the PrometheusRule rules so the two cannot drift.

Every alert the program can create appears once, with the severity, summary and runbook line
the rule itself carries: the on-call person reads the same text in the alert and in README.
"""

from __future__ import annotations

from typing import Any

from components import metrics
from components.settings import PERSISTENT_MODES, SentinelSettings, StackSettings


def _with_persistence(settings: StackSettings, mode: str) -> StackSettings:
    """Return the settings with another persistence mode, to reach every mode's alerts."""
    broker = settings.broker.model_copy(update={"persistence": mode})
    return settings.model_copy(update={"broker": broker})


def _with_sentinel(settings: StackSettings) -> StackSettings:
    """Return the settings with `broker.topology: sentinel` and its loss bound on.

    The Sentinel alerts exist only in that topology, and the refused-writes alert only while
    `min_replicas_to_write` is above 0 (its default then applies).
    """
    sentinel = settings.broker.sentinel
    if sentinel.min_replicas_to_write == 0:
        default = SentinelSettings.model_fields["min_replicas_to_write"].default
        sentinel = sentinel.model_copy(update={"min_replicas_to_write": default})
    broker = settings.broker.model_copy(update={"topology": "sentinel", "sentinel": sentinel})
    return settings.model_copy(update={"broker": broker})


def every_alert(settings: StackSettings) -> list[dict[str, Any]]:
    """One rule per alert name the stack could raise under any persistence mode or topology.

    Ordered as the PrometheusRule orders them (broker alerts, the Sentinel ones last, then
    queue alerts); the first pool's rule stands for every pool, the first variant's for an
    alert every variant has.
    """
    variants = [_with_persistence(settings, mode) for mode in PERSISTENT_MODES]
    variants.append(_with_sentinel(settings))
    group_lists = [metrics.alert_rules(variant)["groups"] for variant in variants]
    found: dict[str, dict[str, Any]] = {}
    for position in range(len(group_lists[0])):
        for groups in group_lists:
            for rule in groups[position]["rules"]:
                if "alert" in rule:
                    found.setdefault(rule["alert"], rule)
    return list(found.values())


def alerts_markdown(settings: StackSettings, stack: str) -> str:
    """Build the README's alert table from the rules `stack` renders (its values in summaries)."""
    lines = [
        f"Summaries show the `{stack}` stack's values; thresholds are settings named in the",
        "runbook column.",
        "",
        "| alert | severity | fires when | runbook |",
        "| --- | --- | --- | --- |",
    ]
    for rule in every_alert(settings):
        annotations = rule["annotations"]
        cells = [
            rule["alert"],
            rule["labels"]["severity"],
            annotations["summary"],
            annotations["runbook"],
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
