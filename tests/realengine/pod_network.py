"""One pod network for several nodes of the real control plane: a bridge, addresses, cluster DNS.

A single node agent runs its pods in one shared network namespace (node_agent.py). Replicated
brokers need more: pods on different nodes that all listen on 6379, that find each other by
the per-pod names Kubernetes gives StatefulSet pods, and that keep their names while a node is
drained. This module is the cluster's network for that case, built from tests/podrunner's
per-pod mode (podnetwork.py):

    hub namespace: bridge podbr0, gateway 10.244.0.1/16
      node-a's pods: 10.244.1.x   node-b's pods: 10.244.2.x   node-c's pods: 10.244.3.x

Every pod of every node gets its own network namespace and an address from its node's pod CIDR
on ONE bridge, so pods on different nodes reach each other directly, as a flat CNI (Calico,
Cilium in native routing) gives them. Nothing is added to the host's network (see podnetwork.py).

Names come from the API server, as CoreDNS serves them: the real EndpointSlice controller
decides which pods are a Service's endpoints (ready, or every pod with an address when the
Service publishes not-ready addresses, terminating ones included) and which carry a hostname
(`<hostname>.<service>`: a pod whose subdomain is that Service); this module reads the slices
and writes every pod's /etc/hosts (network.dns_records' forms: `name.ns`, `.svc`,
`.svc.cluster.local`, the short name within the namespace). A headless Service's name resolves
to every endpoint; a ClusterIP Service's, with no virtual IP and no kube-proxy here, to its
first ready endpoint by pod name, or to the gateway (connection refused) when it has none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tests.podrunner import Pod
from tests.podrunner.network import DnsRecord, pod_network_hosts_text
from tests.podrunner.podnetwork import BridgeNetwork, PodInterface
from tests.podrunner.runtime import (
    ExecResult,
    NetworkNamespace,
    PortForward,
    run_client,
    sweep_stale_clusters,
)

if TYPE_CHECKING:
    from tests.realengine.node_agent import ApiClient

CLUSTER_SUBNET = "10.244.0.0/16"
"""The whole pod network (the bridge's subnet; its first address is the gateway)."""
DNS_SYNC_SECONDS = 0.3
"""How often Services and EndpointSlices are listed (CoreDNS would watch)."""
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class PodsOnANode(Protocol):
    """What the network needs of a node agent: its running pods (to rewrite their hosts)."""

    def pods(self, namespace: str | None = None) -> list[Pod]:
        """Return the pods the node runs."""


def node_pod_cidr(index: int) -> str:
    """Return the pod CIDR of the index-th node (1-based): 10.244.<index>.0/24."""
    return f"10.244.{index}.0/24"


def endpoints_by_service(slices: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Group the IPv4 endpoints of EndpointSlices by (namespace, service name)."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for endpoint_slice in slices:
        if endpoint_slice.get("addressType") != "IPv4":
            continue
        metadata = endpoint_slice["metadata"]
        service = (metadata.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service is None:
            continue
        key = (metadata["namespace"], service)
        grouped.setdefault(key, []).extend(endpoint_slice.get("endpoints") or [])
    return grouped


def endpoint_ready(endpoint: dict) -> bool:
    """Return whether CoreDNS serves an endpoint: ready (unset means ready, per the API)."""
    return (endpoint.get("conditions") or {}).get("ready") is not False


def slice_records(
    services: list[dict], slices: list[dict], no_endpoints_address: str
) -> list[DnsRecord]:
    """Every A record cluster DNS serves for these Services, from their EndpointSlices.

    Headless: the Service's name -> each ready endpoint, `<hostname>.<service>` -> an endpoint
    that has a hostname. ClusterIP (no proxy here): the name -> the first ready endpoint by pod
    name, or no_endpoints_address.
    """
    grouped = endpoints_by_service(slices)
    records: set[DnsRecord] = set()
    for service in services:
        metadata, spec = service["metadata"], service.get("spec") or {}
        if spec.get("type") == "ExternalName":
            continue
        namespace, name = metadata["namespace"], metadata["name"]
        ready = sorted(
            (e for e in grouped.get((namespace, name), []) if endpoint_ready(e) and e["addresses"]),
            key=lambda e: ((e.get("targetRef") or {}).get("name", ""), e["addresses"][0]),
        )
        if spec.get("clusterIP") == "None":
            for endpoint in ready:
                address = endpoint["addresses"][0]
                records.add(DnsRecord(namespace, name, address))
                if endpoint.get("hostname"):
                    records.add(DnsRecord(namespace, f"{endpoint['hostname']}.{name}", address))
        elif name != "kubernetes" or namespace != "default":
            address = ready[0]["addresses"][0] if ready else no_endpoints_address
            records.add(DnsRecord(namespace, name, address))
    return sorted(records)


class PodNetwork:
    """The pod network of a cluster of node agents; a context manager (see the module docstring).

    api: a client of the control plane (Services and EndpointSlices are read from it).
    state_dir: where client hosts files are written (run_in_netns).
    """

    def __init__(self, api: ApiClient, state_dir: Path, subnet: str = CLUSTER_SUBNET) -> None:
        """Prepare; open() creates the hub, the bridge and starts following EndpointSlices."""
        self.api = api
        self.state_dir = state_dir
        self.subnet = subnet
        self.hub: NetworkNamespace | None = None
        self.bridge: BridgeNetwork | None = None
        self.records: list[DnsRecord] = []
        self.services: list[dict] = []
        self.nodes: list[PodsOnANode] = []
        self.forwards: list[PortForward] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.dns_loop, name="pod-network-dns", daemon=True)

    def __enter__(self) -> PodNetwork:
        """Open the network (see open)."""
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close it (see close)."""
        self.close()

    def open(self) -> None:
        """Create the hub namespace and its bridge; start the DNS loop."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Namespaces of test processes that were killed before they could clean up.
        sweep_stale_clusters(self.state_dir)
        self.hub = NetworkNamespace()
        self.bridge = BridgeNetwork(self.hub, self.subnet)
        self.sync_dns()
        self.thread.start()

    def close(self) -> None:
        """Stop the DNS loop and forwards; delete every pod's namespace and the hub."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        for forward in self.forwards:
            forward.close()
        if self.bridge is not None:
            self.bridge.close()
        if self.hub is not None:
            self.hub.delete()

    # -- what node agents use ------------------------------------------------------------
    @property
    def namespace(self) -> NetworkNamespace:
        """The hub (where the bridge and the gateway are); the network must be open."""
        if self.hub is None:
            msg = "the pod network is not open"
            raise RuntimeError(msg)
        return self.hub

    @property
    def gateway(self) -> str:
        """The bridge's own address: where a name without endpoints points (nothing listens)."""
        if self.bridge is None:
            msg = "the pod network is not open"
            raise RuntimeError(msg)
        return self.bridge.gateway

    def join(self, node: PodsOnANode) -> None:
        """Let a node's pods follow DNS changes."""
        with self.lock:
            self.nodes.append(node)

    def leave(self, node: PodsOnANode) -> None:
        """Stop rewriting a node's pods' hosts (the node is closing)."""
        with self.lock:
            if node in self.nodes:
                self.nodes.remove(node)

    def attach(self, pod_cidr: str) -> PodInterface:
        """Give a new pod its namespace and an address from its node's range, on the bridge."""
        if self.bridge is None:
            msg = "the pod network is not open"
            raise RuntimeError(msg)
        return self.bridge.attach(within=pod_cidr)

    def detach(self, interface: PodInterface) -> None:
        """Delete a finished pod's namespace and free its address."""
        if self.bridge is not None:
            self.bridge.detach(interface)

    def hosts_text(
        self,
        namespace: str | None,
        hostname: str | None,
        fqdn: str | None,
        aliases: list[dict],
        pod_ip: str,
    ) -> str:
        """Return a pod's /etc/hosts (or a client's when hostname is None) from the records."""
        with self.lock:
            records = list(self.records)
        return pod_network_hosts_text(records, namespace, hostname, fqdn, aliases, pod_ip)

    def service_address(self, service: dict) -> str:
        """Where a ClusterIP Service's name resolves now (its Service link variables)."""
        name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
        with self.lock:
            records = list(self.records)
        for record in records:
            if (record.namespace, record.host) == (namespace, name):
                return record.address
        return self.gateway

    # -- cluster DNS -----------------------------------------------------------------------
    def dns_loop(self) -> None:
        """Follow Services and EndpointSlices until closed; an API hiccup is logged, not fatal."""
        while not self.stopping.wait(DNS_SYNC_SECONDS):
            try:
                self.sync_dns()
            except Exception as error:  # one bad sync must not stop the cluster's DNS
                self.errors.append(f"{time.strftime('%H:%M:%S')} dns: {error!r}")
                del self.errors[:-50]

    def sync_dns(self) -> None:
        """Recompute the records; rewrite every running pod's /etc/hosts when they changed."""
        services = self.api.list("/api/v1/services")
        slices = self.api.list("/apis/discovery.k8s.io/v1/endpointslices")
        records = slice_records(services, slices, self.gateway)
        with self.lock:
            changed = records != self.records
            self.records, self.services = records, services
            nodes = list(self.nodes)
        if changed:
            for node in nodes:
                for pod in node.pods():
                    pod.refresh_hosts()

    # -- what tests use --------------------------------------------------------------------
    def run_in_netns(
        self,
        argv: list[str],
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        namespace: str | None = None,
    ) -> ExecResult:
        """Run a command as root in the hub, names resolving as cluster DNS answers them now.

        The hub routes to every pod of every node: a client here is a client in the cluster.
        """
        hosts = self.hosts_text(namespace, None, None, [], self.gateway)
        return run_client(self.namespace, hosts, self.state_dir, argv, timeout, env)

    def forward(self, port: int, address: Callable[[], str]) -> int:
        """Return a port on the test process's 127.0.0.1 forwarding to address():port."""
        forward = PortForward(self.namespace, port, address)
        self.forwards.append(forward)
        return forward.port
