"""What one run checks: the configuration built from the command line and stack outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

from brokerctl.brokercheck.contract import (
    DEFAULT_MEMORY_FAIL_PERCENT,
    DEFAULT_MEMORY_WARN_PERCENT,
    DEFAULT_QUEUE,
    DEFAULT_TIMEOUT,
    DEFAULT_VISIBILITY_TIMEOUT,
)
from brokerctl.brokercheck.masking import Masker


@dataclass(frozen=True)
class Pool:
    """A worker pool: the queues its workers consume and how many replicas it runs."""

    name: str
    queues: tuple[str, ...]
    replicas: int | None = None

    @property
    def expected_replicas(self) -> int:
        """Workers expected to answer: the replicas given, one when none was (`--pool N=Q`).

        0 is a pool scaled to zero (KEDA with min_replicas 0) or paused: none is expected.
        """
        return 1 if self.replicas is None else self.replicas


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
        return sum(pool.expected_replicas for pool in self.pools)

    def masker(self) -> Masker:
        """Return a Masker that knows every password of this run."""
        mask = Masker([self.broker_url, self.worker_url, self.result_backend_url])
        if self.sentinel is not None:
            mask.add_secret(self.sentinel.password)
        return mask
