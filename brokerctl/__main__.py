"""Dispatch `python -m brokerctl <command>`; the only place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import sys

from brokerctl import check, render, settings_cmd
from brokerctl.errors import EXIT_USAGE, CommandError

COMMANDS = (render, settings_cmd, check)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser; each command module registers its own sub-parser."""
    parser = argparse.ArgumentParser(
        prog="python -m brokerctl",
        description="Render, inspect and check the Celery-on-Redis stacks of this project.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code (0 ok, 1 check failed, 2 usage/settings error)."""
    parser = build_parser()
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
