"""The Redis broker: credentials, Secrets, config, StatefulSet, Services, network rules, PDB.

Passwords are Pulumi secrets: configured with `pulumi config set --secret`, or generated with
pulumi-random and kept in state so they stay stable across updates. They reach Kubernetes only
as Secrets; URLs that carry them are built here, once, for every client. Inside the pod the
start script hashes them into an ACL file (components/redis_config.py); redis.conf, in a
ConfigMap, holds no secret.

One replica: Celery's Redis transport has no use for replicas (kombu talks to one primary),
so availability comes from a fast restart on the same volume, probes that tolerate a long
AOF load, and a PodDisruptionBudget that stops a drain from taking the broker silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import quote

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import redis_config
from components.naming import broker_client_labels, labels, object_name, selector_labels
from components.pods import hardened_container, hardened_pod_spec
from components.settings import StackSettings

COMPONENT = "redis"
CELERY_USER = "celery"
PROBE_USER = "probe"

# Keys of the client Secret: the names Celery reads from the environment, so a worker can
# take them with envFrom or secretKeyRef without renaming.
BROKER_URL_KEY = "CELERY_BROKER_URL"
RESULT_BACKEND_KEY = "CELERY_RESULT_BACKEND"
CHECK_URL_KEY = "BROKER_CHECK_URL"

# Keys of the server Secret, mounted as files into the broker pod.
CELERY_PASSWORD_KEY = redis_config.CELERY_PASSWORD_FILE
PROBE_PASSWORD_KEY = redis_config.PROBE_PASSWORD_FILE

CONTAINER = "redis"
PORT_NAME = "redis"
DATA_VOLUME = "data"
CONFIG_VOLUME = "config"
USERS_VOLUME = "users"
ACL_VOLUME = "acl"
CONFIG_CHECKSUM_ANNOTATION = "celery-redis/config-sha256"
SECRET_FILE_MODE = 0o440  # owner root, group fsGroup: readable by redis-server, not by others


def redis_url(
    user: str, password: str, host: str, port: int, db: int, scheme: str = "redis"
) -> str:
    """Return a Redis URL, password percent-encoded so any password keeps the URL valid."""
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{db}"


def _name(settings: StackSettings, suffix: str) -> str:
    return object_name(settings.name_prefix, suffix)


def broker_labels(settings: StackSettings) -> dict[str, str]:
    """Labels of every broker object (the pods, the Services, the policies)."""
    return labels(settings, COMPONENT, "broker")


def broker_selector(settings: StackSettings) -> k8s.meta.v1.LabelSelectorArgs:
    """Return the one selector the StatefulSet, Services, NetworkPolicy and PDB share."""
    return k8s.meta.v1.LabelSelectorArgs(
        match_labels=selector_labels(settings, COMPONENT, "broker")
    )


def metadata(settings: StackSettings, name: str) -> k8s.meta.v1.ObjectMetaArgs:
    """Namespaced metadata with an explicit, deterministic name and the broker's labels."""
    return k8s.meta.v1.ObjectMetaArgs(
        name=name, namespace=settings.namespace, labels=broker_labels(settings)
    )


def _exec_probe(command: list[str], period: int, failures: int) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        exec_=k8s.core.v1.ExecActionArgs(command=command),
        period_seconds=period,
        timeout_seconds=5,
        failure_threshold=failures,
    )


def broker_container(settings: StackSettings) -> k8s.core.v1.ContainerArgs:
    """redis-server behind the start script, with its probes and the paths the script reads."""
    broker = settings.broker
    env = {
        redis_config.ENV_CONFIG: f"{redis_config.CONFIG_DIR}/{redis_config.CONFIG_KEY}",
        redis_config.ENV_USERS_DIR: redis_config.USERS_DIR,
        redis_config.ENV_ACL_FILE: f"{redis_config.ACL_DIR}/users.acl",
        redis_config.ENV_DATA_DIR: redis_config.DATA_DIR,
        redis_config.ENV_PORT: str(broker.port),
    }
    mounts = {
        CONFIG_VOLUME: redis_config.CONFIG_DIR,
        USERS_VOLUME: redis_config.USERS_DIR,
        ACL_VOLUME: redis_config.ACL_DIR,
        DATA_VOLUME: redis_config.DATA_DIR,
    }
    return hardened_container(
        name=CONTAINER,
        image=broker.image,
        # sh execs redis-server, so Redis is PID 1 and gets SIGTERM itself.
        command=["sh", "-c", redis_config.start_script(), "redis-start"],
        resources=broker.resources,
        env=[k8s.core.v1.EnvVarArgs(name=key, value=value) for key, value in env.items()],
        volume_mounts=[
            k8s.core.v1.VolumeMountArgs(
                name=volume, mount_path=path, read_only=volume in (CONFIG_VOLUME, USERS_VOLUME)
            )
            for volume, path in mounts.items()
        ],
        ports=[
            k8s.core.v1.ContainerPortArgs(
                name=PORT_NAME, container_port=broker.port, protocol="TCP"
            )
        ],
        # Startup: ready within the time a full volume's AOF takes to load; until then the
        # liveness probe does not run, and after it a LOADING answer still counts as alive.
        startup_probe=_exec_probe(
            redis_config.readiness_command(),
            redis_config.STARTUP_PERIOD_SECONDS,
            redis_config.startup_failure_threshold(settings),
        ),
        liveness_probe=_exec_probe(redis_config.liveness_command(), period=10, failures=3),
        readiness_probe=_exec_probe(redis_config.readiness_command(), period=5, failures=2),
    )


def broker_volumes(settings: StackSettings) -> list[k8s.core.v1.VolumeArgs]:
    """Return config, users Secret, in-memory ACL dir and, without persistence, a data emptyDir."""
    volumes = [
        k8s.core.v1.VolumeArgs(
            name=CONFIG_VOLUME,
            config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=_name(settings, "broker-config")),
        ),
        k8s.core.v1.VolumeArgs(
            name=USERS_VOLUME,
            secret=k8s.core.v1.SecretVolumeSourceArgs(
                secret_name=_name(settings, "broker-users"), default_mode=SECRET_FILE_MODE
            ),
        ),
        # The ACL file holds password hashes: memory-backed, so they never reach the node's disk.
        k8s.core.v1.VolumeArgs(
            name=ACL_VOLUME,
            empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(medium="Memory", size_limit="1Mi"),
        ),
    ]
    if not settings.broker.persistent:
        volumes.append(
            k8s.core.v1.VolumeArgs(
                name=DATA_VOLUME,
                empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                    size_limit=settings.broker.storage.size
                ),
            )
        )
    return volumes


def data_claim_templates(
    settings: StackSettings,
) -> list[k8s.core.v1.PersistentVolumeClaimArgs] | None:
    """Return the data volume claim when persistence is on: the AOF/RDB outlives the pod."""
    storage = settings.broker.storage
    if not settings.broker.persistent:
        return None
    return [
        k8s.core.v1.PersistentVolumeClaimArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(name=DATA_VOLUME, labels=broker_labels(settings)),
            spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                access_modes=["ReadWriteOnce"],
                storage_class_name=storage.storage_class,
                resources=k8s.core.v1.VolumeResourceRequirementsArgs(
                    requests={"storage": storage.size}
                ),
            ),
        )
    ]


def broker_statefulset_spec(settings: StackSettings) -> k8s.apps.v1.StatefulSetSpecArgs:
    """One hardened Redis pod, its volume claim, and a checksum that rolls it on config change."""
    broker = settings.broker
    pod_spec = hardened_pod_spec(
        containers=[broker_container(settings)],
        run_as_user=broker.run_as_user,
        placement=broker.placement,
        # Redis flushes the AOF (or writes the RDB) on SIGTERM; give it the time to finish.
        grace_period_seconds=broker.termination_grace_period_seconds,
        volumes=broker_volumes(settings),
    )
    return k8s.apps.v1.StatefulSetSpecArgs(
        replicas=1,
        service_name=_name(settings, "broker-headless"),
        selector=broker_selector(settings),
        pod_management_policy="OrderedReady",
        update_strategy=k8s.apps.v1.StatefulSetUpdateStrategyArgs(type="RollingUpdate"),
        # Deleting the stack or scaling down must never delete queued tasks with the claim.
        persistent_volume_claim_retention_policy=k8s.apps.v1.StatefulSetPersistentVolumeClaimRetentionPolicyArgs(
            when_deleted="Retain", when_scaled="Retain"
        ),
        template=k8s.core.v1.PodTemplateSpecArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(
                labels=broker_labels(settings),
                annotations={CONFIG_CHECKSUM_ANNOTATION: redis_config.config_checksum(settings)},
            ),
            spec=pod_spec,
        ),
        volume_claim_templates=data_claim_templates(settings),
    )


def service_spec(settings: StackSettings, *, headless: bool) -> k8s.core.v1.ServiceSpecArgs:
    """Return the clients' Service spec, or the StatefulSet's headless one (stable pod DNS)."""
    return k8s.core.v1.ServiceSpecArgs(
        type="ClusterIP",
        cluster_ip="None" if headless else None,
        # The headless name resolves while Redis loads, for debugging; clients use the other.
        publish_not_ready_addresses=True if headless else None,
        selector=selector_labels(settings, COMPONENT, "broker"),
        ports=[
            k8s.core.v1.ServicePortArgs(
                name=PORT_NAME, port=settings.broker.port, target_port=PORT_NAME, protocol="TCP"
            )
        ],
    )


def ingress_rules(
    settings: StackSettings, extra: Sequence[k8s.networking.v1.NetworkPolicyIngressRuleArgs] = ()
) -> list[k8s.networking.v1.NetworkPolicyIngressRuleArgs]:
    """Who may reach the broker: this release's pods labelled as broker clients, Redis port only.

    Hook: the metrics exporter (a later issue) passes its own rule in `extra` (its port, from
    the monitoring namespace) instead of widening this one.
    """
    clients = k8s.networking.v1.NetworkPolicyIngressRuleArgs(
        from_=[
            k8s.networking.v1.NetworkPolicyPeerArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels=broker_client_labels(settings)
                )
            )
        ],
        ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=settings.broker.port, protocol="TCP")],
    )
    return [clients, *extra]


class RedisBroker(pulumi.ComponentResource):
    """The broker a platform engineer names: Redis, its users, storage, probes and network rules."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        secrets: Mapping[str, pulumi.Output[str]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("celery-redis:index:RedisBroker", name, None, opts)
        self.settings = settings
        child = pulumi.ResourceOptions(parent=self)
        namespace = settings.namespace
        broker = settings.broker

        self.service_name = object_name(settings.name_prefix, "broker")
        self.host = f"{self.service_name}.{namespace}.svc"
        self.port = broker.port
        self.persistence = broker.persistence

        celery_password = self._password(
            "broker_password", "broker-celery-password", secrets, child
        )
        probe_password = self._password("probe_password", "broker-probe-password", secrets, child)
        self.celery_password = celery_password
        self.probe_password = probe_password

        self.broker_url = pulumi.Output.secret(
            celery_password.apply(
                lambda p: redis_url(CELERY_USER, p, self.host, self.port, broker.broker_db)
            )
        )
        self.result_backend_url = pulumi.Output.secret(
            celery_password.apply(
                lambda p: redis_url(CELERY_USER, p, self.host, self.port, broker.result_db)
            )
        )
        self.check_url = pulumi.Output.secret(
            probe_password.apply(
                lambda p: redis_url(PROBE_USER, p, self.host, self.port, broker.broker_db)
            )
        )

        self.users_secret = k8s.core.v1.Secret(
            f"{name}-users",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=_name(settings, "broker-users"),
                namespace=namespace,
                labels=labels(settings, COMPONENT, "broker"),
            ),
            type="Opaque",
            string_data={CELERY_PASSWORD_KEY: celery_password, PROBE_PASSWORD_KEY: probe_password},
            opts=child,
        )
        self.client_secret = k8s.core.v1.Secret(
            f"{name}-client",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=_name(settings, "broker-client"),
                namespace=namespace,
                labels=labels(settings, COMPONENT, "broker"),
            ),
            type="Opaque",
            string_data={
                BROKER_URL_KEY: self.broker_url,
                RESULT_BACKEND_KEY: self.result_backend_url,
                CHECK_URL_KEY: self.check_url,
            },
            opts=child,
        )
        self.client_secret_name: pulumi.Output[str] = self.client_secret.metadata.name
        self.users_secret_name: pulumi.Output[str] = self.users_secret.metadata.name
        self.config_map = self._config_map(name, child)
        self.headless_service = self._service(
            f"{name}-headless", "broker-headless", headless=True, opts=child
        )
        self.service = self._service(f"{name}-service", "broker", headless=False, opts=child)
        self.statefulset = k8s.apps.v1.StatefulSet(
            f"{name}-statefulset",
            metadata=metadata(settings, _name(settings, "broker")),
            spec=broker_statefulset_spec(settings),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[self.config_map, self.users_secret, self.headless_service]
            ),
        )
        self.network_policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-network-policy",
            metadata=metadata(settings, _name(settings, "broker")),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=broker_selector(settings),
                policy_types=["Ingress"],
                ingress=ingress_rules(settings),
            ),
            opts=child,
        )
        self.disruption_budget = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-disruption-budget",
            metadata=metadata(settings, _name(settings, "broker")),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                # The only broker pod: a drain stops and says so instead of evicting it.
                max_unavailable=0,
                selector=broker_selector(settings),
                # A broker that is not ready serves nobody; letting the eviction of a broken
                # pod through keeps it from blocking node maintenance forever.
                unhealthy_pod_eviction_policy="AlwaysAllow",
            ),
            opts=child,
        )
        self.ready: list[pulumi.Resource] = [
            self.users_secret,
            self.client_secret,
            self.config_map,
            self.headless_service,
            self.service,
            self.statefulset,
        ]

        self.register_outputs(
            {
                "host": self.host,
                "port": self.port,
                "persistence": self.persistence,
                "client_secret_name": self.client_secret_name,
                "users_secret_name": self.users_secret_name,
            }
        )

    def _config_map(self, name: str, opts: pulumi.ResourceOptions) -> k8s.core.v1.ConfigMap:
        """redis.conf, loaded as-is by redis-server; no secret in it."""
        return k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=metadata(self.settings, _name(self.settings, "broker-config")),
            data={redis_config.CONFIG_KEY: redis_config.redis_conf(self.settings)},
            opts=opts,
        )

    def _service(
        self, resource_name: str, suffix: str, *, headless: bool, opts: pulumi.ResourceOptions
    ) -> k8s.core.v1.Service:
        """One of the two Services in front of the broker pod."""
        return k8s.core.v1.Service(
            resource_name,
            metadata=metadata(self.settings, _name(self.settings, suffix)),
            spec=service_spec(self.settings, headless=headless),
            opts=opts,
        )

    def _password(
        self,
        config_key: str,
        resource_name: str,
        secrets: Mapping[str, pulumi.Output[str]],
        opts: pulumi.ResourceOptions,
    ) -> pulumi.Output[str]:
        """Return the configured secret, or a generated one kept in state (stable on updates)."""
        if config_key in secrets:
            return pulumi.Output.secret(secrets[config_key])
        generated = random.RandomPassword(resource_name, length=32, special=False, opts=opts)
        return pulumi.Output.secret(generated.result)
