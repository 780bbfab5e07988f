"""How pods find Services and each other by name: a per-pod /etc/hosts, as cluster DNS would answer.

Shared mode: all pods of one node share one network namespace, so a Service needs no proxy:
its name resolving to the shared loopback reaches whichever pod listens on the target port. The
local cluster and the node agent of the real-engine tests both write pods' hosts files from
here, each from its own list of Services and StatefulSets (manifests, or objects read from an
API server).

Per-pod mode (podnetwork.py): every pod has its own address, and names map to the addresses of
the pods behind them, following the endpoints rules of Kubernetes (`dns_records`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

HOSTS_NAMES_PER_LINE = 8
DNS_SUFFIXES = ("", ".svc", ".svc.cluster.local")


def service_dns_names(
    services: Iterable[dict], statefulsets: Iterable[dict], namespace: str | None
) -> list[str]:
    """Every DNS name a pod in namespace can use for a Service or a StatefulSet pod.

    `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`, and the short `svc` from the same
    namespace (its search domain); likewise `<sts>-<ordinal>.<svc>...` for the pods of a
    StatefulSet whose serviceName is that Service.
    """
    statefulsets = list(statefulsets)
    names: list[str] = []
    for service in services:
        name, svc_ns = service["metadata"]["name"], service["metadata"]["namespace"]
        hosts = [name]
        for sts in statefulsets:
            if sts["spec"].get("serviceName") == name and sts["metadata"]["namespace"] == svc_ns:
                hosts += [
                    f"{sts['metadata']['name']}-{ordinal}.{name}"
                    for ordinal in range(sts["spec"].get("replicas", 1))
                ]
        for host in hosts:
            if svc_ns == namespace:
                names.append(host)
            names += [f"{host}.{svc_ns}{suffix}" for suffix in DNS_SUFFIXES]
    return list(dict.fromkeys(names))


def own_hosts_lines(
    hostname: str | None, fqdn: str | None, aliases: list[dict], pod_ip: str
) -> list[str]:
    """Return the lines the kubelet writes in every pod's /etc/hosts: localhost, itself, aliases."""
    lines = [
        "# Kubernetes-managed hosts file (pod runner).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    if hostname:
        lines.append(f"{pod_ip}\t" + " ".join(n for n in (fqdn, hostname) if n))
    lines += [f"{alias['ip']}\t{' '.join(alias['hostnames'])}" for alias in aliases]
    return lines


def hosts_file_text(
    service_names: list[str],
    hostname: str | None,
    fqdn: str | None,
    aliases: list[dict],
    pod_ip: str = "127.0.0.1",
) -> str:
    """Return a pod's /etc/hosts (or a test client's when hostname is None).

    The pod's own names map to its pod IP, as the kubelet writes them; Service names map to the
    shared loopback (see the module docstring).
    """
    lines = own_hosts_lines(hostname, fqdn, aliases, pod_ip)
    for start in range(0, len(service_names), HOSTS_NAMES_PER_LINE):
        lines.append("127.0.0.1\t" + " ".join(service_names[start : start + HOSTS_NAMES_PER_LINE]))
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PodEndpoint:
    """What cluster DNS knows of one pod: where it is, what selects it, and whether it serves."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    hostname: str | None
    subdomain: str | None
    address: str
    ready: bool
    finished: bool


@dataclass(frozen=True, order=True)
class DnsRecord:
    """One A record: host (`svc` or `<hostname>.<svc>`) in namespace resolves to address."""

    namespace: str
    host: str
    address: str


def service_endpoints(service: dict, pods: Iterable[PodEndpoint]) -> list[PodEndpoint]:
    """Pods a Service's endpoints list, as the endpoints controller picks them, sorted by name.

    Selected by the Service's selector in its namespace, not finished, and ready; with
    publishNotReadyAddresses also unready and terminating pods (what headless Services of
    StatefulSets set so that members find each other before they are ready).
    """
    selector = service["spec"].get("selector") or {}
    if not selector:
        return []
    publish_unready = bool(service["spec"].get("publishNotReadyAddresses"))
    return sorted(
        (
            pod
            for pod in pods
            if pod.namespace == service["metadata"]["namespace"]
            and all(pod.labels.get(key) == value for key, value in selector.items())
            and not pod.finished
            and (pod.ready or publish_unready)
        ),
        key=lambda pod: pod.name,
    )


def dns_records(
    services: Iterable[dict], pods: Iterable[PodEndpoint], no_endpoints_address: str
) -> list[DnsRecord]:
    """Every A record cluster DNS would serve for these Services and pods (per-pod mode).

    - A headless Service (`clusterIP: None`) resolves to every endpoint's address, and each
      endpoint whose pod has `hostname` and `subdomain` = the Service's name gets its own
      `<hostname>.<service>` record (StatefulSet pods get both from their controller).
    - A ClusterIP Service has no virtual IP and no proxy here: it resolves to the address of ONE
      endpoint, the first by pod name, so a client reaches that pod; when there is none it
      resolves to no_endpoints_address (where nothing listens, so connections are refused as
      kube-proxy rejects them for a Service without endpoints).
    """
    pods = list(pods)
    records: set[DnsRecord] = set()
    for service in services:
        name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
        endpoints = service_endpoints(service, pods)
        if service["spec"].get("clusterIP") == "None":
            for pod in endpoints:
                records.add(DnsRecord(namespace, name, pod.address))
                if pod.hostname and pod.subdomain == name:
                    records.add(DnsRecord(namespace, f"{pod.hostname}.{name}", pod.address))
        else:
            address = endpoints[0].address if endpoints else no_endpoints_address
            records.add(DnsRecord(namespace, name, address))
    return sorted(records)


def pod_network_hosts_text(
    records: Iterable[DnsRecord],
    namespace: str | None,
    hostname: str | None,
    fqdn: str | None,
    aliases: list[dict],
    pod_ip: str,
) -> str:
    """Return a pod's /etc/hosts in per-pod mode (or a test client's when hostname is None).

    Names take the same forms as in the shared mode (`host.ns`, `.svc`, `.svc.cluster.local`,
    and the short `host` within the pod's own namespace); a name with several addresses (a
    headless Service) gets one line per address, which getaddrinfo returns all of.
    """
    by_address: dict[str, list[str]] = {}
    for record in records:
        names = by_address.setdefault(record.address, [])
        if record.namespace == namespace:
            names.append(record.host)
        names += [f"{record.host}.{record.namespace}{suffix}" for suffix in DNS_SUFFIXES]
    lines = own_hosts_lines(hostname, fqdn, aliases, pod_ip)
    for address, names in by_address.items():
        for start in range(0, len(names), HOSTS_NAMES_PER_LINE):
            lines.append(f"{address}\t" + " ".join(names[start : start + HOSTS_NAMES_PER_LINE]))
    return "\n".join(lines) + "\n"
