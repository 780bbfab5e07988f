"""The exporter sidecar, the monitoring custom resources, and their schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pulumi
import pytest

from components import metrics, redis_config
from components.settings import StackSettings
from tests.support.crd_schema import CrdSchemaError, validate_custom_resources


def stack(**overrides: Any) -> StackSettings:
    """Return a stack with the exporter and the operator on, two pools, overrides on top."""
    data: dict[str, Any] = {
        "kube_context": "test",
        "metrics": {
            "exporter_enabled": True,
            "prometheus_operator": True,
            "rule_labels": {"release": "kube-prom"},
        },
        "workers": {
            "pools": [
                {
                    "name": "pdf",
                    "queues": ["celery", "pdf.high"],
                    "image": "registry.example.com/transcritor-pdf:1.0.0",
                },
                {
                    "name": "mail",
                    "queues": ["mail"],
                    "image": "registry.example.com/transcritor-pdf:1.0.0",
                },
            ]
        },
    }
    data.update(overrides)
    return StackSettings.model_validate(data, strict=False)


def flag_values(args: list[str], flag: str) -> list[str]:
    return [arg.split("=", 1)[1] for arg in args if arg.startswith(f"{flag}=")]


def custom_resource(kind: str, settings: StackSettings, spec: dict[str, Any]) -> dict[str, Any]:
    """Return a manifest as render writes it, built from the CustomResource's pieces."""
    meta = {
        "name": f"x-{kind.lower()}",
        "namespace": settings.namespace,
        "labels": metrics.metrics_labels(settings),
    }
    return {"apiVersion": metrics.MONITORING_API, "kind": kind, "metadata": meta, "spec": spec}


def test_exporter_checks_every_queue_list_including_priority_sub_queues() -> None:
    args = metrics.exporter_args(stack())
    checked = [
        unquote(entry.split("=", 1)[1])
        for entry in flag_values(args, "--check-single-keys")[0].split(",")
    ]
    for queue in ("celery", "pdf.high", "mail"):
        expected = [queue, *(f"{queue}\x06\x16{step}" for step in (3, 6, 9))]
        assert set(expected) <= set(checked), f"queue {queue!r}: lists missing from {checked!r}"
    assert "unacked_index" in checked, "kombu's unacked index should be exported too"
    assert all(
        entry.startswith("db0=") for entry in flag_values(args, "--check-single-keys")[0].split(",")
    )


def test_exporter_argv_is_printable_and_holds_no_password() -> None:
    args = metrics.exporter_args(stack())
    assert all(arg.isprintable() for arg in args), (
        "control characters belong percent-encoded in argv"
    )
    assert flag_values(args, "--redis.user") == ["exporter"]
    assert flag_values(args, "--redis.password-file") == [
        f"{metrics.PASSWORD_DIR}/{metrics.PASSWORD_MAP_KEY}"
    ]
    assert not [arg for arg in args if arg.startswith("--redis.password=")], (
        "password must not be in argv"
    )


def test_exporter_container_is_hardened_and_takes_the_password_only_from_a_file() -> None:
    container = metrics.exporter_container(stack())
    assert container.env is None, "no environment: the password comes from the mounted file"
    assert container.security_context.run_as_non_root is True
    assert container.security_context.allow_privilege_escalation is False
    assert container.resources.limits["memory"] == "64Mi"
    assert container.liveness_probe.http_get.path == "/health"
    assert container.readiness_probe.http_get.port == metrics.PORT_NAME
    mounts = {mount.name: mount for mount in container.volume_mounts}
    assert mounts[metrics.PASSWORD_VOLUME].read_only is True


def test_password_volume_projects_only_the_exporter_key_of_the_users_secret() -> None:
    volume, _script = metrics.exporter_volumes("celery-broker-users", "celery-exporter-script")
    assert [item.key for item in volume.secret.items] == [metrics.PASSWORD_MAP_KEY], (
        "the celery user's password must stay out of the exporter's filesystem"
    )


@pytest.mark.parametrize("tls", [False, True])
def test_password_map_matches_the_address_with_and_without_user(tls: bool) -> None:
    settings = stack(
        tls={"enabled": tls, "secret_name": "broker-tls"} if tls else {"enabled": False}
    )
    result = json.loads(metrics.password_map_json(settings, "s3cret"))
    scheme = "rediss" if tls else "redis"
    assert result == {
        f"{scheme}://localhost:6379": "s3cret",
        f"{scheme}://exporter@localhost:6379": "s3cret",
    }


def test_unacked_script_and_alert_appear_only_when_the_exporter_may_eval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = stack()
    monkeypatch.setitem(redis_config.EXPORTER_COMMANDS, "scripts", ())
    names = [
        rule.get("alert")
        for group in metrics.alert_rules(settings)["groups"]
        for rule in group["rules"]
    ]
    assert "CeleryTaskUnackedTooLong" not in names, "without +eval every scrape would fail"
    assert not flag_values(metrics.exporter_args(settings), "--script")
    monkeypatch.setitem(redis_config.EXPORTER_COMMANDS, "scripts", ("eval",))
    names = [
        rule.get("alert")
        for group in metrics.alert_rules(settings)["groups"]
        for rule in group["rules"]
    ]
    assert names.count("CeleryTaskUnackedTooLong") == 1, "one broker-wide unacked alert"
    assert flag_values(metrics.exporter_args(settings), "--script") == [
        f"{metrics.SCRIPT_DIR}/{metrics.SCRIPT_KEY}"
    ]


@pytest.mark.parametrize("topology", ["standalone", "sentinel"])
def test_every_alert_has_a_runbook_line_and_only_this_release_is_selected(topology: str) -> None:
    settings = stack(broker={"topology": topology})
    for group in metrics.alert_rules(settings)["groups"]:
        for rule in group["rules"]:
            assert 'job="celery-broker-metrics",namespace="celery"' in rule["expr"], rule
            if "alert" in rule:
                assert rule["annotations"]["runbook"].strip(), f"{rule['alert']} has no runbook"


def test_custom_resources_exist_only_with_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    off = stack(metrics={"exporter_enabled": True})
    opts = pulumi.ResourceOptions()
    assert metrics.service_monitor(off, "sm", opts) is None
    assert metrics.prometheus_rule(off, "rule", opts, metrics.alert_rules(off)) is None


def test_monitoring_objects_carry_release_and_rule_labels() -> None:
    labels = metrics.metrics_labels(stack())
    assert labels["release"] == "kube-prom"
    assert labels["app.kubernetes.io/part-of"] == "celery"


def test_service_monitor_and_prometheus_rule_match_their_crd_schemas(tmp_path: Path) -> None:
    settings = stack()
    objects = [
        custom_resource("ServiceMonitor", settings, metrics.service_monitor_spec(settings)),
        custom_resource("PrometheusRule", settings, metrics.alert_rules(settings)),
    ]
    assert validate_custom_resources(objects, tmp_path) == []


def test_crd_validator_rejects_a_wrong_object(tmp_path: Path) -> None:
    settings = stack()
    rules = metrics.alert_rules(settings)
    del rules["groups"][0]["name"]
    monitor = metrics.service_monitor_spec(settings)
    monitor["endpoints"][0]["port"] = 9121  # a port *name* is a string
    certificate = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "broker"},
        "spec": {"secretName": "broker-tls"},  # issuerRef is required
    }
    problems = validate_custom_resources(
        [
            custom_resource("PrometheusRule", settings, rules),
            custom_resource("ServiceMonitor", settings, monitor),
            certificate,
        ],
        tmp_path,
    )
    assert len(problems) == 3, f"each broken object should be reported: {problems}"


def test_crd_validator_refuses_an_unknown_api_group(tmp_path: Path) -> None:
    with pytest.raises(CrdSchemaError, match="no schema package"):
        validate_custom_resources([{"apiVersion": "example.com/v1", "kind": "Thing"}], tmp_path)


SENTINEL_ALERTS = {
    "CeleryBrokerNoMaster",
    "CeleryBrokerSplitBrain",
    "CeleryBrokerFailover",
    "CeleryBrokerReplicaDown",
    "CeleryBrokerReplicationBroken",
    "CeleryBrokerWritesRefused",
}


def alerts_by_name(settings: StackSettings) -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for group in metrics.alert_rules(settings)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def sentinel_stack(**sentinel: Any) -> StackSettings:
    return stack(broker={"topology": "sentinel", "sentinel": sentinel})


def test_replication_alerts_exist_only_with_the_sentinel_topology() -> None:
    standalone = metrics.alert_rules(stack())
    assert not SENTINEL_ALERTS & set(alerts_by_name(stack())), "standalone has no replicas"
    assert "redis_instance_info" not in json.dumps(standalone), (
        "standalone rules must not depend on the role a Redis reports"
    )
    assert SENTINEL_ALERTS <= set(alerts_by_name(sentinel_stack()))
    assert alerts_by_name(sentinel_stack())["CeleryBrokerFailover"]["labels"]["severity"] == "info"


def test_refused_writes_alert_exists_only_while_the_loss_bound_is_on() -> None:
    names = set(alerts_by_name(sentinel_stack(min_replicas_to_write=0)))
    assert "CeleryBrokerWritesRefused" not in names, "with the bound off nothing refuses writes"
    assert SENTINEL_ALERTS - {"CeleryBrokerWritesRefused"} <= names


def test_replication_alerts_take_their_thresholds_from_the_sentinel_settings() -> None:
    rules = alerts_by_name(
        sentinel_stack(replicas=5, min_replicas_to_write=3, min_replicas_max_lag=4)
    )
    assert "redis_connected_slaves{" in rules["CeleryBrokerReplicaDown"]["expr"]
    assert " < 4 and on (namespace, job, pod) " in rules["CeleryBrokerReplicaDown"]["expr"], (
        "five pods: the master should have four replicas"
    )
    refused = rules["CeleryBrokerWritesRefused"]["expr"]
    assert "<= bool 4)" in refused, f"lag bound not min_replicas_max_lag: {refused}"
    assert ") < 3 and on (namespace, job, pod) " in refused, f"not min_replicas_to_write: {refused}"
