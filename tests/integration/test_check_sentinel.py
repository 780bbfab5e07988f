"""The check against a Sentinel-replicated broker: real Redis, replicas, Sentinels and worker.

Runs once per engine (ids end in [redis] / [valkey]): on Valkey every node and Sentinel is
valkey-server, as the Valkey broker pods run it, and the gate expects engine valkey.

One master, two replicas and three Sentinels (quorum 2) run for the whole module, with the
users the Sentinel design fixes and `min-replicas-to-write 1`; a stand-in worker reaches the
master through Sentinel. Each test breaks one thing and runs the check as the gate Job does:
the arguments components/checks.py renders for a stack shaped like this broker, URLs and
Sentinel's password from the environment. The `broker` fixture restores the topology after.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from components.checks import SENTINEL_PASSWORD_ENV, check_arguments, sentinel_expectations
from components.endpoint import BROKER_URL_KEY, CHECK_URL_KEY, RESULT_BACKEND_KEY
from components.settings import StackSettings
from tests.support.celery_worker import CeleryWorker, running_worker, worker_argv, worker_env
from tests.support.check_cli import CheckRun, run_check
from tests.support.engines import ENGINES
from tests.support.redis_server import CELERY_PASSWORD, PROBE_PASSWORD
from tests.support.sentinel_broker import (
    ADMIN_PASSWORD,
    MASTER_NAME,
    MIN_REPLICAS_MAX_LAG,
    MIN_REPLICAS_TO_WRITE,
    SENTINEL_PASSWORD,
    SentinelBroker,
    running_sentinel_broker,
    wait_for,
)

pytestmark = pytest.mark.ha

SENTINEL_CHECKS = {"sentinels", "sentinel-master", "sentinel-quorum", "replicas", "loss-bound",
                   "writes"}  # fmt: skip
BROKER_CHECKS = {"connect", "default-user", "persistence", "persistence-status", "eviction-policy",
                 "maxmemory", "memory-usage", "backlog:celery", "unacked",
                 "engine"}  # fmt: skip
"""Checks on the master; `engine` because the gate Job passes the stack's --expect-engine."""
WORKER_CHECKS = {"workers", "pool:default", "canary:celery"}
PASSWORDS = (PROBE_PASSWORD, CELERY_PASSWORD, SENTINEL_PASSWORD, ADMIN_PASSWORD)
IMAGE = "registry.example.com/transcritor-pdf:1.0.0"


@dataclass
class Deployment:
    """The running topology and the worker that consumes from it through Sentinel."""

    broker: SentinelBroker
    worker: CeleryWorker


@pytest.fixture(scope="module", params=ENGINES)
def deployment(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    """Start the topology and its worker on one engine, once per engine for the module."""
    engine = request.param
    directory = tmp_path_factory.mktemp(f"sentinel-broker-{engine}")
    with running_sentinel_broker(directory, engine=engine) as broker:
        env = worker_env(
            broker.url("celery", CELERY_PASSWORD, db=0),
            broker.url("celery", CELERY_PASSWORD, db=1),
            BROKER_SENTINEL_MASTER=MASTER_NAME,
            BROKER_SENTINEL_PASSWORD=SENTINEL_PASSWORD,
        )
        with running_worker(worker_argv("src.sentinel_app"), env=env) as worker:
            yield Deployment(broker, worker)


@pytest.fixture
def broker(deployment: Deployment) -> Iterator[SentinelBroker]:
    """Yield the topology healthy; restore it after the test, whatever the test broke."""
    deployment.broker.wait_healthy()
    yield deployment.broker
    deployment.broker.restore()


def gate_settings(broker: SentinelBroker) -> StackSettings:
    """Return the settings of a stack shaped like `broker` (three servers, one master)."""
    return StackSettings.model_validate(
        {
            "kube_context": "test",
            "ephemeral": True,  # persistence none, like the test broker
            "broker": {
                "engine": broker.engine,
                "persistence": "none",
                "topology": "sentinel",
                "sentinel": {
                    "replicas": 3,
                    "master_name": MASTER_NAME,
                    "min_replicas_to_write": MIN_REPLICAS_TO_WRITE,
                    "min_replicas_max_lag": MIN_REPLICAS_MAX_LAG,
                },
            },
            "workers": {"pools": [{"name": "default", "image": IMAGE, "queues": ["celery"]}]},
        },
        strict=False,
    )


def job_environment(broker: SentinelBroker) -> dict[str, str]:
    """Return the check Job's environment: the client Secret's URLs, Sentinel's password."""
    return {
        CHECK_URL_KEY: broker.url("probe", PROBE_PASSWORD, db=0),
        BROKER_URL_KEY: broker.url("celery", CELERY_PASSWORD, db=0),
        RESULT_BACKEND_KEY: broker.url("celery", CELERY_PASSWORD, db=1),
        SENTINEL_PASSWORD_ENV: SENTINEL_PASSWORD,
    }


def sentinel_check(broker: SentinelBroker, *extra: str, expect_workers: int = 1) -> CheckRun:
    """Run the check as the gate Job does (its rendered arguments and environment), + `extra`."""
    return run_check(
        *check_arguments(gate_settings(broker)),
        *("--expect-workers", str(expect_workers), "--json", *extra),
        env=job_environment(broker),
    )


def failed(run: CheckRun) -> set[str]:
    """Names of the checks that failed."""
    return {name for name, status in run.statuses().items() if status == "fail"}


def assert_no_password(run: CheckRun) -> None:
    for password in PASSWORDS:
        assert password not in run.output, f"a password was printed:\n{run.output}"


def test_healthy_sentinel_broker_passes_the_gate_jobs_every_check(broker: SentinelBroker) -> None:
    run = sentinel_check(broker)

    replicas = {f"replica:{broker.replica_address(i)}" for i in range(2)}
    expected = SENTINEL_CHECKS | replicas | BROKER_CHECKS | WORKER_CHECKS
    assert run.returncode == 0, f"healthy Sentinel broker failed the check:\n{run.output}"
    assert run.statuses() == dict.fromkeys(expected, "pass"), run.stdout
    assert broker.master_address in run.check("sentinel-master")["measured"], run.stdout
    assert "3 of 3" in run.check("sentinels")["measured"], run.stdout
    assert_no_password(run)


def test_check_from_stack_outputs_judges_like_the_gate(
    broker: SentinelBroker, tmp_path: Path
) -> None:
    """`brokerctl check --stack`: URLs and expectations from outputs, the password from env."""
    outputs = {
        "check_url": broker.url("probe", PROBE_PASSWORD, db=0),
        "broker_url": broker.url("celery", CELERY_PASSWORD, db=0),
        "result_backend_url": broker.url("celery", CELERY_PASSWORD, db=1),
        "persistence": "none",
        "pools": [{"name": "default", "queues": ["celery"], "replicas": 1}],
        "expect_workers": 1,
        **sentinel_expectations(gate_settings(broker)),
    }
    outputs_file = tmp_path / "outputs.json"
    outputs_file.write_text(json.dumps(outputs))

    run = run_check(
        "--outputs", str(outputs_file), "--json",
        env={"BROKER_SENTINEL_PASSWORD": SENTINEL_PASSWORD}, via_brokerctl=True,
    )  # fmt: skip

    assert run.returncode == 0, f"check --outputs failed on a healthy broker:\n{run.output}"
    assert run.check("replicas")["expected"] == ">= 2 healthy replicas", run.stdout
    assert run.check("loss-bound")["expected"] == (
        f"min-replicas-to-write {MIN_REPLICAS_TO_WRITE}, "
        f"min-replicas-max-lag {MIN_REPLICAS_MAX_LAG}"
    ), run.stdout
    assert_no_password(run)


def test_check_fails_naming_ckquorum_when_sentinels_lack_quorum(broker: SentinelBroker) -> None:
    broker.stop_sentinel(1)
    broker.stop_sentinel(2)
    wait_for(
        lambda: None if broker.quorum_reply(0).startswith("NOQUORUM") else broker.quorum_reply(0),
        15.0,
        "the last Sentinel to flag its peers down",
    )

    run = sentinel_check(broker)

    assert run.returncode == 1, run.output
    assert failed(run) == {"sentinel-quorum"}, run.stdout
    quorum = run.check("sentinel-quorum")
    assert "CKQUORUM" in quorum["expected"], quorum
    assert "NOQUORUM" in quorum["measured"], quorum
    assert run.check("sentinels")["status"] == "warn", "two silent Sentinels must be reported"
    assert run.check("canary:celery")["status"] == "pass", "one Sentinel still finds the master"
    assert_no_password(run)


def test_check_fails_naming_a_stopped_replica(broker: SentinelBroker) -> None:
    broker.stop_replica(1)

    run = sentinel_check(broker)

    stopped = f"replica:{broker.replica_address(1)}"
    assert run.returncode == 1, run.output
    assert failed(run) == {stopped, "replicas"}, run.stdout
    assert "not connected to the master" in run.check(stopped)["measured"], run.stdout
    assert run.check(f"replica:{broker.replica_address(0)}")["status"] == "pass", run.stdout
    assert run.check("writes")["status"] == "pass", "one good replica still meets the bound"


def test_check_fails_when_a_replica_lags_past_the_bound(broker: SentinelBroker) -> None:
    """A paused replica keeps its connection: only its growing lag tells it is behind."""
    bound = 2
    broker.pause_replica(0)
    wait_for(
        lambda: None if (broker.replica_lag(0) or 0) > bound else "lag still within the bound",
        15.0,
        f"the paused replica's lag to pass {bound} s",
    )

    run = sentinel_check(broker, "--max-replica-lag", str(bound))

    lagging = run.check(f"replica:{broker.replica_address(0)}")
    assert lagging["status"] == "fail", run.stdout
    lag = int(lagging["measured"].split("lag ", 1)[1].split(" s", 1)[0])
    assert lag > bound, lagging
    assert "acknowledg" in lagging["hint"], f"the lag must fail it, not Sentinel's flags: {lagging}"
    assert f"lag <= {bound} s" in lagging["expected"], lagging
    assert run.check(f"replica:{broker.replica_address(1)}")["status"] == "pass", run.stdout


def test_check_fails_when_the_loss_bound_is_not_in_effect(broker: SentinelBroker) -> None:
    broker.admin().config_set("min-replicas-to-write", 0)

    expecting_one = sentinel_check(broker)
    expecting_nothing = sentinel_check(broker, "--expect-workers", "0")  # no expectation given

    for run in (expecting_one, expecting_nothing):
        assert run.returncode == 1, run.output
        assert "loss-bound" in failed(run), run.stdout
        assert "min-replicas-to-write 0" in run.check("loss-bound")["measured"], run.stdout


def test_check_without_loss_bound_expectation_fails_when_it_is_off(broker: SentinelBroker) -> None:
    broker.admin().config_set("min-replicas-to-write", 0)
    env = {
        "BROKER_CHECK_URL": broker.url("probe", PROBE_PASSWORD),
        "BROKER_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
    }

    run = run_check("--sentinel-master", MASTER_NAME, "--json", env=env)

    assert failed(run) == {"loss-bound"}, run.stdout
    assert run.check("loss-bound")["expected"].startswith("min-replicas-to-write > 0"), run.stdout


def test_losing_every_replica_stops_writes_and_the_check_says_so(
    broker: SentinelBroker, tmp_path: Path
) -> None:
    broker.stop_replica(0)
    broker.stop_replica(1)

    run = sentinel_check(broker, expect_workers=0)

    assert run.returncode == 1, run.output
    writes = run.check("writes")
    assert writes["status"] == "fail", run.stdout
    assert "REFUSED" in writes["measured"], writes
    assert "NOREPLICAS" in writes["measured"], writes
    assert "0 good replicas" in writes["measured"], writes
    with pytest.raises(redis.ResponseError, match="NOREPLICAS"):
        broker.admin().lpush("celery", "a task")  # what the check said is what Redis does
    assert_no_password(run)
