"""`brokerctl render --out`: nothing outside the folder is ever deleted or written.

The marker an earlier render leaves (`.brokerctl-render`) is data anyone can edit, and the
folder may hold symbolic links planted by someone else: neither may redirect a delete or a
write outside `--out`. A wrong `--out` is a usage error, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from brokerctl import render
from brokerctl.errors import EXIT_USAGE, CommandError
from tests.unit.conftest import run_brokerctl

VICTIM_TEXT = "not render's: must survive\n"


def config_map(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}}


@pytest.fixture
def earlier_render(tmp_path: Path) -> Path:
    """Return a folder an earlier render wrote (two objects)."""
    out = tmp_path / "out"
    render.write_objects([config_map("a"), config_map("b")], out)
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.yaml"
    path.write_text(VICTIM_TEXT)
    return path


def rerender_refused(out: Path) -> CommandError:
    with pytest.raises(CommandError) as caught:
        render.write_objects([config_map("a")], out)
    assert caught.value.exit_code == EXIT_USAGE, caught.value.message
    return caught.value


def list_in_marker(out: Path, *names: str) -> None:
    marker = out / render.MARKER
    marker.write_text(marker.read_text() + "".join(f"{name}\n" for name in names))


@pytest.mark.parametrize("entry", ["../victim.yaml", "ABSOLUTE", "sub/../../victim.yaml"])
def test_marker_naming_a_path_outside_out_deletes_nothing(earlier_render, victim, entry):
    entry = str(victim) if entry == "ABSOLUTE" else entry
    list_in_marker(earlier_render, entry)
    error = rerender_refused(earlier_render)
    assert victim.read_text() == VICTIM_TEXT, f"a marker entry {entry!r} deleted a file outside"
    assert entry in error.message, "the error should name the bad marker entry"
    assert str(earlier_render / render.MARKER) in error.message, "and the marker file"
    assert (earlier_render / "configmap-b.yaml").exists(), "nothing may be deleted on refusal"


def test_marker_naming_a_symlink_to_outside_leaves_its_target(earlier_render, victim):
    (earlier_render / "configmap-b.yaml").unlink()
    (earlier_render / "configmap-b.yaml").symlink_to(victim)
    rerender_refused(earlier_render)
    assert victim.read_text() == VICTIM_TEXT


def test_marker_reaching_outside_through_a_linked_folder_deletes_nothing(earlier_render, victim):
    (earlier_render / "linked").symlink_to(victim.parent, target_is_directory=True)
    list_in_marker(earlier_render, "linked/victim.yaml")
    rerender_refused(earlier_render)
    assert victim.read_text() == VICTIM_TEXT


def test_a_symlink_planted_where_render_writes_is_not_followed(tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir()
    (out / render.MARKER).write_text("")
    (out / "configmap-a.yaml").symlink_to(victim)
    error = rerender_refused(out)
    assert victim.read_text() == VICTIM_TEXT, "render wrote through a planted symlink"
    assert "configmap-a.yaml" in error.message


def test_a_marker_that_is_a_symlink_is_neither_read_nor_overwritten(tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir()
    (out / render.MARKER).symlink_to(victim)
    rerender_refused(out)
    assert victim.read_text() == VICTIM_TEXT


def test_rerender_replaces_only_what_the_earlier_render_wrote(earlier_render):
    (earlier_render / "notes.txt").write_text("mine")
    written = render.write_objects([config_map("a")], earlier_render)
    assert [p.name for p in written] == ["configmap-a.yaml"]
    assert not (earlier_render / "configmap-b.yaml").exists(), "a stale object file was kept"
    assert (earlier_render / "notes.txt").read_text() == "mine", "a file not render's was touched"
    assert (earlier_render / render.MARKER).read_text() == "configmap-a.yaml\n"


def assert_usage_error_naming(result, path: Path) -> None:
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"--out {path}" in result.stderr, "the error should name the --out path"
    assert "allowed:" in result.stderr, "the error should say what --out may be"


def test_out_that_is_a_file_is_a_usage_error(tmp_path):
    out = tmp_path / "rendered.yaml"
    out.write_text("mine")
    result = run_brokerctl("render", "--stack", "dev", "--out", str(out))
    assert_usage_error_naming(result, out)
    assert out.read_text() == "mine"


def test_out_whose_parent_is_missing_is_a_usage_error(tmp_path):
    out = tmp_path / "missing" / "dev"
    result = run_brokerctl("render", "--stack", "dev", "--out", str(out))
    assert_usage_error_naming(result, out)
    assert not (tmp_path / "missing").exists(), "a refused --out must create nothing"
