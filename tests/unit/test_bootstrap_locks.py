"""scripts/bootstrap.sh waits for another apt to finish, and `make lint` brings its own linter.

The script runs on a copy of the project folder with stand-ins for apt-get, dpkg, id and the
virtualenv on PATH, so nothing is installed: what is checked is how it calls them.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.unit.conftest import PROJECT_ROOT

LOCK_MESSAGE = (
    "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)\n"
    "E: Unable to lock directory /var/lib/apt/lists/"
)


def executable(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Return a project copy whose bootstrap finds every Debian package missing and a ready venv."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "scripts" / "bootstrap.sh", root / "scripts" / "bootstrap.sh")
    (root / "requirements.txt").write_text("")
    shutil.copy(PROJECT_ROOT / "requirements-test.txt", root / "requirements-test.txt")
    log = tmp_path / "calls.log"
    fake = tmp_path / "bin"
    executable(fake / "id", "echo 0\n")
    executable(fake / "dpkg", "exit 1\n")  # every package is missing
    # `apt-get update` fails on the lists lock as often as $LOCKED_UPDATES says, then works.
    executable(
        fake / "apt-get",
        f'echo "apt-get $*" >> {log}\n'
        'if [[ " $* " == *" update "* ]]; then\n'
        f'  n=$(grep -c " update" {log})\n'
        '  if [ "$n" -le "${LOCKED_UPDATES:-0}" ]; then\n'
        f"    printf '%s\\n' '{LOCK_MESSAGE}' >&2; exit 100\n"
        "  fi\n"
        '  [ -n "${UPDATE_FAILS:-}" ] && { echo "E: mirror unreachable" >&2; exit 100; }\n'
        "fi\n"
        "exit 0\n",
    )
    executable(root / ".venv" / "bin" / "python", "exit 0\n")
    executable(root / ".venv" / "bin" / "pip", f'echo "pip $*" >> {log}\n')
    return root


def bootstrap(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    fake = project.parent / "bin"
    return subprocess.run(
        ["bash", str(project / "scripts" / "bootstrap.sh"), *args],
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def calls(project: Path) -> list[str]:
    return (project.parent / "calls.log").read_text().splitlines()


def test_bootstrap_waits_while_another_apt_holds_the_lists_lock(project):
    result = bootstrap(project, LOCKED_UPDATES="2")
    assert result.returncode == 0, result.stderr
    updates = [c for c in calls(project) if " update" in c]
    assert len(updates) == 3, f"expected two retries on the lock, then success: {updates}"
    assert "waiting for another apt" in result.stderr


def test_bootstrap_asks_apt_to_wait_for_dpkgs_lock(project):
    result = bootstrap(project)
    assert result.returncode == 0, result.stderr
    (install,) = [c for c in calls(project) if c.startswith("apt-get") and " install " in c]
    assert "-o DPkg::Lock::Timeout=600" in install, install
    assert "python3-venv" in install


def test_bootstrap_gives_up_on_a_lock_held_past_its_bound(project):
    result = bootstrap(project, LOCKED_UPDATES="1000", APT_LOCK_TIMEOUT="2")
    assert result.returncode != 0
    assert "Could not get lock /var/lib/apt/lists/lock" in result.stderr, "apt's reason is shown"
    installs = [c for c in calls(project) if c.startswith("apt-get") and " install " in c]
    assert not installs, "installed without package lists"


def test_bootstrap_does_not_retry_other_apt_failures(project):
    result = bootstrap(project, UPDATE_FAILS="1")
    assert result.returncode != 0
    assert "mirror unreachable" in result.stderr
    assert len([c for c in calls(project) if " update" in c]) == 1


def test_bootstrap_lint_installs_the_pinned_ruff(project):
    pin = next(
        line
        for line in (PROJECT_ROOT / "requirements-test.txt").read_text().splitlines()
        if line.startswith("ruff==")
    )
    result = bootstrap(project, "--lint")
    assert result.returncode == 0, result.stderr
    assert any(c.startswith("pip install") and c.endswith(pin) for c in calls(project)), calls(
        project
    )


def test_make_lint_bootstraps_its_linter_before_running_it():
    # Under `make test` the parent make's variables would make this one print its directory.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "lint"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "scripts/bootstrap.sh --lint", lines
    assert any(".venv/bin/ruff check" in line for line in lines[1:]), lines
