"""Ingest: MQTT messages in, validated, deduplicated and committed to the outbox.

    ing = Ingestor(config, table, box, stats, sinks=["file", "http"])
    outcomes = ing.handle_batch([Message(topic, payload, mid=1, qos=1, received_at=now)])

`handle_batch` runs one outbox transaction for many messages (the ingest thread collects
them for up to `[ingest] batch_wait_ms`), with a savepoint per message so that a bug while
handling one message rolls back only that message, which is then quarantined as "internal".
It returns only after the commit; the caller acknowledges the messages to the broker then.
It raises only SinkError (the outbox cannot be written): nothing is acknowledged then.

Per message, by topic kind:

    r  size/topic limits -> retired? -> registration check -> decode_reading (once: the
       record shape of gateway/wire.py) -> time window -> per record: (node, seq) dedup and
       gap tracking -> the new records to the outbox, pending for every sink -> registry
       (last values, alarm bits, battery) -> alarm events
    s  status map -> registry (online/offline/asleep, fw, boot, q, qd, ...)
    a  acknowledgement -> downlinks table (and any waiter in the daemon)

With several instances on JetStream, the seqs each batch took are summarised in `took` (the
source publishes them to the other instances), and `$seen/<instance>` messages, the other
instances' summaries, mark seqs taken in the dedup state (gateway/seen.py).

Every rejection is counted by reason and stored in the quarantine table with the raw bytes,
topic, byte offset and detail; nothing on the wire can make the gateway stop.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Callable, Literal, NamedTuple, Sequence

from gateway.channels import ChannelTable
from gateway.config import Config
from gateway.downlink import CONTROL_LIMIT, STATUS_LIMIT, decode_control, parse_ack
from gateway.errors import RejectedInput, SinkError, TopicError, WireError
from gateway.logfmt import kv
from gateway.outbox import Outbox, missing_per_node
from gateway.registry import Registry, is_int64
from gateway.rules import RuleEngine
from gateway.seen import Took
from gateway.seen import decode as decode_seen
from gateway.stats import Stats
from gateway.wire import Reading, decode_reading, parse_topic, reading_time_error

log = logging.getLogger("meterlink.gateway")

# What the quarantine keeps of a message (a hostile sender must not fill the disk by itself).
QUARANTINE_BYTES = 65536
QUARANTINE_TOPIC = 1024
TOPIC_CACHE = 100_000  # parsed topics kept (three per node)
# With instances that exchange what they took, a gap raises `gaps` once open this long: until
# the other instance's summary comes (about a second), its seqs show as missing here.
GAP_ALARM_AFTER_S = 30.0

Outcome = Literal["accepted", "duplicate", "rejected", "internal", "status", "ack", "seen"]


class Message(NamedTuple):
    """One MQTT message as the ingest thread sees it (a tuple: one is made per message on
    the network thread, the hot path)."""

    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 1
    received_at: float = 0.0
    retain: bool = False


class Rejected(RejectedInput):
    """A message rejected before or outside the wire decoder (limits, registration)."""

    def __init__(self, reason: str, detail: str, offset: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.offset = offset
        super().__init__(detail)


class _Bug(Exception):
    """Handling a message raised something unexpected: run the batch again, carefully."""


class _Counts:
    """Counter changes of one batch, applied to `Stats` after the commit."""

    def __init__(self) -> None:
        self.added: dict[str, int] = {}
        self.reasons: list[str] = []
        # the hot path's counters, plain attributes (no keyword call per message)
        self.received = self.readings = self.records = self.values = 0

    def add(self, **increments: int) -> None:
        for name, n in increments.items():
            self.added[name] = self.added.get(name, 0) + n

    def reject(self, reason: str) -> None:
        self.reasons.append(reason)

    def apply(self, stats: Stats) -> None:
        if self.received or self.readings:
            self.add(received=self.received, accepted_messages=self.readings,
                     accepted_records=self.records, senml_records=self.values)
        if self.added:
            stats.add(**self.added)
        for reason in self.reasons:
            stats.reject(reason)


class Ingestor:
    """Turns batches of messages into one outbox transaction each."""

    def __init__(self, config: Config, table: ChannelTable, box: Outbox, stats: Stats, *,
                 on_ack: Callable[[str, dict], None] | None = None) -> None:
        self.config = config
        self.table = table
        self.box = box
        self._stats = stats
        self.stats: Stats | _Counts = stats
        self.sinks = [s.name for s in config.sinks]
        self.registry = Registry(box, config.gateway, stats=stats,
                                 event_sinks=[s.name for s in config.sinks if s.events],
                                 table=table)
        self.registry.gap_alarms = config.knows_node_gaps
        # the seqs the last batch took, for the other instances (None: no exchange)
        self.took: Took | None = Took() if config.jetstream.exchanges_seen else None
        if self.took is not None:
            self.registry.gap_alarm_after_s = GAP_ALARM_AFTER_S
        self.rules = RuleEngine(config.rules, self.registry)
        with box.transaction():
            self.registry.recover()  # a journal a crash left
        self.on_ack = on_ack
        self.prefix = config.mqtt.prefix
        self._topics: dict[str, tuple[str, str]] = {}  # topic -> parse_topic(), valid ones

    def __repr__(self) -> str:
        return f"Ingestor({self.box!r}, sinks={self.sinks})"

    def handle_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """Processes and commits `messages`; raises only SinkError (nothing committed).

        The fast path runs the whole batch in one transaction. If handling a message raises
        something unexpected (a bug), the transaction is rolled back and the batch runs again
        with a savepoint per message, so that only the culprit is quarantined as "internal".
        Counters are applied only after the commit, so they never count a rolled-back pass.
        """
        try:
            return self._run(messages, careful=False)
        except _Bug:
            return self._run(messages, careful=True)

    def _run(self, messages: Sequence[Message], *, careful: bool) -> list[Outcome]:
        outcomes: list[Outcome] = []
        acks: list[tuple[str, dict]] = []
        if self.took is not None:
            self.took = Took()
        self.stats = counts = _Counts()
        self.registry.stats = counts
        try:
            with self.box.transaction():
                for msg in messages:
                    if careful:
                        # rows collected for the batch insert are written first, so that
                        # rolling back to the savepoint touches this message only; the
                        # in-memory dedup and registry state is put back with it
                        self.box.savepoint()
                        snap = self.registry.snapshot(msg.topic)
                    try:
                        outcome = self._handle(msg, acks)
                    except SinkError:
                        raise
                    except sqlite3.OperationalError as exc:
                        raise SinkError(f"outbox {self.box.path}: {exc}") from exc
                    except Exception as exc:  # noqa: BLE001 - a bug: rerun carefully
                        if not careful:
                            raise _Bug() from exc
                        self.box.rollback_savepoint()
                        self.registry.restore(snap)
                        self.rules.forget()
                        log.exception("internal_error", extra=kv(
                            topic=msg.topic, payload=bytes(msg.payload[:512]).hex()))
                        outcome = self._reject(msg, "internal", None, "internal error "
                                               "(see the gateway log)")
                    if careful:
                        self.box.release_savepoint()
                    outcomes.append(outcome)
                self.registry.flush()
        except sqlite3.Error as exc:
            self.registry.forget()
            self.rules.forget()
            raise SinkError(f"outbox {self.box.path}: {exc}") from exc
        except BaseException:
            self.registry.forget()
            self.rules.forget()
            raise
        finally:
            self.stats = self.registry.stats = self._stats
        counts.apply(self._stats)
        if self.on_ack:
            for node, ack in acks:
                self.on_ack(node, ack)
        return outcomes

    def _reject(self, msg: Message, reason: str, offset: int | None, detail: str) -> Outcome:
        self.stats.reject(reason)
        self.box.quarantine(msg.topic[:QUARANTINE_TOPIC], bytes(msg.payload[:QUARANTINE_BYTES]),
                            reason, offset, detail,
                            msg.received_at, keep=self.config.outbox.quarantine_keep)
        parts = msg.topic.split("/")
        node = parts[1] if len(parts) == 3 and len(parts[1]) <= 32 else "-"
        log.warning("rejected", extra=kv(node=node, topic=msg.topic[:200], reason=reason,
                                         offset=offset,
                                         detail=detail, bytes=len(msg.payload)))
        return "internal" if reason == "internal" else "rejected"

    def _handle(self, msg: Message, acks: list[tuple[str, dict]]) -> Outcome:
        self.stats.received += 1
        limits = self.config.ingest
        try:
            if msg.topic[:1] == "$":  # only the JetStream source makes these
                return self._seen(msg)
            if len(msg.topic) > limits.max_topic_length:
                raise Rejected("topic_length", f"topic is {len(msg.topic)} characters, over "
                                               f"{limits.max_topic_length}")
            parsed = self._topics.get(msg.topic)
            if parsed is None:
                parsed = parse_topic(msg.topic, self.prefix)
                if len(self._topics) >= TOPIC_CACHE:
                    self._topics.clear()
                self._topics[msg.topic] = parsed
            node, kind = parsed
            if node in self.registry.retired:
                return self._retired(node, kind, msg)
            if kind == "s":
                return self._status(node, msg)
            if kind == "a":
                return self._ack(node, msg, acks)
            if kind != "r":
                raise TopicError(msg.topic, len(msg.topic) - 1,
                                 f"kind {kind!r} is not one the gateway takes (r, s, a)")
            if len(msg.payload) > limits.max_payload_bytes:
                raise WireError("too_large", limits.max_payload_bytes,
                                f"payload is {len(msg.payload)} bytes, over "
                                f"{limits.max_payload_bytes}")
            if self.config.gateway.require_registration and \
                    not self.registry.is_registered(node):
                raise Rejected("unregistered", f"node {node!r} is not registered "
                                               "(PUT /api/nodes/{node})")
            payload = msg.payload if type(msg.payload) is bytes else bytes(msg.payload)
            received = int(msg.received_at)
            reading = decode_reading(payload, self.table)
            problem = reading_time_error(payload, reading, received_at=received,
                                         time_min=limits.time_min,
                                         max_future_s=limits.max_future_s)
            if problem:
                raise problem
        except RejectedInput as exc:
            return self._reject(msg, exc.reason, getattr(exc, "offset", None),
                                getattr(exc, "detail", str(exc)))
        return self._store(node, reading, msg.received_at)

    def _retired(self, node: str, kind: str, msg: Message) -> Outcome:
        """A message from a retired node: a reading is quarantined (bytes kept, nothing
        counted), a status or acknowledgement only counted (a retained status comes back
        at every gateway start)."""
        if kind != "r":
            self.stats.add(retired_ignored=1)
            return "status" if kind == "s" else "ack"
        raise Rejected("retired", f"node {node!r} is retired (since "
                                  f"{self.registry.retired[node]:.0f}); reinstate it to take "
                                  "its readings: POST /api/nodes/{node}/reinstate")

    def _store(self, node: str, reading: Reading, now: float) -> Outcome:
        """Dedup and gap tracking per record (in memory: `state` is the registry's cached
        state of the node, written with the batch); the new records, a run of consecutive
        seqs per outbox item, go to the outbox and the registry."""
        box = self.box
        state = self.registry.ensure(node, now)
        lo, hi = state.min_seq, state.max_seq
        seq, records = reading.seq, reading.records
        count = len(records)
        missing = 0
        counts = self.stats
        counts.readings += 1
        if hi is not None and lo is not None and seq > hi:  # the usual case: all new
            if seq > hi + 1:
                missing = seq - hi - 1
                box.add_gap(node, hi + 1, seq - 1)
            state.max_seq = seq + count - 1
            fresh = records
            counts.values += box.add_reading(node, seq, reading.time, records, now)
        else:
            runs = []  # (first, end) indexes of the runs of new records
            start = -1
            for i in range(count):
                new, lo, hi, delta = box.accept_seq(node, seq + i, lo, hi)
                if new:
                    missing += delta
                    if start < 0:
                        start = i
                elif start >= 0:
                    runs.append((start, i))
                    start = -1
            if start >= 0:
                runs.append((start, count))
            state.min_seq, state.max_seq = lo, hi
            if not runs:
                self.registry.duplicate_only(node, count, now)
                counts.add(duplicates=count)
                if self.took is not None:
                    self.took.add(node, seq, seq + count - 1)
                return "duplicate"
            fresh = []
            for first, end in runs:
                counts.values += box.add_reading(node, seq + first, reading.time,
                                                 records[first:end], now)
                fresh.extend(records[first:end])
            if count > len(fresh):
                counts.add(duplicates=count - len(fresh))
        base = reading.base_time(received_at=int(now))
        self.registry.reading(node, fresh, base, now, missing_delta=missing,
                              duplicates=count - len(fresh))
        if self.rules.rules:
            self.rules.readings(node, fresh, base, now)
        counts.records += len(fresh)
        if self.took is not None:  # last: a message rolled back alone took nothing
            self.took.add(node, seq, seq + count - 1)
        return "accepted"

    def _seen(self, msg: Message) -> Outcome:
        """Another instance's summary of the seqs it took (gateway/seen.py): they join this
        instance's dedup state and gaps, without readings."""
        if self.took is None or not msg.topic.startswith("$seen/"):
            raise TopicError(msg.topic, 0, "only the JetStream source's $seen/ summaries start "
                                           "with $, with [jetstream] instances above 1")
        box, registry = self.box, self.registry
        now = msg.received_at
        changed: dict[str, int] = {}
        for node, first, last in decode_seen(bytes(msg.payload)):
            if node in registry.retired:
                continue
            state = registry.ensure(node, now)
            state.min_seq, state.max_seq, delta = box.take_range(
                node, first, last, state.min_seq, state.max_seq)
            changed[node] = changed.get(node, 0) + delta
        for node, delta in changed.items():
            registry.taken_elsewhere(node, delta, now)
        self.stats.add(seen_summaries=1)
        return "seen"

    def close(self) -> None:
        """A clean stop: the registry's journal written into the node rows."""
        with self.box.transaction():
            self.registry.flush()
            self.registry.compact()

    def replace_rules(self, rules, now: float) -> list[str]:
        """A reloaded config's rules (its own transaction: clearing a removed rule's alarms
        writes events). Returns what changed."""
        with self.box.transaction():
            return self.rules.replace(rules, now)

    def _status(self, node: str, msg: Message) -> Outcome:
        if not msg.payload:
            return "status"  # a cleared retained status: nothing to learn
        status = decode_control(bytes(msg.payload), limit=STATUS_LIMIT, what="status")
        if not isinstance(status.get("on"), bool):
            raise WireError("structure", 0, "status lacks a boolean 'on'")
        self.registry.status(node, status, msg.received_at)
        self.stats.add(status_messages=1)
        return "status"

    def _ack(self, node: str, msg: Message, acks: list[tuple[str, dict]]) -> Outcome:
        if len(msg.payload) > CONTROL_LIMIT:
            raise WireError("too_large", CONTROL_LIMIT, "acknowledgement over 1024 bytes")
        ack = parse_ack(bytes(msg.payload))
        rid = ack.get("id")
        self.box.downlinks.acked(node, None if rid is None else str(rid), msg.received_at,
                                 ok=ack["ok"], reply=repr(ack))
        self.registry.seen(node, msg.received_at)
        if "cv" in ack and is_int64(ack["cv"]):
            self.box.nodes.set_cv(node, ack["cv"])
        acks.append((node, ack))
        self.stats.add(ack_messages=1)
        log.info("ack", extra=kv(node=node, id=rid, cmd=ack.get("cmd"), ok=ack["ok"],
                                 err=ack.get("err")))
        return "ack"

    def periodic(self, now: float) -> list[tuple[str, int, int]]:
        """Stale-node check, the rules' periodic checks and gauges (its own transaction).
        Returns the gaps table as it read it (node, first, last): the one read of it a period,
        for the gauge, the `gaps` alarm and the replayer (gateway/replay.py)."""
        with self.box.transaction():
            self.registry.flush()
            self.registry.compact(due_only=True)
            self.registry.check_offline(now)
            self.registry.check_stale(now)
            gaps = self.box.gaps()
            self.registry.check_gaps(now, gaps)
            if self.rules.rules:
                self.rules.periodic(now)
        self._stats.set_group("gaps_missing", missing_per_node(gaps))
        return gaps
