"""The error base and the command-line error that the gateway and the technician tools share.

    MeterlinkError      base: an expected failure with a message meant for a person
     └── UserError      a command-line failure: `meterlink: msg` (+ hint), exit code

The gateway's own errors (ConfigError, WireError, SinkError, ...) derive from `MeterlinkError`
in `gateway/errors.py`, whose docstring draws the whole tree.

Exit codes of the `meterlink` command, shared by every subcommand, the gateway's included:
`EXIT_OK`, `EXIT_ERROR` (the command could not do its job), `EXIT_INPUT` (the input was
invalid) and `EXIT_INTERRUPTED` (Ctrl-C, or the reader of the output went away).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # the command could not do its job (I/O, device, broker, ...)
EXIT_INPUT = 2  # the input was invalid: usage, config file, payload
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), or a closed pipe on stdout


class MeterlinkError(Exception):
    """Base of every error meterlink raises on purpose."""


class UserError(MeterlinkError):
    """A command-line failure, printed as `meterlink: msg` plus an optional hint.

    Raised by command handlers only; library code raises its specific errors (those of
    gateway/errors.py, ...) and the handler translates them, choosing the exit code
    (`EXIT_ERROR` unless the input was bad).
    """

    def __init__(self, message: str, *, hint: str | None = None,
                 exit_code: int = EXIT_ERROR) -> None:
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
