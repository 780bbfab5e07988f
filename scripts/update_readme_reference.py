"""Regenerate README.md's generated blocks: the settings reference and the alert table.

Each block sits between its own pair of markers; the text around them is left as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brokerctl import mockrun
from components.alert_reference import alerts_markdown
from components.reference import reference_markdown
from components.stack_config import parse_stack_config

START, END = "<!-- settings-reference:start -->", "<!-- settings-reference:end -->"
ALERTS_START, ALERTS_END = "<!-- alerts-reference:start -->", "<!-- alerts-reference:end -->"
ALERTS_STACK = "dev"
"""The stack whose values the alert summaries show (every alert appears whatever the stack)."""


def _replace_block(text: str, start: str, end: str, content: str) -> str:
    """Text with the block between `start` and `end` replaced; both markers must be there."""
    if start not in text or end not in text:
        message = f"README.md lacks the markers {start} ... {end}"
        raise ValueError(message)
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    return f"{head}{start}\n{content}{end}{tail}"


def alert_table() -> str:
    """Return the alert table as the `ALERTS_STACK` stack renders its rules."""
    config, secret_keys = mockrun.read_stack_config(ALERTS_STACK)
    settings, _ = parse_stack_config(config, secret_keys, f"config/Pulumi.{ALERTS_STACK}.yaml")
    return alerts_markdown(settings, ALERTS_STACK)


def updated(readme: str) -> str:
    """README text with every generated block replaced by what the code says now."""
    readme = _replace_block(readme, START, END, reference_markdown())
    return _replace_block(readme, ALERTS_START, ALERTS_END, alert_table())


if __name__ == "__main__":
    path = Path(__file__).resolve().parent.parent / "README.md"
    path.write_text(updated(path.read_text()))
