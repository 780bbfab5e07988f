"""Run a real `celery worker` subprocess for a test, wait until it is ready, always stop it.

    env = worker_env(broker_url, result_backend_url)
    with running_worker(worker_argv("src.celery_app", queues=["celery"]), env=env) as worker:
        ...  # worker.hostname answers control commands, worker.log() has its output

`worker_argv` builds the usual command line; tests of rendered manifests pass their own argv
instead. The worker runs in its own process group (so prefork children die with it), from
`cwd` (the stand-in app's directory by default), logging to a file. It is ready when the log
says "ready."; it is stopped with SIGTERM (Celery's warm shutdown: running tasks finish) and,
after `stop_timeout`, SIGKILL to the whole group.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import celery

from scripts import celery_venvs

STANDIN_APP_DIR = Path(__file__).resolve().parents[1] / "standin_app"
"""Directory holding the stand-in user app (package `src`), the default worker `cwd`."""

READY_MARKER = "ready."

TESTED_CELERY_SERIES = ("5.5", "5.6", "5.7")
"""Celery series a pool's image may carry that the recovery tests run real workers on."""


class CeleryWorkerError(RuntimeError):
    """The worker exited or did not become ready in time; the message carries its log."""


def celery_executable() -> list[str]:
    """Return the command that runs Celery from this interpreter's virtualenv."""
    celery = Path(sys.executable).with_name("celery")
    return [str(celery)] if celery.exists() else [sys.executable, "-m", "celery"]


def celery_for_series(series: str) -> str:
    """Return a `celery` executable of that series: this virtualenv's, or a pinned one's.

    This virtualenv holds requirements.txt's Celery; older series come from the virtualenvs
    scripts/celery_venvs.py builds (bootstrap --test). A missing one is an error, never a skip.
    """
    own_series = ".".join(celery.__version__.split(".")[:2])
    if series == own_series:
        return celery_executable()[0]
    return celery_venvs.celery_bin(series)


def worker_argv(
    app: str = "src.celery_app",
    *,
    queues: Sequence[str] = ("celery",),
    concurrency: int = 1,
    hostname: str = "worker1@%h",
    pool: str = "prefork",
    extra: Sequence[str] = (),
    celery_bin: str | None = None,
) -> list[str]:
    """Return a `celery worker` command line; gossip and mingle are off to start fast.

    `celery_bin` runs another Celery (`celery_for_series`); this virtualenv's by default.
    """
    return [
        *([celery_bin] if celery_bin else celery_executable()),
        *("-A", app, "worker", "--loglevel", "INFO"),
        *("-Q", ",".join(queues), "-c", str(concurrency), "-n", hostname, "-P", pool),
        *("--without-gossip", "--without-mingle"),
        *extra,
    ]


def worker_env(
    broker_url: str, result_backend_url: str | None = None, **extra: str
) -> dict[str, str]:
    """Return the environment of a worker: this process's, plus the broker settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CELERY_")}
    env["CELERY_BROKER_URL"] = broker_url
    if result_backend_url:
        env["CELERY_RESULT_BACKEND"] = result_backend_url
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class CeleryWorker:
    """A running worker process, its node name and its log file."""

    process: subprocess.Popen[bytes]
    hostname: str
    log_path: Path

    def log(self) -> str:
        """Return everything the worker logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (warm shutdown), then SIGKILL the process group after `timeout`."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        _signal_group(self.process, signal.SIGKILL)  # orphaned pool children, if any
        return int(self.process.returncode)


@contextmanager
def running_worker(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path = STANDIN_APP_DIR,
    ready_timeout: float = 30.0,
    stop_timeout: float = 15.0,
    log_dir: Path | None = None,
) -> Iterator[CeleryWorker]:
    """Start a worker from `argv`, yield it once it logged "ready.", stop it on exit.

    The log lives in `log_dir` when given (kept, to read after the worker stopped), else in a
    temporary directory removed on exit.
    """
    own_log_dir = log_dir is None
    log_dir = Path(tempfile.mkdtemp(prefix="celery-worker-")) if log_dir is None else log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: prefork children stop with it
        )
    worker = CeleryWorker(process, _hostname_from(argv), log_path)
    try:
        _wait_until_ready(worker, ready_timeout)
        yield worker
    finally:
        worker.stop(stop_timeout)
        if own_log_dir:
            shutil.rmtree(log_dir, ignore_errors=True)


def _hostname_from(argv: Sequence[str]) -> str:
    """Return the node name given with -n/--hostname, `%h` expanded as Celery does."""
    arguments = list(argv)
    for flag in ("-n", "--hostname"):
        if flag in arguments[:-1]:
            name = arguments[arguments.index(flag) + 1]
            return name.replace("%h", os.uname().nodename)
    return f"celery@{os.uname().nodename}"


def _wait_until_ready(worker: CeleryWorker, timeout: float) -> None:
    """Wait for the worker's "ready." log line; fail with its log if it exits or is late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if READY_MARKER in worker.log():
            return
        if worker.process.poll() is not None:
            msg = f"celery worker exited with {worker.process.returncode}:\n{worker.log()}"
            raise CeleryWorkerError(msg)
        time.sleep(0.05)
    msg = f"celery worker not ready within {timeout} s:\n{worker.log()}"
    raise CeleryWorkerError(msg)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the worker's own process group (it leads it: start_new_session)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
