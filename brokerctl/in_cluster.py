"""`brokerctl check --stack STACK --in-cluster`: run the deployed stack's check once, as a Job.

For a person who has a kubeconfig but no route to the in-cluster broker Service (the common
case from a laptop). The Job is the gate's own: its spec comes from the stack's state
(`pulumi stack export`: the check Job as the engine last applied it, which names Secrets but
holds none), renamed for this run, so the same image, user, Secrets, CA and expectations
judge the broker. The report it prints (table or `--json`) is passed through, and its exit
status is the check's: 0 ok, 1 a check failed (or the Job could not run in time), 2 usage.

`--timeout` bounds the whole run: scheduling, image pull, the check and reading its log.
The Job deletes itself (`ttlSecondsAfterFinished`) and is deleted at once on a timeout.
Needs the `pulumi` and `kubectl` commands on PATH.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from brokerctl.errors import EXIT_CHECK_FAILED, EXIT_USAGE, CommandError

CHECK_JOB_PARENT = "celery-redis:index:BrokerCheck"
JOB_TYPE = "kubernetes:batch/v1:Job"
RUN_TTL_SECONDS = 600
POLL_SECONDS = 1.0
GENERATED_LABELS = ("controller-uid", "batch.kubernetes.io/controller-uid", "job-name",
                    "batch.kubernetes.io/job-name")  # fmt: skip
"""Labels the Job controller adds to a Job and its template: a new Job must not carry them."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = (
            f"check --in-cluster: the {name} command is not on PATH; install it, or run the "
            "check where the broker is reachable (--url)"
        )
        raise CommandError(msg, EXIT_USAGE)
    return path


def _run(
    command: list[str], timeout: float, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, input=stdin, capture_output=True, text=True,
            timeout=max(timeout, 1.0), check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        msg = f"check --in-cluster: `{' '.join(command[:3])}` did not finish in time"
        raise CommandError(msg, EXIT_CHECK_FAILED) from None


def gate_job(state: Mapping[str, Any], stack: str) -> dict[str, Any]:
    """Return the check Job's object from an exported stack state (the engine's last apply)."""
    resources = state.get("deployment", {}).get("resources") or []
    parents = {r["urn"] for r in resources if r.get("type") == CHECK_JOB_PARENT}
    for resource in resources:
        if resource.get("type") == JOB_TYPE and resource.get("parent") in parents:
            return dict(resource.get("outputs") or resource.get("inputs") or {})
    msg = (
        f"check --in-cluster: stack {stack} has no check Job in its state (is it deployed, "
        "with checks.gate_enabled?)"
    )
    raise CommandError(msg, EXIT_USAGE)


def run_job_manifest(job: Mapping[str, Any], as_json: bool) -> dict[str, Any]:
    """Return a new Job from the gate's: own name, no server fields, one attempt's report.

    The template keeps image, user, Secrets, volumes and arguments; `--json` is added when the
    person asked for JSON. Labels the Job controller generated are dropped, or the API server
    refuses a template that claims another Job's pods.
    """
    metadata = job.get("metadata", {})
    spec = json.loads(json.dumps(job.get("spec", {})))
    spec.pop("selector", None)
    spec.pop("manualSelector", None)
    template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
    template_meta["labels"] = {
        k: v for k, v in (template_meta.get("labels") or {}).items() if k not in GENERATED_LABELS
    }
    spec["ttlSecondsAfterFinished"] = RUN_TTL_SECONDS
    spec["backoffLimit"] = 0  # one run, one report
    if as_json:
        for container in spec["template"].get("spec", {}).get("containers", []):
            args = container.setdefault("args", [])
            if "--json" not in args:
                args.append("--json")
    base = str(metadata.get("name", "broker-check"))[:40].rstrip("-")
    labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k not in GENERATED_LABELS}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{base}-manual-{secrets.token_hex(3)}",
            "namespace": metadata.get("namespace"),
            "labels": labels,
        },
        "spec": spec,
    }


def _job_state(kubectl: list[str], name: str, timeout: float) -> dict[str, Any]:
    result = _run([*kubectl, "get", "job", name, "-o", "json"], timeout)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def _finished(job: Mapping[str, Any]) -> str | None:
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return str(condition["type"])
    return None


def _exit_code(kubectl: list[str], name: str, timeout: float) -> int | None:
    result = _run([*kubectl, "get", "pods", "-l", f"job-name={name}", "-o", "json"], timeout)
    if result.returncode != 0:
        return None
    for pod in json.loads(result.stdout).get("items", []):
        for status in pod.get("status", {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated is not None:
                return int(terminated.get("exitCode", EXIT_CHECK_FAILED))
    return None


def run_in_cluster(stack: str | None, as_json: bool, timeout: float) -> int:
    """Run the stack's check once in its cluster; print its report; return its exit status."""
    if not stack:
        message = "check: usage error: --in-cluster needs --stack STACK (the deployed stack)"
        raise CommandError(message, EXIT_USAGE)
    deadline = time.monotonic() + timeout
    pulumi, kubectl_bin = _tool("pulumi"), _tool("kubectl")
    exported = _run([pulumi, "stack", "export", "--stack", stack], timeout)
    if exported.returncode != 0:
        detail = exported.stderr.strip()
        msg = f"check --in-cluster: `pulumi stack export --stack {stack}` failed: {detail}"
        raise CommandError(msg, EXIT_USAGE)
    manifest = run_job_manifest(gate_job(json.loads(exported.stdout), stack), as_json)
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    kubectl = [kubectl_bin, "--namespace", str(namespace)]
    created = _run(
        [*kubectl, "create", "-f", "-", "-o", "name"],
        deadline - time.monotonic(),
        json.dumps(manifest),
    )
    if created.returncode != 0:
        msg = f"check --in-cluster: could not create Job {name}: {created.stderr.strip()}"
        raise CommandError(msg, EXIT_CHECK_FAILED)
    print(f"check --in-cluster: Job {namespace}/{name} created", file=sys.stderr)
    outcome = None
    while outcome is None and time.monotonic() < deadline:
        outcome = _finished(_job_state(kubectl, name, deadline - time.monotonic()))
        if outcome is None:
            time.sleep(POLL_SECONDS)
    if outcome is None:
        _run([*kubectl, "delete", "job", name, "--wait=false"], 30)
        msg = (
            f"check --in-cluster: Job {name} did not finish within --timeout {timeout:g} s "
            "(not scheduled, image not pulled, or the broker did not answer); deleted it"
        )
        raise CommandError(msg, EXIT_CHECK_FAILED)
    logs = _run([*kubectl, "logs", f"job/{name}"], max(deadline - time.monotonic(), 10))
    sys.stdout.write(logs.stdout)
    code = _exit_code(kubectl, name, 30)
    if code is None:
        return 0 if outcome == "Complete" else EXIT_CHECK_FAILED
    return code
