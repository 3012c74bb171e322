"""Gateway side of wire format v1: the vectors in tests/vectors/ and tests/vectors/invalid/."""

import ast
import json
import random
from pathlib import Path

import cbor2
import pytest

from gateway.channels import default_table
from gateway.errors import TopicError, WireError
from gateway.wire import (MAX_PAYLOAD, REASONS, Resolver, decode_reading, parse_topic,
                          reading_time_error, resolve, senml_value)

VECTORS_DIR = Path(__file__).parent / "vectors"
VECTORS = sorted(VECTORS_DIR.glob("*.json"))
INVALID = sorted((VECTORS_DIR / "invalid").glob("*.json"))
ANY_RECEIVED_AT = 1_900_000_000  # absolute-time vectors must not depend on it


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def decode_vector(vector: dict, received_at: int) -> list[dict]:
    table = default_table()
    reading = decode_reading(bytes.fromhex(vector["hex"]), table)
    return resolve(vector["node_id"], reading, table, received_at=received_at)


def same_json(got, want) -> bool:
    """Equal values and equal JSON types (so 15 and 15.0 differ, as in the vector text)."""
    return json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def test_there_are_vectors():
    assert len(VECTORS) >= 14
    assert len(INVALID) >= 12


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_diag_encodes_to_hex(path):
    vector = load(path)
    assert cbor2.dumps(ast.literal_eval(vector["diag"]), canonical=True).hex() == vector["hex"]
    assert len(bytes.fromhex(vector["hex"])) == vector["bytes"]


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_decodes_to_senml(path):
    vector = load(path)
    received_at = vector.get("received_at", ANY_RECEIVED_AT)
    got = decode_vector(vector, received_at)
    assert got == vector["senml"]
    assert same_json(got, vector["senml"])  # exact decimals: 21.53 is the float 21.53


@pytest.mark.parametrize("path", [p for p in VECTORS if "received_at" not in load(p)],
                         ids=lambda p: p.stem)
def test_absolute_time_ignores_received_at(path):
    vector = load(path)
    assert decode_vector(vector, 0) == decode_vector(vector, ANY_RECEIVED_AT)


def test_relative_time_anchors_at_receipt():
    vector = load(VECTORS_DIR / "relative-time.json")
    reading = decode_reading(bytes.fromhex(vector["hex"]))
    assert reading.relative and reading.age == 37
    got = decode_vector(vector, vector["received_at"] + 100)
    assert [r["t"] for r in got] == [r["t"] + 100 for r in vector["senml"]]


def test_records_carry_consecutive_seq_and_deltas_resolved():
    vector = load(VECTORS_DIR / "batch-3-deltas.json")
    table = default_table()
    reading = decode_reading(bytes.fromhex(vector["hex"]), table)
    assert (reading.seq, reading.last_seq) == (100, 102)
    assert [r.elapsed for r in reading.records] == [0, 60, 120]
    for record, want in zip(reading.records, vector["input"]["records"]):
        assert {str(k): v for k, v in record.values.items()} == want["values"]
    per_record = Resolver(table).records("n1", reading, received_at=0)
    assert [len(senml) for senml in per_record] == [3, 3, 3]


# ---- byte budgets (docs/wire-format.md "Size budgets"), from the vector bytes -------------

def vector_size(name: str) -> tuple[int, int]:
    vector = load(VECTORS_DIR / f"{name}.json")
    return len(bytes.fromhex(vector["hex"])), len(vector["input"]["records"])


def test_budget_one_8_channel_reading():
    size, records = vector_size("reading-8ch")
    assert records == 1 and size <= 48


def test_budget_one_8_channel_reading_with_largest_seq():
    size, records = vector_size("reading-8ch-max-seq")
    assert records == 1 and size <= 48


def test_budget_batch_of_10_records():
    size, records = vector_size("batch-10x8ch")
    assert records == 10 and size / records <= 34


# ---- malformed payloads --------------------------------------------------------------------

@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_vector_is_rejected_with_reason_and_offset(path):
    vector = load(path)
    assert set(vector) - {"received_at"} == {"name", "description", "hex", "reason", "offset"}
    assert vector["reason"] in REASONS
    payload = bytes.fromhex(vector["hex"])
    with pytest.raises(WireError) as info:
        reading = decode_reading(payload)
        if "received_at" in vector:  # well-formed, but its time is outside the default window
            raise reading_time_error(payload, reading, received_at=vector["received_at"])
    assert (info.value.reason, info.value.offset) == (vector["reason"], vector["offset"]), \
        str(info.value)
    assert str(info.value).startswith(f"offset {vector['offset']}: ")


def test_invalid_vectors_cover_every_reason():
    assert {load(p)["reason"] for p in INVALID} == set(REASONS)


def test_error_message_names_record_key_and_type():
    payload = cbor2.dumps([1, 0, 1763712000, {1: 1}, {7: 3.5}])
    with pytest.raises(WireError) as info:
        decode_reading(payload)
    # 85 01 00 1a69201c00 | a1 01 01 (record 0, bytes 8-10) | a1 07 <float> (value at 13)
    assert str(info.value) == ("offset 13: record 1: channel key 7 value must be an integer, "
                               "got float 3.5")


def test_non_shortest_integers_are_accepted():
    # seq 5 as a 4-byte uint, value 2153 as an 8-byte uint: well-formed, not deterministic
    payload = bytes.fromhex("8401" "1a00000005" "1a69201c00" "a101" "1b0000000000000869")
    reading = decode_reading(payload)
    assert reading.seq == 5 and reading.records[0].values == {1: 2153}


def test_payload_of_exactly_4096_bytes_is_accepted():
    # 28 records: 27 maps of keys 1-15 with zeros in 9-byte form (1 + 15 * 10 = 151 bytes)
    # and {1: 0 (2 bytes), 2: 0 (5 bytes)} (10 bytes); head 98 1f 01 00 1a69201c00 (9 bytes)
    full = "af" + "".join(f"{key:02x}1b0000000000000000" for key in range(1, 16))
    payload = bytes.fromhex("981f01001a69201c00" + full * 27 + "a2011800021a00000000")
    assert len(payload) == MAX_PAYLOAD
    reading = decode_reading(payload)
    assert len(reading.records) == 28 and reading.records[-1].values == {1: 0, 2: 0}
    with pytest.raises(WireError) as info:
        decode_reading(payload + b"\x00")
    assert info.value.reason == "too_large"


def test_fuzzed_payloads_raise_only_wire_errors():
    """Mutations of every vector either decode or raise WireError with an offset inside."""
    rng = random.Random(20251121)
    seeds = [bytes.fromhex(load(p)["hex"]) for p in VECTORS + INVALID]
    seeds = [s for s in seeds if 0 < len(s) <= MAX_PAYLOAD]
    for _ in range(4000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1:
                data.insert(pos, rng.randrange(256))
            elif op == 2 and len(data) > 1:
                del data[min(pos, len(data) - 1)]
            else:
                data = data[:pos]
        try:
            reading = decode_reading(bytes(data))
        except WireError as exc:
            assert exc.reason in REASONS
            assert 0 <= exc.offset <= len(data)
        else:
            resolve("fuzz", reading, default_table(), received_at=1763712000)


@pytest.mark.parametrize("value, scale, want", [
    (2153, -2, 21.53), (1500, -2, 15), (-1250, -2, -12.5), (3120, 2, 312000), (101325, 0, 101325),
    (123456789, -3, 123456.789), (278, -6, 0.000278), (12, -9, 1.2e-08), (0, -3, 0),
    (2**53 - 1, -3, 9007199254740.991)])
def test_senml_value_is_the_exact_decimal(value, scale, want):
    got = senml_value(value, scale)
    assert got == want and type(got) is type(want)


# ---- topics --------------------------------------------------------------------------------

@pytest.mark.parametrize("topic, want", [
    ("m/node-01/r", ("node-01", "r")), ("m/0/s", ("0", "s")), ("m/a_b-c/r", ("a_b-c", "r")),
    ("m/" + "a" * 32 + "/r", ("a" * 32, "r"))])
def test_parse_topic(topic, want):
    assert parse_topic(topic, "m") == want


@pytest.mark.parametrize("topic, offset, words", [
    ("m/UPPER/r", 2, "node id must start with a letter"),
    ("m/node-X/r", 7, "may hold only a-z 0-9 _ -"),
    ("m/-dash/r", 2, "must start with a letter"),
    ("m//r", 2, "node id is empty"),
    ("m/" + "a" * 33 + "/r", 34, "33 characters, at most 32"),
    ("x/node-01/r", 0, "prefix must be 'm'"),
    ("m/node-01/rr", 10, "kind must be one letter"),
    ("m/node-01", 9, "has 2 levels"),
    ("m/x/y/r", 5, "has 4 levels"),
])
def test_parse_topic_rejects(topic, offset, words):
    with pytest.raises(TopicError) as info:
        parse_topic(topic, "m")
    assert info.value.reason == "topic"
    assert info.value.offset == offset
    assert words in str(info.value)


def test_every_reason_is_documented():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "gateway.md").read_text()
    for reason in [*REASONS, "topic", "internal"]:
        assert f"| `{reason}` |" in doc, f"docs/gateway.md does not explain reason {reason}"
