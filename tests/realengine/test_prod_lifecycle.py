"""The prod stack's life under the real engine, provider, control plane and a node that runs pods.

prod is the stack with custom resources: a cert-manager Certificate (the broker serves TLS
only), KEDA ScaledObjects for both pools, a ServiceMonitor and PrometheusRule. Their CRDs are the
projects' real definitions, so the API server validates them against the real schemas. No
operator runs here, and the test does their part where the stack depends on it:
- cert-manager: the test plays it. Once the stack has created its Certificate, the test issues
  the `kubernetes.io/tls` Secret cert-manager would (secretName, dnsNames and secretTemplate
  from the Certificate), signed by a test CA the test process trusts. The broker pod waits for
  that Secret as a kubelet does (FailedMount, retried), so `up`'s await covers the issuance.
- KEDA: a Deployment under a ScaledObject has no `replicas`, so it starts one pod; the test
  scales the pdf pool to its ScaledObject's minReplicaCount, as KEDA would, and checks that
  the stack neither sees that as drift nor undoes it.
- Prometheus: nothing scrapes; the exporter sidecar runs (a stand-in, see tests/e2e/images.py).

One stack is deployed once and changed step by step; tests run in file order and each builds on
the one before.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.states import READY_STATES

from tests.e2e.conftest import PDF_TASK, fake_pdf
from tests.realengine.cert_manager import CertManagerStandIn
from tests.realengine.controlplane import ControlPlane
from tests.realengine.deployed import Deployed, deployed_stack
from tests.realengine.node_agent import NodeAgent
from tests.support.tls_certs import KeyPair, make_ca

NAMESPACE = "life-prod"
PARKED_QUEUE = "parked"  # a list no worker consumes: what stays queued across changes
TASK_SECONDS = 90


@pytest.fixture(scope="module")
def cert_manager(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CertManagerStandIn]:
    """Install the real CRDs, then play cert-manager for the stack's namespace."""
    control_plane.install_crds()
    with CertManagerStandIn(
        control_plane, NAMESPACE, tmp_path_factory.mktemp("cert-manager"), "life-prod-internal-ca"
    ) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def deployed(
    control_plane: ControlPlane,
    node: NodeAgent,
    cert_manager: CertManagerStandIn,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    """Yield the prod stack's project copy on the session's node; destroy it after."""
    root = tmp_path_factory.mktemp("prod-lifecycle")
    with deployed_stack(root, "prod", NAMESPACE, control_plane, node) as deployed:
        yield deployed


def tls_client(deployed: Deployed, ca: KeyPair, db: int = 0) -> redis.Redis:
    """Return a celery-user client over TLS, verifying the broker against the test CA."""
    return deployed.broker_client(ca_file=ca.cert, db=db)


def worker_pods(deployed: Deployed, pool: str) -> dict[str, str]:
    """Name -> uid of one pool's pods."""
    prefix = f"celery-worker-{pool}-"
    return {n: u for n, u in deployed.pod_uids().items() if n.startswith(prefix)}


def ready_replicas(deployed: Deployed, deployment: str) -> int:
    return int(deployed.get("deployment", deployment)["status"].get("readyReplicas") or 0)


def wait_for(what: str, predicate: Any, timeout: float, describe: Any) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} after {timeout:g} s:\n{describe()}")
        time.sleep(1)


def test_up_from_empty_serves_tls_only_and_the_gate_passes(
    deployed: Deployed, cert_manager: CertManagerStandIn
) -> None:
    output = deployed.up()
    assert cert_manager.issued == ["celery-broker-tls"], (cert_manager.issued, cert_manager.errors)
    jobs = deployed.jobs()
    assert len(jobs) == 1, f"expected one check Job, found {sorted(jobs)}"
    ((job_name, job),) = jobs.items()
    assert job["status"].get("succeeded") == 1, f"the gate did not pass: {job['status']}"
    pods = deployed.get("pods")["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"])
        for p in running
    ), f"a running pod is not ready:\n{deployed.node.describe()}"
    names = {p["metadata"]["name"].rsplit("-", 2)[0] for p in running}
    assert {"celery-worker-pdf", "celery-worker-short"} <= names, f"pools missing:\n{output}"
    assert any(p["metadata"]["name"] == "celery-broker-0" for p in running), output
    # The gate's report: it reached the broker over TLS and saw fsync on every write.
    check_pod = next(p for p in pods if p["metadata"]["name"].startswith(job_name))
    container = check_pod["spec"]["containers"][0]["name"]
    found = deployed.node.find_container(NAMESPACE, check_pod["metadata"]["name"], container)
    assert found is not None, deployed.node.describe()
    assert "aof-always" in found.logs(), found.logs()
    # The broker answers TLS clients that trust the issuing CA, and nothing else.
    assert tls_client(deployed, cert_manager.ca).ping()
    with pytest.raises(redis.ConnectionError):
        deployed.broker_client().ping()  # plain text on the TLS port
    stranger = make_ca(cert_manager.folder / "stranger", name="not-the-issuer")
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        tls_client(deployed, stranger).ping()


def test_a_no_op_preview_and_a_refresh_find_nothing_to_do(deployed: Deployed) -> None:
    for flags in (("--expect-no-changes",), ("--refresh", "--expect-no-changes")):
        result = deployed.stack.run("preview", *flags)
        assert result.returncode == 0, f"preview {flags} planned changes:\n{result.stdout}"


def test_keda_scaling_a_pool_to_its_minimum_is_not_drift(deployed: Deployed) -> None:
    scaled = deployed.get("scaledobject", "celery-worker-pdf")["spec"]
    minimum = scaled["minReplicaCount"]
    assert minimum == 2, scaled
    # KEDA (through its HPA) writes the scale subresource; so does `kubectl scale`.
    deployed.cluster.kubectl(
        "-n", NAMESPACE, "scale", "deployment", "celery-worker-pdf", f"--replicas={minimum}"
    )
    wait_for(
        "the pdf pool did not reach its minimum",
        lambda: ready_replicas(deployed, "celery-worker-pdf") == minimum,
        120,
        deployed.node.describe,
    )
    for flags in (("--expect-no-changes",), ("--refresh", "--expect-no-changes")):
        result = deployed.stack.run("preview", *flags)
        assert result.returncode == 0, f"preview {flags} fights KEDA:\n{result.stdout}"


class Producer:
    """A Celery client of the deployed broker through a port forward, over verified TLS."""

    def __init__(self, deployed: Deployed, ca: KeyPair) -> None:
        url = deployed.stack.outputs()["broker_url"]["value"]
        userinfo = url.split("://", 1)[1].split("@", 1)[0]
        port = deployed.node.host_port(6379)
        self.url = f"rediss://{userinfo}@localhost:{port}/0"
        self.app = Celery("life-prod-producer", broker=self.url, set_as_current=False)
        self.app.conf.broker_use_ssl = {
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            "ssl_ca_certs": str(ca.cert),
        }
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=10,
            broker_transport_options={"socket_timeout": 10, "socket_connect_timeout": 10},
        )

    def send(self, count: int, queue: str, size: int) -> list[str]:
        return [
            self.app.send_task(PDF_TASK, args=[fake_pdf(size), f"{queue}-{i}.pdf"], queue=queue).id
            for i in range(count)
        ]

    def close(self) -> None:
        self.app.close()


def results(client: redis.Redis, task_ids: list[str], describe: Any) -> list[Any]:
    """Poll the result backend until every task is ready; return the results."""
    keys = [f"celery-task-meta-{task_id}" for task_id in task_ids]
    deadline = time.monotonic() + TASK_SECONDS
    while True:
        metas = [json.loads(raw) if raw else None for raw in client.mget(keys)]
        if all(m and m["status"] in READY_STATES for m in metas):
            break
        if time.monotonic() > deadline:
            missing = [t for t, m in zip(task_ids, metas, strict=True) if not m]
            pytest.fail(f"{len(missing)} tasks have no result (lost or unconsumed):\n{describe()}")
        time.sleep(0.5)
    failed = [m for m in metas if m and m["status"] != "SUCCESS"]
    assert not failed, f"a task failed: {failed[0]}"
    return [m["result"] for m in metas if m]


def test_tasks_over_tls_are_processed_by_their_own_pool(
    deployed: Deployed, cert_manager: CertManagerStandIn
) -> None:
    producer = Producer(deployed, cert_manager.ca)
    try:
        pdfs = producer.send(6, "celery", 256 * 1024)
        short = producer.send(10, "short", 2048)
    finally:
        producer.close()
    backend = tls_client(deployed, cert_manager.ca, db=1)
    assert results(backend, pdfs, deployed.node.describe) == [256 * 1024] * 6
    assert results(backend, short, deployed.node.describe) == [2048] * 10

    def logs(pool: str) -> str:
        return "".join(
            pod.logs()
            for pod in deployed.node.pods(NAMESPACE)
            if pod.name.startswith(f"celery-worker-{pool}-")
        )

    pdf_logs, short_logs = logs("pdf"), logs("short")
    misrouted = [t for t in pdfs if t not in pdf_logs or t in short_logs]
    misrouted += [t for t in short if t not in short_logs or t in pdf_logs]
    assert not misrouted, f"tasks ran in the wrong pool (by worker logs): {misrouted[:5]}"


def test_a_pool_change_rolls_only_that_pool_and_keeps_kedas_replicas(deployed: Deployed) -> None:
    before = deployed.pod_uids()
    pdf_before = worker_pods(deployed, "pdf")
    short_before = worker_pods(deployed, "short")
    jobs_before = set(deployed.jobs())
    pools = deployed.settings()["config"]["celery-redis:workers"]["pools"]
    short = next(p for p in pools if p["name"] == "short")
    short["concurrency"] += 1
    deployed.change("workers", {"pools": pools})
    deployed.up()
    after = deployed.pod_uids()
    assert after.get("celery-broker-0") == before["celery-broker-0"], "the broker rolled"
    assert worker_pods(deployed, "pdf") == pdf_before, "the pdf pool rolled for a short change"
    assert not set(short_before) & set(after), "the short pool did not roll"
    spec = deployed.get("deployment", "celery-worker-pdf")["spec"]
    assert spec["replicas"] == 2, f"up undid KEDA's scaling: {spec['replicas']}"
    new_jobs = set(deployed.jobs()) - jobs_before
    assert len(new_jobs) == 1, f"expected a new check Job, have {sorted(deployed.jobs())}"


def test_a_broker_setting_change_rolls_the_broker_and_keeps_queued_tasks(
    deployed: Deployed, cert_manager: CertManagerStandIn
) -> None:
    client = tls_client(deployed, cert_manager.ca)
    client.lpush(PARKED_QUEUE, *[f"task-{n}" for n in range(100)])
    broker_before = deployed.pod_uids()["celery-broker-0"]
    # tcp-keepalive is a redis.conf line; the config's hash in the pod template rolls the broker.
    deployed.change("broker", {"tcp_keepalive": 45})
    deployed.up()
    assert deployed.pod_uids().get("celery-broker-0") not in (None, broker_before), "no roll"
    assert tls_client(deployed, cert_manager.ca).llen(PARKED_QUEUE) == 100, "queued tasks lost"
    for flags in (("--expect-no-changes",), ("--refresh", "--expect-no-changes")):
        result = deployed.stack.run("preview", *flags)
        assert result.returncode == 0, f"preview {flags} after the roll:\n{result.stdout}"
