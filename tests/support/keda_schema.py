"""Validate KEDA custom resources against KEDA's own CRD schemas (kubernetes-validate has none).

    problems = keda_problems([scaled_object, trigger_authentication])  # [] when all are valid

A thin front for tests/support/crd_schema.py, which validates every custom resource group
the project emits (KEDA, Prometheus Operator, cert-manager) with the pinned npm packages
that tests/support/install-node-tools.sh installs. Missing node or packages raise.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tests.support.crd_schema import CrdSchemaError, validate_custom_resources

KedaSchemaUnavailable = CrdSchemaError
"""Kept for callers that catch the KEDA-specific name."""


def keda_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Validate KEDA objects; return one message per invalid object (empty when all are valid)."""
    for obj in objects:
        if not obj.get("apiVersion", "").startswith("keda.sh/"):
            message = f"not a KEDA object: {obj.get('apiVersion')} {obj.get('kind')}"
            raise CrdSchemaError(message)
    with tempfile.TemporaryDirectory() as scratch:
        return validate_custom_resources(objects, Path(scratch))
