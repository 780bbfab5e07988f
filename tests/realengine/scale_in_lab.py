"""A worker pool and its scale-in controller on the real control plane, as rendered (no tests here).

    with ScaleInLab(control_plane, node, "scalein-proof", replicas=3) as lab:
        lab.wait_ready()
        lab.send("long", seconds=20)
        busy = lab.wait_started("long")
        lab.scale(2)

What runs is what `pulumi up` would create for the pool and the controller: the real program
renders a stack holding one pool (brokerctl.mockrun), and its worker Deployment, wiring
ConfigMap, PodDisruptionBudget and the controller's ConfigMap, ServiceAccount, Role,
RoleBinding and Deployment are applied unchanged to the real API server; the real ReplicaSet
controller and scheduler place the pods on the node agent, which runs them (real Celery workers
of the stand-in app, the controller script with its real service-account token). The broker is
a redis-server pod of the same namespace with the rendered ACL rules of the `celery` and
`scalein` users; the client Secret carries URLs to it. Everything is deleted on exit.

`controller=False` renders the stack with `workers.scale_in.enabled: false`: the pool as it was
before the controller existed (the benchmark's "before").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import yaml
from celery import Celery

from brokerctl import deletioncost, mockrun, render
from components import endpoint, redis_config
from components.workers import WORKER
from tests.podrunner import wait_until
from tests.realengine.controlplane import ControlPlane
from tests.realengine.node_agent import NodeAgent

APP_IMAGE = "registry.example.com/transcritor-pdf:1.0.0"
REDIS_IMAGE = "docker.io/library/redis:7.2.7"
QUEUE = "proof"
POOL = "proof"
PORT = 6391
"""The lab broker's port in the pod network (not 6379: a stack's broker may be starting)."""
PASSWORDS = {
    redis_config.CELERY_USER: "lab-celery-Pa55",
    redis_config.SCALE_IN_USER: "lab-scalein-Pa55",
    "admin": "lab-admin-Pa55",
}
TASK = "src.tasks.record_in_broker"
APPLIED_KINDS = (
    "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "PodDisruptionBudget", "Deployment",
)  # fmt: skip
"""What the lab takes from the render: the pool's and the controller's objects, not the broker."""


def pool_settings(replicas: int) -> dict[str, Any]:
    """Return a one-process pool that hands a running task back 2 s after SIGTERM (observable)."""
    return {
        "name": POOL,
        "image": APP_IMAGE,
        "queues": [QUEUE],
        "replicas": replicas,
        "concurrency": 1,
        "soft_shutdown_seconds": 2,
        "termination_grace_period_seconds": 10,
        "liveness_stale_seconds": 10,
        "startup_seconds": 60,
        "soft_time_limit": 110,
        "time_limit": 120,
        "resources": {"memory_request": "64Mi", "memory_limit": "512Mi"},
    }


def rendered_objects(
    workdir: Path, namespace: str, replicas: int, *, controller: bool
) -> list[dict[str, Any]]:
    """Run the real program for a stack of one pool; return the objects the lab applies."""
    stack = {
        "config": {
            "celery-redis:namespace": namespace,
            "celery-redis:ephemeral": True,
            "celery-redis:broker": {"persistence": "none"},
            "celery-redis:checks": {"gate_enabled": False},
            "celery-redis:workers": {
                "pools": [pool_settings(replicas)],
                "scale_in": {"enabled": controller, "interval_seconds": 1},
            },
        }
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "Pulumi.scalein.yaml").write_text(yaml.safe_dump(stack))
    config, secret_keys = mockrun.read_stack_config("scalein", workdir)
    run = mockrun.run_program("scalein", config, secret_keys, workdir)
    objects = [render.manifest(r) for r in run.resources if render.is_kubernetes_object(r.type)]
    broker_parts = ("broker",)
    return [
        o
        for o in objects
        if o["kind"] in APPLIED_KINDS and not any(p in o["metadata"]["name"] for p in broker_parts)
    ]


def broker_config() -> str:
    """redis.conf of the lab broker: the rendered rules of the users the lab's pods log in as."""
    rules = redis_config.acl_user_rules([QUEUE])
    users = [
        f"user {user} on >{PASSWORDS[user]} {rules[user].removeprefix('on ')}"
        for user in (redis_config.CELERY_USER, redis_config.SCALE_IN_USER)
    ]
    return "\n".join(
        [
            "user default off",
            *users,
            f"user admin on >{PASSWORDS['admin']} ~* &* +@all",
            "bind 127.0.0.1",
            f"port {PORT}",
            "dir /data",
            'save ""',
            "appendonly no",
            "maxmemory 64mb",
            "maxmemory-policy noeviction",
            "",
        ]
    )


def broker_objects(namespace: str) -> list[dict[str, Any]]:
    """Return a one-pod Deployment of redis-server and its config (the pods share one network)."""
    labels = {"app": "lab-broker"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "lab-broker", "namespace": namespace},
            "data": {"redis.conf": broker_config()},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "lab-broker", "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 2,
                        "containers": [
                            {
                                "name": "redis",
                                "image": REDIS_IMAGE,
                                "command": ["redis-server", "/etc/redis/redis.conf"],
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/redis"},
                                    {"name": "data", "mountPath": "/data"},
                                ],
                                "readinessProbe": {
                                    "tcpSocket": {"port": PORT},
                                    "periodSeconds": 1,
                                },
                            }
                        ],
                        "volumes": [
                            {"name": "config", "configMap": {"name": "lab-broker"}},
                            {"name": "data", "emptyDir": {}},
                        ],
                    },
                },
            },
        },
    ]


def client_secret(name: str, namespace: str) -> dict[str, Any]:
    """Return the client Secret the rendered pods reference, with URLs to the lab broker."""

    def url(user: str, db: int) -> str:
        return f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{PORT}/{db}"

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {
            endpoint.BROKER_URL_KEY: url(redis_config.CELERY_USER, 0),
            endpoint.RESULT_BACKEND_KEY: url(redis_config.CELERY_USER, 1),
            endpoint.SCALE_IN_URL_KEY: url(redis_config.SCALE_IN_USER, 0),
        },
    }


def secret_names(objects: list[dict[str, Any]]) -> set[str]:
    """Return the Secrets the rendered pods read their env from."""
    return {
        env["valueFrom"]["secretKeyRef"]["name"]
        for o in objects
        if o["kind"] == "Deployment"
        for container in o["spec"]["template"]["spec"]["containers"]
        for env in container.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }


def is_ready(pod: dict[str, Any]) -> bool:
    """Whether the API server says the pod is Ready (its real probes passed)."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


class ScaleInLab:
    """The lab's namespace, objects and clients; a context manager that removes it all."""

    def __init__(
        self,
        cluster: ControlPlane,
        node: NodeAgent,
        namespace: str,
        workdir: Path,
        *,
        replicas: int,
        controller: bool = True,
    ) -> None:
        """Render and keep the objects; __enter__ creates them."""
        self.cluster = cluster
        self.node = node
        self.namespace = namespace
        self.controller = controller
        self.objects = rendered_objects(workdir, namespace, replicas, controller=controller)
        self.deployment = next(
            o["metadata"]["name"]
            for o in self.objects
            if o["kind"] == "Deployment"
            and o["metadata"]["labels"]["app.kubernetes.io/name"] == WORKER
        )
        self.selector = ",".join(
            f"{k}={v}"
            for k, v in next(o for o in self.objects if o["metadata"]["name"] == self.deployment)[
                "spec"
            ]["selector"]["matchLabels"].items()
        )
        self._redis: redis.Redis | None = None
        self._producer: Celery | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> ScaleInLab:
        """Create the namespace, the broker, the client Secret and the rendered objects."""
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})
        self.cluster.wait_for_service_account(self.namespace)
        self.apply(*broker_objects(self.namespace))
        self.apply(*(client_secret(n, self.namespace) for n in secret_names(self.objects)))
        self.apply(*self.objects)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Delete the namespace and wait until its pods are gone (the node is shared)."""
        self.cluster.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
        deadline = time.monotonic() + 90
        while self.node.pods(self.namespace) and time.monotonic() < deadline:
            time.sleep(0.5)

    def apply(self, *objects: dict[str, Any]) -> None:
        """`kubectl apply` objects, as a user would."""
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        self.cluster.kubectl("apply", "-f", "-", stdin=manifest)

    # -- reading the cluster ---------------------------------------------------------------
    def pods(self) -> list[dict[str, Any]]:
        """Return the pool's pods that are not being deleted, as the API server has them."""
        found = self.node.api.list(
            f"/api/v1/namespaces/{self.namespace}/pods", labelSelector=self.selector
        )
        return [p for p in found if not p["metadata"].get("deletionTimestamp")]

    def all_pods(self) -> list[dict[str, Any]]:
        """Return every pod of the namespace (workers, controller, broker), deleting ones too."""
        return self.node.api.list(f"/api/v1/namespaces/{self.namespace}/pods")

    def costs(self) -> dict[str, str | None]:
        """Return pod name -> its pod-deletion-cost annotation."""
        return {
            p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(
                deletioncost.ANNOTATION
            )
            for p in self.pods()
        }

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll until condition holds; the failure message shows the node's pods."""
        return wait_until(condition, timeout, what, self.describe, interval=0.25)

    def describe(self) -> str:
        """Return the node's view of the pods, for failure messages."""
        return self.node.describe()

    def wait_ready(self, replicas: int, timeout: float = 120) -> list[str]:
        """Wait until `replicas` workers (and the controller and broker) are Ready."""

        def ready() -> list[str] | None:
            pods = self.all_pods()
            workers = [p for p in self.pods() if is_ready(p)]
            others = [p for p in pods if not p["metadata"]["name"].startswith(self.deployment)]
            if len(workers) == replicas and others and all(is_ready(p) for p in others):
                return sorted(p["metadata"]["name"] for p in workers)
            return None

        return self.wait(ready, timeout, f"{replicas} ready workers, controller and broker")

    # -- the broker ------------------------------------------------------------------------
    def redis(self) -> redis.Redis:
        """Return an admin client of the lab broker, through a port forward into the pod network."""
        if self._redis is None:
            port = self.node.host_port(PORT)
            self._redis = redis.Redis(
                host="127.0.0.1",
                port=port,
                username="admin",
                password=PASSWORDS["admin"],
                socket_timeout=10,
                socket_connect_timeout=10,
            )
        return self._redis

    def send(self, label: str, seconds: float) -> None:
        """Send one stand-in task that records each start and finish under `label`."""
        if self._producer is None:
            port = self.node.host_port(PORT)
            user = redis_config.CELERY_USER
            url = f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{port}/0"
            self._producer = Celery("scale-in-lab", broker=url, set_as_current=False)
            self._producer.conf.broker_transport_options = {"socket_timeout": 10}
        self._producer.send_task(TASK, args=[f"lab:{label}", seconds], queue=QUEUE)

    def starts(self, label: str) -> list[str]:
        """Return the pods that started the task, once per execution."""
        return [v.decode() for v in self.redis().lrange(f"lab:{label}:starts", 0, -1)]

    def finishes(self, label: str) -> list[str]:
        """Return the pods that finished the task."""
        return [v.decode() for v in self.redis().lrange(f"lab:{label}:finishes", 0, -1)]

    def scale(self, replicas: int) -> None:
        """Change the Deployment's replicas through the API (what KEDA, an HPA or a user does)."""
        self.cluster.kubectl(
            "-n", self.namespace, "scale", "deployment", self.deployment, f"--replicas={replicas}"
        )
