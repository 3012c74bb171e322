"""`meterlink decode`: a reading payload, as hex or raw bytes, to its SenML pack.

    meterlink decode 84 01 19 0412 1a 69201c00 a1 01 19 0869
    mosquitto_sub -C 1 -t m/node-01/r | meterlink decode - --node node-01

Prints the pack as JSON, one SenML record per line. A payload the gateway would reject exits
with status 2 and the gateway's exact error: `meterlink: decode: offset 10: record 0: ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from gateway.channels import default_table
from gateway.errors import WireError
from gateway.wire import decode_reading, node_id_problem, resolve
from meterlink_common import EXIT_INPUT, EXIT_OK, UserError

HELP = "decode a reading payload (hex, or - for raw bytes on stdin) to SenML JSON"
DEFAULT_NODE = "node"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _node_id(text: str) -> str:
    problem = node_id_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem[1]}: {text!r}")
    return text


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hex", nargs="+", metavar="HEX",
                        help="the payload in hex; spaces are allowed. `-` reads the raw "
                             "payload bytes from stdin")
    parser.add_argument("--node", type=_node_id, default=DEFAULT_NODE, metavar="ID",
                        help=f"node id for the SenML names (default: {DEFAULT_NODE})")
    parser.add_argument("--received-at", type=int, default=None, metavar="SECS",
                        help="receipt time (Unix seconds) that anchors a message sent without "
                             "wall-clock time (default: now)")


def parse_hex(text: str) -> bytes:
    """Bytes of a hex string with optional whitespace; UserError naming the character offset."""
    digits = []
    for offset, ch in enumerate(text):
        if ch in _HEX_DIGITS:
            digits.append(ch)
        elif not ch.isspace():
            raise UserError(f"decode: bad hex at offset {offset}: {ch!r} is not a hex digit",
                            exit_code=EXIT_INPUT)
    if len(digits) % 2:
        raise UserError(f"decode: bad hex: {len(digits)} hex digits, an odd number "
                        f"(the last byte is incomplete)", exit_code=EXIT_INPUT)
    return bytes.fromhex("".join(digits))


def format_pack(senml: list[dict[str, Any]]) -> str:
    """A SenML pack as JSON with one record per line."""
    return "[" + ",\n ".join(json.dumps(record) for record in senml) + "]"


def run(args: argparse.Namespace) -> int:
    if args.hex == ["-"]:
        payload = sys.stdin.buffer.read()
    else:
        payload = parse_hex(" ".join(args.hex))
    table = default_table()
    try:
        reading = decode_reading(payload, table)
    except WireError as exc:
        raise UserError(f"decode: {exc}", hint=f"reason: {exc.reason}",
                        exit_code=EXIT_INPUT) from exc
    received_at = args.received_at if args.received_at is not None else int(time.time())
    senml = resolve(args.node, reading, table, received_at=received_at)
    sys.stdout.write(format_pack(senml) + "\n")
    return EXIT_OK
