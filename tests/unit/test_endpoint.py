"""The broker's client contract: clients see one frozen `BrokerEndpoint`, never the broker.

A topology (one Redis, or Redis behind Sentinels) is a choice behind the broker component;
these tests keep the clients from reaching past the endpoint, and show that what the endpoint
says is what the clients render.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from brokerctl import mockrun, render
from components import broker, celery_config, endpoint, workers
from components.settings import StackSettings
from components.stack_config import parse_stack_config
from tests.unit.conftest import PROJECT_ROOT

CLIENT_MODULES = ("components/workers.py", "components/checks.py", "components/celery_config.py")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, by its dotted name (from-imports name the module)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", CLIENT_MODULES)
def test_clients_of_the_broker_never_import_the_broker_component(module: str) -> None:
    imported = imported_modules(PROJECT_ROOT / module)
    reached = sorted(name for name in imported if name.startswith("components.broker"))
    assert not reached, f"{module} reaches past the endpoint: {reached}"


def test_the_endpoint_and_its_mappings_cannot_be_changed_by_a_client() -> None:
    options = {"visibility_timeout": 60}
    value = endpoint.BrokerEndpoint(
        scheme="redis",
        hosts=("broker:6379",),
        secret=endpoint.ClientSecret(name=None),  # type: ignore[arg-type]
        transport_options=options,
        ca_volumes=(),
        ca_mounts=(),
        revision=None,  # type: ignore[arg-type]
        autoscaler=None,  # type: ignore[arg-type]
        client_labels={"app.kubernetes.io/part-of": "celery"},
        ready=(),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.scheme = "rediss"  # type: ignore[misc]
    with pytest.raises(TypeError):
        value.transport_options["visibility_timeout"] = 1  # type: ignore[index]
    options["visibility_timeout"] = 1
    assert value.transport_options["visibility_timeout"] == 60, "the caller's dict leaked in"


def test_a_topology_chooses_the_autoscaler_trigger_and_the_pools_follow() -> None:
    """Another trigger type and address (as a Sentinel topology will give) reach KEDA as given."""
    settings = mockrun_settings("prod")
    pool = settings.workers.pools[0]
    access = endpoint.AutoscalerAccess(
        trigger_type="redis-sentinel",
        where={"addresses": "s-0:26379, s-1:26379", "sentinelMaster": "broker"},
        how={"databaseIndex": "0"},
        username="keda",
        password=None,  # type: ignore[arg-type]
        ca_secret_name=None,
    )
    spec = workers.scaled_object_spec(pool, "deploy", access, "auth", in_flight=True)
    assert "in_flight" in {t["name"] for t in spec["triggers"]}
    for trigger in spec["triggers"]:
        assert trigger["type"] == "redis-sentinel"
        assert trigger["metadata"]["addresses"] == "s-0:26379, s-1:26379"
        assert trigger["metadata"]["sentinelMaster"] == "broker"
        assert "address" not in trigger["metadata"], "the standalone address leaked in"


def test_the_wiring_module_renders_the_endpoints_transport_options() -> None:
    settings = mockrun_settings("dev")
    pool = settings.workers.pools[0]
    options = {**broker.client_transport_options(settings), "master_name": "broker"}
    module = celery_config.celery_wiring_module(settings, pool, options)
    assert "'master_name': 'broker'" in module, "the endpoint's transport options were dropped"


def rendered(stack: str) -> list[dict[str, Any]]:
    return render.render_stack(stack)


def test_every_client_pod_takes_its_urls_from_the_endpoints_secret() -> None:
    objects = rendered("prod")
    (client_secret,) = [
        o
        for o in objects
        if o["kind"] == "Secret" and o["metadata"]["name"].endswith("broker-client")
    ]
    keys = set(client_secret["stringData"])
    assert keys == {
        endpoint.BROKER_URL_KEY,
        endpoint.RESULT_BACKEND_KEY,
        endpoint.CHECK_URL_KEY,
        endpoint.SCALE_IN_URL_KEY,
    }
    templates = [
        o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")
    ]
    assert templates, "no client pod rendered"
    for pod in templates:
        for container in pod["containers"]:
            refs = [
                e["valueFrom"]["secretKeyRef"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            assert refs, f"{container['name']} gets no broker URL from a Secret"
            assert {r["name"] for r in refs} == {client_secret["metadata"]["name"]}
            assert {r["key"] for r in refs} <= keys


def mockrun_settings(stack: str) -> StackSettings:
    config, secret_keys = mockrun.read_stack_config(stack)
    settings, _ = parse_stack_config(config, secret_keys, f"config/Pulumi.{stack}.yaml")
    return settings
