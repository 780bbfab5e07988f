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

from collections.abc import Mapping
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


def redis_url(user: str, password: str, host: str, port: int, db: int, scheme: str = "redis") -> str:
    """A Redis URL with the password percent-encoded, so any configured password stays a valid URL."""
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{db}"


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

        celery_password = self._password("broker_password", "broker-celery-password", secrets, child)
        probe_password = self._password("probe_password", "broker-probe-password", secrets, child)
        self.celery_password = celery_password
        self.probe_password = probe_password

        self.broker_url = pulumi.Output.secret(
            celery_password.apply(lambda p: redis_url(CELERY_USER, p, self.host, self.port, broker.broker_db))
        )
        self.result_backend_url = pulumi.Output.secret(
            celery_password.apply(lambda p: redis_url(CELERY_USER, p, self.host, self.port, broker.result_db))
        )
        self.check_url = pulumi.Output.secret(
            probe_password.apply(lambda p: redis_url(PROBE_USER, p, self.host, self.port, broker.broker_db))
        )

        self.users_secret = k8s.core.v1.Secret(
            f"{name}-users",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=object_name(settings.name_prefix, "broker-users"),
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
                name=object_name(settings.name_prefix, "broker-client"),
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
        self.ready: list[pulumi.Resource] = [self.users_secret, self.client_secret]

        self.register_outputs(
            {
                "host": self.host,
                "port": self.port,
                "persistence": self.persistence,
                "client_secret_name": self.client_secret_name,
                "users_secret_name": self.users_secret_name,
            }
        )

    def _password(
        self,
        config_key: str,
        resource_name: str,
        secrets: Mapping[str, pulumi.Output[str]],
        opts: pulumi.ResourceOptions,
    ) -> pulumi.Output[str]:
        """The configured secret, or a generated one kept in state (stable across updates)."""
        if config_key in secrets:
            return pulumi.Output.secret(secrets[config_key])
        generated = random.RandomPassword(resource_name, length=32, special=False, opts=opts)
        return pulumi.Output.secret(generated.result)
