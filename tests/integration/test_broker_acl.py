"""Least privilege against a real broker: Celery works as `celery`, and nothing more does.

The workload is the one the celery user's command list was derived from (see
components/redis_config.py): a real worker with events, gossip and mingle, a producer with
plain, countdown, group, chord, forget, revoke and the check's canary, control and inspect
broadcasts, a visibility-timeout restore and a soft shutdown that requeues a running task.
After it, the ACL LOG must be empty: any command Celery needs and the ACL lacks shows there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.support.broker_boot import booted_broker, rendered_broker
from tests.support.celery_worker import running_worker, worker_argv, worker_env
from tests.support.redis_server import CELERY_PASSWORD, PROBE_PASSWORD

APP = """
import time
from celery import Celery

app = Celery("acl")
app.conf.update(
    broker_transport_options={"visibility_timeout": 1},
    worker_soft_shutdown_timeout=0.5,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
)


@app.task
def add(x, y):
    return x + y


@app.task
def total(values):
    return sum(values)


@app.task
def slow(seconds):
    time.sleep(seconds)
    return seconds
"""

PRODUCER = """
from celery import chord, group
from aclapp import add, app, slow, total

assert add.delay(1, 2).get(timeout=20) == 3
assert add.apply_async((2, 3), countdown=1).get(timeout=20) == 5
assert group(add.s(i, i) for i in range(4))().get(timeout=20) == [0, 2, 4, 6]
assert chord((add.s(i, i) for i in range(4)), total.s())().get(timeout=20) == 12
done = add.delay(5, 5); done.get(timeout=20); done.forget()
canary = app.send_task("celery.accumulate", args=["token"], kwargs={"index": 0})
assert canary.get(timeout=20) == "token"; canary.forget()
add.apply_async((1, 1), countdown=30).revoke()
assert slow.delay(2).get(timeout=20) == 2  # outlives visibility_timeout: restore_visible runs
inspect = app.control.inspect(timeout=1)
assert inspect.ping(), "no worker answered inspect ping"
for reply in (inspect.active_queues(), inspect.stats(), inspect.scheduled(), inspect.active()):
    assert reply, "an inspect command got no reply"
assert app.control.ping(timeout=1)
app.control.add_consumer("extra", reply=True, timeout=1)
app.control.cancel_consumer("extra", reply=True, timeout=1)
slow.delay(5)  # still running at shutdown: the soft shutdown requeues it
print("workload done")
"""

REFUSAL = r"(?i)no permissions|not allowed|can't run this command"
"""An ACL denial (NOPERM), or enable-debug/module-command refusing before the ACL is asked."""

REFUSED_TO_CELERY = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "maxmemory"),
    ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"),
    ("KEYS", "*"),
    ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN", "NOSAVE"),
    ("ACL", "LIST"),
    ("MODULE", "LIST"),
    ("REPLICAOF", "NO", "ONE"),
    ("EVAL", "return 1", "0"),
    ("SCRIPT", "FLUSH"),
    ("MONITOR",),
    ("CLIENT", "KILL", "TYPE", "normal"),
]

PROBE_READS = [
    ("PING",),
    ("INFO", "persistence"),
    ("CONFIG", "GET", "appendfsync"),
    ("LLEN", "celery"),
    ("ZCARD", "unacked_index"),
    ("ZRANGE", "unacked_index", "0", "0", "WITHSCORES"),
    ("ZRANGEBYSCORE", "unacked_index", "-inf", "+inf", "WITHSCORES"),
    ("HGET", "unacked", "x"),
    ("HLEN", "unacked"),
    ("HKEYS", "unacked"),
    ("TYPE", "celery"),
    ("EXISTS", "celery"),
    ("SCAN", "0"),
]

PROBE_WRITES = [
    ("SET", "k", "v"),
    ("LPUSH", "celery", "x"),
    ("DEL", "celery"),
    ("HSET", "unacked", "x", "y"),
    ("PUBLISH", "c", "m"),
    ("FLUSHALL",),
    ("CONFIG", "SET", "appendfsync", "no"),
    # EVAL is granted (KEDA and the exporter read through Lua), but ACL rules still apply
    # to every command a script runs: a script that writes is refused like a direct write.
    ("EVAL", "return redis.call('SET', KEYS[1], 'x')", "1", "celery"),
    ("EVAL", "return redis.call('LPUSH', KEYS[1], 'x')", "1", "celery"),
]


@pytest.fixture(scope="module")
def broker_server():
    """Boot the prod broker from its rendered objects, once for the module."""
    with booted_broker(rendered_broker("prod")) as server:
        yield server


def test_celery_workload_runs_as_celery_without_a_single_acl_denial(broker_server, tmp_path):
    (tmp_path / "aclapp.py").write_text(APP)
    (tmp_path / "producer.py").write_text(PRODUCER)
    admin = broker_server.admin()
    admin.execute_command("ACL", "LOG", "RESET")
    env = worker_env(
        broker_server.url("celery", CELERY_PASSWORD, db=0),
        broker_server.url("celery", CELERY_PASSWORD, db=1),
        PYTHONPATH=str(tmp_path),
    )
    argv = worker_argv("aclapp", concurrency=2, hostname="acl@%h", extra=["-E"])
    argv.remove("--without-gossip")
    argv.remove("--without-mingle")
    with running_worker(argv, env=env, cwd=tmp_path) as worker:
        producer = subprocess.run(
            [sys.executable, "producer.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert producer.returncode == 0, f"producer failed:\n{producer.stderr}\n{worker.log()}"
    denials = admin.acl_log()
    assert not denials, f"the celery user was refused commands Celery uses: {denials}"


@pytest.mark.parametrize("command", REFUSED_TO_CELERY, ids=lambda c: " ".join(c[:2]))
def test_celery_user_is_refused_administrative_commands(broker_server, command):
    client = broker_server.client("celery", CELERY_PASSWORD)
    with pytest.raises(redis.ResponseError, match=REFUSAL):
        client.execute_command(*command)


@pytest.mark.parametrize("command", PROBE_READS, ids=lambda c: " ".join(c[:2]))
def test_probe_user_can_read_what_probes_and_check_need(broker_server, command):
    client = broker_server.client("probe", PROBE_PASSWORD)
    client.execute_command(*command)


@pytest.mark.parametrize("command", PROBE_WRITES, ids=lambda c: " ".join(c[:2]))
def test_probe_user_cannot_write(broker_server, command):
    client = broker_server.client("probe", PROBE_PASSWORD)
    with pytest.raises(redis.ResponseError, match=REFUSAL):
        client.execute_command(*command)


def test_probe_user_may_read_through_a_script_as_keda_does(broker_server):
    client = broker_server.client("probe", PROBE_PASSWORD)
    script = (
        "return redis.call(redis.call('TYPE', KEYS[1]).ok == 'none' and 'LLEN' or 'LLEN', KEYS[1])"
    )
    length = client.execute_command("EVAL", script, "1", "celery")
    assert length == client.llen("celery"), "KEDA's read through EVAL disagrees with LLEN"


def test_written_acl_file_switches_the_default_user_off(broker_server):
    acl = next(Path(broker_server.directory).rglob("users.acl"))
    assert "user default off" in acl.read_text(), "the default user must be switched off"
