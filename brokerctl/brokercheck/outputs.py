"""Stack outputs (`pulumi stack output --json --show-secrets`: plain values, secrets shown)."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from brokerctl.brokercheck.config import Pool
from brokerctl.brokercheck.contract import ENGINES, PERSISTENCE_MODES, UsageError
from brokerctl.brokercheck.masking import Masker


def stack_outputs(args: argparse.Namespace) -> dict[str, Any]:
    """Return the stack outputs named by --stack or --outputs, or {} when neither is given."""
    if args.outputs:
        return _read_outputs_file(args.outputs)
    if args.stack:
        return _run_pulumi_stack_output(args.stack)
    return {}


def _read_outputs_file(path: str) -> dict[str, Any]:
    """Read the JSON written by `pulumi stack output --json --show-secrets`."""
    try:
        with open(path, encoding="utf-8") as stream:
            outputs = json.load(stream)
    except OSError as error:
        msg = f"--outputs {path}: cannot read it ({error.strerror})"
        raise UsageError(msg) from None
    except json.JSONDecodeError as error:
        msg = f"--outputs {path}: not JSON (line {error.lineno}: {error.msg})"
        raise UsageError(msg) from None
    return _require_object(outputs, f"--outputs {path}")


def _run_pulumi_stack_output(stack: str) -> dict[str, Any]:
    """Run the Pulumi CLI for the stack's outputs; without the CLI this is a usage error."""
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        msg = (
            f"--stack {stack}: the pulumi CLI is not installed here; save the outputs elsewhere "
            "with `pulumi stack output --json --show-secrets --stack STACK > FILE` and pass "
            "--outputs FILE, or give --url"
        )
        raise UsageError(msg)
    command = [pulumi, "stack", "output", "--json", "--show-secrets", "--stack", stack]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        msg = f"--stack {stack}: `pulumi stack output` did not finish within 120 s"
        raise UsageError(msg) from None
    if done.returncode != 0:
        last_lines = done.stderr.strip().splitlines()
        detail = Masker()(last_lines[-1] if last_lines else "no message")
        msg = f"--stack {stack}: `pulumi stack output` failed: {detail}"
        raise UsageError(msg)
    try:
        outputs = json.loads(done.stdout)
    except json.JSONDecodeError:
        msg = f"--stack {stack}: `pulumi stack output --json` did not print JSON"
        raise UsageError(msg) from None
    return _require_object(outputs, f"--stack {stack}")


def _require_object(outputs: object, origin: str) -> dict[str, Any]:
    """Stack outputs are a JSON object of output name to value."""
    if not isinstance(outputs, dict):
        msg = f"{origin}: expected a JSON object of stack outputs"
        raise UsageError(msg)
    return {str(key): value for key, value in outputs.items()} | {"__origin__": origin}


def output_str(outputs: Mapping[str, Any], key: str) -> str | None:
    """Return a string output, or None when the stack does not export it."""
    value = outputs.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        msg = f"{outputs['__origin__']}: output {key} must be a string"
        raise UsageError(msg)
    return value


def output_int(outputs: Mapping[str, Any], key: str) -> int | None:
    """Return a non-negative integer output, or None when absent."""
    value = outputs.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = f"{outputs['__origin__']}: output {key} must be a non-negative integer, not {value!r}"
        raise UsageError(msg)
    return value


def output_percent(outputs: Mapping[str, Any], key: str) -> float | None:
    """Return a share output (a ratio, 0 < r <= 1) as a percentage, or None when absent."""
    value = outputs.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= 1
    ):
        msg = (
            f"{outputs['__origin__']}: output {key} must be a ratio more than 0 and at most 1, "
            f"not {value!r}"
        )
        raise UsageError(msg)
    return round(float(value) * 100, 6)


def output_persistence(outputs: Mapping[str, Any]) -> str | None:
    """Return the `persistence` output after checking it names a known mode."""
    value = output_str(outputs, "persistence")
    if value is not None and value not in PERSISTENCE_MODES:
        msg = (
            f"{outputs['__origin__']}: output persistence is {value!r}; "
            f"allowed: {', '.join(PERSISTENCE_MODES)}"
        )
        raise UsageError(msg)
    return value


def output_engine(outputs: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """Return the `broker_engine` output ({"engine", "version"}) as an expectation, if any."""
    value = outputs.get("broker_engine")
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("engine") not in ENGINES:
        msg = (
            f"{outputs['__origin__']}: output broker_engine is {value!r}; allowed: "
            f'{{"engine": one of {", ".join(ENGINES)}, "version": "X.Y[.Z]"}}'
        )
        raise UsageError(msg)
    version = value.get("version")
    return str(value["engine"]), str(version) if version else None


def output_pools(outputs: Mapping[str, Any]) -> tuple[Pool, ...]:
    """Return the `pools` output: a list of {"name", "queues", "replicas"}."""
    value = outputs.get("pools")
    if value is None:
        return ()
    origin = outputs["__origin__"]
    if not isinstance(value, list):
        msg = f"{origin}: output pools must be a list of {{name, queues, replicas}}"
        raise UsageError(msg)
    return tuple(_output_pool(item, f"{origin}: output pools[{i}]") for i, item in enumerate(value))


def _output_pool(item: object, where: str) -> Pool:
    """Validate one entry of the `pools` output."""
    if not isinstance(item, dict):
        msg = f"{where} must be an object with name, queues, replicas"
        raise UsageError(msg)
    name, queues, replicas = item.get("name"), item.get("queues"), item.get("replicas")
    if not isinstance(name, str) or not name:
        msg = f"{where}.name must be a non-empty string"
        raise UsageError(msg)
    if not isinstance(queues, list) or not queues or not all(isinstance(q, str) for q in queues):
        msg = f"{where}.queues must be a non-empty list of queue names"
        raise UsageError(msg)
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int)):
        msg = f"{where}.replicas must be an integer"
        raise UsageError(msg)
    return Pool(name, tuple(queues), replicas)
