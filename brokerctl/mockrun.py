"""Run the real `__main__.py` under Pulumi's mock runtime, as `pulumi up` would, offline.

The stack file is read and handed to the program the way the Pulumi CLI does it (values as
strings, structured values as JSON, secure values marked secret). Nothing secret exists here:
a `secure:` value and every generated password become a fixed placeholder, so a render is
deterministic and can be committed, diffed and shared. Tests substitute test values for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks

from brokerctl.errors import EXIT_USAGE, CommandError
from components.settings import PROJECT

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_PREFIX = "redacted-"
# The type token of components.generated_secret.GeneratedPassword (a Python dynamic resource).
GENERATED_PASSWORD = "pulumi-python:dynamic/celery-redis:GeneratedPassword"  # noqa: S105


def placeholder(name: str) -> str:
    """Return the stand-in for a secret value.

    It is URL-safe, so URLs built around it keep their shape.
    """
    return f"{PLACEHOLDER_PREFIX}{name.replace(':', '-').replace('_', '-')}"


@dataclass
class RecordedResource:
    """One resource the program registered: its type token, logical name and inputs."""

    type: str
    name: str
    inputs: dict[str, Any]


@dataclass
class ProgramRun:
    """What one mock run produced: every resource in registration order, and stack outputs."""

    resources: list[RecordedResource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)


class _RecordingMocks(pulumi_mocks.Mocks):
    """Echo inputs as state (what the API server would store) and record every registration."""

    def __init__(self, run: ProgramRun) -> None:
        self.run = run

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict]:
        state = dict(args.inputs)
        if args.typ == GENERATED_PASSWORD:
            state["result"] = placeholder(args.name)
        self.run.resources.append(RecordedResource(args.typ, args.name, dict(args.inputs)))
        return f"{args.name}-id", state

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list | None]:
        return {}, None


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """The stock mock monitor, keeping the stack's exported outputs (it drops them otherwise)."""

    def __init__(self, mocks: _RecordingMocks) -> None:
        super().__init__(mocks)
        self.recording = mocks

    def RegisterResourceOutputs(self, request: Any) -> Any:
        """Keep the outputs registered on the root stack resource."""
        if "::pulumi:pulumi:Stack::" in request.urn:
            from pulumi.runtime import rpc

            outputs = rpc.deserialize_properties(request.outputs)
            self.recording.run.outputs.update(outputs)
        return super().RegisterResourceOutputs(request)


CONFIG_DIR = PROJECT_ROOT / "config"
STACK_FILE_ENV = "CELERY_REDIS_STACK_FILE"
"""Tells the program which file its settings came from, so errors name it (see stack_config)."""


def stack_file(stack: str, config_dir: Path = CONFIG_DIR) -> Path:
    """Where a stack's settings live (Pulumi.yaml sets stackConfigDir: config)."""
    return config_dir / f"Pulumi.{stack}.yaml"


def available_stacks(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Stacks that have a settings file."""
    files = config_dir.glob("Pulumi.*.yaml")
    return sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in files)


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        message = f"{relative(path)}:{where}: {problem}; allowed: a YAML mapping"
        raise CommandError(message, EXIT_USAGE) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        message = f"{relative(path)}: top level is {type(document).__name__}; allowed: a mapping"
        raise CommandError(message, EXIT_USAGE)
    return document


def relative(path: Path) -> str:
    """Return a path as a person in the project folder would type it."""
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def _as_cli_string(value: Any) -> str:
    """Encode a value as the Pulumi CLI passes config to programs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    if value is None:
        return ""
    return str(value)


def _full_key(key: str) -> str:
    return key if ":" in key else f"{PROJECT}:{key}"


def read_stack_config(
    stack: str, config_dir: Path = CONFIG_DIR
) -> tuple[dict[str, str], list[str]]:
    """Read a stack file (plus project-level config values) into the CLI's string form."""
    path = stack_file(stack, config_dir)
    if not path.is_file():
        allowed = ", ".join(available_stacks(config_dir)) or "none"
        message = f"{relative(path)}: no such stack file; allowed stacks: {allowed}"
        raise CommandError(message, EXIT_USAGE)
    project = _load_yaml(PROJECT_ROOT / "Pulumi.yaml")
    config: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, spec in (project.get("config") or {}).items():
        if isinstance(spec, dict) and "value" in spec:
            config[_full_key(key)] = _as_cli_string(spec["value"])
    document = _load_yaml(path)
    stack_config = document.get("config") or {}
    if not isinstance(stack_config, dict):
        message = f"{relative(path)}: config is not a mapping; allowed: key: value pairs"
        raise CommandError(message, EXIT_USAGE)
    for key, value in stack_config.items():
        full = _full_key(str(key))
        if isinstance(value, dict) and set(value) == {"secure"}:
            config[full] = placeholder(full.partition(":")[2])
            secret_keys.append(full)
        else:
            config[full] = _as_cli_string(value)
    return config, secret_keys


def run_program(
    stack: str, config: dict[str, str], secret_keys: list[str], config_dir: Path = CONFIG_DIR
) -> ProgramRun:
    """Run `__main__.py` for `stack` under mocks; return what it registered.

    Raises whatever the program raises: a `SettingsError` (a `pulumi.RunError`) for bad
    settings, exactly as the Pulumi language host would see it.
    """
    run = ProgramRun()
    mocks = _RecordingMocks(run)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # before set_mocks: the mock monitor binds to the current loop
    pulumi.runtime.set_all_config(config, secret_keys)
    pulumi.runtime.set_mocks(
        mocks, project=PROJECT, stack=stack, preview=False, monitor=_RecordingMonitor(mocks)
    )
    # set_mocks registers a finished root stack of its own; the program gets a fresh one, as
    # under the language host, so its exports become the stack's outputs.
    pulumi.runtime.settings.ROOT.set(None)
    main_py = str(PROJECT_ROOT / "__main__.py")
    os.environ[STACK_FILE_ENV] = relative(stack_file(stack, config_dir))
    try:
        loop.run_until_complete(
            pulumi.runtime.run_in_stack(lambda: runpy.run_path(main_py, run_name="__main__"))
        )
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    return run
