"""Every object of every stack passes Kubernetes' schemas; KEDA objects pass KEDA's own.

kubernetes-validate knows the built-in kinds of Kubernetes 1.30 (strict: unknown fields fail);
KEDA's kinds are checked by tests/support/keda_schema.py against the CRD schemas packaged in
@kubernetes-models/keda. Beside the three stacks, one stack turns on what they leave off (beat,
the CPU HPA, several queues per pool), so those objects are validated too.
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from brokerctl import render
from tests.support.keda_schema import keda_problems
from tests.unit.test_workers import render_objects

KUBERNETES_VERSION = "1.30.0"
STACKS = ("dev", "staging", "prod")


def is_keda(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"].startswith("keda.sh/")


def is_built_in(obj: dict[str, Any]) -> bool:
    """Whether Kubernetes itself defines the kind (core, apps, policy, *.k8s.io ...)."""
    group = obj["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def kubernetes_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems = []
    for obj in filter(is_built_in, objects):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{obj['kind']} {obj['metadata']['name']}: {error.message}")
    return problems


@pytest.fixture(scope="module")
def variant_objects(tmp_path_factory) -> list[dict[str, Any]]:
    return render_objects(
        tmp_path_factory.mktemp("variant"),
        {
            "pools": [
                {"name": "cpu", "autoscaling": {"enabled": True, "engine": "hpa"}},
                {
                    "name": "multi",
                    "queues": ["a", "b"],
                    "autoscaling": {"enabled": True, "min_replicas": 0},
                },
                {"name": "solo", "pool": "solo", "broker_url_aliases": ["REDIS_URL"]},
            ],
            "beat": {"enabled": True},
        },
    )


@pytest.mark.parametrize("stack", STACKS)
def test_every_built_in_object_of_every_stack_passes_strict_kubernetes_schemas(stack):
    problems = kubernetes_problems(render.render_stack(stack))
    assert not problems, (
        f"{stack}: objects rejected by Kubernetes {KUBERNETES_VERSION}:\n" + "\n".join(problems)
    )


def test_beat_hpa_and_multi_queue_objects_pass_strict_kubernetes_schemas(variant_objects):
    problems = kubernetes_problems(variant_objects)
    assert not problems, "objects rejected:\n" + "\n".join(problems)


@pytest.mark.parametrize("stack", STACKS)
def test_keda_objects_of_every_stack_pass_kedas_crd_schema(stack):
    objects = [o for o in render.render_stack(stack) if is_keda(o)]
    assert not keda_problems(objects), f"{stack}: KEDA rejects {keda_problems(objects)}"


def test_keda_objects_of_a_multi_queue_scale_to_zero_pool_pass(variant_objects):
    objects = [o for o in variant_objects if is_keda(o)]
    assert {o["kind"] for o in objects} == {"ScaledObject", "TriggerAuthentication"}
    assert not keda_problems(objects), keda_problems(objects)


def test_keda_schema_check_rejects_a_wrong_scaled_object(variant_objects):
    scaled = next(o for o in variant_objects if o["kind"] == "ScaledObject")
    numeric_metadata = copy.deepcopy(scaled)
    numeric_metadata["spec"]["triggers"][0]["metadata"]["listLength"] = 4  # KEDA wants strings
    no_target = copy.deepcopy(scaled)
    del no_target["spec"]["scaleTargetRef"]
    wrong_type = copy.deepcopy(scaled)
    wrong_type["spec"]["maxReplicaCount"] = "ten"
    problems = keda_problems([numeric_metadata, no_target, wrong_type])
    assert len(problems) == 3, f"the KEDA schema check let a wrong ScaledObject through: {problems}"
    assert "listLength" in problems[0], problems
    assert "scaleTargetRef" in problems[1], problems
