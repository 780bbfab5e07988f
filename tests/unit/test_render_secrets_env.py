"""A render holds placeholders whatever config the shell's environment carries.

Pulumi's Python language host hands a program its config in PULUMI_CONFIG and
PULUMI_CONFIG_SECRET_KEYS, and `pulumi.Config` also reads PULUMI_CONFIG_<KEY>. A shell that
has any of them set (left over from a debugging session, a CI job) must not get real
passwords into `render` output, which is meant to be reviewed, committed and shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from brokerctl import mockrun
from tests.unit.conftest import PROJECT_ROOT

REAL_LOOKING = {
    "celery-redis:broker_password": "Q7v!real-broker-password-9xZ",
    "celery-redis:probe_password": "real-probe-password-4kLm2",
    "celery-redis:broker_password_previous": "real-previous-password-8Hq",
}
PER_KEY = {"PULUMI_CONFIG_CELERY_REDIS_BROKER_PASSWORD": "real-per-key-password-3Jd"}


def shell_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PULUMI_CONFIG"] = json.dumps({**REAL_LOOKING, "celery-redis:namespace": "hijacked"})
    env["PULUMI_CONFIG_SECRET_KEYS"] = json.dumps(sorted(REAL_LOOKING))
    env.update(PER_KEY)
    return env


def test_render_writes_no_secret_from_the_environment(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "brokerctl", "render", "--stack", "dev", "--out", str(out)],
        cwd=PROJECT_ROOT,
        env=shell_environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = {path.name: path.read_text() for path in out.iterdir()}
    assert rendered, "render wrote nothing"
    for secret in [*REAL_LOOKING.values(), *PER_KEY.values()]:
        holders = [name for name, text in rendered.items() if secret in text]
        assert not holders, f"a password from the environment reached {holders}"
    secrets = "".join(text for name, text in rendered.items() if name.startswith("secret-"))
    assert mockrun.PLACEHOLDER_PREFIX in secrets, "Secrets no longer hold placeholders"
    assert "hijacked" not in "".join(rendered.values()), "PULUMI_CONFIG overrode the stack file"


def test_the_program_sees_only_the_stack_file_and_the_shell_keeps_its_variables(monkeypatch):
    for name, value in shell_environment().items():
        if name.startswith("PULUMI_CONFIG"):
            monkeypatch.setenv(name, value)
    config, secret_keys = mockrun.read_stack_config("dev")
    run = mockrun.run_program("dev", config, secret_keys)
    inputs = repr([resource.inputs for resource in run.resources]) + repr(run.outputs)
    for secret in [*REAL_LOOKING.values(), *PER_KEY.values()]:
        assert secret not in inputs, "a password from the environment reached the program"
    assert (
        os.environ["PULUMI_CONFIG_CELERY_REDIS_BROKER_PASSWORD"]
        == PER_KEY["PULUMI_CONFIG_CELERY_REDIS_BROKER_PASSWORD"]
    ), "the shell's variables were not restored after the run"
    assert "hijacked" in os.environ["PULUMI_CONFIG"]
