"""The `ngsi-ld` sink: FIWARE NGSI-LD batch upsert of FIWARE Smart Data Models entities.

    POST {url}/ngsi-ld/v1/entityOperations/upsert?options=update
    Content-Type: application/ld+json        (each entity carries "@context")
    NGSILD-Tenant: {tenant}                   (with tenant)

Every entity is one of a published Smart Data Model, filled the way its JSON Schema says
(units, ranges, enumerations, required attributes); `tests/test_gw_ngsild.py` validates each
entity this module builds against the schemas kept in `tests/data/sdm/` (sources there).

One record of a reading is one sensor's sample, so the channels beside an ambiguous one say
what it measures (`station`): a temperature beside `heat_energy` is a heat meter's flow
temperature, not the weather; alarm bits beside `water_volume` are the water meter's.

| the record holds | channel -> entity `urn:ngsi-ld:{Type}:{node}[:{instance}]`, attribute (unit sent) |
|---|---|
| `heat_energy` | `heat_energy` -> `SmartMeteringObservation` id `...:{node}:heat`, `totalConsumption` (kWh, `KWH`), `meterType` Heat |
| `water_volume` | `water_volume` -> `WaterConsumptionObserved` `waterConsumption` (whole litres, `LTR`); `alarms` -> its `alarmFlowPersistence` (leak), `alarmWaterQuality` (backflow), `alarmTamper`, `acquisitionStageFailure` (sensor fault), `alarmInProgress` (any) |
| `gas_volume` | `gas_volume` -> `SmartMeteringObservation` id `...:{node}:gas`, `totalConsumption` (m3, `MTQ`), `meterType` Gas |
| `ph`, `conductivity`, `free_chlorine`, `turbidity` | -> `WaterQualityObserved` `pH`, `conductivity` (`D10`), `turbidity` (NTU), `temperature` (`CEL`); free chlorine, which the model has no attribute for, as its `measurand` `"freeChlorine, 0.45, M1, free chlorine"` (mg/L) |
| `pm1`, `pm2_5`, `pm10`, `carbon_monoxide`, `methane` | -> `AirQualityObserved` `pm1`, `pm25`, `pm10` (ug/m3, `GQ`), `co` (ppm, `59`), `temperature`, `relativeHumidity` (0-1); methane, which the model has no attribute for, is a `DeviceMeasurement` (% LEL, `P1`) |
| `noise_laeq`, `noise_lamax` | -> `NoiseLevelObserved` `LAeq`, `LAmax` (dB(A), `2N`), `dateObservedFrom` / `dateObservedTo` (the interval they cover, below); a temperature beside them is the device's (a `DeviceMeasurement`) |
| `water_level` | -> `WaterObserved` `waterLevel` (m, `MTR`); a temperature beside it is the water's, which the model has no attribute for (a `DeviceMeasurement`) |
| anything else | `temperature`, `humidity`, `pressure`, `rainfall` -> `WeatherObserved` `temperature` (`CEL`), `relativeHumidity` (0-1), `atmosphericPressure` (hPa, `A97`), `precipitation` (mm = L/m2, `MMT`) |

`carbon_monoxide`, `noise_laeq`, `noise_lamax`, `water_level` and `rainfall` name one quantity
whatever record holds them, so they go to their model from any record (`ANY_STATION`).

`rssi` is the node's `Device` (`urn:ngsi-ld:Device:{node}`, `rssi` in dBm); every other
channel (`water_flow`, `night_flow`, `water_pressure`, `battery_voltage`, the meters' flows and
temperatures, alarm bits of a gas or heat meter, `methane`, `rain_total`, `rain_intensity`,
`relay`, a channel the models have no attribute for) is a `DeviceMeasurement`
`urn:ngsi-ld:DeviceMeasurement:{node}:{channel}[:{instance}]` with `numValue` in the SenML
unit, or where the UN/CEFACT codes have no code for that unit in the unit of the code sent
(`UNIT_CODE`, `UNIT_SHIFT`: `Bspl` as decibel `2N`, the ratio `/` as ppm `59`). A battery
voltage is no `batteryLevel` (0-1): that needs the battery's discharge curve, which the
gateway does not know. Each reading also upserts the
node's `Device` (`controlledProperty`: what the node measured since the sink started,
`dateLastValueReported`), which every `refDevice` (`observedBy` where a model has no
`refDevice`) points at.

`WeatherObserved`, `AirQualityObserved`, `WaterQualityObserved`, `NoiseLevelObserved` and
`WaterObserved` require `location`; the gateway knows a node's place only from the sink's
`locations` option (node id -> `[longitude, latitude]`, `"*"` for every node not listed). A
record whose model needs a location the node has not got is sent as
`DeviceMeasurement`s instead (logged once per node), never with made-up coordinates; the other
entities carry `location` when it is known. A value below its attribute's minimum in the
model (a water level under the sensor's datum) is sent as `DeviceMeasurement` too.

`NoiseLevelObserved` requires the interval its levels cover, `dateObservedFrom` to
`dateObservedTo`. A node measures LAeq and LAmax over the time between two readings, so the
interval ends at the reading and starts at the sensor's previous reading: the one before
it in the batch, or the newest the sink has delivered (`NoisePeriods`; after readings the
node dropped, the last one before the gap). A noise reading with no known start (the first
after the gateway started, or a late one, older than a reading delivered already) is sent as
`DeviceMeasurement`s in dB (logged once per node), never with a guessed start.

Alarm events upsert `urn:ngsi-ld:Alert:{node}:{alarm}` with `category` and
`subCategory` from the model's lists (`ALERTS`), the meterlink alarm in `name`, `description`
and `data`, severity `informational` once cleared.

Each entity carries its model's own `@context` (`CONTEXTS`) unless the `context` option names
one for all (a platform's merged context). A batch holding several readings of one entity
upserts the latest value of each attribute (the upsert keeps no history; a temporal store
takes the `http` SenML feed). Upsert is idempotent, so a retried batch does no harm; the batch
key is also sent as `Idempotency-Key`. A 207 (some entities failed) is treated as a permanent
reject of the batch: the reply body, which names the failing entities, lands in dead letters.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import logging
import math
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from gateway.channels import default_table
from gateway.config import locations
from gateway.errors import DeliveryRejected
from gateway.logfmt import kv
from gateway.outbox import Batch, Item
from gateway.sinks.base import Sink, convert_each
from gateway.sinks.http import HttpPoster
from gateway.wire import Resolved

log = logging.getLogger("meterlink.gateway.sink.ngsild")

UPSERT_PATH = "/ngsi-ld/v1/entityOperations/upsert?options=update"

_SUBJECT_CONTEXT = "https://raw.githubusercontent.com/smart-data-models/{}/master/context.jsonld"
# Each model's @context: its subject's context.jsonld (the Smart Data Models' reference
# context; the subjects map the same term to different IRIs, so one for all would not do).
CONTEXTS = {t: _SUBJECT_CONTEXT.format(s) for t, s in (
    ("WeatherObserved", "dataModel.Weather"), ("AirQualityObserved", "dataModel.Environment"),
    ("WaterQualityObserved", "dataModel.WaterQuality"),
    ("NoiseLevelObserved", "dataModel.Environment"), ("WaterObserved", "dataModel.Environment"),
    ("WaterConsumptionObserved", "dataModel.WaterConsumption"),
    ("SmartMeteringObservation", "dataModel.Device"), ("Device", "dataModel.Device"),
    ("DeviceMeasurement", "dataModel.Device"), ("Alert", "dataModel.Alert"))}

# What each model's schema has: `location` and `dateObserved` required (NoiseLevelObserved
# requires `dateObservedFrom` and `dateObservedTo` instead, and its `dateObserved` is an
# interval as text), a `refDevice` attribute (the others link each value to the device with
# `observedBy`, as their examples do).
NEEDS_LOCATION = frozenset({"WeatherObserved", "AirQualityObserved", "WaterQualityObserved",
                            "NoiseLevelObserved", "WaterObserved"})
HAS_DATE_OBSERVED = (NEEDS_LOCATION - {"NoiseLevelObserved"}) | {"DeviceMeasurement"}
HAS_REF_DEVICE = frozenset({"WeatherObserved", "AirQualityObserved", "SmartMeteringObservation",
                            "DeviceMeasurement", "NoiseLevelObserved", "WaterObserved"})

WATER_QUALITY = frozenset({"ph", "conductivity", "free_chlorine", "turbidity"})
# a gas detector's temperature and humidity are the air's, as a particle sensor's are
AIR = frozenset({"pm1", "pm2_5", "pm10", "carbon_monoxide", "methane"})
NOISE = frozenset({"noise_laeq", "noise_lamax"})


def shifted(value: int | float, power: int) -> int | float:
    """`value * 10**power`, the exact decimal: 0.4567 for 45.67 %RH, not 0.45670000000000005."""
    d = Decimal(repr(value)).scaleb(power)
    return int(d) if d == d.to_integral_value() else float(d)


def _shift(power: int) -> Callable[[int | float], int | float]:
    return lambda v: shifted(v, power)


def _litres(v: int | float) -> int:
    """m3 -> whole litres (the channel's resolution; `waterConsumption` is an integer)."""
    return int((Decimal(repr(v)) * 1000).to_integral_value())


def _kwh(v: int | float) -> int | float:
    """J -> kWh, to 6 decimals (3.6 J; the channel counts whole kJ)."""
    d = round(Decimal(repr(v)) / 3600000, 6)
    return int(d) if d == d.to_integral_value() else float(d)


def _chlorine(v: int | float) -> list[str]:
    """kg/m3 -> the model's measurand string `<measurand>, <value>, <unitCode>, <description>`."""
    return [f"freeChlorine, {shifted(v, 3)}, M1, free chlorine"]


def water_alarms(bits: int) -> dict[str, Any]:
    """The WaterConsumptionObserved alarm attributes of the `alarms` channel's bits (1 leak: a
    day of continuous flow, 2 backflow, 4 tamper, 8 sensor fault; 16 gas and 32 flood, which
    the model has no attribute for, count in `alarmInProgress`)."""
    return {"alarmFlowPersistence": "In progress persistence" if bits & 1 else "No persistence",
            "alarmWaterQuality": int(bool(bits & 2)), "alarmTamper": int(bool(bits & 4)),
            "acquisitionStageFailure": int(bool(bits & 8)), "alarmInProgress": int(bool(bits))}


class Home(NamedTuple):
    """Where a channel goes in a model: entity type, attribute, the SenML unit the channel
    must arrive in, the unitCode sent (None: the model fixes the unit) and the conversion.
    With no attribute, `convert` gives several: {attribute: value}. `minimum`: the smallest
    value the model's schema allows the attribute (a value below it goes as a
    DeviceMeasurement)."""

    type: str
    attribute: str
    unit: str
    code: str | None
    convert: Callable[[int | float], Any]
    minimum: float | None = None


_SAME = _shift(0)
HOMES: dict[str, dict[str, Home]] = {
    "heat": {"heat_energy": Home("SmartMeteringObservation", "totalConsumption", "J", "KWH",
                                 _kwh)},
    "water": {"water_volume": Home("WaterConsumptionObserved", "waterConsumption", "m3", "LTR",
                                   _litres),
              "alarms": Home("WaterConsumptionObserved", "", "", None, water_alarms)},
    "gas": {"gas_volume": Home("SmartMeteringObservation", "totalConsumption", "m3", "MTQ",
                               _SAME)},
    "water_quality": {
        "ph": Home("WaterQualityObserved", "pH", "pH", None, _SAME),
        "conductivity": Home("WaterQualityObserved", "conductivity", "S/m", "D10", _SAME),
        "turbidity": Home("WaterQualityObserved", "turbidity", "NTU", None, _SAME),
        "free_chlorine": Home("WaterQualityObserved", "measurand", "kg/m3", None, _chlorine),
        "temperature": Home("WaterQualityObserved", "temperature", "Cel", "CEL", _SAME)},
    "air": {
        "pm1": Home("AirQualityObserved", "pm1", "kg/m3", "GQ", _shift(9)),
        "pm2_5": Home("AirQualityObserved", "pm25", "kg/m3", "GQ", _shift(9)),
        "pm10": Home("AirQualityObserved", "pm10", "kg/m3", "GQ", _shift(9)),
        "temperature": Home("AirQualityObserved", "temperature", "Cel", "CEL", _SAME),
        "humidity": Home("AirQualityObserved", "relativeHumidity", "%RH", None, _shift(-2))},
    # a sound level meter or a water level probe: a temperature beside them is the device's
    # or the water's, not the weather (a DeviceMeasurement)
    "noise": {},
    "level": {},
    "weather": {
        "temperature": Home("WeatherObserved", "temperature", "Cel", "CEL", _SAME),
        "humidity": Home("WeatherObserved", "relativeHumidity", "%RH", None, _shift(-2)),
        "pressure": Home("WeatherObserved", "atmosphericPressure", "Pa", "A97", _shift(-2))},
}
# Channels that name one quantity whatever record holds them: their model from any station.
# co in ppm (the model leaves the unit to unitCode); LAeq and LAmax in dB(A) (Bspl x 10,
# decibel `2N`); waterLevel in metres (`MTR`, the model's unit); precipitation in L/m2 (the
# model's unit), which is mm (`MMT`): the rainfall since the node's previous reading.
ANY_STATION: dict[str, Home] = {
    "carbon_monoxide": Home("AirQualityObserved", "co", "/", "59", _shift(6), 0),
    "noise_laeq": Home("NoiseLevelObserved", "LAeq", "Bspl", "2N", _shift(1)),
    "noise_lamax": Home("NoiseLevelObserved", "LAmax", "Bspl", "2N", _shift(1)),
    "water_level": Home("WaterObserved", "waterLevel", "m", "MTR", _SAME, 0),
    "rainfall": Home("WeatherObserved", "precipitation", "m", "MMT", _shift(3), 0),
}
METER_TYPE = {"heat": "Heat", "gas": "Gas"}

# Device.controlledProperty terms (the model's enumeration) of the channels.
CONTROLLED = {"temperature": "temperature", "humidity": "humidity",
              "pressure": "atmosphericPressure", "water_volume": "waterConsumption",
              "water_flow": "waterFlow", "night_flow": "waterFlow", "gas_volume": "gasConsumption",
              "heat_energy": "energy", "battery_voltage": "batterySupply",
              "pm1": "airPollution", "pm2_5": "airPollution", "pm10": "airPollution",
              "ph": "pH", "conductivity": "conductivity", "free_chlorine": "freeChlorine",
              "turbidity": "turbidity", "water_pressure": "pressure",
              "carbon_monoxide": "airPollution", "methane": "airPollution",
              "water_level": "waterLevel", "rain_total": "precipitation",
              "rainfall": "precipitation", "rain_intensity": "precipitation",
              "noise_laeq": "noiseLevel", "noise_lamax": "noiseLevel"}
# UN/CEFACT common codes of the SenML units (pH and NTU have none), for DeviceMeasurement.
UNIT_CODE = {"Cel": "CEL", "%RH": "P1", "Pa": "PAL", "m3": "MTQ", "m3/s": "MQS", "V": "VLT",
             "kg/m3": "KMQ", "S/m": "D10", "J": "JOU", "dBm": "DBM", "%": "P1", "m": "MTR",
             "m/s": "MTS", "/": "59", "Bspl": "2N"}
# The power of ten from the SenML unit to its code's unit where they differ: the codes have
# no bel and no plain ratio, so Bspl goes as decibel (x 10) and a ratio as ppm (x 10^6).
UNIT_SHIFT = {"Bspl": 1, "/": 6}

# meterlink alarm -> (category, subCategory or None, severity while raised), from the model's
# lists. A leak (a day of continuous flow through a meter) is no `flood`: it has no
# subCategory. The categories are about the city, not the equipment: device and gateway
# faults take the nearest, `security` (integrity and availability of the monitoring).
ALERTS = {"leak": ("environment", None, "high"),
          "backflow": ("environment", "waterPollution", "high"),
          # a gas detector's alarm (combustible gas near its lower explosive limit, carbon
          # monoxide): the model has no gas leak; a harmful gas in the air is `airPollution`,
          # and a danger to life is `critical`
          "gas": ("environment", "airPollution", "critical"),
          # water above a level sensor's flood threshold: the model lists `flood` under
          # `naturalDisaster`
          "flood": ("naturalDisaster", "flood", "high"),
          "tamper": ("security", "suspiciousAction", "high"),
          "sensor": ("security", None, "medium"),
          "low_battery": ("security", None, "low"),
          "stale": ("security", None, "medium"),
          "queue_overflow": ("security", None, "medium"),
          "gaps": ("security", None, "low"),
          "offline": ("security", None, "medium"),
          "outbox_full": ("security", None, "high"),
          "sink_auth": ("security", None, "high"),
          # an operator's early-warning rule (gateway/rules.py): about the city's networks
          "rule": ("environment", None, "high")}
ALERT_DEFAULT = ("security", None, "medium")


def station(channels: set[str]) -> str:
    """What kind of sensor took a record, from the channels it holds (a key of `HOMES`)."""
    if "heat_energy" in channels:
        return "heat"
    if "water_volume" in channels:
        return "water"
    if "gas_volume" in channels:
        return "gas"
    if channels & WATER_QUALITY:
        return "water_quality"
    if channels & AIR:
        return "air"
    if channels & NOISE:
        return "noise"
    if "water_level" in channels:
        return "level"
    return "weather"


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def date_time(at: str) -> dict[str, Any]:
    """A DateTime Property (NGSI-LD writes date-time values as typed JSON-LD values)."""
    return {"type": "Property", "value": {"@type": "DateTime", "@value": at}}


def relationship(eid: str) -> dict[str, Any]:
    return {"type": "Relationship", "object": eid}


def check_locations(raw: Any) -> dict[str, list[float]]:
    """The `locations` option: node id (or "*") -> [longitude, latitude], GeoJSON order
    (checked by the config loader, `gateway.config.locations`)."""
    return {} if raw is None else locations("sinks.ngsi-ld.locations", raw, None)


def noise_times(items: Iterable[Item]) -> dict[str, list[float]]:
    """The times of the noise readings among `items`, per sensor (`{node}[:{instance}]`),
    sorted. Skips what is malformed (converting the item names its fault)."""
    out: dict[str, set[float]] = {}
    for item in items:
        if item.kind != "reading" or not isinstance(item.body, (list, Resolved)):
            continue
        for rec in item.body:
            name, t = (rec.get("n"), rec.get("t")) if isinstance(rec, dict) else (None, None)
            if not isinstance(name, str) or type(t) not in (int, float) or not math.isfinite(t):
                continue
            parts = name.split(":")  # node, channel, instance
            if len(parts) > 1 and parts[1] in NOISE:
                sensor = item.node + "".join(f":{x}" for x in parts[2:3])
                out.setdefault(sensor, set()).add(t)
    return {sensor: sorted(times) for sensor, times in out.items()}


class NoisePeriods:
    """Where the interval of a noise reading starts: the time of the sensor's previous
    reading, from the readings of the batch being converted and the newest reading of each
    sensor in the batches delivered before (`last`, set by `delivered`).

    A reading older than a delivered one (a late reading, filling a gap) has no known start:
    the readings before it that were delivered are forgotten but the newest. A batch is
    converted alike however often it is retried: `last` moves only once it is delivered."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"NoisePeriods(sensors={len(self.last)})"

    def start(self, batch: Mapping[str, list[float]], sensor: str, t: float) -> float | None:
        """The sensor's reading before `t` (`batch`: `noise_times` of the batch), or None."""
        last = self.last.get(sensor)
        if last is not None and t <= last:
            return None
        times = batch.get(sensor, [])
        i = bisect.bisect_left(times, t)
        found = [x for x in (times[i - 1] if i else None, last) if x is not None]
        return max(found) if found else None

    def delivered(self, items: Iterable[Item]) -> None:
        for sensor, times in noise_times(items).items():
            self.last[sensor] = max(times[-1], self.last.get(sensor, times[-1]))


class Converter:
    """Builds the upsert body of a batch. Remembers, per node, the controlled properties seen
    since it was made (the Device's `controlledProperty`: one record holds one sensor's
    channels), the times of the noise sensors' readings (`NoisePeriods`) and the nodes it has
    warned about."""

    def __init__(self, *, context: str | None = None,
                 locations: Mapping[str, list[float]] | None = None) -> None:
        self.context = context
        self.locations = check_locations(locations)
        self.controlled: dict[str, set[str]] = {}
        self.periods = NoisePeriods()
        self._warned: set[tuple[str, ...]] = set()
        self._describe = {ch.name: ch.description for ch in default_table()}

    def __repr__(self) -> str:
        return f"Converter(context={self.context!r}, locations={len(self.locations)})"

    def location(self, node: str) -> dict[str, Any] | None:
        point = self.locations.get(node, self.locations.get("*"))
        if point is None:
            return None
        return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": point}}

    def _entity(self, etype: str, eid: str, node: str) -> dict[str, Any]:
        ent: dict[str, Any] = {"id": eid, "type": etype,
                               "@context": self.context or CONTEXTS[etype]}
        where = self.location(node)
        if where is not None:
            ent["location"] = where
        if etype in HAS_REF_DEVICE:
            ent["refDevice"] = relationship(f"urn:ngsi-ld:Device:{node}")
        return ent

    def entities(self, batch: Batch) -> list[dict[str, Any]]:
        """The upsert body: one entity per id, the latest value of each attribute.
        `Unconvertible` names the items that cannot be converted."""
        out: dict[str, dict[str, Any]] = {}
        noise = noise_times(batch.items)
        for ents in convert_each(batch, lambda item: self.item_entities(item, noise)):
            for ent in ents:
                merge(out, ent)
        return list(out.values())

    def delivered(self, batch: Batch) -> None:
        """The broker has `batch` (or refused it for good): its noise readings are past."""
        self.periods.delivered(batch.items)

    def item_entities(self, item: Item, noise: Mapping[str, list[float]] | None = None
                      ) -> list[dict[str, Any]]:
        """The entities one outbox item updates (raises on a value it cannot convert);
        `noise`: the `noise_times` of its batch (else of the item alone)."""
        if item.kind != "reading":
            return [self.alert(item.body)]
        if noise is None:
            noise = noise_times([item])
        node = item.node
        device = f"urn:ngsi-ld:Device:{node}"
        names = [rec["n"].split(":") for rec in item.body]
        kind = station({n[1] for n in names})
        located = self.location(node) is not None
        controlled = self.controlled.setdefault(node, set())
        dev = self._entity("Device", device, node)
        dev.update(name={"type": "Property", "value": node},
                   supportedProtocol={"type": "Property", "value": ["mqtt"]},
                   dateLastValueReported=date_time(iso(item.created)))
        out: dict[str, dict[str, Any]] = {device: dev}
        for rec, (_, channel, *inst) in zip(item.body, names):
            value = rec["v"]
            if type(value) not in (int, float):
                raise TypeError(f"{rec['n']}: value {value!r} is not a number")
            if type(value) is float and not math.isfinite(value):
                raise ValueError(f"{rec['n']}: value {value} is not a JSON number")
            at = iso(rec["t"])
            suffix = f":{inst[0]}" if inst else ""
            if channel in CONTROLLED:
                controlled.add(CONTROLLED[channel])
            home = HOMES[kind].get(channel) or ANY_STATION.get(channel)
            start = None
            if home is not None and home.type == "NoiseLevelObserved":
                start = self.periods.start(noise, node + suffix, rec["t"])
            if channel == "rssi":
                dev["rssi"] = {"type": "Property", "value": value, "observedAt": at,
                               "unitCode": "DBM"}
            elif home is None or self._instead(node, channel, home, value, start, located):
                self._measurement(out, node, rec, channel, suffix, at)
            else:
                self._observed(out, node, kind, home, rec, suffix, at, start)
        dev["controlledProperty"] = {"type": "Property", "value": sorted(controlled)}
        return list(out.values())

    def _instead(self, node: str, channel: str, home: Home, value: int | float,
                 start: float | None, located: bool) -> bool:
        """True when the value cannot go to its model (a DeviceMeasurement then): the node
        has no location and the model requires one, the value is below the attribute's
        minimum, a noise reading's interval has no known start. Logged once per node (and
        channel, for a value below the minimum)."""
        if home.type in NEEDS_LOCATION and not located:
            self._once(logging.WARNING, "ngsi_ld_no_location", (node,), node=node,
                       model=home.type, sent="DeviceMeasurement",
                       hint="set [sinks.ngsi-ld] locations")
            return True
        if home.minimum is not None and home.convert(value) < home.minimum:
            self._once(logging.WARNING, "ngsi_ld_below_minimum", (node, channel), node=node,
                       channel=channel, value=value, model=f"{home.type}.{home.attribute}",
                       minimum=home.minimum, sent="DeviceMeasurement")
            return True
        if home.type == "NoiseLevelObserved" and start is None:
            self._once(logging.INFO, "ngsi_ld_no_period", (node,), node=node, model=home.type,
                       sent="DeviceMeasurement",
                       hint="the sensor's previous reading is unknown (the first since the "
                            "start, or a late reading)")
            return True
        return False

    def _once(self, level: int, event: str, key: tuple[str, ...], **fields: Any) -> None:
        """Logs `event` the first time for `key` (a node, or a node and channel)."""
        if (event, *key) not in self._warned:
            self._warned.add((event, *key))
            log.log(level, event, extra=kv(**fields))

    def _observed(self, out: dict[str, dict[str, Any]], node: str, kind: str, home: Home,
                  rec: dict[str, Any], suffix: str, at: str, start: float | None) -> None:
        if rec.get("u", "") != home.unit:
            raise ValueError(f"{rec['n']}: unit {rec.get('u')!r}, {home.type}.{home.attribute} "
                             f"takes {home.unit!r}")
        meter = f":{kind}" if home.type == "SmartMeteringObservation" else ""
        eid = f"urn:ngsi-ld:{home.type}:{node}{meter}{suffix}"
        ent = out.get(eid)
        if ent is None:
            ent = out[eid] = self._entity(home.type, eid, node)
            if meter:
                ent["meterType"] = {"type": "Property", "value": METER_TYPE[kind]}
        values = ({home.attribute: home.convert(rec["v"])} if home.attribute
                  else home.convert(rec["v"]))
        for name, value in values.items():
            prop: dict[str, Any] = {"type": "Property", "value": value, "observedAt": at}
            if home.code:
                prop["unitCode"] = home.code
            if home.type not in HAS_REF_DEVICE:
                prop["observedBy"] = relationship(f"urn:ngsi-ld:Device:{node}")
            ent[name] = prop
        if home.type in HAS_DATE_OBSERVED:
            _date_observed(ent, at)
        if start is not None:
            prev = ent.get("dateObservedTo")
            if prev is None or _when(prev) < at:
                ent["dateObservedFrom"] = date_time(iso(start))
                ent["dateObservedTo"] = date_time(at)

    def _measurement(self, out: dict[str, dict[str, Any]], node: str, rec: dict[str, Any],
                     channel: str, suffix: str, at: str) -> None:
        eid = f"urn:ngsi-ld:DeviceMeasurement:{node}:{channel}{suffix}"
        ent = out[eid] = self._entity("DeviceMeasurement", eid, node)
        ent["name"] = {"type": "Property", "value": channel + suffix}
        if channel in self._describe:
            ent["description"] = {"type": "Property", "value": self._describe[channel]}
        if channel in CONTROLLED:
            ent["controlledProperty"] = {"type": "Property", "value": CONTROLLED[channel]}
        unit = rec.get("u", "")
        value = shifted(rec["v"], UNIT_SHIFT[unit]) if unit in UNIT_SHIFT else rec["v"]
        num: dict[str, Any] = {"type": "Property", "value": value, "observedAt": at}
        code = UNIT_CODE.get(unit)
        if code:
            num["unitCode"] = code
            ent["unit"] = {"type": "Property", "value": code}
        ent["numValue"] = num
        _date_observed(ent, at)

    def alert(self, b: dict[str, Any]) -> dict[str, Any]:
        """The Alert entity of an alarm event (raised or cleared)."""
        node, alarm, active = b["node"], b["alarm"], b["active"]
        category, sub, severity = ALERTS.get(alarm.split(":", 1)[0], ALERT_DEFAULT)
        detail = b.get("detail") or ""
        eid = f"urn:ngsi-ld:Alert:{node}:{alarm}"
        ent = self._entity("Alert", eid, node)
        ent["category"] = {"type": "Property", "value": category}
        if sub:
            ent["subCategory"] = {"type": "Property", "value": sub}
        text = f"meterlink alarm {alarm} {'raised' if active else 'cleared'} on {node}"
        ent.update(
            severity={"type": "Property", "value": severity if active else "informational"},
            name={"type": "Property", "value": alarm},
            description={"type": "Property", "value": text + (f": {detail}" if detail else "")},
            data={"type": "Property", "value": {"alarm": alarm, "active": active,
                                                "detail": detail,
                                                **({"readings": b["readings"]}
                                                   if b.get("readings") else {})}},
            dateIssued=date_time(iso(b["t"])),
            alertSource=relationship(f"urn:ngsi-ld:Device:{node}"))
        return ent


def _date_observed(ent: dict[str, Any], at: str) -> None:
    prev = ent.get("dateObserved")
    if prev is None or _when(prev) < at:
        ent["dateObserved"] = date_time(at)


def _when(attr: Any) -> str:
    """The time an attribute's value is of: `observedAt`, a DateTime's value, or "" (static)."""
    if not isinstance(attr, dict):
        return ""
    if "observedAt" in attr:
        return attr["observedAt"]
    value = attr.get("value")
    if isinstance(value, dict) and value.get("@type") == "DateTime":
        return value["@value"]
    return ""


def merge(out: dict[str, dict[str, Any]], ent: dict[str, Any]) -> None:
    """Adds `ent` to the upsert body `out`: the latest value of each attribute stays, a
    Device's `controlledProperty` is the union, an Alert's latest event wins whole."""
    old = out.get(ent["id"])
    if old is None or ent["type"] == "Alert":
        out[ent["id"]] = dict(ent)
        return
    for name, attr in ent.items():
        prev = old.get(name)
        if name == "controlledProperty" and ent["type"] == "Device" and prev is not None:
            union = sorted(set(prev["value"]) | set(attr["value"]))
            old[name] = {"type": "Property", "value": union}
        elif prev is None or _when(prev) <= _when(attr):
            old[name] = attr


class NgsiLdSink(Sink):
    """Batch upsert to an NGSI-LD context broker (Orion-LD, Scorpio, Stellio)."""

    name = "ngsi-ld"

    def __init__(self, config) -> None:
        super().__init__(config)
        o = config.options
        self.poster = HttpPoster.from_options(o)
        self.converter = Converter(context=o.get("context"), locations=o.get("locations"))
        self.tenant = o["tenant"]

    def credential_changed(self) -> bool:
        return self.poster.credential_changed()

    def close(self) -> None:
        self.poster.close()  # the kept-alive connection to the broker

    def entities(self, batch: Batch) -> list[dict[str, Any]]:
        return self.converter.entities(batch)

    def deliver(self, batch: Batch) -> None:
        body = json.dumps(self.entities(batch), separators=(",", ":"),
                          allow_nan=False).encode()
        headers = {"Content-Type": "application/ld+json", "Idempotency-Key": batch.key}
        if self.tenant:
            headers["NGSILD-Tenant"] = self.tenant
        base = self.poster.base_path.rstrip("/")
        try:
            status, reply = self.poster.post(body, headers, path=base + UPSERT_PATH)
        except DeliveryRejected:
            self.converter.delivered(batch)  # dead-lettered: the next reading follows it
            raise
        self.converter.delivered(batch)
        if status == 207:
            raise DeliveryRejected(f"{self.poster.url}: HTTP 207: some entities failed",
                                   status=207, reply=reply)
