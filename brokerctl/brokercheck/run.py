"""Running the checks: every check in a watchdog thread bounded by --timeout."""

from __future__ import annotations

import importlib
import threading
from contextlib import suppress
from dataclasses import replace

from brokerctl.brokercheck.broker import check_broker
from brokerctl.brokercheck.config import CheckConfig
from brokerctl.brokercheck.contract import FAIL, Deadline
from brokerctl.brokercheck.masking import masked_url
from brokerctl.brokercheck.report import Report
from brokerctl.brokercheck.sentinel import check_sentinel
from brokerctl.brokercheck.workers import check_workers

WATCHDOG_GRACE = 0.5  # seconds the run may exceed --timeout while the report is closed


def run_checks(config: CheckConfig) -> Report:
    """Run every check and return the closed report; never takes much longer than --timeout.

    The checks run in a daemon thread that the caller waits for until the deadline: whatever a
    library does (DNS lookups, reconnect loops), the run ends and reports what it learned.
    """
    mask = config.masker()
    report = Report(target=masked_url(mask, config.broker_url), mask=mask)
    _import_clients(config)
    deadline = Deadline(config.timeout)
    runner = threading.Thread(
        target=_run_all, args=(config, report, deadline), name="brokercheck", daemon=True
    )
    runner.start()
    runner.join(deadline.remaining() + WATCHDOG_GRACE)
    if runner.is_alive():
        report.add(
            "timeout",
            FAIL,
            f"checks still running after {config.timeout:g} s",
            f"all checks within --timeout {config.timeout:g} s",
            "a step did not answer in time; the checks above are those that finished",
        )
    report.close()
    return report


def _import_clients(config: CheckConfig) -> None:
    """Import the client libraries this run needs before its deadline starts.

    --timeout bounds network steps, and each step gets what is left of the deadline when it
    starts. Imported inside a step (redis-py at the first connect, kombu and its Redis transport
    at the control ping, Celery at the canary), they spent that time on a busy machine or a
    CPU-limited pod: a silent broker's read timed out after the watchdog had already reported a
    bare timeout instead of "no answer", and the workers' ping window (and the ping's expiry)
    shrank until workers that were running did not answer in time. A library that fails to
    import is left to the step that needs it, which reports the error.
    """
    modules = ["redis"]
    if config.sentinel is not None:
        modules.append("redis.sentinel")
    if config.expected_workers > 0:
        modules += ["kombu", "kombu.transport.redis"]
        if config.canary and config.result_backend_url:
            modules.append("celery")
    for name in modules:
        with suppress(ImportError):
            importlib.import_module(name)


def _run_all(config: CheckConfig, report: Report, deadline: Deadline) -> None:
    """Broker checks first; worker checks only when the broker answered and workers are expected."""
    try:
        if config.sentinel is not None:
            url = check_sentinel(config, report, deadline)
            if url is None:
                return
            config = replace(config, broker_url=url)  # every broker check runs on the master
        state = check_broker(config, report, deadline)
        if state is not None and config.expected_workers > 0:
            check_workers(config, report, deadline, state.depths())
    except Exception as error:  # a bug or an unforeseen library error: report it, masked
        report.add(
            "internal",
            FAIL,
            f"{type(error).__name__}: {error}",
            "no error",
            "unexpected error in the check itself; the checks above are valid",
        )
