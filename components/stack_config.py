"""Read a stack's config into the settings model; the only place that touches Pulumi config.

The Pulumi CLI hands a program its config as strings: scalars as text, structured values as
JSON. `parse_stack_config` turns that into a validated `StackSettings` or one `SettingsError`
listing every problem (stack file, key path, bad value, what is allowed). `SettingsError` is
a `pulumi.RunError`, which Pulumi's Python language host reports as a plain error message
without a traceback; `brokerctl render` maps it to exit code 2.
"""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pydantic import BaseModel, ValidationError

from components.settings import PROJECT, SECRET_KEYS, CrossFieldProblem, StackSettings

Path = tuple[str | int, ...]


class SettingsError(pulumi.RunError):
    """Every problem found in one stack's settings, reported together before any resource exists."""

    def __init__(self, stack_file: str, problems: list[str]) -> None:
        self.stack_file = stack_file
        self.problems = problems
        header = f"{stack_file}: {len(problems)} settings problem(s); nothing was created:"
        super().__init__("\n".join([header, *(f"  {stack_file}: {p}" for p in problems)]))


@dataclass(frozen=True)
class StackConfig:
    """The validated settings plus the credentials a stack configured as Pulumi secrets."""

    settings: StackSettings
    secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)


def stack_file_for(stack: str) -> str:
    """Path of a stack's settings file, relative to the project (Pulumi.yaml: stackConfigDir).

    `brokerctl render --config-dir` runs the program on another folder's stack files and says
    so through CELERY_REDIS_STACK_FILE, so messages name the file the person edited.
    """
    return os.environ.get("CELERY_REDIS_STACK_FILE") or f"config/Pulumi.{stack}.yaml"


def key_path(path: Path) -> str:
    """Render a settings location as the user writes it: `celery-redis:workers.pools[0].name`."""
    text = f"{PROJECT}:"
    for index, part in enumerate(path):
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += part if index == 0 else f".{part}"
    return text


def _is_text_field(name: str) -> bool:
    """Whether a top-level setting is a plain string, which must not be JSON-decoded ("123")."""
    annotation = StackSettings.model_fields[name].annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return args[0] is str
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return str in args
    return annotation is str


def _decode(name: str, text: str) -> Any:
    """Decode one config value the way the Pulumi CLI encoded it (structured values are JSON)."""
    if name in StackSettings.model_fields and _is_text_field(name):
        return text
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def _allowed_keys(path: Path) -> list[str]:
    """Return the keys a model accepts at `path`, for an 'unknown key' message."""
    model: type[BaseModel] | None = StackSettings
    for part in path:
        if model is None or isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return []
        model = _model_in(info.annotation)
    return sorted(model.model_fields) if model else []


def _model_in(annotation: object) -> type[BaseModel] | None:
    """Find the settings model inside an annotation such as `list[PoolSettings]` or `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe_errors(error: ValidationError) -> Iterable[str]:
    """One message per problem: key path, the value given, and what is allowed."""
    for item in error.errors():
        loc: Path = tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            parent = loc[:-1]
            allowed = ", ".join(_allowed_keys(parent)) or "none"
            yield f"{key_path(loc)}: unknown key (a typo?); allowed keys here: {allowed}"
            continue
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, CrossFieldProblem):
            for relative, value, message in cause.problems:
                yield f"{key_path(loc + relative)} = {value!r}: {message}"
            continue
        if item["type"] == "missing":
            yield f"{key_path(loc)}: required key is missing"
            continue
        message = item["msg"].removeprefix("Value error, ")
        yield f"{key_path(loc)} = {item['input']!r}: {message}"


def parse_stack_config(
    config: Mapping[str, str], secret_keys: Iterable[str], stack_file: str
) -> tuple[StackSettings, dict[str, str]]:
    """Validate a stack's raw config (the CLI's strings); return settings and secret raw values.

    Raises `SettingsError` naming every problem. Secrets are checked for being secrets: a
    password in plain text in a stack file would sit in the repository.
    """
    secret_set = set(secret_keys)
    values: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    problems: list[str] = []
    for full_key, text in sorted(config.items()):
        namespace, _, name = full_key.partition(":")
        if namespace != PROJECT:
            continue
        if name in SECRET_KEYS:
            if full_key not in secret_set:
                problems.append(
                    f"{full_key}: stored in plain text; allowed: only a secret, set it with "
                    f"`pulumi config set --secret {name} ...`"
                )
            secrets[name] = text
            continue
        values[name] = _decode(name, text)
    try:
        settings = StackSettings.model_validate(values)
    except ValidationError as error:
        problems.extend(_describe_errors(error))
        settings = None
    if problems or settings is None:
        raise SettingsError(stack_file, problems)
    return settings, secrets


def _current_config() -> tuple[dict[str, str], list[str]]:
    """All config the Pulumi runtime holds for this run (set by the CLI or by the mocks)."""
    from pulumi.runtime import config as runtime_config

    merged = dict(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    secret_keys = set(runtime_config.get_config_secret_keys_env())
    secret_keys.update(runtime_config._SECRET_KEYS.get())
    return {k: str(v) for k, v in merged.items()}, sorted(secret_keys)


def load_stack_config() -> StackConfig:
    """Read and validate the running stack's config; raise SettingsError before any resource."""
    raw, secret_keys = _current_config()
    settings, secret_values = parse_stack_config(
        raw, secret_keys, stack_file_for(pulumi.get_stack())
    )
    config = pulumi.Config(PROJECT)
    secrets = {name: config.require_secret(name) for name in secret_values}
    return StackConfig(settings=settings, secrets=secrets)
