"""Settings the API server would refuse are refused by the model first, one rule class per test.

`pulumi up` creates objects in order; a value the API server refuses stops it half way, after
the namespace, Secrets and ConfigMaps exist. So quantities, int32 fields, names, labels, env
names, tolerations and images are checked with Kubernetes' own rules before anything exists.
"""

from __future__ import annotations

import copy
import math
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from brokerctl import mockrun, render
from components.engine import DEFAULT_IMAGES, MIN_VERSIONS
from components.images import ImageReference
from components.k8s_values import INT32_MAX
from components.quantities import cpu_millicores, memory_bytes, parse_quantity
from components.settings import BrokerSettings, MetricsSettings, Section, StackSettings
from tests.unit.conftest import run_brokerctl
from tests.unit.test_broker_config import make_settings
from tests.unit.test_workers import APP_IMAGE, stack_settings

DIGEST = "sha256:" + "0123456789abcdef" * 4
Loc = tuple[str | int, ...]


def validate(overrides: dict[str, Any]) -> StackSettings:
    """Validate an ephemeral stack with one pinned pool, `overrides` merged on top by section."""
    data: dict[str, Any] = {
        "ephemeral": True,
        "broker": {"persistence": "none"},
        "workers": {"pools": [{"name": "pool", "image": APP_IMAGE}]},
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    return StackSettings.model_validate(data)


def refusal(overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the model's errors for these overrides; fail the test when it accepts them."""
    with pytest.raises(ValidationError) as caught:
        validate(overrides)
    return caught.value.errors()


def errors_at(errors: list[dict[str, Any]], loc: Loc) -> list[str]:
    """Messages of the errors at exactly `loc`, cross-field problems expanded to their keys."""
    found = []
    for error in errors:
        cause = (error.get("ctx") or {}).get("error")
        for relative, _value, message in getattr(cause, "problems", ()):
            if tuple(error["loc"]) + tuple(relative) == loc:
                found.append(message)
        if tuple(error["loc"]) == loc:
            found.append(error["msg"])
    return found


# --- quantities: apimachinery's ParseQuantity, byte for byte --------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e9", 10**9),
        ("1E3", 1000),
        ("1e+3", 1000),
        ("1.5Gi", 3 * 2**29),
        ("+1Gi", 2**30),
        ("512Mi", 512 * 2**20),
        ("1E", 10**18),  # E is exa, not an exponent, when nothing follows it
        (".5Ki", 512),
        ("1.", 1),
        ("100m", 0.1),
        ("0.1n", 1e-9),  # Kubernetes rounds up to nano units
    ],
)
def test_quantities_kubernetes_accepts_are_accepted_with_their_exact_value(text, value):
    assert math.isclose(parse_quantity(text), value, rel_tol=0, abs_tol=1e-12), (
        f"{text!r} should mean {value}, not {parse_quantity(text)}"
    )


@pytest.mark.parametrize(
    "text",
    [
        "512Mi\n",  # Python's `$` matches before a trailing newline; ParseQuantity does not
        " 1Gi",
        "1Gi ",
        "",
        "1K",  # decimal kilo is k
        "1mi",
        "1e",
        "1ee3",
        "1.5.5",
        "1e4294967296",  # Kubernetes truncates the exponent to int32: it would mean 1
        "0x10",
        "1_000",
        "\uff18Gi",  # a fullwidth digit: \d in Python, not in Go
        "1" * 65,
    ],
)
def test_quantities_kubernetes_refuses_are_refused(text):
    with pytest.raises(ValueError, match="allowed: "):
        parse_quantity(text)
    errors = refusal({"broker": {"storage": {"size": text}}})
    assert errors_at(errors, ("broker", "storage", "size")), f"{text!r} accepted: {errors}"


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ("0", "more than zero"),
        ("-1Gi", "more than zero"),
        ("8Ei", "more bytes than Kubernetes can represent"),
        (float("inf"), "not a finite number"),
        (float("nan"), "not a finite number"),
        (True, "string"),
    ],
)
def test_memory_quantities_that_mean_no_memory_are_refused_with_what_is_allowed(memory, message):
    errors = refusal({"broker": {"max_message_bytes": memory}})
    found = errors_at(errors, ("broker", "max_message_bytes"))
    assert any(message in m for m in found), f"{memory!r}: expected {message!r} in {found}"


def test_numbers_are_quantities_as_kubernetes_reads_them():
    settings = make_settings(
        resources={"memory_request": 2**30, "memory_limit": 1e9 * 2, "cpu_request": 0.5}
    )
    resources = settings.broker.resources
    assert memory_bytes(resources.memory_request) == 2**30, resources
    assert memory_bytes(resources.memory_limit) == 2 * 10**9, resources
    assert cpu_millicores(resources.cpu_request) == 500, resources


def test_cpu_limit_below_its_request_is_refused_like_memory():
    errors = refusal({"broker": {"resources": {"cpu_request": "1", "cpu_limit": "500m"}}})
    found = errors_at(errors, ("broker", "resources", "cpu_request"))
    assert found, f"CPU limit below request accepted: {errors}"
    assert "cpu_limit" in found[0], found
    assert validate({"broker": {"resources": {"cpu_request": "1", "cpu_limit": "1000m"}}})
    negative = refusal({"broker": {"resources": {"cpu_request": "-1"}}})
    assert errors_at(negative, ("broker", "resources", "cpu_request")), negative


# --- numbers: finite, and within the int32 Kubernetes stores -------------------------------

REQUIRED: dict[str, dict[str, Any]] = {
    "PoolSettings": {"name": "pool", "image": APP_IMAGE},
    "RdbSavePoint": {"seconds": 60, "changes": 1},
    "Toleration": {"key": "dedicated"},
}
"""Values for required fields, so a section can be built around the one field under test."""


def _section_in(annotation: object) -> tuple[type[BaseModel] | None, bool]:
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation, False
    for arg in typing.get_args(annotation):
        model, _ = _section_in(arg)
        if model is not None:
            return model, typing.get_origin(annotation) is list
    return None, False


def numeric_settings(
    model: type[BaseModel] = StackSettings, loc: Loc = ()
) -> Iterator[tuple[Loc, type]]:
    """Every int and float setting of the model, with its location (lists: their first item)."""
    for name, info in model.model_fields.items():
        nested, is_list = _section_in(info.annotation)
        if nested is not None:
            yield from numeric_settings(nested, (*loc, name, 0) if is_list else (*loc, name))
            continue
        kinds = typing.get_args(info.annotation) or (info.annotation,)
        for kind in (int, float):
            if kind in kinds:
                yield (*loc, name), kind


def with_value(loc: Loc, value: object) -> dict[str, Any]:
    """Build settings data with `value` at `loc`, filling in required siblings on the way."""
    data: dict[str, Any] = {}
    node: Any = data
    model: type[BaseModel] = StackSettings
    for index, part in enumerate(loc):
        if isinstance(part, int):
            continue
        last = index == len(loc) - 1
        if last:
            node[part] = value
            break
        nested, is_list = _section_in(model.model_fields[part].annotation)
        assert nested is not None
        child = copy.deepcopy(REQUIRED.get(nested.__name__, {}))
        node[part] = [child] if is_list else child
        node, model = child, nested
    return data


NUMERIC = list(numeric_settings())


def param_id(value: object) -> str:
    """Name a test case by its key path (`workers.pools.0.replicas`) or type."""
    if isinstance(value, tuple):
        return ".".join(map(str, value))
    return getattr(value, "__name__", str(value))


def test_the_walk_finds_the_numeric_settings():
    locs = {loc for loc, _ in NUMERIC}
    for expected in [
        ("workers", "pools", 0, "replicas"),
        ("workers", "pools", 0, "autoscaling", "max_replicas"),
        ("checks", "ttl_seconds_after_finished"),
        ("broker", "rdb_schedule", 0, "changes"),
        ("workers", "pools", 0, "soft_shutdown_seconds"),
    ]:
        assert expected in locs, f"{expected} missing from {sorted(locs)}"


@pytest.mark.parametrize(("loc", "kind"), NUMERIC, ids=param_id)
def test_every_numeric_setting_refuses_values_beyond_int32(loc, kind):
    value = kind(INT32_MAX + 1)
    errors = refusal(with_value(loc, value))
    assert errors_at(errors, loc), f"{loc} = {value} accepted, or refused elsewhere: {errors}"


@pytest.mark.parametrize(
    ("loc", "kind"), [(loc, kind) for loc, kind in NUMERIC if kind is float], ids=param_id
)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=str)
def test_every_float_setting_refuses_infinity_and_nan(loc, kind, value):
    errors = refusal(with_value(loc, value))
    found = errors_at(errors, loc)
    assert any("finite" in message for message in found), f"{loc} = {value}: {errors}"


def test_int32_maximum_itself_is_accepted():
    pool = stack_settings(replicas=INT32_MAX).workers.pools[0]
    assert pool.replicas == INT32_MAX


def test_a_startup_probe_budget_beyond_int32_is_refused():
    errors = refusal(
        {
            "broker": {
                "persistence": "aof",
                "aof_load_mb_per_second": 1e-6,
                "storage": {"size": "7Ei"},
            }
        }
    )
    found = errors_at(errors, ("broker", "aof_load_mb_per_second"))
    assert found, f"an int32-overflowing failureThreshold passed: {errors}"
    assert "int32" in found[0], found


# --- names, labels, env names, tolerations --------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"namespace": "Celery"}, ("namespace",)),
        ({"namespace": "a" * 64}, ("namespace",)),
        ({"namespace": "celery\n"}, ("namespace",)),
        ({"workers": {"keda_namespace": "keda_system"}}, ("workers", "keda_namespace")),
        (
            {"broker": {"storage": {"storage_class": "Fast_SSD"}}},
            ("broker", "storage", "storage_class"),
        ),
        (
            {"broker": {"storage": {"storage_class": "a" * 254}}},
            ("broker", "storage", "storage_class"),
        ),
        (
            {"broker": {"storage": {"storage_class": "fast..ssd"}}},
            ("broker", "storage", "storage_class"),
        ),
        ({"tls": {"secret_name": "redis..tls"}}, ("tls", "secret_name")),
        ({"tls": {"cert_manager_issuer": "-ca"}}, ("tls", "cert_manager_issuer")),
    ],
    ids=str,
)
def test_object_and_namespace_names_follow_dns_rules(overrides, loc):
    errors = refusal(overrides)
    found = errors_at(errors, loc)
    assert found, f"{overrides} accepted, or refused elsewhere: {errors}"
    assert "DNS" in found[0], found


def test_valid_dns_names_are_accepted():
    settings = validate(
        {
            "namespace": "1-celery",  # namespaces are DNS-1123 labels: a digit may lead
            "broker": {"storage": {"storage_class": "fast-ssd.storage.example.com"}},
        }
    )
    assert settings.broker.storage.storage_class == "fast-ssd.storage.example.com"


@pytest.mark.parametrize(
    ("labels", "accepted"),
    [
        ({"pool": "gpu"}, True),
        ({"example.com/pool": "gpu-1.a_b"}, True),
        ({"node-role.kubernetes.io/worker": ""}, True),
        ({"a" * 63: "b" * 63}, True),
        ({"a" * 64: "x"}, False),
        ({"x": "b" * 64}, False),
        ({"Example.com/pool": "x"}, False),
        ({"/pool": "x"}, False),
        ({"a/b/c": "x"}, False),
        ({"pool": "a b"}, False),
        ({"pool": "-gpu"}, False),
        ({"pool\n": "x"}, False),
    ],
    ids=str,
)
def test_label_keys_and_values_follow_the_qualified_name_rules(labels, accepted):
    for overrides in (
        {"broker": {"placement": {"node_selector": labels}}},
        {"metrics": {"rule_labels": labels}},
    ):
        if accepted:
            validate(overrides)
        else:
            errors = refusal(overrides)
            assert any("label" in e["msg"] for e in errors), f"{overrides}: {errors}"


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("MY_SETTING", True),
        ("my.env-name", True),
        ("_private", True),
        ("1BAD", False),
        ("A=B", False),
        ("A B", False),
        ("..", False),
        ("..x", False),
        ("", False),
        ("X\n", False),
    ],
    ids=repr,
)
def test_env_names_follow_kubernetes_env_var_name_rule(name, accepted):
    if accepted:
        assert stack_settings(env={name: "v"}).workers.pools[0].env == {name: "v"}
        return
    errors = refusal(
        {"workers": {"pools": [{"name": "p", "image": APP_IMAGE, "env": {name: "v"}}]}}
    )
    assert any("environment variable name" in e["msg"] for e in errors), f"{name!r}: {errors}"


@pytest.mark.parametrize(
    ("toleration", "loc_tail"),
    [
        ({"key": "gpu", "operator": "Exists", "value": "yes"}, ("value",)),
        ({"key": "gpu", "value": "a b"}, ("value",)),
        ({"key": "gpu", "operator": "In", "value": "x"}, ("operator",)),
        ({"key": "gpu", "effect": "NoRun"}, ("effect",)),
        ({"key": "bad key"}, ("key",)),
        ({"key": ""}, ("key",)),
    ],
    ids=str,
)
def test_tolerations_follow_the_api_rules(toleration, loc_tail):
    errors = refusal({"broker": {"placement": {"tolerations": [toleration]}}})
    loc = ("broker", "placement", "tolerations", 0, *loc_tail)
    assert errors_at(errors, loc), f"{toleration} accepted, or refused elsewhere: {errors}"


def test_tolerations_the_api_accepts_are_accepted():
    tolerations = [
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "example.com/dedicated", "value": "celery", "effect": "NoExecute"},
    ]
    settings = validate({"broker": {"placement": {"tolerations": tolerations}}})
    assert len(settings.broker.placement.tolerations) == 2


def test_longest_prefix_and_pool_names_render_valid_object_names_and_labels(tmp_path: Path):
    stack = {
        "config": {
            "celery-redis:name_prefix": "a" * 20,
            "celery-redis:ephemeral": True,
            "celery-redis:broker": {"persistence": "none"},
            "celery-redis:workers": {
                "pools": [{"name": "p" * 30, "image": APP_IMAGE, "autoscaling": {"enabled": True}}],
                "beat": {"enabled": True},
            },
        }
    }
    (tmp_path / "Pulumi.names.yaml").write_text(yaml.safe_dump(stack))
    config, secret_keys = mockrun.read_stack_config("names", tmp_path)
    run = mockrun.run_program("names", config, secret_keys, tmp_path)
    objects = [render.manifest(r) for r in run.resources if render.is_kubernetes_object(r.type)]
    subdomain = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
    label_value = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63, f"{obj['kind']} name {name!r} is too long"
        assert subdomain.fullmatch(name), f"{obj['kind']} name {name!r}"
        for key, value in (obj["metadata"].get("labels") or {}).items():
            assert len(value) <= 63, f"{name}: {key}={value!r} is too long"
            assert label_value.fullmatch(value), f"{name}: {key}={value!r}"


# --- images: pinned, well formed, and a Redis the rendered redis.conf loads in --------------

IMAGE_SETTINGS: list[tuple[dict[str, Any], Loc]] = [
    ({"broker": {"image": "{image}"}}, ("broker", "image")),
    ({"workers": {"pools": [{"name": "p", "image": "{image}"}]}}, ("workers", "pools", 0, "image")),
    ({"workers": {"pools": [{"name": "p", "image": APP_IMAGE}], "beat": {"image": "{image}"}}},
     ("workers", "beat", "image")),
    ({"checks": {"image": "{image}"}}, ("checks", "image")),
    ({"metrics": {"exporter_image": "{image}"}}, ("metrics", "exporter_image")),
]  # fmt: skip


def place(template: Any, image: str) -> Any:
    """Return the overrides template with `image` where it says {image}."""
    if isinstance(template, dict):
        return {key: place(value, image) for key, value in template.items()}
    if isinstance(template, list):
        return [place(item, image) for item in template]
    return image if template == "{image}" else template


@pytest.mark.parametrize(
    ("template", "loc"), IMAGE_SETTINGS, ids=[param_id(loc) for _, loc in IMAGE_SETTINGS]
)
@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("redis", "no tag"),
        ("registry.example.com:5000/redis", "no tag"),  # the port is not a tag
        ("redis:latest", "latest"),
        (f"redis:latest@{DIGEST}", "latest"),
        ("redis:7.2.7@sha256:abc", "not a container image reference"),
        (f"redis:7.2.7@md5:{'0' * 32}", "not sha256"),
        ("Redis:7.2.7", "not a container image reference"),
        ("redis:7.2.7\n", "not a container image reference"),
        ("redis: 7.2.7", "not a container image reference"),
    ],
)
def test_every_image_setting_refuses_unpinned_and_malformed_images(template, loc, image, reason):
    errors = refusal(place(template, image))
    found = errors_at(errors, loc)
    assert any(reason in message for message in found), f"{image!r} at {loc}: {errors}"


@pytest.mark.parametrize(
    "image",
    [
        "redis:7.2.7",
        "docker.io/library/redis:7.2.7-alpine3.20",
        "localhost:5000/redis:7.0.15",
        "[::1]:5000/redis:v7.2.4",
        "mirror.example.com/broker:7.2.7",  # a neutral name: the tag still gives the version
    ],
)
def test_pinned_redis_images_of_supported_versions_are_accepted(image):
    assert validate({"broker": {"image": image}}).broker.image == image


def test_app_images_pinned_by_digest_alone_are_accepted():
    image = f"registry.example.com/transcritor-pdf@{DIGEST}"
    assert stack_settings(image=image).workers.pools[0].image == image


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("redis:6.2.14", "older than the rendered redis.conf supports"),
        ("redis:6", "only a major version in its tag"),
        ("redis:7", "only a major version in its tag"),
        ("redis:alpine", "no version in its tag"),
    ],
)
def test_redis_images_older_than_the_config_or_without_a_version_are_refused(image, reason):
    errors = refusal({"broker": {"image": image}})
    found = errors_at(errors, ("broker", "image"))
    oldest = ".".join(map(str, MIN_VERSIONS["redis"]))
    assert any(reason in m and oldest in m for m in found), f"{image!r}: {errors}"


def test_the_pool_image_has_no_default():
    with pytest.raises(ValidationError) as caught:
        StackSettings.model_validate({"ephemeral": True, "broker": {"persistence": "none"}})
    missing = [e for e in caught.value.errors() if e["type"] == "missing"]
    assert [tuple(e["loc"]) for e in missing] == [("workers", "pools", 0, "image")], (
        f"a stack without workers must be told to set the pool image: {caught.value.errors()}"
    )


def test_image_defaults_are_pinned():
    """Defaults are not validated by pydantic: check them against the same types here."""
    assert BrokerSettings.model_fields["image"].default == DEFAULT_IMAGES["redis"]
    for engine, image in DEFAULT_IMAGES.items():
        broker = validate({"broker": {"engine": engine}}).broker
        assert broker.image == image, f"engine {engine} runs {broker.image}, not its default"
    exporter_default = MetricsSettings.model_fields["exporter_image"].default
    assert TypeAdapter(ImageReference).validate_python(exporter_default) == exporter_default


# --- the command line: infinity in a stack file is a settings error, not a traceback --------


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("  celery-redis:broker:\n    resources:\n      memory_limit: .inf\n",
         "celery-redis:broker.resources.memory_limit"),
        ("  celery-redis:workers:\n    pools:\n      - name: pdf\n"
         f"        image: {APP_IMAGE}\n        soft_shutdown_seconds: .inf\n",
         "celery-redis:workers.pools[0].soft_shutdown_seconds"),
        ("  celery-redis:workers:\n    pools:\n      - name: pdf\n"
         f"        image: {APP_IMAGE}\n        replicas: -.inf\n",
         "celery-redis:workers.pools[0].replicas"),
        ("  celery-redis:broker:\n    aof_load_mb_per_second: .nan\n",
         "celery-redis:broker.aof_load_mb_per_second"),
    ],
    ids=["quantity", "float", "int", "nan"],
)  # fmt: skip
def test_render_reports_infinity_in_a_stack_file_as_a_settings_error(
    stack_dir, tmp_path, setting, key
):
    stack_dir.write("inf", f"config:\n{setting}")
    out = tmp_path / "out"
    result = run_brokerctl(
        "render", "--stack", "inf", "--config-dir", str(stack_dir.path), "--out", str(out)
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, f"exit {result.returncode}, expected 2:\n{output}"
    assert "Traceback" not in output, output
    assert "OverflowError" not in output, output
    line = next((ln for ln in result.stderr.splitlines() if key in ln), None)
    assert line is not None, f"no message names {key}:\n{result.stderr}"
    assert "Pulumi.inf.yaml" in line, f"the message does not name the stack file: {line}"
    assert "finite" in line, f"the message does not say what is allowed: {line}"
    assert not out.exists() or not any(out.iterdir()), "render wrote objects for a bad stack"
