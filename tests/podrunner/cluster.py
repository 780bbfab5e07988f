"""LocalCluster: rendered Kubernetes manifests run as local pods, for end-to-end tests.

    with LocalCluster(manifest_dir, images=IMAGES, secret_values={"<redacted>": "pw"}) as cluster:
        cluster.start()
        cluster.wait_ready("StatefulSet", "broker", timeout=30)
        client = redis.Redis(port=cluster.host_port("broker", 6379), password="pw")

How a test reaches a Service: in the default shared network mode every pod shares one private
network namespace and every Service name resolves to 127.0.0.1 there. `host_port(service, port)`
returns a port on the test process's own 127.0.0.1 that forwards to the Service's target port
inside that namespace; `run_in_netns(argv)` runs a command inside it with the cluster's
/etc/hosts, so it can use Service DNS names exactly as a pod would.

With `network="per-pod"` each pod has its own namespace and address on a bridge inside the
cluster's namespace (podnetwork.py), names resolve to pods' addresses (network.dns_records),
and `partition(pod)` / `heal(pod)` cut a pod off from every other and reconnect it.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import hashlib
import itertools
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .environment import service_link_variables
from .errors import ContainerConfigError, ManifestError, PodFailed, PodRunnerError, WaitTimeout
from .images import LocalImage, container_argv, find_image
from .kubelet import Backoff, Pod, kill_pods_now, wait_until
from .network import (
    DnsRecord,
    PodEndpoint,
    dns_records,
    hosts_file_text,
    pod_network_hosts_text,
    service_dns_names,
    service_endpoints,
)
from .objects import ObjectStore, describe, load_manifests
from .podnetwork import DEFAULT_SUBNET, BridgeNetwork, PodInterface
from .policy import NETWORK_MODES, check_object
from .runtime import (
    ExecResult,
    NetworkNamespace,
    PortForward,
    run_client,
    sweep_stale_clusters,
)
from .volumes import claim_path

CONTROLLER_INTERVAL = 0.05
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Pod")


@dataclass(frozen=True)
class JobAttempt:
    """One pod a Job ran: its exit code and the output of all its container runs."""

    pod_name: str
    exit_code: int | None
    logs: str


@dataclass(frozen=True)
class JobResult:
    """How a Job ended: Complete, BackoffLimitExceeded or DeadlineExceeded."""

    succeeded: bool
    reason: str
    attempts: list[JobAttempt]
    seconds: float

    @property
    def failed(self) -> int:
        """Failed pod runs, as the Job's status.failed counts them."""
        return sum(1 for attempt in self.attempts if attempt.exit_code != 0)

    @property
    def logs(self) -> str:
        """Output of the last attempt."""
        return self.attempts[-1].logs if self.attempts else ""


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Equality-based label selection."""
    return all(labels.get(key) == value for key, value in selector.items())


class LocalCluster:
    """Rendered manifests run as local pods in private namespaces; a context manager.

    manifests: a directory of YAML objects (as `brokerctl render --out DIR` writes) or a list
        of object dicts.
    images: image name -> LocalImage (see images.py); the one table mapping images to host
        executables.
    secret_values: placeholder -> test value, substituted inside every Secret value.
    secret_overrides: "ns/name" or "name" -> {key: value or None (remove)}.
    time_scale: multiplies probe initialDelaySeconds and periodSeconds (not timeouts or grace
        periods). 1.0 is faithful; smaller values speed up probe-driven tests.
    backoff: container restart and Job retry back-off (the kubelet's 10s..300s is too slow).
    network: "shared" (every pod in the cluster's one network namespace, Services at 127.0.0.1)
        or "per-pod" (each pod its own namespace and address on a private bridge; names
        resolve to pods' addresses; partition() and heal() available).
    subnet: the per-pod mode's address range (gateway first, pods after it). Each cluster's
        bridge is in its own namespace, so parallel clusters may use the same subnet.
    """

    def __init__(
        self,
        manifests: Path | str | Iterable[dict],
        *,
        images: Mapping[str, LocalImage],
        secret_values: Mapping[str, str] | None = None,
        secret_overrides: Mapping[str, Mapping[str, str | None]] | None = None,
        time_scale: float = 1.0,
        backoff: Backoff | None = None,
        network: str = "shared",
        subnet: str = DEFAULT_SUBNET,
    ) -> None:
        if network not in NETWORK_MODES:
            msg = f"LocalCluster(network={network!r}): expected one of {sorted(NETWORK_MODES)}"
            raise PodRunnerError(msg)
        self.network = network
        self.subnet = subnet
        self.images = dict(images)
        self.time_scale = time_scale
        self.backoff = backoff or Backoff()
        self.store = ObjectStore(secret_values or {}, secret_overrides or {})
        self.not_enforced: list[str] = []
        for obj in load_manifests(manifests):
            self.check_and_add(obj)
        self.store.check_overrides()
        self.pods_by_key: dict[tuple[str, str], Pod] = {}
        self.all_pods: list[Pod] = []
        self.lock = threading.RLock()
        self.workloads: set[tuple[str, str, str]] = set()
        self.forwards: list[PortForward] = []
        self.netns: NetworkNamespace | None = None
        self.bridge: BridgeNetwork | None = None
        self.interfaces: dict[Pod, PodInterface] = {}
        self.published_dns: list[DnsRecord] = []
        self.state_dir: Path | None = None
        self.stopping = threading.Event()
        self.controller: threading.Thread | None = None

    # -- setup and teardown ----------------------------------------------------------------
    def check_and_add(self, obj: dict) -> None:
        """Validate an object against the policy tables and the image table, and store it."""
        check_object(obj, describe(obj), self.not_enforced, self.network)
        self.check_images(obj)
        self.store.add(obj)

    def check_images(self, obj: dict) -> None:
        """Refuse a workload whose images are not in the image table or have nothing to run."""
        if obj["kind"] not in (*WORKLOAD_KINDS, "Job"):
            return
        spec = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
        prefix = describe(obj) + ("" if obj["kind"] == "Pod" else ".spec.template") + ".spec"
        for group in ("initContainers", "containers"):
            for index, container in enumerate(spec.get(group, [])):
                where = f"{prefix}.{group}[{index}]"
                image = find_image(self.images, container.get("image", ""), where)
                container_argv(image, container.get("command"), container.get("args"), where)

    def __enter__(self) -> LocalCluster:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Create the network namespace and state directory; register cleanup at exit."""
        if self.netns is not None:
            return
        atexit.register(self.close)
        sweep_stale_clusters(Path(tempfile.gettempdir()))
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"podrunner-{os.getpid()}-"))
        self.netns = NetworkNamespace()
        if self.network == "per-pod":
            self.bridge = BridgeNetwork(self.netns, self.subnet)
        self.controller = threading.Thread(
            target=self.control_loop, daemon=True, name="podrunner-controllers"
        )
        self.controller.start()

    def close(self) -> None:
        """Kill every pod, stop forwards, delete the namespace and state (idempotent)."""
        atexit.unregister(self.close)
        self.stopping.set()
        if self.controller is not None:
            self.controller.join(timeout=10)
        with self.lock:
            pods = list(self.all_pods)
        kill_pods_now(pods)
        for forward in self.forwards:
            forward.close()
        if self.bridge is not None:
            self.bridge.close()
        if self.netns is not None:
            self.netns.delete()
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- objects ---------------------------------------------------------------------------
    def start(self, only: Iterable[tuple[str, str]] | None = None) -> None:
        """Start Deployments, StatefulSets and Pods (all, or only the (kind, name) given).

        Jobs do not start here: run them with run_job(), so a test decides when they run.
        """
        self.open()
        self.check_services()
        wanted = None if only is None else {tuple(item) for item in only}
        for kind in WORKLOAD_KINDS:
            for obj in self.store.of_kind(kind):
                name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
                if wanted is None or (kind, name) in wanted:
                    with self.lock:
                        self.workloads.add((kind, namespace, name))
        if wanted is not None:
            missing = wanted - {(k, n) for k, _, n in self.workloads}
            if missing:
                msg = f"start(only=...): no such workloads {sorted(missing)}"
                raise ManifestError(msg)

    def apply(self, obj: dict) -> None:
        """Add or replace an object (e.g. fix a Secret); pods read it at their next start."""
        self.check_and_add(copy.deepcopy(obj))

    def scale(self, kind: str, name: str, replicas: int, namespace: str | None = None) -> None:
        """Change a Deployment's or StatefulSet's replicas (what an autoscaler would do)."""
        self.store.find(kind, name, namespace)["spec"]["replicas"] = replicas

    def check_services(self) -> None:
        """Refuse Service ports that need a proxy (port != targetPort): there is none here."""
        why = {
            "shared": "pods share one loopback",
            "per-pod": "Service names resolve to pod addresses",
        }[self.network]
        for service in self.store.of_kind("Service"):
            for index, port in enumerate(service["spec"].get("ports", [])):
                target = self.target_port(service, port)
                if target is not None and target != port["port"]:
                    msg = (
                        f"{describe(service)}.spec.ports[{index}]: port {port['port']} -> "
                        f"targetPort {target} needs a proxy the pod runner does not have ({why}, "
                        "so clients reach the container port directly)"
                    )
                    raise ManifestError(msg)

    def target_port(self, service: dict, port: dict) -> int | None:
        """Return the container port a Service port reaches (resolving named ports)."""
        target = port.get("targetPort", port["port"])
        if isinstance(target, int):
            return target
        selector = service["spec"].get("selector") or {}
        for template in self.pod_templates(service["metadata"]["namespace"]):
            if selector and matches(template.get("metadata", {}).get("labels", {}), selector):
                for container in template["spec"]["containers"]:
                    for declared in container.get("ports", []):
                        if declared.get("name") == target:
                            return declared["containerPort"]
        if not selector:
            return None
        msg = (
            f"{describe(service)}: targetPort {target!r} names no containerPort "
            "of any pod it selects"
        )
        raise ManifestError(msg)

    def pod_templates(self, namespace: str) -> list[dict]:
        """Pod templates (and bare Pods) of a namespace."""
        templates = []
        for kind in ("Deployment", "StatefulSet", "Job"):
            templates += [
                obj["spec"]["template"]
                for obj in self.store.of_kind(kind)
                if obj["metadata"]["namespace"] == namespace
            ]
        return templates + [
            pod for pod in self.store.of_kind("Pod") if pod["metadata"]["namespace"] == namespace
        ]

    # -- what pods ask of the node (kubelet.Node) ------------------------------------------
    @property
    def node_netns(self) -> NetworkNamespace:
        """The network namespace; the cluster must be open."""
        if self.netns is None:
            msg = "the LocalCluster is not open: use it as a context manager"
            raise ManifestError(msg)
        return self.netns

    @property
    def work_dir(self) -> Path:
        """The state directory (pods, claims, logs); the cluster must be open."""
        if self.state_dir is None:
            msg = "the LocalCluster is not open: use it as a context manager"
            raise ManifestError(msg)
        return self.state_dir

    def service_links(self, namespace: str) -> dict[str, str]:
        """Service link variables of a namespace (kubelet.Node)."""
        return service_link_variables(
            [s for s in self.store.of_kind("Service") if s["metadata"]["namespace"] == namespace],
            self.service_address if self.network == "per-pod" else None,
        )

    def api_server_variables(self) -> dict[str, str]:
        """None: no API server here (kubelet.Node; policy.NO_API_SERVER)."""
        return {}

    def service_names(self, namespace: str | None) -> list[str]:
        """Every DNS name a pod in namespace can use for a Service or a StatefulSet pod."""
        return service_dns_names(
            self.store.of_kind("Service"), self.store.of_kind("StatefulSet"), namespace
        )

    def hosts_file(
        self,
        namespace: str | None,
        hostname: str | None,
        fqdn: str | None,
        aliases: list[dict],
        pod_ip: str = "127.0.0.1",
    ) -> str:
        """Return the /etc/hosts of a pod (or of run_in_netns when hostname is None)."""
        if self.network == "per-pod":
            return pod_network_hosts_text(
                self.dns_records(), namespace, hostname, fqdn, aliases, pod_ip
            )
        return hosts_file_text(self.service_names(namespace), hostname, fqdn, aliases, pod_ip)

    # -- the per-pod network ---------------------------------------------------------------
    @property
    def pod_network(self) -> BridgeNetwork:
        """The bridge of the per-pod network mode; the cluster must be open in that mode."""
        if self.bridge is None:
            msg = (
                "this needs LocalCluster(network='per-pod') (and an open cluster); "
                "in the shared network mode pods have no addresses of their own"
            )
            raise PodRunnerError(msg)
        return self.bridge

    def pod_endpoints(self) -> list[PodEndpoint]:
        """Return what DNS knows of every live pod (per-pod mode)."""
        with self.lock:
            pods = [p for p in self.pods_by_key.values() if p in self.interfaces]
        return [
            PodEndpoint(
                name=pod.name,
                namespace=pod.namespace,
                labels=pod.labels,
                hostname=pod.spec.get("hostname"),
                subdomain=pod.spec.get("subdomain"),
                address=pod.ip,
                ready=pod.ready,
                finished=pod.finished.is_set() and not pod.terminating.is_set(),
            )
            for pod in pods
        ]

    def dns_records(self) -> list[DnsRecord]:
        """Every name -> address record the pods' hosts files carry now (per-pod mode)."""
        return dns_records(
            self.store.of_kind("Service"), self.pod_endpoints(), self.pod_network.gateway
        )

    def sync_dns(self) -> None:
        """Rewrite every pod's /etc/hosts when the records changed (what cluster DNS does)."""
        records = self.dns_records()
        if records == self.published_dns:
            return
        self.published_dns = records
        with self.lock:
            pods = list(self.pods_by_key.values())
        for pod in pods:
            pod.refresh_hosts()

    def service_address(self, service: dict) -> str:
        """Return the address a Service's name resolves to now (per-pod mode; see dns_records)."""
        endpoints = service_endpoints(service, self.pod_endpoints())
        return endpoints[0].address if endpoints else self.pod_network.gateway

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """Host directory of a claim (a PVC object or a StatefulSet claim), kept across pods."""
        generated = any(
            claim.startswith(f"{template['metadata']['name']}-{sts['metadata']['name']}-")
            for sts in self.store.of_kind("StatefulSet")
            if sts["metadata"]["namespace"] == namespace
            for template in sts["spec"].get("volumeClaimTemplates", [])
        )
        if not generated and self.store.get("PersistentVolumeClaim", namespace, claim) is None:
            msg = f"persistentvolumeclaim {namespace}/{claim} not found"
            raise ContainerConfigError(msg)
        return claim_path(self.work_dir / "claims", namespace, claim)

    def pod_gone(self, pod: Pod) -> None:
        """Free the name (and address) of a deleted pod that finished terminating (kubelet.Node)."""
        with self.lock:
            if self.pods_by_key.get((pod.namespace, pod.name)) is pod:
                del self.pods_by_key[(pod.namespace, pod.name)]
            interface = self.interfaces.pop(pod, None)
        if interface is not None and self.bridge is not None:
            self.bridge.detach(interface)

    # -- controllers -----------------------------------------------------------------------
    def control_loop(self) -> None:
        """Reconcile Deployments and StatefulSets until the cluster closes."""
        while not self.stopping.wait(CONTROLLER_INTERVAL):
            with self.lock:
                workloads = sorted(self.workloads)
            for kind, namespace, name in workloads:
                obj = self.store.get(kind, namespace, name)
                if obj is not None and not self.stopping.is_set():
                    {
                        "Deployment": self.reconcile_deployment,
                        "StatefulSet": self.reconcile_statefulset,
                        "Pod": self.reconcile_pod,
                    }[kind](obj)
            if self.bridge is not None and not self.stopping.is_set():
                self.sync_dns()

    def owned_pods(self, kind: str, obj: dict) -> list[Pod]:
        """Live pods a workload owns (terminating ones included)."""
        owner = (kind, obj["metadata"]["name"])
        with self.lock:
            return [
                p
                for p in self.pods_by_key.values()
                if p.owner == owner and p.namespace == obj["metadata"]["namespace"]
            ]

    def reconcile_deployment(self, obj: dict) -> None:
        """Keep `replicas` pods that are not terminating (replacements start immediately)."""
        active = [p for p in self.owned_pods("Deployment", obj) if not p.terminating.is_set()]
        replicas = obj["spec"].get("replicas", 1)
        template_hash = hashlib.sha256(repr(obj["spec"]["template"]).encode()).hexdigest()[:10]
        for _ in range(replicas - len(active)):
            name = f"{obj['metadata']['name']}-{template_hash}-{secrets.token_hex(3)[:5]}"
            self.create_pod(
                obj,
                name,
                ("Deployment", obj["metadata"]["name"]),
                {"pod-template-hash": template_hash},
            )
        for extra in active[replicas:]:
            extra.delete(wait=False)

    def reconcile_statefulset(self, obj: dict) -> None:
        """Pods `<sts>-<ordinal>` with their claims; OrderedReady waits for lower ordinals."""
        spec, sts = obj["spec"], obj["metadata"]["name"]
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        replicas = spec.get("replicas", 1)
        for ordinal in range(replicas):
            name = f"{sts}-{ordinal}"
            with self.lock:
                existing = self.pods_by_key.get((obj["metadata"]["namespace"], name))
            if existing is None:
                self.create_statefulset_pod(obj, ordinal)
                if ordered:
                    return
            elif ordered and not existing.ready:
                return
        for pod in self.owned_pods("StatefulSet", obj):
            if int(pod.name.rsplit("-", 1)[1]) >= replicas and not pod.terminating.is_set():
                pod.delete(wait=False)

    def reconcile_pod(self, obj: dict) -> None:
        """Run a bare Pod once; it is not recreated after deletion."""
        key = ("Pod", obj["metadata"]["namespace"], obj["metadata"]["name"])
        with self.lock:
            self.workloads.discard(key)
        self.create_pod(
            {"spec": {"template": obj}, "metadata": obj["metadata"]},
            obj["metadata"]["name"],
            None,
            {},
        )

    def create_statefulset_pod(self, obj: dict, ordinal: int) -> Pod:
        """Create a StatefulSet pod: stable name, hostname/subdomain, claims from the templates."""
        sts = obj["metadata"]["name"]
        name = f"{sts}-{ordinal}"
        template = copy.deepcopy(obj["spec"]["template"])
        spec = template.setdefault("spec", {})
        spec.setdefault("hostname", name)
        if obj["spec"].get("serviceName"):
            spec.setdefault("subdomain", obj["spec"]["serviceName"])
        volumes = spec.setdefault("volumes", [])
        for claim in obj["spec"].get("volumeClaimTemplates", []):
            claim_name = claim["metadata"]["name"]
            volumes[:] = [v for v in volumes if v["name"] != claim_name]
            volumes.append(
                {"name": claim_name, "persistentVolumeClaim": {"claimName": f"{claim_name}-{name}"}}
            )
        labels = {
            "statefulset.kubernetes.io/pod-name": name,
            "apps.kubernetes.io/pod-index": str(ordinal),
        }
        return self.create_pod(
            {"metadata": obj["metadata"], "spec": {"template": template}},
            name,
            ("StatefulSet", sts),
            labels,
        )

    def create_pod(
        self,
        owner_obj: dict,
        name: str,
        owner: tuple[str, str] | None,
        extra_labels: Mapping[str, str],
    ) -> Pod:
        """Instantiate a pod from a workload's template and start it."""
        template = copy.deepcopy(owner_obj["spec"]["template"])
        namespace = owner_obj["metadata"]["namespace"]
        metadata = template.setdefault("metadata", {})
        metadata.update(name=name, namespace=namespace)
        metadata["labels"] = {**metadata.get("labels", {}), **extra_labels}
        pod_dir = self.work_dir / "pods" / f"{namespace}_{name}_{secrets.token_hex(4)}"
        interface = self.bridge.attach() if self.bridge is not None else None
        try:
            if interface is None:
                pod = Pod(self, template, pod_dir, owner)
            else:
                addresses = (interface.address, self.pod_network.gateway)
                pod = Pod(self, template, pod_dir, owner, addresses, interface.netns)
            self.register_pod(pod, interface)
        except BaseException:
            if interface is not None:
                self.pod_network.detach(interface)
            raise
        pod.start()
        return pod

    def register_pod(self, pod: Pod, interface: PodInterface | None) -> None:
        """Make a new pod known by name (and its network by pod), unless the cluster closes."""
        with self.lock:
            if self.stopping.is_set():
                msg = "the cluster is closing"
                raise PodFailed(msg)
            self.pods_by_key[(pod.namespace, pod.name)] = pod
            self.all_pods.append(pod)
            if interface is not None:
                self.interfaces[pod] = interface

    # -- what tests use --------------------------------------------------------------------
    def pods(
        self,
        selector: Mapping[str, str] | None = None,
        *,
        owner: tuple[str, str] | None = None,
        namespace: str | None = None,
    ) -> list[Pod]:
        """Live pods (not yet gone), filtered by labels, owning workload and namespace."""
        with self.lock:
            pods = list(self.pods_by_key.values())
        return sorted(
            (
                p
                for p in pods
                if matches(p.labels, selector or {})
                and owner in (None, p.owner)
                and namespace in (None, p.namespace)
            ),
            key=lambda p: p.name,
        )

    def pod(self, name: str, namespace: str | None = None) -> Pod:
        """Return a live pod by name."""
        found = [p for p in self.pods(namespace=namespace) if p.name == name]
        if len(found) != 1:
            msg = f"{len(found)} live pods named {name!r}; have {[p.name for p in self.pods()]}"
            raise KeyError(msg)
        return found[0]

    def wait_ready(
        self, kind: str, name: str, timeout: float = 60.0, namespace: str | None = None
    ) -> list[Pod]:
        """Wait until a Deployment/StatefulSet has `replicas` ready pods (or a Pod is ready).

        Fails fast with PodFailed when a pod cannot start (CreateContainerConfigError,
        FailedMount, a StartError) rather than waiting out the timeout.
        """
        obj = self.store.find(kind, name, namespace)
        owner = None if kind == "Pod" else (kind, name)
        replicas = 1 if kind == "Pod" else obj["spec"].get("replicas", 1)

        def ready_pods() -> list[Pod] | None:
            pods = [
                p
                for p in self.pods(owner=owner, namespace=obj["metadata"]["namespace"])
                if (owner or p.name == name) and not p.terminating.is_set()
            ]
            for pod in pods:
                self.raise_if_stuck(pod)
            ready = [p for p in pods if p.ready]
            return ready if len(ready) >= replicas else None

        result = wait_until(
            ready_pods,
            timeout,
            f"{kind} {name} to have {replicas} ready pods",
            describe=lambda: self.describe(owner),
        )
        return result  # type: ignore[return-value]

    @staticmethod
    def raise_if_stuck(pod: Pod) -> None:
        """PodFailed when a pod is stuck on a configuration error or failed to start."""
        stuck = [
            c
            for c in [*pod.init_containers, *pod.containers]
            if c.reason in ("CreateContainerConfigError", "StartError")
        ]
        if (
            pod.config_error
            or stuck
            or (pod.finished.is_set() and not pod.terminating.is_set() and pod.phase == "Failed")
        ):
            msg = f"pod cannot become ready:\n{pod.describe()}"
            raise PodFailed(msg)

    def describe(self, owner: tuple[str, str] | None = None) -> str:
        """Describe the live pods (of one workload) for assertion messages."""
        return "\n".join(p.describe() for p in self.pods(owner=owner)) or "(no pods)"

    def run_job(self, name: str, timeout: float = 120.0, namespace: str | None = None) -> JobResult:
        """Run a Job to completion: retries up to backoffLimit, activeDeadlineSeconds enforced."""
        job = self.store.find("Job", name, namespace)
        spec = job["spec"]
        backoff_limit = spec.get("backoffLimit", 6)
        active_deadline = spec.get("activeDeadlineSeconds")
        started = time.monotonic()
        give_up = started + timeout
        attempts: list[JobAttempt] = []
        for failures in itertools.count():
            pod = self.create_pod(
                job,
                f"{name}-{secrets.token_hex(3)[:5]}",
                ("Job", name),
                {"job-name": name, "batch.kubernetes.io/job-name": name},
            )
            reason = self.watch_job_pod(pod, backoff_limit, active_deadline, started, give_up)
            main = pod.containers[0]
            logs = "".join(run.log_path.read_text(errors="replace") for run in main.runs)
            attempts.append(JobAttempt(pod.name, main.exit_code, logs))
            seconds = time.monotonic() - started
            if reason is not None:
                return JobResult(reason == "Complete", reason, attempts, seconds)
            if failures + 1 > backoff_limit:
                return JobResult(False, "BackoffLimitExceeded", attempts, seconds)
            if (
                active_deadline is not None
                and seconds + self.backoff.delay(failures + 1) > active_deadline
            ):
                time.sleep(max(0.0, active_deadline - seconds))
                return JobResult(False, "DeadlineExceeded", attempts, time.monotonic() - started)
            time.sleep(self.backoff.delay(failures + 1))
        msg = "unreachable"
        raise AssertionError(msg)

    def watch_job_pod(
        self,
        pod: Pod,
        backoff_limit: int,
        active_deadline: float | None,
        started: float,
        give_up: float,
    ) -> str | None:
        """Follow one Job pod; return the Job's final reason, or None to retry with a new pod."""
        while True:
            stuck = [c for c in pod.containers if c.reason == "CreateContainerConfigError"]
            if pod.config_error or stuck:
                pod.delete(grace_period=0, wait=True)
                msg = f"Job pod cannot start:\n{pod.describe()}"
                raise PodFailed(msg)
            if pod.finished.is_set():
                if pod.phase == "Succeeded":
                    return "Complete"
                return None
            failed_runs = sum(c.failed_runs for c in pod.containers)
            if pod.restart_policy == "OnFailure" and failed_runs > backoff_limit:
                pod.delete(wait=True)
                return "BackoffLimitExceeded"
            now = time.monotonic()
            if active_deadline is not None and now - started > active_deadline:
                pod.delete(wait=True)
                return "DeadlineExceeded"
            if now > give_up:
                pod.delete(grace_period=0, wait=True)
                msg = f"Job {pod.owner} did not finish in time\n{pod.describe()}"
                raise WaitTimeout(msg)
            time.sleep(CONTROLLER_INTERVAL)

    def host_port(self, service: str, port: int | str, namespace: str | None = None) -> int:
        """Return a port on the test process's 127.0.0.1 forwarding to a Service port inside.

        port is the Service's port number or name. Connections made before a pod listens fail
        like an unready Service; retry or wait_ready first.
        """
        obj = self.store.find("Service", service, namespace)
        for declared in obj["spec"].get("ports", []):
            if port in (declared["port"], declared.get("name")):
                target = self.target_port(obj, declared) or declared["port"]
                if self.network == "per-pod":
                    # Looked up per connection: the forward follows the Service's pods.
                    return self.forward(target, lambda: self.service_address(obj))
                return self.forward(target, None)
        msg = f"{describe(obj)} has no port {port!r}"
        raise ManifestError(msg)

    def pod_port(self, pod: str, port: int, namespace: str | None = None) -> int:
        """Return a port on the test process's 127.0.0.1 forwarding to one pod's port.

        The pod is looked up by name for every connection, so the forward reaches the pod's
        current address after a StatefulSet recreates it (per-pod mode).
        """
        self.pod(pod, namespace)  # fails now, naming the live pods, if there is no such pod
        return self.forward(port, lambda: self.pod(pod, namespace).ip)

    def forward(self, port: int, address: Callable[[], str] | None) -> int:
        """Start a forward from the test process's loopback into the cluster network."""
        forward = PortForward(self.node_netns, port, address)
        self.forwards.append(forward)
        return forward.port

    # -- fault injection (per-pod network mode) --------------------------------------------
    def partition(self, pod: Pod | str, namespace: str | None = None) -> None:
        """Cut a pod off from every other pod and from test clients (per-pod mode).

        Its bridge port drops every frame: open connections hang (no reset), new ones time out,
        and the pod itself notices nothing but silence, as in a real network partition.
        pod.exec still works (it enters the pod's own namespaces). heal() undoes it; a pod that
        is deleted and recreated comes back connected.
        """
        self.pod_network.set_partitioned(self.interface_of(pod, namespace), partitioned=True)

    def heal(self, pod: Pod | str, namespace: str | None = None) -> None:
        """Reconnect a partitioned pod; its open connections carry on (per-pod mode)."""
        self.pod_network.set_partitioned(self.interface_of(pod, namespace), partitioned=False)

    @contextlib.contextmanager
    def partitioned(self, pod: Pod | str, namespace: str | None = None) -> Iterator[Pod]:
        """Partition a pod for the duration of a with-block; healed even when the block fails."""
        found = pod if isinstance(pod, Pod) else self.pod(pod, namespace)
        self.partition(found)
        try:
            yield found
        finally:
            with self.lock:
                still_running = found in self.interfaces
            if still_running:
                self.heal(found)

    def interface_of(self, pod: Pod | str, namespace: str | None) -> PodInterface:
        """Return a live pod's network interface (callers check the mode first: pod_network)."""
        found = pod if isinstance(pod, Pod) else self.pod(pod, namespace)
        with self.lock:
            interface = self.interfaces.get(found)
        if interface is None:
            msg = f"{found.where} has no network any more (it terminated)"
            raise PodRunnerError(msg)
        return interface

    def run_in_netns(
        self,
        argv: list[str],
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        namespace: str | None = None,
    ) -> ExecResult:
        """Run a command (as root, the test's environment) inside the cluster network.

        It sees the cluster's /etc/hosts: Service names qualified with their namespace always
        resolve; short names resolve for the given namespace. In the per-pod mode it runs in
        the namespace that holds the bridge and reaches every pod that is not partitioned.
        """
        hosts = self.hosts_file(namespace, None, None, [])
        return run_client(self.node_netns, hosts, self.work_dir, argv, timeout, env)
