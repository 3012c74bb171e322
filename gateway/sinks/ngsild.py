"""The `ngsi-ld` sink: FIWARE NGSI-LD batch upsert of Smart-Data-Models-style entities.

    POST {url}/ngsi-ld/v1/entityOperations/upsert?options=update
    Content-Type: application/ld+json        (each entity carries "@context")
    NGSILD-Tenant: {tenant}                   (with tenant)

One entity per node and kind of station, id `urn:ngsi-ld:{Type}:{node_id}`:

| channels in the reading | entity type |
|---|---|
| `water_volume`, `water_flow`, `water_pressure`, `ph`, `conductivity`, `free_chlorine`, `night_flow`, `turbidity` | `WaterMeter` |
| `gas_volume` | `GasMeter` |
| `heat_energy` | `HeatMeter` |
| `pm1`, `pm2_5`, `pm10` | `AirQualityObserved` |
| anything else (temperature, humidity, pressure, battery, rssi, alarms) | `WeatherObserved` (the environment station) |

Each channel is a Property named in camelCase after the channel (`waterVolume`, `pm2_5` ->
`pm25`, `temperature`, `relativeHumidity`, `atmosphericPressure`) with `value` in the SenML
unit, `unitCode` (UN/CEFACT common code) and `observedAt`. A batch holding several readings
of one entity upserts the latest value of each attribute (the upsert keeps no history; a
temporal store takes the `http` SenML feed). Alarm events upsert an `Alert` entity
`urn:ngsi-ld:Alert:{node}:{alarm}` with `alertSource` pointing at the node's `Device`.

Upsert is idempotent, so a retried batch does no harm; the batch key is also sent as
`Idempotency-Key`. A 207 (some entities failed) is treated as a permanent reject of the batch:
the reply body, which names the failing entities, lands in dead letters.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from gateway.errors import DeliveryRejected
from gateway.outbox import Batch, Item
from gateway.sinks import Sink, convert_each
from gateway.sinks.http import HttpPoster

UPSERT_PATH = "/ngsi-ld/v1/entityOperations/upsert?options=update"

WATER = {"water_volume", "water_flow", "water_pressure", "ph", "conductivity", "free_chlorine",
         "night_flow", "turbidity"}
GAS = {"gas_volume"}
HEAT = {"heat_energy"}
AIR = {"pm1", "pm2_5", "pm10"}

ATTRIBUTE = {"humidity": "relativeHumidity", "pressure": "atmosphericPressure",
             "pm2_5": "pm25", "battery_voltage": "batteryVoltage", "rssi": "rssi"}
UNIT_CODE = {"Cel": "CEL", "%RH": "P1", "Pa": "PAL", "m3": "MTQ", "m3/s": "MQS", "V": "VLT",
             "kg/m3": "KMQ", "S/m": "D10", "J": "JOU"}


def entity_type(channel: str) -> str:
    if channel in WATER:
        return "WaterMeter"
    if channel in GAS:
        return "GasMeter"
    if channel in HEAT:
        return "HeatMeter"
    if channel in AIR:
        return "AirQualityObserved"
    return "WeatherObserved"


def attribute_name(channel: str) -> str:
    if channel in ATTRIBUTE:
        return ATTRIBUTE[channel]
    head, *rest = channel.split("_")
    return head + "".join(p.capitalize() for p in rest)


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def item_entities(item: Item, context: str) -> list[dict[str, Any]]:
    """The entities one outbox item updates (raises on a value it cannot convert)."""
    if item.kind != "reading":
        b = item.body
        eid = f"urn:ngsi-ld:Alert:{b['node']}:{b['alarm']}"
        return [{"id": eid, "type": "Alert", "@context": context,
                 "category": {"type": "Property", "value": "meter"},
                 "subCategory": {"type": "Property", "value": b["alarm"]},
                 "active": {"type": "Property", "value": b["active"],
                            "observedAt": iso(b["t"])},
                 "description": {"type": "Property", "value": b.get("detail") or ""},
                 "dateIssued": {"type": "Property", "value": iso(b["t"])},
                 "alertSource": {"type": "Relationship",
                                 "object": f"urn:ngsi-ld:Device:{b['node']}"}}]
    out: dict[str, dict[str, Any]] = {}
    for rec in item.body:
        _, channel, *inst = rec["n"].split(":")
        value = rec["v"]
        if type(value) is float and not math.isfinite(value):
            raise ValueError(f"{rec['n']}: value {value} is not a JSON number")
        etype = entity_type(channel)
        eid = f"urn:ngsi-ld:{etype}:{item.node}"
        ent = out.setdefault(eid, {"id": eid, "type": etype, "@context": context,
                                   "refDevice": {"type": "Relationship", "object":
                                                 f"urn:ngsi-ld:Device:{item.node}"}})
        name = attribute_name(channel) + (f"_{inst[0]}" if inst else "")
        prop: dict[str, Any] = {"type": "Property", "value": value, "observedAt": iso(rec["t"])}
        if rec.get("u") in UNIT_CODE:
            prop["unitCode"] = UNIT_CODE[rec["u"]]
        ent[name] = prop
    return list(out.values())


def merge(out: dict[str, dict[str, Any]], ent: dict[str, Any]) -> None:
    """Adds `ent` to the upsert body `out`: the latest value of each attribute stays."""
    old = out.get(ent["id"])
    if old is None or ent["type"] == "Alert":
        out[ent["id"]] = dict(ent)
        return
    for name, prop in ent.items():
        if isinstance(prop, dict) and "observedAt" in prop:
            prev = old.get(name)
            if prev is None or prev["observedAt"] <= prop["observedAt"]:
                old[name] = prop


def entities(batch: Batch, context: str) -> list[dict[str, Any]]:
    """The upsert body for a batch: one entity per (type, node), latest value per attribute.
    `Unconvertible` names the items that cannot be converted."""
    out: dict[str, dict[str, Any]] = {}
    for ents in convert_each(batch, lambda item: item_entities(item, context)):
        for ent in ents:
            merge(out, ent)
    return list(out.values())


class NgsiLdSink(Sink):
    """Batch upsert to an NGSI-LD context broker (Orion-LD, Scorpio, Stellio)."""

    name = "ngsi-ld"

    def __init__(self, config) -> None:
        super().__init__(config)
        o = config.options
        self.poster = HttpPoster.from_options(o)
        self.context = o["context"]
        self.tenant = o["tenant"]

    def credential_changed(self) -> bool:
        return self.poster.credential_changed()

    def deliver(self, batch: Batch) -> None:
        body = json.dumps(entities(batch, self.context), separators=(",", ":"),
                          allow_nan=False).encode()
        headers = {"Content-Type": "application/ld+json", "Idempotency-Key": batch.key}
        if self.tenant:
            headers["NGSILD-Tenant"] = self.tenant
        base = self.poster.base_path.rstrip("/")
        status, reply = self.poster.post(body, headers, path=base + UPSERT_PATH)
        if status == 207:
            raise DeliveryRejected(f"{self.poster.url}: HTTP 207: some entities failed",
                                   status=207, reply=reply)
