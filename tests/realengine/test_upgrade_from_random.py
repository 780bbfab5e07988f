"""Stacks deployed while pulumi-random made the passwords keep them across the upgrade.

pulumi-random's plugin cannot be built here, so its resources are put into a real stack's state
with `pulumi stack import`, exactly as pulumi-random leaves them (type tokens, names, secret
results). scripts/keep_generated_passwords.py then runs against the real CLI, and the real engine
previews the upgraded program without the pulumi-random plugin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.realengine.conftest import new_stack
from tests.realengine.controlplane import ControlPlane
from tests.realengine.engine import RealStack
from tests.realengine.test_engine_dev import _dev_stack_file
from tests.realengine.toolchain import PROJECT_ROOT

OLD_PASSWORDS = {
    "broker-celery-password": "OldCeleryPassword0123456789abcdef",
    "broker-probe-password": "OldProbePassword0123456789abcdefg",
}
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker of a secret value in a checkpoint


def _with_random_resources(stack: RealStack) -> None:
    """Import into `stack` the resources pulumi-random created under earlier versions."""
    exported = stack.state()
    prefix = f"urn:pulumi:{stack.stack}::celery-redis::"
    provider_urn = f"{prefix}pulumi:providers:random::default_4_21_4"
    stack_urn = f"{prefix}pulumi:pulumi:Stack::celery-redis-{stack.stack}"
    resources = [
        {"urn": stack_urn, "custom": False, "type": "pulumi:pulumi:Stack"},
        {
            "urn": provider_urn, "custom": True, "id": "provider-id",
            "type": "pulumi:providers:random", "inputs": {"version": "4.21.4"},
            "outputs": {"version": "4.21.4"}, "parent": stack_urn,
        },
    ]  # fmt: skip
    for name, value in OLD_PASSWORDS.items():
        secret = {SECRET_SIG: "1b47061264138c4ac30d75fd1eb44270", "plaintext": json.dumps(value)}
        resources.append({
            "urn": f"{prefix}random:index/randomPassword:RandomPassword::{name}",
            "custom": True, "id": "none", "type": "random:index/randomPassword:RandomPassword",
            "inputs": {"length": 32, "special": False}, "outputs": {"length": 32, "result": secret},
            "parent": stack_urn, "provider": f"{provider_urn}::provider-id",
            "additionalSecretOutputs": ["result"],
        })  # fmt: skip
    exported["deployment"]["resources"] = resources
    path = stack.state_dir / "with-random.json"
    path.write_text(json.dumps(exported))
    stack.pulumi("stack", "import", "--file", str(path))


def test_passwords_made_by_pulumi_random_survive_the_upgrade(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    stack = new_stack(tmp_path, "dev", control_plane, _dev_stack_file("upgrade-dev"))
    _with_random_resources(stack)

    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "keep_generated_passwords.py"),
         "--stack", "dev"],
        cwd=stack.work_dir, env=stack.env(), capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"the upgrade script failed:\n{output}"
    for value in OLD_PASSWORDS.values():
        assert value not in output, "the upgrade script printed a password"

    for key, name in (("broker_password", "broker-celery-password"),
                      ("probe_password", "broker-probe-password")):  # fmt: skip
        kept = stack.pulumi("config", "get", key).stdout.strip()
        assert kept == OLD_PASSWORDS[name], f"{key} does not hold the password pulumi-random made"
    stack_file = (stack.work_dir / "config" / "Pulumi.dev.yaml").read_text()
    for value in OLD_PASSWORDS.values():
        assert value not in stack_file, "a password is in the stack file in plain text"
    types = {r["type"] for r in stack.state()["deployment"]["resources"]}
    assert not {t for t in types if t.startswith(("random:", "pulumi:providers:random"))}, types

    # No pulumi-random plugin exists here: the upgraded program previews without it, and
    # generates no new password where the old one was kept.
    preview = stack.run("preview")
    assert preview.returncode == 0, f"preview after the upgrade failed:\n{preview.stderr}"
    assert "broker-celery-password" not in preview.stdout, "a new celery password is planned"
    assert "broker-probe-password" not in preview.stdout, "a new probe password is planned"
    assert "broker-check-password" in preview.stdout, "new readers' passwords must be generated"
