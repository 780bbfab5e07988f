"""The deletion-cost controller: when a pool scales in, idle workers go before busy ones.

Kubernetes removes, among equally ready pods of a ReplicaSet, those with the lowest
`controller.kubernetes.io/pod-deletion-cost` first. Workers publish their running task count
to the broker (celery_config.TaskLoad); one small pod per stack (brokerctl/deletioncost.py,
shipped verbatim in a ConfigMap and run with the first pool's image, like the check Job) keeps
each worker's cost equal to that count, patching a pod only when its count changed, and keeps
each pool's in-flight list that KEDA reads.

Least privilege, because worker pods parse untrusted files and must never hold an API token:

* the controller's own ServiceAccount, bound by a Role (this namespace only) that may list and
  patch pods, nothing else; only its pod mounts a token (pods.hardened_pod_spec), the
  ServiceAccount itself disables automounting for any other pod that would name it;
* its own Redis user (`scalein`, components/redis_config.py): read the load entries, write the
  in-flight lists; its URL reaches the pod from the client Secret, never a literal.

RBAC cannot narrow `patch` to one annotation or to worker pods: the Role allows patching any
pod of the namespace. That is the smallest grant the API offers for this; the pod runs no
untrusted input (it reads integers from the broker and pod metadata from the API).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from brokerctl import deletioncost
from components.endpoint import SENTINEL_PASSWORD_KEY, BrokerEndpoint
from components.naming import labels, object_name, selector_labels
from components.pods import TMP_MOUNT, exec_probe, hardened_container, hardened_pod_spec
from components.settings import StackSettings
from components.workers import WORKER, WorkerPools, checksum

COMPONENT = "scale-in"
SCRIPT = Path(__file__).resolve().parent.parent / "brokerctl" / "deletioncost.py"
SCRIPT_FILE = SCRIPT.name
SCRIPT_DIR = "/etc/deletioncost"
SCRIPT_VOLUME = "script"
HEALTH_DIR = f"{TMP_MOUNT}/deletioncost"
CHECKSUM_ANNOTATION = "celery-redis/script-sha256"
"""Pod annotation holding the script's hash: a changed script restarts the controller."""
LIVENESS_WINDOW_SECONDS = 120
"""The loop touches `alive` after every pass; every call of a pass is bounded by --timeout, so
a file older than this means the loop is stuck (a broker or API outage only makes passes fail)."""
TIMEOUT_SECONDS = 5
"""Bound on each API and Redis call of a pass (the script's --timeout)."""
CHECKOV_TOKEN_SKIP = {
    "checkov.io/skip1": (
        "CKV_K8S_38=the scale-in controller lists and patches worker pods: the one pod of the "
        "stack that calls the API server, with its own ServiceAccount and a Role of list/patch pods"
    )
}
"""checkov's per-object skip: CKV_K8S_38 stays enforced on every other workload of the stack."""
POD_RULES = (
    k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["pods"], verbs=["list", "patch"]),
)
"""What the controller does with the API: list the workers, patch their annotation."""


def worker_selector(settings: StackSettings) -> str:
    """Return the label selector of every worker pod of the stack (all pools, not beat)."""
    worker_labels = labels(settings, WORKER)
    keys = ("app.kubernetes.io/name", "app.kubernetes.io/part-of")
    return ",".join(f"{key}={worker_labels[key]}" for key in keys)


def pool_instances(settings: StackSettings) -> dict[str, str]:
    """Return pool name -> its pods' value of the label the controller tells pools apart by."""
    return {
        pool.name: selector_labels(settings, WORKER, pool.name)[deletioncost.POOL_LABEL]
        for pool in settings.workers.pools
    }


SENTINEL_PASSWORD_ENV = SENTINEL_PASSWORD_KEY
"""The controller's variable holding Sentinel's password (from the client Secret), if any."""


def controller_arguments(
    settings: StackSettings, selector: str, instances: Mapping[str, str], url_env: str
) -> list[str]:
    """Return the script's arguments: which pods, which pools, the interval and bounds.

    Behind Sentinel, also the master's name and the variable with Sentinel's password.
    """
    args = [
        "--selector", selector,
        "--redis-url-env", url_env,
        "--interval", str(settings.workers.scale_in.interval_seconds),
        "--timeout", str(TIMEOUT_SECONDS),
        "--health-dir", HEALTH_DIR,
    ]  # fmt: skip
    for name, instance in instances.items():
        args += ["--pool", f"{name}={instance}"]
    if settings.broker.topology == "sentinel":
        args += ["--sentinel-master", settings.broker.sentinel.master_name]
        args += ["--sentinel-password-env", SENTINEL_PASSWORD_ENV]
    return args


def health_probes() -> dict[str, k8s.core.v1.ProbeArgs]:
    """Liveness: the loop still runs. Readiness: the last pass reached the API and the broker."""
    alive = f"{HEALTH_DIR}/{deletioncost.ALIVE_FILE}"
    ready = f"{HEALTH_DIR}/{deletioncost.READY_FILE}"
    fresh = (
        f'test -f "{alive}" && '
        f'test $(( $(date +%s) - $(stat -c %Y "{alive}") )) -lt {LIVENESS_WINDOW_SECONDS}'
    )

    def probe(script: str, period: int, failures: int) -> k8s.core.v1.ProbeArgs:
        return exec_probe(["sh", "-c", script], period, failures)

    return {
        # The first pass needs the broker: up to a minute while it starts.
        "startup_probe": probe(fresh, period=5, failures=24),
        "liveness_probe": probe(fresh, period=15, failures=2),
        "readiness_probe": probe(f'test -f "{ready}" && {fresh}', period=5, failures=2),
    }


class ScaleInController(pulumi.ComponentResource):
    """The stack's deletion-cost controller (off with `workers.scale_in.enabled: false`)."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        endpoint: BrokerEndpoint,
        pools: WorkerPools,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """Create the script ConfigMap, ServiceAccount, Role, RoleBinding and Deployment.

        The Deployment comes after the pools it watches: its pod then takes no part in where
        the scheduler first places the workers (it would weigh in the node scores).
        """
        super().__init__("celery-redis:index:ScaleInController", name, None, opts)
        self.deployment: k8s.apps.v1.Deployment | None = None
        scale_in = settings.workers.scale_in
        if not scale_in.enabled:
            self.register_outputs({"enabled": False})
            return
        self.settings = settings
        child = pulumi.ResourceOptions(parent=self)
        controller_name = object_name(settings.name_prefix, COMPONENT)
        script = SCRIPT.read_text()
        script_map = k8s.core.v1.ConfigMap(
            f"{name}-script",
            metadata=self._metadata(object_name(controller_name, "script")),
            data={SCRIPT_FILE: script},
            opts=child,
        )
        account = k8s.core.v1.ServiceAccount(
            f"{name}-account",
            metadata=self._metadata(controller_name),
            # Only the controller's pod mounts a token, and it asks for it itself.
            automount_service_account_token=False,
            opts=child,
        )
        role = k8s.rbac.v1.Role(
            f"{name}-role",
            metadata=self._metadata(controller_name),
            rules=list(POD_RULES),
            opts=child,
        )
        binding = k8s.rbac.v1.RoleBinding(
            f"{name}-binding",
            metadata=self._metadata(controller_name),
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="Role", name=role.metadata.name
            ),
            subjects=[
                k8s.rbac.v1.SubjectArgs(
                    kind="ServiceAccount", name=account.metadata.name, namespace=settings.namespace
                )
            ],
            opts=child,
        )
        secret = endpoint.secret
        first_pool = settings.workers.pools[0]
        container = hardened_container(
            name="controller",
            image=scale_in.image or first_pool.image,
            command=[scale_in.python_bin, f"{SCRIPT_DIR}/{SCRIPT_FILE}"],
            args=controller_arguments(
                settings,
                worker_selector(settings),
                pool_instances(settings),
                secret.scale_in_url_key,
            ),
            env=[
                secret.env(secret.scale_in_url_key, secret.scale_in_url_key),
                *(
                    [secret.env(SENTINEL_PASSWORD_ENV, secret.sentinel_password_key)]
                    if secret.sentinel_password_key
                    else []
                ),
                k8s.core.v1.EnvVarArgs(name="PYTHONDONTWRITEBYTECODE", value="1"),
                k8s.core.v1.EnvVarArgs(name="PYTHONUNBUFFERED", value="1"),
            ],
            resources=scale_in.resources,
            volume_mounts=[
                k8s.core.v1.VolumeMountArgs(
                    name=SCRIPT_VOLUME, mount_path=SCRIPT_DIR, read_only=True
                ),
                *endpoint.ca_mounts,
            ],
            **health_probes(),
        )
        selector = selector_labels(settings, COMPONENT)
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=self._metadata(controller_name, annotations=CHECKOV_TOKEN_SKIP),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                # Two controllers would only patch the same values twice; one at a time is enough.
                strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                revision_history_limit=3,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels={**labels(settings, COMPONENT), **endpoint.client_labels},
                        annotations={
                            CHECKSUM_ANNOTATION: checksum(script),
                            **endpoint.revision_annotations(),
                        },
                    ),
                    spec=hardened_pod_spec(
                        containers=[container],
                        run_as_user=scale_in.run_as_user,
                        placement=first_pool.placement,
                        grace_period_seconds=10,
                        service_account=account.metadata.name,
                        volumes=[
                            k8s.core.v1.VolumeArgs(
                                name=SCRIPT_VOLUME,
                                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(
                                    name=script_map.metadata.name, default_mode=0o444
                                ),
                            ),
                            *endpoint.ca_volumes,
                        ],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[*endpoint.ready, *pools.ready, binding, script_map]
            ),
        )
        self.register_outputs({"enabled": True, "deployment": self.deployment.metadata.name})

    def _metadata(
        self, name: str, annotations: dict[str, str] | None = None
    ) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(
            name=name,
            namespace=self.settings.namespace,
            labels=labels(self.settings, COMPONENT),
            annotations=annotations,
        )
