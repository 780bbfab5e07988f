"""The check never prints a password, however the URL carrying it is written.

A password with `/` and `@` in it, written percent-encoded, with a bare `@`, bare `/`, in a
`?password=` or `&password=` option, or in Sentinel-style URLs: against a real broker (the
check connects and reports) and against a dead port (it fails and explains), as a table and
as JSON, through brokercheck.py and `python -m brokerctl check`. No piece of the password
appears on stdout or stderr.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.support.check_cli import CheckRun, run_check
from tests.support.network import dead_port
from tests.support.redis_server import RedisServer, broker_config, running_redis

PASSWORD = "Left-h4lf/Right-h4lf@Tail-h4lf"
PIECES = ("Left-h4lf", "Right-h4lf", "Tail-h4lf")
ENCODED = quote(PASSWORD, safe="")

URL_FORMS = {
    # form: (URL template, whether the check can connect with it)
    "percent-encoded": ("redis://probe:{encoded}@{host}/0", True),
    "bare @": ("redis://probe:{bare_at}@{host}/0", True),
    "bare / and @": ("redis://probe:{raw}@{host}/0", False),
    "?password=": ("redis://probe@{host}/0?password={encoded}", True),
    "&password=": ("redis://probe@{host}/0?db=0&password={encoded}", True),
    "bare ?password=": ("redis://probe@{host}/0?password={raw}", False),
    "no user": ("redis://:{raw}@{host}/0", False),
    "sentinel": (
        "sentinel://:{encoded}@{host};sentinel://:{raw}@{host}/0?sentinel_password={encoded}",
        False,
    ),
}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with running_redis(broker_config(probe_password=PASSWORD)) as running:
        yield running


def url_of(form: str, host: str) -> str:
    template, _ = URL_FORMS[form]
    bare_at = quote(PASSWORD, safe="@")
    return template.format(encoded=ENCODED, raw=PASSWORD, bare_at=bare_at, host=host)


def assert_no_piece_of_the_password(run: CheckRun, form: str) -> None:
    for piece in (PASSWORD, ENCODED, *PIECES):
        assert piece not in run.output, f"{form}: {piece!r} printed:\n{run.output}"


@pytest.mark.parametrize("output", [["--json"], []], ids=["json", "table"])
@pytest.mark.parametrize("form", URL_FORMS)
def test_no_password_printed_against_a_real_broker(
    server: RedisServer, form: str, output: list[str]
) -> None:
    run = run_check("--url", url_of(form, f"{server.host}:{server.port}"), *output)

    assert_no_piece_of_the_password(run, form)
    assert "Traceback" not in run.stderr, f"{form}: traceback:\n{run.stderr}"
    _, connects = URL_FORMS[form]
    if connects:
        assert run.returncode == 0, f"{form}: the check should pass:\n{run.output}"
        assert "***" in run.stdout, f"{form}: the target should show a masked password"
    else:
        assert run.returncode == 2, f"{form}: expected a usage error:\n{run.output}"
        assert "percent-encode" in run.stderr or "must look like" in run.stderr, run.stderr


@pytest.mark.parametrize("via_brokerctl", [False, True], ids=["brokercheck.py", "brokerctl"])
@pytest.mark.parametrize("output", [["--json"], []], ids=["json", "table"])
@pytest.mark.parametrize("form", URL_FORMS)
def test_no_password_printed_against_a_dead_port(
    form: str, output: list[str], via_brokerctl: bool
) -> None:
    url = url_of(form, f"127.0.0.1:{dead_port()}")
    run = run_check("--url", url, "--timeout", "2", *output, via_brokerctl=via_brokerctl)

    assert_no_piece_of_the_password(run, form)
    assert "Traceback" not in run.stderr, f"{form}: traceback:\n{run.stderr}"
    _, connects = URL_FORMS[form]
    assert run.returncode == (1 if connects else 2), f"{form}:\n{run.output}"
    if output:
        assert run.report["checks"][0]["name"] == ("connect" if connects else "usage"), run.stdout


@pytest.mark.parametrize("form", ["bare @", "?password=", "bare / and @"])
def test_no_password_printed_when_the_url_comes_from_the_environment(form: str) -> None:
    url = url_of(form, f"127.0.0.1:{dead_port()}")
    run = run_check("--json", "--timeout", "2", env={"BROKER_CHECK_URL": url})

    assert_no_piece_of_the_password(run, form)
    assert run.returncode in (1, 2), run.output
