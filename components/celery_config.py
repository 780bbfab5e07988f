"""What a Celery worker (or beat) must know, rendered as pure data: command, settings, probes.

The user's image is never changed. Everything reaches the worker through one small Python
module shipped in a ConfigMap and put first on PYTHONPATH (`celery -A <wiring module>`):

* it imports the user's app exactly as `celery -A <pool.app>` would (celery.app.utils.find_app);
* it applies the platform's settings with `app.conf.update(...)`. Updates made before the app is
  configured land in Celery's "pre-configuration", which wins over `config_from_object(...)`
  (read `Celery._load_config`: `detect_settings(loader.conf, self._preconf)`), and updates
  after configuration change the live settings; either way they win over the app's own values.
  CELERY_CONFIG_MODULE would not do: Celery ignores it once the app calls config_from_object;
* it adds a consumer bootstep that maintains the health files the pod's probes read, judged on
  the consuming connection itself (see `_RUNTIME`'s `watch_consuming`), and one that caps the
  wait between attempts to reach a lost broker (`RECONNECT_INTERVAL_MAX`);
* settings a pool's Celery may not know yet (`CelerySetting.since`) are applied only when the
  running Celery is at least that version: the image, not the stack, decides the Celery version.

The broker URL and result backend are not here: Celery reads CELERY_BROKER_URL and
CELERY_RESULT_BACKEND from the environment before any configuration (celery/app/utils.py), and
the pod takes them from the broker's Secret. Broker URL query parameters are not transport
options, so transport options are settings here, never URL parameters.
"""

from __future__ import annotations

import pprint
from collections.abc import Mapping
from typing import NamedTuple

from brokerctl.deletioncost import LOAD_KEY_PREFIX
from components.endpoint import SENTINEL_PASSWORD_KEY
from components.settings import PoolSettings, StackSettings

WIRING_MODULE = "celery_platform_wiring"
"""Module name `celery -A` loads; unlikely to shadow anything in a user's image."""

WIRING_FILE = f"{WIRING_MODULE}.py"
CONFIG_DIR = "/etc/celery-platform"
"""Where the ConfigMap holding the wiring module is mounted (read-only)."""

HEALTH_DIR = "/tmp/celery-health"  # noqa: S108 - the pod's private emptyDir, not the host's /tmp
ALIVE_FILE = f"{HEALTH_DIR}/alive"
"""Touched by the heartbeat while the consumer runs and its own connection keeps consuming."""
READY_FILE = f"{HEALTH_DIR}/ready"
"""Present while the consumer consumes; removed when it stops, restarts or its connection stalls."""

BEAT_SCHEDULE_FILE = "/tmp/celerybeat-schedule"  # noqa: S108 - the root filesystem is read-only

REMAP_SIGTERM = "SIGQUIT"
"""Kubernetes stops a pod with SIGTERM, which Celery treats as a *warm* shutdown: it waits for
every running task, however long, and SIGKILL at the end of the grace period leaves acks_late
messages hidden until the visibility timeout. Remapped to SIGQUIT, SIGTERM starts the *cold*
shutdown instead, which (Celery 5.5+) first waits `worker_soft_shutdown_timeout` for running
tasks and then cancels the rest and hands their messages back to the queue at once."""

BROKER_SOCKET_TIMEOUT = 30
"""Seconds a synchronous broker command (publish, ack, restore) may wait: a broker that vanished
without closing the connection must not hang the worker. Generous for 16 MiB messages."""
BROKER_CONNECT_TIMEOUT = 5
BROKER_HEALTH_CHECK_INTERVAL = 25
"""kombu's default, stated: redis-py PINGs idle connections, kombu 5.7 also checks BRPOP's."""
SENTINEL_SOCKET_TIMEOUT = 1
"""Seconds a client waits for one Sentinel (connect, then reply) before asking the next: a
Sentinel answers from memory in milliseconds, and one on a lost node must cost little, as
every reconnect after a failover asks them in turn."""
SENTINEL_MASTER_CONNECT_TIMEOUT = 2
"""Seconds a client behind Sentinel waits for a TCP connection to the master: in a cluster it
takes milliseconds, and an attempt at a master on a lost node fails this soon, so the next
attempt (after Sentinels promoted a replica) comes sooner. TLS handshakes are not included."""

RECONNECT_INTERVAL_MAX = 5
"""Most seconds a worker waits between two attempts to reach a lost broker.

kombu's `Connection.ensure_connection` waits 2, 4, 6 ... then 30 s between attempts, and Celery
passes no intervals and has no setting for them: a worker could idle up to 30 s after the broker
is back. Capped at 5 s (1, 2, 3, 4, 5, 5 ...), a pool consumes again within about 5 s of the
broker being ready, for one connection attempt per pod every 5 s while it is down."""

CONSUMER_REPLY_GRACE = 5
"""Seconds the consuming connection may go without a BRPOP reply before the worker is stuck.

kombu sends BRPOP with a 1 s server-side timeout, so a live connection answers (a message or a
nil) every second; 5 s leaves room for a busy event loop and a large message being read."""


def consumer_stall_seconds(stale_seconds: int) -> int:
    """Seconds without a BRPOP reply (while a task slot is free) after which beats stop.

    At least one heartbeat interval, so each beat judges what happened since the previous one.
    """
    return max(heartbeat_seconds(stale_seconds), CONSUMER_REPLY_GRACE)


class CelerySetting(NamedTuple):
    """One Celery setting, its value, and why the platform sets it (rendered as a comment).

    `since` is the first Celery (major, minor) that knows the setting: older workers skip it
    (and log which), so one rendered module serves every Celery a pool's image may carry.
    """

    name: str
    value: object
    reason: str
    since: tuple[int, int] | None = None


KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
"""kombu.transport.redis.PRIORITY_STEPS: a queue is one Redis list per step."""
KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
"""kombu's separator between a queue name and its priority step (`celery\\x06\\x163`)."""


def priority_lists(queue: str) -> list[tuple[int, str]]:
    """Return the Redis lists kombu keeps for one queue: the plain name, then one per step."""
    return [
        (step, queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEPARATOR}{step}")
        for step in KOMBU_PRIORITY_STEPS
    ]


def heartbeat_seconds(stale_seconds: int) -> int:
    """How often the heartbeat runs: four chances per liveness window, so one late beat is fine."""
    return max(stale_seconds // 4, 1)


def liveness_window_seconds(pool: PoolSettings) -> int:
    """Heartbeat age at which the worker counts as stuck.

    The `solo` pool runs tasks inside the event loop that drives the heartbeat, so a task
    legitimately silences it for up to `time_limit`: the window must cover that.
    """
    if pool.pool == "solo":
        return max(
            pool.liveness_stale_seconds,
            pool.time_limit + 2 * heartbeat_seconds(pool.liveness_stale_seconds),
        )
    return pool.liveness_stale_seconds


def _fresh_heartbeat(window_seconds: int) -> str:
    age = f'$(( $(date +%s) - $(stat -c %Y "{ALIVE_FILE}") ))'
    return f'test -f "{ALIVE_FILE}" && test {age} -lt {window_seconds}'


def liveness_command(window_seconds: int) -> list[str]:
    """Exec probe: the heartbeat file exists and is younger than the window (no Python, no I/O)."""
    return ["sh", "-c", _fresh_heartbeat(window_seconds)]


def readiness_command(window_seconds: int) -> list[str]:
    """Exec probe: the consumer is connected and its event loop still beats.

    The `ready` file goes when the consumer stops or a PING fails; the heartbeat's age covers
    an event loop blocked on a silent broker, where nothing runs to remove the file.
    """
    return ["sh", "-c", f'test -f "{READY_FILE}" && {_fresh_heartbeat(window_seconds)}']


def broker_transport_options(settings: StackSettings) -> dict[str, object]:
    """Return Redis transport options, identical for every pool (all share one unacked hash)."""
    return {
        # Redelivery after this many seconds unacknowledged; derived from the longest time
        # limit plus ETA of any pool: every consumer restores *every* pool's stale messages.
        "visibility_timeout": settings.visibility_timeout,
        # A vanished broker (failover, NAT timeout) must not hang publish/ack forever.
        "socket_timeout": BROKER_SOCKET_TIMEOUT,
        "socket_connect_timeout": BROKER_CONNECT_TIMEOUT,
        # Keepalives let the kernel notice a dead peer on idle connections.
        "socket_keepalive": True,
        # PING idle connections before use; kombu 5.7 also drops a BRPOP that never answers.
        "health_check_interval": BROKER_HEALTH_CHECK_INTERVAL,
    }


def client_settings(
    settings: StackSettings, pool: PoolSettings, transport_options: Mapping[str, object]
) -> list[CelerySetting]:
    """Return what every Celery process of the stack needs to talk to the broker and backend.

    `transport_options` come from the broker's endpoint (components/endpoint.py): the broker's
    topology decides them, on top of `broker_transport_options`.
    """
    return [
        CelerySetting(
            "broker_transport_options",
            dict(transport_options),
            "Redis transport options (not URL parameters: kombu ignores those)",
        ),
        CelerySetting(
            "broker_connection_retry_on_startup",
            True,
            "a broker that is still starting is retried, not fatal (and no 5.3+ warning)",
        ),
        CelerySetting("broker_connection_retry", True, "reconnect after losing the broker"),
        CelerySetting(
            "broker_connection_max_retries",
            None,
            "retry forever: the liveness probe, not a retry budget, decides when to restart",
        ),
        CelerySetting(
            "broker_connection_timeout", BROKER_CONNECT_TIMEOUT, "bounded connect to the broker"
        ),
        CelerySetting(
            "result_expires", pool.result_expires, "results do not fill the broker's Redis"
        ),
        CelerySetting(
            "result_backend_always_retry",
            True,
            "a broker blip while storing a result is retried instead of failing the task",
        ),
        CelerySetting("result_backend_max_retries", 10, "bounded: a long outage still surfaces"),
        CelerySetting(
            "redis_socket_timeout", BROKER_SOCKET_TIMEOUT, "result reads/writes never hang forever"
        ),
        CelerySetting(
            "redis_socket_connect_timeout",
            SENTINEL_MASTER_CONNECT_TIMEOUT
            if settings.broker.topology == "sentinel"
            else BROKER_CONNECT_TIMEOUT,
            "bounded connect to the backend",
        ),
        CelerySetting("redis_socket_keepalive", True, "notice a dead backend connection"),
        CelerySetting(
            "redis_backend_health_check_interval",
            BROKER_HEALTH_CHECK_INTERVAL,
            "PING an idle backend connection before reusing it",
        ),
        CelerySetting("redis_retry_on_timeout", True, "one retry of a timed-out backend command"),
    ]


def worker_settings(
    settings: StackSettings, pool: PoolSettings, transport_options: Mapping[str, object]
) -> list[CelerySetting]:
    """Everything a pool's workers must run with, each with the reason it is set."""
    optional = [
        CelerySetting(
            "worker_max_tasks_per_child",
            pool.max_tasks_per_child,
            "recycle a pool process after this many tasks (bounds leaks)",
        ),
        CelerySetting(
            "worker_max_memory_per_child",
            pool.max_memory_per_child_kib,
            "recycle a pool process above this RSS in KiB, before the container limit kills all",
        ),
    ]
    return [
        *client_settings(settings, pool, transport_options),
        CelerySetting(
            "task_acks_late", pool.acks_late, "ack after the task ran: a crash redelivers it"
        ),
        CelerySetting(
            "task_reject_on_worker_lost",
            pool.reject_on_worker_lost,
            "a task whose process died (OOM, cancelled on shutdown) is requeued, not acked",
        ),
        CelerySetting(
            "task_acks_on_failure_or_timeout",
            True,
            "a task that raised or hit its time limit is done: redelivering a poison task loops",
        ),
        CelerySetting(
            "worker_prefetch_multiplier",
            pool.prefetch_multiplier,
            "messages reserved per process; 1 keeps long tasks from queueing behind each other",
        ),
        CelerySetting(
            "task_soft_time_limit", pool.soft_time_limit, "SoftTimeLimitExceeded: clean up"
        ),
        CelerySetting(
            "task_time_limit",
            pool.time_limit,
            "hard kill; with max_eta_seconds it bounds visibility_timeout",
        ),
        *[setting for setting in optional if setting.value is not None],
        CelerySetting(
            "worker_soft_shutdown_timeout",
            float(pool.soft_shutdown_seconds),
            "5.5+: on SIGTERM (remapped to a cold shutdown) running tasks get this long, then "
            "are cancelled and handed back; terminationGracePeriodSeconds covers it",
            since=(5, 5),
        ),
        CelerySetting(
            "worker_enable_soft_shutdown_on_idle",
            pool.max_eta_seconds > 0,
            "wait the soft shutdown even when idle only if ETA tasks may be reserved: gives "
            "those coming due a chance to run before they are handed back",
            since=(5, 5),
        ),
        *_disable_prefetch(pool),
        CelerySetting(
            "worker_cancel_long_running_tasks_on_connection_loss",
            False,
            "Redis keeps unacked messages server-side, so a task can still ack after a "
            "reconnect; cancelling would redo finished work",
        ),
    ]


def _disable_prefetch(pool: PoolSettings) -> list[CelerySetting]:
    """Celery 5.6+ `worker_disable_prefetch` for pools that ask for one task per process.

    Celery's prefetch counts unacknowledged messages. An early-acked task is acknowledged once a
    process starts it, so with prefetch_multiplier 1 a busy pod still reserves one more message
    per process, which waits there, however long the running tasks take, while other pods idle.
    With the setting the consumer stops fetching while every process holds a task. An acks_late
    pool already holds at most one message per process: there it changes nothing. A pool with a
    larger multiplier asked for prefetching, so it does not get the setting.
    """
    if pool.prefetch_multiplier != 1:
        return []
    return [
        CelerySetting(
            "worker_disable_prefetch",
            True,
            "5.6+: fetch only while a process is free, so no task waits in a busy pod "
            "(early-acked tasks would otherwise reserve one more per process)",
            since=(5, 6),
        )
    ]


def beat_settings(
    settings: StackSettings, pool: PoolSettings, transport_options: Mapping[str, object]
) -> list[CelerySetting]:
    """Return beat's settings: the client ones plus a bounded loop for its heartbeat."""
    stale = settings.workers.beat.liveness_stale_seconds
    return [
        *client_settings(settings, pool, transport_options),
        CelerySetting(
            "beat_max_loop_interval",
            heartbeat_seconds(stale),
            "beat ticks (and touches its heartbeat) at least this often",
        ),
    ]


def worker_command(settings: StackSettings, pool: PoolSettings) -> list[str]:
    """Return the worker command: the wiring module as the app, the pool's shape as flags."""
    del settings  # the command depends on the pool only; the signature matches the module's
    return [
        pool.celery_bin,
        *("-A", WIRING_MODULE, "worker", "--loglevel", "INFO"),
        *("-Q", ",".join(pool.queues)),  # only this pool's queues
        *("-c", str(pool.concurrency), "-P", pool.pool),
        *("-n", f"{pool.name}@%h"),  # %h is the pod name: unique, and names the pool
        "--without-gossip",  # no subscription to every other worker's events: less broker load
        "--without-mingle",  # no start-up round trip to all workers: faster, quieter scale-out
    ]


def beat_command(settings: StackSettings) -> list[str]:
    """Return the beat container's command; its schedule lives in the writable /tmp."""
    pool = beat_pool(settings)
    return [
        pool.celery_bin,
        "-A",
        WIRING_MODULE,
        "beat",
        "--loglevel",
        "INFO",
        "--schedule",
        BEAT_SCHEDULE_FILE,
    ]


def beat_pool(settings: StackSettings) -> PoolSettings:
    """Return the pool beat takes its image, interpreter and app from (the first, or overrides)."""
    first = settings.workers.pools[0]
    beat = settings.workers.beat
    overrides = {"image": beat.image, "app": beat.app}
    return first.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def render_settings(rendered: list[CelerySetting]) -> str:
    """Render the SETTINGS literal of the wiring module, one line per setting with its reason.

    MINIMUM_CELERY follows: each setting an older Celery does not know, with its first version.
    """
    lines = ["SETTINGS = {"]
    for setting in rendered:
        value = pprint.pformat(setting.value, width=200, sort_dicts=True)
        lines.append(f"    {setting.name!r}: {value},  # {setting.reason}")
    lines.append("}")
    minimum = {setting.name: setting.since for setting in rendered if setting.since is not None}
    lines.append(f"MINIMUM_CELERY = {pprint.pformat(minimum, width=100, sort_dicts=True)}")
    return "\n".join(lines)


def celery_wiring_module(
    settings: StackSettings, pool: PoolSettings, transport_options: Mapping[str, object]
) -> str:
    """Render the wiring module of one worker pool, as the ConfigMap carries it."""
    module = _module(
        title=f"worker pool {pool.name!r}",
        role="worker",
        app=pool.app,
        rendered=worker_settings(settings, pool, transport_options),
        heartbeat=heartbeat_seconds(pool.liveness_stale_seconds),
        consumer_stall=consumer_stall_seconds(pool.liveness_stale_seconds),
    )
    return module + task_load_runtime(pool)


def beat_wiring_module(settings: StackSettings, transport_options: Mapping[str, object]) -> str:
    """Render the wiring module of the beat scheduler."""
    pool = beat_pool(settings)
    stale = settings.workers.beat.liveness_stale_seconds
    return _module(
        title="celery beat",
        role="beat",
        app=pool.app,
        rendered=beat_settings(settings, pool, transport_options),
        heartbeat=heartbeat_seconds(stale),
        consumer_stall=consumer_stall_seconds(stale),
    )


def _module(
    *,
    title: str,
    role: str,
    app: str,
    rendered: list[CelerySetting],
    heartbeat: int,
    consumer_stall: int,
) -> str:
    header = (
        f'"""Celery wiring of {title}, rendered by celery-redis (components/celery_config.py).\n\n'
        "Do not edit: imports the application's app, applies the platform's settings over the\n"
        'app\'s own, and keeps the health files the pod\'s probes read."""\n'
    )
    constants = "\n".join(
        [
            f"ROLE = {role!r}",
            f"APP = {app!r}",
            f"HEALTH_DIR = {HEALTH_DIR!r}",
            f"HEARTBEAT_SECONDS = {heartbeat!r}",
            f"CONSUMER_STALL_SECONDS = {consumer_stall!r}",
            f"RECONNECT_INTERVAL_MAX = {RECONNECT_INTERVAL_MAX!r}",
        ]
    )
    module = f"{header}\n{constants}\n\n{render_settings(rendered)}\n{_RUNTIME}"
    sentinel = any(
        setting.name == "broker_transport_options" and "master_name" in setting.value
        for setting in rendered
    )
    return f"{module}{_SENTINEL_RUNTIME}" if sentinel else module


_RUNTIME = '''
import os
import queue
import time

import celery
from celery import bootsteps
from celery.app.utils import find_app
from celery.utils.log import get_logger
from celery.worker import state as worker_state

logger = get_logger(__name__)
alive_file = os.path.join(HEALTH_DIR, "alive")
ready_file = os.path.join(HEALTH_DIR, "ready")
CELERY_SERIES = tuple(celery.VERSION[:2])
NOT_APPLIED = sorted(name for name, since in MINIMUM_CELERY.items() if CELERY_SERIES < since)
"""Settings this Celery does not know yet: left out (and logged) rather than silently ignored."""


def touch(path):
    with open(path, "a"):
        os.utime(path)


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def watch_consuming(channel):
    """Stamp `channel.platform_consumed_at` whenever its consuming connection answers a BRPOP.

    The consumer is judged on the connection that consumes, not on a fresh one: a consumer
    whose own socket went silent (a NAT or proxy that dropped that one flow, a reply lost on a
    half-open connection) still has a broker that answers any new connection, and its event
    loop still runs timers, so neither a PING nor the timer alone can tell. kombu's Redis
    channel sends BRPOP with a 1 s server-side timeout and reads each reply, a message or a
    nil, in `channel.handlers["BRPOP"]` (`_brpop_read`), from the event loop
    (`MultiChannelPoller.on_readable`) and from `drain_events`, in kombu 5.5, 5.6 and 5.7
    alike: a wrapper there sees every round trip of the consuming path and nothing else. Only
    this channel's handler is wrapped (the task consumer's), never kombu's class, so producers,
    the remote-control channel and anything else in the process are untouched. Returns False
    when the channel has no such handler; the heartbeat then only proves the event loop runs.
    """
    if getattr(channel, "platform_consumed_at", None) is not None:
        return True
    handlers = getattr(channel, "handlers", None)
    if not isinstance(handlers, dict) or "BRPOP" not in handlers:
        return False
    read = handlers["BRPOP"]

    def read_and_stamp(*args, **kwargs):
        try:
            delivered = read(*args, **kwargs)
        except queue.Empty:  # the BRPOP timed out server-side: the path works, nothing queued
            channel.platform_consumed_at = time.monotonic()
            raise
        channel.platform_consumed_at = time.monotonic()
        return delivered

    channel.platform_consumed_at = time.monotonic()
    handlers["BRPOP"] = read_and_stamp
    return True


class HealthFiles(bootsteps.StartStopStep):
    """Keeps `ready` and touches `alive` while the consumer's own connection keeps consuming.

    Started after the task consumer, stopped whenever the consumer stops or restarts (lost
    broker), so a stuck, stopped or cut-off worker stops refreshing `alive`. Each beat runs in
    the consumer's event loop and asks whether the consuming connection answered a BRPOP in
    the last CONSUMER_STALL_SECONDS. A worker whose every slot holds a task sends no BRPOP
    (kombu stops polling until one frees): busy is not stuck, so that counts as consuming.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.timer_entry = None
        self.stalled = False

    announced = False  # the settings left out are logged at the first start, not each restart

    def start(self, parent):
        if NOT_APPLIED and not HealthFiles.announced:
            logger.warning("Celery %s.%s does not know %s yet", *CELERY_SERIES, NOT_APPLIED)
            HealthFiles.announced = True
        channel = getattr(parent.task_consumer, "channel", None)
        if channel is not None and not watch_consuming(channel):
            logger.warning("health: cannot watch the consuming connection; event loop only")
        self.beat(parent)
        self.timer_entry = parent.timer.call_repeatedly(
            HEARTBEAT_SECONDS, self.beat, (parent,), priority=10
        )

    def consuming(self, parent):
        channel = getattr(parent.task_consumer, "channel", None)
        consumed_at = getattr(channel, "platform_consumed_at", None)
        if consumed_at is None:
            return channel is not None  # not watchable: the beat itself proves the loop runs
        now = time.monotonic()
        if worker_state.reserved_requests and not channel.qos.can_consume():
            channel.platform_consumed_at = consumed_at = now  # busy: no BRPOP is due
        silent = now - consumed_at
        limit = max(CONSUMER_STALL_SECONDS, (getattr(channel, "brpop_timeout", 1) or 1) + 4)
        if silent < limit:
            self.stalled = False
            return True
        if not self.stalled:
            logger.warning("health: no BRPOP reply on the consuming connection for %.0f s", silent)
        self.stalled = True
        return False

    def beat(self, parent):
        if self.consuming(parent):
            touch(alive_file)
            touch(ready_file)
        else:
            remove(ready_file)

    def stop(self, parent):
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None
        remove(ready_file)

    shutdown = stop


class PromptReconnect(bootsteps.Step):
    """Caps the wait between attempts to reach a lost broker at RECONNECT_INTERVAL_MAX seconds.

    Celery's consumer reconnects through `Consumer.ensure_connected`, which calls kombu's
    `Connection.ensure_connection` with kombu's default intervals (2, 4, 6 ... 30 s) in every
    version from 5.5 to 5.7, and has no setting for them. Wrapping that method of this one
    consumer passes shorter intervals and leaves Celery's retry loop, its log lines and its
    shutdown checks as they are. Applied when the consumer is built, before it connects.
    """

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        ensure_connected = parent.ensure_connected

        def ensure_connected_promptly(connection):
            ensure_connection = connection.ensure_connection

            def ensure_connection_promptly(*args, **options):
                options.update(
                    interval_start=1, interval_step=1, interval_max=RECONNECT_INTERVAL_MAX
                )
                return ensure_connection(*args, **options)

            connection.ensure_connection = ensure_connection_promptly
            return ensure_connected(connection)

        parent.ensure_connected = ensure_connected_promptly


def heartbeat_scheduler(app):
    """The configured beat scheduler, touching the health files on every tick."""
    from kombu.utils.imports import symbol_by_name

    default = {"default": "celery.beat:PersistentScheduler"}
    base = symbol_by_name(app.conf.beat_scheduler, aliases=default)

    class HeartbeatScheduler(base):
        def tick(self, *args, **kwargs):
            interval = super().tick(*args, **kwargs)
            touch(alive_file)
            touch(ready_file)
            return interval

    return HeartbeatScheduler


os.makedirs(HEALTH_DIR, exist_ok=True)
remove(alive_file)  # /tmp outlives a container restart: never trust an earlier process's files
remove(ready_file)

app = find_app(APP)
app.conf.update({name: value for name, value in SETTINGS.items() if name not in NOT_APPLIED})
if ROLE == "worker":
    app.steps["consumer"].add(HealthFiles)
    app.steps["consumer"].add(PromptReconnect)
else:
    app.conf.beat_scheduler = heartbeat_scheduler(app)
'''

SENTINEL_PASSWORD_ENV = SENTINEL_PASSWORD_KEY
"""Where a replicated broker's clients find Sentinel's password (from the client Secret)."""

SENTINEL_DEAD_PEER_SECONDS = 5
"""Seconds after which a client's kernel drops a connection to a master that went silent (its
node lost, or cut off): TCP keepalive probes on idle connections (a consumer waiting in BRPOP)
and TCP_USER_TIMEOUT on unacknowledged writes (a publish). No Celery or kombu version notices
such a peer sooner by itself: kombu 5.7 drops an overdue BRPOP after brpop_timeout +
health_check_interval (26 to 51 s), earlier versions never, and a publish waits out
socket_timeout. Set about down_after_ms: the client reconnects as Sentinels promote."""

_SENTINEL_RUNTIME = f'''

def dead_peer_options(seconds={SENTINEL_DEAD_PEER_SECONDS}):
    """TCP options (redis-py's socket_keepalive_options) that make the kernel drop a
    connection whose peer went silent within about `seconds`: keepalive probes on an idle
    connection, and a bound on how long written data may stay unacknowledged."""
    import socket

    wanted = (
        ("TCP_KEEPIDLE", max(1, seconds - 3)),
        ("TCP_KEEPINTVL", 1),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", seconds * 1000),
    )
    return {{getattr(socket, name): value for name, value in wanted if hasattr(socket, name)}}


def tune_sentinel_clients():
    """Make every redis-py Sentinel client of the process fit for a lost node.

    kombu (the broker) and Celery's result backend each build a new redis-py Sentinel
    client, Sentinels in URL order, for every connection pool they open (a worker opens
    about ten after a failover: consumer, events, remote control, results, ...), and redis-py
    remembers which Sentinel answered only within one client: a Sentinel on a lost node
    would cost each of them a connect timeout in turn. The subclass asks first the Sentinel
    that answered last in this process (keyed by the set of Sentinels, so another Sentinel
    deployment the app talks to is not affected), and gives the master connections of either
    dead_peer_options (Celery's backend has no setting for TCP options). Installed as
    redis.sentinel.Sentinel, which kombu and Celery look up at each use."""
    from redis import sentinel as redis_sentinel

    base = redis_sentinel.Sentinel
    if getattr(base, "tuned_for_lost_nodes", False):
        return
    answered = {{}}

    def address(client):
        kwargs = client.connection_pool.connection_kwargs
        return kwargs.get("host"), kwargs.get("port")

    class TunedSentinel(base):
        tuned_for_lost_nodes = True

        def __init__(self, sentinels, *args, **connection_kwargs):
            sentinels = list(sentinels)
            last = answered.get(frozenset(sentinels))
            if last in sentinels:
                sentinels.remove(last)
                sentinels.insert(0, last)
            if not connection_kwargs.get("socket_keepalive_options"):
                connection_kwargs["socket_keepalive"] = True
                connection_kwargs["socket_keepalive_options"] = dead_peer_options()
            super().__init__(sentinels, *args, **connection_kwargs)

        def discover_master(self, service_name):
            found = super().discover_master(service_name)
            key = frozenset(address(client) for client in self.sentinels)
            answered[key] = address(self.sentinels[0])  # redis-py moved it first
            return found

    redis_sentinel.Sentinel = TunedSentinel


def refusals_as_connection_loss():
    """Raise a master's NOREPLICAS and UNBLOCKED as a lost connection, not a command error.

    A master with fewer good replicas than min-replicas-to-write refuses every write, and
    BRPOP (which pops) is one: the new master right after a failover, until a replica
    attaches, or any master whose replicas are all gone. A master turned into a replica
    (a handover, or Sentinel converting a master that comes back) ends every blocked BRPOP
    with UNBLOCKED. redis-py raises a bare ResponseError for both, which Celery's consumer
    treats as unrecoverable: the worker exits. As a ConnectionError (what redis-py already
    makes of READONLY from a demoted master), kombu reconnects through Sentinel and consumes
    from the master of the moment, and a publish is retried: a refused write did not
    happen, so retrying it duplicates nothing."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    try:
        from redis._parsers.base import BaseParser
    except ImportError:  # redis-py 4
        from redis.connection import BaseParser

    class MasterUnavailableError(RedisConnectionError):
        """This Redis cannot serve as master now: too few replicas, or no longer master."""

    for code in ("NOREPLICAS", "UNBLOCKED"):
        BaseParser.EXCEPTION_CLASSES.setdefault(code, MasterUnavailableError)


def acks_follow_the_master(attempts=5, pause=0.5):
    """Retry recording or acknowledging a delivery that met a lost or demoted master.

    kombu pops a message (BRPOP), then records it in `unacked` (ZADD and HSET: QoS.append),
    and acknowledges by removing it (ZREM and HDEL: QoS.ack). A failed acknowledgement is
    logged by Celery and never retried, so the task would wait out the visibility timeout
    and run again. A failed record is worse: the message is already off the queue and in no
    `unacked` entry, so no restore brings it back, and the task is lost. During a handover
    the old master holds writes and then drops its clients (or answers READONLY, which
    redis-py makes a ConnectionError); the popped message and the delivery tag are on the
    new master too (replicated), and the next attempt asks Sentinel for it. Both writes are
    idempotent. Bounded: 5 tries, 0.5 s apart, and only for connection losses."""
    from kombu.transport import redis as kombu_redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ReadOnlyError, TimeoutError as RedisTimeoutError

    def follow(method, what):
        def retried(self, *args):
            for attempt in range(attempts):
                try:
                    return method(self, *args)
                except (RedisConnectionError, ReadOnlyError, RedisTimeoutError) as error:
                    if attempt == attempts - 1:
                        raise
                    logger.warning("%s of %s met %r; retrying on the master", what, args[-1], error)
                    time.sleep(pause)

        return retried

    kombu_redis.QoS.ack = follow(kombu_redis.QoS.ack, "ack")
    kombu_redis.QoS.append = follow(kombu_redis.QoS.append, "record")


def use_sentinel(app):
    """Ask Sentinel with its password (from the environment: the client Secret), for both
    the broker and the result backend; the backend also needs the master's name.

    Each Sentinel is asked once per lookup (redis-py retries a connection 3 to 10 times by
    default: a Sentinel on a lost node would hold every lookup for tens of seconds; the next
    Sentinel is the retry), and connections to the master notice a silent peer within
    dead_peer_options' bound (tune_sentinel_clients), so clients follow a failover as
    Sentinels make it."""
    from urllib.parse import urlsplit

    from redis.backoff import NoBackoff
    from redis.retry import Retry

    broker_options = dict(app.conf.broker_transport_options or {{}})
    sentinel_kwargs = dict(broker_options.get("sentinel_kwargs") or {{}})
    password = os.environ.get("{SENTINEL_PASSWORD_ENV}")
    if password:
        sentinel_kwargs["password"] = password
    sentinel_kwargs["retry"] = Retry(NoBackoff(), 0)
    broker_options["sentinel_kwargs"] = sentinel_kwargs
    app.conf.broker_transport_options = broker_options
    backend_options = dict(app.conf.result_backend_transport_options or {{}})
    backend_options.update(
        master_name=broker_options["master_name"], sentinel_kwargs=dict(sentinel_kwargs)
    )
    app.conf.result_backend_transport_options = backend_options
    # Celery 5.5's Sentinel result backend drops the URL's user name (5.6 passes it): it
    # would log in as the default user, which this broker disables. redis_username is what
    # every version's backend adds to its connections.
    backend_url = app.conf.result_backend or os.environ.get("CELERY_RESULT_BACKEND") or ""
    username = urlsplit(str(backend_url).split(";", 1)[0]).username
    if username and not app.conf.redis_username:
        app.conf.redis_username = username
    # Celery's Sentinel result backend takes TLS for the master only from
    # redis_backend_use_ssl (it ignores the URL's ssl_* query): the same CA as Sentinel's.
    if sentinel_kwargs.get("ssl") and not app.conf.redis_backend_use_ssl:
        app.conf.redis_backend_use_ssl = {{
            key: value for key, value in sentinel_kwargs.items()
            if key in ("ssl_cert_reqs", "ssl_ca_certs")
        }}
    tune_sentinel_clients()
    refusals_as_connection_loss()
    acks_follow_the_master()


use_sentinel(app)
'''


# --- Task load report: what the scale-in controller (brokerctl/deletioncost.py) reads ---------

TASK_LOAD_CHECK_SECONDS = 1.0
"""How often a worker compares its task counts with what it last published (no I/O when equal)."""
TASK_LOAD_TIMEOUT_SECONDS = 2.0
"""Bound on connecting and writing the entry (from the publisher thread, never the event loop)."""
TASK_LOAD_RETRY_SECONDS = 10.0
"""After a failed write, the next try waits this long: an outage costs one timeout per period."""


def task_load_ttl_seconds(pool: PoolSettings) -> int:
    """Lifetime of a worker's load entry: the liveness window.

    A worker that cannot refresh its entry for that long is restarted by its liveness probe
    anyway, so the entry of a dead or stuck pod expires with it. For `solo`, whose event loop
    is silent while a task runs, the window already covers `time_limit`.
    """
    return liveness_window_seconds(pool)


def task_load_runtime(pool: PoolSettings) -> str:
    """Return the wiring module's TaskLoad section (workers only; appended after the runtime)."""
    constants = "\n".join(
        [
            f"LOAD_KEY_PREFIX = {LOAD_KEY_PREFIX!r}",
            f"LOAD_TTL_SECONDS = {task_load_ttl_seconds(pool)!r}",
            f"LOAD_CHECK_SECONDS = {TASK_LOAD_CHECK_SECONDS!r}",
            f"LOAD_TIMEOUT_SECONDS = {TASK_LOAD_TIMEOUT_SECONDS!r}",
            f"LOAD_RETRY_SECONDS = {TASK_LOAD_RETRY_SECONDS!r}",
        ]
    )
    return f"\n\n{_TASK_LOAD_HEADER}\n{constants}\n{_TASK_LOAD_RUNTIME}"


_TASK_LOAD_HEADER = (
    "# --- Task load: running and held task counts for the scale-in controller ---------------"
)

_TASK_LOAD_RUNTIME = '''
import json
import socket
import threading

from celery import signals
from celery.worker import state as worker_state


def snapshot(requests):
    """Copy a WeakSet another thread may change (threads pool callbacks), retrying briefly."""
    for _ in range(5):
        try:
            return set(requests)
        except RuntimeError:  # "changed size during iteration"
            continue
    return set()


def task_load():
    """(running, held): tasks executing now, and every task this worker holds.

    held counts prefetched messages and ETA tasks too (all unacknowledged work that a stopping
    worker hands back); older Celery has no scheduled_requests (its ETA tasks count once due).
    """
    active = snapshot(worker_state.active_requests)
    held = active | snapshot(worker_state.reserved_requests)
    held |= snapshot(getattr(worker_state, "scheduled_requests", ()))
    return len(active), len(held)


class LoadPublisher(threading.Thread):
    """Writes the latest counts to the broker from its own thread, on its own connection.

    The consumer's event loop only hands counts over and never waits on the network here: a
    broker that is slow, or switching masters behind Sentinel, must not stall the loop that
    acknowledges tasks. Every call is bounded (LOAD_TIMEOUT_SECONDS); after a failure the
    next try waits LOAD_RETRY_SECONDS.
    """

    def __init__(self, consumer_connection, key):
        super().__init__(name="celery-platform-task-load", daemon=True)
        options = dict(consumer_connection.transport_options or {})
        options.update(
            socket_timeout=LOAD_TIMEOUT_SECONDS, socket_connect_timeout=LOAD_TIMEOUT_SECONDS
        )
        self.connection = consumer_connection.clone(
            transport_options=options, connect_timeout=LOAD_TIMEOUT_SECONDS
        )
        self.key = key
        self.wanted = None
        self.changed = threading.Event()
        self.stopping = threading.Event()

    def offer(self, load):
        """Hand over the current counts (no I/O: the thread writes them if they changed)."""
        if load != self.wanted:
            self.wanted = load
            self.changed.set()

    def run(self):
        published, published_at = None, 0.0
        try:
            while not self.stopping.is_set():
                self.changed.wait(LOAD_TTL_SECONDS / 3)
                self.changed.clear()
                load = self.wanted
                due = time.monotonic() - published_at >= LOAD_TTL_SECONDS / 3
                if self.stopping.is_set() or load is None or (load == published and not due):
                    continue
                if self.publish(load):
                    published, published_at = load, time.monotonic()
                else:
                    self.stopping.wait(LOAD_RETRY_SECONDS)
        finally:
            self.connection.release()

    def publish(self, load):
        value = json.dumps({"running": load[0], "held": load[1]})
        try:
            self.connection.ensure_connection(max_retries=0, timeout=2 * LOAD_TIMEOUT_SECONDS)
            with self.connection.default_channel.conn_or_acquire() as client:
                client.set(self.key, value, ex=LOAD_TTL_SECONDS)
            return True
        except Exception as error:  # never let the report disturb the worker; retried later
            logger.warning("task load: not published: %r", error)
            self.connection.release()
            return False

    def stop(self):
        """Let the thread end (it is not waited for: the event loop must not block on it)."""
        self.stopping.set()
        self.changed.set()


class TaskLoad(bootsteps.StartStopStep):
    """Publishes this pod's task counts to the broker, under its pod name, with a TTL.

    The counts are read every LOAD_CHECK_SECONDS in the event loop and handed to a
    LoadPublisher thread, which writes them only when they change (or a third of the TTL
    passed). `solo` runs tasks inside the event loop, so the timer cannot fire while one runs:
    there the counts are handed over from task_prerun, before the task starts.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.key = LOAD_KEY_PREFIX + (os.environ.get("POD_NAME") or socket.gethostname())
        self.pid = os.getpid()
        self.publisher = None
        self.timer_entry = None

    def start(self, parent):
        self.publisher = LoadPublisher(parent.connection, self.key)
        self.publisher.start()
        self.report()
        self.timer_entry = parent.timer.call_repeatedly(
            LOAD_CHECK_SECONDS, self.report, (), priority=10
        )
        signals.task_prerun.connect(self.before_task, weak=False, dispatch_uid=self.key)

    def before_task(self, **_):
        # Prefork children (another pid) and pool threads leave it to the event loop's timer.
        if os.getpid() == self.pid and threading.current_thread() is threading.main_thread():
            self.report()

    def report(self):
        publisher = self.publisher
        if publisher is not None:
            publisher.offer(task_load())

    def stop(self, parent):
        signals.task_prerun.disconnect(dispatch_uid=self.key)
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher = None

    shutdown = stop


app.steps["consumer"].add(TaskLoad)
'''
