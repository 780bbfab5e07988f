"""Bad settings stop render (exit 2) and the real program, naming file, key path and value."""

from __future__ import annotations

import pytest

from tests.unit.conftest import run_brokerctl

GOOD_POOL = "      - name: pdf\n"


def render_bad(stack_dir, text: str, tmp_path) -> tuple[int, str]:
    stack_dir.write("bad", text)
    result = run_brokerctl(
        "render",
        "--stack",
        "bad",
        "--config-dir",
        str(stack_dir.path),
        "--out",
        str(tmp_path / "out"),
    )
    assert "Traceback" not in result.stderr + result.stdout, (
        f"a traceback reached the user:\n{result.stderr}"
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), (
        "render wrote objects for a stack with bad settings"
    )
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    ("text", "key_path", "value"),
    [
        pytest.param(
            "config:\n  celery-redis:namespce: x\n",
            "celery-redis:namespce",
            "",
            id="unknown-top-level",
        ),
        pytest.param(
            "config:\n  celery-redis:broker:\n    resources:\n      memory_limt: 1Gi\n",
            "celery-redis:broker.resources.memory_limt",
            "",
            id="unknown-nested",
        ),
        pytest.param(
            "config:\n  celery-redis:workers:\n    pools:\n      - name: pdf\n"
            "        image: registry.example.com/transcritor-pdf:1.0.0\n        replicas: "
            "'3'\n",
            "celery-redis:workers.pools[0].replicas",
            "'3'",
            id="wrong-type",
        ),
        pytest.param(
            "config:\n  celery-redis:broker:\n    persistence: sometimes\n",
            "celery-redis:broker.persistence",
            "'sometimes'",
            id="not-a-choice",
        ),
        pytest.param(
            "config:\n  celery-redis:workers:\n    pools:\n      - name: pdf\n"
            "        image: registry.example.com/transcritor-pdf:1.0.0\n        "
            "concurrency: 0\n",
            "celery-redis:workers.pools[0].concurrency",
            "0",
            id="out-of-range",
        ),
        pytest.param(
            "config:\n  celery-redis:broker:\n    visibility_timeout: 600\n"
            "  celery-redis:workers:\n    pools:\n      - name: pdf\n"
            "        image: registry.example.com/transcritor-pdf:1.0.0\n        soft_time_limit: "
            "3000\n"
            "        time_limit: 3600\n",
            "celery-redis:broker.visibility_timeout",
            "600",
            id="visibility-timeout-below-longest-task",
        ),
        pytest.param(
            "config:\n  celery-redis:workers:\n    pools:\n      - name: pdf\n"
            "        image: registry.example.com/transcritor-pdf:1.0.0\n"
            "        soft_shutdown_seconds: 90\n        termination_grace_period_seconds: 60\n",
            "celery-redis:workers.pools[0].soft_shutdown_seconds",
            "90",
            id="soft-shutdown-outlives-grace-period",
        ),
        pytest.param(
            "config:\n  celery-redis:broker:\n    maxmemory: 1000Mi\n",
            "celery-redis:broker.maxmemory",
            "'1000Mi'",
            id="maxmemory-without-fork-headroom",
        ),
        pytest.param(
            "config:\n  celery-redis:broker:\n    persistence: none\n"
            "  celery-redis:workers:\n    pools:\n      - name: pdf\n"
            "        image: registry.example.com/transcritor-pdf:1.0.0\n",
            "celery-redis:broker.persistence",
            "'none'",
            id="persistence-none-on-a-lasting-stack",
        ),
        pytest.param(
            "config:\n  celery-redis:broker:\n    engine: valkey\n"
            "    image: docker.io/library/redis:7.2.7\n",
            "celery-redis:broker.image",
            "'docker.io/library/redis:7.2.7'",
            id="valkey-engine-with-a-redis-image",
        ),
        pytest.param(
            "config:\n  celery-redis:broker:\n    engine: valkey\n    engine_version: 9.10\n",
            "celery-redis:broker.engine_version",
            "9.1",
            id="engine-version-as-a-yaml-number",
        ),
        pytest.param(
            "config:\n  celery-redis:broker_password: hunter2hunter2\n",
            "celery-redis:broker_password",
            "",
            id="password-in-plain-text",
        ),
    ],
)
def test_bad_setting_exits_2_naming_file_key_and_value(stack_dir, tmp_path, text, key_path, value):
    code, stderr = render_bad(stack_dir, text, tmp_path)
    assert code == 2, f"render exited {code}, expected 2 for a settings error:\n{stderr}"
    line = next((ln for ln in stderr.splitlines() if key_path in ln), None)
    assert line is not None, f"no message names {key_path}:\n{stderr}"
    assert "Pulumi.bad.yaml" in line, f"message does not name the stack file: {line}"
    assert value in line, f"message does not show the bad value {value}: {line}"
    assert "hunter2hunter2" not in stderr, "a secret value was echoed in an error message"


def test_every_problem_of_a_stack_is_reported_together(stack_dir, tmp_path):
    text = (
        "config:\n  celery-redis:namespce: x\n"
        "  celery-redis:broker:\n    persistence: sometimes\n"
        "  celery-redis:workers:\n    pools:\n      - name: pdf\n        replicas: '3'\n"
    )
    code, stderr = render_bad(stack_dir, text, tmp_path)
    assert code == 2
    for key in ("celery-redis:namespce", "broker.persistence", "pools[0].replicas"):
        assert key in stderr, f"{key} missing: all problems must be reported together:\n{stderr}"


def test_broken_yaml_names_file_and_line(stack_dir, tmp_path):
    code, stderr = render_bad(
        stack_dir, "config:\n  celery-redis:broker: {persistence: [\n", tmp_path
    )
    assert code == 2
    assert "Pulumi.bad.yaml" in stderr, stderr
    assert "line 3" in stderr, f"the YAML error does not say where: {stderr}"


def test_unknown_stack_lists_the_stacks_there_are(tmp_path):
    result = run_brokerctl("render", "--stack", "nope", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "dev, prod, staging" in result.stderr, result.stderr


def test_settings_command_rejects_the_same_bad_stack(stack_dir):
    stack_dir.write("bad", "config:\n  celery-redis:broker:\n    persistence: sometimes\n")
    result = run_brokerctl("settings", "--stack", "bad", "--config-dir", str(stack_dir.path))
    assert result.returncode == 2
    assert "celery-redis:broker.persistence" in result.stderr
    assert "Traceback" not in result.stderr
