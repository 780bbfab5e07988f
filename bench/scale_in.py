"""Tasks redelivered by a scale-in, without ("before") and with ("after") the scale-in controller.

    .venv/bin/python bench/scale_in.py [--rounds 4] [--replicas 4] [--busy 3] [--task-seconds 15]

Runs a real control plane and one node agent (as the real_engine tests do), with the pool and
controller the real program renders (tests/realengine/scale_in_lab.py): real Celery workers
(concurrency 1, prefetch 1, 2 s soft shutdown), the real ReplicaSet controller. Each round: the
pool at --replicas pods, all Ready; --busy long tasks sent, one per pod; the Deployment scaled
down by one through the API (what KEDA, an HPA or a changed `replicas` does); every task awaited.
A task that started more than once was redelivered: its pod was removed under it, the soft
shutdown handed it back, and another pod ran it again from the start.

"before" renders the stack with `workers.scale_in.enabled: false`: the ReplicaSet picks among
equally ready pods by age and uid, blind to the work they run. "after" runs the controller.
Needs root (the node's network namespace), like the real-engine tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.realengine.controlplane import ControlPlane
from tests.realengine.deployed import stand_in_images
from tests.realengine.node_agent import NodeAgent
from tests.realengine.scale_in_lab import ScaleInLab


def one_round(lab: ScaleInLab, index: int, args: argparse.Namespace) -> tuple[int, int]:
    """Run one scale-in under --busy tasks; return (tasks redelivered, busy pods removed).

    Every round starts from fresh pods, Ready for --settle seconds: the ReplicaSet ranks ready
    pods by the log2 of their ready age (LogarithmicScaleDown), so pods of one bucket tie and
    the uid decides, as for long-running pods in production. Without the settle the youngest
    pod, which is also the last in Redis's BRPOP line and so the idle one, would always go.
    """
    lab.scale(args.replicas)
    lab.cluster.kubectl("-n", lab.namespace, "delete", "pods", "-l", lab.selector, "--wait=false")
    lab.wait_ready(args.replicas, timeout=180)
    time.sleep(args.settle)
    labels = [f"r{index}-t{n}" for n in range(args.busy)]
    for label in labels:
        lab.send(label, args.task_seconds)

    def all_started() -> list[str] | None:
        starts = [lab.starts(label) for label in labels]
        return [s[0] for s in starts] if all(starts) else None

    busy = lab.wait(all_started, 60, "every task to start")
    if lab.controller:  # the controller's costs in place, as they are in steady state
        lab.wait(
            lambda: all(lab.costs().get(pod) == "1" for pod in busy), 30, "the busy pods' costs"
        )
    before = set(lab.costs())
    lab.scale(args.replicas - 1)
    lab.wait(lambda: len(lab.costs()) == args.replicas - 1, 60, "the scale-in")
    removed = before - set(lab.costs())
    lab.wait(
        lambda: all(lab.finishes(label) for label in labels),
        3 * args.task_seconds + 60,
        "every task to finish",
    )
    redelivered = sum(len(lab.starts(label)) > 1 for label in labels)
    return redelivered, len(removed & set(busy))


def main() -> None:
    """Print tasks redelivered by scale-ins, without and with the controller."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="scale-ins per mode (4)")
    parser.add_argument("--replicas", type=int, default=4, help="pods before each scale-in (4)")
    parser.add_argument("--busy", type=int, default=3, help="pods running a long task (3)")
    parser.add_argument("--task-seconds", type=float, default=15.0, help="task length (15)")
    parser.add_argument(
        "--settle", type=float, default=18.0, help="seconds pods are Ready before tasks (18)"
    )
    args = parser.parse_args()
    if not 0 < args.busy <= args.replicas:
        parser.error("--busy must be between 1 and --replicas")
    print(
        f"{args.rounds} rounds per mode: {args.replicas} pods, {args.busy} busy with a "
        f"{args.task_seconds:g} s task, scaled to {args.replicas - 1}; "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with (
            ControlPlane(root / "cp") as cluster,
            NodeAgent(cluster, stand_in_images(root), root / "node") as node,
        ):
            for mode, controller in (("before (no controller)", False), ("after", True)):
                began = time.monotonic()
                namespace = "bench-after" if controller else "bench-before"
                with ScaleInLab(
                    cluster,
                    node,
                    namespace,
                    root / namespace,
                    replicas=args.replicas,
                    controller=controller,
                ) as lab:
                    results = [one_round(lab, i, args) for i in range(args.rounds)]
                redelivered = sum(r for r, _ in results)
                removed_busy = sum(b for _, b in results)
                sent = args.rounds * args.busy
                print(
                    f"{mode:24s} tasks redelivered {redelivered}/{sent}; busy pods removed "
                    f"{removed_busy}/{args.rounds} scale-ins; per round {[r for r, _ in results]}; "
                    f"{time.monotonic() - began:.0f} s"
                )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
