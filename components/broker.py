"""The Redis broker: credentials, Secrets, config, StatefulSet, Services, network rules, PDB.

Passwords are Pulumi secrets: configured with `pulumi config set --secret`, or generated once
by the program (components/generated_secret.py) and kept in state so they stay stable across
updates. They reach Kubernetes only as Secrets; URLs that carry them are built here, once, for
every client. Inside the pod the start script hashes them into an ACL file
(components/redis_config.py); redis.conf, in a ConfigMap, holds no secret.

Credentials and certificates change without a restart: a reloader sidecar applies a changed
users Secret (password rotation, with `broker_password_previous`) or a renewed TLS Secret
(cert-manager) to the running Redis, and worker pods roll when the client Secret changes
(`client_revision`). With TLS on, Redis serves TLS only and every client URL is `rediss://`,
verifying the server against the CA that `client_ca_volumes` mounts into client pods.

One replica: Celery's Redis transport has no use for replicas (kombu talks to one primary),
so availability comes from a fast restart on the same volume, probes that tolerate a long
AOF load, and a PodDisruptionBudget that stops a drain from taking the broker silently.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlencode

import pulumi
import pulumi_kubernetes as k8s

from components import celery_config, metrics, redis_config, sentinel_config
from components.endpoint import (
    BROKER_URL_KEY,
    CHECK_URL_KEY,
    RESULT_BACKEND_KEY,
    SCALE_IN_URL_KEY,
    SENTINEL_PASSWORD_KEY,
    AutoscalerAccess,
    BrokerEndpoint,
    ClientSecret,
)
from components.generated_secret import GeneratedPassword
from components.naming import broker_client_labels, labels, object_name, selector_labels
from components.pods import (
    exec_probe,
    hardened_container,
    hardened_pod_spec,
    namespace_peer,
    one_per_node,
)
from components.settings import StackSettings

COMPONENT = "redis"
CELERY_USER = redis_config.CELERY_USER
PROBE_USER = redis_config.PROBE_USER
CHECK_USER = redis_config.CHECK_USER
KEDA_USER = redis_config.KEDA_USER
EXPORTER_USER = redis_config.EXPORTER_USER
SCALE_IN_USER = redis_config.SCALE_IN_USER

# Keys of the server Secret, mounted as files into the broker pod.
CELERY_PASSWORD_KEY = redis_config.CELERY_PASSWORD_FILE
CELERY_PREVIOUS_PASSWORD_KEY = redis_config.CELERY_PREVIOUS_PASSWORD_FILE
PROBE_PASSWORD_KEY = redis_config.PROBE_PASSWORD_FILE
CHECK_PASSWORD_KEY = redis_config.CHECK_PASSWORD_FILE
KEDA_PASSWORD_KEY = redis_config.KEDA_PASSWORD_FILE
EXPORTER_PASSWORD_KEY = redis_config.EXPORTER_PASSWORD_FILE
SCALE_IN_PASSWORD_KEY = redis_config.SCALE_IN_PASSWORD_FILE
PREVIOUS_PASSWORD_CONFIG = "broker_password_previous"  # noqa: S105 - a config key's name

CONTAINER = "redis"
RELOADER_CONTAINER = "reloader"
PORT_NAME = "redis"
DATA_VOLUME = "data"
CONFIG_VOLUME = "config"
USERS_VOLUME = "users"
ACL_VOLUME = "acl"
TLS_VOLUME = "tls"
CONFIG_CHECKSUM_ANNOTATION = "celery-redis/config-sha256"
SECRET_FILE_MODE = redis_config.SECRET_FILE_MODE


def replicated(settings: StackSettings) -> bool:
    """Whether the broker is Redis with replicas behind Sentinels (topology sentinel)."""
    return settings.broker.topology == "sentinel"


def broker_replicas(settings: StackSettings) -> int:
    """Redis pods of the StatefulSet: one, or the Sentinel topology's N."""
    return settings.broker.sentinel.replicas if replicated(settings) else 1


def rolled_out(settings: StackSettings) -> str:
    """Return the StatefulSet's `pulumi.com/waitFor`: every broker pod of the new revision ready.

    The provider's own StatefulSet await (v4.25) accepts the first status it sees after an
    update, which still describes the old revision (its observedGeneration is stale): `up` went
    on to run the check Job against a broker that was only starting to roll. JSONPath
    conditions wait for a current observedGeneration; as many updated, ready replicas as the
    StatefulSet runs is the rolled broker.
    """
    n = broker_replicas(settings)
    return f'["jsonpath={{.status.updatedReplicas}}={n}", "jsonpath={{.status.readyReplicas}}={n}"]'


CERT_MANAGER_API = "cert-manager.io/v1"

CLIENT_CA_VOLUME = "broker-ca"
CLIENT_CA_DIR = "/etc/celery-redis/broker-ca"
"""Where client pods (workers, beat, the check Job) find the CA that signed the broker."""
CLIENT_CA_FILE = f"{CLIENT_CA_DIR}/{redis_config.TLS_CA_KEY}"
"""The CA file client URLs name in `ssl_ca_certs` (only `ca.crt` is projected, never the key)."""


def redis_url(
    user: str,
    password: str,
    host: str,
    port: int,
    db: int,
    scheme: str = "redis",
    query: str = "",
) -> str:
    """Return a Redis URL, password percent-encoded so any password keeps the URL valid."""
    url = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{db}"
    return f"{url}?{query}" if query else url


def client_tls_query() -> str:
    """Query of a `rediss://` client URL: verify the server against the mounted CA.

    kombu (kombu.utils.url.parse_url: every `ssl_*` key), Celery's Redis result backend
    (RedisBackend._params_from_url: ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile)
    and redis-py's from_url (brokercheck) all read these two. Without ssl_cert_reqs kombu
    falls back to CERT_NONE and Celery's backend refuses the URL; hostnames are checked too
    (redis-py's default), against the Service names the certificate carries.
    """
    return urlencode({"ssl_cert_reqs": "required", "ssl_ca_certs": CLIENT_CA_FILE}, safe="/")


def sentinel_url(settings: StackSettings, user: str, password: str, db: int) -> str:
    """Return a kombu/Celery Sentinel URL: one `sentinel://` per Sentinel, joined by `;`.

    The user and password are the Redis user's (kombu and Celery's backend pass them to the
    master Sentinel names); Sentinel's own password travels in transport options, never here.
    With TLS each part carries the CA query, as the `rediss://` URLs do.
    """
    query = f"?{client_tls_query()}" if settings.tls.enabled else ""
    return ";".join(
        f"sentinel://{quote(user, safe='')}:{quote(password, safe='')}@{address}/{db}{query}"
        for address in sentinel_config.sentinel_addresses(settings)
    )


def client_url(settings: StackSettings, user: str, password: str, host: str, db: int) -> str:
    """Return the URL clients use: `redis://`, or `rediss://` verifying the CA when TLS is on.

    A replicated broker's clients find the master through Sentinel (`sentinel_url`).
    """
    if replicated(settings):
        return sentinel_url(settings, user, password, db)
    port = settings.broker.port
    if not settings.tls.enabled:
        return redis_url(user, password, host, port, db)
    return redis_url(user, password, host, port, db, scheme="rediss", query=client_tls_query())


def client_revision(key: str, *values: str) -> str:
    """Return a short keyed hash (HMAC-SHA256) of the client Secret's values, for pods.

    The annotation must change whenever a password does, so Deployments roll; keyed with a
    secret that only Pulumi state holds, it cannot be used to test guesses of the password
    by anyone who can read pod specs (a plain hash of a weak password could be).
    """
    digest = hmac.new(key.encode(), "\n".join(values).encode(), hashlib.sha256)
    return digest.hexdigest()[:16]


def _name(settings: StackSettings, suffix: str) -> str:
    return object_name(settings.name_prefix, suffix)


def tls_secret_name(settings: StackSettings) -> str | None:
    """Name the Secret holding the broker's certificate: the user's, cert-manager's, or none."""
    tls = settings.tls
    if not tls.enabled:
        return None
    return tls.secret_name or _name(settings, "broker-tls")


def uses_cert_manager(settings: StackSettings) -> bool:
    """Whether this stack asks cert-manager for the broker's certificate."""
    return settings.tls.enabled and settings.tls.cert_manager_issuer is not None


def certificate_dns_names(settings: StackSettings) -> list[str]:
    """Every name a client may use: both Services and the pod, short to fully qualified.

    `localhost` is for the clients inside the broker pod (the metrics exporter verifies it).
    """
    namespace = settings.namespace
    headless = _name(settings, "broker-headless")
    pods = [f"{_name(settings, 'broker')}-{k}.{headless}" for k in range(broker_replicas(settings))]
    hosts = [_name(settings, "broker"), headless, *pods]
    suffixes = (
        "",
        f".{namespace}",
        f".{namespace}.svc",
        f".{namespace}.svc.{settings.tls.cluster_domain}",
    )
    return [f"{host}{suffix}" for host in hosts for suffix in suffixes] + ["localhost"]


def certificate_spec(settings: StackSettings) -> dict[str, object]:
    """cert-manager Certificate spec for the broker's serving certificate.

    cert-manager renews it at 2/3 of its lifetime (its default renewBefore) into the same
    Secret; the reloader sidecar makes Redis serve the renewed pair without a restart.
    """
    tls = settings.tls
    return {
        "secretName": tls_secret_name(settings),
        "secretTemplate": {"labels": broker_labels(settings)},
        "duration": f"{tls.certificate_duration_hours}h",
        "dnsNames": certificate_dns_names(settings),
        # ECDSA P-256: small and fast handshakes; a new key at every renewal.
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        "usages": ["server auth", "digital signature"],
        "issuerRef": {
            "name": tls.cert_manager_issuer,
            "kind": tls.cert_manager_issuer_kind,
            "group": "cert-manager.io",
        },
    }


def client_ca_volumes(settings: StackSettings) -> list[k8s.core.v1.VolumeArgs]:
    """Return the CA volume a client pod needs to verify the broker: only `ca.crt`; [] without TLS.

    Add it, with `client_ca_mounts`, to every pod that gets the client Secret's URLs.
    """
    secret_name = tls_secret_name(settings)
    if secret_name is None:
        return []
    ca = redis_config.TLS_CA_KEY
    return [
        k8s.core.v1.VolumeArgs(
            name=CLIENT_CA_VOLUME,
            secret=k8s.core.v1.SecretVolumeSourceArgs(
                secret_name=secret_name,
                # Projecting one key keeps the private key out of client pods.
                items=[k8s.core.v1.KeyToPathArgs(key=ca, path=ca)],
                default_mode=0o444,  # a CA certificate is public
            ),
        )
    ]


def client_ca_mounts(settings: StackSettings) -> list[k8s.core.v1.VolumeMountArgs]:
    """Where the client container sees the CA (CLIENT_CA_FILE); none without TLS."""
    if not settings.tls.enabled:
        return []
    return [
        k8s.core.v1.VolumeMountArgs(name=CLIENT_CA_VOLUME, mount_path=CLIENT_CA_DIR, read_only=True)
    ]


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


def pod_env(settings: StackSettings) -> dict[str, str]:
    """Paths and settings the start script, the reloader and the probes read from the env.

    The scripts stay as rendered while a test points the paths and port elsewhere.
    """
    broker = settings.broker
    env = {
        redis_config.ENV_CONFIG: f"{redis_config.CONFIG_DIR}/{redis_config.CONFIG_KEY}",
        redis_config.ENV_USERS_DIR: redis_config.USERS_DIR,
        redis_config.ENV_ACL_FILE: f"{redis_config.ACL_DIR}/users.acl",
        redis_config.ENV_DATA_DIR: redis_config.DATA_DIR,
        redis_config.ENV_PORT: str(broker.port),
        redis_config.ENV_RELOAD_SECONDS: str(broker.reload_interval_seconds),
    }
    if settings.tls.enabled:
        env[redis_config.ENV_TLS_DIR] = redis_config.TLS_DIR
    if replicated(settings):
        env[sentinel_config.ENV_SENTINEL_PORT] = str(broker.sentinel.port)
        env[sentinel_config.ENV_SENTINEL_TEMPLATE] = sentinel_config.TEMPLATE_PATH
    return env


def pod_name_env() -> k8s.core.v1.EnvVarArgs:
    """Return the pod name from the downward API: a replicated pod's hostname starts with it."""
    return k8s.core.v1.EnvVarArgs(
        name=sentinel_config.ENV_POD_NAME,
        value_from=k8s.core.v1.EnvVarSourceArgs(
            field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path="metadata.name")
        ),
    )


POD_MOUNTS = {
    CONFIG_VOLUME: redis_config.CONFIG_DIR,
    USERS_VOLUME: redis_config.USERS_DIR,
    ACL_VOLUME: redis_config.ACL_DIR,
    DATA_VOLUME: redis_config.DATA_DIR,
    TLS_VOLUME: redis_config.TLS_DIR,
}
READ_ONLY_VOLUMES = (CONFIG_VOLUME, USERS_VOLUME, TLS_VOLUME)


def _env(settings: StackSettings, *names: str) -> list[k8s.core.v1.EnvVarArgs]:
    """Return the named entries of `pod_env` (those that apply to this stack)."""
    env = pod_env(settings)
    return [k8s.core.v1.EnvVarArgs(name=name, value=env[name]) for name in names if name in env]


def _mounts(settings: StackSettings, *volumes: str) -> list[k8s.core.v1.VolumeMountArgs]:
    """Mounts of the named pod volumes (the TLS one only with TLS on); Secrets read-only."""
    return [
        k8s.core.v1.VolumeMountArgs(
            name=volume, mount_path=POD_MOUNTS[volume], read_only=volume in READ_ONLY_VOLUMES
        )
        for volume in volumes
        if volume != TLS_VOLUME or settings.tls.enabled
    ]


def broker_container(settings: StackSettings) -> k8s.core.v1.ContainerArgs:
    """redis-server behind the start script, with its probes and the paths the script reads.

    Replicated (topology sentinel): the start script asks Sentinels for the master first, a
    replica is ready once its link is up, and a master hands over in its preStop.
    """
    broker = settings.broker
    tls = settings.tls.enabled
    sentinel = replicated(settings)
    readiness = redis_config.readiness_command(
        tls=tls, then=sentinel_config.redis_readiness_lines() if sentinel else ()
    )
    return hardened_container(
        name=CONTAINER,
        image=broker.image,
        # sh execs redis-server, so Redis is PID 1 and gets SIGTERM itself.
        command=[
            "sh",
            "-c",
            redis_config.start_script(
                tls=tls,
                queues=metrics.configured_queues(settings),
                engine=broker.engine,
                replication=sentinel_config.replication_prelude(settings) if sentinel else None,
            ),
            "redis-start",
        ],
        resources=broker.resources,
        env=[
            *_env(
                settings,
                redis_config.ENV_CONFIG,
                redis_config.ENV_USERS_DIR,
                redis_config.ENV_ACL_FILE,
                redis_config.ENV_DATA_DIR,
                redis_config.ENV_PORT,
                redis_config.ENV_TLS_DIR,
                sentinel_config.ENV_SENTINEL_PORT,
            ),
            *([pod_name_env()] if sentinel else []),
        ],
        volume_mounts=_mounts(
            settings, CONFIG_VOLUME, USERS_VOLUME, ACL_VOLUME, DATA_VOLUME, TLS_VOLUME
        ),
        ports=[
            k8s.core.v1.ContainerPortArgs(
                name=PORT_NAME, container_port=broker.port, protocol="TCP"
            )
        ],
        # Startup: ready within the time a full volume's AOF takes to load; until then the
        # liveness probe does not run, and after it a LOADING answer still counts as alive.
        startup_probe=exec_probe(
            readiness,
            redis_config.STARTUP_PERIOD_SECONDS,
            redis_config.startup_failure_threshold(settings),
        ),
        liveness_probe=exec_probe(redis_config.liveness_command(tls=tls), period=10, failures=3),
        readiness_probe=exec_probe(readiness, period=5, failures=2),
        lifecycle=(
            k8s.core.v1.LifecycleArgs(
                pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                    exec_=k8s.core.v1.ExecActionArgs(
                        command=sentinel_config.handover_command(settings)
                    )
                )
            )
            if sentinel
            else None
        ),
    )


def sentinel_container(settings: StackSettings) -> k8s.core.v1.ContainerArgs:
    """Sentinel beside Redis, from the same image: it watches every Redis and votes.

    Its state (sentinel.conf as it rewrites it) lives on the pod's memory-backed run volume;
    see components/sentinel_config.py for why a new pod never trusts an old file.
    """
    broker = settings.broker
    return hardened_container(
        name=sentinel_config.CONTAINER,
        image=broker.image,
        command=["sh", "-c", sentinel_config.sentinel_start_script(settings), "sentinel-start"],
        resources=broker.sentinel.resources,
        env=[
            *_env(
                settings,
                redis_config.ENV_USERS_DIR,
                redis_config.ENV_ACL_FILE,
                redis_config.ENV_PORT,
                redis_config.ENV_TLS_DIR,
                sentinel_config.ENV_SENTINEL_PORT,
                sentinel_config.ENV_SENTINEL_TEMPLATE,
            ),
            pod_name_env(),
        ],
        volume_mounts=_mounts(settings, CONFIG_VOLUME, USERS_VOLUME, ACL_VOLUME, TLS_VOLUME),
        ports=[
            k8s.core.v1.ContainerPortArgs(
                name=sentinel_config.PORT_NAME,
                container_port=broker.sentinel.port,
                protocol="TCP",
            )
        ],
        liveness_probe=exec_probe(
            sentinel_config.sentinel_liveness_command(settings), period=10, failures=3
        ),
        readiness_probe=exec_probe(
            sentinel_config.sentinel_readiness_command(settings), period=5, failures=2
        ),
    )


def reloader_container(settings: StackSettings) -> k8s.core.v1.ContainerArgs:
    """Return the sidecar that applies changed users and TLS Secrets and kills runaway scripts.

    Same image as Redis (sh, sha256sum, redis-cli); it reaches Redis on loopback as the
    pod-local `reloader` user whose password the start script made. A stuck loop fails its
    own liveness probe and restarts alone: Redis keeps serving meanwhile.
    """
    broker = settings.broker
    return hardened_container(
        name=RELOADER_CONTAINER,
        image=broker.image,
        command=[
            "sh",
            "-c",
            redis_config.reloader_script(
                tls=settings.tls.enabled,
                queues=metrics.configured_queues(settings),
                engine=broker.engine,
                replicated=replicated(settings),
                background=(
                    sentinel_config.reloader_background(settings) if replicated(settings) else ""
                ),
            ),
            "reloader",
        ],
        resources=broker.reloader_resources,
        env=_env(
            settings,
            redis_config.ENV_USERS_DIR,
            redis_config.ENV_ACL_FILE,
            redis_config.ENV_PORT,
            redis_config.ENV_TLS_DIR,
            redis_config.ENV_RELOAD_SECONDS,
        ),
        volume_mounts=_mounts(settings, USERS_VOLUME, ACL_VOLUME, TLS_VOLUME),
        liveness_probe=exec_probe(
            redis_config.reloader_liveness_command(settings), period=30, failures=2
        ),
        readiness_probe=exec_probe(
            redis_config.reloader_readiness_command(), period=10, failures=3
        ),
    )


def _secret_volume(name: str, secret_name: str) -> k8s.core.v1.VolumeArgs:
    return k8s.core.v1.VolumeArgs(
        name=name,
        secret=k8s.core.v1.SecretVolumeSourceArgs(
            secret_name=secret_name, default_mode=SECRET_FILE_MODE
        ),
    )


def broker_volumes(settings: StackSettings) -> list[k8s.core.v1.VolumeArgs]:
    """Return config, users Secret, in-memory ACL dir, TLS Secret and, if ephemeral, data."""
    volumes = [
        k8s.core.v1.VolumeArgs(
            name=CONFIG_VOLUME,
            config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=_name(settings, "broker-config")),
        ),
        # Mounted whole (no subPath): the kubelet then updates the files when the Secret changes.
        _secret_volume(USERS_VOLUME, _name(settings, "broker-users")),
        # Password hashes and the reloader's password: memory-backed, never on the node's disk.
        k8s.core.v1.VolumeArgs(
            name=ACL_VOLUME,
            empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(medium="Memory", size_limit="1Mi"),
        ),
    ]
    secret_name = tls_secret_name(settings)
    if secret_name is not None:
        volumes.append(_secret_volume(TLS_VOLUME, secret_name))
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


def exporter(settings: StackSettings) -> list[k8s.core.v1.ContainerArgs]:
    """Build the redis_exporter sidecar (opt-in), verifying a TLS broker with the client CA file."""
    if not settings.metrics.exporter_enabled:
        return []
    container = metrics.exporter_container(
        settings, tls_ca_file=CLIENT_CA_FILE if settings.tls.enabled else None
    )
    extra_mounts = client_ca_mounts(settings)
    if extra_mounts:
        container.volume_mounts = [*container.volume_mounts, *extra_mounts]
    return [container]


def exporter_pod_volumes(settings: StackSettings) -> list[k8s.core.v1.VolumeArgs]:
    """Return the sidecar's volumes: its password map, its script, and (with TLS) the CA only."""
    if not settings.metrics.exporter_enabled:
        return []
    return [
        *metrics.exporter_volumes(
            _name(settings, "broker-users"), _name(settings, "broker-exporter-script")
        ),
        *client_ca_volumes(settings),
    ]


def broker_statefulset_spec(settings: StackSettings) -> k8s.apps.v1.StatefulSetSpecArgs:
    """One hardened Redis pod, its volume claim, and a checksum that rolls it on config change."""
    broker = settings.broker
    sentinel = replicated(settings)
    pod_spec = hardened_pod_spec(
        # Redis first: tools that pick "the" container of the pod mean redis-server.
        containers=[
            broker_container(settings),
            *([sentinel_container(settings)] if sentinel else []),
            reloader_container(settings),
            *exporter(settings),
        ],
        run_as_user=broker.run_as_user,
        placement=broker.placement,
        # Redis flushes the AOF (or writes the RDB) on SIGTERM; give it the time to finish.
        grace_period_seconds=broker.termination_grace_period_seconds,
        volumes=[*broker_volumes(settings), *exporter_pod_volumes(settings)],
        affinity=(
            one_per_node(
                selector_labels(settings, COMPONENT, "broker"),
                required=broker.sentinel.spread == "required",
            )
            if sentinel
            else None
        ),
    )
    return k8s.apps.v1.StatefulSetSpecArgs(
        replicas=broker_replicas(settings),
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


def service_ports(settings: StackSettings, *, headless: bool) -> list[k8s.core.v1.ServicePortArgs]:
    """Ports of a broker Service: Redis; behind Sentinel, the clients' Service is Sentinel's.

    A replicated broker's Service in front of every pod would hand a client a replica, so it
    serves the Sentinel port only (any Sentinel names the master); the headless one, whose
    per-pod names Redis and Sentinel announce, has both.
    """
    redis = k8s.core.v1.ServicePortArgs(
        name=PORT_NAME, port=settings.broker.port, target_port=PORT_NAME, protocol="TCP"
    )
    if not replicated(settings):
        return [redis]
    sentinel = k8s.core.v1.ServicePortArgs(
        name=sentinel_config.PORT_NAME,
        port=settings.broker.sentinel.port,
        target_port=sentinel_config.PORT_NAME,
        protocol="TCP",
    )
    return [redis, sentinel] if headless else [sentinel]


def service_spec(settings: StackSettings, *, headless: bool) -> k8s.core.v1.ServiceSpecArgs:
    """Return the clients' Service spec, or the StatefulSet's headless one (stable pod DNS)."""
    return k8s.core.v1.ServiceSpecArgs(
        type="ClusterIP",
        cluster_ip="None" if headless else None,
        # The headless name resolves while Redis loads, for debugging; clients use the other.
        publish_not_ready_addresses=True if headless else None,
        selector=selector_labels(settings, COMPONENT, "broker"),
        ports=service_ports(settings, headless=headless),
    )


def _port_rule(
    ports: int | Sequence[int], peer: k8s.networking.v1.NetworkPolicyPeerArgs
) -> k8s.networking.v1.NetworkPolicyIngressRuleArgs:
    """Admit `peer` to TCP `ports` of the broker pods."""
    return k8s.networking.v1.NetworkPolicyIngressRuleArgs(
        from_=[peer],
        ports=[
            k8s.networking.v1.NetworkPolicyPortArgs(port=port, protocol="TCP")
            for port in ([ports] if isinstance(ports, int) else ports)
        ],
    )


def ingress_rules(
    settings: StackSettings,
    client_peers: Sequence[k8s.networking.v1.NetworkPolicyPeerArgs] = (),
) -> list[k8s.networking.v1.NetworkPolicyIngressRuleArgs]:
    """Who may reach the broker: this release's client pods, peers its clients name, Prometheus.

    Client pods: pod and namespace selector in one peer (both must match), so only pods in the
    stack's own namespace count, however a pod elsewhere is labelled. Whoever may create pods
    there can label one as a client, and could as well mount the broker's Secrets: the label
    marks intent, the passwords are the boundary (README: "Who reaches the broker").

    `client_peers` are other clients that the components using them name (KEDA's operator, by
    the worker pools): each gets its own rule on the Redis port. The exporter serves numbers
    only, but they tell queue names and backlogs: only the namespace Prometheus runs in
    (`metrics.monitoring_namespace`) may scrape them.
    """
    port: int | list[int] = settings.broker.port
    if replicated(settings):
        # Clients ask Sentinel, then talk to the master; the pods replicate and gossip.
        port = [settings.broker.port, settings.broker.sentinel.port]
    clients = _port_rule(
        port,
        k8s.networking.v1.NetworkPolicyPeerArgs(
            namespace_selector=namespace_peer(settings.namespace),
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=broker_client_labels(settings)),
        ),
    )
    rules = [clients, *(_port_rule(port, peer) for peer in client_peers)]
    if replicated(settings):
        rules.append(
            _port_rule(
                port,
                k8s.networking.v1.NetworkPolicyPeerArgs(
                    namespace_selector=namespace_peer(settings.namespace),
                    pod_selector=broker_selector(settings),
                ),
            )
        )
    if settings.metrics.exporter_enabled:
        rules.append(
            _port_rule(
                settings.metrics.exporter_port,
                k8s.networking.v1.NetworkPolicyPeerArgs(
                    namespace_selector=namespace_peer(settings.metrics.monitoring_namespace)
                ),
            )
        )
    return rules


def client_transport_options(settings: StackSettings) -> dict[str, object]:
    """Transport options a Celery client of this broker sets.

    A standalone broker needs no more than the timeouts and the visibility timeout every
    Redis client of the stack shares (celery_config.broker_transport_options). Behind
    Sentinel, kombu also needs the master's name, and `sentinel_kwargs` for talking to
    Sentinel itself: TLS verification here, its password added at start from the client
    Secret by the wiring module (never rendered).
    """
    options = celery_config.broker_transport_options(settings)
    if not replicated(settings):
        return options
    tls = (
        {"ssl": True, "ssl_cert_reqs": "required", "ssl_ca_certs": CLIENT_CA_FILE}
        if settings.tls.enabled
        else {}
    )
    # redis-py's Sentinel takes no timeout from the connection options once sentinel_kwargs is
    # given: without these, asking the Sentinel of a lost node waits out the kernel's connect
    # timeout (about two minutes) at every reconnect, and kombu builds a new Sentinel client
    # (Sentinels in URL order, the lost one maybe first) for every new connection pool.
    timeouts = {
        "socket_timeout": celery_config.SENTINEL_SOCKET_TIMEOUT,
        "socket_connect_timeout": celery_config.SENTINEL_SOCKET_TIMEOUT,
    }
    return {
        **options,
        # Until Sentinels promote a replica they name the lost master: each connection
        # attempt to it costs this, and the next attempt may find the new one.
        "socket_connect_timeout": celery_config.SENTINEL_MASTER_CONNECT_TIMEOUT,
        "master_name": settings.broker.sentinel.master_name,
        "sentinel_kwargs": {**timeouts, **tls},
    }


def autoscaler_access(
    settings: StackSettings,
    address: str,
    password: pulumi.Output[str],
    sentinel_password: pulumi.Output[str] | None = None,
) -> AutoscalerAccess:
    """How KEDA's `redis` scaler reads list lengths from this broker, as the keda user.

    A TLS-only broker: KEDA connects with TLS, verifying the CA from the TriggerAuthentication
    (`ca`); never both `enableTLS` and the `tls` auth parameter.
    """
    tls = settings.tls.enabled
    if replicated(settings):
        # KEDA's redis-sentinel scaler asks these Sentinels for the master, then reads there.
        return AutoscalerAccess(
            trigger_type="redis-sentinel",
            where={
                "addresses": ", ".join(sentinel_config.sentinel_addresses(settings)),
                "sentinelMaster": settings.broker.sentinel.master_name,
            },
            how={
                "databaseIndex": str(settings.broker.broker_db),
                **({"enableTLS": "true"} if tls else {}),
            },
            username=KEDA_USER,
            password=password,
            ca_secret_name=tls_secret_name(settings) if tls else None,
            sentinel_password=sentinel_password,
        )
    return AutoscalerAccess(
        trigger_type="redis",
        where={"address": address},
        how={
            "databaseIndex": str(settings.broker.broker_db),
            **({"enableTLS": "true"} if tls else {}),
        },
        username=KEDA_USER,
        password=password,
        ca_secret_name=tls_secret_name(settings) if tls else None,
    )


class RedisBroker(pulumi.ComponentResource):
    """The broker a platform engineer names: Redis, its users, storage, probes and network rules."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        secrets: Mapping[str, pulumi.Output[str]],
        opts: pulumi.ResourceOptions | None = None,
        *,
        client_peers: Sequence[k8s.networking.v1.NetworkPolicyPeerArgs] = (),
    ) -> None:
        """Create the broker; `client_peers` are clients outside this namespace (KEDA).

        Its clients read `self.endpoint` only; `self.alert_groups` are its Prometheus rules,
        for the stack's PrometheusRule.
        """
        super().__init__("celery-redis:index:RedisBroker", name, None, opts)
        self.settings = settings
        child = pulumi.ResourceOptions(parent=self)
        namespace = settings.namespace
        broker = settings.broker

        sentinel = replicated(settings)
        self.service_name = object_name(settings.name_prefix, "broker")
        self.host = f"{self.service_name}.{namespace}.svc"
        # The port the Service serves: Redis, or behind Sentinel the Sentinels' (service_ports).
        self.port = broker.sentinel.port if sentinel else broker.port
        self.persistence = broker.persistence

        celery_password = self._password(
            "broker_password", "broker-celery-password", secrets, child
        )
        # One generated password per reader: each reaches only the client that needs it (the
        # kubelet's probes, the check, KEDA, the exporter), so none can pass for another.
        probe_password = self._password("probe_password", "broker-probe-password", secrets, child)
        check_password = self._password("check_password", "broker-check-password", secrets, child)
        keda_password = self._password("keda_password", "broker-keda-password", secrets, child)
        exporter_password = self._password(
            "exporter_password", "broker-exporter-password", secrets, child
        )
        # Behind Sentinel: the replicas' user, the Sentinels' user on Redis, and Sentinel's
        # own password (clients need that one to ask), each generated and kept in state.
        replication_passwords = (
            {
                key: pulumi.Output.secret(GeneratedPassword(resource, length=32, opts=child).result)
                for key, resource in (
                    (redis_config.REPLICATOR_PASSWORD_FILE, "broker-replicator-password"),
                    (redis_config.SENTINEL_USER_PASSWORD_FILE, "broker-sentinel-user-password"),
                    (redis_config.SENTINEL_PASSWORD_FILE, "broker-sentinel-password"),
                )
            }
            if sentinel
            else {}
        )
        sentinel_password = replication_passwords.get(redis_config.SENTINEL_PASSWORD_FILE)
        self.sentinel_password = sentinel_password  # a secret, exported for `check --stack`
        scale_in_password = self._password(
            "scale_in_password", "broker-scalein-password", secrets, child
        )

        self.broker_url = self._client_url(CELERY_USER, celery_password, broker.broker_db)
        self.result_backend_url = self._client_url(CELERY_USER, celery_password, broker.result_db)
        self.check_url = self._client_url(CHECK_USER, check_password, broker.broker_db)
        self.scale_in_url = self._client_url(SCALE_IN_USER, scale_in_password, broker.broker_db)

        users = {
            CELERY_PASSWORD_KEY: celery_password,
            PROBE_PASSWORD_KEY: probe_password,
            CHECK_PASSWORD_KEY: check_password,
            KEDA_PASSWORD_KEY: keda_password,
            EXPORTER_PASSWORD_KEY: exporter_password,
            **replication_passwords,
            SCALE_IN_PASSWORD_KEY: scale_in_password,
        }
        if settings.metrics.exporter_enabled:
            # redis_exporter reads its password from a JSON map keyed by address.
            users[metrics.PASSWORD_MAP_KEY] = metrics.exporter_password_map(
                settings, exporter_password
            )
        if PREVIOUS_PASSWORD_CONFIG in secrets:
            # A rotation in progress: the celery user accepts the old password as well.
            users[CELERY_PREVIOUS_PASSWORD_KEY] = pulumi.Output.secret(
                secrets[PREVIOUS_PASSWORD_CONFIG]
            )
        self.users_secret = self._secret(f"{name}-users", "broker-users", users, child)
        self.client_secret = self._secret(
            f"{name}-client",
            "broker-client",
            {
                BROKER_URL_KEY: self.broker_url,
                RESULT_BACKEND_KEY: self.result_backend_url,
                CHECK_URL_KEY: self.check_url,
                **({SENTINEL_PASSWORD_KEY: sentinel_password} if sentinel_password else {}),
                SCALE_IN_URL_KEY: self.scale_in_url,
            },
            child,
        )
        self.client_revision = self._client_revision(child)
        self.tls_secret_name = tls_secret_name(settings)
        self.certificate = self._certificate(name, child) if uses_cert_manager(settings) else None
        self.client_secret_name: pulumi.Output[str] = self.client_secret.metadata.name
        self.users_secret_name: pulumi.Output[str] = self.users_secret.metadata.name
        self.config_map = self._config_map(name, child)
        self.headless_service = self._service(
            f"{name}-headless", "broker-headless", headless=True, opts=child
        )
        self.service = self._service(f"{name}-service", "broker", headless=False, opts=child)
        self.statefulset = k8s.apps.v1.StatefulSet(
            f"{name}-statefulset",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=_name(settings, "broker"),
                namespace=settings.namespace,
                labels=broker_labels(settings),
                annotations={"pulumi.com/waitFor": rolled_out(settings)},
            ),
            spec=broker_statefulset_spec(settings),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[
                    self.config_map,
                    self.users_secret,
                    self.headless_service,
                    *([self.certificate] if self.certificate else []),
                ],
            ),
        )
        self.network_policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-network-policy",
            metadata=metadata(settings, _name(settings, "broker")),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=broker_selector(settings),
                policy_types=["Ingress"],
                ingress=ingress_rules(settings, client_peers),
            ),
            opts=child,
        )
        self.disruption_budget = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-disruption-budget",
            metadata=metadata(settings, _name(settings, "broker")),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                # The only broker pod: a drain stops and says so instead of evicting it.
                # Behind Sentinel, one pod at a time: a master hands over in its preStop.
                max_unavailable=1 if sentinel else 0,
                selector=broker_selector(settings),
                # A broker that is not ready serves nobody; letting the eviction of a broken
                # pod through keeps it from blocking node maintenance forever.
                unhealthy_pod_eviction_policy="AlwaysAllow",
            ),
            opts=child,
        )
        self.metrics_objects = self._metrics(name, child)
        self.alert_groups = metrics.broker_alert_groups(settings)
        ready: list[pulumi.Resource] = [
            *([self.certificate] if self.certificate else []),
            self.users_secret,
            self.client_secret,
            self.config_map,
            self.headless_service,
            self.service,
            self.statefulset,
        ]
        self.endpoint = BrokerEndpoint(
            scheme="sentinel" if sentinel else "rediss" if settings.tls.enabled else "redis",
            hosts=(
                tuple(sentinel_config.sentinel_addresses(settings))
                if sentinel
                else (f"{self.host}:{self.port}",)
            ),
            secret=ClientSecret(
                name=self.client_secret_name,
                sentinel_password_key=SENTINEL_PASSWORD_KEY if sentinel else None,
            ),
            transport_options=client_transport_options(settings),
            ca_volumes=tuple(client_ca_volumes(settings)),
            ca_mounts=tuple(client_ca_mounts(settings)),
            revision=self.client_revision,
            autoscaler=autoscaler_access(
                settings, f"{self.host}:{self.port}", keda_password, sentinel_password
            ),
            client_labels=broker_client_labels(settings),
            ready=tuple(ready),
        )

        self.register_outputs(
            {
                "host": self.host,
                "port": self.port,
                "persistence": self.persistence,
                "client_secret_name": self.client_secret_name,
                "users_secret_name": self.users_secret_name,
                "tls_secret_name": self.tls_secret_name,
            }
        )

    def _secret(
        self,
        resource_name: str,
        suffix: str,
        data: Mapping[str, pulumi.Input[str]],
        opts: pulumi.ResourceOptions,
    ) -> k8s.core.v1.Secret:
        """Create one of the broker's Secrets (stringData: Kubernetes encodes, we never do)."""
        return k8s.core.v1.Secret(
            resource_name,
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=_name(self.settings, suffix),
                namespace=self.settings.namespace,
                labels=labels(self.settings, COMPONENT, "broker"),
            ),
            type="Opaque",
            string_data=dict(data),
            opts=opts,
        )

    def _client_url(self, user: str, password: pulumi.Output[str], db: int) -> pulumi.Output[str]:
        """Return a client URL for `user` (secret: it carries the password)."""
        return pulumi.Output.secret(
            password.apply(lambda p: client_url(self.settings, user, p, self.host, db))
        )

    def _client_revision(self, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
        """Return the client Secret's revision for pod templates: it changes with workers' URLs.

        Keyed with a random key kept in Pulumi state (see `client_revision`), so the value may
        be shown in plain text in diffs and pod specs.
        """
        key = GeneratedPassword("broker-client-revision-key", length=32, opts=opts)
        revision = pulumi.Output.all(key.result, self.broker_url, self.result_backend_url).apply(
            lambda values: client_revision(*values)
        )
        return pulumi.Output.unsecret(revision)

    def _metrics(self, name: str, opts: pulumi.ResourceOptions) -> list[pulumi.Resource]:
        """Create the exporter script and metrics Service; with the operator, a ServiceMonitor.

        The alerts are the stack's (broker and queues in one PrometheusRule): see
        `alert_groups` and `metrics.prometheus_rule`.
        """
        settings = self.settings
        if not settings.metrics.exporter_enabled:
            return []
        created: list[pulumi.Resource] = []
        script = metrics.exporter_script_data(settings)
        if script:
            created.append(
                k8s.core.v1.ConfigMap(
                    f"{name}-exporter-script",
                    metadata=metadata(settings, _name(settings, "broker-exporter-script")),
                    data=script,
                    opts=opts,
                )
            )
        created.append(
            k8s.core.v1.Service(
                f"{name}-metrics-service",
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=metrics.metrics_service_name(settings),
                    namespace=settings.namespace,
                    labels=metrics.metrics_labels(settings),
                ),
                spec=metrics.metrics_service_spec(
                    settings, selector_labels(settings, COMPONENT, "broker")
                ),
                opts=opts,
            )
        )
        monitor = metrics.service_monitor(settings, f"{name}-service-monitor", opts)
        if monitor is not None:
            created.append(monitor)
        return created

    def _certificate(
        self, name: str, opts: pulumi.ResourceOptions
    ) -> k8s.apiextensions.CustomResource:
        """Create the cert-manager Certificate that issues and renews the broker's TLS Secret."""
        return k8s.apiextensions.CustomResource(
            f"{name}-certificate",
            api_version=CERT_MANAGER_API,
            kind="Certificate",
            metadata=metadata(self.settings, _name(self.settings, "broker-tls")),
            spec=certificate_spec(self.settings),
            opts=opts,
        )

    def _config_map(self, name: str, opts: pulumi.ResourceOptions) -> k8s.core.v1.ConfigMap:
        """redis.conf, loaded as-is by redis-server; no secret in it."""
        return k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=metadata(self.settings, _name(self.settings, "broker-config")),
            data={
                redis_config.CONFIG_KEY: redis_config.redis_conf(self.settings),
                **(
                    {sentinel_config.CONFIG_KEY: sentinel_config.sentinel_conf(self.settings)}
                    if replicated(self.settings)
                    else {}
                ),
            },
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
        generated = GeneratedPassword(resource_name, length=32, opts=opts)
        return pulumi.Output.secret(generated.result)
