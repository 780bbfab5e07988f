"""Command line: parse, run, print; usage errors masked and reported (exit 2).

`main` is what the gate Job runs (`python brokercheck.py`, the bundle); `python -m brokerctl
check` registers the same options (add_options) and calls run_from_args.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from brokerctl.brokercheck.contract import (
    ENV_BROKER_URL,
    ENV_RESULT_BACKEND,
    ENV_WORKER_URL,
    EXIT_USAGE,
    FAIL,
    HELP,
    UsageError,
)
from brokerctl.brokercheck.masking import Masker, configure_logging
from brokerctl.brokercheck.options import add_options, config_from_args
from brokerctl.brokercheck.report import Report, format_json, format_table
from brokerctl.brokercheck.run import run_checks


def print_report(report: Report, as_json: bool) -> None:
    """Print the report: JSON alone on stdout with --json, else the table."""
    if as_json:
        print(format_json(report))
    else:
        print(format_table(report))


def usage_error_report(message: str, mask: Masker) -> dict[str, Any]:
    """Return the `brokercheck/v1` report of a run refused before any check ran (exit 2).

    CI that pipes `--json` into `jq` gets a report whatever went wrong: one failed `usage`
    entry whose `measured` is the (masked) error.
    """
    report = Report(target="", mask=mask)
    report.add(
        "usage",
        FAIL,
        message,
        "a valid command line, environment and stack outputs",
        "see --help for the options and the values they allow",
    )
    report.close()
    return report.to_dict() | {"ok": False, "exit_code": EXIT_USAGE, "duration_seconds": 0.0}


def emit_usage_error(message: str, as_json: bool, mask: Masker) -> str:
    """Print the JSON report of a usage error when --json asks for it; return the masked text.

    The caller prints the text on stderr (notes never go to stdout under --json).
    """
    text = mask(message)
    if as_json:
        print(json.dumps(usage_error_report(text, mask), indent=2, ensure_ascii=False))
    return text


def masker_for(values: Iterable[str | None], environ: Mapping[str, str] = os.environ) -> Masker:
    """Return a Masker knowing every credential in `values` and in the default URL variables.

    Built before the command line is fully understood, so that even its usage errors (a URL
    given where a number was expected, an unknown argument that is a URL) never show one.
    """
    defaults = (environ.get(name) for name in (ENV_BROKER_URL, ENV_WORKER_URL, ENV_RESULT_BACKEND))
    return Masker([*values, *defaults])


def _args_masker(args: argparse.Namespace, environ: Mapping[str, str]) -> Masker:
    """Return a Masker for every URL the options name, directly or through a variable."""
    variables = (args.url_env, args.worker_url_env, args.result_backend_env)
    named = [environ.get(variable) for variable in variables if variable]
    return masker_for([args.url, args.worker_url, args.result_backend, *named], environ)


def _asks_for_json(argv: Sequence[str]) -> bool:
    """Whether raw arguments include --json (argparse also accepts its prefixes, e.g. --js)."""
    return any(len(arg) > 2 and "--json".startswith(arg) for arg in argv)


class CheckArgumentParser(argparse.ArgumentParser):
    """argparse with the check's usage-error contract.

    Plain argparse prints its errors verbatim (`unrecognized arguments: redis://u:pw@h`,
    `invalid value: 'redis://...'`), on stderr only. Here every error is masked, is also a
    JSON report on stdout under --json, and ends with exit status 2; arguments left over are
    an error of this parser, not passed up to a parent parser that would print them raw.
    """

    _argv: Sequence[str] = ()

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse like argparse, but refuse leftovers here, where they are masked."""
        self._argv = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, []

    def error(self, message: str) -> typing.NoReturn:
        """Print the masked error (and its JSON report with --json), exit with status 2."""
        text = emit_usage_error(message, _asks_for_json(self._argv), masker_for(self._argv))
        self.print_usage(sys.stderr)
        print(f"{self.prog}: usage error: {text}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def run_from_args(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    """Run the check for parsed arguments, print the report, return the exit status.

    Raises UsageError for bad input, its message masked and, with --json, its JSON report
    already on stdout; the caller prints the message on stderr and exits with status 2.
    """
    mask = _args_masker(args, environ)
    try:
        config = config_from_args(args, environ)
    except UsageError as error:
        raise UsageError(emit_usage_error(str(error), args.json, mask)) from None
    except Exception as error:  # e.g. an unreadable outputs file: still masked, still exit 2
        message = f"could not read the check's configuration: {type(error).__name__}: {error}"
        raise UsageError(emit_usage_error(message, args.json, mask)) from None
    configure_logging(config.masker())
    report = run_checks(config)
    print_report(report, args.json)
    return report.exit_code


def build_parser(prog: str = "brokercheck.py") -> argparse.ArgumentParser:
    """Return the stand-alone parser (the in-cluster Job runs this file directly)."""
    parser = CheckArgumentParser(
        prog=prog, description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `brokercheck.py [options]`: 0 all passed, 1 a check failed, 2 usage error."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help (0) or a usage error, already printed (2)
        return int(exit_request.code or 0)
    try:
        return run_from_args(args)
    except UsageError as error:
        print(f"brokercheck: usage error: {error}", file=sys.stderr)
        return EXIT_USAGE
