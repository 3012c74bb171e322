"""The `file` sink: rotating JSONL files, one resolved SenML record per line (RFC 8428 section
4.6: no base fields, so each line stands alone; the embedded default).

    {"n":"node-01:temperature","u":"Cel","v":21.53,"t":1763712000,"node":"node-01","seq":1042,"rid":"node-01/1042/temperature"}

Readings go to `path`, alarm events to `events_path`. When a file reaches `rotate_bytes` it is
renamed `path.1` (older ones shift up to `path.{keep}`, the oldest is deleted) before the next
batch is written; `rotate_bytes = 0` never rotates.

Exactly once in the file: a batch is written with one `write` and synced before the outbox
lets it go. If the gateway dies between the two, the outbox hands the same batch back after the
restart; the sink then looks at the end of the file, and writes only the lines of the batch
that are not already there (a torn last line is cut off first). Record ids (`rid`) are unique,
so the lines at the end of the file say exactly how far the batch got.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from gateway.errors import DeliveryFailed, SinkError
from gateway.logfmt import kv
from gateway.outbox import Batch, Item
from gateway.sinks.base import Sink, convert_each, resolved_format, senml_records
from gateway.wire import SENML_RELATIVE_LIMIT, Resolved, senml_value

log = logging.getLogger("meterlink.gateway.sink.file")

TAIL_CHUNK = 1 << 16


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode_line(record: dict[str, Any]) -> bytes:
    return (_encode(record) + "\n").encode()


def reading_lines(item: Item) -> list[bytes]:
    """The JSONL lines of a reading item: `encode_line` of each `senml_records` record, byte
    for byte. The records the resolver made (`wire.Resolved`) are formatted straight from
    their wire values with each channel's `resolved_format` (this is most of the sink's work per
    reading); anything else goes through `encode_line`."""
    node, seq, body = item.node, item.seq, item.body
    if type(body) is Resolved and type(seq) is int and body.t >= SENML_RELATIVE_LIMIT:
        tail = f',"t":{body.t!r},"node":"{node}","seq":{seq},"rid":"{node}/{seq}/'
        names = body.names
        out = []
        for key, value in body.values.items():
            f = resolved_format(node, names[key])
            if f is None:
                break
            v = senml_value(value, f.scale)
            if f.offset:
                v += f.offset
            out.append(f'{f.line}{v!r}{tail}{f.channel}"}}\n'.encode())
        else:
            return out
    return [encode_line(r) for r in senml_records(item)]


class JsonlFile:
    """One append-only JSONL file with torn-end repair, resume-aware append, and rotation."""

    def __init__(self, path: Path, *, rotate_bytes: int, keep: int) -> None:
        self.path = Path(path)
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self._checked = False

    def __repr__(self) -> str:
        return f"JsonlFile({str(self.path)!r})"

    def _repair(self) -> None:
        """Cuts a torn last line (a write the crash interrupted)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0:
            return
        with open(self.path, "r+b") as fp:
            pos = size
            while pos > 0:
                step = min(TAIL_CHUNK, pos)
                fp.seek(pos - step)
                chunk = fp.read(step)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    good = pos - step + cut + 1
                    break
                pos -= step
            else:
                good = 0
            if good < size:
                fp.truncate(good)
                os.fsync(fp.fileno())
                log.warning("sink_repaired", extra=kv(path=str(self.path),
                                                      dropped_bytes=size - good))

    def _already_written(self, lines: list[bytes]) -> int:
        """How many leading lines of `lines` already end the file."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        want = sum(len(line) for line in lines)
        with open(self.path, "rb") as fp:
            fp.seek(max(0, size - want))
            tail = fp.read()
        last = tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1:]
        for k in range(len(lines), 0, -1):
            if lines[k - 1] == last and tail.endswith(b"".join(lines[:k])):
                return k
        return 0

    def _rotate(self) -> None:
        for n in range(self.keep, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{n - 1}") if n > 1 else self.path
            dst = self.path.with_name(f"{self.path.name}.{n}")
            if src.exists():
                os.replace(src, dst)
        log.info("sink_rotated", extra=kv(path=str(self.path), keep=self.keep))

    def append(self, lines: list[bytes], *, maybe_written: bool) -> int:
        """Appends `lines` (synced); with `maybe_written`, skips those already at the end.

        Returns the number of lines written. OSError when the file cannot be written.
        """
        if not lines:
            return 0
        if not self._checked:
            self._repair()
            self._checked = True
            maybe_written = True
        skip = self._already_written(lines) if maybe_written else 0
        if skip:
            log.info("sink_resumed", extra=kv(path=str(self.path), already=skip,
                                              writing=len(lines) - skip))
        rest = lines[skip:]
        if not rest:
            return 0
        if not skip and self.rotate_bytes and self.path.exists() \
                and self.path.stat().st_size >= self.rotate_bytes:
            self._rotate()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        with open(self.path, "ab") as fp:
            fp.write(b"".join(rest))
            fp.flush()
            os.fsync(fp.fileno())
        if created:
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return len(rest)


class FileSink(Sink):
    """Readings to `path`, events to `events_path`, both rotating JSONL."""

    name = "file"

    def __init__(self, config) -> None:
        super().__init__(config)
        opts = config.options
        self.readings = JsonlFile(opts["path"], rotate_bytes=opts["rotate_bytes"],
                                  keep=opts["keep"])
        self.events = JsonlFile(opts["events_path"], rotate_bytes=opts["rotate_bytes"],
                                keep=opts["keep"])
        self._suspect = True  # the last attempt may have written part of a batch

    def open(self) -> None:
        for f in (self.readings, self.events):
            if f.path.exists() and not f.path.is_file():
                raise SinkError(f"cannot open sink {f.path}: not a regular file")
            try:
                f.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SinkError(f"cannot open sink {f.path}: {exc.strerror or exc}") from exc

    @staticmethod
    def convert(item: Item) -> list[bytes]:
        """The JSONL lines of one item."""
        if item.kind == "reading" and type(item.seq) is int:
            return reading_lines(item)
        return [encode_line(r) for r in senml_records(item)]

    def deliver(self, batch: Batch) -> None:
        readings: list[bytes] = []
        events: list[bytes] = []
        for item, lines in zip(batch.items, convert_each(batch, self.convert)):
            (readings if item.kind == "reading" else events).extend(lines)
        maybe = self._suspect or batch.attempts > 0
        self._suspect = True
        try:
            self.readings.append(readings, maybe_written=maybe)
            self.events.append(events, maybe_written=maybe)
        except OSError as exc:
            raise DeliveryFailed(f"cannot write {self.readings.path}: "
                                 f"{exc.strerror or exc}") from exc
        self._suspect = False
