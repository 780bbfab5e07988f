"""Validate custom resources (Prometheus Operator, cert-manager, KEDA) against their real schemas.

kubernetes-validate knows only built-in kinds, so custom resources are checked with the JSON
schemas the `@kubernetes-models/*` npm packages generate from each project's CRDs, pinned in
tests/support/package.json and installed by tests/support/install-node-tools.sh. One node
process validates a whole batch. A missing node or missing packages is an error, never a skip.

    problems = validate_custom_resources(manifests)   # [] when every object is valid
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SUPPORT_DIR = Path(__file__).resolve().parent
NODE_MODULES = SUPPORT_DIR / "node_modules"

PACKAGES = {
    "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
    "cert-manager.io": "@kubernetes-models/cert-manager",
    "keda.sh": "@kubernetes-models/keda",
}
"""API group -> the npm package holding its models (one module per group/version/kind)."""

VALIDATOR = """
import { readFileSync } from "node:fs";
const batch = JSON.parse(readFileSync(process.argv[1], "utf8"));
const results = [];
for (const { module, object } of batch) {
  const name = `${object.kind}/${object.metadata?.name ?? "?"}`;
  try {
    const models = await import(module);
    const Model = models[object.kind];
    if (!Model) throw new Error(`${module} has no ${object.kind}`);
    new Model(object).validate();
    results.push({ name, ok: true });
  } catch (error) {
    results.push({ name, ok: false, error: String(error.message ?? error) });
  }
}
console.log(JSON.stringify(results));
"""


class CrdSchemaError(RuntimeError):
    """node or the pinned packages are missing, or an object's kind has no known schema."""


def is_custom_resource(manifest: dict[str, Any]) -> bool:
    """Whether `manifest` belongs to one of the API groups validated here."""
    return manifest.get("apiVersion", "").split("/")[0] in PACKAGES


def model_module(manifest: dict[str, Any]) -> str:
    """Return the ES module exporting the model of this apiVersion/kind."""
    group, _, version = manifest["apiVersion"].partition("/")
    if group not in PACKAGES:
        api_version = manifest["apiVersion"]
        message = f"no schema package for apiVersion {api_version!r}; known: {sorted(PACKAGES)}"
        raise CrdSchemaError(message)
    return f"{PACKAGES[group]}/{group}/{version}/{manifest['kind']}"


def _require_tools() -> str:
    node = shutil.which("node")
    if node is None:
        message = "node is not installed (scripts/bootstrap.sh --test installs nodejs)"
        raise CrdSchemaError(message)
    for package in PACKAGES.values():
        if not (NODE_MODULES / package / "package.json").is_file():
            message = f"{package} is missing: run tests/support/install-node-tools.sh"
            raise CrdSchemaError(message)
    return node


def validate_custom_resources(manifests: Iterable[dict[str, Any]], tmp_dir: Path) -> list[str]:
    """Return one line per object that breaks its CRD schema ("Kind/name: reason"); [] if none."""
    node = _require_tools()
    batch = [{"module": model_module(m), "object": m} for m in manifests]
    batch_file = tmp_dir / "custom-resources.json"
    batch_file.write_text(json.dumps(batch))
    completed = subprocess.run(
        [node, "--input-type=module", "-e", VALIDATOR, str(batch_file)],
        cwd=SUPPORT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        message = f"the schema validator failed: {completed.stderr.strip()}"
        raise CrdSchemaError(message)
    results = json.loads(completed.stdout)
    return [f"{r['name']}: {r['error']}" for r in results if not r["ok"]]
