"""Pods and containers run the way the kubelet runs them.

A Pod has one thread that prepares its sandbox (volumes, /etc/hosts), runs init containers in
order, then supervises each app container in its own thread: start, probes, exit, restart with
back-off per restartPolicy. Probes run in their own threads (one per probe, like the kubelet's
probe workers). Stopping a container (pod deletion, failed liveness or startup probe) runs the
preStop hook, sends SIGTERM, waits out the grace period and sends SIGKILL.
"""

from __future__ import annotations

import http.client
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .environment import ConfigStore, PodIdentity, container_environment, expand
from .errors import ContainerConfigError, ManifestError, PodRunnerError, WaitTimeout
from .images import LocalImage, container_argv, find_image
from .runtime import (
    ContainerProcess,
    ExecResult,
    LaunchFailed,
    LaunchSpec,
    NetworkNamespace,
    exec_in_container,
    start_container,
)
from .volumes import (
    Mount,
    PodVolume,
    container_mounts,
    prepare_pod_volumes,
    refresh_key_volumes,
)

DEFAULT_GRACE_SECONDS = 30
CONFIG_RETRY_SECONDS = 1.0
EVENT_LIMIT = 200
# Docker/containerd's default capability set: what a root container keeps unless it drops them.
DEFAULT_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
)
CAPABILITY_NUMBERS = {
    name: number
    for number, name in enumerate(
        (
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "LINUX_IMMUTABLE",
            "NET_BIND_SERVICE",
            "NET_BROADCAST",
            "NET_ADMIN",
            "NET_RAW",
            "IPC_LOCK",
            "IPC_OWNER",
            "SYS_MODULE",
            "SYS_RAWIO",
            "SYS_CHROOT",
            "SYS_PTRACE",
            "SYS_PACCT",
            "SYS_ADMIN",
            "SYS_BOOT",
            "SYS_NICE",
            "SYS_RESOURCE",
            "SYS_TIME",
            "SYS_TTY_CONFIG",
            "MKNOD",
            "LEASE",
            "AUDIT_WRITE",
            "AUDIT_CONTROL",
            "SETFCAP",
            "MAC_OVERRIDE",
            "MAC_ADMIN",
            "SYSLOG",
            "WAKE_ALARM",
            "BLOCK_SUSPEND",
            "AUDIT_READ",
            "PERFMON",
            "BPF",
            "CHECKPOINT_RESTORE",
        )
    )
}


@dataclass(frozen=True)
class Backoff:
    """Restart back-off. The kubelet uses 10s doubling to 300s; tests want it much shorter."""

    initial: float = 0.5
    cap: float = 5.0

    def delay(self, restarts: int) -> float:
        """Seconds to wait before restart number restarts+1 (the first restart is immediate)."""
        return 0.0 if restarts == 0 else min(self.cap, self.initial * 2 ** (restarts - 1))


class Node(Protocol):
    """What a pod needs from the local cluster it runs on."""

    netns: NetworkNamespace
    store: ConfigStore
    images: Mapping[str, LocalImage]
    time_scale: float
    backoff: Backoff

    def hosts_file(
        self,
        namespace: str,
        hostname: str,
        fqdn: str | None,
        aliases: list[dict],
        pod_ip: str = "127.0.0.1",
    ) -> str:
        """Return the /etc/hosts text for a pod."""

    def service_links(self, namespace: str) -> dict[str, str]:
        """Return the Service link variables for a namespace."""

    def api_server_variables(self) -> dict[str, str]:
        """Return KUBERNETES_SERVICE_* (every container gets them; empty without an API server)."""

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """Return the host directory of a PersistentVolumeClaim."""

    def pod_gone(self, pod: Pod) -> None:
        """Forget a pod that finished terminating."""


def merged_security(pod_spec: dict, container: dict) -> dict:
    """Container securityContext over the pod's (the fields both have)."""
    pod_context = pod_spec.get("securityContext", {})
    shared = ("runAsUser", "runAsGroup", "runAsNonRoot")
    return {
        **{k: pod_context[k] for k in shared if k in pod_context},
        **container.get("securityContext", {}),
    }


def capability_set(capabilities: dict) -> list[int]:
    """Return the bounding set containerd gives: defaults, minus drops (ALL clears), plus adds."""
    names = {name.upper().removeprefix("CAP_") for name in capabilities.get("drop", [])}
    kept = set() if "ALL" in names else set(DEFAULT_CAPABILITIES) - names
    kept |= {name.upper().removeprefix("CAP_") for name in capabilities.get("add", [])}
    return sorted(CAPABILITY_NUMBERS[name] for name in kept)


def home_directory(uid: int) -> str:
    """HOME as container runtimes set it when nothing else does: the user's entry, else /."""
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return "/"


def named_port(container: dict, port: int | str, where: str) -> int:
    """Resolve a probe/service port that may name a containerPort."""
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return declared["containerPort"]
    msg = f"{where}: no containerPort named {port!r}"
    raise ManifestError(msg)


class ProbeWorker:
    """One probe of one container run: runs on its period, counts results, acts on thresholds."""

    def __init__(self, container: Container, kind: str, probe: dict) -> None:
        self.container = container
        self.kind = kind
        self.probe = probe
        self.stopped = threading.Event()
        self.successes = 0
        self.failures = 0
        self.thread = threading.Thread(
            target=self.loop, daemon=True, name=f"probe-{kind}-{container.where}"
        )

    def seconds(self, key: str, default: float, scaled: bool) -> float:
        """Return a probe timing field, multiplied by the cluster's time_scale when scaled."""
        value = float(self.probe.get(key, default))
        return value * self.container.pod.node.time_scale if scaled else value

    def loop(self) -> None:
        """Wait the initial delay, then probe every period until the container run ends."""
        if "exec" not in self.probe:
            # The kubelet probes from the node; here from inside the pod's network namespace,
            # at the pod's address as the kubelet does (127.0.0.1 when pods share one).
            self.container.pod.netns.enter_current_thread()
        if self.stopped.wait(self.seconds("initialDelaySeconds", 0, scaled=True)):
            return
        period = self.seconds("periodSeconds", 10, scaled=True)
        while not self.stopped.is_set():
            if self.kind != "startup" and not self.container.started:
                self.stopped.wait(min(period, 0.05))
                continue
            ok, detail = self.run_probe()
            if self.stopped.is_set():
                return
            self.record(ok, detail)
            if self.kind == "startup" and self.container.started:
                return
            self.stopped.wait(period)

    def run_probe(self) -> tuple[bool, str]:
        """Run the probe once; return (success, detail for events)."""
        timeout = self.seconds("timeoutSeconds", 1, scaled=False)
        where = f"{self.container.where}.{self.kind}Probe"
        if "exec" in self.probe:
            result = self.container.exec(self.probe["exec"]["command"], timeout=timeout)
            if result.timed_out:
                return False, f"command timed out after {timeout}s"
            output = (result.stdout + result.stderr).strip()[-300:]
            return result.returncode == 0, f"exit {result.returncode}: {output}"
        if "tcpSocket" in self.probe:
            spec = self.probe["tcpSocket"]
            port = named_port(self.container.spec, spec["port"], where)
            try:
                host = spec.get("host", self.container.pod.probe_address)
                socket.create_connection((host, port), timeout).close()
            except OSError as exc:
                return False, f"dial tcp port {port}: {exc}"
            return True, "connected"
        return self.http_get(self.probe["httpGet"], timeout, where)

    def http_get(self, spec: dict, timeout: float, where: str) -> tuple[bool, str]:
        """Run an httpGet probe: success is a status from 200 to 399."""
        port = named_port(self.container.spec, spec["port"], where)
        host = spec.get("host", self.container.pod.probe_address)
        if spec.get("scheme", "HTTP") == "HTTPS":
            context = ssl._create_unverified_context()  # noqa: S323 - the kubelet does not verify
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        headers = {h["name"]: h["value"] for h in spec.get("httpHeaders", [])}
        try:
            connection.request("GET", spec.get("path", "/"), headers=headers)
            status = connection.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            return False, f"GET {spec.get('path', '/')} on port {port}: {exc}"
        finally:
            connection.close()
        return 200 <= status < 400, f"HTTP {status}"

    def record(self, ok: bool, detail: str) -> None:
        """Count a result and act when a threshold is crossed, as the kubelet does."""
        self.successes, self.failures = (self.successes + 1, 0) if ok else (0, self.failures + 1)
        container = self.container
        if not ok:
            container.pod.event(
                f"{self.kind.capitalize()} probe failed ({container.name}): {detail}"
            )
        if self.kind == "readiness":
            if ok and self.successes >= self.probe.get("successThreshold", 1):
                container.probe_ready = True
            elif not ok and self.failures >= self.probe.get("failureThreshold", 3):
                container.probe_ready = False
            return
        if ok and self.kind == "startup":
            container.started = True
        elif not ok and self.failures >= self.probe.get("failureThreshold", 3):
            grace = self.probe.get("terminationGracePeriodSeconds", container.pod.grace_seconds)
            self.stopped.set()
            container.stop(float(grace), f"{self.kind} probe failed, will be restarted")


@dataclass(frozen=True)
class Termination:
    """How one run of a container ended (a container status's `terminated` state)."""

    exit_code: int
    reason: str
    message: str
    started_at: float
    finished_at: float


@dataclass
class ContainerRun:
    """One start of a container: its process, log file and probe workers."""

    process: ContainerProcess
    launch: LaunchSpec
    log_path: Path
    probes: list[ProbeWorker] = field(default_factory=list)
    stop_lock: threading.Lock = field(default_factory=threading.Lock)


class Container:
    """One container of a pod, with kubelet-style state, restarts and logs."""

    def __init__(self, pod: Pod, spec: dict, init: bool, where: str) -> None:
        self.pod = pod
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.where = where
        self.image: LocalImage = find_image(pod.node.images, spec.get("image", ""), where)
        self.state = "waiting"
        self.reason = "ContainerCreating"
        self.message = ""
        self.restart_count = 0
        self.started = False
        self.probe_ready = False
        self.exit_code: int | None = None
        self.failed_runs = 0
        self.runs: list[ContainerRun] = []
        self.current: ContainerRun | None = None
        self.started_at: float | None = None
        # The last two ended runs: the current `terminated` state and the `lastState`.
        self.terminations: list[Termination] = []

    @property
    def ready(self) -> bool:
        """Running, started, and passing its readiness probe (if it has one)."""
        if self.state != "running" or not self.started:
            return False
        return self.probe_ready if "readinessProbe" in self.spec else True

    @property
    def read_only_root(self) -> bool:
        """securityContext.readOnlyRootFilesystem: the container's / is mounted read-only."""
        return bool(self.spec.get("securityContext", {}).get("readOnlyRootFilesystem"))

    def set_state(self, state: str, reason: str, message: str = "") -> None:
        """Record the container state the way `kubectl describe` shows it."""
        self.state, self.reason, self.message = state, reason, message

    def launch_spec(self, env: dict[str, str], k8s_env: dict[str, str]) -> LaunchSpec:
        """User, groups, capabilities and argv of this container (CreateContainerConfigError)."""
        security = merged_security(self.pod.spec, self.spec)
        pod_security = self.pod.spec.get("securityContext", {})
        uid = security.get("runAsUser", self.image.user)
        if security.get("runAsNonRoot") and uid == 0:
            msg = f"{self.where}: runAsNonRoot is set but it runs as uid 0"
            raise ContainerConfigError(msg)
        groups = {pod_security.get("fsGroup"), *pod_security.get("supplementalGroups", [])}
        command = (
            [expand(a, k8s_env) for a in self.spec["command"]] if "command" in self.spec else None
        )
        args = [expand(a, k8s_env) for a in self.spec["args"]] if "args" in self.spec else None
        return LaunchSpec(
            argv=container_argv(self.image, command, args, self.where),
            env={"HOME": home_directory(uid), **env},
            uid=uid,
            gid=security.get("runAsGroup", self.image.group if self.image.group is not None else 0),
            groups=sorted(g for g in groups if g is not None),
            capabilities=capability_set(security.get("capabilities", {})),
            no_new_privs=security.get("allowPrivilegeEscalation") is False,
            cwd=self.spec.get("workingDir", self.image.working_dir),
        )

    def environment(self) -> tuple[dict[str, str], dict[str, str]]:
        """Image ENV under the kubelet's environment, and the kubelet's environment alone."""
        links = self.pod.node.service_links(self.pod.namespace) if self.pod.service_links else {}
        # The kubelet adds the `kubernetes` Service's variables whatever enableServiceLinks says.
        links = {**links, **self.pod.node.api_server_variables()}
        k8s_env = container_environment(
            self.pod.node.store, self.pod.identity, self.spec, links, self.where
        )
        return {**self.image.environment(), **k8s_env}, k8s_env

    def mounts(self) -> list[Mount]:
        """Image binds, volume mounts and the pod's /etc files."""
        image_binds = []
        for target, host in self.image.binds.items():
            source = Path(host).resolve()
            if not source.exists():
                msg = f"{self.where}: image table bind {host} does not exist"
                raise ManifestError(msg)
            image_binds.append(Mount(str(source), target, read_only=True))
        etc = [
            Mount(str(self.pod.dir / name), f"/etc/{name}", self.read_only_root)
            for name in ("hosts", "hostname", "resolv.conf")
        ]
        volumes = container_mounts(self.spec, self.pod.volumes, self.where)
        return [*image_binds, *etc, *volumes]

    def run_once(self) -> int | None:
        """Start the container and wait for it to exit; None if it could not be configured."""
        try:
            launch = self.launch_spec(*self.environment())
            mounts = self.mounts()
        except ContainerConfigError as exc:
            self.set_state("waiting", "CreateContainerConfigError", str(exc))
            self.pod.event(f"Error: {exc}")
            return None
        number = len(self.runs)
        log_path = self.pod.dir / "logs" / f"{self.name}-{number}.log"
        try:
            process = start_container(
                launch,
                netns=self.pod.netns,
                scratch=self.pod.dir / "roots" / f"{self.name}-{number}",
                hostname=self.pod.hostname,
                mounts=[m.__dict__ for m in mounts],
                read_only_root=self.read_only_root,
                log_path=log_path,
                spec_path=self.pod.dir / f"{self.name}-{number}.json",
                what=self.where,
            )
        except LaunchFailed as exc:
            self.set_state("terminated", "StartError", str(exc))
            self.record_termination(128, time.time())
            self.exit_code = 128
            self.failed_runs += 1
            self.pod.event(f"Error: {exc}")
            return 128
        run = ContainerRun(process, launch, log_path)
        self.runs.append(run)
        return self.supervise_run(run)

    def supervise_run(self, run: ContainerRun) -> int:
        """Probe a started container until it exits; return its exit code."""
        self.current = run
        if self.pod.terminating.is_set():
            # Deleted while this run was starting: stop it the way the deletion asked.
            threading.Thread(
                target=self.stop, args=(self.pod.stop_grace, "pod deleted"), daemon=True
            ).start()
        self.started = "startupProbe" not in self.spec
        self.probe_ready = False
        self.started_at = time.time()
        self.set_state("running", "Started")
        self.pod.event(f"Started container {self.name} (pid {run.process.pid})")
        if not self.init:
            for kind in ("startup", "liveness", "readiness"):
                if f"{kind}Probe" in self.spec:
                    run.probes.append(ProbeWorker(self, kind, self.spec[f"{kind}Probe"]))
        for worker in run.probes:
            worker.thread.start()
        code = run.process.launcher.wait()
        for worker in run.probes:
            worker.stopped.set()
        self.exit_code = code
        self.failed_runs += code != 0
        self.started = False
        self.set_state("terminated", "Completed" if code == 0 else "Error", f"exit code {code}")
        self.record_termination(code, self.started_at or time.time())
        self.pod.event(f"Container {self.name} exited with code {code}")
        return code

    def record_termination(self, code: int, started_at: float) -> None:
        """Remember how a run ended (the state just set), for status reports."""
        self.terminations.append(
            Termination(code, self.reason, self.message, started_at, time.time())
        )
        del self.terminations[:-2]

    def stop(self, grace: float, why: str) -> None:
        """Stop the current run: preStop hook, SIGTERM, grace period, SIGKILL."""
        run = self.current
        if run is None or run.process.launcher.poll() is not None:
            return
        with run.stop_lock:
            if run.process.launcher.poll() is not None:
                return
            self.pod.event(f"Killing container {self.name}: {why}")
            if grace <= 0:
                run.process.kill_all()
                return
            deadline = time.monotonic() + grace
            self.run_pre_stop(grace)
            run.process.signal(signal.SIGTERM)
            # A preStop hook that used the whole grace period earns SIGTERM a 2s extension.
            remaining = deadline - time.monotonic()
            try:
                run.process.launcher.wait(timeout=remaining if remaining > 0 else 2.0)
            except subprocess.TimeoutExpired:
                run.process.signal(signal.SIGKILL)
                run.process.launcher.wait()

    def run_pre_stop(self, grace: float) -> None:
        """Run the preStop hook (exec or sleep) bounded by the grace period."""
        hook = self.spec.get("lifecycle", {}).get("preStop")
        if hook is None:
            return
        if "sleep" in hook:
            time.sleep(min(float(hook["sleep"]["seconds"]), grace))
            return
        result = self.exec(hook["exec"]["command"], timeout=grace)
        if result.returncode != 0:
            self.pod.event(f"preStop hook of {self.name} failed: {result.stderr.strip()[-300:]}")

    def exec(self, argv: list[str], timeout: float = 30.0) -> ExecResult:
        """Run argv inside this container's namespaces as its user, with its environment."""
        run = self.current
        if run is None or run.process.launcher.poll() is not None:
            return ExecResult(126, "", f"container {self.name} is not running")
        spec = LaunchSpec(**{**run.launch.__dict__, "argv": list(argv)})
        spec_path = self.pod.dir / f"exec-{uuid.uuid4().hex}.json"
        return exec_in_container(run.process.pid, spec, spec_path, timeout, self.where)

    def kill(self, signum: int) -> None:
        """Send a signal to the container's main process."""
        if self.current is not None:
            self.current.process.signal(signum)

    def logs(self, previous: bool = False) -> str:
        """Output of the current (or previous) run."""
        index = -2 if previous else -1
        if len(self.runs) < (2 if previous else 1):
            return ""
        return self.runs[index].log_path.read_text(errors="replace")

    def restart_needed(self, exit_code: int) -> bool:
        """restartPolicy: Always restarts, OnFailure restarts non-zero exits, Never does not."""
        policy = self.pod.restart_policy
        return policy == "Always" or (policy == "OnFailure" and exit_code != 0)

    def run_until_done(self) -> None:
        """Run, restarting with back-off per restartPolicy, until the pod stops or it is done."""
        try:
            self.restart_loop()
        except PodRunnerError as exc:
            self.set_state("waiting", "CreateContainerError", str(exc))
            self.pod.config_error = str(exc)
            self.pod.event(f"Error: {exc}")

    def restart_loop(self) -> None:
        """Start, wait, and restart per restartPolicy with back-off (body of run_until_done)."""
        while not self.pod.terminating.is_set():
            code = self.run_once()
            if self.pod.terminating.is_set():
                return
            if code is None:
                self.pod.terminating.wait(CONFIG_RETRY_SECONDS)
                continue
            if self.init and code == 0:
                return
            if not self.restart_needed(code):
                return
            delay = self.pod.node.backoff.delay(self.restart_count)
            if delay:
                self.set_state("waiting", "CrashLoopBackOff", f"back-off {delay:.1f}s")
            if self.pod.terminating.wait(delay):
                return
            self.restart_count += 1

    def kill_now(self) -> None:
        """SIGKILL the current run (cluster teardown)."""
        if self.current is not None:
            self.current.process.kill_all()


class Pod:
    """A pod on the local node. Tests get these from LocalCluster.pods()."""

    def __init__(
        self,
        node: Node,
        manifest: dict,
        state_dir: Path,
        owner: tuple[str, str] | None,
        addresses: tuple[str, str] = ("127.0.0.1", "127.0.0.1"),
        netns: NetworkNamespace | None = None,
    ) -> None:
        """Prepare (not start) a pod; addresses are its pod IP and its node's IP.

        netns is the pod's own network namespace (the per-pod network mode); without one the
        pod shares its node's.
        """
        metadata, spec = manifest["metadata"], manifest["spec"]
        self.node = node
        self.own_netns = netns
        self.etc_lock = threading.Lock()
        self.name: str = metadata["name"]
        self.namespace: str = metadata.get("namespace", "default")
        self.labels: dict[str, str] = dict(metadata.get("labels", {}))
        self.owner = owner
        self.spec = spec
        self.where = f"Pod {self.namespace}/{self.name}"
        self.dir = state_dir
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.grace_seconds = float(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
        self.service_links = spec.get("enableServiceLinks", True)
        self.hostname: str = spec.get("hostname", self.name)[:63]
        subdomain = spec.get("subdomain")
        self.fqdn = (
            f"{self.hostname}.{subdomain}.{self.namespace}.svc.cluster.local" if subdomain else None
        )
        self.identity = PodIdentity(
            name=self.name,
            namespace=self.namespace,
            # An API server's pod has its UID; a manifest run locally gets a fresh one.
            uid=metadata.get("uid") or str(uuid.uuid4()),
            labels=self.labels,
            annotations=metadata.get("annotations", {}),
            service_account=spec.get("serviceAccountName", "default"),
            pod_ip=addresses[0],
            node_name=spec.get("nodeName", "podrunner-node"),
            host_ip=addresses[1],
        )
        self.init_containers = [
            Container(self, c, True, f"{self.where}.initContainers[{i}]")
            for i, c in enumerate(spec.get("initContainers", []))
        ]
        self.containers = [
            Container(self, c, False, f"{self.where}.containers[{i}]")
            for i, c in enumerate(spec["containers"])
        ]
        self.volumes: dict[str, PodVolume] = {}
        self.config_error: str | None = None
        self.events: list[str] = []
        self.created = time.monotonic()
        self.terminating = threading.Event()
        self.stop_grace = self.grace_seconds
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"pod-{self.name}", daemon=True)

    # -- what tests read -------------------------------------------------------------------
    @property
    def netns(self) -> NetworkNamespace:
        """The network namespace the pod's containers run in: its own, or its node's."""
        return self.own_netns or self.node.netns

    @property
    def ip(self) -> str:
        """The pod's IP (status.podIP)."""
        return self.identity.pod_ip

    @property
    def probe_address(self) -> str:
        """Where tcpSocket/httpGet probes connect by default: the pod IP if the pod has one."""
        return self.identity.pod_ip if self.own_netns is not None else "127.0.0.1"

    @property
    def restart_count(self) -> int:
        """Restarts of all containers of the pod (what `kubectl get pods` shows)."""
        return sum(c.restart_count for c in self.containers)

    @property
    def ready(self) -> bool:
        """Every app container ready (the pod's Ready condition)."""
        return not self.terminating.is_set() and all(c.ready for c in self.containers)

    @property
    def phase(self) -> str:
        """Pending, Running, Succeeded or Failed, derived from container states."""
        states = [c.state for c in self.containers]
        if all(s == "terminated" for s in states) and self.finished.is_set():
            codes = [c.exit_code for c in self.containers]
            return "Succeeded" if all(code == 0 for code in codes) else "Failed"
        if any(s == "running" for s in states) or any(c.runs for c in self.containers):
            return "Running"
        if self.finished.is_set() and not self.terminating.is_set():
            return "Failed"
        return "Pending"

    def container(self, name: str | None = None) -> Container:
        """Return the named container, or the first one."""
        if name is None:
            return self.containers[0]
        for candidate in [*self.containers, *self.init_containers]:
            if candidate.name == name:
                return candidate
        msg = f"{self.where} has no container {name!r}"
        raise KeyError(msg)

    def describe(self) -> str:
        """Summarize like `kubectl describe`, for assertion messages."""
        lines = [f"{self.where}: phase={self.phase} ready={self.ready}"]
        if self.config_error:
            lines.append(f"  config error: {self.config_error}")
        for c in [*self.init_containers, *self.containers]:
            lines.append(
                f"  {c.name}: {c.state} ({c.reason}) {c.message} restarts={c.restart_count} "
                f"started={c.started} ready={c.ready}"
            )
            tail = c.logs().strip().splitlines()[-8:]
            lines.extend(f"    | {line}" for line in tail)
        lines.extend(f"  event: {e}" for e in self.events[-12:])
        return "\n".join(lines)

    def event(self, text: str) -> None:
        """Record a kubelet event (bounded)."""
        self.events.append(f"{time.monotonic() - self.created:7.2f}s {text}")
        del self.events[:-EVENT_LIMIT]

    # -- what tests do ---------------------------------------------------------------------
    def exec(
        self, argv: list[str], container: str | None = None, timeout: float = 30.0
    ) -> ExecResult:
        """Run argv inside a container (its namespaces, user and environment), like kubectl exec."""
        return self.container(container).exec(argv, timeout)

    def kill(self, signum: int, container: str | None = None) -> None:
        """Send a signal to a container's main process (e.g. SIGKILL, SIGSTOP)."""
        self.container(container).kill(signum)

    def kill_containers(self, signum: int = signal.SIGKILL) -> None:
        """Signal every running container's main process: `kill -9` of all of a pod's processes.

        With SIGKILL each container's PID namespace dies with its PID 1 (no preStop, no grace),
        and the kubelet restarts the containers per restartPolicy; the pod keeps its name, claims
        and address, as after a crash of everything in it.
        """
        for container in [*self.init_containers, *self.containers]:
            container.kill(signum)

    def logs(self, container: str | None = None, previous: bool = False) -> str:
        """Return a container's output (current run, or the previous one)."""
        return self.container(container).logs(previous)

    def delete(
        self, grace_period: float | None = None, wait: bool = True, timeout: float = 120.0
    ) -> None:
        """Delete gracefully: preStop, SIGTERM, grace period, SIGKILL; controllers recreate it."""
        grace = self.grace_seconds if grace_period is None else float(grace_period)
        if not self.terminating.is_set():
            self.stop_grace = grace
            self.terminating.set()
            self.event(f"Deleting pod (grace {grace}s)")
            for c in [*self.init_containers, *self.containers]:
                threading.Thread(target=c.stop, args=(grace, "pod deleted"), daemon=True).start()
        if wait and not self.finished.wait(timeout):
            msg = f"{self.where} did not terminate within {timeout}s\n{self.describe()}"
            raise PodRunnerError(msg)

    # -- the pod worker --------------------------------------------------------------------
    def start(self) -> None:
        """Start the pod worker thread."""
        self.thread.start()

    def run(self) -> None:
        """Prepare the sandbox, run init containers, then supervise app containers."""
        try:
            if self.prepare_sandbox() and self.run_init_containers():
                threads = [
                    threading.Thread(
                        target=c.run_until_done, daemon=True, name=f"ctr-{self.name}-{c.name}"
                    )
                    for c in self.containers
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        except PodRunnerError as exc:
            self.config_error = str(exc)
            self.event(f"Failed: {exc}")
        finally:
            self.finished.set()
            if self.terminating.is_set():
                shutil.rmtree(self.dir / "volumes", ignore_errors=True)
                shutil.rmtree(self.dir / "roots", ignore_errors=True)
                self.node.pod_gone(self)

    def prepare_sandbox(self) -> bool:
        """Volumes and /etc files; retried while a referenced object is missing."""
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        while not self.terminating.is_set():
            try:
                shutil.rmtree(self.dir / "volumes", ignore_errors=True)
                self.volumes = prepare_pod_volumes(
                    self.spec,
                    self.dir / "volumes",
                    self.node.store,
                    self.identity,
                    lambda claim: self.node.claim_dir(self.namespace, claim),
                    self.where,
                )
            except ContainerConfigError as exc:
                self.config_error = str(exc)
                self.event(f"FailedMount: {exc}")
                self.terminating.wait(CONFIG_RETRY_SECONDS)
                continue
            self.config_error = None
            self.write_etc_files()
            return True
        return False

    def write_etc_files(self) -> None:
        """/etc/hosts, /etc/hostname and /etc/resolv.conf, as the kubelet manages them.

        Serialized per pod and computed under the lock, so the last write carries the newest
        state when the pod worker and the cluster's DNS sync write at the same time.
        """
        with self.etc_lock:
            self.write_etc_files_locked()

    def write_etc_files_locked(self) -> None:
        """Body of write_etc_files (the caller holds etc_lock)."""
        hosts = self.node.hosts_file(
            self.namespace,
            self.hostname,
            self.fqdn,
            self.spec.get("hostAliases", []),
            self.identity.pod_ip,
        )
        search = f"{self.namespace}.svc.cluster.local svc.cluster.local cluster.local"
        files = {
            "hosts": hosts,
            "hostname": f"{self.hostname}\n",
            # Nothing answers DNS in the cluster namespace: lookups not in /etc/hosts fail fast.
            "resolv.conf": f"search {search}\nnameserver 127.0.0.1\noptions ndots:5\n",
        }
        for name, text in files.items():
            rewrite_in_place(self.dir / name, text)

    def refresh_hosts(self) -> None:
        """Rewrite /etc/hosts from the node's current names (once the sandbox exists).

        What cluster DNS gives a pod for free: in the per-pod network mode names follow pods
        as they become ready, go away or come back with a new address.
        """
        with self.etc_lock:  # after a first write in progress, so none is skipped
            if not self.finished.is_set() and (self.dir / "hosts").exists():
                self.write_etc_files_locked()

    def refresh(self) -> list[str]:
        """Bring mounted ConfigMaps/Secrets and /etc/hosts up to date, as the kubelet's sync does.

        Returns the names of the volumes that changed. A no-op before the sandbox is ready or
        once the pod is terminating.
        """
        if self.terminating.is_set() or not self.volumes or not (self.dir / "hosts").exists():
            return []
        changed = refresh_key_volumes(
            self.spec, self.dir / "volumes", self.node.store, self.identity, self.where
        )
        for name in changed:
            self.event(f"Volume {name} updated")
        self.write_etc_files()
        return changed

    def run_init_containers(self) -> bool:
        """Run init containers in order; each must succeed before the next (and the app)."""
        for init in self.init_containers:
            init.run_until_done()
            if self.terminating.is_set() or init.exit_code != 0:
                return False
        return True

    def kill_now(self) -> None:
        """Teardown: SIGKILL every container without grace."""
        self.stop_grace = 0.0
        self.terminating.set()
        for c in [*self.init_containers, *self.containers]:
            c.kill_now()


def rewrite_in_place(path: Path, text: str) -> None:
    """Write text into path keeping its inode (containers see the file through a bind mount).

    Never truncated first: a shorter text is padded with a comment line to the old length, so
    a resolver reading /etc/hosts while it changes sees whole lines, never an empty file.
    """
    data = text.encode()
    if path.exists():
        old = path.read_bytes()
        if len(data) < len(old):
            data += b"#" + b" " * max(0, len(old) - len(data) - 2) + b"\n"
        if data == old:
            return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    path.chmod(0o644)


def wait_until(
    condition: Callable[[], object],
    timeout: float,
    what: str,
    describe: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> object:
    """Poll condition until truthy; WaitTimeout naming what and the last state otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            state = f"\n{describe()}" if describe else ""
            msg = f"timed out after {timeout}s waiting for {what}{state}"
            raise WaitTimeout(msg)
        time.sleep(interval)


def kill_pods_now(pods: list[Pod], join_timeout: float = 15.0) -> None:
    """Teardown of a node: SIGKILL every pod's containers, then wait (bounded) for their threads."""
    for pod in pods:
        pod.kill_now()
    for pod in pods:
        if pod.thread.is_alive():
            pod.thread.join(timeout=join_timeout)
