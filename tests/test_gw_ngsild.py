"""The ngsi-ld sink sends FIWARE Smart Data Models entities, and each of them validates against
its model's published JSON Schema.

The schemas are copies (tests/data/sdm/, README there: source, commit, licence); their $refs
are resolved from those copies, never from the network. An entity is validated the way the
models define it: its normalized NGSI-LD form made keyValues (Property -> value, Relationship
-> object, GeoProperty -> value), checked with the validator the schema's $schema names, and
every attribute must be one the model declares (the schemas allow any other, a platform's
consumers do not expect them).
"""

from __future__ import annotations

import json
import logging
import re
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from jsonschema import FormatChecker
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from gateway.channels import default_table
from gateway.config import parse_config
from gateway.errors import ConfigError, Unconvertible
from gateway.outbox import Outbox
from gateway.registry import ALARMS
from gateway.sinks import make_sink
from gateway.wire import senml_value
from gateway_support import Recorder

T0 = 1763712000  # 2025-11-21T08:00:00Z
SDM = Path(__file__).parent / "data" / "sdm"
SCHEMAS = {"WeatherObserved": "dataModel.Weather/WeatherObserved/schema.json",
           "AirQualityObserved": "dataModel.Environment/AirQualityObserved/schema.json",
           "NoiseLevelObserved": "dataModel.Environment/NoiseLevelObserved/schema.json",
           "WaterObserved": "dataModel.Environment/WaterObserved/schema.json",
           "WaterQualityObserved": "dataModel.WaterQuality/WaterQualityObserved/schema.json",
           "WaterConsumptionObserved":
               "dataModel.WaterConsumption/WaterConsumptionObserved/schema.json",
           "SmartMeteringObservation": "dataModel.Device/SmartMeteringObservation/schema.json",
           "Device": "dataModel.Device/Device/schema.json",
           "DeviceMeasurement": "dataModel.Device/DeviceMeasurement/schema.json",
           "Alert": "dataModel.Alert/Alert/schema.json"}
# each model's @context: its subject's context.jsonld, as the models' examples carry it
CONTEXTS = {etype: "https://raw.githubusercontent.com/smart-data-models/%s/master/context.jsonld"
            % path.split("/")[0] for etype, path in SCHEMAS.items()}
BRUSSELS = [4.3517, 50.8503]  # GeoJSON order: longitude, latitude


# ---- the schemas, offline ---------------------------------------------------------------------

def _retrieve(uri: str) -> Resource:
    """A $ref'd schema from tests/data/sdm: the models cite one file both at
    smart-data-models.github.io/{repo}/{path} and raw.githubusercontent.com/smart-data-models/
    {repo}/master/{path}."""
    parts = urlsplit(uri)
    path = parts.path.strip("/").split("/")
    if parts.netloc == "raw.githubusercontent.com" and path[:1] == ["smart-data-models"] \
            and path[2:3] == ["master"]:
        path = path[1:2] + path[3:]
    elif parts.netloc != "smart-data-models.github.io":
        raise NoSuchResource(ref=uri)
    local = SDM.joinpath(*path)
    if not local.is_file():
        raise NoSuchResource(ref=uri)
    return Resource.from_contents(json.loads(local.read_text()))


REGISTRY: Registry = Registry(retrieve=_retrieve)
FORMATS = FormatChecker(formats=())
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


@FORMATS.checks("date-time")
def _date_time(value: object) -> bool:
    return not isinstance(value, str) or bool(_RFC3339.match(value))


@FORMATS.checks("uri")
def _uri(value: object) -> bool:
    return not isinstance(value, str) or bool(urlsplit(value).scheme)


@cache
def schema(etype: str) -> dict:
    return json.loads((SDM / SCHEMAS[etype]).read_text())


def declared(node: dict, resolver) -> set[str]:
    """The attribute names a model schema declares (its properties, through allOf and $ref)."""
    names = set(node.get("properties", {}))
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key, []):
            if "$ref" in sub:
                found = resolver.lookup(sub["$ref"])
                names |= declared(found.contents, found.resolver)
            else:
                names |= declared(sub, resolver)
    return names


def key_values(entity: dict) -> dict:
    """The keyValues form of a normalized NGSI-LD entity."""
    out = {}
    for name, attr in entity.items():
        if name == "@context":
            continue
        if name in ("id", "type"):
            out[name] = attr
        elif attr["type"] == "Relationship":
            out[name] = attr["object"]
        elif attr["type"] in ("Property", "GeoProperty"):
            value = attr["value"]
            if isinstance(value, dict) and value.get("@type") == "DateTime":
                value = value["@value"]
            out[name] = value
        else:
            raise AssertionError(f"{entity['id']}.{name}: type {attr['type']!r}")
    return out


def problems(entity: dict) -> list[str]:
    """Why `entity` is not a valid entity of its model (nothing when it is)."""
    etype = entity["type"]
    if etype not in SCHEMAS:
        return [f"{entity['id']}: {etype} is not a model the sink uses"]
    doc = schema(etype)
    kv = key_values(entity)
    validator = validator_for(doc)(doc, registry=REGISTRY, format_checker=FORMATS)
    out = [f"{entity['id']}: /{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
           for e in validator.iter_errors(kv)]
    known = declared(doc, REGISTRY.resolver_with_root(Resource.from_contents(doc)))
    out += [f"{entity['id']}: {name} is not an attribute of {etype}"
            for name in sorted(set(kv) - known)]
    for name, attr in entity.items():
        if isinstance(attr, dict) and "observedAt" in attr and not _RFC3339.match(
                attr["observedAt"]):
            out.append(f"{entity['id']}.{name}: observedAt {attr['observedAt']!r}")
    return out


def test_the_stored_schemas_resolve_offline_and_the_readme_names_every_file():
    readme = (SDM / "README.md").read_text()
    for path in sorted(SDM.rglob("*.json")):
        assert str(path.relative_to(SDM)) in readme, f"README lacks {path}"
    for etype in SCHEMAS:
        resolver = REGISTRY.resolver_with_root(Resource.from_contents(schema(etype)))
        assert {"id", "type", "location"} <= declared(schema(etype), resolver)
    with pytest.raises(Exception, match="example.org"):
        validator_for(schema("Device"))({"$ref": "https://example.org/x.json"},
                                        registry=REGISTRY).validate({})


def test_the_checker_catches_what_the_old_entities_got_wrong():
    weather = {"id": "urn:ngsi-ld:WeatherObserved:w1", "type": "WeatherObserved",
               "@context": "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
               "relativeHumidity": {"type": "Property", "value": 45.67},
               "batteryVoltage": {"type": "Property", "value": 3.6}}
    found = "\n".join(problems(weather))
    assert "'dateObserved' is a required property" in found
    assert "'location' is a required property" in found
    assert "/relativeHumidity: 45.67 is greater than the maximum of 1" in found
    assert "batteryVoltage is not an attribute of WeatherObserved" in found
    assert problems({"id": "urn:ngsi-ld:WaterMeter:w1", "type": "WaterMeter"})


# ---- a batch with every channel and every alarm ------------------------------------------------

UNIT = {ch.name: ch.unit for ch in default_table()}
SCALE = {ch.name: ch.scale for ch in default_table()}


def rec(node: str, channel: str, v, t: float = T0, inst: int = 0) -> dict:
    r = {"n": f"{node}:{channel}" + (f":{inst}" if inst else ""), "u": UNIT[channel], "v": v,
         "t": t}
    if not r["u"]:
        del r["u"]  # as the gateway writes the unitless alarm bits
    return r


def wire(node: str, channel: str, n: int, t: float = T0, inst: int = 0) -> dict:
    """The record the gateway resolves from the wire integer `n` (value * 10^scale)."""
    return rec(node, channel, senml_value(n, SCALE[channel]), t, inst)


# one reading item is one sensor's sample (firmware/node.py), so these are the sensors
READINGS = [
    ("env1", [rec("env1", "temperature", 21.53), rec("env1", "humidity", 45.67)]),  # sht4x
    ("env1", [rec("env1", "temperature", 19.5, inst=1), rec("env1", "humidity", 50, inst=1),
              rec("env1", "pressure", 101325, inst=1)]),  # bme280, second instance
    ("air1", [rec("air1", "pm1", 4e-09), rec("air1", "pm2_5", 1.2e-08),
              rec("air1", "pm10", 2.5e-08)]),  # pms5003
    ("wq1", [rec("wq1", "ph", 7.35), rec("wq1", "conductivity", 0.0512),
             rec("wq1", "free_chlorine", 0.00045), rec("wq1", "turbidity", 0.35),
             rec("wq1", "temperature", 12.5)]),  # a modbus water quality probe
    ("w1", [rec("w1", "water_volume", 12.345), rec("w1", "water_flow", 0.000125),
            rec("w1", "night_flow", 1.5e-08), rec("w1", "alarms", 15)]),  # pulse water meter
    ("w1", [rec("w1", "water_pressure", 350000)]),  # analog pressure transducer
    ("w1", [rec("w1", "battery_voltage", 3.712)]),
    ("w1", [rec("w1", "rssi", -67)]),
    ("g1", [rec("g1", "gas_volume", 45.678), rec("g1", "alarms", 4)]),  # pulse gas meter
    ("h1", [rec("h1", "heat_energy", 123456000), rec("h1", "water_volume", 3.2),
            rec("h1", "water_flow", 0.00025), rec("h1", "temperature", 65.5),
            rec("h1", "temperature", 42.25, inst=1), rec("h1", "alarms", 8)]),  # M-Bus heat
    # a gas detector: 0.1 % LEL, 1 ppm, 0.01 degC; alarm bit 16 gas; its alarm output
    ("gas1", [wire("gas1", "methane", 125), wire("gas1", "carbon_monoxide", 35),
              wire("gas1", "temperature", 2350), wire("gas1", "alarms", 16)]),
    ("gas1", [wire("gas1", "relay", 1)]),
    # a sound level meter, two readings 5 min apart (0.1 dB(A): Bspl at scale -2)
    ("n1", [wire("n1", "noise_laeq", 653), wire("n1", "noise_lamax", 812)]),
    ("n1", [wire("n1", "noise_laeq", 587, T0 + 300), wire("n1", "noise_lamax", 701, T0 + 300)]),
    # a submersible level probe (1 mm) with its water temperature and the flood bit 32
    ("lvl1", [wire("lvl1", "water_level", 1234), wire("lvl1", "temperature", 1150),
              wire("lvl1", "alarms", 32)]),
    # a tipping-bucket rain gauge: 1 um, 1 nm/s (2.4 mm in 15 min: 2667 nm/s)
    ("rain1", [wire("rain1", "rain_total", 1234567), wire("rain1", "rainfall", 2400),
               wire("rain1", "rain_intensity", 2667)]),
]
EVENTS = [{"node": "w1", "alarm": alarm, "active": alarm != "backflow", "t": T0 + 61.5,
           "detail": f"{alarm} detail"} for alarm in ALARMS] + [
    {"node": "w1", "alarm": "leak:1", "active": True, "t": T0 + 62, "detail": ""},
    {"node": "lvl1", "alarm": "flood:1", "active": True, "t": T0 + 62,
     "detail": "alarms channel = 32"},
    {"node": "-gateway", "alarm": "outbox_full", "active": True, "t": T0 + 63,
     "detail": "outbox 1000 bytes, limit 1000"},
    {"node": "-gateway", "alarm": "sink_auth:ngsi-ld", "active": True, "t": T0 + 64,
     "detail": "HTTP 401"}]


def batch(tmp_path, readings=READINGS, events=EVENTS):
    box = Outbox(tmp_path / "o.db", sinks=["ngsi-ld"])
    with box.transaction():
        for seq, (node, body) in enumerate(readings, 1):
            box.add_item("reading", node, seq, body, T0)
        for body in events:
            box.add_item("event", body["node"], None, body, T0)
    return box.claim_batch("ngsi-ld", max_records=1000, max_bytes=1 << 20)


def sink(tmp_path, url="http://127.0.0.1:9", *, locations=None, **keys):
    if locations is not None:
        keys["locations"] = locations
    config = parse_config({"sinks": {"ngsi-ld": {"url": url, **keys}}},
                          base_dir=tmp_path).sinks[0]
    return make_sink(config)


def test_the_batch_covers_every_channel_and_alarm():
    channels = {r["n"].split(":")[1] for _, body in READINGS for r in body}
    assert channels == {ch.name for ch in default_table()}, "a channel without a test"
    assert {e["alarm"] for e in EVENTS} >= set(ALARMS)


def test_every_entity_sent_validates_against_its_smart_data_model(tmp_path):
    rec_ = Recorder()
    try:
        rec_.reply = (201, b"", {})
        sink(tmp_path, rec_.url, locations={"*": BRUSSELS}).deliver(batch(tmp_path))
        [(path, headers, body)] = rec_.requests
    finally:
        rec_.close()
    assert path == "/ngsi-ld/v1/entityOperations/upsert?options=update"
    assert headers["Content-Type"] == "application/ld+json"
    sent = json.loads(body)
    assert [p for e in sent for p in problems(e)] == []
    ents = {e["id"]: e for e in sent}
    assert len(ents) == len(sent), "one entity per id"
    assert {e["type"] for e in sent} == set(SCHEMAS)
    for e in sent:
        assert e["@context"] == CONTEXTS[e["type"]]
        assert e["location"] == {"type": "GeoProperty",
                                 "value": {"type": "Point", "coordinates": BRUSSELS}}

    def value(eid, attr):
        return ents[eid][attr]["value"]

    def unit(eid, attr):
        return ents[eid][attr].get("unitCode")

    weather = "urn:ngsi-ld:WeatherObserved:env1"
    assert value(weather, "temperature") == 21.53 and unit(weather, "temperature") == "CEL"
    assert value(weather, "relativeHumidity") == 0.4567
    assert value(weather, "dateObserved") == {"@type": "DateTime", "@value": "2025-11-21T08:00:00Z"}
    assert value(weather + ":1", "atmosphericPressure") == 1013.25
    assert unit(weather + ":1", "atmosphericPressure") == "A97"
    assert value(weather + ":1", "relativeHumidity") == 0.5
    air = "urn:ngsi-ld:AirQualityObserved:air1"
    assert [value(air, a) for a in ("pm1", "pm25", "pm10")] == [4, 12, 25]
    assert unit(air, "pm25") == "GQ"
    wq = "urn:ngsi-ld:WaterQualityObserved:wq1"
    assert (value(wq, "pH"), value(wq, "conductivity"), value(wq, "turbidity"),
            value(wq, "temperature")) == (7.35, 0.0512, 0.35, 12.5)
    assert value(wq, "measurand") == ["freeChlorine, 0.45, M1, free chlorine"]
    water = "urn:ngsi-ld:WaterConsumptionObserved:w1"
    assert value(water, "waterConsumption") == 12345 and unit(water, "waterConsumption") == "LTR"
    assert {a: value(water, a) for a in ("alarmFlowPersistence", "alarmWaterQuality",
                                          "alarmTamper", "acquisitionStageFailure",
                                          "alarmInProgress")} == {
        "alarmFlowPersistence": "In progress persistence", "alarmWaterQuality": 1,
        "alarmTamper": 1, "acquisitionStageFailure": 1, "alarmInProgress": 1}
    gas = "urn:ngsi-ld:SmartMeteringObservation:g1:gas"
    assert (value(gas, "meterType"), value(gas, "totalConsumption"), unit(gas, "totalConsumption")
            ) == ("Gas", 45.678, "MTQ")
    heat = "urn:ngsi-ld:SmartMeteringObservation:h1:heat"
    assert (value(heat, "meterType"), value(heat, "totalConsumption"),
            unit(heat, "totalConsumption")) == ("Heat", 34.293333, "KWH")
    # carbon monoxide: wire 35, scale -6 -> 3.5e-05 (the ratio "/") -> 35 ppm; the detector's
    # temperature (wire 2350, -2) is the air's
    gas = "urn:ngsi-ld:AirQualityObserved:gas1"
    assert (value(gas, "co"), unit(gas, "co")) == (35, "59")
    assert (value(gas, "temperature"), unit(gas, "temperature")) == (23.5, "CEL")
    # noise: wire 587 and 701, scale -2 -> 5.87 and 7.01 Bspl -> 58.7 and 70.1 dB(A); the
    # interval from the sensor's previous reading (T0) to this one (T0 + 300 s)
    noise = "urn:ngsi-ld:NoiseLevelObserved:n1"
    assert (value(noise, "LAeq"), value(noise, "LAmax"), unit(noise, "LAeq"),
            unit(noise, "LAmax")) == (58.7, 70.1, "2N", "2N")
    assert (value(noise, "dateObservedFrom")["@value"], value(noise, "dateObservedTo")["@value"]
            ) == ("2025-11-21T08:00:00Z", "2025-11-21T08:05:00Z")
    assert ents[noise]["LAeq"]["observedAt"] == "2025-11-21T08:05:00Z"
    # water level: wire 1234, scale -3 -> 1.234 m
    level = "urn:ngsi-ld:WaterObserved:lvl1"
    assert (value(level, "waterLevel"), unit(level, "waterLevel")) == (1.234, "MTR")
    assert value(level, "dateObserved")["@value"] == "2025-11-21T08:00:00Z"
    # rainfall since the previous reading: wire 2400, scale -6 -> 0.0024 m -> 2.4 mm (L/m2)
    rain = "urn:ngsi-ld:WeatherObserved:rain1"
    assert (value(rain, "precipitation"), unit(rain, "precipitation")) == (2.4, "MMT")
    # what no model has an attribute for is the node's DeviceMeasurement, in the SenML unit
    dm = "urn:ngsi-ld:DeviceMeasurement:"
    assert {eid[len(dm):] for eid in ents if eid.startswith(dm)} == {
        "w1:water_flow", "w1:night_flow", "w1:water_pressure", "w1:battery_voltage",
        "g1:alarms", "h1:water_volume", "h1:water_flow", "h1:temperature", "h1:temperature:1",
        "h1:alarms", "gas1:methane", "gas1:alarms", "gas1:relay", "lvl1:temperature",
        "lvl1:alarms", "rain1:rain_total", "rain1:rain_intensity",
        # the sound level meter's first reading: no earlier one, so no interval start
        "n1:noise_laeq", "n1:noise_lamax"}
    # methane: wire 125, scale -1 -> 12.5 % (of the lower explosive limit), P1
    methane = dm + "gas1:methane"
    assert (value(methane, "numValue"), unit(methane, "numValue"),
            value(methane, "controlledProperty")) == (12.5, "P1", "airPollution")
    assert "lower explosive limit" in value(methane, "description")
    # the first noise reading in dB (2N): wire 653 -> 6.53 Bspl -> 65.3 dB
    assert (value(dm + "n1:noise_laeq", "numValue"), unit(dm + "n1:noise_laeq", "numValue"),
            value(dm + "n1:noise_lamax", "numValue")) == (65.3, "2N", 81.2)
    # rain total: wire 1234567, scale -6 -> 1.234567 m; intensity: wire 2667 -> 2.667e-06 m/s
    assert (value(dm + "rain1:rain_total", "numValue"), unit(dm + "rain1:rain_total", "numValue"),
            value(dm + "rain1:rain_total", "controlledProperty")) == (1.234567, "MTR",
                                                                        "precipitation")
    assert (value(dm + "rain1:rain_intensity", "numValue"),
            unit(dm + "rain1:rain_intensity", "numValue")) == (2.667e-06, "MTS")
    # the water's temperature is not the weather's; the relay and alarm bits have no unit
    assert value(dm + "lvl1:temperature", "numValue") == 11.5
    assert (value(dm + "gas1:relay", "numValue"), unit(dm + "gas1:relay", "numValue")
            ) == (1, None)
    assert (value(dm + "gas1:alarms", "numValue"), value(dm + "lvl1:alarms", "numValue")
            ) == (16, 32)
    battery = dm + "w1:battery_voltage"
    assert (value(battery, "numValue"), unit(battery, "numValue"), value(battery, "unit"),
            value(battery, "controlledProperty")) == (3.712, "VLT", "VLT", "batterySupply")
    assert value(dm + "h1:temperature:1", "numValue") == 42.25
    assert value(dm + "w1:night_flow", "numValue") == 1.5e-08
    device = "urn:ngsi-ld:Device:w1"
    assert value(device, "rssi") == -67 and unit(device, "rssi") == "DBM"
    assert value(device, "controlledProperty") == ["batterySupply", "pressure",
                                                   "waterConsumption", "waterFlow"]
    assert value(device, "dateLastValueReported")["@value"] == "2025-11-21T08:00:00Z"
    assert [value(f"urn:ngsi-ld:Device:{n}", "controlledProperty") for n in (
        "gas1", "n1", "lvl1", "rain1")] == [["airPollution", "temperature"], ["noiseLevel"],
                                           ["temperature", "waterLevel"], ["precipitation"]]
    # every link points at the node's Device, which the same upsert carries for readings
    for e in sent:
        node = e["id"].split(":")[3]
        links = [a.get("object") for a in (e.get("refDevice"), e.get("alertSource")) if a]
        links += [a["observedBy"]["object"] for a in e.values()
                  if isinstance(a, dict) and "observedBy" in a]
        assert e["type"] == "Device" or links, e["id"]
        assert set(links) <= {f"urn:ngsi-ld:Device:{node}"}, e["id"]
        if e["type"] not in ("Device", "Alert"):
            assert f"urn:ngsi-ld:Device:{node}" in ents
    # a water meter's battery and alarm bits are not the weather's
    assert not [a for e in sent if e["type"] == "WeatherObserved" for a in e
                if "battery" in a.lower() or "alarm" in a.lower() or a == "rssi"]


def test_alarms_are_alerts_of_the_models_categories_naming_the_meterlink_alarm(tmp_path):
    ents = {e["id"]: e for e in sink(tmp_path).entities(batch(tmp_path, readings=[]))}
    assert [p for e in ents.values() for p in problems(e)] == []

    def alert(node, alarm):
        e = ents[f"urn:ngsi-ld:Alert:{node}:{alarm}"]
        return (e["category"]["value"], e.get("subCategory", {}).get("value"),
                e["severity"]["value"])

    assert alert("w1", "leak") == ("environment", None, "high")
    assert alert("w1", "backflow") == ("environment", "waterPollution", "informational")
    assert alert("w1", "tamper") == ("security", "suspiciousAction", "high")
    assert alert("w1", "gas") == ("environment", "airPollution", "critical")
    assert alert("w1", "flood") == ("naturalDisaster", "flood", "high")
    assert alert("lvl1", "flood:1") == ("naturalDisaster", "flood", "high")
    assert alert("w1", "offline") == ("security", None, "medium")
    assert alert("-gateway", "sink_auth:ngsi-ld") == ("security", None, "high")
    leak = ents["urn:ngsi-ld:Alert:w1:leak"]
    assert leak["name"]["value"] == "leak"
    assert leak["description"]["value"] == "meterlink alarm leak raised on w1: leak detail"
    assert leak["data"]["value"] == {"alarm": "leak", "active": True, "detail": "leak detail"}
    assert leak["dateIssued"]["value"]["@value"] == "2025-11-21T08:01:01Z"
    assert leak["alertSource"] == {"type": "Relationship", "object": "urn:ngsi-ld:Device:w1"}
    assert ents["urn:ngsi-ld:Alert:w1:backflow"]["data"]["value"]["active"] is False
    assert "location" not in leak, "no location configured, none invented"


def test_without_a_location_the_models_that_require_one_become_device_measurements(
        tmp_path, caplog):
    caplog.set_level(logging.WARNING, "meterlink.gateway.sink.ngsild")
    s = sink(tmp_path, locations={"w1": BRUSSELS})
    sent = s.entities(batch(tmp_path))
    assert [p for e in sent for p in problems(e)] == []
    types = {e["type"] for e in sent}
    assert not types & {"WeatherObserved", "AirQualityObserved", "WaterQualityObserved",
                        "NoiseLevelObserved", "WaterObserved"}
    ents = {e["id"]: e for e in sent}
    assert ents["urn:ngsi-ld:DeviceMeasurement:env1:humidity"]["numValue"] == {
        "type": "Property", "value": 45.67, "observedAt": "2025-11-21T08:00:00Z",
        "unitCode": "P1"}
    # in the unit of their code: the ratio as ppm (59), Bspl as decibel (2N); metres as they are
    dm = "urn:ngsi-ld:DeviceMeasurement:"
    assert [(ents[dm + eid]["numValue"]["value"], ents[dm + eid]["numValue"]["unitCode"])
            for eid in ("gas1:carbon_monoxide", "n1:noise_laeq", "n1:noise_lamax",
                        "lvl1:water_level", "rain1:rainfall")] == [
        (35, "59"), (58.7, "2N"), (70.1, "2N"), (1.234, "MTR"), (0.0024, "MTR")]
    assert "urn:ngsi-ld:DeviceMeasurement:wq1:free_chlorine" in ents
    assert all("location" not in e for e in sent if not e["id"].split(":")[3] == "w1")
    water = ents["urn:ngsi-ld:WaterConsumptionObserved:w1"]
    assert water["location"]["value"]["coordinates"] == BRUSSELS
    def warnings():
        return sum(r.getMessage() == "ngsi_ld_no_location" for r in caplog.records)

    assert warnings() == 7, "once per node: env1, air1, wq1, gas1, n1, lvl1, rain1"
    s.entities(batch(tmp_path))
    assert warnings() == 7


def test_a_noise_level_covers_the_interval_since_the_sensors_previous_reading(tmp_path, caplog):
    caplog.set_level(logging.INFO, "meterlink.gateway.sink.ngsild")
    # three readings 15 min apart, the newest first (the order does not matter in a batch)
    readings = [("n1", [wire("n1", "noise_laeq", 640 + i, T0 + 900 * i),
                        wire("n1", "noise_lamax", 700 + i, T0 + 900 * i)]) for i in (2, 0, 1)]
    readings.append(("n1", [wire("n1", "noise_laeq", 500, T0 + 900, inst=1)]))  # another meter
    rec_ = Recorder()
    try:
        rec_.reply = (201, b"", {})
        s = sink(tmp_path, rec_.url, locations={"*": BRUSSELS})
        first = s.entities(batch(tmp_path, readings, []))
        assert s.entities(batch(tmp_path / "retry", readings, [])) == first, "converted alike"
        assert [p for e in first for p in problems(e)] == []
        ents = {e["id"]: e for e in first}
        noise = ents["urn:ngsi-ld:NoiseLevelObserved:n1"]
        # wire 642 and 702 -> 6.42 and 7.02 Bspl -> 64.2 and 70.2 dB(A), 08:15 to 08:30
        assert (noise["dateObservedFrom"]["value"]["@value"],
                noise["dateObservedTo"]["value"]["@value"], noise["LAeq"]["value"],
                noise["LAmax"]["value"]) == ("2025-11-21T08:15:00Z", "2025-11-21T08:30:00Z",
                                             64.2, 70.2)
        # a sensor's first reading since the start has no known start: DeviceMeasurements
        dm = "urn:ngsi-ld:DeviceMeasurement:"
        assert ents[dm + "n1:noise_lamax"]["numValue"]["value"] == 70, "the reading at T0"
        assert ents[dm + "n1:noise_laeq:1"]["numValue"]["value"] == 50
        assert "urn:ngsi-ld:NoiseLevelObserved:n1:1" not in ents
        assert [r.getMessage() for r in caplog.records] == ["ngsi_ld_no_period"]

        s.deliver(batch(tmp_path / "sent", readings, []))
        # delivered: the next reading's interval starts at the newest one sent; a late one
        # (a gap filled, older than a reading sent) has no known start
        later = [("n1", [wire("n1", "noise_laeq", 610, T0 + 2700)]),
                 ("n1", [wire("n1", "noise_laeq", 620, T0 + 1200)]),
                 ("n1", [wire("n1", "noise_laeq", 520, T0 + 2700, inst=1)])]
        ents = {e["id"]: e for e in s.entities(batch(tmp_path / "later", later, []))}
    finally:
        rec_.close()
    noise = ents["urn:ngsi-ld:NoiseLevelObserved:n1"]
    assert (noise["dateObservedFrom"]["value"]["@value"],
            noise["dateObservedTo"]["value"]["@value"], noise["LAeq"]["value"]) == (
        "2025-11-21T08:30:00Z", "2025-11-21T08:45:00Z", 61)
    assert ents["urn:ngsi-ld:DeviceMeasurement:n1:noise_laeq"]["numValue"] == {
        "type": "Property", "value": 62, "observedAt": "2025-11-21T08:20:00Z", "unitCode": "2N"}
    meter2 = ents["urn:ngsi-ld:NoiseLevelObserved:n1:1"]
    assert (meter2["dateObservedFrom"]["value"]["@value"], meter2["LAeq"]["value"]) == (
        "2025-11-21T08:15:00Z", 52)


def test_a_value_below_the_models_minimum_is_a_device_measurement(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "meterlink.gateway.sink.ngsild")
    s = sink(tmp_path, locations={"*": BRUSSELS})
    readings = [("lvl1", [wire("lvl1", "water_level", -15)]),  # 15 mm below the datum
                ("lvl1", [wire("lvl1", "water_level", -12, T0 + 60)])]
    ents = {e["id"]: e for e in s.entities(batch(tmp_path, readings, []))}
    assert [p for e in ents.values() for p in problems(e)] == []
    assert "urn:ngsi-ld:WaterObserved:lvl1" not in ents
    assert ents["urn:ngsi-ld:DeviceMeasurement:lvl1:water_level"]["numValue"] == {
        "type": "Property", "value": -0.012, "observedAt": "2025-11-21T08:01:00Z",
        "unitCode": "MTR"}
    assert [r.getMessage() for r in caplog.records] == ["ngsi_ld_below_minimum"]
    ents = {e["id"]: e for e in s.entities(batch(tmp_path / "b", [
        ("lvl1", [wire("lvl1", "water_level", 0, T0 + 120)])], []))}
    assert ents["urn:ngsi-ld:WaterObserved:lvl1"]["waterLevel"]["value"] == 0


def test_an_upsert_carries_the_latest_value_of_each_attribute(tmp_path):
    readings = [
        ("env1", [rec("env1", "temperature", 22.0, T0 + 60), rec("env1", "humidity", 40, T0 + 60)]),
        ("env1", [rec("env1", "temperature", 21.0, T0), rec("env1", "humidity", 41, T0)]),
        ("env1", [rec("env1", "temperature", 20.0, T0 + 30)]),
        ("w1", [rec("w1", "rssi", -70, T0 + 5)]),
        ("w1", [rec("w1", "water_volume", 1.5, T0)]),
        ("w1", [rec("w1", "rssi", -71, T0)]),
    ]
    s = sink(tmp_path, locations={"*": BRUSSELS})
    ents = {e["id"]: e for e in s.entities(batch(tmp_path, readings, []))}
    weather = ents["urn:ngsi-ld:WeatherObserved:env1"]
    assert weather["temperature"]["value"] == 22.0 and weather["relativeHumidity"]["value"] == 0.4
    assert weather["dateObserved"]["value"]["@value"] == "2025-11-21T08:01:00Z"
    device = ents["urn:ngsi-ld:Device:w1"]
    assert device["rssi"]["value"] == -70
    assert device["controlledProperty"]["value"] == ["waterConsumption"]
    assert ents["urn:ngsi-ld:Device:env1"]["controlledProperty"]["value"] == [
        "humidity", "temperature"]
    # a node's Device keeps listing what it measured in earlier batches (one sensor a record)
    later = s.entities(batch(tmp_path / "b", [("w1", [rec("w1", "battery_voltage", 3.6)])], []))
    assert {e["id"]: e for e in later}["urn:ngsi-ld:Device:w1"]["controlledProperty"][
        "value"] == ["batterySupply", "waterConsumption"]


def test_the_context_option_replaces_the_models_contexts(tmp_path):
    merged = "https://context.example/city-context.jsonld"
    sent = sink(tmp_path, context=merged).entities(batch(tmp_path))
    assert {e["@context"] for e in sent} == {merged}


def test_a_record_in_an_unexpected_unit_or_not_a_number_is_unconvertible(tmp_path):
    readings = [("env1", [dict(rec("env1", "pressure", 1013.25), u="hPa")]),
                ("env1", [rec("env1", "temperature", 20.5)]),
                ("w1", [rec("w1", "alarms", True)])]
    with pytest.raises(Unconvertible) as info:
        sink(tmp_path, locations={"*": BRUSSELS}).entities(batch(tmp_path, readings, []))
    [(first, why), (third, why_not)] = info.value.items
    assert (first.seq, third.seq) == (1, 3)
    assert "env1:pressure: unit 'hPa', WeatherObserved.atmosphericPressure takes 'Pa'" in why
    assert "w1:alarms: value True is not a number" in why_not


@pytest.mark.parametrize("locations,error", [
    ({"w1": [50.85, 4.35, 12]}, "sinks.ngsi-ld.locations.w1 must be [longitude, latitude]"),
    ({"w1": [200, 50]}, "sinks.ngsi-ld.locations.w1 must be [longitude -180..180"),
    ({"w1": "4.35,50.85"}, "sinks.ngsi-ld.locations.w1 must be [longitude, latitude]"),
    ([4.35, 50.85], "sinks.ngsi-ld.locations must be a table"),
])
def test_a_bad_location_is_a_config_error_naming_the_key(tmp_path, locations, error):
    with pytest.raises(ConfigError, match=re.escape(error)):
        sink(tmp_path, locations=locations)
