"""Sink plugins: where batches from the outbox go. One module per sink, one registry.

    sink = make_sink(config_of_one_sink)     # SINKS[name](config)
    sink.open(); sink.deliver(batch); sink.close()

What a sink is and what every sink shares (the `Sink` base class, `convert_each`, SenML
records and packs) is in `gateway.sinks.base`; the names are re-exported here. The sink
modules import `base`, never this package, and this package imports them only to build
the registry (`make_sink`): so no sink module and its package import each other.

Each sink's keys are in `gateway.config.SINK_SCHEMAS` and documented in `gateway/sample.toml`.
Keeping them there rather than in a folder per sink means one loader checks every key of the
file with the same error messages, and one test checks the sample against all of them.
"""

from __future__ import annotations

from typing import Callable

from gateway.config import SinkConfig
from gateway.sinks.base import (CONVERSION_ERRORS, PRIMARY_UNIT, Sink, convert_each, event_id,
                                item_problem, pack_json, record_id, senml_pack, senml_records)

__all__ = ["CONVERSION_ERRORS", "PRIMARY_UNIT", "Sink", "convert_each", "event_id",
           "item_problem", "make_sink", "pack_json", "record_id", "senml_pack",
           "senml_records"]


def _registry() -> dict[str, Callable[[SinkConfig], Sink]]:
    from gateway.sinks.file import FileSink
    from gateway.sinks.history import HistorySink
    from gateway.sinks.http import HttpSink
    from gateway.sinks.mqtt import MqttSink
    from gateway.sinks.ngsild import NgsiLdSink
    return {"file": FileSink, "http": HttpSink, "ngsi-ld": NgsiLdSink, "mqtt": MqttSink,
            "history": HistorySink}


def make_sink(config: SinkConfig) -> Sink:
    return _registry()[config.name](config)
