"""Run a worker pool as the rendered Deployment would, on this machine (no tests in this module).

    pool = render_pool(tmp_path, {"name": "short", "queues": ["short"]})
    with (
        booted_broker(rendered_broker("dev")) as redis_server,
        pod_worker(pool, redis_server) as pod,
    ):
        pod.probe("liveness")  # the rendered exec probe, run inside the worker's mount namespace

`render_pool` runs the real program (`__main__.py`) under Pulumi's mocks for a stack holding
that one pool, and keeps the pool's Deployment and wiring ConfigMap as rendered. `pod_worker`
starts the container's command with `celery` mapped to this virtualenv's, its environment with
the Secret references filled in for the local broker, the ConfigMap's files in a directory that
replaces PYTHONPATH's first entry, and, like a pod, a private /tmp (its own mount namespace)
and its own hostname (a UTS namespace: `%h` becomes the pod name). Probes run with nsenter in
that mount namespace, as the kubelet execs them in the container.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from celery import Celery
from kombu.exceptions import OperationalError

from brokerctl import mockrun, render
from components.celery_config import CONFIG_DIR
from components.endpoint import BROKER_URL_KEY, RESULT_BACKEND_KEY
from tests.support.broker_boot import BootedBroker
from tests.support.celery_worker import (
    STANDIN_APP_DIR,
    CeleryWorker,
    celery_executable,
    running_worker,
)
from tests.support.redis_server import CELERY_PASSWORD, RedisServer
from tests.support.tcp_proxy import TcpProxy

SCRATCH = Path("/var/tmp")  # outside /tmp, which each worker replaces with its own
_pod_numbers = itertools.count(1)


def _keep_under_tmp(private_tmp: Path) -> list[str]:
    """Shell steps that keep this checkout and its venv visible when /tmp is replaced.

    CI may clone the repository under /tmp; a pod-like private /tmp would hide the celery
    executable and the stand-in app. Each such folder is bound into the private /tmp at its
    own path first, and `mount --rbind` carries those binds along.
    """
    steps = []
    for path in sorted({Path(sys.prefix).resolve(), STANDIN_APP_DIR.resolve()}):
        if Path("/tmp") not in path.parents:
            continue
        inside = private_tmp / path.relative_to("/tmp")
        inside.mkdir(parents=True, exist_ok=True)
        steps.append(f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(inside))} && ")
    return steps


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """Yield a directory both the test and its workers see (a worker's /tmp is its own)."""
    path = Path(tempfile.mkdtemp(prefix="worker-test-", dir=SCRATCH))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class RenderedPool:
    """One pool's objects as `brokerctl render` writes them."""

    name: str
    deployment: dict[str, Any]
    config_files: dict[str, str]

    @property
    def container(self) -> dict[str, Any]:
        """The worker container of the pod template."""
        return self.deployment["spec"]["template"]["spec"]["containers"][0]

    @property
    def grace_period_seconds(self) -> int:
        """The pod's terminationGracePeriodSeconds."""
        return int(self.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])

    def probe_command(self, kind: str) -> list[str]:
        """Return the exec command of the `liveness`, `readiness` or `startup` probe."""
        return list(self.container[f"{kind}Probe"]["exec"]["command"])


APP_IMAGE = "registry.example.com/transcritor-pdf:1.0.0"


def render_pool(
    workdir: Path, pool: dict[str, Any], stack: str = "workertest", **stack_settings: Any
) -> RenderedPool:
    """Render a stack holding this one pool through the real program; return its objects."""
    stack_file = {
        "config": {
            "celery-redis:namespace": "workers-test",
            "celery-redis:ephemeral": True,
            "celery-redis:broker": {"persistence": "none"},
            # The model requires a pinned image; the harness runs the pool's command locally.
            "celery-redis:workers": {"pools": [{"image": APP_IMAGE, **pool}], **stack_settings},
        }
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump(stack_file))
    config, secret_keys = mockrun.read_stack_config(stack, workdir)
    run = mockrun.run_program(stack, config, secret_keys, workdir)
    objects = [render.manifest(r) for r in run.resources if render.is_kubernetes_object(r.type)]
    deployment = _one(objects, "Deployment", f"worker-{pool['name']}")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    config_map = _one(objects, "ConfigMap", volume["configMap"]["name"])
    return RenderedPool(pool["name"], deployment, dict(config_map["data"]))


def _one(objects: list[dict[str, Any]], kind: str, name_part: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name_part in o["metadata"]["name"]]
    assert len(found) == 1, f"expected one {kind} named *{name_part}*, got {len(found)}"
    return found[0]


def pod_environment(
    pool: RenderedPool,
    redis_server: RedisServer,
    config_dir: Path,
    celery_bin_dir: Path,
    pod_name: str = "worker-pod",
) -> dict[str, str]:
    """Return the container's env: Secret and downward-API references resolved, dirs local."""
    secret = {
        BROKER_URL_KEY: redis_server.url("celery", CELERY_PASSWORD, db=0),
        RESULT_BACKEND_KEY: redis_server.url("celery", CELERY_PASSWORD, db=1),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "PYTHON", "REMAP"))}
    env["PATH"] = f"{celery_bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    for variable in pool.container.get("env", []):
        if variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[variable["name"]] = pod_name
        elif "valueFrom" in variable:
            env[variable["name"]] = secret[variable["valueFrom"]["secretKeyRef"]["key"]]
        else:
            env[variable["name"]] = variable["value"]
    first, _, _image_path = env["PYTHONPATH"].partition(":")
    assert first == CONFIG_DIR, f"PYTHONPATH must start with the ConfigMap dir: {env['PYTHONPATH']}"
    env["PYTHONPATH"] = f"{config_dir}:{STANDIN_APP_DIR}"  # the image's /app is the stand-in app
    return env


def pod_command(pool: RenderedPool, celery_bin: str) -> list[str]:
    """Return the container's command with the image's `celery` replaced by a local one."""
    command = list(pool.container["command"])
    assert command[0] == "celery", f"unexpected worker executable {command[0]}"
    return [celery_bin, *command[1:]]


@dataclass
class PodWorker:
    """A worker started like the pod's container; its private /tmp and its node name."""

    worker: CeleryWorker
    pool: RenderedPool
    pod_name: str
    private_tmp: Path
    killed: bool = False

    @property
    def nodename(self) -> str:
        """The Celery node name, `%h` expanded to the pod name as in the cluster."""
        return self.pool.container["command"][
            self.pool.container["command"].index("-n") + 1
        ].replace("%h", self.pod_name)

    @property
    def pid(self) -> int:
        """PID of the container's main process (the worker's MainProcess)."""
        return self.worker.process.pid

    def probe(self, kind: str) -> bool:
        """Run the rendered probe in the worker's mount namespace; True when it passes."""
        argv = ["nsenter", "-t", str(self.pid), "-m", *self.pool.probe_command(kind)]
        return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0

    def kill(self) -> None:
        """SIGKILL the whole container (what the kubelet does when the grace period ends)."""
        self.killed = True
        os.killpg(self.pid, signal.SIGCONT)
        os.killpg(self.pid, signal.SIGKILL)

    def terminate(self) -> None:
        """Do what the kubelet does first: SIGTERM to the container's main process only."""
        os.kill(self.pid, signal.SIGTERM)


@contextmanager
def pod_worker(
    pool: RenderedPool,
    redis_server: RedisServer,
    *,
    celery_bin: str | None = None,
    ready_timeout: float = 30.0,
) -> Iterator[PodWorker]:
    """Start the pool's container command as a local process in its own mount and UTS namespace."""
    celery = celery_bin or celery_executable()[0]
    pod_name = f"{pool.name}-pod{next(_pod_numbers)}-{os.getpid()}"
    config_dir = Path(tempfile.mkdtemp(prefix="configmap-", dir=SCRATCH))
    private_tmp = Path(tempfile.mkdtemp(prefix="pod-tmp-", dir=SCRATCH))
    for file_name, text in pool.config_files.items():
        (config_dir / file_name).write_text(text)
    env = pod_environment(pool, redis_server, config_dir, Path(celery).parent, pod_name)
    container = (
        'hostname "$1" && '
        + "".join(_keep_under_tmp(private_tmp))
        + 'mount --rbind "$0" /tmp && shift && exec "$@"'
    )
    argv = [
        *("unshare", "--mount", "--uts", "--propagation", "private"),
        *("sh", "-c", container, str(private_tmp), pod_name),
        *pod_command(pool, celery),
    ]
    try:
        with running_worker(
            argv, env=env, cwd=STANDIN_APP_DIR, ready_timeout=ready_timeout, stop_timeout=60
        ) as worker:
            pod = PodWorker(worker, pool, pod_name, private_tmp)
            yield pod
            if not pod.killed:
                _wait_until_idle(pod, redis_server)
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)
        shutil.rmtree(private_tmp, ignore_errors=True)


def _wait_until_idle(pod: PodWorker, redis_server: RedisServer) -> None:
    """Wait until the worker has no task in hand before the context stops it.

    A SIGTERM in the instant a task completes can stall Celery's cold shutdown until SIGKILL
    (seen with 5.7 prefork); tests stopping a worker after their checks should not pay that.
    """
    inspect = client_app(redis_server).control.inspect([pod.nodename], timeout=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pod.worker.process.poll() is None:
        try:
            active = (inspect.active() or {}).get(pod.nodename)
        except OperationalError:  # the test took the broker away: nothing to wait for
            return
        if active == []:
            return
        time.sleep(0.1)


def client_app(redis_server: RedisServer) -> Celery:
    """Return a producer/inspector app talking to the local broker as the celery user."""
    app = Celery(
        "test-client",
        broker=redis_server.url("celery", CELERY_PASSWORD, db=0),
        backend=redis_server.url("celery", CELERY_PASSWORD, db=1),
    )
    # A test must fail, never hang, when it has cut a worker's broker off on purpose.
    app.conf.broker_transport_options = {"socket_timeout": 5, "socket_connect_timeout": 5}
    app.conf.redis_socket_timeout = 5
    return app


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    msg = f"timed out after {timeout} s waiting for {what}"
    raise AssertionError(msg)


def executions(record: Path) -> list[str]:
    """Labels written by `src.tasks.record_execution`, one per run of the task."""
    return [line.split()[0] for line in record.read_text().splitlines()] if record.exists() else []


@dataclass
class ProxiedRedis:
    """A RedisServer look-alike whose URLs go through a proxy (for pod_environment)."""

    server: RedisServer
    port: int

    def url(self, user: str | None = None, password: str | None = None, db: int = 0) -> str:
        """Return the server's URL with the proxy's port."""
        return self.server.url(user, password, db).replace(
            f":{self.server.port}/", f":{self.port}/"
        )


def consuming_connection_port(broker: BootedBroker, proxy: TcpProxy) -> int:
    """Return the proxy-side port of the worker's BRPOP connection, as Redis's CLIENT LIST says.

    One worker behind `proxy`: its consumer is the only client of the proxy whose last command
    is BRPOP (it issues one every second), so `proxy.silence(port)` cuts that connection only.
    """

    def brpop_ports() -> list[int]:
        with broker.admin() as admin:
            clients = admin.client_list()
        commands = {int(client["addr"].rsplit(":", 1)[1]): client["cmd"] for client in clients}
        proxied = proxy.upstream_ports()
        return [port for port, cmd in commands.items() if cmd == "brpop" and port in proxied]

    ports = wait_for(brpop_ports, 10, "the worker's BRPOP connection to show in CLIENT LIST")
    assert len(ports) == 1, f"expected one consuming connection through the proxy, got {ports}"
    return int(ports[0])


def seconds_until_probe_fails(pod: PodWorker, kind: str, timeout: float) -> float | None:
    """Run the pod's `kind` probe every half second; return when it first failed, or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not pod.probe(kind):
            return time.monotonic() - started
        time.sleep(0.5)
    return None
