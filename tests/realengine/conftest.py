"""Fixtures of the real-engine tests: one control plane for the folder, stacks in project copies.

Two kinds of cluster, made only when a test asks for one:
- `control_plane` with its one `node`, once for this folder (every stack lifecycle test; pods
  share one network). Package scope, not session: they stop after the folder's last test
  instead of idling to the end of the run (under xdist the worker that ran this folder goes on
  with other tests, see tests/conftest.py);
- `three_nodes`, once per module: a control plane of its own with node-a, node-b and node-c
  on one pod network (tests/realengine/multinode.py), for what needs several nodes: spreading,
  drains, PDBs. Per module because idle, three nodes and their control plane still cost about
  a tenth of a core (they poll), more than starting them again (about 20 s).

These tests need the toolchain that scripts/toolchain.sh builds (make test runs it first),
Debian's etcd and openssl. They FAIL when one is missing, never skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.podrunner import Backoff, LocalImage
from tests.realengine.controlplane import ControlPlane
from tests.realengine.engine import RealStack, copy_project

if TYPE_CHECKING:
    from tests.realengine.multinode import MultiNodeCluster
    from tests.realengine.node_agent import NodeAgent

REAL_ENGINE_TEST_TIMEOUT = 1500
"""Seconds a real-engine test may take before pytest-timeout stops it (a guard, not a target)."""

CONTEXT = "real-engine"
"""The kubeconfig context name the test stacks deploy to (their `kube_context`)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is a real_engine test (`pytest -m real_engine` runs them alone)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.real_engine)
            # An engine operation is bounded by OPERATION_TIMEOUT (600 s); a test may run two.
            item.add_marker(pytest.mark.timeout(REAL_ENGINE_TEST_TIMEOUT))


@pytest.fixture(scope="package")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """Run a real API server, controller manager and scheduler on loopback for this folder."""
    with ControlPlane(tmp_path_factory.mktemp("control-plane"), context=CONTEXT) as cluster:
        yield cluster


@pytest.fixture(scope="package")
def node(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeAgent]:
    """Run the folder's one node (pods of every stack test), with a default StorageClass."""
    from tests.realengine.deployed import stand_in_images  # imports the e2e image table
    from tests.realengine.node_agent import NodeAgent

    root = tmp_path_factory.mktemp("node")
    images = stand_in_images(root)
    with NodeAgent(control_plane, images, root / "node", backoff=Backoff(0.5, 5)) as agent:
        agent.create_storage_class("standard", default=True)
        yield agent


MULTI_NODE_TIME_SCALE = 0.5
"""Probe periods x0.5 on the three nodes: a rolled or moved broker pod is ready sooner."""


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiNodeCluster]:
    """Run a control plane of the module's own with three nodes on one pod network.

    Its own control plane, so that the single `node` of the lifecycle tests (another network)
    never receives a pod of a multi-node test, nor the other way round. The image table is the
    stand-in stack's, plus `busybox` (the host's sh) for the harness's own tests.
    """
    from tests.realengine.deployed import stand_in_images
    from tests.realengine.multinode import MultiNodeCluster

    root = tmp_path_factory.mktemp("three-nodes")
    images = {**stand_in_images(root), "busybox": LocalImage(entrypoint=(), cmd=("sh",))}
    with (
        ControlPlane(root / "control-plane", context=CONTEXT) as cluster,
        MultiNodeCluster(
            cluster,
            images,
            root / "nodes",
            time_scale=MULTI_NODE_TIME_SCALE,
            backoff=Backoff(0.5, 5),
        ) as nodes,
    ):
        nodes.create_storage_class("standard", default=True)
        yield nodes


def new_stack(
    root: Path, stack: str, cluster: ControlPlane, stack_file: str | None = None
) -> RealStack:
    """Copy the project under `root` and init `stack` on a fresh local backend.

    `stack_file`, when given, replaces the copy's config/Pulumi.<stack>.yaml.
    """
    work_dir = copy_project(root / "project")
    if stack_file is not None:
        (work_dir / "config" / f"Pulumi.{stack}.yaml").write_text(stack_file)
    real = RealStack(work_dir, stack, root / "state", cluster.kubeconfig)
    real.init()
    return real
