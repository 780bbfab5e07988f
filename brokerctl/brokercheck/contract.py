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
  pool:NAME           every queue of the pool has a consumer; replicas serve all of them (a
                      pool at 0 replicas, scaled to zero or paused, only warns)
  canary:QUEUE        Celery's built-in `celery.accumulate` task, sent to each consumed queue,
                      runs and its result is read back (needs a result backend)

Behind Sentinel (a sentinel://H0:P/DB;sentinel://H1:P/DB URL, --sentinel-master), first:
  sentinels           every Sentinel of the URL answers with Sentinel's password, none serves
                      a client without one, and they name the same master
  sentinel-master     the master Sentinel names is up and says role:master itself
  sentinel-quorum     SENTINEL CKQUORUM: enough Sentinels to agree on and run a failover
  replica:HOST:PORT   connected to the master, not flagged down by a Sentinel, lag (seconds
                      since its last acknowledgement) within --max-replica-lag
  replicas            at least --expect-replicas healthy replicas
  loss-bound          min-replicas-to-write and min-replicas-max-lag as expected, neither 0
  writes              enough good replicas for min-replicas-to-write: else the master refuses
                      every write (NOREPLICAS) and workers can neither publish nor fetch
then every check above against that master (workers and canary through Sentinel).

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

Code: the package brokerctl/brokercheck (Python 3.10+, stdlib, redis, kombu and celery only)
runs as `python -m brokerctl check`; its bundle.py joins the modules into one file, which the
cluster runs as `python brokercheck.py` in a Job in the workers' image. redis is imported only
when checks run, kombu and celery only for the worker checks: --help and usage errors stay
fast.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

HELP = __doc__ or ""
"""The help text (--help of both commands): this docstring, also the bundle's."""

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

ENV_BROKER_URL = "BROKER_CHECK_URL"
ENV_WORKER_URL = "CELERY_BROKER_URL"
ENV_RESULT_BACKEND = "CELERY_RESULT_BACKEND"
# The client Secret's key holding Sentinel's own password (a variable name, not a password).
ENV_SENTINEL_PASSWORD = "BROKER_SENTINEL_PASSWORD"  # noqa: S105


class UsageError(Exception):
    """A mistake in the command line or in the stack outputs (exit status 2)."""


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


def is_sentinel_url(url: str | None) -> bool:
    """Whether `url` names Sentinels (kombu's `sentinel://...;sentinel://...`), not Redis."""
    return bool(url) and urlsplit(str(url)).scheme == SENTINEL_SCHEME
