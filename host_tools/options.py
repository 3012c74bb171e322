"""Command-line option values that more than one command reads, parsed the same way in each.

    host, port = parse_broker(args.broker)      # `provision --broker`, `simulate --broker`

A value that does not parse is the technician's `UserError` with exit status 2 (invalid
input), naming the option, the rule and the value given.
"""

from __future__ import annotations

from meterlink_common import EXIT_INPUT, UserError


def parse_broker(text: str) -> tuple[str, int]:
    """`--broker HOST:PORT` as (host, port); the host may itself hold colons (IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--broker must be HOST:PORT with a port 1-65535: got {text!r}",
                        exit_code=EXIT_INPUT)
    return host, int(port)
