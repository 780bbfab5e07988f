"""`python -m brokerctl render --stack STACK --out DIR`: every object a stack creates, offline.

Runs the real program under Pulumi's mock runtime (see mockrun) and writes each Kubernetes
object as YAML, one per file, named `<kind>-<name>.yaml`. Integers stay integers, secrets are
placeholders, custom resources are included. Two renders of the same stack are byte-identical.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

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
    check_out(args.out)  # a wrong --out is reported before the program runs
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
        if is_rpc_secret(value):
            return normalise(unwrap_rpc_secret(value))
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


def _usage(message: str) -> CommandError:
    return CommandError(message, EXIT_USAGE)


OUT_ALLOWED = (
    "allowed: an empty folder, a folder an earlier render wrote, "
    "or a new folder whose parent exists"
)
"""What `--out` may be, said in every error about it."""


def check_out(out: Path) -> None:
    """Refuse an `--out` render may not write into, without creating anything.

    Refused: a file, a dangling symlink, a folder whose parent is missing (a typo in a path
    should not create a tree of folders somewhere unexpected).
    """
    if out.is_dir():
        return
    if out.exists() or out.is_symlink():
        kind = "a symbolic link to nothing" if not out.exists() else "a file, not a folder"
        message = f"--out {out}: is {kind}; {OUT_ALLOWED}"
        raise _usage(message)
    if not out.parent.is_dir():
        message = f"--out {out}: its parent folder {out.parent} does not exist; {OUT_ALLOWED}"
        raise _usage(message)


def prepare_out(out: Path) -> Path:
    """Check `--out` (see `check_out`), create it when new, and return it resolved."""
    check_out(out)
    if out.is_dir():
        return out.resolve(strict=True)
    try:
        out.mkdir()
    except OSError as error:
        message = f"--out {out}: cannot create it ({error.strerror}); {OUT_ALLOWED}"
        raise _usage(message) from None
    return out.resolve(strict=True)


def _is_render_file(folder: Path, name: str) -> bool:
    """Whether `name` is a regular file render could have written directly inside `folder`.

    Only bare `*.yaml` names qualify: no separators, no `..`, no symbolic link (a link would
    let a crafted marker or a planted file redirect a delete or a write outside `folder`).
    """
    if name != Path(name).name or not name.endswith(".yaml") or name.startswith("."):
        return False
    path = folder / name
    if path.is_symlink():
        return False
    if path.exists() and not path.is_file():
        return False
    return path.resolve().parent == folder


def earlier_render_files(folder: Path) -> list[str]:
    """Names an earlier render wrote into `folder` (from its marker), each checked to be safe.

    The marker is data anyone could have edited: every name is refused unless it is a plain
    file directly inside `folder`, before anything is deleted.
    """
    marker = folder / MARKER
    if marker.is_symlink() or (marker.exists() and not marker.is_file()):
        message = f"{marker}: is not a regular file; remove it, render writes it itself"
        raise _usage(message)
    if not marker.exists():
        if any(folder.iterdir()):
            message = (
                f"{folder}: folder holds files that render did not write; "
                "allowed: an empty or earlier render folder"
            )
            raise _usage(message)
        return []
    names = marker.read_text().split()
    for name in names:
        if not _is_render_file(folder, name):
            message = (
                f"{marker}: lists {name!r}, which is not a file render writes into {folder}; "
                "allowed: bare <kind>-<name>.yaml names of regular files in that folder. "
                "Nothing was deleted; remove the marker if this folder is not a render's"
            )
            raise _usage(message)
    return names


def _create(path: Path, text: str) -> None:
    """Write a new file, never through a symbolic link and never over a file already there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        descriptor = os.open(path, flags, 0o666)
    except FileExistsError:
        message = (
            f"{path.parent}: holds {path.name} that render did not write; "
            "allowed: an empty or earlier render folder"
        )
        raise _usage(message) from None
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def write_objects(objects: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write one file per object; replace only what an earlier render wrote, never other files.

    Nothing outside `out` is ever deleted or written, whatever its marker lists.
    """
    folder = prepare_out(out)
    files: dict[str, str] = {}
    for obj in objects:
        name = file_name(obj)
        if name != Path(name).name:
            message = f"object {obj['kind']}/{obj['metadata']['name']}: not a file name: {name}"
            raise CommandError(message, EXIT_CHECK_FAILED)
        if name in files:
            message = f"two objects would be written to {name}"
            raise CommandError(message, EXIT_CHECK_FAILED)
        files[name] = dump(obj)
    for old in earlier_render_files(folder):
        (folder / old).unlink(missing_ok=True)
    # The marker goes first: a render stopped half-way still lists what it may have written.
    (folder / MARKER).unlink(missing_ok=True)
    _create(folder / MARKER, "".join(f"{name}\n" for name in sorted(files)))
    for name, text in files.items():
        _create(folder / name, text)
    return [out / name for name in files]
