"""The Sentinel topology's run-time pieces: sentinel.conf, role discovery, the handover.

Pure functions of the settings, like components/redis_config.py, so the tests start real
redis-server and redis-sentinel processes from exactly what pods run.

Where Sentinels run and keep their state. One Sentinel beside each Redis, in the same pod
(container `sentinel`): N pods give N Sentinels, spread over nodes with the Redis pods, so
losing one node loses one Redis and one Sentinel and a majority remains to elect a leader.
Sentinel rewrites its config file as it learns (epochs, replicas, other Sentinels); that file
lives on the pod's memory-backed volume, which survives a container restart but not a new
pod. A new pod's Sentinel does not trust old state: the start script asks the other
Sentinels which Redis is master and monitors that one. The charts' split brain after reboots
comes from the opposite choice, a Sentinel (or Redis) that restarts from a stale file naming
itself, or pod 0, as master while the others promoted another; here only a start with no
other Sentinel answering (the first deploy, or every pod lost at once) falls back to pod 0.

The same discovery decides each Redis's role at start: the master Sentinels name, or itself
when it is that master; a Redis never starts as a master on its own say while Sentinels
answer. Hostnames, not addresses, are announced (`replica-announce-ip`, Sentinel's
`announce-ip`, `resolve-hostnames`, `announce-hostnames`): a pod that comes back with a new IP
is still the same replica to Sentinel.

Passwords: the replication user's and Sentinel's are written at start into files on the same
memory-backed volume as the ACL file (Redis and Sentinel read plaintext `masterauth`,
`auth-pass`, `requirepass` from config), never into a ConfigMap, argv or a log.

Moving a deployed standalone stack to Sentinel (README) keeps its queued tasks only if the
standalone pod 0, on its volume, becomes the first master. The StatefulSet controller first
creates pods 1..N-1 beside it (each once the one before is ready), then replaces it. That old
pod knows neither the replication user nor the Sentinel user: the new pods detect it by that
refusal (`refusal_function`). Their Redis counts as ready without a replication link
(REPLICA_OF_STANDALONE), or the controller would never replace pod 0; their Sentinels monitor
it with a down-after of a day (SENTINEL_OF_STANDALONE), or two of them would see it down
within down-after and promote an empty replica, which the new pod 0 would then follow,
dropping every task on its volume (tests/realengine/test_topology_move_real.py saw both). A
Sentinel takes the configured down-after back once its own link gets valid replies from the
new pod 0 (`sentinel_readiness_command`): a Sentinel still connecting to the old pod's address
(it retries a stale link only every 15 s) would otherwise see the new master down too. A
replica stuck the same way is made to reconnect (`rejoin_script`).
"""

from __future__ import annotations

from components.engine import SERVER_BINARIES
from components.naming import object_name
from components.redis_config import (
    ACL_DIR,
    CLI_TIMEOUT_SECONDS,
    CONFIG_DIR,
    ENV_ACL_FILE,
    ENV_PORT,
    ENV_TLS_DIR,
    ENV_USERS_DIR,
    REPLICATOR_PASSWORD_FILE,
    REPLICATOR_USER,
    SENTINEL_PASSWORD_FILE,
    SENTINEL_USER,
    SENTINEL_USER_PASSWORD_FILE,
    TLS_CA_KEY,
    TLS_CERT_KEY,
    TLS_DIR,
    TLS_KEY_KEY,
    probe_prelude,
)
from components.settings import StackSettings

CONTAINER = "sentinel"
PORT_NAME = "sentinel"
CONFIG_KEY = "sentinel.conf"
"""Key of the broker ConfigMap holding the static part of sentinel.conf (no secret)."""
STATE_FILE = "sentinel.conf"
"""sentinel.conf as Sentinel runs and rewrites it, in the run directory (memory-backed)."""
REPLICATION_INCLUDE = "replication.conf"
"""Redis's run-time include: announced hostname, replication user and, on replicas, replicaof."""
REPLICA_OF_STANDALONE = "replica-of-standalone"
"""Marker in the run directory: this Redis started as a replica of the standalone broker that
a move to Sentinel replaces (its master refused the replication user); it is ready without a
link until the link first comes up (`redis_readiness_lines`)."""
SENTINEL_OF_STANDALONE = "sentinel-of-standalone"
"""Marker in the run directory: this Sentinel started monitoring the standalone broker that a
move replaces, with STANDALONE_DOWN_AFTER_MS; removed when it takes the configured
down-after back (`sentinel_readiness_command`)."""
STANDALONE_DOWN_AFTER_MS = 86_400_000
"""Down-after of a Sentinel watching the standalone pod 0 a move replaces: no failover away
from the only copy of the tasks, however long the StatefulSet takes to replace it."""

ENV_POD_NAME = "POD_NAME"
"""The pod's name (downward API): its own hostname is `<POD_NAME>.<headless Service domain>`."""
ENV_SENTINEL_PORT = "SENTINEL_PORT"
ENV_SENTINEL_TEMPLATE = "SENTINEL_TEMPLATE"
TEMPLATE_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
"""Where the Sentinel container finds the static sentinel.conf (the broker ConfigMap)."""

HANDOVER_SECONDS = 20
"""Longest the preStop hook waits for Sentinel to move the master role away before it lets
the pod stop anyway (a failed handover then costs an unplanned failover, never a hang)."""
AGREE_SECONDS = 4
"""Longest the handover waits, writes still held, for every answering Sentinel to name the
new master (they learn it from the leader's hello, at most 2 s apart) before it drops the
clients: a client that reconnected through a Sentinel still naming this pod would fail."""
CATCH_UP_SECONDS = 2
"""Longest the handover waits, writes held, for the replicas to apply the master's last
writes before it asks for the failover (milliseconds normally; bounded for a stalled one)."""
FENCE_POLL_SECONDS = 0.1
"""How often the fence (`fence_script`) reads the master's replication state."""


def headless_domain(settings: StackSettings) -> str:
    """Return the domain of the broker pods' own names (the headless Service's)."""
    return f"{object_name(settings.name_prefix, 'broker-headless')}.{settings.namespace}.svc"


def pod_hostname(settings: StackSettings, ordinal: int) -> str:
    """Return the DNS name of broker pod `ordinal`, as Redis and Sentinel announce it."""
    return f"{object_name(settings.name_prefix, 'broker')}-{ordinal}.{headless_domain(settings)}"


def pod_hostnames(settings: StackSettings) -> list[str]:
    """Every broker pod's name, pod 0 first (the master of a first deploy)."""
    return [pod_hostname(settings, k) for k in range(settings.broker.sentinel.replicas)]


def sentinel_addresses(settings: StackSettings) -> list[str]:
    """`host:port` of every Sentinel: what clients, KEDA and the check ask for the master."""
    port = settings.broker.sentinel.port
    return [f"{host}:{port}" for host in pod_hostnames(settings)]


def sentinel_conf(settings: StackSettings) -> str:
    """Return the static part of sentinel.conf: listener, state dir, hostname handling.

    The start script appends what differs per pod or is secret: announce-ip, the monitored
    master, passwords, and the timings (after `monitor`, which must come first).
    """
    port = settings.broker.sentinel.port
    if settings.tls.enabled:
        listener = [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {TLS_DIR}/{TLS_CERT_KEY}",
            f"tls-key-file {TLS_DIR}/{TLS_KEY_KEY}",
            f"tls-ca-cert-file {TLS_DIR}/{TLS_CA_KEY}",
            "tls-auth-clients no",
            "# Sentinel talks TLS to Redis (and to other Sentinels) too.",
            "tls-replication yes",
        ]
    else:
        listener = [f"port {port}"]
    return "\n".join(
        [
            "# Rendered by components/sentinel_config.py; the start script adds the rest.",
            *listener,
            "bind * -::*",
            "daemonize no",
            'logfile ""',
            f"dir {ACL_DIR}",
            "# Pods are known by name: an IP that changes with a new pod confuses nobody.",
            "sentinel resolve-hostnames yes",
            "sentinel announce-hostnames yes",
            "",
        ]
    )


def _cli_tls(tls: bool) -> str:
    return f' --tls --cacert "${ENV_TLS_DIR}/{TLS_CA_KEY}"' if tls else ""


def discovery_functions(settings: StackSettings) -> str:
    """Shell functions: this pod's hostname, and which Redis is master according to Sentinels.

    `sentinel_master` asks the other pods' Sentinels first and this pod's last (a Sentinel
    that just started here knows only what it was told at its own start); the first answer
    naming one of the broker's pods wins, none prints nothing. `find_master` falls back to
    pod 0 then (a first deploy, a move from standalone, or every pod lost at once).
    """
    sentinel = settings.broker.sentinel
    hosts = " ".join(pod_hostnames(settings))
    return "\n".join(
        [
            "# --- discovery_functions (components/sentinel_config.py) ---",
            f'me="${{{ENV_POD_NAME}}}.{headless_domain(settings)}"',
            f'peers="{hosts}"',
            "# sentinel_at SECONDS HOST COMMAND...: one bounded command to a pod's Sentinel.",
            "sentinel_at() {",
            "  # Names of their own: callers loop over $host (sh has no local variables).",
            '  at_seconds="$1"; at_host="$2"; shift 2',
            f'  REDISCLI_AUTH="$(cat "${ENV_USERS_DIR}/{SENTINEL_PASSWORD_FILE}")" \\',
            '    timeout "$at_seconds" redis-cli --no-auth-warning'
            f' -h "$at_host" -p "${ENV_SENTINEL_PORT}"{_cli_tls(settings.tls.enabled)} "$@"',
            "}",
            "ask_sentinel() {",
            f'  sentinel_at {CLI_TIMEOUT_SECONDS // 5} "$1" '
            f"SENTINEL get-master-addr-by-name {sentinel.master_name} 2>/dev/null | head -n 1",
            "}",
            "sentinel_master() {",
            "  # One list per caller: Redis's and Sentinel's start scripts may ask at once.",
            "  for host in $peers; do",
            '    [ "$host" = "$me" ] || echo "$host"',
            '  done > "$run_dir/ask.$$"',
            '  echo "$me" >> "$run_dir/ask.$$"',
            "  while read -r host; do",
            '    answer="$(ask_sentinel "$host" || true)"',
            "    # Only one of the broker's own pods counts: not an error text, not an address.",
            '    case " $peers " in',
            '      *" $answer "*) [ -n "$answer" ] && { echo "$answer"; return 0; } ;;',
            "    esac",
            '  done < "$run_dir/ask.$$"',
            "}",
            "find_master() {",
            '  answer="$(sentinel_master)"',
            f'  echo "${{answer:-{pod_hostname(settings, 0)}}}"',
            "}",
            "# --- end of discovery_functions ---",
        ]
    )


def refusal_function(settings: StackSettings) -> str:
    """Shell `login` and `refuses`: how a Redis answers one of the broker's users.

    `login HOST USER PASSWORD_FILE` prints that Redis's reply to PING as that user (an error
    text when refused); `refuses` (same arguments) is true when it refuses the login. Only the
    standalone broker that a move to Sentinel replaces refuses the replication and Sentinel
    users (it has neither); an unreachable or still starting Redis does not count.
    """
    return "\n".join(
        [
            "login() {",
            '  REDISCLI_AUTH="$(cat "$3")" timeout '
            f"{CLI_TIMEOUT_SECONDS // 5} redis-cli --no-auth-warning"
            f' --user "$2" -h "$1" -p "${ENV_PORT}"{_cli_tls(settings.tls.enabled)} ping 2>&1'
            " || true",
            "}",
            'refuses() { case "$(login "$@")" in *WRONGPASS* | *NOAUTH*) return 0 ;; esac; '
            "return 1; }",
        ]
    )


def replication_prelude(settings: StackSettings) -> str:
    """Shell run by Redis's start script before it execs: write the replication include.

    The include is passed with `--include`; it names the hostname this Redis announces, the
    replication user (its password in plaintext, as Redis reads masterauth: hence the
    memory-backed run directory and umask 077) and, unless this pod is the master Sentinels
    name (pod 0 when none answers), `replicaof` that master. A master that refuses the
    replication user is the standalone broker a move replaces: REPLICA_OF_STANDALONE.
    """
    port = settings.broker.port
    return "\n".join(
        [
            discovery_functions(settings),
            refusal_function(settings),
            "# No Sentinel answers on a first deploy or a move from standalone: pod 0 leads.",
            'master="$(find_master)"',
            f'rm -f "$run_dir/{REPLICA_OF_STANDALONE}"',
            f'if [ "$master" != "$me" ] && refuses "$master" {REPLICATOR_USER} '
            f'"${ENV_USERS_DIR}/{REPLICATOR_PASSWORD_FILE}"; then',
            f'  : > "$run_dir/{REPLICA_OF_STANDALONE}"',
            '  echo "redis-start: $master is the standalone broker being moved to Sentinel"',
            "fi",
            "{",
            '  echo "replica-announce-ip $me"',
            f'  echo "masteruser {REPLICATOR_USER}"',
            f'  echo "masterauth $(cat "${ENV_USERS_DIR}/{REPLICATOR_PASSWORD_FILE}")"',
            f'  [ "$master" = "$me" ] || echo "replicaof $master {port}"',
            f'}} > "$run_dir/{REPLICATION_INCLUDE}"',
            'echo "redis-start: master is $master; this pod is $me"',
        ]
    )


def replication_include_args() -> str:
    """Arguments that make redis-server read the include `replication_prelude` wrote."""
    return f'--include "$run_dir/{REPLICATION_INCLUDE}"'


def sentinel_start_script(settings: StackSettings) -> str:
    """Write this pod's sentinel.conf and exec Sentinel as PID 1 (it gets SIGTERM itself).

    Besides the master it monitors, each Sentinel starts knowing every other pod's Redis as
    a replica (`known-replica`, what Sentinel itself writes once it has seen them): a master
    lost within seconds of a first deploy, before the Sentinels read the replicas from its
    INFO, would otherwise never be replaced (bench/failover.py, scenario early).
    """
    sentinel = settings.broker.sentinel
    name = sentinel.master_name
    users = f"${ENV_USERS_DIR}"
    state = f"$run_dir/{STATE_FILE}"
    server = SERVER_BINARIES[settings.broker.engine]
    return "\n".join(
        [
            "set -eu",
            "umask 077",
            f'run_dir="${{{ENV_ACL_FILE}%/*}}"',
            discovery_functions(settings),
            refusal_function(settings),
            'master="$(find_master)"',
            f"down_after={sentinel.down_after_ms}",
            f'rm -f "$run_dir/{SENTINEL_OF_STANDALONE}"',
            f'if [ "$master" != "$me" ] && refuses "$master" {SENTINEL_USER} "{users}/'
            f'{SENTINEL_USER_PASSWORD_FILE}"; then',
            "  # The standalone pod 0 a move replaces: no failover away from the only copy.",
            f'  down_after={STANDALONE_DOWN_AFTER_MS}; : > "$run_dir/{SENTINEL_OF_STANDALONE}"',
            "fi",
            "{",
            f'  cat "${ENV_SENTINEL_TEMPLATE}"',
            '  echo "sentinel announce-ip $me"',
            f'  echo "requirepass $(cat "{users}/{SENTINEL_PASSWORD_FILE}")"',
            f'  echo "sentinel sentinel-pass $(cat "{users}/{SENTINEL_PASSWORD_FILE}")"',
            f'  echo "sentinel monitor {name} $master ${ENV_PORT} {sentinel.effective_quorum}"',
            f'  echo "sentinel auth-user {name} {SENTINEL_USER}"',
            f'  echo "sentinel auth-pass {name} $(cat "{users}/{SENTINEL_USER_PASSWORD_FILE}")"',
            f'  echo "sentinel down-after-milliseconds {name} $down_after"',
            f'  echo "sentinel failover-timeout {name} {sentinel.failover_timeout_ms}"',
            f'  echo "sentinel parallel-syncs {name} 1"',
            "  # Every other pod is a replica from the start: Sentinel learns replicas only from",
            "  # the master's INFO, every 10 s, and a master lost before it looked leaves it",
            "  # nothing to promote, at every retry, for as long as that master is gone.",
            "  for host in $peers; do",
            '    [ "$host" = "$master" ] ||',
            f'      echo "sentinel known-replica {name} $host ${ENV_PORT}"',
            "  done",
            f'}} > "{state}.new"',
            f'mv "{state}.new" "{state}"',
            *(
                [f'{tls_checksum_line()} > "$run_dir/{SENTINEL_TLS_CHECKSUM}"']
                if settings.tls.enabled
                else []
            ),
            'echo "sentinel-start: monitoring $master as this pod ($me);'
            ' down-after $down_after ms"',
            f'exec {server} "{state}" --sentinel',
            "",
        ]
    )


def sentinel_cli_prelude(tls: bool) -> str:
    """`scli`: redis-cli to this pod's Sentinel, its password in the environment only."""
    return (
        f'export REDISCLI_AUTH="$(cat "${ENV_USERS_DIR}/{SENTINEL_PASSWORD_FILE}")"\n'
        f"scli() {{ timeout {CLI_TIMEOUT_SECONDS} redis-cli --no-auth-warning -h 127.0.0.1 "
        f'-p "${ENV_SENTINEL_PORT}"{_cli_tls(tls)} "$@"; }}'
    )


SENTINEL_TLS_CHECKSUM = "sentinel-tls.sha256"
"""Checksum of the TLS files Sentinel started with, in the run directory (`tls_checksum_line`)."""


def tls_checksum_line() -> str:
    """Shell printing the checksum of the mounted TLS files (certificate, key, CA)."""
    files = " ".join(f'"${ENV_TLS_DIR}/{key}"' for key in (TLS_CERT_KEY, TLS_KEY_KEY, TLS_CA_KEY))
    return f"cat {files} | sha256sum | cut -d ' ' -f 1"


def sentinel_liveness_command(settings: StackSettings) -> list[str]:
    """Alive while Sentinel answers PING and serves the TLS files now mounted.

    Redis takes a renewed certificate from the reloader (CONFIG SET); Sentinel has no such
    command and reads its TLS files only at start. With TLS on, liveness fails once the
    mounted files differ from those Sentinel started with, so the kubelet restarts the
    sentinel container alone (Redis keeps serving; the new Sentinel asks the others for the
    master) before the old certificate expires: cert-manager renews a third of its lifetime
    early.
    """
    tls = settings.tls.enabled
    renewed = (
        [
            f'run_dir="${{{ENV_ACL_FILE}%/*}}"',
            f'started="$(cat "$run_dir/{SENTINEL_TLS_CHECKSUM}")"',
            f'if [ "$({tls_checksum_line()})" != "$started" ]; then',
            '  echo "sentinel: the TLS Secret was renewed; restarting to serve it"; exit 1',
            "fi",
        ]
        if tls
        else []
    )
    return [
        "sh",
        "-c",
        "\n".join(
            [
                *renewed,
                sentinel_cli_prelude(tls),
                '[ "$(scli ping)" = PONG ] || { echo "sentinel does not answer"; exit 1; }',
            ]
        ),
    ]


RESTORE_PING_MS = 2000
"""A Sentinel watching the standalone pod takes its down-after back only once its last valid
PING reply from the master is this recent: two ping periods, so its own link works."""


def sentinel_readiness_command(settings: StackSettings) -> list[str]:
    """Ready when Sentinel answers and knows a master (its own quorum is the check's job).

    A Sentinel that started watching the standalone pod a move replaces (SENTINEL_OF_STANDALONE)
    takes the configured down-after back here, once the master it names accepts the Sentinel
    user (the new pod 0) and its own link has had a valid reply within RESTORE_PING_MS:
    Sentinel counts a link from its creation, and retries a link to a vanished address only
    every 15 s, during which it would see the new master down.
    """
    sentinel = settings.broker.sentinel
    name = sentinel.master_name
    return [
        "sh",
        "-c",
        "\n".join(
            [
                sentinel_cli_prelude(settings.tls.enabled),
                f'master="$(scli SENTINEL get-master-addr-by-name {name} | head -n 1)"',
                '[ -n "$master" ] || { echo "sentinel knows no master"; exit 1; }',
                f'run_dir="${{{ENV_ACL_FILE}%/*}}"',
                f'[ -e "$run_dir/{SENTINEL_OF_STANDALONE}" ] || exit 0',
                refusal_function(settings),
                f'refuses "$master" {SENTINEL_USER} '
                f'"${ENV_USERS_DIR}/{SENTINEL_USER_PASSWORD_FILE}" && exit 0',
                f'view="$(scli SENTINEL MASTER {name})"',
                "field() {",
                '  echo "$view" | awk -v key="$1" \'previous == key { print; exit }'
                " { previous = $0 }'",
                "}",
                'case "$(field flags)" in *disconnected* | *s_down*) exit 0 ;; esac',
                'ok_ms="$(field last-ok-ping-reply)"',
                f'[ -n "$ok_ms" ] && [ "$ok_ms" -lt {RESTORE_PING_MS} ] || exit 0',
                f'reply="$(scli SENTINEL SET {name} down-after-milliseconds '
                f'{sentinel.down_after_ms})"',
                f'[ "$reply" = OK ] && rm -f "$run_dir/{SENTINEL_OF_STANDALONE}" &&',
                '  echo "sentinel: $master answers; configured down-after restored"',
                "exit 0",
            ]
        ),
    ]


def redis_readiness_lines() -> list[str]:
    """Extra readiness of a replicated Redis: a replica is ready once its link is up.

    A rollout then waits for each restarted replica to have synced before it takes the next
    pod, so it never stops two up-to-date copies at once. The exception is a replica of the
    standalone broker a move to Sentinel replaces (REPLICA_OF_STANDALONE): that pod refuses
    the replication user, and the StatefulSet replaces it (the first master, on its volume)
    only once the new pods are ready. Such a replica is ready until its link first comes up,
    then as any other.
    """
    return [
        f'run_dir="${{{ENV_ACL_FILE}%/*}}"',
        'repl="$(cli info replication)"',
        'case "$repl" in',
        "  *role:slave*)",
        '    if echo "$repl" | grep -q "^master_link_status:up"; then',
        f'      rm -f "$run_dir/{REPLICA_OF_STANDALONE}"',
        f'    elif [ ! -e "$run_dir/{REPLICA_OF_STANDALONE}" ]; then',
        '      echo "not ready: replication link down"; exit 1',
        "    fi ;;",
        "esac",
    ]


def handover_command(settings: StackSettings) -> list[str]:
    """Return the Redis container's preStop: a master hands its role over before the pod stops.

    Deleting the master's pod (a drain, a rollout, a node pool scale-down) moves the master
    role away first, so clients lose at most a publish retry instead of down-after plus an
    election, and no write is dropped:

    1. Writes are held here (CLIENT PAUSE WRITE, as the `sentinel` user), and the hook waits
       until every replica with its link up has applied the stream up to here (Sentinel
       promotes by offsets it read up to a second ago and does not wait).
    2. Another pod's Sentinel is asked for a failover (SENTINEL FAILOVER: no vote, the best
       replica is promoted at once).
    3. As soon as that Sentinel names the new master, this Redis follows it (REPLICAOF) at
       once: Sentinel itself would demote it only at its next look, seconds later, and every
       write it took meanwhile (acknowledgements, results) would be dropped by the resync.
    4. Once every Sentinel that answers names the new master (AGREE_SECONDS at most), every
       client is disconnected, then writes are released. A held write dies unexecuted with
       its connection; kombu reconnects through Sentinel and sends it again to the new
       master. Released into this replica instead, it would meet READONLY, and so would the
       retry on another pooled connection still open here: the publish would fail.

    5. The hook returns once this replica is in sync and not rewriting its AOF (Redis
       refuses SIGTERM during the rewrite a full sync starts).

    Bounded by HANDOVER_SECONDS (the pause expires by then too); a replica stops at once.
    """
    name = settings.broker.sentinel.master_name
    tls = _cli_tls(settings.tls.enabled)
    port = f"${ENV_PORT}"
    return [
        "sh",
        "-c",
        "\n".join(
            [
                probe_prelude(tls=settings.tls.enabled),
                f'run_dir="${{{ENV_ACL_FILE}%/*}}"',
                discovery_functions(settings),
                "cli info replication | grep -q '^role:master' || exit 0",
                "# Into the container's log: Kubernetes keeps a preStop's own output nowhere.",
                "[ -w /proc/1/fd/1 ] && exec >/proc/1/fd/1 2>/proc/1/fd/2",
                "# What clients read: the master's entry (SENTINEL MASTER, as redis-py's",
                "# SENTINEL MASTERS), which moves only at +switch-master. get-master-addr-by-name",
                "# names the promoted replica earlier, while clients are still sent here.",
                "clients_master() {",
                f'  sentinel_at 2 "$1" SENTINEL MASTER {name} 2>/dev/null |',
                '  while read -r key; do read -r value; [ "$key" = ip ] && echo "$value"; done',
                "}",
                "# redis_at HOST COMMAND...: one bounded command to a pod's Redis, as `sentinel`.",
                "redis_at() {",
                '  at_redis="$1"; shift',
                f'  REDISCLI_AUTH="$(cat "${ENV_USERS_DIR}/{SENTINEL_USER_PASSWORD_FILE}")" '
                f"timeout 3 redis-cli --no-auth-warning --user {SENTINEL_USER} "
                f'-h "$at_redis" -p "{port}"{tls} "$@"',
                "}",
                'admin() { redis_at 127.0.0.1 "$@"; }',
                "# replicated HOST: how much of the stream a replica with its link up has applied.",
                "replicated() {",
                "  redis_at \"$1\" INFO replication 2>/dev/null | tr -d '\\r' | {",
                '    link=""; applied=""',
                "    while IFS=: read -r key value; do",
                '      case "$key" in',
                '        master_link_status) link="$value" ;;',
                '        slave_repl_offset) applied="$value" ;;',
                "      esac",
                "    done",
                '    [ "$link" = up ] && echo "$applied"',
                "  }",
                "}",
                f"admin CLIENT PAUSE {HANDOVER_SECONDS * 1000} WRITE >/dev/null",
                "# Every write this master acknowledged reaches the replicas before one is",
                "# promoted (Sentinel does not wait for that): nothing new comes in while paused.",
                "target=\"$(admin INFO replication | tr -d '\\r' |"
                " while IFS=: read -r key value; do"
                ' [ "$key" = master_repl_offset ] && echo "$value"; done)"',
                f"caught_up_by=$(( $(date +%s) + {CATCH_UP_SECONDS} ))",
                'while [ -n "$target" ] && [ "$(date +%s)" -lt "$caught_up_by" ]; do',
                '  behind=""',
                "  for host in $peers; do",
                '    [ "$host" = "$me" ] && continue',
                '    applied="$(replicated "$host" || true)"',
                '    [ -z "$applied" ] || [ "$applied" -ge "$target" ] || behind="$host"',
                "  done",
                '  [ -z "$behind" ] && break',
                "  sleep 0.05",
                "done",
                'if [ -n "$behind" ]; then',
                '  echo "handover: $behind had not applied the last writes after'
                f' {CATCH_UP_SECONDS} s" >&2',
                "else",
                '  echo "handover: writes held; the replicas have all of them (offset $target)"',
                "fi",
                'asked=""',
                "for host in $peers; do",
                '  [ "$host" = "$me" ] && continue',
                f'  reply="$(sentinel_at 3 "$host" SENTINEL FAILOVER {name} 2>&1)"',
                '  [ "$reply" = OK ] && { asked="$host"; break; }',
                "done",
                'if [ -z "$asked" ]; then',
                "  admin CLIENT UNPAUSE >/dev/null",
                '  echo "handover: no Sentinel took the failover; stopping as master" >&2; exit 0',
                "fi",
                f"deadline=$(( $(date +%s) + {HANDOVER_SECONDS} ))",
                'while [ "$(date +%s)" -lt "$deadline" ]; do',
                '  new="$(ask_sentinel "$asked" || true)"',
                '  if [ -n "$new" ] && [ "$new" != "$me" ]; then',
                f'    admin REPLICAOF "$new" "{port}" >/dev/null',
                "  fi",
                "  if cli info replication | grep -q '^role:slave'; then",
                "    # Clients reconnect through Sentinel: let every Sentinel that answers show",
                "    # them the new master first (a missing one, this pod's included, is skipped).",
                f"    agree_by=$(( $(date +%s) + {AGREE_SECONDS} ))",
                '    while [ "$(date +%s)" -lt "$agree_by" ]; do',
                '      stale=""',
                "      for host in $peers; do",
                '        named="$(clients_master "$host" || true)"',
                '        [ -z "$named" ] || [ "$named" = "$new" ] || stale="$host"',
                "      done",
                '      [ -z "$stale" ] && break',
                "      sleep 0.2",
                "    done",
                '    [ -z "$stale" ] ||',
                '      echo "handover: the Sentinel of $stale still shows the old master" >&2',
                "    # Drop every client before the release: held writes die unexecuted with",
                "    # their connections and are retried on the new master, and no pooled",
                "    # connection is left to answer READONLY (a publish that meets READONLY",
                "    # after its one reconnect fails). They would all be cut when the pod stops.",
                "    admin CLIENT KILL TYPE normal >/dev/null",
                "    admin CLIENT KILL TYPE pubsub >/dev/null",
                "    admin CLIENT UNPAUSE >/dev/null",
                '    echo "handover: $new is master; this pod is its replica now"',
                "    break",
                "  fi",
                "  sleep 0.2",
                "done",
                "# A full sync makes Redis rewrite its AOF, and it refuses SIGTERM until that ends",
                "# ('Writing initial AOF, can't exit'): stop once the replica has settled.",
                'while [ "$(date +%s)" -lt "$deadline" ]; do',
                '  info="$(cli info replication; cli info persistence)"',
                "  settled=yes",
                "  for line in role:slave master_link_status:up master_sync_in_progress:0 \\",
                "      aof_rewrite_in_progress:0 aof_rewrite_scheduled:0; do",
                '    echo "$info" | grep -q "^$line" || settled=""',
                "  done",
                '  [ -n "$settled" ] && exit 0',
                "  sleep 0.2",
                "done",
                "admin CLIENT UNPAUSE >/dev/null",
                'echo "handover: not a settled replica after the wait; stopping anyway" >&2',
            ]
        ),
    ]


def fence_script(settings: StackSettings) -> str:
    """Return the fence: the master drops replica links as soon as Redis counts them as lagging.

    With `min-replicas-to-write`, a master cut off from its replicas refuses writes once fewer
    than that many replicas acknowledged within `min-replicas-max-lag` seconds. Redis counts a
    replica's lag in whole seconds and refreshes its count of good replicas once a second
    (replicationCron), so the refusal came up to about two seconds past the bound (bench:
    partition). The fence reads INFO replication every FENCE_POLL_SECONDS on one connection;
    when fewer online replicas than required are within the bound, it drops every replica
    link (CLIENT KILL TYPE replica: a replica's client `idle` cannot tell which one lags, since
    the replication stream the master writes to it resets that too). Redis recounts at once
    when a replica disconnects, so the master refuses writes (NOREPLICAS) within the bound
    plus one second of the last acknowledgement. It acts only when Redis is about to refuse
    writes anyway; the replicas that are in fact reachable reconnect and resume from the
    backlog (PSYNC) at once and count as good again. Runs in the reloader container, as the
    `sentinel` user; empty when the loss bound is off.
    """
    sentinel = settings.broker.sentinel
    need, lag = sentinel.min_replicas_to_write, sentinel.min_replicas_max_lag
    if need == 0:
        return ""
    tls = " --tls --insecure" if settings.tls.enabled else ""
    auth = f'REDISCLI_AUTH="$(cat "${ENV_USERS_DIR}/{SENTINEL_USER_PASSWORD_FILE}")"'
    cli = f'redis-cli --no-auth-warning --user {SENTINEL_USER} -h 127.0.0.1 -p "${ENV_PORT}"{tls}'

    return "\n".join(
        [
            "# --- fence (components/sentinel_config.py) ---",
            "cr=\"$(printf '\\r')\"",
            "fence_drop() {",
            "  # Every replica link: the lagging ones stop counting at once; the others reconnect",
            "  # and resume from the backlog (PSYNC) within milliseconds.",
            f'  dropped="$({auth} timeout {CLI_TIMEOUT_SECONDS} {cli} CLIENT KILL TYPE replica)"',
            f'  echo "fence: fewer than {need} replica(s) acknowledged within {lag} s;'
            ' dropped $dropped replica link(s): writes are refused now"',
            "}",
            "fence_watch() {",
            '  role=""; fresh=0; stale=0',
            f"  {auth} {cli} -r -1 -i {FENCE_POLL_SECONDS} INFO replication |",
            "  while IFS= read -r line; do",
            '    line="${line%"$cr"}"',
            '    case "$line" in',
            '      "# Replication")',
            "        # The previous reply is complete: judge it.",
            f'        if [ "$role" = master ] && [ "$fresh" -lt {need} ] &&',
            '          [ "$stale" -gt 0 ]; then',
            "          fence_drop",
            "        fi",
            '        role=""; fresh=0; stale=0 ;;',
            '      role:*) role="${line#role:}" ;;',
            "      slave[0-9]*:*state=online*)",
            '        lag_now="${line##*lag=}"; lag_now="${lag_now%%,*}"',
            f'        if [ "$lag_now" -le {lag} ]; then fresh=$((fresh + 1));'
            " else stale=$((stale + 1)); fi ;;",
            "    esac",
            "  done",
            "}",
            "# One connection for as long as Redis keeps it; again a second after it is lost.",
            "( while :; do fence_watch; sleep 1; done ) &",
            "# --- end of fence ---",
        ]
    )


REJOIN_POLL_SECONDS = 2
"""How often the reloader looks at a replica of the standalone broker a move replaces."""


def rejoin_script(settings: StackSettings) -> str:
    """Return the rejoin loop: a replica of the moved standalone broker reconnects at once.

    Such a replica (REPLICA_OF_STANDALONE) has been trying its master, pod 0, by name since it
    started, and was refused. When the StatefulSet replaces that pod, a connection attempt made
    while pod 0's name still gave the old pod's vanished address waits repl-timeout (60 s)
    before Redis tries again (seen under the real engine: the replica synced a minute after
    the new master, which meanwhile had one replica to count for min-replicas-to-write). The
    loop runs in the reloader container as the `sentinel` user: once the master accepts the
    replication user and the link has stayed down for two passes with no sync in progress, it
    restarts replication (REPLICAOF NO ONE then REPLICAOF, in one MULTI/EXEC as Sentinel
    itself reconfigures replicas, so no client sees a master in between), which resolves the
    name again. It does nothing once the marker is gone (the link came up).
    """
    port = f"${ENV_PORT}"
    loopback_tls = " --tls --insecure" if settings.tls.enabled else ""
    auth = f'REDISCLI_AUTH="$(cat "${ENV_USERS_DIR}/{SENTINEL_USER_PASSWORD_FILE}")"'
    return "\n".join(
        [
            "# --- rejoin (components/sentinel_config.py) ---",
            refusal_function(settings),
            "rejoin_admin() {",
            f"  {auth} timeout {CLI_TIMEOUT_SECONDS} redis-cli --no-auth-warning"
            f' --user {SENTINEL_USER} -h 127.0.0.1 -p "{port}"{loopback_tls} "$@"',
            "}",
            "rejoin_pass() {",
            f'  [ -e "$run_dir/{REPLICA_OF_STANDALONE}" ] || {{ stuck=""; return 0; }}',
            "  info=\"$(rejoin_admin INFO replication | tr -d '\\r')\"",
            "  for line in role:slave master_link_status:down master_sync_in_progress:0; do",
            '    echo "$info" | grep -q "^$line" || { stuck=""; return 0; }',
            "  done",
            '  master="$(echo "$info" | sed -n "s/^master_host://p")"',
            f'  reply="$(login "$master" {REPLICATOR_USER} '
            f'"${ENV_USERS_DIR}/{REPLICATOR_PASSWORD_FILE}")"',
            '  [ "$reply" = PONG ] || { stuck=""; return 0; }',
            '  if [ "$stuck" != "$master" ]; then stuck="$master"; return 0; fi',
            f'  printf "MULTI\\nREPLICAOF NO ONE\\nREPLICAOF %s %s\\nEXEC\\n" "$master" "{port}" |',
            "    rejoin_admin >/dev/null",
            '  echo "rejoin: $master accepts replication now; reconnecting to it"',
            '  stuck=""',
            "}",
            f'( stuck=""; while :; do rejoin_pass; sleep {REJOIN_POLL_SECONDS}; done ) &',
            "# --- end of rejoin ---",
        ]
    )


def reloader_background(settings: StackSettings) -> str:
    """Return the replicated broker's loops beside the reloader's own: fence, then rejoin."""
    return "\n".join(part for part in (fence_script(settings), rejoin_script(settings)) if part)
