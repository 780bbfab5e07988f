"""A kubelet-like pod runner: rendered Kubernetes manifests run as local processes, for tests.

See cluster.py for the API and how tests reach Services, policy.py for what is honoured,
accepted without effect (and why), and refused.
"""

from .cluster import JobAttempt, JobResult, LocalCluster
from .errors import (
    ContainerConfigError,
    ManifestError,
    PodFailed,
    PodRunnerError,
    UnsupportedManifest,
    WaitTimeout,
)
from .images import LocalImage
from .kubelet import Backoff, Container, Pod, wait_until
from .runtime import ExecResult

__all__ = [
    "Backoff",
    "Container",
    "ContainerConfigError",
    "ExecResult",
    "JobAttempt",
    "JobResult",
    "LocalCluster",
    "LocalImage",
    "ManifestError",
    "Pod",
    "PodFailed",
    "PodRunnerError",
    "UnsupportedManifest",
    "WaitTimeout",
    "wait_until",
]
