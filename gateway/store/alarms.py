"""The alarms' tables: `alarms` (per node and alarm, active or not) and `alarm_log` (a row per
raise, closed when it clears, acknowledged by an operator).

    box.alarms.raised(node, "leak", now, "alarms channel = 1", keep=1000)
    box.alarms.cleared(node, "leak", now)
    box.alarms.log("attention", None, limit=50, since=now - 7 * 86400)

When an alarm is raised or cleared is the registry's business (gateway/registry.py); this
class only reads and writes rows, inside the caller's transaction, on the outbox's connection
(see gateway/store/__init__.py for why).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from gateway.store import dicts

# `log(state=...)`: which rows of the alarm log
LOG_STATES = {
    "open": "cleared_at IS NULL",  # raised and not cleared yet
    "unacked": "acked_at IS NULL",  # no operator acknowledged it (active or cleared)
    "attention": "(cleared_at IS NULL OR acked_at IS NULL)",  # either: the dashboard's first list
    "recent": "raised_at >= :since",  # raised since `since`
    "all": "1",
}
LOG_COLUMNS = ("id, node, alarm, raised_at, cleared_at, detail, acked_at, acked_by, "
               "ack_note")


class AlarmTable:
    """`alarms` and `alarm_log` on one outbox connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __repr__(self) -> str:
        return "AlarmTable()"

    # ---- the registry's (inside the ingest transaction) -------------------------------------

    def states(self) -> dict[tuple[str, str], bool]:
        """(node, alarm) -> active, for every alarm ever raised."""
        return {(n, a): bool(on) for n, a, on in self._db.execute(
            "SELECT node, alarm, active FROM alarms")}

    def raised(self, node: str, alarm: str, now: float, detail: str, *, keep: int) -> None:
        """The alarm is active from `now`: its row, and a new row of the log, keeping the
        newest `keep` cleared rows of the node (bounded: a flapping alarm cannot grow the
        table without end; rare, raises only)."""
        db = self._db
        db.execute(
            "INSERT INTO alarms(node, alarm, active, raised_at, detail) VALUES (?,?,1,?,?) "
            "ON CONFLICT(node, alarm) DO UPDATE SET active=1, raised_at=excluded.raised_at, "
            "cleared_at=NULL, detail=excluded.detail", (node, alarm, now, detail))
        db.execute("INSERT INTO alarm_log(node, alarm, raised_at, detail) VALUES (?,?,?,?)",
                   (node, alarm, now, detail))
        db.execute(
            "DELETE FROM alarm_log WHERE id IN (SELECT id FROM alarm_log WHERE node=? AND "
            "cleared_at IS NOT NULL ORDER BY id DESC LIMIT -1 OFFSET ?)", (node, keep))

    def cleared(self, node: str, alarm: str, now: float) -> None:
        """The alarm cleared at `now`: its row, and the open row of the log closed."""
        self._db.execute("UPDATE alarms SET active=0, cleared_at=? WHERE node=? AND alarm=?",
                         (now, node, alarm))
        self._db.execute("UPDATE alarm_log SET cleared_at=? WHERE node=? AND alarm=? "
                         "AND cleared_at IS NULL", (now, node, alarm))

    def delete_node(self, node: str) -> None:
        """Every alarm of a deleted node, and its log."""
        self._db.execute("DELETE FROM alarms WHERE node=?", (node,))
        self._db.execute("DELETE FROM alarm_log WHERE node=?", (node,))

    # ---- the API's ---------------------------------------------------------------------------

    def active(self) -> list[dict[str, Any]]:
        """[{"node", "alarm", "raised_at", "detail"}] of the active alarms, by node and alarm."""
        return dicts(self._db.execute("SELECT node, alarm, raised_at, detail FROM alarms "
                                      "WHERE active=1 ORDER BY node, alarm"))

    def active_by_node(self) -> dict[str, list[str]]:
        """node -> its active alarms, by name."""
        out: dict[str, list[str]] = {}
        for node, alarm in self._db.execute("SELECT node, alarm FROM alarms WHERE active=1 "
                                            "ORDER BY node, alarm"):
            out.setdefault(node, []).append(alarm)
        return out

    def active_counts(self) -> list[tuple[str, int]]:
        """(alarm, how many nodes have it active)."""
        return self._db.execute("SELECT alarm, COUNT(*) FROM alarms WHERE active=1 "
                                "GROUP BY alarm").fetchall()

    def log(self, state: str, node: str | None, *, limit: int,
            since: float) -> list[dict[str, Any]]:
        """Rows of the alarm log (`LOG_COLUMNS`), newest first: `state` one of `LOG_STATES`
        (`recent`: raised at or after `since`), of one node or all."""
        where = LOG_STATES[state] + ("" if node is None else " AND node=:node")
        return dicts(self._db.execute(
            f"SELECT {LOG_COLUMNS} FROM alarm_log WHERE {where} "
            f"ORDER BY raised_at DESC, id DESC LIMIT :limit",
            {"since": since, "node": node, "limit": limit}))

    def acknowledge(self, alarm_id: int, now: float, by: str,
                    note: str | None) -> tuple[bool, dict[str, Any] | None]:
        """Acknowledges row `alarm_id` of the log unless it was acknowledged before (the
        first acknowledgement stands): (done now, the row after it, or None when there is no
        such row). Inside the caller's transaction."""
        done = self._db.execute(
            "UPDATE alarm_log SET acked_at=?, acked_by=?, ack_note=? WHERE id=? AND "
            "acked_at IS NULL", (now, by, note, alarm_id)).rowcount
        rows = dicts(self._db.execute(f"SELECT {LOG_COLUMNS} FROM alarm_log WHERE id=?",
                                      (alarm_id,)))
        return bool(done), (rows[0] if rows else None)
