"""The real `__main__.py` under Pulumi's mock runtime, for every stack, as `pulumi up` runs it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pulumi
import pytest

from brokerctl import mockrun
from components.stack_config import SettingsError
from tests.unit.conftest import PROJECT_ROOT

STACKS = ("dev", "staging", "prod")
SECRET_OUTPUTS = ("broker_url", "result_backend_url", "check_url")


def run_stack(stack: str, config_dir=mockrun.CONFIG_DIR) -> mockrun.ProgramRun:
    config, secret_keys = mockrun.read_stack_config(stack, config_dir)
    return mockrun.run_program(stack, config, secret_keys, config_dir)


def is_secret(value: object) -> bool:
    from pulumi.runtime.rpc import is_rpc_secret

    return is_rpc_secret(value)


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_runs_and_exports_credentials_only_as_secrets(stack):
    run = run_stack(stack)
    kinds = {r.type for r in run.resources}
    assert "kubernetes:core/v1:Secret" in kinds, f"{stack}: no Secret registered: {sorted(kinds)}"
    for name in SECRET_OUTPUTS:
        assert name in run.outputs, f"{stack}: output {name} missing"
        assert is_secret(run.outputs[name]), f"{stack}: output {name} is exported in plain text"
    plain = {k: v for k, v in run.outputs.items() if not is_secret(v)}
    assert "redacted-" not in repr(plain), (
        f"{stack}: a credential leaked into a plain output: {plain}"
    )


def test_every_kubernetes_object_uses_the_explicit_provider():
    run = run_stack("prod")
    project = (PROJECT_ROOT / "Pulumi.yaml").read_text()
    assert "pulumi:disable-default-providers" in project
    assert "kubernetes" in project
    providers = [r for r in run.resources if r.type == "pulumi:providers:kubernetes"]
    assert len(providers) == 1, f"expected one explicit kubernetes provider, got {len(providers)}"
    assert providers[0].inputs.get("namespace") == "transcritor-prod"


def test_bad_settings_fail_the_real_program_before_any_resource(stack_dir):
    stack_dir.write("bad", "config:\n  celery-redis:broker:\n    persistence: sometimes\n")
    config, secret_keys = mockrun.read_stack_config("bad", stack_dir.path)
    with pytest.raises(SettingsError) as caught:
        mockrun.run_program("bad", config, secret_keys, stack_dir.path)
    assert isinstance(caught.value, pulumi.RunError), (
        "settings errors must be RunError (no traceback)"
    )
    assert "celery-redis:broker.persistence" in str(caught.value)


def test_language_host_reports_bad_settings_without_a_traceback(stack_dir):
    """Run the program the way pulumi-language-python-exec does and read what the engine logs.

    The language host runs the program in `run_in_stack`; it logs `str(error)` for a
    `pulumi.RunError` and a formatted traceback for any other exception. The mock engine
    receives those log calls exactly as the Pulumi engine would.
    """
    stack_dir.write(
        "bad",
        "config:\n  celery-redis:workers:\n    pools:\n      - name: x\n        replicas: -1\n",
    )
    driver = textwrap.dedent(
        f"""
        import asyncio, logging, runpy, traceback, sys
        import pulumi
        from pathlib import Path
        from brokerctl import mockrun
        records = []
        class Keep(logging.Handler):
            def emit(self, record): records.append(record.getMessage())
        logger = logging.getLogger("engine")
        logger.addHandler(Keep())
        logger.setLevel(logging.DEBUG)
        config, keys = mockrun.read_stack_config("bad", Path({str(stack_dir.path)!r}))
        loop = asyncio.new_event_loop(); asyncio.set_event_loop(loop)
        pulumi.runtime.set_all_config(config, keys)
        mocks = mockrun._RecordingMocks(mockrun.ProgramRun())
        pulumi.runtime.set_mocks(
            mocks, project="celery-redis", stack="bad", preview=False, logger=logger
        )
        mockrun.forget_mock_root_stack()
        try:
            loop.run_until_complete(pulumi.runtime.run_in_stack(
                lambda: runpy.run_path("__main__.py", run_name="__main__")))
        except pulumi.RunError as e:  # the language host's own handling
            pulumi.log.error(str(e))
        except Exception:
            pulumi.log.error(traceback.format_exc())
        print("\\n".join(records))
        print(f"registered={{len(mocks.run.resources)}}")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", driver],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    logged = result.stdout
    assert "celery-redis:workers.pools[0].replicas" in logged, (
        f"engine log lacks the problem:\n{logged}\n{result.stderr}"
    )
    assert "Traceback" not in logged, f"the engine would show a traceback:\n{logged}"
    assert "registered=0" in logged, (
        f"resources were registered before settings were checked:\n{logged}"
    )


def test_a_sentinel_stack_exports_sentinels_password_only_as_a_secret():
    """`check --stack` asks Sentinel with it; it must never be a plain output."""
    from scripts.checkov_report import VARIANTS_DIR

    run = run_stack("prod-sentinel", VARIANTS_DIR)
    assert is_secret(run.outputs["sentinel_password"]), "Sentinel's password is in plain text"
    assert "sentinel_password" not in run_stack("prod").outputs, "a standalone stack has none"
