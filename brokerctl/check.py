"""`python -m brokerctl check`: the post-deploy broker check, from a person's terminal.

All the logic lives in the package `brokerctl/brokercheck/`, which the cluster runs as one
bundled file (brokercheck/bundle.py) in a Job in the workers' image (which has celery, kombu
and redis-py, but not this repository). This module only registers the options and maps usage
errors to the project's CommandError.
"""

from __future__ import annotations

import argparse
import json

from brokerctl import brokercheck
from brokerctl.errors import EXIT_USAGE, CommandError
from brokerctl.in_cluster import run_in_cluster

IN_CLUSTER_TIMEOUT = 300.0
"""Default bound of a whole --in-cluster run: scheduling, image pull, the check, its log."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `check` command; its help is brokercheck's HELP, its options declared once."""
    parser = subparsers.add_parser(
        "check",
        help="check a deployed broker and its workers (exit 0 ok, 1 failed, 2 usage)",
        description=brokercheck.HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # add_parser builds the parent's parser class; the check's own class masks passwords in
    # argparse's errors, prints them as a JSON report under --json, and keeps leftover
    # arguments (a URL typed without --url) from reaching the parent, which prints them raw.
    parser.__class__ = brokercheck.CheckArgumentParser
    brokercheck.add_options(parser)
    parser.add_argument(
        "--in-cluster",
        action="store_true",
        help="with --stack: run the stack's own check Job once in its cluster (no route to the "
        "broker needed; pulumi and kubectl on PATH) and print its report; --timeout then bounds "
        f"the whole run, scheduling included (default {IN_CLUSTER_TIMEOUT:g} s)",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run the check and return its exit status; a usage error becomes CommandError (2)."""
    if args.in_cluster:
        return _handle_in_cluster(args)
    try:
        return brokercheck.run_from_args(args)
    except brokercheck.UsageError as error:
        message = f"check: usage error: {error}"
        raise CommandError(message, EXIT_USAGE) from None


def _handle_in_cluster(args: argparse.Namespace) -> int:
    """Run --in-cluster; with --json, an error is still a `brokercheck/v1` report on stdout."""
    timeout = args.timeout
    if timeout == brokercheck.DEFAULT_TIMEOUT:  # a network-step bound: too short for a Job
        timeout = IN_CLUSTER_TIMEOUT
    try:
        return run_in_cluster(args.stack, args.json, timeout)
    except CommandError as error:
        if args.json:
            mask = brokercheck.Masker()
            report = brokercheck.usage_error_report(mask(str(error)), mask)
            report["exit_code"] = error.exit_code
            print(json.dumps(report, indent=2, ensure_ascii=False))
        raise
