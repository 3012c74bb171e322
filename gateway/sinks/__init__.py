"""Sink plugins: where batches from the outbox go. One module per sink, one registry.

    sink = make_sink(config_of_one_sink)     # SINKS[name](config)
    sink.open(); sink.deliver(batch); sink.close()

The seam is narrow on purpose: `deliver(batch)` returns when the upstream confirmed the whole
batch, raises `DeliveryFailed` for a transient failure (the batch is retried later with the same
items and the same idempotency key) and `DeliveryRejected` for a permanent one (the batch goes
to the dead-letter table). Everything else (batching, retry timing, bookkeeping) is the
batcher's job (`gateway.batcher`), so a sink is only the protocol.

Each sink's keys are in `gateway.config.SINK_SCHEMAS` and documented in `gateway/sample.toml`.
Keeping them there rather than in a folder per sink means one loader checks every key of the
file with the same error messages, and one test checks the sample against all of them.

Items become SenML records (RFC 8428) the same way for every sink (`senml_records`): a reading
record gives one SenML record per channel value plus the meterlink fields `node`, `seq` and
`rid`; an alarm event gives one record `{"n": "node:alarm:leak", "vb": true, ...}` with `node`,
`event` and `rid`. `rid` is the stable record id: `{node}/{seq}/{channel}` for readings,
`{node}/alarm/{alarm}/{time in ms}/{raised|cleared}` for alarm events.
"""

from __future__ import annotations

from typing import Any, Callable

from gateway.config import SinkConfig
from gateway.outbox import Batch, Item


class Sink:
    """Base class: `open`, `deliver`, `close`. Subclasses set `name`."""

    name = ""

    def __init__(self, config: SinkConfig) -> None:
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def open(self) -> None:
        """Prepares the sink (files, connections); SinkError when it cannot."""

    def deliver(self, batch: Batch) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Releases what `open` took."""


def record_id(node: str, seq: int, name: str) -> str:
    channel = name.split(":", 1)[1] if ":" in name else name
    return f"{node}/{seq}/{channel}"


def event_id(body: dict[str, Any]) -> str:
    state = "raised" if body["active"] else "cleared"
    return f"{body['node']}/alarm/{body['alarm']}/{int(round(body['t'] * 1000))}/{state}"


def senml_records(item: Item) -> list[dict[str, Any]]:
    """The SenML records of one outbox item, with the meterlink fields."""
    if item.kind == "reading":
        return [{**r, "node": item.node, "seq": item.seq,
                 "rid": record_id(item.node, item.seq, r["n"])} for r in item.body]
    body = item.body
    rec: dict[str, Any] = {"n": f"{body['node']}:alarm:{body['alarm']}", "vb": body["active"],
                           "t": body["t"], "node": body["node"], "event": "alarm",
                           "rid": event_id(body)}
    if body.get("detail"):
        rec["vs"] = body["detail"]
    return rec and [rec]


def batch_records(batch: Batch, *, events: bool = True) -> list[dict[str, Any]]:
    return [r for it in batch.items if events or it.kind == "reading"
            for r in senml_records(it)]


def _registry() -> dict[str, Callable[[SinkConfig], Sink]]:
    from gateway.sinks.file import FileSink
    from gateway.sinks.http import HttpSink
    from gateway.sinks.mqtt import MqttSink
    from gateway.sinks.ngsild import NgsiLdSink
    return {"file": FileSink, "http": HttpSink, "ngsi-ld": NgsiLdSink, "mqtt": MqttSink}


def make_sink(config: SinkConfig) -> Sink:
    return _registry()[config.name](config)
