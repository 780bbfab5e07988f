"""A stack deployed under the real engine onto a node that runs its pods: shared test helpers.

with NodeAgent(...) as node:
deployed = deploy_target(root, "dev", control_plane, node, namespace, stack_file)
deployed.up()
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import yaml

from tests.e2e.images import copy_standin_app, ensure_standin_venv, image_table
from tests.podrunner import LocalImage
from tests.realengine.conftest import CONTEXT, new_stack
from tests.realengine.controlplane import ControlPlane
from tests.realengine.engine import RealStack
from tests.realengine.multinode import MultiNodeCluster
from tests.realengine.node_agent import NodeAgent
from tests.realengine.toolchain import PROJECT_ROOT


def stand_in_images(root: Path) -> dict[str, LocalImage]:
    """Return the image table of the stand-in app (as the end-to-end tests use it)."""
    ensure_standin_venv()
    app_dir = root / "app"
    app_dir.mkdir(mode=0o755)
    return image_table(copy_standin_app(app_dir))


def shipped_stack_file(stack: str, namespace: str, **extra: Any) -> str:
    """Return a shipped stack file aimed at this cluster's context and a namespace of its own."""
    data = yaml.safe_load((PROJECT_ROOT / "config" / f"Pulumi.{stack}.yaml").read_text())
    data["config"]["celery-redis:namespace"] = namespace
    data["config"]["celery-redis:kube_context"] = CONTEXT
    data["config"].update(extra)
    return yaml.safe_dump(data, sort_keys=False)


class Deployed:
    """A deployed stack, its node, and the helpers the steps of a lifecycle test share."""

    def __init__(
        self,
        stack: RealStack,
        cluster: ControlPlane,
        node: NodeAgent | MultiNodeCluster,
        namespace: str,
    ) -> None:
        self.stack = stack
        self.cluster = cluster
        self.node = node
        self.namespace = namespace
        self.stack_file = stack.work_dir / "config" / f"Pulumi.{stack.stack}.yaml"

    def tear_down(self, timeout: float = 180.0) -> None:
        """Destroy the stack and wait until its pods are gone.

        Every stack of a test session shares the one node, whose pods share one network
        namespace: a broker left running would hold port 6379 for the next stack's broker.
        """
        self.stack.run("destroy")
        deadline = time.monotonic() + timeout
        # Finished pods (one-off `check --in-cluster` Jobs, kept for their TTL) hold nothing.
        while [
            pod
            for pod in self.get("pods")["items"]
            if pod["status"].get("phase") not in ("Succeeded", "Failed")
        ]:
            if time.monotonic() > deadline:
                msg = f"pods of {self.namespace} still there after destroy:\n{self.node.describe()}"
                raise AssertionError(msg)
            time.sleep(1)

    def settings(self) -> dict[str, Any]:
        return yaml.safe_load(self.stack_file.read_text())

    def change(self, key: str, update: dict[str, Any]) -> None:
        """Change one top-level setting of the stack file (deep-merging `update`)."""
        data = self.settings()
        value = data["config"].setdefault(f"celery-redis:{key}", {})
        _merge(value, update)
        self.stack_file.write_text(yaml.safe_dump(data, sort_keys=False))

    def up(self, *flags: str) -> str:
        result = self.stack.run("up", *flags)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"pulumi up failed:\n{output}\n{self.node.describe()}"
        return output

    def get(self, *what: str) -> dict[str, Any]:
        result = self.cluster.kubectl("-n", self.namespace, "get", *what, "-o", "json")
        return json.loads(result.stdout)

    def pod_uids(self) -> dict[str, str]:
        return {p["metadata"]["name"]: p["metadata"]["uid"] for p in self.get("pods")["items"]}

    def jobs(self) -> dict[str, dict[str, Any]]:
        """Return the gate's Jobs (not the one-off runs of `check --in-cluster`)."""
        items = self.get("jobs")["items"]
        return {j["metadata"]["name"]: j for j in items if "-manual-" not in j["metadata"]["name"]}

    def check_in_cluster(self, *flags: str) -> subprocess.CompletedProcess[str]:
        """Run `brokerctl check --stack S --in-cluster` as a person would, from the project."""
        return subprocess.run(
            [sys.executable, "-m", "brokerctl", "check", "--stack", self.stack.stack,
             "--in-cluster", *flags],
            cwd=self.stack.work_dir, env=self.stack.env(), capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip

    def broker_client(self, ca_file: Path | None = None, db: int = 0) -> redis.Redis:
        """Return a celery-user client of a standalone broker on the single node (a port forward).

        With `ca_file`, over TLS to `localhost` (a name the broker's certificate carries),
        verifying the broker against that CA as client pods do.
        """
        url = self.stack.outputs()["broker_url"]["value"]
        password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        port = self.node.host_port(6379)
        tls: dict[str, Any] = {}
        if ca_file is not None:
            tls = {"ssl": True, "ssl_cert_reqs": "required", "ssl_ca_certs": str(ca_file)}
        return redis.Redis(
            host="127.0.0.1" if ca_file is None else "localhost", port=port, db=db,
            username="celery", password=password, socket_timeout=10, socket_connect_timeout=10,
            **tls,
        )  # fmt: skip


def _merge(target: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


@contextmanager
def deployed_stack(
    root: Path, stack: str, namespace: str, cluster: ControlPlane, node: NodeAgent
) -> Iterator[Deployed]:
    """Yield a shipped stack, initialised in a project copy under `root`; destroy it after.

    The first step of a lifecycle test runs `up`; the teardown frees the shared node for the
    next module's stack (see Deployed.tear_down).
    """
    real = new_stack(root, stack, cluster, shipped_stack_file(stack, namespace))
    deployed = Deployed(real, cluster, node, namespace)
    yield deployed
    deployed.tear_down()
