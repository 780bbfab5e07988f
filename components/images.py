"""Container image references as settings: pinned, well formed, and new enough for what we render.

An untagged or `:latest` image is a different program on every node pull: a rollback then
redeploys whatever `latest` means today, and two worker pods of one Deployment can run two
versions. So every image setting names a tag other than `latest`, or a digest (`@sha256:...`,
with or without a tag). The grammar is distribution/reference's `ReferenceRegexp`
(regexp.go), the one the kubelet's image pull resolves names with.

The broker image also carries the server's engine (Redis or Valkey) and version: the rendered
redis.conf uses directives that Redis 7.0 introduced (`appenddirname`; `enable-debug-command`,
`enable-module-command`, `enable-protected-configs`; ACL key permissions such as `%R~` in the
users file), and an older server refuses to start on it. The engine and version are read from
the image's repository name and tag (`components.engine` judges them against the settings).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

# distribution/reference regexp.go, translated term by term (ASCII only, as in Go).
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_NAME = rf"(?:{_HOST}(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?", re.ASCII
)
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
_NAME_MAX = 255  # reference.NameTotalLengthMax
_VERSION_TAG = re.compile(r"v?(?P<numbers>[0-9]+(?:\.[0-9]+){0,2})(?:[-_.+].*)?", re.ASCII)

PINNED = (
    "allowed: registry/name:tag with a tag other than latest, or "
    "registry/name[:tag]@sha256:<64 hex digits>"
)


def _parse(image: str) -> re.Match[str]:
    match = _REFERENCE.fullmatch(image)
    if match is None or len(match["name"]) > _NAME_MAX:
        msg = f"is not a container image reference; {PINNED}"
        raise ValueError(msg)
    return match


def _pinned_image(image: str) -> str:
    """Accept an image reference only when it names one build: a real tag, or a sha256 digest."""
    match = _parse(image)
    tag, digest = match["tag"], match["digest"]
    if digest is not None and not _SHA256.fullmatch(digest):
        msg = f"has a digest that is not sha256 with 64 lowercase hex digits; {PINNED}"
        raise ValueError(msg)
    if tag == "latest":
        msg = f"uses the moving tag latest, so every pull may run another build; {PINNED}"
        raise ValueError(msg)
    if tag is None and digest is None:
        msg = f"has no tag, which means latest; {PINNED}"
        raise ValueError(msg)
    return image


def image_version(image: str) -> tuple[int, ...] | None:
    """Return the version a tag starts with ("7.2.7-alpine" -> (7, 2, 7)); None without one."""
    tag = _parse(image)["tag"]
    match = _VERSION_TAG.fullmatch(tag) if tag else None
    if match is None:
        return None
    return tuple(int(number) for number in match["numbers"].split("."))


ImageReference = Annotated[str, AfterValidator(_pinned_image)]
"""A container image pinned to one build: `name:tag` (not latest) or `name[:tag]@sha256:...`."""


def image_has_digest(image: str) -> bool:
    """Whether the reference pins a digest: then the digest decides what runs, not the tag."""
    return _parse(image)["digest"] is not None


def image_repository_name(image: str) -> str:
    """Return the last path component of the repository ("docker.io/valkey/valkey:9" -> valkey)."""
    return _parse(image)["name"].rsplit("/", 1)[-1]
