"""Generated passwords under the real engine: made once, kept across updates, secret in state.

The stack's passwords come from components/generated_secret.py, a Python dynamic resource run
by the engine's real dynamic-provider host. A tiny program of our own exports one, so the test
sees exactly what the engine stores and shows, without a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.realengine.engine import RealStack

PROGRAM = """
import pulumi
from components.generated_secret import GeneratedPassword

password = GeneratedPassword("broker-password", length=32)
pulumi.export("password", password.result)
"""

PROJECT_FILE = "name: celery-redis\nruntime: python\n"


def _stack(tmp_path: Path) -> RealStack:
    work_dir = tmp_path / "project"
    work_dir.mkdir()
    (work_dir / "Pulumi.yaml").write_text(PROJECT_FILE)
    (work_dir / "__main__.py").write_text(PROGRAM)
    stack = RealStack(work_dir, "dev", tmp_path / "state", tmp_path / "no-kubeconfig")
    stack.pulumi("login", stack.env()["PULUMI_BACKEND_URL"])
    stack.pulumi("stack", "init", "dev", "--secrets-provider", "passphrase")
    return stack


def _up(stack: RealStack) -> None:
    result = stack.run("up")
    assert result.returncode == 0, f"pulumi up failed:\n{result.stdout}\n{result.stderr}"


def test_a_generated_password_is_made_once_kept_and_secret(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    _up(stack)
    first = stack.outputs()["password"]
    assert first["secret"], "the generated password is a plain stack output"
    password = first["value"]
    assert len(password) == 32, f"unexpected password length {len(password)}"

    _up(stack)
    assert stack.outputs()["password"]["value"] == password, "a second up changed the password"
    preview = stack.run("preview", "--expect-no-changes")
    assert preview.returncode == 0, f"a no-op preview planned changes:\n{preview.stdout}"
    refreshed = stack.run("preview", "--refresh", "--expect-no-changes")
    assert refreshed.returncode == 0, f"refresh found drift:\n{refreshed.stdout}"

    state = json.dumps(stack.state())
    assert password not in state, "the password is stored in plain text in the state"
    assert "ciphertext" in state, "no secret value in the state at all"
