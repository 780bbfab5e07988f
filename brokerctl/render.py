"""`python -m brokerctl render --stack STACK --out DIR`: every object a stack creates, offline.

Runs the real program under Pulumi's mock runtime (see mockrun) and writes each Kubernetes
object as YAML, one per file, named `<kind>-<name>.yaml`. Integers stay integers, secrets are
placeholders, custom resources are included. Two renders of the same stack are byte-identical.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from pulumi.runtime.rpc import _special_secret_sig as rpc_secret_sig
from pulumi.runtime.rpc import _special_sig_key as rpc_sig_key

from brokerctl import mockrun
from brokerctl.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, CommandError
from components.stack_config import SettingsError

MARKER = ".brokerctl-render"
"""Lists the files a render wrote, so the next render into the same folder replaces only those."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `render` command."""
    parser = subparsers.add_parser(
        "render",
        help="write every Kubernetes object of a stack as YAML (offline, mock runtime)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stack", required=True, help="stack name: dev, staging, prod (config/Pulumi.<stack>.yaml)"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to write the objects into")
    add_config_dir_option(parser)
    parser.set_defaults(handler=handle)


def add_config_dir_option(parser: argparse.ArgumentParser) -> None:
    """`--config-dir`: read stack files from another folder (tests, or a checkout of a branch)."""
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=mockrun.CONFIG_DIR,
        help="folder holding Pulumi.<stack>.yaml files (default: the project's config/)",
    )


def handle(args: argparse.Namespace) -> int:
    """Render the stack and write its objects; settings errors exit 2."""
    objects = render_stack(args.stack, args.config_dir)
    written = write_objects(objects, args.out)
    print(f"rendered {len(written)} objects of stack {args.stack} into {args.out}")
    return EXIT_OK


def render_stack(stack: str, config_dir: Path = mockrun.CONFIG_DIR) -> list[dict[str, Any]]:
    """Run the program for `stack` under mocks and return its Kubernetes objects as manifests."""
    config, secret_keys = mockrun.read_stack_config(stack, config_dir)
    try:
        run = mockrun.run_program(stack, config, secret_keys, config_dir)
    except SettingsError as error:
        raise CommandError(str(error), EXIT_USAGE) from None
    except Exception as error:
        message = f"stack {stack}: the program failed: {type(error).__name__}: {error}"
        raise CommandError(message, EXIT_CHECK_FAILED) from None
    return [manifest(resource) for resource in run.resources if is_kubernetes_object(resource.type)]


def is_kubernetes_object(type_token: str) -> bool:
    """Whether a Pulumi type token is a Kubernetes object (not the provider, not a component)."""
    return type_token.startswith("kubernetes:") and not type_token.startswith("kubernetes:index:")


FIRST_KEYS = ("apiVersion", "kind", "metadata", "name", "namespace")
"""Keys written before the rest (which follow alphabetically): the wire format keeps no order."""


def manifest(resource: mockrun.RecordedResource) -> dict[str, Any]:
    """Return the object as `kubectl apply` would see it.

    Identity first, no nulls, real ints.
    """
    return normalise(resource.inputs)


def _key_order(key: str) -> tuple[int, str]:
    return (FIRST_KEYS.index(key), "") if key in FIRST_KEYS else (len(FIRST_KEYS), key)


def normalise(value: Any) -> Any:
    """Unwrap secret markers, drop empty values, turn the wire format's integral floats to ints."""
    if isinstance(value, dict):
        if value.get(rpc_sig_key) == rpc_secret_sig:
            return normalise(value.get("value"))
        keys = sorted((str(k) for k in value if not str(k).startswith("__")), key=_key_order)
        cleaned = {k: normalise(value[k]) for k in keys}
        return {k: v for k, v in cleaned.items() if v is not None}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def file_name(obj: dict[str, Any]) -> str:
    """`<kind>-<name>.yaml`, with the API group for custom resources so kinds never collide."""
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    kind = obj["kind"].lower()
    prefix = (
        f"{group.split('.')[0]}-{kind}"
        if group and "." in group and not group.endswith("k8s.io")
        else kind
    )
    return f"{prefix}-{obj['metadata']['name']}.yaml"


class _BlockStrings(yaml.CSafeDumper):
    """libyaml's dumper (C, fast).

    It writes multi-line strings (redis.conf, scripts) as `|` blocks.
    """


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = (
        "|" if "\n" in text and all(line == line.rstrip() for line in text.splitlines()) else None
    )
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockStrings.add_representer(str, _represent_str)


def dump(obj: dict[str, Any]) -> str:
    """Serialise one object deterministically."""
    return yaml.dump(
        obj, Dumper=_BlockStrings, sort_keys=False, default_flow_style=False, width=100
    )


def write_objects(objects: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write one file per object; replace only what an earlier render wrote, never other files."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    if marker.exists():
        for old in marker.read_text().split():
            (out / old).unlink(missing_ok=True)
    elif any(out.iterdir()):
        message = (
            f"{out}: folder holds files that render did not write; "
            "allowed: an empty or earlier render folder"
        )
        raise CommandError(message, EXIT_USAGE)
    written: list[Path] = []
    for obj in objects:
        path = out / file_name(obj)
        if path in written:
            message = f"two objects would be written to {path.name}"
            raise CommandError(message, EXIT_CHECK_FAILED)
        path.write_text(dump(obj))
        written.append(path)
    marker.write_text("".join(f"{p.name}\n" for p in sorted(written)))
    return written
