"""The scale-in controller as rendered: least privilege, the pods it watches, its script.

What these pure checks cannot prove (that the ReplicaSet controller honours the cost, that the
Role suffices) tests/realengine/test_scale_in_real.py proves on a real control plane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from brokerctl import deletioncost, render
from components import endpoint, scale_in, workers
from tests.unit.test_workers import render_objects

STACKS = ("dev", "staging", "prod")
VARIANTS = Path(__file__).resolve().parents[1] / "fixtures" / "render_variants"


@pytest.fixture(scope="module", params=STACKS)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render.render_stack(request.param)


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Workload name -> its pod spec, for every object that makes pods."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet", "Job")
    }


def option(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == flag]


def test_only_the_controller_pod_mounts_an_api_token(objects):
    mounting = {
        name for name, spec in pod_specs(objects).items() if spec["automountServiceAccountToken"]
    }
    assert mounting == {"celery-scale-in"}, f"pods with an API token: {mounting}"
    controller = pod_specs(objects)["celery-scale-in"]
    assert controller["serviceAccountName"] == "celery-scale-in", controller
    for name, spec in pod_specs(objects).items():
        if name != "celery-scale-in":
            assert "serviceAccountName" not in spec, f"{name} names a ServiceAccount"
    account = named(objects, "ServiceAccount", "celery-scale-in")
    assert account["automountServiceAccountToken"] is False, "no pod naming it gets a token"


def test_the_role_lets_the_controller_list_and_patch_pods_and_nothing_else(objects):
    role = named(objects, "Role", "celery-scale-in")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "patch"]}]
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = named(objects, "RoleBinding", "celery-scale-in")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "celery-scale-in",
    }
    namespace = role["metadata"]["namespace"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "celery-scale-in", "namespace": namespace}
    ]


def selects(selector: str, pod_labels: dict[str, str]) -> bool:
    """Evaluate an equality-based label selector (what the controller passes to the API)."""
    return all(
        pod_labels.get(key) == value
        for key, value in (term.split("=", 1) for term in selector.split(","))
    )


def test_the_controller_watches_every_worker_pool_and_nothing_else(objects):
    container = pod_specs(objects)["celery-scale-in"]["containers"][0]
    args = container["args"]
    (selector,) = option(args, "--selector")
    pools = deletioncost.parse_pools(option(args, "--pool"))
    templates = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in objects
        if o["kind"] == "Deployment"
    }
    watched = {name for name, pod_labels in templates.items() if selects(selector, pod_labels)}
    worker_deployments = {n for n in templates if n.startswith("celery-worker-")}
    assert watched == worker_deployments, f"watched {watched}, workers {worker_deployments}"
    instances = {
        templates[f"celery-worker-{pool}"][deletioncost.POOL_LABEL]: pool for pool in pools.values()
    }
    assert instances == pools, "each pool's pods must map to that pool's in-flight list"
    assert set(pools.values()) == {name.removeprefix("celery-worker-") for name in watched}


def test_the_controller_runs_the_shipped_script_with_its_own_redis_user(objects):
    spec = pod_specs(objects)["celery-scale-in"]
    container = spec["containers"][0]
    script_map = named(objects, "ConfigMap", "celery-scale-in-script")
    assert script_map["data"] == {"deletioncost.py": scale_in.SCRIPT.read_text()}
    assert container["command"][1] == f"{scale_in.SCRIPT_DIR}/deletioncost.py"
    (url_env,) = option(container["args"], "--redis-url-env")
    (variable,) = [e for e in container["env"] if e["name"] == url_env]
    assert variable["valueFrom"]["secretKeyRef"]["key"] == endpoint.SCALE_IN_URL_KEY, variable
    client = named(objects, "Secret", "celery-broker-client")["stringData"]
    assert "://scalein:redacted-broker-scalein-password@" in client[endpoint.SCALE_IN_URL_KEY]
    labels = named(objects, "Deployment", "celery-scale-in")["spec"]["template"]["metadata"]
    assert labels["labels"]["celery-redis/broker-client"] == "true", "the broker admits it"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert scale_in.HEALTH_DIR in " ".join(container[probe]["exec"]["command"]), probe
    assert scale_in.HEALTH_DIR in option(container["args"], "--health-dir")


def test_worker_pods_know_their_pod_name_for_their_load_entry(objects):
    for name, spec in pod_specs(objects).items():
        if not name.startswith("celery-worker-"):
            continue
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env[workers.POD_NAME_ENV]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.name"}
        }, f"{name}: POD_NAME must come from the downward API"


def test_disabling_scale_in_removes_the_controller_and_its_keda_trigger(tmp_path: Path):
    pool = {"name": "pdf", "autoscaling": {"enabled": True, "min_replicas": 1}}
    for folder in ("on", "off"):
        (tmp_path / folder).mkdir()
    enabled = render_objects(tmp_path / "on", {"pools": [pool]})
    disabled = render_objects(tmp_path / "off", {"pools": [pool], "scale_in": {"enabled": False}})
    kinds = {"ServiceAccount", "Role", "RoleBinding"}
    assert {o["kind"] for o in enabled} >= kinds
    assert not [o for o in disabled if o["kind"] in kinds], "RBAC objects left behind"
    assert not [o for o in disabled if "scale-in" in o["metadata"]["name"]]

    def trigger_names(found: list[dict[str, Any]]) -> set[str]:
        (scaled,) = [o for o in found if o["kind"] == "ScaledObject"]
        return {t["name"] for t in scaled["spec"]["triggers"]}

    assert workers.IN_FLIGHT_TRIGGER in trigger_names(enabled)
    assert workers.IN_FLIGHT_TRIGGER not in trigger_names(disabled), "it reads a list no one keeps"


def test_behind_sentinel_the_controller_asks_sentinel_with_its_password_from_the_secret():
    objects = render.render_stack("prod-sentinel", config_dir=VARIANTS)
    container = pod_specs(objects)["celery-scale-in"]["containers"][0]
    (master,) = option(container["args"], "--sentinel-master")
    assert master == "celery-broker", container["args"]
    (password_env,) = option(container["args"], "--sentinel-password-env")
    (variable,) = [e for e in container["env"] if e["name"] == password_env]
    assert variable["valueFrom"]["secretKeyRef"]["name"] == "celery-broker-client", variable
    client = named(objects, "Secret", "celery-broker-client")["stringData"]
    assert variable["valueFrom"]["secretKeyRef"]["key"] in client
    url = client[endpoint.SCALE_IN_URL_KEY]
    assert url.startswith("sentinel://scalein:"), "the controller must find the master as kombu"
