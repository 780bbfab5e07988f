"""One deployed stack under the real engine: a project copy, a local backend, the pinned CLI.

Each stack runs from a copy of the project (what a user's checkout holds) so that what the CLI
writes into tracked files (`pulumi stack init` adds `encryptionsalt` to the stack file) can be
observed there without touching this repository. State lives in a file backend in the test's
temporary folder; secrets are encrypted with a passphrase; no plugin is downloaded: the
kubernetes provider is the pinned one built here, installed from its file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.realengine.toolchain import PROJECT_ROOT, bin_dir, binary, pinned

OPERATION_TIMEOUT = 600.0
"""Seconds one engine operation may take before the test fails (the provider's awaits included)."""

PASSPHRASE = "real-engine-tests"
COPIED = ("Pulumi.yaml", "__main__.py", "components", "brokerctl", "config")


def copy_project(destination: Path) -> Path:
    """Copy what `pulumi up` reads (program, components, check script, stack files)."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = PROJECT_ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    return destination


class RealStack:
    """A stack of the project copy in `work_dir`, deployed to the cluster of `kubeconfig`."""

    def __init__(self, work_dir: Path, stack: str, state_dir: Path, kubeconfig: Path) -> None:
        self.work_dir = work_dir
        self.stack = stack
        self.state_dir = state_dir
        self.kubeconfig = kubeconfig
        (state_dir / "backend").mkdir(parents=True, exist_ok=True)
        (state_dir / "home").mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        """Return a fully local Pulumi environment: file backend, no update check or download."""
        venv_bin = Path(sys.executable).parent
        return {
            **os.environ,
            "PATH": os.pathsep.join([str(bin_dir()), str(venv_bin), os.environ.get("PATH", "")]),
            "PULUMI_HOME": str(self.state_dir / "home"),
            "PULUMI_BACKEND_URL": (self.state_dir / "backend").as_uri(),
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_IGNORE_AMBIENT_PLUGINS": "true",
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": str(PROJECT_ROOT),
        }

    def pulumi(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned CLI in the project copy, as a user would."""
        result = subprocess.run(
            [str(binary("pulumi")), *args, "--non-interactive"],
            cwd=self.work_dir, env=self.env(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            msg = f"pulumi {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            raise AssertionError(msg)
        return result

    def install_provider(self) -> None:
        """Register the pinned kubernetes provider binary (no download) in this PULUMI_HOME."""
        version = pinned("PROVIDER_VERSION")
        self.pulumi(
            "plugin", "install", "resource", "kubernetes", version,
            "--file", str(binary("pulumi-resource-kubernetes")),
        )  # fmt: skip

    def init(self) -> None:
        """`pulumi stack init` on the file backend, with the passphrase secrets provider."""
        self.pulumi("login", self.env()["PULUMI_BACKEND_URL"])
        self.install_provider()
        self.pulumi("stack", "init", self.stack, "--secrets-provider", "passphrase")

    def run(self, operation: str, *flags: str) -> subprocess.CompletedProcess[str]:
        """One engine operation through the driver (see tests/realengine/driver.py)."""
        return subprocess.run(
            [sys.executable, "-m", "tests.realengine.driver", "--work-dir", str(self.work_dir),
             "--stack", self.stack, operation, *flags],
            cwd=PROJECT_ROOT, env=self.env(), capture_output=True, text=True,
            timeout=OPERATION_TIMEOUT, check=False,
        )  # fmt: skip

    def outputs(self) -> dict[str, Any]:
        """Return stack outputs with their secret flags: {name: {"value": ..., "secret": bool}}."""
        result = self.run("outputs")
        if result.returncode != 0:
            msg = f"reading outputs failed:\n{result.stderr}"
            raise AssertionError(msg)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def state(self) -> dict[str, Any]:
        """Return the stack's checkpoint as the engine stored it (`pulumi stack export`)."""
        return json.loads(self.pulumi("stack", "export").stdout)
