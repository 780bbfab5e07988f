"""The scale-in controller behind Sentinel: it finds the master as kombu does, and follows it.

A real master, two replicas and three Sentinels (tests/support/sentinel_broker.py); the
controller's Redis side (brokerctl/deletioncost.LoadBoard) built from the arguments the
component renders for a Sentinel stack and the sentinel:// URL clients get. What it writes must
land on the master, and after a failover on the new one. Once per engine: on Valkey every node
and Sentinel is valkey-server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from brokerctl.deletioncost import Load, LoadBoard, inflight_key, load_key, redis_client
from components.scale_in import SENTINEL_PASSWORD_ENV, controller_arguments
from components.settings import StackSettings
from tests.support.engines import ENGINES
from tests.support.redis_server import CELERY_PASSWORD
from tests.support.sentinel_broker import (
    ADMIN_PASSWORD,
    MASTER_NAME,
    SENTINEL_PASSWORD,
    SentinelBroker,
    running_sentinel_broker,
    wait_for,
)

pytestmark = pytest.mark.ha

IMAGE = "registry.example.com/transcritor-pdf:1.0.0"


@pytest.fixture(params=ENGINES)
def broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SentinelBroker]:
    with running_sentinel_broker(tmp_path / "sentinel-broker", engine=request.param) as running:
        yield running


def sentinel_settings(engine: str) -> StackSettings:
    return StackSettings.model_validate(
        {
            "kube_context": "test",
            "ephemeral": True,
            "broker": {
                "engine": engine,
                "persistence": "none",
                "topology": "sentinel",
                "sentinel": {"replicas": 3, "master_name": MASTER_NAME},
            },
            "workers": {"pools": [{"name": "default", "image": IMAGE}]},
        },
        strict=False,
    )


def option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_controller_writes_to_the_master_found_through_sentinel_and_follows_a_failover(
    broker: SentinelBroker,
) -> None:
    args = controller_arguments(
        sentinel_settings(broker.engine), "app=worker", {"default": "x"}, "URL"
    )
    assert option(args, "--sentinel-master") == MASTER_NAME
    assert option(args, "--sentinel-password-env") == SENTINEL_PASSWORD_ENV
    # The test broker has no scalein user; the celery user runs the same commands here (the
    # scalein user's rules are proven in test_broker_acl.py).
    client = redis_client(
        broker.url("celery", CELERY_PASSWORD), 5, option(args, "--sentinel-master"),
        SENTINEL_PASSWORD,
    )  # fmt: skip
    board = LoadBoard(client)
    admin = broker.admin()
    admin.set(load_key("worker-a"), '{"running": 1, "held": 1}')
    assert board.read(["worker-a"]) == {"worker-a": Load(1, 1)}
    assert board.publish_inflight({"default": 2}) == {"default": 2}
    assert admin.llen(inflight_key("default")) == 2, "the list must be on the master"

    old_master = broker.master_address
    broker.sentinel_client(0).execute_command("SENTINEL", "FAILOVER", MASTER_NAME)

    def new_master() -> str | None:
        host, port = broker.sentinel_client(0).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
        )
        address = f"{host.decode()}:{port.decode()}"
        return None if address != old_master else f"still {address}"

    wait_for(new_master, 30.0, "Sentinel to promote a replica")

    def written_on_the_master() -> str | None:
        # A write in the instant of the switch may still reach the old master and be lost
        # with its demotion (what any client risks); the controller's next write must not.
        if not _writes(board):
            return "the controller cannot write yet"
        host, port = broker.sentinel_client(0).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
        )
        master = redis.Redis(
            host=host.decode(), port=int(port), username="admin", password=ADMIN_PASSWORD,
            socket_timeout=5,
        )  # fmt: skip
        length = master.llen(inflight_key("default"))
        return None if length == 5 else f"the master {host.decode()}:{port.decode()} has {length}"

    wait_for(written_on_the_master, 30.0, "the controller's write to reach the new master")


def _writes(board: LoadBoard) -> bool:
    try:
        board.written.clear()  # force a write
        board.publish_inflight({"default": 5})
    except Exception:  # a write during the switch fails; the next pass retries
        return False
    return True
