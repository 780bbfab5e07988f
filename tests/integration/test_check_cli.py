"""Usage errors end with exit status 2 and a message naming the problem, never a password.

With --json they are a `brokercheck/v1` report on stdout too (CI pipes it into jq), the
human message on stderr. These need no broker: every case is refused before any network step.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest

from brokerctl.brokercheck import Masker
from tests.support.check_cli import BROKERCHECK, CheckRun, run_check
from tests.support.network import dead_port

SECRET = "S3cret-Pa55-in-URL"
VALID = ["--url", f"redis://probe:{SECRET}@127.0.0.1:6379/0"]


def outputs_file(tmp_path: Path, content: str) -> str:
    """Write stack outputs (or junk) to a file and return its path."""
    path = tmp_path / "outputs.json"
    path.write_text(content)
    return str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no broker URL"),
        (["--url", f"http://probe:{SECRET}@host:6379"], "must look like redis://"),
        (["--url", f"redis://probe:{SECRET}@host:port/0"], "not a valid URL"),
        ([*VALID, "--expect-persistence", "fast"], "invalid choice: 'fast'"),
        ([*VALID, "--expect-workers", "-1"], "a whole number, 0 or more"),
        ([*VALID, "--timeout", "0"], "must be a number of seconds more than 0"),
        ([*VALID, "--timeout", "inf"], "not 'inf'"),
        ([*VALID, "--timeout", "nan"], "not 'nan'"),
        ([*VALID, "--timeout", "-1"], "not '-1'"),
        ([*VALID, "--timeout", "1e999"], "not '1e999'"),
        ([*VALID, "--timeout", "Infinity"], "not 'Infinity'"),
        ([*VALID, "--timeout", "1e9"], "at most 3600"),
        ([*VALID, "--timeout", "soon"], "not 'soon'"),
        ([*VALID, "--visibility-timeout", "inf"], "finite number of seconds"),
        ([*VALID, "--memory-warn", "nan"], "a percentage more than 0"),
        ([*VALID, "--memory-fail=-inf"], "a percentage more than 0"),
        ([*VALID, "--expect-workers", "1e3"], "a whole number"),
        ([*VALID, f"redis://probe:{SECRET}@127.0.0.1/0"], "unrecognized arguments"),
        (["--timeout", f"redis://probe:{SECRET}@127.0.0.1/0"], "--timeout"),
        ([*VALID, "--pool", "pdf"], "expected NAME=QUEUE"),
        ([*VALID, "--memory-warn", "95", "--memory-fail", "90"], "is above the failure"),
        ([*VALID, "--stack", "dev"], "not allowed with argument"),
        (["--url-env", "BROKERCHECK_TEST_UNSET"], "BROKERCHECK_TEST_UNSET is not set"),
        (["--outputs", "/nonexistent/outputs.json"], "cannot read it"),
    ],
)
@pytest.mark.parametrize("via_brokerctl", [False, True], ids=["brokercheck.py", "brokerctl"])
def test_usage_error_exits_2_and_names_the_problem(
    args: list[str], message: str, via_brokerctl: bool
) -> None:
    run = run_check(*args, "--json", via_brokerctl=via_brokerctl)

    assert run.returncode == 2, (
        f"{args}: expected usage error 2, got {run.returncode}:\n{run.output}"
    )
    assert "Traceback" not in run.stderr, f"{args}: a traceback instead of a usage error"
    assert message in run.stderr, f"{args}: stderr should say {message!r}:\n{run.stderr}"
    assert SECRET not in run.output, "a password was printed in a usage error"
    assert_usage_report(run, message)


def assert_usage_report(run: CheckRun, message: str) -> None:
    """Stdout is one brokercheck/v1 report of the usage error, and nothing else."""
    report = run.report  # json.loads of the whole stdout: no text around it
    assert report["schema"] == "brokercheck/v1", report
    assert (report["ok"], report["exit_code"]) == (False, 2), report
    assert report["summary"] == {"pass": 0, "warn": 0, "fail": 1}, report
    (entry,) = report["checks"]
    assert (entry["name"], entry["status"]) == ("usage", "fail"), entry
    assert message in entry["measured"], f"the report should say {message!r}: {entry}"


def test_usage_error_without_json_prints_no_report() -> None:
    run = run_check("--timeout", "inf")

    assert run.returncode == 2, run.output
    assert run.stdout == "", f"without --json a usage error is for people, on stderr:\n{run.stdout}"
    assert "not 'inf'" in run.stderr, run.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({"check_url": "redis://h/0", "persistence": "fast"}), "allowed: none, rdb"),
        (json.dumps({"check_url": "redis://h/0", "pools": [{"name": "p"}]}), "queues must be"),
        (json.dumps({"check_url": "redis://h/0", "expect_workers": "2"}), "expect_workers must"),
        (json.dumps({"check_url": "redis://h/0", "memory_warn_ratio": 80}), "at most 1, not 80"),
        (json.dumps({"check_url": "redis://h/0", "memory_fail_ratio": "0.9"}), "must be a ratio"),
        (
            json.dumps(
                {"check_url": "redis://h/0", "memory_warn_ratio": 0.9, "memory_fail_ratio": 0.5}
            ),
            "is above the failure",
        ),
    ],
)
def test_bad_stack_outputs_are_usage_errors(tmp_path: Path, content: str, message: str) -> None:
    run = run_check("--outputs", outputs_file(tmp_path, content), "--json")

    assert run.returncode == 2, f"expected usage error 2:\n{run.output}"
    assert message in run.stderr, f"stderr should say {message!r}:\n{run.stderr}"
    assert_usage_report(run, message)


def test_stack_without_pulumi_cli_is_a_clear_usage_error() -> None:
    env = {"PATH": os.path.dirname(os.__file__)}  # a PATH without any pulumi
    run = run_check("--stack", "dev", env=env)

    assert run.returncode == 2, run.output
    assert "pulumi CLI is not installed" in run.stderr, run.stderr
    assert "--outputs FILE" in run.stderr, "the message should say what to do instead"


def test_stack_reads_outputs_from_the_pulumi_cli(tmp_path: Path) -> None:
    outputs = {"check_url": f"redis://probe:{SECRET}@127.0.0.1:{dead_port()}/0"}
    fake_pulumi = tmp_path / "pulumi"
    fake_pulumi.write_text(
        f"#!/bin/sh\necho \"$@\" > {tmp_path / 'argv'}\necho '{json.dumps(outputs)}'\n"
    )
    fake_pulumi.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}

    run = run_check("--stack", "prod", "--timeout", "1", "--json", env=env)

    argv = (tmp_path / "argv").read_text().split()
    assert argv == ["stack", "output", "--json", "--show-secrets", "--stack", "prod"], argv
    assert run.returncode == 1, f"the dead check_url must fail the check:\n{run.output}"
    assert run.statuses() == {"connect": "fail"}, run.stdout
    assert SECRET not in run.output, "the password from the stack outputs was printed"


def test_brokerctl_check_usage_error_exits_2() -> None:
    run = run_check("--url", f"http://probe:{SECRET}@host", via_brokerctl=True)

    assert run.returncode == 2, run.output
    assert "must look like redis://" in run.stderr, run.stderr
    assert SECRET not in run.output, "a password was printed in a usage error"


def test_help_is_the_module_documentation() -> None:
    run = run_check("--help", via_brokerctl=True)

    assert run.returncode == 0, run.output
    for text in ("--expect-persistence", "brokercheck/v1", "canary:QUEUE", "--url-env"):
        assert text in run.stdout, f"help should mention {text}:\n{run.stdout}"


def test_brokercheck_imports_only_stdlib_redis_kombu_celery() -> None:
    """The workers' image has those and nothing else from this project (no pydantic, yaml)."""
    tree = ast.parse(BROKERCHECK.read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    allowed = set(sys.stdlib_module_names) | {"__future__", "redis", "kombu", "celery"}

    assert imported <= allowed, f"brokercheck.py imports {sorted(imported - allowed)}"


@pytest.mark.parametrize(
    "text",
    [
        f"redis://celery:{SECRET}@broker:6379/0",
        f"Error connecting with password {SECRET}",
        "rediss://:S3cret%2FPa55@broker:6380/1",
    ],
)
def test_masker_hides_passwords_in_urls_and_messages(text: str) -> None:
    mask = Masker([f"redis://celery:{SECRET}@broker/0", "rediss://:S3cret%2FPa55@broker/1"])

    masked = mask(text)

    assert SECRET not in masked, masked
    assert "S3cret/Pa55" not in masked, masked
    assert "S3cret%2FPa55" not in masked, masked
