"""Keep each worker pod's deletion cost equal to the tasks it runs, so scale-in spares busy pods.

When a ReplicaSet shrinks (KEDA, an HPA or a changed `replicas`), Kubernetes removes, among
equally ready pods, those with the lowest `controller.kubernetes.io/pod-deletion-cost` first.
Every worker publishes how many tasks it runs and holds (the wiring module's TaskLoad step,
components/celery_config.py) to the broker under `celery-redis/load/<pod name>`, with a TTL so
a dead pod's entry expires. This controller, one small pod per stack, reads those entries and:

* patches the annotation of every worker pod whose cost changed, and only then: the Kubernetes
  documentation warns against frequent updates, and an idle pool patches nothing at all;
* keeps one Redis list per pool, `celery-redis/inflight/<pool>`, whose LENGTH is the number of
  tasks the pool's pods hold (running, prefetched, waiting for an ETA): KEDA's redis scaler can
  read only lengths, and with this list among its triggers it sees work the queue lists no
  longer show, so it never scales a pool to zero while a task runs.

Cost function (`deletion_cost`): the number of tasks the pod is running. An idle pod costs 0
(removed first); a busy pod is removed only when every remaining candidate is busy, and then
the one running the fewest tasks. Prefetched or ETA messages do not count toward the cost: a
stopping worker hands them back to the queue at once, nothing is run twice.
A pod without a fresh entry (just started, or cut off from the broker) keeps whatever cost it
has: a starting pod has none (0), and a worker cut off from the broker is unready, which the
ReplicaSet removes before any ready pod whatever its cost.

Least privilege: the pod's ServiceAccount may only list and patch pods in its namespace; its
Redis user may only read the load entries and write the in-flight lists. Worker pods, which
parse untrusted files, still carry no API token. Behind Sentinel (`sentinel://` URLs,
--sentinel-master) it asks the Sentinels for the master, as kombu does.

This file is self-contained (Python 3.10+, stdlib and redis-py only) and runs verbatim from a
ConfigMap in the workers' image, like brokercheck.py. Every network call is bounded by
--timeout; the loop never ends on an error, it logs it and tries again at the next interval.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
LOAD_KEY_PREFIX = "celery-redis/load/"
"""Prefix of each worker pod's load entry; `/` never occurs in a queue name, so no clash."""
INFLIGHT_KEY_PREFIX = "celery-redis/inflight/"
"""Prefix of each pool's in-flight list (its length is what KEDA reads)."""
INFLIGHT_TTL_SECONDS = 600
"""The in-flight lists expire if the controller stops refreshing them (a deleted controller must
not hold a pool up forever); refreshed every INFLIGHT_TTL_SECONDS / 3 while it runs."""
INFLIGHT_MAX = 100_000
"""Bound on one list's length: a corrupt entry must not make the controller push millions."""
MAX_COST = 2_147_483_647
"""The annotation is an int32."""
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
ALIVE_FILE = "alive"
READY_FILE = "ready"
POOL_LABEL = "app.kubernetes.io/instance"
"""The label whose value tells a worker pod's pool apart (components/naming.selector_labels)."""

logger = logging.getLogger("deletioncost")


@dataclass(frozen=True)
class Load:
    """What one worker pod reported: tasks it runs, and every task it holds (running included)."""

    running: int
    held: int


def parse_load(raw: bytes | str | None) -> Load | None:
    """Decode a load entry (`{"running": r, "held": h}`); None when missing or malformed."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        running, held = int(data["running"]), int(data["held"])
    except (ValueError, TypeError, KeyError):
        return None
    if running < 0 or held < 0:
        return None
    return Load(running=running, held=max(held, running))


def deletion_cost(load: Load) -> int:
    """Return the pod-deletion-cost of a worker: the tasks it is running (idle: 0, goes first)."""
    return min(load.running, MAX_COST)


@dataclass(frozen=True)
class WorkerPod:
    """The facts about one worker pod the controller acts on, read from the API server."""

    name: str
    uid: str
    pool_label: str
    cost: str | None
    """The current annotation value, as the API server has it (None when absent)."""
    terminating: bool

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> WorkerPod:
        """Build from a Pod object of a list response."""
        metadata = obj["metadata"]
        return cls(
            name=metadata["name"],
            uid=metadata.get("uid", ""),
            pool_label=(metadata.get("labels") or {}).get(POOL_LABEL, ""),
            cost=(metadata.get("annotations") or {}).get(ANNOTATION),
            terminating=bool(metadata.get("deletionTimestamp"))
            or (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        )


def load_key(pod_name: str) -> str:
    """Return the Redis key of one pod's load entry."""
    return f"{LOAD_KEY_PREFIX}{pod_name}"


def inflight_key(pool: str) -> str:
    """Return the Redis key of one pool's in-flight list."""
    return f"{INFLIGHT_KEY_PREFIX}{pool}"


def planned_patches(pods: Iterable[WorkerPod], loads: Mapping[str, Load | None]) -> dict[str, int]:
    """Return pod name -> new cost, for live pods whose reported cost differs from their annotation.

    A pod without a fresh report keeps its annotation; a terminating pod is left alone (the
    ReplicaSet already chose it).
    """
    patches = {}
    for pod in pods:
        load = loads.get(pod.name)
        if pod.terminating or load is None:
            continue
        cost = deletion_cost(load)
        if pod.cost != str(cost):
            patches[pod.name] = cost
    return patches


def inflight_by_pool(
    pods: Iterable[WorkerPod], loads: Mapping[str, Load | None], pools: Mapping[str, str]
) -> dict[str, int]:
    """Return pool name -> tasks its pods hold (terminating pods too: their work is still there).

    `pools` maps a pool's `app.kubernetes.io/instance` label value to its name; every named
    pool gets an entry, 0 when none of its pods holds anything.
    """
    totals = dict.fromkeys(pools.values(), 0)
    for pod in pods:
        pool = pools.get(pod.pool_label)
        load = loads.get(pod.name)
        if pool is not None and load is not None:
            totals[pool] = min(totals[pool] + load.held, INFLIGHT_MAX)
    return totals


class ApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, what: str, body: str) -> None:
        """Keep the status (404 is expected when a pod went away) and a readable message."""
        super().__init__(f"{what}: HTTP {status}: {body[:300]}")
        self.status = status


class KubeApi:
    """The two calls the controller makes, with the pod's service-account token; each bounded.

    The token is read from its file at every call: the kubelet rotates projected tokens.
    """

    def __init__(self, server: str, account_dir: Path, timeout: float) -> None:
        """Trust only the cluster CA of the service-account volume."""
        self.server = server.rstrip("/")
        self.token_file = account_dir / "token"
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=str(account_dir / "ca.crt"))

    def request(
        self, method: str, path: str, body: object = None, content_type: str = ""
    ) -> dict[str, Any]:
        """Call the API server with the pod's token; ApiError for an error status."""
        token = self.token_file.read_text().strip()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        request = urllib.request.Request(  # noqa: S310 - an https URL built from the cluster's
            f"{self.server}{path}", data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 - same
                request, timeout=self.timeout, context=self.context
            ) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            raise ApiError(error.code, f"{method} {path}", text) from None

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """List the namespace's pods matching a label selector."""
        query = urllib.parse.urlencode({"labelSelector": selector})
        found = self.request("GET", f"/api/v1/namespaces/{namespace}/pods?{query}")
        return found.get("items") or []

    def set_cost(self, namespace: str, pod: WorkerPod, cost: int) -> bool:
        """Merge-patch the annotation; the pod's uid guards against a namesake. False if gone."""
        patch = {"metadata": {"uid": pod.uid, "annotations": {ANNOTATION: str(cost)}}}
        try:
            self.request(
                "PATCH",
                f"/api/v1/namespaces/{namespace}/pods/{pod.name}",
                patch,
                "application/merge-patch+json",
            )
        except ApiError as error:
            if error.status in (404, 409):  # deleted, or replaced by a namesake meanwhile
                return False
            raise
        return True


class RedisLike(Protocol):
    """What the load board needs of a redis-py client."""

    def mget(self, keys: Sequence[str]) -> list[Any]: ...  # noqa: D102

    def pipeline(self, transaction: bool = True) -> Any: ...  # noqa: D102


@dataclass
class LoadBoard:
    """The controller's side of the broker: the workers' entries, the pools' in-flight lists."""

    redis: RedisLike
    written: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Pool -> (length, monotonic time) of the last in-flight write."""

    def read(self, pod_names: Sequence[str]) -> dict[str, Load | None]:
        """Return each pod's load (None: no fresh entry), with one MGET."""
        raw = self.redis.mget([load_key(name) for name in pod_names]) if pod_names else []
        return {name: parse_load(value) for name, value in zip(pod_names, raw, strict=True)}

    def publish_inflight(self, totals: Mapping[str, int]) -> dict[str, int]:
        """Rewrite each pool's list whose count changed (or is due a refresh); return those."""
        written = {}
        for pool, count in sorted(totals.items()):
            last = self.written.get(pool)
            fresh = last is not None and time.monotonic() - last[1] < INFLIGHT_TTL_SECONDS / 3
            if last is not None and last[0] == count and fresh:
                continue
            self._write_inflight(pool, count)
            written[pool] = count
        return written

    def _write_inflight(self, pool: str, count: int) -> None:
        """Replace the pool's list by one of `count` items, atomically (MULTI/EXEC)."""
        key = inflight_key(pool)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        if count:
            pipe.rpush(key, *["1"] * count)
            pipe.expire(key, INFLIGHT_TTL_SECONDS)
        pipe.execute()
        self.written[pool] = (count, time.monotonic())


@dataclass
class PassReport:
    """What one pass did: the patches it made and the in-flight counts it wrote."""

    patched: dict[str, int] = field(default_factory=dict)
    inflight_written: dict[str, int] = field(default_factory=dict)


@dataclass
class Controller:
    """One pass reads pods and loads, patches changed costs, refreshes changed in-flight lists."""

    kube: KubeApi
    board: LoadBoard
    namespace: str
    selector: str
    pools: Mapping[str, str]
    """`app.kubernetes.io/instance` label value -> pool name."""

    def run_once(self) -> PassReport:
        """Read, compare, write what changed; returns what it did."""
        pods = [
            WorkerPod.from_api(obj) for obj in self.kube.list_pods(self.namespace, self.selector)
        ]
        pods = [pod for pod in pods if pod.pool_label in self.pools]
        loads = self.board.read([pod.name for pod in pods])
        report = PassReport()
        by_name = {pod.name: pod for pod in pods}
        for name, cost in sorted(planned_patches(pods, loads).items()):
            if self.kube.set_cost(self.namespace, by_name[name], cost):
                logger.info("pod %s: deletion cost %s -> %d", name, by_name[name].cost, cost)
                report.patched[name] = cost
        report.inflight_written = self.board.publish_inflight(
            inflight_by_pool(pods, loads, self.pools)
        )
        return report


def api_server_url(environ: Mapping[str, str]) -> str:
    """Return the in-cluster API server URL (the variables every pod gets)."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        msg = "KUBERNETES_SERVICE_HOST is not set: not running in a pod? (use --api-server)"
        raise SystemExit(msg)
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"https://{host}:{port}"


def parse_pools(values: Sequence[str]) -> dict[str, str]:
    """Parse `--pool NAME=INSTANCE_LABEL` options into label value -> pool name."""
    pools = {}
    for value in values:
        name, sep, label = value.partition("=")
        if not (sep and name and label):
            msg = f"--pool {value!r}: expected NAME=INSTANCE_LABEL_VALUE"
            raise SystemExit(msg)
        pools[label] = name
    return pools


SENTINEL_URL_SEPARATOR = ";"
"""kombu's separator between the `sentinel://` URLs of a broker's Sentinels."""


def redis_client(
    url: str, timeout: float, master: str | None = None, sentinel_password: str | None = None
) -> Any:
    """Return a redis-py client of the broker, every call bounded by `timeout`.

    `redis://` and `rediss://` URLs connect directly; `sentinel://` URLs (one per Sentinel,
    joined by `;`, the user and database of the master in each, TLS options in the query) ask
    the Sentinels for `master` and follow a failover on the next call.
    """
    import redis  # the workers' image has it; imported late so --help needs nothing
    from redis.sentinel import Sentinel

    bounds = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if not url.startswith("sentinel://"):
        return redis.Redis.from_url(url, **bounds)
    if not master:
        msg = "a sentinel:// URL needs --sentinel-master"
        raise SystemExit(msg)
    parts = [urlsplit(piece) for piece in url.split(SENTINEL_URL_SEPARATOR)]
    first = parts[0]
    query = dict(parse_qsl(first.query))
    tls = {key: value for key, value in query.items() if key.startswith("ssl_")}
    tls_options = {"ssl": True, **tls} if tls else {}
    sentinel = Sentinel(
        [(str(part.hostname), int(part.port or 26379)) for part in parts],
        sentinel_kwargs={"password": sentinel_password, **bounds, **tls_options},
        username=unquote(first.username or "") or None,
        password=unquote(first.password or "") or None,
        db=int(first.path.lstrip("/") or 0),
        **bounds,
        **tls_options,
    )
    return sentinel.master_for(master)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--selector", required=True, help="label selector of the worker pods")
    parser.add_argument(
        "--pool", action="append", default=[], required=True, help="NAME=INSTANCE_LABEL_VALUE"
    )
    parser.add_argument("--namespace", help="default: the service account's namespace")
    parser.add_argument("--redis-url-env", required=True, help="variable holding the Redis URL")
    parser.add_argument("--sentinel-master", help="master name, for a sentinel:// URL")
    parser.add_argument("--sentinel-password-env", help="variable holding Sentinel's password")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between passes")
    parser.add_argument("--timeout", type=float, default=5.0, help="bound on every network call")
    parser.add_argument(
        "--health-dir",
        type=Path,
        help=f"keeps {ALIVE_FILE} (touched after every pass) and {READY_FILE} (while passes work)",
    )
    parser.add_argument("--api-server", help="default: from KUBERNETES_SERVICE_HOST/PORT")
    parser.add_argument("--service-account-dir", type=Path, default=Path(SERVICE_ACCOUNT_DIR))
    parser.add_argument("--once", action="store_true", help="run one pass and exit")
    return parser


def controller_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Controller:
    """Build the controller: API client, Redis client (bounded timeouts), pools."""
    url = environ.get(args.redis_url_env)
    if not url:
        msg = f"${args.redis_url_env} is empty: the Redis URL comes from the controller's Secret"
        raise SystemExit(msg)
    account_dir = args.service_account_dir
    namespace = args.namespace or (account_dir / "namespace").read_text().strip()
    sentinel_password = (
        environ.get(args.sentinel_password_env) if args.sentinel_password_env else None
    )
    client = redis_client(url, args.timeout, args.sentinel_master, sentinel_password)
    kube = KubeApi(args.api_server or api_server_url(environ), account_dir, args.timeout)
    return Controller(kube, LoadBoard(client), namespace, args.selector, parse_pools(args.pool))


def touch(path: Path) -> None:
    """Create or refresh a file (the liveness probe reads its age)."""
    with path.open("a"):
        os.utime(path)


def record_health(health_dir: Path | None, *, passed: bool) -> None:
    """Touch `alive` after every pass (the loop runs); keep `ready` only while passes succeed.

    Liveness reads `alive`: a broker or API outage is not cured by a restart, a stuck loop is.
    """
    if health_dir is None:
        return
    health_dir.mkdir(parents=True, exist_ok=True)
    touch(health_dir / ALIVE_FILE)
    if passed:
        touch(health_dir / READY_FILE)
    else:
        (health_dir / READY_FILE).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run passes every --interval until SIGTERM; errors are logged and retried."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    controller = controller_from_args(args, os.environ)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logger.info(
        "watching pods %r in %s, pools %s",
        args.selector,
        controller.namespace,
        sorted(controller.pools.values()),
    )
    while True:
        try:
            controller.run_once()
        except Exception as error:  # any failure: log it, keep the last costs, try again
            logger.warning("pass failed: %s", error)
            record_health(args.health_dir, passed=False)
            if args.once:
                return 1
        else:
            record_health(args.health_dir, passed=True)
        if args.once or stop.wait(args.interval):
            return 0


if __name__ == "__main__":
    sys.exit(main())
