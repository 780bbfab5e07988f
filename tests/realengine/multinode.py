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

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from subprocess import CompletedProcess
from types import TracebackType

from tests.podrunner import Backoff, LocalImage, Pod, wait_until
from tests.podrunner.runtime import ExecResult
from tests.realengine.controlplane import ControlPlane
from tests.realengine.node_agent import ApiClient, NodeAgent
from tests.realengine.pod_network import PodNetwork, node_pod_cidr
from tests.realengine.storage import SHARED_PROVISIONER, HostPathProvisioner, storage_class

NODE_NAMES = ("node-a", "node-b", "node-c")
STORAGE_SYNC_SECONDS = 0.5


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
