"""Memory thresholds have one source: the stack's `checks` settings.

The gate Job receives them as arguments, the stack exports them, and `brokerctl check
--stack/--outputs` reads them from the outputs; its own default applies only when the
outputs lack them (and equals the settings' default, so even then they agree).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from brokerctl import brokercheck, mockrun
from components.settings import ChecksSettings

JOB = "kubernetes:batch/v1:Job"


def run_stack(stack: str, config_dir: Path = mockrun.CONFIG_DIR) -> mockrun.ProgramRun:
    config, secret_keys = mockrun.read_stack_config(stack, config_dir)
    return mockrun.run_program(stack, config, secret_keys, config_dir)


def job_thresholds(run: mockrun.ProgramRun) -> tuple[float, float]:
    """Return the --memory-warn and --memory-fail arguments of the declared check Job."""
    (job,) = [resource for resource in run.resources if resource.type == JOB]
    args = job.inputs["spec"]["template"]["spec"]["containers"][0]["args"]
    return float(args[args.index("--memory-warn") + 1]), float(
        args[args.index("--memory-fail") + 1]
    )


def check_config(*argv: str) -> brokercheck.CheckConfig:
    """Return the configuration `brokercheck.py ARGV` would run with (no network step)."""
    args = brokercheck.build_parser().parse_args(list(argv))
    return brokercheck.config_from_args(args, environ={})


def write_outputs(tmp_path: Path, outputs: dict) -> str:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"check_url": "redis://probe:pw@127.0.0.1:6379/0", **outputs}))
    return str(path)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_stack_exports_the_thresholds_its_gate_job_uses(stack: str) -> None:
    run = run_stack(stack)

    exported = (run.outputs["memory_warn_ratio"] * 100, run.outputs["memory_fail_ratio"] * 100)
    assert exported == pytest.approx(job_thresholds(run)), (
        f"{stack}: outputs say {exported}, the gate Job checks {job_thresholds(run)}"
    )


def test_changed_thresholds_reach_both_the_job_and_the_outputs(tmp_path: Path) -> None:
    stack = yaml.safe_load((mockrun.CONFIG_DIR / "Pulumi.dev.yaml").read_text())
    stack["config"]["celery-redis:checks"] = {"memory_warn_ratio": 0.6, "memory_fail_ratio": 0.7}
    (tmp_path / "Pulumi.thresholds.yaml").write_text(yaml.safe_dump(stack))

    run = run_stack("thresholds", tmp_path)
    outputs = {key: run.outputs[key] for key in ("memory_warn_ratio", "memory_fail_ratio")}
    config = check_config("--outputs", write_outputs(tmp_path, outputs))

    assert job_thresholds(run) == pytest.approx((60, 70)), job_thresholds(run)
    assert (config.memory_warn_percent, config.memory_fail_percent) == pytest.approx((60, 70)), (
        "brokerctl check did not take the thresholds from the stack outputs"
    )


def test_cli_defaults_are_the_settings_defaults() -> None:
    """Without outputs (--url alone) the check must still judge as a default stack's Job."""
    fields = ChecksSettings.model_fields
    config = check_config("--url", "redis://probe:pw@127.0.0.1:6379/0")

    assert config.memory_warn_percent == pytest.approx(fields["memory_warn_ratio"].default * 100)
    assert config.memory_fail_percent == pytest.approx(fields["memory_fail_ratio"].default * 100)


def test_flags_beat_outputs_and_outputs_beat_defaults(tmp_path: Path) -> None:
    outputs = write_outputs(tmp_path, {"memory_warn_ratio": 0.5, "memory_fail_ratio": 0.6})

    from_outputs = check_config("--outputs", outputs)
    one_flag = check_config("--outputs", outputs, "--memory-fail", "65")
    only_warn = check_config("--outputs", write_outputs(tmp_path, {"memory_warn_ratio": 0.5}))

    assert (from_outputs.memory_warn_percent, from_outputs.memory_fail_percent) == (50, 60)
    assert (one_flag.memory_warn_percent, one_flag.memory_fail_percent) == (50, 65)
    assert (only_warn.memory_warn_percent, only_warn.memory_fail_percent) == (
        50,
        brokercheck.DEFAULT_MEMORY_FAIL_PERCENT,
    ), "a threshold the outputs lack takes the default, the other one the output's"
