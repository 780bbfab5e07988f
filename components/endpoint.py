"""The broker's client contract: everything a client of the broker needs, as one frozen value.

Workers, beat, the check Job and KEDA talk to the broker only through a `BrokerEndpoint`, which
the broker component returns. None of them knows how the broker is built (one Redis, or Redis
behind Sentinels): that is a choice behind the broker component, and a new topology changes
what the endpoint holds, never how its clients read it.

What a client gets:

* the Secret holding the URLs (`ClientSecret`: its name and the keys Celery reads from the
  environment), so URLs and passwords reach pods only as `secretKeyRef`s;
* the transport options every Celery process must set (the wiring module renders them);
* the CA volume and mount that let a client verify the broker when TLS is on;
* the revision annotation that rolls client pods when the URLs change (password rotation);
* what an autoscaler needs to read queue lengths (`AutoscalerAccess`);
* the pod labels that admit a pod through the broker's NetworkPolicy;
* the resources a client must wait for (`ready`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import pulumi
import pulumi_kubernetes as k8s

BROKER_URL_KEY = "CELERY_BROKER_URL"
"""Client Secret key of the celery user's broker URL: the name Celery reads from the env."""
RESULT_BACKEND_KEY = "CELERY_RESULT_BACKEND"
"""Client Secret key of the result backend URL (same user, the result database)."""
CHECK_URL_KEY = "BROKER_CHECK_URL"
"""Client Secret key of the check user's URL (the post-deploy check only)."""
SENTINEL_PASSWORD_KEY = "BROKER_SENTINEL_PASSWORD"  # noqa: S105 - a Secret key's name
"""Client Secret key of Sentinel's password (topology sentinel), and the variable every client
(workers, beat, the check Job, the scale-in controller) reads it from."""
SCALE_IN_URL_KEY = "BROKER_SCALE_IN_URL"
"""Client Secret key of the scale-in user's URL (the deletion-cost controller only)."""

REVISION_ANNOTATION = "celery-redis/broker-client-revision"
"""Pod-template annotation for client Deployments: a changed client Secret rolls their pods."""


def secret_env(name: str, secret_name: pulumi.Input[str], key: str) -> k8s.core.v1.EnvVarArgs:
    """Return an environment variable taken from a Secret key (never a literal)."""
    return k8s.core.v1.EnvVarArgs(
        name=name,
        value_from=k8s.core.v1.EnvVarSourceArgs(
            secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=secret_name, key=key)
        ),
    )


@dataclass(frozen=True)
class ClientSecret:
    """The Secret that carries the broker's URLs, and the keys clients read from it.

    Keys are the environment names Celery reads, so a pod can take them with `secretKeyRef`
    (or envFrom) without renaming.
    """

    name: pulumi.Output[str]
    broker_url_key: str = BROKER_URL_KEY
    result_backend_key: str = RESULT_BACKEND_KEY
    check_url_key: str = CHECK_URL_KEY
    sentinel_password_key: str | None = None
    """Key of Sentinel's password when clients find the master through Sentinel, else None."""
    scale_in_url_key: str = SCALE_IN_URL_KEY

    def env(self, variable: str, key: str) -> k8s.core.v1.EnvVarArgs:
        """Return `variable` taken from `key` of this Secret."""
        return secret_env(variable, self.name, key)


@dataclass(frozen=True)
class AutoscalerAccess:
    """How an autoscaler (KEDA) reads the broker's queue lengths.

    The trigger metadata is split by what it says, so a scaler composes one trigger per list:
    `where` (the address), then the list and its target (the scaler's own), then `how` (the
    database, TLS). Values are strings, KEDA's type. The credentials are a user that may only
    read list lengths; its password reaches KEDA through a Secret, never trigger metadata.
    """

    trigger_type: str
    where: Mapping[str, str]
    how: Mapping[str, str]
    username: str
    password: pulumi.Output[str]
    ca_secret_name: str | None
    """Secret holding `ca.crt` that KEDA verifies the broker with (TLS on), else None."""
    sentinel_password: pulumi.Output[str] | None = None
    """Sentinel's password when the scaler asks Sentinel for the master, else None."""

    def trigger_metadata(self, list_name: str, list_length: int) -> dict[str, str]:
        """Return the metadata of one trigger on `list_name`."""
        return {
            **self.where,
            "listName": list_name,
            "listLength": str(list_length),
            **self.how,
        }


@dataclass(frozen=True)
class BrokerEndpoint:
    """One broker, as its clients see it (see the module docstring)."""

    scheme: str
    """`redis`, or `rediss` when the broker serves TLS only."""
    hosts: tuple[str, ...]
    """`host:port` pairs clients connect to first (one Service for a standalone broker)."""
    secret: ClientSecret
    transport_options: Mapping[str, object]
    """kombu transport options every Celery process sets (rendered into the wiring module)."""
    ca_volumes: tuple[k8s.core.v1.VolumeArgs, ...]
    ca_mounts: tuple[k8s.core.v1.VolumeMountArgs, ...]
    revision: pulumi.Output[str]
    """Changes whenever a client URL does; plain text (a keyed hash, see broker.client_revision)."""
    autoscaler: AutoscalerAccess
    client_labels: Mapping[str, str]
    """Pod labels the broker's NetworkPolicy admits (this namespace only)."""
    ready: tuple[pulumi.Resource, ...]
    """Resources a client must be created after: the broker serves once they exist."""

    def __post_init__(self) -> None:
        """Freeze the mappings too: a client must not change what another client reads."""
        for field in ("transport_options", "client_labels"):
            object.__setattr__(self, field, MappingProxyType(dict(getattr(self, field))))

    def revision_annotations(self) -> dict[str, pulumi.Output[str]]:
        """Pod-template annotations that roll a client Deployment when its URLs change."""
        return {REVISION_ANNOTATION: self.revision}
