"""The post-deploy check as a Kubernetes Job that gates `pulumi up`.

The Job runs the check package (brokerctl/brokercheck/), joined into one file by its bundle
module and shipped in a ConfigMap, with the first pool's image, which has Celery and redis-py.
Its name carries a hash of everything it checks (broker and pool settings, the check code), so
a change to any of them creates a new Job and the check runs again, instead of Pulumi keeping
a stale success. pulumi-kubernetes waits for a Job to complete and fails the update when it
fails.
"""

from __future__ import annotations

import hashlib
import json

import pulumi
import pulumi_kubernetes as k8s

from brokerctl.brokercheck.bundle import SCRIPT_NAME, bundle
from components.endpoint import (
    BROKER_URL_KEY,
    CHECK_URL_KEY,
    RESULT_BACKEND_KEY,
    SENTINEL_PASSWORD_KEY,
    BrokerEndpoint,
)
from components.naming import labels, object_name
from components.pods import hardened_container, hardened_pod_spec
from components.settings import PoolSettings, StackSettings
from components.workers import WorkerPools

COMPONENT = "broker-check"
SCRIPT_DIR = "/etc/brokercheck"
SENTINEL_PASSWORD_ENV = SENTINEL_PASSWORD_KEY
"""The Job's variable holding Sentinel's password (from the client Secret), topology sentinel."""


def replicas_at_deploy(pool: PoolSettings) -> int:
    """Workers a pool is sure to have when the gate runs, right after `pulumi up` applied it.

    An autoscaled Deployment is created without `replicas` (the scaler owns it), so Kubernetes
    starts one pod; KEDA or the HPA reach `min_replicas` only after their first reconcile. The
    gate must not fail on that race, so it expects one worker there (none for a pool that may
    scale to zero). `brokerctl check --stack` later expects the steady-state minimum.
    """
    if pool.autoscaling.enabled:
        return min(1, pool.autoscaling.min_replicas)
    return pool.replicas


def check_arguments(settings: StackSettings) -> list[str]:
    """Return the check's command-line arguments.

    Expectations only; URLs come from the environment.
    """
    pools = settings.workers.pools
    args = [
        "--url-env", CHECK_URL_KEY,
        "--worker-url-env", BROKER_URL_KEY,
        "--result-backend-env", RESULT_BACKEND_KEY,
        "--expect-persistence", settings.broker.persistence,
        # The engine the stack says it runs (not the version: the local pods and the real
        # engine's node run Debian's 7.0 for any pinned Redis image; `check --stack` compares
        # the version too, from the broker_engine output).
        "--expect-engine", settings.broker.engine,
        "--expect-workers", str(sum(replicas_at_deploy(p) for p in pools)),
        "--visibility-timeout", str(settings.visibility_timeout),
        "--timeout", str(settings.checks.timeout_seconds),
        "--memory-warn", f"{settings.checks.memory_warn_ratio * 100:g}",
        "--memory-fail", f"{settings.checks.memory_fail_ratio * 100:g}",
    ]  # fmt: skip
    for pool in pools:
        args += ["--pool", f"{pool.name}={','.join(pool.queues)}:{replicas_at_deploy(pool)}"]
    if settings.broker.topology == "sentinel":
        args += sentinel_check_arguments(settings)
    return args


def sentinel_expectations(settings: StackSettings) -> dict[str, str | int]:
    """Return what the check expects of a broker behind Sentinel ({} for a standalone one).

    Keys are the stack outputs `brokerctl check --stack` reads, so a person's check judges the
    broker as the gate Job did: the master's name, every replica of the StatefulSet connected,
    and the loss bound as configured (the master may run another after a hand-made CONFIG SET
    or a ConfigMap that never reached it).
    """
    if settings.broker.topology != "sentinel":
        return {}
    sentinel = settings.broker.sentinel
    return {
        "sentinel_master": sentinel.master_name,
        "expect_replicas": sentinel.replicas - 1,
        "min_replicas_to_write": sentinel.min_replicas_to_write,
        "min_replicas_max_lag": sentinel.min_replicas_max_lag,
    }


def sentinel_check_arguments(settings: StackSettings) -> list[str]:
    """Return the gate Job's Sentinel options: sentinel_expectations, and the password's variable.

    No replica may lag more than the master itself tolerates: one further behind no longer
    counts towards the loss bound.
    """
    expected = sentinel_expectations(settings)
    return [
        "--sentinel-master", str(expected["sentinel_master"]),
        "--sentinel-password-env", SENTINEL_PASSWORD_ENV,
        "--expect-replicas", str(expected["expect_replicas"]),
        "--max-replica-lag", str(expected["min_replicas_max_lag"]),
        "--expect-min-replicas-to-write", str(expected["min_replicas_to_write"]),
        "--expect-min-replicas-max-lag", str(expected["min_replicas_max_lag"]),
    ]  # fmt: skip


def check_revision(settings: StackSettings, script: str) -> str:
    """Hash what the check verifies, shortly, naming the Job so any change runs it anew.

    A standalone broker's hash leaves out the Sentinel settings it does not use, so adding
    the topology setting did not rename (and rerun) the check of every deployed stack.
    """
    standalone = settings.broker.topology == "standalone"
    checked = {
        "broker": settings.broker.model_dump(
            mode="json", exclude={"topology", "sentinel"} if standalone else None
        ),
        "workers": settings.workers.model_dump(mode="json"),
        "checks": settings.checks.model_dump(mode="json"),
        "tls": settings.tls.model_dump(mode="json"),
        "script": script,
    }
    return hashlib.sha256(json.dumps(checked, sort_keys=True).encode()).hexdigest()[:8]


def _deadline_probe(python_bin: str, deadline_seconds: int) -> k8s.core.v1.ProbeArgs:
    """Liveness as a second bound: a check process older than the Job's deadline is stuck.

    The check bounds itself by --timeout; this only matters if that ever failed. Python
    is used, not sh, because the workers' image is the only thing known to be there.
    """
    code = (
        "import os,sys,time; "
        f"sys.exit(time.time() - os.stat('/proc/1').st_mtime > {deadline_seconds})"
    )
    return k8s.core.v1.ProbeArgs(
        exec_=k8s.core.v1.ExecActionArgs(command=[python_bin, "-c", code]),
        period_seconds=30,
        timeout_seconds=5,
        failure_threshold=2,
    )


def _script_present_probe(python_bin: str) -> k8s.core.v1.ProbeArgs:
    """Readiness: the check script is mounted where the command expects it."""
    code = f"import os,sys; sys.exit(not os.path.isfile('{SCRIPT_DIR}/{SCRIPT_NAME}'))"
    return k8s.core.v1.ProbeArgs(
        exec_=k8s.core.v1.ExecActionArgs(command=[python_bin, "-c", code]),
        period_seconds=10,
        timeout_seconds=5,
    )


class BrokerCheck(pulumi.ComponentResource):
    """The in-cluster check that gates `pulumi up` (off with `checks.gate_enabled: false`)."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        endpoint: BrokerEndpoint,
        pools: WorkerPools,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("celery-redis:index:BrokerCheck", name, None, opts)
        self.job_name: pulumi.Output[str] | None = None
        if not settings.checks.gate_enabled:
            self.register_outputs({"gate": False})
            return
        checks = settings.checks
        script = bundle()
        child = pulumi.ResourceOptions(parent=self)
        script_map = k8s.core.v1.ConfigMap(
            f"{name}-script",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=object_name(settings.name_prefix, COMPONENT),
                namespace=settings.namespace,
                labels=labels(settings, COMPONENT),
            ),
            data={SCRIPT_NAME: script},
            opts=child,
        )
        secret = endpoint.secret
        env = [
            secret.env(key, key)
            for key in (secret.check_url_key, secret.broker_url_key, secret.result_backend_key)
        ]
        if secret.sentinel_password_key is not None:  # clients ask Sentinel for the master
            env.append(secret.env(SENTINEL_PASSWORD_ENV, secret.sentinel_password_key))
        first_pool = settings.workers.pools[0]
        container = hardened_container(
            name="check",
            image=checks.image or first_pool.image,
            command=[checks.python_bin, f"{SCRIPT_DIR}/{SCRIPT_NAME}"],
            args=check_arguments(settings),
            env=[*env, k8s.core.v1.EnvVarArgs(name="PYTHONDONTWRITEBYTECODE", value="1")],
            resources=checks.resources,
            volume_mounts=[
                k8s.core.v1.VolumeMountArgs(name="script", mount_path=SCRIPT_DIR, read_only=True),
                *endpoint.ca_mounts,
            ],
            liveness_probe=_deadline_probe(checks.python_bin, checks.active_deadline_seconds),
            readiness_probe=_script_present_probe(checks.python_bin),
        )
        pod = hardened_pod_spec(
            containers=[container],
            run_as_user=checks.run_as_user,
            placement=first_pool.placement,
            grace_period_seconds=10,
            restart_policy="Never",
            volumes=[
                k8s.core.v1.VolumeArgs(
                    name="script",
                    config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(
                        name=script_map.metadata.name, default_mode=0o444
                    ),
                ),
                *endpoint.ca_volumes,
            ],
        )
        job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=object_name(settings.name_prefix, COMPONENT, check_revision(settings, script)),
                namespace=settings.namespace,
                labels=labels(settings, COMPONENT),
                # A failed check is replaced by a fresh run on the next `pulumi up`, not awaited.
                annotations={"pulumi.com/replaceUnready": "true"},
            ),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=checks.backoff_limit,
                active_deadline_seconds=checks.active_deadline_seconds,
                ttl_seconds_after_finished=checks.ttl_seconds_after_finished,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels={**labels(settings, COMPONENT), **endpoint.client_labels}
                    ),
                    spec=pod,
                ),
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[*endpoint.ready, *pools.ready],
                delete_before_replace=True,
                # pulumi-kubernetes waits for the Job to complete; never longer than its deadline.
                custom_timeouts=pulumi.CustomTimeouts(
                    create=f"{checks.active_deadline_seconds + 60}s",
                    update=f"{checks.active_deadline_seconds + 60}s",
                ),
            ),
        )
        self.job_name = job.metadata.name
        self.register_outputs({"gate": True, "job": self.job_name})
