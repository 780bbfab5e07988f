"""Broker checks: redis-py as the read-only check user.

One pipelined round trip reads INFO, the persistence settings and the queue sizes; nothing is
written, and task bodies are counted, never read. Behind Sentinel these run on the master.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from brokerctl.brokercheck.config import CheckConfig
from brokerctl.brokercheck.contract import (
    FAIL,
    PASS,
    WARN,
    Deadline,
)
from brokerctl.brokercheck.masking import SECRET_PARAM
from brokerctl.brokercheck.report import Report

VISIBILITY_WARN_SHARE = 0.8
PRIORITY_STEPS = (0, 3, 6, 9)  # kombu.transport.redis.PRIORITY_STEPS
PRIORITY_SEPARATOR = "\x06\x16"  # kombu's Channel.sep: queue "q" priority 3 is "q\x06\x163"
UNACKED_KEY, UNACKED_INDEX_KEY = "unacked", "unacked_index"


@dataclass(frozen=True)
class BrokerState:
    """What one pipelined round trip learned (each value may be the command's error)."""

    info: Any
    appendfsync: Any
    save: Any
    backlog: dict[str, Any]
    unacked_count: Any
    unacked_oldest: Any

    def depths(self) -> dict[str, int]:
        """Messages waiting per queue (all priorities); a refused LLEN counts as 0."""
        return {
            queue: sum(n for n in lengths if isinstance(n, int))
            for queue, lengths in self.backlog.items()
        }


def redis_client(url: str, timeout: float) -> Any:
    """Return a redis-py client whose every connect and read is bounded and never retried."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        single_connection_client=True,
    )


def check_broker(config: CheckConfig, report: Report, deadline: Deadline) -> BrokerState | None:
    """Run the broker checks; return what they read, or None when the broker did not answer."""
    user = urlsplit(config.broker_url).username or "default"
    expected = f"PONG within {config.timeout:g} s as user {user}"
    try:
        client = redis_client(config.broker_url, deadline.step())
        started = time.monotonic()
        client.ping()
        round_trip_ms = (time.monotonic() - started) * 1000
    except Exception as error:
        if _is_loading(error):
            measured, hint = _loading_progress(config.broker_url, deadline)
        else:
            measured, hint = _explain_connect_error(error, config.timeout)
        report.add("connect", FAIL, measured, expected, hint + "; later checks did not run")
        return None
    report.add("connect", PASS, f"PONG in {round_trip_ms:.1f} ms as user {user}", expected)
    _check_default_user(report, config.broker_url, deadline)
    try:
        state = _read_broker_state(client, config.queues)
    except Exception as error:
        report.add(
            "broker-state",
            FAIL,
            f"{type(error).__name__}: {error}",
            "INFO, CONFIG GET and queue lengths answered",
            "the broker answered PING, then stopped answering; later checks did not run",
        )
        return None
    finally:
        client.close()
    _check_engine(report, state.info, config.expect_engine)
    _check_persistence(report, state, config.expect_persistence)
    _check_memory(report, state, config)
    _check_backlog(report, state, config)
    return state


def _is_loading(error: Exception) -> bool:
    """Whether Redis refused with `-LOADING` (redis-py's BusyLoadingError, a ConnectionError)."""
    return type(error).__name__ == "BusyLoadingError" or str(error).startswith("LOADING")


def _loading_progress(url: str, deadline: Deadline) -> tuple[str, str]:
    """Say how far a loading broker is: INFO persistence answers while everything else is refused.

    A loading broker accepts connections and AUTH, then answers `-LOADING` to PING and to
    every command but a few (INFO among them) until its RDB or AOF is in memory.
    """
    hint = (
        "Redis is reading its RDB/AOF into memory after a restart and refuses every client "
        "until it is done (workers wait and reconnect); rerun the check when it finished"
    )
    try:
        client = redis_client(url, deadline.step())
        try:
            info = client.info("persistence")
        finally:
            client.close()
    except Exception as error:
        return f"loading its dataset (progress unknown: {type(error).__name__}: {error})", hint
    if not int(info.get("loading", 0)):
        return "was loading its dataset, finished since", "rerun the check"
    percent = float(info.get("loading_loaded_perc", 0.0))
    eta = info.get("loading_eta_seconds")
    left = f", about {eta} s left" if eta is not None else ""
    loaded = _megabytes(int(info.get("loading_loaded_bytes", 0)))
    total = _megabytes(int(info.get("loading_total_bytes", 0)))
    return f"loading its dataset: {percent:.1f}% loaded ({loaded} of {total}){left}", hint


def _check_default_user(report: Report, url: str, deadline: Deadline) -> None:
    """Fail when a client that sends no password is served: the `default` user is open.

    Redis authenticates every new connection as `default`; unless that user is off or has a
    password, anyone who reaches the port may run whatever it allows (read task bodies, FLUSHALL)
    without the Secret. A broker that is safe answers `-NOAUTH` to an unauthenticated PING.
    """
    expected = "a client without password is refused (NOAUTH)"
    hint = (
        "the default user is on without a password: every client that reaches the port is "
        "served without credentials; set `user default off` (or give it a password)"
    )
    try:
        client = redis_client(_without_credentials(url), deadline.step())
        try:
            client.ping()
        finally:
            client.close()
    except Exception as error:
        name = type(error).__name__
        if name in ("AuthenticationError", "AuthenticationRequiredError") or "NOAUTH" in str(error):
            report.add("default-user", PASS, "NOAUTH: authentication required", expected)
        elif name == "NoPermissionError" or "NOPERM" in str(error):
            report.add(
                "default-user",
                FAIL,
                f"served as user default, PING refused ({name}: {error})",
                expected,
                hint,
            )
        else:
            report.add(
                "default-user",
                WARN,
                f"could not tell ({name}: {error})",
                expected,
                "an unauthenticated PING neither succeeded nor was refused with NOAUTH",
            )
        return
    report.add("default-user", FAIL, "PONG without any password", expected, hint)


def _without_credentials(url: str) -> str:
    """Return `url` without its userinfo and without credential options in its query."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    query = "&".join(
        option
        for option in parts.query.split("&")
        if option
        and not SECRET_PARAM.match("&" + option)
        and not option.lower().startswith(("username=", "user="))
    )
    return parts._replace(netloc=host, query=query).geturl()


def _explain_connect_error(error: Exception, timeout: float) -> tuple[str, str]:
    """Turn a redis-py connection error into what happened and what to look at."""
    text = f"{type(error).__name__}: {error}"
    name = type(error).__name__
    if name == "AuthenticationError" or "WRONGPASS" in str(error):
        return (
            f"authentication refused ({text})",
            "the user or password is wrong, or the ACL user is off; compare the URL's Secret "
            "with the broker's ACL",
        )
    if name == "TimeoutError" or isinstance(error, socket.timeout):
        return (
            f"no answer within {timeout:g} s ({text})",
            "something accepts connections but does not speak Redis: wrong port or service, "
            "TLS (rediss://) mismatch, or a hung server",
        )
    if name == "NoPermissionError":
        return f"the user may not run PING ({text})", "grant the check user +ping"
    if "certificate verify failed" in str(error).lower():
        return (
            f"TLS certificate refused ({text})",
            "the broker's certificate is not signed by the CA in the URL's ssl_ca_certs, has "
            "expired, or does not name the URL's host",
        )
    if any(cut in str(error).lower() for cut in ("reset by peer", "closed by server")):
        return (
            f"connection dropped by the broker ({text})",
            "a TLS-only broker drops plain redis:// clients: use rediss:// with ssl_cert_reqs "
            "and ssl_ca_certs (the broker's client Secret has the right URL)",
        )
    return (
        f"unreachable ({text})",
        "is Redis running, are host and port right, does a NetworkPolicy allow this client?",
    )


def _read_broker_state(client: Any, queues: Sequence[str]) -> BrokerState:
    """Read INFO, the persistence config and the queue/unacked sizes in one round trip."""
    pipe = client.pipeline(transaction=False)  # no MULTI: the check user may not run it
    pipe.info()
    pipe.config_get("appendfsync")
    pipe.config_get("save")
    for queue in queues:
        for key in _priority_keys(queue):
            pipe.llen(key)
    pipe.zcard(UNACKED_INDEX_KEY)
    pipe.zrange(UNACKED_INDEX_KEY, 0, 0, withscores=True)
    answers = pipe.execute(raise_on_error=False)
    info, appendfsync, save = answers[:3]
    lengths = answers[3:-2]
    steps = len(PRIORITY_STEPS)
    backlog = {q: lengths[i * steps : (i + 1) * steps] for i, q in enumerate(queues)}
    return BrokerState(info, appendfsync, save, backlog, answers[-2], answers[-1])


def _priority_keys(queue: str) -> list[str]:
    """Return kombu's list keys of one queue: the queue, then queue + SEP + each priority."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def config_value(answer: Any, name: str) -> str | None:
    """Return a CONFIG GET value as text, or None when the command failed."""
    if isinstance(answer, Exception) or not isinstance(answer, dict):
        return None
    value = answer.get(name, answer.get(name.encode()))
    return value.decode() if isinstance(value, bytes) else value


def command_error(report: Report, name: str, answer: Any, expected: str, grant: str) -> bool:
    """Report a refused or failed command as a failed check; return whether it failed."""
    if not isinstance(answer, Exception):
        return False
    report.add(
        name, FAIL, f"{type(answer).__name__}: {answer}", expected, f"the check user needs {grant}"
    )
    return True


def running_engine(info: Mapping[str, Any]) -> tuple[str, str]:
    """Return (engine, version) from INFO: Valkey reports `redis_version:7.2.4` for old clients."""
    if info.get("server_name") == "valkey":
        return "valkey", str(info.get("valkey_version", "unknown"))
    return "redis", str(info.get("redis_version", "unknown"))


def _check_engine(report: Report, info: Any, expected: tuple[str, str | None] | None) -> None:
    """Compare the running engine and version with the deployed one, when one is expected.

    After an image change this tells whether the broker really rolled onto the new server.
    """
    if expected is None or isinstance(info, Exception):
        return  # no expectation; a refused INFO is reported by the persistence check
    engine, version = running_engine(info)
    want_engine, want_version = expected
    wanted = want_engine + (f" {want_version}" if want_version else "")
    measured = f"{engine} {version}"
    same_version = want_version is None or (
        version.split(".")[: len(want_version.split("."))] == want_version.split(".")
    )
    if engine == want_engine and same_version:
        report.add("engine", PASS, measured, wanted)
        return
    report.add(
        "engine",
        FAIL,
        measured,
        wanted,
        "the broker runs another server than the stack deployed: its StatefulSet has not rolled "
        "onto the new image yet (kubectl rollout status), or broker.engine_version does not "
        "match what the image runs",
    )


def _persistence_mode(info: Mapping[str, Any], appendfsync: str | None, save: str | None) -> str:
    """Name the mode Redis runs in, in the terms of --expect-persistence."""
    if int(info.get("aof_enabled", 0)):
        if appendfsync == "always":
            return "aof-always"
        if appendfsync == "everysec":
            return "aof"
        return f"aof (appendfsync {appendfsync or 'unknown'})"
    return "rdb" if (save or "").strip() else "none"


def _check_persistence(report: Report, state: BrokerState, expected: str | None) -> None:
    """Compare the running persistence mode with the expected one, then its health."""
    if command_error(report, "persistence", state.info, "INFO answered", "+info"):
        return
    appendfsync = config_value(state.appendfsync, "appendfsync")
    save = config_value(state.save, "save")
    if appendfsync is None or save is None:
        bad = state.appendfsync if isinstance(state.appendfsync, Exception) else state.save
        report.add(
            "persistence",
            FAIL,
            f"CONFIG GET refused: {bad}",
            expected or "any",
            "the check user needs +config|get (appendfsync is not in INFO)",
        )
    else:
        mode = _persistence_mode(state.info, appendfsync, save)
        if expected is None:
            report.add("persistence", PASS, mode, "any (no --expect-persistence)")
        elif mode == expected:
            report.add("persistence", PASS, mode, expected)
        else:
            report.add(
                "persistence",
                FAIL,
                mode,
                expected,
                "the broker's redis.conf (appendonly, appendfsync, save) does not match "
                "the stack's persistence setting; was the ConfigMap applied and Redis "
                "restarted?",
            )
    _check_persistence_status(report, state.info)


def _check_persistence_status(report: Report, info: Mapping[str, Any]) -> None:
    """Last save/write succeeded and the dataset is loaded: otherwise Redis may refuse writes."""
    fields = {
        "rdb_last_bgsave_status": "ok",
        "aof_last_write_status": "ok",
        "aof_last_bgrewrite_status": "ok",
        "loading": 0,
    }
    measured = {key: info.get(key) for key in fields if key in info}
    bad = {key: value for key, value in measured.items() if str(value) != str(fields[key])}
    text = " ".join(f"{key}={value}" for key, value in measured.items())
    expected = "last save and write ok, not loading"
    if not bad:
        report.add("persistence-status", PASS, text, expected)
    elif set(bad) == {"loading"}:
        report.add(
            "persistence-status",
            FAIL,
            text,
            expected,
            "Redis is still loading its data set; retry when it finished",
        )
    else:
        report.add(
            "persistence-status",
            FAIL,
            text,
            expected,
            "a save or AOF write failed (disk full, volume read-only?): see the Redis log; "
            "with stop-writes-on-bgsave-error Redis refuses new tasks",
        )


def _check_memory(report: Report, state: BrokerState, config: CheckConfig) -> None:
    """noeviction, maxmemory set, and used memory below the warning and failure shares."""
    if isinstance(state.info, Exception):
        return
    info = state.info
    policy = str(info.get("maxmemory_policy", "unknown"))
    if policy == "noeviction":
        report.add("eviction-policy", PASS, policy, "noeviction")
    else:
        report.add(
            "eviction-policy",
            FAIL,
            policy,
            "noeviction",
            "an evicting broker silently drops queued tasks; set maxmemory-policy noeviction",
        )
    maxmemory = int(info.get("maxmemory", 0))
    used = int(info.get("used_memory", 0))
    if maxmemory <= 0:
        report.add(
            "maxmemory",
            FAIL,
            "0 (unlimited)",
            "set (> 0)",
            "without maxmemory Redis grows until the kubelet OOM-kills it; set it "
            "below the container's memory limit",
        )
        return
    report.add("maxmemory", PASS, _megabytes(maxmemory), "set (> 0)")
    percent = 100.0 * used / maxmemory
    measured = f"{_megabytes(used)} of {_megabytes(maxmemory)} ({percent:.1f}%)"
    expected = f"< {config.memory_warn_percent:g}% (fail at {config.memory_fail_percent:g}%)"
    hint = (
        "a full noeviction broker refuses new tasks (OOM command not allowed): drain the "
        "backlog or raise maxmemory and the memory limit"
    )
    if percent >= config.memory_fail_percent:
        report.add("memory-usage", FAIL, measured, expected, hint)
    elif percent >= config.memory_warn_percent:
        report.add("memory-usage", WARN, measured, expected, hint)
    else:
        report.add("memory-usage", PASS, measured, expected)


def _megabytes(size: int) -> str:
    """Format bytes as MiB for people."""
    return f"{size / 1048576:.1f} MiB"


def _check_backlog(report: Report, state: BrokerState, config: CheckConfig) -> None:
    """Depth of every queue (all priorities), and the unacknowledged messages' oldest age."""
    for queue, lengths in state.backlog.items():
        refused = next((answer for answer in lengths if isinstance(answer, Exception)), None)
        if command_error(report, f"backlog:{queue}", refused, "LLEN answered", "+llen"):
            continue
        by_priority = ", ".join(
            f"priority {step}: {length}"
            for step, length in zip(PRIORITY_STEPS, lengths, strict=True)
            if length
        )
        detail = f" ({by_priority})" if by_priority else ""
        report.add(f"backlog:{queue}", PASS, f"{sum(lengths)} waiting{detail}", "any depth")
    _check_unacked(report, state, config.visibility_timeout)


def _check_unacked(report: Report, state: BrokerState, visibility_timeout: float) -> None:
    """Warn when the oldest unacknowledged delivery nears visibility_timeout (redelivery)."""
    for answer in (state.unacked_count, state.unacked_oldest):
        if command_error(report, "unacked", answer, "ZCARD/ZRANGE answered", "+zcard +zrange"):
            return
    expected = (
        f"oldest < {VISIBILITY_WARN_SHARE:.0%} of visibility_timeout {visibility_timeout:g} s"
    )
    if not state.unacked_count:
        report.add("unacked", PASS, "0 unacknowledged", expected)
        return
    oldest_delivery = float(state.unacked_oldest[0][1]) if state.unacked_oldest else time.time()
    age = max(0.0, time.time() - oldest_delivery)
    measured = f"{state.unacked_count} unacknowledged, oldest delivered {age:.0f} s ago"
    if age < VISIBILITY_WARN_SHARE * visibility_timeout:
        report.add("unacked", PASS, measured, expected)
    elif age < visibility_timeout:
        report.add(
            "unacked",
            WARN,
            measured,
            expected,
            "kombu will soon redeliver it (the task runs twice); raise visibility_timeout "
            "above the longest task's run time",
        )
    else:
        report.add(
            "unacked",
            WARN,
            measured,
            expected,
            "past visibility_timeout: a worker died with it, or a task runs longer than "
            "visibility_timeout and is being redelivered (run twice)",
        )
