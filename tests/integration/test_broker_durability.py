"""What survives a crash (kill -9) of the rendered broker, and what a full broker does.

kill -9 ends the process, not the machine: bytes Redis wrote to the AOF before replying are
in the page cache and survive, so even `everysec` usually loses nothing here. The `aof` test
bounds the loss by one second of writes, which is what `everysec` promises on power loss.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.support.broker_boot import booted_broker, rendered_broker
from tests.support.engines import ENGINES
from tests.support.redis_server import CELERY_PASSWORD

MESSAGE = b"m" * 1024
QUEUE = "celery"


def push_acknowledged(client: redis.Redis, count: int, batch: int = 100) -> int:
    """LPUSH `count` numbered 1 KB messages; return how many the broker acknowledged."""
    acknowledged = 0
    for start in range(0, count, batch):
        pipe = client.pipeline(transaction=False)
        for index in range(start, min(start + batch, count)):
            pipe.lpush(QUEUE, b"%08d" % index + MESSAGE)
        acknowledged += len(pipe.execute())
    return acknowledged


def surviving_indexes(client: redis.Redis) -> set[int]:
    return {int(item[:8]) for item in client.lrange(QUEUE, 0, -1)}


@pytest.mark.parametrize("engine", ENGINES)
def test_prod_broker_keeps_every_acknowledged_write_across_kill_9(tmp_path: Path, engine: str):
    broker = rendered_broker("prod", engine)  # persistence aof-always
    with booted_broker(broker, root=tmp_path) as server:
        acknowledged = push_acknowledged(server.client("celery", CELERY_PASSWORD), 20_000)
        server.stop(signal.SIGKILL)
    with booted_broker(broker, root=tmp_path, ready_timeout=60) as server:
        survivors = surviving_indexes(server.client("celery", CELERY_PASSWORD))
    missing = set(range(acknowledged)) - survivors
    assert acknowledged == 20_000
    assert not missing, f"{len(missing)} acknowledged LPUSHes lost by aof-always after kill -9"


@pytest.mark.parametrize("engine", ENGINES)
def test_staging_broker_loses_at_most_a_second_of_writes_to_kill_9(tmp_path: Path, engine: str):
    broker = rendered_broker("staging", engine)  # persistence aof, fsync every second
    acknowledged: list[int] = []
    with booted_broker(broker, root=tmp_path) as server:
        client = server.client("celery", CELERY_PASSWORD)
        stop = threading.Event()

        def write() -> None:
            index = 0
            while not stop.is_set():
                try:
                    client.lpush(QUEUE, b"%08d" % index + MESSAGE)
                except redis.ConnectionError:
                    return
                acknowledged.append(index)
                index += 1

        writer = threading.Thread(target=write)
        started = time.monotonic()
        writer.start()
        time.sleep(1.5)
        server.stop(signal.SIGKILL)  # mid-stream: the writer is still pushing
        writes_per_second = len(acknowledged) / (time.monotonic() - started)
        stop.set()
        writer.join(timeout=10)
    with booted_broker(broker, root=tmp_path, ready_timeout=60) as server:
        survivors = surviving_indexes(server.client("celery", CELERY_PASSWORD))
    lost = len(set(acknowledged) - survivors)
    assert acknowledged, "the writer acknowledged nothing before the crash"
    assert lost <= writes_per_second, (
        f"aof everysec lost {lost} writes, more than one second's ({writes_per_second:.0f})"
    )


def fill_until_refused(client: redis.Redis, limit: int = 100_000) -> tuple[int, Exception]:
    """LPUSH numbered 1 KB messages until the broker refuses one; return the count and the error."""
    for index in range(limit):
        try:
            client.lpush(QUEUE, b"%08d" % index + MESSAGE)
        except redis.ResponseError as error:
            return index, error
    pytest.fail(f"{limit} messages of 1 KB fit under maxmemory: no limit applies")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_full_broker_refuses_writes_and_keeps_every_queued_task(stack, engine):
    broker = rendered_broker(stack, engine)
    small, replaced = re.subn(r"^maxmemory \d+$", "maxmemory 4mb", broker.redis_conf, flags=re.M)
    assert replaced == 1, "the rendered redis.conf has no single maxmemory line"
    with booted_broker(broker, redis_conf=small) as server:
        client = server.client("celery", CELERY_PASSWORD)
        pushed, refusal = fill_until_refused(client)
        assert isinstance(refusal, redis.exceptions.OutOfMemoryError), f"refused with {refusal!r}"
        assert pushed > 1000, f"only {pushed} messages fit in 4 MB"
        assert client.llen(QUEUE) == pushed, "noeviction must keep every earlier message"
        assert surviving_indexes(client) == set(range(pushed)), "a queued message was evicted"
