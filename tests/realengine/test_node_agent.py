"""The node agent on a real control plane: the real controllers and scheduler, pods that really run.

One control plane and one node serve the whole module (each test has its own namespace). Every
fact is read back from the API server, as a controller or `kubectl` would see it, and, where it
is about a process, from inside the pod. Images are host executables: `sh` from the host for a
busybox-like image.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from tests.podrunner import Backoff, LocalImage, wait_until
from tests.realengine.controlplane import ControlPlane
from tests.realengine.node_agent import NodeAgent

pytestmark = pytest.mark.real_engine

IMAGES = {
    "busybox": LocalImage(entrypoint=(), cmd=("sh",)),
    "redis": LocalImage(entrypoint=("redis-server",), cmd=()),
}
NODE_MONITOR_GRACE_SECONDS = 50
"""kube-controller-manager's --node-monitor-grace-period default: NotReady after this long."""

# A shell that exits on SIGTERM (PID 1 ignores signals it has no handler for).
SERVE = "trap 'exit 0' TERM; touch /tmp/ready; while true; do sleep 0.2; done"
WRITE_ONCE = "test -f /data/first || cat /proc/sys/kernel/random/uuid > /data/first"


class Cluster:
    """The control plane and its node, with the few calls the tests make."""

    def __init__(self, control_plane: ControlPlane, node: NodeAgent) -> None:
        """Keep both; started is when the node registered (for the node-health test)."""
        self.control_plane = control_plane
        self.node = node
        self.started = time.monotonic()

    def apply(self, *objects: dict) -> None:
        """`kubectl apply` objects, as a user would."""
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        self.control_plane.kubectl("apply", "-f", "-", stdin=manifest)

    def get(self, path: str) -> dict:
        """Read an object from the API server (it must exist)."""
        found = self.node.api.get(path)
        assert found is not None, f"{path} does not exist"
        return found

    def pods(self, namespace: str, selector: str = "") -> list[dict]:
        """Pods of a namespace (optionally by label selector), as the API server has them."""
        query = {"labelSelector": selector} if selector else {}
        return self.node.api.list(f"/api/v1/namespaces/{namespace}/pods", **query)

    def wait(self, condition: Callable[[], object], timeout: float, what: str) -> object:
        """Poll until condition holds; the failure message shows the node's pods."""
        return wait_until(condition, timeout, what, self.node.describe, interval=0.2)

    def namespace(self, name: str) -> str:
        """Create a namespace (and wait for its default ServiceAccount, which pods need)."""
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        self.wait(
            lambda: self.node.api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
            30,
            f"the default ServiceAccount of {name}",
        )
        return name


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Yield a real control plane with one node agent and a StorageClass it provisions."""
    root = tmp_path_factory.mktemp("node-agent")
    with (
        ControlPlane(root / "control-plane") as control_plane,
        NodeAgent(
            control_plane, IMAGES, root / "node", backoff=Backoff(initial=0.2, cap=1.0)
        ) as node,
    ):
        node.create_storage_class("standard")
        yield Cluster(control_plane, node)


def deployment(
    name: str, namespace: str, container: dict, replicas: int = 1, **pod_spec: object
) -> dict:
    """Return a Deployment of one container, labelled app=name, with a short grace period."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "main", "image": "busybox:1.36", **container}],
                    **pod_spec,
                },
            },
        },
    }


def shell(script: str, **fields: object) -> dict:
    """Return a container running a shell script (and the fields given)."""
    return {"command": ["sh", "-c", script], **fields}


def ready_probe(command: str) -> dict:
    """Return a fast exec readiness probe."""
    return {"exec": {"command": ["sh", "-c", command]}, "periodSeconds": 1, "failureThreshold": 1}


def condition_of(obj: dict, kind: str) -> str | None:
    """Return the status ("True"/"False") of a condition of an object, or None."""
    for entry in (obj.get("status") or {}).get("conditions") or []:
        if entry["type"] == kind:
            return entry["status"]
    return None


def test_deployment_becomes_available_with_real_pod_status(cluster: Cluster) -> None:
    """Scheduler binds, the node runs, probes pass, the Deployment controller sees Available."""
    ns = cluster.namespace("available")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]},
    }
    container = shell(SERVE, readinessProbe=ready_probe("test -f /tmp/ready"))
    cluster.apply(deployment("web", ns, container, replicas=2), service)
    cluster.wait(
        lambda: (
            condition_of(cluster.get(f"/apis/apps/v1/namespaces/{ns}/deployments/web"), "Available")
            == "True"
            and cluster.get(f"/apis/apps/v1/namespaces/{ns}/deployments/web")["status"].get(
                "readyReplicas"
            )
            == 2
        ),
        60,
        "Deployment web Available with 2 ready replicas",
    )
    pods = cluster.pods(ns, "app=web")
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    ips = set()
    for pod in pods:
        status = pod["status"]
        assert status["phase"] == "Running", status
        assert status["podIP"].startswith("10.244."), status
        ips.add(status["podIP"])
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
            assert condition_of(pod, kind) == "True", (kind, status["conditions"])
        (main,) = status["containerStatuses"]
        assert main["ready"], main
        assert main["started"], main
        assert "running" in main["state"], main
        assert main["restartCount"] == 0, main
        local = cluster.node.pod(pod["metadata"]["name"], ns)
        assert local.exec(["sh", "-c", "test -f /tmp/ready"]).returncode == 0
    assert len(ips) == 2, f"each pod has its own IP: {ips}"
    account = "/var/run/secrets/kubernetes.io/serviceaccount"
    token = local.exec(["sh", "-c", f"cat {account}/namespace; test -s {account}/token"])
    assert (token.returncode, token.stdout) == (0, ns), (
        f"a projected service-account token: {token}"
    )
    slices = cluster.node.api.list(
        f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
        labelSelector="kubernetes.io/service-name=web",
    )
    addresses = {a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]}
    assert addresses == ips, f"the Service's endpoints are the pods' IPs: {slices}"


def test_failing_readiness_probe_keeps_the_deployment_unavailable(cluster: Cluster) -> None:
    """A pod failing its readiness probe runs but is never Ready; no replica is available."""
    ns = cluster.namespace("unready")
    container = shell(SERVE, readinessProbe=ready_probe("test -f /tmp/never"))
    cluster.apply(deployment("stuck", ns, container))

    def running_pod() -> dict | None:
        pods = cluster.pods(ns, "app=stuck")
        statuses = pods[0]["status"].get("containerStatuses") if pods else None
        return pods[0] if statuses and "running" in statuses[0]["state"] else None

    pod = cluster.wait(running_pod, 60, "the pod running")
    time.sleep(4)  # several probe periods
    pod = cluster.get(f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}")  # type: ignore[index]
    assert condition_of(pod, "Ready") == "False", pod["status"]
    (main,) = pod["status"]["containerStatuses"]
    assert main["started"], main
    assert not main["ready"], main
    dep = cluster.get(f"/apis/apps/v1/namespaces/{ns}/deployments/stuck")
    assert not dep["status"].get("readyReplicas"), dep["status"]
    assert condition_of(dep, "Available") == "False", dep["status"]


def test_deleting_a_pod_honours_pre_stop_and_grace_and_the_replicaset_replaces_it(
    cluster: Cluster,
) -> None:
    """preStop, then SIGTERM (ignored here), SIGKILL after the grace period, then a new pod."""
    ns = cluster.namespace("deletion")
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "events", "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
    }
    # The container records what happens to it on a claim, which outlives the pod.
    script = (
        "trap 'echo term >> /events/log' TERM; echo start >> /events/log; "
        "while true; do sleep 0.1; done"
    )
    container = shell(
        script,
        lifecycle={"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /events/log"]}}},
        volumeMounts=[{"name": "events", "mountPath": "/events"}],
    )
    spec = deployment(
        "graceful",
        ns,
        container,
        volumes=[{"name": "events", "persistentVolumeClaim": {"claimName": "events"}}],
    )
    spec["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 3
    cluster.apply(claim, spec)
    cluster.wait(
        lambda: [p for p in cluster.pods(ns) if condition_of(p, "Ready") == "True"],
        60,
        "the first pod Ready",
    )
    (first,) = cluster.pods(ns)
    name, uid = first["metadata"]["name"], first["metadata"]["uid"]
    began = time.monotonic()
    cluster.control_plane.kubectl("delete", "pod", "-n", ns, name, "--wait=true", timeout=60)
    took = time.monotonic() - began
    assert 2.5 <= took <= 10, f"deletion took {took:.1f}s with a 3s grace period the pod ignores"

    def replacement() -> dict | None:
        pods = [p for p in cluster.pods(ns) if p["metadata"]["uid"] != uid]
        return pods[0] if pods and condition_of(pods[0], "Ready") == "True" else None

    new = cluster.wait(replacement, 60, "a Ready replacement pod")
    replacement_pod = cluster.node.pod(new["metadata"]["name"], ns)  # type: ignore[index]
    lines = replacement_pod.exec(["cat", "/events/log"]).stdout.split()
    # The replacement starts while the old pod terminates, so its "start" may come anywhere.
    old = [line for line in lines if line != "start"]
    assert old == ["prestop", "term"], f"preStop, then SIGTERM, in the old pod: {lines}"
    assert lines.count("start") == 2, f"the replacement started: {lines}"


def job(name: str, namespace: str, script: str) -> dict:
    """Return a Job of one shell container that runs once (no retries)."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "image": "busybox", "command": ["sh", "-c", script]}
                    ],
                }
            },
        },
    }


def test_job_pods_exit_codes_complete_or_fail_their_jobs(cluster: Cluster) -> None:
    """Exit 0 ends the pod Succeeded and the Job Complete; exit 1 ends both Failed."""
    ns = cluster.namespace("jobs")
    cluster.apply(job("passes", ns, "echo fine"), job("fails", ns, "echo broken; exit 1"))

    def finished(name: str) -> dict | None:
        found = cluster.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
        done = "True" in (condition_of(found, "Complete"), condition_of(found, "Failed"))
        return found if done else None

    passed = cluster.wait(lambda: finished("passes"), 60, "Job passes to finish")
    logs = cluster.control_plane.kubectl("logs", "-n", ns, "job/passes", timeout=30).stdout
    assert logs == "fine\n", f"kubectl logs reaches the node's log endpoint: {logs!r}"
    failed = cluster.wait(lambda: finished("fails"), 60, "Job fails to finish")
    assert condition_of(passed, "Complete") == "True", passed["status"]  # type: ignore[arg-type]
    assert condition_of(failed, "Failed") == "True", failed["status"]  # type: ignore[arg-type]
    for name, phase, code, reason in (
        ("passes", "Succeeded", 0, "Completed"),
        ("fails", "Failed", 1, "Error"),
    ):
        (pod,) = cluster.pods(ns, f"job-name={name}")
        assert pod["status"]["phase"] == phase, pod["status"]
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (code, reason), terminated


def test_claim_binds_and_its_data_survives_pod_replacement(cluster: Cluster) -> None:
    """A StatefulSet's claim binds through the node's provisioner; data outlives the pod."""
    ns = cluster.namespace("storage")
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": ns},
        "spec": {
            "serviceName": "db",
            "replicas": 1,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsUser": 10001, "fsGroup": 10001},
                    "containers": [
                        {
                            "name": "main",
                            "image": "busybox",
                            "command": [
                                "sh",
                                "-c",
                                f"{WRITE_ONCE}; {SERVE}",
                            ],
                            "readinessProbe": ready_probe("test -f /data/first"),
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "10Mi"}},
                    },
                }
            ],
        },
    }
    cluster.apply(sts)

    def ready_pod() -> dict | None:
        pods = cluster.pods(ns, "app=db")
        return pods[0] if pods and condition_of(pods[0], "Ready") == "True" else None

    first = cluster.wait(ready_pod, 60, "db-0 Ready")
    claim = cluster.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/data-db-0")
    assert claim["status"]["phase"] == "Bound", claim["status"]
    assert claim["spec"]["storageClassName"] == "standard", claim["spec"]
    written = cluster.node.pod("db-0", ns).exec(["cat", "/data/first"]).stdout
    cluster.control_plane.kubectl("delete", "pod", "-n", ns, "db-0", "--wait=true", timeout=60)
    second = cluster.wait(
        lambda: (p := ready_pod()) and p["metadata"]["uid"] != first["metadata"]["uid"] and p,  # type: ignore[index]
        60,
        "db-0 recreated and Ready",
    )
    assert second
    again = cluster.node.pod("db-0", ns).exec(["cat", "/data/first"]).stdout
    assert written, "the first pod wrote its marker"
    assert again == written, f"data written before the pod's deletion: {written!r} -> {again!r}"
    claim_path = f"/api/v1/namespaces/{ns}/persistentvolumeclaims/data-db-0"
    cluster.node.api.merge_patch(
        claim_path, {"spec": {"resources": {"requests": {"storage": "20Mi"}}}}
    )
    cluster.wait(
        lambda: cluster.get(claim_path)["status"].get("capacity", {}).get("storage") == "20Mi",
        30,
        "the claim grown to 20Mi (the class allows expansion)",
    )


def test_secret_change_reaches_a_mounted_file_but_not_the_environment(cluster: Cluster) -> None:
    """Like a kubelet: mounted Secrets are refreshed (atomically), env keeps its start value."""
    ns = cluster.namespace("secrets")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds", "namespace": ns},
        "stringData": {"password": "first"},
    }
    container = shell(
        SERVE,
        env=[
            {
                "name": "PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
            }
        ],
        volumeMounts=[{"name": "creds", "mountPath": "/etc/creds"}],
    )
    cluster.apply(
        secret,
        deployment(
            "reader", ns, container, volumes=[{"name": "creds", "secret": {"secretName": "creds"}}]
        ),
    )
    cluster.wait(
        lambda: [p for p in cluster.pods(ns) if condition_of(p, "Ready") == "True"],
        60,
        "reader Ready",
    )
    (pod,) = cluster.pods(ns)
    local = cluster.node.pod(pod["metadata"]["name"], ns)
    assert local.exec(["cat", "/etc/creds/password"]).stdout == "first"
    cluster.apply({**secret, "stringData": {"password": "second"}})
    cluster.wait(
        lambda: local.exec(["cat", "/etc/creds/password"]).stdout == "second",
        30,
        "the changed Secret in the mounted file",
    )
    assert local.exec(["sh", "-c", 'printf %s "$PASSWORD"']).stdout == "first"
    link = local.exec(["readlink", "/etc/creds/password"]).stdout.strip()
    assert link == "..data/password", f"kubelet's atomic layout: {link!r}"


def test_node_stays_ready_while_the_agent_runs(cluster: Cluster) -> None:
    """Past the node monitor grace period, the lifecycle controller still sees a Ready node."""
    remaining = NODE_MONITOR_GRACE_SECONDS + 10 - (time.monotonic() - cluster.started)
    if remaining > 0:
        time.sleep(remaining)
    node = cluster.get(f"/api/v1/nodes/{cluster.node.name}")
    assert condition_of(node, "Ready") == "True", node["status"]["conditions"]
    assert not node["spec"].get("taints"), node["spec"]
    lease = cluster.get(
        f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{cluster.node.name}"
    )
    assert lease["spec"]["holderIdentity"] == cluster.node.name, lease
    assert not cluster.node.errors, "the agent's syncs all succeeded:\n" + cluster.node.describe()
