"""Rules between settings, and every problem of a stack file reported in one round.

A lasting stack names its cluster, pools that share a queue agree on its tasks' fate, and the
broker's volume holds what its persistence writes at its peak.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from brokerctl import mockrun
from components.quantities import memory_bytes
from components.settings import FILESYSTEM_USABLE_SHARE, PROJECT, StackSettings
from components.stack_config import SettingsError, parse_stack_config
from tests.unit.conftest import PROJECT_ROOT, run_brokerctl

STACK_FILE = "config/Pulumi.test.yaml"
IMAGE = "registry.example.com/transcritor-pdf:1.0.0"
MIB = 1024**2


def pool(name: str, **overrides: Any) -> dict[str, Any]:
    """Return a valid pool's settings with `overrides`."""
    return {"name": name, "image": IMAGE, **overrides}


def stack_config(**sections: Any) -> dict[str, str]:
    """Return a lasting stack's raw config as the Pulumi CLI hands it over (JSON strings).

    Valid as is: a named kube context, one pool with an image; `sections` replace top-level
    settings (a value None drops the key).
    """
    values: dict[str, Any] = {"kube_context": "test-cluster", "workers": {"pools": [pool("pdf")]}}
    values.update(sections)
    return {
        f"{PROJECT}:{name}": value if isinstance(value, str) else json.dumps(value)
        for name, value in values.items()
        if value is not None
    }


def settings_of(config: dict[str, str]) -> StackSettings:
    """Validate raw config; fail the test with the report if it is refused."""
    try:
        settings, _ = parse_stack_config(config, [], STACK_FILE)
    except SettingsError as error:
        pytest.fail(f"valid settings were refused:\n{error}")
    return settings


def problems_of(config: dict[str, str]) -> list[str]:
    """Return the problem lines of the SettingsError the config must raise."""
    with pytest.raises(SettingsError) as caught:
        parse_stack_config(config, [], STACK_FILE)
    return caught.value.problems


def problem_at(problems: list[str], key: str) -> str:
    """Return the one problem naming `key` (`celery-redis:broker.storage.size = ...`)."""
    found = [p for p in problems if p.startswith(f"{PROJECT}:{key} ")]
    assert len(found) == 1, f"expected one problem at {key}, got:\n" + "\n".join(problems)
    return found[0]


# A lasting stack names its cluster.


def test_lasting_stack_without_kube_context_is_refused():
    problems = problems_of(stack_config(kube_context=None))
    message = problem_at(problems, "kube_context")
    assert "= None" in message, f"the message should show the value: {message}"
    assert "kubectl config get-contexts" in message, f"no allowed values given: {message}"
    assert "ephemeral: true" in message, f"the way out is not named: {message}"


def test_blank_kube_context_counts_as_unset():
    problem_at(problems_of(stack_config(kube_context="  ")), "kube_context")


def test_ephemeral_stack_may_deploy_to_the_current_context():
    settings = settings_of(stack_config(kube_context=None, ephemeral=True))
    assert settings.kube_context is None


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_shipped_lasting_stacks_name_their_context(stack):
    config, secret_keys = mockrun.read_stack_config(stack)
    settings, _ = parse_stack_config(config, secret_keys, f"config/Pulumi.{stack}.yaml")
    assert not settings.ephemeral, f"{stack} is meant to last"
    assert settings.kube_context == stack, (
        f"{stack}'s stack file should name the context README documents, got "
        f"{settings.kube_context!r}"
    )


def test_render_refuses_a_lasting_stack_without_context_with_exit_2(stack_dir, tmp_path):
    stack_dir.write(
        "nocontext",
        "config:\n  celery-redis:workers:\n    pools:\n      - name: pdf\n"
        f"        image: {IMAGE}\n",
    )
    result = run_brokerctl(
        "render", "--stack", "nocontext", "--config-dir", str(stack_dir.path),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 2, f"exit {result.returncode}:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert "Pulumi.nocontext.yaml" in result.stderr, f"stack file not named:\n{result.stderr}"
    assert "celery-redis:kube_context = None" in result.stderr, result.stderr


# Pools that share a queue agree on what happens to its tasks.


def test_shared_queue_with_different_time_limits_is_refused():
    pools = [
        pool("pdf", queues=["celery"], soft_time_limit=1500, time_limit=1800),
        pool("short", queues=["short", "celery"], soft_time_limit=50, time_limit=60),
    ]
    problems = problems_of(stack_config(workers={"pools": pools}))
    message = problem_at(problems, "workers.pools[1].queues[1]")
    assert "'celery'" in message, f"the queue is not named: {message}"
    assert "pool 'pdf'" in message, f"the other pool is not named: {message}"
    assert "time_limit 60 here, 1800 there" in message, f"the difference is not shown: {message}"
    assert "allowed:" in message, message


@pytest.mark.parametrize(
    ("setting", "value"),
    [("soft_time_limit", 300), ("acks_late", False), ("reject_on_worker_lost", False)],
)
def test_shared_queue_with_any_other_task_setting_is_refused(setting, value):
    overrides = {setting: value}
    if setting == "acks_late":
        overrides["reject_on_worker_lost"] = False  # it needs acks_late
    pools = [pool("a", queues=["celery"]), pool("b", queues=["celery"], **overrides)]
    message = problem_at(
        problems_of(stack_config(workers={"pools": pools})), "workers.pools[1].queues[0]"
    )
    assert setting in message, f"{setting} is not named: {message}"


def test_pools_that_agree_may_share_a_queue():
    limits = {"soft_time_limit": 1500, "time_limit": 1800}
    pools = [
        pool("pdf-spot", queues=["celery"], concurrency=4, **limits),
        pool("pdf-ondemand", queues=["celery", "pdf.high"], concurrency=2, **limits),
    ]
    settings = settings_of(stack_config(workers={"pools": pools}))
    assert [p.name for p in settings.workers.pools] == ["pdf-spot", "pdf-ondemand"]


# The volume holds what the broker's persistence writes at its peak.

BROKER = {
    "resources": {"memory_request": "2Gi", "memory_limit": "2Gi"},
    "maxmemory": "1Gi",
    "max_message_bytes": "8Mi",
}
"""A broker with maxmemory 1024 MiB and messages up to 8 MiB (fork headroom 50%)."""


def minimum_mib(peak_mib: float) -> int:
    return math.ceil(peak_mib / FILESYSTEM_USABLE_SHARE)


# The formula, worked by hand for BROKER: dataset D = 1024 + 8 = 1032 MiB, writes during a
# rewrite W = 0.5 x 1024 = 512 MiB.
EXPECTED_MINIMUM_MIB = {
    # dump.rdb and the temp file a snapshot writes before renaming it.
    "rdb": minimum_mib(2 * 1032),
    # AOF at its rewrite trigger 2 x (D + W), the new base D, and W.
    "aof": minimum_mib(2 * (1032 + 512) + 1032 + 512),
    "aof-always": minimum_mib(2 * (1032 + 512) + 1032 + 512),
}


@pytest.mark.parametrize("persistence", ["rdb", "aof", "aof-always"])
def test_volume_below_the_persistence_peak_is_refused_with_the_minimum(persistence):
    minimum = EXPECTED_MINIMUM_MIB[persistence]
    broker = {**BROKER, "persistence": persistence, "storage": {"size": f"{minimum - 1}Mi"}}
    message = problem_at(problems_of(stack_config(broker=broker)), "broker.storage.size")
    assert f"= '{minimum - 1}Mi'" in message, f"the value is not shown: {message}"
    assert f"allowed: at least {minimum}Mi" in message, f"wrong or no minimum: {message}"


@pytest.mark.parametrize("persistence", ["rdb", "aof", "aof-always"])
def test_volume_of_the_minimum_size_is_accepted(persistence):
    minimum = EXPECTED_MINIMUM_MIB[persistence]
    broker = {**BROKER, "persistence": persistence, "storage": {"size": f"{minimum}Mi"}}
    settings = settings_of(stack_config(broker=broker))
    assert settings.broker.minimum_storage_bytes() == minimum * MIB


def test_small_broker_needs_room_for_the_aof_rewrite_floor():
    # Redis does not rewrite an AOF below auto-aof-rewrite-min-size (64 MiB), however small
    # maxmemory is: the volume must hold that much, plus the new base and the writes.
    broker = {
        "persistence": "aof-always",
        "resources": {"memory_request": "112Mi", "memory_limit": "112Mi"},
        "max_message_bytes": "1Mi",
        "max_queued_messages": 16,
    }
    settings = settings_of(stack_config(broker=broker))
    assert settings.broker.effective_maxmemory_bytes() == 32 * MIB
    # before the rewrite max(2 x (33 + 16), 64) = 98 MiB, then + 33 + 16.
    assert settings.broker.minimum_storage_bytes() == minimum_mib(98 + 33 + 16) * MIB


def test_ephemeral_broker_without_persistence_needs_no_volume_size():
    broker = {"persistence": "none", "storage": {"size": "1Mi"}}
    settings = settings_of(stack_config(broker=broker, ephemeral=True))
    assert settings.broker.minimum_storage_bytes() == 0


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_shipped_stacks_have_volumes_for_their_persistence(stack):
    config, secret_keys = mockrun.read_stack_config(stack)
    settings, _ = parse_stack_config(config, secret_keys, f"config/Pulumi.{stack}.yaml")
    broker = settings.broker
    minimum = broker.minimum_storage_bytes()
    assert minimum > 0, f"{stack} persists, so its volume has a minimum"
    assert memory_bytes(broker.storage.size) >= minimum, (
        f"{stack}: storage.size {broker.storage.size} is below {minimum // MIB}Mi"
    )


def test_readme_quotes_the_shipped_stacks_minimum_volumes():
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("### Storage sizing", 1)[1].split("\n## ", 1)[0]
    for stack in ("dev", "staging", "prod"):
        config, secret_keys = mockrun.read_stack_config(stack)
        settings, _ = parse_stack_config(config, secret_keys, f"config/Pulumi.{stack}.yaml")
        quoted = f"{settings.broker.minimum_storage_bytes() // MIB}Mi"
        assert quoted in section, f"README's Storage sizing should quote {stack}'s {quoted}"


# Every problem of a stack file in one round.


def test_field_errors_and_rules_between_valid_sections_come_together():
    config = stack_config(
        kube_context=None,
        broker={"persistence": "none"},
        workers={"pools": [pool("pdf", concurrency=0)]},
        checks={"timeout_seconds": "ten"},
    )
    problems = problems_of(config)
    problem_at(problems, "workers.pools[0].concurrency")  # field error, workers
    problem_at(problems, "checks.timeout_seconds")  # field error, checks
    problem_at(problems, "kube_context")  # rule: ephemeral and kube_context are valid
    problem_at(problems, "broker.persistence")  # rule: ephemeral and broker are valid
    assert len(problems) == 4, "\n".join(problems)


def test_persistence_rule_is_reported_beside_a_pool_field_error():
    config = stack_config(
        broker={"persistence": "none"}, workers={"pools": [pool("pdf", concurrency=0)]}
    )
    problems = problems_of(config)
    problem_at(problems, "workers.pools[0].concurrency")
    problem_at(problems, "broker.persistence")


def test_rules_inside_a_valid_section_come_with_field_errors_elsewhere():
    pools = [pool("a", queues=["celery"], time_limit=60, soft_time_limit=50), pool("b")]
    config = stack_config(
        namespace="Not_A_Label",
        workers={"pools": pools},
        broker={"persistence": "aof-always", "storage": {"size": "1Gi"}},
    )
    problems = problems_of(config)
    problem_at(problems, "namespace")
    problem_at(problems, "workers.pools[1].queues[0]")
    problem_at(problems, "broker.storage.size")
    assert len(problems) == 3, "\n".join(problems)


def test_a_rule_is_not_judged_on_a_section_that_has_errors():
    # visibility_timeout is judged against the pools' time limits: with a broken pool there is
    # nothing sound to compare with, so no message about it (rather than a wrong one).
    config = stack_config(
        broker={"visibility_timeout": 600},
        workers={"pools": [pool("pdf", time_limit=3600, soft_time_limit=3000, replicas=-1)]},
    )
    problems = problems_of(config)
    problem_at(problems, "workers.pools[0].replicas")
    assert not [p for p in problems if "visibility_timeout" in p], "\n".join(problems)


def test_render_reports_field_and_cross_field_problems_in_one_run(stack_dir, tmp_path):
    stack_dir.write(
        "manyproblems",
        "config:\n"
        "  celery-redis:broker:\n    persistence: none\n    port: 0\n"
        "  celery-redis:workers:\n    pools:\n"
        f"      - name: pdf\n        image: {IMAGE}\n        queues: [celery]\n"
        "        time_limit: 1800\n        soft_time_limit: 1500\n"
        f"      - name: short\n        image: {IMAGE}\n        queues: [celery]\n"
        "        time_limit: 60\n        soft_time_limit: 50\n",
    )
    result = run_brokerctl(
        "render", "--stack", "manyproblems", "--config-dir", str(stack_dir.path),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 2, f"exit {result.returncode}:\n{result.stderr}"
    for key in ("broker.port", "workers.pools[1].queues[0]", "kube_context"):
        assert f"celery-redis:{key} " in result.stderr, f"{key} missing:\n{result.stderr}"
    assert "3 settings problem(s)" in result.stderr, result.stderr
