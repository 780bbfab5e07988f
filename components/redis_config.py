"""What redis-server runs with: redis.conf, its ACL users, the start script and probe commands.

Pure functions of the settings, so tests feed their output straight to a real redis-server
and the broker component only wraps them in Kubernetes objects. Nothing here holds a secret:
passwords reach Redis at run time, when the start script hashes the users Secret's files
into an ACL file on a private in-memory volume.

Every directive is one that both Debian's redis-server 7.0 (the tests) and the pinned 7.2
image understand. The one 7.2-only ACL rule (`client|setinfo`) is added by the start script
only when the running server knows the command: 7.0 refuses an ACL file that names it.
"""

from __future__ import annotations

import hashlib
import math

from components.quantities import memory_bytes
from components.settings import StackSettings

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

CELERY_PASSWORD_FILE = "celery-password"  # noqa: S105 - a file name, not a password
PROBE_PASSWORD_FILE = "probe-password"  # noqa: S105 - a file name, not a password

# The celery user's commands, found by running a real Celery 5.7 / kombu 5.7 / redis-py 8.1
# worker, producer, result backend, `celery inspect` / `celery control` / `celery status` /
# `celery purge`, groups, a chord, countdown, revoke, forget, a visibility-timeout restore and
# a soft shutdown that requeues, with `+@all`, and reading INFO commandstats (Lua scripts'
# inner calls are counted there too). Commands marked "code" come from reading kombu's and
# Celery's Redis modules: paths that workload did not reach (non-Lua chord join, basic_get,
# x-expires queues). tests/integration/test_broker_acl.py replays the workload against
# these rules and requires an empty ACL LOG. AUTH is always allowed and needs no rule.
CELERY_COMMANDS: dict[str, tuple[str, ...]] = {
    # redis-py 8 handshake (HELLO ... AUTH), SELECT of the result DB, health-check PINGs.
    "connection": ("hello", "ping", "select"),
    # Queues are lists: LPUSH to publish, BRPOP to consume, RPUSH/LPUSH to restore, RPOP for
    # basic_get (code), LLEN for sizes and purge, DEL for purge and queue_delete.
    "queues": ("lpush", "rpush", "brpop", "rpop", "llen", "del"),
    # Ack emulation: a delivered message waits in the `unacked` hash, indexed by time in the
    # `unacked_index` sorted set, inside MULTI/EXEC; restore_visible scans that index.
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

# The probe user: Kubernetes probes (PING, INFO), `brokerctl check` and KEDA. Read-only key
# access (%R~*) on top of read-only commands, so even a leaked probe password writes nothing.
PROBE_COMMANDS: dict[str, tuple[str, ...]] = {
    # redis-py 8 handshake; redis-cli in the probes sends only AUTH.
    "connection": ("hello", "ping", "select"),
    # Health: INFO for loading/persistence/memory, CONFIG GET for appendfsync and save.
    "health": ("info", "config|get"),
    # Queue and unacked sizes the check and KEDA read (kombu's list, hash and sorted set).
    "queues": (
        "llen", "zcard", "zrange", "zrangebyscore",
        "hget", "hlen", "hkeys", "type", "exists", "scan",
    ),
}  # fmt: skip

SINCE_7_2_COMMANDS = ("client|setinfo",)
"""redis-py sends CLIENT SETINFO after connecting; the start script grants it on Redis 7.2+."""

STARTUP_BASE_SECONDS = 30
"""Startup probe budget besides loading the data: process start, ACL file, first fsync."""
STARTUP_PERIOD_SECONDS = 5
BYTES_PER_MB = 1_000_000


def acl_commands(groups: dict[str, tuple[str, ...]]) -> str:
    """ACL command rules that deny everything, then allow exactly the listed commands."""
    return " ".join(
        ["-@all", *(f"+{command}" for commands in groups.values() for command in commands)]
    )


def acl_user_rules() -> dict[str, str]:
    """Each user's ACL rules without its password, as the start script writes them."""
    return {
        # default off: a client that does not authenticate can do nothing at all.
        "default": "off resetpass resetkeys resetchannels -@all",
        "celery": f"on ~* &* {acl_commands(CELERY_COMMANDS)}",
        "probe": f"on %R~* resetchannels {acl_commands(PROBE_COMMANDS)}",
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
            "auto-aof-rewrite-percentage 100",
            "auto-aof-rewrite-min-size 64mb",
        ]
    return [
        "# none: nothing is written to disk; a restart empties every queue (ephemeral stacks).",
        'save ""',
        "appendonly no",
    ]


def redis_conf(settings: StackSettings) -> str:
    """Return the broker's redis.conf: memory, connections, persistence; no users or secrets.

    Users come from the ACL file and `dir` from the start script's arguments, so this text
    can be reviewed and shared as is and still loads in a plain `redis-server redis.conf`.
    """
    broker = settings.broker
    lines = [
        "# Rendered by components/redis_config.py from the stack settings; edit those, not this.",
        "# Users: aclfile and dir are passed by the start script (passwords never land here).",
        f"port {broker.port}",
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
        "# Administrative surfaces stay shut even to a user an operator might add later.",
        "enable-debug-command no",
        "enable-module-command no",
        "enable-protected-configs no",
        "",
    ]
    return "\n".join(lines)


def config_checksum(settings: StackSettings) -> str:
    """SHA-256 of the rendered redis.conf: a pod template annotation, so a change rolls the pod."""
    return hashlib.sha256(redis_conf(settings).encode()).hexdigest()


def start_script() -> str:
    """Write the ACL file from the mounted users Secret, then exec redis-server as PID 1.

    The passwords are hashed with sha256sum reading the Secret's files on stdin: they never
    appear in argv, the environment, the ConfigMap or the logs. redis-server then replaces
    the shell, so it receives SIGTERM directly and flushes before the grace period ends.
    """
    rules = acl_user_rules()
    since_7_2 = " ".join(f"+{command}" for command in SINCE_7_2_COMMANDS)
    return "\n".join(
        [
            "set -eu",
            "umask 077",
            "hash_of() {",
            f'  file="${ENV_USERS_DIR}/$1"',
            '  [ -s "$file" ] || { echo "redis-start: $file is missing or empty" >&2; exit 1; }',
            "  sha256sum < \"$file\" | cut -d ' ' -f 1",
            "}",
            "# Redis 7.0 refuses an ACL file naming a command it does not know.",
            'case "$(redis-server --version)" in',
            '  *" v=6."* | *" v=7.0."*) since_7_2="" ;;',
            f'  *) since_7_2=" {since_7_2}" ;;',
            "esac",
            f'celery_hash="$(hash_of {CELERY_PASSWORD_FILE})"',
            f'probe_hash="$(hash_of {PROBE_PASSWORD_FILE})"',
            "{",
            f'  echo "user default {rules["default"]}"',
            f'  echo "user celery #$celery_hash {rules["celery"]}$since_7_2"',
            f'  echo "user probe #$probe_hash {rules["probe"]}$since_7_2"',
            f'}} > "${ENV_ACL_FILE}.new"',
            f'mv "${ENV_ACL_FILE}.new" "${ENV_ACL_FILE}"',
            f'exec redis-server "${ENV_CONFIG}" --aclfile "${ENV_ACL_FILE}" \\',
            f'  --dir "${ENV_DATA_DIR}" "$@"',
            "",
        ]
    )


PROBE_PRELUDE = (
    # The password travels in the environment (REDISCLI_AUTH), never in redis-cli's argv.
    f'export REDISCLI_AUTH="$(cat "${ENV_USERS_DIR}/{PROBE_PASSWORD_FILE}")"\n'
    f'cli() {{ redis-cli --no-auth-warning --user probe -h 127.0.0.1 -p "${ENV_PORT}" "$@"; }}'
)


def _probe(*lines: str) -> list[str]:
    """Return a probe's exec command: the prelude (probe user and password), then `lines`."""
    return ["sh", "-c", "\n".join([PROBE_PRELUDE, *lines])]


def liveness_command() -> list[str]:
    """Alive when Redis answers at all: PONG, or LOADING while it replays a large AOF.

    Restarting a loading broker would only start the replay again, forever.
    """
    return _probe(
        'reply="$(cli ping)"',
        'case "$reply" in',
        "  PONG | LOADING*) exit 0 ;;",
        '  *) echo "liveness: $reply"; exit 1 ;;',
        "esac",
    )


def readiness_command() -> list[str]:
    """Ready only when Redis answers PONG and has finished loading its data (loading:0)."""
    return _probe(
        'reply="$(cli ping)"',
        '[ "$reply" = PONG ] || { echo "not ready: $reply"; exit 1; }',
        "cli info persistence | grep -q '^loading:0' || { echo \"not ready: loading\"; exit 1; }",
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
