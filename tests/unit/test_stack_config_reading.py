"""Stack files are read exactly as the Pulumi CLI reads them, and nothing in one is ignored.

The expected texts below are what `pulumi up` hands the program, derived from the Pulumi CLI's
source (gopkg.in/yaml.v3 resolve.go; pulumi sdk/go/common/resource/config object.go, value.go;
sdk/go/common/workspace loaders.go): see brokerctl/stackfile.py. Where PyYAML (YAML 1.1)
reads the same text differently, the PyYAML reading is named in the test's id.
"""

from __future__ import annotations

import json

import pytest

from brokerctl import mockrun
from brokerctl.errors import CommandError
from components.stack_config import SettingsError, parse_stack_config
from tests.unit.conftest import PROJECT_ROOT, run_brokerctl

DEV = (PROJECT_ROOT / "config" / "Pulumi.dev.yaml").read_text()
"""A stack that renders: tests add keys to it (at two spaces, under `config:`)."""


def dev_with(extra: str) -> str:
    return DEV.rstrip("\n") + "\n" + extra


def read(stack_dir, text: str) -> tuple[dict[str, str], list[str]]:
    stack_dir.write("read", text)
    return mockrun.read_stack_config("read", stack_dir.path)


def problems_of(config: dict[str, str], secret_keys: list[str] | None = None) -> list[str]:
    """Every settings problem parse_stack_config finds in a raw config (none: an empty list)."""
    try:
        parse_stack_config(config, secret_keys or [], "config/Pulumi.t.yaml")
    except SettingsError as error:
        return error.problems
    return []


def render(stack_dir, tmp_path, text: str):
    stack_dir.write("bad", text)
    result = run_brokerctl(
        "render", "--stack", "bad", "--config-dir", str(stack_dir.path),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


# --- keys outside the project's namespace -------------------------------------------------------


def test_a_key_in_a_misspelt_namespace_is_refused_with_a_hint(stack_dir, tmp_path):
    result = render(stack_dir, tmp_path, dev_with("  celery_redis:broker:\n    persistence: aof\n"))
    assert result.returncode == 2, f"exit {result.returncode}: the key was ignored\n{result.stdout}"
    line = next((ln for ln in result.stderr.splitlines() if "celery_redis:broker" in ln), "")
    assert "Pulumi.bad.yaml" in line, result.stderr
    assert '"persistence":"aof"' in line, f"the value is not shown: {line}"
    assert "did you mean celery-redis:broker?" in line, line
    assert "allowed: celery-redis:<setting>" in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "key", ["aws:region", "Celery-Redis:namespace", "celeryredis:workers", "redis:broker"]
)
def test_every_foreign_namespace_is_refused(key):
    problems = problems_of({key: "x"})
    assert any(p.startswith(f"{key} = 'x': outside this project's namespace") for p in problems)


def test_kubernetes_keys_point_to_kube_context(stack_dir, tmp_path):
    result = render(stack_dir, tmp_path, dev_with("  kubernetes:context: kind-prod\n"))
    assert result.returncode == 2, result.stdout
    line = next((ln for ln in result.stderr.splitlines() if "kubernetes:context" in ln), "")
    assert "'kind-prod'" in line, result.stderr
    assert "celery-redis:kube_context" in line, result.stderr


def test_keys_the_pulumi_engine_reads_are_kept():
    config = {
        "pulumi:disable-default-providers": '["kubernetes"]',  # from Pulumi.yaml
        "pulumi:tags": '{"team":"platform"}',
        "celery-redis:ephemeral": "true",
    }
    assert not [p for p in problems_of(config) if "pulumi:" in p]
    problems = problems_of({"pulumi:disable-default-provider": "[]"})
    assert any(
        p.startswith("pulumi:disable-default-provider = '[]': not a key the Pulumi engine reads")
        for p in problems
    ), problems


def test_a_secret_in_a_foreign_namespace_is_refused_without_showing_it(stack_dir, tmp_path):
    text = dev_with("  celery_redis:broker_password:\n    secure: AAABADQXFVZ\n")
    result = render(stack_dir, tmp_path, text)
    assert result.returncode == 2
    assert "celery_redis:broker_password = [secret]" in result.stderr, result.stderr
    assert "redacted-" not in result.stderr, "the secret's stand-in was shown"


# --- scalars as the Pulumi CLI reads them (yaml.v3, YAML 1.2 core) ------------------------------


@pytest.mark.parametrize(
    ("written", "received"),
    [
        pytest.param("yes", "yes", id="yes-is-text-not-pyyaml-true"),
        pytest.param("on", "on", id="on-is-text-not-pyyaml-true"),
        pytest.param("No", "No", id="No-is-text-not-pyyaml-false"),
        pytest.param("True", "true", id="True-is-a-boolean"),
        pytest.param("1e9", "1000000000", id="1e9-is-a-number-not-pyyaml-text"),
        pytest.param("1.5e3", "1500", id="float-as-go-json"),
        pytest.param("1e21", "1e+21", id="big-float-as-go-json"),
        pytest.param("1.0", "1", id="integral-float-as-go-json-not-pyyaml-1.0"),
        pytest.param("-0.0", "0", id="negative-zero-rereads-as-int"),
        pytest.param("0x1F", "31", id="hex"),
        pytest.param("012", "10", id="legacy-octal"),
        pytest.param("0o17", "15", id="yaml12-octal-not-pyyaml-text"),
        pytest.param("08", "8", id="08-is-a-float-not-pyyaml-text"),
        pytest.param("1_000", "1000", id="underscores"),
        pytest.param("+12", "12", id="plus-sign"),
        pytest.param("18446744073709551615", "18446744073709551615", id="uint64"),
        pytest.param("18446744073709551616", "18446744073709552000", id="beyond-uint64-float"),
        pytest.param("~", "", id="null-is-empty"),
        pytest.param("", "", id="empty-is-empty"),
        pytest.param("2001-12-14", "2001-12-14 00:00:00 +0000 UTC", id="date-as-go-time"),
        pytest.param(
            "2001-12-14T21:59:43.10Z", "2001-12-14 21:59:43.1 +0000 UTC", id="timestamp-as-go-time"
        ),
        pytest.param("2001-02-30", "2001-02-30", id="impossible-date-is-text"),
        pytest.param("'yes'", "yes", id="quoted"),
        pytest.param("'1e9'", "1e9", id="quoted-number"),
        pytest.param("!!str 123", "123", id="explicit-str"),
        pytest.param("!!float 1", "1", id="explicit-float"),
        pytest.param(".5", "0.5", id="leading-dot"),
        pytest.param("1:30", "1:30", id="no-sexagesimal"),
    ],
)
def test_top_level_scalars_reach_the_program_as_the_cli_hands_them(stack_dir, written, received):
    config, _ = read(stack_dir, f"config:\n  celery-redis:name_prefix: {written}\n")
    assert config["celery-redis:name_prefix"] == received


def test_values_inside_objects_become_the_clis_json(stack_dir):
    text = (
        "config:\n  celery-redis:broker:\n"
        "    z: yes\n    max_queued_messages: 1e2\n    octal: 0o17\n    nothing: ~\n"
        "    when: 2001-12-14\n    huge: 18446744073709551615\n    list: [1.0, 'a<b']\n"
    )
    config, _ = read(stack_dir, text)
    assert config["celery-redis:broker"] == (
        '{"huge":18446744073709552000,"list":[1,"a\\u003cb"],"max_queued_messages":100,'
        '"nothing":null,"octal":15,"when":"2001-12-14 00:00:00 +0000 UTC","z":"yes"}'
    )
    assert json.loads(config["celery-redis:broker"])["max_queued_messages"] == 100


def test_settings_command_sees_what_pulumi_sees(stack_dir):
    stack_dir.write("t", dev_with("  celery-redis:name_prefix: yes\n"))
    result = run_brokerctl("settings", "--stack", "t", "--config-dir", str(stack_dir.path))
    assert result.returncode == 0, result.stderr
    assert "name_prefix: 'yes'" in result.stdout, result.stdout


# --- what the Pulumi CLI refuses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "config:\n  celery-redis:namespace: a\n  celery-redis:namespace: b\n",
            "line 3: key 'celery-redis:namespace' is already set at line 2",
            id="duplicate-top-level",
        ),
        pytest.param(
            "config:\n  celery-redis:broker:\n    persistence: aof\n    persistence: rdb\n",
            "line 4: key 'persistence' is already set at line 3",
            id="duplicate-nested",
        ),
        pytest.param(
            "config:\n  celery-redis:broker:\n    persistence: aof\n    'persistence': rdb\n",
            "line 4: key 'persistence' is already set at line 3",
            id="duplicate-quoted",
        ),
        pytest.param(
            "config:\n  celery-redis:broker:\n    1: aof\n",
            "celery-redis:broker: key 1 is not text",
            id="number-as-key",
        ),
        pytest.param(
            "config:\n  celery-redis:broker:\n    memory_ratio: .inf\n",
            "celery-redis:broker.memory_ratio: the Pulumi CLI cannot store .inf",
            id="infinity",
        ),
        pytest.param(
            "config:\n  celery-redis:name_prefix: .nan\n",
            "celery-redis:name_prefix: the Pulumi CLI cannot store .nan",
            id="nan",
        ),
        pytest.param(
            "config:\n  celery-redis:broker:persistence: aof\n",
            "'celery-redis:broker:persistence' is not a config key",
            id="three-part-key",
        ),
        pytest.param(
            "config:\n  celery-redis:name_prefix: !!int abc\n",
            "cannot read `abc` as !!int",
            id="explicit-tag-that-does-not-fit",
        ),
    ],
)
def test_what_the_cli_refuses_is_refused_naming_file_and_key(stack_dir, text, expected):
    stack_dir.write("bad", text)
    with pytest.raises(CommandError) as caught:
        mockrun.read_stack_config("bad", stack_dir.path)
    assert caught.value.exit_code == 2
    assert "Pulumi.bad.yaml" in caught.value.message, caught.value.message
    assert expected in caught.value.message, caught.value.message


def test_a_duplicate_key_stops_render_with_exit_2(stack_dir, tmp_path):
    result = render(stack_dir, tmp_path, dev_with("  celery-redis:ephemeral: false\n"))
    assert result.returncode == 2, result.stdout
    assert "key 'celery-redis:ephemeral' is already set" in result.stderr, result.stderr


def test_every_duplicate_is_reported_together(stack_dir):
    text = "config:\n  a: 1\n  a: 2\n  celery-redis:broker:\n    b: 1\n    b: 2\n"
    stack_dir.write("bad", text)
    with pytest.raises(CommandError) as caught:
        mockrun.read_stack_config("bad", stack_dir.path)
    assert "key 'a'" in caught.value.message
    assert "key 'b'" in caught.value.message


# --- keys, secrets and project config -----------------------------------------------------------


def test_keys_are_namespaced_as_the_cli_does(stack_dir):
    config, _ = read(stack_dir, "config:\n  namespace: a\n  celery-redis:config:name_prefix: b\n")
    assert config["celery-redis:namespace"] == "a"
    assert config["celery-redis:name_prefix"] == "b"


def test_a_secure_value_inside_an_object_makes_the_key_secret(stack_dir):
    text = "config:\n  celery-redis:broker:\n    auth:\n      secure: AAABAJ\n    x: 1\n"
    config, secret_keys = read(stack_dir, text)
    assert secret_keys == ["celery-redis:broker"]
    assert json.loads(config["celery-redis:broker"])["auth"].startswith("redacted-")


def test_secure_with_a_non_text_value_is_an_ordinary_object(stack_dir):
    config, secret_keys = read(stack_dir, "config:\n  celery-redis:broker:\n    secure: 12\n")
    assert secret_keys == []
    assert config["celery-redis:broker"] == '{"secure":12}'


def test_project_config_applies_unless_the_stack_sets_the_key(stack_dir):
    config, _ = read(stack_dir, "config: {}\n")
    assert config["pulumi:disable-default-providers"] == '["kubernetes"]'
    config, _ = read(stack_dir, "config:\n  pulumi:disable-default-providers: ['*']\n")
    assert config["pulumi:disable-default-providers"] == '["*"]'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (1.5e-300, "1.5e-300"),
        (123456789.0, "123456789"),
        (0.000001, "0.000001"),
        (-2.5, "-2.5"),
        (1e20, "100000000000000000000"),
    ],
)
def test_floats_are_written_as_gos_encoding_json_writes_them(value, text):
    from brokerctl.stackfile import go_json_float

    assert go_json_float(value, "k") == text
