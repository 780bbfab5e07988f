"""What to check: the command line, merged with stack outputs and the environment."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from brokerctl.brokercheck.config import CheckConfig, Pool, SentinelConfig
from brokerctl.brokercheck.contract import (
    DEFAULT_MEMORY_FAIL_PERCENT,
    DEFAULT_MEMORY_WARN_PERCENT,
    DEFAULT_TIMEOUT,
    DEFAULT_VISIBILITY_TIMEOUT,
    ENGINES,
    ENV_BROKER_URL,
    ENV_RESULT_BACKEND,
    ENV_SENTINEL_PASSWORD,
    ENV_WORKER_URL,
    MAX_TIMEOUT,
    PERSISTENCE_MODES,
    SENTINEL_SCHEME,
    SENTINEL_URL_SEPARATOR,
    URL_SCHEMES,
    UsageError,
    is_sentinel_url,
)
from brokerctl.brokercheck.masking import URL_USERINFO, Masker, masked_url
from brokerctl.brokercheck.outputs import (
    output_engine,
    output_int,
    output_percent,
    output_persistence,
    output_pools,
    output_str,
    stack_outputs,
)


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
    outputs = stack_outputs(args)
    broker_url = _first_url(
        "broker URL",
        _from_env_option(args.url_env, environ) or args.url,
        output_str(outputs, "check_url"),
        environ.get(ENV_BROKER_URL),
    )
    if broker_url is None:
        msg = f"no broker URL: give --url, --url-env VAR, --stack, --outputs or ${ENV_BROKER_URL}"
        raise UsageError(msg)
    worker_url = _first_url(
        "worker URL",
        _from_env_option(args.worker_url_env, environ) or args.worker_url,
        output_str(outputs, "broker_url"),
        environ.get(ENV_WORKER_URL),
    )
    result_backend = _first_url(
        "result backend URL",
        _from_env_option(args.result_backend_env, environ) or args.result_backend,
        output_str(outputs, "result_backend_url"),
        environ.get(ENV_RESULT_BACKEND),
    )
    memory_warn, memory_fail = _memory_thresholds(args, outputs)
    _refuse_sentinel_urls_without_sentinel_broker(broker_url, worker_url, result_backend)
    return CheckConfig(
        broker_url=broker_url,
        worker_url=worker_url or broker_url,
        result_backend_url=result_backend,
        expect_persistence=args.expect_persistence or output_persistence(outputs),
        expect_workers=_pick(args.expect_workers, output_int(outputs, "expect_workers")),
        pools=_pools_from(args, outputs),
        visibility_timeout=float(
            _pick(args.visibility_timeout, output_int(outputs, "visibility_timeout"))
            or DEFAULT_VISIBILITY_TIMEOUT
        ),
        timeout=args.timeout,
        memory_warn_percent=memory_warn,
        memory_fail_percent=memory_fail,
        canary=not args.no_canary,
        sentinel=_sentinel_config(args, outputs, environ, broker_url),
        expect_engine=args.expect_engine or output_engine(outputs),
    )


SENTINEL_OPTIONS = (
    "sentinel_master",
    "sentinel_password_env",
    "max_replica_lag",
    "expect_replicas",
    "expect_min_replicas_to_write",
    "expect_min_replicas_max_lag",
)


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
    master_name = args.sentinel_master or output_str(outputs, "sentinel_master")
    if not master_name:
        msg = (
            "a sentinel:// broker URL needs --sentinel-master NAME (the name of "
            "`sentinel monitor NAME ...` in sentinel.conf) or the stack output sentinel_master"
        )
        raise UsageError(msg)
    if args.sentinel_password_env is not None:
        password = _from_env_option(args.sentinel_password_env, environ)
    else:
        # Flags win over outputs over the environment, as for every other setting.
        password = (
            output_str(outputs, "sentinel_password") or environ.get(ENV_SENTINEL_PASSWORD) or None
        )
    return SentinelConfig(
        master_name=master_name,
        password=password,
        max_replica_lag=args.max_replica_lag,
        expect_replicas=_pick(args.expect_replicas, output_int(outputs, "expect_replicas")),
        expect_min_replicas_to_write=_pick(
            args.expect_min_replicas_to_write, output_int(outputs, "min_replicas_to_write")
        ),
        expect_min_replicas_max_lag=_pick(
            args.expect_min_replicas_max_lag, output_int(outputs, "min_replicas_max_lag")
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
    warn = _pick(args.memory_warn, output_percent(outputs, "memory_warn_ratio"))
    fail = _pick(args.memory_fail, output_percent(outputs, "memory_fail_ratio"))
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
    userinfo = URL_USERINFO.match(url)
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
    return output_pools(outputs)


def _parse_pool(spec: str) -> Pool:
    """Parse NAME=Q1,Q2[:REPLICAS], e.g. `pdf=pdf,pdf-priority:3`."""
    name, sep, rest = spec.partition("=")
    queues_text, _, replicas_text = rest.partition(":")
    queues = tuple(queue for queue in queues_text.split(",") if queue)
    if not sep or not name or not queues or (replicas_text and not replicas_text.isdigit()):
        msg = f"--pool {spec!r}: expected NAME=QUEUE[,QUEUE...][:REPLICAS], e.g. pdf=pdf:2"
        raise UsageError(msg)
    return Pool(name, queues, int(replicas_text) if replicas_text else None)
