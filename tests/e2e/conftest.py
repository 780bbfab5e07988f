"""Fixtures of the end-to-end tests: rendered stacks run as local pods by tests/podrunner.

A stack is rendered exactly as `python -m brokerctl render` writes it. What a test changes is
what the cluster would: Pulumi puts the generated passwords where render leaves placeholders,
operators do their part (cert-manager issues the TLS Secret of a Certificate, KEDA scales a pool
to its minimum), nothing more. Variants (faster probes, shorter shutdowns) are rendered from
stack files of our own, never by editing rendered objects. The one exception is marked
WORKAROUND: a temporary patch for a known defect of the rendered objects, with a test that keeps
failing until the defect is fixed.

These tests need root, redis-server, openssl and iproute2. They FAIL when one is missing: a CI
machine that lost redis-server must not report green by skipping the tests that matter most.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from celery import Celery
from celery.states import READY_STATES

from brokerctl.render import render_stack, write_objects
from tests.e2e.images import copy_standin_app, ensure_standin_venv, image_table
from tests.podrunner import Backoff, JobResult, LocalCluster, LocalImage, Pod
from tests.support.tls_certs import issue_server_certificate, make_ca

CELERY_PASSWORD = "e2e-celery-password"
PROBE_PASSWORD = "e2e-probe-password"
EXPORTER_PASSWORD = "e2e-exporter-password"
SECRET_VALUES = {
    "redacted-broker-celery-password": CELERY_PASSWORD,
    "redacted-broker-probe-password": PROBE_PASSWORD,
    "redacted-broker-check-password": "e2e-check-password",
    "redacted-broker-keda-password": "e2e-keda-password",
    "redacted-broker-exporter-password": EXPORTER_PASSWORD,
    "redacted-broker-scalein-password": "e2e-scalein-password",
}
"""What `pulumi up` would put where render leaves placeholders (generated passwords)."""

TIME_SCALE = 0.1
"""Probe periods and initial delays x0.1 (timeouts and grace periods stay as rendered)."""

BACKOFF = Backoff(initial=0.2, cap=1.0)
"""Container restart and Job retry back-off; the kubelet's 10 s..300 s would dominate a run."""

HOST_TOOLS = ("redis-server", "redis-cli", "openssl", "ip", "sh", "sha256sum")

BROKER_READY_SECONDS = 30
WORKERS_READY_SECONDS = 45
CHECK_JOB_SECONDS = 60
TASK_SECONDS = 60


@pytest.fixture(scope="session")
def e2e_host() -> None:
    """Fail (never skip) when this machine cannot run the stacks: root and the host tools."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the end-to-end tests need root (network and mount namespaces, uids)")
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing:
        problems.append(
            f"missing host tools {missing}: install the Debian packages redis-server (brings "
            "redis-cli), openssl and iproute2 (`make test` does)"
        )
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def work_dir(e2e_host: None) -> Iterator[Path]:
    """Yield a scratch directory for the session (renders, app copy, test CAs); remove it after.

    Not pytest's tmp_path: that one keeps the last runs' directories, and these tests leave
    nothing behind. World-readable, because /app is bound from here into non-root pods.
    """
    path = Path(tempfile.mkdtemp(prefix="celery-redis-e2e-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def images(work_dir: Path) -> dict[str, LocalImage]:
    """Return the image table, with the stand-in venv built and the app copied for /app."""
    ensure_standin_venv()
    app_dir = work_dir / "app"
    app_dir.mkdir()
    return image_table(copy_standin_app(app_dir))


@pytest.fixture(scope="session")
def rendered(work_dir: Path) -> Callable[..., Path]:
    """Render a stack once per session: `rendered("dev")`, or a variant from our own stack file.

    `rendered("e2e-fast", stack_file=TEXT)` writes TEXT as `Pulumi.e2e-fast.yaml` into a private
    config folder and renders from there (`--config-dir`), exactly as the CLI would.
    """
    cache: dict[str, Path] = {}

    def render(stack: str, stack_file: str | None = None) -> Path:
        if stack not in cache:
            out = work_dir / f"rendered-{stack}"
            if stack_file is None:
                objects = render_stack(stack)
            else:
                config_dir = work_dir / f"config-{stack}"
                config_dir.mkdir()
                (config_dir / f"Pulumi.{stack}.yaml").write_text(stack_file)
                objects = render_stack(stack, config_dir)
            write_objects(objects, out)
            cache[stack] = out
        return cache[stack]

    return render


@dataclass
class RunningStack:
    """A rendered stack on a LocalCluster, with the names tests need found in its objects."""

    cluster: LocalCluster
    namespace: str
    broker: str  # StatefulSet
    broker_service: str
    worker_pools: dict[str, str]  # pool name -> Deployment
    check_job: str
    autoscaler_min_replicas: dict[str, int]  # Deployment -> KEDA minReplicaCount
    ca_file: Path | None = None  # the broker serves TLS only, from a certificate of this CA
    broker_port: int | None = None

    # -- bringing it up --------------------------------------------------------------------
    def start_broker(self) -> Pod:
        """Start only the broker and wait until it is ready."""
        self.cluster.start(only=[("StatefulSet", self.broker)])
        return self.wait_broker_ready()

    def wait_broker_ready(self) -> Pod:
        """Wait for the broker pod's readiness (Redis answers and has loaded its data)."""
        (pod,) = self.cluster.wait_ready("StatefulSet", self.broker, timeout=BROKER_READY_SECONDS)
        return pod

    def start_workers(self, *pools: str) -> list[Pod]:
        """Start worker pools (all by default) and wait until every replica is ready."""
        names = self.start_workers_without_waiting(*pools)
        return self.wait_workers_ready(*names)

    def start_workers_without_waiting(self, *pools: str) -> list[str]:
        """Start worker pools (all by default); return their Deployment names.

        An autoscaled pool's Deployment has no `replicas` (KEDA owns it), so Kubernetes starts
        one pod and KEDA scales it to minReplicaCount. No KEDA runs here: the test does that.
        """
        names = [self.worker_pools[pool] for pool in pools or self.worker_pools]
        for name in names:
            if name in self.autoscaler_min_replicas:
                self.cluster.scale("Deployment", name, self.autoscaler_min_replicas[name])
        self.cluster.start(only=[("Deployment", name) for name in names])
        return names

    def wait_workers_ready(self, *deployments: str) -> list[Pod]:
        """Wait for every replica of the given Deployments (all pools by default)."""
        pods: list[Pod] = []
        for name in deployments or self.worker_pools.values():
            pods += self.cluster.wait_ready("Deployment", name, timeout=WORKERS_READY_SECONDS)
        return pods

    def start_all(self) -> None:
        """Broker first, then workers, as `pulumi up` orders them (workers depend on it)."""
        self.start_broker()
        self.start_workers()

    def run_check_job(self) -> JobResult:
        """Run the post-deploy check Job to completion."""
        return self.cluster.run_job(self.check_job, timeout=CHECK_JOB_SECONDS)

    # -- reaching the broker from the test process -----------------------------------------
    def port(self) -> int:
        """Return the broker Service's port, forwarded to the test process's 127.0.0.1."""
        if self.broker_port is None:
            self.broker_port = self.cluster.host_port(self.broker_service, "redis")
        return self.broker_port

    def url(self, user: str = "celery", password: str = CELERY_PASSWORD, db: int = 0) -> str:
        """Return a broker URL for the test process, with the test password.

        With TLS the host is `localhost` (a name the broker's certificate carries) and the
        server is verified against the test CA, as client pods verify it.
        """
        if self.ca_file is None:
            return f"redis://{user}:{password}@127.0.0.1:{self.port()}/{db}"
        return (
            f"rediss://{user}:{password}@localhost:{self.port()}/{db}"
            f"?ssl_cert_reqs=required&ssl_ca_certs={self.ca_file}"
        )

    def redis(
        self, user: str = "exporter", password: str = EXPORTER_PASSWORD, db: int = 0
    ) -> redis.Redis:
        """Open a redis-py client, by default as the read-only exporter user (LLEN, HLEN, INFO).

        It may read the sizes of the stack's queue lists and kombu's unacked keys, no value.
        """
        return redis.Redis.from_url(
            self.url(user, password, db), socket_timeout=5, socket_connect_timeout=5
        )

    def queue_length(self, queue: str) -> int:
        """Messages waiting in a Celery queue (kombu's list named like the queue)."""
        with self.redis() as client:
            return int(client.llen(queue))

    def unacked(self) -> int:
        """Messages delivered to a worker and not yet acknowledged (kombu's `unacked` hash)."""
        with self.redis() as client:
            return int(client.hlen("unacked"))

    @contextmanager
    def producer(self) -> Iterator[Celery]:
        """Yield a Celery client that sends as the workers' user (results: see `results`).

        It has no result backend on purpose: Celery's AsyncResult keeps a pub/sub subscription
        that retries for many seconds when it is garbage-collected after the cluster is gone.
        """
        app = Celery("e2e-producer", broker=self.url(db=0), set_as_current=False)
        if self.ca_file is not None:
            app.conf.broker_use_ssl = {
                "ssl_cert_reqs": ssl.CERT_REQUIRED,
                "ssl_ca_certs": str(self.ca_file),
            }
        app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=5,
            broker_connection_retry_on_startup=True,
            broker_transport_options={"socket_timeout": 10, "socket_connect_timeout": 5},
        )
        try:
            yield app
        finally:
            with suppress(Exception):
                app.close()

    def results(self, task_ids: list[str], timeout: float = TASK_SECONDS) -> list[Any]:
        """Poll the result backend (db 1) until every task succeeded; return their values.

        Fails naming the tasks still missing (lost, or never consumed) or the first that failed.
        """
        keys = [f"celery-task-meta-{task_id}" for task_id in task_ids]
        metas: list[dict | None] = [None] * len(keys)
        deadline = time.monotonic() + timeout
        with self.redis("celery", CELERY_PASSWORD, db=1) as client:
            while True:
                metas = [json.loads(raw) if raw else None for raw in client.mget(keys)]
                done = [m for m in metas if m and m["status"] in READY_STATES]
                if len(done) == len(keys) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        failed = [
            m for m in metas if m and m["status"] != "SUCCESS" and m["status"] in READY_STATES
        ]
        assert not failed, f"a task failed: {failed[0]}"
        missing = [task_id for task_id, meta in zip(task_ids, metas, strict=True) if not meta]
        assert not missing, (
            f"{len(missing)} of {len(task_ids)} tasks have no result after {timeout}s (lost, or "
            f"never consumed): {missing[:5]}\n{self.cluster.describe()}"
        )
        return [meta["result"] for meta in metas if meta]

    def worker_pods(self, pool: str) -> list[Pod]:
        """Live, not terminating pods of one pool's Deployment."""
        return [
            pod
            for pod in self.cluster.pods(owner=("Deployment", self.worker_pools[pool]))
            if not pod.terminating.is_set()
        ]

    def running_worker_pods(self) -> list[Pod]:
        """Every replica of every pool once all their containers run (else [] to keep polling)."""
        pods = []
        for pool, deployment in self.worker_pools.items():
            replicas = self.cluster.store.find("Deployment", deployment)["spec"].get("replicas", 1)
            running = [p for p in self.worker_pods(pool) if p.containers[0].state == "running"]
            if len(running) < replicas:
                return []
            pods += running
        return pods


def load_objects(manifest_dir: Path) -> list[dict]:
    """Every object a render wrote, as dicts."""
    return [
        obj
        for path in sorted(manifest_dir.glob("*.yaml"))
        if (obj := yaml.safe_load(path.read_text()))
    ]


def find_names(objects: list[dict]) -> dict[str, Any]:
    """Find the broker, its Service, the worker Deployments and the check Job by kind."""

    def of_kind(kind: str) -> list[dict]:
        return [obj for obj in objects if obj.get("kind") == kind]

    (broker,) = of_kind("StatefulSet")
    broker_labels = broker["spec"]["template"]["metadata"]["labels"].items()
    broker_service = next(
        svc
        for svc in of_kind("Service")
        if svc["spec"].get("clusterIP") != "None"
        and svc["spec"].get("selector", {}).items() <= broker_labels
        and any(port.get("name") == "redis" for port in svc["spec"]["ports"])
    )
    (job,) = of_kind("Job")
    pools = {
        deployment["metadata"]["name"].removeprefix("celery-worker-"): deployment["metadata"][
            "name"
        ]
        for deployment in of_kind("Deployment")
        # Worker pools only: the scale-in controller needs an API server, which pods lack here.
        if deployment["metadata"]["labels"].get("app.kubernetes.io/name") == "worker"
    }
    autoscaled = {
        scaled["spec"]["scaleTargetRef"]["name"]: scaled["spec"].get("minReplicaCount", 1)
        for scaled in of_kind("ScaledObject")
        if scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    }
    return {
        "namespace": broker["metadata"]["namespace"],
        "broker": broker["metadata"]["name"],
        "broker_service": broker_service["metadata"]["name"],
        "worker_pools": pools,
        "check_job": job["metadata"]["name"],
        "autoscaler_min_replicas": autoscaled,
    }


# -- what operators would do (no operator runs here) -------------------------------------------
def emulate_cert_manager(objects: list[dict], work_dir: Path) -> tuple[list[dict], Path | None]:
    """Replace each cert-manager Certificate with the Secret cert-manager would issue for it.

    The pod runner refuses custom kinds it does not know, and no cert-manager runs here: a test
    CA signs a certificate for the Certificate's dnsNames, stored as the `kubernetes.io/tls`
    Secret (tls.crt, tls.key, ca.crt) its secretName names. Returns the objects and the CA
    certificate the test process trusts (None when the stack has no Certificate).
    """
    certificates = [obj for obj in objects if obj.get("kind") == "Certificate"]
    if not certificates:
        return objects, None
    ca = make_ca(work_dir / "ca", name="e2e-internal-ca")
    issued = []
    for index, certificate in enumerate(certificates):
        spec = certificate["spec"]
        pair = issue_server_certificate(ca, work_dir / f"cert-{index}", spec["dnsNames"])
        issued.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {
                    "name": spec["secretName"],
                    "namespace": certificate["metadata"]["namespace"],
                    "labels": spec.get("secretTemplate", {}).get("labels", {}),
                },
                "stringData": {
                    "tls.crt": pair.cert.read_text(),
                    "tls.key": pair.key.read_text(),
                    "ca.crt": ca.cert.read_text(),
                },
            }
        )
    kept = [obj for obj in objects if obj.get("kind") != "Certificate"]
    return kept + issued, ca.cert


CLIENT_CA_DIR = "/etc/celery-redis/broker-ca"
"""Where client pods are meant to see the broker's CA (the client Secret's ssl_ca_certs)."""


@pytest.fixture(scope="session")
def open_stack(images: dict[str, LocalImage], work_dir: Path) -> Callable[..., Any]:
    """Return a factory of running stacks, used as a context manager around a test.

    Every process, namespace and state directory of the cluster is gone when the block ends,
    whether the test passed or failed (LocalCluster's context manager).
    """

    @contextmanager
    def open_stack_cm(
        manifest_dir: Path,
        secret_values: dict[str, str] | None = None,
        secret_overrides: dict[str, dict[str, str | None]] | None = None,
        patch: Callable[[list[dict]], list[dict]] | None = None,
    ) -> Iterator[RunningStack]:
        objects, ca_file = emulate_cert_manager(
            load_objects(manifest_dir), Path(tempfile.mkdtemp(prefix="cert-manager-", dir=work_dir))
        )
        if patch is not None:
            objects = patch(objects)
        with LocalCluster(
            objects,
            images=images,
            secret_values=SECRET_VALUES if secret_values is None else secret_values,
            secret_overrides=secret_overrides,
            time_scale=TIME_SCALE,
            backoff=BACKOFF,
        ) as cluster:
            yield RunningStack(cluster=cluster, ca_file=ca_file, **find_names(objects))

    return open_stack_cm


# -- tasks the test process sends ----------------------------------------------------------------
PDF_TASK = "src.tasks.process_pdf_task"
RECORD_TASK = "src.tasks.record_execution"
RECORD_FILE = "/tmp/e2e-executions.log"
"""Where record_execution writes inside a worker pod (its /tmp emptyDir; read with pod.exec)."""

ONE_MIB = 1024 * 1024


def fake_pdf(size: int = ONE_MIB) -> bytes:
    """Return a PDF-like payload that is not UTF-8: Celery's JSON carries it base64, as a PDF."""
    header = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
    return header + os.urandom(size - len(header))


def send_pdfs(app: Celery, count: int, queue: str = "celery", size: int = ONE_MIB) -> list[str]:
    """Send `count` process_pdf_task messages of `size` bytes; return their task ids."""
    return [
        app.send_task(PDF_TASK, args=[fake_pdf(size), f"e2e-{index}.pdf"], queue=queue).id
        for index in range(count)
    ]


def records(pod: Pod) -> list[str]:
    """Labels record_execution wrote in one worker pod (empty when it ran none there)."""
    result = pod.exec(["cat", RECORD_FILE])
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
