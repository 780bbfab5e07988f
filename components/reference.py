"""The settings reference (README) generated from the model, so the two cannot drift apart."""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from components.settings import PROJECT, SECRET_KEYS, Section, StackSettings

SECTIONS = tuple(StackSettings.model_fields)


def _nested_model(annotation: object) -> tuple[type[BaseModel] | None, bool]:
    """Find the settings section inside an annotation, and whether it is a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation, False
    origin = typing.get_origin(annotation)
    for arg in typing.get_args(annotation):
        model, _ = _nested_model(arg)
        if model is not None:
            return model, origin is list
    return None, False


def _type_name(annotation: object) -> str:
    """Name a type shortly for people: `int`, `str | None`, `"none" | "rdb"`, `list[Pool]`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation)).removesuffix("Settings")


def _default_value(info: FieldInfo) -> object:
    """Return what a field takes when a stack file leaves it out (PydanticUndefined: required)."""
    if info.default_factory is not None:
        return info.get_default(call_default_factory=True, validated_data={})
    return info.default


def _default(value: object) -> str:
    """Show a default as a person would write it in a stack file."""
    if value is PydanticUndefined:
        return "(required)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return json.dumps([v.model_dump(mode="json", exclude_defaults=True) for v in value])
    return json.dumps(value)


def rows(
    model: type[BaseModel] = StackSettings,
    prefix: str = "",
    defaults: BaseModel | None = None,
) -> Iterator[tuple[str, str, str, str]]:
    """(key path, type, default, description) for every setting, sections before their fields.

    `defaults` is the parent's default for this section, when it has one: a section shared by
    several parents (`Resources`) has a different default under each, and the row must show
    the one that applies there (`broker.resources.memory_request` is 1Gi, not the class's
    256Mi). Fields of a list item (`[]`) take the item model's own defaults.
    """
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}" if prefix else name
        nested, is_list = _nested_model(info.annotation)
        value = getattr(defaults, name) if defaults is not None else _default_value(info)
        # A section's default is spelled out field by field in the rows that follow it.
        shown = "(see below)" if nested is not None and not is_list else _default(value)
        yield (path, _type_name(info.annotation), shown, info.description or "")
        if nested is None:
            continue
        if is_list:
            yield from rows(nested, f"{path}[].")
        else:
            yield from rows(nested, f"{path}.", value if isinstance(value, BaseModel) else None)


SECRETS: dict[str, tuple[str, str]] = {
    "broker_password": (
        "generated",
        "Password of the `celery` user (workers, beat, results). Set with "
        "`pulumi config set --secret broker_password ...`; otherwise generated once by the "
        "program and kept in state, stable across updates.",
    ),
    "broker_password_previous": (
        "unset",
        "Only while rotating the broker password: the old `broker_password`, which the "
        "`celery` user keeps accepting until every worker runs the new one; remove it "
        "afterwards (see 'Rotating the broker password'). Never generated.",
    ),
    "probe_password": (
        "generated",
        "Password of the `probe` user of the kubelet's probes (PING, INFO; the check, KEDA "
        "and the exporter have their own generated users). Set with "
        "`pulumi config set --secret probe_password ...`; otherwise generated once by the "
        "program and kept in state, stable across updates.",
    ),
    "check_password": (
        "generated",
        "Password of the `check` user (the check Job and `brokerctl check`: sizes and the "
        "unacked index, never a task body). Set with `pulumi config set --secret "
        "check_password ...`; otherwise generated once by the program and kept in state.",
    ),
    "keda_password": (
        "generated",
        "Password of the `keda` user (KEDA's scaler: LLEN and its script on the queue lists "
        "only). Set with `pulumi config set --secret keda_password ...`; otherwise generated "
        "once by the program and kept in state.",
    ),
    "exporter_password": (
        "generated",
        "Password of the `exporter` user (redis_exporter: INFO and sizes of the queue and "
        "unacked keys). Set with `pulumi config set --secret exporter_password ...`; otherwise "
        "generated once by the program and kept in state.",
    ),
    "scale_in_password": (
        "generated",
        "Password of the `scalein` user (the deletion-cost controller: reads the workers' "
        "task counts, writes the pools' in-flight lists; no queue, no task body). Set with "
        "`pulumi config set --secret scale_in_password ...`; otherwise generated once by the "
        "program and kept in state.",
    ),
}
"""Each credential's default and meaning (tests/unit checks `generated` against the program)."""


def reference_markdown() -> str:
    """Build the README's settings table.

    Columns: key (as written under `config:`), type, default, meaning.
    """
    lines = [
        f"Keys live under `{PROJECT}:` in `config/Pulumi.<stack>.yaml`; nested keys go inside",
        "the top-level object (`celery-redis:broker: {persistence: aof}`); `[]` marks a list item.",
        "",
        "| key | type | default | what it does and why the default |",
        "| --- | --- | --- | --- |",
    ]
    for path, type_name, default, description in rows():
        cells = [f"`{path}`", f"`{type_name}`", f"`{default}`", description]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    for key in SECRET_KEYS:
        default, description = SECRETS[key]
        lines.append(f"| `{key}` | secret | {default} | {description} |")
    return "\n".join(lines) + "\n"
