"""The Sentinel broker on three real nodes: the scheduler spreads it, a drain moves its master.

Everything that decides here is the real one: the Pulumi engine and kubernetes provider deploy
the program's objects (dev's stack with `broker.topology: sentinel` and AOF); the real
scheduler places the pods on node-a, node-b and node-c (tests/realengine/multinode.py) by the
rendered required anti-affinity; `kubectl drain` evicts through the API server, which enforces
the rendered PodDisruptionBudget; the node agents run the rendered preStop, which hands the
master role over through Sentinel (Debian's redis-server 7.0 as Redis and as Sentinel, from the
rendered start scripts); the workers are real Celery workers of the stand-in app, connecting
through Sentinel as rendered. A client in the pod network (sentinel_client.py) publishes and
reads the way the README tells an application to.

TLS is off (see TLS): the test runs TLS on with cert-manager's part played by
tests/realengine/cert_manager.py (replication, Sentinel and every client over TLS, verifying
the per-pod names the Certificate lists) once the stack's Sentinel result backend speaks TLS.

One stack is deployed once; the tests run in file order and each builds on the one before:
spread, drain of the master's node (handover, queued tasks kept), the evicted pod waiting for a
free node while a second drain is refused, the workers consuming on two brokers, uncordon (the
pod rejoins as a replica), and last, that the handover kept every acknowledgement and result of
the tasks running through it (the preStop holds writes, follows the new master at once, and
workers retry an acknowledgement that met the demoted master). The stack is destroyed at the
end, so later modules start clean.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import yaml

from tests.realengine.cert_manager import CertManagerStandIn
from tests.realengine.conftest import new_stack
from tests.realengine.deployed import Deployed, shipped_stack_file
from tests.realengine.multinode import (
    BROKER,
    BROKER_SELECTOR,
    NODE_NAMES,
    MultiNodeCluster,
    StackPods,
    ready,
    scheduled,
)

pytestmark = pytest.mark.ha

NAMESPACE = "ha-drain"
HEADLESS = f"{BROKER}-headless"
MASTER_NAME = "celery-broker"
"""broker.sentinel.master_name (the default)."""
WORKERS = "celery-worker-default"
WORKER_REPLICAS = 2
TLS = True
"""The stack serves TLS only (cert-manager's Certificate, issued by the test's stand-in):
Sentinels, replication, workers, the result backend (`redis_backend_use_ssl`, which Celery's
Sentinel backend needs besides the URL's query) and the gate all verify the broker's CA."""
RECORD_FILE = "/tmp/ha-drain-executions.log"
"""Where record_execution writes inside each worker pod (its /tmp)."""
QUEUED_TASKS = 80
TASK_SECONDS = 0.3
"""80 tasks of 0.3 s on 2 workers x 2 processes: still running and queued when the drain starts."""
AFTER_TASKS = 20
DRAIN_TIMEOUT = 120
REFUSED_DRAIN_TIMEOUT = 12
"""kubectl retries a refused eviction every 5 s: two refusals, then it gives up."""
TASKS_TIMEOUT = 90
READY_TIMEOUT = 90


def stack_file() -> str:
    """Return dev's stack file with a Sentinel broker on AOF (and TLS when TLS) and two workers."""
    shipped = yaml.safe_load(shipped_stack_file("dev", NAMESPACE))["config"]
    broker = {**shipped["celery-redis:broker"], "persistence": "aof", "topology": "sentinel"}
    workers = shipped["celery-redis:workers"]
    workers["pools"][0]["replicas"] = WORKER_REPLICAS
    extra = {"celery-redis:broker": broker, "celery-redis:workers": workers}
    if TLS:
        extra["celery-redis:tls"] = {"enabled": True, "cert_manager_issuer": "internal-ca"}
    return shipped_stack_file("dev", NAMESPACE, **extra)


def host_of(pod: str) -> str:
    """Return a broker pod's per-pod name, as Redis and Sentinel announce it."""
    return f"{pod}.{HEADLESS}.{NAMESPACE}.svc"


@dataclass(kw_only=True)
class Drill(StackPods):
    """The deployed stack, its nodes, and what each step learns for the next."""

    deployed: Deployed
    cert_manager: CertManagerStandIn | None
    placement: dict[str, str] = field(default_factory=dict)
    """Broker pod -> node, as first scheduled."""
    old_master: str = ""
    drained: str = ""
    old_uid: str = ""
    new_master: str = ""
    before: dict[str, str] = field(default_factory=dict)
    """Label -> task id of the tasks published before the drain."""
    survivors: dict[str, str] = field(default_factory=dict)
    """Worker pods (name -> uid) running before the drain on nodes it did not drain."""

    def workers(self) -> dict[str, dict]:
        """Return the worker pool's pods that are not terminating, by name."""
        return self.pool_pods(WORKERS)

    def publish(self, count: int, prefix: str, seconds: float) -> dict[str, str]:
        """Publish record_execution tasks through Sentinel; return label -> task id."""
        return self.publish_tasks(count, prefix, seconds, RECORD_FILE)

    def executed_by(self, names: list[str]) -> dict[str, set[str]]:
        """Return the labels each named worker pod's record file holds."""
        return {name: set(labels) for name, labels in self.records(names, RECORD_FILE).items()}


@pytest.fixture(scope="module")
def drill(
    three_nodes: MultiNodeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Drill]:
    """Deploy the Sentinel stack on the three nodes; uncordon all and destroy the stack after."""
    root = tmp_path_factory.mktemp("sentinel-drain")
    cluster = three_nodes.control_plane
    real = new_stack(root, "dev", cluster, stack_file())
    deployed = Deployed(real, cluster, three_nodes, NAMESPACE)
    issuing: contextlib.AbstractContextManager[CertManagerStandIn | None] = contextlib.nullcontext()
    if TLS:
        cluster.install_crds()  # the Certificate is checked against cert-manager's real CRD
        issuing = CertManagerStandIn(cluster, NAMESPACE, root / "cert-manager", "ha-internal-ca")
    with issuing as issuer:
        try:
            yield Drill(
                deployed=deployed, nodes=three_nodes, namespace=NAMESPACE, tls=TLS,
                cert_manager=issuer,
            )  # fmt: skip
        finally:
            for node in NODE_NAMES:
                three_nodes.uncordon(node)
            deployed.tear_down()


def test_up_puts_each_broker_pod_on_a_node_of_its_own(drill: Drill) -> None:
    drill.deployed.up()
    brokers = drill.brokers()
    assert sorted(brokers) == [f"{BROKER}-{n}" for n in range(3)], sorted(brokers)
    assert all(ready(pod) for pod in brokers.values()), drill.describe()
    drill.placement = {name: pod["spec"]["nodeName"] for name, pod in brokers.items()}
    assert sorted(drill.placement.values()) == sorted(NODE_NAMES), drill.placement
    secret = drill.deployed.get("secret", "celery-broker-client")["data"]
    drill.client_env = {k: base64.b64decode(v).decode() for k, v in secret.items()}
    drill.client_env["SENTINEL_MASTER"] = MASTER_NAME
    if drill.cert_manager is not None:  # TLS: clients verify the broker against the issuer
        assert drill.cert_manager.issued == ["celery-broker-tls"], drill.cert_manager.errors
        drill.client_env["BROKER_CA_FILE"] = str(drill.cert_manager.ca.cert)
    master = drill.master()
    assert master in brokers, master
    for name in brokers:
        info = drill.replication(name)
        if name == master:
            assert (info["role"], info["connected_slaves"]) == ("master", "2"), info
        else:
            assert info["role"] == "slave", info
            assert info["master_host"] == host_of(master), info
            assert info["master_link_status"] == "up", info


def test_draining_the_masters_node_hands_over_and_keeps_every_queued_task(drill: Drill) -> None:
    drill.old_master = drill.master()
    drill.drained = drill.placement[drill.old_master]
    drill.old_uid = drill.brokers()[drill.old_master]["metadata"]["uid"]
    drill.survivors = {
        name: pod["metadata"]["uid"]
        for name, pod in drill.workers().items()
        if pod["spec"]["nodeName"] != drill.drained
    }
    drill.before = drill.publish(QUEUED_TASKS, "before", TASK_SECONDS)
    queued = drill.status([])["queued"]
    assert queued > 0, "the workers ran every task before the drain: nothing was queued"
    result = drill.nodes.drain(drill.drained, DRAIN_TIMEOUT)
    assert result.returncode == 0, f"drain of {drill.drained} failed:\n{result.stderr}"
    assert f"pod/{drill.old_master} evicted" in result.stdout, result.stdout
    # The preStop handed over before the pod stopped: another pod is master right away.
    drill.new_master = drill.master()
    assert drill.new_master not in (drill.old_master, ""), drill.new_master
    info = drill.replication(drill.new_master)
    assert info["role"] == "master", info
    # Every task published before the drain is done or still held by the new master (queued,
    # or unacked and redelivered after the visibility timeout): none was lost.
    task_ids = list(drill.before.values())
    state = drill.wait(
        "the workers did not empty the queue",
        lambda: (found := drill.status(task_ids))["queued"] == 0 and found,
        TASKS_TIMEOUT,
        interval=2,
    )
    done = {task for task, status in state["results"].items() if status == "SUCCESS"}
    lost = set(task_ids) - done - set(state["unacked"])
    assert not lost, f"{len(lost)} tasks published before the drain are gone: {sorted(lost)[:5]}"


def test_the_evicted_pod_waits_for_a_free_node_and_a_second_drain_is_refused(
    drill: Drill,
) -> None:
    def pending_replacement() -> dict | None:
        pod = drill.brokers().get(drill.old_master)
        if pod is None or pod["metadata"]["uid"] == drill.old_uid:
            return None
        return pod if scheduled(pod).get("reason") == "Unschedulable" else None

    pod = drill.wait("no replacement reported Unschedulable", pending_replacement, 30)
    message = scheduled(pod)["message"]
    # Its own node is cordoned; each other node runs a broker pod (required anti-affinity).
    assert "1 node(s) were unschedulable" in message, message
    assert "2 node(s) didn't match pod anti-affinity rules" in message, message
    # One broker pod is away: the PDB (maxUnavailable 1) lets no second one go.
    replica = next(n for n in drill.placement if n not in (drill.old_master, drill.new_master))
    other = drill.placement[replica]
    uid = drill.brokers()[replica]["metadata"]["uid"]
    try:
        refused = drill.nodes.drain(
            other, REFUSED_DRAIN_TIMEOUT, f"--pod-selector={BROKER_SELECTOR}"
        )
    finally:
        drill.nodes.uncordon(other)
    assert refused.returncode != 0, f"a second drain went through:\n{refused.stdout}"
    assert "violate the pod's disruption budget" in refused.stderr, refused.stderr
    kept = drill.brokers()[replica]
    assert kept["metadata"]["uid"] == uid, f"{replica} was evicted anyway"
    assert not kept["metadata"].get("deletionTimestamp"), kept["metadata"]
    still = drill.brokers()[drill.old_master]
    assert not still["spec"].get("nodeName"), f"bound while no node may take it: {still['spec']}"


def test_workers_keep_consuming_while_one_broker_pod_is_away(drill: Drill) -> None:
    after = drill.publish(AFTER_TASKS, "after", 0.1)
    task_ids = list(after.values())
    drill.wait(
        "tasks published after the handover were not all done",
        lambda: all(s == "SUCCESS" for s in drill.status(task_ids)["results"].values()),
        TASKS_TIMEOUT,
        interval=2,
    )
    # The workers that ran through the handover (not on the drained node) followed the new
    # master on their own: each is the same pod and ran tasks published after the handover.
    workers = drill.workers()
    for name, uid in drill.survivors.items():
        assert workers.get(name, {}).get("metadata", {}).get("uid") == uid, f"{name} restarted"
    executed = drill.executed_by(list(drill.survivors))
    idle = [name for name, labels in executed.items() if not labels & set(after)]
    assert not idle, f"workers that ran no task after the handover: {idle}\n{drill.describe()}"


def test_uncordon_brings_the_pod_back_as_a_replica_of_the_new_master(drill: Drill) -> None:
    drill.nodes.uncordon(drill.drained)
    back = drill.wait(
        f"{drill.old_master} not Ready again after uncordon",
        lambda: (pod := drill.brokers().get(drill.old_master)) and ready(pod) and pod,
        READY_TIMEOUT,
    )
    assert back["spec"]["nodeName"] == drill.drained, back["spec"]
    info = drill.replication(drill.old_master)
    assert info["role"] == "slave", info
    assert info["master_host"] == host_of(drill.new_master), info
    assert info["master_link_status"] == "up", info
    assert drill.master() == drill.new_master, "the returning pod took the master role back"
    assert drill.replication(drill.new_master)["connected_slaves"] == "2"


def test_the_handover_keeps_every_acknowledgement_and_result(drill: Drill) -> None:
    state = drill.status(list(drill.before.values()))
    labels = {task: label for label, task in drill.before.items()}
    unacked = sorted(labels[task] for task in state["unacked"] if task in labels)
    missing = sorted(labels[t] for t, status in state["results"].items() if status != "SUCCESS")
    ran = set().union(*drill.executed_by(list(drill.survivors)).values())
    assert not unacked, (
        f"tasks left unacked by the handover: {unacked} (of which ran already, by the records "
        f"of workers that were not evicted: {sorted(set(unacked) & ran)}); without a result: "
        f"{missing}"
    )
    assert not missing, f"tasks of before the drain without a result: {missing}"
