"""The outbox's tables besides the delivery queue: one small class per table group.

    box = Outbox(path)                        # makes one of each on its own connection
    box.nodes.is_registered("w1")             # nodes, node_log      (store/nodes.py)
    box.alarms.active()                       # alarms, alarm_log    (store/alarms.py)
    box.downlinks.rows(None, limit=50)        # downlinks            (store/downlinks.py)

Every statement on the outbox's database is in `gateway/outbox.py` (items, pending, batches,
gaps, quarantine, dead letters, transactions and the schema) or in this package; the modules
above call methods and never see SQL (tests/test_gw_imports.py checks it).

Why the tables live on the outbox's connection and not in a module of their own each: the
registry's writes must be part of the ingest transaction (a reading, the node's row, the alarm
it raises and the event for the sinks commit together, one commit per batch), and a sqlite3
transaction belongs to one connection. So an `Outbox` is the connection, and each table class
is made by it with that connection (`box.nodes`, `box.alarms`, `box.downlinks`): whoever holds
the outbox holds its tables, inside whatever transaction is open. Why not in outbox.py: that
module is the delivery queue and dedup, the hot path; the registry's and the API's statements
are another job, and grouped by table they read as what the registry and the API may do.

The statements are written out as constants, never built per call (except the status UPDATE,
whose columns are the fields a status carries): sqlite3 caches prepared statements by their
text, so a statement on the ingest path is prepared once per connection.
"""

from __future__ import annotations

import sqlite3
from typing import Any


def dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """The rows of `cursor` as dicts keyed by column name."""
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
