"""The dev stack's life under the real engine, provider, control plane and a node that runs pods.

One stack is deployed once and changed step by step, as a platform engineer would, so the
suite stays affordable; the tests run in file order and each builds on the one before. The
pods are real processes (tests/realengine/node_agent.py): redis-server from the rendered
config, Celery workers of the stand-in app, the check Job running brokerctl/brokercheck.py.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest

from tests.realengine.controlplane import ControlPlane
from tests.realengine.deployed import Deployed, deployed_stack
from tests.realengine.node_agent import NodeAgent

NAMESPACE = "life-dev"
PARKED_QUEUE = "parked"  # a list no worker consumes: what stays queued across changes


@pytest.fixture(scope="module")
def deployed(
    control_plane: ControlPlane, node: NodeAgent, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    """Yield the dev stack's project copy on the session's node; destroy it after."""
    root = tmp_path_factory.mktemp("dev-lifecycle")
    with deployed_stack(root, "dev", NAMESPACE, control_plane, node) as deployed:
        yield deployed


def test_up_from_empty_runs_every_pod_and_the_gate_passes(deployed: Deployed) -> None:
    output = deployed.up()
    jobs = deployed.jobs()
    assert len(jobs) == 1, f"expected one check Job, found {sorted(jobs)}"
    (job,) = jobs.values()
    assert job["status"].get("succeeded") == 1, f"the gate did not pass: {job['status']}"
    pods = deployed.get("pods")["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"])
        for p in running
    ), f"a running pod is not ready:\n{deployed.node.describe()}"
    assert {"redis", "worker"} <= {
        p["metadata"]["labels"].get("app.kubernetes.io/component") for p in running
    }, f"broker or workers not running:\n{output}"


def test_a_no_op_preview_and_a_refresh_find_nothing_to_do(deployed: Deployed) -> None:
    for flags in (("--expect-no-changes",), ("--refresh", "--expect-no-changes")):
        result = deployed.stack.run("preview", *flags)
        assert result.returncode == 0, f"preview {flags} planned changes:\n{result.stdout}"


def test_a_pool_concurrency_change_rolls_only_that_pool_and_reruns_the_check(
    deployed: Deployed,
) -> None:
    before = deployed.pod_uids()
    jobs_before = set(deployed.jobs())
    pools = deployed.settings()["config"]["celery-redis:workers"]["pools"]
    pools[0]["concurrency"] = pools[0]["concurrency"] + 1
    deployed.change("workers", {"pools": pools})
    deployed.up()
    after = deployed.pod_uids()
    brokers = [name for name in before if "broker" in name and "check" not in name]
    assert brokers, f"no broker pod among {sorted(before)}"
    for name in brokers:
        assert after.get(name) == before[name], f"{name} was replaced by a worker change"
    workers_before = {n for n in before if "worker" in n}
    assert workers_before, f"no worker pod among {sorted(before)}"
    assert not workers_before & set(after), "the pool did not roll"
    new_jobs = set(deployed.jobs()) - jobs_before
    assert len(new_jobs) == 1, f"expected a new check Job, have {sorted(deployed.jobs())}"


def test_a_broker_setting_change_rolls_the_broker_and_keeps_queued_tasks(
    deployed: Deployed,
) -> None:
    client = deployed.broker_client()
    client.lpush(PARKED_QUEUE, *[f"task-{n}" for n in range(100)])
    # dev snapshots (rdb); Redis saves one more on SIGTERM, which the roll sends first.
    broker_before = {n: u for n, u in deployed.pod_uids().items() if n.endswith("broker-0")}
    # New save points change redis.conf, whose hash in the pod template rolls the broker.
    deployed.change("broker", {"rdb_schedule": [{"seconds": 600, "changes": 10}]})
    deployed.up()
    broker_after = {n: u for n, u in deployed.pod_uids().items() if n.endswith("broker-0")}
    assert broker_after, "no broker pod after the update"
    assert broker_after != broker_before, "the broker did not roll"
    assert deployed.broker_client().llen(PARKED_QUEUE) == 100, "queued tasks were lost"


def test_growing_the_volume_is_refused_before_anything_changes(deployed: Deployed) -> None:
    uids = deployed.pod_uids()
    size = deployed.settings()["config"]["celery-redis:broker"]["storage"]["size"]
    deployed.change("broker", {"storage": {"size": "4Gi"}})
    try:
        for operation in ("preview", "up"):
            result = deployed.stack.run(operation)
            output = result.stdout + result.stderr
            assert result.returncode != 0, f"{operation} accepted a new volume size:\n{output}"
            for expected in ("broker.storage.size", size, "4Gi", "README"):
                assert expected in output, f"{expected!r} missing from:\n{output}"
            assert "Forbidden" not in output, f"the API server's refusal leaked:\n{output}"
            assert "Traceback" not in output, output
        assert deployed.pod_uids() == uids, "a refused update changed pods"
    finally:
        deployed.change("broker", {"storage": {"size": size}})


def test_a_failing_check_fails_up_and_the_next_up_replaces_the_job(deployed: Deployed) -> None:
    secret = deployed.get("secret", "celery-broker-client")
    data = secret["data"]
    broken = dict(data)
    url = base64.b64decode(data["BROKER_CHECK_URL"]).decode()
    broken_url = url.replace("check:", "check:x", 1) if "check:" in url else url + "x"
    broken["BROKER_CHECK_URL"] = base64.b64encode(broken_url.encode()).decode()
    deployed.cluster.kubectl(
        "-n", NAMESPACE, "patch", "secret", "celery-broker-client", "--type=merge",
        "-p", json.dumps({"data": broken}),
    )  # fmt: skip
    deployed.change("checks", {"timeout_seconds": 9})  # a check setting: a new Job runs
    result = deployed.stack.run("up")
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"up passed with a broken check credential:\n{output}"
    assert "Job" in output, f"the failure does not name the check Job:\n{output}"
    from_laptop = deployed.check_in_cluster("--json", "--timeout", "120")
    assert from_laptop.returncode == 1, f"in-cluster check passed:\n{from_laptop.stdout}"
    report = json.loads(from_laptop.stdout)
    assert report["ok"] is False, report
    deployed.up("--refresh")  # refresh restores the Secret; the failed Job is replaced
    jobs = deployed.jobs()
    assert [j["status"].get("succeeded") for j in jobs.values()] == [1], jobs


def test_the_check_runs_in_the_cluster_from_a_laptop(deployed: Deployed) -> None:
    """No route to the broker needed: the gate's own Job runs once and its report comes back."""
    result = deployed.check_in_cluster("--json", "--timeout", "120")
    assert result.returncode == 0, f"in-cluster check failed:\n{result.stdout}\n{result.stderr}"
    report = json.loads(result.stdout)
    assert report["ok"] is True, report
    names = {check["name"] for check in report["checks"]}
    assert {"connect", "persistence", "workers"} <= names, names
    table = deployed.check_in_cluster("--timeout", "120")
    assert table.returncode == 0, table.stderr
    assert "connect" in table.stdout, table.stdout


def test_destroy_keeps_the_queued_tasks_and_up_brings_them_back(deployed: Deployed) -> None:
    result = deployed.stack.run("destroy")
    assert result.returncode == 0, f"destroy failed:\n{result.stdout}\n{result.stderr}"
    claims = deployed.get("pvc")["items"]
    assert claims, "destroy deleted the broker's claim"
    deadline = time.monotonic() + 60
    while deployed.get("pods")["items"] and time.monotonic() < deadline:
        time.sleep(1)
    deployed.up()
    assert deployed.broker_client().llen(PARKED_QUEUE) == 100, "tasks queued before destroy lost"
