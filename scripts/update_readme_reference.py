"""Regenerate the settings reference inside README.md from the settings model."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.reference import reference_markdown

START, END = "<!-- settings-reference:start -->", "<!-- settings-reference:end -->"


def updated(readme: str) -> str:
    """README text with the block between the markers replaced by the current reference."""
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{reference_markdown()}{END}{tail}"


if __name__ == "__main__":
    path = Path(__file__).resolve().parent.parent / "README.md"
    path.write_text(updated(path.read_text()))
