"""Self-tests of the per-pod network mode: pods with their own addresses, DNS, partitions.

The workload is real redis-server (Debian's package): a StatefulSet whose pod 0 is a master and
whose pod 1 replicates from it by the per-pod hostname Kubernetes gives StatefulSet pods behind
a headless Service, both listening on the same port in their own namespaces. Replication, a
partition and its healing, a recreated pod and a kill -9 are observed from inside the pods and
from the test process. The DNS rules are pure functions, checked first on their own.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.podrunner import Backoff, LocalCluster, LocalImage, Pod, PodRunnerError, wait_until
from tests.podrunner.network import (
    DnsRecord,
    PodEndpoint,
    dns_records,
    pod_network_hosts_text,
)

NS = "podnet-test"
IMAGES = {"redis": LocalImage(entrypoint=("redis-server",), cmd=())}
FAST = Backoff(initial=0.2, cap=1.0)
MASTER = f"redis-0.redis-headless.{NS}.svc.cluster.local"
REPLICA = f"redis-1.redis-headless.{NS}.svc.cluster.local"
# Short replication timers so a cut link shows within seconds; diskless sync without its 5 s
# wait for more replicas; no persistence (a restarted master starts empty).
REDIS_ARGS = (
    '--port 6379 --bind 0.0.0.0 --protected-mode no --save "" --dir /tmp '
    "--repl-ping-replica-period 1 --repl-timeout 2 --repl-diskless-sync-delay 0"
)
# Ordinal 0 is the master; the others replicate from it by its per-pod hostname.
START_REDIS = (
    f"args='{REDIS_ARGS}'\n"
    'case "$(hostname)" in\n'
    '  *-0) eval exec redis-server "$args" ;;\n'
    f'  *) eval exec redis-server "$args" --replicaof {MASTER} 6379 ;;\n'
    "esac\n"
)
# The pod hands over before it stops: it tells the master over the network who is leaving.
HAND_OVER = f'redis-cli -h {MASTER} set handed-over-by "$(hostname)"'


def obj(kind: str, name: str, spec: dict, api: str = "v1") -> dict:
    """Build a Kubernetes object in the test namespace."""
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def redis_statefulset() -> list[dict]:
    """Two redis-server pods (uid 999) behind a headless Service and a ClusterIP Service."""
    container = {
        "name": "redis",
        "image": "redis",
        "command": ["sh", "-c", START_REDIS],
        "ports": [{"name": "redis", "containerPort": 6379}],
        "securityContext": {"runAsUser": 999, "runAsGroup": 999, "runAsNonRoot": True},
        "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 1},
        "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", HAND_OVER]}}},
    }
    selector = {"app": "redis"}
    ports = [{"name": "redis", "port": 6379}]
    template = {
        "metadata": {"labels": selector},
        "spec": {"terminationGracePeriodSeconds": 3, "containers": [container]},
    }
    return [
        # Members must find each other before they are ready, as Redis/Sentinel charts do.
        obj(
            "Service",
            "redis-headless",
            {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": selector,
                "ports": ports,
            },
        ),
        obj("Service", "redis", {"selector": selector, "ports": ports}),
        obj(
            "StatefulSet",
            "redis",
            {
                "serviceName": "redis-headless",
                "replicas": 2,
                "selector": {"matchLabels": selector},
                "template": template,
            },
            api="apps/v1",
        ),
    ]


def per_pod_cluster(**kwargs: object) -> LocalCluster:
    """Build a cluster of the redis StatefulSet in the per-pod network mode."""
    return LocalCluster(
        redis_statefulset(), images=IMAGES, backoff=FAST, network="per-pod", **kwargs
    )  # type: ignore[arg-type]


def replication(pod: Pod) -> dict[str, str]:
    """INFO replication of the redis-server in a pod, asked on the pod's own loopback."""
    result = pod.exec(["redis-cli", "info", "replication"], timeout=5)
    assert result.returncode == 0, f"redis-cli in {pod.name}: {result}"
    return dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)


def link_status(pod: Pod) -> str:
    """Return the replica's master_link_status: up or down."""
    return replication(pod).get("master_link_status", "")


def resolve(pod: Pod, name: str) -> list[str]:
    """IPv4 addresses a name resolves to inside a pod (its /etc/hosts, via getaddrinfo)."""
    result = pod.exec(["getent", "ahostsv4", name], timeout=5)
    return sorted({line.split()[0] for line in result.stdout.splitlines()})


def client(cluster: LocalCluster, pod: str) -> redis.Redis:
    """Connect from the test process to one pod; wait 2 s at most, never retry."""
    return redis.Redis(
        port=cluster.pod_port(pod, 6379),
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


def names_in(listing: str) -> set[str]:
    """Interface or namespace names of `ip link` / `ip netns list` output."""
    return set(re.findall(r"^(?:\d+: )?([^\s:@]+)", listing, flags=re.MULTILINE))


def run(argv: list[str]) -> str:
    """Output of a host command."""
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout


# -- DNS rules: pure functions --------------------------------------------------------------
def endpoint(name: str, address: str, ready: bool = True, **fields: object) -> PodEndpoint:
    """Describe a StatefulSet-like pod of app=redis in NS for the DNS rules."""
    defaults = {
        "namespace": NS,
        "labels": {"app": "redis"},
        "hostname": name,
        "subdomain": "redis-headless",
        "finished": False,
    }
    return PodEndpoint(name=name, address=address, ready=ready, **{**defaults, **fields})  # type: ignore[arg-type]


def test_dns_records_follow_kubernetes_endpoint_rules() -> None:
    services = [s for s in redis_statefulset() if s["kind"] == "Service"]
    strict = {**services[0], "metadata": {"name": "strict", "namespace": NS}}
    strict["spec"] = {**services[0]["spec"], "publishNotReadyAddresses": False}
    pods = [
        endpoint("redis-1", "10.9.0.3"),
        endpoint("redis-0", "10.9.0.2", ready=False),
        endpoint("redis-2", "10.9.0.4", finished=True),
        endpoint("other", "10.9.0.5", labels={"app": "other"}),
        endpoint("strict-0", "10.9.0.6", subdomain="strict"),
    ]
    records = dns_records([*services, strict], pods, "10.9.0.1")
    by_host: dict[str, list[str]] = {}
    for record in records:
        by_host.setdefault(record.host, []).append(record.address)
    assert by_host == {
        # publishNotReadyAddresses: the unready pod is listed; the finished one never is.
        "redis-headless": ["10.9.0.2", "10.9.0.3", "10.9.0.6"],
        "redis-0.redis-headless": ["10.9.0.2"],
        "redis-1.redis-headless": ["10.9.0.3"],
        # ClusterIP: one endpoint (ready only, first by name), no virtual IP.
        "redis": ["10.9.0.3"],
        # Without publishNotReadyAddresses only ready pods; per-pod names need subdomain=svc.
        "strict": ["10.9.0.3", "10.9.0.6"],
        "strict-0.strict": ["10.9.0.6"],
    }, records
    nobody = dns_records(services, [endpoint("redis-0", "10.9.0.2", ready=False)], "10.9.0.1")
    assert DnsRecord(NS, "redis", "10.9.0.1") in nobody, (
        "a ClusterIP Service without ready endpoints resolves where connections are refused"
    )


def test_hosts_text_gives_short_names_only_within_the_namespace() -> None:
    records = [DnsRecord(NS, "redis", "10.9.0.3"), DnsRecord("elsewhere", "db", "10.9.0.7")]
    text = pod_network_hosts_text(
        records, NS, "app-0", "app-0.sub.x.svc.cluster.local", [], "10.9.0.9"
    )
    lines = text.splitlines()
    assert "10.9.0.9\tapp-0.sub.x.svc.cluster.local app-0" in lines
    assert f"10.9.0.3\tredis redis.{NS} redis.{NS}.svc redis.{NS}.svc.cluster.local" in lines
    assert "10.9.0.7\tdb.elsewhere db.elsewhere.svc db.elsewhere.svc.cluster.local" in lines


# -- real pods ------------------------------------------------------------------------------
def test_pods_have_own_addresses_and_replicate_by_per_pod_hostname() -> None:
    with per_pod_cluster() as cluster:
        cluster.start()
        master, replica = cluster.wait_ready("StatefulSet", "redis", timeout=20)
        assert master.ip != replica.ip, "each pod has its own address"
        assert all(ip.startswith("10.244.0.") for ip in (master.ip, replica.ip))
        for pod in (master, replica):
            assert resolve(pod, MASTER) == [master.ip], pod.describe()
            assert resolve(pod, REPLICA) == [replica.ip], pod.describe()
            assert resolve(pod, "redis-headless") == sorted([master.ip, replica.ip])
            assert resolve(pod, "redis") in ([master.ip], [replica.ip]), "one ready pod"
        # Both listen on 6379, each in its own namespace; the replica found the master by name.
        wait_until(lambda: link_status(replica) == "up", 10, "replication", replica.describe)
        assert replication(replica)["master_host"] == MASTER
        assert replication(master)["slave0"].startswith(f"ip={replica.ip},port=6379,")
        client(cluster, "redis-0").set("written-on", "master")
        wait_until(
            lambda: client(cluster, "redis-1").get("written-on") == b"master",
            5,
            "the write to reach the replica",
            replica.describe,
        )
        in_hub = cluster.run_in_netns(["redis-cli", "-h", REPLICA, "get", "written-on"])
        assert in_hub.stdout.strip() == "master", in_hub
        service = redis.Redis(port=cluster.host_port("redis", "redis"), socket_timeout=2)
        assert service.get("written-on") == b"master", "the Service forward reaches a pod"
        # Service links name the pod the Service resolved to when the container started:
        # only the master was ready when the replica started (OrderedReady).
        links = replica.exec(["sh", "-c", 'echo "$REDIS_SERVICE_HOST $REDIS_PORT"'])
        assert links.stdout.split() == [master.ip, f"tcp://{master.ip}:6379"], links


def test_partition_cuts_replication_and_writes_and_heal_restores_them() -> None:
    with per_pod_cluster() as cluster:
        cluster.start()
        master, replica = cluster.wait_ready("StatefulSet", "redis", timeout=20)
        wait_until(lambda: link_status(replica) == "up", 10, "replication", replica.describe)
        from_outside = client(cluster, "redis-0")
        assert from_outside.ping(), "connected before the partition"
        with cluster.partitioned(master):
            with pytest.raises(redis.TimeoutError):
                from_outside.set("during", "partition")  # the open connection hangs
            wait_until(
                lambda: link_status(replica) == "down", 10, "the link to drop", replica.describe
            )
            from_replica = replica.exec(
                ["timeout", "3", "redis-cli", "-h", MASTER, "set", "from-replica", "x"], timeout=6
            )
            assert from_replica.returncode != 0, f"the replica reached the master: {from_replica}"
            # The master itself runs on: it takes a write on its own loopback.
            assert master.exec(["redis-cli", "set", "while-cut-off", "yes"]).stdout == "OK\n"
            wait_until(
                lambda: replication(master)["connected_slaves"] == "0",
                10,
                "the master to drop its replica",
                master.describe,
            )
        wait_until(lambda: link_status(replica) == "up", 15, "the link back", replica.describe)
        assert client(cluster, "redis-1").get("while-cut-off") == b"yes", "resynced after heal"
        assert client(cluster, "redis-0").get("from-replica") is None, "that write never arrived"


def test_recreated_pod_gets_a_new_address_that_hosts_files_follow() -> None:
    with per_pod_cluster() as cluster:
        cluster.start()
        master, replica = cluster.wait_ready("StatefulSet", "redis", timeout=20)
        old_address = replica.ip
        replica.delete(timeout=15)  # graceful: its preStop hands over through the network
        assert client(cluster, "redis-0").get("handed-over-by") == b"redis-1", replica.describe()
        (new_replica,) = [
            p for p in cluster.wait_ready("StatefulSet", "redis", 20) if p is not master
        ]
        assert new_replica.ip != old_address, "a recreated pod gets a new address"
        wait_until(
            lambda: resolve(master, REPLICA) == [new_replica.ip],
            5,
            "the master's /etc/hosts to follow the new address",
            lambda: master.exec(["cat", "/etc/hosts"]).stdout,
        )
        wait_until(
            lambda: link_status(new_replica) == "up", 10, "replication", new_replica.describe
        )
        assert replication(master)["slave0"].startswith(f"ip={new_replica.ip},")
        # kill -9 of everything in the master: restarted in place, same address, empty (no
        # persistence); the replica reconnects by name and follows it.
        master.kill_containers(signal.SIGKILL)
        wait_until(
            lambda: master.restart_count == 1 and master.ready, 10, "restart", master.describe
        )
        assert resolve(new_replica, MASTER) == [master.ip]
        wait_until(
            lambda: link_status(new_replica) == "up", 15, "replication", new_replica.describe
        )
        assert client(cluster, "redis-1").get("handed-over-by") is None, "resynced from empty"


def test_parallel_clusters_share_a_subnet_and_leave_nothing_even_after_a_failure() -> None:
    ours: list[str] = []

    def fail_mid_way() -> None:
        with per_pod_cluster() as first, per_pod_cluster() as second:
            first.start()
            second.start()
            pods_a = first.wait_ready("StatefulSet", "redis", timeout=20)
            pods_b = second.wait_ready("StatefulSet", "redis", timeout=20)
            ours.extend([first.netns.name, second.netns.name])
            ours.extend(p.netns.name for p in [*pods_a, *pods_b])
            assert set(ours) <= names_in(run(["ip", "netns", "list"]))
            assert [p.ip for p in pods_a] == [p.ip for p in pods_b], "same subnet, own bridges"
            client(first, "redis-0").set("cluster", "first")
            assert client(second, "redis-0").get("cluster") is None, "each reaches its own pods"
            msg = "mid-test failure"
            raise RuntimeError(msg)

    with pytest.raises(RuntimeError, match="mid-test failure"):
        fail_mid_way()
    assert len(ours) == 6, "two hubs and four pod namespaces existed"
    assert not names_in(run(["ip", "netns", "list"])) & set(ours)
    assert not any(Path(f"/run/netns/{name}").exists() for name in ours)
    host_links = names_in(run(["ip", "link"]))
    leaked = {name for name in host_links if name == "podbr0" or re.fullmatch(r"pod\d+", name)}
    assert not leaked, f"bridge or veth ends in the host's namespace: {leaked}"


def test_shared_mode_refuses_partitions_naming_the_mode_they_need() -> None:
    with LocalCluster(redis_statefulset(), images=IMAGES) as cluster:
        with pytest.raises(PodRunnerError, match=r"needs LocalCluster\(network='per-pod'\)"):
            cluster.partition("redis-0")
