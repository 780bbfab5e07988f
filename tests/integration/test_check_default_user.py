"""An open `default` user (on, without password) fails the check, with a clear reason.

Redis serves every connection as `default` until it authenticates: with `user default on
nopass` (redis-server's own default), anyone who reaches the port reads task bodies or
flushes the queues without the Secret. Real redis-servers configured each way.
"""

from __future__ import annotations

import pytest

from tests.support.check_cli import CheckRun, check_urls, run_check
from tests.support.engines import ENGINES
from tests.support.redis_server import broker_config, running_redis

CLOSED = "user default off"


def broker_with_default_user(rule: str, engine: str) -> str:
    """Return the broker's redis.conf with its `default` user line replaced by `rule`."""
    config = broker_config(engine=engine)
    assert CLOSED in config, "the stand-in broker config no longer turns default off"
    return config.replace(CLOSED, rule)


def failed(run: CheckRun) -> set[str]:
    return {name for name, status in run.statuses().items() if status == "fail"}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "rule",
    ["user default on nopass ~* &* +@all", "user default on nopass -@all"],
    ids=["open", "open-without-commands"],
)
def test_default_user_without_password_fails_the_check(rule: str, engine: str) -> None:
    with running_redis(broker_with_default_user(rule, engine), engine=engine) as server:
        run = run_check("--url", check_urls(server).probe, "--json")

    assert run.returncode == 1, f"an open default user must fail the check:\n{run.output}"
    assert failed(run) == {"default-user"}, f"only default-user should fail:\n{run.stdout}"
    assert "user default off" in run.check("default-user")["hint"], run.check("default-user")


@pytest.mark.parametrize("engine", ENGINES)
def test_authless_url_to_an_open_broker_fails_the_check(engine: str) -> None:
    open_default = broker_with_default_user("user default on nopass ~* &* +@all", engine)
    with running_redis(open_default, engine=engine) as server:
        run = run_check("--url", f"redis://{server.host}:{server.port}/0", "--json")

    assert run.check("connect")["status"] == "pass", run.stdout
    assert "as user default" in run.check("connect")["measured"], run.stdout
    assert run.returncode == 1, f"AUTH-less access must fail the check:\n{run.output}"
    assert run.check("default-user")["measured"] == "PONG without any password", run.stdout


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "rule",
    [CLOSED, "user default on >Default-Pa55-q1 ~* &* +@all"],
    ids=["off", "with-password"],
)
def test_default_user_off_or_with_password_passes(rule: str, engine: str) -> None:
    with running_redis(broker_with_default_user(rule, engine), engine=engine) as server:
        run = run_check("--url", check_urls(server).probe, "--json")

    assert run.returncode == 0, run.output
    assert run.check("default-user")["status"] == "pass", run.stdout
    assert "Default-Pa55-q1" not in run.output, "the default user's password was printed"
