"""Render time per stack and per pool count, next to a bare mock run of an empty program.

Each figure is the median wall time of fresh `python` processes (imports count, as they do
for a person running `brokerctl render`). Targets: a stack renders within 3x of the floor;
each extra worker pool adds under 30 ms.

    .venv/bin/python bench/render.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FLOOR_PROGRAM = """
import asyncio, pulumi
from pulumi.runtime import mocks
class M(mocks.Mocks):
    def new_resource(self, args): return args.name, args.inputs
    def call(self, args): return {}, None
loop = asyncio.new_event_loop(); asyncio.set_event_loop(loop)
pulumi.runtime.set_mocks(M(), project="p", stack="s", preview=False)
pulumi.runtime.settings.set_root_resource(None)  # as brokerctl.mockrun.forget_mock_root_stack
loop.run_until_complete(pulumi.runtime.run_in_stack(lambda: None))
"""


SDK_IMPORTS = (
    "import pulumi_kubernetes.core.v1, pulumi_kubernetes.apps.v1, pulumi_kubernetes.batch.v1, "
    "pulumi_kubernetes.policy.v1, pulumi_kubernetes.networking.v1, "
    "pulumi_kubernetes.autoscaling.v2, pulumi_kubernetes.apiextensions, pulumi.dynamic\n"
)
"""The provider SDK modules the program needs: building their classes dominates a render."""


def timed(command: list[str], repeat: int) -> float:
    """Median seconds of `repeat` runs of a command that must succeed."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def pools_stack(count: int) -> str:
    """Return a stack file with `count` worker pools, each on its own queue."""
    pools = "".join(
        f"      - name: pool{i}\n        image: registry.example.com/transcritor-pdf:1.0.0\n"
        f"        queues: [q{i}]\n        autoscaling: {{enabled: true}}\n"
        for i in range(count)
    )
    return (
        "config:\n  celery-redis:kube_context: bench\n"
        "  celery-redis:broker:\n    persistence: aof\n"
        f"  celery-redis:workers:\n    pools:\n{pools}"
    )


def render_command(stack: str, out: Path, config_dir: Path | None = None) -> list[str]:
    """Return the render command line for one stack into a fresh folder."""
    command = [sys.executable, "-m", "brokerctl", "render", "--stack", stack, "--out", str(out)]
    return command + (["--config-dir", str(config_dir)] if config_dir else [])


def main() -> None:
    """Print the table of figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    floor = timed([sys.executable, "-c", FLOOR_PROGRAM], repeat)
    print(f"floor (bare mock run, empty program): {floor * 1000:7.0f} ms")
    with_sdk = timed([sys.executable, "-c", SDK_IMPORTS + FLOOR_PROGRAM], repeat)
    print(
        f"floor + importing the provider SDKs:   {with_sdk * 1000:7.0f} ms "
        f"= {with_sdk / floor:4.2f}x floor (a lower bound for any render)"
    )
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        for stack in ("dev", "staging", "prod"):
            seconds = timed(render_command(stack, tmp / f"out-{stack}"), repeat)
            print(f"render {stack:8s}: {seconds * 1000:7.0f} ms  = {seconds / floor:4.2f}x floor")
        per_count = {}
        for count in (1, 10, 50):
            (tmp / f"Pulumi.pools{count}.yaml").write_text(pools_stack(count))
            seconds = timed(render_command(f"pools{count}", tmp / f"out-{count}", tmp), repeat)
            per_count[count] = seconds
            print(
                f"render {count:2d} pools: {seconds * 1000:7.0f} ms  "
                f"= {seconds / floor:4.2f}x floor"
            )
    per_pool = (per_count[50] - per_count[1]) / 49
    print(f"each extra pool: {per_pool * 1000:.1f} ms (target < 30 ms)")


if __name__ == "__main__":
    main()
