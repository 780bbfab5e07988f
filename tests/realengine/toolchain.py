"""Where the real-engine tests find the pinned Pulumi CLI, provider and control plane.

scripts/toolchain.sh builds them (make test runs it first) and prints the folder. A missing
binary is an error naming the command that builds it, never a skip.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOOLCHAIN_SCRIPT = PROJECT_ROOT / "scripts" / "toolchain.sh"


class ToolchainMissing(RuntimeError):
    """A pinned tool is not built yet."""


@functools.cache
def bin_dir() -> Path:
    """Return the folder holding the pinned binaries (scripts/toolchain.sh --print)."""
    out = subprocess.run(
        ["bash", str(TOOLCHAIN_SCRIPT), "--print"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return Path(out.stdout.strip())


def binary(name: str) -> Path:
    """Path of one pinned binary; raises ToolchainMissing when it was not built."""
    path = bin_dir() / name
    if not path.exists():
        msg = f"{path} is missing: run scripts/toolchain.sh (make test runs it)"
        raise ToolchainMissing(msg)
    return path


def pinned(variable: str) -> str:
    """Return a version pin from scripts/toolchain.sh (one source for script and tests)."""
    match = re.search(rf"^{variable}=(\S+)", TOOLCHAIN_SCRIPT.read_text(), re.MULTILINE)
    if match is None:
        msg = f"{TOOLCHAIN_SCRIPT} has no {variable}= line"
        raise ToolchainMissing(msg)
    return match.group(1)


def crd_files() -> list[Path]:
    """Return the pinned CustomResourceDefinitions scripts/toolchain.sh copied (KEDA, ...)."""
    folder = bin_dir().parent / "crds"
    files = sorted(folder.glob("*.yaml"))
    if not files:
        msg = f"{folder} holds no CRD: run scripts/toolchain.sh (make test runs it)"
        raise ToolchainMissing(msg)
    return files
