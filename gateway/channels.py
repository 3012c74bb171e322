"""The fleet-wide channel table: ids, names, SenML units and decimal scales.

The table is data (`gateway/channels.json`, shipped as package data) and the one place channels
are defined; `docs/wire-format.md` carries a rendering of it between the `channel-table`
markers, which `tests/test_channels.py` compares with `render_markdown()` so the page cannot
drift from the data.

A channel key on the wire packs a channel id and an instance:

    key = channel_id + 64 * instance        channel_id 1..63, instance 0..15

    >>> table = default_table()
    >>> channel, instance = table.lookup(65)
    >>> channel.name, instance
    ('temperature', 1)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from gateway.errors import ChannelTableError

TABLE_PATH = Path(__file__).with_name("channels.json")

KEY_BASE = 64
MAX_CHANNEL_ID = 63
MAX_INSTANCE = 15
MAX_KEY = MAX_CHANNEL_ID + KEY_BASE * MAX_INSTANCE

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Channel:
    """One row of the table. The SenML value is `value * 10**scale` in `unit`."""

    id: int
    name: str
    unit: str
    scale: int
    description: str


def split_key(key: int) -> tuple[int, int]:
    """`(channel_id, instance)` of a wire key (no range check)."""
    return key % KEY_BASE, key // KEY_BASE


def make_key(channel_id: int, instance: int = 0) -> int:
    """The wire key of `channel_id` and `instance`."""
    return channel_id + KEY_BASE * instance


class ChannelTable:
    """The channels by id, with `version` of the table they come from."""

    def __init__(self, channels: Iterable[Channel], *, version: int) -> None:
        self.version = version
        self._by_id: dict[int, Channel] = {}
        names: set[str] = set()
        for ch in channels:
            if ch.id in self._by_id:
                raise ChannelTableError(f"channel id {ch.id} is defined twice")
            if ch.name in names:
                raise ChannelTableError(f"channel name {ch.name!r} is defined twice")
            self._by_id[ch.id] = ch
            names.add(ch.name)
        # every valid wire key (`key_problem` None): what the decoder checks a key against
        self.keys = frozenset(make_key(cid, inst) for cid in self._by_id
                              for inst in range(MAX_INSTANCE + 1))

    def __repr__(self) -> str:
        return f"ChannelTable(version={self.version}, channels={len(self._by_id)})"

    def __iter__(self) -> Iterator[Channel]:
        return iter(sorted(self._by_id.values(), key=lambda ch: ch.id))

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, channel_id: int) -> Channel | None:
        """The channel with `channel_id`, or None."""
        return self._by_id.get(channel_id)

    def key_problem(self, key: int) -> str | None:
        """Why `key` is not a valid channel key of this table, or None when it is."""
        channel_id, instance = split_key(key)
        if key < 1:
            return f"channel key {key} is not a channel key (keys start at 1)"
        if instance > MAX_INSTANCE:
            return (f"channel key {key} is channel {channel_id} instance {instance}: "
                    f"instance must be 0-{MAX_INSTANCE}")
        if channel_id == 0:
            return f"channel key {key} has channel id 0 (instance {instance}): ids start at 1"
        if channel_id not in self._by_id:
            return (f"channel key {key}: unknown channel id {channel_id} "
                    f"(channel table version {self.version})")
        return None

    def lookup(self, key: int) -> tuple[Channel, int]:
        """`(channel, instance)` for a wire key; KeyError naming the problem if invalid."""
        problem = self.key_problem(key)
        if problem:
            raise KeyError(problem)
        channel_id, instance = split_key(key)
        return self._by_id[channel_id], instance

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ChannelTable":
        """Builds the table from the parsed `channels.json` document, checking every row."""
        version = data.get("version")
        if type(version) is not int or version < 1:
            raise ChannelTableError(f"version must be an integer >= 1: got {version!r}")
        rows = data.get("channels")
        if not isinstance(rows, list) or not rows:
            raise ChannelTableError("channels must be a non-empty list")
        channels = []
        for i, row in enumerate(rows):
            where = f"channels[{i}]"
            if not isinstance(row, dict):
                raise ChannelTableError(f"{where} must be an object: got {row!r}")
            extra = set(row) - {"id", "name", "unit", "scale", "description"}
            if extra:
                raise ChannelTableError(f"{where} has unknown fields: {sorted(extra)}")
            cid, name, unit = row.get("id"), row.get("name"), row.get("unit")
            scale, description = row.get("scale"), row.get("description")
            if type(cid) is not int or not 1 <= cid <= MAX_CHANNEL_ID:
                raise ChannelTableError(f"{where}.id must be an integer 1-63: got {cid!r}")
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise ChannelTableError(f"{where}.name must be a snake_case name: got {name!r}")
            if not isinstance(unit, str):
                raise ChannelTableError(
                    f"{where}.unit must be a SenML unit, or \"\" for none: got {unit!r}")
            if type(scale) is not int or not -18 <= scale <= 18:
                raise ChannelTableError(f"{where}.scale must be an integer -18..18: got {scale!r}")
            if not isinstance(description, str) or not description or "|" in description:
                raise ChannelTableError(
                    f"{where}.description must be a non-empty string without '|': "
                    f"got {description!r}")
            channels.append(Channel(cid, name, unit, scale, description))
        return cls(channels, version=version)


def load_table(path: str | Path = TABLE_PATH) -> ChannelTable:
    """Reads and checks a channel table file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ChannelTableError(f"cannot read channel table {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ChannelTableError(f"channel table {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ChannelTableError(f"channel table {path} must be a JSON object")
    return ChannelTable.from_json(data)


@cache
def default_table() -> ChannelTable:
    """The table shipped with the gateway (`gateway/channels.json`), loaded once."""
    return load_table(TABLE_PATH)


def render_markdown(table: ChannelTable) -> str:
    """The Markdown table `docs/wire-format.md` holds between its channel-table markers."""
    lines = ["| id | name | unit | scale | meaning |", "|---|---|---|---|---|"]
    for ch in table:
        unit = f"`{ch.unit}`" if ch.unit else "-"
        lines.append(f"| {ch.id} | `{ch.name}` | {unit} | {ch.scale} | {ch.description} |")
    return "\n".join(lines) + "\n"
