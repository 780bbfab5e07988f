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


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, list) and value and isinstance(value[0], BaseModel):
            return json.dumps([v.model_dump(mode="json", exclude_defaults=True) for v in value])
        if isinstance(value, BaseModel):
            changed = value.model_dump(mode="json", exclude_defaults=True)
            return json.dumps(changed) if changed else "(see below)"
        return json.dumps(value)
    if info.default is PydanticUndefined:
        return "(required)"
    return json.dumps(info.default)


def rows(
    model: type[BaseModel] = StackSettings, prefix: str = ""
) -> Iterator[tuple[str, str, str, str]]:
    """(key path, type, default, description) for every setting, sections before their fields."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}" if prefix else name
        nested, is_list = _nested_model(info.annotation)
        yield (path, _type_name(info.annotation), _default(info), info.description or "")
        if nested is not None:
            yield from rows(nested, f"{path}[]." if is_list else f"{path}.")


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
        lines.append(
            f"| `{key}` | secret | generated | Set with `pulumi config set --secret {key} ...`; "
            "otherwise generated once by the program and kept in state. |"
        )
    return "\n".join(lines) + "\n"
