"""The local cluster's object store: manifests loaded from YAML, Secrets with test values.

Rendered Secrets hold redacted placeholders. Tests pass `secret_values` (placeholder -> value),
substituted wherever a placeholder occurs inside any Secret value (values are often composed,
such as `redis://celery:PLACEHOLDER@broker:6379/0`), and `secret_overrides`
(`"namespace/name"` or `"name"` -> {key: value, or None to remove the key}) to prove failures.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from .errors import ManifestError

ObjectKey = tuple[str, str, str]  # kind, namespace, name


def load_manifests(source: Path | str | Iterable[dict]) -> list[dict]:
    """Read every object from a directory of YAML files (sorted), or take a list of objects."""
    if not isinstance(source, (str, Path)):
        return [copy.deepcopy(obj) for obj in source]
    directory = Path(source)
    if not directory.is_dir():
        msg = f"manifest directory {directory} does not exist"
        raise ManifestError(msg)
    objects = []
    for path in sorted([*directory.rglob("*.yaml"), *directory.rglob("*.yml")]):
        for document in yaml.safe_load_all(path.read_text()):
            if document is None:
                continue
            if not isinstance(document, dict) or "kind" not in document:
                msg = f"{path}: not a Kubernetes object"
                raise ManifestError(msg)
            objects.append(document)
    if not objects:
        msg = f"manifest directory {directory} holds no objects"
        raise ManifestError(msg)
    return objects


def config_map_bytes(obj: dict) -> dict[str, bytes]:
    """Return a ConfigMap's `data` and `binaryData` as the bytes its volume files hold."""
    data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def describe(obj: dict) -> str:
    """`Kind namespace/name` for messages."""
    metadata = obj.get("metadata", {})
    return f"{obj.get('kind')} {metadata.get('namespace', 'default')}/{metadata.get('name')}"


class ObjectStore:
    """Objects by (kind, namespace, name); serves ConfigMap and Secret data to the kubelet."""

    def __init__(
        self,
        secret_values: Mapping[str, str],
        secret_overrides: Mapping[str, Mapping[str, str | None]],
    ) -> None:
        self.objects: dict[ObjectKey, dict] = {}
        self.secret_values = dict(secret_values)
        self.secret_overrides = {k: dict(v) for k, v in secret_overrides.items()}

    def add(self, obj: dict) -> None:
        """Store (or replace) an object."""
        metadata = obj.setdefault("metadata", {})
        metadata.setdefault("namespace", "default")
        if not metadata.get("name"):
            msg = f"{describe(obj)}: metadata.name is required"
            raise ManifestError(msg)
        self.objects[(obj["kind"], metadata["namespace"], metadata["name"])] = obj

    def of_kind(self, kind: str) -> list[dict]:
        """All objects of a kind, in a stable order."""
        return [obj for (k, _, _), obj in sorted(self.objects.items()) if k == kind]

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        """One object, or None."""
        return self.objects.get((kind, namespace, name))

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict:
        """One object by name; the namespace may be omitted when the name is unique."""
        matches = [
            obj
            for (k, ns, n), obj in self.objects.items()
            if k == kind and n == name and namespace in (None, ns)
        ]
        if len(matches) != 1:
            where = f" in namespace {namespace}" if namespace else ""
            problem = "no" if not matches else "more than one (pass namespace=)"
            msg = f"{problem} {kind} named {name!r}{where}"
            raise ManifestError(msg)
        return matches[0]

    def check_overrides(self) -> None:
        """Refuse overrides naming no Secret, so a typo cannot make a failure test pass."""
        for target in self.secret_overrides:
            namespace, _, name = target.rpartition("/")
            self.find("Secret", name, namespace or None)

    def config_map_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """Return a ConfigMap's data and binaryData as bytes."""
        obj = self.get("ConfigMap", namespace, name)
        return None if obj is None else config_map_bytes(obj)

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """Return a Secret's data with placeholders replaced and test overrides applied."""
        obj = self.get("Secret", namespace, name)
        if obj is None:
            return None
        data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
        for placeholder, value in self.secret_values.items():
            data = {k: v.replace(placeholder.encode(), value.encode()) for k, v in data.items()}
        for target in (f"{namespace}/{name}", name):
            for key, value in self.secret_overrides.get(target, {}).items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value.encode()
        return data
