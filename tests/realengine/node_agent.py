"""A node of the real control plane whose pods really run: the pod runner as a kubelet.

The real kubelet needs a container runtime, CNI and images that cannot be had here, so this
agent plays the kubelet's part with tests/podrunner's pod machinery (namespaces, volumes, env,
probes, restarts, grace periods): it registers a Node, keeps its Lease and status fresh so the
node lifecycle controller never marks it NotReady, runs every pod the scheduler binds to it,
and reports the pods' status the way the kubelet does. Controllers (Deployments, ReplicaSets,
StatefulSets, Jobs) are the real controller manager's; nothing here marks a pod ready that did
not pass its real probes.

    with ControlPlane(tmp) as cluster, NodeAgent(cluster, images, tmp / "node") as node:
        node.create_storage_class("standard")
        cluster.kubectl("apply", "-f", manifests)
        node.pod("broker-0", "celery").exec(["redis-cli", "ping"])

Networking, one node (the default): every pod lives in one network namespace the agent creates
(as in the pod runner): Service names resolve to 127.0.0.1 through each pod's /etc/hosts
(rewritten as Services come and go), and each pod gets its own pod IP from 10.244.0.0/16, which
is local to that namespace (assigned to its loopback), so Endpoints and EndpointSlices get real,
reachable addresses. The agent itself runs in the root namespace and talks to the API server on
loopback. Pods reach the API server as in a cluster: the `kubernetes` Service's ClusterIP is on
the pod network's loopback, where the agent forwards port 443 to the API server, and every
container gets KUBERNETES_SERVICE_HOST/PORT (the API server's certificate names that IP).

Networking, several nodes (`network=PodNetwork`, see pod_network.py and multinode.py): each pod
gets its own network namespace and an address from the node's pod CIDR on a bridge every node
shares, and names resolve as cluster DNS answers them from the real EndpointSlices, so pods on
different nodes listen on the same port and find each other by per-pod names.

Cordon and drain are the API server's and kubectl's: the scheduler stops binding to a cordoned
node, and an eviction (checked against PodDisruptionBudgets by the API server) is a graceful
deletion, which the agent honours like any other (preStop, SIGTERM, the grace period).

Every API call is bounded by a timeout; the agent polls (lists) rather than watches, which
keeps it independent of the API server's watch-list support on older etcd.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import copy
import http.client
import itertools
import json
import platform
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import yaml

from tests.podrunner import (
    Backoff,
    ContainerConfigError,
    LocalImage,
    Pod,
    PodRunnerError,
    wait_until,
)
from tests.podrunner.environment import PodIdentity, service_link_variables
from tests.podrunner.kubelet import Container, kill_pods_now
from tests.podrunner.logserver import LogServer
from tests.podrunner.network import hosts_file_text, service_dns_names
from tests.podrunner.objects import config_map_bytes
from tests.podrunner.podnetwork import PodInterface
from tests.podrunner.policy import POD_SPEC, check
from tests.podrunner.runtime import (
    ExecResult,
    NetworkNamespace,
    PortForward,
    Relay,
    run_client,
    run_quietly,
    sweep_stale_clusters,
)
from tests.realengine.storage import HostPathProvisioner, storage_class

if TYPE_CHECKING:
    from tests.realengine.pod_network import PodNetwork

API_TIMEOUT = 10.0
"""Seconds any one API call may take."""
SYNC_SECONDS = 0.25
"""How often the pods bound to the node are listed (the kubelet would watch)."""
OBJECTS_SYNC_SECONDS = 1.0
"""How often Services and StatefulSets (the pods' /etc/hosts) are listed."""
LEASE_RENEW_SECONDS = 5.0
"""The kubelet renews every 10 s of a 40 s lease; twice as often here, on a busy machine."""
LEASE_DURATION_SECONDS = 40
NODE_STATUS_SECONDS = 10.0
"""NodeStatus heartbeat, the kubelet's nodeStatusUpdateFrequency."""
TOKEN_REFRESH_FRACTION = 0.8
"""A projected token is renewed after 80% of its lifetime, as the kubelet does."""
POD_CIDR = "10.244.0.0/16"
NODE_IP = "127.0.0.1"
"""The node's InternalIP: where the agent (in the root namespace) is, on loopback."""


class ApiError(RuntimeError):
    """The API server refused a call; status is its HTTP status (404, 409, 422, ...)."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        """Keep the status for callers that handle 404/409 and a message for everyone else."""
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


def now_rfc3339(when: float | None = None) -> str:
    """Return a Kubernetes timestamp (RFC 3339, seconds, UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if when is None else when))


def now_micro() -> str:
    """Return a Kubernetes MicroTime (what Lease.spec.renewTime holds)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


class ApiClient:
    """A small REST client for one API server, authenticated by a kubeconfig's client cert.

    One keep-alive HTTPS connection per thread; every call has a timeout. Only what a kubelet
    needs: get, list, create, merge-patch, delete.
    """

    def __init__(self, kubeconfig: Path, timeout: float = API_TIMEOUT) -> None:
        """Read the current context of kubeconfig (file paths or inline *-data fields)."""
        config = yaml.safe_load(Path(kubeconfig).read_text())
        context_name = config["current-context"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        url = urllib.parse.urlsplit(cluster["server"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.timeout = timeout
        self.context = ssl.create_default_context(
            cafile=cluster.get("certificate-authority"),
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            if "certificate-authority-data" in cluster
            else None,
        )
        cert, key = self._credential_files(kubeconfig, user)
        self.context.load_cert_chain(cert, key)
        self.local = threading.local()

    @staticmethod
    def _credential_files(kubeconfig: Path, user: dict) -> tuple[str, str]:
        """Client cert and key paths; inline data is written next to the kubeconfig (0600)."""
        paths = []
        for field_name in ("client-certificate", "client-key"):
            if field_name in user:
                paths.append(user[field_name])
                continue
            path = Path(kubeconfig).with_name(f".node-agent-{field_name}")
            path.touch(mode=0o600)
            path.write_bytes(base64.b64decode(user[f"{field_name}-data"]))
            paths.append(str(path))
        return paths[0], paths[1]

    def _connection(self) -> http.client.HTTPSConnection:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self.context
            )
            self.local.connection = connection
        return connection

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict:
        """Call the API server; return the decoded JSON body; ApiError for any status >= 400."""
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            connection = self._connection()
            try:
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException):
                connection.close()
                self.local.connection = None
                if attempt == 1:
                    raise
        text = data.decode(errors="replace")
        if response.status >= 400:
            raise ApiError(response.status, method, path, text)
        return json.loads(text) if text else {}

    def get(self, path: str) -> dict | None:
        """GET an object; None when it does not exist."""
        try:
            return self.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def list(self, path: str, **query: str) -> list[dict]:
        """LIST a collection (query: fieldSelector, labelSelector)."""
        return self.request("GET", path, query=query or None).get("items") or []

    def create(self, path: str, obj: dict) -> dict | None:
        """POST an object; None when one of that name already exists (409)."""
        try:
            return self.request("POST", path, obj)
        except ApiError as error:
            if error.status == 409:
                return None
            raise

    def merge_patch(self, path: str, patch: dict) -> dict:
        """PATCH with a JSON merge patch (lists are replaced whole)."""
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def delete(self, path: str, options: dict | None = None) -> None:
        """DELETE an object; a missing one is not an error."""
        try:
            self.request("DELETE", path, options)
        except ApiError as error:
            if error.status != 404:
                raise


@contextlib.contextmanager
def retried_on_api_trouble(what: str) -> Iterator[None]:
    """Turn a failed API call into the error the pod runner retries (FailedMount, config error).

    A kubelet that cannot read a Secret right now keeps the pod waiting and tries again; a
    transient API error must not fail the pod.
    """
    try:
        yield
    except (OSError, http.client.HTTPException, ApiError) as error:
        msg = f"reading {what} from the API server failed: {error}"
        raise ContainerConfigError(msg) from error


class ApiObjects:
    """ConfigMaps, Secrets and service-account tokens from the API server (the pods' store).

    Read at each container start and each volume sync, never cached (a changed Secret reaches
    the next start and the next sync); tokens are cached until 80% of their lifetime.
    """

    def __init__(self, api: ApiClient) -> None:
        """Serve the pod runner's ConfigStore (and token issuer) from api."""
        self.api = api
        self.tokens: dict[tuple[str, str | None, int], tuple[str, float]] = {}
        self.lock = threading.Lock()

    def config_map_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """Return a ConfigMap's data and binaryData, or None if it does not exist."""
        with retried_on_api_trouble(f"configmap {namespace}/{name}"):
            obj = self.api.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        return None if obj is None else config_map_bytes(obj)

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """Return a Secret's data, or None if it does not exist."""
        with retried_on_api_trouble(f"secret {namespace}/{name}"):
            obj = self.api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        if obj is None:
            return None
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def service_account_token(
        self, pod: PodIdentity, audience: str | None, expiration_seconds: int
    ) -> str:
        """Return a token bound to the pod from the TokenRequest API, as the kubelet does."""
        key = (pod.uid, audience, expiration_seconds)
        with self.lock:
            cached = self.tokens.get(key)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": expiration_seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod.name,
                    "uid": pod.uid,
                },
            },
        }
        path = f"/api/v1/namespaces/{pod.namespace}/serviceaccounts/{pod.service_account}/token"
        with retried_on_api_trouble(f"token for {pod.namespace}/{pod.name}"):
            token = self.api.request("POST", path, request)["status"]["token"]
        renew_at = time.monotonic() + expiration_seconds * TOKEN_REFRESH_FRACTION
        with self.lock:
            self.tokens[key] = (token, renew_at)
        return token

    def forget_pod(self, uid: str) -> None:
        """Drop a deleted pod's cached tokens."""
        with self.lock:
            for key in [k for k in self.tokens if k[0] == uid]:
                del self.tokens[key]


class ApiServerInPodNetwork:
    """The `kubernetes` Service inside the pod network: ClusterIP:443 -> the API server.

    The listening socket is made by a thread that entered the pod network (sockets stay in the
    namespace they were created in); the agent accepts on it and connects out to the API server
    on the root namespace's loopback. Bytes are copied both ways; TLS stays end to end.
    """

    def __init__(
        self, netns: NetworkNamespace, address: str, port: int, upstream: tuple[str, int]
    ) -> None:
        """Listen on address:port in netns; connections go to `upstream` from the host."""
        self.address, self.port, self.upstream = address, port, upstream
        self.relay = Relay(
            self._listen_in(netns),
            lambda: socket.create_connection(self.upstream, timeout=API_TIMEOUT),
            "node-api-forward",
        )

    def _listen_in(self, netns: NetworkNamespace) -> socket.socket:
        outcome: dict[str, object] = {}

        def inside() -> None:
            try:
                netns.enter_current_thread()
                outcome["socket"] = socket.create_server((self.address, self.port))
            except OSError as error:
                outcome["error"] = error

        thread = threading.Thread(target=inside, name="node-api-listen", daemon=True)
        thread.start()
        thread.join(timeout=API_TIMEOUT)
        if "socket" not in outcome:
            msg = f"listening on {self.address}:{self.port} in the pod network: {outcome}"
            raise PodRunnerError(msg)
        return outcome["socket"]  # type: ignore[return-value]

    def variables(self) -> dict[str, str]:
        """Return what the kubelet gives every container for the `kubernetes` Service."""
        tcp = f"tcp://{self.address}:{self.port}"
        prefix = f"KUBERNETES_PORT_{self.port}_TCP"
        return {
            "KUBERNETES_SERVICE_HOST": self.address,
            "KUBERNETES_SERVICE_PORT": str(self.port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.port),
            "KUBERNETES_PORT": tcp,
            prefix: tcp,
            f"{prefix}_PROTO": "tcp",
            f"{prefix}_PORT": str(self.port),
            f"{prefix}_ADDR": self.address,
        }

    def close(self) -> None:
        """Stop accepting and cut every forwarded connection."""
        self.relay.close()


_API_IN_POD_NETWORKS: dict[str, tuple[ApiServerInPodNetwork, int]] = {}
"""Pod network namespace -> its API server forward and how many node agents use it: nodes that
share one network (pod_network.PodNetwork) share its one `kubernetes` address."""
_API_IN_POD_NETWORKS_LOCK = threading.Lock()


class ClusterLike(Protocol):
    """What the agent needs of a control plane: a kubeconfig with admin credentials."""

    kubeconfig: Path


@dataclass
class PodRecord:
    """One pod bound to this node, as the agent tracks it between syncs."""

    uid: str
    namespace: str
    name: str
    ip: str
    started: float
    pod: Pod | None = None
    waiting_reason: str = ""
    """Why a pod could not be run at all (ErrImagePull, CreateContainerConfigError)."""
    waiting_message: str = ""
    deletion_grace: float | None = None
    interface: PodInterface | None = None
    """The pod's own network (several nodes sharing a PodNetwork); None on a single node."""
    reported: dict | None = None
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """`namespace/name` for messages."""
        return f"{self.namespace}/{self.name}"


def waiting_state(reason: str, message: str) -> dict:
    """Return a container status `waiting` state."""
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def terminated_state(container: Container, index: int) -> dict:
    """Return a container status `terminated` state from one recorded end of a run."""
    end = container.terminations[index]
    state = {
        "exitCode": end.exit_code,
        "reason": end.reason,
        "startedAt": now_rfc3339(end.started_at),
        "finishedAt": now_rfc3339(end.finished_at),
    }
    if end.reason == "StartError":
        state["message"] = end.message
    return {"terminated": state}


def container_status(container: Container, pod_uid: str) -> dict:
    """Return a containerStatuses entry: state, lastState, ready, started, restartCount."""
    if container.state == "running" and container.started_at is not None:
        state = {"running": {"startedAt": now_rfc3339(container.started_at)}}
    elif container.state == "terminated" and container.terminations:
        state = terminated_state(container, -1)
    else:
        state = waiting_state(container.reason, container.message)
    previous = -2 if container.state == "terminated" else -1
    last = terminated_state(container, previous) if len(container.terminations) >= -previous else {}
    status = {
        "name": container.name,
        "image": container.spec.get("image", ""),
        "imageID": "",
        "ready": container.ready,
        "started": container.state == "running" and container.started,
        "restartCount": container.restart_count,
        "state": state,
        "lastState": last,
    }
    if container.runs:
        status["containerID"] = f"podrunner://{pod_uid}-{container.name}-{len(container.runs)}"
    return status


def unstarted_status(spec: dict, reason: str, message: str) -> dict:
    """Return a containerStatuses entry for a container that could not be created."""
    return {
        "name": spec["name"],
        "image": spec.get("image", ""),
        "imageID": "",
        "ready": False,
        "started": False,
        "restartCount": 0,
        "state": waiting_state(reason or "ContainerCreating", message),
        "lastState": {},
    }


def condition(record: PodRecord, kind: str, ok: bool, reason: str = "", message: str = "") -> dict:
    """Return a pod condition whose lastTransitionTime moves only when its status does."""
    status = "True" if ok else "False"
    previous = record.transitions.get(kind)
    if previous is None or previous[0] != status:
        record.transitions[kind] = (status, now_rfc3339())
    entry = {"type": kind, "status": status, "lastTransitionTime": record.transitions[kind][1]}
    if not ok and reason:
        entry["reason"] = reason
    if not ok and message:
        entry["message"] = message
    return entry


def pod_conditions(record: PodRecord, phase: str, server_pod: dict) -> list[dict]:
    """PodReadyToStartContainers, Initialized, ContainersReady, Ready (others kept as found)."""
    pod = record.pod
    init = pod.init_containers if pod else []
    pending_init = [c.name for c in init if not (c.terminations and c.exit_code == 0)]
    sandbox = pod is not None and (pod.dir / "hosts").exists()
    if pod is None:
        unready = [c["name"] for c in server_pod["spec"]["containers"]]
    else:
        unready = [c.name for c in pod.containers if not c.ready]
    ready = pod is not None and pod.ready and not unready
    if phase == "Succeeded":
        ready_reason, ready_message = "PodCompleted", ""
    else:
        ready_reason = "ContainersNotReady"
        ready_message = f"containers with unready status: [{' '.join(unready)}]"
    ours = [
        condition(record, "PodReadyToStartContainers", sandbox),
        condition(
            record,
            "Initialized",
            not pending_init,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(pending_init)}]",
        ),
        condition(record, "ContainersReady", ready, ready_reason, ready_message),
        condition(record, "Ready", ready, ready_reason, ready_message),
    ]
    kept = [
        c
        for c in (server_pod.get("status") or {}).get("conditions") or []
        if c["type"] not in {entry["type"] for entry in ours}
    ]
    return kept + ours


def pod_status(record: PodRecord, server_pod: dict) -> dict:
    """Return the status the kubelet would report for what the pod runner observes now."""
    pod = record.pod
    spec = server_pod["spec"]
    if pod is None:
        phase = "Pending"
        containers = [
            unstarted_status(c, record.waiting_reason, record.waiting_message)
            for c in spec["containers"]
        ]
        init_containers = [
            unstarted_status(c, "PodInitializing", "") for c in spec.get("initContainers", [])
        ]
    else:
        phase = pod.phase
        containers = [container_status(c, record.uid) for c in pod.containers]
        init_containers = [container_status(c, record.uid) for c in pod.init_containers]
    status = {
        "phase": phase,
        "conditions": pod_conditions(record, phase, server_pod),
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": record.ip,
        "podIPs": [{"ip": record.ip}],
        "startTime": now_rfc3339(record.started),
        "containerStatuses": containers,
    }
    if init_containers:
        status["initContainerStatuses"] = init_containers
    if pod is not None and pod.config_error and phase == "Failed":
        status["message"] = pod.config_error
    return status


def pod_owner(server_pod: dict) -> tuple[str, str] | None:
    """Return the controlling owner (kind, name) of a pod, if any."""
    for reference in server_pod["metadata"].get("ownerReferences") or []:
        if reference.get("controller"):
            return reference["kind"], reference["name"]
    return None


class NodeAgent:
    """One node of a real control plane, running its pods with the pod runner; a context manager.

    cluster: anything with a `kubeconfig` path (tests/realengine/controlplane.ControlPlane).
    images: the image table (tests/e2e/images.py); an image not in it is ErrImagePull.
    root: a folder for the node's state (pods' sandboxes and logs, provisioned volumes).
    name: the Node's name (and its kubernetes.io/hostname label).
    time_scale / backoff: as for the pod runner (probe periods, restart back-off).
    capacity: what the Node advertises (cpu, memory, pods); the scheduler fits requests to it.
    volume_sync_seconds: how often mounted ConfigMaps/Secrets are refreshed (the kubelet's sync
        period is about a minute; tests want seconds).
    network: the pod network this node shares with others (pod_network.PodNetwork); without
        one the node's pods share one network namespace of its own.
    pod_cidr: the node's range of pod addresses (spec.podCIDR; within the network's subnet).
    provisions_storage: whether this node provisions claims of its StorageClasses (node-local
        volumes); a cluster of several nodes provisions volumes any node mounts instead.
    """

    def __init__(
        self,
        cluster: ClusterLike,
        images: Mapping[str, LocalImage],
        root: Path,
        *,
        name: str = "podrunner-node",
        time_scale: float = 1.0,
        backoff: Backoff | None = None,
        capacity: Mapping[str, str] | None = None,
        volume_sync_seconds: float = 2.0,
        network: PodNetwork | None = None,
        pod_cidr: str = POD_CIDR,
        provisions_storage: bool = True,
    ) -> None:
        """Prepare the agent; start() registers the Node and starts running pods."""
        self.api = ApiClient(cluster.kubeconfig)
        self.store = ApiObjects(self.api)
        self.images = dict(images)
        self.root = Path(root)
        self.name = name
        self.time_scale = time_scale
        self.backoff = backoff or Backoff()
        self.capacity = dict(capacity or {"cpu": "32", "memory": "128Gi", "pods": "110"})
        self.volume_sync_seconds = volume_sync_seconds
        self.network = network
        self.pod_cidr = pod_cidr
        self.provisions_storage = provisions_storage
        self.storage = HostPathProvisioner(self.api, self.root / "volumes", name)
        self.records: dict[str, PodRecord] = {}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.netns_handle: NetworkNamespace | None = None
        self.services: list[dict] = []
        self.statefulsets: list[dict] = []
        self.addresses = (f"10.244.{n // 256}.{n % 256}" for n in itertools.count(2))
        self.errors: list[str] = []
        self.forwards: list[PortForward] = []
        self.api_in_pods: ApiServerInPodNetwork | None = None
        self.log_server: LogServer | None = None
        self.last_node_status = 0.0
        self.last_objects_sync = 0.0
        self.node_created = now_rfc3339()
        self.boot_id = str(uuid.uuid4())
        self.kubelet_version = ""

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> NodeAgent:
        """Start the agent (see start)."""
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop every pod and the agent (see close)."""
        self.close()

    def start(self) -> NodeAgent:
        """Create the pod network, register the Node and its Lease, start the sync loops."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "pods").mkdir(exist_ok=True)
        atexit.register(self.close)
        # Namespaces and state of test processes that were killed before they could clean up.
        sweep_stale_clusters(Path(tempfile.gettempdir()))
        if self.network is None:
            self.netns_handle = NetworkNamespace()
            run_quietly(
                ["ip", "-n", self.netns_handle.name, "addr", "add", "10.244.0.1/16", "dev", "lo"]
            )
        else:
            self.network.join(self)
        # `kubectl logs` reaches pods through the API server, which calls the node's kubelet.
        self.log_server = LogServer(self.find_container, self.root / "kubelet-pki")
        self.serve_api_to_pods()
        self.register_node()
        loops = [
            (self.heartbeat_loop, "heartbeat"),
            (self.pod_loop, "pods"),
            (self.volume_loop, "volumes"),
        ]
        if self.provisions_storage:
            loops.append((self.storage_loop, "storage"))
        for target, what in loops:
            thread = threading.Thread(
                target=self.guarded(target, what), name=f"node-{what}", daemon=True
            )
            thread.start()
            self.threads.append(thread)
        return self

    def guarded(self, loop: Callable[[], None], what: str) -> Callable[[], None]:
        """Run loop until the agent stops; an API hiccup is logged and the loop carries on."""

        def run() -> None:
            interval = {"heartbeat": LEASE_RENEW_SECONDS, "pods": SYNC_SECONDS}.get(what, 0.5)
            if what == "volumes":
                interval = self.volume_sync_seconds
            while not self.stopping.is_set():
                try:
                    loop()
                except Exception as error:  # one bad sync must not stop the node
                    self.errors.append(f"{time.strftime('%H:%M:%S')} {what}: {error!r}")
                    del self.errors[:-50]
                self.stopping.wait(interval)

        return run

    def close(self) -> None:
        """Kill every pod (no grace: the cluster is going away), remove the pod network."""
        atexit.unregister(self.close)
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=15)
        if self.network is not None:
            self.network.leave(self)
        with self.lock:
            records = list(self.records.values())
        kill_pods_now([r.pod for r in records if r.pod is not None])
        for record in records:
            if record.interface is not None and self.network is not None:
                self.network.detach(record.interface)
        for forward in self.forwards:
            forward.close()
        self.stop_serving_api_to_pods()
        if self.log_server is not None:
            self.log_server.close()
        if self.netns_handle is not None:
            self.netns_handle.delete()
        shutil.rmtree(self.root / "pods", ignore_errors=True)

    # -- the Node --------------------------------------------------------------------------
    def node_status(self) -> dict:
        """Capacity, conditions (Ready), addresses and nodeInfo, heartbeat now."""
        heartbeat = now_rfc3339()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        version = self.kubelet_version
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": "node agent (pod runner) is posting status",
                    "lastHeartbeatTime": heartbeat,
                    "lastTransitionTime": self.node_created,
                }
                for kind, status, reason in conditions
            ],
            "addresses": [{"type": "InternalIP", "address": NODE_IP}],
            "daemonEndpoints": {
                "kubeletEndpoint": {"Port": self.log_server.port if self.log_server else 0}
            },
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.name)),
                "bootID": self.boot_id,
                "kernelVersion": platform.release(),
                "osImage": "pod runner on " + platform.platform(terse=True),
                "containerRuntimeVersion": "podrunner://1",
                "kubeletVersion": version,
                "kubeProxyVersion": version,
                "operatingSystem": "linux",
                "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(
                    platform.machine(), platform.machine()
                ),
            },
        }

    def register_node(self) -> None:
        """Create (or take over) the Node, Ready from the start, then its Lease."""
        # The node reports the control plane's version, as a kubelet of the same build would.
        self.kubelet_version = self.api.request("GET", "/version")["gitVersion"]
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
            "status": self.node_status(),
        }
        self.api.create("/api/v1/nodes", node)
        self.api.merge_patch(f"/api/v1/nodes/{self.name}/status", {"status": self.node_status()})
        self.last_node_status = time.monotonic()
        self.renew_lease()

    def renew_lease(self) -> None:
        """Create or renew the node's Lease (what the node lifecycle controller watches)."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": now_micro(),
        }
        try:
            self.api.merge_patch(path, {"spec": spec})
        except ApiError as error:
            if error.status != 404:
                raise
            node = self.api.get(f"/api/v1/nodes/{self.name}") or {}
            owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self.name,
                "uid": node.get("metadata", {}).get("uid", ""),
            }
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "ownerReferences": [owner]},
                "spec": spec,
            }
            self.api.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease)

    def heartbeat_loop(self) -> None:
        """Renew the Lease; post NodeStatus every NODE_STATUS_SECONDS."""
        self.renew_lease()
        if time.monotonic() - self.last_node_status >= NODE_STATUS_SECONDS:
            self.api.merge_patch(
                f"/api/v1/nodes/{self.name}/status", {"status": self.node_status()}
            )
            self.last_node_status = time.monotonic()

    # -- what pods ask of their node (tests/podrunner/kubelet.Node) ------------------------
    @property
    def netns(self) -> NetworkNamespace:
        """The pods' network namespace (a shared network's hub); the agent must be started."""
        if self.network is not None:
            return self.network.namespace
        if self.netns_handle is None:
            msg = "the node agent is not started"
            raise PodRunnerError(msg)
        return self.netns_handle

    def hosts_file(
        self,
        namespace: str | None,
        hostname: str | None,
        fqdn: str | None,
        aliases: list[dict],
        pod_ip: str = "127.0.0.1",
    ) -> str:
        """Return a pod's /etc/hosts from the Services and StatefulSets the API server has.

        With a shared network: from the EndpointSlices, as cluster DNS answers (pod_network.py).
        """
        if self.network is not None:
            return self.network.hosts_text(namespace, hostname, fqdn, aliases, pod_ip)
        names = service_dns_names(self.services, self.statefulsets, namespace)
        return hosts_file_text(names, hostname, fqdn, aliases, pod_ip)

    def service_links(self, namespace: str) -> dict[str, str]:
        """Service link variables of a namespace, from the Services the API server has."""
        if self.network is not None:
            services = [s for s in self.network.services if s["metadata"]["namespace"] == namespace]
            return service_link_variables(services, self.network.service_address)
        return service_link_variables(
            [s for s in self.services if s["metadata"]["namespace"] == namespace]
        )

    def api_server_variables(self) -> dict[str, str]:
        """KUBERNETES_SERVICE_HOST/PORT and the link variables of the `kubernetes` Service."""
        return self.api_in_pods.variables() if self.api_in_pods is not None else {}

    def serve_api_to_pods(self) -> None:
        """Put the `kubernetes` Service's ClusterIP on the pod network, forwarding to the API."""
        deadline = time.monotonic() + 30
        service = None
        while service is None:  # the API server creates it right after it starts serving
            service = self.api.get("/api/v1/namespaces/default/services/kubernetes")
            if service is None:
                if time.monotonic() > deadline:
                    msg = "the API server has no `kubernetes` Service after 30 s"
                    raise PodRunnerError(msg)
                time.sleep(0.5)
        address = service["spec"]["clusterIP"]
        port = int(service["spec"]["ports"][0]["port"])
        netns = self.netns  # with a shared network: its hub, every pod's default gateway
        with _API_IN_POD_NETWORKS_LOCK:
            forward, users = _API_IN_POD_NETWORKS.get(netns.name, (None, 0))
            if forward is None:
                run_quietly(["ip", "-n", netns.name, "addr", "add", f"{address}/32", "dev", "lo"])
                forward = ApiServerInPodNetwork(
                    netns, address, port, (self.api.host, self.api.port)
                )
            _API_IN_POD_NETWORKS[netns.name] = (forward, users + 1)
        self.api_in_pods = forward

    def stop_serving_api_to_pods(self) -> None:
        """Close the forward when the last node agent of its network lets go of it."""
        if self.api_in_pods is None:
            return
        with _API_IN_POD_NETWORKS_LOCK:
            for name, (forward, users) in list(_API_IN_POD_NETWORKS.items()):
                if forward is self.api_in_pods:
                    if users > 1:
                        _API_IN_POD_NETWORKS[name] = (forward, users - 1)
                    else:
                        del _API_IN_POD_NETWORKS[name]
                        forward.close()
        self.api_in_pods = None

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """Host directory of the PersistentVolume bound to a claim (FailedMount until bound)."""
        with retried_on_api_trouble(f"claim {namespace}/{claim}"):
            return self.storage.claim_dir(namespace, claim)

    def pod_gone(self, pod: Pod) -> None:
        """Nothing to do: the agent forgets a pod once the API server deleted it."""

    # -- pods ------------------------------------------------------------------------------
    def pod_loop(self) -> None:
        """One sync: start new pods, honour deletions, report every pod's status."""
        stale = time.monotonic() - self.last_objects_sync >= OBJECTS_SYNC_SECONDS
        if self.network is None and stale:  # a shared network follows Services itself
            self.services = self.api.list("/api/v1/services")
            self.statefulsets = self.api.list("/apis/apps/v1/statefulsets")
            self.last_objects_sync = time.monotonic()
        server_pods = self.api.list("/api/v1/pods", fieldSelector=f"spec.nodeName={self.name}")
        seen = set()
        for server_pod in server_pods:
            uid = server_pod["metadata"]["uid"]
            seen.add(uid)
            with self.lock:
                record = self.records.get(uid)
            if record is None:
                if server_pod["metadata"].get("deletionTimestamp"):
                    self.finalize(server_pod, None)
                    continue
                record = self.admit(server_pod)
            self.sync_pod(record, server_pod)
        with self.lock:
            vanished = [r for uid, r in self.records.items() if uid not in seen]
        for record in vanished:
            self.forget(record)

    def admit(self, server_pod: dict) -> PodRecord:
        """Start running a newly bound pod (or record why it cannot run)."""
        metadata, spec = server_pod["metadata"], server_pod["spec"]
        interface = None if self.network is None else self.network.attach(self.pod_cidr)
        record = PodRecord(
            uid=metadata["uid"],
            namespace=metadata["namespace"],
            name=metadata["name"],
            ip=next(self.addresses) if interface is None else interface.address,
            started=time.time(),
            interface=interface,
        )
        where = f"Pod {record.where}"
        try:
            check(f"{where}.spec", spec, POD_SPEC, [])
        except PodRunnerError as error:
            record.waiting_reason, record.waiting_message = "CreateContainerConfigError", str(error)
        else:
            manifest = {"metadata": copy.deepcopy(metadata), "spec": copy.deepcopy(spec)}
            pod_dir = self.root / "pods" / f"{record.namespace}_{record.name}_{record.uid}"
            try:
                record.pod = Pod(
                    self,
                    manifest,
                    pod_dir,
                    pod_owner(server_pod),
                    (record.ip, NODE_IP),
                    None if interface is None else interface.netns,
                )
            except PodRunnerError as error:
                # The image table is this node's registry: an image not in it cannot be pulled.
                record.waiting_reason, record.waiting_message = "ErrImagePull", str(error)
            else:
                record.pod.start()
        with self.lock:
            self.records[record.uid] = record
        return record

    def sync_pod(self, record: PodRecord, server_pod: dict) -> None:
        """Report status; on deletion stop the pod (preStop, SIGTERM, grace) and finalize it."""
        metadata = server_pod["metadata"]
        deleting = bool(metadata.get("deletionTimestamp"))
        pod = record.pod
        if deleting and pod is not None and not pod.terminating.is_set():
            grace = metadata.get("deletionGracePeriodSeconds")
            record.deletion_grace = float(grace) if grace is not None else pod.grace_seconds
            pod.delete(grace_period=record.deletion_grace, wait=False)
        self.report(record, server_pod)
        if deleting and (pod is None or pod.finished.is_set()):
            self.finalize(server_pod, record)

    def report(self, record: PodRecord, server_pod: dict) -> None:
        """PATCH the pod's status when it changed; a terminal pod's status is final."""
        if (record.reported or {}).get("phase") in ("Succeeded", "Failed"):
            return
        status = pod_status(record, server_pod)
        if status == record.reported:
            return
        path = f"/api/v1/namespaces/{record.namespace}/pods/{record.name}/status"
        try:
            self.api.merge_patch(path, {"metadata": {"uid": record.uid}, "status": status})
        except ApiError as error:
            if error.status not in (404, 409):
                raise
            return
        record.reported = status

    def finalize(self, server_pod: dict, record: PodRecord | None) -> None:
        """Delete the pod object for good (grace 0) once its containers are gone."""
        metadata = server_pod["metadata"]
        self.api.delete(
            f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}",
            {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": metadata["uid"]},
            },
        )
        if record is not None:
            self.forget(record)

    def forget(self, record: PodRecord) -> None:
        """Stop tracking a pod the API server no longer has, once its containers are gone."""
        pod = record.pod
        if pod is not None and not pod.finished.is_set():
            if not pod.terminating.is_set():
                # Force-deleted: stop it the way a deletion asked, or at once.
                grace = 0.0 if record.deletion_grace is None else record.deletion_grace
                pod.delete(grace_period=grace, wait=False)
            return  # forgotten at a later sync, when the pod has finished
        with self.lock:
            self.records.pop(record.uid, None)
        if record.interface is not None and self.network is not None:
            self.network.detach(record.interface)
        self.store.forget_pod(record.uid)
        if pod is not None:
            shutil.rmtree(pod.dir, ignore_errors=True)

    def volume_loop(self) -> None:
        """Refresh every running pod's ConfigMap/Secret volumes and /etc/hosts."""
        with self.lock:
            pods = [r.pod for r in self.records.values() if r.pod is not None]
        for pod in pods:
            if not pod.finished.is_set():
                pod.refresh()

    def storage_loop(self) -> None:
        """Provision, expand and reclaim volumes for claims of this node's storage classes."""
        self.storage.sync()

    # -- what tests use --------------------------------------------------------------------
    def create_storage_class(
        self, name: str = "standard", *, default: bool = True, **options: object
    ) -> None:
        """Create a StorageClass this node provisions (see storage.storage_class)."""
        self.api.create(
            "/apis/storage.k8s.io/v1/storageclasses",
            storage_class(name, default=default, **options),
        )

    def pods(self, namespace: str | None = None) -> list[Pod]:
        """Return the pods this node runs (pod runner objects: exec, logs, kill, describe)."""
        with self.lock:
            records = list(self.records.values())
        return sorted(
            (r.pod for r in records if r.pod is not None and namespace in (None, r.namespace)),
            key=lambda p: (p.namespace, p.name),
        )

    def pod(self, name: str, namespace: str = "default", timeout: float = 0.0) -> Pod:
        """Return the running pod of that name (waiting up to timeout for it to start)."""

        def find() -> Pod | None:
            found = [
                p for p in self.pods(namespace) if p.name == name and not p.terminating.is_set()
            ]
            return found[-1] if found else None

        return wait_until(find, timeout, f"pod {namespace}/{name} on {self.name}", self.describe)  # type: ignore[return-value]

    def find_container(self, namespace: str, pod_name: str, container: str) -> Container | None:
        """Return a container of a pod this node runs (the newest of that name), for logs."""
        with self.lock:
            records = [
                r
                for r in self.records.values()
                if r.pod is not None and (r.namespace, r.name) == (namespace, pod_name)
            ]
        for record in sorted(records, key=lambda r: r.started, reverse=True):
            try:
                return record.pod.container(container)  # type: ignore[union-attr]
            except KeyError:
                return None
        return None

    def describe(self) -> str:
        """Every pod as the pod runner sees it, plus recent agent errors (assertion messages)."""
        with self.lock:
            records = list(self.records.values())
        lines = []
        for record in records:
            if record.pod is not None:
                lines.append(record.pod.describe())
            else:
                lines.append(
                    f"Pod {record.where}: {record.waiting_reason}: {record.waiting_message}"
                )
        lines += [f"agent error: {error}" for error in self.errors[-10:]]
        return "\n".join(lines) or "(no pods on the node)"

    def run_in_netns(
        self,
        argv: list[str],
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        namespace: str | None = None,
    ) -> ExecResult:
        """Run a command as root in the pod network, Service names resolving as in a pod."""
        if self.network is not None:
            return self.network.run_in_netns(argv, timeout, env, namespace)
        hosts = self.hosts_file(namespace, None, None, [])
        return run_client(self.netns, hosts, self.root, argv, timeout, env)

    def host_port(self, port: int) -> int:
        """Return a port on the test process's 127.0.0.1 forwarding into the pod network.

        On a single node only (pods share its loopback); with a shared network a port belongs to
        a pod: see MultiNodeCluster.pod_port.
        """
        if self.network is not None:
            msg = "host_port needs the single-node network; use MultiNodeCluster.pod_port"
            raise PodRunnerError(msg)
        forward = PortForward(self.netns, port)
        self.forwards.append(forward)
        return forward.port
