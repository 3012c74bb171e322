"""`make demo`: the whole product on one machine.

Starts a private Mosquitto on a free loopback port (config in a temp folder), the gateway
writing to `demo-out/readings.jsonl`, and six virtual nodes running the real firmware in the
MicroPython unix port, each on a virtual board with models of its parts:

- three weather stations (BME280) whose weather drifts slowly;
- an air-quality station (PMS5003 and BME280) whose particulates drift and now and then rise;
- a household's pulse water meter with a leak: the water never stops, and the node raises its
  leak alarm (the comment "The leak" below says how it gets there in seconds, not a day);
- a gas regulating station playing the `gas-leak` rehearsal scenario (host_tools/scenarios/)
  over and over: its methane detector (Modbus) passes the alarm level 7 s in, the node
  switches its shut-off relay and sends the alarm at once, the gateway raises `gas`; then
  ventilation clears it, and a detector fault 38 s in raises `sensor` without the relay.

Once the gateway's API listens, the demo registers every node with a location, a district and
whether the public page shows it (in a thread: the readings do not wait for it). Prints a line
per reading the gateway stored and one per alarm raised; with `--duration N` it stops by
itself after N seconds and prints a summary. Ctrl-C stops everything cleanly.

    meterlink demo [--duration SECONDS] [--out demo-out] [--interval 2]
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from host_tools import gwapi, process, scenarios, toolchain
from host_tools.broker import Mosquitto
from host_tools.pki import Pki
from host_tools.vboard import VirtualNode, default_board, default_config
from host_tools.vboard.node import FORMS
from meterlink_common import UserError

WEATHER, AIR, WATER, GAS = "weather", "air", "water", "gas"
BOARD = "esp32-devkitc"


@dataclass(frozen=True)
class Site:
    """A demo node: what it measures, where it stands, and the local values its parts start
    from (the weather; PM2.5 for an air-quality station)."""
    node_id: str
    kind: str  # WEATHER, AIR, WATER or GAS
    district: str
    lat: float
    lon: float
    temperature_c: float = 20.0
    humidity_pct: float = 50.0
    pressure_pa: float = 101_325.0
    pm2_5_ug_m3: float = 0.0

    @property
    def public(self) -> bool:
        """Weather and air quality go on the public page; a household's meter and a gas
        station never do."""
        return self.kind in (WEATHER, AIR)


# One city (Amsterdam, around the Centrum / Oost line), the nodes 300-600 m apart.
SITES = (
    Site("park-01", WEATHER, "Centrum", 52.3670, 4.9080, 12.3, 71.0, 101_200.0),
    Site("school-02", WEATHER, "Centrum", 52.3656, 4.9127, 21.5, 45.0, 100_900.0),
    Site("pumpstation-03", WEATHER, "Oost", 52.3622, 4.9183, 8.1, 88.0, 99_800.0),
    Site("household-04", WATER, "Oost", 52.3607, 4.9221),
    Site("airquality-05", AIR, "Oost", 52.3598, 4.9152, 11.4, 66.0, 101_150.0, pm2_5_ug_m3=9.0),
    Site("gasstation-06", GAS, "Oost", 52.3641, 4.9235),
)

# The gas station plays this scenario from the demo's start, again every `duration_s`; the
# alarms it raises, with the scenario second by which each must have been raised (the
# methane crosses 20 % LEL at 6.6 s, the detector's fault starts at 38 s; host_tools/
# scenarios/gas-leak.toml).
GAS_SCENARIO = scenarios.load("gas-leak")
GAS_ALARMS = {"gas": 10.0, "sensor": 41.0}

# The household's meter: one reed contact on GPIO 25 (boards/esp32-devkitc.json "pulse"),
# 1 L a pulse, and a pulse every 4 s that never stops (0.25 L/s: a tap left running). The node
# reads it every METER_INTERVAL_S at least, so a reading spans a few pulses and its flow is
# steady.
METER_PIN = 25
LITRES_PER_PULSE = 1
PULSE_EVERY_S = 4
METER_INTERVAL_S = 10

# The leak. The pulse driver raises `leak` when every one of the last 24 completed hours had
# flow, on the node's clock (drivers/pulse.py: `_HOURS` is a fixed 24; no config key shortens
# it, and the virtual node's clock is the host's). A demo cannot wait a day, so before the node
# starts, its meter's previous 24 hours are run at speed: the real driver (pulse.PulseMeter)
# against the virtual board's meter model (hw/meter.py) on the model's virtual clock, as
# tests/mpy/test_pulse.py runs days of meter life, in the node's own folder; then a reset. That
# leaves what a node that counted through the day keeps across a reset: the hour history in RTC
# memory and the total in its flash journal. The node boots, restores them, and its first
# reading carries the leak; the pulses keep coming through the board's pulse input (env.json
# "meters"), so the hours keep flowing and the alarm stays.

# The meter's day before, run with the node's build in its folder ("The leak" above). The
# board is given without its env-driven meter: the script holds the meter model itself.
_METER_DAY = """
import time, machine, pulse
from hw.meter import PulseMeter
machine.vboard_configure(None, {{"board": "{board}", "chip": "esp32"}})
now = time.time()
meter = PulseMeter(a={pin}, bounce_ms=0, t0=(now // 3600 - {hours}) * 3600)
m = pulse.PulseMeter(kind="water", pin_a={pin}, litres_per_pulse={lpp}, slot=0,
                     ticks_ms=meter.ticks_ms, clock=meter.time)
hour = meter.time() // 3600
while meter.time() < now:
    meter.pulse(period_ms=1000)
    meter.step_ms({gap_ms})
    if meter.time() // 3600 != hour:
        hour = meter.time() // 3600
        m.poll(report=True)
print("ALARMS", m.poll(report=True), "PULSES", meter.forward)
m.save()
machine.reset()
"""

# the alarms the demo raises on purpose, `node:alarm`
EXPECTED_ALARMS = {f"{s.node_id}:leak" for s in SITES if s.kind == WATER} | {
    f"{s.node_id}:{a}" for s in SITES if s.kind == GAS for a in GAS_ALARMS}


def due_alarms(elapsed: float) -> set[str]:
    """The expected alarms a demo that ran `elapsed` seconds must have raised."""
    due = {a for a in EXPECTED_ALARMS if a.endswith(":leak")}
    return due | {f"{s.node_id}:{a}" for s in SITES if s.kind == GAS
                  for a, by in GAS_ALARMS.items() if elapsed >= by + 2.0}

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


def particulates(site: Site, t: float) -> dict[str, int]:
    """PM2.5 drifting slowly around the site's level, and from 20 s on, every 2 minutes, a
    rise of 20 ug/m3 over 15 s that fades over 30 s (traffic queueing at the crossing); PM1
    and PM10 follow it. Whole ug/m3, as the PMS5003 reports them."""
    pm2_5 = site.pm2_5_ug_m3 + 2.5 * math.sin(t / 40.0)
    since = (t - 20.0) % 120.0 if t >= 20.0 else 120.0
    if since < 15.0:
        pm2_5 += 20.0 * since / 15.0
    elif since < 45.0:
        pm2_5 += 20.0 * (45.0 - since) / 30.0
    return {"pm1_ug_m3": round(0.65 * pm2_5), "pm2_5_ug_m3": round(pm2_5),
            "pm10_ug_m3": round(1.4 * pm2_5 + 4.0)}


def environment(site: Site, t: float, pulses_before: int) -> dict:
    """What the node's parts measure `t` seconds into the demo: for the meter, the pulses it
    is to have made (those of the day before plus one every PULSE_EVERY_S)."""
    if site.kind == WATER:
        return {"meters": {str(METER_PIN): {"forward": pulses_before + int(t // PULSE_EVERY_S)}}}
    if site.kind == GAS:
        return GAS_SCENARIO.environment("gs-01", t % GAS_SCENARIO.duration_s)
    env = weather(site, t)
    if site.kind == AIR:
        env.update(particulates(site, t))
    return env


def interval_of(site: Site, interval_s: int) -> int:
    """The node's reading interval: the demo's, at least METER_INTERVAL_S for the meter, the
    scenario's for the gas station."""
    if site.kind == GAS:
        return GAS_SCENARIO.nodes["gs-01"][1]
    return max(interval_s, METER_INTERVAL_S) if site.kind == WATER else interval_s


def hardware(site: Site, interval_s: int, host: str, port: int) -> tuple[dict, dict]:
    """The node's board.json (its parts) and config.json (its sensors), as in
    tests/bench/node_combos.py and docs/drivers.md."""
    if site.kind == GAS:  # the scenario's station: detector, relay; its own interval
        return scenarios.station_hardware("gas", site.node_id, host, port,
                                          GAS_SCENARIO.nodes["gs-01"][1])
    board = default_board()  # a BME280 on I2C bus 0
    config = default_config(site.node_id, host, port, interval_s=interval_s)
    if site.kind == WATER:
        board.pop("i2c")
        board["meters"] = [{"a": METER_PIN}]
        config.pop("i2c")
        config["sensors"] = [{"driver": "pulse", "kind": "water", "pin": METER_PIN,
                              "litres_per_pulse": LITRES_PER_PULSE, "interval_s": interval_s}]
    elif site.kind == AIR:
        # The datasheet's fan takes 30 s to reach speed (readings before are a third low);
        # the demo's part and driver use 3 s so that PM readings come from the first seconds.
        # The fan runs between readings ("sleep": false): the interval is shorter than any
        # warm-up.
        board["uart"] = {"2": {"tx": 17, "rx": 16,
                               "devices": [{"model": "pms5003", "warmup_ms": 3000}]}}
        config["uart"] = {"2": {"tx": 17, "rx": 16, "baudrate": 9600}}
        config["sensors"].append({"driver": "pms5003", "uart": "uart2", "interval_s": interval_s,
                                  "sleep": False, "warmup_ms": 3000})
    return board, config


def run_meter_day(node: VirtualNode) -> int:
    """Runs the household meter's previous 24 hours in the node's folder ("The leak" above);
    returns the pulses the meter made."""
    script = _METER_DAY.format(board=BOARD, pin=METER_PIN, lpp=LITRES_PER_PULSE, hours=24,
                               gap_ms=PULSE_EVERY_S * 1000 - 1000)
    build = toolchain.micropython(FORMS[node.form])
    out = subprocess.run([build, "-X", "heapsize=256K", "-c", script], cwd=node.flash,
                         env=node.environ(), capture_output=True, text=True, timeout=60)
    words = out.stdout.split()
    if out.returncode != 3 or "PULSES" not in words:  # 3: it ended in machine.reset()
        raise RuntimeError(f"the meter's day before failed ({out.returncode}):\n"
                           f"{out.stdout}{out.stderr}")
    return int(words[words.index("PULSES") + 1])


class JsonlTail:
    """Follows a JSON-lines file that grows; poll() returns the records added since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def poll(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        return [json.loads(line) for line in complete if line.strip()]


# SenML units shown in the unit people read them in: particulates (9e-09 kg/m3 is 9 ug/m3),
# flows (0.00025 m3/s is 0.25 l/s), methane's % as % LEL, ppm, dB
SHOWN_AS = {"kg/m3": ("ug/m3", 1e9), "m3/s": ("l/s", 1e3), "%": ("% LEL", 1),
            "/": ("ppm", 1e6), "Bspl": ("dB", 10)}


class SinkTail:
    """Follows the JSONL sink and groups SenML records into readings (node, seq)."""

    def __init__(self, path: Path) -> None:
        self.file = JsonlTail(path)
        self.readings: dict[tuple[str, int], list[dict]] = {}
        self.lines = 0

    def poll(self) -> list[tuple[str, int]]:
        """Reads new lines; returns the readings completed since the last call."""
        fresh: list[tuple[str, int]] = []
        for rec in self.file.poll():
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
            value, unit = rec["v"], rec.get("u", "")  # alarms: no unit
            if unit in SHOWN_AS:
                unit, factor = SHOWN_AS[unit]
                value = f"{value * factor:.6g}"
            parts.append(f"{name} {value} {unit}".rstrip())
        t = time.strftime("%H:%M:%S", time.localtime(self.readings[key][0]["t"]))
        return f"{t}  {key[0]:<15} seq={key[1]:<4} " + "  ".join(parts)


def registration(site: Site, node: VirtualNode, interval_s: int) -> dict:
    """The body of `PUT /api/nodes/{id}` (gateway/webapp.py Registration): what `meterlink
    provision --gateway` would register, plus where the node stands."""
    config = json.loads((node.flash / "config.json").read_text())
    return {"board": BOARD, "sensors": config["sensors"], "interval_s": interval_s,
            "location": {"lat": site.lat, "lon": site.lon}, "district": site.district,
            "public": site.public}


def register(port: int, token_file: Path, bodies: dict[str, dict], said: queue.Queue) -> None:
    """Registers the nodes with the gateway's API; puts what to print on `said`."""
    try:
        token = token_file.read_text().splitlines()[0].strip()
        for node_id, body in bodies.items():
            status, answer = gwapi.call("PUT", f"http://127.0.0.1:{port}/api/nodes/{node_id}",
                                        body, token=token, timeout=10)
            if status not in (200, 201):
                said.put(f"demo: registering {node_id} failed: {status} {answer}")
                return
    except (OSError, IndexError, UserError) as exc:
        said.put(f"demo: registering the nodes failed: {exc}")
        return
    public = [n for n, b in bodies.items() if b["public"]]
    said.put(f"demo: registered {len(bodies)} nodes with their location and district; "
             f"on the public page: {', '.join(public)}")


def run(duration: float, out: Path, interval_s: int) -> int:
    out = out.resolve()  # the gateway resolves relative paths against its config's folder
    out.mkdir(parents=True, exist_ok=True)
    sink = out / "readings.jsonl"
    events_path = out / "events.jsonl"
    stats_path = out / "gateway-stats.json"
    for p in (sink, stats_path, events_path):
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
    events = JsonlTail(events_path)
    said: queue.Queue[str] = queue.Queue()
    started = time.monotonic()
    try:
        broker.start()
        print(f"demo: mosquitto on {broker.host}:{broker.port}, TLS with client certificates "
              f"of the demo's CA (config in {broker.conf_path})")
        gw_conf = work / "gateway.toml"
        gw_conf.write_text(GATEWAY_TOML.format(host=broker.host, port=broker.port,
                                               sink=sink, events=events_path,
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
        pulses_before: dict[str, int] = {}
        bodies: dict[str, dict] = {}
        ready: list[tuple[Site, VirtualNode]] = []
        for site in SITES:
            every = interval_of(site, interval_s)
            board, config = hardware(site, every, broker.host, broker.port)
            node = VirtualNode(work / site.node_id, node_id=site.node_id, broker=broker,
                               config=config, board=board)
            if site.kind == WATER:
                pulses_before[site.node_id] = run_meter_day(node)
                print(f"demo: node {site.node_id}: its meter's last 24 h of steady flow "
                      f"({pulses_before[site.node_id] * LITRES_PER_PULSE} L) run at speed "
                      f"first, as the leak rule looks at 24 h")
            bodies[site.node_id] = registration(site, node, every)
            ready.append((site, node))
        if not wait_subscribed(stats_path, gateway, stop) and not stop["now"]:
            print(f"demo: the gateway has not subscribed yet; starting the nodes anyway (see "
                  f"{out / 'gateway.log'})", file=sys.stderr)
        for site, node in ready:
            if stop["now"]:
                break
            node.set_environment(**environment(site, time.monotonic() - started,
                                               pulses_before.get(site.node_id, 0)))
            nodes.append(node.start())
            print(f"demo: node {site.node_id} started (console: {node.console_path})")
        print("demo: readings as the gateway stores them" +
              (f" for {duration:g} s" if duration else " (Ctrl-C to stop)"))
        last_env = 0.0
        api_shown = False
        while not stop["now"]:
            elapsed = time.monotonic() - started
            if duration and elapsed >= duration:
                break
            if elapsed - last_env >= 1.0:
                for site, node in zip(SITES, nodes):
                    node.set_environment(**environment(site, elapsed,
                                                       pulses_before.get(site.node_id, 0)))
                last_env = elapsed
            if not api_shown:
                port = show_api(stats_path, work)
                if port:
                    api_shown = True
                    threading.Thread(target=register, daemon=True,
                                     args=(port, work / "api-token", bodies, said)).start()
            while not said.empty():
                print(said.get(), flush=True)
            for key in tail.poll():
                print(tail.describe(key), flush=True)
            for e in filter(is_raised, events.poll()):
                print(f"demo: alarm raised: {alarm_text(e)}", flush=True)
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
    return summarize(tail, nodes, stats_path, gateway, out, work, time.monotonic() - started)


def wait_subscribed(stats_path: Path, gateway: subprocess.Popen, stop: dict,
                    timeout: float = 30.0) -> bool:
    """Waits until the gateway's subscription to the readings is granted (its stats file says
    so): a reading published before that has no one to go to and is lost at the broker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop["now"] and gateway.poll() is None:
        try:
            if json.loads(stats_path.read_text()).get("subscribed"):
                return True
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.1)
    return False


def show_api(stats_path: Path, work: Path) -> int | None:
    """Prints the gateway's API address once it listens (its stats file says the port);
    returns the port."""
    try:
        port = json.loads(stats_path.read_text()).get("api_port")
    except (FileNotFoundError, ValueError):
        return None
    if not port:
        return None
    print(f"demo: gateway API on http://127.0.0.1:{port} (bearer token in "
          f"{work / 'api-token'}; try /api/nodes)", flush=True)
    print(f"demo: operator dashboard on http://127.0.0.1:{port}/ (log in with that token)",
          flush=True)
    print(f"demo: public page on http://127.0.0.1:{port}/public (no login: weather and air "
          f"quality per district)", flush=True)
    return port


def is_raised(event: dict) -> bool:
    """An alarm raised (the events file has alarms raised and cleared)."""
    return event.get("event") == "alarm" and bool(event.get("vb"))


def alarm_name(event: dict) -> str:
    """`node:alarm` of an alarm event of the events file."""
    return event["n"].replace(":alarm:", ":")


def alarm_text(event: dict) -> str:
    """`node:alarm (detail)`."""
    return f"{alarm_name(event)} ({event['vs']})" if event.get("vs") else alarm_name(event)


def raised_alarms(events: Path) -> list[dict]:
    """Every alarm raised during the demo (its event)."""
    try:
        lines = events.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [e for e in map(json.loads, lines) if is_raised(e)]


def summarize(tail: SinkTail, nodes: list[VirtualNode], stats_path: Path,
              gateway: subprocess.Popen | None, out: Path, work: Path, elapsed: float) -> int:
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
    raised = raised_alarms(out / "events.jsonl")
    alarms = [alarm_text(e) for e in raised]
    unexpected = [alarm_text(e) for e in raised if alarm_name(e) not in EXPECTED_ALARMS]
    # an expected alarm is missing only if it was due by now and its node delivered readings
    missing = sorted(a for a in due_alarms(elapsed) - {alarm_name(e) for e in raised}
                     if a.split(":", 1)[0] in seen)
    print()
    print("demo summary")
    print(f"  nodes seen      {len(seen)} of {len(SITES)}: {', '.join(seen) or '-'}")
    print(f"  readings        {len(tail.readings)} ({tail.lines} SenML records) in {out / 'readings.jsonl'}")
    for node_id in seen:
        print(f"    {node_id:<15} {sum(1 for n, _ in tail.readings if n == node_id)}")
    print(f"  gateway errors  {rejected} rejected" +
          (f" {stats.get('rejected_by_reason')}" if rejected else ""))
    print(f"  node errors     {sum(node_errors.values())}" +
          (f" {node_errors}" if any(node_errors.values()) else ""))
    print(f"  alarms raised   {len(alarms)}" + (f": {'; '.join(alarms)}" if alarms else ""))
    print(f"    expected      {', '.join(sorted(EXPECTED_ALARMS))} (the household's leak, "
          f"the gas station's scenario)" +
          (f"; not raised: {', '.join(missing)}" if missing else "") +
          (f"; unexpected: {'; '.join(unexpected)}" if unexpected else ""))
    ok = len(seen) == len(SITES) and not rejected and not any(node_errors.values()) \
        and not unexpected and not missing \
        and (gateway is None or gateway.returncode in (0, -signal.SIGTERM))
    print(f"  result          {'ok' if ok else 'PROBLEMS (see the logs in ' + str(out) + ')'}")
    return 0 if ok else 1


HELP = "run a broker, the gateway and six virtual nodes on this machine"


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="meterlink demo", description=HELP)
    p.add_argument("--duration", type=float, default=0,
                   help="stop after this many seconds and print a summary (default: until Ctrl-C)")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    p.add_argument("--interval", type=int, default=2,
                   help=f"seconds between readings per node (default: 2; the water meter's at "
                        f"least {METER_INTERVAL_S})")
    return p


def run_args(args: argparse.Namespace) -> int:
    return run(args.duration, args.out, args.interval)


def main(argv: list[str] | None = None) -> int:
    return run_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
