"""Validate KEDA custom resources against KEDA's own CRD schemas (kubernetes-validate has none).

    problems = keda_problems([scaled_object, trigger_authentication])  # [] when all are valid

The schemas come from the npm package `@kubernetes-models/keda` (generated from KEDA's Go API
types, `keda.sh/v1alpha1`), run by node through `keda_validate.mjs` beside this file. The
package is installed outside the repository (no node_modules in git):

    npm install --no-audit --no-fund --prefix ~/.cache/celery-redis/keda-schema \
        @kubernetes-models/keda@2.0.0

or wherever KEDA_SCHEMA_DIR points. When node or the package is missing, validation raises
(a schema check that silently passes is worse than none).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

KEDA_MODELS_VERSION = "2.0.0"
SCHEMA_DIR = Path(
    os.environ.get("KEDA_SCHEMA_DIR", Path.home() / ".cache" / "celery-redis" / "keda-schema")
)
VALIDATOR = Path(__file__).with_name("keda_validate.mjs")
INSTALL_COMMAND = (
    f"npm install --no-audit --no-fund --prefix {SCHEMA_DIR} "
    f"@kubernetes-models/keda@{KEDA_MODELS_VERSION}"
)


class KedaSchemaUnavailable(RuntimeError):
    """node or the @kubernetes-models/keda package is missing; the message says how to install."""


def keda_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Validate KEDA objects; return one message per invalid object (empty when all are valid)."""
    node = shutil.which("node")
    if node is None:
        msg = "node is not on PATH: install Node.js 20+ to validate KEDA objects"
        raise KedaSchemaUnavailable(msg)
    if not (SCHEMA_DIR / "node_modules" / "@kubernetes-models" / "keda").is_dir():
        msg = f"KEDA schemas missing under {SCHEMA_DIR}; install them with:\n    {INSTALL_COMMAND}"
        raise KedaSchemaUnavailable(msg)
    result = subprocess.run(
        [node, str(VALIDATOR), str(SCHEMA_DIR)],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        msg = f"the KEDA validator failed ({result.returncode}):\n{result.stderr}"
        raise KedaSchemaUnavailable(msg)
    return [f"{p['kind']} {p['name']}: {p['error']}" for p in json.loads(result.stdout)]
