"""The judgement of changes that cannot be made in place, against the deployed stack's outputs.

Its wiring (the provider waits for it; nothing is touched on a refusal) is proven with the
real engine in tests/realengine; here, what it decides.
"""

from typing import Any

import pytest

from components.deployed import deployed_storage_size, storage_size_problem
from components.settings import StackSettings


def make_settings(**broker: Any) -> StackSettings:
    """Return settings with broker overrides; ephemeral so persistence none is allowed."""
    return StackSettings.model_validate(
        {
            "ephemeral": True,
            "broker": broker,
            "workers": {"pools": [{"name": "default", "image": "registry.example.com/pdf:1.0.0"}]},
        }
    )


@pytest.mark.parametrize("deployed", [None, "", 42])
def test_a_first_deploy_or_a_stack_without_volume_is_never_refused(deployed: object) -> None:
    assert storage_size_problem(make_settings(storage={"size": "16Gi"}), deployed) is None


def test_the_same_size_written_differently_is_no_change() -> None:
    settings = make_settings(storage={"size": "8192Mi"})
    assert storage_size_problem(settings, "8Gi") is None


@pytest.mark.parametrize(("deployed", "requested"), [("8Gi", "16Gi"), ("16Gi", "8Gi")])
def test_a_new_size_is_refused_with_both_sizes_and_the_procedure(
    deployed: str, requested: str
) -> None:
    problem = storage_size_problem(make_settings(storage={"size": requested}), deployed)
    assert problem is not None, f"{deployed} -> {requested} was accepted"
    for expected in ("celery-redis:broker.storage.size", deployed, requested, "README"):
        assert expected in problem, f"{expected!r} missing from: {problem}"


def test_a_broker_without_volume_exports_no_size() -> None:
    assert deployed_storage_size(make_settings(persistence="none")) == ""
    assert deployed_storage_size(make_settings(storage={"size": "12Gi"})) == "12Gi"


def test_a_grown_claim_is_accepted_once_the_deployed_size_is_named() -> None:
    settings = make_settings(storage={"size": "16Gi", "grown_from": "8Gi"})
    assert storage_size_problem(settings, "8Gi") is None
    wrong = make_settings(storage={"size": "16Gi", "grown_from": "4Gi"})
    assert storage_size_problem(wrong, "8Gi") is not None, "a wrong grown_from was accepted"
