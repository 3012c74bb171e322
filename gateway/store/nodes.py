"""The registry's tables: `nodes` (one row per node) and `node_log` (its status history).

    box.nodes.first_sight(node, now)    # the row made on first sight, its hot columns
    box.nodes.write_hot_many(rows)      # the registry's hot state (Registry.flush, compact)
    box.nodes.register(node, board=..., sensors=[...], interval_s=60)

What is kept in them and when is the registry's business (gateway/registry.py); this class
only reads and writes rows, inside the caller's transaction. It is made by the `Outbox` on its
own connection (see gateway/store/__init__.py for why).
"""

from __future__ import annotations

import json
import logging
import marshal
import sqlite3
from typing import Any

from gateway.logfmt import kv
from gateway.store import dicts

log = logging.getLogger("meterlink.gateway.registry")

# the registry row as the API shows it (`registry.node_row`), in this order
NODE_COLUMNS = ("node", "registered", "board", "sensors", "grp", "interval_s", "first_seen",
                "last_seen", "last_reading", "state", "fw", "boot", "sleep", "battery_mv",
                "rssi", "q", "qd", "iv", "cv", "min_seq", "max_seq", "accepted", "duplicates",
                "last_values", "status", "retired_at", "retired_note", "lat", "lon",
                "district", "public")
# the columns `first_sight` returns, in this order (the registry's cached hot state)
HOT_COLUMNS = ("last_values", "battery_mv", "rssi", "min_seq", "max_seq", "state", "fw",
               "boot", "status")

_SELECT = f"SELECT {', '.join(NODE_COLUMNS)} FROM nodes"
_WRITE_HOT = ("UPDATE nodes SET last_seen=MAX(COALESCE(last_seen, 0), ?), "
              "last_reading=COALESCE(?, last_reading), last_values=?, battery_mv=?, rssi=?, "
              "min_seq=?, max_seq=?, accepted=accepted+?, duplicates=duplicates+? "
              "WHERE node=?")

# the dedup range only widens (a newer row may have been written since the entry)
_WRITE_ENTRY = ("UPDATE nodes SET last_seen=MAX(COALESCE(last_seen, 0), :seen), "
                "last_reading=COALESCE(:reading, last_reading), battery_mv=:battery, "
                "rssi=:rssi, min_seq=MIN(COALESCE(min_seq, :lo), COALESCE(:lo, min_seq)), "
                "max_seq=MAX(COALESCE(max_seq, :hi), COALESCE(:hi, max_seq)), "
                "accepted=accepted+:accepted, "
                "duplicates=duplicates+:duplicates WHERE node=:node")


class NodeTable:
    """`nodes` and `node_log` on one outbox connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __repr__(self) -> str:
        return "NodeTable()"

    # ---- the ingest thread's (inside its transaction) ---------------------------------------

    def first_sight(self, node: str, now: float) -> tuple[bool, bool, tuple]:
        """Makes the node's row if there is none: (new row, registered before it was first
        seen, its `HOT_COLUMNS`). A node registered before it was heard of (provision) is
        first seen now."""
        db = self._db
        new = db.execute("INSERT OR IGNORE INTO nodes(node, first_seen, last_seen) "
                         "VALUES (?, ?, ?)", (node, now, now)).rowcount
        registered = db.execute("UPDATE nodes SET first_seen=? WHERE node=? AND "
                                "first_seen IS NULL", (now, node)).rowcount
        row = db.execute("SELECT last_values, battery_mv, rssi, min_seq, max_seq, "
                         "state, fw, boot, status FROM nodes WHERE node=?", (node,)).fetchone()
        return bool(new), bool(registered), row

    def write_hot_many(self, rows: list[tuple]) -> None:
        """The registry's cached hot state of nodes, one call: (last_seen, last_reading,
        values (JSON text), battery_mv, rssi, min_seq, max_seq, accepted, duplicates, node)
        each; `accepted` and `duplicates` are added to the counts, `last_seen` only moves
        forward."""
        self._db.executemany(_WRITE_HOT, rows)

    def write_journal(self, entries: dict[str, tuple]) -> None:
        """One batch's hot state of the nodes it touched, `{node: (min_seq, max_seq,
        last_seen, last_reading, battery_mv, rssi, accepted, duplicates)}` (the last two
        added to the counts): one row, however many nodes.

        The row is `marshal` bytes, not JSON: a batch of 256 nodes took 290 us to encode as
        JSON and takes 50 us so (floats are the cost), on the ingest path of a large fleet.
        The journal lives a few seconds (`Registry.compact`) and only this class reads it,
        with the same Python unless the gateway crashed and was upgraded before its restart
        (marshal reads what older Pythons wrote); it holds ints, floats, None and text only,
        and `journal()` checks that. Rows written as JSON text by older versions are read too.
        """
        self._db.execute("INSERT INTO node_journal(body) VALUES (?)", (marshal.dumps(entries),))

    def journal(self) -> dict[str, list]:
        """The journal merged, oldest row first: per node its latest values, the counts
        summed. A row that cannot be read is skipped, with a log line (SinkError would
        stop the gateway for good: the row never changes)."""
        out: dict[str, list] = {}
        for rowid, body in self._db.execute("SELECT id, body FROM node_journal ORDER BY id"):
            try:
                entries = _journal_row(body)
            except ValueError as exc:
                log.error("journal_row_unreadable", extra=kv(id=rowid, error=str(exc)))
                continue
            for node, entry in entries.items():
                old = out.get(node)
                if old is not None:
                    entry[6] += old[6]
                    entry[7] += old[7]
                    if entry[3] is None:
                        entry[3] = old[3]
                out[node] = entry
        return out

    def clear_journal(self) -> None:
        self._db.execute("DELETE FROM node_journal")

    def write_entry(self, node: str, entry: list) -> None:
        """A journal entry into the node's row (its last values stay as they are)."""
        lo, hi, seen, reading, battery, rssi, accepted, duplicates = entry
        self._db.execute(_WRITE_ENTRY, {"seen": seen, "reading": reading, "battery": battery,
                                        "rssi": rssi, "lo": lo, "hi": hi,
                                        "accepted": accepted, "duplicates": duplicates,
                                        "node": node})

    def set_status(self, node: str, columns: dict[str, Any]) -> None:
        """A status message's columns (names from the registry's `STATUS_FIELDS` and
        `state`, `sleep`, `last_seen`, `status`)."""
        assign = ", ".join(f"{c}=?" for c in columns)
        self._db.execute(f"UPDATE nodes SET {assign} WHERE node=?", (*columns.values(), node))

    def set_cv(self, node: str, cv: int) -> None:
        """The config version a node acknowledged."""
        self._db.execute("UPDATE nodes SET cv=? WHERE node=?", (cv, node))

    def qd(self, node: str) -> int | None:
        """The node's last reported count of dropped records (status `qd`)."""
        return self._db.execute("SELECT qd FROM nodes WHERE node=?", (node,)).fetchone()[0]

    def retired(self) -> dict[str, float]:
        """Retired node -> when."""
        return dict(self._db.execute(
            "SELECT node, retired_at FROM nodes WHERE retired_at IS NOT NULL"))

    def retired_at(self, node: str) -> float | None:
        """When the node was retired (None: in service); KeyError when it is not known."""
        row = self._db.execute("SELECT retired_at FROM nodes WHERE node=?", (node,)).fetchone()
        if row is None:
            raise KeyError(node)
        return row[0]

    def retire(self, node: str, now: float, note: str | None) -> None:
        self._db.execute("UPDATE nodes SET retired_at=?, retired_note=?, state='retired' "
                         "WHERE node=?", (now, note, node))

    def reinstate(self, node: str, now: float) -> None:
        self._db.execute("UPDATE nodes SET retired_at=NULL, retired_note=NULL, state=NULL, "
                         "last_seen=? WHERE node=?", (now, node))

    def seq_range(self, node: str) -> tuple[int | None, int | None]:
        """(lowest, highest) seq accepted from the node; KeyError when it is not known."""
        row = self._db.execute("SELECT min_seq, max_seq FROM nodes WHERE node=?",
                               (node,)).fetchone()
        if row is None:
            raise KeyError(node)
        return row[0], row[1]

    def delete(self, node: str) -> None:
        """The node's row and its status history (its alarms are `AlarmTable.delete_node`)."""
        self._db.execute("DELETE FROM nodes WHERE node=?", (node,))
        self._db.execute("DELETE FROM node_log WHERE node=?", (node,))

    def gone(self, before: float) -> list[tuple[str, float, str, str | None]]:
        """(node, last_seen, state, status) of the nodes in service that went offline or
        announced a restart at or before `before`."""
        return self._db.execute(
            "SELECT node, last_seen, state, status FROM nodes WHERE state IN "
            "('offline', 'restarting') AND last_seen <= ? AND retired_at IS NULL",
            (before,)).fetchall()

    def intervals(self) -> list[tuple[str, float, int, int | None, str | None]]:
        """(node, last_seen, interval, sleep, state) of the nodes in service with a known
        interval (the node's `iv`, else the registered `interval_s`)."""
        return self._db.execute(
            "SELECT node, last_seen, COALESCE(iv, interval_s), sleep, state FROM nodes "
            "WHERE COALESCE(iv, interval_s) IS NOT NULL AND last_seen IS NOT NULL "
            "AND retired_at IS NULL").fetchall()

    # ---- status history ---------------------------------------------------------------------

    def log(self, node: str, at: float, event: str, detail: str | None, *, keep: int) -> None:
        """A `node_log` row, keeping the newest `keep` of the node (rare: changes only, so
        the pruning query, which walks the node's index, costs nothing that matters)."""
        db = self._db
        db.execute("INSERT INTO node_log(node, at, event, detail) VALUES (?, ?, ?, ?)",
                   (node, at, event, detail))
        db.execute("DELETE FROM node_log WHERE id IN (SELECT id FROM node_log WHERE node=? "
                   "ORDER BY at DESC, id DESC LIMIT -1 OFFSET ?)", (node, keep))

    def events(self, node: str, limit: int) -> list[dict[str, Any]]:
        """The node's status history, newest first: [{"at", "event", "detail"}, ...]."""
        return [{"at": at, "event": event, "detail": detail}
                for at, event, detail in self._db.execute(
                    "SELECT at, event, detail FROM node_log WHERE node=? "
                    "ORDER BY at DESC, id DESC LIMIT ?", (node, limit))]

    # ---- the API's ---------------------------------------------------------------------------

    def exists(self, node: str) -> bool:
        return self._db.execute("SELECT 1 FROM nodes WHERE node=?", (node,)).fetchone() \
            is not None

    def is_registered(self, node: str) -> bool:
        row = self._db.execute("SELECT registered FROM nodes WHERE node=?",
                               (node,)).fetchone()
        return bool(row and row[0])

    def row(self, node: str) -> dict[str, Any] | None:
        """The node's `NODE_COLUMNS`, or None."""
        rows = dicts(self._db.execute(f"{_SELECT} WHERE node=?", (node,)))
        return rows[0] if rows else None

    def rows(self, *, include_retired: bool = False, limit: int | None = None,
             after: str | None = None, group: str | None = None, district: str | None = None,
             state: str | None = None) -> list[dict[str, Any]]:
        """The nodes' `NODE_COLUMNS` by id, but the gateway's own (`-gateway`) and, unless
        `include_retired`, the retired ones: all, or `limit` of them after node id `after`
        (a page), of one `group`, `district` or `state`."""
        where, args = ["node NOT LIKE '-%'"], []
        if not include_retired:
            where.append("retired_at IS NULL")
        for column, value in (("grp", group), ("district", district), ("state", state)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        if after is not None:
            where.append("node>?")
            args.append(after)
        tail = ""
        if limit is not None:
            tail = " LIMIT ?"
            args.append(limit)
        return dicts(self._db.execute(f"{_SELECT} WHERE {' AND '.join(where)} "
                                      f"ORDER BY node{tail}", args))

    def public_rows(self) -> list[dict[str, Any]]:
        """node, district, sensors and last_values (JSON text) of the nodes registered as
        public and in service."""
        return dicts(self._db.execute(
            "SELECT node, district, sensors, last_values FROM nodes WHERE public=1 AND "
            "retired_at IS NULL AND node NOT LIKE '-%' ORDER BY node"))

    def places(self) -> dict[str, tuple[str | None, str | None]]:
        """node -> (group, district), of the nodes that have either (the rules' scopes)."""
        return {r[0]: (r[1], r[2]) for r in self._db.execute(
            "SELECT node, grp, district FROM nodes WHERE grp IS NOT NULL "
            "OR district IS NOT NULL")}

    def in_group(self, group: str) -> list[str]:
        """The nodes of a downlink group, by id."""
        return [r[0] for r in self._db.execute("SELECT node FROM nodes WHERE grp=? "
                                               "ORDER BY node", (group,))]

    def state_counts(self) -> list[tuple[str, int]]:
        """(state, nodes) over the fleet (`unknown` for a node never heard of)."""
        return self._db.execute("SELECT COALESCE(state, 'unknown'), COUNT(*) FROM nodes "
                                "WHERE node NOT LIKE '-%' GROUP BY 1").fetchall()

    def register(self, node: str, *, board: str, sensors: list, interval_s: int,
                 group: str | None = None, lat: float | None = None, lon: float | None = None,
                 district: str | None = None, public: bool = False) -> bool:
        """Registers the node (a new row, or the registration of an existing one replaced);
        True when it was registered before. Inside the caller's transaction."""
        before = self._db.execute("SELECT registered FROM nodes WHERE node=?",
                                  (node,)).fetchone()
        self._db.execute(
            "INSERT INTO nodes(node, registered, board, sensors, grp, interval_s, lat, lon, "
            "district, public) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(node) DO "
            "UPDATE SET registered=1, board=excluded.board, sensors=excluded.sensors, "
            "grp=excluded.grp, interval_s=excluded.interval_s, lat=excluded.lat, "
            "lon=excluded.lon, district=excluded.district, public=excluded.public",
            (node, board, json.dumps(sensors), group, interval_s, lat, lon, district,
             int(bool(public))))
        return bool(before and before[0])


_ENTRY_TYPES = (int, float, type(None))


def _journal_row(body: bytes | str) -> dict[str, list]:
    """One `node_journal` row as `{node: entry}` (lists); ValueError naming what is wrong."""
    try:
        entries = json.loads(body) if isinstance(body, str) else marshal.loads(body)
    except (ValueError, EOFError, TypeError) as exc:
        raise ValueError(f"not a journal row: {exc}") from None
    if not isinstance(entries, dict):
        raise ValueError(f"not a journal row: a {type(entries).__name__}")
    out = {}
    for node, entry in entries.items():
        if not (isinstance(node, str) and isinstance(entry, (list, tuple)) and len(entry) == 8
                and all(type(v) in _ENTRY_TYPES for v in entry)):
            raise ValueError(f"entry of node {node!r} is not 8 numbers")
        out[node] = list(entry)
    return out
