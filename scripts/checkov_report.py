"""Render every stack and print checkov's failed-check count per stack (target: zero).

.venv/bin/python scripts/checkov_report.py        (needs .venv-checkov: make test sets it up)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
SKIPS = ROOT / "security" / "checkov-skips.yaml"
STACKS = ("dev", "staging", "prod")


def skipped_checks() -> dict[str, str]:
    """Check id -> the reason it does not apply."""
    return yaml.safe_load(SKIPS.read_text())


def scan(folder: Path) -> list[dict]:
    """Checkov's failed checks over one folder of rendered manifests."""
    command = [
        str(CHECKOV), "-d", str(folder), "--framework", "kubernetes", "-o", "json", "--quiet",
        "--skip-check", ",".join(skipped_checks()),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    if result.returncode not in (0, 1):
        message = f"checkov failed ({result.returncode}): {result.stderr[-2000:]}"
        raise RuntimeError(message)
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    reports = report if isinstance(report, list) else [report]
    return [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]


VARIANTS_DIR = ROOT / "tests" / "fixtures" / "render_variants"
"""Stack files beside the shipped ones that the scans also cover (e.g. prod on Sentinel)."""
VARIANTS = ("prod-sentinel",)


def render(stack: str, out: Path) -> None:
    """Render one stack (shipped, or a variant from VARIANTS_DIR) with the project's command."""
    command = [sys.executable, "-m", "brokerctl", "render", "--stack", stack, "--out", str(out)]
    if stack in VARIANTS:
        command += ["--config-dir", str(VARIANTS_DIR)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)


def main() -> int:
    """Print failed checks per stack; exit 1 when any stack has one."""
    total = 0
    with tempfile.TemporaryDirectory() as scratch:
        for stack in (*STACKS, *VARIANTS):
            out = Path(scratch) / stack
            render(stack, out)
            failed = scan(out)
            total += len(failed)
            print(f"{stack:8s} failed checks: {len(failed)}")
            for check in failed:
                print(f"  {check['check_id']} {check['resource']}: {check['check_name']}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
