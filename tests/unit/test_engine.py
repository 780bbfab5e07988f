"""broker.engine and broker.engine_version: what they must agree with, and what they decide.

They must agree with the image; they decide the lines rendered, and which engine or version
change the one-way data formats allow. The formats in the table were checked against the real
servers in tests/integration/test_engine_upgrade_valkey.py; here, what the model decides.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from brokerctl import brokercheck
from brokerctl.brokercheck import broker as broker_checks
from brokerctl.brokercheck import options as check_options
from components import redis_config
from components.deployed import deployed_engine, engine_change_problem
from components.engine import (
    DEFAULT_IMAGES,
    data_change_problem,
    loads_rdb,
    parse_version,
    written_rdb,
)
from tests.unit.test_settings_k8s_values import errors_at, refusal, validate

DIGEST = "sha256:" + "0123456789abcdef" * 4


def broker(**overrides: Any) -> Any:
    """Return validated broker settings of an ephemeral stack with these overrides."""
    return validate({"broker": overrides}).broker


# --- settings: engine, image and version agree ----------------------------------------------


def test_valkey_engine_runs_the_pinned_valkey_image_and_its_version() -> None:
    settings = broker(engine="valkey")
    assert settings.image == DEFAULT_IMAGES["valkey"]
    assert settings.server_version == (9, 1, 2)
    assert broker().image == DEFAULT_IMAGES["redis"], "redis must keep its default image"


@pytest.mark.parametrize(
    ("engine", "image", "named"),
    [
        ("valkey", "docker.io/library/redis:7.2.7", "a Redis image but engine is valkey"),
        ("redis", "docker.io/valkey/valkey:9.1.2", "a Valkey image but engine is redis"),
        ("redis", "registry.example.com/bitnami/valkey:8.1.1", "a Valkey image"),
    ],
)
def test_an_image_of_the_other_engine_is_refused_at_the_image(
    engine: str, image: str, named: str
) -> None:
    found = errors_at(refusal({"broker": {"engine": engine, "image": image}}), ("broker", "image"))
    assert any(named in message and "allowed:" in message for message in found), found


def test_a_digest_needs_the_version_it_runs() -> None:
    image = f"docker.io/library/redis:7.2.7@{DIGEST}"
    found = errors_at(refusal({"broker": {"image": image}}), ("broker", "engine_version"))
    assert any("pinned by digest" in message for message in found), found
    pinned = broker(image=f"docker.io/library/redis@{DIGEST}", engine_version="7.2.4")
    assert pinned.server_version == (7, 2, 4)


@pytest.mark.parametrize(
    ("overrides", "loc", "expected"),
    [
        (
            {"image": "redis:7.2.7", "engine_version": "7.4.1"},
            ("broker", "engine_version"),
            "differs from the version in the image tag (7.2.7)",
        ),
        (
            {"engine": "valkey", "image": "valkey/valkey:7.0.0"},
            ("broker", "image"),
            "older than the rendered redis.conf supports; allowed: Valkey 7.2 or later",
        ),
        (
            {"engine": "valkey", "engine_version": 9.1},
            ("broker", "engine_version"),
            "the version quoted",
        ),
        (
            {"engine_version": "9"},
            ("broker", "engine_version"),
            "String should match pattern",
        ),
    ],
)
def test_versions_that_cannot_be_judged_are_refused(
    overrides: dict[str, Any], loc: tuple[str, ...], expected: str
) -> None:
    found = errors_at(refusal({"broker": overrides}), loc)
    assert any(expected in message for message in found), found


def test_a_neutral_image_name_takes_the_version_from_the_tag_or_the_setting() -> None:
    assert broker(image="mirror.example.com/broker:7.0.15").server_version == (7, 0, 15)
    mirrored = broker(
        engine="valkey", image="mirror.example.com/broker:v9.1", engine_version="9.1.2"
    )
    assert mirrored.server_version == (9, 1, 2)


# --- rendered lines by engine and version -----------------------------------------------------


def test_valkey_renders_its_server_and_its_own_lines_redis_renders_as_before() -> None:
    redis_conf = redis_config.redis_conf(validate({}))
    valkey_conf = redis_config.redis_conf(validate({"broker": {"engine": "valkey"}}))
    old_valkey = redis_config.redis_conf(
        validate({"broker": {"engine": "valkey", "image": "valkey/valkey:7.2.8"}})
    )
    assert "hide-user-data-from-log yes" in valkey_conf.splitlines()
    assert "hide-user-data-from-log" not in redis_conf, "Redis 7.x refuses this directive"
    assert "hide-user-data-from-log" not in old_valkey, "Valkey 7.2 refuses this directive"
    assert redis_conf.endswith("enable-protected-configs no\n"), "the Redis render changed"
    script = redis_config.start_script(engine="valkey")
    assert 'exec valkey-server "$REDIS_CONFIG"' in script
    assert "valkey-server --version" in script
    assert 'exec redis-server "$REDIS_CONFIG"' in redis_config.start_script()


# --- one-way data formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "version", "rdb"),
    [
        ("redis", "7.0.15", 10),
        ("redis", "7.2.7", 11),
        ("redis", "7.4.2", 12),
        ("redis", "8.4.0", 12),
        ("redis", "8.6.1", 13),
        ("valkey", "7.2.8", 11),
        ("valkey", "8.1.4", 11),
        ("valkey", "9.0.3", 80),
        ("valkey", "9.1.2", 80),
        ("valkey", "9.2.0", 81),
        ("redis", "9.0.0", None),
        ("valkey", "10.0.0", None),
    ],
)
def test_the_rdb_format_each_version_writes(engine: str, version: str, rdb: int | None) -> None:
    assert written_rdb(engine, parse_version(version)) == rdb


@pytest.mark.parametrize(
    ("deployed", "target", "allowed"),
    [
        (("redis", "7.0.15"), ("valkey", "9.1.2"), True),  # proven on the real servers
        (("valkey", "9.1.2"), ("redis", "7.0.15"), False),  # proven on the real servers
        (("redis", "7.2.7"), ("valkey", "8.1.4"), True),
        (("valkey", "8.1.4"), ("redis", "7.2.7"), True),  # both RDB 11
        (("valkey", "8.1.4"), ("redis", "7.0.15"), False),
        (("redis", "7.4.2"), ("valkey", "9.1.2"), False),  # RDB 12 is foreign to Valkey
        (("redis", "7.2.7"), ("redis", "7.0.15"), False),
        (("redis", "7.2.7"), ("redis", "7.2.4"), True),  # same line, same format
        (("valkey", "9.1.2"), ("valkey", "9.0.3"), True),  # both RDB 80
        (("valkey", "9.2.0"), ("valkey", "9.1.2"), False),
        (("valkey", "9.1.2"), ("valkey", "8.1.4"), False),
        (("redis", "8.6.1"), ("redis", "9.0.0"), True),  # newer than the table, same engine
        (("redis", "9.0.0"), ("redis", "8.6.1"), False),  # an unknown format: no way down
        (("redis", "9.0.0"), ("valkey", "9.1.2"), False),
    ],
)
def test_an_engine_or_version_change_is_allowed_only_when_the_target_loads_the_data(
    deployed: tuple[str, str], target: tuple[str, str], allowed: bool
) -> None:
    problem = data_change_problem(
        deployed[0], parse_version(deployed[1]), target[0], parse_version(target[1])
    )
    assert (problem is None) == allowed, f"{deployed} -> {target}: {problem}"


def test_valkey_loads_the_shared_formats_and_its_own_only() -> None:
    valkey = parse_version("9.1.2")
    assert [rdb for rdb in (10, 11, 12, 13, 80, 81) if loads_rdb("valkey", valkey, rdb)] == [
        10,
        11,
        80,
    ]


# --- the guard, against the deployed stack's outputs ----------------------------------------


def stack(**overrides: Any) -> Any:
    """Return validated stack settings with these broker overrides."""
    return validate({"broker": overrides})


def test_the_deployed_engine_output_names_engine_and_version() -> None:
    assert deployed_engine(stack()) == {"engine": "redis", "version": "7.2.7"}
    assert deployed_engine(stack(engine="valkey", engine_version="9.1")) == {
        "engine": "valkey",
        "version": "9.1",
    }


def test_a_downgrade_the_data_forbids_is_refused_naming_key_versions_and_the_way_out() -> None:
    deployed = {"engine": "valkey", "version": "9.1.2"}
    problem = engine_change_problem(stack(), deployed, "aof")
    assert problem is not None, "Valkey 9.1 -> Redis 7.2 was accepted"
    for expected in ("celery-redis:broker.engine", "Valkey 9.1.2", "Redis 7.2.7", "RDB 80"):
        assert expected in problem, f"{expected!r} missing from: {problem}"
    assert "allowed: valkey 9.0 or later" in problem, problem
    same_engine = engine_change_problem(
        stack(engine="valkey", image="valkey/valkey:8.1.4"), deployed, "rdb"
    )
    assert same_engine is not None
    assert "celery-redis:broker.image = 'valkey/valkey:8.1.4'" in same_engine, same_engine


@pytest.mark.parametrize(
    ("deployed", "persistence", "allowed"),
    [
        (None, None, True),  # first deploy
        ({"engine": "valkey", "version": "9.1.2"}, "none", True),  # nothing was written
        ({"engine": "redis", "version": "7.0.15"}, "aof", True),  # the upgrade path
        (None, "aof", False),  # deployed before engines were recorded: version unknown
    ],
)
def test_what_the_guard_knows_decides(
    deployed: dict[str, str] | None, persistence: str | None, allowed: bool
) -> None:
    problem = engine_change_problem(stack(engine="valkey"), deployed, persistence)
    assert (problem is None) == allowed, problem


def test_a_stack_deployed_before_engines_were_recorded_keeps_redis_as_before() -> None:
    assert engine_change_problem(stack(image="redis:7.0.15"), None, "aof") is None


# --- the check: which server answers ----------------------------------------------------------


VALKEY_INFO = {"server_name": "valkey", "valkey_version": "9.1.2", "redis_version": "7.2.4"}
REDIS_INFO = {"redis_version": "7.0.15"}


@pytest.mark.parametrize(
    ("info", "expected", "status"),
    [
        (VALKEY_INFO, ("valkey", "9.1"), "pass"),
        (VALKEY_INFO, ("valkey", None), "pass"),
        (VALKEY_INFO, ("redis", "7.2"), "fail"),  # Valkey's redis_version must not pass for Redis
        (VALKEY_INFO, ("valkey", "9.10"), "fail"),
        (REDIS_INFO, ("redis", "7.0.15"), "pass"),
        (REDIS_INFO, ("valkey", "9.1.2"), "fail"),
    ],
)
def test_the_check_compares_the_running_engine_with_the_deployed_one(
    info: dict[str, str], expected: tuple[str, str | None], status: str
) -> None:
    report = brokercheck.Report("test", brokercheck.Masker())
    broker_checks._check_engine(report, info, expected)
    (result,) = report.checks
    assert (result.name, result.status) == ("engine", status), result


def test_expect_engine_takes_an_engine_and_a_dotted_version() -> None:
    assert check_options._engine_spec("valkey:9.1") == ("valkey", "9.1")
    assert check_options._engine_spec("redis") == ("redis", None)
    for bad in ("keydb", "valkey:nine", "valkey:9.", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="ENGINE"):
            check_options._engine_spec(bad)


def test_the_gate_job_expects_the_engine_the_stack_runs() -> None:
    """A stack that says valkey must not pass its gate against a Redis (or the reverse)."""
    from brokerctl import mockrun
    from components import checks
    from components.stack_config import parse_stack_config
    from scripts.checkov_report import VARIANTS_DIR

    for stack, config_dir, engine in (
        ("staging-valkey", VARIANTS_DIR, "valkey"),
        ("staging", mockrun.CONFIG_DIR, "redis"),
    ):
        config, secret_keys = mockrun.read_stack_config(stack, config_dir)
        settings, _ = parse_stack_config(config, secret_keys, f"Pulumi.{stack}.yaml")
        args = checks.check_arguments(settings)
        assert args[args.index("--expect-engine") + 1] == engine, (stack, args)
