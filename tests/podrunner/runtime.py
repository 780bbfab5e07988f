"""The container runtime side: the cluster network namespace, starting and exec'ing containers.

Containers are started by launcher.py (a separate single-threaded root process); this module
writes its spec, hands it the pipes through which it reports the container's host PID and any
setup or exec failure, and reads them back with timeouts.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import PodRunnerError

LAUNCHER = Path(__file__).with_name("launcher.py")
CLONE_NEWNET = 0x40000000
LAUNCH_TIMEOUT = 20.0
FORWARD_BUFFER = 65536

libc = ctypes.CDLL(None, use_errno=True)


class LaunchFailed(PodRunnerError):
    """The launcher could not start a container or an exec (the kubelet's RunContainerError)."""


def run_quietly(argv: list[str]) -> None:
    """Run a setup command; raise with its stderr when it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        msg = f"{' '.join(argv)} failed: {result.stderr.strip()}"
        raise PodRunnerError(msg)


def owner_alive(name: str) -> bool:
    """Whether the test process that named a `podrunner-<pid>-...` resource still runs."""
    parts = name.split("-")
    return len(parts) < 3 or not parts[1].isdigit() or os.path.exists(f"/proc/{parts[1]}")


def sweep_stale_clusters(state_root: Path) -> None:
    """Remove namespaces and state left by test processes that were killed (no finalizer ran)."""
    netns_dir = Path("/run/netns")
    for entry in netns_dir.glob("podrunner-*") if netns_dir.exists() else []:
        if not owner_alive(entry.name):
            subprocess.run(["ip", "netns", "delete", entry.name], capture_output=True, check=False)
    for entry in state_root.glob("podrunner-*"):
        if not owner_alive(entry.name):
            shutil.rmtree(entry, ignore_errors=True)


class NetworkNamespace:
    """One private network namespace with loopback up.

    In the shared mode every pod of a local cluster runs in it; in the per-pod mode it is the
    hub that holds the bridge, and each pod gets one of its own (see podnetwork.py). The name
    starts `podrunner-<pid>-` so sweep_stale_clusters can tell when its owner died.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"podrunner-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = f"/run/netns/{self.name}"
        run_quietly(["ip", "netns", "add", self.name])
        run_quietly(["ip", "-n", self.name, "link", "set", "lo", "up"])

    def enter_current_thread(self) -> None:
        """Move the calling thread (only) into the namespace; sockets it creates live there."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                msg = f"setns {self.path}: {os.strerror(ctypes.get_errno())}"
                raise PodRunnerError(msg)
        finally:
            os.close(fd)

    def connect(self, port: int, timeout: float, host: str = "127.0.0.1") -> socket.socket:
        """Open a TCP connection to host:port inside the namespace from any thread."""
        outcome: dict[str, object] = {}

        def connect_inside() -> None:
            try:
                self.enter_current_thread()
                outcome["socket"] = socket.create_connection((host, port), timeout=timeout)
            except OSError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=connect_inside, name="podrunner-connect", daemon=True)
        worker.start()
        worker.join(timeout + 5)
        connection, error = outcome.get("socket"), outcome.get("error")
        if isinstance(error, OSError):
            raise error
        if not isinstance(connection, socket.socket):
            msg = f"connect to {host}:{port} inside {self.name} timed out"
            raise TimeoutError(msg)
        return connection

    def delete(self) -> None:
        """Remove the namespace's mount under /run/netns (idempotent)."""
        if os.path.exists(self.path):
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)


@dataclass
class LaunchSpec:
    """Everything the launcher needs to run a process as a container (or inside one)."""

    argv: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    groups: list[int]
    capabilities: list[int]
    no_new_privs: bool
    cwd: str

    def as_json(self) -> dict[str, object]:
        """Return the launcher's spec keys."""
        return dict(self.__dict__)


@dataclass
class ContainerProcess:
    """A running container: the launcher (its parent) and the container's PID 1 as seen here."""

    launcher: subprocess.Popen[bytes]
    pid: int

    def signal(self, signum: int) -> None:
        """Send a signal to the container's main process (PID 1 in its PID namespace)."""
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def kill_all(self) -> None:
        """SIGKILL the container (its PID namespace dies with it) and reap the launcher."""
        self.signal(signal.SIGKILL)
        try:
            self.launcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.launcher.kill()
            self.launcher.wait(timeout=10)


def read_pipe(fd: int, deadline: float) -> bytes:
    """Read a pipe until EOF or deadline; closes fd."""
    chunks = []
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
        msg = "the launcher did not report in time"
        raise LaunchFailed(msg)
    finally:
        os.close(fd)


def spawn_launcher(
    spec: dict[str, object], spec_path: Path, **popen: object
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start launcher.py with its spec; return it with the read ends of its pid/status pipes."""
    pid_read, pid_write = os.pipe()
    status_read, status_write = os.pipe()
    spec_path.write_text(json.dumps({**spec, "pid_fd": pid_write, "status_fd": status_write}))
    spec_path.chmod(0o600)
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(LAUNCHER), str(spec_path)],
            pass_fds=(pid_write, status_write),
            start_new_session=True,
            **popen,  # type: ignore[arg-type]
        )
    finally:
        os.close(pid_write)
        os.close(status_write)
    return process, pid_read, status_read


def collect_launch(
    process: subprocess.Popen[bytes], pid_read: int, status_read: int, what: str, log_hint: str
) -> int:
    """Wait for the launcher to report the process PID and a clean exec; return the PID."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    try:
        pid_text = read_pipe(pid_read, deadline)
    except LaunchFailed:
        os.close(status_read)
        process.kill()
        raise
    status = read_pipe(status_read, deadline).decode(errors="replace")
    if not pid_text:
        process.wait(timeout=10)
        msg = f"{what}: launcher failed before starting it ({log_hint})"
        raise LaunchFailed(msg)
    if status:
        process.wait(timeout=10)
        msg = f"{what}: {status}"
        raise LaunchFailed(msg)
    return int(pid_text)


def start_container(
    spec: LaunchSpec,
    *,
    netns: NetworkNamespace,
    scratch: Path,
    hostname: str,
    mounts: list[dict[str, object]],
    read_only_root: bool,
    log_path: Path,
    spec_path: Path,
    what: str,
) -> ContainerProcess:
    """Start a container process; LaunchFailed carries the setup/exec error (RunContainerError)."""
    scratch.mkdir(parents=True, exist_ok=True)
    launcher_spec = {
        **spec.as_json(),
        "mode": "run",
        "netns": netns.path,
        "scratch": str(scratch),
        "hostname": hostname,
        "mounts": mounts,
        "read_only_root": read_only_root,
    }
    with log_path.open("ab") as log:
        process, pid_read, status_read = spawn_launcher(
            launcher_spec, spec_path, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    pid = collect_launch(process, pid_read, status_read, what, f"see {log_path}")
    return ContainerProcess(process, pid)


@dataclass(frozen=True)
class ExecResult:
    """What a command run inside a container returned."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


def exec_in_container(
    target_pid: int, spec: LaunchSpec, spec_path: Path, timeout: float, what: str
) -> ExecResult:
    """Run a command inside a running container's namespaces, as its user, with a timeout."""
    process, pid_read, status_read = spawn_launcher(
        {**spec.as_json(), "mode": "exec", "target_pid": target_pid},
        spec_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    try:
        status = read_pipe(status_read, deadline).decode(errors="replace")
        stdout, stderr = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except (subprocess.TimeoutExpired, LaunchFailed):
        kill_session(process)
        stdout, stderr = process.communicate()
        return ExecResult(
            -1, stdout.decode(errors="replace"), stderr.decode(errors="replace"), timed_out=True
        )
    finally:
        os.close(pid_read)
        spec_path.unlink(missing_ok=True)
    if status:
        return ExecResult(126, "", f"{what}: {status}")
    return ExecResult(
        process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )


def run_client(
    netns: NetworkNamespace,
    hosts_text: str,
    scratch: Path,
    argv: list[str],
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> ExecResult:
    """Run a command as root inside a cluster network namespace, with the given /etc/hosts.

    What a test client needs to use Service names exactly as a pod would; it keeps the test
    process's environment (plus env) and sees the host's files otherwise.
    """
    hosts = scratch / f"client-hosts-{uuid.uuid4().hex[:8]}"
    hosts.write_text(hosts_text)
    hosts.chmod(0o644)
    spec_path = hosts.with_suffix(".json")
    spec_path.write_text(
        json.dumps(
            {
                "mode": "client",
                "netns": netns.path,
                "argv": list(argv),
                "env": {**os.environ, **(env or {})},
                "files": {str(hosts): "/etc/hosts"},
            }
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", str(LAUNCHER), str(spec_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(process)
        stdout, stderr = process.communicate()
        return ExecResult(
            -1, stdout.decode(errors="replace"), stderr.decode(errors="replace"), True
        )
    finally:
        spec_path.unlink(missing_ok=True)
        hosts.unlink(missing_ok=True)
    return ExecResult(
        process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )


def kill_session(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started with start_new_session and everything in its session."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Relay:
    """Accept on `listener`; for each client open `connect()` and copy bytes both ways.

    One relay for both directions the harnesses need: into a namespace from the host
    (PortForward) and out of a pod network to a host service (the real-engine node's
    `kubernetes` Service). A connect that fails refuses that one client.
    """

    def __init__(
        self, listener: socket.socket, connect: Callable[[], socket.socket], name: str
    ) -> None:
        self.listener = listener
        self.connect = connect
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self.accept_loop, name=name, daemon=True).start()

    def accept_loop(self) -> None:
        """Accept connections and start a pump for each."""
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.pump, args=(client,), daemon=True).start()

    def pump(self, client: socket.socket) -> None:
        """Copy bytes both ways between a client and its upstream until either side closes."""
        try:
            upstream = self.connect()
        except (OSError, PodRunnerError):
            client.close()
            return
        upstream.settimeout(None)
        with self.lock:
            self.connections.update((client, upstream))
        peers = {client: upstream, upstream: client}
        try:
            while peers:
                ready, _, _ = select.select(list(peers), [], [], 1.0)
                for sock in ready:
                    data = sock.recv(FORWARD_BUFFER)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                sock.close()
            with self.lock:
                self.connections.difference_update((client, upstream))

    def close(self) -> None:
        """Stop accepting (shutdown wakes a blocked accept) and cut every open connection."""
        self.closed = True
        for sock in (self.listener,):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.listener.close()
        with self.lock:
            for sock in list(self.connections):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class PortForward(Relay):
    """A host-loopback port that forwards each connection to target_port inside a namespace.

    The target address is looked up for every new connection (127.0.0.1 unless target_address
    is given), so a forward to a Service or a pod follows it when its pod is recreated with a new
    address in the per-pod network mode; a lookup that fails refuses that one connection.
    """

    def __init__(
        self,
        netns: NetworkNamespace,
        target_port: int,
        target_address: Callable[[], str] | None = None,
    ) -> None:
        self.netns = netns
        self.target_port = target_port
        self.target_address = target_address or (lambda: "127.0.0.1")
        listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = listener.getsockname()[1]
        super().__init__(
            listener,
            lambda: self.netns.connect(self.target_port, 5, self.target_address()),
            f"podrunner-forward-{self.port}",
        )
