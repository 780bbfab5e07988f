"""The post-deploy broker check, one module per concern; the Job runs them bundled in one file.

contract.HELP is the help text of both commands (what is checked, exit codes, the JSON report).
Modules, in the order bundle.py joins them (each imports only from those before it):

  contract   statuses, exit codes, defaults, variables, usage errors, the run's deadline
  masking    no password leaves the check unmasked
  report     the report, printed as a table or `brokercheck/v1` JSON
  config     what one run checks (CheckConfig)
  outputs    stack outputs (`pulumi stack output --json --show-secrets`)
  options    the command line, merged with outputs and the environment into a CheckConfig
  broker     broker checks (redis-py as the read-only check user)
  sentinel   Sentinel checks: find the master, quorum, replicas, the loss bound
  workers    worker checks: control ping, consumers, canary (kombu and Celery)
  run        every check in a watchdog thread bounded by --timeout
  cli        parse, run, print; usage errors (exit 2)
"""

from brokerctl.brokercheck.cli import (
    CheckArgumentParser,
    build_parser,
    main,
    run_from_args,
    usage_error_report,
)
from brokerctl.brokercheck.config import CheckConfig, Pool, SentinelConfig
from brokerctl.brokercheck.contract import (
    DEFAULT_MEMORY_FAIL_PERCENT,
    DEFAULT_MEMORY_WARN_PERCENT,
    DEFAULT_TIMEOUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    HELP,
    UsageError,
    is_sentinel_url,
)
from brokerctl.brokercheck.masking import Masker, masked_url
from brokerctl.brokercheck.options import SENTINEL_OPTIONS, add_options, config_from_args
from brokerctl.brokercheck.report import Report
from brokerctl.brokercheck.run import run_checks
from brokerctl.brokercheck.sentinel import master_url, sentinel_addresses

__all__ = [
    "DEFAULT_MEMORY_FAIL_PERCENT",
    "DEFAULT_MEMORY_WARN_PERCENT",
    "DEFAULT_TIMEOUT",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "HELP",
    "SENTINEL_OPTIONS",
    "CheckArgumentParser",
    "CheckConfig",
    "Masker",
    "Pool",
    "Report",
    "SentinelConfig",
    "UsageError",
    "add_options",
    "build_parser",
    "config_from_args",
    "is_sentinel_url",
    "main",
    "masked_url",
    "master_url",
    "run_checks",
    "run_from_args",
    "sentinel_addresses",
    "usage_error_report",
]
