"""Container environment exactly as the kubelet builds it, and `$(VAR)` expansion.

Order (kubelet `makeEnvironmentVariables`): Service link variables of the pod's namespace
(when enableServiceLinks), then `envFrom` sources in order, then `env` entries in order; later
entries win. `env[].value` is expanded against the variables defined so far; `command` and
`args` are expanded against the final environment. Missing keys of non-optional references fail
the container start (CreateContainerConfigError).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from .errors import ContainerConfigError, UnsupportedManifest


class ConfigStore(Protocol):
    """Where ConfigMap and Secret contents come from (the local cluster's object store)."""

    def config_map_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """Return a ConfigMap's data and binaryData, or None if it does not exist."""

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """Return a Secret's data (placeholders substituted), or None if it does not exist."""


def text(value: bytes) -> str:
    """Decode a ConfigMap/Secret value for an environment variable."""
    return value.decode("utf-8", "replace")


@dataclass(frozen=True)
class PodIdentity:
    """The downward-API facts about a pod that `fieldRef` can read."""

    name: str
    namespace: str
    uid: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    service_account: str
    pod_ip: str = "127.0.0.1"
    node_name: str = "podrunner-node"
    host_ip: str = "127.0.0.1"


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Expand `$(VAR)` like Kubernetes: unknown names stay literal, `$$` yields `$`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$" or i + 1 >= len(text):
            out.append(text[i])
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(":
            close = text.find(")", i + 2)
            if close == -1:
                out.append("$(")
                i += 2
                continue
            name = text[i + 2 : close]
            out.append(variables.get(name, f"$({name})"))
            i = close + 1
        else:
            out.append("$" + following)
            i += 2
    return "".join(out)


def service_link_variables(
    services: list[dict], address: Callable[[dict], str] | None = None
) -> dict[str, str]:
    """Docker-links-style variables the kubelet injects for each ClusterIP Service.

    address gives a Service's address (the ClusterIP in Kubernetes): the shared loopback
    unless told otherwise; the per-pod network mode passes the address the Service's name
    resolves to when the container starts.
    """
    env: dict[str, str] = {}
    for service in services:
        spec = service.get("spec", {})
        if spec.get("clusterIP") == "None" or not spec.get("ports"):
            continue
        host = address(service) if address else "127.0.0.1"
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        env[f"{prefix}_SERVICE_HOST"] = host
        first = spec["ports"][0]
        env[f"{prefix}_SERVICE_PORT"] = str(first["port"])
        env[f"{prefix}_PORT"] = f"tcp://{host}:{first['port']}"
        for port in spec["ports"]:
            protocol = port.get("protocol", "TCP")
            if "name" in port:
                env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(
                    port["port"]
                )
            base = f"{prefix}_PORT_{port['port']}_{protocol}"
            env[base] = f"{protocol.lower()}://{host}:{port['port']}"
            env[f"{base}_PROTO"] = protocol.lower()
            env[f"{base}_PORT"] = str(port["port"])
            env[f"{base}_ADDR"] = host
    return env


QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
SUFFIX = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(value: str | int | float, where: str) -> float:
    """Parse a Kubernetes resource quantity (`500m`, `128Mi`, `2`)."""
    match = QUANTITY.match(str(value))
    if not match:
        msg = f"{where}: cannot parse quantity {value!r}"
        raise UnsupportedManifest(msg)
    return float(match.group(1)) * SUFFIX[match.group(2)]


def node_allocatable(resource: str) -> float:
    """Return what the kubelet reports for a resource without a limit: the node's capacity."""
    if resource == "cpu":
        return float(os.cpu_count() or 1)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def resource_field(container: dict, ref: dict, where: str) -> str:
    """Resolve `resourceFieldRef` (limits/requests of cpu/memory, divided and rounded up)."""
    kind, _, resource = ref["resource"].partition(".")
    if kind not in ("limits", "requests") or resource not in ("cpu", "memory"):
        msg = f"{where}: resourceFieldRef {ref['resource']!r} not supported"
        raise UnsupportedManifest(msg)
    declared = container.get("resources", {}).get(kind, {}).get(resource)
    if declared is None and kind == "requests":
        declared = container.get("resources", {}).get("limits", {}).get(resource)
    amount = parse_quantity(declared, where) if declared is not None else node_allocatable(resource)
    divisor = parse_quantity(ref.get("divisor", "1"), where)
    return str(math.ceil(amount / divisor))


def field_ref(pod: PodIdentity, path: str, where: str) -> str:
    """Resolve a downward-API `fieldRef.fieldPath`."""
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "metadata.uid": pod.uid,
        "spec.nodeName": pod.node_name,
        "spec.serviceAccountName": pod.service_account,
        "status.podIP": pod.pod_ip,
        "status.podIPs": pod.pod_ip,
        "status.hostIP": pod.host_ip,
        "status.hostIPs": pod.host_ip,
    }
    if path in simple:
        return simple[path]
    keyed = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if keyed:
        source = pod.labels if keyed.group(1) == "labels" else pod.annotations
        return source.get(keyed.group(2), "")
    msg = f"{where}: fieldRef.fieldPath {path!r} is not supported"
    raise UnsupportedManifest(msg)


def key_ref(store: ConfigStore, namespace: str, ref: dict, kind: str, where: str) -> str | None:
    """Resolve configMapKeyRef / secretKeyRef; None when optional and missing."""
    lookup = store.secret_data if kind == "Secret" else store.config_map_data
    data = lookup(namespace, ref["name"])
    if data is not None and ref["key"] in data:
        return text(data[ref["key"]])
    if ref.get("optional", False):
        return None
    what = f"{kind} {namespace}/{ref['name']}"
    missing = f"key {ref['key']!r} not found in {what}" if data is not None else f"{what} not found"
    msg = f"{where}: {missing}"
    raise ContainerConfigError(msg)


def env_from_sources(
    store: ConfigStore, namespace: str, sources: list[dict], where: str
) -> dict[str, str]:
    """Collect `envFrom` ConfigMaps/Secrets (with prefix), later sources winning."""
    env: dict[str, str] = {}
    for index, source in enumerate(sources):
        here = f"{where}.envFrom[{index}]"
        kind, ref = (
            ("Secret", source["secretRef"])
            if "secretRef" in source
            else ("ConfigMap", source["configMapRef"])
        )
        lookup = store.secret_data if kind == "Secret" else store.config_map_data
        data = lookup(namespace, ref["name"])
        if data is None:
            if ref.get("optional", False):
                continue
            msg = f"{here}: {kind} {namespace}/{ref['name']} not found"
            raise ContainerConfigError(msg)
        env.update({source.get("prefix", "") + key: text(value) for key, value in data.items()})
    return env


def value_from(
    store: ConfigStore, pod: PodIdentity, container: dict, source: dict, where: str
) -> str | None:
    """Resolve one `env[].valueFrom`; None means "leave the variable unset"."""
    if "secretKeyRef" in source:
        return key_ref(store, pod.namespace, source["secretKeyRef"], "Secret", where)
    if "configMapKeyRef" in source:
        return key_ref(store, pod.namespace, source["configMapKeyRef"], "ConfigMap", where)
    if "fieldRef" in source:
        return field_ref(pod, source["fieldRef"]["fieldPath"], where)
    if "resourceFieldRef" in source:
        return resource_field(container, source["resourceFieldRef"], where)
    msg = f"{where}.valueFrom: unsupported source {sorted(source)}"
    raise UnsupportedManifest(msg)


def container_environment(
    store: ConfigStore,
    pod: PodIdentity,
    container: dict,
    service_links: Mapping[str, str],
    where: str,
) -> dict[str, str]:
    """Build the environment the kubelet passes (image ENV is merged under it by the runtime).

    The result is also what `$(VAR)` in command/args expands against: image ENV is not, since
    the kubelet never sees it.
    """
    env = dict(service_links)
    env.update(env_from_sources(store, pod.namespace, container.get("envFrom", []), where))
    for index, entry in enumerate(container.get("env", [])):
        here = f"{where}.env[{index}] ({entry['name']})"
        if "valueFrom" in entry:
            resolved = value_from(store, pod, container, entry["valueFrom"], here)
            if resolved is None:
                continue
            env[entry["name"]] = resolved
        else:
            env[entry["name"]] = expand(str(entry.get("value", "")), env)
    return env
