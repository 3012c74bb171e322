"""The JSONL sink: accepted readings as SenML records, one JSON object per line.

    {"n":"node-01:temperature","u":"Cel","v":21.53,"t":1763712000,"node":"node-01","seq":1042}

`node` and `seq` identify the reading record a line came from. The sink is also where
duplicates are recognised: it knows every `(node, seq)` it holds, rebuilt from the file when
it opens, so a restarted gateway does not write a redelivered message twice. (The SQLite outbox
replaces this class behind the same `open`/`store`/`close` seam.)

Durability: `store()` writes all lines of one message with one `write`, then `flush` and
`fsync`, and returns only then; the gateway acknowledges the message to the broker after that.
A crash can therefore only tear the last write. On open, a partial last line is cut off; and
because the lines of a record already on disk would make a redelivered record look like a
duplicate, the records at the end of the file keep their channel names, and a redelivered
record among them gets the lines it is missing written instead of being dropped.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from gateway.errors import SinkError
from gateway.logfmt import kv

log = logging.getLogger("meterlink.gateway.sink")


class StoreResult(NamedTuple):
    """What one `store()` did: records written, records dropped as duplicates, lines written."""

    stored: int
    duplicates: int
    lines: int


class JsonlSink:
    """Append-only JSONL file of SenML records with dedup by `(node, seq)`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fp: Any = None
        self._seen: set[tuple[str, int]] = set()
        self._tail: dict[tuple[str, int], set[str]] = {}
        self._broken: str | None = None

    def __repr__(self) -> str:
        state = "open" if self._fp else "closed"
        return f"JsonlSink({str(self.path)!r}, {state}, records={len(self._seen)})"

    def __enter__(self) -> "JsonlSink":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def record_count(self) -> int:
        """Distinct `(node, seq)` records held."""
        return len(self._seen)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._seen

    def open(self) -> None:
        """Scans the existing file (repairing a torn end), then opens it for appending."""
        try:
            created = not self.path.exists()
            if not created:
                if not self.path.is_file():
                    raise SinkError(f"cannot open sink {self.path}: not a regular file")
                self._scan()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fp = open(self.path, "ab")
            if created:
                _fsync_dir(self.path.parent)
        except OSError as exc:
            raise SinkError(f"cannot open sink {self.path}: {exc.strerror or exc}") from exc
        log.info("sink_open", extra=kv(path=str(self.path), records=len(self._seen)))

    def _scan(self) -> None:
        good_end = 0
        bad_lines = 0
        run_node: str | None = None
        run_seq = -1
        run: dict[tuple[str, int], set[str]] = {}
        with open(self.path, "rb") as fp:
            pos = 0
            for number, raw in enumerate(fp, 1):
                end = pos + len(raw)
                item = _parse_line(raw) if raw.endswith(b"\n") else None
                pos = end
                if item is None:
                    bad_lines += 1
                    continue
                node, seq, name = item
                node = sys.intern(node)
                key = (node, seq)
                self._seen.add(key)
                if node != run_node or seq not in (run_seq, run_seq + 1):
                    run = {}
                run.setdefault(key, set()).add(name)
                run_node, run_seq = node, seq
                good_end = end
                if bad_lines:
                    log.warning("sink_bad_lines", extra=kv(path=str(self.path), before_line=number,
                                                           count=bad_lines))
                    bad_lines = 0
            size = pos
        self._tail = run
        if good_end < size:
            # Torn or unreadable end: the message it came from was never acknowledged.
            with open(self.path, "r+b") as fp:
                fp.truncate(good_end)
                os.fsync(fp.fileno())
            log.warning("sink_repaired", extra=kv(path=str(self.path),
                                                  dropped_bytes=size - good_end,
                                                  kept_bytes=good_end))

    def store(self, node_id: str,
              records: Sequence[tuple[int, Sequence[Mapping[str, Any]]]]) -> StoreResult:
        """Writes the SenML lines of each `(seq, senml)` record not already held, durably.

        Returns only once the lines are synced to disk; SinkError if they could not be.
        """
        if self._fp is None:
            raise SinkError(f"sink {self.path} is not open")
        if self._broken:
            raise SinkError(f"sink {self.path} failed earlier: {self._broken}")
        lines: list[str] = []
        new_keys: list[tuple[str, int]] = []
        completed: dict[tuple[str, int], list[str]] = {}
        duplicates = 0
        for seq, senml in records:
            key = (node_id, seq)
            if key in self._seen:
                have = self._tail.get(key)
                missing = [r for r in senml if have is not None and r["n"] not in have]
                if not missing:
                    duplicates += 1
                    continue
                senml = missing
                completed[key] = [r["n"] for r in missing]
            else:
                new_keys.append(key)
            for r in senml:
                lines.append(json.dumps({**r, "node": node_id, "seq": seq},
                                        separators=(",", ":"), allow_nan=False) + "\n")
        if lines:
            data = "".join(lines).encode("utf-8")
            try:
                self._fp.write(data)
                self._fp.flush()
                os.fsync(self._fp.fileno())
            except OSError as exc:
                self._broken = exc.strerror or str(exc)
                raise SinkError(f"cannot write sink {self.path}: {self._broken}") from exc
            node_id = sys.intern(node_id)
            self._seen.update((node_id, seq) for _, seq in new_keys)
            for key, names in completed.items():
                self._tail[key].update(names)
                log.warning("sink_record_completed", extra=kv(node=key[0], seq=key[1],
                                                              lines=len(names)))
        return StoreResult(len(new_keys) + len(completed), duplicates, len(lines))

    def close(self) -> None:
        if self._fp is not None:
            try:
                self._fp.close()
            except OSError as exc:
                log.error("sink_close_failed", extra=kv(path=str(self.path), error=str(exc)))
            self._fp = None


def _parse_line(raw: bytes) -> tuple[str, int, str] | None:
    """`(node, seq, n)` of a sink line, or None when it is not one."""
    try:
        item = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(item, dict):
        return None
    node, seq, name = item.get("node"), item.get("seq"), item.get("n")
    if isinstance(node, str) and type(seq) is int and isinstance(name, str):
        return node, seq, name
    return None


def _fsync_dir(path: Path) -> None:
    """Makes a new directory entry durable (the file itself is synced on every write)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
