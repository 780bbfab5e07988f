"""`python -m brokerctl settings --stack STACK`: the settings a stack really gets, as YAML.

Defaults merged with the stack file, derived values (maxmemory, visibility timeout, grace
periods) spelled out, secrets shown only as whether they are configured or generated.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from brokerctl import mockrun
from brokerctl.errors import EXIT_OK, EXIT_USAGE, CommandError
from brokerctl.render import add_config_dir_option
from components.reference import reference_markdown
from components.settings import SECRET_KEYS, StackSettings
from components.stack_config import SettingsError, parse_stack_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `settings` command."""
    parser = subparsers.add_parser(
        "settings",
        help="print a stack's effective settings (defaults merged, secrets redacted)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--stack", help="stack name: dev, staging, prod")
    target.add_argument(
        "--reference", action="store_true", help="print the settings reference (Markdown) instead"
    )
    add_config_dir_option(parser)
    parser.set_defaults(handler=handle)


def effective_settings(
    stack: str, config_dir: Path = mockrun.CONFIG_DIR
) -> tuple[StackSettings, dict[str, Any]]:
    """Validate a stack and describe its effective settings, derived values included."""
    config, secret_keys = mockrun.read_stack_config(stack, config_dir)
    stack_file = mockrun.relative(mockrun.stack_file(stack, config_dir))
    try:
        settings, secrets = parse_stack_config(config, secret_keys, stack_file)
    except SettingsError as error:
        raise CommandError(str(error), EXIT_USAGE) from None
    described = settings.model_dump(mode="json")
    described["derived"] = {
        "broker_maxmemory_bytes": settings.broker.effective_maxmemory_bytes(),
        "visibility_timeout": settings.visibility_timeout,
        "pool_grace_period_seconds": {
            p.name: p.grace_period_seconds for p in settings.workers.pools
        },
    }
    described["secrets"] = {key: secret_status(key, key in secrets) for key in SECRET_KEYS}
    return settings, described


def secret_status(key: str, configured: bool) -> str:
    """Describe what a person should know about one credential, without showing it."""
    if key == "broker_password_previous":
        if configured:
            return (
                "configured (secret): rotation in progress, the celery user also accepts this old "
                "password; remove it once every worker runs the new one"
            )
        return (
            "not set (only during a password rotation; see README 'Rotating the broker password')"
        )
    if configured:
        return "configured (secret)"
    return "generated at deploy, kept in Pulumi state"


def handle(args: argparse.Namespace) -> int:
    """Print the effective settings as YAML, or the reference of every setting."""
    if args.reference:
        print(reference_markdown(), end="")
        return EXIT_OK
    _, described = effective_settings(args.stack, args.config_dir)
    print(yaml.safe_dump(described, sort_keys=False), end="")
    return EXIT_OK
