"""The one exception type that carries an exit code, so `__main__` is the only place mapping it."""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A failure meant for a person: `message` is printed to stderr, `exit_code` ends the run."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
