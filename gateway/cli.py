"""`meterlink gateway`: runs the gateway daemon in the foreground.

    meterlink gateway --config /etc/meterlink/gateway.toml

The config is checked completely before anything connects; an invalid one exits with status 2
and a message naming the key. SIGINT or SIGTERM stop the gateway cleanly (status 0).
"""

from __future__ import annotations

import argparse

from gateway.config import SAMPLE_PATH, load_config
from gateway.daemon import Gateway
from gateway.errors import EXIT_ERROR, EXIT_INPUT, ConfigError, SinkError, UserError
from gateway.logfmt import configure_logging

HELP = "run the gateway: MQTT readings in, SenML JSONL out"


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE",
                        help=f"gateway config (TOML); every key is described in {SAMPLE_PATH}")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise UserError(f"gateway: {exc}", hint=f"every key is described in {SAMPLE_PATH}",
                        exit_code=EXIT_INPUT) from exc
    configure_logging(config.gateway.log_level)
    try:
        return Gateway(config).run()
    except SinkError as exc:
        raise UserError(f"gateway: {exc}", exit_code=EXIT_ERROR) from exc
