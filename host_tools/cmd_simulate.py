"""`meterlink simulate`: N virtual nodes (the real firmware in the MicroPython unix port) on a
broker, for demos, soak and load tests.

    meterlink simulate --nodes 20 --broker 127.0.0.1:1883 [--interval 10] [--dir sim]
                       [--prefix-id sim] [--duration 600] [--user U --password P]
                       [--pki DIR [--node-certs]]
    meterlink simulate --scenario gas-leak --broker 127.0.0.1:1883 [--dir sim] [...]
    meterlink simulate --scenario pipe-burst --print-rules

Each node is a `VirtualNode` (host_tools/vboard) in DIR/<id>/ with its own flash, console.log
and environment: an ESP32 with a BME280 whose weather differs per node. Node ids are
`<prefix-id>-001`, `-002`, ... Every 10 s a line shows how many readings the nodes have had
acknowledged (from their consoles); at the end, a summary per node. Ctrl-C stops them all.

With `--scenario NAME` (gas-leak, pipe-burst, rain-storm, noisy-night; or a .toml file of
the same form, host_tools/scenarios/__init__.py) the nodes are the scenario's stations and a
timeline moves what their parts measure: a line per change, then the scenario runs for its
duration (or `--duration`). A scenario that rehearses gateway rules prints them first;
`--print-rules` prints only them, to add to gateway.toml.

With `--pki DIR` (a `meterlink pki` folder) the nodes connect over TLS, trusting that CA, as
provisioned nodes do; with `--node-certs` too, each presents its own client certificate
(issued in DIR on first use), for a broker with require_certificate.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from host_tools.device import say
from host_tools.options import parse_broker
from host_tools.pki import Pki
from meterlink_common import EXIT_INPUT, UserError

HELP = "run N virtual nodes (the real firmware) against a broker"
MIXES = ("bme280",)


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=3, metavar="N")
    parser.add_argument("--broker", metavar="HOST:PORT",
                        help="the broker (required, but for --print-rules)")
    parser.add_argument("--interval", type=int, default=10, metavar="S",
                        help="reading interval of each node (default: 10)")
    parser.add_argument("--mix", choices=MIXES, default="bme280",
                        help="sensors on each node (default: bme280)")
    parser.add_argument("--dir", type=Path, default=Path("sim"), help="folder for the nodes")
    parser.add_argument("--prefix-id", default="sim", metavar="ID",
                        help="node ids are ID-001, ID-002, ...")
    parser.add_argument("--user", help="MQTT user for every node (default: none)")
    parser.add_argument("--password", help="MQTT password for every node")
    parser.add_argument("--pki", type=Path, metavar="DIR",
                        help="TLS to the broker, trusting this `meterlink pki` folder's CA")
    parser.add_argument("--node-certs", action="store_true",
                        help="with --pki: each node presents its own certificate (issued in DIR)")
    parser.add_argument("--duration", type=float, default=0, metavar="S",
                        help="stop after S seconds (default: until Ctrl-C; a scenario: its "
                             "own duration)")
    parser.add_argument("--scenario", metavar="NAME",
                        help="run a scenario's stations and timeline instead of N weather "
                             "nodes: gas-leak, pipe-burst, rain-storm, noisy-night, or a .toml")
    parser.add_argument("--print-rules", action="store_true",
                        help="with --scenario: print the gateway rules it rehearses and exit")


def acked(console: str) -> int:
    """Readings the node's log says the broker acknowledged."""
    total = 0
    for line in console.splitlines():
        if " acked (" in line:
            try:
                total += int(line.split(" acked (", 1)[1].split()[0])
            except (IndexError, ValueError):
                pass
    return total


def run(args: argparse.Namespace) -> int:
    from host_tools.vboard.node import VirtualNode, default_config

    sc = None
    if args.scenario:
        from host_tools import scenarios

        sc = scenarios.load(args.scenario)
        if args.print_rules:
            print(sc.rules.strip() or f"# the scenario {sc.name} rehearses no gateway rule")
            return 0
    elif args.print_rules:
        raise UserError("--print-rules needs --scenario", exit_code=EXIT_INPUT)
    if not args.broker:
        raise UserError("--broker HOST:PORT is required", exit_code=EXIT_INPUT)
    if sc is None and not 1 <= args.nodes <= 500:
        raise UserError(f"--nodes must be 1-500: got {args.nodes}", exit_code=EXIT_INPUT)
    host, port = parse_broker(args.broker)
    rng = random.Random(1)
    nodes = []

    def credentials(nid: str, cfg: dict | None):
        tls, files = Pki(args.pki).node_tls(nid, cert=args.node_certs) if args.pki \
            else (None, {})
        if cfg is None:
            cfg = default_config(nid, host, port, interval_s=args.interval, tls=tls)
        elif tls:
            cfg["broker"]["tls"] = tls
        if args.user:
            cfg["broker"]["user"] = args.user
            cfg["broker"]["password"] = args.password or ""
        return cfg, files

    try:
        if sc is not None:
            for nid in sc.nodes:
                board, cfg = sc.hardware(nid, host, port)
                cfg, files = credentials(nid, cfg)
                node = VirtualNode(args.dir / nid, node_id=nid, broker=(host, port),
                                   config=cfg, board=board, files=files)
                node.set_environment(**sc.environment(nid, 0.0))
                nodes.append(node.start())
            say(f"scenario {sc.name}: {sc.title}; {sc.duration_s:.0f} s, "
                f"{len(nodes)} station(s) against {host}:{port}; folders in {args.dir}/")
            for nid, (station, iv) in sc.nodes.items():
                say(f"  {nid}: {scenarios.STATIONS[station].what}, a reading every {iv} s")
            if sc.rules.strip():
                say("the gateway rules it rehearses (in gateway.toml, then systemctl reload):\n"
                    + sc.rules.strip())
            duration = args.duration or sc.duration_s
        else:
            for i in range(1, args.nodes + 1):
                nid = f"{args.prefix_id}-{i:03d}"
                cfg, files = credentials(nid, None)
                node = VirtualNode(args.dir / nid, node_id=nid, broker=(host, port),
                                   config=cfg, files=files)
                node.set_environment(temperature_c=round(rng.uniform(5, 30), 2),
                                     humidity_pct=round(rng.uniform(30, 80), 2),
                                     pressure_pa=round(rng.uniform(98000, 103000)))
                nodes.append(node.start())
            say(f"{len(nodes)} virtual node(s) running against {host}:{port}, one reading "
                f"every {args.interval} s each; folders in {args.dir}/")
            duration = args.duration
        started = time.monotonic()
        next_report = started + 10
        pending = list(sc.timeline) if sc is not None else []
        shown: dict[str, dict] = {}
        while not duration or time.monotonic() - started < duration:
            time.sleep(0.25 if sc is not None else 0.5)
            t = time.monotonic() - started
            while pending and pending[0].at <= t:
                ch = pending.pop(0)
                ramp = f" over {ch.ramp_s:.0f} s" if ch.ramp_s else ""
                say(f"{t:6.0f} s  {ch.node}: "
                    + ", ".join(f"{q} -> {v:g}" for q, v in ch.values.items()) + ramp)
            for node in nodes if sc is not None else ():
                env = sc.environment(node.node_id, t)
                if env != shown.get(node.node_id):
                    shown[node.node_id] = env
                    node.set_environment(**env)
            if time.monotonic() >= next_report:
                next_report += 10
                running = sum(n.running for n in nodes)
                total = sum(acked(n.console()) for n in nodes)
                say(f"{time.monotonic() - started:6.0f} s  {running}/{len(nodes)} running  "
                    f"{total} readings acknowledged")
    finally:
        for n in nodes:
            n.stop()
    for n in nodes:
        say(f"  {n.node_id}: {acked(n.console())} readings acknowledged")
    return 0
