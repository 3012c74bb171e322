"""The `downlinks` table: config updates and commands sent through the API, and the answers.

    box.downlinks.sent(node, "config", request_id, payload.hex(), now, now + timeout)
    box.downlinks.acked(node, request_id, at, ok=True, reply=repr(ack))   # ingest, on `a`
    box.downlinks.rows(None, limit=50)                                   # newest first

On the outbox's connection, inside the caller's transaction (gateway/store/__init__.py).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from gateway.store import dicts


class DownlinkTable:
    """`downlinks` on one outbox connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __repr__(self) -> str:
        return "DownlinkTable()"

    def sent(self, node: str, kind: str, request_id: str, body: str, sent_at: float,
             deadline: float) -> None:
        """A downlink published to `node` (`body`: the CBOR sent, as hex)."""
        self._db.execute("INSERT INTO downlinks(node, kind, request_id, body, sent_at, "
                         "deadline) VALUES (?, ?, ?, ?, ?, ?)",
                         (node, kind, request_id, body, sent_at, deadline))

    def acked(self, node: str, request_id: str | None, at: float, *, ok: bool,
              reply: str) -> None:
        """The node's acknowledgement of request `request_id` (the first one counts)."""
        self._db.execute(
            "UPDATE downlinks SET acked_at=?, ok=?, reply=? WHERE node=? AND request_id=? "
            "AND acked_at IS NULL", (at, int(ok), reply, node, request_id))

    def rows(self, node: str | None, *, limit: int) -> list[dict[str, Any]]:
        """The downlinks sent (to `node`, or all), newest first."""
        where, args = ("", []) if node is None else ("WHERE node=?", [node])
        return dicts(self._db.execute(
            f"SELECT id, node, kind, request_id, body, sent_at, deadline, acked_at, ok, "
            f"reply FROM downlinks {where} ORDER BY id DESC LIMIT ?", (*args, limit)))
