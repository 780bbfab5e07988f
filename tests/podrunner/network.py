"""How pods find Services by name: every name resolves to 127.0.0.1 through a per-pod /etc/hosts.

All pods of one node share one network namespace, so a Service needs no proxy: its name
resolving to the shared loopback reaches whichever pod listens on the target port. The local
cluster and the node agent of the real-engine tests both write pods' hosts files from here, each
from its own list of Services and StatefulSets (manifests, or objects read from an API server).
"""

from __future__ import annotations

from collections.abc import Iterable

HOSTS_NAMES_PER_LINE = 8


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
            names += [f"{host}.{svc_ns}{suffix}" for suffix in ("", ".svc", ".svc.cluster.local")]
    return list(dict.fromkeys(names))


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
    lines = [
        "# Kubernetes-managed hosts file (pod runner).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    if hostname:
        lines.append(f"{pod_ip}\t" + " ".join(n for n in (fqdn, hostname) if n))
    lines += [f"{alias['ip']}\t{' '.join(alias['hostnames'])}" for alias in aliases]
    for start in range(0, len(service_names), HOSTS_NAMES_PER_LINE):
        lines.append("127.0.0.1\t" + " ".join(service_names[start : start + HOSTS_NAMES_PER_LINE]))
    return "\n".join(lines) + "\n"
