"""Gateway counters, and the stats file they are published to.

`Stats` is shared by the MQTT thread (which counts) and the writer thread (which publishes);
every access holds one lock. `StatsWriter` replaces the stats file atomically
(`write_json_atomic`: a temporary file in the same folder, then `os.replace`), about once a
second while the gateway runs and once more at exit, so a reader never sees a half-written
file.

Keys of the stats file (JSON object):

    received            messages delivered on the reading subscription
    accepted_messages   messages that decoded (received == accepted_messages + rejected)
    accepted_records    reading records stored (new (node, seq))
    duplicates          reading records dropped because their (node, seq) was already stored
    senml_records       SenML lines written to the sink
    rejected            messages rejected (malformed topic or payload, or an internal error)
    rejected_by_reason  {reason: count}; reasons are gateway.wire.REASONS, "topic", "internal",
                        "too_large" (payload over [ingest] max_payload_bytes), "topic_length",
                        "unregistered", "retired", "status", "ack", "outbox_full",
                        "seen_invalid" (another instance's summary, gateway/seen.py)
    status_messages     status (`s`) messages processed
    ack_messages        acknowledgements (`a`) processed
    retired_ignored     status and acknowledgements of retired nodes, not processed
    events              alarm events raised or cleared
    rules_reloads       times the [rules] were read again and put in force (SIGHUP, API)
    jetstream_redelivered  readings JetStream delivered again (not acknowledged in time by an
                        instance: this one or another; dedup keeps one) ([jetstream] only)
    rules_reload_errors times reading them again failed (the rules in force stayed)
    replay_requests     `replay` commands sent for the readings of a gap (gateway/replay.py)
    seen_summaries      other instances' summaries of the seqs they took (gateway/seen.py)
    seen_late           batches acknowledged before their summary went out (no stream
                        leader for 5 s; it goes out later)
    gaps_missing        {node: missing seq count} (only nodes with gaps)
    outbox_bytes        bytes of data in the outbox (pages in use: what max_bytes bounds)
    sink_batches, sink_items, sink_records   {sink: count} delivered
    sink_errors         {"sink:transient|rejected|internal": count}
    sink_deadletters    {sink: batches dead-lettered}
    sink_backlog        {sink: items waiting}
    sink_backlog_age_seconds   {sink: age of the oldest waiting item}
    sink_latency_seconds       {sink: {"count", "sum", "max"}} of confirmed deliveries
    api_port            the port the HTTP API listens on (null when off)
    connects            successful connections to the broker
    connected           connected to the broker now
    subscribed          the reading subscription is granted on the current connection
    running             false in the final file written at exit
    pid, started_at, updated_at (Unix seconds), channel_table_version
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from gateway.logfmt import kv
from meterlink_common import write_json_atomic  # also imported from here by gateway.ota

log = logging.getLogger("meterlink.gateway.stats")

COUNTERS = ("received", "accepted_messages", "accepted_records", "duplicates", "senml_records",
            "rejected", "connects", "status_messages", "ack_messages", "events",
            "retired_ignored", "rules_reloads", "rules_reload_errors", "jetstream_redelivered",
            "replay_requests", "seen_summaries", "seen_late")
DEFAULT_INTERVAL = 1.0


class Stats:
    """Counters and connection state of one gateway process (thread-safe)."""

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 extra: dict[str, Any] | None = None) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._generation = 0
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._by_reason: dict[str, int] = {}
        self._state: dict[str, Any] = {"connected": False, "subscribed": False, "running": True}
        self._labeled: dict[str, dict[str, Any]] = {}
        self._extra = dict(extra or {})
        self.started_at = clock()

    def __repr__(self) -> str:
        return f"Stats({self.snapshot()!r})"

    def _bump(self) -> None:
        self._generation += 1
        self._changed.notify_all()

    def add(self, **increments: int) -> None:
        """Adds to counters: `stats.add(received=1)`."""
        with self._lock:
            for name, n in increments.items():
                self._counts[name] += n
            self._bump()

    def reject(self, reason: str) -> None:
        """Counts one rejected message under `reason`."""
        with self._lock:
            self._counts["rejected"] += 1
            self._by_reason[reason] = self._by_reason.get(reason, 0) + 1
            self._bump()

    def labeled(self, name: str, label: str, n: int = 1) -> None:
        """Adds to a counter with a label: `stats.labeled("sink_batches", "http", 1)`."""
        with self._lock:
            group = self._labeled.setdefault(name, {})
            group[label] = group.get(label, 0) + n
            self._bump()

    def gauge(self, name: str, label: str, value: Any) -> None:
        """Sets a labelled value; no wake-up (gauges are polled)."""
        with self._lock:
            self._labeled.setdefault(name, {})[label] = value

    def set_group(self, name: str, values: dict[str, Any]) -> None:
        """Replaces a whole labelled group: `stats.set_group("gaps_missing", {...})`."""
        with self._lock:
            self._labeled[name] = dict(values)

    def observe(self, name: str, label: str, seconds: float) -> None:
        """Records one duration (count, sum, max)."""
        with self._lock:
            cell = self._labeled.setdefault(name, {}).setdefault(
                label, {"count": 0, "sum": 0.0, "max": 0.0})
            cell["count"] += 1
            cell["sum"] += seconds
            cell["max"] = max(cell["max"], seconds)
            self._bump()

    def set_state(self, **state: Any) -> None:
        """Sets state flags: `stats.set_state(connected=True)`."""
        with self._lock:
            self._state.update(state)
            self._bump()

    def snapshot(self) -> dict[str, Any]:
        """All counters and state as one JSON-ready dict."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        labeled = {k: (dict(v) if not isinstance(next(iter(v.values()), 0), dict)
                       else {a: dict(b) for a, b in v.items()}) for k, v in self._labeled.items()}
        return {**self._counts, "rejected_by_reason": dict(sorted(self._by_reason.items())),
                **labeled,
                **self._state, "pid": os.getpid(), "started_at": round(self.started_at, 3),
                "updated_at": round(self._clock(), 3), **self._extra}

    def wait_change(self, generation: int, timeout: float) -> int:
        """Waits until the counters move past `generation` or `timeout`; the new generation."""
        with self._lock:
            self._changed.wait_for(lambda: self._generation != generation, timeout)
            return self._generation


class StatsWriter:
    """Publishes `stats` to `path`: on change, at most once per `interval`, at least once
    per `interval` while running, and a final time on `stop()`."""

    def __init__(self, stats: Stats, path: Path, *, interval: float = DEFAULT_INTERVAL) -> None:
        self.stats = stats
        self.path = Path(path)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def __repr__(self) -> str:
        return f"StatsWriter({str(self.path)!r}, interval={self.interval})"

    def start(self) -> None:
        self.write()
        self._thread = threading.Thread(target=self._run, name="stats-writer", daemon=True)
        self._thread.start()

    def write(self) -> None:
        """Writes the stats file now; a failure is logged once per failing streak, never raised."""
        try:
            write_json_atomic(self.path, self.stats.snapshot())
        except OSError as exc:
            if not self._failing:
                log.error("stats_write_failed", extra=kv(path=str(self.path), error=str(exc)))
            self._failing = True
        else:
            self._failing = False

    def _run(self) -> None:
        generation = -1
        while not self._stop.is_set():
            generation = self.stats.wait_change(generation, self.interval)
            if self._stop.is_set():
                break
            self.write()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stops the thread and writes the final file."""
        self._stop.set()
        if self._thread is not None:
            self.stats.add()  # wakes the thread if it waits for a change
            self._thread.join(timeout=5)
            self._thread = None
        self.write()
