"""`/metrics`: the gateway's counters in the Prometheus text format, through prometheus_client.

Every gateway name starts with `meterlink_gateway_`; the list with meanings is in
docs/gateway.md (*Metrics*). Counters come from `gateway.stats.Stats`; outbox depth, backlog
age, gaps and alarms are read from the outbox at scrape time (a custom collector: the values
live in Stats and SQLite, not in prometheus_client objects updated on the hot path). The
client's process and Python collectors add `process_*` (CPU, memory, open files) and
`python_*` (GC) metrics.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, Metric,
                                    SummaryMetricFamily)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

P = "meterlink_gateway_"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Out:
    """Collects the metric families of one scrape."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def metric(self, name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, str], Any]]) -> None:
        labels = list(dict.fromkeys(k for lab, _ in samples for k in lab))
        if kind == "counter":
            family: Metric = CounterMetricFamily(P + name.removesuffix("_total"), help_text,
                                                 labels=labels)
        else:
            family = GaugeMetricFamily(P + name, help_text, labels=labels)
        for lab, value in samples:
            family.add_metric([str(lab[k]) for k in labels], float(value))
        self.families.append(family)


class GatewayCollector:
    """The gateway's metrics, read at scrape time."""

    def __init__(self, gateway, box, lock) -> None:
        self.gateway, self.box, self.lock = gateway, box, lock

    def collect(self) -> Iterator[Metric]:
        yield from _families(self.gateway, self.box, self.lock)


def make_registry(gateway, box, lock) -> CollectorRegistry:
    """The registry one API serves: the gateway's collector, process, platform and GC."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway, box, lock))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def _families(gateway, box, lock) -> list[Metric]:
    snap = gateway.stats.snapshot()
    out = _Out()
    counters = [
        ("received_total", "received", "messages received from the broker"),
        ("accepted_messages_total", "accepted_messages", "reading messages accepted"),
        ("accepted_records_total", "accepted_records", "reading records committed (new)"),
        ("duplicates_total", "duplicates", "reading records dropped as duplicates"),
        ("rejected_total", "rejected", "messages rejected and quarantined"),
        ("status_messages_total", "status_messages", "status messages processed"),
        ("retired_ignored_total", "retired_ignored",
         "status messages and acknowledgements of retired nodes, not processed"),
        ("ack_messages_total", "ack_messages", "acknowledgements processed"),
        ("events_total", "events", "alarm events raised or cleared"),
        ("connects_total", "connects", "connections to the broker"),
    ]
    for name, key, text in counters:
        out.metric(name, "counter", text, [({}, snap.get(key, 0))])
    out.metric("rejected_by_reason_total", "counter", "messages rejected, by reason",
               [({"reason": r}, n) for r, n in snap.get("rejected_by_reason", {}).items()])
    out.metric("connected", "gauge", "1 when connected to the broker",
               [({}, int(bool(snap.get("connected"))))])
    out.metric("ready", "gauge", "1 when ready (subscribed, outbox writable)",
               [({}, int(gateway.ready))])
    now = time.time()
    with lock:
        depth = box.item_count()
        backlog = box.backlogs()
        missing = box.missing()
        alarms = box.alarms.active_counts()
        quarantined = box.quarantine_count()
        dead = box.dead_letter_counts()
        nodes = box.nodes.state_counts()
        used = box.size_bytes()
    out.metric("outbox_items", "gauge", "items in the outbox not yet delivered to every sink",
               [({}, depth)])
    out.metric("outbox_bytes", "gauge", "bytes of data in the outbox (pages in use; what "
               "[outbox] max_bytes bounds)", [({}, used)])
    out.metric("outbox_file_bytes", "gauge", "disk taken by the outbox database and its WAL",
               [({}, box.file_bytes())])
    sinks = [s.name for s in gateway.config.sinks]
    by_sink = {s: (n, oldest) for s, n, oldest in backlog}
    out.metric("sink_backlog", "gauge", "records waiting for a sink",
               [({"sink": s}, by_sink.get(s, (0, None))[0]) for s in sinks])
    out.metric("sink_backlog_age_seconds", "gauge", "age of the oldest item waiting for a sink",
               [({"sink": s}, max(0.0, now - by_sink[s][1]) if s in by_sink else 0)
                for s in sinks])
    for name, key, text in (("sink_batches_total", "sink_batches", "batches delivered"),
                            ("sink_records_total", "sink_records", "records delivered"),
                            ("sink_deadletters_total", "sink_deadletters",
                             "batches dead-lettered")):
        group = snap.get(key, {})
        out.metric(name, "counter", text, [({"sink": s}, group.get(s, 0)) for s in sinks])
    errors = snap.get("sink_errors", {})
    out.metric("sink_errors_total", "counter", "failed deliveries by sink and kind",
               [({"sink": k.split(":")[0], "kind": k.split(":")[1]}, v)
                for k, v in errors.items()])
    lat = snap.get("sink_latency_seconds", {})
    summary = SummaryMetricFamily(P + "sink_latency_seconds", "time to deliver a batch",
                                  labels=["sink"])
    for s in sinks:
        cell = lat.get(s, {"count": 0, "sum": 0.0})
        summary.add_metric([s], count_value=cell["count"], sum_value=cell["sum"])
    out.families.append(summary)
    out.metric("deadletters", "gauge", "dead-letter rows by sink", [({"sink": s}, n)
                                                                     for s, n in dead])
    out.metric("quarantine", "gauge", "rows in the quarantine table", [({}, quarantined)])
    out.metric("gap_missing", "gauge", "missing sequence numbers by node",
               [({"node": n}, v) for n, v in missing.items()])
    out.metric("alarms_active", "gauge", "active alarms by kind",
               [({"alarm": a}, n) for a, n in alarms])
    out.metric("nodes", "gauge", "nodes in the registry by state",
               [({"state": st}, n) for st, n in nodes])
    return out.families
