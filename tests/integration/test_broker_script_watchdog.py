"""A runaway Lua script costs seconds of service, never the broker: the watchdog kills it.

A user that may run Lua (KEDA's and the exporter's readers, Celery) can start
`while true do end`; Redis then answers BUSY to every other client. The rendered redis.conf
sets busy-reply-threshold, the reloader sidecar (its real, rendered script) sends SCRIPT KILL
as the only user allowed to, and the liveness probe counts BUSY as alive for as long as that
takes. Everything runs as rendered against a real redis-server booted from the prod stack;
how long the broker stays BUSY is a figure for bench/broker_script_watchdog.py, not an assert.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from components import redis_config
from tests.support.broker_boot import (
    KEDA_PASSWORD,
    BootedBroker,
    RenderedBroker,
    admin_ping,
    booted_broker,
    rendered_broker,
    running_container,
)
from tests.support.engines import ENGINES
from tests.support.redis_server import CELERY_PASSWORD

RUNAWAY = "while true do end"
WAIT_SECONDS = 30
"""Bound on every wait here: the liveness window (3 failures x 10 s) after which the kubelet
would restart Redis anyway. Not a target: the watchdog's figure is in bench/."""
BUSY_PING_SECONDS = 1.0
"""How long a ping waits for its reply while looking for BUSY: longer than the threshold.

Until the threshold Redis serves nobody; then it answers what is pending, BUSY to the ping and
the watchdog's SCRIPT KILL (sent by its last pass) in the same few milliseconds. A ping that
gave up at 1 s, as much as the threshold, could give up just before it and miss all of BUSY."""


class RunawayScript(threading.Thread):
    """EVAL a script that never ends, as `user`, in a thread; keep how it ended."""

    def __init__(self, server: BootedBroker, user: str, password: str) -> None:
        super().__init__(daemon=True)
        self.client = server.client(user, password)
        self.client.connection_pool.connection_kwargs["socket_timeout"] = WAIT_SECONDS
        self.error: Exception | None = None

    def run(self) -> None:
        """Start the script; a kill (or a timeout) ends the call with an error."""
        try:
            self.client.execute_command("EVAL", RUNAWAY, "0")
        except Exception as error:  # kept for the test's assertion
            self.error = error


def wait_until_busy(server: BootedBroker, killed: RunawayScript | None = None) -> None:
    """Wait until Redis answers BUSY: the script ran past busy-reply-threshold.

    With `killed`, a script already ended by SCRIPT KILL counts too: the BUSY window lasts at
    most one watchdog interval, and a loaded machine can poll past all of it (Redis only
    accepts SCRIPT KILL once the script ran past the threshold, so the kill proves it did).
    """
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if admin_ping(server, BUSY_PING_SECONDS).startswith(b"-BUSY"):
            return
        if killed is not None and "SCRIPT KILL" in str(killed.error):
            return
        time.sleep(0.02)
    pytest.fail(f"Redis never answered BUSY while a script looped:\n{server.log()}")


def served_again(client: redis.Redis) -> bool:
    """LPUSH and BRPOP as Celery does, retrying while Redis answers BUSY; True once served."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            client.lpush("celery", "task")
            return client.brpop(["celery"], timeout=1) == (b"celery", b"task")
        except redis.ResponseError as error:
            if not str(error).startswith("BUSY"):
                raise  # anything but BUSY is a refusal the test must show
            time.sleep(0.05)
    return False


@contextmanager
def broker_with_watchdog(engine: str) -> Iterator[tuple[RenderedBroker, BootedBroker]]:
    """Boot the prod broker with its reloader sidecar running beside it, as rendered."""
    broker = rendered_broker("prod", engine)
    with booted_broker(broker) as server, running_container(broker, server, "reloader"):
        heartbeat = next(server.directory.rglob(redis_config.RELOADER_HEARTBEAT), None)
        deadline = time.monotonic() + WAIT_SECONDS
        while heartbeat is None and time.monotonic() < deadline:
            time.sleep(0.1)
            heartbeat = next(server.directory.rglob(redis_config.RELOADER_HEARTBEAT), None)
        assert heartbeat is not None, f"the reloader never ran a pass:\n{reloader_log(server)}"
        yield broker, server


def reloader_log(server: BootedBroker) -> str:
    path = server.directory / "reloader.log"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.parametrize("engine", ENGINES)
def test_runaway_script_is_killed_and_celery_is_served_by_the_same_redis(engine: str):
    with broker_with_watchdog(engine) as (_broker, server):
        pid = server.pid
        celery = server.client("celery", CELERY_PASSWORD)
        runaway = RunawayScript(server, "keda", KEDA_PASSWORD)
        runaway.start()
        wait_until_busy(server, killed=runaway)

        assert served_again(celery), f"celery still refused:\n{reloader_log(server)}"
        runaway.join(WAIT_SECONDS)
        assert "killed by user with SCRIPT KILL" in str(runaway.error), (
            f"the script did not end by SCRIPT KILL: {runaway.error!r}"
        )
        assert "watchdog: killed a script" in reloader_log(server), "the watchdog did not kill it"
        assert server.process.poll() is None, f"redis-server exited:\n{server.log()}"
        assert server.admin().info("server")["process_id"] == pid, "Redis was restarted"


@pytest.mark.parametrize("engine", ENGINES)
def test_liveness_counts_busy_as_alive_while_the_watchdog_kills_the_script(engine: str):
    with broker_with_watchdog(engine) as (broker, server):
        runaway = RunawayScript(server, "keda", KEDA_PASSWORD)
        runaway.start()
        # The watchdog may end the script within milliseconds of the threshold, before a ping
        # sees BUSY (under parallel tests it did): its kill proves the threshold was passed.
        wait_until_busy(server, runaway)
        probe = server.run_probe(broker, "liveness")
        assert probe.returncode == 0, f"liveness would restart a broker the watchdog frees: {probe}"
        runaway.join(WAIT_SECONDS)


@pytest.mark.parametrize("engine", ENGINES)
def test_liveness_fails_when_a_script_outlives_the_watchdog_bound(engine: str):
    """Without a watchdog (or for a script SCRIPT KILL cannot stop) the kubelet still acts."""
    broker = rendered_broker("prod", engine)
    with booted_broker(broker) as server:
        runaway = RunawayScript(server, "keda", KEDA_PASSWORD)
        runaway.start()
        wait_until_busy(server)
        try:
            probe = server.run_probe(broker, "liveness")
        finally:
            server.admin().script_kill()
            runaway.join(WAIT_SECONDS)
        assert probe.returncode == 1, f"liveness accepted BUSY past the bound: {probe}"
        assert "BUSY" in probe.stdout, f"liveness did not say why: {probe.stdout!r}"
