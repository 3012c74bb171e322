"""`meterlink`: the command line of the project, for technicians and operators.

    meterlink COMMAND [options]        meterlink --help lists the commands

Commands dispatch from `COMMANDS`: name -> (handler, parser builder, one-line help). Each
command lives in its own module; adding one is one import and one row here. A handler takes
the parsed arguments and returns the exit status; for anything the user must read it raises
`UserError`, which is printed as `meterlink: message (hint)` on stderr, never as a traceback.

Exit status: 0 done; 1 the command failed (`UserError`); 2 invalid input (usage error,
invalid config, a payload the gateway rejects); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from typing import Callable, Sequence

from gateway import cli as cmd_gateway
from gateway.errors import EXIT_INPUT, UserError
from host_tools import (bundle, cmd_check, cmd_decode, cmd_deploy, cmd_flash, cmd_monitor, cmd_ports,
                        cmd_pki, cmd_provision, cmd_simulate, cmd_status, cmd_vboard,
                        demo)

Handler = Callable[[argparse.Namespace], int]
ParserBuilder = Callable[[argparse.ArgumentParser], None]

PROG = "meterlink"
EXIT_INTERRUPTED = 130

COMMANDS: dict[str, tuple[Handler, ParserBuilder, str]] = {
    "decode": (cmd_decode.run, cmd_decode.build_parser, cmd_decode.HELP),
    "gateway": (cmd_gateway.run, cmd_gateway.build_parser, cmd_gateway.HELP),
    "demo": (demo.run_args, demo.build_parser, demo.HELP),
    "ports": (cmd_ports.run, cmd_ports.build_parser, cmd_ports.HELP),
    "flash": (cmd_flash.run, cmd_flash.build_parser, cmd_flash.HELP),
    "deploy": (cmd_deploy.run, cmd_deploy.build_parser, cmd_deploy.HELP),
    "provision": (cmd_provision.run, cmd_provision.build_parser, cmd_provision.HELP),
    "status": (cmd_status.run, cmd_status.build_parser, cmd_status.HELP),
    "monitor": (cmd_monitor.run, cmd_monitor.build_parser, cmd_monitor.HELP),
    "check": (cmd_check.run, cmd_check.build_parser, cmd_check.HELP),
    "simulate": (cmd_simulate.run, cmd_simulate.build_parser, cmd_simulate.HELP),
    "vboard": (cmd_vboard.run, cmd_vboard.build_parser, cmd_vboard.HELP),
    "pki": (cmd_pki.run, cmd_pki.build_parser, cmd_pki.HELP),
    "bundle": (bundle.run, bundle.build_parser, bundle.HELP),
}

__all__ = ["COMMANDS", "UserError", "main"]


def _version() -> str:
    try:
        return metadata.version("meterlink")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="meterlink: ESP32 meter nodes, CBOR over MQTT, and their gateway.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (handler, build, help_line) in COMMANDS.items():
        command = sub.add_parser(name, help=help_line, description=help_line)
        build(command)
        command.set_defaults(handler=handler)
    return parser


def reporting(prog: str, run: Callable[[], int]) -> int:
    """Runs a command and turns what the user must read into `prog: message` on stderr and
    the exit status: UserError (its code), Ctrl-C (130), a closed pipe on stdout (130)."""
    try:
        return run()
    except UserError as exc:
        sys.stdout.flush()
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of our output went away (`meterlink decode ... | head -1`)
        sys.stderr.close()
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 from argparse
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    return reporting(PROG, lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
