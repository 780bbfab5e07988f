"""The report: one entry per check, printed as a table or as `brokercheck/v1` JSON."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from brokerctl.brokercheck.contract import EXIT_FAILED, EXIT_OK, FAIL, PASS, SCHEMA, WARN
from brokerctl.brokercheck.masking import Masker


@dataclass(frozen=True)
class CheckResult:
    """One check: what was measured, what was expected, and what to do if they differ."""

    name: str
    status: str
    measured: str
    expected: str
    hint: str = ""


@dataclass
class Report:
    """The checks of one run, masked as they are added; `close` freezes it."""

    target: str
    mask: Masker
    checks: list[CheckResult] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    duration: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(
        self, name: str, status: str, measured: object, expected: object, hint: str = ""
    ) -> None:
        """Record a check result (ignored once the report is closed by the watchdog)."""
        result = CheckResult(
            self.mask(name), status, self.mask(measured), self.mask(expected), self.mask(hint)
        )
        with self._lock:
            if self.duration is None:
                self.checks.append(result)

    def close(self) -> None:
        """Stop accepting results and record how long the run took."""
        with self._lock:
            if self.duration is None:
                self.duration = time.monotonic() - self.started

    def count(self, status: str) -> int:
        """Return how many checks ended with `status`."""
        return sum(1 for check in self.checks if check.status == status)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (warnings allowed), 1 otherwise (also when nothing ran)."""
        return EXIT_FAILED if self.count(FAIL) or not self.checks else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """Return the report in the documented `brokercheck/v1` JSON schema."""
        return {
            "schema": SCHEMA,
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "target": self.target,
            "duration_seconds": round(self.duration or 0.0, 3),
            "summary": {status: self.count(status) for status in (PASS, WARN, FAIL)},
            "checks": [
                {
                    "name": check.name,
                    "status": check.status,
                    "measured": check.measured,
                    "expected": check.expected,
                    "hint": check.hint,
                }
                for check in self.checks
            ],
        }


def format_json(report: Report) -> str:
    """Return the report as one JSON document (for CI and `jq`)."""
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)


def format_table(report: Report) -> str:
    """Return the report as an aligned table for people, hints under the rows they explain."""
    headers = ("CHECK", "STATUS", "MEASURED", "EXPECTED")
    rows = [(c.name, c.status.upper(), c.measured, c.expected) for c in report.checks]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(3)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, [*widths, 0], strict=True)).rstrip()]
    for check, row in zip(report.checks, rows, strict=True):
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, [*widths, 0], strict=True)).rstrip())
        if check.hint and check.status != PASS:
            lines.append(f"    hint: {check.hint}")
    verdict = "OK" if report.exit_code == EXIT_OK else "FAILED"
    lines.append(
        f"{verdict}: {report.count(PASS)} passed, {report.count(WARN)} warnings, "
        f"{report.count(FAIL)} failed in {report.duration or 0.0:.2f} s ({report.target})"
    )
    return "\n".join(lines)
