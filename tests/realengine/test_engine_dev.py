"""The real program under the real engine and provider, against the real API server.

What the mock runtime cannot show: the provider's check and diff of every object against the
API server's schema, the engine's handling of a failing program, what `pulumi stack init`
writes into the stack file.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from brokerctl import mockrun
from tests.realengine.conftest import CONTEXT, new_stack
from tests.realengine.controlplane import ControlPlane
from tests.realengine.toolchain import PROJECT_ROOT


def _dev_stack_file(namespace: str, **extra: object) -> str:
    """Return the shipped dev stack file, aimed at this cluster and a namespace of its own."""
    text = (PROJECT_ROOT / "config" / "Pulumi.dev.yaml").read_text()
    data = yaml.safe_load(text)
    data["config"]["celery-redis:namespace"] = namespace
    data["config"]["celery-redis:kube_context"] = CONTEXT
    data["config"].update(extra)
    return yaml.safe_dump(data, sort_keys=False)


def test_dev_previews_against_the_api_server(control_plane: ControlPlane, tmp_path: Path) -> None:
    stack = new_stack(tmp_path, "dev", control_plane, _dev_stack_file("preview-dev"))
    result = stack.run("preview")
    assert result.returncode == 0, f"preview failed:\n{result.stdout}\n{result.stderr}"
    for kind in ("StatefulSet", "Deployment", "Job", "Secret", "ConfigMap", "NetworkPolicy"):
        assert kind in result.stdout, f"the preview plans no {kind}:\n{result.stdout}"
    assert "Traceback" not in result.stdout + result.stderr


def test_stack_init_changes_no_setting_the_program_sees(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """What `pulumi stack init` does to a tracked stack file: README's "Deploy for real" says it."""
    original = _dev_stack_file("init-dev")
    (tmp_path / "before").mkdir()
    (tmp_path / "before" / "Pulumi.dev.yaml").write_text(original)
    stack = new_stack(tmp_path, "dev", control_plane, original)
    written_text = (stack.work_dir / "config" / "Pulumi.dev.yaml").read_text()
    assert "encryptionsalt:" in written_text, "stack init with a passphrase wrote no salt"
    before, _ = mockrun.read_stack_config("dev", tmp_path / "before")
    after, _ = mockrun.read_stack_config("dev", stack.work_dir / "config")
    assert after == before, f"stack init changed what the program sees:\n{before}\n{after}"


def test_bad_settings_stop_up_before_any_object_exists(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    namespace = "bad-settings"
    stack_file = _dev_stack_file(
        namespace,
        **{"celery-redis:broker": {"persistence": "aof-sometimes", "storage": {"sise": "1Gi"}}},
    )
    stack = new_stack(tmp_path, "dev", control_plane, stack_file)
    result = stack.run("up")
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"up succeeded with bad settings:\n{output}"
    for expected in ("config/Pulumi.dev.yaml", "nothing was created", "aof-sometimes", "sise"):
        assert expected in output, f"{expected!r} is missing from the message:\n{output}"
    assert "Traceback" not in output, f"the user saw a traceback:\n{output}"
    found = control_plane.kubectl("get", "namespace", namespace, check=False)
    assert found.returncode != 0, f"namespace {namespace} exists after a refused up"
    leftovers = control_plane.kubectl(
        "get", "secrets,configmaps,statefulsets,deployments,jobs", "-n", namespace, "-o", "name",
    )  # fmt: skip
    assert not leftovers.stdout.strip(), f"objects exist after a refused up:\n{leftovers.stdout}"
