"""The documented password rotation, walked through with real processes and no downtime.

The staging broker boots from its rendered objects with the rendered reloader beside it
(interval 1 s). The users Secret's files change the way the kubelet changes them after each
`pulumi up` of the procedure (README, "Rotating the broker password"):

1. `broker_password` = new, `broker_password_previous` = old: Redis accepts both, without a
   restart; a worker still on the old password keeps its connection and keeps consuming,
   and a worker on the new password (the rolled pod) connects.
2. `broker_password_previous` removed: the old password is refused for new connections,
   the new worker keeps consuming.

Every task sent along the way must come back: none is lost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from components import redis_config
from tests.support.broker_boot import (
    BootedBroker,
    booted_broker,
    rendered_broker,
    running_container,
)
from tests.support.celery_worker import running_worker, worker_argv, worker_env
from tests.support.engines import ENGINES
from tests.support.redis_server import CELERY_PASSWORD

OLD_PASSWORD = CELERY_PASSWORD
NEW_PASSWORD = "celery-New-Pa55-r0tated"
TASK = "src.tasks.process_pdf_task"
TASK_SECONDS = "0.2"
"""Each stand-in task takes this long, so tasks are still running while the ACL changes."""


def update_secret_file(users_dir: Path, key: str, value: str | None) -> None:
    """Change one key of the mounted users Secret atomically, as the kubelet does (None: drop)."""
    path = users_dir / key
    if value is None:
        path.unlink()
        return
    staged = users_dir / f".{key}.new"
    staged.write_text(value)
    os.replace(staged, path)


def accepts(server: BootedBroker, password: str) -> bool:
    """Whether a new connection as celery with `password` is let in."""
    try:
        return bool(server.client("celery", password).ping())
    except redis.AuthenticationError:
        return False


def wait_until(condition: Callable[[], bool], what: str, server: BootedBroker) -> None:
    """Poll `condition` for up to 10 s (the reloader runs every second); fail with its log."""
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            log = (server.directory / "reloader.log").read_text()
            message = f"{what} did not happen within 10 s; reloader log:\n{log}"
            raise AssertionError(message)
        time.sleep(0.2)


def producer(server: BootedBroker, password: str) -> Celery:
    """Return a Celery client (the user's web app) on the broker with `password`."""
    app = Celery(
        "producer",
        broker=server.url("celery", password, db=0),
        backend=server.url("celery", password, db=1),
    )
    app.conf.update(task_serializer="json", accept_content=["json"])
    return app


def send(app: Celery, label: str, count: int = 4) -> list[tuple[AsyncResult, int]]:
    """Send `count` tasks; return each result with the value it must come back with."""
    return [
        (app.send_task(TASK, args=[f"{label}-{index}", "f.pdf"]), len(f"{label}-{index}"))
        for index in range(count)
    ]


def collect(sent: list[tuple[AsyncResult, int]], logs: Callable[[], str]) -> None:
    """Every sent task must finish with its value: none lost, none failed."""
    for result, expected in sent:
        assert result.get(timeout=20) == expected, f"task {result.id} lost or wrong:\n{logs()}"


def blocked_consumers(server: BootedBroker) -> set[str]:
    """Ids of celery connections blocked in BRPOP: idle workers' consumer connections."""
    clients = server.admin().client_list()
    return {c["id"] for c in clients if c["user"] == "celery" and c["cmd"] == "brpop"}


@pytest.mark.parametrize("engine", ENGINES)
def test_password_rotation_keeps_workers_consuming_and_loses_no_task(tmp_path: Path, engine: str):
    broker = rendered_broker("staging", engine)
    with ExitStack() as stack:
        server = stack.enter_context(booted_broker(broker, root=tmp_path / "pod"))
        stack.enter_context(
            running_container(broker, server, "reloader", **{redis_config.ENV_RELOAD_SECONDS: "1"})
        )
        users_dir = Path(server.env[redis_config.ENV_USERS_DIR])  # type: ignore[index]
        redis_pid = server.pid

        def env(password: str) -> dict[str, str]:
            return worker_env(
                server.url("celery", password, db=0),
                server.url("celery", password, db=1),
                STANDIN_PDF_SECONDS=TASK_SECONDS,
            )

        old_worker = stack.enter_context(
            running_worker(worker_argv(hostname="old@%h"), env=env(OLD_PASSWORD))
        )
        old_app = producer(server, OLD_PASSWORD)
        collect(send(old_app, "before"), old_worker.log)
        consumers_before = blocked_consumers(server)
        assert consumers_before, "the old worker has no consumer connection in BRPOP"

        # Step 1: broker_password = new, broker_password_previous = old (tasks still running).
        in_flight = send(old_app, "step1")
        update_secret_file(users_dir, redis_config.CELERY_PREVIOUS_PASSWORD_FILE, OLD_PASSWORD)
        update_secret_file(users_dir, redis_config.CELERY_PASSWORD_FILE, NEW_PASSWORD)
        wait_until(lambda: accepts(server, NEW_PASSWORD), "accepting the new password", server)
        assert accepts(server, OLD_PASSWORD), "the old password must work until step 2"
        assert server.pid == redis_pid, "Redis was restarted to change its users"
        assert server.process.poll() is None, "Redis stopped"
        collect(in_flight, old_worker.log)
        collect(send(old_app, "old-still"), old_worker.log)
        assert consumers_before <= blocked_consumers(server), "the old worker was disconnected"
        assert "Connection to broker lost" not in old_worker.log(), old_worker.log()

        # The Deployment rolls: a worker with the new password starts, then the old one stops.
        new_worker = stack.enter_context(
            running_worker(worker_argv(hostname="new@%h"), env=env(NEW_PASSWORD))
        )
        new_app = producer(server, NEW_PASSWORD)
        collect(send(new_app, "new"), new_worker.log)
        old_worker.stop()

        # Step 2: broker_password_previous removed.
        update_secret_file(users_dir, redis_config.CELERY_PREVIOUS_PASSWORD_FILE, None)
        wait_until(lambda: not accepts(server, OLD_PASSWORD), "refusing the old password", server)
        assert accepts(server, NEW_PASSWORD), "the new password stopped working"
        collect(send(new_app, "after"), new_worker.log)
        assert server.pid == redis_pid, "Redis was restarted to change its users"
        reloader_log = (server.directory / "reloader.log").read_text()
        assert reloader_log.count("ACL applied") == 2, reloader_log
        for password in (OLD_PASSWORD, NEW_PASSWORD):
            assert password not in reloader_log, "the reloader logged a password"
            assert password not in server.log(), "Redis logged a password"
