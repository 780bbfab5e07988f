"""Errors the pod runner raises, each with a message that names the object and what went wrong."""

from __future__ import annotations


class PodRunnerError(Exception):
    """Base class: something the local cluster could not do."""


class UnsupportedManifest(PodRunnerError):
    """A manifest asks for behaviour the pod runner does not implement (never silently ignored)."""


class ManifestError(PodRunnerError):
    """A manifest is inconsistent: a missing reference, a bad value, an unknown image."""


class WaitTimeout(PodRunnerError):
    """A wait did not see its condition in time; the message carries the last observed state."""


class PodFailed(PodRunnerError):
    """A pod cannot become ready (for example CreateContainerConfigError) or a Job failed."""


class ContainerConfigError(PodRunnerError):
    """The kubelet's CreateContainerConfigError: a referenced Secret/ConfigMap key is missing."""
