"""The channel table: loading, key arithmetic, and that docs/wire-format.md shows the data."""

import json
import re
from pathlib import Path

import pytest

from gateway.channels import (TABLE_PATH, ChannelTable, default_table, load_table, make_key,
                              render_markdown, split_key)
from gateway.errors import ChannelTableError

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "wire-format.md"
BEGIN = re.compile(r"^<!-- channel-table:begin\b.*-->$")
END = "<!-- channel-table:end -->"


def doc_table_block() -> str:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    begins = [i for i, line in enumerate(lines) if BEGIN.match(line)]
    ends = [i for i, line in enumerate(lines) if line == END]
    assert len(begins) == 1 and len(ends) == 1 and begins[0] < ends[0], \
        "docs/wire-format.md must hold one channel-table:begin ... channel-table:end block"
    return "\n".join(lines[begins[0] + 1:ends[0]]) + "\n"


def test_doc_table_is_the_rendering_of_channels_json():
    assert doc_table_block() == render_markdown(default_table()), (
        "docs/wire-format.md channel table differs from gateway/channels.json; paste "
        "gateway.channels.render_markdown(default_table()) between the markers")


def test_doc_heading_names_the_table_version():
    text = DOC.read_text(encoding="utf-8")
    assert f"## Channel table (version {default_table().version})" in text


def test_table_loads_the_shipped_file():
    table = default_table()
    data = json.loads(TABLE_PATH.read_text())
    assert table.version == data["version"]
    assert [ch.id for ch in table] == sorted(row["id"] for row in data["channels"])
    temperature = table.get(1)
    assert (temperature.name, temperature.unit, temperature.scale) == ("temperature", "Cel", -2)
    assert table.get(63) is None


@pytest.mark.parametrize("key, channel_id, instance", [
    (1, 1, 0), (63, 63, 0), (65, 1, 1), (129, 1, 2), (64 * 15 + 15, 15, 15)])
def test_key_arithmetic(key, channel_id, instance):
    assert split_key(key) == (channel_id, instance)
    assert make_key(channel_id, instance) == key


def test_lookup_by_key():
    table = default_table()
    channel, instance = table.lookup(129)
    assert (channel.name, instance) == ("temperature", 2)
    channel, instance = table.lookup(15 + 64 * 15)
    assert (channel.name, instance) == ("water_pressure", 15)


@pytest.mark.parametrize("key, words", [
    (40, "unknown channel id 40"), (64, "channel id 0"), (1 + 64 * 16, "instance must be 0-15"),
    (0, "not a channel key")])
def test_lookup_rejects_bad_keys(key, words):
    table = default_table()
    assert words in table.key_problem(key)
    with pytest.raises(KeyError, match=words):
        table.lookup(key)


@pytest.mark.parametrize("row, words", [
    ({"id": 0}, "id must be an integer 1-63"),
    ({"id": 64}, "id must be an integer 1-63"),
    ({"name": "Temp"}, "name must be a snake_case name"),
    ({"scale": 1.5}, "scale must be an integer"),
    ({"unit": 3}, "unit must be a SenML unit"),
    ({"description": "a | b"}, "description must be a non-empty string without '|'"),
    ({"extra": 1}, "unknown fields"),
])
def test_table_rows_are_checked(row, words):
    good = {"id": 1, "name": "temperature", "unit": "Cel", "scale": -2, "description": "t"}
    with pytest.raises(ChannelTableError, match=re.escape(words)):
        ChannelTable.from_json({"version": 1, "channels": [{**good, **row}]})


def test_duplicate_ids_and_names_are_rejected():
    row = {"id": 1, "name": "temperature", "unit": "Cel", "scale": -2, "description": "t"}
    with pytest.raises(ChannelTableError, match="id 1 is defined twice"):
        ChannelTable.from_json({"version": 1, "channels": [row, {**row, "name": "other"}]})
    with pytest.raises(ChannelTableError, match="defined twice"):
        ChannelTable.from_json({"version": 1, "channels": [row, {**row, "id": 2}]})


def test_load_table_errors_name_the_file(tmp_path):
    with pytest.raises(ChannelTableError, match="cannot read channel table"):
        load_table(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ChannelTableError, match="not valid JSON"):
        load_table(bad)


def test_unitless_channel_resolves_without_u():
    """The alarm bits have no unit: their SenML record carries no "u" (RFC 8428 allows that)."""
    from gateway.wire import decode_reading, resolve

    table = default_table()
    alarms = next(ch for ch in table if ch.name == "alarms")
    payload = bytes([0x84, 0x01, 0x00, 0x00, 0xA1, alarms.id, 0x05])  # [1, 0, 0, {16: 5}]
    senml = resolve("node-01", decode_reading(payload, table), table, received_at=100)
    assert senml == [{"n": "node-01:alarms", "v": 5, "t": 0}]
