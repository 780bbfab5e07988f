"""Dispatch `python -m brokerctl <command>`; the only place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from brokerctl.errors import EXIT_USAGE, CommandError

COMMANDS = {
    "render": "brokerctl.render",
    "settings": "brokerctl.settings_cmd",
    "check": "brokerctl.check",
}
"""Command name -> module with `register(subparsers)`. Only the chosen command's module is
imported: `check` must not pay for Pulumi's imports, nor `render` for Celery's."""


def _modules(argv: list[str]) -> list[ModuleType]:
    chosen = [argv[0]] if argv and argv[0] in COMMANDS else list(COMMANDS)
    return [importlib.import_module(COMMANDS[name]) for name in chosen]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; each command module registers its own sub-parser."""
    parser = argparse.ArgumentParser(
        prog="python -m brokerctl",
        description="Render, inspect and check the Celery-on-Redis stacks of this project.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _modules(list(argv or [])):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code (0 ok, 1 check failed, 2 usage/settings error)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except CommandError as error:
        print(error.message, file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
