"""Sentinel: find the master, then judge quorum, replicas and the loss bound.

A replicated broker keeps tasks through the loss of a node only while enough Sentinels can
agree on a failover, its replicas are current, and the master refuses writes no replica has
(min-replicas-to-write). These checks say which of those does not hold; the broker checks then
run on the master Sentinel names, and the worker checks reach it through Sentinel, the way the
workers do.
"""

from __future__ import annotations

import re
import time
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from brokerctl.brokercheck.broker import command_error, config_value, redis_client
from brokerctl.brokercheck.config import CheckConfig, SentinelConfig
from brokerctl.brokercheck.contract import (
    ENV_SENTINEL_PASSWORD,
    FAIL,
    PASS,
    SENTINEL_URL_SEPARATOR,
    WARN,
    Deadline,
    is_sentinel_url,
)
from brokerctl.brokercheck.report import Report

SENTINEL_DOWN_FLAGS = ("s_down", "o_down", "disconnected")
REDIS_DEFAULT_MIN_REPLICAS_MAX_LAG = 10  # redis.conf's default, the bound when none is set
SECOND_LOOK_SECONDS = 1.1  # a replica acknowledges every second: past one, it really is behind
_REPLICA_INFO_KEY = re.compile(r"slave\d+")  # INFO replication: slave0:ip=...,port=...,lag=...


@dataclass(frozen=True)
class SentinelAnswer:
    """What one Sentinel of the URL said about the master (error: it did not answer)."""

    address: str
    master: Mapping[str, Any] | None = None
    replicas: tuple[Mapping[str, Any], ...] = ()
    quorum_ok: bool = False
    quorum: str = ""
    error: Exception | None = None
    open_without_password: bool = False

    @property
    def master_address(self) -> str | None:
        """The master this Sentinel names, as `host:port`."""
        return None if self.master is None else f"{self.master['ip']}:{self.master['port']}"


@dataclass(frozen=True)
class Replication:
    """The master's own view of its replicas and of the loss bound (values may be errors)."""

    info: Any
    loss_bound: Any

    def setting(self, name: str) -> int | None:
        """Return one loss-bound setting as a number, or None when CONFIG GET was refused."""
        value = config_value(self.loss_bound, name)
        return int(value) if value is not None and value.lstrip("-").isdigit() else None

    def good_replicas(self) -> int:
        """Replicas that count towards min-replicas-to-write: online, lag within max-lag.

        Redis reports the count (min_slaves_good_slaves) only while the bound is on; without
        it they are counted the same way.
        """
        if isinstance(self.info, Exception):
            return 0
        if "min_slaves_good_slaves" in self.info:
            return int(self.info["min_slaves_good_slaves"])
        max_lag = self.setting("min-replicas-max-lag") or 0
        return sum(
            1
            for row in self.replicas().values()
            if row.get("state") == "online" and int(row.get("lag", 0)) <= max_lag
        )

    def replicas(self) -> dict[str, Mapping[str, Any]]:
        """Replicas connected to the master (any state), by `host:port`."""
        if isinstance(self.info, Exception):
            return {}
        rows = [v for k, v in self.info.items() if _REPLICA_INFO_KEY.fullmatch(k)]
        return {f"{row['ip']}:{row['port']}": row for row in rows if isinstance(row, dict)}


def sentinel_addresses(url: str) -> list[tuple[str, int]]:
    """Every Sentinel of a sentinel:// URL, as (host, port), in the URL's order."""
    parts = [urlsplit(piece) for piece in url.split(SENTINEL_URL_SEPARATOR)]
    return [(str(part.hostname), int(part.port or 0)) for part in parts]


def _tls_options(url: str) -> dict[str, Any]:
    """redis-py TLS arguments written in a URL's query (`ssl_cert_reqs`, `ssl_ca_certs`...).

    A sentinel:// URL carries them like a rediss:// one; they apply to the Sentinels and the
    master alike (both serve TLS when the broker does).
    """
    from redis.connection import parse_url

    query = urlsplit(url.split(SENTINEL_URL_SEPARATOR)[0]).query
    options = {k: v for k, v in parse_url(f"redis://h/?{query}").items() if k.startswith("ssl")}
    return options | {"ssl": True} if options else {}


def _sentinel_connection_kwargs(
    sentinel: SentinelConfig, url: str, timeout: float
) -> dict[str, Any]:
    """redis-py arguments for connections to Sentinels: their password, bounded, never retried.

    Given to redis.sentinel.Sentinel as `sentinel_kwargs` (here and in kombu's and Celery's
    transport options): with `sentinel_kwargs` set, Sentinel connections take nothing from the
    master's arguments, so the timeouts must be repeated here.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "password": sentinel.password,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        **_tls_options(url),
    }


def sentinel_transport_options(config: CheckConfig, url: str, timeout: float) -> dict[str, Any]:
    """kombu/Celery transport options that reach the master of a sentinel:// URL; {} otherwise."""
    if config.sentinel is None or not is_sentinel_url(url):
        return {}
    return {
        "master_name": config.sentinel.master_name,
        "sentinel_kwargs": _sentinel_connection_kwargs(config.sentinel, url, timeout),
    }


def sentinel_backend_tls(config: CheckConfig, url: str) -> dict[str, Any]:
    """`redis_backend_use_ssl` for Celery's Sentinel result backend: the URL's TLS, or {}.

    That backend takes TLS for the master from this setting only, not from the URL's query.
    """
    if config.sentinel is None or not is_sentinel_url(url):
        return {}
    tls = _tls_options(url)
    return {key: value for key, value in tls.items() if key in ("ssl_cert_reqs", "ssl_ca_certs")}


def master_url(sentinel_url: str, host: str, port: int) -> str:
    """Return the redis(s):// URL of the master at host:port with the Sentinel URL's user and DB.

    The broker checks then run on the master exactly as on a standalone broker.
    """
    first = urlsplit(sentinel_url.split(SENTINEL_URL_SEPARATOR)[0])
    userinfo = first.netloc.rpartition("@")[0]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scheme = "rediss" if _tls_options(sentinel_url) else "redis"
    netloc = f"{userinfo}@{where}" if userinfo else where
    return first._replace(scheme=scheme, netloc=netloc).geturl()


def check_sentinel(config: CheckConfig, report: Report, deadline: Deadline) -> str | None:
    """Run the Sentinel checks; return the master's URL, or None when no master was found.

    Sentinels answer (with their password, agreeing on the master), the master they name is
    up and says it is the master, CKQUORUM passes, every replica is up and recent, and the
    loss bound (min-replicas-to-write) is in effect and met. The broker and worker checks then
    run on that master.
    """
    sentinel = typing.cast(SentinelConfig, config.sentinel)
    answers = _ask_sentinels(config.broker_url, sentinel, deadline)
    _report_sentinels(report, answers, sentinel)
    chosen = _chosen_master(report, answers, sentinel)
    if chosen is None:
        return None
    url = master_url(config.broker_url, *chosen)
    replication = _read_replication(url, deadline)
    _report_master_role(report, chosen, answers, replication)
    _report_quorum(report, answers)
    if not isinstance(replication, Replication):
        return url  # the connect check explains why the master did not answer
    bound = _replica_lag_bound(sentinel, replication)
    replication = _second_look_if_behind(url, replication, answers, chosen, bound, deadline)
    healthy = _report_replicas(report, answers, chosen, replication, bound)
    _report_replica_count(
        report, healthy, len(_replica_names(answers, chosen, replication)), sentinel
    )
    _report_loss_bound(report, replication, sentinel)
    _report_writes(report, replication)
    return url


def _ask_sentinels(url: str, sentinel: SentinelConfig, deadline: Deadline) -> list[SentinelAnswer]:
    """Ask every Sentinel of the URL, one after the other, about the master."""
    from redis.sentinel import Sentinel

    addresses = sentinel_addresses(url)
    manager = Sentinel(
        addresses, sentinel_kwargs=_sentinel_connection_kwargs(sentinel, url, deadline.step())
    )
    try:
        return [
            _ask_sentinel(client, f"{host}:{port}", sentinel, url, deadline)
            for (host, port), client in zip(addresses, manager.sentinels, strict=True)
        ]
    finally:
        manager.close()


def _ask_sentinel(
    client: Any, address: str, sentinel: SentinelConfig, url: str, deadline: Deadline
) -> SentinelAnswer:
    """SENTINEL MASTER, REPLICAS and CKQUORUM from one Sentinel; whether it is open to anyone."""
    name = sentinel.master_name
    try:
        master = client.sentinel_master(name)
        replicas = tuple(client.sentinel_slaves(name))  # SENTINEL SLAVES: REPLICAS' old name
    except Exception as error:
        return SentinelAnswer(address, error=error)
    try:
        # Raw, not sentinel_ckquorum(): redis-py turns the reply into `reply == "OK"`, False
        # even when quorum is reached ("OK 3 usable Sentinels..."), and drops the text.
        quorum = client.execute_command("SENTINEL", "CKQUORUM", name)
        quorum_ok, quorum_text = True, quorum.decode() if isinstance(quorum, bytes) else str(quorum)
    except Exception as error:  # -NOQUORUM ... is an error reply
        quorum_ok, quorum_text = False, str(error)
    is_open = sentinel.password is None or _serves_without_password(address, url, deadline)
    return SentinelAnswer(address, master, replicas, quorum_ok, quorum_text, None, is_open)


def _serves_without_password(address: str, url: str, deadline: Deadline) -> bool:
    """Whether a Sentinel answers a client that sends no password (requirepass not set)."""
    import redis

    host, _, port = address.rpartition(":")
    client = redis.Redis(
        host=host,
        port=int(port),
        socket_timeout=deadline.step(),
        socket_connect_timeout=deadline.step(),
        retry=None,
        **_tls_options(url),
    )
    try:
        return bool(client.ping())
    except Exception:  # NOAUTH (what we want), or it stopped answering: not open either way
        return False
    finally:
        client.close()


def _sentinel_error_hint(error: Exception, sentinel: SentinelConfig) -> str:
    """Say what to look at when a Sentinel did not answer."""
    text = str(error)
    if "No such master" in text:
        return (
            f"this Sentinel does not monitor a master named {sentinel.master_name!r}: compare "
            "--sentinel-master with `sentinel monitor NAME` in sentinel.conf"
        )
    if "NOAUTH" in text or type(error).__name__ == "AuthenticationRequiredError":
        return (
            "the Sentinel requires a password: give it with --sentinel-password-env VAR "
            f"(the client Secret's {ENV_SENTINEL_PASSWORD})"
        )
    if "WRONGPASS" in text or "invalid password" in text or "AUTH" in text:
        return (
            "the Sentinel refused the password: compare the Secret's "
            f"{ENV_SENTINEL_PASSWORD} with the Sentinels' requirepass"
        )
    return (
        "is the Sentinel running, are host and port right (the Sentinel port, not Redis's), "
        "does a NetworkPolicy allow this client to reach it?"
    )


def _report_sentinels(
    report: Report, answers: Sequence[SentinelAnswer], sentinel: SentinelConfig
) -> None:
    """Every Sentinel answers with its password, none serves without one, all name one master."""
    answered = [answer for answer in answers if answer.error is None]
    silent = [answer for answer in answers if answer.error is not None]
    expected = (
        f"every Sentinel answers (with its password) and names one master "
        f"{sentinel.master_name!r}; none serves a client without a password"
    )
    errors = "; ".join(f"{a.address}: {type(a.error).__name__}: {a.error}" for a in silent)
    named = {answer.master_address for answer in answered}
    open_ones = [answer.address for answer in answered if answer.open_without_password]
    if not answered:
        hint = _sentinel_error_hint(typing.cast(Exception, silent[0].error), sentinel)
        report.add("sentinels", FAIL, f"none of {len(answers)} answered ({errors})", expected, hint)
    elif open_ones:
        report.add(
            "sentinels",
            FAIL,
            f"{', '.join(open_ones)} serve clients that send no password",
            expected,
            "set requirepass on every Sentinel (and `sentinel sentinel-pass` for their peers): "
            "anyone who reaches an open Sentinel can reconfigure it or force a failover",
        )
    elif len(named) > 1:
        views = ", ".join(f"{a.address} names {a.master_address}" for a in answered)
        report.add(
            "sentinels",
            FAIL,
            f"Sentinels disagree on the master: {views}",
            expected,
            "a failover is under way or a Sentinel is cut off from its peers; rerun in a minute, "
            "then look at the Sentinels' logs (+switch-master, +sdown)",
        )
    elif silent:
        report.add(
            "sentinels",
            WARN,
            f"{len(answered)} of {len(answers)} answered, naming {named.pop()}; {errors}",
            expected,
            "a Sentinel is down or unreachable from here (pod restarting, NetworkPolicy on the "
            "Sentinel port); whether the rest can still fail over is sentinel-quorum's verdict",
        )
    else:
        report.add(
            "sentinels",
            PASS,
            f"{len(answered)} of {len(answers)} answered, naming {named.pop()}",
            expected,
        )


def _chosen_master(
    report: Report, answers: Sequence[SentinelAnswer], sentinel: SentinelConfig
) -> tuple[str, int] | None:
    """Return the master a client would use (redis-py's rule), or report that there is none."""
    from redis.sentinel import Sentinel

    rule = Sentinel([])
    for answer in answers:
        if answer.master is not None and rule.check_master_state(
            answer.master, sentinel.master_name
        ):
            return str(answer.master["ip"]), int(answer.master["port"])
    expected = "a master that Sentinel sees up"
    if not any(answer.master is not None for answer in answers):
        report.add(
            "sentinel-master",
            FAIL,
            "no Sentinel answered about the master",
            expected,
            "see sentinels above; later checks did not run",
        )
        return None
    views = ", ".join(
        f"{a.address}: {a.master_address} flags {a.master.get('flags')}"
        for a in answers
        if a.master
    )
    report.add(
        "sentinel-master",
        FAIL,
        f"no master usable: {views}",
        expected,
        "the master is down (s_down/o_down) and no replica has been promoted yet: a failover "
        "needs sentinel-quorum and a healthy replica; later checks did not run",
    )
    return None


def _read_replication(url: str, deadline: Deadline) -> Replication | Exception:
    """INFO replication and the loss-bound settings of the master, in one round trip."""
    try:
        client = redis_client(url, deadline.step())
        try:
            pipe = client.pipeline(transaction=False)
            pipe.info("replication")
            pipe.config_get("min-replicas-to-write", "min-replicas-max-lag")
            info, loss_bound = pipe.execute(raise_on_error=False)
        finally:
            client.close()
    except Exception as error:
        return error
    return Replication(info, loss_bound)


def _report_master_role(
    report: Report,
    chosen: tuple[str, int],
    answers: Sequence[SentinelAnswer],
    replication: Replication | Exception,
) -> None:
    """Report whether the node Sentinel names says it is the master (a demoted one: slave)."""
    address = f"{chosen[0]}:{chosen[1]}"
    agreeing = sum(1 for answer in answers if answer.master_address == address)
    expected = "the master Sentinel names answers INFO replication with role:master"
    measured = f"{address}, named by {agreeing} of {len(answers)} Sentinels"
    if isinstance(replication, Exception):
        report.add(
            "sentinel-master",
            FAIL,
            f"{measured}; it did not answer ({type(replication).__name__}: {replication})",
            expected,
            "see connect below",
        )
        return
    info = replication.info
    if command_error(report, "sentinel-master", info, expected, "+info (INFO replication)"):
        return
    role = info.get("role")
    if role != "master":
        report.add(
            "sentinel-master",
            FAIL,
            f"{measured}; it says role:{role}",
            expected,
            "Sentinel's view is stale (a failover is under way, or the node restarted as a "
            "replica); clients that trust Sentinel write to a replica and fail (READONLY)",
        )
        return
    connected = int(info.get("connected_slaves", 0))
    report.add("sentinel-master", PASS, f"{measured}; role master, {connected} replicas", expected)


def _report_quorum(report: Report, answers: Sequence[SentinelAnswer]) -> None:
    """SENTINEL CKQUORUM: enough Sentinels to agree a master is down, and to elect a leader."""
    answered = [answer for answer in answers if answer.error is None]
    expected = "SENTINEL CKQUORUM OK: quorum and failover majority reachable"
    if not answered:
        report.add("sentinel-quorum", FAIL, "no Sentinel answered CKQUORUM", expected)
        return
    refused = [answer for answer in answered if not answer.quorum_ok]
    if refused:
        report.add(
            "sentinel-quorum",
            FAIL,
            "; ".join(f"{answer.address}: {answer.quorum}" for answer in refused),
            expected,
            "too few Sentinels are up and reach each other: a dead master would never be "
            "replaced (and clients keep failing). Start the missing Sentinels and check they "
            "reach each other on the Sentinel port at the addresses they announce",
        )
        return
    report.add(
        "sentinel-quorum",
        PASS,
        f"{answered[0].quorum} ({len(answered)} Sentinels asked)",
        expected,
    )


def _second_look_if_behind(
    url: str,
    replication: Replication,
    answers: Sequence[SentinelAnswer],
    chosen: tuple[str, int],
    bound: float,
    deadline: Deadline,
) -> Replication:
    """Read replication again a second later when a replica looks behind; judge the later read.

    Redis counts lag in whole seconds since a once-a-second acknowledgement, so a healthy
    replica reads one second over now and then, and so may the master's count of good
    replicas. A replica still behind a second later is behind; one that caught up was jitter.
    """
    rows = replication.replicas()
    to_write = replication.setting("min-replicas-to-write") or 0
    behind = (
        any(name not in rows for name in _replica_names(answers, chosen, replication))
        or any(
            int(row.get("lag", 0)) > bound or row.get("state") != "online" for row in rows.values()
        )
        or replication.good_replicas() < to_write
    )
    if not behind:
        return replication
    time.sleep(min(SECOND_LOOK_SECONDS, deadline.remaining() / 4))
    later = _read_replication(url, deadline)
    return later if isinstance(later, Replication) else replication


def _replica_lag_bound(sentinel: SentinelConfig, replication: Replication) -> float:
    """--max-replica-lag, else the lag the master itself tolerates (min-replicas-max-lag)."""
    if sentinel.max_replica_lag is not None:
        return sentinel.max_replica_lag
    configured = replication.setting("min-replicas-max-lag")
    return float(configured) if configured else float(REDIS_DEFAULT_MIN_REPLICAS_MAX_LAG)


def _replica_names(
    answers: Sequence[SentinelAnswer], chosen: tuple[str, int], replication: Replication
) -> list[str]:
    """Every replica the master or a Sentinel (naming that master) knows, in a stable order."""
    known = set(replication.replicas())
    for answer in _agreeing(answers, chosen):
        known.update(f"{replica['ip']}:{replica['port']}" for replica in answer.replicas)
    return sorted(known)


def _agreeing(answers: Sequence[SentinelAnswer], chosen: tuple[str, int]) -> list[SentinelAnswer]:
    """Return the Sentinels that name the chosen master (their replicas are its replicas)."""
    return [answer for answer in answers if answer.master_address == f"{chosen[0]}:{chosen[1]}"]


def _report_replicas(
    report: Report,
    answers: Sequence[SentinelAnswer],
    chosen: tuple[str, int],
    replication: Replication,
    bound: float,
) -> int:
    """One entry per replica: connected to the master, up per Sentinel, lag within the bound.

    The master's INFO is live (lag = seconds since the replica's last acknowledgement, sent
    every second); Sentinel's flags add what the master cannot see (it pings every replica).
    Returns how many replicas passed.
    """
    connected = replication.replicas()
    master_offset = int(replication.info.get("master_repl_offset", 0))
    expected = f"connected to the master, online, lag <= {bound:g} s, up per Sentinel"
    healthy = 0
    for name in _replica_names(answers, chosen, replication):
        flagged = {
            answer.address: replica.get("flags", "")
            for answer in _agreeing(answers, chosen)
            for replica in answer.replicas
            if f"{replica['ip']}:{replica['port']}" == name
            and set(str(replica.get("flags", "")).split(",")) & set(SENTINEL_DOWN_FLAGS)
        }
        status, measured, hint = _replica_verdict(
            connected.get(name), flagged, master_offset, bound
        )
        healthy += status == PASS
        report.add(f"replica:{name}", status, measured, expected, hint)
    return healthy


REPLICA_NOT_CONNECTED = (
    "the replica is down, or cannot sync (replicator user and password, network): see its "
    "log; until it is back the broker keeps one copy less"
)
REPLICA_LAGGING = (
    "it stopped acknowledging (paused, overloaded, slow disk or network): writes it lacks are "
    "lost if it is promoted, and past min-replicas-max-lag it no longer counts towards "
    "min-replicas-to-write"
)
REPLICA_FLAGGED = (
    "Sentinel gets no answer from it (hung, overloaded, or a NetworkPolicy blocks the "
    "Sentinels): it would not be promoted"
)


def _replica_verdict(
    row: Mapping[str, Any] | None, flagged: Mapping[str, str], master_offset: int, bound: float
) -> tuple[str, str, str]:
    """Return the status, measurement and hint for one replica: every reason it fails, named."""
    down = "; ".join(f"flags {flags} per Sentinel {address}" for address, flags in flagged.items())
    if row is None:
        measured, reasons = "not connected to the master", [REPLICA_NOT_CONNECTED]
    else:
        lag = int(row.get("lag", 0))
        behind = max(0, master_offset - int(row.get("offset", 0)))
        measured = f"{row.get('state')}, lag {lag} s, {behind} bytes behind"
        reasons = [f"lag {lag} s > {bound:g} s: {REPLICA_LAGGING}"] if lag > bound else []
    if flagged:
        measured += f"; {down}"
        reasons.append(REPLICA_FLAGGED)
    if reasons:
        return FAIL, measured, "; ".join(reasons)
    if typing.cast(Mapping[str, Any], row).get("state") != "online":
        return WARN, measured, "the replica is still syncing its first copy; rerun when online"
    return PASS, measured, ""


def _report_replica_count(
    report: Report, healthy: int, known: int, sentinel: SentinelConfig
) -> None:
    """At least --expect-replicas healthy replicas (else at least one to fail over to)."""
    measured = f"{healthy} of {known} healthy"
    if sentinel.expect_replicas is not None:
        expected = f">= {sentinel.expect_replicas} healthy replicas"
        if healthy >= sentinel.expect_replicas:
            report.add("replicas", PASS, measured, expected)
        else:
            report.add(
                "replicas",
                FAIL,
                measured,
                expected,
                "fewer replicas than the StatefulSet runs are healthy (see replica:* above); a "
                "replica that never joined is missing from them: see its log",
            )
    elif healthy:
        report.add("replicas", PASS, measured, ">= 1 healthy replica")
    else:
        report.add(
            "replicas",
            WARN,
            measured,
            ">= 1 healthy replica",
            "without a healthy replica Sentinel has nothing to promote if the master dies",
        )


def _report_loss_bound(report: Report, replication: Replication, sentinel: SentinelConfig) -> None:
    """min-replicas-to-write and min-replicas-max-lag on the master: as expected, and in effect.

    They bound what a failover loses: the master refuses writes (NOREPLICAS) unless that many
    replicas acknowledged within that many seconds. Redis ignores the pair if either is 0.
    """
    to_write = replication.setting("min-replicas-to-write")
    max_lag = replication.setting("min-replicas-max-lag")
    want_to_write = sentinel.expect_min_replicas_to_write
    want_max_lag = sentinel.expect_min_replicas_max_lag
    expected = (
        f"min-replicas-to-write {'> 0' if want_to_write is None else want_to_write}, "
        f"min-replicas-max-lag {'> 0' if want_max_lag is None else want_max_lag}"
    )
    if to_write is None or max_lag is None:
        refused = replication.loss_bound
        report.add(
            "loss-bound",
            FAIL,
            f"CONFIG GET refused: {refused}",
            expected,
            "the check user needs +config|get",
        )
        return
    measured = f"min-replicas-to-write {to_write}, min-replicas-max-lag {max_lag}"
    wrong = (
        (to_write != want_to_write if want_to_write is not None else to_write == 0)
        or (max_lag != want_max_lag if want_max_lag is not None else False)
        or (to_write > 0 and max_lag == 0)
    )
    if not wrong:
        report.add("loss-bound", PASS, measured, expected)
        return
    report.add(
        "loss-bound",
        FAIL,
        measured
        + (" (off: Redis ignores the pair when either is 0)" if 0 in (to_write, max_lag) else ""),
        expected,
        "without it the master acknowledges writes no replica has, and a failover loses them "
        "(queued tasks vanish). The rendered redis.conf sets both from broker.sentinel."
        "min_replicas_to_write / min_replicas_max_lag: was the ConfigMap applied and Redis "
        "restarted, or were they changed by hand (CONFIG SET)?",
    )


def _report_writes(report: Report, replication: Replication) -> None:
    """Whether the master accepts writes now: enough good replicas for min-replicas-to-write."""
    to_write = replication.setting("min-replicas-to-write")
    max_lag = replication.setting("min-replicas-max-lag")
    if to_write is None or max_lag is None or isinstance(replication.info, Exception):
        return  # loss-bound or sentinel-master already failed on it
    expected = "writes accepted"
    if to_write == 0 or max_lag == 0:
        report.add(
            "writes", PASS, "accepted (no replica required: the loss bound is off)", expected
        )
        return
    good = replication.good_replicas()
    measured = (
        f"{good} good replicas (online, lag <= {max_lag} s) of {to_write} required by "
        "min-replicas-to-write"
    )
    if good >= to_write:
        report.add("writes", PASS, f"accepted: {measured}", expected)
        return
    report.add(
        "writes",
        FAIL,
        f"REFUSED: the master answers every write with NOREPLICAS; {measured}",
        expected,
        "workers can neither publish, fetch (BRPOP writes) nor acknowledge tasks, and results "
        "are not stored, until enough replicas are back (see replica:* above). This is what "
        "min-replicas-to-write buys: a master alone would accept writes a failover then loses",
    )
