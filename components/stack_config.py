"""Read a stack's config into the settings model; the only place that touches Pulumi config.

The Pulumi CLI hands a program its config as strings (scalars as text, structured values as
JSON; see brokerctl/stackfile.py for exactly how a stack file becomes those strings), through
the PULUMI_CONFIG environment variable its Python language host sets. `brokerctl render` and
`settings` hand over the same strings the same way. `parse_stack_config` turns them into a
validated `StackSettings` or one `SettingsError` listing every problem (stack file, key path,
bad value, what is allowed), including keys outside this project's namespace, which the
program would otherwise silently ignore. `SettingsError` is a `pulumi.RunError`, which Pulumi's
Python language host reports as a plain error message without a traceback; `brokerctl render`
maps it to exit code 2.
"""

from __future__ import annotations

import difflib
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

PULUMI_ENGINE_KEYS = frozenset(
    {"pulumi:disable-default-providers", "pulumi:tags", "pulumi:autonaming"}
)
"""`pulumi:` keys the Pulumi engine itself reads (Pulumi.yaml sets the first for every stack)."""


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


def _shown(text: str, secret: bool) -> str:
    """Show a raw value as an error message may: never a secret, never a whole document."""
    if secret:
        return "[secret]"
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _foreign_key_problem(full_key: str, text: str, secret: bool) -> str | None:
    """Why a key outside this project's namespace is refused, or None for the engine's own keys.

    The program reads only `celery-redis:` keys, so any other key would be silently ignored:
    a typo such as `celery_redis:broker` would deploy prod with default settings.
    """
    if full_key in PULUMI_ENGINE_KEYS:
        return None
    namespace, _, name = full_key.partition(":")
    shown = f"{full_key} = {_shown(text, secret)}"
    if namespace == "kubernetes":
        return (
            f"{shown}: ignored (every object goes through this project's explicit Kubernetes "
            f"provider, which reads no `kubernetes:` config); allowed: {PROJECT}:kube_context "
            f"for the kubeconfig context, {PROJECT}:namespace for the namespace"
        )
    if namespace == "pulumi":
        allowed = ", ".join(sorted(PULUMI_ENGINE_KEYS))
        return f"{shown}: not a key the Pulumi engine reads; allowed pulumi: keys: {allowed}"
    settings = sorted([*StackSettings.model_fields, *SECRET_KEYS])
    close_namespace = (
        namespace.lower().replace("_", "-").replace(".", "-") == PROJECT
        or difflib.SequenceMatcher(None, namespace.lower(), PROJECT).ratio() >= 0.75
    )
    hint = ""
    if close_namespace or name in settings:
        guess = difflib.get_close_matches(name, settings, n=1, cutoff=0.6)
        hint = f" (did you mean {PROJECT}:{guess[0] if guess else name}?)"
    return (
        f"{shown}: outside this project's namespace, so the program would ignore it{hint}; "
        f"allowed: {PROJECT}:<setting>, settings: {', '.join(settings)}"
    )


def parse_stack_config(
    config: Mapping[str, str], secret_keys: Iterable[str], stack_file: str
) -> tuple[StackSettings, dict[str, str]]:
    """Validate a stack's raw config (the CLI's strings); return settings and secret raw values.

    Raises `SettingsError` naming every problem. A key outside this project's namespace is a
    problem (it would be ignored), except the few the Pulumi engine reads itself. Secrets are
    checked for being secrets: a password in plain text in a stack file would sit in the
    repository.
    """
    secret_set = set(secret_keys)
    values: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    problems: list[str] = []
    for full_key, text in sorted(config.items()):
        namespace, _, name = full_key.partition(":")
        if namespace != PROJECT:
            foreign = _foreign_key_problem(full_key, text, full_key in secret_set)
            if foreign:
                problems.append(foreign)
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


def explicit_runtime_config() -> dict[str, str]:
    """Return the config set with `pulumi.runtime.set_all_config` (mocks and tests), if any.

    The SDK has no public call that lists those keys, so this reads the module variable
    `set_all_config` fills; tests/unit/test_render_secrets_sdk_internals.py fails if an SDK
    upgrade moves it.
    """
    from pulumi.runtime import config as runtime_config

    return {key: str(value) for key, value in runtime_config.CONFIG.get().items()}


def _current_config() -> tuple[dict[str, str], list[str]]:
    """Return the config this run was handed: set explicitly, or where the language host puts it.

    `pulumi up` runs the program with PULUMI_CONFIG (every key, as text) and
    PULUMI_CONFIG_SECRET_KEYS set by Pulumi's Python language host. Under mocks the config is
    set explicitly and then it alone counts: `brokerctl render` must never pick up credentials
    a shell left in PULUMI_CONFIG.
    """
    from pulumi.runtime import get_config_env, get_config_secret_keys_env, is_config_secret

    explicit = explicit_runtime_config()
    if explicit:
        return explicit, sorted(key for key in explicit if is_config_secret(key))
    values = {key: str(value) for key, value in get_config_env().items()}
    return values, sorted(get_config_secret_keys_env())


def load_stack_config() -> StackConfig:
    """Read and validate the running stack's config; raise SettingsError before any resource.

    Secrets are taken from the same config that was validated (not looked up again through
    `pulumi.Config`, which would also consult PULUMI_CONFIG_<KEY> variables).
    """
    raw, secret_keys = _current_config()
    settings, secret_values = parse_stack_config(
        raw, secret_keys, stack_file_for(pulumi.get_stack())
    )
    secrets = {name: pulumi.Output.secret(text) for name, text in secret_values.items()}
    return StackConfig(settings=settings, secrets=secrets)
