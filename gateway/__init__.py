"""The meterlink gateway: MQTT reading messages in, validated and deduplicated, SenML out.

Modules, one job each:

    channels   the channel table (gateway/channels.json) and its Markdown rendering
    wire       wire format v1: decode_reading, resolve (SenML), parse_topic
    config     the TOML config file (gateway/sample.toml documents every key)
    outbox     the SQLite store: outbox, dedup, gaps, quarantine, dead letters, transactions
    store/     the outbox's table classes: nodes and node_log, alarms and alarm_log, downlinks
               (outbox and store/ are the only code that runs SQL on the outbox's database)
    ingest     messages -> validated, deduplicated, committed (one transaction per batch)
    registry   nodes, status, alarms (raised once, cleared once, forwarded as events)
    batcher    one thread per sink: outbox -> batch -> sink -> confirm, retries, dead letters
    sinks/     sink plugins: file (JSONL), http (SenML), ngsi-ld, mqtt (bridge), history;
               what they share in sinks/base
    downlink   config updates and commands to nodes, acknowledgements
    api        what the local HTTP API does; webapp its routes (FastAPI) and server (uvicorn);
               dashboard/ the operator pages; metrics renders /metrics (Prometheus)
    stats      counters and the stats file
    daemon     Gateway: the threads and the MQTT client tying it together (imports paho)
    cli        the `meterlink gateway` and `meterlink gateway send` commands
    errors     every error, with the hierarchy drawn in its docstring
    logfmt     key=value log lines

The names below are the stable API; `Gateway` is imported from `gateway.daemon` so that the
decoder can be used without loading the MQTT client.
"""

from gateway.channels import Channel, ChannelTable, default_table
from gateway.config import Config, load_config
from gateway.errors import (ConfigError, MeterlinkError, RejectedInput, SinkError, TopicError,
                            WireError)
from gateway.wire import Reading, Record, Resolver, decode_reading, parse_topic, resolve

__all__ = [
    "Channel", "ChannelTable", "Config", "ConfigError", "MeterlinkError", "Reading", "Record",
    "RejectedInput", "Resolver", "SinkError", "TopicError", "WireError", "decode_reading",
    "default_table",
    "load_config", "parse_topic", "resolve",
]
