"""Object names and `app.kubernetes.io/*` labels, from one place.

Selectors, PodDisruptionBudgets, NetworkPolicies and Services all match on these labels; if
each component spelled them itself they would drift apart or collide between pools.
"""

from __future__ import annotations

import hashlib

from components.settings import PROJECT, StackSettings

MAX_NAME = 63
BROKER_CLIENT_LABEL = f"{PROJECT}/broker-client"
"""Pods carrying this label (value "true") may reach the broker through its NetworkPolicy."""


def object_name(*parts: str) -> str:
    """Join parts into a DNS-1123 name; names over 63 characters keep a hash so they stay unique."""
    name = "-".join(part.strip("-").lower() for part in parts if part)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def release(settings: StackSettings) -> str:
    """Return the release name shared by every object of this stack.

    It is the `app.kubernetes.io/part-of` label.
    """
    return settings.name_prefix


def selector_labels(
    settings: StackSettings, component: str, instance: str | None = None
) -> dict[str, str]:
    """Labels that select one workload's pods; unique per component and per pool."""
    return {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/instance": object_name(release(settings), instance or component),
    }


def labels(settings: StackSettings, component: str, instance: str | None = None) -> dict[str, str]:
    """Full label set for an object: selector labels plus part-of, component and managed-by."""
    return {
        **selector_labels(settings, component, instance),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": release(settings),
        "app.kubernetes.io/managed-by": "pulumi",
    }


def broker_client_labels(settings: StackSettings) -> dict[str, str]:
    """Labels that mark a pod of this release as allowed to talk to the broker."""
    return {"app.kubernetes.io/part-of": release(settings), BROKER_CLIENT_LABEL: "true"}
