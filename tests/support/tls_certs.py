"""Test certificates made with the real `openssl`: a CA, and server certificates it signs.

    ca = make_ca(tmp_path / "ca")
    pair = issue_server_certificate(ca, tmp_path / "s1", ["localhost"], ip_addresses=["127.0.0.1"])
    write_tls_secret_volume(volume_dir, ca, pair)          # tls.crt, tls.key, ca.crt, kubelet-style

The files follow what cert-manager puts in a Secret and what the broker mounts (tls.crt,
tls.key, ca.crt). Certificates are strict enough for Python's default TLS context (basic
constraints, key usage, subject and authority key identifiers), ECDSA P-256 like the rendered
Certificate. `write_tls_secret_volume` swaps the files the way the kubelet updates a mounted
Secret: a new timestamped folder, then one atomic rename of the `..data` link, so a reader
never sees a certificate of one issue beside the key of another. A missing openssl is an
error, never a skip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "openssl"
CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
SECRET_KEYS = ("tls.crt", "tls.key", "ca.crt")


class TlsCertsError(RuntimeError):
    """openssl is missing or refused to make a certificate."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path

    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER form, as a peer sees it in a handshake."""
        der = ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        return hashlib.sha256(der).hexdigest()


def _openssl(*args: str, cwd: Path) -> None:
    executable = shutil.which(OPENSSL)
    if executable is None:
        msg = f"{OPENSSL} is not on PATH: install Debian's openssl package"
        raise TlsCertsError(msg)
    result = subprocess.run(
        [executable, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        msg = f"openssl {' '.join(args[:2])} failed:\n{result.stderr}"
        raise TlsCertsError(msg)


def make_ca(directory: Path, name: str = "test-ca") -> KeyPair:
    """Make a self-signed CA valid for two days in `directory` (ca.crt, ca.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        *("req", "-x509", *CURVE, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2"),
        *("-subj", f"/CN={name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        cwd=directory,
    )
    return KeyPair(directory / "ca.crt", directory / "ca.key")


def issue_server_certificate(
    ca: KeyPair,
    directory: Path,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
) -> KeyPair:
    """Issue a server certificate for `dns_names` (first one as CN), signed by `ca`."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"DNS:{name}" for name in dns_names] + [f"IP:{ip}" for ip in ip_addresses]
    (directory / "server.ext").write_text(
        "\n".join(
            [
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature",
                "extendedKeyUsage=serverAuth",
                f"subjectAltName={','.join(names)}",
                "subjectKeyIdentifier=hash",
                "authorityKeyIdentifier=keyid",
                "",
            ]
        )
    )
    _openssl(
        *("req", "-new", *CURVE, "-keyout", "server.key", "-out", "server.csr"),
        *("-subj", f"/CN={dns_names[0]}"),
        cwd=directory,
    )
    _openssl(
        *("x509", "-req", "-in", "server.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key)),
        *("-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "server.ext"),
        cwd=directory,
    )
    return KeyPair(directory / "server.crt", directory / "server.key")


def write_tls_secret_volume(volume: Path, ca: KeyPair, server: KeyPair) -> None:
    """Lay out (or update) a mounted TLS Secret in `volume` exactly as the kubelet does.

    The keys are links to `..data/<key>`; `..data` links to a timestamped folder that is
    replaced by one atomic rename, so tls.crt and tls.key always change together.
    """
    volume.mkdir(parents=True, exist_ok=True)
    issue = volume / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    issue.mkdir()
    for key, source in zip(SECRET_KEYS, (server.cert, server.key, ca.cert), strict=True):
        shutil.copyfile(source, issue / key)
        (issue / key).chmod(0o440)
    staged = volume / "..data_tmp"
    staged.unlink(missing_ok=True)
    staged.symlink_to(issue.name)
    os.replace(staged, volume / "..data")
    for key in SECRET_KEYS:
        link = volume / key
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(f"..data/{key}")
