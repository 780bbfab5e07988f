"""The check's Sentinel options: what a sentinel:// URL needs, and what is refused before any step.

No network here: these are the configurations `brokercheck.py ARGV` would run with, and the
usage errors (exit 2) it gives instead. tests/integration/test_check_sentinel.py runs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brokerctl import brokercheck, mockrun
from components.stack_config import parse_stack_config
from tests.unit.conftest import PROJECT_ROOT

SENTINEL_PASSWORD = "sentinel-Pa55-Qz81"
PROBE_PASSWORD = "probe-Pa55-X7mWz"
SENTINEL_URL = ";".join(
    f"sentinel://probe:{PROBE_PASSWORD}@broker-{k}.broker-headless.ns.svc:26379/0" for k in range(3)
)


def check_config(*argv: str, environ: dict[str, str] | None = None) -> brokercheck.CheckConfig:
    """Return the configuration `brokercheck.py ARGV` would run with (no network step)."""
    args = brokercheck.build_parser().parse_args(list(argv))
    return brokercheck.config_from_args(args, environ=environ or {})


def test_sentinel_url_reads_master_name_password_and_expectations() -> None:
    config = check_config(
        *("--url", SENTINEL_URL, "--sentinel-master", "celery-broker"),
        *("--sentinel-password-env", "SENTINEL_PW", "--max-replica-lag", "2.5"),
        *("--expect-replicas", "2", "--expect-min-replicas-to-write", "1"),
        *("--expect-min-replicas-max-lag", "10"),
        environ={"SENTINEL_PW": SENTINEL_PASSWORD},
    )

    assert config.sentinel == brokercheck.SentinelConfig(
        master_name="celery-broker",
        password=SENTINEL_PASSWORD,
        max_replica_lag=2.5,
        expect_replicas=2,
        expect_min_replicas_to_write=1,
        expect_min_replicas_max_lag=10,
    ), config.sentinel
    assert SENTINEL_PASSWORD not in repr(config.sentinel), "the password must stay out of reprs"


def test_sentinel_password_defaults_to_the_client_secret_variable() -> None:
    config = check_config(
        "--url", SENTINEL_URL, "--sentinel-master", "m",
        environ={"BROKER_SENTINEL_PASSWORD": SENTINEL_PASSWORD},
    )  # fmt: skip

    assert config.sentinel is not None
    assert config.sentinel.password == SENTINEL_PASSWORD


def test_master_name_and_expectations_come_from_stack_outputs(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.json"
    values = {
        "check_url": SENTINEL_URL,
        "sentinel_master": "celery-broker",
        "expect_replicas": 2,
        "min_replicas_to_write": 1,
        "min_replicas_max_lag": 1,
    }
    outputs.write_text(json.dumps(values))

    config = check_config("--outputs", str(outputs))

    assert config.sentinel is not None
    assert config.sentinel.master_name == "celery-broker"
    assert (config.sentinel.expect_replicas, config.sentinel.expect_min_replicas_to_write) == (2, 1)
    assert config.sentinel.expect_min_replicas_max_lag == 1


def test_sentinels_password_comes_from_the_stack_outputs_before_the_environment(
    tmp_path: Path,
) -> None:
    outputs = tmp_path / "outputs.json"
    values = {
        "check_url": SENTINEL_URL,
        "sentinel_master": "m",
        "sentinel_password": SENTINEL_PASSWORD,
    }
    outputs.write_text(json.dumps(values))

    config = check_config(
        "--outputs", str(outputs), environ={"BROKER_SENTINEL_PASSWORD": "not-this-one"}
    )

    assert config.sentinel is not None
    assert config.sentinel.password == SENTINEL_PASSWORD


def test_plain_redis_url_has_no_sentinel_checks() -> None:
    assert check_config("--url", f"redis://probe:{PROBE_PASSWORD}@h:6379/0").sentinel is None


@pytest.mark.parametrize(
    ("argv", "environ", "says"),
    [
        (["--url", SENTINEL_URL], {}, "--sentinel-master"),
        (
            ["--url", SENTINEL_URL, "--sentinel-master", "m", "--sentinel-password-env", "NOPE"],
            {},
            "NOPE is not set",
        ),
        (
            ["--url", "redis://probe:pw@h:6379/0", "--sentinel-master", "m"],
            {},
            "only for a sentinel:// broker URL",
        ),
        (
            ["--url", "redis://probe:pw@h:6379/0", "--worker-url", SENTINEL_URL],
            {},
            "the worker URL is a sentinel:// URL",
        ),
        (
            ["--url", f"sentinel://probe:{PROBE_PASSWORD}@h0/0", "--sentinel-master", "m"],
            {},
            "every Sentinel needs its port",
        ),
        (
            ["--url", f"{SENTINEL_URL};redis://probe:pw@h:6379/0", "--sentinel-master", "m"],
            {},
            "must look like sentinel://",
        ),
    ],
    ids=[
        "no-master",
        "unset-password-variable",
        "sentinel-option-on-redis-url",
        "sentinel-worker-url-only",
        "sentinel-without-port",
        "mixed-schemes",
    ],
)
def test_sentinel_misconfiguration_is_a_usage_error(
    argv: list[str], environ: dict[str, str], says: str
) -> None:
    with pytest.raises(brokercheck.UsageError, match=says) as raised:
        check_config(*argv, environ=environ)

    assert PROBE_PASSWORD not in str(raised.value), f"password in usage error: {raised.value}"


def test_master_url_keeps_user_database_and_tls_options_of_the_sentinel_url() -> None:
    url = (
        f"sentinel://probe:{PROBE_PASSWORD}@s0:26379/3?ssl_cert_reqs=required&ssl_ca_certs=/ca.crt"
        f";sentinel://probe:{PROBE_PASSWORD}@s1:26379/3?ssl_cert_reqs=required"
    )

    assert brokercheck.master_url(url, "broker-1.svc", 6379) == (
        f"rediss://probe:{PROBE_PASSWORD}@broker-1.svc:6379/3"
        "?ssl_cert_reqs=required&ssl_ca_certs=/ca.crt"
    )
    assert brokercheck.master_url(SENTINEL_URL, "fd00::1", 6380) == (
        f"redis://probe:{PROBE_PASSWORD}@[fd00::1]:6380/0"
    )


def test_sentinel_addresses_are_every_url_host_in_order() -> None:
    assert brokercheck.sentinel_addresses(SENTINEL_URL) == [
        (f"broker-{k}.broker-headless.ns.svc", 26379) for k in range(3)
    ]


def test_report_target_masks_every_sentinel_url_and_keeps_every_host() -> None:
    config = check_config("--url", SENTINEL_URL, "--sentinel-master", "m")

    shown = brokercheck.masked_url(config.masker(), config.broker_url)

    assert PROBE_PASSWORD not in shown, shown
    assert shown.count("probe:***@") == 3, shown
    assert all(f"broker-{k}.broker-headless" in shown for k in range(3)), shown


def test_sentinel_password_is_masked_wherever_it_appears() -> None:
    config = check_config(
        "--url", SENTINEL_URL, "--sentinel-master", "m",
        environ={"BROKER_SENTINEL_PASSWORD": SENTINEL_PASSWORD},
    )  # fmt: skip

    masked = config.masker()(f"AUTH failed for {SENTINEL_PASSWORD} at s0:26379")

    assert SENTINEL_PASSWORD not in masked, masked


VARIANTS = PROJECT_ROOT / "tests" / "fixtures" / "render_variants"
JOB = "kubernetes:batch/v1:Job"


def gate_job_container(stack: str, config_dir: Path) -> dict:
    """Return the check Job's container as the real program declares it under mocks."""
    config, secret_keys = mockrun.read_stack_config(stack, config_dir)
    run = mockrun.run_program(stack, config, secret_keys, config_dir)
    (job,) = [resource for resource in run.resources if resource.type == JOB]
    (container,) = job.inputs["spec"]["template"]["spec"]["containers"]
    return container


def option(args: list[str], name: str) -> str:
    """Return the value following `name` in an argument list."""
    return args[args.index(name) + 1]


def test_sentinel_stack_gate_job_checks_replication_with_its_settings() -> None:
    config, secret_keys = mockrun.read_stack_config("prod-sentinel", VARIANTS)
    settings, _ = parse_stack_config(config, secret_keys, "Pulumi.prod-sentinel.yaml")
    sentinel = settings.broker.sentinel

    container = gate_job_container("prod-sentinel", VARIANTS)

    args = container["args"]
    assert option(args, "--sentinel-master") == sentinel.master_name, args
    assert option(args, "--expect-replicas") == str(sentinel.replicas - 1), args
    assert option(args, "--expect-min-replicas-to-write") == str(sentinel.min_replicas_to_write)
    assert option(args, "--expect-min-replicas-max-lag") == str(sentinel.min_replicas_max_lag)
    assert option(args, "--max-replica-lag") == str(sentinel.min_replicas_max_lag), args
    variable = option(args, "--sentinel-password-env")
    (password_env,) = [env for env in container["env"] if env["name"] == variable]
    assert password_env["valueFrom"]["secretKeyRef"]["key"] == "BROKER_SENTINEL_PASSWORD", (
        f"the Job must take Sentinel's password from the client Secret: {password_env}"
    )
    parsed = brokercheck.build_parser().parse_args(args)
    assert parsed.sentinel_master == sentinel.master_name, "the check must accept the Job's args"


def test_sentinel_stack_exports_what_its_gate_job_expects() -> None:
    """`check --stack` reads these outputs: it must judge the broker as the gate Job did."""
    config, secret_keys = mockrun.read_stack_config("prod-sentinel", VARIANTS)
    run = mockrun.run_program("prod-sentinel", config, secret_keys, VARIANTS)
    (job,) = [resource for resource in run.resources if resource.type == JOB]
    args = job.inputs["spec"]["template"]["spec"]["containers"][0]["args"]

    exported = {
        "--sentinel-master": run.outputs["sentinel_master"],
        "--expect-replicas": run.outputs["expect_replicas"],
        "--expect-min-replicas-to-write": run.outputs["min_replicas_to_write"],
        "--expect-min-replicas-max-lag": run.outputs["min_replicas_max_lag"],
    }
    for flag, value in exported.items():
        text = value if isinstance(value, str) else f"{value:g}"  # mocks hand numbers as floats
        assert option(args, flag) == text, f"{flag}: Job {option(args, flag)}, output {value}"


def test_standalone_stack_exports_no_sentinel_expectation() -> None:
    config, secret_keys = mockrun.read_stack_config("dev")
    run = mockrun.run_program("dev", config, secret_keys)

    exported = {"sentinel_master", "expect_replicas", "min_replicas_to_write"} & set(run.outputs)
    assert not exported, f"a standalone stack's outputs must stay as they were: {exported}"


def test_standalone_stack_gate_job_has_no_sentinel_option() -> None:
    container = gate_job_container("dev", mockrun.CONFIG_DIR)

    given = [
        arg
        for arg in container["args"]
        if arg.startswith("--") and arg[2:].replace("-", "_") in brokercheck.SENTINEL_OPTIONS
    ]
    assert not given, f"a standalone broker's gate must not pass Sentinel options: {given}"
    assert not [env for env in container["env"] if "SENTINEL" in env["name"]], container["env"]


def test_the_canary_reaches_a_tls_master_through_celerys_sentinel_backend() -> None:
    """Celery's Sentinel result backend ignores the URL's ssl_* query: the check passes it."""
    from brokerctl.brokercheck.sentinel import sentinel_backend_tls

    tls_url = (
        "sentinel://celery:pw@s0:26379/1?ssl_cert_reqs=required&ssl_ca_certs=/ca.crt;"
        "sentinel://celery:pw@s1:26379/1?ssl_cert_reqs=required&ssl_ca_certs=/ca.crt"
    )
    config = check_config("--url", SENTINEL_URL, "--sentinel-master", "m")
    assert sentinel_backend_tls(config, tls_url) == {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/ca.crt",
    }
    assert sentinel_backend_tls(config, SENTINEL_URL) == {}, "no TLS asked, none given"
