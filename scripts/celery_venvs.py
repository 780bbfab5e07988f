"""Build the pinned Celery virtualenvs the recovery tests run real workers on, outside the repo.

A pool's image may carry any Celery from 5.5 to 5.7, and broker recovery differs between them
(kombu 5.5 and 5.6 stop polling when a consuming connection drops; 5.7 checks BRPOP itself).
The project's own virtualenv holds 5.7; each `tests/support/celery-<series>.txt` pins every
package of one older series. Each pin file becomes one virtualenv under the cache root
($CELERY_REDIS_VENVS, default /var/cache/celery-redis-venvs), keyed by the Celery version and
the file's hash, so editing a pin builds a new one and a warm run does nothing:

    .venv/bin/python scripts/celery_venvs.py            # build what is missing (bootstrap --test)
    .venv/bin/python scripts/celery_venvs.py --print    # series and celery executable, per line

A build runs under a lock and marks its folder complete last, so two sessions bootstrapping at
once do not build twice and an interrupted build is redone, never used.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIN_DIR = REPO / "tests" / "support"
PIN_PREFIX = "celery-"
DEFAULT_CACHE_ROOT = Path("/var/cache/celery-redis-venvs")
COMPLETE = ".complete"
"""Written last into a virtualenv whose pip install succeeded: a half-built one lacks it."""
PIP_TIMEOUT_SECONDS = 900
"""Bound on one virtualenv's `pip install` (a registry that stops answering must not hang)."""


class CeleryVenvError(RuntimeError):
    """A pinned Celery virtualenv is missing or could not be built; the message says what to run."""


def cache_root() -> Path:
    """Return where the virtualenvs live ($CELERY_REDIS_VENVS or the default)."""
    return Path(os.environ.get("CELERY_REDIS_VENVS", DEFAULT_CACHE_ROOT))


def pin_files() -> dict[str, Path]:
    """Return the pin file of every Celery series tested besides the project's, by series."""
    return {
        path.stem.removeprefix(PIN_PREFIX): path
        for path in sorted(PIN_DIR.glob(f"{PIN_PREFIX}*.txt"))
    }


def pinned_celery(pin_file: Path) -> str:
    """Return the Celery version a pin file installs."""
    for line in pin_file.read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == "celery":
            return version.strip()
    msg = f"{pin_file}: no `celery==VERSION` line"
    raise CeleryVenvError(msg)


def venv_dir(pin_file: Path) -> Path:
    """Return the virtualenv folder of a pin file: Celery version plus the file's hash."""
    digest = hashlib.sha256(pin_file.read_bytes()).hexdigest()[:12]
    return cache_root() / f"celery-{pinned_celery(pin_file)}-{digest}"


def celery_bin(series: str) -> str:
    """Return the `celery` executable of a series' virtualenv; fail naming the command to run."""
    files = pin_files()
    if series not in files:
        msg = f"no pin file {PIN_PREFIX}{series}.txt in {PIN_DIR}; have {sorted(files)}"
        raise CeleryVenvError(msg)
    venv = venv_dir(files[series])
    if not (venv / COMPLETE).exists():
        msg = (
            f"Celery {series} virtualenv missing ({venv}): "
            "run scripts/bootstrap.sh --test (or .venv/bin/python scripts/celery_venvs.py)"
        )
        raise CeleryVenvError(msg)
    return str(venv / "bin" / "celery")


def ensure(pin_file: Path) -> tuple[Path, bool]:
    """Build the virtualenv of `pin_file` unless it is complete; return it and whether built."""
    venv = venv_dir(pin_file)
    if (venv / COMPLETE).exists():
        return venv, False
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another bootstrap may be building the same one
        if (venv / COMPLETE).exists():
            return venv, False
        shutil.rmtree(venv, ignore_errors=True)  # what an interrupted build left
        # Debian's interpreter (the project venv's base): non-root pod users can read it.
        base_python = Path(sys.base_prefix) / "bin" / "python3"
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-input"]
        try:
            subprocess.run([str(base_python), "-m", "venv", str(venv)], check=True, timeout=120)
            subprocess.run(
                [*pip, "--disable-pip-version-check", "--timeout", "60", "-r", str(pin_file)],
                check=True,
                timeout=PIP_TIMEOUT_SECONDS,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            shutil.rmtree(venv, ignore_errors=True)
            msg = f"could not build the virtualenv of {pin_file.name}: {error}"
            raise CeleryVenvError(msg) from error
        (venv / COMPLETE).write_text(pin_file.read_text())  # last: marks the build complete
    return venv, True


def main(argv: list[str] | None = None) -> int:
    """Build the missing virtualenvs (or print where they are); exit 1 when a build failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print series and executable")
    args = parser.parse_args(argv)
    try:
        for series, pin_file in pin_files().items():
            if args.print:
                print(f"{series} {celery_bin(series)}")
                continue
            started = time.monotonic()
            venv, built = ensure(pin_file)
            if built:
                took = time.monotonic() - started
                print(f"celery_venvs: built {venv} in {took:.0f} s", file=sys.stderr)
    except CeleryVenvError as error:
        print(f"celery_venvs: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
