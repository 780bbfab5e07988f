"""Several nodes on one real control plane: spreading, cordons and drains are the real ones.

    with ControlPlane(tmp / "cp") as cp, MultiNodeCluster(cp, images, tmp / "nodes") as nodes:
        nodes.create_storage_class("standard")
        cp.kubectl("apply", "-f", manifests)
        nodes.node_of("redis-0", "ns")                  # "node-b": where the scheduler put it
        nodes.drain("node-b", timeout=60)               # kubectl drain: evictions, PDBs
        nodes.uncordon("node-b")
        nodes.run_in_netns(["redis-cli", "-h", "redis-1.redis.ns.svc", "ping"])

Each node is a tests/realengine/node_agent.NodeAgent: its own Node, Lease, pod loop and log
endpoint, running the pods the real scheduler binds to it. They share one pod network
(pod_network.py: a bridge, an address range per node, names from the EndpointSlices) and one
provisioner whose volumes any node mounts (storage.SHARED_PROVISIONER), as cloud block
volumes follow a pod to another node; a volume pinned to its node would keep an evicted pod
off the other nodes for a reason that is not the one a test looks at.

What a drain is here is exactly what it is on a cluster: `kubectl drain` (the pinned binary)
cordons the Node, asks the Eviction API for each pod (the API server refuses an eviction that
would break a PodDisruptionBudget, and kubectl retries until its --timeout), and waits for the
pods to be gone; the node agent sees a graceful deletion and runs preStop, SIGTERM and the
grace period. All nodes are processes of one machine: a drained node's pods really stop, but
the node itself keeps running (nothing here powers a node off).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import CompletedProcess
from types import TracebackType
from typing import Any

import pytest

from tests.podrunner import Backoff, LocalImage, Pod, wait_until
from tests.podrunner.runtime import ExecResult
from tests.realengine.controlplane import ControlPlane
from tests.realengine.node_agent import ApiClient, NodeAgent
from tests.realengine.pod_network import PodNetwork, node_pod_cidr
from tests.realengine.storage import SHARED_PROVISIONER, HostPathProvisioner, storage_class

NODE_NAMES = ("node-a", "node-b", "node-c")
STORAGE_SYNC_SECONDS = 0.5
BROKER = "celery-broker"
"""The broker StatefulSet of a stack with the default name prefix."""
BROKER_SELECTOR = f"app.kubernetes.io/instance={BROKER},app.kubernetes.io/name=redis"
CLIENT = Path(__file__).with_name("sentinel_client.py")


class MultiNodeCluster:
    """Node agents named `names` on one control plane, one pod network, shared storage.

    images, time_scale, backoff: as for NodeAgent (every node has the same image table).
    """

    def __init__(
        self,
        control_plane: ControlPlane,
        images: Mapping[str, LocalImage],
        root: Path,
        names: Sequence[str] = NODE_NAMES,
        *,
        time_scale: float = 1.0,
        backoff: Backoff | None = None,
    ) -> None:
        """Prepare; entering starts the network, the nodes and the storage provisioner."""
        self.control_plane = control_plane
        self.images = dict(images)
        self.root = Path(root)
        self.names = list(names)
        self.time_scale = time_scale
        self.backoff = backoff or Backoff(0.5, 5)
        self.api = ApiClient(control_plane.kubeconfig)
        self.network = PodNetwork(self.api, self.root / "network")
        self.storage = HostPathProvisioner(self.api, self.root / "volumes", None)
        self.nodes: dict[str, NodeAgent] = {}
        self.storage_errors: list[str] = []
        self.stopping = threading.Event()
        self.storage_thread = threading.Thread(
            target=self.storage_loop, name="shared-storage", daemon=True
        )

    def __enter__(self) -> MultiNodeCluster:
        """Open the network, start every node and the provisioner (undone on failure)."""
        try:
            self.network.open()
            for index, name in enumerate(self.names, start=1):
                agent = NodeAgent(
                    self.control_plane,
                    self.images,
                    self.root / name,
                    name=name,
                    time_scale=self.time_scale,
                    backoff=self.backoff,
                    network=self.network,
                    pod_cidr=node_pod_cidr(index),
                    provisions_storage=False,
                )
                self.nodes[name] = agent
                agent.start()
            self.storage_thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop everything (see close)."""
        self.close()

    def close(self) -> None:
        """Kill every node's pods, delete the Nodes' agents and the pod network."""
        self.stopping.set()
        if self.storage_thread.is_alive():
            self.storage_thread.join(timeout=10)
        for agent in self.nodes.values():
            agent.close()
        self.network.close()

    def storage_loop(self) -> None:
        """Provision, resize and reclaim the shared volumes (an external provisioner's loop)."""
        while not self.stopping.wait(STORAGE_SYNC_SECONDS):
            try:
                self.storage.sync()
            except Exception as error:  # one bad sync must not stop provisioning
                self.storage_errors.append(f"{time.strftime('%H:%M:%S')} storage: {error!r}")
                del self.storage_errors[:-50]

    # -- objects ---------------------------------------------------------------------------
    def create_storage_class(self, name: str = "standard", *, default: bool = True) -> None:
        """Create a StorageClass whose volumes any node mounts (the shared provisioner's)."""
        self.api.create(
            "/apis/storage.k8s.io/v1/storageclasses",
            storage_class(name, default=default, provisioner=SHARED_PROVISIONER),
        )

    def node_of(self, pod: str, namespace: str) -> str | None:
        """Return the node the scheduler bound a pod to (None while it is Pending unbound)."""
        found = self.api.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")
        return None if found is None else found["spec"].get("nodeName")

    def pods(self, namespace: str | None = None) -> list[Pod]:
        """Every pod any node runs (pod runner objects: exec, logs, describe)."""
        return [pod for agent in self.nodes.values() for pod in agent.pods(namespace)]

    def pod(self, name: str, namespace: str, timeout: float = 0.0) -> Pod:
        """Return the running (not terminating) pod of that name, on whichever node runs it."""

        def find() -> Pod | None:
            found = [
                p for p in self.pods(namespace) if p.name == name and not p.terminating.is_set()
            ]
            return found[-1] if found else None

        what = f"pod {namespace}/{name} running on a node"
        return wait_until(find, timeout, what, self.describe)  # type: ignore[return-value]

    def find_container(self, namespace: str, pod: str, container: str) -> object | None:
        """Return a container of a pod on any node (the newest of that name), for its logs."""
        for agent in self.nodes.values():
            found = agent.find_container(namespace, pod, container)
            if found is not None:
                return found
        return None

    def describe(self) -> str:
        """Every node's pods and agent errors, and the network's (assertion messages)."""
        parts = [f"== {name}\n{agent.describe()}" for name, agent in self.nodes.items()]
        errors = self.network.errors[-10:] + self.storage_errors[-10:]
        parts += [f"cluster error: {error}" for error in errors]
        return "\n".join(parts)

    @property
    def errors(self) -> list[str]:
        """Errors of every node's syncs, the DNS loop and the provisioner (empty when healthy)."""
        found = [error for agent in self.nodes.values() for error in agent.errors]
        return found + self.network.errors + self.storage_errors

    # -- what an operator does -------------------------------------------------------------
    def cordon(self, node: str) -> None:
        """`kubectl cordon`: the scheduler binds nothing new to the node."""
        self.control_plane.kubectl("cordon", node)

    def uncordon(self, node: str) -> None:
        """`kubectl uncordon`: the node takes new pods again."""
        self.control_plane.kubectl("uncordon", node)

    def drain(self, node: str, timeout: float, *flags: str) -> CompletedProcess[str]:
        """`kubectl drain` with a bounded --timeout; returns its result (the caller judges it).

        --ignore-daemonsets and --delete-emptydir-data as a platform team runs it (emptyDir
        data is scratch by definition); flags add e.g. --pod-selector.
        """
        return self.control_plane.kubectl(
            "drain", node, "--ignore-daemonsets", "--delete-emptydir-data",
            f"--timeout={timeout:g}s", *flags,
            check=False, timeout=timeout + 30,
        )  # fmt: skip

    # -- what a client in the cluster does -------------------------------------------------
    def run_in_netns(
        self,
        argv: list[str],
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        namespace: str | None = None,
    ) -> ExecResult:
        """Run a command as root in the pod network, names resolving as cluster DNS answers."""
        return self.network.run_in_netns(argv, timeout, env, namespace)

    def pod_port(self, pod: str, namespace: str, port: int) -> int:
        """Return a port on the test process's 127.0.0.1 forwarding to a pod's port.

        The pod's address is looked up for each connection: the forward follows a pod that is
        evicted and comes back (with a new address) on another node.
        """
        return self.network.forward(port, lambda: self.pod(pod, namespace).ip)


def ready(pod: dict) -> bool:
    """Return whether the pod's Ready condition is True."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def scheduled(pod: dict) -> dict:
    """Return the pod's PodScheduled condition ({} before the scheduler looked at it)."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "PodScheduled"), {})


@dataclass(kw_only=True)
class StackPods:
    """A deployed stack's namespace on the nodes: its pods, a client in the pod network, waits.

    `client_env` is the client Secret's data (plus SENTINEL_MASTER and, with TLS,
    BROKER_CA_FILE): what sentinel_client.py reads. `tls`: the broker serves TLS only.
    """

    nodes: MultiNodeCluster
    namespace: str
    tls: bool
    client_env: dict[str, str] = field(default_factory=dict)

    def pods(self, selector: str = "") -> dict[str, dict]:
        """Return the namespace's pods as the API server has them, by name."""
        query = {"labelSelector": selector} if selector else {}
        items = self.nodes.api.list(f"/api/v1/namespaces/{self.namespace}/pods", **query)
        return {p["metadata"]["name"]: p for p in items}

    def brokers(self) -> dict[str, dict]:
        """Return the broker StatefulSet's pods, by name."""
        return self.pods(BROKER_SELECTOR)

    def pool_pods(self, deployment: str) -> dict[str, dict]:
        """Return a worker Deployment's pods that are not terminating, by name."""
        return {
            name: pod
            for name, pod in self.pods().items()
            if name.startswith(f"{deployment}-") and not pod["metadata"].get("deletionTimestamp")
        }

    def host_of(self, pod: str) -> str:
        """Return a broker pod's per-pod name, as Redis and Sentinel announce it."""
        return f"{pod}.{BROKER}-headless.{self.namespace}.svc"

    def client(self, *args: str) -> Any:
        """Run sentinel_client.py in the pod network; return its JSON answer."""
        result = self.nodes.run_in_netns(
            [sys.executable, str(CLIENT), *args], timeout=60, env=self.client_env
        )
        assert result.returncode == 0, f"client {args[0]} failed: {result}\n{self.describe()}"
        return json.loads(result.stdout.strip().splitlines()[-1])

    def publish_tasks(
        self, count: int, prefix: str, seconds: float, record_file: str, queue: str = "celery"
    ) -> dict[str, str]:
        """Publish record_execution tasks; return label -> task id."""
        return self.client(
            "publish", "--count", str(count), "--prefix", prefix, "--seconds", str(seconds),
            "--record-file", record_file, "--queue", queue,
        )  # fmt: skip

    def status(self, task_ids: list[str], queue: str = "celery") -> dict[str, Any]:
        """Return the master, queue length, unacked task ids and results (see the client)."""
        return self.client("status", "--queue", queue, *task_ids)

    def master(self) -> str:
        """Return the pod the Sentinels name master, asked as a client asks."""
        return self.status([])["master"].split(".", 1)[0]

    def replication(self, pod: str) -> dict[str, str]:
        """Return INFO replication of a broker pod's Redis, asked inside the pod as probes do."""
        tls = '--tls --cacert "$REDIS_TLS_DIR/ca.crt" ' if self.tls else ""
        script = (
            'REDISCLI_AUTH="$(cat "$REDIS_USERS_DIR/probe-password")" '
            f'redis-cli --no-auth-warning --user probe -p "$REDIS_PORT" {tls}info replication'
        )
        reply = self.nodes.pod(pod, self.namespace).exec(["sh", "-c", script], container="redis")
        assert reply.returncode == 0, f"INFO replication on {pod}: {reply}"
        fields = (line.split(":", 1) for line in reply.stdout.splitlines() if ":" in line)
        return {key: value.strip() for key, value in fields}

    def records(self, names: list[str], record_file: str) -> dict[str, list[str]]:
        """Return the labels each named worker pod's record file holds, one per execution."""
        found = {}
        for name in names:
            reply = self.nodes.pod(name, self.namespace).exec(["cat", record_file])
            found[name] = [line.split()[0] for line in reply.stdout.splitlines() if line]
        return found

    def wait(
        self, what: str, predicate: Callable[[], Any], timeout: float, interval: float = 1.0
    ) -> Any:
        """Poll predicate until it returns something truthy; fail naming what, with the pods."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"{what} after {timeout:g} s:\n{self.describe()}")
            time.sleep(interval)

    def describe(self) -> str:
        """Return where every pod is, and every node's view of its pods."""
        lines = [
            f"{name}: {p['spec'].get('nodeName')} {p['status'].get('phase')}"
            for name, p in sorted(self.pods().items())
        ]
        return "\n".join(lines) + "\n" + self.nodes.describe()
