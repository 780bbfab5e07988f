"""The scale-in controller's arithmetic: cost per pod, which pods to patch, in-flight per pool."""

from __future__ import annotations

import pytest

from brokerctl.deletioncost import (
    ANNOTATION,
    MAX_COST,
    POOL_LABEL,
    Load,
    WorkerPod,
    deletion_cost,
    inflight_by_pool,
    parse_load,
    parse_pools,
    planned_patches,
)


def pod(name: str, cost: str | None = None, pool: str = "rel-pdf", **extra: object) -> WorkerPod:
    """Return a worker pod as the API server lists it (annotation as found, labels, phase)."""
    metadata: dict[str, object] = {"name": name, "uid": f"uid-{name}", "labels": {POOL_LABEL: pool}}
    if cost is not None:
        metadata["annotations"] = {ANNOTATION: cost}
    if extra.get("deleting"):
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return WorkerPod.from_api({"metadata": metadata, "status": {"phase": extra.get("phase")}})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"running": 2, "held": 3}', Load(2, 3)),
        ('{"running": 0, "held": 0}', Load(0, 0)),
        (b'{"running": 2, "held": 1}', Load(2, 2)),  # held never below running
        (None, None),
        (b"not json", None),
        (b'{"running": 1}', None),
        (b'{"running": -1, "held": 0}', None),
        (b'{"running": "x", "held": 0}', None),
        (b"[1, 2]", None),
    ],
)
def test_load_entries_decode_or_count_as_missing(raw: bytes | str | None, expected: object) -> None:
    assert parse_load(raw) == expected, f"{raw!r} decoded wrongly"


def test_cost_is_the_running_task_count_so_idle_pods_go_first() -> None:
    assert deletion_cost(Load(running=0, held=0)) == 0, "an idle pod must cost nothing"
    assert deletion_cost(Load(running=0, held=5)) == 0, (
        "prefetched/ETA messages are handed back at once on shutdown: they must not spare a pod"
    )
    assert deletion_cost(Load(running=3, held=4)) == 3
    assert deletion_cost(Load(running=MAX_COST + 10, held=MAX_COST + 10)) == MAX_COST, (
        "the annotation is an int32"
    )


def test_only_pods_whose_cost_changed_are_patched() -> None:
    pods = [
        pod("idle-unset"),  # no annotation yet, idle: "0" is a change (absent != "0")
        pod("idle-zero", cost="0"),  # unchanged
        pod("busy-stale", cost="0"),  # started a task
        pod("busy-same", cost="2"),  # unchanged
        pod("done", cost="1"),  # finished its task
        pod("silent", cost="4"),  # no fresh entry: keeps its cost
        pod("leaving", cost="0", deleting=True),  # the ReplicaSet already chose it
        pod("finished", cost="0", phase="Failed"),
    ]
    loads = {
        "idle-unset": Load(0, 0),
        "idle-zero": Load(0, 1),
        "busy-stale": Load(1, 1),
        "busy-same": Load(2, 2),
        "done": Load(0, 0),
        "silent": None,
        "leaving": Load(3, 3),
        "finished": Load(1, 1),
    }
    assert planned_patches(pods, loads) == {"idle-unset": 0, "busy-stale": 1, "done": 0}


def test_in_flight_counts_every_held_task_per_pool_including_leaving_pods() -> None:
    pods = [
        pod("a", pool="rel-pdf"),
        pod("b", pool="rel-pdf", deleting=True),  # handing its tasks back: still in flight
        pod("c", pool="rel-short"),
        pod("d", pool="rel-pdf"),  # no entry: counts nothing
        pod("e", pool="other-release-pdf"),  # not a pool of this controller
    ]
    loads = {"a": Load(1, 2), "b": Load(1, 1), "c": Load(0, 0), "e": Load(5, 5)}
    pools = {"rel-pdf": "pdf", "rel-short": "short", "rel-idle": "idle"}
    assert inflight_by_pool(pods, loads, pools) == {"pdf": 3, "short": 0, "idle": 0}


def test_pool_options_map_instance_labels_to_pool_names() -> None:
    assert parse_pools(["pdf=rel-pdf", "short=rel-short"]) == {
        "rel-pdf": "pdf",
        "rel-short": "short",
    }
    for bad in ("pdf", "=rel-pdf", "pdf="):
        with pytest.raises(SystemExit, match="NAME=INSTANCE_LABEL_VALUE"):
            parse_pools([bad])
