"""The check ships to its Job as one file: the package's modules, bundled.

The bundle must hold every module, depend on nothing but the libraries of the workers' image,
come out byte for byte the same from every build (the Job's name hashes it), and refuse to
build when joining the modules would change what they mean.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brokerctl import brokercheck, mockrun
from brokerctl.brokercheck import bundle
from tests.unit.conftest import PROJECT_ROOT

NOT_BUNDLED = {"__init__", "__main__", "bundle"}
"""The package's own plumbing: re-exports, `python -m`, and the bundler itself."""
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
JOB = "kubernetes:batch/v1:Job"


def copy_of_package(tmp_path: Path) -> Path:
    """Return a scratch copy of the package's modules, to break on purpose."""
    copy = tmp_path / "brokercheck"
    shutil.copytree(bundle.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_every_module_of_the_package_is_bundled() -> None:
    modules = {path.stem for path in bundle.PACKAGE_DIR.glob("*.py")} - NOT_BUNDLED

    assert modules == set(bundle.MODULES), (
        f"modules missing from bundle.MODULES: {sorted(modules - set(bundle.MODULES))}; "
        f"listed but absent: {sorted(set(bundle.MODULES) - modules)}"
    )


def test_bundle_imports_nothing_from_this_repository() -> None:
    tree = ast.parse(bundle.bundle())

    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {name for name in imported if name and name.startswith("brokerctl")}, imported


def test_bundle_is_byte_identical_across_processes() -> None:
    """Hash seeds differ between processes: a set iterated while bundling would show here."""
    code = "import sys; from brokerctl.brokercheck.bundle import bundle; sys.stdout.write(bundle())"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for seed in ("1", "2")
    }

    assert outputs == {bundle.bundle()}, "two builds of the bundle differ"


def test_bundle_runs_alone_and_its_help_is_the_packages(tmp_path: Path) -> None:
    script = bundle.write_bundle(tmp_path)

    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=tmp_path,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert brokercheck.HELP.splitlines()[0] in done.stdout, done.stdout
    assert "--sentinel-master" in done.stdout, done.stdout


def test_a_name_two_modules_define_stops_the_bundle(tmp_path: Path) -> None:
    copy = copy_of_package(tmp_path)
    sentinel = copy / "sentinel.py"
    sentinel.write_text(sentinel.read_text() + "\n\ndef redis_client():\n    return None\n")

    with pytest.raises(bundle.BundleError, match=r"redis_client.*broker\.py and sentinel\.py"):
        bundle.bundle(copy)


def test_an_import_of_a_later_module_stops_the_bundle(tmp_path: Path) -> None:
    copy = copy_of_package(tmp_path)
    masking = copy / "masking.py"
    masking.write_text(
        masking.read_text().replace(
            "import logging\n", "import logging\n\nfrom brokerctl.brokercheck.cli import main\n", 1
        )
    )

    with pytest.raises(
        bundle.BundleError, match=r"masking\.py imports brokerctl\.brokercheck\.cli"
    ):
        bundle.bundle(copy)


def test_the_check_job_runs_the_bundle_from_its_config_map() -> None:
    config, secret_keys = mockrun.read_stack_config("dev")
    run = mockrun.run_program("dev", config, secret_keys)

    (config_map,) = [
        r for r in run.resources if r.type == CONFIG_MAP and bundle.SCRIPT_NAME in r.inputs["data"]
    ]
    (job,) = [r for r in run.resources if r.type == JOB]
    assert config_map.inputs["data"][bundle.SCRIPT_NAME] == bundle.bundle()
    (container,) = job.inputs["spec"]["template"]["spec"]["containers"]
    assert container["command"][-1].endswith(f"/{bundle.SCRIPT_NAME}"), container["command"]
