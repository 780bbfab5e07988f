"""Every object every stack renders is accepted by a real API server (server-side dry run).

The API server is the oracle for what Kubernetes accepts: defaults, validation and admission
run for real, and nothing is stored. Custom resources need their CRDs, which this cluster
does not have yet: they are validated against their real schemas in tests/unit instead.
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


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_every_built_in_object_passes_a_server_side_dry_run(
    stack: str, control_plane: ControlPlane, tmp_path: Path
) -> None:
    objects = render_stack(stack)
    built_in = [o for o in objects if _group(o["apiVersion"]) in BUILT_IN_GROUPS]
    assert built_in, f"{stack} rendered no built-in object"
    namespaces = [o for o in built_in if o["kind"] == "Namespace"]
    others = [o for o in built_in if o["kind"] != "Namespace"]
    # Namespaced objects can only be dry-run into a namespace that exists: create it for real.
    namespace = objects[0]["metadata"].get("namespace") or namespaces[0]["metadata"]["name"]
    control_plane.kubectl("create", "namespace", namespace, check=False)
    out = tmp_path / "objects"
    write_objects([*namespaces, *others], out)
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "--server-side", "--field-manager=dry-run-test",
        "-f", str(out), check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"the API server rejected {stack}'s objects:\n{result.stderr}"
    accepted = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(accepted) == len(built_in), (
        f"expected {len(built_in)} objects dry-run, the API server answered:\n{result.stdout}"
    )


def test_the_dry_run_rejects_what_kubernetes_rejects(
    control_plane: ControlPlane, tmp_path: Path
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
