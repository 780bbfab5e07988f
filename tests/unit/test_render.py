"""`brokerctl render`.

One object per file, deterministic, real integers, secrets redacted, valid.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from brokerctl.mockrun import PLACEHOLDER_PREFIX
from scripts.checkov_report import VARIANTS, VARIANTS_DIR
from tests.unit.conftest import leaves, run_brokerctl

STACKS = ("dev", "staging", "prod", *VARIANTS)
KUBERNETES_VERSION = "1.30.0"


def render_args(stack: str) -> list[str]:
    """`render` arguments for a shipped stack or a variant (tests/fixtures/render_variants)."""
    args = ["render", "--stack", stack]
    return [*args, "--config-dir", str(VARIANTS_DIR)] if stack in VARIANTS else args


@pytest.fixture(scope="module", params=STACKS)
def rendered(request, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(f"render-{request.param}")
    result = run_brokerctl(*render_args(request.param), "--out", str(out))
    assert result.returncode == 0, f"render {request.param} failed:\n{result.stderr}"
    return request.param, out


def objects(folder: Path) -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))]


def test_each_file_holds_exactly_one_named_object(rendered):
    stack, out = rendered
    for path in sorted(out.glob("*.yaml")):
        documents = list(yaml.safe_load_all(path.read_text()))
        assert len(documents) == 1, f"{stack}: {path.name} holds {len(documents)} objects"
        obj = documents[0]
        assert obj["apiVersion"], f"{path.name} lacks identity"
        assert obj["kind"], f"{path.name} lacks identity"
        assert obj["metadata"]["name"], f"{path.name} lacks identity"


def test_two_renders_are_byte_identical(rendered, tmp_path):
    stack, out = rendered
    again = tmp_path / "again"
    assert run_brokerctl(*render_args(stack), "--out", str(again)).returncode == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.yaml")}
    second = {p.name: p.read_bytes() for p in again.glob("*.yaml")}
    assert first == second, (
        f"{stack}: renders differ in {sorted(set(first) ^ set(second)) or 'content'}"
    )


def test_integers_stay_integers(rendered):
    stack, out = rendered
    floats = [(o["kind"], p, v) for o in objects(out) for p, v in leaves(o) if isinstance(v, float)]
    assert not floats, f"{stack}: whole numbers rendered as floats: {floats[:5]}"


NOT_SECRET_KEYS = {"username"}
"""Secret keys that name a user rather than hold a credential (KEDA reads both from one Secret)."""


def test_secret_values_are_placeholders(rendered):
    stack, out = rendered
    secrets = [o for o in objects(out) if o["kind"] == "Secret"]
    assert secrets, f"{stack}: no Secret rendered"
    for secret in secrets:
        assert "data" not in secret, "secrets are rendered as stringData, never hand-made base64"
        for key, value in secret["stringData"].items():
            if key in NOT_SECRET_KEYS:
                continue
            assert PLACEHOLDER_PREFIX in value, (
                f"{stack}: Secret {secret['metadata']['name']}.{key} is not redacted"
            )


def test_builtin_objects_pass_strict_kubernetes_schema(rendered):
    stack, out = rendered
    failures = []
    for obj in objects(out):
        if "." in obj["apiVersion"].split("/")[0] and not obj["apiVersion"].split("/")[0].endswith(
            "k8s.io"
        ):
            continue  # custom resources: validated against their CRD schemas elsewhere
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(
                f"{obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}"
            )
    assert not failures, f"{stack}: schema failures:\n" + "\n".join(failures)


def test_render_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_brokerctl("render", "--stack", "dev", "--out", str(tmp_path))
    assert result.returncode == 2
    assert (tmp_path / "notes.txt").read_text() == "mine", "render touched a file it did not write"


def test_custom_resources_pass_their_crd_schemas(rendered, tmp_path):
    from tests.support.crd_schema import is_custom_resource, validate_custom_resources

    stack, out = rendered
    custom = [o for o in objects(out) if is_custom_resource(o)]
    builtin_groups = ("v1", "apps", "batch", "policy", "autoscaling")
    unknown = [
        o["apiVersion"]
        for o in objects(out)
        if not is_custom_resource(o)
        and o["apiVersion"].split("/")[0] not in builtin_groups
        and not o["apiVersion"].split("/")[0].endswith("k8s.io")
    ]
    assert not unknown, f"{stack}: custom resources with no schema check: {unknown}"
    problems = validate_custom_resources(custom, tmp_path) if custom else []
    assert not problems, f"{stack}: CRD schema failures: {problems}"
