"""Who may talk to the broker, as rendered: one user per reader, scripts bounded, ports fenced.

Pure checks on the ACL rules and the rendered objects; tests/integration/test_broker_acl.py
and test_broker_script_watchdog.py prove the same rules on a real redis-server.
"""

from __future__ import annotations

from typing import Any

import pytest

from brokerctl import render
from components import broker, redis_config
from components.settings import StackSettings

READERS = (
    redis_config.PROBE_USER,
    redis_config.CHECK_USER,
    redis_config.KEDA_USER,
    redis_config.EXPORTER_USER,
)
VALUE_READS = {
    "get", "getrange", "mget", "getex", "getdel", "hget", "hmget", "hgetall", "hvals", "hscan",
    "hrandfield", "lrange", "lindex", "lpos", "sort", "sort_ro", "dump", "scan", "keys",
    "smembers", "srandmember", "sscan", "monitor", "slowlog", "client", "object", "debug",
}  # fmt: skip
"""Commands that return a stored value (a task body) or other clients' commands."""
IMAGE = "registry.example.com/transcritor-pdf:1.0.0"


def granted(user: str) -> set[str]:
    """Every command a user's rendered ACL rules allow (root and selectors)."""
    rules = redis_config.acl_user_rules(("celery",))[user].replace("(", " ").replace(")", " ")
    return {rule[1:] for rule in rules.split() if rule.startswith("+")}


def settings(**metrics: Any) -> StackSettings:
    return StackSettings.model_validate(
        {
            "ephemeral": True,
            "metrics": {"exporter_enabled": True, **metrics},
            "workers": {"pools": [{"name": "default", "image": IMAGE}]},
        }
    )


@pytest.mark.parametrize("user", READERS)
def test_no_reader_is_granted_a_command_that_reads_a_value(user):
    assert not granted(user) & VALUE_READS, f"{user} may read values: {granted(user) & VALUE_READS}"


@pytest.mark.parametrize("user", [redis_config.PROBE_USER, redis_config.CHECK_USER])
def test_readers_that_need_no_lua_cannot_run_any(user):
    scripts = granted(user) & {*redis_config.SCRIPT_COMMANDS, "script|load"}
    assert not scripts, f"{user} may start a script: {scripts}"


def test_only_the_pod_local_reloader_may_kill_a_script():
    killers = {
        user
        for user in redis_config.acl_user_rules(("celery",))
        if user != "default" and granted(user) & {"script|kill", "function|kill", "script"}
    }
    assert killers == {redis_config.RELOADER_USER}, f"SCRIPT KILL granted to {killers}"


def test_lua_users_keys_are_exactly_the_queue_and_in_flight_lists():
    rules = redis_config.acl_user_rules(("celery", "pdf.high"))
    keda_keys = [rule for rule in rules[redis_config.KEDA_USER].split() if "~" in rule]
    assert keda_keys == [
        "~celery", "~celery??3", "~celery??6", "~celery??9",
        "~pdf.high", "~pdf.high??3", "~pdf.high??6", "~pdf.high??9",
        "~celery-redis/inflight/*",
    ], f"KEDA's keys: {keda_keys}"  # fmt: skip
    exporter_keys = [rule for rule in rules[redis_config.EXPORTER_USER].split() if "~" in rule]
    assert all(key.startswith("%R~") for key in exporter_keys), "the exporter may only read"
    assert exporter_keys[-2:] == ["%R~unacked", "%R~unacked_index"], exporter_keys


def test_scale_in_user_reads_only_load_entries_and_writes_only_in_flight_lists():
    """The controller's user: MGET the workers' counts, replace in-flight lists; nothing else."""
    rules = redis_config.acl_user_rules(("celery",))[redis_config.SCALE_IN_USER].split()
    keys = [rule for rule in rules if "~" in rule]
    assert keys == ["%R~celery-redis/load/*", "%W~celery-redis/inflight/*"], keys
    assert "resetchannels" in rules, "no pub/sub: it would see control messages"
    commands = granted(redis_config.SCALE_IN_USER)
    assert commands == {
        "hello", "ping", "select", "mget", "multi", "exec", "del", "rpush", "expire",
    }, commands  # fmt: skip
    assert not commands & {*redis_config.SCRIPT_COMMANDS, "script|load"}, "no Lua for it"


def test_redis_conf_bounds_scripts_below_the_liveness_window():
    conf = redis_config.redis_conf(settings())
    assert f"\nbusy-reply-threshold {redis_config.BUSY_REPLY_THRESHOLD_MS}\n" in conf
    assert redis_config.BUSY_REPLY_THRESHOLD_MS / 1000 < redis_config.SCRIPT_KILL_BOUND_SECONDS
    liveness = redis_config.liveness_command()[2]
    assert f"sleep {redis_config.SCRIPT_KILL_BOUND_SECONDS}" in liveness, "BUSY waits the bound"
    reloader = redis_config.reloader_script(tls=False)
    assert "cli SCRIPT KILL" in reloader, "the reloader must run the watchdog"


@pytest.fixture(scope="module")
def prod_objects() -> list[dict[str, Any]]:
    return render.render_stack("prod")


def one(objects: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    return found


def test_each_reader_has_its_own_generated_password_in_the_users_secret(prod_objects):
    users = one(prod_objects, "Secret", "-broker-users")["stringData"]
    passwords = {user: users[file] for user, file in redis_config.READER_PASSWORD_FILES.items()}
    assert passwords == {
        "probe": "redacted-broker-probe-password",
        "check": "redacted-broker-check-password",
        "keda": "redacted-broker-keda-password",
        "exporter": "redacted-broker-exporter-password",
        "scalein": "redacted-broker-scalein-password",
    }, f"reader passwords: {passwords}"


def test_each_client_carries_only_its_own_readers_credentials(prod_objects):
    client = one(prod_objects, "Secret", "-broker-client")["stringData"]
    assert client[broker.CHECK_URL_KEY].startswith("rediss://check:redacted-broker-check-password@")
    assert client[broker.SCALE_IN_URL_KEY].startswith(
        "rediss://scalein:redacted-broker-scalein-password@"
    )
    keda = one(prod_objects, "Secret", "-workers-keda-redis")["stringData"]
    assert keda == {"username": "keda", "password": "redacted-broker-keda-password"}
    password_map = one(prod_objects, "Secret", "-broker-users")["stringData"][
        "exporter-password-map.json"
    ]
    assert "rediss://exporter@localhost" in password_map
    assert "probe-password" not in password_map, "the exporter must not use the probe's password"
    text = str(
        [o for o in prod_objects if o["kind"] != "Secret" or "users" not in o["metadata"]["name"]]
    )
    for other in ("probe", "exporter"):
        assert f"redacted-broker-{other}-password" not in text, f"{other}'s password left the pod"


def ingress(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return one(objects, "NetworkPolicy", "-broker")["spec"]["ingress"]


def rule_for_port(rules: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    return [rule for rule in rules if rule["ports"] == [{"port": port, "protocol": "TCP"}]]


@pytest.mark.parametrize("namespace", [None, "observability"])
def test_exporter_port_admits_only_the_monitoring_namespace(namespace):
    stack = settings(**({"monitoring_namespace": namespace} if namespace else {}))
    rules = [
        rule.from_[0].namespace_selector.match_labels
        for rule in broker.ingress_rules(stack)
        if rule.ports[0].port == stack.metrics.exporter_port
    ]
    expected = namespace or "monitoring"
    assert rules == [{"kubernetes.io/metadata.name": expected}], f"exporter port admits {rules}"


def test_rendered_exporter_rule_names_a_namespace_and_no_pod_elsewhere(prod_objects):
    (rule,) = rule_for_port(ingress(prod_objects), 9121)
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ], f"the exporter port admits {rule.get('from', 'every pod in the cluster')}"


def test_client_label_admits_only_pods_of_the_stacks_namespace(prod_objects):
    client_rule, *_ = rule_for_port(ingress(prod_objects), 6379)
    (peer,) = client_rule["from"]
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "transcritor-prod"}
    }, f"labelled pods of any namespace may connect: {peer}"
    assert peer["podSelector"]["matchLabels"]["celery-redis/broker-client"] == "true"
