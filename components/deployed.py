"""Changes Kubernetes cannot make in place, refused against what the stack last deployed.

A StatefulSet's volumeClaimTemplates are immutable. Without this guard, growing
`broker.storage.size` on a deployed stack makes the provider plan a replacement that the API
server refuses, and `pulumi preview` itself fails with `spec: Forbidden: updates to statefulset
spec for fields other than ...`, a message that names neither the setting nor a way out.

The stack exports the size it deployed (`broker_storage_size`); the next run reads it back
through a reference to its own stack and, when the setting differs, stops with the stack file,
the key, both sizes and the procedure in README ("Growing the broker's volume") before any
Kubernetes object is touched: the explicit provider, through which every object goes, waits
for this judgement.
"""

from __future__ import annotations

import pulumi

from components.quantities import memory_bytes
from components.settings import StackSettings
from components.stack_config import SettingsError, key_path, stack_file_for

STORAGE_SIZE_OUTPUT = "broker_storage_size"
"""The stack output holding the deployed claim size ("" when the broker has no volume)."""


def deployed_storage_size(settings: StackSettings) -> str:
    """Return the claim size this run deploys, as exported: "" when persistence is none."""
    return "" if settings.broker.persistence == "none" else settings.broker.storage.size


def storage_size_problem(settings: StackSettings, deployed: object) -> str | None:
    """Return why the requested claim size cannot be applied to the deployed one, or None."""
    if not isinstance(deployed, str) or not deployed:
        return None  # first deploy, or no volume deployed yet
    requested = deployed_storage_size(settings)
    if not requested or memory_bytes(requested) == memory_bytes(deployed):
        return None
    grown_from = settings.broker.storage.grown_from
    if grown_from is not None and memory_bytes(grown_from) == memory_bytes(deployed):
        return None  # the person grew the claim and says so: the StatefulSet may be recreated
    return (
        f"{key_path(('broker', 'storage', 'size'))} = {requested!r}: the deployed broker's volume "
        f"is {deployed}, and a StatefulSet's volume size cannot change in place; allowed: "
        f'{deployed}, or follow README "Growing the broker\'s volume" (grow the claim, then '
        "update this setting)"
    )


def guard_in_place_changes(settings: StackSettings) -> pulumi.Output[str]:
    """Return an output that fails the run when a setting cannot be applied in place.

    Resolves to "ok" otherwise; the cluster provider waits for it, so a refusal comes before
    any object is created, changed or deleted.
    """
    stack = pulumi.get_stack()
    own = pulumi.StackReference(
        f"{pulumi.get_organization()}/{pulumi.get_project()}/{stack}",
        opts=pulumi.ResourceOptions(),
    )

    def judge(deployed: object) -> str:
        problem = storage_size_problem(settings, deployed)
        if problem is not None:
            raise SettingsError(stack_file_for(stack), [problem])
        return "ok"

    return own.get_output(STORAGE_SIZE_OUTPUT).apply(judge)
