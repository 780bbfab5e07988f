"""Figures of the real engine: toolchain warm, `up` of dev from empty, no-op preview vs floor.

    .venv/bin/python bench/real_engine.py [--repeat N]

Runs the pinned Pulumi CLI and provider (scripts/toolchain.sh) against a real control plane on
loopback with one node whose pods really run (tests/realengine), as the real_engine tests do.
Prints:
- the warm toolchain check (every tool cached), in seconds;
- `pulumi up` of the dev stack from an empty cluster until the check Job passed (the gate);
- a no-op `pulumi preview` of the deployed dev stack, and of an empty program on the same
  engine (the floor: CLI start, plugin load, state read), medians of N runs, and their ratio.
Needs root (the node's network namespace), like the tests. Cold toolchain builds are printed
by scripts/toolchain.sh itself ("... done in N s") the first time it runs on a machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.realengine.conftest import new_stack
from tests.realengine.controlplane import ControlPlane
from tests.realengine.deployed import shipped_stack_file, stand_in_images
from tests.realengine.engine import RealStack
from tests.realengine.node_agent import NodeAgent
from tests.realengine.toolchain import TOOLCHAIN_SCRIPT

EMPTY_PROGRAM = "import pulumi\n"


def timed(run: object) -> float:
    """Seconds one call of `run` took; it must succeed."""
    start = time.perf_counter()
    result = run()  # type: ignore[operator]
    took = time.perf_counter() - start
    if getattr(result, "returncode", 0) != 0:
        msg = f"failed:\n{result.stdout}\n{result.stderr}"  # type: ignore[union-attr]
        raise SystemExit(msg)
    return took


def empty_stack(root: Path) -> RealStack:
    """Return an initialised stack of an empty program on the same local engine."""
    work = root / "empty"
    work.mkdir()
    (work / "Pulumi.yaml").write_text("name: celery-redis\nruntime: python\n")
    (work / "__main__.py").write_text(EMPTY_PROGRAM)
    stack = RealStack(work, "floor", root / "empty-state", root / "no-kubeconfig")
    stack.pulumi("login", stack.env()["PULUMI_BACKEND_URL"])
    stack.pulumi("stack", "init", "floor", "--secrets-provider", "passphrase")
    return stack


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="previews per median (5)")
    args = parser.parse_args()
    warm = timed(lambda: subprocess.run(["bash", str(TOOLCHAIN_SCRIPT)], capture_output=True))
    print(f"toolchain, warm (all cached): {warm:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with (
            ControlPlane(root / "cp") as cluster,
            NodeAgent(cluster, stand_in_images(root), root / "node") as node,
        ):
            node.create_storage_class("standard", default=True)
            stack = new_stack(root / "dev", "dev", cluster, shipped_stack_file("dev", "bench"))
            up = timed(lambda: stack.run("up"))
            print(f"pulumi up, dev from empty to gate passed: {up:.1f} s")
            noop = [timed(lambda: stack.run("preview")) for _ in range(args.repeat)]
            floor_stack = empty_stack(root)
            floor_stack.run("up")
            floor = [timed(lambda: floor_stack.run("preview")) for _ in range(args.repeat)]
            noop_median, floor_median = statistics.median(noop), statistics.median(floor)
            print(
                f"no-op preview of dev: median {noop_median:.2f} s (max {max(noop):.2f}); "
                f"empty program: median {floor_median:.2f} s (max {max(floor):.2f}); "
                f"ratio {noop_median / floor_median:.2f}x over {args.repeat} runs each"
            )


if __name__ == "__main__":
    main()
