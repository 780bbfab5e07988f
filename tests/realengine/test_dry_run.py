"""Every object every stack renders is accepted by a real API server (server-side dry run).

The API server is the oracle for what Kubernetes accepts: defaults, validation and admission
run for real, and nothing is stored. Custom resources (prod's KEDA, cert-manager and
Prometheus Operator objects) are judged by their projects' own CRDs, installed with their real
schemas (pinned in scripts/toolchain.sh).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from brokerctl.render import render_stack, write_objects
from tests.realengine.controlplane import ControlPlane

BUILT_IN_GROUPS = {
    "",
    "apps",
    "batch",
    "policy",
    "networking.k8s.io",
    "autoscaling",
    "rbac.authorization.k8s.io",
}


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> list[str]:
    """Install the pinned CRDs once for this module's tests."""
    return control_plane.install_crds()


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_every_object_passes_a_server_side_dry_run(
    stack: str, control_plane: ControlPlane, crds: list[str], tmp_path: Path
) -> None:
    objects = render_stack(stack)
    custom = [o for o in objects if _group(o["apiVersion"]) not in BUILT_IN_GROUPS]
    if stack == "prod":
        assert custom, "prod renders no custom resource: the CRD part of this test proves nothing"
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    others = [o for o in objects if o["kind"] != "Namespace"]
    # Namespaced objects can only be dry-run into a namespace that exists: create it for real.
    namespace = others[0]["metadata"]["namespace"]
    control_plane.kubectl("create", "namespace", namespace, check=False)
    out = tmp_path / "objects"
    write_objects([*namespaces, *others], out)
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "--server-side", "--field-manager=dry-run-test",
        "-f", str(out), check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"the API server rejected {stack}'s objects:\n{result.stderr}"
    accepted = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(accepted) == len(objects), (
        f"expected {len(objects)} objects dry-run, the API server answered:\n{result.stdout}"
    )


def test_the_dry_run_rejects_what_kubernetes_rejects(
    control_plane: ControlPlane, crds: list[str], tmp_path: Path
) -> None:
    """The oracle itself: a manifest Kubernetes refuses fails the dry run (so the test can fail)."""
    objects = render_stack("dev")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = (
        "512Mi\n"
    )
    namespace = deployment["metadata"]["namespace"]
    control_plane.kubectl("create", "namespace", namespace, check=False)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode != 0, "the API server accepted a memory limit of '512Mi\\n'"


def test_a_custom_resource_off_its_schema_is_rejected(
    control_plane: ControlPlane, crds: list[str], tmp_path: Path
) -> None:
    """The CRDs carry real schemas: a ScaledObject with a wrong field type is refused."""
    scaled = next(o for o in render_stack("prod") if o["kind"] == "ScaledObject")
    scaled["spec"]["minReplicaCount"] = "two"
    control_plane.kubectl("create", "namespace", scaled["metadata"]["namespace"], check=False)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(scaled))
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode != 0, "the API server accepted minReplicaCount: 'two'"
