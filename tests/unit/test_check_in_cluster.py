"""`check --in-cluster` builds its one-off Job from the gate's: the pure part.

Running it against a real cluster is proven in tests/realengine.
"""

import copy

from brokerctl.in_cluster import CHECK_JOB_PARENT, JOB_TYPE, gate_job, run_job_manifest
from brokerctl.render import render_stack


def _applied_gate_job() -> dict:
    """Return dev's check Job as the API server stores it (controller fields added)."""
    job = copy.deepcopy(next(o for o in render_stack("dev") if o["kind"] == "Job"))
    uid = {"batch.kubernetes.io/controller-uid": "1234", "controller-uid": "1234"}
    job["spec"]["selector"] = {"matchLabels": dict(uid)}
    job["spec"]["template"]["metadata"]["labels"].update(uid, **{"job-name": "x"})
    job["status"] = {"succeeded": 1}
    return job


def test_the_run_job_keeps_the_gates_pod_and_drops_what_the_controller_owns() -> None:
    gate = _applied_gate_job()
    run = run_job_manifest(gate, as_json=True)
    assert run["metadata"]["name"] != gate["metadata"]["name"]
    assert run["metadata"]["name"].startswith(gate["metadata"]["name"][:20])
    assert len(run["metadata"]["name"]) <= 63
    assert run["metadata"]["namespace"] == gate["metadata"]["namespace"]
    assert "selector" not in run["spec"], "a copied selector claims the gate's pods"
    labels = run["spec"]["template"]["metadata"]["labels"]
    assert not {"controller-uid", "batch.kubernetes.io/controller-uid", "job-name"} & set(labels)
    gate_container = gate["spec"]["template"]["spec"]["containers"][0]
    run_container = run["spec"]["template"]["spec"]["containers"][0]
    assert run_container["image"] == gate_container["image"]
    assert run_container["env"] == gate_container["env"], "the run must use the gate's Secrets"
    assert run_container["args"] == [*gate_container["args"], "--json"]
    assert run["spec"]["ttlSecondsAfterFinished"] > 0
    assert "status" not in run


def test_the_gate_job_is_found_in_an_exported_state() -> None:
    job = _applied_gate_job()
    parent = "urn:pulumi:dev::celery-redis::celery-redis:index:BrokerCheck::check"
    state = {
        "deployment": {
            "resources": [
                {"urn": parent, "type": CHECK_JOB_PARENT},
                {"urn": "other-job", "type": JOB_TYPE, "outputs": {"metadata": {"name": "no"}}},
                {"urn": "gate", "type": JOB_TYPE, "parent": parent, "outputs": job},
            ]
        }
    }
    assert gate_job(state, "dev")["metadata"]["name"] == job["metadata"]["name"]
