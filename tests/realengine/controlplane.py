"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller manager, scheduler.

The binaries are the ones scripts/toolchain.sh builds from the Go module proxy at pinned
versions (etcd is Debian's). Everything listens on 127.0.0.1, on ports chosen at run time;
certificates come from openssl into a temporary folder that dies with the cluster.

    with ControlPlane(tmp_path) as cluster:
        cluster.kubectl("get", "namespaces")

What this is not: a node. Pods run once a tests/realengine/node_agent.NodeAgent joins.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import yaml

from tests.realengine.toolchain import binary, crd_files
from tests.support.network import free_port

START_TIMEOUT = 90.0
"""Seconds the API server gets to answer /readyz (etcd and certificates included)."""


class ControlPlaneError(RuntimeError):
    """A component did not start; the message carries the tail of its log."""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> None:
    """Make a CA, the serving cert, an admin client cert and the service-account key pair."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=folder)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/CN=test-ca",
        "-out", "ca.crt", cwd=folder,
    )  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc,IP:10.96.0.1\n"
        "extendedKeyUsage=serverAuth\n"
    )
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject, ext in (
        ("server", "/CN=kube-apiserver", "server.ext"),
        ("admin", "/O=system:masters/CN=test-admin", "client.ext"),
    ):
        _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=folder)
        _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr",
                 cwd=folder)  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", f"{name}.crt", cwd=folder,
        )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=folder)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=folder)


def kubeconfig_text(server: str, pki: Path, context: str) -> str:
    """Return a kubeconfig with one cluster, one admin user and one context named `context`."""
    return f"""apiVersion: v1
kind: Config
clusters:
- name: {context}
  cluster:
    server: {server}
    certificate-authority: {pki / "ca.crt"}
users:
- name: {context}-admin
  user:
    client-certificate: {pki / "admin.crt"}
    client-key: {pki / "admin.key"}
contexts:
- name: {context}
  context:
    cluster: {context}
    user: {context}-admin
current-context: {context}
"""


class ControlPlane:
    """Start etcd, kube-apiserver, kube-controller-manager and kube-scheduler; stop them all."""

    def __init__(self, root: Path, context: str = "real-engine") -> None:
        self.root = root
        self.context = context
        self.pki = root / "pki"
        self.kubeconfig = root / "kubeconfig"
        self.api_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        self._processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._processes.append((name, process, log))

    def log_tail(self, name: str, lines: int = 30) -> str:
        """Return the last lines of one component's log, for error messages."""
        text = (self.root / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        """Start every component and wait until the API server is ready."""
        make_certificates(self.pki)
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn("etcd", [
            shutil.which("etcd") or "etcd", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
        ])  # fmt: skip
        pki = self.pki
        self._spawn("kube-apiserver", [
            str(binary("kube-apiserver")), "--etcd-servers", etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.api_port),
            "--tls-cert-file", str(pki / "server.crt"),
            "--tls-private-key-file", str(pki / "server.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--authorization-mode", "Node,RBAC",
            # One API server, no node network: it must not publish itself as an endpoint.
            "--endpoint-reconciler-type", "none",
        ])  # fmt: skip
        self.kubeconfig.write_text(kubeconfig_text(self.server, pki, self.context))
        self._wait_ready()
        common = ["--kubeconfig", str(self.kubeconfig), "--leader-elect=false"]
        self._spawn("kube-controller-manager", [
            str(binary("kube-controller-manager")), *common,
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()),
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--root-ca-file", str(pki / "ca.crt"),
            "--cluster-signing-cert-file", str(pki / "ca.crt"),
            "--cluster-signing-key-file", str(pki / "ca.key"),
            "--use-service-account-credentials",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            str(binary("kube-scheduler")), *common,
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()),
        ])  # fmt: skip
        # Pods are admitted only once the controller manager made the namespace's default
        # service account: wait for it, so that the first test does not race it.
        self.wait_for_service_account("default")

    def wait_for_service_account(self, namespace: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until `namespace` has its `default` ServiceAccount (pods need it to be admitted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.kubectl("-n", namespace, "get", "serviceaccount", "default", check=False)
            if found.returncode == 0:
                return
            time.sleep(0.5)
        tail = self.log_tail("kube-controller-manager")
        msg = f"no default ServiceAccount in {namespace} after {timeout:g} s:\n{tail}"
        raise ControlPlaneError(msg)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for name, process, _ in self._processes:
                if process.poll() is not None:
                    msg = f"{name} exited with {process.returncode}:\n{self.log_tail(name)}"
                    raise ControlPlaneError(msg)
            result = self.kubectl("get", "--raw", "/readyz", check=False, timeout=10)
            if result.returncode == 0 and result.stdout.strip() == "ok":
                return
            time.sleep(0.5)
        tail = self.log_tail("kube-apiserver")
        msg = f"kube-apiserver not ready after {START_TIMEOUT:g} s:\n{tail}"
        raise ControlPlaneError(msg)

    def install_crds(self) -> list[str]:
        """Install the pinned CRDs of KEDA, cert-manager and the Prometheus Operator.

        They are the projects' own definitions with their real schemas; cert-manager ships its
        as a Helm template whose labels are template text, so labels and annotations are
        dropped. Returns the CRD names once the API server serves them (Established).
        """
        names = []
        for path in crd_files():
            for crd in yaml.safe_load_all(path.read_text()):
                if not crd:
                    continue
                crd["metadata"] = {"name": crd["metadata"]["name"]}
                self.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(crd))
                names.append(crd["metadata"]["name"])
        self.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            *[f"crd/{name}" for name in names], timeout=90,
        )  # fmt: skip
        return names

    def env(self) -> dict[str, str]:
        """Return a client environment with our kubeconfig, never the ambient one."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster (bounded by `timeout`)."""
        result = subprocess.run(
            [str(binary("kubectl")), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True, text=True, timeout=timeout, input=stdin, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            msg = f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            raise ControlPlaneError(msg)
        return result

    def stop(self) -> None:
        """Stop every component (SIGTERM, then SIGKILL after a bounded wait)."""
        for _, process, _ in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
        for _, process, _ in reversed(self._processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        self._processes.clear()
