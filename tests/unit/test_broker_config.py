"""The broker's redis.conf, ACL rules, probe sizing and rendered objects, without a server."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from brokerctl import render
from components import redis_config
from components.settings import StackSettings

STACKS = ("dev", "staging", "prod")
KUBERNETES_VERSION = "1.30.0"
BROKER_KINDS = {
    "ConfigMap",
    "Secret",
    "Service",
    "StatefulSet",
    "NetworkPolicy",
    "PodDisruptionBudget",
}
FORBIDDEN_FOR_CELERY = {
    "flushall",
    "flushdb",
    "config",
    "debug",
    "keys",
    "shutdown",
    "acl",
    "module",
    "replicaof",
    "slaveof",
    "eval",
    "script|flush",
    "client",
    "monitor",
}
WRITES = {"set", "del", "lpush", "rpush", "hset", "zadd", "sadd", "publish", "evalsha", "multi"}


def make_settings(**broker: Any) -> StackSettings:
    """Return settings with broker overrides; ephemeral so persistence none is allowed."""
    return StackSettings.model_validate(
        {
            "ephemeral": True,
            "broker": broker,
            "workers": {
                "pools": [
                    {"name": "default", "image": "registry.example.com/transcritor-pdf:1.0.0"}
                ]
            },
        }
    )


def directives(conf: str) -> dict[str, list[str]]:
    """Every directive of a redis.conf and its values, in order (comments dropped)."""
    found: dict[str, list[str]] = {}
    for line in conf.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition(" ")
            found.setdefault(name, []).append(value)
    return found


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("none", {"appendonly": ["no"], "save": ['""']}),
        ("rdb", {"appendonly": ["no"], "save": ["3600 1", "300 100", "60 10000"]}),
        ("aof", {"appendonly": ["yes"], "appendfsync": ["everysec"], "save": ['""']}),
        ("aof-always", {"appendonly": ["yes"], "appendfsync": ["always"], "save": ['""']}),
    ],
)
def test_redis_conf_sets_the_persistence_mode(mode, expected):
    conf = directives(redis_config.redis_conf(make_settings(persistence=mode)))
    for name, values in expected.items():
        assert conf.get(name) == values, f"{mode}: {name} is {conf.get(name)}, expected {values}"
    if mode.startswith("aof"):
        assert conf["aof-use-rdb-preamble"] == ["yes"], "AOF must start with an RDB preamble"
    else:
        assert "appendfsync" not in conf, f"{mode}: appendfsync set without AOF"


@pytest.mark.parametrize("mode", ["none", "rdb", "aof", "aof-always"])
def test_redis_conf_never_evicts_and_bounds_memory(mode):
    settings = make_settings(persistence=mode)
    conf = directives(redis_config.redis_conf(settings))
    assert conf["maxmemory-policy"] == ["noeviction"], "an evicting broker drops queued tasks"
    assert conf["maxmemory"] == [str(settings.broker.effective_maxmemory_bytes())]


def test_redis_conf_takes_timeouts_and_port_from_settings():
    conf = directives(redis_config.redis_conf(make_settings(port=7000, tcp_keepalive=30)))
    assert conf["port"] == ["7000"]
    assert conf["tcp-keepalive"] == ["30"]
    assert conf["timeout"] == ["0"], "idle workers block on BRPOP: they must not be cut"


def test_redis_conf_holds_no_users_or_secrets():
    conf = redis_config.redis_conf(make_settings())
    for word in ("requirepass", "user ", "aclfile", "masterauth", "password"):
        assert not re.search(rf"^{word}", conf, flags=re.MULTILINE), f"{word!r} in redis.conf"


def test_redis_conf_has_each_directive_once_except_save():
    for mode in ("none", "rdb", "aof", "aof-always"):
        conf = directives(redis_config.redis_conf(make_settings(persistence=mode)))
        repeated = {name for name, values in conf.items() if len(values) > 1 and name != "save"}
        assert not repeated, f"{mode}: repeated directives {repeated}"


def allowed(groups: dict[str, tuple[str, ...]]) -> set[str]:
    return {command for commands in groups.values() for command in commands}


def test_celery_user_gets_no_administrative_command():
    granted = allowed(redis_config.CELERY_COMMANDS)
    assert not granted & FORBIDDEN_FOR_CELERY, f"celery may run {granted & FORBIDDEN_FOR_CELERY}"


def test_probe_user_gets_no_write_command():
    granted = allowed(redis_config.PROBE_COMMANDS)
    assert not granted & WRITES, f"probe may write with {granted & WRITES}"
    rules = redis_config.acl_user_rules()["probe"].split()
    # Read-only by commands: no write command, and EVAL only runs what the user may run.
    assert "-@all" in rules, "probe must start from no command at all"
    assert "resetchannels" in rules, "probe may not publish or subscribe"


def test_default_user_is_off():
    assert redis_config.acl_user_rules()["default"].startswith("off "), "default user must be off"


def test_startup_budget_covers_loading_a_full_volume():
    settings = make_settings(storage={"size": "32Gi"}, aof_load_mb_per_second=100.0)
    budget = redis_config.startup_failure_threshold(settings) * redis_config.STARTUP_PERIOD_SECONDS
    load_seconds = 32 * 1024**3 / 1_000_000 / 100.0
    assert budget >= load_seconds, f"startup budget {budget} s < {load_seconds:.0f} s of loading"


def test_startup_budget_without_persistence_is_the_base_allowance():
    budget = redis_config.startup_failure_threshold(make_settings(persistence="none"))
    assert budget * redis_config.STARTUP_PERIOD_SECONDS == redis_config.STARTUP_BASE_SECONDS


def test_probes_never_carry_the_password_in_argv():
    for command in (redis_config.liveness_command(), redis_config.readiness_command()):
        script = command[-1]
        assert "REDISCLI_AUTH=" in script, "the password must travel in REDISCLI_AUTH"
        assert " -a " not in script, "redis-cli -a puts the password on the command line"
        assert " --pass " not in script, "redis-cli --pass puts the password on the command line"


@pytest.fixture(scope="module", params=STACKS)
def broker_objects(request) -> tuple[str, list[dict[str, Any]]]:
    """Render one stack and keep the broker's objects."""
    objects = render.render_stack(request.param)
    broker = [
        obj
        for obj in objects
        if obj["kind"] in BROKER_KINDS
        and "-broker" in obj["metadata"]["name"]
        and "check" not in obj["metadata"]["name"]
        # The exporter's objects (prod) are covered by tests/unit/test_metrics.py.
        and not any(part in obj["metadata"]["name"] for part in ("metrics", "exporter"))
    ]
    return request.param, broker


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def test_broker_objects_are_complete_and_namespaced(broker_objects):
    stack, objects = broker_objects
    kinds = sorted(obj["kind"] for obj in objects)
    expected = ["ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Secret"]
    expected += ["Service", "Service", "StatefulSet"]
    assert kinds == expected, f"{stack}: broker objects are {kinds}"
    namespaces = {obj["metadata"]["namespace"] for obj in objects}
    assert namespaces == {f"transcritor-{stack}"}, f"{stack}: namespaces {namespaces}"


def test_config_map_holds_redis_conf_and_no_secret(broker_objects):
    stack, objects = broker_objects
    (config_map,) = by_kind(objects, "ConfigMap")
    assert set(config_map["data"]) == {"redis.conf"}
    assert "redacted-" not in config_map["data"]["redis.conf"], f"{stack}: secret in ConfigMap"


def test_pod_template_rolls_when_redis_conf_changes(broker_objects):
    stack, objects = broker_objects
    (config_map,) = by_kind(objects, "ConfigMap")
    (statefulset,) = by_kind(objects, "StatefulSet")
    annotations = statefulset["spec"]["template"]["metadata"]["annotations"]
    expected = hashlib.sha256(config_map["data"]["redis.conf"].encode()).hexdigest()
    assert annotations["celery-redis/config-sha256"] == expected, f"{stack}: stale checksum"


def test_data_lives_on_a_claim_when_persistent(broker_objects):
    stack, objects = broker_objects
    (statefulset,) = by_kind(objects, "StatefulSet")
    claims = statefulset["spec"].get("volumeClaimTemplates", [])
    assert [claim["metadata"]["name"] for claim in claims] == ["data"], f"{stack}: no data claim"
    volumes = {v["name"] for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert "data" not in volumes, f"{stack}: data both a claim and a pod volume"


def test_network_policy_admits_only_broker_clients_on_the_redis_port(broker_objects):
    stack, objects = broker_objects
    (policy,) = by_kind(objects, "NetworkPolicy")
    rule, *others = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "celery",
        "celery-redis/broker-client": "true",
    }, f"{stack}: NetworkPolicy admits {peer}"
    for other in others:
        # prod only: KEDA's operator namespace on the Redis port, scrapers on the metrics port.
        assert stack == "prod", f"{stack}: unexpected ingress rule {other}"
        if other["ports"] == [{"port": 6379, "protocol": "TCP"}]:
            (keda,) = other["from"]
            assert keda == {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}
            }
        else:
            assert other["ports"] == [{"port": 9121, "protocol": "TCP"}], f"{stack}: opens {other}"


def test_disruption_budget_keeps_the_only_broker_pod(broker_objects):
    stack, objects = broker_objects
    (budget,) = by_kind(objects, "PodDisruptionBudget")
    (statefulset,) = by_kind(objects, "StatefulSet")
    assert budget["spec"]["maxUnavailable"] == 0, f"{stack}: a drain may evict the broker"
    assert budget["spec"]["selector"] == statefulset["spec"]["selector"]


def test_broker_objects_pass_strict_kubernetes_schema(broker_objects, tmp_path: Path):
    stack, objects = broker_objects
    written = render.write_objects(objects, tmp_path / stack)
    validator = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run(
        [str(validator), "--strict", "--quiet", "-k", KUBERNETES_VERSION, *map(str, written)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, f"{stack}: schema failures:\n{result.stdout}{result.stderr}"
