"""Run the broker check as a subprocess, the way people and the in-cluster Job run it.

    run = run_check("--url", url, "--json")            # python brokercheck.py ... (the Job's)
    run = run_check("--json", via_brokerctl=True)      # python -m brokerctl check ...
    run.report["checks"], run.returncode, run.seconds, run.output (stdout + stderr)

`BROKERCHECK` is the one-file bundle the check Job runs (brokerctl/brokercheck/bundle.py),
written once per test process into a temporary directory. The child's environment is this
process's minus every broker variable (so a developer's CELERY_BROKER_URL cannot leak into a
test), plus `env`.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokerctl.brokercheck.bundle import write_bundle
from tests.support.redis_server import CELERY_PASSWORD, PROBE_PASSWORD, RedisServer

REPO_ROOT = Path(__file__).resolve().parents[2]
_BUNDLE_DIR = Path(tempfile.mkdtemp(prefix="brokercheck-bundle-"))
atexit.register(shutil.rmtree, _BUNDLE_DIR, ignore_errors=True)
BROKERCHECK = write_bundle(_BUNDLE_DIR)
"""The check exactly as the Job receives it (the ConfigMap's brokercheck.py)."""
BROKER_ENV = ("BROKER_CHECK_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL")


@dataclass(frozen=True)
class CheckRun:
    """A finished check process: exit status, output, and how long it ran."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        """Stdout and stderr together, for "never printed" assertions."""
        return self.stdout + self.stderr

    @property
    def report(self) -> dict[str, Any]:
        """Return the --json report (stdout must be exactly one JSON document)."""
        return json.loads(self.stdout)

    def check(self, name: str) -> dict[str, Any]:
        """Return the report entry called `name`; KeyError lists the names present."""
        for entry in self.report["checks"]:
            if entry["name"] == name:
                return entry
        names = [entry["name"] for entry in self.report["checks"]]
        message = f"no check {name!r} in report: {names}"
        raise KeyError(message)

    def statuses(self) -> dict[str, str]:
        """Return each check's status by name."""
        return {entry["name"]: entry["status"] for entry in self.report["checks"]}


def run_check(
    *args: str,
    env: Mapping[str, str] | None = None,
    via_brokerctl: bool = False,
    timeout: float = 60.0,
    cwd: Path | None = None,
    script: Path = BROKERCHECK,
) -> CheckRun:
    """Run the check with `args` and return what it did; `timeout` guards the test only.

    `script` runs another copy of the bundle (the in-cluster Job runs it alone).
    """
    child_env = {key: value for key, value in os.environ.items() if key not in BROKER_ENV}
    child_env.update(env or {})
    if via_brokerctl:
        command = [sys.executable, "-m", "brokerctl", "check", *args]
        workdir = cwd or REPO_ROOT
    else:
        command = [sys.executable, str(script), *args]
        workdir = cwd or Path("/")
    started = time.monotonic()
    done = subprocess.run(
        command,
        env=child_env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CheckRun(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


@dataclass(frozen=True)
class CheckUrls:
    """The three URLs a check needs for one broker: probe (read-only), workers, results."""

    probe: str
    celery: str
    result_backend: str

    def args(self) -> list[str]:
        """Command-line options passing all three (tests only: real runs use the *-env forms)."""
        return [
            *("--url", self.probe),
            *("--worker-url", self.celery),
            *("--result-backend", self.result_backend),
        ]

    def env(self) -> dict[str, str]:
        """Return the environment defaults the in-cluster Job uses instead of argv."""
        return {
            "BROKER_CHECK_URL": self.probe,
            "CELERY_BROKER_URL": self.celery,
            "CELERY_RESULT_BACKEND": self.result_backend,
        }


def check_urls(server: RedisServer, broker_db: int = 0, result_db: int = 1) -> CheckUrls:
    """Return the URLs of a broker started with `broker_config()`: users probe and celery."""
    return CheckUrls(
        probe=server.url("probe", PROBE_PASSWORD, broker_db),
        celery=server.url("celery", CELERY_PASSWORD, broker_db),
        result_backend=server.url("celery", CELERY_PASSWORD, result_db),
    )
