"""README's broker password rotation, run as written with the real CLI, under a steady producer.

The dev stack is deployed in a namespace of its own with a generated broker password (the
stack file sets none). A producer (the user's web app) sends stand-in PDF tasks through a port
forward the whole time. Each numbered step of README's "Rotating the broker password" runs
verbatim in bash in the project copy: `pulumi` there is the pinned CLI, except that `pulumi up`
goes through the engine driver (no Python language host here, see engine.py). Every program
the steps start has its command line recorded, so a password on argv fails the test.

Then: every task sent was processed, the workers' processes hold the new password, the old one
is refused by Redis after the last step, and Redis itself was never restarted (same pod, same
redis-server process): the reloader sidecar applied both ACL changes live.

The rotation runs twice: first from the generated password, then from the one step 1 set.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from tests.realengine.controlplane import ControlPlane
from tests.realengine.deployed import Deployed, deployed_stack
from tests.realengine.engine import OPERATION_TIMEOUT
from tests.realengine.node_agent import NodeAgent
from tests.realengine.toolchain import PROJECT_ROOT, binary

NAMESPACE = "rotate-dev"
TASK = "src.tasks.process_pdf_task"
SEND_INTERVAL = 0.2
"""Seconds between two tasks of the producer: a steady stream across every `pulumi up`."""
SETTLE_SECONDS = 120
"""Bound on the kubelet's Secret refresh plus the reloader's pass (README: a minute or two)."""
RECORDED = ("pulumi", "python3", "openssl")
"""Programs the README's steps run whose command lines are recorded (what `ps` would show)."""


def readme_steps() -> list[str]:
    """Return the shell commands of each numbered step of README's rotation section."""
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text.split("## Rotating the broker password", 1)[1].split("\n## ", 1)[0]
    steps = re.split(r"\n(?=\d+\. )", section)[1:]
    blocks = []
    for step in steps:
        code = [line[7:] for line in step.splitlines() if line.startswith("       ")]
        assert code, f"a README step has no commands:\n{step}"
        blocks.append("\n".join(code))
    return blocks


def command_shims(deployed: Deployed, folder: Path) -> Path:
    """Put recording wrappers of the steps' programs in `folder`; return the argv log.

    `pulumi up` runs the engine driver on this stack; every other `pulumi` command is the
    pinned CLI, as a user's shell would run it in the project folder.
    """
    folder.mkdir()
    log = folder / "argv.log"
    real = {
        "pulumi": str(binary("pulumi")),
        "python3": str(Path(sys.executable).parent / "python3"),
        "openssl": "/usr/bin/openssl",
    }
    driver = shlex.join([
        sys.executable, "-m", "tests.realengine.driver",
        "--work-dir", str(deployed.stack.work_dir), "--stack", deployed.stack.stack, "up",
    ])  # fmt: skip
    for name in RECORDED:
        lines = ["#!/bin/bash", f'printf "%s\\n" "{name} $*" >> {shlex.quote(str(log))}']
        if name == "pulumi":
            lines.append(f'if [ "$1" = up ]; then cd {shlex.quote(str(PROJECT_ROOT))}; '
                         f'exec {driver}; fi')  # fmt: skip
        lines.append(f'exec {shlex.quote(real[name])} "$@"')
        shim = folder / name
        shim.write_text("\n".join(lines) + "\n")
        shim.chmod(0o755)
    return log


def run_step(deployed: Deployed, shims: Path, block: str) -> str:
    """Run one README step verbatim in bash in the project copy; fail with its output."""
    env = deployed.stack.env()
    env["PATH"] = f"{shims}:{env['PATH']}"
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block],
        cwd=deployed.stack.work_dir, env=env, capture_output=True, text=True,
        timeout=OPERATION_TIMEOUT + 120, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"README step failed:\n{block}\n{output}\n{deployed.node.describe()}"
    )
    return output


def password_of(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).password or "")


def forwarded(url: str, port: int) -> str:
    """Return the same URL (user, password, db) through the test's port forward."""
    parts = urllib.parse.urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}"))


class Producer(threading.Thread):
    """The user's web app: sends a task every SEND_INTERVAL; `restart` gives it new URLs."""

    def __init__(self, broker_url: str, backend_url: str) -> None:
        super().__init__(name="rotation-producer", daemon=True)
        self.lock = threading.Lock()
        self.app = self.make_app(broker_url, backend_url)
        self.phase = "before"
        self.sent: list[tuple[str, str, int]] = []  # (task id, phase, expected result)
        self.errors: list[str] = []
        self.stopping = threading.Event()

    @staticmethod
    def make_app(broker_url: str, backend_url: str) -> Celery:
        app = Celery("producer", broker=broker_url, backend=backend_url)
        app.conf.update(task_serializer="json", accept_content=["json"])
        return app

    def restart(self, broker_url: str, backend_url: str, phase: str) -> None:
        """Reconnect with new URLs: README asks this of other apps after step 1."""
        with self.lock:
            self.app = self.make_app(broker_url, backend_url)
            self.phase = phase

    def run(self) -> None:
        index = 0
        while not self.stopping.wait(SEND_INTERVAL):
            with self.lock:
                app, phase = self.app, self.phase
            payload = f"{phase}-{index}"
            try:
                result = app.send_task(TASK, args=[payload, f"{payload}.pdf"])
            except Exception as error:  # any refused send is downtime
                self.errors.append(f"{phase}-{index}: {error!r}")
            else:
                with self.lock:
                    self.sent.append((result.id, phase, len(payload)))
            index += 1

    def mark(self, phase: str) -> None:
        with self.lock:
            self.phase = phase

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)


def accepts(port: int, password: str) -> bool:
    """Whether a new connection as celery with `password` is let in."""
    client = redis.Redis(
        host="127.0.0.1", port=port, username="celery", password=password,
        socket_timeout=10, socket_connect_timeout=10,
    )  # fmt: skip
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return False
    finally:
        client.close()


def wait_for(condition: Callable[[], bool], what: str, deployed: Deployed) -> None:
    """Poll until `condition` holds (bounded by SETTLE_SECONDS); fail with the reloader's log."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            message = f"{what} did not happen; reloader log:\n{reloader_log(deployed)}"
            raise AssertionError(message)
        time.sleep(1)


def broker_pod(deployed: Deployed) -> dict[str, Any]:
    pods = [
        p
        for p in deployed.get("pods")["items"]
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "redis"
    ]
    assert len(pods) == 1, f"expected one broker pod:\n{deployed.node.describe()}"
    return pods[0]


def redis_identity(deployed: Deployed) -> tuple[str, int, int]:
    """Return the broker pod's UID, its redis-server's pid and the container's restarts."""
    pod = broker_pod(deployed)
    name = pod["metadata"]["name"]
    container = deployed.node.find_container(NAMESPACE, name, "redis")
    assert container is not None, deployed.node.describe()
    assert container.current is not None, deployed.node.describe()
    return pod["metadata"]["uid"], container.current.process.pid, container.restart_count


def reloader_log(deployed: Deployed) -> str:
    name = broker_pod(deployed)["metadata"]["name"]
    container = deployed.node.find_container(NAMESPACE, name, "reloader")
    return container.logs() if container is not None else "(no reloader container)"


def worker_pods(deployed: Deployed) -> dict[str, str]:
    """Return the running worker pods: name -> UID."""
    return {
        p["metadata"]["name"]: p["metadata"]["uid"]
        for p in deployed.get("pods")["items"]
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
        and p["status"].get("phase") == "Running"
        and "deletionTimestamp" not in p["metadata"]
    }


def worker_broker_passwords(deployed: Deployed) -> set[str]:
    """Return the password in CELERY_BROKER_URL of every running worker process."""
    passwords = set()
    for name in worker_pods(deployed):
        container = deployed.node.find_container(NAMESPACE, name, "worker")
        assert container is not None, deployed.node.describe()
        assert container.current is not None, deployed.node.describe()
        environ = Path(f"/proc/{container.current.process.pid}/environ").read_bytes()
        variables = dict(
            item.decode().split("=", 1) for item in environ.split(b"\0") if b"=" in item
        )
        passwords.add(password_of(variables["CELERY_BROKER_URL"]))
    return passwords


@pytest.fixture(scope="module")
def deployed(
    control_plane: ControlPlane, node: NodeAgent, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    """Return the dev stack's project copy on the session's node (the first test ups it)."""
    root = tmp_path_factory.mktemp("rotation")
    with deployed_stack(root, "dev", NAMESPACE, control_plane, node) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def port(deployed: Deployed) -> int:
    return deployed.node.host_port(6379)


def test_up_with_a_generated_password(deployed: Deployed, port: int) -> None:
    assert "broker_password" not in deployed.stack_file.read_text(), "dev sets a password"
    deployed.up()
    password = password_of(deployed.stack.outputs()["broker_url"]["value"])
    assert password, "broker_url carries no password"
    assert accepts(port, password), "the generated password is refused"
    assert worker_pods(deployed), f"no worker runs:\n{deployed.node.describe()}"


@pytest.mark.parametrize("start", ["generated", "set"])
def test_readme_rotation_loses_no_task_and_keeps_redis_running(
    deployed: Deployed, port: int, tmp_path: Path, start: str
) -> None:
    steps = readme_steps()
    assert len(steps) == 2, f"README's rotation has {len(steps)} steps, this test knows 2"
    argv_log = command_shims(deployed, tmp_path / "shims")
    outputs = deployed.stack.outputs()
    old = password_of(outputs["broker_url"]["value"])
    assert ("broker_password:" in deployed.stack_file.read_text()) == (start == "set")
    redis_before = redis_identity(deployed)
    workers_before = worker_pods(deployed)
    assert worker_broker_passwords(deployed) == {old}, "workers do not run the current password"
    applied_before = reloader_log(deployed).count("ACL applied")

    producer = Producer(
        forwarded(outputs["broker_url"]["value"], port),
        forwarded(outputs["result_backend_url"]["value"], port),
    )
    producer.start()
    try:
        # Step 1: the old password kept as previous, a new one set, `pulumi up`.
        producer.mark("step1")
        run_step(deployed, tmp_path / "shims", steps[0])
        outputs = deployed.stack.outputs()
        new = password_of(outputs["broker_url"]["value"])
        assert new, "broker_url carries no password"
        assert new != old, "step 1 did not change the broker password"
        # What `openssl rand -hex 24` printed, without its newline: stdin was read as meant.
        assert re.fullmatch(r"[0-9a-f]{48}", new), "the new password is not the one piped in"
        stack_file = deployed.stack_file.read_text()
        for key in ("broker_password", "broker_password_previous"):
            assert re.search(rf"celery-redis:{key}:\n\s+secure: ", stack_file), stack_file
        assert old not in stack_file, "a password is in the stack file"
        assert new not in stack_file, "a password is in the stack file"
        assert redis_identity(deployed) == redis_before, "Redis was restarted by step 1"
        workers_after = worker_pods(deployed)
        assert workers_after, f"no worker after step 1:\n{deployed.node.describe()}"
        assert not set(workers_before) & set(workers_after), "the workers did not roll"
        assert worker_broker_passwords(deployed) == {new}, "a worker still runs the old password"
        wait_for(lambda: accepts(port, new), "Redis accepting the new password", deployed)
        assert accepts(port, old), "the old password must work until step 2"
        # README: restart any other application that reads the client Secret.
        producer.restart(
            forwarded(outputs["broker_url"]["value"], port),
            forwarded(outputs["result_backend_url"]["value"], port),
            "step2",
        )

        # Step 2: the previous password removed, `pulumi up`.
        run_step(deployed, tmp_path / "shims", steps[1])
        assert "broker_password_previous" not in deployed.stack_file.read_text()
        wait_for(lambda: not accepts(port, old), "Redis refusing the old password", deployed)
        assert accepts(port, new), "the new password stopped working"
        assert worker_broker_passwords(deployed) == {new}
        # The client URLs did not change, so neither did the workers' revision: no second roll.
        assert worker_pods(deployed) == workers_after, "step 2 rolled the workers again"
        producer.mark("after")
        sent_after = len(producer.sent)
        wait_for(lambda: len(producer.sent) >= sent_after + 10, "sending after step 2", deployed)
    finally:
        producer.stop()

    assert not producer.errors, f"the producer was refused: {producer.errors[:5]}"
    phases = {phase for _, phase, _ in producer.sent}
    assert {"step1", "step2", "after"} <= phases, f"no task sent during {phases}"
    results = Producer.make_app(
        forwarded(outputs["broker_url"]["value"], port),
        forwarded(outputs["result_backend_url"]["value"], port),
    )
    lost = []
    for task_id, phase, expected in producer.sent:
        try:
            value = results.AsyncResult(task_id).get(timeout=60)
        except Exception as error:  # reported with the others
            value = repr(error)
        if value != expected:
            lost.append((phase, task_id, value))
    assert not lost, f"{len(lost)} of {len(producer.sent)} tasks lost or failed: {lost[:5]}"

    assert redis_identity(deployed) == redis_before, "Redis was restarted during the rotation"
    log = reloader_log(deployed)
    assert log.count("ACL applied") == applied_before + 2, f"expected two live ACL changes:\n{log}"
    recorded = argv_log.read_text()
    assert "pulumi config set --secret broker_password" in recorded, recorded
    for password in (old, new):
        assert password not in recorded, "a password was on a command line"
        assert password not in log, "the reloader logged a password"
