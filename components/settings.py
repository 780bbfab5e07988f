"""The settings model: every choice a stack makes, its default, and the rules between them.

This is the project's "values file". Stack files (config/Pulumi.<stack>.yaml) state only what
an environment changes; everything else is a default here, documented beside the field. The
README's settings reference is generated from these descriptions (tests/unit fails when they
drift). Models forbid unknown keys at every depth: a typo must never fall back to a default.

Only `components.stack_config.load_stack_config` reads Pulumi config; components receive the
frozen model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from components.engine import (
    DEFAULT_IMAGES,
    ENGINE_NAMES,
    VERSION_PATTERN,
    Engine,
    Version,
    image_problems,
    parse_version,
)
from components.images import ImageReference, image_version
from components.k8s_values import (
    INT32_MAX,
    DnsLabel,
    DnsSubdomain,
    EnvVarName,
    LabelKey,
    LabelValue,
    number_problem,
)
from components.quantities import CpuQuantity, MemoryQuantity, cpu_millicores, memory_bytes

PROJECT = "celery-redis"
"""The Pulumi project name, and so the namespace of every config key (`celery-redis:broker`)."""

DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
PersistenceMode = Literal["none", "rdb", "aof", "aof-always"]
PERSISTENT_MODES = ("rdb", "aof", "aof-always")

MIB = 1024**2
AOF_REWRITE_PERCENTAGE = 100
"""redis.conf `auto-aof-rewrite-percentage`: Redis rewrites the AOF once it has grown by this
share of its size after the last rewrite, so between rewrites it reaches twice that size."""
AOF_REWRITE_MIN_SIZE_MB = 64
"""redis.conf `auto-aof-rewrite-min-size` in Redis `mb` (MiB): no automatic rewrite below it."""
FILESYSTEM_USABLE_SHARE = 0.88
"""Share of a volume's size redis-server can fill. ext4 (what most CSI drivers format) keeps 5%
for root, and Redis does not run as root; inode tables take about 1.6% and the journal up to
3.2% of a small volume. 12% covers that, with a little to spare."""
TASK_FATE_SETTINGS = ("soft_time_limit", "time_limit", "acks_late", "reject_on_worker_lost")
"""Pool settings that decide what happens to a task once a worker takes it from a queue: pools
that consume the same queue must agree on them, since either pool may take any of its tasks."""


class CrossFieldProblem(ValueError):
    """A rule between settings was broken.

    Carries the key path it concerns, relative to the model that raised it, so the error
    report can name the exact key in the stack file.
    """

    def __init__(self, problems: list[tuple[tuple[str | int, ...], object, str]]) -> None:
        super().__init__("; ".join(message for _, _, message in problems))
        self.problems = problems


class Section(BaseModel):
    """Base of every settings section.

    Unknown keys are errors, values are never coerced from another type (a quoted "3" for
    replicas is a mistake worth reporting), and settings are frozen so a component cannot
    change what another one sees. Every number is finite and fits an int32 (see
    `number_problem`), so no setting can fail the API server, or a conversion, later.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _finite(cls, value: object) -> object:
        # Before the type check, so an integer setting given .inf says so too ("not a finite
        # number") instead of "not a valid integer".
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(number_problem(value))
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _finite_int32(cls, value: object) -> object:
        problem = number_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class Problems:
    """Collects cross-field problems so one validator reports all of them together."""

    def __init__(self) -> None:
        self.found: list[tuple[tuple[str | int, ...], object, str]] = []

    def add(self, path: tuple[str | int, ...], value: object, message: str) -> None:
        """Record that the setting at `path` (relative to the validating model) is wrong."""
        self.found.append((path, value, message))

    def raise_if_any(self) -> None:
        """Raise them as one error that the settings report expands back into one line each."""
        if self.found:
            raise CrossFieldProblem(self.found)


class Resources(Section):
    """Requests and limits of one container."""

    cpu_request: CpuQuantity = Field(
        "100m",
        description=(
            "CPU the scheduler reserves; small, since both Redis and idle workers mostly wait."
        ),
    )
    cpu_limit: CpuQuantity | None = Field(
        None,
        description=(
            "CPU ceiling; unset by default because CFS throttling stalls Redis and heartbeats."
        ),
    )
    memory_request: MemoryQuantity = Field(
        "256Mi", description="Memory the scheduler reserves for the container."
    )
    memory_limit: MemoryQuantity = Field(
        "512Mi",
        description=(
            "Memory ceiling; the kernel kills the container above it, so size it with care."
        ),
    )

    @model_validator(mode="after")
    def _request_within_limit(self) -> Resources:
        problems = Problems()
        if memory_bytes(self.memory_request) > memory_bytes(self.memory_limit):
            problems.add(
                ("memory_request",),
                self.memory_request,
                f"must not exceed memory_limit ({self.memory_limit}); "
                "allowed: a quantity <= memory_limit",
            )
        # The API server refuses a container whose limit is below its request (any resource).
        if self.cpu_limit is not None and cpu_millicores(self.cpu_request) > cpu_millicores(
            self.cpu_limit
        ):
            problems.add(
                ("cpu_request",),
                self.cpu_request,
                f"must not exceed cpu_limit ({self.cpu_limit}); "
                "allowed: a quantity <= cpu_limit, or no cpu_limit",
            )
        problems.raise_if_any()
        return self


class Toleration(Section):
    """One Kubernetes toleration, for pools or brokers pinned to tainted nodes."""

    key: LabelKey = Field(..., description="Taint key to tolerate (a label key).")
    operator: Literal["Equal", "Exists"] = Field("Equal", description="How the key is matched.")
    value: LabelValue | None = Field(
        None, description="Taint value (a label value); only with operator Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Which taint effect is tolerated; unset tolerates all."
    )

    @model_validator(mode="after")
    def _exists_takes_no_value(self) -> Toleration:
        # validateTolerations (Kubernetes core validation): "value must be empty when
        # `operator` is 'Exists'".
        if self.operator == "Exists" and self.value:
            problems = Problems()
            problems.add(
                ("value",),
                self.value,
                "must be empty with operator Exists (it matches any value of the key); "
                "allowed: no value, or operator Equal",
            )
            problems.raise_if_any()
        return self


class Placement(Section):
    """Where pods may run."""

    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="Node labels the pods require (e.g. a node pool)."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Taints the pods tolerate."
    )


class Storage(Section):
    """The broker's PersistentVolumeClaim (used whenever persistence is not `none`)."""

    size: MemoryQuantity = Field(
        "8Gi",
        description=(
            "Volume size; refused below what the persistence mode writes at its peak (README: "
            "Storage sizing). It bounds the largest AOF/RDB and so the startup probe budget."
        ),
    )
    storage_class: DnsSubdomain | None = Field(
        None,
        description="StorageClass of the claim (an object name); unset uses the cluster default.",
    )
    grown_from: MemoryQuantity | None = Field(
        None,
        description="The deployed size, once you grew the claim by hand (README: Growing the "
        "broker's volume); lets `size` differ from what is deployed for that one update.",
    )


class RdbSavePoint(Section):
    """One `save <seconds> <changes>` rule: snapshot when that many writes happened in that time."""

    seconds: int = Field(..., gt=0, description="Window length in seconds.")
    changes: int = Field(..., gt=0, description="Writes within the window that trigger a snapshot.")


def _default_rdb_schedule() -> list[RdbSavePoint]:
    return [
        RdbSavePoint(seconds=3600, changes=1),
        RdbSavePoint(seconds=300, changes=100),
        RdbSavePoint(seconds=60, changes=10000),
    ]


Topology = Literal["standalone", "sentinel"]


class SentinelSettings(Section):
    """Sentinel replication (`broker.topology: sentinel`): N Redis pods, one master, Sentinels.

    A Sentinel runs beside each Redis pod; when the master stops answering for
    `down_after_ms`, `quorum` Sentinels agree it is down and a majority elects one of them to
    promote the most up-to-date replica. README: "A broker that survives losing its node".
    """

    replicas: int = Field(
        3,
        ge=3,
        le=9,
        description=(
            "Redis pods (one master, the rest replicas), each with a Sentinel beside it; at "
            "least 3, so a majority of Sentinels survives losing one node."
        ),
    )
    quorum: int | None = Field(
        None,
        ge=1,
        description=(
            "Sentinels that must see the master down before a failover starts; unset: a "
            "majority of replicas (the failover itself always needs a majority to elect a leader)."
        ),
    )
    master_name: DnsLabel = Field(
        "celery-broker", description="Name Sentinels and clients know the master by."
    )
    port: int = Field(26379, ge=1, le=65535, description="Port of the Sentinels.")
    down_after_ms: int = Field(
        5000,
        ge=1000,
        le=600000,
        description=(
            "Milliseconds without a valid reply after which a Sentinel sees the master down; "
            "the floor of every unplanned failover (bench/failover.py)."
        ),
    )
    failover_timeout_ms: int = Field(
        5000,
        ge=2000,
        le=3600000,
        description=(
            "Sentinel's failover-timeout: how long an elected leader has to promote a replica "
            "(about 1 s here), and twice this is how long Sentinels wait before retrying a "
            "failed election for the same master: 5 s keeps even two retries within 30 s "
            "(bench/failover.py)."
        ),
    )
    min_replicas_to_write: int = Field(
        1,
        ge=0,
        description=(
            "The master refuses writes (NOREPLICAS) with fewer replicas than this acknowledging "
            "within min_replicas_max_lag: an isolated old master stops taking tasks that the "
            "failover would throw away. 0 turns the loss bound off."
        ),
    )
    min_replicas_max_lag: int = Field(
        1,
        ge=1,
        le=60,
        description=(
            "Seconds since a replica last acknowledged for it to count towards "
            "min_replicas_to_write: at most this much of acknowledged writes is lost when a "
            "master is cut off."
        ),
    )
    spread: Literal["required", "preferred"] = Field(
        "required",
        description=(
            "Redis pods on different nodes: required (a node loss takes one pod; pods wait "
            "for a free node), or preferred (allowed only on ephemeral stacks)."
        ),
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(
            cpu_request="20m", memory_request="32Mi", memory_limit="64Mi"
        ),
        description="Requests and limits of each Sentinel container.",
    )

    @property
    def effective_quorum(self) -> int:
        """The quorum Sentinels run with: explicit, or a majority of them."""
        return self.quorum if self.quorum is not None else self.replicas // 2 + 1

    @model_validator(mode="after")
    def _fits_the_replicas(self) -> SentinelSettings:
        problems = Problems()
        if self.quorum is not None and self.quorum > self.replicas:
            problems.add(
                ("quorum",),
                self.quorum,
                f"exceeds the {self.replicas} Sentinels; allowed: 1 to {self.replicas}",
            )
        if self.min_replicas_to_write > self.replicas - 1:
            problems.add(
                ("min_replicas_to_write",),
                self.min_replicas_to_write,
                (
                    f"needs more replicas than the {self.replicas - 1} there are (the master "
                    f"would refuse every write); allowed: 0 to {self.replicas - 1}"
                ),
            )
        problems.raise_if_any()
        return self


class BrokerSettings(Section):
    """The Redis broker: one StatefulSet, its config, users, storage and probes."""

    engine: Engine = Field(
        "redis",
        description=(
            "The server: redis, or valkey (the Linux Foundation's fork of Redis 7.2); the "
            "rendered config, users, probes and check work on both (README: Engines and upgrades)."
        ),
    )
    image: ImageReference = Field(
        DEFAULT_IMAGES["redis"],
        description=(
            f"Server image, pinned; unset: {DEFAULT_IMAGES['redis']} for redis, "
            f"{DEFAULT_IMAGES['valkey']} for valkey. Its tag starts with the version (Redis 7.0+, "
            "Valkey 7.2+) unless engine_version says it; a digest needs engine_version."
        ),
    )
    engine_version: Annotated[str, Field(pattern=VERSION_PATTERN)] | None = Field(
        None,
        description=(
            "The version the image runs, quoted ('9.1.2'); unset reads it from the tag. Decides "
            "version-specific config lines, and an upgrade is refused when this version cannot "
            "load the data the deployed one wrote."
        ),
    )
    persistence: PersistenceMode = Field(
        "aof",
        description=(
            "none (ephemeral stacks only), rdb (snapshots), aof (fsync every second) or "
            "aof-always (fsync every write: nothing acknowledged is lost)."
        ),
    )
    rdb_schedule: list[RdbSavePoint] = Field(
        default_factory=_default_rdb_schedule,
        description="Snapshot rules for persistence rdb (Redis's classic 1h/5m/1m schedule).",
    )
    topology: Topology = Field(
        "standalone",
        description=(
            "standalone (one Redis pod) or sentinel (replicas and Sentinels, failover when the "
            "master's node is lost; README: A broker that survives losing its node)."
        ),
    )
    sentinel: SentinelSettings = Field(
        default_factory=SentinelSettings,
        description="Replicas, Sentinels and the loss bound (topology sentinel only).",
    )
    port: int = Field(6379, ge=1, le=65535, description="Port clients and probes use.")
    broker_db: int = Field(0, ge=0, le=15, description="Redis database number of the task queues.")
    result_db: int = Field(
        1,
        ge=0,
        le=15,
        description="Database of task results; apart from queues, as the research notes advise.",
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(memory_request="1Gi", memory_limit="1Gi"),
        description=(
            "Requests and limits of the redis-server container (request = limit: no overcommit)."
        ),
    )
    maxmemory: MemoryQuantity | None = Field(
        None,
        description=(
            "Redis maxmemory; unset derives it from memory_limit "
            "minus fork and client-buffer headroom."
        ),
    )
    fork_headroom_ratio: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description=(
            "Share of maxmemory kept free for copy-on-write while a persistent broker forks "
            "(RDB save, AOF rewrite); a busy broker can dirty half its pages during a rewrite."
        ),
    )
    client_buffer_reserve: MemoryQuantity = Field(
        "64Mi",
        description=(
            "Memory kept free for client query/output buffers "
            "(large PDF messages pass through them)."
        ),
    )
    max_message_bytes: MemoryQuantity = Field(
        "8Mi",
        description=(
            "Largest task message expected (a PDF as base64 JSON is ~1.33x the file); "
            "sizes the backlog."
        ),
    )
    max_queued_messages: int = Field(
        32,
        ge=1,
        description=(
            "Backlog of largest messages the broker must hold; "
            "refused if it cannot fit in maxmemory."
        ),
    )
    visibility_timeout: int | None = Field(
        None,
        gt=0,
        description=(
            "Seconds before an unacknowledged task is redelivered; unset derives it from the "
            "longest hard time limit plus ETA of any pool, plus a margin."
        ),
    )
    storage: Storage = Field(
        default_factory=Storage, description="The data volume (not used with persistence none)."
    )
    termination_grace_period_seconds: int = Field(
        60,
        ge=10,
        description="Time Redis gets on SIGTERM to write its final AOF fsync / RDB before SIGKILL.",
    )
    aof_load_mb_per_second: float = Field(
        200.0,
        gt=0,
        description=(
            "AOF load rate sizing the startup probe budget: bench/broker.py measured 201 MB/s "
            "(cold cache, local disk); set it lower for a slower storage class."
        ),
    )
    tcp_keepalive: int = Field(
        60,
        ge=0,
        description="Seconds between TCP keepalives, so dead worker connections are noticed.",
    )
    client_idle_timeout: int = Field(
        0,
        ge=0,
        description=(
            "Close idle clients after this many seconds; 0 because idle workers block on BRPOP."
        ),
    )
    placement: Placement = Field(
        default_factory=Placement, description="Node selection for the broker pod."
    )
    run_as_user: int = Field(
        10999,
        ge=1000,
        description=(
            "Non-root uid of redis-server; high, so it matches no host user (volumes use fsGroup)."
        ),
    )
    reload_interval_seconds: int = Field(
        5,
        ge=1,
        le=300,
        description=(
            "How often the reloader sidecar compares the mounted users and TLS Secrets with what "
            "Redis runs, and applies a change without a restart (the kubelet itself takes up to a "
            "minute to update mounted Secrets). Keep it under the readiness probe's 10 s, so a "
            "changed probe password reaches Redis before the probe fails twice."
        ),
    )
    reloader_resources: Resources = Field(
        default_factory=lambda: Resources(
            cpu_request="10m", memory_request="16Mi", memory_limit="32Mi"
        ),
        description="Requests and limits of the reloader sidecar (a shell loop and redis-cli).",
    )

    @model_validator(mode="before")
    @classmethod
    def _engine_default_image(cls, data: object) -> object:
        """Default an unset image to the chosen engine's pinned image, not always Redis's."""
        if isinstance(data, dict) and "image" not in data and data.get("engine") in DEFAULT_IMAGES:
            return {**data, "image": DEFAULT_IMAGES[data["engine"]]}
        return data

    @field_validator("engine_version", mode="before")
    @classmethod
    def _version_is_text(cls, value: object) -> object:
        # YAML reads 9.1 as a number (and 9.10 as 9.1): say so instead of "not a string".
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            msg = (
                f"is the number {value!r}, not a version string; allowed: the version quoted, "
                "e.g. '9.1.2' (YAML reads 9.10 as the number 9.1)"
            )
            raise ValueError(msg)  # noqa: TRY004 - pydantic reports only ValueError as a value error
        return value

    @model_validator(mode="after")
    def _engine_matches_image(self) -> BrokerSettings:
        problems = Problems()
        for key, value, message in image_problems(self.engine, self.image, self.engine_version):
            problems.add((key,), value, message)
        problems.raise_if_any()
        return self

    @property
    def server_version(self) -> Version:
        """The version the broker's image runs: engine_version, or else the image tag's."""
        if self.engine_version is not None:
            return parse_version(self.engine_version)
        tagged = image_version(self.image)
        if tagged is None:  # _engine_matches_image refuses this; kept for the type checker
            msg = f"broker.image {self.image!r} has no version"
            raise ValueError(msg)
        return tagged

    @property
    def server_name(self) -> str:
        """The engine as people name it (Redis, Valkey), for messages and docs."""
        return ENGINE_NAMES[self.engine]

    @property
    def persistent(self) -> bool:
        """Whether Redis writes data to a volume that must survive restarts."""
        return self.persistence in PERSISTENT_MODES

    def headroom_bytes(self, maxmemory: int) -> int:
        """Memory that must stay free under the container limit besides `maxmemory` itself."""
        fork = int(maxmemory * self.fork_headroom_ratio) if self.persistent else 0
        return fork + memory_bytes(self.client_buffer_reserve)

    def effective_maxmemory_bytes(self) -> int:
        """Return the maxmemory Redis gets.

        Explicit, or the largest that leaves the headroom free.
        """
        if self.maxmemory is not None:
            return memory_bytes(self.maxmemory)
        limit = memory_bytes(self.resources.memory_limit)
        usable = limit - memory_bytes(self.client_buffer_reserve)
        ratio = 1.0 + (self.fork_headroom_ratio if self.persistent else 0.0)
        return max(int(usable / ratio), 0)

    @model_validator(mode="after")
    def _memory_fits(self) -> BrokerSettings:
        problems = Problems()
        limit = memory_bytes(self.resources.memory_limit)
        maxmemory = self.effective_maxmemory_bytes()
        needed = maxmemory + self.headroom_bytes(maxmemory)
        if self.maxmemory is not None and needed > limit:
            problems.add(
                ("maxmemory",),
                self.maxmemory,
                (
                    "leaves too little headroom under resources.memory_limit "
                    f"({self.resources.memory_limit}) for fork copy-on-write "
                    f"({self.fork_headroom_ratio:.0%} of maxmemory) and client "
                    f"buffers ({self.client_buffer_reserve}); allowed: at most "
                    f"{_max_maxmemory_mib(self)} MiB, or unset to derive it"
                ),
            )
        elif maxmemory < 32 * 1024**2:
            problems.add(
                ("resources", "memory_limit"),
                self.resources.memory_limit,
                "leaves under 32 MiB for data after headroom; allowed: a larger memory_limit",
            )
        backlog = int(memory_bytes(self.max_message_bytes) * self.max_queued_messages)
        if not problems.found and backlog > maxmemory:
            problems.add(
                ("max_queued_messages",),
                self.max_queued_messages,
                (
                    f"{self.max_queued_messages} messages of {self.max_message_bytes} need "
                    f"{backlog // 1024**2} MiB but maxmemory is {maxmemory // 1024**2} MiB (a full "
                    "noeviction broker refuses new tasks); allowed: a smaller backlog, or a larger "
                    "resources.memory_limit"
                ),
            )
        if self.result_db == self.broker_db:
            problems.add(
                ("result_db",),
                self.result_db,
                f"must differ from broker_db ({self.broker_db}) so results never mix with queues",
            )
        self._add_storage_problem(problems)
        problems.raise_if_any()
        return self

    def disk_peak_bytes(self) -> tuple[int, str]:
        """Most bytes the persistence files occupy at once, and how that sum is made up.

        The dataset is at most maxmemory plus one largest message: noeviction checks memory
        before a write, so the write that crosses maxmemory is stored whole. An RDB file, or
        an AOF base file (it starts with an RDB preamble), holds at most that dataset.

        rdb: dump.rdb plus the temp-<pid>.rdb that BGSAVE writes in full before renaming it
        over dump.rdb.

        aof, aof-always: Redis 7 keeps a base file and incr files in appenddirname. It starts
        a rewrite when they have grown past (1 + auto-aof-rewrite-percentage) times their size
        after the last rewrite (at least auto-aof-rewrite-min-size); that size is the new base
        plus what was written while it was made. Until the new base is complete
        (temp-rewriteaof-bg-<pid>.aof, then renamed into appenddirname) the old base and incr
        files stay, and a new incr file takes the writes. Writes while a rewrite is due or
        running are bounded by fork_headroom_ratio x maxmemory: every logged byte is a byte of
        a message allocated in memory while the fork holds the old pages, which is the write
        volume the memory headroom already allows for copy-on-write.
        """
        maxmemory = self.effective_maxmemory_bytes()
        dataset = maxmemory + memory_bytes(self.max_message_bytes)
        if self.persistence == "rdb":
            return 2 * dataset, (
                f"dump.rdb {dataset // MIB} MiB + its temp file {dataset // MIB} MiB "
                "during a snapshot"
            )
        if self.persistence not in ("aof", "aof-always"):
            return 0, "nothing: persistence none writes no files"
        during_rewrite = int(maxmemory * self.fork_headroom_ratio)
        growth = (100 + AOF_REWRITE_PERCENTAGE) / 100
        before_rewrite = max(
            int((dataset + during_rewrite) * growth), AOF_REWRITE_MIN_SIZE_MB * MIB
        )
        total = before_rewrite + dataset + during_rewrite
        return total, (
            f"AOF at its rewrite trigger {before_rewrite // MIB} MiB + the new base "
            f"{dataset // MIB} MiB + writes during the rewrite {during_rewrite // MIB} MiB"
        )

    def minimum_storage_bytes(self) -> int:
        """Smallest volume that holds the persistence files at their peak, in whole MiB.

        The peak (`disk_peak_bytes`) plus the filesystem's own share of the volume; 0 for a
        broker that writes nothing.
        """
        peak, _ = self.disk_peak_bytes()
        if peak == 0:
            return 0
        return math.ceil(peak / FILESYSTEM_USABLE_SHARE / MIB) * MIB

    def _add_storage_problem(self, problems: Problems) -> None:
        """Refuse a volume the persistence files outgrow: a full disk stops the broker.

        aof-always exits on a failed AOF write, aof refuses every write (MISCONF), and rdb
        refuses writes after a failed snapshot (stop-writes-on-bgsave-error).
        """
        minimum = self.minimum_storage_bytes()
        if not self.persistent or memory_bytes(self.storage.size) >= minimum:
            return
        _, breakdown = self.disk_peak_bytes()
        consequence = {
            "aof-always": "Redis exits",
            "aof": "Redis refuses every write",
            "rdb": "Redis refuses writes after the failed snapshot",
        }[self.persistence]
        problems.add(
            ("storage", "size"),
            self.storage.size,
            (
                f"too small for persistence {self.persistence} with maxmemory "
                f"{self.effective_maxmemory_bytes() // MIB} MiB ({consequence} when the disk "
                f"fills): at its peak it writes {breakdown}, and the filesystem keeps "
                f"{1 - FILESYSTEM_USABLE_SHARE:.0%} of the volume; allowed: at least "
                f"{minimum // MIB}Mi (README: Storage sizing), or a smaller maxmemory"
            ),
        )


def _max_maxmemory_mib(broker: BrokerSettings) -> int:
    limit = memory_bytes(broker.resources.memory_limit) - memory_bytes(broker.client_buffer_reserve)
    ratio = 1.0 + (broker.fork_headroom_ratio if broker.persistent else 0.0)
    return int(limit / ratio) // 1024**2


class Autoscaling(Section):
    """Scaling of one pool: KEDA on queue length, or a plain CPU HPA when KEDA is off."""

    enabled: bool = Field(
        False, description="Scale this pool automatically (otherwise `replicas` is fixed)."
    )
    engine: Literal["keda", "hpa"] = Field(
        "keda", description="keda scales on queue length (needs KEDA installed); hpa scales on CPU."
    )
    min_replicas: int = Field(
        1, ge=0, description="Fewest workers; 0 lets KEDA scale an idle pool to zero."
    )
    max_replicas: int = Field(
        5, ge=1, description="Most workers (bounded by broker connections and memory)."
    )
    queue_length_per_replica: int = Field(
        4,
        ge=1,
        description=(
            "KEDA target: tasks per worker replica, waiting or in flight (running, prefetched; "
            "counted by workers.scale_in) before scaling out."
        ),
    )
    cooldown_seconds: int = Field(
        300,
        ge=30,
        description="Seconds of calm before scaling in, so a bursty queue does not flap.",
    )
    polling_seconds: int = Field(15, ge=5, description="How often KEDA reads the queue length.")
    cpu_target_percent: int = Field(75, ge=10, le=100, description="HPA target CPU utilisation.")

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        problems = Problems()
        if self.min_replicas > self.max_replicas:
            problems.add(
                ("min_replicas",),
                self.min_replicas,
                f"must not exceed max_replicas ({self.max_replicas})",
            )
        if self.engine == "hpa" and self.min_replicas < 1:
            problems.add(
                ("min_replicas",),
                self.min_replicas,
                "a CPU HPA cannot scale to zero (an idle pool has no CPU to measure); "
                "allowed: >= 1, or engine keda",
            )
        problems.raise_if_any()
        return self


class PoolSettings(Section):
    """One worker pool: a Deployment of Celery workers consuming some queues."""

    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=30)] = Field(
        ..., description="Pool name (DNS label); names the Deployment and the worker nodename."
    )
    queues: list[Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")]] = Field(
        default_factory=lambda: ["celery"],
        min_length=1,
        description="Queues this pool consumes; `celery` is Celery's default queue.",
    )
    image: ImageReference = Field(
        ...,
        description=(
            "The application image (has Celery and the app), pinned: name:tag (not latest) or "
            "name@sha256:...; required, there is no default."
        ),
    )
    app: str = Field(
        "src.celery_app", description="Module (or module:attribute) of the Celery app."
    )
    celery_bin: str = Field(
        "celery", description="The celery executable inside the image (on its PATH)."
    )
    pythonpath: str = Field(
        "/app",
        description=(
            "The image's own PYTHONPATH; repeated because the pod's env replaces the image's."
        ),
    )
    replicas: int = Field(1, ge=0, description="Worker pods when autoscaling is off.")
    concurrency: int = Field(
        2, ge=1, description="Tasks one pod runs at once (processes or threads)."
    )
    pool: Literal["prefork", "threads", "solo"] = Field(
        "prefork",
        description="Execution pool: prefork isolates tasks; threads for I/O; solo runs one.",
    )
    prefetch_multiplier: int = Field(
        1,
        ge=1,
        description="Messages reserved per process; 1 so long tasks do not wait behind each other.",
    )
    max_tasks_per_child: int | None = Field(
        100,
        ge=1,
        description="Recycle a process after this many tasks (bounds leaks); unset never.",
    )
    max_memory_per_child_kib: int | None = Field(
        None,
        ge=1024,
        description="Recycle a process above this resident memory in KiB; unset never.",
    )
    soft_time_limit: int = Field(
        600, ge=1, description="Seconds before SoftTimeLimitExceeded is raised inside a task."
    )
    time_limit: int = Field(
        660, ge=1, description="Hard limit in seconds: the process running the task is killed."
    )
    max_eta_seconds: int = Field(
        0,
        ge=0,
        description=(
            "Longest ETA/countdown the pool's tasks use; counts toward the visibility timeout."
        ),
    )
    acks_late: bool = Field(
        True,
        description="Acknowledge after the task ran, so a crash redelivers instead of losing it.",
    )
    reject_on_worker_lost: bool = Field(
        True, description="Requeue a task whose process died (needs acks_late)."
    )
    result_expires: int = Field(
        86400, ge=60, description="Seconds a task result stays in the result backend."
    )
    soft_shutdown_seconds: float = Field(
        30.0,
        ge=0,
        description=(
            "Celery 5.5+ soft shutdown: on SIGTERM running tasks get this long before they are "
            "handed back to the queue."
        ),
    )
    termination_grace_period_seconds: int | None = Field(
        None,
        ge=1,
        description=(
            "Pod grace period; unset derives soft_shutdown_seconds + 30 s for the hand-back."
        ),
    )
    liveness_stale_seconds: int = Field(
        120,
        ge=10,
        description=(
            "A worker whose heartbeat file is older than this is restarted "
            "(consumer stuck or cut off)."
        ),
    )
    startup_seconds: int = Field(
        300,
        ge=10,
        description=(
            "Time a starting worker gets to import its app and reach the broker "
            "before it is restarted."
        ),
    )
    run_as_user: int = Field(
        10001, ge=1, description="Non-root uid of the worker (the app image's user)."
    )
    alert_queue_depth: int = Field(
        100,
        ge=1,
        description=(
            "Alert when this many tasks wait in one of the pool's queues (priorities summed)."
        ),
    )
    alert_oldest_unacked_seconds: int | None = Field(
        None,
        ge=1,
        description=(
            "Alert when a delivered task stays unacknowledged this long; "
            "unset: the hard time limit."
        ),
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(memory_request="512Mi", memory_limit="1Gi"),
        description="Requests and limits of one worker container.",
    )
    env: dict[EnvVarName, str] = Field(
        default_factory=dict, description="Extra plain environment variables (no secrets here)."
    )
    broker_url_aliases: list[Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")]] = Field(
        default_factory=list,
        description=(
            "Extra variable names (e.g. REDIS_URL) that receive the broker URL from the Secret."
        ),
    )
    placement: Placement = Field(
        default_factory=Placement, description="Node selection for this pool."
    )
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling, description="Automatic scaling of this pool."
    )

    @property
    def grace_period_seconds(self) -> int:
        """The pod's terminationGracePeriodSeconds.

        Explicit, or soft shutdown plus a hand-back margin.
        """
        if self.termination_grace_period_seconds is not None:
            return self.termination_grace_period_seconds
        return int(self.soft_shutdown_seconds) + 30

    @model_validator(mode="after")
    def _limits_and_shutdown(self) -> PoolSettings:
        problems = Problems()
        if self.soft_time_limit >= self.time_limit:
            problems.add(
                ("soft_time_limit",),
                self.soft_time_limit,
                f"must be below time_limit ({self.time_limit}) so the task can clean up first",
            )
        if self.soft_shutdown_seconds >= self.grace_period_seconds:
            problems.add(
                ("soft_shutdown_seconds",),
                self.soft_shutdown_seconds,
                (
                    "must be shorter than termination_grace_period_seconds "
                    f"({self.grace_period_seconds}), "
                    "or Kubernetes kills the worker before it hands tasks back"
                ),
            )
        if self.reject_on_worker_lost and not self.acks_late:
            problems.add(
                ("reject_on_worker_lost",),
                self.reject_on_worker_lost,
                "needs acks_late: true (an early-acked task cannot be requeued)",
            )
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
            if name in self.env:
                problems.add(
                    ("env", name), "<set>", "comes from the broker Secret; remove it from env"
                )
        problems.raise_if_any()
        return self


class BeatSettings(Section):
    """The optional celery beat scheduler: at most one, ever."""

    enabled: bool = Field(
        False, description="Run one celery beat (Recreate strategy, one replica)."
    )
    image: ImageReference | None = Field(
        None, description="Image for beat, pinned; unset uses the first pool's image."
    )
    app: str | None = Field(
        None, description="Celery app module for beat; unset uses the first pool's app."
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(memory_request="128Mi", memory_limit="256Mi"),
        description="Requests and limits of the beat container.",
    )
    liveness_stale_seconds: int = Field(
        120,
        ge=20,
        description=(
            "Beat is restarted when its scheduler has not ticked for this long "
            "(it ticks 4x as often)."
        ),
    )


class ScaleInSettings(Section):
    """The deletion-cost controller: when a pool scales in, idle workers go before busy ones.

    Kubernetes removes pods with the lowest `controller.kubernetes.io/pod-deletion-cost` first;
    this small controller keeps that cost equal to the tasks each worker runs (read from the
    counts workers publish to the broker), and tells KEDA how many tasks are in flight.
    """

    enabled: bool = Field(
        True,
        description=(
            "Run the controller (one small pod): scale-in removes idle workers first, and KEDA "
            "counts running tasks, so it never scales a busy pool to zero."
        ),
    )
    interval_seconds: int = Field(
        2,
        ge=1,
        le=60,
        description=(
            "How often it reads the counts; a pod's cost is patched only when it changed."
        ),
    )
    image: ImageReference | None = Field(
        None,
        description=(
            "Image of the controller, pinned; unset uses the first pool's (it has redis-py)."
        ),
    )
    python_bin: str = Field(
        "python", description="Python executable inside that image (on its PATH)."
    )
    run_as_user: int = Field(10001, ge=1, description="Non-root uid of the controller.")
    resources: Resources = Field(
        default_factory=lambda: Resources(
            cpu_request="10m", memory_request="64Mi", memory_limit="128Mi"
        ),
        description="Requests and limits of the controller container.",
    )


def _default_pools() -> list[dict[str, str]]:
    # Validated like a stack's own pools (validate_default): the image has no default, so a
    # stack that leaves out `workers` is told to set workers.pools[0].image.
    return [{"name": "default"}]


class WorkersSettings(Section):
    """The Celery worker pools and the optional beat."""

    pools: list[PoolSettings] = Field(
        default_factory=_default_pools,
        validate_default=True,
        min_length=1,
        description="Worker pools, one Deployment each.",
    )
    beat: BeatSettings = Field(default_factory=BeatSettings, description="The optional scheduler.")
    scale_in: ScaleInSettings = Field(
        default_factory=ScaleInSettings, description="Which workers a scale-in removes first."
    )
    keda_namespace: DnsLabel = Field(
        "keda",
        description=(
            "Namespace of the KEDA operator, admitted to the broker port when a pool uses KEDA."
        ),
    )

    @model_validator(mode="after")
    def _unique_names(self) -> WorkersSettings:
        problems = Problems()
        seen: set[str] = set()
        for index, pool in enumerate(self.pools):
            if pool.name in seen:
                problems.add(("pools", index, "name"), pool.name, "pool names must be unique")
            seen.add(pool.name)
        self._add_shared_queue_problems(problems)
        self._add_scale_to_zero_problems(problems)
        problems.raise_if_any()
        return self

    def _add_scale_to_zero_problems(self, problems: Problems) -> None:
        """Require the controller for a pool KEDA may scale to zero (it counts running tasks).

        KEDA sees only the queue lists: once the last message is taken, the pool looks idle
        while its tasks still run, and the scale to zero cancels them. The controller's
        in-flight list is what keeps such a pool up.
        """
        if self.scale_in.enabled:
            return
        for index, pool in enumerate(self.pools):
            scaling = pool.autoscaling
            if scaling.enabled and scaling.engine == "keda" and scaling.min_replicas == 0:
                problems.add(
                    ("pools", index, "autoscaling", "min_replicas"),
                    0,
                    "needs workers.scale_in.enabled: true (false here): without its count of "
                    "running tasks KEDA scales the pool to zero while they run; allowed: "
                    "min_replicas >= 1, or scale_in enabled",
                )

    def _add_shared_queue_problems(self, problems: Problems) -> None:
        """Pools that consume one queue must agree on what happens to its tasks.

        Either pool may take any task of a shared queue and runs it under its own settings: a
        pool with a shorter time_limit kills, and acknowledges, a long task that the other pool
        was sized for, and one without acks_late loses a task the other would requeue. Sharing
        is allowed when the pools agree (the same queue served from two node pools, say), so no
        opt-in setting exists: one that admitted disagreeing pools would reopen the hole.
        """
        first_consumer: dict[str, int] = {}
        for index, pool in enumerate(self.pools):
            for position, queue in enumerate(pool.queues):
                other_index = first_consumer.setdefault(queue, index)
                if other_index == index:
                    continue
                other = self.pools[other_index]
                differences = [
                    f"{name} {getattr(pool, name)} here, {getattr(other, name)} there"
                    for name in TASK_FATE_SETTINGS
                    if getattr(pool, name) != getattr(other, name)
                ]
                if differences:
                    problems.add(
                        ("pools", index, "queues", position),
                        queue,
                        (
                            f"is also consumed by pool {other.name!r} "
                            f"(workers.pools[{other_index}]) with other task settings "
                            f"({'; '.join(differences)}): whichever pool takes a task applies "
                            "its own, so the shorter time limit kills and acknowledges tasks "
                            "the other pool allows; allowed: a queue of its own for each pool, "
                            f"or the same {', '.join(TASK_FATE_SETTINGS)} in both"
                        ),
                    )


class ChecksSettings(Section):
    """Post-deploy checks: the in-cluster Job that gates `pulumi up`, and its thresholds."""

    gate_enabled: bool = Field(
        True, description="Run the check Job after every change and fail `pulumi up` if it fails."
    )
    timeout_seconds: int = Field(
        10, ge=1, le=300, description="Bound on every network step of the check."
    )
    memory_warn_ratio: float = Field(
        0.8, gt=0, lt=1, description="Warn when used memory passes this share of maxmemory."
    )
    memory_fail_ratio: float = Field(
        0.95, gt=0, le=1, description="Fail when used memory passes this share of maxmemory."
    )
    backoff_limit: int = Field(
        2, ge=0, le=10, description="Retries of the check Job (a broker may still be starting)."
    )
    active_deadline_seconds: int = Field(
        300, ge=30, description="Hard bound on the check Job's whole run."
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        description=(
            "Delete a finished check Job after this many seconds. Unset keeps it (one at a time: "
            "each change replaces it), so `pulumi refresh` finds what `up` left; with a TTL, "
            "refresh sees the Job gone and the next preview plans a new check run."
        ),
    )
    image: ImageReference | None = Field(
        None,
        description=(
            "Image of the check Job, pinned; unset uses the first pool's "
            "(it has Celery and redis-py)."
        ),
    )
    python_bin: str = Field(
        "python", description="Python executable inside that image (on its PATH)."
    )
    run_as_user: int = Field(10001, ge=1, description="Non-root uid of the check Job.")
    resources: Resources = Field(
        default_factory=lambda: Resources(memory_request="128Mi", memory_limit="256Mi"),
        description="Requests and limits of the check container.",
    )

    @model_validator(mode="after")
    def _ratios(self) -> ChecksSettings:
        if self.memory_warn_ratio >= self.memory_fail_ratio:
            problems = Problems()
            problems.add(
                ("memory_warn_ratio",),
                self.memory_warn_ratio,
                f"must be below memory_fail_ratio ({self.memory_fail_ratio})",
            )
            problems.raise_if_any()
        return self


class TlsSettings(Section):
    """TLS for every connection to the broker (opt-in; prod turns it on).

    Redis then serves TLS only and every client URL is `rediss://` with verification against
    the CA in the TLS Secret's `ca.crt`. Renewed certificates are picked up without restarting
    Redis or the workers (the broker's reloader sidecar re-applies the files).
    """

    enabled: bool = Field(
        False, description="Redis serves TLS only (port 0, tls-port); clients get rediss:// URLs."
    )
    secret_name: DnsSubdomain | None = Field(
        None,
        description="An existing kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt) to serve.",
    )
    cert_manager_issuer: DnsSubdomain | None = Field(
        None,
        description="Or: a cert-manager issuer that a Certificate object requests the pair from.",
    )
    cert_manager_issuer_kind: Literal["Issuer", "ClusterIssuer"] = Field(
        "ClusterIssuer", description="Kind of that issuer."
    )
    certificate_duration_hours: int = Field(
        2160,
        ge=24,
        description="Lifetime cert-manager gives the certificate (90 days); renewed at 2/3 of it.",
    )
    cluster_domain: DnsSubdomain = Field(
        "cluster.local",
        description="The cluster's DNS domain, for the certificate's fully qualified names.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> TlsSettings:
        if self.enabled and (self.secret_name is None) == (self.cert_manager_issuer is None):
            problems = Problems()
            problems.add(
                ("secret_name",),
                self.secret_name,
                "with enabled: true set exactly one of secret_name or cert_manager_issuer",
            )
            problems.raise_if_any()
        return self


class MetricsSettings(Section):
    """The redis_exporter sidecar.

    With the Prometheus Operator, also its scrape config and alerts.
    """

    exporter_enabled: bool = Field(
        False, description="Run redis_exporter beside Redis, as the read-only user."
    )
    exporter_image: ImageReference = Field(
        "docker.io/oliver006/redis_exporter:v1.67.0", description="redis_exporter image, pinned."
    )
    exporter_port: int = Field(9121, ge=1, le=65535, description="Port Prometheus scrapes.")
    monitoring_namespace: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] = Field(
        "monitoring",
        description="Namespace of Prometheus: the only one the exporter port admits.",
    )
    prometheus_operator: bool = Field(
        False,
        description="Create a ServiceMonitor and a PrometheusRule (needs the operator's CRDs).",
    )
    scrape_interval_seconds: int = Field(
        30, ge=5, description="How often Prometheus scrapes the exporter."
    )
    rule_labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        description="Labels the Prometheus instance selects rules and monitors by.",
    )
    memory_alert_ratio: float = Field(
        0.8, gt=0, lt=1, description="Alert when used memory passes this share of maxmemory."
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(
            cpu_request="20m", memory_request="32Mi", memory_limit="64Mi"
        ),
        description="Requests and limits of the exporter container.",
    )

    @model_validator(mode="after")
    def _operator_needs_exporter(self) -> MetricsSettings:
        if self.prometheus_operator and not self.exporter_enabled:
            problems = Problems()
            problems.add(
                ("prometheus_operator",),
                True,
                "needs exporter_enabled: true (the ServiceMonitor scrapes the exporter)",
            )
            problems.raise_if_any()
        return self


class StackSettings(Section):
    """Everything one stack (environment) decides."""

    namespace: DnsLabel = Field(
        "celery", description="Kubernetes namespace that holds every object of the stack."
    )
    create_namespace: bool = Field(
        True, description="Create the namespace (false when it is managed elsewhere)."
    )
    kube_context: str | None = Field(
        None,
        description=(
            "kubeconfig context to deploy to, as named in the deploying user's kubeconfig; "
            "required unless ephemeral (an unset context means whichever one is current)."
        ),
    )
    name_prefix: Annotated[str, Field(pattern=DNS_LABEL, max_length=20)] = Field(
        "celery", description="Prefix of every object name, so two releases can share a namespace."
    )
    ephemeral: bool = Field(
        False,
        description="Marks a throwaway stack: only then may the broker run without persistence.",
    )
    broker: BrokerSettings = Field(default_factory=BrokerSettings, description="The Redis broker.")
    workers: WorkersSettings = Field(
        default_factory=dict,  # validated: the default pool needs its image set
        validate_default=True,
        description="The Celery worker pools.",
    )
    checks: ChecksSettings = Field(
        default_factory=ChecksSettings, description="The post-deploy checks."
    )
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS to the broker.")
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="Exporter, scraping and alerts."
    )

    @property
    def longest_task_seconds(self) -> int:
        """Longest time a message may stay unacknowledged legitimately: hard limit plus ETA."""
        return max(pool.time_limit + pool.max_eta_seconds for pool in self.workers.pools)

    @property
    def visibility_timeout(self) -> int:
        """Seconds before Redis redelivers an unacknowledged task.

        Explicit, or derived with a margin.
        """
        if self.broker.visibility_timeout is not None:
            return self.broker.visibility_timeout
        longest = self.longest_task_seconds
        return longest + max(300, longest // 10)

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem_in_one_round(
        cls, data: object, handler: ValidatorFunctionWrapHandler
    ) -> StackSettings:
        """Report the rules between sections together with the field errors of other sections.

        Pydantic runs `_stack_rules` only when every field is valid, so a person fixing a file
        would meet the rules' complaints only in a second round. When a field error stops
        validation, the rules whose sections are all valid run on those sections here, and
        their problems join the field errors in one ValidationError.
        """
        try:
            return handler(data)
        except ValidationError as error:
            if not isinstance(data, dict) or any(not item["loc"] for item in error.errors()):
                raise  # not a stack file's mapping, or the rules already ran
            failed = {item["loc"][0] for item in error.errors()}
            valid = frozenset(name for name in cls.model_fields if name not in failed)
            try:
                view = cls.model_construct(
                    **{name: _validated_field(cls, name, data) for name in valid}
                )
            except ValidationError:
                raise error from None  # a field valid in context but not alone: report as is
            problems = view.stack_problems(valid)
            if not problems.found:
                raise
            raise _with_cross_field_problems(error, problems) from None

    @model_validator(mode="after")
    def _stack_rules(self) -> StackSettings:
        self.stack_problems(frozenset(type(self).model_fields)).raise_if_any()
        return self

    def stack_problems(self, valid: frozenset[str]) -> Problems:
        """Check every rule between sections whose sections are all in `valid`."""
        problems = Problems()
        for sections, rule in STACK_RULES:
            if sections <= valid:
                rule(self, problems)
        return problems


def _derived_probe_fits_int32(stack: StackSettings, problems: Problems) -> None:
    """Keep the broker's derived startup probe failureThreshold within the API's int32.

    It grows with the volume size over the AOF load rate (components/redis_config.py).
    """
    from components.redis_config import startup_failure_threshold  # it builds on this module

    threshold = startup_failure_threshold(stack)
    if threshold > INT32_MAX:
        problems.add(
            ("broker", "aof_load_mb_per_second"),
            stack.broker.aof_load_mb_per_second,
            (
                f"with storage.size {stack.broker.storage.size} makes a startup probe of "
                f"{threshold} attempts, beyond the int32 Kubernetes stores; allowed: a "
                "higher load rate or a smaller volume"
            ),
        )


def _named_kube_context(stack: StackSettings, problems: Problems) -> None:
    """Deploy a lasting stack only to the cluster it names, never to the current context."""
    if not stack.ephemeral and not (stack.kube_context or "").strip():
        problems.add(
            ("kube_context",),
            stack.kube_context,
            (
                "must name the kubeconfig context this stack deploys to: without it `pulumi up` "
                "deploys to whatever context is current, which is how a prod change lands on "
                "another cluster; allowed: a context name from `kubectl config get-contexts "
                "-o name`, or set ephemeral: true for a throwaway stack"
            ),
        )


def _persistence_or_ephemeral(stack: StackSettings, problems: Problems) -> None:
    """Let only a throwaway stack run a broker that forgets its queues on restart."""
    if stack.broker.persistence == "none" and not stack.ephemeral:
        problems.add(
            ("broker", "persistence"),
            "none",
            "loses every queued task on restart; "
            "allowed: rdb, aof, aof-always, or set ephemeral: true",
        )


def _visibility_outlasts_tasks(stack: StackSettings, problems: Problems) -> None:
    """Keep Redis from redelivering a task that a worker is still allowed to run."""
    explicit = stack.broker.visibility_timeout
    if explicit is not None and explicit <= stack.longest_task_seconds:
        pool = max(stack.workers.pools, key=lambda p: p.time_limit + p.max_eta_seconds)
        problems.add(
            ("broker", "visibility_timeout"),
            explicit,
            (
                "must exceed the longest hard time limit plus ETA of any pool "
                f"(pool {pool.name!r}: "
                f"time_limit {pool.time_limit} + max_eta_seconds {pool.max_eta_seconds} = "
                f"{stack.longest_task_seconds}), or Redis redelivers tasks still running; "
                f"allowed: an integer > {stack.longest_task_seconds}, or unset to derive it"
            ),
        )


def _sentinel_spread(stack: StackSettings, problems: Problems) -> None:
    """Spread a lasting stack's Redis pods over nodes for sure: two on one node fail together."""
    sentinel = stack.broker.sentinel
    lasting = not stack.ephemeral
    if stack.broker.topology == "sentinel" and sentinel.spread != "required" and lasting:
        problems.add(
            ("broker", "sentinel", "spread"),
            sentinel.spread,
            (
                "lets two Redis pods share a node, and losing that node then loses the master "
                "and a replica together; allowed: required (on a lasting stack), or set "
                "ephemeral: true"
            ),
        )


def _sentinel_ports(stack: StackSettings, problems: Problems) -> None:
    """Give Redis, Sentinel and the exporter distinct ports: they share each pod's address."""
    if stack.broker.topology != "sentinel":
        return
    taken = {"broker.port": stack.broker.port}
    if stack.metrics.exporter_enabled:
        taken["metrics.exporter_port"] = stack.metrics.exporter_port
    port = stack.broker.sentinel.port
    clashes = [key for key, value in taken.items() if value == port]
    if clashes:
        problems.add(
            ("broker", "sentinel", "port"),
            port,
            f"is also {clashes[0]} (one pod, one address); allowed: a port none of them uses",
        )


STACK_RULES: tuple[tuple[frozenset[str], Callable[[StackSettings, Problems], None]], ...] = (
    (frozenset({"ephemeral", "kube_context"}), _named_kube_context),
    (frozenset({"ephemeral", "broker"}), _persistence_or_ephemeral),
    (frozenset({"broker", "workers"}), _visibility_outlasts_tasks),
    (frozenset({"broker"}), _derived_probe_fits_int32),
    (frozenset({"ephemeral", "broker"}), _sentinel_spread),
    (frozenset({"broker", "metrics"}), _sentinel_ports),
)
"""Rules between top-level settings, each with the settings it reads: it runs whenever those
are valid, also when another section has errors (see `_every_problem_in_one_round`)."""


@functools.cache
def _single_field_model(model: type[BaseModel], name: str) -> type[BaseModel]:
    """Return a model of only `model`'s field `name`, with the same type, default and config."""
    info = model.model_fields[name]
    return create_model(f"Only_{name}", __base__=Section, **{name: (info.annotation, info)})


def _validated_field(model: type[BaseModel], name: str, data: dict[str, object]) -> object:
    """Return field `name` validated on its own: the stack's value, or the default if unset."""
    single = _single_field_model(model, name)
    given = {name: data[name]} if name in data else {}
    return getattr(single.model_validate(given), name)


def _with_cross_field_problems(error: ValidationError, problems: Problems) -> ValidationError:
    """Return `error`'s problems plus the cross-field `problems`, as one ValidationError.

    Each original error keeps its type and message; the cross-field ones travel as a
    CrossFieldProblem, which the settings report expands to one line per key.
    """
    details: list[InitErrorDetails] = []
    for item in error.errors():
        if item["type"] == "value_error":
            details.append(
                InitErrorDetails(
                    type="value_error", loc=item["loc"], input=item["input"], ctx=item["ctx"]
                )
            )
        else:
            details.append(
                InitErrorDetails(
                    type=PydanticCustomError(item["type"], item["msg"]),
                    loc=item["loc"],
                    input=item["input"],
                )
            )
    details.append(
        InitErrorDetails(
            type="value_error",
            loc=(),
            input=None,
            ctx={"error": CrossFieldProblem(problems.found)},
        )
    )
    return ValidationError.from_exception_data(error.title, details)


SECRET_KEYS = (
    "broker_password",
    "broker_password_previous",
    "probe_password",
    "check_password",
    "keda_password",
    "exporter_password",
    "scale_in_password",
)
"""Config keys that hold credentials: set with `pulumi config set --secret`, never in plain text."""
