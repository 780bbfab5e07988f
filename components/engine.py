"""The broker's server: Redis or Valkey, which version, and which data each version can load.

Valkey is the fork of Redis 7.2.4 kept by the Linux Foundation; it speaks the same protocol,
loads the same redis.conf directives and ACL files, and reports `redis_version:7.2.4` in INFO
for old clients (`server_name:valkey` and `valkey_version` say what it really is). The
broker renders the same configuration for both; the few lines that differ come from
`version_specific_lines`, decided by the engine and version settings, never by probing the
image (a digest-pinned image still says what it runs through `broker.engine_version`).

An upgrade is an image change: the StatefulSet rolls and the new server loads the volume's
RDB file (or the AOF, whose base file is an RDB with aof-use-rdb-preamble). RDB formats are
one-way, a server refuses a file written in a newer format than its own, so a change of
engine or version is judged against what the deployed broker wrote (`data_change_problem`).

RDB formats, from the servers' `src/rdb.h` and checked here by experiment (a dump written by
Redis 7.0 loads in Valkey 9.1.2; Valkey 9.1.2's dump, magic `VALKEY080`, is refused by Redis
7.0 with "Wrong signature trying to load DB from file"):

    writer                      RDB   magic    loaded by
    Redis 7.0                   10    REDIS    Redis 7.0+, every Valkey
    Redis 7.2, Valkey 7.2-8.1   11    REDIS    Redis 7.2+, every Valkey
    Redis 7.4-8.4               12    REDIS    Redis 7.4+ only (Valkey treats 12-79 as foreign)
    Redis 8.6                   13    REDIS    Redis 8.6+ only
    Valkey 9.0-9.1              80    VALKEY   Valkey 9.0+ only
    Valkey 9.2                  81    VALKEY   Valkey 9.2+ only

A version newer than the last row of its engine is assumed to write a format no other
version knows (the safe guess: only a same-engine upgrade is then allowed from it).
"""

from __future__ import annotations

from typing import Literal

from components.images import image_has_digest, image_repository_name, image_version

Engine = Literal["redis", "valkey"]
Version = tuple[int, ...]

ENGINE_NAMES: dict[str, str] = {"redis": "Redis", "valkey": "Valkey"}
DEFAULT_IMAGES: dict[str, str] = {
    "redis": "docker.io/library/redis:7.2.7",
    "valkey": "docker.io/valkey/valkey:9.1.2",
}
"""The image each engine runs unless `broker.image` is set: pinned releases, Debian-based."""
MIN_VERSIONS: dict[str, Version] = {"redis": (7, 0), "valkey": (7, 2)}
"""Oldest version that loads the rendered redis.conf (Valkey starts at 7.2, its first release)."""
SERVER_BINARIES: dict[str, str] = {"redis": "redis-server", "valkey": "valkey-server"}
"""The server executable the start script runs. Valkey images also ship `redis-server` and
`redis-cli` as links to their own (Valkey's `make install` makes them), which is why the
probes' and the reloader's `redis-cli` works in both images."""

VERSION_PATTERN = r"^[0-9]+\.[0-9]+(\.[0-9]+)?$"

RDB_FORMATS: dict[str, tuple[tuple[Version, int], ...]] = {
    "redis": (((7, 0), 10), ((7, 2), 11), ((7, 4), 12), ((8, 6), 13)),
    "valkey": (((7, 2), 11), ((9, 0), 80), ((9, 2), 81)),
}
"""For each engine: (first major.minor, RDB version it writes), oldest first (table above)."""
KNOWN_THROUGH: dict[str, Version] = {"redis": (8, 6), "valkey": (9, 2)}
"""Newest release line whose format is known; later ones are judged conservatively."""
SHARED_RDB_MAX = 11
"""RDB 11 (Redis 7.2) is the newest format both engines load."""
VALKEY_RDB_MIN = 80
"""Valkey 9 numbers its own formats from 80 and writes them with the magic `VALKEY`."""

HIDE_USER_DATA_SINCE = (8, 0)
"""Valkey 8.0 added hide-user-data-from-log (valkey-io/valkey#877); Redis 7.x refuses it."""


def parse_version(text: str) -> Version:
    """Return "9.1.2" as (9, 1, 2)."""
    return tuple(int(part) for part in text.split("."))


def version_text(version: Version) -> str:
    """Return (9, 1, 2) as "9.1.2"."""
    return ".".join(map(str, version))


def engine_of_image(image: str) -> str | None:
    """Return the engine an image's repository name says it is, or None (a neutral mirror name)."""
    name = image_repository_name(image)
    if "valkey" in name:
        return "valkey"
    if "redis" in name:
        return "redis"
    return None


def image_problems(
    engine: str, image: str, engine_version: str | None
) -> list[tuple[str, object, str]]:
    """Return what is wrong between `engine`, `image` and `engine_version`: (key, value, why).

    The version comes from `engine_version` or else the tag, and must say at least
    major.minor (the data format can change with the minor version). A digest decides what
    runs whatever the tag beside it says, so a digest-pinned image needs `engine_version`.
    """
    name = ENGINE_NAMES[engine]
    other = "valkey" if engine == "redis" else "redis"
    oldest = version_text(MIN_VERSIONS[engine])
    example = DEFAULT_IMAGES[engine]
    if engine_of_image(image) == other:
        return [
            (
                "image",
                image,
                f"is a {ENGINE_NAMES[other]} image but engine is {engine}; allowed: a {name} "
                f"image (e.g. {example}), or set engine: {other}",
            )
        ]
    tagged = image_version(image)
    if engine_version is None:
        if image_has_digest(image):
            return [
                (
                    "engine_version",
                    None,
                    f"is required: image {image!r} is pinned by digest, and the digest, not the "
                    "tag beside it, decides what runs; allowed: the version the image runs, "
                    f"as a quoted 'major.minor[.patch]' string, {name} {oldest} or later",
                )
            ]
        if tagged is None or len(tagged) < 2:
            what = "no version in its tag" if tagged is None else "only a major version in its tag"
            return [
                (
                    "image",
                    image,
                    f"has {what}, and the {name} version decides which redis.conf lines and data "
                    f"format apply; allowed: a tag starting with the {name} version, {oldest} or "
                    f"later (e.g. {example}), or set engine_version",
                )
            ]
        return _old_version_problem("image", image, engine, tagged)
    declared = parse_version(engine_version)
    if tagged is not None and declared[: len(tagged)] != tagged[: len(declared)]:
        return [
            (
                "engine_version",
                engine_version,
                f"differs from the version in the image tag ({version_text(tagged)}); allowed: "
                f"the version the image runs, {version_text(tagged)}",
            )
        ]
    return _old_version_problem("engine_version", engine_version, engine, declared)


def _old_version_problem(
    key: str, value: object, engine: str, version: Version
) -> list[tuple[str, object, str]]:
    oldest = MIN_VERSIONS[engine]
    if version[:2] >= oldest:
        return []
    name = ENGINE_NAMES[engine]
    return [
        (
            key,
            value,
            f"is {name} {version_text(version)}, older than the rendered redis.conf supports; "
            f"allowed: {name} {version_text(oldest)} or later",
        )
    ]


def _line_rdb(engine: str, version: Version) -> int:
    """RDB version of the newest known release line at or before `version`."""
    found = RDB_FORMATS[engine][0][1]
    for since, rdb in RDB_FORMATS[engine]:
        if version[:2] >= since:
            found = rdb
    return found


def written_rdb(engine: str, version: Version) -> int | None:
    """Return the RDB version `engine` `version` writes; None for a line newer than the table."""
    if version[:2] > KNOWN_THROUGH[engine]:
        return None
    return _line_rdb(engine, version)


def loads_rdb(engine: str, version: Version, rdb: int) -> bool:
    """Whether `engine` `version` loads an RDB file of version `rdb`.

    A line newer than the table loads at least what the newest known line loads.
    """
    own = _line_rdb(engine, version)
    if engine == "valkey":
        return rdb <= SHARED_RDB_MAX or VALKEY_RDB_MIN <= rdb <= own
    return rdb <= own


def describe_rdb(rdb: int) -> str:
    """Name an RDB format for a person: its number and magic."""
    magic = "VALKEY" if rdb >= VALKEY_RDB_MIN else "REDIS"
    return f"RDB {rdb} ({magic} magic)"


def data_change_problem(
    deployed_engine: str, deployed_version: Version, engine: str, version: Version
) -> str | None:
    """Return why `engine` `version` cannot load what the deployed server wrote, or None."""
    deployed = f"{ENGINE_NAMES[deployed_engine]} {version_text(deployed_version)}"
    wanted = f"{ENGINE_NAMES[engine]} {version_text(version)}"
    rdb = written_rdb(deployed_engine, deployed_version)
    if rdb is None:
        if engine == deployed_engine and version[:2] >= deployed_version[:2]:
            return None
        return (
            f"the deployed broker runs {deployed}, newer than the data formats this project "
            f"knows, so {wanted} may not load its data; allowed: {deployed_engine} "
            f"{version_text(deployed_version[:2])} or later"
        )
    if loads_rdb(engine, version, rdb):
        return None
    return (
        f"the deployed broker runs {deployed}, whose data files are {describe_rdb(rdb)}, "
        f"which {wanted} cannot load (data formats are one-way); allowed: "
        f"{' or '.join(_loaders(rdb))} (README: Engines and upgrades)"
    )


def _loaders(rdb: int) -> list[str]:
    """Name the oldest release line of each engine that loads `rdb` ("redis 7.4 or later")."""
    found = []
    for engine, lines in RDB_FORMATS.items():
        since = next((since for since, _ in lines if loads_rdb(engine, since, rdb)), None)
        if since is not None:
            found.append(f"{engine} {version_text(since)} or later")
    return found


def version_specific_lines(engine: str, version: Version) -> list[str]:
    """redis.conf lines that only some engines or versions accept, for this one.

    Empty for Redis, so every Redis stack renders as it did before engines were a setting.
    """
    if engine == "valkey" and version[:2] >= HIDE_USER_DATA_SINCE:
        return [
            "",
            "# Valkey 8.0+: keep task bodies and key names out of the server log (crash reports,",
            "# client listings); they can hold whole documents.",
            "hide-user-data-from-log yes",
        ]
    return []
