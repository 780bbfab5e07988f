"""The prod broker as rendered with TLS, run for real: TLS only, verified clients, live renewal.

A real redis-server boots from the rendered objects with a test CA's certificate for the
rendered Certificate's names, and the rendered reloader sidecar runs beside it (its interval
shortened to 1 s). Clients use the URL form of the rendered client Secret (`rediss://` with
`ssl_cert_reqs=required&ssl_ca_certs=...`), pointed at this host and the test CA: a real
Celery worker and producer, redis-py, the probes and `brokerctl check`.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import redis
from celery import Celery

from components import redis_config
from components.endpoint import BROKER_URL_KEY, RESULT_BACKEND_KEY
from tests.support.broker_boot import (
    CHECK_PASSWORD,
    TLS_HOST,
    BootedBroker,
    RenderedBroker,
    booted_broker,
    issue_test_certificate,
    pod_env,
    rendered_broker,
    running_container,
)
from tests.support.celery_worker import CeleryWorker, running_worker, worker_argv, worker_env
from tests.support.check_cli import run_check
from tests.support.redis_server import CELERY_PASSWORD, PROBE_PASSWORD
from tests.support.tls_certs import make_ca, write_tls_secret_volume

PLACEHOLDER = "redacted-broker-celery-password"
RELOAD_SECONDS = "1"


@dataclass
class TlsDeployment:
    """The booted TLS broker, its rendered objects, a worker on it, and the URLs it uses."""

    broker: RenderedBroker
    server: BootedBroker
    worker: CeleryWorker
    broker_url: str
    result_backend_url: str


def local_url(rendered: str, server: BootedBroker) -> str:
    """Return the rendered client URL, aimed at the booted broker: host, port, password, CA path."""
    parts = urlsplit(rendered)
    query = parse_qs(parts.query)
    assert parts.scheme == "rediss", f"prod clients must use rediss://, rendered {parts.scheme}"
    assert query["ssl_cert_reqs"] == ["required"], f"rendered URL does not verify: {query}"
    local_query = parts.query.replace(
        f"ssl_ca_certs={query['ssl_ca_certs'][0]}", f"ssl_ca_certs={quote(str(server.ca))}"
    )
    netloc = f"celery:{quote(CELERY_PASSWORD, safe='')}@{TLS_HOST}:{server.port}"
    assert parts.password == PLACEHOLDER, "the rendered URL should carry the celery user"
    return parts._replace(netloc=netloc, query=local_query).geturl()


def producer(deployment: TlsDeployment) -> Celery:
    """Return a Celery client on the worker's URLs (as the user's web app would be)."""
    app = Celery("producer", broker=deployment.broker_url, backend=deployment.result_backend_url)
    app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_timeout=5)
    return app


def served_fingerprint(server: BootedBroker) -> str:
    """SHA-256 of the certificate a new TLS connection is served, verified against the CA."""
    context = ssl.create_default_context(cafile=str(server.ca))
    with (
        socket.create_connection((TLS_HOST, server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=TLS_HOST) as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


@pytest.fixture(scope="module")
def deployment() -> Iterator[TlsDeployment]:
    broker = rendered_broker("prod")
    assert broker.tls, "the prod stack must render a TLS-only broker"
    secret = broker.find("Secret", "-broker-client")["stringData"]
    root = Path(tempfile.mkdtemp(prefix="tls-broker-"))
    try:
        with (
            booted_broker(broker, root=root) as server,
            running_container(
                broker, server, "reloader", **{redis_config.ENV_RELOAD_SECONDS: RELOAD_SECONDS}
            ),
        ):
            urls = (
                local_url(secret[BROKER_URL_KEY], server),
                local_url(secret[RESULT_BACKEND_KEY], server),
            )
            env = worker_env(*urls)
            with running_worker(worker_argv(concurrency=1), env=env) as worker:
                yield TlsDeployment(broker, server, worker, *urls)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_redis_serves_only_tls(deployment: TlsDeployment):
    server = deployment.server
    assert server.admin().config_get("port")["port"] == "0", "the plain port must be closed"
    with socket.create_connection((server.host, server.port), timeout=5) as plain:
        plain.sendall(b"PING\r\n")
        try:
            reply = plain.recv(64)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    assert not reply.startswith((b"+", b"-")), f"a plain TCP client got a RESP answer: {reply!r}"
    plain_client = redis.Redis(host=server.host, port=server.port, socket_timeout=3)
    with pytest.raises(redis.ConnectionError):
        plain_client.ping()


def test_client_that_does_not_trust_the_ca_is_refused(deployment: TlsDeployment, tmp_path: Path):
    server = deployment.server
    system_trust = redis.Redis(
        host=TLS_HOST, port=server.port, ssl=True, socket_timeout=5,
        username="probe", password=PROBE_PASSWORD,
    )  # fmt: skip
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        system_trust.ping()
    other_ca = make_ca(tmp_path / "other-ca", name="not-the-broker-ca")
    stranger = deployment.broker_url.replace(quote(str(server.ca)), quote(str(other_ca.cert)))
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(stranger, socket_timeout=5).ping()


def test_rendered_probes_pass_over_tls(deployment: TlsDeployment):
    server = deployment.server
    for kind in ("startup", "liveness", "readiness"):
        command = " ".join(deployment.broker.probe(kind))
        assert "--tls --cacert" in command, f"{kind} probe does not verify over TLS"
        result = deployment.server.run_probe(deployment.broker, kind)
        assert result.returncode == 0, f"{kind} failed over TLS: {result.stdout}{result.stderr}"
    reloader = deployment.broker.container_named("reloader")
    env = pod_env(deployment.broker, server.mounts, server.port, server.directory, reloader)  # type: ignore[arg-type]
    for kind in ("liveness", "readiness"):
        probe = reloader[f"{kind}Probe"]["exec"]["command"]
        result = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, f"reloader {kind} fails: {result.stdout}{result.stderr}"


def test_celery_worker_consumes_and_stores_results_over_rediss(deployment: TlsDeployment):
    result = producer(deployment).send_task("src.tasks.process_pdf_task", args=["%PDF", "a.pdf"])
    assert result.get(timeout=20) == len("%PDF"), deployment.worker.log()
    users = {c["user"] for c in deployment.server.admin().client_list()}
    assert "celery" in users, f"the worker is not connected as celery: {users}"


def test_broker_check_passes_over_rediss(deployment: TlsDeployment):
    server = deployment.server
    check_url = deployment.broker_url.replace(
        f"celery:{quote(CELERY_PASSWORD, safe='')}@", f"check:{quote(CHECK_PASSWORD, safe='')}@"
    )
    run = run_check(
        *("--url", check_url, "--worker-url", deployment.broker_url),
        *("--result-backend", deployment.result_backend_url),
        *("--expect-persistence", "aof-always", "--expect-workers", "1", "--json"),
        via_brokerctl=True,
    )
    assert run.returncode == 0, f"check failed over rediss:\n{run.output}"
    assert run.check("connect")["status"] == "pass"
    assert CHECK_PASSWORD not in run.output, "the check printed a password"
    assert CELERY_PASSWORD not in run.output, "the check printed a password"
    assert server.process.poll() is None


def test_renewed_certificate_is_served_without_restarting_redis_or_workers(
    deployment: TlsDeployment,
):
    server, worker = deployment.server, deployment.worker
    pid = server.pid
    before = served_fingerprint(server)
    ca, renewed = issue_test_certificate(deployment.broker, server.directory / "pki", "renewed")
    tls_dir = Path(server.env[redis_config.ENV_TLS_DIR])  # type: ignore[index]
    write_tls_secret_volume(tls_dir, ca, renewed)  # what the kubelet does after cert-manager
    log_path = server.directory / "reloader.log"
    deadline = time.monotonic() + 15
    # The reloader logs right after Redis took the certificate: wait for both, not just one.
    while time.monotonic() < deadline and not (
        served_fingerprint(server) == renewed.fingerprint()
        and "Redis serves the new certificate" in log_path.read_text()
    ):
        time.sleep(0.2)
    reloader_log = log_path.read_text()
    assert served_fingerprint(server) == renewed.fingerprint() != before, (
        f"Redis still serves the old certificate; reloader said:\n{reloader_log}"
    )
    assert server.process.poll() is None, "Redis stopped"
    assert server.pid == pid, "Redis was restarted"
    assert "Redis serves the new certificate" in reloader_log, reloader_log
    assert server.client("probe", PROBE_PASSWORD).ping(), "a new client cannot verify the new cert"
    # The worker connected before the renewal keeps its session and keeps consuming.
    result = producer(deployment).send_task("src.tasks.process_pdf_task", args=["%PDF-1", "b"])
    assert result.get(timeout=20) == len("%PDF-1"), worker.log()
    assert worker.process.poll() is None, "the worker stopped"
    assert "Connection to broker lost" not in worker.log(), "the worker lost its connection"


def test_broker_check_explains_tls_mistakes(deployment: TlsDeployment, tmp_path: Path):
    server = deployment.server
    plain = f"redis://probe:{quote(PROBE_PASSWORD, safe='')}@{server.host}:{server.port}/0"
    other_ca = make_ca(tmp_path / "other-ca", name="not-the-broker-ca")
    stranger = deployment.broker_url.replace(quote(str(server.ca)), quote(str(other_ca.cert)))
    for url, expected in ((plain, "use rediss://"), (stranger, "not signed by the CA")):
        run = run_check("--url", url, "--timeout", "3", "--json")
        assert run.returncode == 1, f"the check passed with {url}:\n{run.output}"
        assert expected in run.check("connect")["hint"], run.check("connect")


def test_reloader_stops_at_once_on_sigterm(deployment: TlsDeployment):
    """Exit 0 from the trap, at once: as PID 1 of its container, sh ignores SIGTERM otherwise.

    Here sh is not PID 1 (it would just die of the signal), so the exit status, 0 only
    through the trap, is what proves the trap is there.
    """
    broker, server = deployment.broker, deployment.server
    slow = {redis_config.ENV_RELOAD_SECONDS: "60"}
    with running_container(broker, server, "reloader", **slow) as reloader:
        time.sleep(1)  # past its first pass, into the sleep
        reloader.send_signal(signal.SIGTERM)
        # Far below its 60 s sleep: a trap that waited the sleep out would time out here.
        reloader.wait(timeout=30)
        assert reloader.returncode == 0, "SIGTERM killed the reloader: it has no trap"
