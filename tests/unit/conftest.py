"""Shared helpers of the unit tests: run brokerctl as a user would, and write stack files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
