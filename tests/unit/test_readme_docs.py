"""What README.md and bench/README.md say equals what the code renders.

Generated blocks (settings reference, alert table) are checked in test_readme.py; the figures
and commands quoted in prose are checked here against the functions that produce them.
"""

from __future__ import annotations

import re

import pytest

from brokerctl import mockrun
from components import celery_config, metrics, redis_config
from components.alert_reference import alerts_markdown, every_alert
from components.reference import SECRETS, rows
from components.settings import PERSISTENT_MODES, SECRET_KEYS, PoolSettings, StackSettings
from components.stack_config import parse_stack_config
from tests.unit.conftest import PROJECT_ROOT

STACKS = ("dev", "staging", "prod")


def stack_settings(stack: str) -> StackSettings:
    config, secret_keys = mockrun.read_stack_config(stack)
    settings, _ = parse_stack_config(config, secret_keys, f"config/Pulumi.{stack}.yaml")
    return settings


def readme_worker_command() -> list[str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    found = re.search(r"`(celery -A celery_platform_wiring worker[^`]*)`", text)
    assert found, "README lost the worker command"
    return found.group(1).split()


@pytest.mark.parametrize("stack", STACKS)
def test_readme_worker_command_is_the_rendered_one(stack):
    template = readme_worker_command()
    for pool in stack_settings(stack).workers.pools:
        values = {
            "<queues>": ",".join(pool.queues),
            "<concurrency>": str(pool.concurrency),
            "<pool>": pool.pool,
            "<name>@%h": f"{pool.name}@%h",
            "celery": pool.celery_bin,  # README shows the default executable
        }
        expected = [values.get(token, token) for token in template]
        rendered = celery_config.worker_command(stack_settings(stack), pool)
        assert rendered == expected, (
            f"{stack} pool {pool.name}: README says {' '.join(template)}, "
            f"the Deployment runs {' '.join(rendered)}"
        )
    assert PoolSettings.model_fields["celery_bin"].default == template[0]


def test_bench_readme_quotes_the_startup_probe_budget_prod_renders():
    text = (PROJECT_ROOT / "bench" / "README.md").read_text()
    found = re.search(r"prod: (\S+) volume -> (\d+) attempts of (\d+) s", text)
    assert found, "bench/README.md lost the startup probe figure"
    prod = stack_settings("prod")
    quoted = (found.group(1), int(found.group(2)), int(found.group(3)))
    rendered = (
        prod.broker.storage.size,
        redis_config.startup_failure_threshold(prod),
        redis_config.STARTUP_PERIOD_SECONDS,
    )
    assert quoted == rendered, f"bench/README.md says {quoted}, prod renders {rendered}"


def test_nested_rows_show_the_default_that_applies_under_their_parent():
    defaults = {path: default for path, _, default, _ in rows()}
    broker = StackSettings.model_fields["broker"].get_default(call_default_factory=True)
    assert defaults["broker.resources.memory_request"] == (f'"{broker.resources.memory_request}"')
    assert defaults["broker.reloader_resources.memory_limit"] == (
        f'"{broker.reloader_resources.memory_limit}"'
    )
    pool_resources = PoolSettings.model_fields["resources"].get_default(call_default_factory=True)
    assert defaults["workers.pools[].resources.memory_limit"] == (
        f'"{pool_resources.memory_limit}"'
    )


def test_every_credential_has_a_reference_row():
    assert set(SECRETS) == set(SECRET_KEYS)
    assert all(default in ("generated", "unset") for default, _ in SECRETS.values())


def generated_passwords(stack: str, set_secrets: tuple[str, ...]) -> int:
    """Run the program with these credentials configured; count the passwords it generates."""
    config, secret_keys = mockrun.read_stack_config(stack)
    for key in set_secrets:
        full = f"celery-redis:{key}"
        config[full] = mockrun.placeholder(key)
        secret_keys = [*secret_keys, full]
    run = mockrun.run_program(stack, config, secret_keys)
    return sum(1 for r in run.resources if r.type == mockrun.GENERATED_PASSWORD)


def test_reference_says_which_credentials_the_program_generates():
    """A credential is `generated` exactly when leaving it unset makes the program create one."""
    baseline = generated_passwords("dev", ())
    for key, (default, _) in SECRETS.items():
        with_key = generated_passwords("dev", (key,))
        generates = with_key == baseline - 1
        assert generates == (default == "generated"), (
            f"README's reference says {key} is {default!r}, but setting it changes the number "
            f"of generated passwords from {baseline} to {with_key}"
        )


def test_alert_table_lists_every_alert_of_every_persistence_mode():
    names = {rule["alert"] for rule in every_alert(stack_settings("dev"))}
    for mode in PERSISTENT_MODES:
        settings = stack_settings("prod")
        broker = settings.broker.model_copy(update={"persistence": mode})
        variant = settings.model_copy(update={"broker": broker})
        for group in metrics.alert_rules(variant)["groups"]:
            for rule in group["rules"]:
                assert "alert" not in rule or rule["alert"] in names, rule["alert"]
    table = alerts_markdown(stack_settings("dev"), "dev")
    for name in names:
        assert f"| {name} |" in table


def test_alert_table_lists_the_sentinel_alerts_of_any_stack():
    """A standalone stack's table still lists what a move to `topology: sentinel` would raise."""
    names = {rule["alert"] for rule in every_alert(stack_settings("dev"))}
    prod = stack_settings("prod")
    sentinel = prod.broker.sentinel.model_copy(update={"min_replicas_to_write": 1})
    broker = prod.broker.model_copy(update={"topology": "sentinel", "sentinel": sentinel})
    variant = prod.model_copy(update={"broker": broker})
    sentinel_names = {
        rule["alert"]
        for group in metrics.alert_rules(variant)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert sentinel_names - names == set(), "README's alert table lacks Sentinel alerts"
    assert "CeleryBrokerWritesRefused" in sentinel_names
