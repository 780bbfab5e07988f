"""Fixtures of the end-to-end tests: rendered stacks run as local pods by tests/podrunner.

A stack is rendered exactly as `python -m brokerctl render` writes it; the only change a test
makes to the objects is the one Pulumi would make at `up`: the generated passwords, which render
leaves as placeholders, become test values. Variants (faster probes, shorter shutdowns) are
rendered from stack files of our own, never by editing rendered objects.

These tests need root, redis-server and iproute2. They FAIL when those are missing: a CI machine
that lost redis-server must not report green by skipping the tests that matter most.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from brokerctl.render import render_stack, write_objects
from tests.e2e.images import copy_standin_app, ensure_standin_venv, image_table
from tests.podrunner import Backoff, JobResult, LocalCluster, LocalImage, Pod, wait_until

CELERY_PASSWORD = "e2e-celery-password"
PROBE_PASSWORD = "e2e-probe-password"
SECRET_VALUES = {
    "redacted-broker-celery-password": CELERY_PASSWORD,
    "redacted-broker-probe-password": PROBE_PASSWORD,
}
"""What `pulumi up` would put where render leaves placeholders (generated passwords)."""

TIME_SCALE = 0.1
"""Probe periods and initial delays x0.1 (timeouts and grace periods stay as rendered)."""

BACKOFF = Backoff(initial=0.2, cap=1.0)
"""Container restart and Job retry back-off; the kubelet's 10 s..300 s would dominate a run."""

HOST_TOOLS = ("redis-server", "redis-cli", "ip", "sh", "sha256sum")

BROKER_READY_SECONDS = 30
WORKERS_READY_SECONDS = 45
CHECK_JOB_SECONDS = 60
TASK_SECONDS = 60


@pytest.fixture(scope="session")
def e2e_host() -> None:
    """Fail (never skip) when this machine cannot run pods: root, redis-server, iproute2."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the end-to-end tests need root (network and mount namespaces, uids)")
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing:
        problems.append(
            f"missing host tools {missing}: install redis-server (Debian package, which brings "
            "redis-cli) and iproute2 (`make test` does)"
        )
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def images(e2e_host: None) -> Iterator[dict[str, LocalImage]]:
    """Return the image table, with the stand-in venv built and the app copied for /app."""
    ensure_standin_venv()
    app_dir = Path(tempfile.mkdtemp(prefix="celery-redis-e2e-app-"))
    try:
        yield image_table(copy_standin_app(app_dir))
    finally:
        shutil.rmtree(app_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Render a stack once per session: `rendered("dev")`, or a variant from our own stack file.

    `rendered("e2e-fast", stack_file=TEXT)` writes TEXT as `Pulumi.e2e-fast.yaml` into a private
    config folder and renders from there (`--config-dir`), exactly as the CLI would.
    """
    cache: dict[str, Path] = {}

    def render(stack: str, stack_file: str | None = None) -> Path:
        if stack not in cache:
            out = tmp_path_factory.mktemp(f"rendered-{stack}")
            if stack_file is None:
                objects = render_stack(stack)
            else:
                config_dir = tmp_path_factory.mktemp(f"config-{stack}")
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
        """Start worker pools (all by default); return their Deployment names."""
        names = [self.worker_pools[pool] for pool in pools or self.worker_pools]
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
        """Return a broker URL for the test process, with the test password."""
        return f"redis://{user}:{password}@127.0.0.1:{self.port()}/{db}"

    def redis(self, user: str = "probe", password: str = PROBE_PASSWORD) -> redis.Redis:
        """Open a redis-py client, by default as the read-only probe user (LLEN, HLEN, INFO)."""
        return redis.Redis.from_url(
            self.url(user, password), socket_timeout=5, socket_connect_timeout=5
        )

    def queue_length(self, queue: str) -> int:
        """Messages waiting in a Celery queue (kombu's list named like the queue)."""
        with self.redis() as client:
            return int(client.llen(queue))

    @contextmanager
    def producer(self) -> Iterator[Celery]:
        """Yield a Celery client sending as the workers' user and reading the result backend."""
        app = Celery(
            "e2e-producer",
            broker=self.url(db=0),
            backend=self.url(db=1),
            set_as_current=False,
        )
        app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            result_serializer="json",
            broker_connection_timeout=5,
            broker_connection_retry_on_startup=True,
            broker_transport_options={"socket_timeout": 10, "socket_connect_timeout": 5},
            redis_socket_timeout=10,
        )
        try:
            yield app
        finally:
            with suppress(Exception):
                app.close()

    def worker_pods(self, pool: str) -> list[Pod]:
        """Live, not terminating pods of one pool's Deployment."""
        return [
            pod
            for pod in self.cluster.pods(owner=("Deployment", self.worker_pools[pool]))
            if not pod.terminating.is_set()
        ]

    def wait_no_workers(self, pool: str, timeout: float = 30) -> None:
        """Wait until a pool scaled to zero has no pod left (terminating ones included)."""
        owner = ("Deployment", self.worker_pools[pool])
        wait_until(
            lambda: not self.cluster.pods(owner=owner),
            timeout,
            f"pool {pool} to have no pods",
            describe=lambda: self.cluster.describe(owner),
        )


def find_names(objects_dir: Path) -> dict[str, Any]:
    """Find the broker, its Service, the worker Deployments and the check Job by kind."""
    import yaml

    objects = [yaml.safe_load(path.read_text()) for path in sorted(objects_dir.glob("*.yaml"))]

    def of_kind(kind: str) -> list[dict]:
        return [obj for obj in objects if obj and obj.get("kind") == kind]

    (broker,) = of_kind("StatefulSet")
    broker_service = next(
        svc
        for svc in of_kind("Service")
        if svc["spec"].get("clusterIP") != "None"
        and svc["spec"].get("selector", {}).items()
        <= broker["spec"]["template"]["metadata"]["labels"].items()
    )
    (job,) = of_kind("Job")
    pools = {}
    for deployment in of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        pools[name.removeprefix("celery-worker-")] = name
    return {
        "namespace": broker["metadata"]["namespace"],
        "broker": broker["metadata"]["name"],
        "broker_service": broker_service["metadata"]["name"],
        "worker_pools": pools,
        "check_job": job["metadata"]["name"],
    }


@pytest.fixture(scope="session")
def open_stack(images: dict[str, LocalImage]) -> Callable[..., Any]:
    """Return a factory of running stacks, used as a context manager around a test.

    Every process, namespace and state directory of the cluster is gone when the block ends,
    whether the test passed or failed (LocalCluster's context manager).
    """

    @contextmanager
    def open_stack_cm(
        manifest_dir: Path,
        secret_values: dict[str, str] | None = None,
        secret_overrides: dict[str, dict[str, str | None]] | None = None,
        time_scale: float = TIME_SCALE,
    ) -> Iterator[RunningStack]:
        with LocalCluster(
            manifest_dir,
            images=images,
            secret_values=SECRET_VALUES if secret_values is None else secret_values,
            secret_overrides=secret_overrides,
            time_scale=time_scale,
            backoff=BACKOFF,
        ) as cluster:
            yield RunningStack(cluster=cluster, **find_names(manifest_dir))

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


def send_pdfs(app: Celery, count: int, queue: str = "celery", size: int = ONE_MIB) -> list:
    """Send `count` process_pdf_task messages of `size` bytes; return their AsyncResults."""
    return [
        app.send_task(PDF_TASK, args=[fake_pdf(size), f"e2e-{index}.pdf"], queue=queue)
        for index in range(count)
    ]


def collect(results: list, timeout: float = TASK_SECONDS) -> list:
    """Every result's value within one bounded wait; fails naming the tasks still missing."""
    deadline = time.monotonic() + timeout
    values = []
    for result in results:
        remaining = deadline - time.monotonic()
        try:
            values.append(result.get(timeout=max(remaining, 0.1), interval=0.1))
        except TimeoutError:
            missing = [r.id for r in results if not r.ready()]
            pytest.fail(
                f"{len(missing)} of {len(results)} tasks got no result within {timeout}s "
                f"(lost or never consumed): {missing[:5]}",
                pytrace=False,
            )
    return values


def records(pod: Pod) -> list[str]:
    """Labels record_execution wrote in one worker pod (empty when it ran none there)."""
    result = pod.exec(["cat", RECORD_FILE])
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
