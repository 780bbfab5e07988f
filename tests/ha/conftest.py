"""Fixtures of the `ha` tests: a rendered Sentinel stack as local pods, one address per pod.

These tests need root (network, mount and PID namespaces), redis-server, iproute2 and the
pinned Celery 5.5 and 5.6 virtualenvs (`scripts/bootstrap.sh --test` builds them). They FAIL
when one is missing: a machine that cannot run them must not report the broker's failover as
proven.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ha.sentinel_stack import render, scratch_dir, standin_images
from tests.podrunner import LocalImage

HOST_TOOLS = ("redis-server", "redis-cli", "ip", "bridge", "sh", "sha256sum", "timeout")
CELERY_SERIES = ("5.5", "5.6", "5.7")


@pytest.fixture(scope="session")
def ha_host() -> None:
    """Fail (never skip) when this machine cannot run the stacks: root and the host tools."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the ha tests need root (network, mount and PID namespaces)")
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing:
        problems.append(f"missing host tools {missing}: install redis-server and iproute2")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def ha_work_dir(ha_host: None) -> Iterator[Path]:
    """Yield a world-readable scratch folder for renders and the stand-in app."""
    with scratch_dir() as path:
        yield path


@pytest.fixture(scope="session")
def ha_images(ha_work_dir: Path) -> dict[str, LocalImage]:
    """Return the image table, with a worker image for each tested Celery series."""
    return standin_images(ha_work_dir, CELERY_SERIES)


@pytest.fixture(scope="session")
def render_ha(ha_work_dir: Path) -> Callable[[str, str], Path]:
    """Render a stack file once per name: `render_ha("ha-fast", stack_file(...))`."""
    cache: dict[str, Path] = {}

    def render_once(name: str, text: str) -> Path:
        if name not in cache:
            cache[name] = render(text, ha_work_dir, name)
        return cache[name]

    return render_once
