"""Pod volumes as host directories, laid out, moded and owned the way the kubelet does it.

- configMap / secret / projected / downwardAPI: one file per key (or per `items` entry), mode
  `defaultMode` (0644 unless set) or the item's `mode`, owned by root; always mounted read-only.
  Laid out as the kubelet's AtomicWriter does (`..data` -> `..<time>/`, names linked through
  `..data`), so `refresh_key_volumes` can swap in new contents while the pod runs. A projected
  serviceAccountToken needs a store that issues tokens (the node agent's API server).
- emptyDir: an empty directory, mode 0777, removed with the pod.
- persistentVolumeClaim: a directory per claim that outlives pods (StatefulSet claims are
  `<template>-<sts>-<ordinal>`). A fresh claim is root:root 0755, like a new ext4 volume, so a
  non-root pod can write only when fsGroup makes it group-writable, as on a real cluster.
- fsGroup: every volume is chgrp'ed to it with group read (and write for writable volumes) and
  setgid directories: the kubelet's `SetVolumeOwnership`, which is why a 0400 secret is 0440.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .environment import ConfigStore, PodIdentity, field_ref, resource_field
from .errors import ContainerConfigError, UnsupportedManifest

DEFAULT_MODE = 0o644
EMPTY_DIR_MODE = 0o777
FRESH_CLAIM_MODE = 0o755
DATA_LINK = "..data"
KEY_VOLUME_KINDS = ("configMap", "secret", "projected", "downwardAPI")


@dataclass(frozen=True)
class Mount:
    """One bind mount of a host path into a container's root."""

    source: str
    target: str
    read_only: bool


@dataclass(frozen=True)
class PodVolume:
    """A prepared volume: where it lives on the host and whether it is read-only by nature."""

    path: Path
    read_only: bool
    creates_sub_paths: bool


Payload = dict[str, tuple[bytes, int]]
"""A key volume's files: relative path -> (content, mode)."""


class TokenIssuer(Protocol):
    """A ConfigStore that can also issue service-account tokens (an API server behind it)."""

    def service_account_token(
        self, pod: PodIdentity, audience: str | None, expiration_seconds: int
    ) -> str:
        """Return a token bound to the pod, as the kubelet gets one from the TokenRequest API."""


def key_files(
    data: dict[str, bytes], source: dict, default_mode: int, where: str, payload: Payload
) -> None:
    """Add ConfigMap/Secret keys as files to payload, honouring `items` (key, path, mode)."""
    items = source.get("items") or [{"key": key, "path": key} for key in sorted(data)]
    for item in items:
        if item["key"] not in data:
            if source.get("optional", False):
                continue
            msg = f"{where}: key {item['key']!r} not found (items)"
            raise ContainerConfigError(msg)
        path = safe_relative(item["path"], f"{where}.items")
        payload[path] = (data[item["key"]], item.get("mode", default_mode))


def safe_relative(path: str, where: str) -> str:
    """Refuse absolute paths and `..` in volume item paths and subPaths, as the API server does."""
    if path.startswith("/") or ".." in Path(path).parts:
        msg = f"{where}: path {path!r} must be relative without '..'"
        raise UnsupportedManifest(msg)
    return path


def key_source_data(
    store: ConfigStore, namespace: str, kind: str, source: dict, where: str
) -> dict[str, bytes] | None:
    """Fetch a ConfigMap/Secret for a volume; None if optional and absent (FailedMount if not)."""
    name = source.get("secretName") or source.get("name")
    lookup = store.secret_data if kind == "secret" else store.config_map_data
    data = lookup(namespace, name)
    if data is None and not source.get("optional", False):
        msg = f"{where}: FailedMount: {kind} {namespace}/{name} not found"
        raise ContainerConfigError(msg)
    return data


def downward_api_files(
    pod_spec: dict, pod: PodIdentity, items: list[dict], default_mode: int, where: str
) -> Payload:
    """Return downwardAPI files: pod fields (fieldRef), container resources (resourceFieldRef)."""
    payload: Payload = {}
    for index, item in enumerate(items):
        here = f"{where}.items[{index}]"
        if "fieldRef" in item:
            value = field_ref(pod, item["fieldRef"]["fieldPath"], here)
        else:
            ref = item["resourceFieldRef"]
            containers = [*pod_spec.get("containers", []), *pod_spec.get("initContainers", [])]
            named = [c for c in containers if c["name"] == ref.get("containerName")]
            if not named:
                msg = f"{here}: no container named {ref.get('containerName')!r}"
                raise UnsupportedManifest(msg)
            value = resource_field(named[0], ref, here)
        path = safe_relative(item["path"], here)
        payload[path] = (value.encode(), item.get("mode", default_mode))
    return payload


def service_account_token_file(
    store: ConfigStore, pod: PodIdentity, source: dict, default_mode: int, where: str
) -> Payload:
    """Return a projected serviceAccountToken: a token bound to the pod, from an API server."""
    issue = getattr(store, "service_account_token", None)
    if issue is None:
        msg = f"{where}: serviceAccountToken needs an API server to issue tokens"
        raise ContainerConfigError(msg)
    token = issue(pod, source.get("audience"), int(source.get("expirationSeconds", 3600)))
    return {safe_relative(source["path"], where): (token.encode(), default_mode)}


def projected_files(
    store: ConfigStore, pod_spec: dict, pod: PodIdentity, projected: dict, where: str
) -> Payload:
    """Every source of a projected volume, later sources overwriting earlier paths."""
    default_mode = projected.get("defaultMode", DEFAULT_MODE)
    payload: Payload = {}
    for index, entry in enumerate(projected.get("sources") or []):
        ((kind, source),) = entry.items()
        here = f"{where}.projected.sources[{index}]"
        if kind in ("secret", "configMap"):
            data = key_source_data(store, pod.namespace, kind, source, here)
            if data is not None:
                key_files(data, source, default_mode, here, payload)
        elif kind == "downwardAPI":
            payload.update(
                downward_api_files(pod_spec, pod, source.get("items", []), default_mode, here)
            )
        elif kind == "serviceAccountToken":
            payload.update(service_account_token_file(store, pod, source, default_mode, here))
        else:
            msg = f"{here}.{kind}: projected source not supported by the pod runner"
            raise UnsupportedManifest(msg)
    return payload


def key_volume_files(
    store: ConfigStore, pod_spec: dict, pod: PodIdentity, volume: dict, where: str
) -> Payload:
    """Return the files of a configMap, secret, projected or downwardAPI volume, read now."""
    if "projected" in volume:
        return projected_files(store, pod_spec, pod, volume["projected"], where)
    if "downwardAPI" in volume:
        source = volume["downwardAPI"]
        default_mode = source.get("defaultMode", DEFAULT_MODE)
        return downward_api_files(pod_spec, pod, source.get("items", []), default_mode, where)
    kind = "secret" if "secret" in volume else "configMap"
    source = volume[kind]
    payload: Payload = {}
    data = key_source_data(store, pod.namespace, kind, source, f"{where}.{kind}")
    if data is not None:
        key_files(data, source, source.get("defaultMode", DEFAULT_MODE), where, payload)
    return payload


def current_payload(directory: Path) -> Payload | None:
    """Return what an atomically written volume holds now (None when never written)."""
    data_dir = directory / DATA_LINK
    if not data_dir.is_symlink():
        return None
    payload: Payload = {}
    for path in data_dir.resolve().rglob("*"):
        if path.is_file():
            relative = str(path.relative_to(data_dir.resolve()))
            payload[relative] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return payload


def atomic_write(directory: Path, payload: Payload, fs_group: int | None) -> bool:
    """Publish payload into directory the way the kubelet's AtomicWriter does; True if changed.

    Files live in a timestamped `..<time>` directory; `..data` is a symlink to it and every
    top-level name is a symlink through `..data`. An update writes a new timestamped directory
    and renames a new `..data` over the old one, so a reader inside the pod sees the old set of
    files or the new one, never a mix, and the bind mount of the volume directory shows it at
    once (a subPath mount, resolved at container start, keeps the old file, as on a kubelet).
    """
    directory.mkdir(mode=0o755, exist_ok=True)
    previous = current_payload(directory)
    if previous is not None:
        with_group = (
            payload
            if fs_group is None
            else {path: (content, mode | 0o440) for path, (content, mode) in payload.items()}
        )
        if previous == with_group:
            return False
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    new_dir = Path(tempfile.mkdtemp(prefix=stamp, dir=directory))
    new_dir.chmod(0o755)
    for relative, (content, mode) in payload.items():
        target = new_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    if fs_group is not None:
        apply_fs_group(new_dir, fs_group, read_only=True)
    old_dir = (directory / DATA_LINK).resolve() if previous is not None else None
    temporary_link = directory / f"{DATA_LINK}_tmp"
    temporary_link.unlink(missing_ok=True)
    temporary_link.symlink_to(new_dir.name)
    temporary_link.rename(directory / DATA_LINK)
    wanted = {Path(relative).parts[0] for relative in payload}
    for entry in directory.iterdir():
        if not entry.name.startswith("..") and entry.name not in wanted:
            entry.unlink()
    for name in wanted:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"{DATA_LINK}/{name}")
    if old_dir is not None and old_dir != new_dir:
        shutil.rmtree(old_dir, ignore_errors=True)
    return True


def apply_fs_group(root: Path, gid: int, read_only: bool) -> None:
    """Give fsGroup access to a volume tree the way kubelet's SetVolumeOwnership does."""
    mask = 0o440 if read_only else 0o660
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        os.lchown(path, -1, gid)
        extra = mask | (stat.S_ISGID | 0o110 if stat.S_ISDIR(info.st_mode) else 0)
        path.chmod(stat.S_IMODE(info.st_mode) | extra)


def claim_path(claims_root: Path, namespace: str, claim: str) -> Path:
    """Return (creating on first use) the directory standing in for a PersistentVolume."""
    path = claims_root / namespace / claim
    if not path.exists():
        path.mkdir(parents=True)
        path.chmod(FRESH_CLAIM_MODE)
    return path


def is_key_volume(volume: dict) -> bool:
    """Whether a volume's files come from API objects (and are refreshed while pods run)."""
    return any(kind in volume for kind in KEY_VOLUME_KINDS)


def prepare_volume(
    volume: dict,
    volumes_dir: Path,
    store: ConfigStore,
    pod: PodIdentity,
    pod_spec: dict,
    claim_dir: Callable[[str], Path],
    where: str,
) -> PodVolume:
    """Create one volume on the host and describe it."""
    if "persistentVolumeClaim" in volume:
        source = volume["persistentVolumeClaim"]
        path = claim_dir(source["claimName"])
        return PodVolume(path, source.get("readOnly", False), creates_sub_paths=True)
    path = volumes_dir / volume["name"]
    if "emptyDir" in volume:
        path.mkdir()
        path.chmod(EMPTY_DIR_MODE)
        return PodVolume(path, read_only=False, creates_sub_paths=True)
    if not is_key_volume(volume):
        kinds = sorted(set(volume) - {"name"})
        msg = f"{where}: volume type {kinds} not supported by the pod runner"
        raise UnsupportedManifest(msg)
    fs_group = pod_spec.get("securityContext", {}).get("fsGroup")
    atomic_write(path, key_volume_files(store, pod_spec, pod, volume, where), fs_group)
    return PodVolume(path, read_only=True, creates_sub_paths=False)


def prepare_pod_volumes(
    spec: dict,
    volumes_dir: Path,
    store: ConfigStore,
    pod: PodIdentity,
    claim_dir: Callable[[str], Path],
    where: str,
) -> dict[str, PodVolume]:
    """Create every volume of a pod spec; raise ContainerConfigError for missing sources."""
    volumes_dir.mkdir(parents=True, exist_ok=True)
    fs_group = spec.get("securityContext", {}).get("fsGroup")
    prepared: dict[str, PodVolume] = {}
    for index, volume in enumerate(spec.get("volumes") or []):
        here = f"{where}.volumes[{index}] ({volume['name']})"
        prepared[volume["name"]] = prepare_volume(
            volume, volumes_dir, store, pod, spec, claim_dir, here
        )
        if fs_group is not None:
            apply_fs_group(
                prepared[volume["name"]].path, fs_group, prepared[volume["name"]].read_only
            )
    return prepared


def refresh_key_volumes(
    spec: dict, volumes_dir: Path, store: ConfigStore, pod: PodIdentity, where: str
) -> list[str]:
    """Rewrite the pod's configMap/secret/projected/downwardAPI volumes from the store now.

    What the kubelet's periodic volume sync does, so a changed Secret reaches running pods
    (through the volume, not through subPath mounts or environment variables). Returns what
    changed; a volume whose source cannot be read keeps its last content, as on a kubelet.
    """
    fs_group = spec.get("securityContext", {}).get("fsGroup")
    changed = []
    for index, volume in enumerate(spec.get("volumes") or []):
        path = volumes_dir / volume["name"]
        if not is_key_volume(volume) or not path.is_dir():
            continue
        here = f"{where}.volumes[{index}] ({volume['name']})"
        try:
            payload = key_volume_files(store, spec, pod, volume, here)
        except ContainerConfigError:
            continue
        if atomic_write(path, payload, fs_group):
            changed.append(volume["name"])
    return changed


def container_mounts(container: dict, volumes: dict[str, PodVolume], where: str) -> list[Mount]:
    """Turn a container's volumeMounts into bind mounts (subPath, readOnly)."""
    mounts = []
    for index, volume_mount in enumerate(container.get("volumeMounts", [])):
        here = f"{where}.volumeMounts[{index}]"
        volume = volumes.get(volume_mount["name"])
        if volume is None:
            msg = f"{here}: no volume named {volume_mount['name']!r}"
            raise UnsupportedManifest(msg)
        source = volume.path
        if volume_mount.get("subPath"):
            source = source / safe_relative(volume_mount["subPath"], f"{here}.subPath")
            if not source.exists() and volume.creates_sub_paths:
                source.mkdir(parents=True, mode=0o755)
            if not source.exists():
                msg = f"{here}: subPath {volume_mount['subPath']!r} missing"
                raise ContainerConfigError(msg)
        read_only = volume.read_only or volume_mount.get("readOnly", False)
        mounts.append(Mount(str(source), volume_mount["mountPath"], read_only))
    return mounts
