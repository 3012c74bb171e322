"""`make demo`: the whole product on one machine.

Starts a private Mosquitto on a free loopback port (config in a temp folder), the gateway
writing to `demo-out/readings.jsonl`, and three virtual nodes running the real firmware in the
MicroPython unix port, each with its own simulated weather. Prints a line per reading the
gateway stored; with `--duration N` it stops by itself after N seconds and prints a summary.
Ctrl-C stops everything cleanly.

    meterlink demo [--duration SECONDS] [--out demo-out] [--interval 2]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from host_tools import process
from host_tools.broker import Mosquitto
from host_tools.pki import Pki
from host_tools.vboard import VirtualNode


@dataclass(frozen=True)
class Site:
    node_id: str
    temperature_c: float
    humidity_pct: float
    pressure_pa: float


SITES = (
    Site("park-01", 12.3, 71.0, 101_200.0),
    Site("school-02", 21.5, 45.0, 100_900.0),
    Site("pumpstation-03", 8.1, 88.0, 99_800.0),
)

GATEWAY_TOML = """\
[mqtt]
host = "{host}"
port = {port}
client_id = "meterlink-demo-gateway"
prefix = "m"
{tls}
[sinks.file]
path = "{sink}"
events_path = "{events}"

[sinks.history]
path = "{history}"

[gateway]
stats_file = "{stats}"

[api]
port = 0
"""


def weather(site: Site, t: float) -> dict[str, float]:
    """A slow, smooth drift around the site's values, so readings visibly change."""
    phase = t / 30.0 + 2.0 * SITES.index(site)
    return {
        "temperature_c": round(site.temperature_c + 0.8 * math.sin(phase), 2),
        "humidity_pct": round(min(100.0, max(0.0, site.humidity_pct + 2.0 * math.cos(phase))), 2),
        "pressure_pa": round(site.pressure_pa + 40.0 * math.sin(phase / 3), 1),
    }


class SinkTail:
    """Follows the JSONL sink and groups SenML records into readings (node, seq)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.readings: dict[tuple[str, int], list[dict]] = {}
        self.lines = 0

    def poll(self) -> list[tuple[str, int]]:
        """Reads new lines; returns the readings completed since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        fresh: list[tuple[str, int]] = []
        for line in complete:
            if not line.strip():
                continue
            rec = json.loads(line)
            self.lines += 1
            key = (rec["node"], rec["seq"])
            if key not in self.readings:
                self.readings[key] = []
                fresh.append(key)
            self.readings[key].append(rec)
        return fresh

    def describe(self, key: tuple[str, int]) -> str:
        parts = []
        for rec in self.readings[key]:
            name = rec["n"].split(":", 1)[1]
            parts.append(f"{name} {rec['v']} {rec['u']}")
        t = time.strftime("%H:%M:%S", time.localtime(self.readings[key][0]["t"]))
        return f"{t}  {key[0]:<15} seq={key[1]:<4} " + "  ".join(parts)


def run(duration: float, out: Path, interval_s: int) -> int:
    out = out.resolve()  # the gateway resolves relative paths against its config's folder
    out.mkdir(parents=True, exist_ok=True)
    sink = out / "readings.jsonl"
    stats_path = out / "gateway-stats.json"
    for p in (sink, stats_path):
        p.unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="meterlink-demo-"))
    # TLS as in production: the demo's own CA, and a certificate for the broker, every node
    # and the gateway (require_certificate: a client without one is refused)
    pki = Pki(work / "pki")
    pki.init("meterlink demo fleet")
    broker = Mosquitto(work / "broker", tls=pki, require_certificate=True)
    nodes: list[VirtualNode] = []
    gateway: subprocess.Popen | None = None
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    tail = SinkTail(sink)
    started = time.monotonic()
    try:
        broker.start()
        print(f"demo: mosquitto on {broker.host}:{broker.port}, TLS with client certificates "
              f"of the demo's CA (config in {broker.conf_path})")
        gw_conf = work / "gateway.toml"
        gw_conf.write_text(GATEWAY_TOML.format(host=broker.host, port=broker.port,
                                               sink=sink, events=out / "events.jsonl",
                                               history=out / "history.db",
                                               stats=stats_path,
                                               tls=broker.gateway_conf()))
        gw_log = open(out / "gateway.log", "wb")
        gateway = subprocess.Popen(
            [str(Path(sys.executable).with_name("meterlink")), "gateway", "--config", str(gw_conf)],
            stdout=gw_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        print(f"demo: gateway writing {sink} (log: {out / 'gateway.log'})")
        for site in SITES:
            node = VirtualNode(work / site.node_id, node_id=site.node_id, broker=broker,
                               interval_s=interval_s)
            node.set_environment(**weather(site, 0))
            nodes.append(node.start())
            print(f"demo: node {site.node_id} started (console: {node.console_path})")
        print("demo: readings as the gateway stores them" +
              (f" for {duration:g} s" if duration else " (Ctrl-C to stop)"))
        last_weather = 0.0
        api_shown = False
        while not stop["now"]:
            elapsed = time.monotonic() - started
            if duration and elapsed >= duration:
                break
            if elapsed - last_weather >= 1.0:
                for site, node in zip(SITES, nodes):
                    node.set_environment(**weather(site, elapsed))
                last_weather = elapsed
            if not api_shown:
                api_shown = show_api(stats_path, work)
            for key in tail.poll():
                print(tail.describe(key), flush=True)
            if gateway.poll() is not None:
                print(f"demo: the gateway exited with {gateway.returncode}; see {out / 'gateway.log'}",
                      file=sys.stderr)
                break
            time.sleep(0.2)
    finally:
        for node in nodes:
            node.stop()
        if gateway is not None:
            process.stop(gateway, 10)
        broker.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    for key in tail.poll():
        print(tail.describe(key))
    return summarize(tail, nodes, stats_path, gateway, out, work)


def show_api(stats_path: Path, work: Path) -> bool:
    """Prints the gateway's API address once it listens (its stats file says the port)."""
    try:
        port = json.loads(stats_path.read_text()).get("api_port")
    except (FileNotFoundError, ValueError):
        return False
    if not port:
        return False
    print(f"demo: gateway API on http://127.0.0.1:{port} (bearer token in "
          f"{work / 'api-token'}; try /api/nodes)", flush=True)
    print(f"demo: operator dashboard on http://127.0.0.1:{port}/ (log in with that token)",
          flush=True)
    return True


def raised_alarms(events: Path) -> list[str]:
    """`node:alarm (detail)` of every alarm raised during the demo."""
    out = []
    try:
        lines = events.read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        e = json.loads(line)
        if e.get("vb"):
            name = e["n"].replace(":alarm:", ":")
            out.append(f"{name} ({e['vs']})" if e.get("vs") else name)
    return out


def summarize(tail: SinkTail, nodes: list[VirtualNode], stats_path: Path,
              gateway: subprocess.Popen | None, out: Path, work: Path) -> int:
    seen = sorted({node for node, _ in tail.readings})
    try:
        stats = json.loads(stats_path.read_text())
    except (FileNotFoundError, ValueError):
        stats = {}
    rejected = stats.get("rejected", 0)
    node_errors = {n.node_id: sum(1 for line in n.console().splitlines() if " E " in line
                                  or "Traceback" in line) for n in nodes}
    # keep the node consoles with the output, then drop the temp folder
    for n in nodes:
        if n.console_path.exists():
            shutil.copyfile(n.console_path, out / f"{n.node_id}.console.log")
    shutil.rmtree(work, ignore_errors=True)
    print()
    print("demo summary")
    print(f"  nodes seen      {len(seen)} of {len(nodes)}: {', '.join(seen) or '-'}")
    print(f"  readings        {len(tail.readings)} ({tail.lines} SenML records) in {out / 'readings.jsonl'}")
    for node_id in seen:
        print(f"    {node_id:<15} {sum(1 for n, _ in tail.readings if n == node_id)}")
    print(f"  gateway errors  {rejected} rejected" +
          (f" {stats.get('rejected_by_reason')}" if rejected else ""))
    print(f"  node errors     {sum(node_errors.values())}" +
          (f" {node_errors}" if any(node_errors.values()) else ""))
    alarms = raised_alarms(out / "events.jsonl")
    print(f"  alarms raised   {len(alarms)}" + (f": {'; '.join(alarms)}" if alarms else ""))
    ok = len(seen) == len(nodes) and not rejected and not any(node_errors.values()) \
        and not alarms and (gateway is None or gateway.returncode in (0, -signal.SIGTERM))
    print(f"  result          {'ok' if ok else 'PROBLEMS (see the logs in ' + str(out) + ')'}")
    return 0 if ok else 1


HELP = "run a broker, the gateway and three virtual nodes on this machine"


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="meterlink demo", description=HELP)
    p.add_argument("--duration", type=float, default=0,
                   help="stop after this many seconds and print a summary (default: until Ctrl-C)")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    p.add_argument("--interval", type=int, default=2, help="seconds between readings per node (default: 2)")
    return p


def run_args(args: argparse.Namespace) -> int:
    return run(args.duration, args.out, args.interval)


def main(argv: list[str] | None = None) -> int:
    return run_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
