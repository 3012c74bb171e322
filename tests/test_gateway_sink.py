"""The JSONL sink (durable append, dedup, torn-end repair) and the gateway's message handling,
without a broker: `Gateway.handle_message` is the whole path after MQTT."""

import json
from pathlib import Path

import pytest

from gateway.config import Config, GatewaySettings, MqttConfig, SinkConfig
from gateway.daemon import Gateway
from gateway.errors import SinkError
from gateway.sink import JsonlSink

VECTORS = Path(__file__).parent / "vectors"


def senml(node: str, names: list[str], t: int = 1763712000) -> list[dict]:
    return [{"n": f"{node}:{n}", "u": "Cel", "v": 1, "t": t} for n in names]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_store_writes_lines_and_drops_duplicates(tmp_path):
    path = tmp_path / "sink" / "r.jsonl"
    with JsonlSink(path) as sink:
        first = [(5, senml("n1", ["a", "b"])), (6, senml("n1", ["a"]))]
        assert sink.store("n1", first) == (2, 0, 3)
        assert sink.store("n1", [(6, senml("n1", ["a"])), (7, senml("n1", ["a"]))]) == (1, 1, 1)
        assert sink.store("n2", [(6, senml("n2", ["a"]))]) == (1, 0, 1)
    got = lines(path)
    assert [(x["node"], x["seq"], x["n"]) for x in got] == [
        ("n1", 5, "n1:a"), ("n1", 5, "n1:b"), ("n1", 6, "n1:a"), ("n1", 7, "n1:a"),
        ("n2", 6, "n2:a")]
    assert list(got[0]) == ["n", "u", "v", "t", "node", "seq"]


def test_reopen_rebuilds_the_seen_set(tmp_path):
    path = tmp_path / "r.jsonl"
    with JsonlSink(path) as sink:
        sink.store("n1", [(1, senml("n1", ["a"])), (2, senml("n1", ["a"]))])
    with JsonlSink(path) as sink:
        assert sink.record_count == 2 and ("n1", 2) in sink
        assert sink.store("n1", [(2, senml("n1", ["a"])), (3, senml("n1", ["a"]))]) == (1, 1, 1)
    assert len(lines(path)) == 3


def test_partial_last_line_is_cut_on_open(tmp_path):
    path = tmp_path / "r.jsonl"
    with JsonlSink(path) as sink:
        sink.store("n1", [(1, senml("n1", ["a"]))])
    good = path.read_bytes()
    path.write_bytes(good + b'{"n":"n1:a","u":"Cel","v":1,"t":17637')  # crash mid-write
    with JsonlSink(path) as sink:
        assert sink.record_count == 1
        assert sink.store("n1", [(2, senml("n1", ["a"]))]) == (1, 0, 1)
    assert path.read_bytes().startswith(good)
    assert [x["seq"] for x in lines(path)] == [1, 2]


def test_record_torn_by_a_crash_is_completed_on_redelivery(tmp_path):
    path = tmp_path / "r.jsonl"
    with JsonlSink(path) as sink:
        sink.store("n1", [(1, senml("n1", ["a", "b"]))])
    # the last message (seq 2-3) was cut after the first of the three lines of seq 2
    torn = senml("n1", ["a"])[0] | {"node": "n1", "seq": 2}
    with path.open("a") as fp:
        fp.write(json.dumps(torn) + "\n")
    with JsonlSink(path) as sink:
        redelivered = [(2, senml("n1", ["a", "b", "c"])), (3, senml("n1", ["a"]))]
        assert sink.store("n1", redelivered) == (2, 0, 3)
        assert sink.store("n1", redelivered) == (0, 2, 0)
    names = sorted((x["seq"], x["n"]) for x in lines(path))
    assert names == [(1, "n1:a"), (1, "n1:b"), (2, "n1:a"), (2, "n1:b"), (2, "n1:c"),
                     (3, "n1:a")]


def test_unreadable_line_in_the_middle_is_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"n":"n1:a","node":"n1","seq":1}\n'
                    'not json\n'
                    '{"n":"n1:a","node":"n1","seq":2}\n')
    with JsonlSink(path) as sink:
        assert sink.record_count == 2


def test_write_failure_raises_sink_error(tmp_path):
    sink = JsonlSink(tmp_path / "r.jsonl")
    sink.open()
    sink._fp = open(sink.path, "rb")  # any write now fails with an OSError
    with pytest.raises(SinkError, match="cannot write sink"):
        sink.store("n1", [(1, senml("n1", ["a"]))])
    with pytest.raises(SinkError, match="failed earlier"):
        sink.store("n1", [(2, senml("n1", ["a"]))])
    sink.close()


def test_open_failure_raises_sink_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SinkError, match="cannot open sink"):
        JsonlSink(tmp_path / "file" / "r.jsonl").open()
    with pytest.raises(SinkError, match="not a regular file"):
        JsonlSink(tmp_path).open()


# ---- Gateway.handle_message ----------------------------------------------------------------

@pytest.fixture
def gateway(tmp_path):
    config = Config(mqtt=MqttConfig(), sink=SinkConfig(path=tmp_path / "r.jsonl"),
                    gateway=GatewaySettings())
    gw = Gateway(config)
    gw.sink.open()
    yield gw
    gw.sink.close()


def vector(name: str) -> dict:
    return json.loads((VECTORS / f"{name}.json").read_text())


def test_handle_message_accepts_dedups_and_rejects(gateway, tmp_path):
    bme = bytes.fromhex(vector("bme280")["hex"])
    assert gateway.handle_message("m/node-01/r", bme, received_at=0) == "accepted"
    assert gateway.handle_message("m/node-01/r", bme, received_at=0) == "accepted"
    assert gateway.handle_message("m/node-02/r", bme, received_at=0) == "accepted"
    assert gateway.handle_message("m/UPPER/r", bme, received_at=0) == "rejected"
    assert gateway.handle_message("m/node-01/r", b"\x84\x02", received_at=0) == "rejected"
    assert gateway.handle_message("m/node-01/r", b"", received_at=0) == "rejected"
    assert gateway.handle_message("m/node-01/r", None, received_at=0) == "internal"
    snap = gateway.stats.snapshot()
    assert snap["received"] == 7
    assert snap["accepted_messages"] == 3
    assert snap["accepted_records"] == 2 and snap["duplicates"] == 1
    assert snap["senml_records"] == 6
    assert snap["rejected"] == 4
    assert snap["rejected_by_reason"] == {"topic": 1, "version": 1, "empty": 1, "internal": 1}
    assert snap["received"] == snap["accepted_messages"] + snap["rejected"]
    got = lines(tmp_path / "r.jsonl")
    assert got[:3] == [dict(r, node="node-01", seq=1042) for r in vector("bme280")["senml"]]


def test_handle_message_raises_sink_error_only(gateway):
    gateway.sink._fp = open(gateway.sink.path, "rb")  # any write now fails with an OSError
    with pytest.raises(SinkError):
        gateway.handle_message("m/node-01/r", bytes.fromhex(vector("bme280")["hex"]),
                               received_at=0)


def test_every_stats_key_is_documented(gateway):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "gateway.md").read_text()
    for key in gateway.stats.snapshot():
        assert f"`{key}`" in doc, f"docs/gateway.md does not explain stats key {key}"
