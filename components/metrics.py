r"""Broker metrics: the redis_exporter sidecar, its Service, scrape config and alert rules.

Why a sidecar: it reaches Redis on localhost, so the broker port never opens to the monitoring
namespace (the NetworkPolicy admits only the metrics port, and only from
`metrics.monitoring_namespace`), and it lives and dies with the pod it describes. It
authenticates as its own `exporter` user (components/redis_config.py): sizes, INFO, CONFIG GET
and its script on the stack's queue keys, so a leaked scrape credential writes nothing and
reads no task.

What Prometheus can see through it, and so what the alerts can say:
- INFO and CONFIG GET: up/down, memory against maxmemory, rejected connections, AOF/RDB status.
- `--check-single-keys`: the length of every Redis list kombu keeps for each configured queue.
  kombu stores priority `p` of queue `q` in its own list `q\\x06\\x16p` (steps 0, 3, 6, 9;
  step 0 is the plain name), so a queue's depth is the sum of its lists. Keys missing from Redis
  (an empty list is deleted) are exported as 0, so every queue always has a series.
- The age of the oldest unacknowledged message needs a Lua script (`--script`): kombu keeps
  delivered messages in the `unacked` hash and their delivery time in the `unacked_index`
  sorted set, which no single read command turns into an age. The script reads the index
  only: which queue a message came from is written inside the message, and the exporter user
  may not read messages (they carry whole task bodies). So the age is the broker's, and its
  alert compares it with the longest any pool allows. The exporter runs scripts with EVAL and
  reports any script error as `redis_up 0`, so the script (and its alert) is enabled only when
  the exporter user's ACL grants `eval`; see `exporter_may_run_scripts`.
- Consumers are invisible to Redis as such: a worker is one of many BRPOP clients, and
  `_kombu.binding.*` sets outlive the workers that created them. The alert for a queue nobody
  consumes is therefore behavioural: tasks waited for longer than the pool's hard time limit
  and the queue never got shorter, which a live worker with prefetch 1 cannot allow.

With `broker.topology: sentinel` every broker pod has its sidecar and Prometheus scrapes each
pod as its own target (labelled `pod`): INFO's replication section tells each pod's role, the
master's replicas with their state and lag, and each replica's link, from which the Sentinel
alerts are made (`sentinel_rules`); alerts about tasks read the master's copy only.

Everything here is a pure function of the settings except the two custom resources, which the
broker component creates (with `parent=` itself) only with `metrics.prometheus_operator`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

import pulumi
import pulumi_kubernetes as k8s

from components import celery_config, naming, redis_config
from components.naming import labels, object_name
from components.pods import hardened_container
from components.settings import PoolSettings, StackSettings

CONTAINER = "redis-exporter"
COMPONENT = "redis-metrics"
PORT_NAME = "metrics"
METRICS_PATH = "/metrics"
HEALTH_PATH = "/health"
EXPORTER_USER = redis_config.EXPORTER_USER

PASSWORD_MAP_KEY = "exporter-password-map.json"  # noqa: S105 - a Secret key name, not a password
"""Key the broker adds to its users Secret: `exporter_password_map(...)`, a JSON object."""
PASSWORD_VOLUME = "exporter-auth"  # noqa: S105 - a volume name
PASSWORD_DIR = "/etc/redis-exporter-auth"  # noqa: S105 - a mount path
SCRIPT_VOLUME = "exporter-script"
SCRIPT_DIR = "/etc/redis-exporter-script"
SCRIPT_KEY = "celery-unacked.lua"
"""Key of the script in the ConfigMap the broker creates from `exporter_script_data(settings)`."""

MONITORING_API = "monitoring.coreos.com/v1"
KOMBU_UNACKED_INDEX = redis_config.KOMBU_UNACKED_INDEX
KOMBU_UNACKED = redis_config.KOMBU_UNACKED
OLDEST_UNACKED_KEY = "oldest_unacked_delivered_at"
QUEUE_DEPTH_RECORD = "queue:redis_key_size:sum"
"""Recorded series: a queue's waiting tasks, its priority lists summed, labelled `queue`."""
SECRET_FILE_MODE = redis_config.SECRET_FILE_MODE


# --- what the exporter reads -------------------------------------------------------------


def queue_list_keys(queue: str) -> list[str]:
    """Return the Redis lists kombu keeps for a queue: its name, then one per priority step."""
    return [name for _, name in celery_config.priority_lists(queue)]


def configured_queues(settings: StackSettings) -> list[str]:
    """Every queue some pool consumes, once each, in the order the stack file names them."""
    return list(dict.fromkeys(queue for pool in settings.workers.pools for queue in pool.queues))


def check_single_keys(settings: StackSettings) -> str:
    """`--check-single-keys`: every queue list plus kombu's unacked index, in the broker DB.

    The exporter URL-unescapes each key, so kombu's control-character separator travels as
    `%06%16` and the argument stays printable; commas and `=` delimit entries, so every key is
    percent-encoded whole.
    """
    keys = [key for queue in configured_queues(settings) for key in queue_list_keys(queue)]
    keys += [KOMBU_UNACKED_INDEX, KOMBU_UNACKED]
    return ",".join(f"db{settings.broker.broker_db}={quote(key, safe='')}" for key in keys)


def exporter_may_run_scripts() -> bool:
    """Whether the exporter user's ACL grants EVAL, which the exporter's `--script` needs.

    Without it every scrape would fail (the exporter turns a script error into `redis_up 0`),
    so the oldest-unacked script and its alert appear only while redis_config grants `eval`.
    """
    granted = {
        command for commands in redis_config.EXPORTER_COMMANDS.values() for command in commands
    }
    return "eval" in granted


def unacked_script(settings: StackSettings) -> str:
    """Lua for `--script`: how many messages are unacknowledged and the oldest one's delivery.

    `no-writes` lets Redis run it while the broker is full (OOM) and under a read-only user.
    It reads kombu's index only (delivery tags and times), never a message: the exporter user
    may not (messages carry whole task bodies), so the script cannot tell the message's queue.
    """
    return "\n".join(
        [
            "#!lua flags=no-writes",
            "-- Rendered by components/metrics.py; run by redis_exporter as the exporter user.",
            f"redis.call('SELECT', '{settings.broker.broker_db}')",
            f"local count = redis.call('ZCARD', '{KOMBU_UNACKED_INDEX}')",
            "local result = {'unacked_messages', tostring(count)}",
            f"local oldest = redis.call('ZRANGE', '{KOMBU_UNACKED_INDEX}', 0, 0, 'WITHSCORES')",
            "if #oldest == 2 then",
            f"  table.insert(result, '{OLDEST_UNACKED_KEY}')",
            "  table.insert(result, oldest[2])",
            "end",
            "return result",
            "",
        ]
    )


def exporter_script_data(settings: StackSettings) -> dict[str, str]:
    """ConfigMap data holding the script, or nothing when the exporter may not run scripts."""
    return {SCRIPT_KEY: unacked_script(settings)} if exporter_may_run_scripts() else {}


# --- the sidecar --------------------------------------------------------------------------


def exporter_redis_address(settings: StackSettings) -> str:
    """Where the sidecar finds Redis: the same pod, so localhost (rediss:// with TLS on)."""
    scheme = "rediss" if settings.tls.enabled else "redis"
    return f"{scheme}://localhost:{settings.broker.port}"


def exporter_password_map(
    settings: StackSettings, exporter_password: pulumi.Input[str]
) -> pulumi.Output[str]:
    """Return the `--redis.password-file` content: JSON mapping the Redis address to the password.

    redis_exporter's password file is such a map, not a bare password. Its lookup key changed
    between releases (with `--redis.user`, newer ones insert the user into the address), so
    both spellings are listed and any pinned release finds its entry.
    """
    return pulumi.Output.secret(
        pulumi.Output.from_input(exporter_password).apply(
            lambda password: password_map_json(settings, password)
        )
    )


def password_map_json(settings: StackSettings, password: str) -> str:
    """Return the password file's text for a resolved password (see `exporter_password_map`)."""
    address = exporter_redis_address(settings)
    with_user = address.replace("://", f"://{EXPORTER_USER}@", 1)
    return json.dumps({address: password, with_user: password}, sort_keys=True)


def scrape_timeout_seconds(settings: StackSettings) -> int:
    """Prometheus's scrape timeout: its usual 10 s, never longer than the scrape interval."""
    return min(10, settings.metrics.scrape_interval_seconds)


def exporter_args(settings: StackSettings, tls_ca_file: str | None = None) -> list[str]:
    """redis_exporter's flags; each one's reason is beside it. No credential is in argv."""
    timeout = max(1, scrape_timeout_seconds(settings) // 2)
    args = [
        f"--redis.addr={exporter_redis_address(settings)}",
        f"--redis.user={EXPORTER_USER}",
        f"--redis.password-file={PASSWORD_DIR}/{PASSWORD_MAP_KEY}",
        f"--web.listen-address=:{settings.metrics.exporter_port}",
        f"--web.telemetry-path={METRICS_PATH}",
        # A hung broker must become `redis_up 0` before Prometheus gives up on the scrape.
        f"--connection-timeout={timeout}s",
        f"--check-single-keys={check_single_keys(settings)}",
        # Queue lists are not strings; never GET a value into a label.
        "--disable-exporting-key-values",
        # The exporter user may not run CLIENT SETNAME or LATENCY HISTOGRAM: skip, not fail.
        "--set-client-name=false",
        "--exclude-latency-histogram-metrics",
        # Only the broker's numbers; the exporter's Go runtime is not what anyone pages on.
        "--redis-only-metrics",
    ]
    if exporter_may_run_scripts():
        args.append(f"--script={SCRIPT_DIR}/{SCRIPT_KEY}")
    if settings.tls.enabled:
        if tls_ca_file is None:
            message = (
                "exporter_args: TLS is enabled, pass tls_ca_file (the CA that signed the broker)"
            )
            raise ValueError(message)
        args.append(f"--tls-ca-cert-file={tls_ca_file}")
    return args


def _http_probe(settings: StackSettings, period: int, failures: int) -> k8s.core.v1.ProbeArgs:
    """`/health` answers while the exporter serves; it does not depend on Redis being up.

    On purpose: the exporter shares the broker's pod, so a readiness tied to Redis would only
    repeat the broker's own probe, and a broken exporter must not take the broker out of its
    Service for longer than a restart takes.
    """
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=HEALTH_PATH, port=PORT_NAME),
        period_seconds=period,
        timeout_seconds=3,
        failure_threshold=failures,
    )


def exporter_container(
    settings: StackSettings, tls_ca_file: str | None = None
) -> k8s.core.v1.ContainerArgs:
    """Return the redis_exporter sidecar for the broker pod.

    The pod must also carry `exporter_volumes(...)`; `tls_ca_file` is the path of a CA file
    already mounted into this container's pod when `tls.enabled` (the caller adds the mount).
    """
    metrics = settings.metrics
    mounts = [
        k8s.core.v1.VolumeMountArgs(name=PASSWORD_VOLUME, mount_path=PASSWORD_DIR, read_only=True)
    ]
    if exporter_may_run_scripts():
        mounts.append(
            k8s.core.v1.VolumeMountArgs(name=SCRIPT_VOLUME, mount_path=SCRIPT_DIR, read_only=True)
        )
    return hardened_container(
        name=CONTAINER,
        image=metrics.exporter_image,
        # The image's entrypoint is the binary; naming it keeps the spec self-describing.
        command=["/redis_exporter"],
        args=exporter_args(settings, tls_ca_file),
        resources=metrics.resources,
        volume_mounts=mounts,
        ports=[
            k8s.core.v1.ContainerPortArgs(
                name=PORT_NAME, container_port=metrics.exporter_port, protocol="TCP"
            )
        ],
        liveness_probe=_http_probe(settings, period=20, failures=3),
        readiness_probe=_http_probe(settings, period=10, failures=3),
    )


def exporter_volumes(
    users_secret_name: pulumi.Input[str], script_config_map_name: pulumi.Input[str] | None = None
) -> list[k8s.core.v1.VolumeArgs]:
    """Return the sidecar's volumes: only the password-map key of the users Secret, and the script.

    Projecting the one key keeps the Celery user's password out of the exporter's filesystem.
    `script_config_map_name` is the ConfigMap holding `exporter_script_data(settings)`; it is
    needed only while `exporter_may_run_scripts()`.
    """
    volumes = [
        k8s.core.v1.VolumeArgs(
            name=PASSWORD_VOLUME,
            secret=k8s.core.v1.SecretVolumeSourceArgs(
                secret_name=users_secret_name,
                items=[k8s.core.v1.KeyToPathArgs(key=PASSWORD_MAP_KEY, path=PASSWORD_MAP_KEY)],
                default_mode=SECRET_FILE_MODE,
            ),
        )
    ]
    if exporter_may_run_scripts():
        if script_config_map_name is None:
            message = (
                "exporter_volumes: the exporter user may run scripts; pass script_config_map_name"
            )
            raise ValueError(message)
        volumes.append(
            k8s.core.v1.VolumeArgs(
                name=SCRIPT_VOLUME,
                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=script_config_map_name),
            )
        )
    return volumes


# --- the Service Prometheus scrapes --------------------------------------------------------


def metrics_service_name(settings: StackSettings) -> str:
    """Return the metrics Service's name; the operator names the scrape job (`job`) after it."""
    return object_name(settings.name_prefix, "broker-metrics")


def metrics_labels(settings: StackSettings) -> dict[str, str]:
    """Labels of the metrics Service, ServiceMonitor and PrometheusRule, plus `rule_labels`."""
    return {**labels(settings, COMPONENT, "broker-metrics"), **settings.metrics.rule_labels}


def metrics_service_spec(
    settings: StackSettings, pod_selector: dict[str, str]
) -> k8s.core.v1.ServiceSpecArgs:
    """Return a ClusterIP Service on the exporter port only; `pod_selector` selects the broker pod.

    Separate from the clients' Service so the ServiceMonitor can select it by label and the
    scrape job gets a name of its own.
    """
    return k8s.core.v1.ServiceSpecArgs(
        type="ClusterIP",
        selector=pod_selector,
        ports=[
            k8s.core.v1.ServicePortArgs(
                name=PORT_NAME,
                port=settings.metrics.exporter_port,
                target_port=PORT_NAME,
                protocol="TCP",
            )
        ],
    )


def service_monitor_spec(settings: StackSettings) -> dict[str, Any]:
    """Return the ServiceMonitor spec: scrape this release's metrics Service in its namespace."""
    return {
        "selector": {"matchLabels": labels(settings, COMPONENT, "broker-metrics")},
        "namespaceSelector": {"matchNames": [settings.namespace]},
        "endpoints": [
            {
                "port": PORT_NAME,
                "path": METRICS_PATH,
                "interval": f"{settings.metrics.scrape_interval_seconds}s",
                "scrapeTimeout": f"{scrape_timeout_seconds(settings)}s",
            }
        ],
    }


# --- alert rules ---------------------------------------------------------------------------


def _selector(settings: StackSettings) -> str:
    """Label matchers that pick this release's exporter out of everything Prometheus scrapes."""
    matchers = {"job": metrics_service_name(settings), "namespace": settings.namespace}
    return ",".join(f'{name}="{value}"' for name, value in matchers.items())


def _alternatives(names: Iterable[str]) -> str:
    """Return an RE2 alternation matching exactly the given names (queue names may contain dots).

    Regexes go into PromQL as backtick strings, which PromQL passes to RE2 unescaped.
    """
    return "|".join(re.escape(name) for name in names)


def _duration(seconds: float) -> str:
    """Return a Prometheus duration in whole minutes, rounded up (range selectors need a unit)."""
    return f"{max(1, math.ceil(seconds / 60))}m"


PRIORITY_SUFFIX = r"(\x06\x16[0-9])?"
"""RE2 for kombu's priority list suffix (separator, then the step digit)."""


def oldest_unacked_threshold(pool: PoolSettings) -> int:
    """Seconds a delivered task may stay unacknowledged: explicit, or the pool's hard limit."""
    return pool.alert_oldest_unacked_seconds or pool.time_limit


def _rule(
    alert: str,
    expr: str,
    *,
    duration: str | None,
    severity: str,
    summary: str,
    runbook: str,
    extra_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One alerting rule with the annotations every alert carries (summary and runbook line)."""
    rule: dict[str, Any] = {"alert": alert, "expr": expr}
    if duration is not None:
        rule["for"] = duration
    rule["labels"] = {"severity": severity, **(extra_labels or {})}
    rule["annotations"] = {"summary": summary, "runbook": runbook}
    return rule


def _broker_down(settings: StackSettings) -> str:
    """Return when the broker pages: its one Redis, or with Sentinel every pod's, is silent.

    With `broker.topology: sentinel` one replica's Redis that stops answering leaves the
    queues working: CeleryBrokerReplicaDown warns about it, and a silent master is
    CeleryBrokerNoMaster once Sentinels fail to replace it. Paging for either would wake
    someone for what the topology exists to absorb.
    """
    sel = _selector(settings)
    if settings.broker.topology == "sentinel":
        return f"max by ({RELEASE_LABELS}) (redis_up{{{sel}}}) == 0 or absent(redis_up{{{sel}}})"
    return f"redis_up{{{sel}}} == 0 or absent(redis_up{{{sel}}})"


def broker_rules(settings: StackSettings) -> list[dict[str, Any]]:
    """Alerts about the broker: reachability, memory, connections, persistence, replication."""
    sel = _selector(settings)
    ratio = settings.metrics.memory_alert_ratio
    pending = _duration(3 * settings.metrics.scrape_interval_seconds)
    rules = [
        _rule(
            "CeleryBrokerDown",
            _broker_down(settings),
            duration=pending,
            severity="critical",
            summary="The Celery broker (Redis) does not answer, or its exporter is not scraped.",
            runbook=(
                "kubectl -n NS get pod -l app.kubernetes.io/name=redis; check the redis "
                "container's logs and probes, then the exporter's (wrong probe password, ACL)."
            ),
        ),
        _rule(
            "CeleryBrokerMemoryHigh",
            (
                f"redis_memory_used_bytes{{{sel}}} > {ratio} * redis_memory_max_bytes{{{sel}}}"
                f" and redis_memory_max_bytes{{{sel}}} > 0"
            ),
            duration="5m",
            severity="warning",
            summary=f"Broker memory above {ratio:.0%} of maxmemory; when full it refuses tasks.",
            runbook=(
                "Find the growing queue (queue:redis_key_size:sum); scale its workers or stop "
                "its producer; raise broker.resources.memory_limit if the backlog is legitimate. "
                "Threshold: metrics.memory_alert_ratio."
            ),
        ),
        _rule(
            "CeleryBrokerRejectingConnections",
            f"increase(redis_rejected_connections_total{{{sel}}}[5m]) > 0",
            duration=None,
            severity="warning",
            summary="The broker refused client connections (maxclients reached).",
            runbook=(
                "Count clients (INFO clients); look for a worker or producer leaking "
                "connections; lower pool replicas or concurrency, or raise maxclients."
            ),
        ),
    ]
    if exporter_may_run_scripts():
        rules.append(oldest_unacked_rule(settings))
    return rules + persistence_rules(settings) + sentinel_rules(settings)


def persistence_rules(settings: StackSettings) -> list[dict[str, Any]]:
    """Alerts that persistence silently stopped: AOF writes/rewrites, or RDB snapshots."""
    sel = _selector(settings)
    broker = settings.broker
    if broker.persistence == "rdb":
        return [
            _rule(
                "CeleryBrokerSnapshotFailing",
                f"redis_rdb_last_bgsave_status{{{sel}}} == 0",
                duration=None,
                severity="critical",
                summary="The last RDB snapshot failed; the broker refuses writes until one works.",
                runbook=(
                    "Check the redis log for the BGSAVE error; usually a full volume (grow "
                    "broker.storage.size) or a fork refused for memory (fork_headroom_ratio)."
                ),
            )
        ]
    if broker.persistent:
        # Both statuses are 1 when fine, so their product is 0 when either failed.
        return [
            _rule(
                "CeleryBrokerAofWriteFailing",
                f"redis_aof_last_write_status{{{sel}}}"
                f" * redis_aof_last_bgrewrite_status{{{sel}}} == 0",
                duration=None,
                severity="critical",
                summary="The broker cannot write or rewrite its AOF; acked tasks may be lost.",
                runbook=(
                    "Check the redis log for the AOF error; usually a full volume (grow "
                    "broker.storage.size) or a failed rewrite fork (fork_headroom_ratio)."
                ),
            )
        ]
    return []


def pool_rules(settings: StackSettings, pool: PoolSettings) -> list[dict[str, Any]]:
    """Alerts about one pool's queues: backlog, nobody consuming, a task held too long."""
    queues = _alternatives(pool.queues)
    depth = f"{QUEUE_DEPTH_RECORD}{{{_selector(settings)},queue=~`{queues}`}}"
    pool_label = {"pool": pool.name}
    # A live worker with prefetch 1 takes a new task at the latest when its longest one ends.
    window = _duration(pool.time_limit + 2 * settings.metrics.scrape_interval_seconds)
    rules = [
        _rule(
            "CeleryQueueBacklog",
            f"{depth} > {pool.alert_queue_depth}",
            duration="5m",
            severity="warning",
            summary=f"Over {pool.alert_queue_depth} tasks wait in a queue of pool {pool.name}.",
            runbook=(
                "Check the pool's workers (kubectl get deploy, logs) and autoscaler; add "
                "replicas or concurrency, or throttle producers; the broker memory alert follows. "
                "Threshold: workers.pools[].alert_queue_depth."
            ),
            extra_labels=pool_label,
        ),
        _rule(
            "CeleryQueueNotConsumed",
            (
                f"min_over_time({depth}[{window}]) > 0 and ({depth} offset {window}) > 0"
                f" and min_over_time(({depth} - {depth} offset 1m)[{window}:1m]) >= 0"
            ),
            duration=None,
            severity="critical",
            summary=(
                f"A queue of pool {pool.name} has had waiting tasks for {window} and never "
                "got shorter: no worker consumes it."
            ),
            runbook=(
                "Check the pool's pods exist and are ready, that KEDA/HPA scaled it up, and that "
                "`celery inspect active_queues` lists the queue; run `brokerctl check`."
            ),
            extra_labels=pool_label,
        ),
    ]
    return rules


def oldest_unacked_rule(settings: StackSettings) -> dict[str, Any]:
    """Return a delivered task unacknowledged for longer than any pool allows.

    Broker-wide: the exporter may not read the message that names its queue (see the module
    docstring), so the oldest delivery is compared with the longest pool threshold. A task
    older than that is held past every pool's limit, whichever pool runs it.
    """
    threshold = max(oldest_unacked_threshold(pool) for pool in settings.workers.pools)
    delivered = f'redis_script_values{{{_selector(settings)},key="{OLDEST_UNACKED_KEY}"}}'
    return _rule(
        "CeleryTaskUnackedTooLong",
        _on_masters(settings, f"time() - {delivered} > {threshold}"),
        duration=None,
        severity="warning",
        summary=(
            f"A task has been delivered but unacknowledged for over {threshold} s, longer than "
            f"any pool allows; at {settings.visibility_timeout} s Redis redelivers it (runs twice)."
        ),
        runbook=(
            "Find the worker holding it (`celery inspect active`/`reserved`); a hung task needs "
            "a time limit, a dead worker's tasks come back at the visibility timeout. "
            "Threshold: the longest workers.pools[].alert_oldest_unacked_seconds "
            "(default: time_limit)."
        ),
    )


# --- the Sentinel topology: N broker pods, each its own scrape target ----------------------

POD_LABELS = "namespace, job, pod"
"""Labels naming one scraped broker pod, to match one pod's series with one another.

The Prometheus Operator sets `pod` (and `instance`, the pod's IP and port) on every target of
the ServiceMonitor; a StatefulSet pod keeps its name when it comes back, its IP not always.
"""
POD_ONLY_LABELS = "pod, instance"
"""The target labels that differ between broker pods: dropped where a series must outlive a
failover (a queue is the same queue whichever pod is master)."""
RELEASE_LABELS = "namespace, job"
"""Labels shared by every broker pod of one release: what counting pods groups by."""
FAILOVER_WINDOW_MINUTES = 15
"""How long CeleryBrokerFailover keeps firing after the master role moved."""


def _replicated(settings: StackSettings) -> bool:
    """Whether the broker runs as N Redis pods with Sentinels (`broker.topology: sentinel`)."""
    return settings.broker.topology == "sentinel"


def _masters(settings: StackSettings) -> str:
    """One series per pod whose Redis reports role master (redis_exporter's `instance_info`)."""
    return f'redis_instance_info{{{_selector(settings)},role="master"}}'


def _on_masters(settings: StackSettings, expr: str) -> str:
    """Return `expr` kept only on pods that report role master; standalone: `expr` unchanged.

    A replica holds a copy of the master's lists, a stale one while its link is down, so
    alerts about tasks read the master's: a frozen copy would look like a queue nobody consumes.
    """
    if not _replicated(settings):
        return expr
    return f"({expr}) and on ({POD_LABELS}) {_masters(settings)}"


def _replication_pending(settings: StackSettings) -> str:
    """Return a minute, at least two scrapes: one late acknowledgement is not an alert."""
    return _duration(max(60, 2 * settings.metrics.scrape_interval_seconds))


def sentinel_rules(settings: StackSettings) -> list[dict[str, Any]]:
    """Alerts about replication and failover; only with `broker.topology: sentinel`.

    Every broker pod is its own scrape target, and the pod of a lost node is not scraped at
    all, so no rule waits for a lost pod's series: each reads what the survivors report (the
    master's count of replicas, a replica's own link) or counts pods per release.
    """
    if not _replicated(settings):
        return []
    sel = _selector(settings)
    sentinel = settings.broker.sentinel
    scrape = settings.metrics.scrape_interval_seconds
    masters = _masters(settings)
    expected = sentinel.replicas - 1
    window = f"{FAILOVER_WINDOW_MINUTES}m"
    brief = _replication_pending(settings)
    # Longer than Sentinels take to see a master down and promote a replica, so a failover
    # (or the handover of a pod's restart) that ends well never raises these.
    failover = _duration(
        (sentinel.down_after_ms + sentinel.failover_timeout_ms) / 1000 + 2 * scrape
    )
    ask_sentinel = (
        f"`SENTINEL get-master-addr-by-name {sentinel.master_name}` (redis-cli -p "
        f"{sentinel.port}, the client Secret's BROKER_SENTINEL_PASSWORD)"
    )
    replicas_following = (
        f"count by ({RELEASE_LABELS}) (count by ({RELEASE_LABELS}, master_host, master_port)"
        f" (redis_slave_info{{{sel}}}))"
    )
    rules = [
        _rule(
            "CeleryBrokerNoMaster",
            f"absent({masters})",
            duration=failover,
            severity="critical",
            summary=(
                "No broker pod reports the master role (or the master's exporter is not "
                "scraped): nothing can publish or fetch a task."
            ),
            runbook=(
                f"Ask a Sentinel: {ask_sentinel}; the sentinel containers' logs show +odown, "
                "failover-abort or no quorum (fewer than broker.sentinel.quorum Sentinels "
                "reachable); if they name a master, check that pod's redis and exporter."
            ),
        ),
        _rule(
            "CeleryBrokerSplitBrain",
            f"count by ({RELEASE_LABELS}) ({masters}) > 1 or {replicas_following} > 1",
            duration=failover,
            severity="critical",
            summary=(
                "More than one broker pod reports the master role, or replicas follow "
                "different masters: the Sentinels disagree, and tasks published to a master "
                "they demote are lost."
            ),
            runbook=(
                f"Ask every Sentinel: {ask_sentinel}, and compare; a master cut off from the "
                "others keeps its role until it sees them again (min_replicas_to_write stops "
                "its writes). If it lasts after the network heals, delete the master pod the "
                "Sentinels do not name: it comes back as a replica."
            ),
        ),
        _rule(
            "CeleryBrokerFailover",
            (
                f"count by ({RELEASE_LABELS}) (count by ({POD_LABELS})"
                f" (max_over_time({masters}[{window}]))) > 1"
            ),
            duration=None,
            severity="info",
            summary=(
                f"The master role moved to another broker pod within the last {window}: a "
                "failover, or the handover of the master pod's restart."
            ),
            runbook=(
                "Find why the old master left (kubectl get events, its node, the sentinel logs' "
                "+switch-master); clients follow through Sentinel. Publishes acknowledged in "
                "its last broker.sentinel.min_replicas_max_lag seconds may be missing."
            ),
        ),
        _rule(
            "CeleryBrokerReplicaDown",
            (
                f"redis_connected_slaves{{{sel}}} < {expected} and on ({POD_LABELS}) {masters}"
                f" or redis_up{{{sel}}} == 0"
            ),
            duration=brief,
            severity="warning",
            summary=(
                f"The master has fewer than {expected} replicas connected, or a broker pod's "
                "Redis does not answer its exporter: fewer copies of the queues, and fewer "
                "pods a failover can promote."
            ),
            runbook=(
                "kubectl -n NS get pod -l app.kubernetes.io/name=redis -o wide: a Pending "
                "replica needs a node of its own (broker.sentinel.spread), a crashing one its "
                "logs; INFO replication on the master lists the connected ones. "
                "Expected: broker.sentinel.replicas - 1. Labelled with a pod: that pod's "
                "Redis does not answer (its redis container's logs and probes)."
            ),
        ),
        _rule(
            "CeleryBrokerReplicationBroken",
            f"redis_master_link_up{{{sel}}} == 0",
            duration=brief,
            severity="warning",
            summary=(
                "A replica's link to its master is down: it copies nothing and cannot take over."
            ),
            runbook=(
                "The replica's redis log says why: the replicator user's password or ACL "
                "(NOAUTH, NOPERM), the master_host label not resolving, TLS, or a full resync "
                "failing again and again (output buffer, disk)."
            ),
        ),
    ]
    if sentinel.min_replicas_to_write > 0:
        rules.append(writes_refused_rule(settings))
    return rules


def writes_refused_rule(settings: StackSettings) -> dict[str, Any]:
    """Return the alert for a master that refuses writes because too few replicas keep up.

    Redis counts a replica towards `min-replicas-to-write` while it is online and acknowledged
    within `min-replicas-max-lag` seconds; INFO shows each replica's state and lag, which the
    exporter exports per replica, so the rule counts the same way. A master with no replica
    has no such series at all: its count is 0, taken from `redis_connected_slaves`.
    """
    sel = _selector(settings)
    sentinel = settings.broker.sentinel
    good = (
        "sum without (slave_ip, slave_port, slave_state) ("
        f'redis_connected_slave_lag_seconds{{{sel},slave_state="online"}}'
        f" <= bool {sentinel.min_replicas_max_lag})"
    )
    return _rule(
        "CeleryBrokerWritesRefused",
        (
            f"({good} or 0 * redis_connected_slaves{{{sel}}})"
            f" < {sentinel.min_replicas_to_write} and on ({POD_LABELS}) {_masters(settings)}"
        ),
        duration=_replication_pending(settings),
        severity="critical",
        summary=(
            "The master has fewer replicas acknowledging within "
            f"{sentinel.min_replicas_max_lag} s than min_replicas_to_write "
            f"({sentinel.min_replicas_to_write}): it answers NOREPLICAS to every publish."
        ),
        runbook=(
            "Bring replicas back (CeleryBrokerReplicaDown, CeleryBrokerReplicationBroken). "
            "In an emergency lower broker.sentinel.min_replicas_to_write (0: off) and pulumi "
            "up, knowing that a master cut off from its replicas then keeps taking tasks that "
            "a failover throws away."
        ),
    )


def recording_rules(settings: StackSettings) -> list[dict[str, Any]]:
    """Each queue's depth with its priority lists summed, as one series labelled `queue`."""
    sizes = (
        f'redis_key_size{{{_selector(settings)},db="db{settings.broker.broker_db}",'
        f"key=~`({_alternatives(configured_queues(settings))}){PRIORITY_SUFFIX}`}}"
    )
    depth = (
        f'sum without (key) (label_replace({sizes}, "queue", "$1", "key", '
        f"`(.+?){PRIORITY_SUFFIX}`))"
    )
    if _replicated(settings):
        # Replicas hold copies of the same lists (stale ones when their link is down): count
        # the master's, and drop the pod so a queue keeps one series across a failover.
        depth = f"max without ({POD_ONLY_LABELS}) ({_on_masters(settings, depth)})"
    return [{"record": QUEUE_DEPTH_RECORD, "expr": depth}]


def broker_alert_groups(settings: StackSettings) -> list[dict[str, Any]]:
    """Return the broker's own rule group: reachability, memory, persistence, replication."""
    release = naming.release(settings)
    return [{"name": f"{release}-celery-broker.alerts", "rules": broker_rules(settings)}]


def queue_record_groups(settings: StackSettings) -> list[dict[str, Any]]:
    """Return the pools' recording group: each queue's backlog, priority lists summed."""
    release = naming.release(settings)
    return [{"name": f"{release}-celery-queues.records", "rules": recording_rules(settings)}]


def queue_alert_groups(settings: StackSettings) -> list[dict[str, Any]]:
    """Return the pools' alert group: backlog, nobody consuming, per pool."""
    release = naming.release(settings)
    pool_alerts = [rule for pool in settings.workers.pools for rule in pool_rules(settings, pool)]
    return [{"name": f"{release}-celery-queues.alerts", "rules": pool_alerts}]


def rule_file(
    record_groups: Sequence[dict[str, Any]], alert_groups: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Return a PrometheusRule spec, recording groups first (alerts read what they record)."""
    return {"groups": [*record_groups, *alert_groups]}


def alert_rules(settings: StackSettings) -> dict[str, Any]:
    """Return the stack's whole PrometheusRule spec, also a valid promtool rule file.

    The same groups the components contribute (broker: its alerts; worker pools: the queue
    records and alerts), composed from settings alone for promtool tests and the docs.
    """
    return rule_file(
        queue_record_groups(settings),
        [*broker_alert_groups(settings), *queue_alert_groups(settings)],
    )


# --- the custom resources ------------------------------------------------------------------


def _metadata(settings: StackSettings, suffix: str) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(
        name=object_name(settings.name_prefix, suffix),
        namespace=settings.namespace,
        labels=metrics_labels(settings),
    )


def _operator_resource(
    settings: StackSettings,
    resource_name: str,
    opts: pulumi.ResourceOptions,
    *,
    kind: str,
    suffix: str,
    spec: dict[str, Any],
) -> k8s.apiextensions.CustomResource | None:
    """Create one Prometheus Operator object, only with `metrics.prometheus_operator` (CRDs)."""
    if not settings.metrics.prometheus_operator:
        return None
    return k8s.apiextensions.CustomResource(
        resource_name,
        api_version=MONITORING_API,
        kind=kind,
        metadata=_metadata(settings, suffix),
        spec=spec,
        opts=opts,
    )


def service_monitor(
    settings: StackSettings, resource_name: str, opts: pulumi.ResourceOptions
) -> k8s.apiextensions.CustomResource | None:
    """Return the ServiceMonitor, only with `metrics.prometheus_operator` (its CRD must exist)."""
    return _operator_resource(
        settings,
        resource_name,
        opts,
        kind="ServiceMonitor",
        suffix="broker-metrics",
        spec=service_monitor_spec(settings),
    )


def prometheus_rule(
    settings: StackSettings,
    resource_name: str,
    opts: pulumi.ResourceOptions,
    spec: dict[str, Any],
) -> k8s.apiextensions.CustomResource | None:
    """Return the stack's PrometheusRule holding `spec` (see `rule_file`), only with the operator.

    One object for the whole stack, named as when the broker alone created it: Prometheus
    and its rule selectors see the same PrometheusRule whoever contributes the groups.
    """
    return _operator_resource(
        settings,
        resource_name,
        opts,
        kind="PrometheusRule",
        suffix="broker-alerts",
        spec=spec,
    )
