"""Pod volumes as host directories, laid out, moded and owned the way the kubelet does it.

- configMap / secret / projected: one file per key (or per `items` entry), mode `defaultMode`
  (0644 unless set) or the item's `mode`, owned by root; always mounted read-only.
- emptyDir: an empty directory, mode 0777, removed with the pod.
- persistentVolumeClaim: a directory per claim that outlives pods (StatefulSet claims are
  `<template>-<sts>-<ordinal>`). A fresh claim is root:root 0755, like a new ext4 volume, so a
  non-root pod can write only when fsGroup makes it group-writable, as on a real cluster.
- fsGroup: every volume is chgrp'ed to it with group read (and write for writable volumes) and
  setgid directories: the kubelet's `SetVolumeOwnership`, which is why a 0400 secret is 0440.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .environment import ConfigStore
from .errors import ContainerConfigError, UnsupportedManifest

DEFAULT_MODE = 0o644
EMPTY_DIR_MODE = 0o777
FRESH_CLAIM_MODE = 0o755


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


def write_key_files(
    directory: Path, data: dict[str, bytes], source: dict, default_mode: int, where: str
) -> None:
    """Write ConfigMap/Secret keys as files, honouring `items` (key, path, mode)."""
    items = source.get("items") or [{"key": key, "path": key} for key in sorted(data)]
    for item in items:
        if item["key"] not in data:
            if source.get("optional", False):
                continue
            msg = f"{where}: key {item['key']!r} not found (items)"
            raise ContainerConfigError(msg)
        target = directory / safe_relative(item["path"], f"{where}.items")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[item["key"]])
        target.chmod(item.get("mode", default_mode))


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


def prepare_key_volume(
    directory: Path, volume: dict, store: ConfigStore, namespace: str, where: str
) -> None:
    """Materialize a configMap, secret or projected volume into directory."""
    directory.mkdir(mode=0o755)
    if "projected" in volume:
        projected = volume["projected"]
        default_mode = projected.get("defaultMode", DEFAULT_MODE)
        for index, entry in enumerate(projected.get("sources", [])):
            ((kind, source),) = entry.items()
            kind = "secret" if kind == "secret" else "configMap"
            here = f"{where}.projected.sources[{index}]"
            data = key_source_data(store, namespace, kind, source, here)
            if data is not None:
                write_key_files(directory, data, source, default_mode, here)
        return
    kind = "secret" if "secret" in volume else "configMap"
    source = volume[kind]
    data = key_source_data(store, namespace, kind, source, f"{where}.{kind}")
    if data is not None:
        write_key_files(directory, data, source, source.get("defaultMode", DEFAULT_MODE), where)


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


def prepare_volume(
    volume: dict,
    volumes_dir: Path,
    store: ConfigStore,
    namespace: str,
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
    prepare_key_volume(path, volume, store, namespace, where)
    return PodVolume(path, read_only=True, creates_sub_paths=False)


def prepare_pod_volumes(
    spec: dict,
    volumes_dir: Path,
    store: ConfigStore,
    namespace: str,
    claim_dir: Callable[[str], Path],
    where: str,
) -> dict[str, PodVolume]:
    """Create every volume of a pod spec; raise ContainerConfigError for missing sources."""
    volumes_dir.mkdir(parents=True, exist_ok=True)
    fs_group = spec.get("securityContext", {}).get("fsGroup")
    prepared: dict[str, PodVolume] = {}
    for index, volume in enumerate(spec.get("volumes", [])):
        here = f"{where}.volumes[{index}] ({volume['name']})"
        prepared[volume["name"]] = prepare_volume(
            volume, volumes_dir, store, namespace, claim_dir, here
        )
        if fs_group is not None:
            apply_fs_group(
                prepared[volume["name"]].path, fs_group, prepared[volume["name"]].read_only
            )
    return prepared


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
