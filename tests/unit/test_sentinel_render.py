"""What a Sentinel stack renders: N pods with a Sentinel each, spread, handing over, wired.

The stack is tests/fixtures/render_variants/Pulumi.prod-sentinel.yaml (prod with
`broker.topology: sentinel`). Real processes run these objects in the `ha` tests; here the
objects themselves are checked.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import broker as broker_component
from components import sentinel_config
from scripts.checkov_report import VARIANTS_DIR
from tests.unit.conftest import run_brokerctl
from tests.unit.test_settings_cross_field import settings_of, stack_config

STACK = "prod-sentinel"
PREFIX = "celery-broker"


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("sentinel-render")
    result = run_brokerctl(
        "render", "--stack", STACK, "--config-dir", str(VARIANTS_DIR), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    return [yaml.safe_load(p.read_text()) for p in sorted(Path(out).glob("*.yaml"))]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def containers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = one(objects, "StatefulSet", PREFIX)["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def test_three_redis_pods_each_with_a_sentinel_never_two_on_one_node(objects) -> None:
    statefulset = one(objects, "StatefulSet", PREFIX)
    assert statefulset["spec"]["replicas"] == 3
    assert list(containers(objects)) == ["redis", "sentinel", "reloader", "redis-exporter"]
    anti = statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == statefulset["spec"]["selector"]["matchLabels"]
    wait_for = statefulset["metadata"]["annotations"]["pulumi.com/waitFor"]
    assert "updatedReplicas}=3" in wait_for, "pulumi up must wait for all three pods"
    assert "readyReplicas}=3" in wait_for, "pulumi up must wait for all three pods"


def test_a_drain_may_take_one_broker_pod_and_the_master_hands_over_first(objects) -> None:
    budget = one(objects, "PodDisruptionBudget", PREFIX)
    assert budget["spec"]["maxUnavailable"] == 1
    redis = containers(objects)["redis"]
    handover = "\n".join(redis["lifecycle"]["preStop"]["exec"]["command"])
    assert "SENTINEL FAILOVER" in handover
    assert "role:slave" in handover, "the hook must wait until this Redis is a replica"
    grace = one(objects, "StatefulSet", PREFIX)["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] > 20, "the handover needs its 20 s"


def test_the_config_holds_the_loss_bound_and_no_secret(objects) -> None:
    config = one(objects, "ConfigMap", f"{PREFIX}-config")["data"]
    assert "min-replicas-to-write 1" in config["redis.conf"]
    assert "min-replicas-max-lag 1" in config["redis.conf"]
    assert "tls-replication yes" in config["redis.conf"], "prod serves TLS: replication too"
    sentinel = config["sentinel.conf"]
    assert "sentinel resolve-hostnames yes" in sentinel
    assert "sentinel announce-hostnames yes" in sentinel
    assert "tls-port 26379" in sentinel
    assert "redacted-" not in repr(config), "a password reached the ConfigMap"


def test_replication_and_sentinel_users_have_passwords_and_clients_get_sentinels(objects) -> None:
    users = one(objects, "Secret", f"{PREFIX}-users")["stringData"]
    for key in ("replicator-password", "sentinel-user-password", "sentinel-password"):
        assert users[key].startswith("redacted-"), key
    client = one(objects, "Secret", f"{PREFIX}-client")["stringData"]
    assert client["BROKER_SENTINEL_PASSWORD"] == users["sentinel-password"]
    for key in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "BROKER_CHECK_URL"):
        parts = client[key].split(";")
        assert len(parts) == 3, f"{key}: one URL per Sentinel"
        for k, part in enumerate(parts):
            host = f"{PREFIX}-{k}.{PREFIX}-headless.transcritor-prod.svc:26379/"
            assert part.startswith("sentinel://"), part
            assert host in part, part


def test_workers_get_sentinels_password_from_the_secret_and_the_master_name(objects) -> None:
    worker = one(objects, "Deployment", "celery-worker-pdf")["spec"]["template"]["spec"]
    (container,) = worker["containers"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["BROKER_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": f"{PREFIX}-client", "key": "BROKER_SENTINEL_PASSWORD"}
    wiring = one(objects, "ConfigMap", "celery-worker-pdf-wiring")["data"]
    module = wiring["celery_platform_wiring.py"]
    assert "'master_name': 'celery-broker'" in module
    assert "use_sentinel(app)" in module


def test_keda_asks_the_sentinels_with_their_password_from_the_trigger_authentication(
    objects,
) -> None:
    scaled = one(objects, "ScaledObject", "celery-worker-pdf")
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "redis-sentinel"
        assert trigger["metadata"]["sentinelMaster"] == "celery-broker"
        assert trigger["metadata"]["addresses"].count(":26379") == 3
    auth = one(objects, "TriggerAuthentication", "celery-workers-keda-redis")
    parameters = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
    assert parameters == {"username", "password", "sentinelPassword", "ca"}


def test_clients_and_broker_pods_reach_redis_and_sentinel_ports_only(objects) -> None:
    policy = one(objects, "NetworkPolicy", PREFIX)
    ports = [sorted(p["port"] for p in rule["ports"]) for rule in policy["spec"]["ingress"]]
    assert ports.count([6379, 26379]) == 3, "clients, KEDA and the broker pods themselves"
    assert [9121] in ports, "Prometheus scrapes the exporter"
    service = one(objects, "Service", PREFIX)
    assert [p["port"] for p in service["spec"]["ports"]] == [26379], (
        "the clients' Service must not hand out a replica's Redis port"
    )
    headless = one(objects, "Service", f"{PREFIX}-headless")
    assert sorted(p["port"] for p in headless["spec"]["ports"]) == [6379, 26379]


def test_only_a_replicated_broker_with_the_loss_bound_runs_the_fence(objects) -> None:
    """The fence rides in the reloader: on with min_replicas_to_write, absent without it."""
    reloader = containers(objects)["reloader"]["command"][2]
    assert "CLIENT KILL TYPE replica" in reloader, "the prod Sentinel stack lost its fence"
    off = settings_of(
        stack_config(broker={"topology": "sentinel", "sentinel": {"min_replicas_to_write": 0}})
    )
    assert sentinel_config.fence_script(off) == ""
    assert "fence" not in broker_component.reloader_container(off).command[2]
    standalone = settings_of(stack_config())
    assert "fence" not in broker_component.reloader_container(standalone).command[2]


def test_sentinel_restarts_when_the_tls_secret_is_renewed(objects, tmp_path: Path) -> None:
    """Sentinel cannot reload TLS files: its liveness fails once they differ from its start's.

    The rendered start-script line records the checksum, the rendered liveness command
    compares; both run here with real sh against files standing in for the mounted Secret.
    """
    sentinel = containers(objects)["sentinel"]
    start = sentinel["command"][2]
    liveness = sentinel["livenessProbe"]["exec"]["command"]
    (line,) = [x for x in start.splitlines() if sentinel_config.SENTINEL_TLS_CHECKSUM in x]
    tls_dir, run_dir = tmp_path / "tls", tmp_path / "run"
    tls_dir.mkdir()
    run_dir.mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tls_dir / name).write_text(f"{name} issued first\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_TLS_DIR": str(tls_dir),
        "REDIS_ACL_FILE": str(run_dir / "users.acl"),
        "REDIS_USERS_DIR": str(tmp_path),
        "SENTINEL_PORT": "1",
    }
    subprocess.run(["sh", "-c", f'run_dir="{run_dir}"\n{line}'], env=env, check=True)

    def probe() -> str:
        done = subprocess.run(liveness, env=env, capture_output=True, text=True, timeout=20)
        assert done.returncode != 0, "no Sentinel runs here: the probe must fail either way"
        return done.stdout

    assert "renewed" not in probe(), "unchanged files must not restart Sentinel"
    (tls_dir / "tls.crt").write_text("tls.crt renewed by cert-manager\n")
    assert "renewed" in probe(), "a renewed certificate must restart Sentinel"
