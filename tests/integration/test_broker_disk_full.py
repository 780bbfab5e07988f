"""The broker's volume, at the smallest size the settings accept, holds Redis through AOF rewrites.

A real redis-server boots from the prod stack's rendered broker (aof-always, whose Redis exits
when an AOF write finds the disk full) with the redis.conf rendered for a small broker
(maxmemory 32 MiB, messages up to 1 MiB). Its data volume is a tmpfs of exactly
`minimum_storage_bytes()`, mounted in a private mount namespace (`unshare --mount`), so the
size limit is real and nothing outside the test sees it.

The workload is Celery's on kombu's Redis transport: publish is LPUSH of a JSON envelope with a
base64 body; delivery is BRPOP, then MULTI ZADD unacked_index / HSET unacked / EXEC; the ack is
MULTI ZREM / HDEL / EXEC. The broker is filled to maxmemory, then tasks flow until Redis has
rewritten its AOF twice on its own (the second time at the largest AOF it lets grow), and a
BGREWRITEAOF is forced at the end. While a rewrite is due or running, the workload writes at
most what the settings assume (fork_headroom_ratio x maxmemory), then waits for it to finish:
that bound is part of the formula (README: Storage sizing). The control runs the same on half
the volume and must see Redis fail, so the test can tell a volume that is too small.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from brokerctl import mockrun
from components import redis_config
from components.settings import (
    AOF_REWRITE_MIN_SIZE_MB,
    AOF_REWRITE_PERCENTAGE,
    MIB,
    StackSettings,
)
from components.stack_config import parse_stack_config
from tests.support.broker_boot import BootedBroker, booted_broker, rendered_broker
from tests.support.redis_server import CELERY_PASSWORD

pytestmark = pytest.mark.timeout(300)

QUEUE = "celery"
MESSAGE_BYTES = MIB
SMALL_BROKER = {
    # maxmemory = (112 MiB - 64 MiB client reserve) / (1 + 0.5 fork headroom) = 32 MiB.
    "resources": {"memory_request": "112Mi", "memory_limit": "112Mi"},
    "max_message_bytes": "1Mi",
    "max_queued_messages": 16,
}
SCENARIO_SECONDS = 180
"""Bound on one scenario; it normally ends in seconds (the disk is memory)."""


def small_prod_settings(storage_size: str) -> StackSettings:
    """Return prod's settings with the small broker and `storage_size`, validated."""
    config, secret_keys = mockrun.read_stack_config("prod")
    prod, _ = parse_stack_config(config, secret_keys, "config/Pulumi.prod.yaml")
    data = prod.model_dump()
    broker = data["broker"]
    broker["resources"].update(SMALL_BROKER["resources"])
    broker.update({k: v for k, v in SMALL_BROKER.items() if k != "resources"})
    broker["storage"]["size"] = storage_size
    return StackSettings.model_validate(data)


def minimum_size() -> int:
    """Return the smallest volume the settings accept for the small prod broker, in bytes."""
    return small_prod_settings("1Gi").broker.minimum_storage_bytes()


def tmpfs_data_volume(size_bytes: int) -> list[str]:
    """Return a command prefix that mounts a tmpfs of `size_bytes` on the pod's data folder.

    The mount lives in a new private mount namespace that redis-server (exec'd by the start
    script) inherits: the host never sees it, and it goes away with the last process in it.
    """
    if os.geteuid() != 0:
        pytest.fail("mounting a size-limited volume needs root (unshare --mount)")
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is not on PATH")
    script = (
        f'mount -t tmpfs -o size={size_bytes},mode=0700 broker-data "${redis_config.ENV_DATA_DIR}"'
        ' && exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"]


def celery_message() -> bytes:
    """Return a kombu message envelope carrying a random (incompressible) body of ~0.93 MiB."""
    task_id = str(uuid.uuid4())
    body = base64.b64encode(os.urandom(MESSAGE_BYTES * 7 // 10)).decode()
    envelope = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "src.tasks.process_pdf_task", "id": task_id},
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    message = json.dumps(envelope).encode()
    assert len(message) <= MESSAGE_BYTES, "the message must fit max_message_bytes"
    return message


@dataclass
class Outcome:
    """What the broker did under the workload."""

    alive: bool = True
    rewrites: int = 0
    rewrite_failed: bool = False
    write_status: str = "ok"
    disk_refusals: list[str] = field(default_factory=list)
    memory_refusals: int = 0
    largest_aof_mib: int = 0
    most_written_in_a_rewrite_mib: int = 0
    peak_used_mib: int = 0
    finished: bool = False
    log: str = ""

    @property
    def healthy(self) -> bool:
        """Redis ran through and every rewrite and write succeeded."""
        return (
            self.alive
            and self.finished
            and not self.rewrite_failed
            and not self.disk_refusals
            and self.write_status == "ok"
        )

    def describe(self) -> str:
        """Summary for assertion messages."""
        tail = "\n".join(self.log.splitlines()[-15:])
        return (
            f"alive={self.alive} finished={self.finished} rewrites={self.rewrites} "
            f"rewrite_failed={self.rewrite_failed} write_status={self.write_status} "
            f"disk_refusals={self.disk_refusals[:3]} memory_refusals={self.memory_refusals} "
            f"largest AOF={self.largest_aof_mib} MiB peak used={self.peak_used_mib} MiB "
            f"most written during one rewrite={self.most_written_in_a_rewrite_mib} MiB\n"
            f"redis log tail:\n{tail}"
        )


class BrokerDied(Exception):
    """The broker stopped answering: the process exited."""


class Workload:
    """Celery-like traffic that keeps to the write budget while an AOF rewrite is due or runs."""

    def __init__(self, server: BootedBroker, budget_bytes: int) -> None:
        self.server = server
        self.celery = server.client("celery", CELERY_PASSWORD)
        self.admin = server.admin()
        self.budget_bytes = budget_bytes
        self.spent_in_window = 0
        self.outcome = Outcome()
        self.data_dir = Path(f"/proc/{server.pid}/root") / str(
            server.env[redis_config.ENV_DATA_DIR]
        ).lstrip("/")
        self.deadline = time.monotonic() + SCENARIO_SECONDS

    def persistence(self) -> dict[str, Any]:
        """INFO persistence, recording what the outcome needs; BrokerDied if it is gone."""
        if self.server.process.poll() is not None:
            raise BrokerDied
        try:
            info = self.admin.info("persistence")
        except redis.ConnectionError as error:
            raise BrokerDied from error
        out = self.outcome
        out.rewrites = int(info["aof_rewrites"])
        out.write_status = str(info["aof_last_write_status"])
        out.rewrite_failed |= info["aof_last_bgrewrite_status"] != "ok"
        out.rewrite_failed |= int(info["aof_rewrites_consecutive_failures"]) > 0
        out.largest_aof_mib = max(out.largest_aof_mib, int(info["aof_current_size"]) // MIB)
        usage = os.statvfs(self.data_dir)
        used = (usage.f_blocks - usage.f_bfree) * usage.f_frsize
        out.peak_used_mib = max(out.peak_used_mib, used // MIB)
        return info

    @staticmethod
    def rewrite_running(info: dict[str, Any]) -> bool:
        """Whether a rewrite child is writing the new base."""
        return bool(int(info["aof_rewrite_in_progress"]))

    @staticmethod
    def rewrite_due(info: dict[str, Any]) -> bool:
        """Whether Redis starts a rewrite at its next cron tick (or as soon as it can)."""
        if int(info["aof_rewrite_scheduled"]):
            return True
        current = int(info["aof_current_size"])
        base = int(info["aof_base_size"]) or 1
        return (
            current > AOF_REWRITE_MIN_SIZE_MB * MIB
            and current * 100 // base - 100 >= AOF_REWRITE_PERCENTAGE
        )

    def check_time(self) -> None:
        """Fail the test if the scenario runs past its bound."""
        if time.monotonic() > self.deadline:
            pytest.fail(f"the scenario did not end within {SCENARIO_SECONDS} s")

    def make_room(self, logged_bytes: int) -> None:
        """Wait until writing `logged_bytes` keeps to the budget of a rewrite window.

        A due rewrite starts within one cron tick: waiting for it puts the whole budget into
        the new incr file, the worst case for the volume (the next trigger and the peak are
        both highest). A running rewrite takes writes up to the budget, then is waited for.
        """
        while not self.outcome.rewrite_failed:
            self.check_time()
            info = self.persistence()
            if self.rewrite_running(info):
                if self.spent_in_window + logged_bytes <= self.budget_bytes:
                    self.spent_in_window += logged_bytes
                    self.outcome.most_written_in_a_rewrite_mib = max(
                        self.outcome.most_written_in_a_rewrite_mib, self.spent_in_window // MIB
                    )
                    return
            elif not self.rewrite_due(info):
                self.spent_in_window = 0
                return
            time.sleep(0.02)

    def run(self, action: Any, logged_bytes: int) -> Any:
        """Run one write action within the budget; record refusals instead of raising."""
        self.make_room(logged_bytes)
        try:
            return action()
        except redis.ConnectionError as error:
            raise BrokerDied from error
        except redis.ResponseError as error:
            if "maxmemory" in str(error):
                self.outcome.memory_refusals += 1
                return None
            self.outcome.disk_refusals.append(str(error))
            return None

    def publish(self) -> bool:
        """LPUSH one task; False when the broker refused it (full)."""
        message = celery_message()
        return self.run(lambda: self.celery.lpush(QUEUE, message), len(message)) is not None

    def deliver_and_ack(self) -> None:
        """Take one task as a worker does (BRPOP into unacked), then acknowledge it."""
        delivered = self.run(lambda: self.celery.brpop([QUEUE], timeout=1), 0)
        if not delivered:
            return
        tag = str(uuid.uuid4())
        payload = json.dumps([delivered[1].decode(), "", QUEUE])

        def into_unacked() -> Any:
            with self.celery.pipeline(transaction=True) as pipe:
                pipe.zadd("unacked_index", {tag: time.time()})
                pipe.hset("unacked", tag, payload)
                return pipe.execute()

        def ack() -> Any:
            with self.celery.pipeline(transaction=True) as pipe:
                pipe.zrem("unacked_index", tag)
                pipe.hdel("unacked", tag)
                return pipe.execute()

        self.run(into_unacked, len(payload))
        self.run(ack, 0)

    def fill_to_maxmemory(self) -> None:
        """Publish until noeviction refuses, then free two tasks' room for deliveries."""
        while self.publish():
            pass
        for _ in range(2):
            self.celery.rpop(QUEUE)
        self.outcome.memory_refusals = 0  # the refusal that ended the fill was the point

    def flow_until_rewrites(self, rewrites: int) -> None:
        """Deliver, ack and publish tasks until Redis has rewritten its AOF `rewrites` times."""
        while self.outcome.rewrites < rewrites and not self.outcome.rewrite_failed:
            self.deliver_and_ack()
            self.publish()

    def forced_rewrite(self) -> None:
        """BGREWRITEAOF with the full dataset, tasks flowing within the budget until it ends."""
        while not self.outcome.rewrite_failed:  # no rewrite running or due: force one now
            self.check_time()
            info = self.persistence()
            if not self.rewrite_running(info) and not self.rewrite_due(info):
                break
            time.sleep(0.02)
        before = self.outcome.rewrites
        self.admin.bgrewriteaof()
        while self.outcome.rewrites == before and not self.outcome.rewrite_failed:
            self.deliver_and_ack()
            self.publish()


def fill_and_rewrite(volume_bytes: int, tmp_path: Path) -> Outcome:
    """Boot the small prod broker on a volume of `volume_bytes`, run the workload, report."""
    settings = small_prod_settings("1Gi")
    broker = rendered_broker("prod")
    budget = int(settings.broker.effective_maxmemory_bytes() * settings.broker.fork_headroom_ratio)
    with booted_broker(
        broker,
        root=tmp_path,
        redis_conf=redis_config.redis_conf(settings),
        command_prefix=tmpfs_data_volume(volume_bytes),
    ) as server:
        workload = Workload(server, budget)
        try:
            assert int(server.admin().config_get("maxmemory")["maxmemory"]) == 32 * MIB
            workload.fill_to_maxmemory()
            workload.flow_until_rewrites(2)
            if not workload.outcome.rewrite_failed:
                workload.forced_rewrite()
            workload.persistence()
            workload.outcome.finished = not workload.outcome.rewrite_failed
        except BrokerDied:
            workload.outcome.alive = False
        workload.outcome.alive &= server.process.poll() is None
        workload.outcome.log = server.log()
    return workload.outcome


def test_minimum_accepted_volume_holds_redis_through_aof_rewrites_at_maxmemory(tmp_path: Path):
    minimum = minimum_size()
    settings = small_prod_settings(f"{minimum // MIB}Mi")  # accepted: it is the minimum
    assert settings.broker.persistence == "aof-always"
    outcome = fill_and_rewrite(minimum, tmp_path)
    assert outcome.healthy, f"on the minimum volume ({minimum // MIB} MiB):\n{outcome.describe()}"
    assert outcome.rewrites >= 3, f"two automatic and one forced rewrite:\n{outcome.describe()}"
    assert outcome.memory_refusals == 0, f"tasks were refused for memory:\n{outcome.describe()}"
    assert "No space left on device" not in outcome.log, outcome.describe()


def test_volume_at_half_the_minimum_is_refused_and_fails_redis(tmp_path: Path):
    minimum = minimum_size()
    half = minimum // 2 // MIB * MIB
    with pytest.raises(ValidationError, match=rf"allowed: at least {minimum // MIB}Mi"):
        small_prod_settings(f"{half // MIB}Mi")
    outcome = fill_and_rewrite(half, tmp_path)
    assert not outcome.healthy, (
        f"a volume of half the minimum ({half // MIB} MiB) should run out of space:\n"
        f"{outcome.describe()}"
    )
    assert "No space left on device" in outcome.log, outcome.describe()
