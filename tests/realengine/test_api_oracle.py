"""The settings model refuses what the real API server refuses: the API server is the oracle.

For each class of value a stack file hands to Kubernetes (quantities, label keys and values,
env var names, object names), candidates go both to the model's types and to a server-side
dry run. Whatever the model accepts, the API server must accept, or `pulumi up` would create
the first objects of a stack and then fail. Quantities must agree both ways: the model follows
Kubernetes' own parser, so a value Kubernetes takes is never refused either.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from components.k8s_values import DnsLabel, DnsSubdomain, EnvVarName, LabelKey, LabelValue
from components.quantities import MemoryQuantity
from tests.realengine.controlplane import ControlPlane

QUANTITIES = [
    "1e9", "1E3", "1e+3", "+1Gi", ".5Ki", "1.5Gi", "512Mi", "1E", "100m", "0.5",
    "512Mi\n", " 1Gi", "1Gi ", "1K", "1mi", "1e", "1ee3", "Gi", "1.Gi", "-1Gi", "1..5",
]  # fmt: skip
LABEL_KEYS = [
    "app", "example.com/app", "a_b.c-d", "-app", "app-", "a/b/c", "example.com/", "Example.COM/x",
    "x" * 63, "x" * 64, "under_score.example.com/x", "a" * 254 + "/x",
]  # fmt: skip
LABEL_VALUES = ["", "v1", "a.b_c-d", "-v", "v-", "x" * 63, "x" * 64, "a b", "ü"]
STRICTER_ON_PURPOSE = {
    " 1Gi": "the API server trims spaces around a JSON quantity; a stack file must not need that",
    "1Gi ": "the same",
    "Gi": "the API server reads a bare suffix as zero; a zero memory size is a typo here",
    "-1Gi": "memory must be above 0",
}
"""Quantities Kubernetes takes and the model refuses, each with its reason."""
ENV_NAMES = ["CELERY_X", "_x", "x.y", "x-y", "1X", "A=B", "", "A B", "x" * 300]
DNS_SUBDOMAINS = ["a", "a.b-c", "A", "a_b", "-a", "a.", "x" * 253, "x" * 254]
DNS_LABELS = ["a", "a-b", "A", "a.b", "-a", "a-", "x" * 63, "x" * 64]


def _model_accepts(kind: Any, value: str) -> bool:
    try:
        TypeAdapter(kind).validate_python(value)
    except ValidationError:
        return False
    return True


def _api_accepts(cluster: ControlPlane, manifest: dict[str, Any]) -> bool:
    result = cluster.kubectl(
        "create", "--dry-run=server", "-o", "name", "-f", "-", check=False,
        stdin=json.dumps(manifest),
    )  # fmt: skip
    return result.returncode == 0


def _pod(memory: str = "64Mi", env: str = "X") -> dict[str, Any]:
    container = {
        "name": "c", "image": "registry.example.com/x:1",
        "resources": {"requests": {"memory": memory}, "limits": {"memory": memory}},
        "env": [{"name": env, "value": "1"}],
    }  # fmt: skip
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "oracle", "namespace": "default"},
        "spec": {"containers": [container]},
    }  # fmt: skip


def _config_map(name: str = "oracle", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
    }  # fmt: skip


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


CASES: dict[str, tuple[Any, list[str], Callable[[str], dict[str, Any]]]] = {
    "memory quantity": (MemoryQuantity, QUANTITIES, lambda v: _pod(memory=v)),
    "label key": (LabelKey, LABEL_KEYS, lambda v: _config_map(labels={v: "x"})),
    "label value": (LabelValue, LABEL_VALUES, lambda v: _config_map(labels={"app": v})),
    "env var name": (EnvVarName, ENV_NAMES, lambda v: _pod(env=v)),
    "object name (DNS subdomain)": (DnsSubdomain, DNS_SUBDOMAINS, lambda v: _config_map(name=v)),
    "namespace (DNS label)": (DnsLabel, DNS_LABELS, _namespace),
}


@pytest.mark.parametrize("case", list(CASES))
def test_what_the_model_accepts_the_api_server_accepts(
    case: str, control_plane: ControlPlane
) -> None:
    kind, candidates, manifest = CASES[case]
    verdicts = {
        v: (_model_accepts(kind, v), _api_accepts(control_plane, manifest(v))) for v in candidates
    }
    too_lax = [v for v, (model, api) in verdicts.items() if model and not api]
    assert not too_lax, f"{case}: the model accepts what the API server refuses: {too_lax!r}"
    assert any(api for _, api in verdicts.values()), f"{case}: the API server refused everything"
    assert any(not api for _, api in verdicts.values()), f"{case}: no candidate was refused"


def test_quantities_agree_with_the_api_server_both_ways(control_plane: ControlPlane) -> None:
    disagree = {
        q: ("model accepts" if model else "model refuses")
        for q in QUANTITIES
        if (model := _model_accepts(MemoryQuantity, q)) != _api_accepts(control_plane, _pod(q))
        and q not in STRICTER_ON_PURPOSE
    }
    assert not disagree, f"the model and the API server disagree on: {disagree!r}"
