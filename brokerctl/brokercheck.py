"""Check that a Celery broker on Redis is healthy and that its workers consume from it.

Checks, one report entry each:
  connect             authenticate as the (read-only) check user; PING round trip (a broker
                      still loading its dataset says so, with how far it got)
  default-user        a client sending no password is refused (NOAUTH): an open `default`
                      user serves anyone who reaches the port
  persistence         the mode Redis runs (none|rdb|aof|aof-always) matches the expected one
  persistence-status  last RDB save and AOF write succeeded; Redis is not loading
  eviction-policy     maxmemory-policy is noeviction (an evicting broker drops queued tasks)
  maxmemory           maxmemory is set (else the kubelet OOM-kills Redis instead)
  memory-usage        used memory below the warning and failure shares of maxmemory
                      (a full noeviction broker refuses new tasks)
  backlog:QUEUE       messages waiting per queue, priority sub-queues included
  unacked             messages delivered but not acknowledged (all queues: kombu keeps one
                      `unacked` hash, whose entries carry whole task bodies, so they are
                      counted, never read) and the oldest delivery's age against
                      visibility_timeout (near or past it, kombu redelivers: warning)
  workers             at least --expect-workers workers answer a control ping
  pool:NAME           every queue of the pool has a consumer; replicas serve all of them
  canary:QUEUE        Celery's built-in `celery.accumulate` task, sent to each consumed queue,
                      runs and its result is read back (needs a result backend)

Exit status: 0 every check passed (warnings allowed), 1 a check failed (an unreachable
broker or a refused password included), 2 usage error.

The check never prints a password (URLs, errors and usage errors are masked, whether the
password is percent-encoded or not, in the userinfo or a `?password=` option), bounds every
network step and the whole run by --timeout, never restores or requeues unacknowledged
messages (its kombu connections run without ack emulation, so they cannot), and leaves no
key behind: the reply queue of its control commands is deleted and the canary's result is
forgotten once read.

URLs: --url/--url-env, or the check_url of --stack/--outputs, or $BROKER_CHECK_URL.
Worker and canary checks connect as the workers' user (control commands and the canary
write to the broker): --worker-url/--worker-url-env, stack output broker_url,
$CELERY_BROKER_URL, else the broker URL. Result backend: --result-backend(-env), stack
output result_backend_url, $CELERY_RESULT_BACKEND. Use the *-env options (or the
environment defaults) to keep passwords off the command line.

--json prints one object on stdout (notes go to stderr), schema "brokercheck/v1":
  {"schema": "brokercheck/v1", "ok": bool, "exit_code": 0|1|2,
   "target": masked broker URL, "duration_seconds": float,
   "summary": {"pass": int, "warn": int, "fail": int},
   "checks": [{"name": str, "status": "pass"|"warn"|"fail",
               "measured": str, "expected": str, "hint": str}]}
Keys are only ever added to this schema, never renamed or removed. A usage error (exit 2)
is a report too: one failed check named "usage" whose "measured" says what was wrong.

Memory thresholds: --memory-warn/--memory-fail, else the stack outputs memory_warn_ratio and
memory_fail_ratio (the gate Job's own settings), else 80 and 95 percent.

This file is self-contained (Python 3.10+, stdlib, redis, kombu and celery only) so the
same code runs as `python -m brokerctl check` and, in the cluster, as `python brokercheck.py`
in a Job in the workers' image. redis is imported only when checks run, kombu and celery only
for the worker checks: --help and usage errors stay fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, urlsplit

SCHEMA = "brokercheck/v1"
PASS, WARN, FAIL = "pass", "warn", "fail"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

PERSISTENCE_MODES = ("none", "rdb", "aof", "aof-always")
ENGINES = ("redis", "valkey")
"""Engines the broker may run; Valkey says `server_name:valkey` in INFO (Redis says nothing)."""
URL_SCHEMES = ("redis", "rediss")
SENTINEL_SCHEME = "sentinel"  # kombu's and Celery's: `sentinel://u:p@h0:26379/0;sentinel://...`
SENTINEL_URL_SEPARATOR = ";"
DEFAULT_QUEUE = "celery"
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 3600.0  # an hour: longer is a typo, and socket timeouts overflow near 1e9
DEFAULT_MEMORY_WARN_PERCENT = 80.0  # checks.memory_warn_ratio's default (a unit test binds them)
DEFAULT_MEMORY_FAIL_PERCENT = 95.0  # checks.memory_fail_ratio's default
DEFAULT_VISIBILITY_TIMEOUT = 3600.0  # kombu's default for the Redis transport
VISIBILITY_WARN_SHARE = 0.8
PRIORITY_STEPS = (0, 3, 6, 9)  # kombu.transport.redis.PRIORITY_STEPS
PRIORITY_SEPARATOR = "\x06\x16"  # kombu's Channel.sep: queue "q" priority 3 is "q\x06\x163"
UNACKED_KEY, UNACKED_INDEX_KEY = "unacked", "unacked_index"
CONTROL_EXCHANGE = "celery.pidbox"  # Celery's control_exchange "celery" + ".pidbox"
REPLY_EXCHANGE = "reply.celery.pidbox"
CANARY_TASK = "celery.accumulate"  # built into every Celery app: returns args[index]
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")  # celery.states.READY_STATES
RESULT_POLL_SECONDS = 0.01
WATCHDOG_GRACE = 0.5  # seconds the run may exceed --timeout while the report is closed

ENV_BROKER_URL = "BROKER_CHECK_URL"
ENV_WORKER_URL = "CELERY_BROKER_URL"
ENV_RESULT_BACKEND = "CELERY_RESULT_BACKEND"
# The client Secret's key holding Sentinel's own password (a variable name, not a password).
ENV_SENTINEL_PASSWORD = "BROKER_SENTINEL_PASSWORD"  # noqa: S105
CELERY_URL_ENV = (
    "CELERY_BROKER_URL",
    "CELERY_BROKER_READ_URL",
    "CELERY_BROKER_WRITE_URL",
    "CELERY_RESULT_BACKEND",
)

SAFE_TRANSPORT_OPTIONS: dict[str, Any] = {
    # Without ack emulation kombu's Redis channel uses the virtual QoS: restore_visible is a
    # no-op and nothing is written to (or restored from) the `unacked` hash. With it, an idle
    # poll of our reply queue (MultiChannelPoller.maybe_restore_messages) requeues every
    # delivery older than *this connection's* visibility_timeout, including the tasks that
    # workers are running: an acks_late task would run twice (tests/integration/
    # test_check_safety.py proves both sides).
    "ack_emulation": False,
    # BRPOP wait per poll (seconds): closing a channel reads its pending BRPOP reply first.
    "polling_interval": 0.1,
    "retry_on_timeout": False,
    "max_retries": 0,  # Connection.default_channel (Celery's producer) retries no connect
}


class UsageError(Exception):
    """A mistake in the command line or in the stack outputs (exit status 2)."""


# --------------------------------------------------------------------------------------
# Secrets: nothing leaves this program without passing through a Masker.
# --------------------------------------------------------------------------------------

MASK = "***"

_URL_USERINFO = re.compile(
    # Greedy up to the token's last `@`: a password with an unencoded `/`, `?`, `#` or `@`
    # still ends at the `@` before the host, where urlsplit would stop at the first `/`.
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s'\"<>`]*)@"
)
_SECRET_PARAM = re.compile(
    # `?password=`, `&password=`, `;sentinel_password=`, `?auth_token=`...: any option whose
    # name speaks of a credential, in a URL query or a `name=value` list.
    r"(?P<name>(?:^|[?&;,\s])[^=&?;,\s'\"]*(?:pass|secret|token|auth|credential)"
    r"[^=&?;,\s'\"]*=)(?P<value>[^&;,\s'\"#]+)",
    re.IGNORECASE,
)
_SECRET_FIELD = re.compile(
    # `password='x'`, `"password": "x"` in library messages and reprs of keyword arguments.
    r"(?P<name>pass(?:word|wd)?['\"]?\s*(?:=|:\s)\s*['\"]?)(?P<value>[^\s'\"&,})\]]+)",
    re.IGNORECASE,
)


def _masked_userinfo(match: re.Match[str]) -> str:
    """Keep the user name of a URL's userinfo, mask whatever follows its first `:`."""
    userinfo = match["userinfo"]
    user, colon, _ = userinfo.partition(":")
    if colon and "/" not in user:
        return f"{match['scheme']}{user}:{MASK}@"
    if colon or any(mark in userinfo for mark in "@/?#"):
        return f"{match['scheme']}{MASK}@"
    return match.group(0)  # a user name alone is no secret


def url_secrets(url: str) -> set[str]:
    """Return every credential written in `url`, however it is written, raw and decoded.

    The userinfo's password (reserved characters encoded or not), and the value of every
    query option that names a credential (`?password=`, `&sentinel_password=`). Several URLs
    joined by `;` or `,` (Sentinel style) are read one by one.
    """
    found: set[str] = set()
    for piece in {url, *re.split(r"[;,]", url)}:
        for match in _URL_USERINFO.finditer(piece):
            _, colon, password = match["userinfo"].partition(":")
            if colon and password:
                found.add(password)
        for match in _SECRET_PARAM.finditer(piece):
            if match["value"]:
                found.add(match["value"])
    return found | {unquote(secret) for secret in found} - {""}


def _mask_occurrences(text: str, secrets: Iterable[str]) -> str:
    """Mask every occurrence of every secret, overlapping ones as one span.

    Replacing one secret after another would cut an overlapping one in two and leave its
    tail readable (a URL's tail read as a "password" overlaps the real one).
    """
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        start = text.find(secret)
        while start != -1:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    pieces, position = [], 0
    for start, end in sorted(spans):
        if end <= position:
            continue
        if start > position:
            pieces += [text[position:start], MASK]
        elif not pieces:
            pieces.append(MASK)
        position = max(position, end)
    return "".join([*pieces, text[position:]])


class Masker:
    """Replaces known passwords, and any credential inside a URL or option, with `***`."""

    def __init__(self, urls: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        for url in urls:
            self.add_url(url)

    def add_url(self, url: str | None) -> None:
        """Remember the credentials of `url` (raw and percent-decoded) to mask them everywhere."""
        if url:
            self._secrets.update(url_secrets(url))

    def add_secret(self, secret: str | None) -> None:
        """Remember a password that travels outside any URL (Sentinel's own password)."""
        if secret:
            self._secrets.add(secret)

    def __call__(self, text: object) -> str:
        """Return `text` as a string with every known secret and URL credential masked."""
        masked = _mask_occurrences(str(text), self._secrets)
        # Options first: a bare `@` inside `?password=` would otherwise end a URL's userinfo.
        masked = _SECRET_FIELD.sub(lambda match: f"{match['name']}{MASK}", masked)
        masked = _SECRET_PARAM.sub(lambda match: f"{match['name']}{MASK}", masked)
        return _URL_USERINFO.sub(_masked_userinfo, masked)


def masked_url(mask: Masker, url: str) -> str:
    """Return `url` masked for display; a Sentinel URL one `;`-separated URL at a time.

    Masked whole, a Sentinel URL's userinfo would be read from its first `://` to its last `@`
    (the greedy rule that catches unencoded passwords) and hide every host but the last.
    """
    if is_sentinel_url(url):
        return SENTINEL_URL_SEPARATOR.join(
            mask(piece) for piece in url.split(SENTINEL_URL_SEPARATOR)
        )
    return mask(url)


class _MaskingFilter(logging.Filter):
    """Masks log records from redis, kombu and celery before any handler prints them."""

    def __init__(self, mask: Masker) -> None:
        super().__init__()
        self.mask = mask

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.mask(record.getMessage())
        record.args = None
        if record.exc_info:
            record.msg += " (" + self.mask(record.exc_info[1]) + ")"
            record.exc_info = None
        return True


def configure_logging(mask: Masker) -> None:
    """Send library warnings to stderr, masked; without this Python's fallback prints them raw."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_MaskingFilter(mask))
    handler.setFormatter(logging.Formatter("brokercheck: %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One check: what was measured, what was expected, and what to do if they differ."""

    name: str
    status: str
    measured: str
    expected: str
    hint: str = ""


@dataclass
class Report:
    """The checks of one run, masked as they are added; `close` freezes it."""

    target: str
    mask: Masker
    checks: list[CheckResult] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    duration: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(
        self, name: str, status: str, measured: object, expected: object, hint: str = ""
    ) -> None:
        """Record a check result (ignored once the report is closed by the watchdog)."""
        result = CheckResult(
            self.mask(name), status, self.mask(measured), self.mask(expected), self.mask(hint)
        )
        with self._lock:
            if self.duration is None:
                self.checks.append(result)

    def close(self) -> None:
        """Stop accepting results and record how long the run took."""
        with self._lock:
            if self.duration is None:
                self.duration = time.monotonic() - self.started

    def count(self, status: str) -> int:
        """Return how many checks ended with `status`."""
        return sum(1 for check in self.checks if check.status == status)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (warnings allowed), 1 otherwise (also when nothing ran)."""
        return EXIT_FAILED if self.count(FAIL) or not self.checks else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """Return the report in the documented `brokercheck/v1` JSON schema."""
        return {
            "schema": SCHEMA,
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "target": self.target,
            "duration_seconds": round(self.duration or 0.0, 3),
            "summary": {status: self.count(status) for status in (PASS, WARN, FAIL)},
            "checks": [
                {
                    "name": check.name,
                    "status": check.status,
                    "measured": check.measured,
                    "expected": check.expected,
                    "hint": check.hint,
                }
                for check in self.checks
            ],
        }


def format_json(report: Report) -> str:
    """Return the report as one JSON document (for CI and `jq`)."""
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)


def format_table(report: Report) -> str:
    """Return the report as an aligned table for people, hints under the rows they explain."""
    headers = ("CHECK", "STATUS", "MEASURED", "EXPECTED")
    rows = [(c.name, c.status.upper(), c.measured, c.expected) for c in report.checks]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(3)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, [*widths, 0], strict=True)).rstrip()]
    for check, row in zip(report.checks, rows, strict=True):
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, [*widths, 0], strict=True)).rstrip())
        if check.hint and check.status != PASS:
            lines.append(f"    hint: {check.hint}")
    verdict = "OK" if report.exit_code == EXIT_OK else "FAILED"
    lines.append(
        f"{verdict}: {report.count(PASS)} passed, {report.count(WARN)} warnings, "
        f"{report.count(FAIL)} failed in {report.duration or 0.0:.2f} s ({report.target})"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# What to check: the configuration of one run
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """A worker pool: the queues its workers consume and how many replicas it runs."""

    name: str
    queues: tuple[str, ...]
    replicas: int | None = None


@dataclass(frozen=True)
class SentinelConfig:
    """How to reach the master through Sentinel, and what its replication must look like.

    Set only when the broker URL is a `sentinel://` URL. Every expectation left None is judged
    against what the master itself is configured with (see check_sentinel).
    """

    master_name: str
    password: str | None = field(default=None, repr=False)  # Sentinel's own requirepass
    max_replica_lag: float | None = None
    expect_replicas: int | None = None
    expect_min_replicas_to_write: int | None = None
    expect_min_replicas_max_lag: int | None = None


@dataclass(frozen=True)
class CheckConfig:
    """Everything one run needs; built from the command line and stack outputs."""

    broker_url: str
    worker_url: str
    result_backend_url: str | None = None
    expect_persistence: str | None = None
    expect_workers: int | None = None
    pools: tuple[Pool, ...] = ()
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT
    memory_warn_percent: float = DEFAULT_MEMORY_WARN_PERCENT
    memory_fail_percent: float = DEFAULT_MEMORY_FAIL_PERCENT
    canary: bool = True
    sentinel: SentinelConfig | None = None
    expect_engine: tuple[str, str | None] | None = None

    @property
    def queues(self) -> tuple[str, ...]:
        """Every configured queue once, in pool order; Celery's default queue if none."""
        names = [queue for pool in self.pools for queue in pool.queues]
        return tuple(dict.fromkeys(names)) or (DEFAULT_QUEUE,)

    @property
    def expected_workers(self) -> int:
        """Workers that must answer: --expect-workers, else the pools' replicas, else 0."""
        if self.expect_workers is not None:
            return self.expect_workers
        return sum(pool.replicas or 1 for pool in self.pools)

    def masker(self) -> Masker:
        """Return a Masker that knows every password of this run."""
        mask = Masker([self.broker_url, self.worker_url, self.result_backend_url])
        if self.sentinel is not None:
            mask.add_secret(self.sentinel.password)
        return mask


def add_options(parser: argparse.ArgumentParser) -> None:
    """Declare the check's options once, for `python -m brokerctl check` and brokercheck.py."""
    source = parser.add_argument_group("broker and expectations")
    where = source.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        help="broker URL for the read-only checks (redis://, rediss://, or sentinel://H:P/DB;"
        "sentinel://... to find the master through Sentinel)",
    )
    where.add_argument("--url-env", metavar="VAR", help="read --url from environment variable VAR")
    where.add_argument("--stack", help="read URLs and expectations from `pulumi stack output`")
    where.add_argument("--outputs", metavar="FILE", help="read them from that JSON file instead")
    source.add_argument(
        "--worker-url", metavar="URL", help="URL of the workers' user (control ping, canary)"
    )
    source.add_argument("--worker-url-env", metavar="VAR", help="read --worker-url from VAR")
    source.add_argument("--result-backend", metavar="URL", help="result backend for the canary")
    source.add_argument(
        "--result-backend-env", metavar="VAR", help="read --result-backend from VAR"
    )
    source.add_argument(
        "--expect-persistence",
        choices=PERSISTENCE_MODES,
        metavar="MODE",
        help="none | rdb | aof | aof-always",
    )
    source.add_argument(
        "--expect-engine",
        type=_engine_spec,
        metavar="ENGINE[:VERSION]",
        help="the broker runs this engine (redis | valkey), at a version starting with VERSION "
        "(default: stack output broker_engine, else any)",
    )
    source.add_argument(
        "--expect-workers",
        type=_non_negative_int,
        metavar="N",
        help="at least N workers answer through the broker",
    )
    source.add_argument(
        "--queue",
        action="append",
        default=[],
        metavar="Q",
        help="a queue that must have a consumer (repeatable; default: celery)",
    )
    source.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="NAME=Q1,Q2[:REPLICAS]",
        help="a worker pool, its queues and replicas (repeatable)",
    )
    source.add_argument(
        "--visibility-timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="the workers' visibility_timeout (default: stack output, else 3600)",
    )
    _add_sentinel_options(parser)
    tuning = parser.add_argument_group("run")
    tuning.add_argument(
        "--timeout",
        type=_timeout_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"bound on every network step and the whole run (0 < SECONDS <= {MAX_TIMEOUT:g})",
    )
    tuning.add_argument(
        "--memory-warn",
        type=_percent,
        metavar="PERCENT",
        help="warn when used memory reaches this share of maxmemory (default: stack output "
        f"memory_warn_ratio, else {DEFAULT_MEMORY_WARN_PERCENT:g})",
    )
    tuning.add_argument(
        "--memory-fail",
        type=_percent,
        metavar="PERCENT",
        help="fail when used memory reaches this share of maxmemory (default: stack output "
        f"memory_fail_ratio, else {DEFAULT_MEMORY_FAIL_PERCENT:g})",
    )
    tuning.add_argument("--no-canary", action="store_true", help="skip the canary round trip")
    tuning.add_argument("--json", action="store_true", help="machine-readable report on stdout")


def _add_sentinel_options(parser: argparse.ArgumentParser) -> None:
    """Options of a broker behind Sentinel; they apply only to sentinel:// URLs."""
    sentinel = parser.add_argument_group("Sentinel (with sentinel:// URLs)")
    sentinel.add_argument(
        "--sentinel-master",
        metavar="NAME",
        help="the master name Sentinel monitors (default: stack output sentinel_master)",
    )
    sentinel.add_argument(
        "--sentinel-password-env",
        metavar="VAR",
        help=f"read Sentinel's own password from VAR (default: ${ENV_SENTINEL_PASSWORD} if set)",
    )
    sentinel.add_argument(
        "--max-replica-lag",
        type=_positive_seconds,
        metavar="SECONDS",
        help="fail when a replica's last acknowledgement is older (default: the master's "
        "min-replicas-max-lag)",
    )
    sentinel.add_argument(
        "--expect-replicas",
        type=_non_negative_int,
        metavar="N",
        help="at least N replicas connected to the master (default: stack output "
        "expect_replicas, else any)",
    )
    sentinel.add_argument(
        "--expect-min-replicas-to-write",
        type=_non_negative_int,
        metavar="N",
        help="the master's min-replicas-to-write must be N (default: stack output "
        "min_replicas_to_write, else more than 0)",
    )
    sentinel.add_argument(
        "--expect-min-replicas-max-lag",
        type=_non_negative_int,
        metavar="SECONDS",
        help="the master's min-replicas-max-lag must be SECONDS (default: stack output "
        "min_replicas_max_lag, else more than 0)",
    )


def _engine_spec(text: str) -> tuple[str, str | None]:
    """Parse --expect-engine: `valkey`, or `valkey:9.1` with a dotted version."""
    engine, _, version = text.partition(":")
    if engine not in ENGINES or (version and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", version)):
        msg = f"must be ENGINE[:VERSION] with ENGINE one of {', '.join(ENGINES)}, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return engine, version or None


def _output_engine(outputs: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """Return the `broker_engine` output ({"engine", "version"}) as an expectation, if any."""
    value = outputs.get("broker_engine")
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("engine") not in ENGINES:
        msg = (
            f"{outputs['__origin__']}: output broker_engine is {value!r}; allowed: "
            f'{{"engine": one of {", ".join(ENGINES)}, "version": "X.Y[.Z]"}}'
        )
        raise UsageError(msg)
    version = value.get("version")
    return str(value["engine"]), str(version) if version else None


def _non_negative_int(text: str) -> int:
    """Parse a count for argparse; negative numbers are usage errors."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        msg = f"must be a whole number, 0 or more, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _finite_number(text: str, allowed: str) -> float:
    """Parse a finite number; `inf`, `nan`, `1e999` and words are usage errors naming `allowed`.

    float() accepts "inf" and "nan", and "1e999" overflows to inf: any of them would reach a
    socket or thread timeout and end in an OverflowError traceback instead of a clear error.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        msg = f"must be {allowed}, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _timeout_seconds(text: str) -> float:
    """Parse --timeout: a finite number of seconds, more than 0 and at most MAX_TIMEOUT."""
    allowed = f"a number of seconds more than 0 and at most {MAX_TIMEOUT:g}"
    value = _finite_number(text, allowed)
    if not 0 < value <= MAX_TIMEOUT:
        msg = f"must be {allowed}, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_seconds(text: str) -> float:
    """Parse a duration in seconds for argparse; zero, less, or not finite is a usage error."""
    allowed = "a finite number of seconds more than 0"
    value = _finite_number(text, allowed)
    if not value > 0:
        msg = f"must be {allowed}, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _percent(text: str) -> float:
    """Parse a share of maxmemory in percent (0 < p <= 100)."""
    allowed = "a percentage more than 0 and at most 100"
    value = _finite_number(text, allowed)
    if not 0 < value <= 100:
        msg = f"must be {allowed}, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> CheckConfig:
    """Merge command line, stack outputs and environment; flags win over outputs over env."""
    outputs = _stack_outputs(args)
    broker_url = _first_url(
        "broker URL",
        _from_env_option(args.url_env, environ) or args.url,
        _output_str(outputs, "check_url"),
        environ.get(ENV_BROKER_URL),
    )
    if broker_url is None:
        msg = f"no broker URL: give --url, --url-env VAR, --stack, --outputs or ${ENV_BROKER_URL}"
        raise UsageError(msg)
    worker_url = _first_url(
        "worker URL",
        _from_env_option(args.worker_url_env, environ) or args.worker_url,
        _output_str(outputs, "broker_url"),
        environ.get(ENV_WORKER_URL),
    )
    result_backend = _first_url(
        "result backend URL",
        _from_env_option(args.result_backend_env, environ) or args.result_backend,
        _output_str(outputs, "result_backend_url"),
        environ.get(ENV_RESULT_BACKEND),
    )
    memory_warn, memory_fail = _memory_thresholds(args, outputs)
    _refuse_sentinel_urls_without_sentinel_broker(broker_url, worker_url, result_backend)
    return CheckConfig(
        broker_url=broker_url,
        worker_url=worker_url or broker_url,
        result_backend_url=result_backend,
        expect_persistence=args.expect_persistence or _output_persistence(outputs),
        expect_workers=_pick(args.expect_workers, _output_int(outputs, "expect_workers")),
        pools=_pools_from(args, outputs),
        visibility_timeout=float(
            _pick(args.visibility_timeout, _output_int(outputs, "visibility_timeout"))
            or DEFAULT_VISIBILITY_TIMEOUT
        ),
        timeout=args.timeout,
        memory_warn_percent=memory_warn,
        memory_fail_percent=memory_fail,
        canary=not args.no_canary,
        sentinel=_sentinel_config(args, outputs, environ, broker_url),
        expect_engine=args.expect_engine or _output_engine(outputs),
    )


SENTINEL_OPTIONS = (
    "sentinel_master",
    "sentinel_password_env",
    "max_replica_lag",
    "expect_replicas",
    "expect_min_replicas_to_write",
    "expect_min_replicas_max_lag",
)


def is_sentinel_url(url: str | None) -> bool:
    """Whether `url` names Sentinels (kombu's `sentinel://...;sentinel://...`), not Redis."""
    return bool(url) and urlsplit(str(url)).scheme == SENTINEL_SCHEME


def _sentinel_config(
    args: argparse.Namespace,
    outputs: Mapping[str, Any],
    environ: Mapping[str, str],
    broker_url: str,
) -> SentinelConfig | None:
    """Return how to judge the broker behind Sentinel, or None for a redis(s):// broker URL.

    Sentinel options beside a plain Redis URL are refused: they would be silently ignored, and
    a gate that thinks it checks replication while it does not is worse than no gate.
    """
    if not is_sentinel_url(broker_url):
        given = [
            "--" + name.replace("_", "-")
            for name in SENTINEL_OPTIONS
            if getattr(args, name, None) is not None
        ]
        if given:
            msg = (
                f"{', '.join(given)}: only for a sentinel:// broker URL; this broker URL is "
                f"{urlsplit(broker_url).scheme}://"
            )
            raise UsageError(msg)
        return None
    master_name = args.sentinel_master or _output_str(outputs, "sentinel_master")
    if not master_name:
        msg = (
            "a sentinel:// broker URL needs --sentinel-master NAME (the name of "
            "`sentinel monitor NAME ...` in sentinel.conf) or the stack output sentinel_master"
        )
        raise UsageError(msg)
    if args.sentinel_password_env is not None:
        password = _from_env_option(args.sentinel_password_env, environ)
    else:
        password = environ.get(ENV_SENTINEL_PASSWORD) or None
    return SentinelConfig(
        master_name=master_name,
        password=password,
        max_replica_lag=args.max_replica_lag,
        expect_replicas=_pick(args.expect_replicas, _output_int(outputs, "expect_replicas")),
        expect_min_replicas_to_write=_pick(
            args.expect_min_replicas_to_write, _output_int(outputs, "min_replicas_to_write")
        ),
        expect_min_replicas_max_lag=_pick(
            args.expect_min_replicas_max_lag, _output_int(outputs, "min_replicas_max_lag")
        ),
    )


def _refuse_sentinel_urls_without_sentinel_broker(
    broker_url: str, worker_url: str | None, result_backend: str | None
) -> None:
    """Worker or result URLs behind Sentinel need the broker URL's Sentinels and master name."""
    if is_sentinel_url(broker_url):
        return
    for what, url in (("worker URL", worker_url), ("result backend URL", result_backend)):
        if is_sentinel_url(url):
            msg = (
                f"the {what} is a sentinel:// URL but the broker URL is not: give the check "
                "user's sentinel:// URL too (--url/--url-env), with --sentinel-master"
            )
            raise UsageError(msg)


def _memory_thresholds(args: argparse.Namespace, outputs: Mapping[str, Any]) -> tuple[float, float]:
    """Warning and failure shares of maxmemory, in percent: flag, else output, else default.

    The stack exports the gate Job's own thresholds (checks.memory_*_ratio), so a person's
    `check --stack` judges memory exactly as the Job that gated `pulumi up` did.
    """
    warn = _pick(args.memory_warn, _output_percent(outputs, "memory_warn_ratio"))
    fail = _pick(args.memory_fail, _output_percent(outputs, "memory_fail_ratio"))
    warn = DEFAULT_MEMORY_WARN_PERCENT if warn is None else warn
    fail = DEFAULT_MEMORY_FAIL_PERCENT if fail is None else fail
    if warn > fail:
        origin = outputs.get("__origin__", "the defaults")
        msg = (
            f"memory warning threshold {warn:g}% is above the failure threshold {fail:g}% "
            f"(from --memory-warn/--memory-fail, else {origin}); the warning must not be above "
            "the failure"
        )
        raise UsageError(msg)
    return warn, fail


def _pick(flag: Any, output: Any) -> Any:
    """Return the flag's value when given (0 counts), else the stack output's."""
    return flag if flag is not None else output


def _from_env_option(variable: str | None, environ: Mapping[str, str]) -> str | None:
    """Read the URL named by a --*-env option; an unset variable is a usage error."""
    if variable is None:
        return None
    value = environ.get(variable)
    if not value:
        msg = f"environment variable {variable} is not set"
        raise UsageError(msg)
    return value


def _first_url(what: str, *candidates: str | None) -> str | None:
    """Return the first URL given, after checking it is a redis:// or rediss:// URL."""
    for url in candidates:
        if url:
            _validate_url(what, url)
            return url
    return None


def _validate_url(what: str, url: str) -> None:
    """Refuse URLs this check cannot use, naming the problem without the password.

    A sentinel:// URL is several URLs joined by `;` (one per Sentinel, as kombu and Celery
    read them); each must be a sentinel:// URL with a host.
    """
    if not is_sentinel_url(url):
        _validate_one_url(
            what, url, URL_SCHEMES, "redis://USER:PASSWORD@HOST:PORT/DB (or rediss://)"
        )
        return
    example = "sentinel://USER:PASSWORD@HOST:PORT/DB;sentinel://USER:PASSWORD@HOST2:PORT/DB..."
    for piece in url.split(SENTINEL_URL_SEPARATOR):
        _validate_one_url(what, piece, (SENTINEL_SCHEME,), example, whole=url)


def _validate_one_url(
    what: str, url: str, schemes: Sequence[str], example: str, whole: str | None = None
) -> None:
    """Refuse one URL (one Sentinel's, for a sentinel:// URL `whole`) this check cannot use."""
    masked = masked_url(Masker([whole or url]), whole or url)
    userinfo = _URL_USERINFO.match(url)
    if userinfo and any(mark in userinfo["userinfo"] for mark in "/?#"):
        # urlsplit ends the host at the first `/`, `?` or `#`: the password's tail would be
        # read as the path, its head as the host or port, and shown in connection errors.
        msg = (
            f"{what} {masked!r}: the user or password (before the last @) holds an unencoded "
            "/, ? or #; percent-encode them (/ as %2F, ? as %3F, # as %23, @ as %40)"
        )
        raise UsageError(msg)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        msg = f"{what} {masked!r} is not a valid URL: {Masker([whole or url])(error)}"
        raise UsageError(msg) from None
    if parts.scheme not in schemes or not parts.hostname:
        msg = f"{what} {masked!r} must look like {example}"
        raise UsageError(msg)
    if parts.scheme == SENTINEL_SCHEME and parts.port is None:
        # kombu would fall back to Redis's port 6379 and the check to another: say it instead.
        msg = f"{what} {masked!r}: every Sentinel needs its port (HOST:PORT, usually 26379)"
        raise UsageError(msg)


def _pools_from(args: argparse.Namespace, outputs: Mapping[str, Any]) -> tuple[Pool, ...]:
    """Pools from --pool/--queue when given, else from the stack output `pools`."""
    pools = [_parse_pool(spec) for spec in args.pool]
    if args.queue:
        pools.append(Pool("default", tuple(args.queue)))
    if pools:
        return tuple(pools)
    return _output_pools(outputs)


def _parse_pool(spec: str) -> Pool:
    """Parse NAME=Q1,Q2[:REPLICAS], e.g. `pdf=pdf,pdf-priority:3`."""
    name, sep, rest = spec.partition("=")
    queues_text, _, replicas_text = rest.partition(":")
    queues = tuple(queue for queue in queues_text.split(",") if queue)
    if not sep or not name or not queues or (replicas_text and not replicas_text.isdigit()):
        msg = f"--pool {spec!r}: expected NAME=QUEUE[,QUEUE...][:REPLICAS], e.g. pdf=pdf:2"
        raise UsageError(msg)
    return Pool(name, queues, int(replicas_text) if replicas_text else None)


# --------------------------------------------------------------------------------------
# Stack outputs (`pulumi stack output --json --show-secrets`: plain values, secrets shown)
# --------------------------------------------------------------------------------------


def _stack_outputs(args: argparse.Namespace) -> dict[str, Any]:
    """Return the stack outputs named by --stack or --outputs, or {} when neither is given."""
    if args.outputs:
        return _read_outputs_file(args.outputs)
    if args.stack:
        return _run_pulumi_stack_output(args.stack)
    return {}


def _read_outputs_file(path: str) -> dict[str, Any]:
    """Read the JSON written by `pulumi stack output --json --show-secrets`."""
    try:
        with open(path, encoding="utf-8") as stream:
            outputs = json.load(stream)
    except OSError as error:
        msg = f"--outputs {path}: cannot read it ({error.strerror})"
        raise UsageError(msg) from None
    except json.JSONDecodeError as error:
        msg = f"--outputs {path}: not JSON (line {error.lineno}: {error.msg})"
        raise UsageError(msg) from None
    return _require_object(outputs, f"--outputs {path}")


def _run_pulumi_stack_output(stack: str) -> dict[str, Any]:
    """Run the Pulumi CLI for the stack's outputs; without the CLI this is a usage error."""
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        msg = (
            f"--stack {stack}: the pulumi CLI is not installed here; save the outputs elsewhere "
            "with `pulumi stack output --json --show-secrets --stack STACK > FILE` and pass "
            "--outputs FILE, or give --url"
        )
        raise UsageError(msg)
    command = [pulumi, "stack", "output", "--json", "--show-secrets", "--stack", stack]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        msg = f"--stack {stack}: `pulumi stack output` did not finish within 120 s"
        raise UsageError(msg) from None
    if done.returncode != 0:
        last_lines = done.stderr.strip().splitlines()
        detail = Masker()(last_lines[-1] if last_lines else "no message")
        msg = f"--stack {stack}: `pulumi stack output` failed: {detail}"
        raise UsageError(msg)
    try:
        outputs = json.loads(done.stdout)
    except json.JSONDecodeError:
        msg = f"--stack {stack}: `pulumi stack output --json` did not print JSON"
        raise UsageError(msg) from None
    return _require_object(outputs, f"--stack {stack}")


def _require_object(outputs: object, origin: str) -> dict[str, Any]:
    """Stack outputs are a JSON object of output name to value."""
    if not isinstance(outputs, dict):
        msg = f"{origin}: expected a JSON object of stack outputs"
        raise UsageError(msg)
    return {str(key): value for key, value in outputs.items()} | {"__origin__": origin}


def _output_str(outputs: Mapping[str, Any], key: str) -> str | None:
    """Return a string output, or None when the stack does not export it."""
    value = outputs.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        msg = f"{outputs['__origin__']}: output {key} must be a string"
        raise UsageError(msg)
    return value


def _output_int(outputs: Mapping[str, Any], key: str) -> int | None:
    """Return a non-negative integer output, or None when absent."""
    value = outputs.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = f"{outputs['__origin__']}: output {key} must be a non-negative integer, not {value!r}"
        raise UsageError(msg)
    return value


def _output_percent(outputs: Mapping[str, Any], key: str) -> float | None:
    """Return a share output (a ratio, 0 < r <= 1) as a percentage, or None when absent."""
    value = outputs.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= 1
    ):
        msg = (
            f"{outputs['__origin__']}: output {key} must be a ratio more than 0 and at most 1, "
            f"not {value!r}"
        )
        raise UsageError(msg)
    return round(float(value) * 100, 6)


def _output_persistence(outputs: Mapping[str, Any]) -> str | None:
    """Return the `persistence` output after checking it names a known mode."""
    value = _output_str(outputs, "persistence")
    if value is not None and value not in PERSISTENCE_MODES:
        msg = (
            f"{outputs['__origin__']}: output persistence is {value!r}; "
            f"allowed: {', '.join(PERSISTENCE_MODES)}"
        )
        raise UsageError(msg)
    return value


def _output_pools(outputs: Mapping[str, Any]) -> tuple[Pool, ...]:
    """Return the `pools` output: a list of {"name", "queues", "replicas"}."""
    value = outputs.get("pools")
    if value is None:
        return ()
    origin = outputs["__origin__"]
    if not isinstance(value, list):
        msg = f"{origin}: output pools must be a list of {{name, queues, replicas}}"
        raise UsageError(msg)
    return tuple(_output_pool(item, f"{origin}: output pools[{i}]") for i, item in enumerate(value))


def _output_pool(item: object, where: str) -> Pool:
    """Validate one entry of the `pools` output."""
    if not isinstance(item, dict):
        msg = f"{where} must be an object with name, queues, replicas"
        raise UsageError(msg)
    name, queues, replicas = item.get("name"), item.get("queues"), item.get("replicas")
    if not isinstance(name, str) or not name:
        msg = f"{where}.name must be a non-empty string"
        raise UsageError(msg)
    if not isinstance(queues, list) or not queues or not all(isinstance(q, str) for q in queues):
        msg = f"{where}.queues must be a non-empty list of queue names"
        raise UsageError(msg)
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int)):
        msg = f"{where}.replicas must be an integer"
        raise UsageError(msg)
    return Pool(name, tuple(queues), replicas)


# --------------------------------------------------------------------------------------
# Running the checks
# --------------------------------------------------------------------------------------


class Deadline:
    """The end of the run: every network step gets at most what is left (and at most --timeout)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.end - time.monotonic())

    def step(self) -> float:
        """Timeout for the next network step: what is left, but at least 50 ms."""
        return max(0.05, min(self.seconds, self.remaining()))


def run_checks(config: CheckConfig) -> Report:
    """Run every check and return the closed report; never takes much longer than --timeout.

    The checks run in a daemon thread that the caller waits for until the deadline: whatever a
    library does (DNS lookups, reconnect loops), the run ends and reports what it learned.
    """
    mask = config.masker()
    report = Report(target=masked_url(mask, config.broker_url), mask=mask)
    deadline = Deadline(config.timeout)
    runner = threading.Thread(
        target=_run_all, args=(config, report, deadline), name="brokercheck", daemon=True
    )
    runner.start()
    runner.join(deadline.remaining() + WATCHDOG_GRACE)
    if runner.is_alive():
        report.add(
            "timeout",
            FAIL,
            f"checks still running after {config.timeout:g} s",
            f"all checks within --timeout {config.timeout:g} s",
            "a step did not answer in time; the checks above are those that finished",
        )
    report.close()
    return report


def _run_all(config: CheckConfig, report: Report, deadline: Deadline) -> None:
    """Broker checks first; worker checks only when the broker answered and workers are expected."""
    try:
        if config.sentinel is not None:
            url = check_sentinel(config, report, deadline)
            if url is None:
                return
            config = replace(config, broker_url=url)  # every broker check runs on the master
        state = check_broker(config, report, deadline)
        if state is not None and config.expected_workers > 0:
            check_workers(config, report, deadline, state.depths())
    except Exception as error:  # a bug or an unforeseen library error: report it, masked
        report.add(
            "internal",
            FAIL,
            f"{type(error).__name__}: {error}",
            "no error",
            "unexpected error in the check itself; the checks above are valid",
        )


# --------------------------------------------------------------------------------------
# Broker checks: redis-py as the read-only check user
# --------------------------------------------------------------------------------------


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


def _redis_client(url: str, timeout: float) -> Any:
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
        client = _redis_client(config.broker_url, deadline.step())
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
        client = _redis_client(url, deadline.step())
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
        client = _redis_client(_without_credentials(url), deadline.step())
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
        and not _SECRET_PARAM.match("&" + option)
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


def _config_value(answer: Any, name: str) -> str | None:
    """Return a CONFIG GET value as text, or None when the command failed."""
    if isinstance(answer, Exception) or not isinstance(answer, dict):
        return None
    value = answer.get(name, answer.get(name.encode()))
    return value.decode() if isinstance(value, bytes) else value


def _command_error(report: Report, name: str, answer: Any, expected: str, grant: str) -> bool:
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
    if _command_error(report, "persistence", state.info, "INFO answered", "+info"):
        return
    appendfsync = _config_value(state.appendfsync, "appendfsync")
    save = _config_value(state.save, "save")
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
        if _command_error(report, f"backlog:{queue}", refused, "LLEN answered", "+llen"):
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
        if _command_error(report, "unacked", answer, "ZCARD/ZRANGE answered", "+zcard +zrange"):
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


# --------------------------------------------------------------------------------------
# Sentinel: find the master, then judge quorum, replicas and the loss bound
# --------------------------------------------------------------------------------------

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
        value = _config_value(self.loss_bound, name)
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
        client = _redis_client(url, deadline.step())
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
    if _command_error(report, "sentinel-master", info, expected, "+info (INFO replication)"):
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


# --------------------------------------------------------------------------------------
# Worker checks: kombu (control commands) and celery (canary), as the workers' user
# --------------------------------------------------------------------------------------


@dataclass
class ControlReplies:
    """Replies to one broadcast, by worker node name."""

    ping: dict[str, Any] = field(default_factory=dict)
    active_queues: dict[str, Any] = field(default_factory=dict)

    def consumers(self, queue: str) -> list[str]:
        """Workers that consume `queue`."""
        return sorted(
            node for node, queues in self.active_queues.items() if queue in _queue_names(queues)
        )

    def serving(self, pool: Pool) -> list[str]:
        """Workers that consume every queue of `pool`."""
        return sorted(
            node
            for node, queues in self.active_queues.items()
            if set(pool.queues) <= _queue_names(queues)
        )

    def queue_declaration(self, queue: str) -> dict[str, Any] | None:
        """How a consumer declared `queue` (exchange, routing key), to route the canary alike."""
        for node in self.consumers(queue):
            for declared in self.active_queues[node]:
                if isinstance(declared, dict) and declared.get("name") == queue:
                    return declared
        return None


def _queue_names(queues: Any) -> set[str]:
    """Names in one worker's active_queues reply."""
    if not isinstance(queues, list):
        return set()
    return {q.get("name") for q in queues if isinstance(q, dict)}


def check_workers(
    config: CheckConfig, report: Report, deadline: Deadline, depths: Mapping[str, int]
) -> None:
    """Workers answer a control ping, every pool's queues have consumers, canaries run.

    `depths` (messages waiting per queue) tells a stuck canary from one queued behind tasks.
    """
    with _without_celery_url_env():
        try:
            replies = _broadcast_ping_and_queues(config, deadline)
        except Exception as error:
            report.add(
                "workers",
                FAIL,
                f"control broadcast failed: {type(error).__name__}: {error}",
                f">= {config.expected_workers} answer",
                "check the workers' URL (user celery, password) and its ACL",
            )
            return
        _report_workers(report, config, replies)
        if config.canary and config.result_backend_url:
            _run_canaries(report, config, replies, deadline, depths)


@contextmanager
def _without_celery_url_env() -> Iterator[None]:
    """Hide CELERY_BROKER_URL & co while Celery runs here: they beat any URL given to it."""
    saved = {name: os.environ.pop(name) for name in CELERY_URL_ENV if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _kombu_connection(config: CheckConfig, timeout: float) -> Any:
    """Return a kombu connection that cannot restore unacked messages nor retry for long.

    Behind Sentinel it finds the master the way the workers do (kombu's sentinel transport).
    """
    from kombu import Connection

    url = config.worker_url
    options = SAFE_TRANSPORT_OPTIONS | {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        **sentinel_transport_options(config, url, timeout),
    }
    return Connection(url, connect_timeout=timeout, transport_options=options)


def _broadcast_ping_and_queues(config: CheckConfig, deadline: Deadline) -> ControlReplies:
    """Broadcast `ping` and `active_queues` once; collect until enough answered or time is up.

    Like `celery inspect`, but it stops as soon as the expected workers answered and every
    pool is served, gives the canary the rest of the time, and deletes its reply queue.
    """
    window = deadline.remaining() * (0.5 if config.canary and config.result_backend_url else 1)
    window_end = time.monotonic() + window
    with _kombu_connection(config, deadline.step()) as connection:
        connection.ensure_connection(max_retries=0)  # kombu's default retries once, after 2 s
        channel = connection.channel()
        channel.do_restore = False  # belt and braces: never requeue on close
        try:
            return _collect_replies(connection, channel, config, window_end)
        finally:
            channel.close()


def _collect_replies(
    connection: Any, channel: Any, config: CheckConfig, window_end: float
) -> ControlReplies:
    """Declare a reply queue, publish both commands, drain replies, delete the reply queue."""
    from kombu import Consumer, Exchange, Producer, Queue

    oid = uuid.uuid4().hex
    reply_exchange = Exchange(REPLY_EXCHANGE, "direct", durable=False, delivery_mode="transient")
    # No x-expires: the binding is permanent until we delete the queue below, so nothing is
    # left in kombu's binding-deadline set for sweepers to find.
    reply_queue = Queue(
        f"{oid}.{REPLY_EXCHANGE}", reply_exchange, routing_key=oid, durable=False, auto_delete=True
    )
    control = Exchange(CONTROL_EXCHANGE, "fanout", durable=False, delivery_mode="transient")
    replies = ControlReplies()
    tickets = {uuid.uuid4().hex: command for command in ("ping", "active_queues")}

    def on_reply(body: Any, message: Any) -> None:
        command = tickets.get(message.headers.get("ticket"))
        if command is not None and isinstance(body, dict):
            getattr(replies, command).update(body)

    try:
        with Consumer(channel, [reply_queue], callbacks=[on_reply], no_ack=True, accept=["json"]):
            producer = Producer(channel, auto_declare=False)
            for ticket, command in tickets.items():
                producer.publish(
                    {
                        "method": command,
                        "arguments": {},
                        "destination": None,
                        "pattern": None,
                        "matcher": None,
                        "ticket": ticket,
                        "reply_to": {"exchange": REPLY_EXCHANGE, "routing_key": oid},
                    },
                    exchange=control,
                    declare=[control],
                    serializer="json",
                    retry=False,
                    headers={
                        "clock": 0,
                        "expires": time.time() + max(window_end - time.monotonic(), 0),
                    },
                )
            _drain_until(connection, window_end, lambda: _enough_replies(replies, config))
    finally:
        channel.queue_delete(reply_queue.name)
    return replies


def _drain_until(connection: Any, end: float, done: Callable[[], bool]) -> None:
    """Process replies until `done()` or the monotonic time `end`."""
    while not done():
        left = end - time.monotonic()
        if left <= 0:
            return
        try:
            connection.drain_events(timeout=min(left, 0.25))
        except TimeoutError:
            continue


def _enough_replies(replies: ControlReplies, config: CheckConfig) -> bool:
    """Stop waiting once the expected workers answered both commands and every pool is served."""
    answered = set(replies.ping)
    if len(answered) < config.expected_workers or not answered <= set(replies.active_queues):
        return False
    return all(
        all(replies.consumers(queue) for queue in pool.queues)
        and len(replies.serving(pool)) >= (pool.replicas or 1)
        for pool in config.pools
    ) and all(replies.consumers(queue) for queue in config.queues)


def _report_workers(report: Report, config: CheckConfig, replies: ControlReplies) -> None:
    """One entry for the worker count, one per pool for its queues' consumers."""
    expected = config.expected_workers
    names = ", ".join(sorted(replies.ping)) or "none"
    measured = f"{len(replies.ping)} answered ({names})"
    if len(replies.ping) >= expected:
        report.add("workers", PASS, measured, f">= {expected} answer the control ping")
    else:
        report.add(
            "workers",
            FAIL,
            measured,
            f">= {expected} answer the control ping",
            "workers are not running, not ready, or connected to another broker/DB "
            "(compare CELERY_BROKER_URL with this URL); see the pods' logs",
        )
    pools = config.pools or (Pool("default", config.queues),)
    for pool in pools:
        _report_pool(report, pool, replies)


def _report_pool(report: Report, pool: Pool, replies: ControlReplies) -> None:
    """Fail when a queue has no consumer; warn when fewer replicas than expected serve it all."""
    consumers = {queue: replies.consumers(queue) for queue in pool.queues}
    serving = replies.serving(pool)
    replicas = pool.replicas or 1
    measured = "; ".join(f"{queue}: {len(nodes)} consumers" for queue, nodes in consumers.items())
    measured += f"; {len(serving)} workers consume all"
    expected = f"every queue consumed; {replicas} workers consume all"
    idle = [queue for queue, nodes in consumers.items() if not nodes]
    if idle:
        report.add(
            f"pool:{pool.name}",
            FAIL,
            measured,
            expected,
            f"no worker consumes {', '.join(idle)}: tasks sent there wait forever; "
            "check the pool's -Q/--queues and that its pods are ready",
        )
    elif len(serving) < replicas:
        report.add(
            f"pool:{pool.name}",
            WARN,
            measured,
            expected,
            "fewer workers than replicas answered (rolling update, or pods not ready)",
        )
    else:
        report.add(f"pool:{pool.name}", PASS, measured, expected)


def _run_canaries(
    report: Report,
    config: CheckConfig,
    replies: ControlReplies,
    deadline: Deadline,
    depths: Mapping[str, int],
) -> None:
    """Send `celery.accumulate` to each consumed queue, read each result back, forget it."""
    declarations = {q: replies.queue_declaration(q) for q in config.queues}
    targets = {queue: declared for queue, declared in declarations.items() if declared}
    if not targets:
        return
    app = _canary_app(config, deadline.step())
    try:
        canaries = [
            _send_canary(app, queue, declared, deadline, depths.get(queue, 0))
            for queue, declared in targets.items()
        ]
        for canary in canaries:
            _await_canary(report, canary, deadline)
    except Exception as error:
        report.add(
            "canary",
            FAIL,
            f"{type(error).__name__}: {error}",
            "canary sent and its result read back",
            "check the result backend URL (user, DB) and that workers use the same one",
        )
    finally:
        app.close()


@dataclass(frozen=True)
class Canary:
    """One canary in flight: where it went, what it must return, what waited before it."""

    queue: str
    token: str
    result: Any
    started: float
    queued_ahead: int


def _canary_app(config: CheckConfig, timeout: float) -> Any:
    """Return a throw-away Celery app on the workers' broker and backend, safe and bounded."""
    from celery import Celery

    app = Celery(
        "brokercheck",
        broker=config.worker_url,
        backend=config.result_backend_url,
        set_as_current=False,
    )
    backend_url = config.result_backend_url or ""
    app.conf.update(
        broker_transport_options=SAFE_TRANSPORT_OPTIONS
        | {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        | sentinel_transport_options(config, config.worker_url, timeout),
        broker_connection_timeout=timeout,
        broker_connection_retry=False,
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=0,
        task_publish_retry=False,
        redis_socket_timeout=timeout,
        redis_socket_connect_timeout=timeout,
        redis_retry_on_timeout=False,
        result_backend_transport_options={"retry_policy": {"max_retries": 0}}
        | sentinel_transport_options(config, backend_url, timeout),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
    )
    return app


def _send_canary(
    app: Any, queue: str, declared: Mapping[str, Any], deadline: Deadline, queued_ahead: int
) -> Canary:
    """Publish the canary the way the consumer declared the queue; declare nothing new."""
    from kombu import Exchange, Queue

    exchange_info = declared.get("exchange") or {}
    exchange = Exchange(exchange_info.get("name", queue), exchange_info.get("type", "direct"))
    target = Queue(queue, exchange, routing_key=declared.get("routing_key", queue))
    token = f"brokercheck-canary-{uuid.uuid4().hex}"
    started = time.monotonic()
    result = app.send_task(
        CANARY_TASK,
        args=[token],
        kwargs={"index": 0},
        queue=target,
        declare=[],
        expires=max(deadline.remaining(), 1.0),  # a late canary is discarded, not run
        retry=False,
    )
    return Canary(queue, token, result, started, queued_ahead)


def _await_canary(report: Report, canary: Canary, deadline: Deadline) -> None:
    """Wait for one canary's result within the deadline and report its round trip.

    Queues are FIFO: a canary sent behind waiting tasks (minutes-long PDFs) cannot come back
    in time, which says nothing about the broker; that is a warning, not a failure.
    """
    name = f"canary:{canary.queue}"
    expected = f"{CANARY_TASK} runs and its result is read back within {deadline.seconds:g} s"
    try:
        meta = _wait_for_result(canary.result, deadline)
    except Exception as error:
        measured = f"no result ({type(error).__name__}: {error})"
        if canary.queued_ahead:
            report.add(
                name,
                WARN,
                f"{measured}; {canary.queued_ahead} tasks were queued ahead",
                expected,
                "the canary waits behind the backlog; rerun when it drained",
            )
        else:
            report.add(
                name,
                FAIL,
                measured,
                expected,
                "the queue's workers may all be busy with long tasks (rerun with a longer "
                "--timeout), or they store results elsewhere than this result backend",
            )
        return
    finally:
        _forget(canary.result)
    elapsed_ms = (time.monotonic() - canary.started) * 1000
    if meta.get("status") == "SUCCESS" and meta.get("result") == canary.token:
        report.add(name, PASS, f"round trip in {elapsed_ms:.0f} ms", expected)
    else:
        report.add(
            name,
            FAIL,
            f"{meta.get('status')}: {meta.get('result')!r}",
            expected,
            "the worker ran the canary but it did not return its argument",
        )


def _wait_for_result(result: Any, deadline: Deadline) -> dict[str, Any]:
    """Poll the canary's result until it is final; raise TimeoutError at the deadline.

    Polling (one GET each time) instead of `AsyncResult.get`: Celery's pub/sub drainer checks
    its timeout only between one-second waits, so it can overrun the deadline by a second.
    """
    while True:
        meta = result.backend.get_task_meta(result.id)
        if meta.get("status") in FINAL_STATES:
            return meta
        if deadline.remaining() <= 0:
            msg = "no result before the deadline"
            raise TimeoutError(msg)
        time.sleep(min(RESULT_POLL_SECONDS, deadline.remaining()))


def _forget(result: Any) -> None:
    """Delete the canary's stored result so the check leaves no key behind."""
    try:
        result.forget()
    except Exception as error:  # the report already says whether the canary worked
        logging.getLogger("brokercheck").warning("could not delete canary result: %s", error)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def print_report(report: Report, as_json: bool) -> None:
    """Print the report: JSON alone on stdout with --json, else the table."""
    if as_json:
        print(format_json(report))
    else:
        print(format_table(report))


def usage_error_report(message: str, mask: Masker) -> dict[str, Any]:
    """Return the `brokercheck/v1` report of a run refused before any check ran (exit 2).

    CI that pipes `--json` into `jq` gets a report whatever went wrong: one failed `usage`
    entry whose `measured` is the (masked) error.
    """
    report = Report(target="", mask=mask)
    report.add(
        "usage",
        FAIL,
        message,
        "a valid command line, environment and stack outputs",
        "see --help for the options and the values they allow",
    )
    report.close()
    return report.to_dict() | {"ok": False, "exit_code": EXIT_USAGE, "duration_seconds": 0.0}


def emit_usage_error(message: str, as_json: bool, mask: Masker) -> str:
    """Print the JSON report of a usage error when --json asks for it; return the masked text.

    The caller prints the text on stderr (notes never go to stdout under --json).
    """
    text = mask(message)
    if as_json:
        print(json.dumps(usage_error_report(text, mask), indent=2, ensure_ascii=False))
    return text


def masker_for(values: Iterable[str | None], environ: Mapping[str, str] = os.environ) -> Masker:
    """Return a Masker knowing every credential in `values` and in the default URL variables.

    Built before the command line is fully understood, so that even its usage errors (a URL
    given where a number was expected, an unknown argument that is a URL) never show one.
    """
    defaults = (environ.get(name) for name in (ENV_BROKER_URL, ENV_WORKER_URL, ENV_RESULT_BACKEND))
    return Masker([*values, *defaults])


def _args_masker(args: argparse.Namespace, environ: Mapping[str, str]) -> Masker:
    """Return a Masker for every URL the options name, directly or through a variable."""
    variables = (args.url_env, args.worker_url_env, args.result_backend_env)
    named = [environ.get(variable) for variable in variables if variable]
    return masker_for([args.url, args.worker_url, args.result_backend, *named], environ)


def _asks_for_json(argv: Sequence[str]) -> bool:
    """Whether raw arguments include --json (argparse also accepts its prefixes, e.g. --js)."""
    return any(len(arg) > 2 and "--json".startswith(arg) for arg in argv)


class CheckArgumentParser(argparse.ArgumentParser):
    """argparse with the check's usage-error contract.

    Plain argparse prints its errors verbatim (`unrecognized arguments: redis://u:pw@h`,
    `invalid value: 'redis://...'`), on stderr only. Here every error is masked, is also a
    JSON report on stdout under --json, and ends with exit status 2; arguments left over are
    an error of this parser, not passed up to a parent parser that would print them raw.
    """

    _argv: Sequence[str] = ()

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse like argparse, but refuse leftovers here, where they are masked."""
        self._argv = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, []

    def error(self, message: str) -> typing.NoReturn:
        """Print the masked error (and its JSON report with --json), exit with status 2."""
        text = emit_usage_error(message, _asks_for_json(self._argv), masker_for(self._argv))
        self.print_usage(sys.stderr)
        print(f"{self.prog}: usage error: {text}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def run_from_args(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    """Run the check for parsed arguments, print the report, return the exit status.

    Raises UsageError for bad input, its message masked and, with --json, its JSON report
    already on stdout; the caller prints the message on stderr and exits with status 2.
    """
    mask = _args_masker(args, environ)
    try:
        config = config_from_args(args, environ)
    except UsageError as error:
        raise UsageError(emit_usage_error(str(error), args.json, mask)) from None
    except Exception as error:  # e.g. an unreadable outputs file: still masked, still exit 2
        message = f"could not read the check's configuration: {type(error).__name__}: {error}"
        raise UsageError(emit_usage_error(message, args.json, mask)) from None
    configure_logging(config.masker())
    report = run_checks(config)
    print_report(report, args.json)
    return report.exit_code


def build_parser(prog: str = "brokercheck.py") -> argparse.ArgumentParser:
    """Return the stand-alone parser (the in-cluster Job runs this file directly)."""
    parser = CheckArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `brokercheck.py [options]`: 0 all passed, 1 a check failed, 2 usage error."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help (0) or a usage error, already printed (2)
        return int(exit_request.code or 0)
    try:
        return run_from_args(args)
    except UsageError as error:
        print(f"brokercheck: usage error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
