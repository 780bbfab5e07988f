"""cert-manager's part, played by the test: the Secret of every Certificate, from a test CA.

No operator runs on the real-engine control planes. A stack with `tls.enabled` creates a
cert-manager Certificate (its CRD is the project's real one: ControlPlane.install_crds); its
broker pods wait for the `kubernetes.io/tls` Secret as they would for cert-manager (FailedMount,
retried), so `pulumi up`'s await covers the issuance. This stand-in issues that Secret from a
CA the test process trusts (`.ca`): dnsNames, secretTemplate labels and cert-manager's
annotations as cert-manager writes them. Like cert-manager, it issues again into the same
Secret when the Certificate's dnsNames change (a move to Sentinel adds the new pods' names):
the `cert-manager.io/alt-names` annotation records the names a Secret was issued for.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tests.realengine.controlplane import ControlPlane
from tests.realengine.node_agent import ApiClient
from tests.support.tls_certs import KeyPair, issue_server_certificate, make_ca

POLL_SECONDS = 0.5
ALT_NAMES = "cert-manager.io/alt-names"
"""cert-manager's annotation on the Secret: the DNS names it issued, comma-separated."""


class CertManagerStandIn:
    """Issue the Secret of every Certificate in a namespace, as cert-manager would.

    Polls the API server for Certificates; for each whose Secret is missing, or was issued for
    other dnsNames, a test CA signs an ECDSA certificate for its dnsNames and the Secret
    (tls.crt, tls.key, ca.crt, with the Certificate's secretTemplate labels and cert-manager's
    annotations) is created or updated. `issued` names each Secret once per issuance.
    """

    def __init__(
        self, cluster: ControlPlane, namespace: str, folder: Path, ca_name: str = "test-issuer"
    ) -> None:
        """Make the issuing CA under folder (what clients of the stack must trust)."""
        self.api = ApiClient(cluster.kubeconfig)
        self.namespace = namespace
        self.folder = folder
        self.ca: KeyPair = make_ca(folder / "ca", name=ca_name)
        self.issued: list[str] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="cert-manager-stand-in", daemon=True)

    def __enter__(self) -> CertManagerStandIn:
        """Start issuing (a thread polling the API server)."""
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        """Stop issuing."""
        self.stopping.set()
        self.thread.join(timeout=10)

    def run(self) -> None:
        """Sync until stopped; errors are kept for the tests to report."""
        while not self.stopping.wait(POLL_SECONDS):
            try:
                self.sync()
            except Exception as error:  # kept; the first test reports them
                self.errors.append(repr(error))

    def sync(self) -> None:
        """Issue the Secret of every Certificate of the namespace that has none, or is stale."""
        base = f"/apis/cert-manager.io/v1/namespaces/{self.namespace}/certificates"
        for certificate in self.api.list(base):
            spec = certificate["spec"]
            secrets = f"/api/v1/namespaces/{self.namespace}/secrets"
            existing = self.api.get(f"{secrets}/{spec['secretName']}")
            alt_names = ",".join(spec["dnsNames"])
            if (
                existing is not None
                and existing["metadata"].get("annotations", {}).get(ALT_NAMES) == alt_names
            ):
                continue
            pair = issue_server_certificate(
                self.ca, self.folder / f"issue-{len(self.issued)}", spec["dnsNames"]
            )
            issuer = spec["issuerRef"]
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {
                    "name": spec["secretName"],
                    "namespace": self.namespace,
                    "labels": spec.get("secretTemplate", {}).get("labels", {}),
                    "annotations": {
                        "cert-manager.io/certificate-name": certificate["metadata"]["name"],
                        "cert-manager.io/issuer-name": issuer["name"],
                        "cert-manager.io/issuer-kind": issuer.get("kind", "Issuer"),
                        "cert-manager.io/issuer-group": issuer.get("group", "cert-manager.io"),
                        ALT_NAMES: alt_names,
                    },
                },
                "stringData": {
                    "tls.crt": pair.cert.read_text(),
                    "tls.key": pair.key.read_text(),
                    "ca.crt": self.ca.cert.read_text(),
                },
            }
            if existing is not None:
                # A merge patch keeps what else is there; stringData replaces the three keys.
                self.api.merge_patch(f"{secrets}/{spec['secretName']}", secret)
                self.issued.append(spec["secretName"])
            elif self.api.create(secrets, secret) is not None:
                self.issued.append(spec["secretName"])
