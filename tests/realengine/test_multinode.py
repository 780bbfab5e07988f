"""Three node agents on one real control plane: the real scheduler spreads, drains are real.

The harness's own proof, with small workloads (redis-server as a plain server, the host's sh):
required pod anti-affinity puts one pod per node; pods on different nodes reach each other by
their per-pod DNS names on the same port; `kubectl drain` goes through the Eviction API, which
the API server checks against the PodDisruptionBudget; the evicted pod's preStop runs, its
replacement waits Pending while no node may take it, and returns when the node is uncordoned,
with its volume. tests/realengine/test_sentinel_real.py does the same to the product's broker.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.podrunner import wait_until
from tests.realengine.multinode import NODE_NAMES, MultiNodeCluster
from tests.realengine.pod_network import node_pod_cidr, slice_records

pytestmark = pytest.mark.real_engine

NAMESPACE = "spread"
APP = "ring"
REDIS = "docker.io/library/redis:7.2.7"
DRAIN_TIMEOUT = 60
REFUSED_DRAIN_TIMEOUT = 12
"""kubectl retries a refused eviction every 5 s: two refusals, then it gives up."""


def ring_objects(namespace: str) -> list[dict]:
    """Return a headless Service, a PDB (one pod away at a time) and three servers.

    Each pod must run on a node of its own (required anti-affinity) and, when it is deleted,
    writes `prestop` to its claim before it stops: what a test reads after the pod returns.
    """
    labels = {"app": APP}
    server = [
        "redis-server", "--port", "6379", "--protected-mode", "no", "--save", "",
        "--appendonly", "no",
    ]  # fmt: skip
    pod_spec = {
        "terminationGracePeriodSeconds": 5,
        # A fresh volume is root's (0755); fsGroup opens it to the pod, as on a cluster.
        "securityContext": {"runAsUser": 10999, "fsGroup": 10999},
        "affinity": {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": labels},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        },
        "containers": [
            {
                "name": "server",
                "image": REDIS,
                "command": server,
                "readinessProbe": {"tcpSocket": {"port": 6379}, "periodSeconds": 1},
                "lifecycle": {
                    "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /data/events"]}}
                },
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }
        ],
    }
    claim = {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": APP, "namespace": namespace},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": labels,
                "ports": [{"name": "redis", "port": 6379}],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": APP, "namespace": namespace},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": APP, "namespace": namespace},
            "spec": {
                "serviceName": APP,
                "replicas": 3,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
                "volumeClaimTemplates": [claim],
            },
        },
    ]


def pods_by_name(nodes: MultiNodeCluster) -> dict[str, dict]:
    """Return the ring's pods as the API server has them."""
    items = nodes.api.list(f"/api/v1/namespaces/{NAMESPACE}/pods", labelSelector=f"app={APP}")
    return {p["metadata"]["name"]: p for p in items}


def is_ready(pod: dict) -> bool:
    """Return whether the pod's Ready condition is True."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def scheduled_condition(pod: dict) -> dict:
    """Return the pod's PodScheduled condition ({} before the scheduler looked at it)."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "PodScheduled"), {})


@pytest.fixture(scope="module")
def ring(three_nodes: MultiNodeCluster) -> dict[str, dict]:
    """Deploy the ring and wait until its three pods are Ready (the module's cluster dies after)."""
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": ring_objects(NAMESPACE)})
    three_nodes.control_plane.kubectl("apply", "-f", "-", stdin=manifest)
    return wait_until(  # type: ignore[return-value]
        lambda: (
            (found := pods_by_name(three_nodes))
            and len(found) == 3
            and all(is_ready(p) for p in found.values())
            and found
        ),
        90,
        "the ring's three pods Ready",
        three_nodes.describe,
        interval=0.5,
    )


def test_required_anti_affinity_puts_one_pod_on_each_node_and_they_reach_each_other(
    three_nodes: MultiNodeCluster, ring: dict[str, dict]
) -> None:
    placement = {name: pod["spec"]["nodeName"] for name, pod in ring.items()}
    assert sorted(placement.values()) == sorted(NODE_NAMES), f"not one per node: {placement}"
    for name, pod in ring.items():
        index = NODE_NAMES.index(placement[name]) + 1
        prefix = node_pod_cidr(index).rsplit(".", 2)[0] + "."
        assert pod["status"]["podIP"].startswith(prefix), (name, placement[name], pod["status"])
    # Every pod reaches every other by its per-pod name, all on port 6379, across nodes.
    for name in ring:
        local = three_nodes.pod(name, NAMESPACE)
        for other, pod in ring.items():
            host = f"{other}.{APP}.{NAMESPACE}.svc"
            reply = local.exec(["redis-cli", "-h", host, "-p", "6379", "ping"], timeout=10)
            assert reply.stdout.strip() == "PONG", f"{name} -> {host}: {reply}"
            looked_up = local.exec(["getent", "hosts", host]).stdout.split()
            assert looked_up[:1] == [pod["status"]["podIP"]], f"{name} resolves {host}: {looked_up}"
    # The headless Service's name resolves to every pod (what a client's getaddrinfo returns).
    answer = three_nodes.run_in_netns(["getent", "ahostsv4", f"{APP}.{NAMESPACE}.svc"])
    addresses = {line.split()[0] for line in answer.stdout.splitlines()}
    assert addresses == {p["status"]["podIP"] for p in ring.values()}, answer


def test_drain_evicts_through_the_pdb_and_the_pod_waits_for_a_free_node(
    three_nodes: MultiNodeCluster, ring: dict[str, dict]
) -> None:
    drained = ring[f"{APP}-1"]["spec"]["nodeName"]
    old_uid = ring[f"{APP}-1"]["metadata"]["uid"]
    result = three_nodes.drain(drained, DRAIN_TIMEOUT)
    assert result.returncode == 0, f"drain of {drained} failed:\n{result.stderr}"
    assert f"pod/{APP}-1 evicted" in result.stdout, result.stdout
    try:
        replacement = wait_until(
            lambda: (
                (p := pods_by_name(three_nodes).get(f"{APP}-1"))
                and p["metadata"]["uid"] != old_uid
                and scheduled_condition(p).get("reason") == "Unschedulable"
                and p
            ),
            30,
            "the replacement pod reported Unschedulable",
            three_nodes.describe,
            interval=0.5,
        )
        message = scheduled_condition(replacement)["message"]  # type: ignore[arg-type]
        assert "1 node(s) were unschedulable" in message, message
        assert "2 node(s) didn't match pod anti-affinity rules" in message, message
        time.sleep(3)
        still = pods_by_name(three_nodes)[f"{APP}-1"]
        assert not still["spec"].get("nodeName"), f"bound while no node may take it: {still}"
        # One pod is away: the PDB allows no second eviction, so a second drain cannot finish.
        other = ring[f"{APP}-2"]["spec"]["nodeName"]
        refused = three_nodes.drain(other, REFUSED_DRAIN_TIMEOUT, f"--pod-selector=app={APP}")
        three_nodes.uncordon(other)
        assert refused.returncode != 0, f"a second drain went through:\n{refused.stdout}"
        assert "violate the pod's disruption budget" in refused.stderr, refused.stderr
        kept = pods_by_name(three_nodes)[f"{APP}-2"]
        assert kept["metadata"]["uid"] == ring[f"{APP}-2"]["metadata"]["uid"], "evicted anyway"
        assert not kept["metadata"].get("deletionTimestamp"), kept["metadata"]
    finally:
        three_nodes.uncordon(drained)
    back = wait_until(
        lambda: (p := pods_by_name(three_nodes).get(f"{APP}-1")) and is_ready(p) and p,
        60,
        f"{APP}-1 Ready again after uncordon",
        three_nodes.describe,
        interval=0.5,
    )
    assert back["spec"]["nodeName"] == drained, back["spec"]  # type: ignore[index]
    events = three_nodes.pod(f"{APP}-1", NAMESPACE).exec(["cat", "/data/events"]).stdout
    assert events.split() == ["prestop"], f"the evicted pod's preStop, on its volume: {events!r}"


def test_cluster_dns_answers_from_endpoint_slices_as_coredns_does() -> None:
    """The records the three nodes' pods get, from Services and EndpointSlices alone."""

    def service(name: str, **spec: object) -> dict:
        return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec}

    def endpoint(pod: str, address: str, ready: bool | None, hostname: str = "") -> dict:
        found = {"addresses": [address], "targetRef": {"kind": "Pod", "name": pod}}
        if ready is not None:
            found["conditions"] = {"ready": ready}
        return {**found, **({"hostname": hostname} if hostname else {})}

    def slice_of(name: str, endpoints: list[dict], family: str = "IPv4") -> dict:
        labels = {"kubernetes.io/service-name": name}
        metadata = {"name": f"{name}-x", "namespace": "ns", "labels": labels}
        return {"metadata": metadata, "addressType": family, "endpoints": endpoints}

    services = [
        service("db", clusterIP="None"),
        service("web", clusterIP="10.96.0.10"),
        service("idle", clusterIP="10.96.0.11"),
        service("out", type="ExternalName", externalName="example.org"),
    ]
    slices = [
        slice_of("db", [endpoint("db-0", "10.244.1.2", True, "db-0")]),
        slice_of("db", [endpoint("db-1", "10.244.2.2", None, "db-1")]),
        slice_of("db", [endpoint("db-2", "10.244.3.2", False, "db-2")]),
        slice_of("db", [endpoint("db-3", "fd00::3", True, "db-3")], family="IPv6"),
        slice_of(
            "web", [endpoint("web-b", "10.244.2.9", True), endpoint("web-a", "10.244.1.9", True)]
        ),
    ]
    records = {(r.host, r.address) for r in slice_records(services, slices, "10.244.0.1")}
    assert records == {
        ("db", "10.244.1.2"),  # headless: every ready endpoint (unset means ready)
        ("db", "10.244.2.2"),
        ("db-0.db", "10.244.1.2"),  # and each endpoint's hostname
        ("db-1.db", "10.244.2.2"),
        ("web", "10.244.1.9"),  # no proxy: the first ready endpoint by pod name
        ("idle", "10.244.0.1"),  # no endpoint: the gateway, where nothing listens
    }, records
