"""The device registry and alarms, kept in the outbox database (`nodes`, `gaps`, `alarms`).

    reg = Registry(box, settings, event_sinks=["file", "http"])
    reg.reading(node, records, base, now, missing_delta=0)   # last seen, values, alarm bits, battery
    reg.status(node, status_map, now)            # `s`: online/offline/asleep, fw, boot, q, qd...
    reg.check_stale(now)                         # periodic: nodes that missed their intervals

Every call runs inside the caller's outbox transaction, so a reading, the registry update and
the alarm events it causes commit together (or not at all). This module decides what to write
and when; the rows are written by the outbox's table classes (`box.nodes`, `box.alarms`:
gateway/store/), and no SQL is run here. The hot fields of a node (last values, battery, RSSI,
highest seq, counts) are cached here and written once per batch by `flush()`, which the
ingest path calls before its commit. A batch that touched a few nodes (`DIRECT_NODES`) updates
their rows (`NodeTable.write_hot_many`); one from many nodes (a backlog from a large fleet) writes
one row to `node_journal` instead, whatever their number: each node's dedup range, last seen,
battery, RSSI and counts, in the same transaction as the readings. Every `COMPACT_S` (and at
a clean stop) `compact()` writes the nodes of the journal into their rows, with their last
values, and empties it; after a crash the journal is written into the rows at start
(`recover`). That write takes about 10 us a node (0.1 s with 10 000 nodes in the journal,
1.4 s with 100 000), so the next one waits at least 20 times as long as the last took
(`COMPACT_SHARE`, up to `COMPACT_MAX_S`): with 100 000 nodes in a backlog, every 5 s would be a
quarter of the ingest thread's time. A node row touched by a journal batch lags its node by
up to that period (the API's `last_seen`, counts and last values); the dedup state never
does: it is in memory and in the journal. Writing a row per node and batch cost ingest half
its rate with 10 000 nodes in a backlog (every row on its own page: the commit writes a page per node). Only the ingest
thread writes those columns; other modules read and change the cache through methods
(`ensure`, `seen`, `snapshot`, `restore`).

Alarms (`ALARMS`) are raised once and cleared once: a state change writes the `alarms` row, an
event item into the outbox for every sink that takes events, a log line and a counter.
Repeating the same state does nothing.

| alarm | raised | cleared |
|---|---|---|
| `leak`, `backflow`, `tamper`, `sensor`, `gas`, `flood` | the bit (`ALARM_BITS`: 1, 2, 4, 8, 16, 32) is set in the `alarms` channel (instance n > 0: `leak:n`) | the bit is clear |
| `low_battery` | battery below `[gateway] low_battery_mv` (channel `battery_voltage` or status `bat`) | battery at or above the threshold + 100 mV |
| `stale` | no message for `stale_intervals` x `iv` (plus `sleep` for a sleeping node) | any message |
| `queue_overflow` | status `qd` higher than the last status | a status with `qd` unchanged |
| `gaps` | the node has missing sequence numbers (not with a shared subscription; with instances that exchange what they took, a gap open `gap_alarm_after_s`) | every gap filled |
| `offline` | status `on: false` without `sleep` (the Last Will, or a restart announced with `bye`) and nothing better for `[gateway] offline_grace_s` | status `on: true` (or asleep) |

A node's status history (`node_log`, read by `box.nodes.events`) gets a row when something an
operator cares about changes, compared with the cached hot state (no query per message; a
status arrives on every wake, a row does not): `first_seen`, a state (`online`, `asleep`,
`offline`, `restarting`; not the wake cycle online <-> asleep of a battery node, which would
be a row per wake), `reboot` (the boot counter moved), `firmware` (another version),
`safe_mode` / `safe_mode_left`, `retired` / `reinstated`. It keeps the newest
`NODE_LOG_KEEP` rows per node, not an age: a node that flaps cannot push the other nodes'
history out, and a quiet node keeps its last reboot however old it is.
"""

from __future__ import annotations

import copy
import json
import math
import logging
import operator
import time
from array import array
from typing import Any, Sequence

from gateway.channels import ChannelTable, default_table
from gateway.config import GatewaySettings
from gateway.logfmt import kv
from gateway.outbox import Outbox
from gateway.stats import Stats
from gateway.wire import senml_value

log = logging.getLogger("meterlink.gateway.registry")

ALARM_BITS = ((1, "leak"), (2, "backflow"), (4, "tamper"), (8, "sensor"), (16, "gas"),
              (32, "flood"))
ALARMS = ("leak", "backflow", "tamper", "sensor", "gas", "flood", "low_battery", "stale",
          "queue_overflow", "gaps", "offline")
BATTERY_HYSTERESIS_MV = 100
# channels that drive alarms or registry columns, not only `last_values` (a raw slot's kind)
_BATTERY, _RSSI, _ALARMS = 1, 2, 3
SPECIAL_CHANNELS = {"battery_voltage": _BATTERY, "rssi": _RSSI, "alarms": _ALARMS}
STATUS_FIELDS = {"fw": "fw", "boot": "boot", "q": "q", "qd": "qd", "iv": "iv", "cv": "cv",
                 "rssi": "rssi", "bat": "battery_mv"}
NODE_LOG_KEEP = 500  # node_log rows kept per node (the newest)
DIRECT_NODES = 32  # a batch that touched more nodes writes them to the journal (above)
COMPACT_S = 5.0  # how often the journal is written into the node rows (at most)
COMPACT_SHARE = 0.05  # of the ingest thread's time, at most, spent writing the journal's nodes
COMPACT_MAX_S = 60.0  # the longest wait between two, however long they take
ALARM_LOG_KEEP = 1000  # cleared alarm_log rows kept per node (the newest; open ones all)
NONE_T = -2**63  # a raw slot's time when it holds no value (NodeState.raw)
NODE_EVENTS = ("first_seen", "online", "asleep", "offline", "restarting", "reboot", "firmware",
               "safe_mode", "safe_mode_left", "retired", "reinstated")


class NodeState:
    """A node's cached hot state (one per node of the fleet: slots, not a dict, for its size
    and for the ingest path's speed with a large fleet, where each message touches another
    node's state)."""

    __slots__ = ("values", "raw", "raw_dirty", "battery", "rssi", "min_seq",
                 "max_seq", "accepted", "duplicates", "accepted_j", "duplicates_j", "last_seen",
                 "last_reading", "state", "fw", "boot", "safe")

    def __init__(self, row: tuple, now: float) -> None:
        """From the node's row (`NodeTable.first_sight`: its `HOT_COLUMNS`)."""
        # label -> (value, time) as in `last_values`
        self.values: dict[str, tuple[Any, Any]] = _values_in(row[0])
        # the newest wire value and its time per channel, unboxed in one array, value then
        # time, in the registry's slot of the channel's wire key (`Registry.reading`; moved
        # into `values` by `_merge_raw`): a message overwrites them in place, allocates and
        # frees nothing, and touches no other object of the node. With a large fleet each
        # message touches another node's state, out of the CPU caches: tuples in `values`
        # per message cost 0.08 of the ingest rate with 10 000 nodes, and two arrays plus
        # `values` for the battery (the bench's readings carry it) another 0.07 (0.84 -> 0.91
        # of the rate with 10 nodes, bench_fleet.py). Time NONE_T: no value since the row was
        # read; a slot's time only grows. The decoder takes only values below 2^53
        # (gateway/wire.py VALUE_LIMIT) and times of int64.
        self.raw = array("q")
        self.raw_dirty = False
        self.battery: int | None = row[1]
        self.rssi: int | None = row[2]
        self.min_seq: int | None = row[3]
        self.max_seq: int | None = row[4]
        # counts not written yet, and those journaled since the last compaction
        self.accepted = self.duplicates = self.accepted_j = self.duplicates_j = 0
        self.last_seen: float = now
        self.last_reading: float | None = None
        # what the status history compares a status with
        self.state: str | None = row[5]
        self.fw: str | None = row[6]
        self.boot: int | None = row[7]
        self.safe: str | None = _safe_of(row[8])

    def __repr__(self) -> str:
        return (f"NodeState(seqs={self.min_seq}..{self.max_seq}, last_seen={self.last_seen}, "
                f"state={self.state})")


class Registry:
    """Registry and alarm bookkeeping on one outbox connection (the ingest thread's)."""

    def __init__(self, box: Outbox, settings: GatewaySettings, *, event_sinks: Sequence[str],
                 stats: Stats, table: ChannelTable | None = None) -> None:
        self.box = box
        self.nodes = box.nodes
        self.alarms = box.alarms
        self.table = table if table is not None else default_table()
        # wire key -> (channel label as in last_values, base name, instance, scale)
        self._keys: dict[int, tuple[str, str, str, int]] = {}
        # wire key -> its slot in every node's raw array (NodeState.raw); slot -> (channel
        # label, scale, kind, instance) of its key, the kind being what else the channel
        # drives (its SPECIAL_CHANNELS value; 0: nothing), also alone in `_kinds` (read for
        # every value)
        self._slots: dict[int, int] = {}
        self._slot_info: list[tuple[str, int, int, str]] = []
        self._kinds: list[int] = []
        self.settings = settings
        self.event_sinks = list(event_sinks)
        self.stats = stats
        self._active: dict[tuple[str, str], bool] = self.alarms.states()
        # With a shared subscription each instance sees only part of a node's messages, so
        # its gaps say nothing about the node: no gaps alarm then (gaps are still tracked).
        self.gap_alarms = True
        # 0: `gaps` raised as soon as a seq is missing. Above 0 (instances that exchange what
        # they took: gateway/seen.py), only for a gap open that long (`check_gaps`): a seq the
        # other instance took shows as missing here until its summary comes, a second or so.
        self.gap_alarm_after_s = 0.0
        self._gap_since: dict[tuple[str, int], float] = {}  # (node, first) -> first noticed
        self._nodes: dict[str, NodeState] = {}
        self._dirty: set[str] = set()
        self._journaled: set[str] = set()  # in the journal since the last compaction
        # after a rolled-back batch: the journal's entries of nodes not in the cache again
        # yet (`forget`), put back by `ensure`
        self._overlay: dict[str, list] = {}
        self._compacted = time.monotonic()
        self._compact_every = COMPACT_S
        # retired node -> when: its messages are quarantined as "retired" (`Ingestor._handle`)
        self.retired: dict[str, float] = self.nodes.retired()

    def __repr__(self) -> str:
        return f"Registry({self.box!r}, active_alarms={sum(self._active.values())})"

    # ---- rows -------------------------------------------------------------------------------

    def ensure(self, node: str, now: float) -> NodeState:
        """The node's cached hot state, creating its registry row on first sight."""
        state = self._nodes.get(node)
        if state is None:
            # a node registered before it was first heard of (provision) is first seen now
            new, registered, row = self.nodes.first_sight(node, now)
            state = NodeState(row, now)
            entry = self._overlay.pop(node, None)
            if entry is not None:  # committed in the journal, not in the row yet
                lo, hi, _, reading, battery, rssi, accepted, duplicates = entry
                if lo is not None:
                    state.min_seq = lo if state.min_seq is None else min(lo, state.min_seq)
                if hi is not None:
                    state.max_seq = hi if state.max_seq is None else max(hi, state.max_seq)
                state.last_reading, state.battery, state.rssi = reading, battery, rssi
                state.accepted_j, state.duplicates_j = accepted, duplicates
                self._journaled.add(node)
            self._nodes[node] = state
            if new or registered:
                self._log(node, now, "first_seen", "registered before" if registered
                          else "not registered")
        return state

    def seen(self, node: str, now: float) -> None:
        """A message of `node` other than a reading or status (an acknowledgement): its
        `last_seen`, written with the batch."""
        self.ensure(node, now).last_seen = now
        self._dirty.add(node)

    def flush(self) -> None:
        """Writes the cached state of the nodes changed since the last flush (in the batch's
        transaction): their rows when they are few, else one journal row (module docstring)."""
        if len(self._dirty) <= DIRECT_NODES:
            self.nodes.write_hot_many([self._row(node) for node in self._dirty])
        else:
            entries = {}
            for node in self._dirty:
                st = self._nodes[node]
                entries[node] = (st.min_seq, st.max_seq, st.last_seen, st.last_reading,
                                 st.battery, st.rssi, st.accepted, st.duplicates)
                st.accepted_j += st.accepted
                st.duplicates_j += st.duplicates
                st.accepted = st.duplicates = 0
            self.nodes.write_journal(entries)
            self._journaled.update(self._dirty)
        self._dirty.clear()

    def _row(self, node: str) -> tuple:
        """The node's cached hot state as `NodeTable.write_hot_many` takes it; its counts
        are then taken (reset)."""
        st = self._nodes[node]
        if st.raw_dirty:
            self._merge_raw(st)
        row = (st.last_seen, st.last_reading, _values_out(st.values), st.battery,
               st.rssi, st.min_seq, st.max_seq, st.accepted, st.duplicates,
               node)
        st.accepted = st.duplicates = 0
        return row

    def compact(self, *, due_only: bool = False) -> None:
        """Writes the nodes of the journal into their rows and empties it (in the caller's
        transaction, between batches); with `due_only`, only once it is due (module
        docstring: `COMPACT_S`, or longer after a long one)."""
        now = time.monotonic()
        if due_only and now < self._compacted + self._compact_every:
            return
        self._compacted = now
        if not self._journaled and not self._overlay:
            return
        rows = []
        for node in self._journaled:
            st = self._nodes.get(node)
            if st is None:
                continue
            st.accepted += st.accepted_j
            st.duplicates += st.duplicates_j
            st.accepted_j = st.duplicates_j = 0
            rows.append(self._row(node))
        # in the order of the nodes' index: 100 000 updates in the set's order took 2.7 times
        # as long (each on a page of its own, at random)
        rows.sort(key=_by_node)
        self.nodes.write_hot_many(rows)
        for node, entry in self._overlay.items():
            self.nodes.write_entry(node, entry)
        self.nodes.clear_journal()
        self._journaled.clear()
        took = time.monotonic() - now
        self._compact_every = min(COMPACT_MAX_S, max(COMPACT_S, took / COMPACT_SHARE))
        self._overlay.clear()

    def recover(self) -> int:
        """At start: a journal left by a crash, written into the node rows (in the caller's
        transaction). Returns how many nodes it held."""
        entries = self.nodes.journal()
        for node, entry in entries.items():
            self.nodes.write_entry(node, entry)
        if entries:
            self.nodes.clear_journal()
            log.info("registry_recovered", extra=kv(nodes=len(entries)))
        return len(entries)

    def snapshot(self, topic: str) -> tuple:
        """The cached state one message can change (its node's hot state, the alarm flags),
        to put back if that message is rolled back alone (see Ingestor's careful rerun)."""
        if topic[:1] == "$":  # another instance's summary (gateway/seen.py): many nodes
            return "$", copy.deepcopy(self._nodes), dict(self._active)
        parts = topic.split("/")
        node = parts[1] if len(parts) == 3 else None
        return node, copy.deepcopy(self._nodes.get(node)), dict(self._active)

    def restore(self, snap: tuple) -> None:
        node, state, active = snap
        if node == "$":
            self._nodes = state
        elif state is None:
            self._nodes.pop(node, None)
        else:
            self._nodes[node] = state
        self._active = active

    def forget(self) -> None:
        """Drops the cache (after a rolled-back transaction); reloaded from the database, and
        from the journal for what it holds of a node (`ensure`)."""
        self._nodes.clear()
        self._dirty.clear()
        self._journaled.clear()
        self._overlay = self.nodes.journal()
        self.retired = self.nodes.retired()
        self._active = self.alarms.states()

    def is_online(self, node: str) -> bool:
        """The node's last status said it is online (not asleep, not gone)."""
        st = self._nodes.get(node)
        return st is not None and st.state == "online"

    def is_registered(self, node: str) -> bool:
        return self.nodes.is_registered(node)

    # ---- retirement --------------------------------------------------------------------------
    # A meter replaced or removed, a station taken down: the node leaves the fleet views and
    # raises nothing more, and whatever still arrives under its id is quarantined as "retired"
    # (the bytes kept), never counted. Its dedup state stays, so a node put back in service
    # (`reinstate`) or a device that resends old readings cannot count a reading twice. Only a
    # node that never sent a reading (registered by mistake) can be deleted outright. These
    # run on the ingest thread, in its transaction, like everything that writes the cache.

    def retire(self, node: str, now: float, note: str = "") -> bool:
        """Retires `node`; clears its open alarms (events with detail "node retired"). False
        when it was retired already; KeyError when it is not known."""
        if self.nodes.retired_at(node) is not None:
            return False
        self.flush()
        self.compact()
        self.nodes.retire(node, now, note or None)
        self._log(node, now, "retired", note or None, quiet=True)
        for (n, alarm), active in sorted(self._active.items()):
            if n == node and active:
                self.set_alarm(node, alarm, False, now, "node retired")
        self._nodes.pop(node, None)
        self.retired[node] = now
        log.info("node_retired", extra=kv(node=node, note=note))
        return True

    def reinstate(self, node: str, now: float) -> bool:
        """Puts a retired node back in service (state unknown until it is heard from)."""
        if self.nodes.retired_at(node) is None:
            return False
        self.nodes.reinstate(node, now)
        self._log(node, now, "reinstated", None, quiet=True)
        self.retired.pop(node, None)
        log.info("node_reinstated", extra=kv(node=node))
        return True

    def delete(self, node: str) -> None:
        """Deletes a node that never sent a reading; ValueError naming why not otherwise."""
        self.flush()
        self.compact()
        lo, hi = self.nodes.seq_range(node)
        if hi is not None:
            raise ValueError(f"node {node!r} has sent readings (seq {lo}-{hi}): "
                             "retire it instead, which keeps what stops a reading from being "
                             "counted twice")
        self.nodes.delete(node)
        self.alarms.delete_node(node)
        for key in [k for k in self._active if k[0] == node]:
            del self._active[key]
        self._nodes.pop(node, None)
        self._dirty.discard(node)
        self.retired.pop(node, None)
        log.info("node_deleted", extra=kv(node=node))

    # ---- alarms -----------------------------------------------------------------------------

    def is_active(self, node: str, alarm: str) -> bool:
        return self._active.get((node, alarm), False)

    def set_alarm(self, node: str, alarm: str, active: bool, now: float,
                  detail: str = "", *, readings: list[dict[str, Any]] | None = None) -> bool:
        """Records an alarm state; True (and an event) only when the state changed. A raise
        also opens a row of the alarm's history (`alarm_log`), a clear closes the open one
        (its acknowledgement, by an operator, is the API's: `Api.acknowledge`). `readings`:
        the values that decided it (SenML records), sent with the event."""
        if self._active.get((node, alarm), False) == active:
            return False
        self._active[(node, alarm)] = active
        if active:
            self.alarms.raised(node, alarm, now, detail, keep=ALARM_LOG_KEEP)
        else:
            self.alarms.cleared(node, alarm, now)
        event = {"node": node, "alarm": alarm, "active": active, "t": round(now, 3),
                 "detail": detail}
        if readings:
            event["readings"] = readings
        if self.event_sinks:
            self.box.add_item("event", node, None, event, now, sinks=self.event_sinks)
        self.stats.add(events=1)
        (log.warning if active else log.info)(
            "alarm_raised" if active else "alarm_cleared",
            extra=kv(node=node, alarm=alarm, detail=detail or None))
        return True

    def active_alarms(self) -> list[tuple[str, str]]:
        return sorted(k for k, v in self._active.items() if v)

    # ---- inputs -----------------------------------------------------------------------------

    def _key(self, key: int) -> tuple[str, str, str, int]:
        info = self._keys.get(key)
        if info is None:
            channel, instance = self.table.lookup(key)
            label = f"{channel.name}:{instance}" if instance else channel.name
            info = self._keys[key] = (label, channel.name, str(instance) if instance else "",
                                      channel.scale)
        return info

    def _slot(self, key: int, st: NodeState) -> int:
        """The slot of wire key `key` in the nodes' raw arrays, made on its first sight;
        `st`'s array grown to every slot."""
        i = self._slots.get(key)
        if i is None:
            i = self._slots[key] = len(self._slot_info)
            label, name, inst, scale = self._key(key)
            kind = SPECIAL_CHANNELS.get(name, 0)
            self._slot_info.append((label, scale, kind, inst))
            self._kinds.append(kind)
        have, want = len(st.raw) // 2, len(self._slot_info)
        if have < want:
            st.raw.extend([0, NONE_T] * (want - have))
        return i

    def _merge_raw(self, st: NodeState) -> None:
        """Moves the wire values `reading` kept into `values` (newest time wins)."""
        values = st.values
        raw = st.raw
        info = self._slot_info
        for i in range(0, len(raw), 2):
            t = raw[i + 1]
            if t == NONE_T:
                continue
            label, scale, _, _ = info[i >> 1]
            old = values.get(label)
            if old is None or old[1] <= t:
                v = senml_value(raw[i], scale)
                if old is None or old[1] < t or old[0] != v:  # else merged before
                    values[label] = (v, t)
        st.raw_dirty = False

    def reading(self, node: str, records: Sequence[tuple[int, dict[int, int]]], base: int,
                now: float, *, missing_delta: int, duplicates: int = 0) -> None:
        """New records of a reading message were accepted: `records` are `(elapsed, {key:
        value})` in the record shape (gateway/wire.py), at times `base + elapsed`;
        `duplicates` records of the message were dropped.

        Values stay as wire integers in the node's raw slots until `flush` (the newest per
        channel wins, by time); battery, RSSI and the alarm bits also set what they drive at
        once (the battery and RSSI columns, alarms).
        """
        st = self.ensure(node, now)
        raw = st.raw
        slots = self._slots
        kinds = self._kinds
        alarm_bits: dict[str, int] | None = None
        for elapsed, vals in records:
            t = base + elapsed
            for key, value in vals.items():
                i = slots.get(key)
                if i is None or i + i >= len(raw):
                    i = self._slot(key, st)
                j = i + i
                if raw[j + 1] > t:
                    continue  # an older value
                if kinds[i]:
                    label, scale, kind, inst = self._slot_info[i]
                    if raw[j + 1] == NONE_T:  # the first since the row was read
                        old = st.values.get(label)
                        if old is not None and old[1] > t:
                            continue
                    v = senml_value(value, scale)
                    if kind == _BATTERY:
                        st.battery = int(round(v * 1000))
                    elif kind == _RSSI:
                        st.rssi = int(v)
                    else:
                        if alarm_bits is None:
                            alarm_bits = {}
                        alarm_bits[inst] = int(v)
                raw[j] = value
                raw[j + 1] = t
        st.raw_dirty = True
        st.last_seen = st.last_reading = now
        st.accepted += len(records)
        st.duplicates += duplicates
        self._dirty.add(node)
        if alarm_bits:
            for inst, bits in alarm_bits.items():
                for bit, name in ALARM_BITS:
                    self.set_alarm(node, f"{name}:{inst}" if inst else name, bool(bits & bit),
                                   now, f"alarms channel = {bits}")
        if st.battery is not None:
            self._battery(node, st.battery, now)
        if self._active.get((node, "stale"), False):
            self.set_alarm(node, "stale", False, now)
        if missing_delta:
            self._gaps_changed(node, now)

    def taken_elsewhere(self, node: str, missing_delta: int, now: float) -> None:
        """Another gateway instance took seqs of `node` (gateway/seen.py); ingest has put
        them in the cached state's seq range and the gaps."""
        self._dirty.add(node)
        if missing_delta:
            self._gaps_changed(node, now)

    def _gaps_changed(self, node: str, now: float) -> None:
        if self.gap_alarms:
            missing = self.box.missing_of(node)
            if missing and self.gap_alarm_after_s:
                return  # raised by check_gaps once a gap is old enough
            self.set_alarm(node, "gaps", missing > 0, now,
                           f"{missing} sequence numbers missing" if missing else "")

    def check_gaps(self, now: float, gaps: Sequence[tuple[str, int, int]]) -> None:
        """With `gap_alarm_after_s`: raises `gaps` for the nodes with a gap open at least that
        long (a gap narrowed from either end keeps its age only if its first seq stays), out
        of the gaps table (`gaps`: node, first, last)."""
        if not (self.gap_alarms and self.gap_alarm_after_s):
            return
        current, due = {}, set()
        for node, first, _last in gaps:
            since = current[(node, first)] = self._gap_since.get((node, first), now)
            if now - since >= self.gap_alarm_after_s:
                due.add(node)
        self._gap_since = current
        for node in due:
            if not self._active.get((node, "gaps"), False):
                missing = self.box.missing_of(node)
                self.set_alarm(node, "gaps", True, now, f"{missing} sequence numbers missing")

    def duplicate_only(self, node: str, duplicates: int, now: float) -> None:
        st = self.ensure(node, now)
        st.last_seen = now
        st.duplicates += duplicates
        self._dirty.add(node)
        self.set_alarm(node, "stale", False, now)

    def _battery(self, node: str, battery: int | None, now: float) -> None:
        if battery is None or not self.settings.low_battery_mv:
            return
        limit = self.settings.low_battery_mv
        active = self._active.get((node, "low_battery"), False)
        if not active and battery < limit:
            self.set_alarm(node, "low_battery", True, now, f"{battery} mV < {limit} mV")
        elif active and battery >= limit + BATTERY_HYSTERESIS_MV:
            self.set_alarm(node, "low_battery", False, now, f"{battery} mV")

    def status(self, node: str, status: dict[str, Any], now: float) -> None:
        """A status (`s`) message: the node's state and health fields."""
        hot = self.ensure(node, now)
        old_qd = self.nodes.qd(node)
        on = status.get("on")
        sleep = status.get("sleep") if is_int64(status.get("sleep")) else None
        bye = status.get("bye") if isinstance(status.get("bye"), str) else None
        state = "online" if on is True else ("asleep" if sleep is not None else
                                             "restarting" if bye else "offline")
        sets = {"state": state, "sleep": sleep, "last_seen": now,
                "status": json.dumps(json_safe(status), separators=(",", ":"))}
        for key, column in STATUS_FIELDS.items():
            value = status.get(key)
            if key == "fw":
                if isinstance(value, str):
                    sets[column] = value
            elif is_int64(value):
                sets[column] = value
        self.nodes.set_status(node, sets)
        self._status_history(node, hot, status, sets, now)
        st = self._nodes.get(node)
        if st is not None:  # keep the cache in step with what this UPDATE wrote
            st.last_seen = now
            if "battery_mv" in sets:
                st.battery = sets["battery_mv"]
            if "rssi" in sets:
                st.rssi = sets["rssi"]
        if state in ("online", "asleep"):
            self.set_alarm(node, "offline", False, now)
            self.set_alarm(node, "stale", False, now)
        elif not self.settings.offline_grace_s and state == "offline":
            self.set_alarm(node, "offline", True, now, "Last Will")
        # else `check_offline` raises it if the node is not back within offline_grace_s
        qd = sets.get("qd")
        if qd is not None and old_qd is not None:
            if qd > old_qd:
                self.set_alarm(node, "queue_overflow", True, now,
                               f"{qd - old_qd} records dropped (qd {old_qd} -> {qd})")
            else:
                self.set_alarm(node, "queue_overflow", False, now)
        if "battery_mv" in sets:
            self._battery(node, sets["battery_mv"], now)

    # ---- status history ---------------------------------------------------------------------

    def _log(self, node: str, now: float, event: str, detail: str | None, *,
             quiet: bool = False) -> None:
        """A `node_log` row, keeping the newest NODE_LOG_KEEP of the node."""
        self.nodes.log(node, now, event, detail, keep=NODE_LOG_KEEP)
        if not quiet:
            log.info("node_event", extra=kv(node=node, event=event, detail=detail))

    def _status_history(self, node: str, hot: NodeState, status: dict[str, Any],
                        sets: dict[str, Any], now: float) -> None:
        """Rows for what a status changed against the cached state (`hot`), which it updates:
        a reboot, a firmware version, safe mode, then the state (read newest first: the state
        the node came back in, above the reboot that led to it)."""
        boot, fw = sets.get("boot"), sets.get("fw")
        if boot is not None:
            if hot.boot is not None and boot != hot.boot:
                rst = status.get("rst")
                self._log(node, now, "reboot", f"boot {hot.boot} -> {boot}" +
                          (f", reset cause {rst}" if isinstance(rst, str) else ""))
            hot.boot = boot
        if fw is not None:
            if hot.fw is not None and fw != hot.fw:
                self._log(node, now, "firmware", f"{hot.fw} -> {fw}")
            hot.fw = fw
            # safe mode only from the node's own report: the Last Will and `bye` carry no fw
            safe = status.get("safe") if isinstance(status.get("safe"), str) else None
            if safe != hot.safe:
                if safe:
                    self._log(node, now, "safe_mode", safe)
                else:
                    self._log(node, now, "safe_mode_left", None)
                hot.safe = safe
        old, state = hot.state, sets["state"]
        if state == old:
            return
        hot.state = state
        if {old, state} == {"online", "asleep"}:
            return  # a battery node's wake cycle
        was = f"was {old}" if old else None
        if state == "offline":
            detail = "Last Will: the connection dropped"
        elif state == "restarting":
            detail = f"announced: {status.get('bye')}"
        elif state == "asleep":
            detail = ", ".join(filter(None, [f"wakes in {sets['sleep']} s", was]))
        else:
            detail = was
        self._log(node, now, state, detail)

    def check_offline(self, now: float) -> None:
        """Raises `offline` for nodes gone (Last Will, or an announced restart) for longer
        than `offline_grace_s`: a node back within it (a technician's reset, a reboot, a
        config change) raised nothing. The time it went is its `last_seen`."""
        for node, since, state, status in self.nodes.gone(now - self.settings.offline_grace_s):
            if self._active.get((node, "offline"), False):
                continue
            if state == "restarting":
                bye = json.loads(status).get("bye") if status else "restart"
                why = f"announced a restart ({bye}) and not back"
            else:
                why = "Last Will: the connection dropped"
            self.set_alarm(node, "offline", True, now, f"{why}, {int(now - since)} s ago")

    def check_stale(self, now: float) -> None:
        """Raises `stale` for nodes that missed `stale_intervals` intervals."""
        n = self.settings.stale_intervals
        for node, last_seen, iv, sleep, state in self.nodes.intervals():
            cached = self._nodes.get(node)
            if cached is not None and cached.last_seen > last_seen:
                last_seen = cached.last_seen  # its row lags (the journal)
            allowed = n * iv + (sleep or 0 if state == "asleep" else 0)
            if now - last_seen > allowed and not self._active.get((node, "stale"), False):
                self.set_alarm(node, "stale", True, now,
                               f"nothing for {int(now - last_seen)} s (interval {iv} s)")


def _values_in(text: str | None) -> dict[str, tuple[Any, Any]]:
    """`last_values` JSON ({label: {"v", "t"}}) as the cache keeps it: label -> (v, t), a
    tuple being a third of a dict's size (the cache holds every node of the fleet)."""
    out = {}
    if text:
        for label, vt in json.loads(text).items():
            if isinstance(vt, dict):
                out[label] = (vt.get("v"), vt.get("t"))
    return out


def _values_out(values: dict[str, tuple[Any, Any]]) -> str:
    """The cache's last values as `last_values` JSON text, `{label: {"v": v, "t": t}}`.

    Written for every node a batch or a compaction touches (10 000 rows a compaction with a
    large fleet), so numbers are formatted here: `repr` of an int or a finite float is its
    JSON text, which `json.dumps` takes 2.5 times as long to produce through the dicts it
    needs. Anything else (a value read back from an older row) goes through `json.dumps`.
    """
    parts = []
    for label, (v, t) in values.items():
        name = _LABELS.get(label)
        if name is None:
            name = _LABELS[label] = json.dumps(label)
        if type(v) is not int and (type(v) is not float or not math.isfinite(v)) or \
                type(t) is not int and (type(t) is not float or not math.isfinite(t)):
            return json.dumps({label: {"v": v, "t": t} for label, (v, t) in values.items()},
                              separators=(",", ":"))
        parts.append(f'{name}:{{"v":{v!r},"t":{t!r}}}')
    return "{" + ",".join(parts) + "}"


_by_node = operator.itemgetter(-1)  # a `_row` tuple's node
_LABELS: dict[str, str] = {}  # channel label -> as JSON text (few: the channel tables')


def is_int64(value: Any) -> bool:
    """An integer SQLite can hold (a status field past it is ignored, never an error)."""
    return type(value) is int and -2**63 <= value < 2**63


def json_safe(value: Any, depth: int = 0) -> Any:
    """A decoded control message as JSON can hold it: map keys as text, bytes as hex, at
    most 16 levels (deeper, or a value that contains itself, becomes a placeholder)."""
    if depth > 16:
        return "..."
    if isinstance(value, dict):
        return {k if isinstance(k, str) else repr(k): json_safe(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _safe_of(status: str | None) -> str | None:
    """Why the node was in safe mode in a stored status (JSON), or None."""
    try:
        safe = json.loads(status).get("safe") if status else None
    except (ValueError, AttributeError):
        return None
    return safe if isinstance(safe, str) else None


def node_row(row: dict[str, Any], *, missing: int = 0, gaps: list | None = None,
             alarms: list[str] | None = None) -> dict[str, Any]:
    """A registry row as the API shows it."""
    out = dict(row)
    out["group"] = out.pop("grp", None)
    out["registered"] = bool(out.get("registered"))
    if "lat" in out:
        lat, lon = out.pop("lat"), out.pop("lon")
        out["location"] = None if lat is None or lon is None else {"lat": lat, "lon": lon}
    if "public" in out:
        out["public"] = bool(out["public"])
    for key in ("sensors", "last_values", "status"):
        if out.get(key):
            out[key] = json.loads(out[key])
    out["missing"] = missing
    if gaps is not None:
        out["gaps"] = [[a, b] for a, b in gaps]
    out["alarms"] = alarms or []
    return out
