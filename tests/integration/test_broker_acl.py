"""Least privilege against a real broker: each user runs what its client needs, nothing more.

The workload is the one the celery user's command list was derived from (see
components/redis_config.py): a real worker with events, gossip and mingle, a producer with
plain, countdown, group, chord, forget, revoke and the check's canary, control and inspect
broadcasts, a visibility-timeout restore and a soft shutdown that requeues a running task.
After it, the ACL LOG must be empty: any command Celery needs and the ACL lacks shows there.

The readers (the kubelet's probe, the check, KEDA, the exporter) each run what their client
sends, replayed from its source, and are refused every way to see a task body (queued, being
run, or a result), to write, and, unless they need Lua, to start a script. All of it runs
on Redis and on Valkey, each with its own render.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from brokerctl.deletioncost import INFLIGHT_TTL_SECONDS, Load, LoadBoard, inflight_key, load_key
from tests.support.broker_boot import (
    CHECK_PASSWORD,
    EXPORTER_PASSWORD,
    KEDA_PASSWORD,
    SCALE_IN_PASSWORD,
    booted_broker,
    rendered_broker,
)
from tests.support.celery_worker import (
    TESTED_CELERY_SERIES,
    celery_for_series,
    running_worker,
    worker_argv,
    worker_env,
)
from tests.support.check_cli import run_check
from tests.support.engines import ENGINES
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

READERS = {
    "probe": PROBE_PASSWORD,
    "check": CHECK_PASSWORD,
    "keda": KEDA_PASSWORD,
    "exporter": EXPORTER_PASSWORD,
    "scalein": SCALE_IN_PASSWORD,
}
"""Every reader of the rendered ACL and its test password (placeholders replaced)."""

PDF = "JVBERi0xLjcKJeLjz9MK-a-whole-pdf"
"""A task body's bytes, in every place kombu keeps one; no reader may ever see them."""

READS_OF_TASK_BODIES = [
    ("GET", "celery-task-meta-1"),
    ("HGET", "unacked", "tag-1"),
    ("HGETALL", "unacked"),
    ("HVALS", "unacked"),
    ("HSCAN", "unacked", "0"),
    ("HRANDFIELD", "unacked", "1", "WITHVALUES"),
    ("LRANGE", "celery", "0", "-1"),
    ("LINDEX", "celery", "0"),
    ("LPOS", "celery", PDF),
    ("SORT", "celery", "ALPHA"),
    ("DUMP", "unacked"),
    ("OBJECT", "ENCODING", "unacked"),
    ("MONITOR",),
    ("SLOWLOG", "GET"),
    ("CLIENT", "LIST"),
    ("KEYS", "*"),
]
"""Every way to see a queued, delivered or finished task's bytes (or others' commands)."""

WRITES = [
    ("SET", "k", "v"),
    ("LPUSH", "celery", "x"),
    ("DEL", "celery"),
    ("HSET", "unacked", "x", "y"),
    ("PUBLISH", "c", "m"),
    ("FLUSHALL",),
    ("CONFIG", "SET", "appendfsync", "no"),
    ("SCRIPT", "FLUSH"),
    ("SCRIPT", "KILL"),
    ("FUNCTION", "KILL"),
    ("SHUTDOWN", "NOSAVE"),
]

SCRIPTS = [
    ("EVAL", "return 1", "0"),
    ("EVAL_RO", "return 1", "0"),
    ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"),
    ("SCRIPT", "LOAD", "return 1"),
    ("FCALL", "f", "0"),
    ("FUNCTION", "LIST"),
]
"""Ways to run Lua: refused to users that need no script, so theirs cannot loop forever."""

KEDA_SCRIPT = """
\t\tlocal listName = KEYS[1]
\t\tlocal listType = redis.call('type', listName).ok
\t\tlocal cmd = {
\t\t\tzset = 'zcard',
\t\t\tset = 'scard',
\t\t\tlist = 'llen',
\t\t\thash = 'hlen',
\t\t\tnone = 'llen'
\t\t}

\t\treturn redis.call(cmd[listType], listName)
\t"""
"""KEDA's redis scaler script (pkg/scalers/redis_scaler.go), EVALed with the list as KEYS[1]."""

PRIORITY = "\x06\x16"


@pytest.fixture(scope="module", params=ENGINES)
def broker_server(request):
    """Boot the prod broker from its rendered objects, once per engine for the module."""
    with booted_broker(rendered_broker("prod", request.param)) as server:
        yield server


@pytest.mark.parametrize("series", TESTED_CELERY_SERIES, ids=lambda series: f"celery-{series}")
def test_celery_workload_runs_as_celery_without_a_single_acl_denial(
    broker_server, tmp_path, series
):
    celery_bin = celery_for_series(series)  # kombu 5.5/5.6 and their redis-py send other commands
    (tmp_path / "aclapp.py").write_text(APP)
    (tmp_path / "producer.py").write_text(PRODUCER)
    admin = broker_server.admin()
    admin.execute_command("ACL", "LOG", "RESET")
    env = worker_env(
        broker_server.url("celery", CELERY_PASSWORD, db=0),
        broker_server.url("celery", CELERY_PASSWORD, db=1),
        PYTHONPATH=str(tmp_path),
    )
    argv = worker_argv(
        "aclapp", concurrency=2, hostname="acl@%h", extra=["-E"], celery_bin=celery_bin
    )
    argv.remove("--without-gossip")
    argv.remove("--without-mingle")
    with running_worker(argv, env=env, cwd=tmp_path) as worker:
        producer = subprocess.run(
            [str(Path(celery_bin).with_name("python")), "producer.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert producer.returncode == 0, f"producer failed:\n{producer.stderr}\n{worker.log()}"
    denials = admin.acl_log()
    assert not denials, f"Celery {series}: the celery user was refused commands: {denials}"


@pytest.mark.parametrize("command", REFUSED_TO_CELERY, ids=lambda c: " ".join(c[:2]))
def test_celery_user_is_refused_administrative_commands(broker_server, command):
    client = broker_server.client("celery", CELERY_PASSWORD)
    with pytest.raises(redis.ResponseError, match=REFUSAL):
        client.execute_command(*command)


@pytest.fixture(scope="module")
def task_bodies(broker_server):
    """Put a task body where kombu and Celery keep them: a queue, the unacked hash, a result."""
    admin = broker_server.admin()
    admin.lpush("celery", PDF)
    admin.lpush(f"celery{PRIORITY}3", PDF)
    admin.hset("unacked", "tag-1", f'[{{"body": "{PDF}"}}, "", "celery"]')
    admin.zadd("unacked_index", {"tag-1": 1700000000.5})
    admin.set("celery-task-meta-1", PDF)
    return admin


def reader(broker_server, user: str) -> redis.Redis:
    return broker_server.client(user, READERS[user])


def acl_denials(admin, user: str) -> list[dict]:
    return [entry for entry in admin.acl_log() if entry.get("username") == user]


@pytest.mark.parametrize("user", READERS)
@pytest.mark.parametrize("command", READS_OF_TASK_BODIES, ids=lambda c: " ".join(c[:2]))
def test_no_reader_can_read_a_task_body(broker_server, task_bodies, user, command):
    with pytest.raises(redis.ResponseError, match=REFUSAL):
        reader(broker_server, user).execute_command(*command)


@pytest.mark.parametrize("user", ["keda", "exporter"])
def test_a_reader_that_runs_lua_cannot_read_a_task_body_through_a_script(
    broker_server, task_bodies, user
):
    client = reader(broker_server, user)
    for script in (
        "return redis.call('HGET', 'unacked', 'tag-1')",
        "return redis.call('LRANGE', KEYS[1], 0, -1)",
        "return redis.call('GET', 'celery-task-meta-1')",
    ):
        with pytest.raises(redis.ResponseError) as refused:
            client.execute_command("EVAL", script, "1", "celery")
        assert PDF not in str(refused.value), f"{user}'s script read a task body"


@pytest.mark.parametrize("user", READERS)
@pytest.mark.parametrize("command", WRITES, ids=lambda c: " ".join(c[:2]))
def test_no_reader_can_write_or_administer(broker_server, user, command):
    with pytest.raises(redis.ResponseError, match=REFUSAL):
        reader(broker_server, user).execute_command(*command)


@pytest.mark.parametrize("user", ["probe", "check", "scalein"])
@pytest.mark.parametrize("command", SCRIPTS, ids=lambda c: " ".join(c[:2]))
def test_readers_that_need_no_script_cannot_start_one(broker_server, user, command):
    with pytest.raises(redis.ResponseError, match=REFUSAL):
        reader(broker_server, user).execute_command(*command)


def test_probe_user_runs_exactly_what_the_kubelet_probes_run(broker_server):
    client = reader(broker_server, "probe")
    assert client.ping()
    assert "loading" in client.info("persistence"), "INFO persistence is the readiness check"
    for command in (("CONFIG", "GET", "save"), ("LLEN", "celery"), ("ZCARD", "unacked_index")):
        with pytest.raises(redis.ResponseError, match=REFUSAL):
            client.execute_command(*command)


def test_check_user_runs_what_brokercheck_reads_and_nothing_is_denied(broker_server, task_bodies):
    task_bodies.execute_command("ACL", "LOG", "RESET")
    client = reader(broker_server, "check")
    assert client.ping()
    pipe = client.pipeline(transaction=False)
    pipe.info()
    pipe.config_get("appendfsync")
    pipe.config_get("save")
    for key in ("celery", *(f"celery{PRIORITY}{step}" for step in (3, 6, 9)), "any-queue"):
        pipe.llen(key)
    pipe.zcard("unacked_index")
    pipe.zrange("unacked_index", 0, 0, withscores=True)
    answers = pipe.execute(raise_on_error=False)
    errors = [answer for answer in answers if isinstance(answer, Exception)]
    assert not errors, f"the check user was refused what brokercheck reads: {errors}"
    assert answers[-1] == [(b"tag-1", 1700000000.5)], "the oldest delivery is the check's input"
    assert not acl_denials(task_bodies, "check"), "the check's reads were logged as denied"
    with pytest.raises(redis.ResponseError, match=REFUSAL):
        client.zrange("other-sorted-set", 0, -1)


def test_real_check_passes_with_the_check_users_url(broker_server, task_bodies, tmp_path):
    task_bodies.execute_command("ACL", "LOG", "RESET")
    run = run_check(
        "--url", broker_server.url("check", CHECK_PASSWORD),
        "--worker-url", broker_server.url("celery", CELERY_PASSWORD),
        "--expect-persistence", "aof-always",
        "--expect-workers", "0",
        "--no-canary",
        "--json",
    )  # fmt: skip
    statuses = run.statuses()
    assert run.returncode == 0, f"the check failed as the check user: {statuses}\n{run.stderr}"
    assert statuses["connect"] == "pass", f"check user could not connect: {run.check('connect')}"
    assert not acl_denials(task_bodies, "check"), "the real check was refused a command"


def test_keda_user_reads_every_queue_list_through_kedas_script(broker_server, task_bodies):
    task_bodies.execute_command("ACL", "LOG", "RESET")
    client = reader(broker_server, "keda")
    assert client.ping()
    for queue in ("celery", "short"):
        for step in ("", *(f"{PRIORITY}{s}" for s in (3, 6, 9))):
            key = f"{queue}{step}"
            length = client.execute_command("EVAL", KEDA_SCRIPT, "1", key)
            assert length == task_bodies.llen(key), f"KEDA's read of {key!r} disagrees with LLEN"
    assert not acl_denials(task_bodies, "keda"), "KEDA's script was refused a command"
    for key in ("unacked", "unacked_index", "celery-task-meta-1", "other-queue"):
        with pytest.raises(redis.ResponseError, match=REFUSAL):
            client.execute_command("EVAL", KEDA_SCRIPT, "1", key)


def test_exporter_user_runs_its_scrape_and_script(broker_server, task_bodies):
    broker = rendered_broker("prod")
    script = broker.find("ConfigMap", "-broker-exporter-script")["data"]["celery-unacked.lua"]
    task_bodies.execute_command("ACL", "LOG", "RESET")
    client = reader(broker_server, "exporter")
    assert client.config_get("*")["maxmemory"] != "0", "CONFIG GET * feeds the memory alerts"
    assert "used_memory" in client.info("all")
    client.execute_command("SELECT", "0")
    sizes = {"list": client.llen, "hash": client.hlen, "zset": client.zcard}
    for key in ("celery", f"celery{PRIORITY}3", "short", "unacked", "unacked_index"):
        kind = client.type(key).decode()
        if kind != "none":
            sizes[kind](key)
    values = client.execute_command("EVAL", script, "0")
    assert values == [b"unacked_messages", b"1", b"oldest_unacked_delivered_at", b"1700000000.5"]
    assert not acl_denials(task_bodies, "exporter"), "the exporter's scrape was refused a command"


def test_scale_in_user_runs_the_controllers_pass_and_keda_reads_its_in_flight_list(
    broker_server, task_bodies
):
    """The controller's real Redis calls as `scalein`, then KEDA's script on what it wrote."""
    task_bodies.execute_command("ACL", "LOG", "RESET")
    task_bodies.set(load_key("worker-a"), '{"running": 1, "held": 2}')
    task_bodies.set(load_key("worker-b"), '{"running": 0, "held": 1}')
    board = LoadBoard(reader(broker_server, "scalein"))
    loads = board.read(["worker-a", "worker-b", "worker-gone"])
    assert loads == {"worker-a": Load(1, 2), "worker-b": Load(0, 1), "worker-gone": None}, loads
    assert board.publish_inflight({"pdf": 3}) == {"pdf": 3}
    assert task_bodies.llen(inflight_key("pdf")) == 3
    assert 0 < task_bodies.ttl(inflight_key("pdf")) <= INFLIGHT_TTL_SECONDS
    assert board.publish_inflight({"pdf": 3}) == {}, "an unchanged count was rewritten"
    keda = reader(broker_server, "keda")
    assert keda.execute_command("EVAL", KEDA_SCRIPT, "1", inflight_key("pdf")) == 3
    assert not acl_denials(task_bodies, "scalein"), "the controller was refused a command"
    assert not acl_denials(task_bodies, "keda"), "KEDA was refused the in-flight list"
    client = reader(broker_server, "scalein")
    for command in (
        ("MGET", "celery-task-meta-1"),  # a result: not a load entry
        ("MGET", "unacked"),
        ("SET", load_key("worker-a"), "x"),  # a worker's entry is the workers' to write
        ("DEL", load_key("worker-a")),
        ("DEL", "celery"),
        ("RPUSH", "celery", "x"),
        ("MGET", inflight_key("pdf")),  # write-only: it never needs to read them back
    ):
        with pytest.raises(redis.ResponseError, match=REFUSAL):
            client.execute_command(*command)


def test_written_acl_file_switches_the_default_user_off(broker_server):
    acl = next(Path(broker_server.directory).rglob("users.acl"))
    assert "user default off" in acl.read_text(), "the default user must be switched off"
