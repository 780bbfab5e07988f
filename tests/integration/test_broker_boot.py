"""Each stack's rendered broker boots a real server (Redis, Valkey) in the mode the stack asks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from tests.support.broker_boot import (
    CHECK_PASSWORD,
    EXPORTER_PASSWORD,
    KEDA_PASSWORD,
    SCALE_IN_PASSWORD,
    booted_broker,
    rendered_broker,
)
from tests.support.engines import ENGINES
from tests.support.redis_server import CELERY_PASSWORD, PROBE_PASSWORD

EXPECTED = {
    "dev": {"aof_enabled": 0, "appendfsync": None, "save": "3600 1 300 100 60 10000"},
    "staging": {"aof_enabled": 1, "appendfsync": "everysec", "save": ""},
    "prod": {"aof_enabled": 1, "appendfsync": "always", "save": ""},
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("stack", sorted(EXPECTED))
def test_rendered_broker_boots_in_the_stacks_persistence_mode(stack, engine):
    broker = rendered_broker(stack, engine)
    expected = EXPECTED[stack]
    with booted_broker(broker) as server:
        admin = server.admin()
        persistence = admin.info("persistence")
        assert persistence["aof_enabled"] == expected["aof_enabled"], f"{stack}: {persistence}"
        assert persistence["loading"] == 0
        assert admin.config_get("save")["save"] == expected["save"], f"{stack}: save points"
        if expected["appendfsync"]:
            fsync = admin.config_get("appendfsync")["appendfsync"]
            assert fsync == expected["appendfsync"], f"{stack}: appendfsync {fsync}"
            assert admin.config_get("aof-use-rdb-preamble")["aof-use-rdb-preamble"] == "yes"
        assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert server.client("celery", CELERY_PASSWORD).ping(), f"{stack}: celery cannot log in"
        assert server.client("probe", PROBE_PASSWORD).ping(), f"{stack}: probe cannot log in"


@pytest.mark.parametrize("engine", ENGINES)
def test_default_user_and_wrong_passwords_are_refused(engine):
    broker = rendered_broker("staging", engine)
    with booted_broker(broker) as server:
        anonymous = redis.Redis(host=server.host, port=server.port, socket_timeout=5)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with pytest.raises(redis.AuthenticationError):
            server.client("celery", PROBE_PASSWORD).ping()


@pytest.mark.parametrize("engine", ENGINES)
def test_passwords_reach_redis_hashed_and_nowhere_in_plain_text(engine):
    broker = rendered_broker("prod", engine)
    with booted_broker(broker) as server:
        acl_files = list(Path(server.directory).rglob("users.acl"))
        assert len(acl_files) == 1, f"expected one ACL file, found {acl_files}"
        acl = acl_files[0].read_text()
        assert acl_files[0].stat().st_mode & 0o077 == 0, "the ACL file is readable by others"
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().decode()
        conf = broker.redis_conf
        passwords = (CELERY_PASSWORD, PROBE_PASSWORD, CHECK_PASSWORD, KEDA_PASSWORD)
        for password in (*passwords, EXPORTER_PASSWORD, SCALE_IN_PASSWORD):
            assert password not in acl, "plain password in the ACL file"
            assert password not in cmdline, "password in redis-server's argv"
            assert password not in conf, "password in redis.conf"
            assert password not in server.log(), "password in the broker's log"
        # One SHA-256 hash each: celery, the readers, and the pod-local reloader (its password
        # is random per start and never leaves the pod).
        hashed = dict(re.findall(r"^user (\S+) on #([0-9a-f]{64})", acl, flags=re.MULTILINE))
        users = {"celery", "probe", "check", "keda", "exporter", "scalein", "reloader"}
        assert set(hashed) == users, f"hashed users:\n{acl}"
