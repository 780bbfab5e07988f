"""The image table: how a container image runs here, as host executables standing in for it.

Tests pass one mapping of image name to LocalImage. Keys are image names without tag or digest
(`redis`, `ghcr.io/acme/pdf-worker`); a key ending in `*` matches every image name starting with
the rest (`ghcr.io/acme/*`). An exact key wins over a prefix, a longer prefix over a shorter one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ManifestError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class LocalImage:
    """What the pod runner needs to know about an image: its ENTRYPOINT/CMD/ENV/USER and files.

    entrypoint: the image's ENTRYPOINT; None means unknown, so a container without `command`
        fails loudly instead of guessing. Use () for an image that has no ENTRYPOINT.
    cmd: the image's CMD (default arguments); None means unknown.
    binds: container path -> host path, bound read-only into the pod's root (e.g. a host venv
        at /opt/venv). The host path must be readable by the pod's uid (not under /root).
    env: the image's ENV (PATH, PYTHONPATH, ...); container `env` overrides it.
    user / group: the image's USER, used when the pod sets no runAsUser / runAsGroup.
    working_dir: the image's WORKDIR, used when the container sets no workingDir.
    """

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    binds: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    user: int = 0
    group: int | None = None
    working_dir: str = "/"

    def environment(self) -> dict[str, str]:
        """Return the image's environment with a default PATH, as images built FROM debian have."""
        return {"PATH": DEFAULT_PATH, **self.env}


def image_name(reference: str) -> str:
    """Strip the tag and digest from an image reference (`redis:7.2@sha256:..` -> `redis`)."""
    name = reference.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > last_slash else name


def find_image(images: Mapping[str, LocalImage], reference: str, where: str) -> LocalImage:
    """Look an image reference up in the table; ManifestError listing the keys when unknown."""
    name = image_name(reference)
    if name in images:
        return images[name]
    prefixes = [key for key in images if key.endswith("*") and name.startswith(key[:-1])]
    if prefixes:
        return images[max(prefixes, key=len)]
    known = ", ".join(sorted(images)) or "(empty table)"
    msg = f"{where}: image {reference!r} is not in the image table (keys: {known})"
    raise ManifestError(msg)


def container_argv(
    image: LocalImage, command: list[str] | None, args: list[str] | None, where: str
) -> list[str]:
    """Combine command/args with the image's ENTRYPOINT/CMD the way Kubernetes documents it."""
    if command:
        return [*command, *(args or [])]
    if image.entrypoint is None:
        msg = (
            f"{where}: no `command` and the image table does not know the image's entrypoint; "
            "set LocalImage(entrypoint=...) (or entrypoint=() for an image without one)"
        )
        raise ManifestError(msg)
    if args is not None:
        argv = [*image.entrypoint, *args]
    elif image.cmd is None:
        msg = f"{where}: no `command`/`args` and the image table has no cmd"
        raise ManifestError(msg)
    else:
        argv = [*image.entrypoint, *image.cmd]
    if not argv:
        msg = f"{where}: the container has nothing to run"
        raise ManifestError(msg)
    return argv
