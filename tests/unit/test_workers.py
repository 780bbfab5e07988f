"""Worker pools as rendered: command, wiring, probes, shutdown, scaling and hardening."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from brokerctl import mockrun, render
from brokerctl.deletioncost import inflight_key
from components import broker, celery_config, workers
from components.settings import PoolSettings, StackSettings

STACKS = ("dev", "staging", "prod")
APP_IMAGE = "registry.example.com/transcritor-pdf:1.0.0"
"""A pinned application image for pools a test does not give one (the model requires it)."""


def stack_settings(**pool: Any) -> StackSettings:
    """Return settings of an ephemeral stack with one pool, `pool` overriding its defaults."""
    return StackSettings.model_validate(
        {
            "ephemeral": True,
            "broker": {"persistence": "none"},
            "workers": {"pools": [{"name": "pool", "image": APP_IMAGE, **pool}]},
        }
    )


def render_objects(tmp_path: Path, workers_settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the real program for a stack with these worker settings; return its manifests."""
    stack = {
        "config": {
            "celery-redis:namespace": "unit-workers",
            "celery-redis:ephemeral": True,
            "celery-redis:broker": {"persistence": "none"},
            "celery-redis:workers": {
                **workers_settings,
                "pools": [{"image": APP_IMAGE, **pool} for pool in workers_settings["pools"]],
            },
        }
    }
    (tmp_path / "Pulumi.unit.yaml").write_text(yaml.safe_dump(stack))
    config, secret_keys = mockrun.read_stack_config("unit", tmp_path)
    run = mockrun.run_program("unit", config, secret_keys, tmp_path)
    return [render.manifest(r) for r in run.resources if render.is_kubernetes_object(r.type)]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="module")
def prod_objects() -> list[dict[str, Any]]:
    return render.render_stack("prod")


def test_worker_command_names_the_wiring_module_queues_and_pool_shape():
    settings = stack_settings(queues=["a", "b"], concurrency=4, pool="threads")
    command = celery_config.worker_command(settings, settings.workers.pools[0])
    assert command[:4] == ["celery", "-A", celery_config.WIRING_MODULE, "worker"], command
    flags = dict(zip(command[4::2], command[5::2], strict=False))
    assert (flags["-Q"], flags["-c"], flags["-P"]) == ("a,b", "4", "threads"), command
    assert "pool@%h" in command, "node name must be unique per pod and name the pool"


def test_wiring_module_is_valid_python_carrying_every_rendered_setting():
    settings = stack_settings(time_limit=900, soft_time_limit=800, prefetch_multiplier=3)
    pool = settings.workers.pools[0]
    options = broker.client_transport_options(settings)
    module = celery_config.celery_wiring_module(settings, pool, options)
    rendered = rendered_settings(module)
    assert rendered["broker_transport_options"]["visibility_timeout"] == settings.visibility_timeout
    assert rendered["worker_prefetch_multiplier"] == 3
    limits = (rendered["task_time_limit"], rendered["task_soft_time_limit"])
    assert limits == (900, 800), limits
    assert rendered["task_acks_late"] is True, "tasks must be acknowledged after they ran"
    assert rendered["task_reject_on_worker_lost"] is True, "lost tasks must be requeued"
    assert rendered["worker_soft_shutdown_timeout"] == pool.soft_shutdown_seconds
    assert "broker_url" not in rendered, "the broker URL comes from the Secret, not the ConfigMap"
    for setting in celery_config.worker_settings(settings, pool, options):
        assert f"'{setting.name}': " in module, f"{setting.name} is not rendered"
        assert f"  # {setting.reason}" in module, f"{setting.name} is rendered without its reason"


def test_settings_an_older_celery_lacks_are_rendered_with_the_first_version_that_has_them():
    settings = stack_settings()
    pool = settings.workers.pools[0]
    module = celery_config.celery_wiring_module(
        settings, pool, broker.client_transport_options(settings)
    )
    minimum = module_literal(module, "MINIMUM_CELERY")
    assert minimum == {
        "worker_disable_prefetch": (5, 6),
        "worker_enable_soft_shutdown_on_idle": (5, 5),
        "worker_soft_shutdown_timeout": (5, 5),
    }, f"settings gated on the pod's Celery version: {minimum}"
    assert set(minimum) <= set(rendered_settings(module)), "a gated setting is not rendered"


@pytest.mark.parametrize(("multiplier", "disabled"), [(1, True), (4, None)])
def test_prefetch_is_disabled_only_for_pools_that_ask_one_task_per_process(multiplier, disabled):
    settings = stack_settings(prefetch_multiplier=multiplier)
    pool = settings.workers.pools[0]
    module = celery_config.celery_wiring_module(
        settings, pool, broker.client_transport_options(settings)
    )
    assert rendered_settings(module).get("worker_disable_prefetch") is disabled, (
        f"prefetch_multiplier {multiplier}: a pool that asked for prefetching must keep it"
    )


@pytest.mark.parametrize("stale", [10, 11, 20, 40, 120, 600])
def test_a_stalled_consumer_stops_the_heartbeat_well_inside_the_liveness_window(stale):
    stall = celery_config.consumer_stall_seconds(stale)
    heartbeat = celery_config.heartbeat_seconds(stale)
    assert stall >= celery_config.CONSUMER_REPLY_GRACE, "a busy event loop must not look stuck"
    assert stall + heartbeat < stale, (
        f"window {stale} s: a stall is seen only after {stall + heartbeat} s, too late"
    )


def test_solo_pool_liveness_window_covers_the_hard_time_limit():
    settings = stack_settings(pool="solo", time_limit=1800, soft_time_limit=1700)
    window = celery_config.liveness_window_seconds(settings.workers.pools[0])
    assert window > 1800, f"a solo worker running a long task would be killed (window {window} s)"
    prefork = stack_settings(time_limit=1800, soft_time_limit=1700).workers.pools[0]
    assert celery_config.liveness_window_seconds(prefork) == prefork.liveness_stale_seconds


def test_priority_sub_queues_are_all_counted_by_one_summing_formula():
    settings = stack_settings(queues=["celery", "pdf.high"], autoscaling={"enabled": True})
    access = broker.autoscaler_access(settings, "broker.ns.svc:6379", password=None)
    spec = workers.scaled_object_spec(
        settings.workers.pools[0], "deploy", access, "auth", in_flight=False
    )
    lists = {t["metadata"]["listName"] for t in spec["triggers"]}
    expected = {
        f"{q}\x06\x16{step}" if step else q for q in ("celery", "pdf.high") for step in (0, 3, 6, 9)
    }
    assert lists == expected, "every kombu priority list of every queue must be counted"
    formula = spec["advanced"]["scalingModifiers"]["formula"]
    assert sorted(formula.split(" + ")) == sorted(t["name"] for t in spec["triggers"]), formula
    assert all(t["name"].isidentifier() for t in spec["triggers"]), "names must work in a formula"


def test_keda_counts_the_pools_in_flight_tasks_so_it_never_scales_to_zero_under_them():
    """The in-flight list (kept by the scale-in controller) is summed with the queue lists."""
    settings = stack_settings(
        name="pdf", queues=["celery"], autoscaling={"enabled": True, "min_replicas": 0}
    )
    access = broker.autoscaler_access(settings, "broker.ns.svc:6379", password=None)
    spec = workers.scaled_object_spec(
        settings.workers.pools[0], "deploy", access, "auth", in_flight=True
    )
    (in_flight,) = [t for t in spec["triggers"] if t["name"] == workers.IN_FLIGHT_TRIGGER]
    assert in_flight["metadata"]["listName"] == inflight_key("pdf"), in_flight
    modifiers = spec["advanced"]["scalingModifiers"]
    assert workers.IN_FLIGHT_TRIGGER in modifiers["formula"].split(" + "), modifiers
    # Active (no scale to zero) while the sum is above 0: one running task keeps it so.
    assert modifiers["activationTarget"] == "0", modifiers


def test_scale_to_zero_without_the_controller_is_refused_naming_both_settings():
    def workers_settings(min_replicas: int) -> dict[str, Any]:
        autoscaling = {"enabled": True, "min_replicas": min_replicas}
        pool = {"name": "pool", "image": APP_IMAGE, "autoscaling": autoscaling}
        return {"pools": [pool], "scale_in": {"enabled": False}}

    with pytest.raises(ValidationError) as refused:
        StackSettings.model_validate({"ephemeral": True, "workers": workers_settings(0)})
    message = str(refused.value)
    assert "min_replicas" in message, message
    assert "workers.scale_in.enabled" in message, message
    StackSettings.model_validate({"ephemeral": True, "workers": workers_settings(1)})


def test_keda_objects_carry_no_credentials_and_reference_a_trigger_authentication(prod_objects):
    scaled = [o for o in prod_objects if o["kind"] == "ScaledObject"]
    assert {o["metadata"]["name"] for o in scaled} == {"celery-worker-pdf", "celery-worker-short"}
    auth = of_kind(prod_objects, "TriggerAuthentication")
    assert len(auth) == 1, "one TriggerAuthentication serves every pool"
    for obj in scaled:
        assert "redacted-" not in repr(obj), f"{obj['metadata']['name']}: a credential leaked"
        assert "password" not in repr(obj["spec"]["triggers"]), (
            f"{obj['metadata']['name']}: a credential is in the ScaledObject"
        )
        for trigger in obj["spec"]["triggers"]:
            assert trigger["authenticationRef"] == {"name": auth[0]["metadata"]["name"]}
    refs = auth[0]["spec"]["secretTargetRef"]
    # prod's broker serves TLS: KEDA also gets the CA (never the key) from the TLS Secret.
    assert {r["parameter"] for r in refs} == {"username", "password", "ca"}, refs
    assert {r["key"] for r in refs if r["parameter"] == "ca"} == {"ca.crt"}, refs


def test_scaled_pools_leave_replicas_to_the_scaler(prod_objects):
    for deployment in of_kind(prod_objects, "Deployment"):
        if deployment["metadata"]["name"].startswith("celery-worker-"):
            assert "replicas" not in deployment["spec"], (
                f"{deployment['metadata']['name']}: replicas would fight KEDA on every update"
            )


def test_worker_pods_get_broker_urls_only_from_the_secret_and_the_wiring_first_on_path(tmp_path):
    pool = {"name": "api", "broker_url_aliases": ["REDIS_URL"], "pythonpath": "/srv/app"}
    objects = render_objects(tmp_path, {"pools": [pool]})
    deployment = next(
        o for o in of_kind(objects, "Deployment") if o["metadata"]["name"] == "celery-worker-api"
    )
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name, key in (
        ("CELERY_BROKER_URL", "CELERY_BROKER_URL"),
        ("CELERY_RESULT_BACKEND", "CELERY_RESULT_BACKEND"),
        ("REDIS_URL", "CELERY_BROKER_URL"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"]["key"] == key, f"{name}: {env[name]}"
        assert "value" not in env[name], f"{name} is a literal"
    assert env["PYTHONPATH"]["value"] == f"{celery_config.CONFIG_DIR}:/srv/app"
    assert env["REMAP_SIGTERM"]["value"] == "SIGQUIT", "SIGTERM must start the cold (soft) shutdown"


def test_every_worker_object_is_namespaced_hardened_and_selected_apart(tmp_path):
    objects = render_objects(
        tmp_path,
        {
            "pools": [
                {"name": "one", "autoscaling": {"enabled": True, "engine": "hpa"}},
                {"name": "two", "queues": ["two"], "autoscaling": {"enabled": True}},
            ],
            "beat": {"enabled": True},
        },
    )
    ours = [
        o for o in objects if o["metadata"]["name"].startswith(("celery-worker", "celery-beat"))
    ]
    assert {o["kind"] for o in ours} >= {
        "Deployment",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ScaledObject",
    }
    for obj in ours:
        assert obj["metadata"]["namespace"] == "unit-workers", (
            f"{obj['metadata']['name']} not namespaced"
        )
    selectors = []
    for deployment in of_kind(ours, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        name = deployment["metadata"]["name"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert container["resources"]["limits"]["memory"], name
        assert {"livenessProbe", "readinessProbe", "startupProbe"} <= set(container), name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert len(spec["topologySpreadConstraints"]) == 2, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels.get("celery-redis/broker-client") == "true", (
            f"{name}: the broker would refuse it"
        )
        selectors.append(tuple(sorted(deployment["spec"]["selector"]["matchLabels"].items())))
    assert len(set(selectors)) == len(selectors), "two workloads share a selector"


def test_beat_is_a_single_recreated_replica_with_its_schedule_in_tmp(tmp_path):
    objects = render_objects(tmp_path, {"pools": [{"name": "one"}], "beat": {"enabled": True}})
    beat = next(o for o in of_kind(objects, "Deployment") if o["metadata"]["name"] == "celery-beat")
    assert beat["spec"]["replicas"] == 1, "two schedulers would send every task twice"
    assert beat["spec"]["strategy"] == {"type": "Recreate"}, "a rollout would overlap two beats"
    command = beat["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--schedule") + 1].startswith("/tmp/"), command
    assert command[1:4] == ["-A", celery_config.WIRING_MODULE, "beat"], command


def test_beat_is_off_by_default(prod_objects):
    assert not [o for o in prod_objects if o["metadata"]["name"] == "celery-beat"]


def module_literal(module: str, name: str) -> Any:
    """Return the value of the literal assigned to `name` in a rendered wiring module."""
    tree = ast.parse(module)
    literal = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name
    )
    return ast.literal_eval(literal)


def rendered_settings(module: str) -> dict[str, Any]:
    """Return the SETTINGS literal of a rendered wiring module."""
    return module_literal(module, "SETTINGS")


@pytest.mark.parametrize("stack", STACKS)
def test_grace_period_covers_the_soft_shutdown_and_the_hand_back(stack):
    objects = render.render_stack(stack)
    config_maps = {o["metadata"]["name"]: o for o in of_kind(objects, "ConfigMap")}
    workers_found = 0
    for deployment in of_kind(objects, "Deployment"):
        if not deployment["metadata"]["name"].startswith("celery-worker-"):
            continue
        workers_found += 1
        spec = deployment["spec"]["template"]["spec"]
        wiring = next(v for v in spec["volumes"] if "configMap" in v)["configMap"]["name"]
        module = config_maps[wiring]["data"][celery_config.WIRING_FILE]
        soft = rendered_settings(module)["worker_soft_shutdown_timeout"]
        assert spec["terminationGracePeriodSeconds"] >= soft + 20, (
            f"{stack} {deployment['metadata']['name']}: "
            f"grace {spec['terminationGracePeriodSeconds']} s "
            f"leaves no time to hand tasks back after a {soft} s soft shutdown"
        )
    assert workers_found, f"{stack}: no worker Deployment rendered"


def test_cpu_autoscaler_cannot_scale_to_zero():
    with pytest.raises(ValueError, match="cannot scale to zero"):
        PoolSettings.model_validate(
            {
                "name": "x",
                "image": APP_IMAGE,
                "autoscaling": {"enabled": True, "engine": "hpa", "min_replicas": 0},
            }
        )


def test_priority_lists_match_kombus_own_naming():
    """The project copies kombu's constants (render must not import kombu); they must agree."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    from components.celery_config import priority_lists

    expected = [("q" if step == 0 else f"q{Channel.sep}{step}") for step in PRIORITY_STEPS]
    assert [name for _, name in priority_lists("q")] == expected
