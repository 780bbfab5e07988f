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

The same way, the stack exports the engine and version its broker runs (`broker_engine`):
data formats are one-way (components/engine.py), so an engine or version that cannot load
what the deployed broker wrote is refused before the StatefulSet rolls onto it and the new
server refuses to start on the volume.
"""

from __future__ import annotations

import pulumi

from components.engine import ENGINE_NAMES, data_change_problem, parse_version, version_text
from components.quantities import memory_bytes
from components.settings import StackSettings
from components.stack_config import SettingsError, key_path, stack_file_for

STORAGE_SIZE_OUTPUT = "broker_storage_size"
"""The stack output holding the deployed claim size ("" when the broker has no volume)."""
ENGINE_OUTPUT = "broker_engine"
"""The stack output holding the deployed server: {"engine": "valkey", "version": "9.1.2"}."""
PERSISTENCE_OUTPUT = "persistence"
"""The stack output holding the deployed persistence mode (none: no data to carry over)."""


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


def deployed_engine(settings: StackSettings) -> dict[str, str]:
    """Return the server this run deploys, as exported for the next run to judge."""
    return {
        "engine": settings.broker.engine,
        "version": version_text(settings.broker.server_version),
    }


def engine_change_problem(
    settings: StackSettings, deployed: object, deployed_persistence: object
) -> str | None:
    """Return why the requested engine and version cannot take over the deployed data, or None.

    `deployed` is the `broker_engine` output (None on a first deploy, or on a stack last
    deployed before engines were a setting: then it ran Redis of an unrecorded version).
    A broker that ran without persistence left nothing to load.
    """
    broker = settings.broker
    if deployed_persistence is None or deployed_persistence == "none":
        return None  # first deploy, or nothing was written to a volume
    key = key_path(("broker", "engine"))
    wanted = f"{broker.server_name} {version_text(broker.server_version)}"
    if not isinstance(deployed, dict) or deployed.get("engine") not in ENGINE_NAMES:
        if broker.engine == "redis":
            return None  # as before engines were a setting
        return (
            f"{key} = {broker.engine!r}: the deployed broker ran Redis of a version this stack "
            f"did not record (it was deployed before broker.engine existed), so whether "
            f"{wanted} loads its data is unknown; allowed: redis, then after one `pulumi up` "
            "(which records the version) the change to valkey"
        )
    problem = data_change_problem(
        str(deployed["engine"]),
        parse_version(str(deployed.get("version", "0.0"))),
        broker.engine,
        broker.server_version,
    )
    if problem is None:
        return None
    if deployed["engine"] == broker.engine:  # a version change: name where the version is set
        field = "engine_version" if broker.engine_version is not None else "image"
        key = key_path(("broker", field))
        return f"{key} = {getattr(broker, field)!r}: {problem}"
    return f"{key} = {broker.engine!r}: {problem}"


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

    def judge(deployed: list[object]) -> str:
        size, engine, persistence = deployed
        problems = [
            problem
            for problem in (
                storage_size_problem(settings, size),
                engine_change_problem(settings, engine, persistence),
            )
            if problem is not None
        ]
        if problems:
            raise SettingsError(stack_file_for(stack), problems)
        return "ok"

    return pulumi.Output.all(
        own.get_output(STORAGE_SIZE_OUTPUT),
        own.get_output(ENGINE_OUTPUT),
        own.get_output(PERSISTENCE_OUTPUT),
    ).apply(judge)
