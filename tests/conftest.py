"""How `make test` spreads the suite over pytest-xdist workers without two tests colliding.

`make test` runs `pytest -n <workers> --dist loadgroup`: each worker is a process of its own
with its own session, and tests of one `xdist_group` run on one worker, one after the other.
What must stay together:

- tests/realengine, in two groups: the tests of the folder's `control_plane` (and its `node`),
  so that it is started once instead of once per worker (group `real_engine`), and the
  modules that start control planes of their own (three nodes, the node agent's tests), one
  after the other (group `real_engine_clusters`). At most two control planes run at once
  (etcd, API server, controller manager, scheduler and node agents take most of a core while
  they work); as one group the real-engine tests took longer than the rest of the suite;
- tests/ha and tests/e2e: whole stacks as local pods, each folder on one worker so that at
  most one of them runs beside the real-engine tests;
- every module with a module-scoped fixture (a running broker or deployment shared by its
  tests): split over workers, each worker would start the fixture again.

Everything else is spread test by test. Under xdist the groups are queued first, heaviest
first (HEAVY_GROUPS, with `--no-loadscope-reorder`), so that the long ones start at once on
different workers and short tests fill the gaps; a serial run (`-n 0`, `-p no:xdist`, or one
file) keeps the file order.

Resources shared between workers are made unique where they are created, not here: ports are
picked free at run time and kept from others until the server binds them
(tests/support/network.py free_port), network namespaces carry the test process's PID
(tests/podrunner/runtime.py), scratch folders come from mkdtemp or pytest's per-worker
tmp_path, and the machine-wide stand-in venv is built under a file lock (tests/e2e/images.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _pytest.nodeid import NodeId

TESTS = Path(__file__).resolve().parent

FOLDER_GROUPS = {"ha": "ha", "e2e": "e2e"}
"""Folders under tests/ whose every test runs on one worker, and that group's name."""

REAL_ENGINE = "realengine"
"""The folder of the real-engine tests: two groups, by whether a test uses `control_plane`."""

HEAVY_GROUPS = ("real_engine", "e2e", "ha", "real_engine_clusters")
"""Queued first under xdist, in this order: the longest first, so that it starts at once; the
other real-engine group after e2e and ha, so that it follows one of them on its worker instead
of starting a second control plane beside the first from the start (see README Tests)."""

SHARED_SCOPES = ("module", "package", "class")
"""A test using a fixture of one of these scopes runs on the same worker as its module."""


def group_of(item: pytest.Item) -> str | None:
    """Return the xdist group an item belongs to, or None to let it run on any worker."""
    marked = item.get_closest_marker("xdist_group")
    if marked is not None:  # a test that names its own group keeps it
        return str(marked.args[0] if marked.args else marked.kwargs.get("name", "default"))
    path = Path(str(item.fspath)).resolve()
    if TESTS in path.parents:
        folder = path.relative_to(TESTS).parts[0]
        if folder == REAL_ENGINE:
            shared = "control_plane" in getattr(item, "fixturenames", ())
            return "real_engine" if shared else "real_engine_clusters"
        if folder in FOLDER_GROUPS:
            return FOLDER_GROUPS[folder]
    fixture_info = getattr(item, "_fixtureinfo", None)
    if fixture_info is not None:
        for definitions in fixture_info.name2fixturedefs.values():
            if definitions and definitions[-1].scope in SHARED_SCOPES:
                return item.nodeid.split("::", 1)[0]
    return None


def tag_with_group(item: pytest.Item, group: str) -> None:
    """Append `@group` to the test's id: what xdist's loadgroup scheduler groups by.

    xdist 3.8 appends it itself by assigning `item._nodeid`, which pytest 9.2 no longer reads
    (ids are structured, `item._id`): every test would be spread as if it had no group
    (pytest-dev/pytest-xdist#1386, fix not released). Remove this once xdist's own works: the
    check below then finds the suffix already there.
    """
    suffixed = f"{item.nodeid}@{group}"
    if not item.nodeid.endswith(f"@{group}"):
        item._id = NodeId.parse(suffixed)  # the workaround, see above


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its xdist group; under xdist, queue the heavy groups first.

    trylast: after xdist's own hook of this name, which would read the marks added here.
    """
    distributing = os.environ.get("PYTEST_XDIST_WORKER") is not None
    # A worker's `dist` option is "no"; xdist keeps whether it is loadgroup in this one.
    loadgroup = distributing and bool(getattr(config.option, "loadgroup", False))
    groups: dict[int, str | None] = {}
    for item in items:
        group = groups[id(item)] = group_of(item)
        if group is None:
            continue
        item.add_marker(pytest.mark.xdist_group(group))
        if loadgroup:
            tag_with_group(item, group)
    if distributing:
        rank = {group: index for index, group in enumerate(HEAVY_GROUPS)}
        # A stable sort: within a group, and among the rest, the file order is kept.
        items.sort(key=lambda item: rank.get(groups[id(item)] or "", len(rank)))
