"""Run the real `__main__.py` under Pulumi's mock runtime, as `pulumi up` would, offline.

The stack file is read exactly as the Pulumi CLI reads it (brokerctl/stackfile.py) and handed
to the program the way the CLI's Python language host does: PULUMI_CONFIG and
PULUMI_CONFIG_SECRET_KEYS in the environment. Whatever config the shell had in those variables
is set aside for the run, so nothing but the stack file reaches the program. Nothing secret
exists here: a `secure:` value and every generated password become a fixed placeholder, so a
render is deterministic and can be committed, diffed and shared. Tests substitute test values
for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import runpy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks

from brokerctl import stackfile
from brokerctl.errors import EXIT_USAGE, CommandError
from components.settings import PROJECT

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_PREFIX = "redacted-"
# The type token of components.generated_secret.GeneratedPassword (a Python dynamic resource).
GENERATED_PASSWORD = "pulumi-python:dynamic/celery-redis:GeneratedPassword"  # noqa: S105
STACK_REFERENCE = "pulumi:pulumi:StackReference"


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
        if args.typ == STACK_REFERENCE:
            state["outputs"] = {}  # the stack's own earlier outputs: none, as on a first deploy
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


def relative(path: Path) -> str:
    """Return a path as a person in the project folder would type it."""
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def read_stack_config(
    stack: str, config_dir: Path = CONFIG_DIR
) -> tuple[dict[str, str], list[str]]:
    """Read a stack file (plus Pulumi.yaml's config) into the strings the CLI hands a program.

    Returns the config and the keys that are secrets (their values are placeholders). A file
    the Pulumi CLI would refuse (duplicate keys, a number it cannot store, ...) is a
    CommandError with exit 2 naming the file and key.
    """
    path = stack_file(stack, config_dir)
    if not path.is_file():
        allowed = ", ".join(available_stacks(config_dir)) or "none"
        message = f"{relative(path)}: no such stack file; allowed stacks: {allowed}"
        raise CommandError(message, EXIT_USAGE)
    program_config = stackfile.read_program_config(
        PROJECT_ROOT / "Pulumi.yaml", path, shown=relative, stand_in=placeholder
    )
    return program_config.values, program_config.secret_keys


LANGUAGE_HOST_CONFIG = "PULUMI_CONFIG"
LANGUAGE_HOST_SECRET_KEYS = "PULUMI_CONFIG_SECRET_KEYS"  # noqa: S105 (a variable name)


def language_host_env(config: dict[str, str], secret_keys: list[str]) -> dict[str, str]:
    """Return the variables Pulumi's Python language host sets for a program (constructConfig)."""
    return {
        LANGUAGE_HOST_CONFIG: json.dumps(config, sort_keys=True),
        LANGUAGE_HOST_SECRET_KEYS: json.dumps(sorted(secret_keys)),
    }


@contextlib.contextmanager
def program_environment(
    config: dict[str, str], secret_keys: list[str], stack_file_shown: str
) -> Iterator[None]:
    """Hand the program its config as the language host does, and only that config.

    Every PULUMI_CONFIG* variable of the shell is set aside for the run and restored after:
    `pulumi.Config` reads PULUMI_CONFIG_<KEY> before PULUMI_CONFIG, so a stray variable could
    otherwise put a real password into rendered files.
    """
    names = [name for name in os.environ if name.startswith(LANGUAGE_HOST_CONFIG)]
    saved = {name: os.environ.pop(name) for name in [*names, STACK_FILE_ENV] if name in os.environ}
    os.environ.update(language_host_env(config, secret_keys))
    os.environ[STACK_FILE_ENV] = stack_file_shown
    try:
        yield
    finally:
        for name in [*language_host_env({}, []), STACK_FILE_ENV]:
            os.environ.pop(name, None)
        os.environ.update(saved)


def forget_mock_root_stack() -> None:
    """Drop the root stack `set_mocks` registers, so the program's `run_in_stack` makes its own.

    The Pulumi SDK has no public call for this: `set_root_resource` is typed for a Resource
    and None is what its own `reset_options` stores. tests/unit/test_render_secrets_sdk_internals
    fails if an SDK upgrade changes that.
    """
    pulumi.runtime.settings.set_root_resource(None)  # type: ignore[arg-type]


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
    # pulumi.Config reads this first; set so no earlier in-process run's config can linger.
    pulumi.runtime.set_all_config(config, secret_keys)
    pulumi.runtime.set_mocks(
        mocks, project=PROJECT, stack=stack, preview=False, monitor=_RecordingMonitor(mocks)
    )
    # set_mocks registers a finished root stack of its own; the program gets a fresh one, as
    # under the language host, so its exports become the stack's outputs.
    forget_mock_root_stack()
    main_py = str(PROJECT_ROOT / "__main__.py")
    shown = relative(stack_file(stack, config_dir))
    try:
        with program_environment(config, secret_keys, shown):
            loop.run_until_complete(
                pulumi.runtime.run_in_stack(lambda: runpy.run_path(main_py, run_name="__main__"))
            )
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    return run
