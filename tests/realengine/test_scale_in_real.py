"""Scale-in spares busy workers, proven with the real API server and ReplicaSet controller.

1. One pass of the controller (brokerctl/deletioncost.py) against the real API server, with the
   token of the rendered ServiceAccount bound by the rendered Role, and a real broker booted
   from the rendered objects: costs are patched from the workers' entries, an unchanged count
   patches nothing (resourceVersions stay), and the token can do nothing else.
2. The rendered pool and controller running on the node (tests/realengine/scale_in_lab.py):
   three workers, one busy with a long task, the Deployment scaled to two through the API. The
   real ReplicaSet controller removes an idle pod; the long task finishes where it started and
   runs exactly once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brokerctl import deletioncost
from brokerctl.deletioncost import (
    ANNOTATION,
    ApiError,
    Controller,
    KubeApi,
    LoadBoard,
    inflight_key,
    load_key,
    parse_pools,
)
from tests.realengine.controlplane import ControlPlane
from tests.realengine.node_agent import NodeAgent
from tests.realengine.scale_in_lab import POOL, ScaleInLab, rendered_objects
from tests.support.broker_boot import SCALE_IN_PASSWORD, booted_broker, rendered_broker

PASS_NAMESPACE = "scalein-pass"
LONG_TASK_SECONDS = 20.0


def controller_args(objects: list[dict[str, Any]]) -> list[str]:
    """Return the arguments of the rendered controller container."""
    (deployment,) = [
        o for o in objects if o["kind"] == "Deployment" and "scale-in" in o["metadata"]["name"]
    ]
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def option(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == flag]


def worker_pod(name: str, labels: dict[str, str], **metadata: Any) -> dict[str, Any]:
    """Return a worker-labelled pod no node runs (no node matches): only its object counts."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": PASS_NAMESPACE, "labels": labels, **metadata},
        "spec": {
            "nodeSelector": {"scale-in-test": "no-such-node"},
            "containers": [{"name": "worker", "image": "registry.example.com/none:1"}],
        },
    }


@pytest.fixture(scope="module")
def pass_setup(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Create the rendered RBAC objects, the account's token and worker-labelled pods."""
    root = tmp_path_factory.mktemp("scale-in-pass")
    objects = rendered_objects(root / "render", PASS_NAMESPACE, replicas=1, controller=True)
    rbac = [o for o in objects if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    assert len(rbac) == 3, [o["kind"] for o in rbac]
    account_name = next(o for o in rbac if o["kind"] == "ServiceAccount")["metadata"]["name"]
    worker = next(
        o for o in objects if o["kind"] == "Deployment" and "scale-in" not in o["metadata"]["name"]
    )
    labels = worker["spec"]["template"]["metadata"]["labels"]
    pods = [
        worker_pod("busy", labels),
        worker_pod("idle", labels),
        worker_pod("silent", labels, annotations={ANNOTATION: "5"}),
        worker_pod("leaving", labels, finalizers=["celery-redis.test/hold"]),
        worker_pod("stranger", {**labels, "app.kubernetes.io/name": "beat"}),
    ]
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PASS_NAMESPACE}}
    items = [namespace, *rbac, *pods]
    control_plane.kubectl(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )
    control_plane.kubectl("-n", PASS_NAMESPACE, "delete", "pod", "leaving", "--wait=false")
    account = root / "serviceaccount"
    account.mkdir()
    token = control_plane.kubectl(
        "-n", PASS_NAMESPACE, "create", "token", account_name, "--duration", "30m"
    ).stdout.strip()
    (account / "token").write_text(token)
    (account / "ca.crt").write_bytes((control_plane.pki / "ca.crt").read_bytes())
    yield objects, account
    control_plane.kubectl(
        "-n", PASS_NAMESPACE, "patch", "pod", "leaving", "--type=merge",
        "-p", '{"metadata": {"finalizers": null}}', check=False,
    )  # fmt: skip
    control_plane.kubectl("delete", "namespace", PASS_NAMESPACE, "--wait=false", check=False)


def test_a_controller_pass_patches_changed_costs_only_and_its_token_can_do_nothing_else(
    control_plane: ControlPlane, pass_setup: tuple[list[dict[str, Any]], Path]
) -> None:
    objects, account = pass_setup
    args = controller_args(objects)
    (selector,) = option(args, "--selector")
    kube = KubeApi(control_plane.server, account, timeout=5)
    with booted_broker(rendered_broker("dev")) as server:
        admin = server.admin()
        admin.set(load_key("busy"), '{"running": 2, "held": 3}')
        admin.set(load_key("idle"), '{"running": 0, "held": 0}')
        admin.set(load_key("leaving"), '{"running": 1, "held": 1}')
        admin.set(load_key("stranger"), '{"running": 9, "held": 9}')
        controller = Controller(
            kube,
            LoadBoard(server.client("scalein", SCALE_IN_PASSWORD)),
            PASS_NAMESPACE,
            selector,
            parse_pools(option(args, "--pool")),
        )

        def pods() -> dict[str, dict[str, Any]]:
            found = json.loads(
                control_plane.kubectl("-n", PASS_NAMESPACE, "get", "pods", "-o", "json").stdout
            )["items"]
            return {p["metadata"]["name"]: p["metadata"] for p in found}

        def costs() -> dict[str, str | None]:
            return {n: (m.get("annotations") or {}).get(ANNOTATION) for n, m in pods().items()}

        first = controller.run_once()
        assert first.patched == {"busy": 2, "idle": 0}, first
        assert costs() == {
            "busy": "2",  # running two tasks
            "idle": "0",  # reported idle: the first to go
            "silent": "5",  # no entry (cut off, starting): its cost is left as it was
            "leaving": None,  # being deleted: nothing to decide any more
            "stranger": None,  # not a worker pod (beat): not watched
        }, "the costs after one pass"
        assert first.inflight_written == {POOL: 4}, "busy holds 3, leaving still 1"
        assert admin.llen(inflight_key(POOL)) == 4

        versions = {n: m["resourceVersion"] for n, m in pods().items()}
        second = controller.run_once()
        assert second.patched == {}, f"unchanged counts patched again: {second}"
        assert second.inflight_written == {}, "an unchanged in-flight count was rewritten"
        assert {n: m["resourceVersion"] for n, m in pods().items()} == versions, (
            "an unchanged count must not touch the pod (the docs warn against frequent updates)"
        )

        admin.set(load_key("busy"), '{"running": 0, "held": 0}')
        third = controller.run_once()
        assert third.patched == {"busy": 0}, third
        after = {n: m["resourceVersion"] for n, m in pods().items()}
        assert [n for n in after if after[n] != versions[n]] == ["busy"], "only busy changed"

    for method, path in (
        ("GET", f"/api/v1/namespaces/{PASS_NAMESPACE}/secrets"),
        ("DELETE", f"/api/v1/namespaces/{PASS_NAMESPACE}/pods/idle"),
        ("GET", f"/api/v1/namespaces/{PASS_NAMESPACE}/pods/idle/exec?command=sh"),
        ("GET", "/api/v1/namespaces/default/pods"),
        ("PATCH", f"/apis/apps/v1/namespaces/{PASS_NAMESPACE}/deployments/any"),
    ):
        with pytest.raises(ApiError) as refused:
            kube.request(
                method, path, {} if method == "PATCH" else None, "application/merge-patch+json"
            )
        assert refused.value.status == 403, f"{method} {path}: {refused.value}"


@pytest.fixture
def lab(control_plane: ControlPlane, node: NodeAgent, tmp_path: Path) -> Iterator[ScaleInLab]:
    with ScaleInLab(control_plane, node, "scalein-proof", tmp_path, replicas=3) as running:
        yield running


def test_scaling_in_removes_an_idle_worker_and_the_busy_one_finishes_its_task_once(
    lab: ScaleInLab,
) -> None:
    began = time.monotonic()
    # Ready means its passes work: it reached the API server with its own token (the node
    # forwards the `kubernetes` Service's address) and the broker as the scalein user.
    workers = lab.wait_ready(3)
    for name in workers:
        pod = lab.node.pod(name, lab.namespace)
        found = pod.exec(["sh", "-c", f"ls {deletioncost.SERVICE_ACCOUNT_DIR} 2>&1"])
        assert found.returncode != 0, f"worker {name} carries an API token: {found.stdout}"
    lab.send("long", LONG_TASK_SECONDS)
    (busy,) = lab.wait(lambda: lab.starts("long"), 30, "the long task to start")
    assert busy in workers, f"{busy} is not one of the pool's pods {workers}"
    idle = sorted(set(workers) - {busy})
    expected = {busy: "1", **dict.fromkeys(idle, "0")}
    lab.wait(lambda: lab.costs() == expected, 15, f"the controller to set costs {expected}")
    assert lab.redis().llen(inflight_key(POOL)) == 1, "KEDA would not see the running task"

    lab.scale(2)

    def two_left() -> list[str] | None:
        names = sorted(lab.costs())
        return names if len(names) == 2 else None

    survivors = lab.wait(two_left, 30, "the ReplicaSet to remove one pod")
    assert busy in survivors, (
        f"the ReplicaSet removed the busy pod {busy}; survivors {survivors}, costs were {expected}"
    )
    finished = lab.wait(lambda: lab.finishes("long"), LONG_TASK_SECONDS + 30, "the task to finish")
    assert finished == [busy], f"the task finished on {finished}, it started on {busy}"
    assert lab.starts("long") == [busy], (
        f"the task ran more than once: {lab.starts('long')} (redelivered by the scale-in)"
    )
    lab.wait(lambda: lab.costs().get(busy) == "0", 15, "the finished worker's cost back to 0")
    assert time.monotonic() - began < 150, "the proof should stay well inside its time budget"
