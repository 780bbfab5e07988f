"""README.md stays true: its settings reference is the model's, its commands exist."""

from __future__ import annotations

from scripts.update_readme_reference import updated
from tests.unit.conftest import PROJECT_ROOT


def test_readme_settings_reference_matches_the_model():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert readme == updated(readme), (
        "README.md's settings reference differs from components/settings.py; "
        "run `.venv/bin/python scripts/update_readme_reference.py`"
    )


def test_readme_gives_the_two_setup_commands_that_ci_runs():
    readme = (PROJECT_ROOT / "README.md").read_text()
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "\n    make\n" in readme, "README lost its two commands"
    assert "\n    make test\n" in readme, "README lost its two commands"
    assert "make test" in ci, ".ci/run does not run the README's test command"
