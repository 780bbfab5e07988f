"""The prod stack, as rendered, run as local pods: two pools, AOF with fsync always, KEDA.

KEDA is not running here (the pod runner accepts ScaledObjects without effect): each autoscaled
Deployment is scaled to its ScaledObject's minReplicaCount when it starts, as KEDA would. Nor is
cert-manager: the Certificate becomes the TLS Secret it would issue, signed by a test CA
(conftest.emulate_cert_manager), and the test process verifies the broker against that CA.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    CLIENT_CA_DIR,
    ONE_MIB,
    RunningStack,
    send_pdfs,
)
from tests.podrunner import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def prod_dir(rendered: Callable[..., Path]) -> Path:
    return rendered("prod")


@pytest.fixture(scope="module")
def prod_stack(open_stack: Callable, prod_dir: Path) -> Iterator[RunningStack]:
    """Bring the prod stack up (broker, then both pools) for the tests that do not disturb it."""
    with open_stack(prod_dir) as stack:
        stack.start_all()
        yield stack


def test_prod_stack_comes_up_with_both_pools_and_its_check_job_passes(
    prod_stack: RunningStack,
) -> None:
    assert set(prod_stack.worker_pools) == {"pdf", "short"}, (
        f"prod should run the pdf and short pools, has {sorted(prod_stack.worker_pools)}"
    )
    job = prod_stack.run_check_job()
    assert job.succeeded, f"the prod check Job failed ({job.reason}):\n{job.logs}"
    assert "aof-always" in job.logs, f"the check did not see AOF with fsync always:\n{job.logs}"
    assert len(prod_stack.worker_pods("pdf")) == 2, "the pdf pool should run its 2 replicas"


def test_prod_pools_process_their_own_queues_including_1mb_pdfs(
    prod_stack: RunningStack,
) -> None:
    with prod_stack.producer() as app:
        pdfs = send_pdfs(app, 8, queue="celery")
        short = send_pdfs(app, 20, queue="short", size=2048)
    assert prod_stack.results(pdfs) == [ONE_MIB] * 8, "1 MiB PDFs were not all processed"
    assert prod_stack.results(short) == [2048] * 20, "short tasks were not all processed"

    def ran_in(pool: str) -> str:
        return "".join(pod.logs() for pod in prod_stack.worker_pods(pool))

    pdf_logs, short_logs = ran_in("pdf"), ran_in("short")
    misrouted = [task_id for task_id in pdfs if task_id not in pdf_logs or task_id in short_logs]
    misrouted += [task_id for task_id in short if task_id not in short_logs or task_id in pdf_logs]
    assert not misrouted, f"tasks ran in the wrong pool (by worker logs): {misrouted[:5]}"


def test_prod_broker_kill_9_loses_no_queued_task(open_stack: Callable, prod_dir: Path) -> None:
    """AOF with fsync always: every task Redis acknowledged is still queued after kill -9."""
    with open_stack(prod_dir) as stack:
        broker = stack.start_broker()
        with stack.producer() as app:
            pdfs = send_pdfs(app, 8, queue="celery")
            short = send_pdfs(app, 20, queue="short", size=2048)
        broker.kill(signal.SIGKILL)  # at once: no snapshot, no rewrite, only the AOF
        wait_until(lambda: broker.restart_count == 1, 30, "the broker container to restart")
        stack.wait_broker_ready()
        queued = (stack.queue_length("celery"), stack.queue_length("short"))
        assert queued == (8, 20), (
            f"kill -9 lost acknowledged tasks: (celery, short) queued {queued}, sent (8, 20)\n"
            f"{broker.logs()[-2000:]}"
        )
        stack.start_workers()
        assert stack.results(pdfs) == [ONE_MIB] * 8, "restored PDFs were not all processed"
        assert stack.results(short) == [2048] * 20, "restored short tasks were not all processed"


def test_prod_client_pods_can_read_the_ca_their_broker_urls_name(
    open_stack: Callable, prod_dir: Path
) -> None:
    """Workers and the check verify the TLS broker with the CA file their URLs point to.

    Runs the objects exactly as rendered (no F3 workaround): the pods must mount that file.
    """
    with open_stack(prod_dir) as stack:
        assert stack.ca_file is not None, "prod should serve TLS (a cert-manager Certificate)"
        stack.start_broker()
        stack.start_workers_without_waiting()
        pods = wait_until(stack.running_worker_pods, 30, "every worker container to run")
        ca_file = f"{CLIENT_CA_DIR}/ca.crt"
        unreadable = [p.name for p in pods if p.exec(["test", "-r", ca_file]).returncode != 0]
        job = stack.run_check_job()
    assert not unreadable, (
        f"worker pods cannot read {ca_file}, the ssl_ca_certs of their broker URL, so they "
        f"cannot connect: {unreadable}"
    )
    assert re.search(r"^connect\s+PASS", job.logs, re.MULTILINE), (
        f"the check Job cannot connect to the TLS broker:\n{job.logs}"
    )
