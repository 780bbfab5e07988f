"""Shared helpers of the unit tests: run brokerctl as a user would, and write stack files."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def run_brokerctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m brokerctl ...` in the project folder, capturing both streams."""
    return subprocess.run(
        [sys.executable, "-m", "brokerctl", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Yield every scalar of a manifest with its path (`.spec.template...[0].name`)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, f"{path}[{index}]")
    else:
        yield path, value


@pytest.fixture
def stack_dir(tmp_path: Path):
    """Provide a folder of stack files; `write(name, text)` adds `Pulumi.<name>.yaml` to it."""

    class StackDir:
        path = tmp_path

        def write(self, name: str, text: str) -> Path:
            file = tmp_path / f"Pulumi.{name}.yaml"
            file.write_text(text)
            return file

    return StackDir()
