"""A deployed standalone broker moved to Sentinel by README's procedure keeps its queued tasks.

README ("Moving a deployed standalone stack to Sentinel") tells a user to set
`broker.topology: sentinel` in the stack file and run `pulumi up`, nothing else. That move
rests on the order in which the real StatefulSet controller acts (OrderedReady, RollingUpdate:
create the missing pods 1 and 2 beside the running standalone pod 0, each once the one before is
ready, then replace pod 0 on its own volume), and on what the new pods do while the old pod 0
knows neither the replication user nor the Sentinel user. Only the real controller manager
shows that order, so this runs on the three-node cluster (tests/realengine/multinode.py) with
the real Pulumi engine and kubernetes provider, a prod-like stack (AOF fsync always, a volume,
TLS from cert-manager's stand-in, not ephemeral: required spread), Debian's redis-server as
Redis and Sentinel, and real Celery workers of the stand-in app.

Tasks are queued on a queue (`moved`) that no worker consumes while the `default` pool's
worker runs through the move and rolls to the Sentinel URLs, as the procedure says workers do.
The steps build on each other in file order: the standalone stack holds the tasks; the
procedure's one `up` completes on its own, pod 0 is the first master on the standalone pod's
claim, holding every task, both replicas hold them too, every Sentinel names pod 0 with the
configured down-after, and the gate Job passes; then the rolled workers are told to consume
`moved` too (Celery's remote control, through Sentinel: a new pool would roll the broker again,
since its queue reaches the ACL) and run every task exactly once. The stack is destroyed at the
end.
"""

from __future__ import annotations

import base64
import collections
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import yaml

from tests.realengine.cert_manager import CertManagerStandIn
from tests.realengine.conftest import new_stack
from tests.realengine.deployed import Deployed, shipped_stack_file
from tests.realengine.multinode import BROKER, MultiNodeCluster, StackPods, ready

pytestmark = pytest.mark.ha

NAMESPACE = "ha-move"
MASTER_NAME = "celery-broker"
"""broker.sentinel.master_name (the default)."""
POD_0 = f"{BROKER}-0"
CLAIM_0 = f"data-{POD_0}"
"""The claim the StatefulSet made for pod 0 (volumeClaimTemplates `data`)."""
QUEUE = "moved"
"""No worker consumes it until the last step."""
WORKERS = "celery-worker-default"
WORKER_REPLICAS = 2
QUEUED_TASKS = 40
RECORD_FILE = "/tmp/ha-move-executions.log"
"""Where record_execution writes inside each worker pod (its /tmp)."""
TASKS_TIMEOUT = 90
DOWN_AFTER_MS = 5000
"""broker.sentinel.down_after_ms (the default)."""
SENTINELS_SETTLE_TIMEOUT = 60
"""A Sentinel still connecting to the old pod 0's address retries only every 15 s (seen: 36 s
from the new pod 0's start to the last Sentinel's configured down-after)."""


def stack_file() -> str:
    """Return dev's stack file made prod-like and standalone (one pool, on `celery`)."""
    shipped = yaml.safe_load(shipped_stack_file("dev", NAMESPACE))["config"]
    workers = shipped["celery-redis:workers"]
    workers["pools"][0]["replicas"] = WORKER_REPLICAS
    broker = {
        **shipped["celery-redis:broker"],
        "persistence": "aof-always",
        "topology": "standalone",
    }
    return shipped_stack_file(
        "dev",
        NAMESPACE,
        **{
            "celery-redis:ephemeral": False,
            "celery-redis:broker": broker,
            "celery-redis:workers": workers,
            "celery-redis:tls": {"enabled": True, "cert_manager_issuer": "internal-ca"},
        },
    )


@dataclass(kw_only=True)
class Move:
    """The deployed stack and what each step learns for the next."""

    pods: StackPods
    deployed: Deployed
    cert_manager: CertManagerStandIn
    old_pod_0: str = ""
    """The standalone broker pod's uid."""
    claim_uid: str = ""
    """Pod 0's claim's uid, while the broker is standalone."""
    tasks: dict[str, str] = field(default_factory=dict)
    """Label -> task id of the tasks queued on the standalone broker."""
    standalone_workers: set[str] = field(default_factory=set)
    """The default pool's pods while the broker is standalone."""

    def read_client_secret(self) -> None:
        """Point the client at the stack as its client Secret now describes it."""
        secret = self.deployed.get("secret", "celery-broker-client")["data"]
        env = {key: base64.b64decode(value).decode() for key, value in secret.items()}
        env["SENTINEL_MASTER"] = MASTER_NAME
        env["BROKER_CA_FILE"] = str(self.cert_manager.ca.cert)
        self.pods.client_env = env

    def claim(self) -> dict:
        """Return pod 0's PersistentVolumeClaim."""
        return self.deployed.get("pvc", CLAIM_0)

    def claim_of(self, pod: dict) -> str | None:
        """Return the claim a pod mounts as its data volume."""
        volumes = pod["spec"].get("volumes") or []
        found = next((v for v in volumes if v["name"] == "data"), {})
        return (found.get("persistentVolumeClaim") or {}).get("claimName")

    def logs(self, pod: str, container: str) -> str:
        """Return a broker container's log (the newest run), for assertion messages."""
        found = self.pods.nodes.find_container(NAMESPACE, pod, container)
        return found.logs() if found is not None else f"(no {container} container of {pod})"


@pytest.fixture(scope="module")
def move(three_nodes: MultiNodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Move]:
    """Deploy nothing yet (the first test runs `up`); destroy the stack after the module."""
    root = tmp_path_factory.mktemp("topology-move")
    cluster = three_nodes.control_plane
    real = new_stack(root, "dev", cluster, stack_file())
    deployed = Deployed(real, cluster, three_nodes, NAMESPACE)
    cluster.install_crds()  # the Certificate is checked against cert-manager's real CRD
    with CertManagerStandIn(cluster, NAMESPACE, root / "cert-manager", "ha-internal-ca") as issuer:
        pods = StackPods(nodes=three_nodes, namespace=NAMESPACE, tls=True)
        try:
            yield Move(pods=pods, deployed=deployed, cert_manager=issuer)
        finally:
            deployed.tear_down()


def test_the_standalone_broker_holds_the_queued_tasks(move: Move) -> None:
    move.deployed.up()
    brokers = move.pods.brokers()
    assert sorted(brokers) == [POD_0], sorted(brokers)
    assert ready(brokers[POD_0]), move.pods.describe()
    move.old_pod_0 = brokers[POD_0]["metadata"]["uid"]
    assert move.claim_of(brokers[POD_0]) == CLAIM_0, brokers[POD_0]["spec"]["volumes"]
    move.claim_uid = move.claim()["metadata"]["uid"]
    assert move.cert_manager.issued == ["celery-broker-tls"], move.cert_manager.errors
    move.read_client_secret()
    assert move.pods.client_env["CELERY_BROKER_URL"].startswith("rediss://"), "not standalone"
    move.standalone_workers = set(move.pods.pool_pods(WORKERS))
    assert len(move.standalone_workers) == WORKER_REPLICAS, move.pods.describe()
    move.tasks = move.pods.publish_tasks(QUEUED_TASKS, "moved", 0.0, RECORD_FILE, queue=QUEUE)
    state = move.pods.status(list(move.tasks.values()), queue=QUEUE)
    assert state["queued"] == QUEUED_TASKS, f"queued on the standalone broker: {state['queued']}"


def test_the_readme_procedure_moves_the_broker_to_sentinel_with_its_tasks(move: Move) -> None:
    jobs_before = set(move.deployed.jobs())
    # README, step 1: the topology in the stack file; the preview updates the StatefulSet in
    # place (a replacement would delete pod 0 at once, and take every replica down with it).
    move.deployed.change("broker", {"topology": "sentinel"})
    preview = move.deployed.stack.run("preview")
    assert preview.returncode == 0, f"preview failed:\n{preview.stdout}{preview.stderr}"
    statefulset = [line for line in preview.stdout.splitlines() if "broker-statefulset" in line]
    assert any(" update" in line for line in statefulset), preview.stdout
    assert not any("replace" in line or "delete" in line for line in statefulset), statefulset
    # Step 2: one `pulumi up`, nothing else.
    started = time.monotonic()
    move.deployed.up()
    took = time.monotonic() - started
    brokers = move.pods.brokers()
    assert sorted(brokers) == [f"{BROKER}-{n}" for n in range(3)], move.pods.describe()
    assert all(ready(pod) for pod in brokers.values()), move.pods.describe()
    nodes = sorted(pod["spec"]["nodeName"] for pod in brokers.values())
    assert nodes == sorted(move.pods.nodes.names), f"broker pods share a node: {nodes}"
    # Pod 0 was replaced (it runs Sentinel's template now) on the standalone pod's own claim.
    assert brokers[POD_0]["metadata"]["uid"] != move.old_pod_0, "pod 0 was never replaced"
    assert move.claim_of(brokers[POD_0]) == CLAIM_0, brokers[POD_0]["spec"]["volumes"]
    assert move.claim()["metadata"]["uid"] == move.claim_uid, "pod 0's claim was replaced"
    # cert-manager issued the certificate again, for the new pods' names too.
    assert move.cert_manager.issued == ["celery-broker-tls"] * 2, move.cert_manager.errors
    move.read_client_secret()
    assert move.pods.client_env["CELERY_BROKER_URL"].startswith("sentinel://"), "not moved"
    master = move.pods.master()
    history = "\n".join(
        f"== {pod} {container}\n{move.logs(pod, container)[-3000:]}"
        for pod in sorted(brokers)
        for container in ("redis", "sentinel")
    )
    assert master == POD_0, (
        f"the first master is {master}, not pod 0 (took {took:.0f} s)\n{history}"
    )
    info = move.pods.replication(POD_0)
    assert (info["role"], info["connected_slaves"]) == ("master", "2"), info
    for replica in (f"{BROKER}-1", f"{BROKER}-2"):
        info = move.pods.replication(replica)
        assert info["role"] == "slave", info
        assert info["master_host"] == move.pods.host_of(POD_0), info
        assert info["master_link_status"] == "up", info
    # Every task queued on the standalone broker is on the master, and replicated.
    lengths = move.pods.client("lengths", "--queue", QUEUE)
    expected = {move.pods.host_of(f"{BROKER}-{n}"): QUEUED_TASKS for n in range(3)}
    assert lengths == expected, f"{QUEUE} on each pod after the move: {lengths}\n{history}"
    # Every Sentinel names pod 0 and, its link to the new pod 0 working, watches it with the
    # configured down-after again (the Sentinels that watched the standalone pod had a day's).
    views = move.pods.wait(
        "the Sentinels did not take the configured down-after back",
        lambda: (
            (found := move.pods.client("sentinels"))
            and all(v["down_after_ms"] == DOWN_AFTER_MS for v in found.values())
            and found
        ),
        SENTINELS_SETTLE_TIMEOUT,
    )
    masters = {view["master"] for view in views.values()}
    assert masters == {move.pods.host_of(POD_0)}, f"Sentinels' masters: {views}"
    # The gate Job of this update checked the new topology and passed.
    new_jobs = {name: job for name, job in move.deployed.jobs().items() if name not in jobs_before}
    assert len(new_jobs) == 1, f"expected one new check Job, have {sorted(new_jobs)}"
    (job,) = new_jobs.values()
    assert job["status"].get("succeeded") == 1, f"the gate did not pass: {job['status']}"


def test_the_rolled_workers_then_run_every_moved_task_exactly_once(move: Move) -> None:
    workers = move.pods.pool_pods(WORKERS)
    assert len(workers) == WORKER_REPLICAS, sorted(workers)
    assert not set(workers) & move.standalone_workers, "the workers did not roll to Sentinel"
    replies = move.pods.client("consume", "--queue", QUEUE)
    answered = {name for reply in replies for name, answer in reply.items() if "ok" in answer}
    assert len(answered) == WORKER_REPLICAS, f"add_consumer {QUEUE}: {replies}"
    task_ids = list(move.tasks.values())
    state = move.pods.wait(
        "the workers did not run every moved task",
        lambda: (
            (found := move.pods.status(task_ids, queue=QUEUE))["queued"] == 0
            and all(status == "SUCCESS" for status in found["results"].values())
            and found
        ),
        TASKS_TIMEOUT,
        interval=2,
    )
    assert not state["unacked"], f"tasks still unacked: {state['unacked']}"
    records = move.pods.records(list(workers), RECORD_FILE)
    runs = collections.Counter(label for labels in records.values() for label in labels)
    twice = sorted(label for label, count in runs.items() if count > 1)
    assert not twice, f"moved tasks run more than once: {twice}"
    missing = sorted(set(move.tasks) - set(runs))
    assert not missing, f"moved tasks no worker ran: {missing}"
