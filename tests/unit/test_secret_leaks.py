"""No credential appears anywhere but in a Secret.

Not in ConfigMaps, argv, plain outputs or CLI output.

Every stack is run with configured secret values (canaries) and the generated passwords'
placeholders (a generated password stands where its placeholder stands); each must appear
only inside Secret objects' stringData and in outputs marked secret.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from brokerctl import mockrun, render
from components.settings import PROJECT
from tests.unit.conftest import leaves, run_brokerctl

STACKS = ("dev", "staging", "prod")
CONFIGURED = {
    "broker_password": "canary-Broker-7f3a9c2e51",
    "probe_password": "canary-Probe-0b8d4e6f17",
}
GENERATED = ("redacted-broker-celery-password", "redacted-broker-probe-password")


def find_leaks(objects: list[dict[str, Any]], secrets: list[str]) -> list[str]:
    """Places outside a Secret's data where a secret value appears."""
    found = []
    for obj in objects:
        for path, text in leaves(obj):
            if not isinstance(text, str):
                continue
            in_secret_data = obj.get("kind") == "Secret" and path.startswith(
                (".stringData", ".data")
            )
            for secret in secrets:
                if secret in text and not in_secret_data:
                    found.append(f"{obj['kind']}/{obj['metadata']['name']}{path}")
    return found


def run_with_canaries(stack: str) -> mockrun.ProgramRun:
    config, secret_keys = mockrun.read_stack_config(stack)
    for key, value in CONFIGURED.items():
        config[f"{PROJECT}:{key}"] = value
        secret_keys.append(f"{PROJECT}:{key}")
    return mockrun.run_program(stack, config, secret_keys)


@pytest.mark.parametrize("stack", STACKS)
def test_configured_secrets_reach_only_secret_objects(stack):
    run = run_with_canaries(stack)
    objects = [render.manifest(r) for r in run.resources if render.is_kubernetes_object(r.type)]
    secrets = list(CONFIGURED.values())
    carried = [
        o for o in objects if o["kind"] == "Secret" and any(s in yaml.safe_dump(o) for s in secrets)
    ]
    assert carried, (
        f"{stack}: the configured password reached no Secret at all (scan would prove nothing)"
    )
    leaks = find_leaks(objects, secrets)
    assert not leaks, f"{stack}: configured secrets leaked into: {leaks}"


@pytest.mark.parametrize("stack", STACKS)
def test_generated_secrets_reach_only_secret_objects_and_secret_outputs(stack):
    config, secret_keys = mockrun.read_stack_config(stack)
    run = mockrun.run_program(stack, config, secret_keys)
    objects = [render.manifest(r) for r in run.resources if render.is_kubernetes_object(r.type)]
    assert not find_leaks(objects, list(GENERATED)), f"{stack}: generated password leaked"
    plain_outputs = {
        k: v for k, v in run.outputs.items() if "value" not in (v if isinstance(v, dict) else {})
    }
    dumped = repr(plain_outputs)
    assert not any(g in dumped for g in GENERATED), f"{stack}: a credential is in a plain output"


def test_the_scan_finds_a_secret_put_in_a_configmap():
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "leaky"},
        "data": {"redis.conf": f"requirepass {CONFIGURED['broker_password']}\n"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "ok"},
        "stringData": {"p": GENERATED[0]},
    }
    leaks = find_leaks([config_map, secret], [CONFIGURED["broker_password"], GENERATED[0]])
    assert leaks == ["ConfigMap/leaky.data.redis.conf"], (
        f"the scan missed or misplaced a leak: {leaks}"
    )


@pytest.mark.parametrize("stack", STACKS)
def test_cli_output_carries_no_secret(stack, tmp_path):
    outputs = [
        run_brokerctl("render", "--stack", stack, "--out", str(tmp_path / "out")),
        run_brokerctl("settings", "--stack", stack),
    ]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        text = result.stdout + result.stderr
        assert not any(s in text for s in (*CONFIGURED.values(), *GENERATED)), (
            f"{stack}: CLI printed a secret"
        )
    rendered = [yaml.safe_load(p.read_text()) for p in (tmp_path / "out").glob("*.yaml")]
    assert not find_leaks(rendered, list(GENERATED)), f"{stack}: rendered files leak a password"
