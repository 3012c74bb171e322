"""Scenarios for `meterlink simulate --scenario NAME`: virtual stations running the real
firmware while a timeline moves the physical world their parts measure (a gas leak, a pipe
burst, a rain storm, a noisy night), so operators can rehearse what the platform shows.

    sc = load("gas-leak")                  # host_tools/scenarios/gas-leak.toml, or a path
    board, config = sc.hardware("gs-01", "127.0.0.1", 1883)
    sc.environment("gs-01", t=12.5)        # env.json for the node 12.5 s in

A scenario file (TOML):

    title = "Methane leak at a gas regulating station"
    duration_s = 75
    rules = '''...'''                      # optional: gateway [rules.*] it rehearses

    [nodes.gs-01]
    station = "gas"                        # a key of STATIONS
    interval_s = 30                        # the node's reading interval (default 10)

    [[timeline]]
    at = 10                                # seconds from the start
    node = "gs-01"
    set = { methane_lel = 26.0 }           # quantities of its station (STATIONS[...].quantities)
    ramp_s = 20                            # optional: linear from the value before

A quantity holds its value until the timeline changes it; before its first entry it has the
station's default. Every problem is a one-line error naming the key (`timeline[2].set.methan:
not a quantity of a gas station (methane_lel, gas_fault)`).

Stations are the hardware of docs/drivers.md, with the virtual board's register-level models:
gas (a combustible-gas detector over Modbus and an alarm relay), pressure (a 0.5-4.5 V
transducer on the ADC), level (an ultrasonic level sensor over Modbus with a flood
threshold), rain (a tipping-bucket gauge), noise (a sound level meter over Modbus).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from host_tools.device import MODBUS_PROFILES
from host_tools.vboard.node import default_board, default_config
from meterlink_common import EXIT_INPUT, UserError

HERE = Path(__file__).resolve().parent
RELAY_GPIO = 26
PRESSURE_GPIO = 34
RAIN_GPIO = 25
UM_PER_TIP = 200  # a 0.2 mm tipping bucket


@dataclass(frozen=True)
class Station:
    """A kind of station: its parts (board.json), its sensors (config.json) and how its
    quantities become the virtual board's environment."""
    what: str
    quantities: dict[str, float]  # name -> default
    parts: Callable[[dict, dict, int], None]  # (board, config, interval_s): fills both
    env: Callable[[dict[str, float]], dict]


def _modbus(board: dict, config: dict, address: int, profile: str, sensor: dict) -> None:
    uart = board.setdefault("uart", {}).setdefault("2", {"tx": 17, "rx": 16, "devices": []})
    uart["devices"].append({"model": "modbus_slave", "address": address, "profile": profile})
    config["uart"] = {"2": {"tx": 17, "rx": 16, "baudrate": 9600}}
    library = json.loads(MODBUS_PROFILES.read_text())["profiles"]
    config.setdefault("modbus_profiles", {})[profile] = library[profile]
    config["sensors"].append({"driver": "modbus", "uart": "uart2", "address": address,
                              "profile": profile, **sensor})


def _gas(board: dict, config: dict, interval_s: int) -> None:
    _modbus(board, config, 3, "gas_lel", {
        "interval_s": interval_s, "poll_s": 1,
        "alarm": {"channel": "methane", "above": 200, "clear": 150, "kind": "gas"}})
    board["relay"] = {"pin": RELAY_GPIO}
    config["relay"] = {"pin": RELAY_GPIO, "on": ["gas"]}


def _pressure(board: dict, config: dict, interval_s: int) -> None:
    # 0-10 bar over 0.5-4.5 V (the driver's default calibration), a 10k/10k divider to the pin
    config["sensors"].append({"driver": "pressure", "pin": PRESSURE_GPIO,
                              "interval_s": interval_s})


def _level(board: dict, config: dict, interval_s: int) -> None:
    _modbus(board, config, 5, "level", {
        "interval_s": interval_s, "poll_s": 2,
        "alarm": {"channel": "water_level", "above": 1800, "clear": 1700, "kind": "flood"}})


def _rain(board: dict, config: dict, interval_s: int) -> None:
    board["meters"] = [{"a": RAIN_GPIO, "model": "rain_gauge"}]  # a reed closed per tip
    config["sensors"].append({"driver": "pulse", "kind": "rain", "pin": RAIN_GPIO,
                              "um_per_tip": UM_PER_TIP, "interval_s": interval_s})


def _noise(board: dict, config: dict, interval_s: int) -> None:
    _modbus(board, config, 6, "noise", {"interval_s": interval_s})


STATIONS = {
    "gas": Station("gas regulating station: methane detector (Modbus) and a shut-off relay",
                   {"methane_lel": 0.0, "gas_fault": 0},
                   _gas, lambda q: {"methane_lel": q["methane_lel"],
                                    "gas_fault": int(q["gas_fault"])}),
    "pressure": Station("pump station: network pressure transducer (0-10 bar)",
                        {"pressure_bar": 4.0}, _pressure,
                        lambda q: {"adc_mv": {str(PRESSURE_GPIO):
                                              (500 + 400 * q["pressure_bar"]) / 2}}),
    "level": Station("drainage channel: ultrasonic level sensor (Modbus), flood at 1.8 m",
                     {"level_m": 0.4}, _level, lambda q: {"level_m": q["level_m"]}),
    "rain": Station("rain gauge: tipping bucket, 0.2 mm a tip",
                    {"rain_mm": 0.0}, _rain,
                    lambda q: {"meters": {str(RAIN_GPIO):
                                          {"forward": int(q["rain_mm"] * 1000 // UM_PER_TIP)}}}),
    "noise": Station("noise station: sound level meter (Modbus), LAeq and LAmax",
                     {"laeq_db": 42.0, "lamax_db": 50.0}, _noise,
                     lambda q: {"laeq_db": q["laeq_db"], "lamax_db": q["lamax_db"]}),
}


def station_hardware(station: str, node_id: str, host: str, port: int,
                     interval_s: int) -> tuple[dict, dict]:
    """The board.json and config.json of a `station` node."""
    board = default_board()
    board.pop("i2c")
    config = default_config(node_id, host, port, interval_s=interval_s)
    config.pop("i2c")
    config["sensors"] = []
    config["time"] = {"ntp": ""}  # no Internet time on a rehearsal: the gateway's clock
    STATIONS[station].parts(board, config, interval_s)
    return board, config


@dataclass
class Change:
    at: float
    node: str
    values: dict[str, float]
    ramp_s: float = 0.0


@dataclass
class Scenario:
    name: str
    title: str
    duration_s: float
    nodes: dict[str, tuple[str, int]]  # node id -> (station, interval_s)
    timeline: list[Change] = field(default_factory=list)
    rules: str = ""

    def hardware(self, node_id: str, host: str, port: int) -> tuple[dict, dict]:
        """The node's board.json and config.json."""
        station, interval_s = self.nodes[node_id]
        return station_hardware(station, node_id, host, port, interval_s)

    def quantities(self, node_id: str, t: float) -> dict[str, float]:
        """The node's quantities `t` seconds in: each at its last value, or on its ramp."""
        q = dict(STATIONS[self.nodes[node_id][0]].quantities)
        for ch in self.timeline:
            if ch.node != node_id or ch.at > t:
                continue
            for name, target in ch.values.items():
                if ch.ramp_s and t < ch.at + ch.ramp_s:
                    q[name] = q[name] + (target - q[name]) * (t - ch.at) / ch.ramp_s
                else:
                    q[name] = target
        return q

    def environment(self, node_id: str, t: float) -> dict:
        """The node's env.json `t` seconds in."""
        return STATIONS[self.nodes[node_id][0]].env(self.quantities(node_id, t))


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


def load(name: str) -> Scenario:
    """A scenario by name (host_tools/scenarios/NAME.toml) or path; UserError names the key
    of any problem."""
    path = Path(name)
    if not name.endswith(".toml"):
        path = HERE / f"{name}.toml"
        if not path.exists():
            raise UserError(f"no scenario {name!r}: known are {', '.join(names())}",
                            exit_code=EXIT_INPUT)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path}: {exc}", exit_code=EXIT_INPUT) from exc
    return parse(raw, path.stem, str(path))


def parse(raw: dict, name: str, where: str) -> Scenario:
    def fail(key: str, rule: str, got) -> UserError:
        return UserError(f"{where}: {key} {rule}: got {got!r}", exit_code=EXIT_INPUT)

    unknown = set(raw) - {"title", "duration_s", "rules", "nodes", "timeline"}
    if unknown:
        raise fail(sorted(unknown)[0], "is not a scenario key (title, duration_s, rules, "
                   "nodes, timeline)", raw[sorted(unknown)[0]])
    duration = raw.get("duration_s")
    if not isinstance(duration, (int, float)) or isinstance(duration, bool) or duration <= 0:
        raise fail("duration_s", "must be a number of seconds > 0", duration)
    nodes: dict[str, tuple[str, int]] = {}
    for node_id, spec in (raw.get("nodes") or {}).items():
        key = f"nodes.{node_id}"
        if not isinstance(spec, dict) or spec.get("station") not in STATIONS:
            raise fail(f"{key}.station", f"must be one of {', '.join(STATIONS)}",
                       spec.get("station") if isinstance(spec, dict) else spec)
        iv = spec.get("interval_s", 10)
        if not isinstance(iv, int) or isinstance(iv, bool) or not 1 <= iv <= 86400:
            raise fail(f"{key}.interval_s", "must be an integer 1-86400", iv)
        nodes[node_id] = (spec["station"], iv)
    if not nodes:
        raise fail("nodes", "must name at least one node", raw.get("nodes"))
    timeline = []
    for i, entry in enumerate(raw.get("timeline") or []):
        key = f"timeline[{i}]"
        at, node, values = entry.get("at"), entry.get("node"), entry.get("set")
        if not isinstance(at, (int, float)) or isinstance(at, bool) or not 0 <= at <= duration:
            raise fail(f"{key}.at", f"must be a time in seconds 0-{duration}", at)
        if node not in nodes:
            raise fail(f"{key}.node", f"must be a node of the scenario ({', '.join(nodes)})",
                       node)
        station = STATIONS[nodes[node][0]]
        if not isinstance(values, dict) or not values:
            raise fail(f"{key}.set", "must be a table of quantities", values)
        for q, v in values.items():
            if q not in station.quantities:
                raise fail(f"{key}.set.{q}", f"is not a quantity of a {nodes[node][0]} "
                           f"station ({', '.join(station.quantities)})", v)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise fail(f"{key}.set.{q}", "must be a number", v)
        ramp = entry.get("ramp_s", 0)
        if not isinstance(ramp, (int, float)) or isinstance(ramp, bool) or ramp < 0:
            raise fail(f"{key}.ramp_s", "must be a number of seconds >= 0", ramp)
        timeline.append(Change(float(at), node, dict(values), float(ramp)))
    timeline.sort(key=lambda c: c.at)
    return Scenario(name, str(raw.get("title", name)), float(duration), nodes, timeline,
                    str(raw.get("rules", "")))
