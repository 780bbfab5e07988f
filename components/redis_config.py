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
image understand. The one 7.2-only ACL rule (`client|setinfo`) is added by the shell functions
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

ENV_TLS_DIR = "REDIS_TLS_DIR"
ENV_RELOAD_SECONDS = "REDIS_RELOAD_SECONDS"

CELERY_PASSWORD_FILE = "celery-password"  # noqa: S105 - a file name, not a password
CELERY_PREVIOUS_PASSWORD_FILE = "celery-password-previous"  # noqa: S105 - a file name
"""Present only during a password rotation: the old password the celery user still accepts."""
PROBE_PASSWORD_FILE = "probe-password"  # noqa: S105 - a file name, not a password

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
    "connection": ("ping",),
}
"""The pod-local admin of the reloader sidecar: exactly what applying a change needs."""

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

# The probe user: Kubernetes probes (PING, INFO), `brokerctl check`, KEDA and the exporter.
# Only read commands are granted, so even a leaked probe password writes nothing. Keys are
# `~*`, not `%R~*`: Redis treats EVAL's key arguments as read-write, and KEDA's scaler passes
# the list as KEYS[1]; every command a script runs is still checked against this list.
PROBE_COMMANDS: dict[str, tuple[str, ...]] = {
    # redis-py 8 handshake; redis-cli in the probes sends only AUTH.
    "connection": ("hello", "ping", "select"),
    # Health: INFO for loading/persistence/memory, CONFIG GET for appendfsync and save.
    "health": ("info", "config|get"),
    # KEDA's redis scaler reads a list's length through EVAL of a small Lua script, and the
    # exporter's unacked-age script runs by EVAL too. ACL rules still apply inside scripts,
    # so a script can read, never write; lua-time-limit bounds a runaway one.
    "scripts": ("eval",),
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


CELERY_USER = "celery"
"""The workers' user: Celery's and kombu's commands only."""
PROBE_USER = "probe"
"""The read-only user of probes, `brokerctl check`, KEDA and the exporter."""
SECRET_FILE_MODE = 0o440
"""Mode of mounted Secret files: owner root, group fsGroup (the pod's uid), no one else."""


def acl_user_rules() -> dict[str, str]:
    """Each user's ACL rules without its password, as the start script writes them."""
    return {
        # default off: a client that does not authenticate can do nothing at all.
        "default": "off resetpass resetkeys resetchannels -@all",
        CELERY_USER: f"on ~* &* {acl_commands(CELERY_COMMANDS)}",
        PROBE_USER: f"on ~* resetchannels {acl_commands(PROBE_COMMANDS)}",
        # No keys, no channels: it can only re-apply users and TLS files, from inside the pod.
        RELOADER_USER: f"on resetkeys resetchannels {acl_commands(RELOADER_COMMANDS)}",
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


def _user_line(name: str, hashes: str, since_7_2: bool) -> str:
    """One `echo` of the ACL file: user, password hashes (shell variables), rules."""
    extra = "$since_7_2" if since_7_2 else ""
    return f'    echo "user {name} on {hashes} {acl_user_rules()[name].removeprefix("on ")}{extra}"'


def acl_functions(*, tls: bool) -> str:
    """Shell functions that write the ACL file and checksum what it was written from.

    The only place the ACL file is written: the start script runs them before Redis starts,
    the reloader after a users Secret change. Passwords are hashed by sha256sum reading the
    Secret's files on stdin, so they never appear in argv, the environment or a log. With
    `tls`, `tls_checksum` fingerprints the TLS files the same way, for the same comparison.
    """
    since_7_2 = " ".join(f"+{command}" for command in SINCE_7_2_COMMANDS)
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
        '  case "$(redis-server --version)" in',
        '    *" v=6."* | *" v=7.0."*) since_7_2="" ;;',
        f'    *) since_7_2=" {since_7_2}" ;;',
        "  esac",
        f'  celery="#$(hash_of "${ENV_USERS_DIR}/{CELERY_PASSWORD_FILE}")" || return 1',
        "  # During a password rotation the celery user accepts the old password as well.",
        f'  previous="${ENV_USERS_DIR}/{CELERY_PREVIOUS_PASSWORD_FILE}"',
        '  if [ -e "$previous" ]; then',
        '    celery="$celery #$(hash_of "$previous")" || return 1',
        "  fi",
        f'  probe="#$(hash_of "${ENV_USERS_DIR}/{PROBE_PASSWORD_FILE}")" || return 1',
        '  reloader="#$(hash_of "$reloader_password_file")" || return 1',
        "  {",
        f'    echo "user default {acl_user_rules()["default"]}"',
        _user_line("celery", "$celery", since_7_2=True),
        _user_line("probe", "$probe", since_7_2=True),
        _user_line(RELOADER_USER, "$reloader", since_7_2=False),
        f'  }} > "${ENV_ACL_FILE}.new.$$" || return 1',
        f'  mv "${ENV_ACL_FILE}.new.$$" "${ENV_ACL_FILE}"',
        "}",
    ]
    if tls:
        files = " ".join(f'"${ENV_TLS_DIR}/{key}"' for key in TLS_KEYS)
        lines += [f"tls_checksum() {{ cat {files} | sha256sum | cut -d ' ' -f 1; }}"]
    return "\n".join([*lines, "# --- end of acl_functions ---"])


def start_script(*, tls: bool = False) -> str:
    """Write the ACL file from the mounted users Secret, then exec redis-server as PID 1.

    It first makes the reloader's password: random, new at every start, in the private
    memory-backed volume both containers share; only its hash reaches the ACL. The checksums
    it records tell the reloader what the running Redis was started from. redis-server then
    replaces the shell, so it receives SIGTERM directly and flushes before the grace period ends.
    """
    record_tls = ['tls_checksum > "$run_dir/tls.sha256"'] if tls else []
    return "\n".join(
        [
            "set -eu",
            "umask 077",
            acl_functions(tls=tls),
            "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > \"$reloader_password_file\"",
            "# Checksums first: a Secret update racing this start only causes one more reload.",
            'users_checksum > "$run_dir/users.sha256"',
            *record_tls,
            "write_acl_file",
            f'exec redis-server "${ENV_CONFIG}" --aclfile "${ENV_ACL_FILE}" \\',
            f'  --dir "${ENV_DATA_DIR}" "$@"',
            "",
        ]
    )


RELOADER_HEARTBEAT = "reloader.alive"
"""Touched by the reloader after every pass, in the shared run directory; its probes read it."""
RELOADER_STALL_PASSES = 3
"""Missed passes (plus redis-cli's time limits) after which the reloader counts as stuck."""
CLI_TIMEOUT_SECONDS = 10


def reloader_script(*, tls: bool) -> str:
    """Return the reloader sidecar's loop: apply a changed users or TLS Secret to running Redis.

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
        acl_functions(tls=tls),
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
        # sh is PID 1 of its container: without a trap SIGTERM is ignored and the pod waits
        # out its whole grace period; sleeping in the background lets the trap run at once.
        'sleeping=""',
        "trap 'kill $sleeping 2>/dev/null; exit 0' TERM INT",
        "while :; do",
        *(f'  {step} || echo "reloader: {step} failed; retrying next pass" >&2' for step in passes),
        f'  touch "$run_dir/{RELOADER_HEARTBEAT}"',
        f'  sleep "${ENV_RELOAD_SECONDS}" & sleeping=$!',
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

    Restarting a loading broker would only start the replay again, forever.
    """
    return _probe(
        'reply="$(cli ping)"',
        'case "$reply" in',
        "  PONG | LOADING*) exit 0 ;;",
        '  *) echo "liveness: $reply"; exit 1 ;;',
        "esac",
        tls=tls,
    )


def readiness_command(*, tls: bool = False) -> list[str]:
    """Ready only when Redis answers PONG and has finished loading its data (loading:0)."""
    return _probe(
        'reply="$(cli ping)"',
        '[ "$reply" = PONG ] || { echo "not ready: $reply"; exit 1; }',
        "cli info persistence | grep -q '^loading:0' || { echo \"not ready: loading\"; exit 1; }",
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
