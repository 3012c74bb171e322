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
import signal
import sys
import threading
from importlib import metadata
from typing import Any, Callable, Sequence

from gateway import cli as cmd_gateway
from host_tools import (bundle, cmd_check, cmd_decode, cmd_deploy, cmd_flash, cmd_monitor, cmd_ports,
                        cmd_loadgen, cmd_nats, cmd_pki, cmd_provision, cmd_reboot, cmd_simulate, cmd_status,
                        cmd_vboard, demo)
from meterlink_common import EXIT_INPUT, EXIT_INTERRUPTED, UserError

Handler = Callable[[argparse.Namespace], int]
ParserBuilder = Callable[[argparse.ArgumentParser], None]

PROG = "meterlink"

COMMANDS: dict[str, tuple[Handler, ParserBuilder, str]] = {
    "decode": (cmd_decode.run, cmd_decode.build_parser, cmd_decode.HELP),
    "gateway": (cmd_gateway.run, cmd_gateway.build_parser, cmd_gateway.HELP),
    "demo": (demo.run_args, demo.build_parser, demo.HELP),
    "ports": (cmd_ports.run, cmd_ports.build_parser, cmd_ports.HELP),
    "flash": (cmd_flash.run, cmd_flash.build_parser, cmd_flash.HELP),
    "deploy": (cmd_deploy.run, cmd_deploy.build_parser, cmd_deploy.HELP),
    "provision": (cmd_provision.run, cmd_provision.build_parser, cmd_provision.HELP),
    "status": (cmd_status.run, cmd_status.build_parser, cmd_status.HELP),
    "reboot": (cmd_reboot.run, cmd_reboot.build_parser, cmd_reboot.HELP),
    "monitor": (cmd_monitor.run, cmd_monitor.build_parser, cmd_monitor.HELP),
    "check": (cmd_check.run, cmd_check.build_parser, cmd_check.HELP),
    "simulate": (cmd_simulate.run, cmd_simulate.build_parser, cmd_simulate.HELP),
    "loadgen": (cmd_loadgen.run, cmd_loadgen.build_parser, cmd_loadgen.HELP),
    "nats-config": (cmd_nats.run, cmd_nats.build_parser, cmd_nats.HELP),
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


class Stopped(BaseException):
    """SIGTERM or SIGHUP: unwinds the command like Ctrl-C does, so every `finally` and `with`
    runs and the processes it started (virtual nodes, brokers, a gateway) are stopped with it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: Any) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # the clean-up runs to its end
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def reporting(prog: str, run: Callable[[], int]) -> int:
    """Runs a command and turns what the user must read into `prog: message` on stderr and
    the exit status: UserError (its code), Ctrl-C (130), SIGTERM / SIGHUP (128 + the
    signal, after the command's own clean-up ran), a closed pipe on stdout (130)."""
    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, _stop)
    try:
        return run()
    except Stopped as exc:
        print(f"{prog}: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
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
    finally:
        for sig, handler in old.items():
            if handler is not None:
                signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 from argparse
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    return reporting(PROG, lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
