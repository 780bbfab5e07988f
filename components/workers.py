"""Celery worker pools: one Deployment per pool, its wiring ConfigMap, PDB and autoscaler; beat.

A pool's pods run the user's image unchanged. What Celery must know arrives three ways:
broker and result-backend URLs from the broker's Secret (env, never literals), the platform's
settings and health bootstep in a wiring module from a ConfigMap (components/celery_config),
and the pool's shape as `celery worker` flags. SIGTERM is remapped to Celery's cold shutdown
with a soft-shutdown window, so stopping a pod (rollout, drain, scale-in) finishes or hands back
every running task before terminationGracePeriodSeconds ends.

Autoscaling is opt-in per pool: KEDA on the length of the pool's Redis lists (with kombu's
priority sub-lists, summed), or a CPU HPA. Then the Deployment leaves `replicas` to the scaler.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from brokerctl.deletioncost import inflight_key
from components import celery_config, metrics
from components.endpoint import AutoscalerAccess, BrokerEndpoint, ClientSecret
from components.naming import labels, object_name, selector_labels
from components.pods import (
    exec_probe,
    hardened_container,
    hardened_pod_spec,
    namespace_peer,
    spread_across_nodes_and_zones,
)
from components.settings import Autoscaling, Placement, PoolSettings, StackSettings

WORKER = "worker"
BEAT = "beat"
WIRING_VOLUME = "celery-wiring"
CHECKSUM_ANNOTATION = "celery-redis/wiring-sha256"
"""Pod annotation holding the wiring module's hash: a changed module rolls the pods."""

POD_NAME_ENV = "POD_NAME"
"""The pod's name (downward API): the key its worker publishes its task counts under."""
IN_FLIGHT_TRIGGER = "in_flight"
"""KEDA trigger on the pool's in-flight list (the scale-in controller keeps its length)."""

KEDA_API = "keda.sh/v1alpha1"
KEDA_USERNAME_KEY = "username"
KEDA_PASSWORD_KEY = "password"  # noqa: S105 - a Secret key name, not a password
KEDA_SENTINEL_PASSWORD_KEY = "sentinelPassword"  # noqa: S105 - KEDA's parameter name


def trigger_name(index: int, queue: str, step: int) -> str:
    """Return a KEDA trigger name usable in a scaling formula (an identifier), unique per list."""
    return f"q{index}_{re.sub(r'[^A-Za-z0-9]', '_', queue)}_p{step}"


def keda_triggers(
    pool: PoolSettings, access: AutoscalerAccess, auth_name: str, *, in_flight: bool
) -> list[dict[str, Any]]:
    """One trigger per list of each queue; all metadata values are strings (KEDA's type).

    With `in_flight` (the scale-in controller runs), one more on the pool's in-flight list:
    the tasks its workers took from the queues and still run or hold, which the queue lists no
    longer show. Without it KEDA sees an idle pool while the last tasks run, and scales it in
    (to zero, when allowed) under them.
    """
    lists = [
        (trigger_name(index, queue, step), list_name)
        for index, queue in enumerate(pool.queues)
        for step, list_name in celery_config.priority_lists(queue)
    ]
    if in_flight:
        lists.append((IN_FLIGHT_TRIGGER, inflight_key(pool.name)))
    return [
        {
            "type": access.trigger_type,
            "name": name,
            "metadata": access.trigger_metadata(
                list_name, pool.autoscaling.queue_length_per_replica
            ),
            "authenticationRef": {"name": auth_name},
        }
        for name, list_name in lists
    ]


def broker_peers(settings: StackSettings) -> list[k8s.networking.v1.NetworkPolicyPeerArgs]:
    """Clients of the broker outside the stack's namespace that the pools bring: KEDA's operator.

    KEDA reads queue lengths from its own namespace; the broker admits it only when a pool
    scales with KEDA (the broker's NetworkPolicy takes these peers).
    """
    if not any(_uses(pool, "keda") for pool in settings.workers.pools):
        return []
    return [
        k8s.networking.v1.NetworkPolicyPeerArgs(
            namespace_selector=namespace_peer(settings.workers.keda_namespace)
        )
    ]


def scale_down_behavior(autoscaling: Autoscaling) -> dict[str, Any]:
    """HPA behaviour: wait the cool-down before scaling in, then one pod a minute (no flapping).

    KEDA's `cooldownPeriod` only governs the last step to zero; between 1 and N replicas the
    HPA's stabilization window is what stops a bursty queue from flapping the pool.
    """
    return {
        "scaleDown": {
            "stabilizationWindowSeconds": autoscaling.cooldown_seconds,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
        }
    }


def scaled_object_spec(
    pool: PoolSettings,
    deployment: str,
    access: AutoscalerAccess,
    auth_name: str,
    *,
    in_flight: bool,
) -> dict[str, Any]:
    """KEDA ScaledObject spec: the pool's lists summed by a formula, target tasks per replica.

    With `in_flight`, the sum counts running tasks too: activation (> 0) holds while one runs.
    """
    scaling = pool.autoscaling
    triggers = keda_triggers(pool, access, auth_name, in_flight=in_flight)
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "pollingInterval": scaling.polling_seconds,
        "cooldownPeriod": scaling.cooldown_seconds,
        "triggers": triggers,
        "advanced": {
            # KEDA takes the max over triggers; the backlog is their sum (KEDA >= 2.12).
            "scalingModifiers": {
                "formula": " + ".join(t["name"] for t in triggers),
                "target": str(scaling.queue_length_per_replica),
                "activationTarget": "0",
                "metricType": "AverageValue",
            },
            "horizontalPodAutoscalerConfig": {"behavior": scale_down_behavior(scaling)},
        },
    }


def guaranteed_replicas(pool: PoolSettings) -> int:
    """Workers the pool always has: the fixed count, or the autoscaler's minimum."""
    return pool.autoscaling.min_replicas if pool.autoscaling.enabled else pool.replicas


def checksum(text: str) -> str:
    """Short content hash for the pod annotation that rolls pods when their config changes."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def celery_env(pool: PoolSettings, secret: ClientSecret) -> list[k8s.core.v1.EnvVarArgs]:
    """Return the env: broker URLs (and aliases) from the Secret, the wiring first on the path."""
    plain = {
        **pool.env,
        # The pod's env replaces the image's, so the image's own PYTHONPATH is repeated after ours.
        "PYTHONPATH": f"{celery_config.CONFIG_DIR}:{pool.pythonpath}",
        "REMAP_SIGTERM": celery_config.REMAP_SIGTERM,  # SIGTERM -> cold shutdown with soft window
        "PYTHONUNBUFFERED": "1",  # logs reach the container runtime as they happen
        "PYTHONDONTWRITEBYTECODE": "1",  # read-only root and ConfigMap: no .pyc to write
    }
    return [
        secret.env(secret.broker_url_key, secret.broker_url_key),
        secret.env(secret.result_backend_key, secret.result_backend_key),
        *[secret.env(alias, secret.broker_url_key) for alias in pool.broker_url_aliases],
        # Behind Sentinel: its password, which the wiring module adds to the transport options.
        *(
            [secret.env(celery_config.SENTINEL_PASSWORD_ENV, secret.sentinel_password_key)]
            if secret.sentinel_password_key
            else []
        ),
        *[k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in sorted(plain.items())],
    ]


def pod_name_env() -> k8s.core.v1.EnvVarArgs:
    """Return POD_NAME from the downward API (a hostname is cut to 63 characters; a name is not)."""
    return k8s.core.v1.EnvVarArgs(
        name=POD_NAME_ENV,
        value_from=k8s.core.v1.EnvVarSourceArgs(
            field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path="metadata.name")
        ),
    )


def health_probes(
    window: int, heartbeat: int, startup_seconds: int
) -> dict[str, k8s.core.v1.ProbeArgs]:
    """Startup, liveness and readiness probes over the wiring module's health files."""
    alive = celery_config.liveness_command(window)
    return {
        "startup_probe": exec_probe(alive, period=5, failures=max(startup_seconds // 5, 1)),
        "liveness_probe": exec_probe(alive, period=heartbeat, failures=2),
        "readiness_probe": exec_probe(
            celery_config.readiness_command(window), period=5, failures=2
        ),
    }


def wiring_volume(config_map: pulumi.Input[str]) -> k8s.core.v1.VolumeArgs:
    """Return the volume of the ConfigMap holding the wiring module, read-only for everyone."""
    return k8s.core.v1.VolumeArgs(
        name=WIRING_VOLUME,
        config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=config_map, default_mode=0o444),
    )


def wiring_mount() -> k8s.core.v1.VolumeMountArgs:
    """Where the wiring module appears in the container (first entry of PYTHONPATH)."""
    return k8s.core.v1.VolumeMountArgs(
        name=WIRING_VOLUME, mount_path=celery_config.CONFIG_DIR, read_only=True
    )


class WorkerPools(pulumi.ComponentResource):
    """The Celery fleet a platform engineer names: every worker pool, their scalers, and beat."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        endpoint: BrokerEndpoint,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """Create every pool and beat as clients of `endpoint`.

        `record_groups` and `alert_groups` are the queues' Prometheus rules, for the stack's
        PrometheusRule.
        """
        super().__init__("celery-redis:index:WorkerPools", name, None, opts)
        self.settings = settings
        self.endpoint = endpoint
        self._name = name
        self._child = pulumi.ResourceOptions(parent=self, depends_on=list(endpoint.ready))
        pools = settings.workers.pools
        keda_auth = self._keda_auth() if any(_uses(p, "keda") for p in pools) else None
        self.deployments: dict[str, k8s.apps.v1.Deployment] = {}
        for pool in pools:
            self.deployments[pool.name] = self._pool(pool, keda_auth)
        self.beat = self._beat() if settings.workers.beat.enabled else None

        self.summary = [
            {"name": p.name, "queues": list(p.queues), "replicas": guaranteed_replicas(p)}
            for p in pools
        ]
        self.expected_workers = sum(guaranteed_replicas(p) for p in pools)
        self.record_groups = metrics.queue_record_groups(settings)
        self.alert_groups = metrics.queue_alert_groups(settings)
        self.ready: list[pulumi.Resource] = list(self.deployments.values())
        self.register_outputs(
            {
                "pools": self.summary,
                "expected_workers": self.expected_workers,
                "deployments": {n: d.metadata.name for n, d in self.deployments.items()},
                "beat": self.beat.metadata.name if self.beat else None,
            }
        )

    def _metadata(
        self, name: str, component: str, instance: str | None
    ) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(
            name=name,
            namespace=self.settings.namespace,
            labels=labels(self.settings, component, instance),
        )

    def _pool(self, pool: PoolSettings, keda_auth: str | None) -> k8s.apps.v1.Deployment:
        """ConfigMap, Deployment, PodDisruptionBudget and (optional) autoscaler of one pool."""
        settings = self.settings
        deployment_name = object_name(settings.name_prefix, WORKER, pool.name)
        wiring = celery_config.celery_wiring_module(
            settings, pool, dict(self.endpoint.transport_options)
        )
        config_map = self._wiring_config_map(
            f"{self._name}-{pool.name}", deployment_name, WORKER, pool.name, wiring
        )
        container = hardened_container(
            name=WORKER,
            image=pool.image,
            command=celery_config.worker_command(settings, pool),
            resources=pool.resources,
            env=[*celery_env(pool, self.endpoint.secret), pod_name_env()],
            volume_mounts=[wiring_mount(), *self.endpoint.ca_mounts],
            **health_probes(
                celery_config.liveness_window_seconds(pool),
                celery_config.heartbeat_seconds(pool.liveness_stale_seconds),
                pool.startup_seconds,
            ),
        )
        deployment = self._deployment(
            f"{self._name}-{pool.name}",
            deployment_name,
            component=WORKER,
            instance=pool.name,
            container=container,
            config_map=config_map,
            wiring=wiring,
            run_as_user=pool.run_as_user,
            placement=pool.placement,
            grace_period_seconds=pool.grace_period_seconds,
            replicas=None if pool.autoscaling.enabled else pool.replicas,
            strategy=k8s.apps.v1.DeploymentStrategyArgs(
                type="RollingUpdate",
                # New workers start before old ones hand their tasks back: capacity never drops.
                rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(
                    max_surge=1, max_unavailable=0
                ),
            ),
        )
        self._disruption_budget(f"{self._name}-{pool.name}", deployment_name, pool.name)
        if _uses(pool, "keda") and keda_auth is not None:
            self._scaled_object(f"{self._name}-{pool.name}", deployment_name, pool, keda_auth)
        elif _uses(pool, "hpa"):
            self._cpu_autoscaler(f"{self._name}-{pool.name}", deployment_name, pool)
        return deployment

    def _wiring_config_map(
        self, resource: str, name: str, component: str, instance: str, wiring: str
    ) -> k8s.core.v1.ConfigMap:
        return k8s.core.v1.ConfigMap(
            f"{resource}-wiring",
            metadata=self._metadata(object_name(name, "wiring"), component, instance),
            data={celery_config.WIRING_FILE: wiring},
            opts=self._child,
        )

    def _deployment(
        self,
        resource: str,
        name: str,
        *,
        component: str,
        instance: str,
        container: k8s.core.v1.ContainerArgs,
        config_map: k8s.core.v1.ConfigMap,
        wiring: str,
        run_as_user: int,
        placement: Placement,
        grace_period_seconds: int,
        replicas: int | None,
        strategy: k8s.apps.v1.DeploymentStrategyArgs,
    ) -> k8s.apps.v1.Deployment:
        """Build a Deployment of hardened, spread, broker-client pods running one container."""
        settings = self.settings
        selector = selector_labels(settings, component, instance)
        pod_labels = {**labels(settings, component, instance), **self.endpoint.client_labels}
        return k8s.apps.v1.Deployment(
            resource,
            metadata=self._metadata(name, component, instance),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=replicas,  # None when a scaler owns it: the Deployment must not fight it
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                strategy=strategy,
                revision_history_limit=5,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels=pod_labels,
                        annotations={
                            CHECKSUM_ANNOTATION: checksum(wiring),
                            # Rolls the pods when the broker password changes (rotation).
                            **self.endpoint.revision_annotations(),
                        },
                    ),
                    spec=hardened_pod_spec(
                        containers=[container],
                        run_as_user=run_as_user,
                        placement=placement,
                        grace_period_seconds=grace_period_seconds,
                        volumes=[
                            wiring_volume(config_map.metadata.name),
                            *self.endpoint.ca_volumes,
                        ],
                        topology_spread=spread_across_nodes_and_zones(selector),
                    ),
                ),
            ),
            opts=self._child,
        )

    def _disruption_budget(self, resource: str, name: str, instance: str) -> None:
        """Drains evict one worker at a time; each hands its tasks back on the way out."""
        k8s.policy.v1.PodDisruptionBudget(
            f"{resource}-pdb",
            metadata=self._metadata(name, WORKER, instance),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=1,
                selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels=selector_labels(self.settings, WORKER, instance)
                ),
                # A worker stuck unready (broker down) must not block a node drain.
                unhealthy_pod_eviction_policy="AlwaysAllow",
            ),
            opts=self._child,
        )

    def _keda_auth(self) -> str:
        """Create a Secret with the keda user's credentials and a TriggerAuthentication using it.

        The broker's `keda` user may only read the length of the stack's queue lists (KEDA's Lua
        script: TYPE, LLEN); its password travels in a Secret referenced by the
        TriggerAuthentication, never in a ScaledObject's metadata.
        """
        settings = self.settings
        access = self.endpoint.autoscaler
        name = object_name(settings.name_prefix, "workers-keda-redis")
        secret = k8s.core.v1.Secret(
            f"{self._name}-keda-redis",
            metadata=self._metadata(name, "autoscaler", "workers"),
            type="Opaque",
            string_data={
                KEDA_USERNAME_KEY: access.username,
                KEDA_PASSWORD_KEY: pulumi.Output.secret(access.password),
                **(
                    {KEDA_SENTINEL_PASSWORD_KEY: pulumi.Output.secret(access.sentinel_password)}
                    if access.sentinel_password is not None
                    else {}
                ),
            },
            opts=self._child,
        )
        k8s.apiextensions.CustomResource(
            f"{self._name}-keda-auth",
            api_version=KEDA_API,
            kind="TriggerAuthentication",
            metadata=self._metadata(name, "autoscaler", "workers"),
            spec={
                "secretTargetRef": [
                    *(
                        {"parameter": parameter, "name": secret.metadata.name, "key": parameter}
                        for parameter in (
                            KEDA_USERNAME_KEY,
                            KEDA_PASSWORD_KEY,
                            *(
                                [KEDA_SENTINEL_PASSWORD_KEY]
                                if access.sentinel_password is not None
                                else []
                            ),
                        )
                    ),
                    # With TLS, KEDA verifies the broker against the CA in the TLS Secret.
                    *(
                        [{"parameter": "ca", "name": access.ca_secret_name, "key": "ca.crt"}]
                        if access.ca_secret_name
                        else []
                    ),
                ]
            },
            opts=self._child,
        )
        return name

    def _scaled_object(
        self, resource: str, deployment: str, pool: PoolSettings, auth_name: str
    ) -> None:
        k8s.apiextensions.CustomResource(
            f"{resource}-scaler",
            api_version=KEDA_API,
            kind="ScaledObject",
            metadata=self._metadata(deployment, WORKER, pool.name),
            spec=scaled_object_spec(
                pool,
                deployment,
                self.endpoint.autoscaler,
                auth_name,
                in_flight=self.settings.workers.scale_in.enabled,
            ),
            opts=self._child,
        )

    def _cpu_autoscaler(self, resource: str, deployment: str, pool: PoolSettings) -> None:
        scaling = pool.autoscaling
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{resource}-hpa",
            metadata=self._metadata(deployment, WORKER, pool.name),
            spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                    api_version="apps/v1", kind="Deployment", name=deployment
                ),
                min_replicas=scaling.min_replicas,
                max_replicas=scaling.max_replicas,
                metrics=[
                    k8s.autoscaling.v2.MetricSpecArgs(
                        type="Resource",
                        resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
                            name="cpu",
                            target=k8s.autoscaling.v2.MetricTargetArgs(
                                type="Utilization", average_utilization=scaling.cpu_target_percent
                            ),
                        ),
                    )
                ],
                behavior=scale_down_behavior(scaling),
            ),
            opts=self._child,
        )

    def _beat(self) -> k8s.apps.v1.Deployment:
        """Run at most one scheduler ever: one replica, Recreate (the old pod stops first)."""
        settings = self.settings
        beat = settings.workers.beat
        pool = celery_config.beat_pool(settings)
        name = object_name(settings.name_prefix, BEAT)
        wiring = celery_config.beat_wiring_module(settings, dict(self.endpoint.transport_options))
        config_map = self._wiring_config_map(f"{self._name}-beat", name, BEAT, BEAT, wiring)
        container = hardened_container(
            name=BEAT,
            image=pool.image,
            command=celery_config.beat_command(settings),
            resources=beat.resources,
            env=celery_env(pool, self.endpoint.secret),
            volume_mounts=[wiring_mount(), *self.endpoint.ca_mounts],
            **health_probes(
                beat.liveness_stale_seconds,
                celery_config.heartbeat_seconds(beat.liveness_stale_seconds),
                pool.startup_seconds,
            ),
        )
        return self._deployment(
            f"{self._name}-beat",
            name,
            component=BEAT,
            instance=BEAT,
            container=container,
            config_map=config_map,
            wiring=wiring,
            run_as_user=pool.run_as_user,
            placement=pool.placement,
            grace_period_seconds=30,
            replicas=1,
            strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
        )


def _uses(pool: PoolSettings, engine: str) -> bool:
    return pool.autoscaling.enabled and pool.autoscaling.engine == engine
